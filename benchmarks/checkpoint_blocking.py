r"""How long the training loop stalls per checkpoint save, async vs synchronous, in steps.

  python benchmarks/checkpoint_blocking.py [--config=clip.py:tiny --config=...] [--rounds=5]
      [--steps=N] [--devices=1]

Configs (default: clip.py:tiny, clip.py:s16) are train_step.py's. Per config, the real train
state (params + AdamW state after one step) is saved in each of `MODES` (the trainer's async
save with its handoff thread, Orbax's async save as it is, a synchronous save), each into its
own fresh temporary directory, the modes taking turns each round so that machine noise
spreads over all. A round of one mode:
`save()`, then `steps` train steps, and more while an async write is still running, so that
every step it overlaps is seen. The first save of a process pays one-time setup (Orbax's
threads, TensorStore, seconds on a many-device mesh); medians over rounds set it aside.

Columns: the state's size; how long `save()` blocks its caller (median over rounds: the time
the loop loses outright); how long until the checkpoint is on disk (async: until `wait()`
returns, counted from the save; sync: the same as blocking); the step time of steps that
overlap no write (both modes pooled: the unit of the ratios); blocks / step; the median first
step after a save; how many steps overlapped a background write and their median time (the
two cores are shared with the writer); and lost / step = (blocking + the overlapped steps'
excess over the step time) / step, the save's whole cost to the loop.
"""

from __future__ import annotations

import harness  # noqa: F401  (first: sets the device count before JAX starts)

import argparse  # noqa: E402
import concurrent.futures  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Iterable, Mapping  # noqa: E402

import jax  # noqa: E402
import ml_collections  # noqa: E402
from absl import logging  # noqa: E402

import train_step  # noqa: E402
from eclip_jax import checkpoint as checkpoint_lib  # noqa: E402

DEFAULT_CONFIGS = ("clip.py:tiny", "clip.py:s16")
# Steps per round, so that both configs run in under 3 minutes on 2 CPU cores: an s16 step
# takes seconds, and its async rounds step on anyway while the ~0.5 GiB write runs.
STEPS_PER_ROUND = {"clip.py:tiny": 3, "clip.py:s16": 1}
# Mode -> Checkpointer arguments.
MODES = {"async": {"async_save": True},  # the trainer's (config.checkpoint_handoff=True)
         "async, no handoff": {"async_save": True, "handoff": False},
         "sync": {"async_save": False}}


class Training:
  """The compiled train step of one config and the state it advances."""

  def __init__(self, config: ml_collections.ConfigDict):
    self._step, self.state, self._batch, self.setup = harness.compiled_step(config)
    self.state_bytes = sum(leaf.nbytes for leaf in jax.tree.leaves(self.state))

  def step(self) -> None:
    self.state, metrics = self._step(self.state, self._batch)
    jax.block_until_ready((self.state, metrics))  # a save must not wait for the step


def _wait_timed(checkpointer: checkpoint_lib.Checkpointer) -> float:
  """When the last async save was on disk (`wait()` returned)."""
  checkpointer.wait()
  return time.perf_counter()


def _finished(when: float) -> concurrent.futures.Future:
  future = concurrent.futures.Future()
  future.set_result(when)
  return future


def save_round(training: Training, checkpointer: checkpoint_lib.Checkpointer, async_save: bool,
               save_step: int, steps: int, waiter: concurrent.futures.Executor) -> dict:
  """One save and the steps after it: {blocks, write: seconds; steps: [(seconds, overlapped)]}.

  A helper thread waits for an async write (public `wait()`), so the loop knows when it ended
  without polling Orbax; steps go on until `steps` ran and the write is done."""
  start = time.perf_counter()
  checkpointer.save(save_step, training.state, None, training.setup.config)
  returned = time.perf_counter()
  written = waiter.submit(_wait_timed, checkpointer) if async_save else _finished(returned)
  timed = []
  while len(timed) < steps or not written.done():
    step_start = time.perf_counter()
    training.step()
    seconds = time.perf_counter() - step_start
    timed.append((seconds, not (written.done() and written.result() <= step_start)))
  return {"blocks": returned - start, "write": written.result() - start, "steps": timed}


def measure_config(name: str, config: ml_collections.ConfigDict, rounds: int,
                   steps: int) -> list[dict]:
  """One row per mode (module docstring) for one config."""
  training = Training(config)
  logging.info("%s: state %.0f MiB, compiled", name, training.state_bytes / 2**20)
  results: dict[str, list[dict]] = {mode: [] for mode in MODES}
  with tempfile.TemporaryDirectory(prefix="checkpoint_blocking_") as tmp, \
       concurrent.futures.ThreadPoolExecutor(max_workers=1) as waiter:
    checkpointers = {mode: checkpoint_lib.Checkpointer(f"{tmp}/{index}",
                                                       keep=config.keep_checkpoints, **arguments)
                     for index, (mode, arguments) in enumerate(MODES.items())}
    try:
      for round_index in range(rounds):
        for mode, checkpointer in checkpointers.items():
          results[mode].append(save_round(training, checkpointer, MODES[mode]["async_save"],
                                          round_index + 1, steps, waiter))
    finally:
      for checkpointer in checkpointers.values():
        checkpointer.close()  # waits for the last write before the directory goes
  clean = [s for mode in MODES for r in results[mode] for s, overlapped in r["steps"]
           if not overlapped]
  step_seconds = statistics.median(clean)
  rows = []
  for mode in MODES:
    overlapped = [s for r in results[mode] for s, o in r["steps"] if o]
    blocks = statistics.median(r["blocks"] for r in results[mode])
    lost = statistics.median(r["blocks"] + sum(s - step_seconds for s, o in r["steps"] if o)
                             for r in results[mode])
    rows.append({
        "config": name, "mode": mode, "state_mib": training.state_bytes / 2**20,
        "blocks_ms": 1e3 * blocks,
        "write_ms": 1e3 * statistics.median(r["write"] for r in results[mode]),
        "step_ms": 1e3 * step_seconds, "blocks_per_step": blocks / step_seconds,
        "next_step_ms": 1e3 * statistics.median(r["steps"][0][0] for r in results[mode]),
        "overlapped": len(overlapped),
        "overlap_step_ms": 1e3 * statistics.median(overlapped) if overlapped else None,
        "lost_per_step": lost / step_seconds,
    })
  return rows


def measure(configs: Iterable[str] | Mapping[str, ml_collections.ConfigDict], rounds: int,
            steps: int | None) -> list[dict]:
  """Rows for each config and mode. `configs`: names (train_step.load_config), or name ->
  config for a config no name gives (a test's smaller batch)."""
  if not isinstance(configs, Mapping):
    configs = {name: train_step.load_config(name) for name in configs}
  return [row for name, config in configs.items()
          for row in measure_config(name, config, rounds, steps or STEPS_PER_ROUND.get(name, 3))]


COLUMNS = [("config", "config", "{}"), ("mode", "mode", "{}"), ("state_mib", "state MiB", "{:.0f}"),
           ("blocks_ms", "blocks ms", "{:.1f}"), ("write_ms", "write ms", "{:.1f}"),
           ("step_ms", "step ms", "{:.1f}"), ("blocks_per_step", "blocks / step", "{:.3f}"),
           ("next_step_ms", "next step ms", "{:.1f}"), ("overlapped", "overlapped", "{}"),
           ("overlap_step_ms", "overlap step ms", "{:.1f}"),
           ("lost_per_step", "lost / step", "{:.3f}")]


def format_table(rows: list[dict]) -> str:
  return harness.format_table(rows, COLUMNS)


def main(argv: list[str] | None = None, print_fn: Callable[[str], None] = print) -> list[dict]:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--config", action="append")
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--steps", type=int, default=None, help="per round (default: per config)")
  parser.add_argument("--devices", type=int, default=1)
  args = parser.parse_args(argv)
  names = args.config or list(DEFAULT_CONFIGS)
  rows = measure(names, args.rounds, args.steps)
  command = " ".join(["python benchmarks/checkpoint_blocking.py",
                      *(f"--config={n}" for n in names), f"--rounds={args.rounds}",
                      *([f"--steps={args.steps}"] if args.steps else []),
                      f"--devices={args.devices}"])
  print_fn(f"{command}\n")
  print_fn(format_table(rows))
  return rows


if __name__ == "__main__":
  main()
