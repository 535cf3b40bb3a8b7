"""What every train-step benchmark shares: the CPU device count, random batches of a config's
example spec, and a compiled real train step.

Import it before JAX: `--devices=N` on the command line (default 1) becomes XLA's host device
count, which only takes effect before JAX initializes (it counts CPU devices; a GPU or TPU
machine's benchmarks run on its accelerators, which JAX picks over the CPU). Imported after
JAX (from a test, which has its own devices) it leaves the environment alone, so no
subprocess inherits a different device count.
"""

from __future__ import annotations

import os
import sys

if "jax" not in sys.modules:
  _DEVICES = next((a.split("=")[1] for a in sys.argv if a.startswith("--devices=")), "1")
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                             + f" --xla_force_host_platform_device_count={_DEVICES}").strip()
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import jax  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

from eclip_jax import parallel, trainer  # noqa: E402
from tables import Column, format_table  # noqa: E402,F401  (re-exported: the scripts' tables)
from eclip_jax.data import pipeline  # noqa: E402


def random_batch(config: ml_collections.ConfigDict,
                 rng: np.random.Generator) -> dict[str, np.ndarray]:
  """Random values of the config's example spec: every position present, 15% of them masked
  for masked modeling, pairs of duplicate listings (catalog ids)."""
  b, vocab = config.input.batch_size, config.input.vocab_size
  batch = {}
  for key, (shape, dtype) in pipeline.example_spec(config.input).items():
    shape = (b, *shape)
    if key.endswith("_mlm_mask"):
      batch[key] = rng.random(shape) < 0.15
    elif dtype == np.bool_:
      batch[key] = np.ones(shape, bool)
    elif dtype == np.uint8:  # pixels
      batch[key] = rng.integers(0, 256, size=shape)
    elif key.endswith("_mlm_targets"):
      batch[key] = np.where(rng.random(shape) < 0.15, rng.integers(4, vocab, shape), -1)
    elif key == "table_entity":
      batch[key] = np.broadcast_to(np.arange(shape[-1]) // 3, shape)
    elif np.issubdtype(dtype, np.integer):
      batch[key] = rng.integers(4, vocab, size=shape)
    else:
      batch[key] = rng.normal(size=shape)
    batch[key] = np.asarray(batch[key]).astype(dtype)
  batch["product_id"] = np.arange(b, dtype=np.int32)
  batch["catalog_id"] = (rng.permutation(b) // 2).astype(np.int32)
  return batch


def compiled_step(config: ml_collections.ConfigDict):
  """(step, state, batch, setup): the AOT-compiled train step (trainer.compile_train_step:
  forward, every objective, backward, AdamW), a fresh state after one warmup step, and the
  random global batch it runs on."""
  mesh = parallel.make_mesh(config.mesh)
  setup = trainer.Setup(config, mesh)
  batch = parallel.to_global(random_batch(config, np.random.default_rng(0)), mesh)
  step = trainer.compile_train_step(setup, batch)
  state, metrics = step(setup.init_state(), batch)  # warmup
  jax.block_until_ready(metrics)
  return step, state, batch, setup
