r"""Sweeps: expand a config's `get_sweep()` into runs; run, print or submit them; tabulate.

  python launch/sweep.py --config=configs/clip.py:tiny --sweepdir=sweeps/clip_tiny \
      [--launcher=local|slurm|tpu_vm] [--print] [-- --config.input.data_dir=data ...]
  python launch/sweep.py --sweepdir=sweeps/clip_tiny --summarize [--metrics=train/loss,...]

A config file's `get_sweep(arg)` (or `get_sweep()`) gets the same `arg` as its `get_config`
and returns either a list of override dicts, one per run,

  [{"optim.lr": 1e-3}, {"optim.lr": 3e-3, "optim.warmup_steps": 200}]

or a spec of a grid (every combination) and/or a random search (`samples` draws under
`seed`; a list is drawn from, a tuple is a range; drawn numbers keep 3 significant digits):

  {"grid": {"optim.lr": [1e-3, 2e-3], "seed": [0, 1]}}                       # 4 runs
  {"random": {"optim.lr": ("log_uniform", 1e-4, 1e-2),
              "optim.weight_decay": ("uniform", 0.0, 0.3), "model.embed_dim": [128, 256]},
   "samples": 8, "seed": 0}                                                   # 8 runs

With both, every random draw runs at every grid point (8 draws x `{"seed": [0, 1, 2]}` = 24
runs). Keys are config fields without `config.`. A run's workdir is `SWEEPDIR/<name>`, the
name listing its values under the shortest unambiguous key suffix: `lr=0.001,seed=1`.
Arguments after `--` go to every run and are not part of names.

Launchers: `local` runs `python -m eclip_jax.main` here, one run after another; `tpu_vm`
runs `launch/tpu_vm.sh` one run after another (slice `<--tpu_name>-<run index>`; zone, type,
... from its TPU_* environment variables); `slurm` submits each run with
`sbatch launch/slurm_gpu.sbatch` and returns. `--print` prints the commands instead.

`SWEEPDIR/sweep.jsonl` holds one line per run: name, overrides, workdir, command, status
(`running`, `done`, `failed`, `submitted`) and final metrics (each key's last value in the
run's `metrics.jsonl`, then `eval/*` from its `eval_results.json`). A sweep started again
skips runs that are `done` or `submitted` (delete a line to redo that run). `--summarize`
re-reads every run's metrics from its workdir and prints the markdown table.
"""

from __future__ import annotations

import importlib.util
import inspect
import itertools
import json
import math
import os
import pathlib
import random
import re
import shlex
import subprocess
import sys
from collections.abc import Mapping, Sequence

from absl import app, flags
from etils import epath

from eclip_jax import metrics as metrics_lib
from eclip_jax import summarize  # defines --metrics, the table's columns here too

_CONFIG = flags.DEFINE_string("config", None, "Config file[:arg] that defines get_sweep().")
_SWEEPDIR = flags.DEFINE_string("sweepdir", None, "Holds sweep.jsonl and one workdir per run.")
_LAUNCHER = flags.DEFINE_enum("launcher", "local", ["local", "slurm", "tpu_vm"],
                              "How each run is started.")
_PRINT = flags.DEFINE_bool("print", False, "Print the launcher commands instead of running.")
_SUMMARIZE = flags.DEFINE_bool("summarize", False, "Only print the table of the sweep's runs.")
_TPU_NAME = flags.DEFINE_string("tpu_name", "eclip-sweep", "tpu_vm: slices are <this>-<index>.")
flags.mark_flag_as_required("sweepdir")

INDEX_FILE = "sweep.jsonl"
EVAL_RESULTS_FILE = "eval_results.json"  # what `--mode=eval` writes (a DESIGN.md contract)
LAUNCH_DIR = pathlib.Path(__file__).resolve().parent
_FINISHED = ("done", "submitted")  # statuses a restarted sweep leaves alone


# --- Expanding a spec into runs ----------------------------------------------------------------
def expand(spec: Sequence[Mapping] | Mapping) -> list[dict]:
  """A `get_sweep()` result -> one override dict per run, in order, duplicates dropped."""
  if isinstance(spec, Sequence):
    runs = [dict(run) for run in spec]
  else:
    unknown = set(spec) - {"grid", "random", "samples", "seed"}
    if unknown:
      raise ValueError(f"unknown sweep keys {sorted(unknown)}; use grid, random, samples, seed")
    if "random" in spec and "samples" not in spec:
      raise ValueError("a random sweep needs `samples`, the number of runs to draw")
    draws = [{}]
    if "random" in spec:
      draws = _random(spec["random"], spec["samples"], spec.get("seed", 0))
    runs = [{**draw, **point} for draw in draws for point in _grid(spec.get("grid", {}))]
  # Random draws from short lists repeat; the same overrides would be the same run twice.
  return [run for i, run in enumerate(runs) if run not in runs[:i]]


def _grid(grid: Mapping[str, Sequence]) -> list[dict]:
  return [dict(zip(grid, values)) for values in itertools.product(*grid.values())]


def _random(domains: Mapping, samples: int, seed: int) -> list[dict]:
  rng = random.Random(seed)
  return [{key: _draw(rng, domain) for key, domain in domains.items()} for _ in range(samples)]


def _draw(rng: random.Random, domain):
  if isinstance(domain, list):
    return rng.choice(domain)
  kind, low, high = domain
  if kind == "uniform":
    value = rng.uniform(low, high)
  elif kind == "log_uniform":
    value = math.exp(rng.uniform(math.log(low), math.log(high)))
  else:
    raise ValueError(f"unknown range {kind!r}: use a list, ('uniform', low, high) or "
                     "('log_uniform', low, high)")
  return float(f"{value:.3g}")  # readable names; a sweep cannot tell 1.234e-3 from 1.23e-3


def format_value(value) -> str:
  """How a value is written on the command line: strings as they are, others as literals."""
  return value if isinstance(value, str) else repr(value)


def short_keys(keys: Sequence[str]) -> dict[str, str]:
  """Each dotted key's shortest suffix that no other key ends with: optim.lr -> lr."""
  short = {}
  for key in keys:
    parts, others = key.split("."), [other for other in keys if other != key]
    for n in range(1, len(parts) + 1):
      suffix = ".".join(parts[-n:])
      if not any(("." + other).endswith("." + suffix) for other in others):
        break
    short[key] = suffix
  return short


def run_names(runs: Sequence[Mapping]) -> list[str]:
  """`lr=0.001,seed=1`: safe as a path component on any filesystem and in gs://."""
  short = short_keys(list(dict.fromkeys(key for run in runs for key in run)))
  names = [re.sub(r"[^A-Za-z0-9._=,+-]", "_",
                  ",".join(f"{short[k]}={format_value(v)}" for k, v in run.items()) or "base")
           for run in runs]
  if len(set(names)) < len(names):
    raise ValueError(f"runs with different overrides got equal names: {names}")
  return names


def load_sweep(config_spec: str) -> list[dict]:
  """Imports the config file, expands its `get_sweep`, and checks every key is a field."""
  path, _, arg = config_spec.partition(":")
  # Config files import `configs.common`; `python -m eclip_jax.main` finds it the same way.
  sys.path.insert(0, os.getcwd())
  module_spec = importlib.util.spec_from_file_location("_sweep_config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  if not hasattr(module, "get_sweep"):
    raise ValueError(f"{path} defines no get_sweep(); see launch/sweep.py for its format")
  takes_arg = bool(inspect.signature(module.get_sweep).parameters)
  runs = expand(module.get_sweep(arg or None) if takes_arg else module.get_sweep())
  config = module.get_config(arg) if arg else module.get_config()
  for key in dict.fromkeys(key for run in runs for key in run):
    node = config
    for part in key.split("."):
      if not hasattr(node, "keys") or part not in node:
        raise ValueError(f"the sweep sets config.{key}, which {config_spec} does not have")
      node = node[part]
  return runs


# --- Launching ---------------------------------------------------------------------------------
def launch_command(launcher: str, index: int, name: str, workdir: str, config_spec: str,
                   overrides: Mapping, extra_args: Sequence[str]) -> list[str]:
  binary = [f"--config={config_spec}", f"--workdir={workdir}"]
  # The swept values last: on a repeated flag the last wins, and the sweep decides its own.
  rest = [*extra_args, *(f"--config.{k}={format_value(v)}" for k, v in overrides.items())]
  if launcher == "local":
    return [sys.executable, "-m", "eclip_jax.main", *binary, *rest]
  if launcher == "slurm":
    return ["sbatch", f"--job-name={name}", f"--output={workdir}/slurm-%j.out",
            _script("slurm_gpu.sbatch"), *binary, *rest]
  return [_script("tpu_vm.sh"), f"--name={_TPU_NAME.value}-{index}", *binary, "--", *rest]


def _script(filename: str) -> str:
  """The launcher script, relative to here when it is below (shorter printed commands)."""
  path = LAUNCH_DIR / filename
  return str(path.relative_to(pathlib.Path.cwd()) if path.is_relative_to(pathlib.Path.cwd())
             else path)


def execute(launcher: str, command: list[str], entry: dict) -> None:
  """Runs (or submits) one run, recording its outcome in `entry`."""
  if launcher == "slurm":
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    print(result.stdout + result.stderr, end="", flush=True)
    job = re.search(r"Submitted batch job (\d+)", result.stdout)
    entry.update(status="submitted" if result.returncode == 0 else "failed",
                 returncode=result.returncode, job=job and job.group(1))
    return
  returncode = subprocess.run(command, check=False).returncode  # output streams through
  entry.update(status="done" if returncode == 0 else "failed", returncode=returncode,
               metrics=final_metrics(entry["workdir"]))


# --- The index and its table -------------------------------------------------------------------
def read_index(sweepdir: str) -> dict[str, dict]:
  path = epath.Path(sweepdir) / INDEX_FILE
  if not path.exists():
    return {}
  entries = (json.loads(line) for line in path.read_text().splitlines() if line)
  return {entry["name"]: entry for entry in entries}


def write_index(sweepdir: str, index: Mapping[str, dict]) -> None:
  # Through a temporary file, so a sweep killed mid-write leaves the previous index whole.
  path = epath.Path(sweepdir) / INDEX_FILE
  temporary = path.parent / (INDEX_FILE + ".tmp")
  temporary.write_text("".join(json.dumps(entry) + "\n" for entry in index.values()))
  temporary.replace(path)


def final_metrics(workdir: str) -> dict[str, float]:
  """Each key's last value in `metrics.jsonl`, then `eval/*` from `eval_results.json`."""
  workdir = epath.Path(workdir)
  final = {}
  if (workdir / metrics_lib.METRICS_FILE).exists():
    final = summarize.final_metrics(workdir)
  if (workdir / EVAL_RESULTS_FILE).exists():
    results = json.loads((workdir / EVAL_RESULTS_FILE).read_text())
    final.update({f"eval/{key}": value for key, value in results.items() if key != "step"})
  return final


def summary_table(entries: Sequence[Mapping], metrics: Sequence[str]) -> str:
  """Markdown: a column per swept key, then status, last step and the chosen metrics."""
  keys = list(dict.fromkeys(key for entry in entries for key in entry["overrides"]))
  header = [*short_keys(keys).values(), "status", "step", *metrics]
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for entry in entries:
    final = entry.get("metrics", {})
    cells = [format_value(entry["overrides"][k]) if k in entry["overrides"] else "–"
             for k in keys]
    cells += [entry["status"], str(final.get("step", "–"))]
    cells += [f"{final[k]:.4f}" if final.get(k) is not None else "–" for k in metrics]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def summarize_sweep(sweepdir: str) -> str:
  index = read_index(sweepdir)
  if not index:
    sys.exit(f"{sweepdir} has no {INDEX_FILE}; run the sweep first")
  for entry in index.values():  # submitted runs keep training after the sweep returned
    entry["metrics"] = final_metrics(entry["workdir"])
  write_index(sweepdir, index)
  return summary_table(list(index.values()), flags.FLAGS.metrics)


# --- main --------------------------------------------------------------------------------------
def run_sweep(config_spec: str, sweepdir: str, launcher: str, extra_args: Sequence[str]) -> int:
  """Starts every run not yet done or submitted; returns how many failed."""
  runs = load_sweep(config_spec)
  index = read_index(sweepdir)
  todo = [(i, name, overrides) for i, (name, overrides) in enumerate(zip(run_names(runs), runs))
          if index.get(name, {}).get("status") not in _FINISHED]
  print(f"{len(runs)} runs in the sweep, {len(runs) - len(todo)} already done or submitted.")
  failed = 0
  for position, (i, name, overrides) in enumerate(todo, 1):
    workdir = os.fspath(epath.Path(sweepdir) / name)
    command = launch_command(launcher, i, name, workdir, config_spec, overrides, extra_args)
    if _PRINT.value:
      print(shlex.join(command))
      continue
    print(f"=== [{position}/{len(todo)}] {name}", flush=True)
    epath.Path(workdir).mkdir(parents=True, exist_ok=True)  # sbatch writes its log there
    index[name] = {"name": name, "overrides": overrides, "workdir": workdir,
                   "command": shlex.join(command), "status": "running"}
    write_index(sweepdir, index)
    execute(launcher, command, index[name])
    write_index(sweepdir, index)
    failed += index[name]["status"] == "failed"
  return failed


def main(argv):
  if _SUMMARIZE.value:
    print(summarize_sweep(_SWEEPDIR.value))
    return 0
  if not _CONFIG.value:
    sys.exit("--config names the file whose get_sweep() to run")
  failed = run_sweep(_CONFIG.value, _SWEEPDIR.value, _LAUNCHER.value, argv[1:])
  if _LAUNCHER.value != "slurm" and not _PRINT.value:
    print(summarize_sweep(_SWEEPDIR.value))
  if failed:
    print(f"{failed} runs failed; starting the sweep again retries them.", file=sys.stderr)
  return 1 if failed else 0


if __name__ == "__main__":
  app.run(main)
