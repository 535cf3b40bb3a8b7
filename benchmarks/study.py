"""What the study scripts (ladder.py, scale_evidence.py) share: runs of the binary one after
another, each in a workdir that says when it has finished, and a record of the finished
runs' final figures that outlives the workdirs (`summarize.update_record`). A run the record
holds is not trained again, so a study goes on where it stopped on a machine that lost the
workdirs; to measure a recorded run again, remove its entry (or record elsewhere).

Unlike `harness.py` it sets nothing up for JAX: a study's runs are subprocesses.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from absl import app  # noqa: E402

from eclip_jax import summarize  # noqa: E402


def split_argv(argv: list[str]) -> tuple[list[str], list[str]]:
  """(the script's own arguments, the flags after `--` that every run gets)."""
  if "--" not in argv:
    return argv, []
  return argv[:argv.index("--")], argv[argv.index("--") + 1:]


def run(command: list[str]) -> None:
  print("+ " + " ".join(command), flush=True)
  subprocess.run(command, check=True)


def finished(workdir: str, final_key: str) -> bool:
  """Whether the run in `workdir` has logged `final_key`, the last figure it writes."""
  path = os.path.join(workdir, "metrics.jsonl")
  return os.path.isfile(path) and final_key in summarize.final_metrics(workdir)


def record(path: str, workdirs: dict[str, str], keys) -> dict[str, dict]:
  """Adds the finished runs (name -> workdir) to the toyshop record at `path`; returns its
  runs. A record of another world exits with its one-line error."""
  from eclip_jax.data import builders  # pylint: disable=g-import-not-at-top (loads TFDS)
  try:
    return summarize.update_record(path, workdirs, keys,
                                   world=f"toyshop {builders.Toyshop.VERSION}")
  except app.UsageError as error:
    sys.exit(str(error))


def recorded_runs(path: str) -> set[str]:
  """The names of the runs the record at `path` holds (none without one)."""
  if not os.path.isfile(path):
    return set()
  with open(path) as f:
    return set(json.load(f)["runs"])


def train_and_record(name: str, workdir: str, command: list[str], final_key: str,
                     record_path: str, keys) -> None:
  """Runs `command` (which trains into `workdir`, resuming it) unless the record holds `name`
  or `workdir` has finished, then records the run at once: a study stopped later keeps it."""
  if name in recorded_runs(record_path):
    print(f"{name}: in {record_path}, skipped", flush=True)
    return
  if finished(workdir, final_key):
    print(f"{workdir}: done, skipped", flush=True)
  else:
    run(command)
  record(record_path, {name: workdir}, keys)
