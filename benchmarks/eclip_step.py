r"""Train-step throughput of ECLIP against the CLIP two-tower baseline, same batch and towers.

  python benchmarks/eclip_step.py [--variant=tiny] [--batch=128] [--steps=10] [--devices=1]

For each row it builds the config, AOT-compiles the real train step (trainer.compile_train_step:
forward, every objective, backward, AdamW) on random inputs of the config's shapes, and
times `--steps` steps after one warmup (median). Rows:

  clip, 1 view    the baseline as trained (configs/clip.py)
  clip, 2 views   the baseline seeing ECLIP's two photos per product (its loss averaged
                  over the views): the same image-tower work as ECLIP
  eclip, 2 views  configs/eclip.py: + instance decoder, selection, five objectives

`vs clip` is the time ratio to the first row; `vs clip 2 views` isolates what the decoder and
the instance objectives cost. Data loading is not included (benchmarks/input_pipeline.py).
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
from configs import eclip as eclip_config  # noqa: E402
from eclip_jax import parallel, trainer  # noqa: E402


def random_batch(config, rng: np.random.Generator) -> dict[str, np.ndarray]:
  b, size, length = config.input.batch_size, config.input.image_size, config.input.max_text_len
  views = config.input.num_views
  image_shape = (b, size, size, 3) if views == 1 else (b, views, size, size, 3)
  return {
      "image" if views == 1 else "images": rng.normal(size=image_shape).astype(np.float32),
      "text_tokens": rng.integers(4, config.input.vocab_size, size=(b, length)).astype(np.int32),
      "text_mask": np.ones((b, length), bool),
      "product_id": np.arange(b, dtype=np.int32),
      "catalog_id": (rng.permutation(b) // 2).astype(np.int32),
  }


def step_seconds(config, steps: int) -> float:
  """Median seconds per compiled train step on random inputs."""
  mesh = parallel.make_mesh(config.mesh)
  setup = trainer.Setup(config, mesh)
  state = setup.init_state()
  rng = np.random.default_rng(0)
  batch = parallel.to_global(random_batch(config, rng), mesh)
  step = trainer.compile_train_step(setup, batch)
  state, metrics = step(state, batch)  # warmup
  jax.block_until_ready(metrics)
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--variant", default="tiny")
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--devices", type=int, default=1)
  args = parser.parse_args()

  clip_1 = clip_config.get_config(args.variant)
  clip_2 = clip_config.get_config(args.variant)
  clip_2.input.num_views = 2
  eclip_2 = eclip_config.get_config(args.variant)
  rows = [("clip, 1 view", clip_1), ("clip, 2 views", clip_2), ("eclip, 2 views", eclip_2)]

  print(f"python benchmarks/eclip_step.py --variant={args.variant} --batch={args.batch} "
        f"--steps={args.steps} --devices={args.devices}\n")
  print(f"{'what':16s} | {'ms/step':>8s} | {'examples/s':>10s} | {'images/s':>8s} | "
        f"{'vs clip':>7s} | {'vs clip 2 views':>15s}")
  print("-" * 76)
  seconds = {}
  for name, config in rows:
    config.input.batch_size = args.batch
    seconds[name] = step_seconds(config, args.steps)
    images = args.batch * config.input.num_views / seconds[name]
    vs_two_views = (f"{seconds[name] / seconds['clip, 2 views']:15.2f}"
                    if "clip, 2 views" in seconds else f"{'–':>15s}")
    print(f"{name:16s} | {1e3 * seconds[name]:8.1f} | {args.batch / seconds[name]:10.0f} | "
          f"{images:8.0f} | {seconds[name] / seconds['clip, 1 view']:7.2f} | {vs_two_views}",
          flush=True)


if __name__ == "__main__":
  main()
