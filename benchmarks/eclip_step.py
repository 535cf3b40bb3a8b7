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

import harness  # noqa: F401  (first: sets the device count before JAX starts)

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402

from configs import clip as clip_config  # noqa: E402
from configs import eclip as eclip_config  # noqa: E402


def step_seconds(config, steps: int) -> float:
  """Median seconds per compiled train step on random inputs."""
  step, state, batch, _ = harness.compiled_step(config)
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
