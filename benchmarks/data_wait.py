r"""How long the training loop waits for its input: `make demo`'s runs, with and without the
loop's bound on steps in flight.

  python benchmarks/data_wait.py --data_dir=data [--config=clip.py:tiny --config=...]
      [--steps=150] [--rounds=2] [--no_limit_first]

Configs (default: the demo's two, clip.py:tiny and eclip.py:tiny, on the data `make demo`
builds) are train_step.py's. Each run is the real trainer (`trainer.train`, one CPU device
as `python -m eclip_jax.main` has) for `steps` steps without evaluation, in each of `MODES`:

  defaults   the trainer as configured: at most `config.max_steps_in_flight` (2) steps
             dispatched and unfinished, the loop waiting for the oldest; a thread assembling
             `input.prefetch_batches` (2) batches ahead.
  no limit   `max_steps_in_flight=0`, `input.prefetch_batches=0`: the loop dispatches as
             fast as batches come and pulls each batch's examples through the pipeline
             itself (the trainer before 2026-12-06).

The modes take turns each round, so machine noise spreads over both (`--no_limit_first`
swaps their order: on this machine the first run of a pair tends to be the slower).
Columns, from the run's `metrics.jsonl` at its log steps (three per run): examples/s,
`perf/data_wait_frac` (the share of wall time the loop spends fetching a batch) and
`perf/device_idle_frac` (the share in which no step was running), each as the log steps'
values; the last logged loss, which the mode must not change.
"""

from __future__ import annotations

import harness  # noqa: F401  (first: sets the device count before JAX starts)

import argparse  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from collections.abc import Iterable, Mapping, Sequence  # noqa: E402

import ml_collections  # noqa: E402
from absl import logging  # noqa: E402

import train_step  # noqa: E402
from eclip_jax import metrics as metrics_lib  # noqa: E402
from eclip_jax import trainer  # noqa: E402

DEFAULT_CONFIGS = ("clip.py:tiny", "eclip.py:tiny")
# Mode -> config overrides.
MODES = {"defaults": {},
         "no limit": {"max_steps_in_flight": 0, "input.prefetch_batches": 0}}
LOGGED = ("perf/examples_per_sec", "perf/data_wait_frac", "perf/device_idle_frac",
          "train/loss")


def run(config: ml_collections.ConfigDict, overrides: Mapping[str, object], steps: int) -> dict:
  """One training run of `steps` steps under `overrides`: {metric: [value per log step]}."""
  config = train_step.with_fields(config, overrides)
  config.stop_after_steps = steps
  config.log_every_steps = max(1, steps // 3)
  config.eval_every_steps = 0  # and total_steps stays the recipe's: no final evaluation
  with tempfile.TemporaryDirectory() as workdir:
    trainer.train(config, workdir)
    rows = [row for row in metrics_lib.read_metrics(workdir) if LOGGED[0] in row]
  return {key: [row[key] for row in rows] for key in LOGGED}


def measure(configs: Mapping[str, ml_collections.ConfigDict], rounds: int, steps: int,
            modes: Sequence[str] = tuple(MODES)) -> list[dict]:
  """Every config in every mode, the modes taking turns each round in the order given; a
  row per run."""
  rows = []
  for round_index in range(1, rounds + 1):
    for name, config in configs.items():
      for mode in modes:
        rows.append({"config": name, "mode": mode, "round": round_index,
                     **run(config, MODES[mode], steps)})
  return rows


def format_table(rows: Iterable[dict]) -> str:
  percents = lambda values: " / ".join(f"{100 * v:.0f}%" for v in values)  # noqa: E731
  lines = [f"{'config':>13} | {'mode':>8} | round | {'examples/s':>17} | {'data wait':>15} | "
           f"{'device idle':>15} | last loss"]
  lines.append("-" * len(lines[0]))
  for row in rows:
    lines.append(
        f"{row['config']:>13} | {row['mode']:>8} | {row['round']:>5} | "
        f"{' / '.join(f'{v:.0f}' for v in row['perf/examples_per_sec']):>17} | "
        f"{percents(row['perf/data_wait_frac']):>15} | "
        f"{percents(row['perf/device_idle_frac']):>15} | {row['train/loss'][-1]:.4f}")
  return "\n".join(lines)


def main(argv: list[str]) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--data_dir", default="data", help="where `make demo` built its data")
  parser.add_argument("--config", action="append", help=f"default: {DEFAULT_CONFIGS}")
  parser.add_argument("--steps", type=int, default=150)
  parser.add_argument("--rounds", type=int, default=2)
  parser.add_argument("--no_limit_first", action="store_true",
                      help="run `no limit` before `defaults` in each round")
  parser.add_argument("--devices", type=int, default=1, help="read by harness (one device)")
  args = parser.parse_args(argv)
  logging.set_verbosity(logging.WARNING)
  configs = {}
  for name in args.config or DEFAULT_CONFIGS:
    configs[name] = train_step.load_config(name)
    configs[name].input.data_dir = args.data_dir
  modes = list(MODES)[::-1] if args.no_limit_first else list(MODES)
  rows = measure(configs, rounds=args.rounds, steps=args.steps, modes=modes)
  print("python benchmarks/data_wait.py " + " ".join(argv))
  print()
  print(format_table(rows))


if __name__ == "__main__":
  main(sys.argv[1:])
