r"""Multi-stream accumulation (`train.gradients="grad_cache"`): compiled peak temporary memory
and step time against the full-batch step, at one global batch.

  python benchmarks/grad_cache.py [--variant=tiny] [--batch=1024] [--streams=1,2,4,8]
      [--steps=5] [--devices=1] [--rounds=3]

Each row AOT-compiles the real train step of configs/e_clip.py's variant (trainer.
compile_train_step: forward, loss, backward, AdamW) with its gradient strategy, reads the
per-device temporary memory from `memory_analysis()`, and times `--steps` steps on random
inputs after one warmup (median), the rows taking turns for `--rounds` rounds. `full` is `jax.value_and_grad` of the whole batch;
`grad_cache, M streams` embeds the batch in M micro-batches, takes the loss and its gradient
on the whole batch, then back-propagates each micro-batch again: its temporaries should fall
roughly as 1/M (activations of one micro-batch at a time) for one extra forward pass.
"""

from __future__ import annotations

import harness  # noqa: F401  (first: sets the device count before JAX starts)

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

from configs import e_clip  # noqa: E402
from eclip_jax import parallel, trainer  # noqa: E402


def compile_step(config):
  """(the compiled step, its state and batch, per-device temporary MiB)."""
  mesh = parallel.make_mesh(config.mesh)
  setup = trainer.Setup(config, mesh)
  batch = parallel.to_global(harness.random_batch(config, np.random.default_rng(0)), mesh)
  step = trainer.compile_train_step(setup, batch)
  return step, setup.init_state(), batch, step.memory_analysis().temp_size_in_bytes / 2**20


def seconds_per_step(step, state, batch, steps: int):
  """(median seconds of `steps` steps after one warmup, the state after them)."""
  state, metrics = step(state, batch)
  jax.block_until_ready(metrics)
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - start)
  return statistics.median(times), state


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--variant", default="tiny")
  parser.add_argument("--batch", type=int, default=1024)
  parser.add_argument("--streams", default="1,2,4,8")
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--devices", type=int, default=1)
  parser.add_argument("--rounds", type=int, default=3)
  args = parser.parse_args()
  rows = [("full", "full", 1)] + [(f"grad_cache, {m} streams", "grad_cache", int(m))
                                  for m in args.streams.split(",")]

  compiled = {}
  for name, strategy, streams in rows:
    config = e_clip.get_config(args.variant)
    config.input.batch_size = args.batch
    config.train.update(gradients=strategy, streams=streams, batch_schedule=())
    config.mesh = {"data": args.devices, "fsdp": 1, "tensor": 1}
    compiled[name] = list(compile_step(config))
  # The machines are shared: the strategies take turns, round after round, and each row's
  # time is its median over rounds.
  times = {name: [] for name in compiled}
  for _ in range(args.rounds):
    for name, entry in compiled.items():
      seconds, entry[1] = seconds_per_step(entry[0], entry[1], entry[2], args.steps)
      times[name].append(seconds)

  print(f"python benchmarks/grad_cache.py --variant={args.variant} --batch={args.batch} "
        f"--streams={args.streams} --steps={args.steps} --devices={args.devices} "
        f"--rounds={args.rounds}\n")
  print(f"{'strategy':22s} | {'temp MiB/device':>15s} | {'vs full':>7s} | {'ms/step':>8s} | "
        f"{'vs full':>7s}")
  print("-" * 72)
  full_mib, full_seconds = compiled["full"][3], statistics.median(times["full"])
  for name, (_, _, _, temp_mib) in compiled.items():
    seconds = statistics.median(times[name])
    print(f"{name:22s} | {temp_mib:15.1f} | {temp_mib / full_mib:7.2f} | "
          f"{1e3 * seconds:8.1f} | {seconds / full_seconds:7.2f}")


if __name__ == "__main__":
  main()
