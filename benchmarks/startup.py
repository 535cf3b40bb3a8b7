r"""What a run costs before it trains: the binary from start to exit for a few steps, with
JAX's persistent compilation cache cold (empty) and warm (filled by the cold run).

  python benchmarks/startup.py --data_dir=data [--config=clip.py:tiny --config=...]
      [--rounds=2] [--steps=2]

Configs (default: the demo's two, clip.py:tiny and eclip.py:tiny, on the data `make demo`
builds). Each run is `python -m eclip_jax.main` for `steps` steps without evaluations in a
fresh workdir, with `--config.compilation_cache_dir` a directory that the round's cold run
starts empty and its warm run reuses. `cold - warm` is what the cache saves at every start
of the same program: a run resumed after preemption, a repeated eval, a sweep trial of the
same shapes. The process's own start (imports, the dataset's metadata, the mesh) is in both.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence

import tables

REPO = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_CONFIGS = ("clip.py:tiny", "eclip.py:tiny")


def run_seconds(config: str, data_dir: str, steps: int, cache_dir: str,
                extra_flags: Sequence[str] = ()) -> float:
  """Wall seconds of one run of the binary (a fresh workdir), which must succeed."""
  with tempfile.TemporaryDirectory() as workdir:
    command = [sys.executable, "-m", "eclip_jax.main", f"--config=configs/{config}",
               f"--workdir={workdir}", f"--config.input.data_dir={data_dir}",
               f"--config.total_steps={steps}", "--config.evals={}",
               f"--config.compilation_cache_dir={cache_dir}", *extra_flags]
    # The environment's own cache directory would take precedence over the config's.
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=env)
    seconds = time.perf_counter() - start
  if result.returncode:
    raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-2000:]}")
  return seconds


def measure(configs: Sequence[str], data_dir: str, rounds: int, steps: int,
            extra_flags: Sequence[str] = ()) -> list[dict]:
  """A row per config and round: the cold run's seconds, then the warm run's."""
  rows = []
  for round_index in range(1, rounds + 1):
    for config in configs:
      with tempfile.TemporaryDirectory() as cache_dir:
        cold, warm = (run_seconds(config, data_dir, steps, cache_dir, extra_flags)
                      for _ in range(2))
      rows.append({"config": config, "round": round_index, "cold": cold, "warm": warm})
  return rows


COLUMNS: list[tables.Column] = [
    ("config", "config", "{}"), ("round", "round", "{}"), ("cold", "cold cache s", "{:.1f}"),
    ("warm", "warm cache s", "{:.1f}"), ("saved", "saved s", "{:.1f}")]


def format_table(rows: Iterable[dict]) -> str:
  return tables.format_table([{**row, "saved": row["cold"] - row["warm"]} for row in rows],
                             COLUMNS)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--data_dir", default="data")
  parser.add_argument("--config", action="append", help="repeatable (default: the demo's)")
  parser.add_argument("--rounds", type=int, default=2)
  parser.add_argument("--steps", type=int, default=2)
  args = parser.parse_args()
  configs = args.config or list(DEFAULT_CONFIGS)
  print(" ".join(["python benchmarks/startup.py", f"--data_dir={args.data_dir}",
                  *(f"--config={c}" for c in configs), f"--rounds={args.rounds}",
                  f"--steps={args.steps}"]) + "\n")
  print(format_table(measure(configs, args.data_dir, args.rounds, args.steps)))


if __name__ == "__main__":
  main()
