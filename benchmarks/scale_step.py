r"""Train-step time of SCALE tiny against the CLIP two-tower baseline, same batch.

  python benchmarks/scale_step.py [--batch=128] [--steps=3] [--rounds=3] [--devices=1]

For each row it builds the config, AOT-compiles the real train step
(trainer.compile_train_step: forward, every objective, backward, AdamW) on random inputs of
the config's example spec, then times the rows in turn for `--rounds` rounds of `--steps`
steps each (so machine noise spreads over all of them) and reports the median. Rows:

  clip tiny            configs/clip.py:tiny (ViT tiny /8 at 64 px, text tiny)
  scale text+image     configs/scale.py:tiny,modalities=text+image: CLIP tiny's towers +
                       2 fusion blocks, the title's MLM, one contrastive pair
  scale, five          configs/scale.py:tiny: + table, video (4 frames), audio (log-mel),
                       10 pairs, five masked-modeling terms
  scale, five learned  the same with scale.harmonize=learned

`vs clip` is the time ratio to the first row. Data loading is not included
(benchmarks/input_pipeline.py measures the pipeline).
"""

from __future__ import annotations

import os
import sys

_DEVICES = next((a.split("=")[1] for a in sys.argv if a.startswith("--devices=")), "1")
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + f" --xla_force_host_platform_device_count={_DEVICES}").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

from configs import clip as clip_config  # noqa: E402
from configs import scale as scale_config  # noqa: E402
from eclip_jax import parallel, trainer  # noqa: E402
from eclip_jax.data import pipeline  # noqa: E402


def random_batch(config, rng: np.random.Generator) -> dict[str, np.ndarray]:
  """Random values of the config's example spec: every position present, 15% of them
  masked for masked modeling, pairs of duplicate listings."""
  b, vocab = config.input.batch_size, config.input.vocab_size
  batch = {}
  for key, (shape, dtype) in pipeline.example_spec(config.input).items():
    shape = (b, *shape)
    if key.endswith("_mlm_mask"):
      batch[key] = rng.random(shape) < 0.15
    elif dtype == np.bool_:
      batch[key] = np.ones(shape, bool)
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


def compiled_step(config):
  """(step, state, batch): the compiled train step and what it runs on."""
  mesh = parallel.make_mesh(config.mesh)
  setup = trainer.Setup(config, mesh)
  batch = parallel.to_global(random_batch(config, np.random.default_rng(0)), mesh)
  step = trainer.compile_train_step(setup, batch)
  state, metrics = step(setup.init_state(), batch)  # warmup
  jax.block_until_ready(metrics)
  return step, state, batch


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--steps", type=int, default=3)
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--devices", type=int, default=1)
  args = parser.parse_args()

  rows = {"clip tiny": clip_config.get_config("tiny"),
          "scale text+image": scale_config.get_config("tiny,modalities=text+image"),
          "scale, five": scale_config.get_config("tiny"),
          "scale, five learned": scale_config.get_config("tiny,harmonize=learned")}
  compiled = {}
  for name, config in rows.items():
    config.input.batch_size = args.batch
    compiled[name] = list(compiled_step(config))
  times = {name: [] for name in rows}
  for _ in range(args.rounds):
    for name, entry in compiled.items():
      step, state, batch = entry
      for _ in range(args.steps):
        start = time.perf_counter()
        state, metrics = step(state, batch)
        jax.block_until_ready(metrics)
        times[name].append(time.perf_counter() - start)
      entry[1] = state

  print(f"python benchmarks/scale_step.py --batch={args.batch} --steps={args.steps} "
        f"--rounds={args.rounds} --devices={args.devices}\n")
  print(f"{'what':20s} | {'ms/step':>8s} | {'examples/s':>10s} | {'vs clip':>7s}")
  print("-" * 54)
  baseline = statistics.median(times["clip tiny"])
  for name, measured in times.items():
    seconds = statistics.median(measured)
    print(f"{name:20s} | {1e3 * seconds:8.1f} | {args.batch / seconds:10.0f} | "
          f"{seconds / baseline:7.2f}")


if __name__ == "__main__":
  main()
