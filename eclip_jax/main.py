r"""The binary: train or evaluate any method config.

  python -m eclip_jax.main --config=configs/clip.py:tiny --workdir=workdirs/clip_tiny \
      [--mode=train|eval] [--config.optim.lr=3e-4 ...]

`--mode=train` trains, resuming automatically from the workdir's latest checkpoint.
`--mode=eval` evaluates the latest checkpoint with `config.evals` and writes
`WORKDIR/eval_results.json`. `--mode=export` writes the latest checkpoint's parameters
alone to `WORKDIR/export/` for inference. Multi-process runs add `--coordinator_address=HOST:PORT
--num_processes=N --process_id=I` (on TPU VMs nothing is needed).
"""

from __future__ import annotations

import difflib
import importlib.util
import logging as python_logging
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file[:arg].", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (metrics, checkpoints).")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "eval", "export"], "What to do.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "HOST:PORT of process 0 for multi-process runs.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")
flags.mark_flags_as_required(["config", "workdir"])


def _parse_flags(argv: list[str]) -> list[str]:
  """absl parsing, but a `--config.x.y` override of a field that does not exist is one clear
  sentence instead of a traceback from inside ml_collections."""
  try:
    return flags.FLAGS(argv)
  except (AttributeError, KeyError):
    message = _unknown_override(argv)
    if message is None:
      raise
    print(f"FATAL: {message}", file=sys.stderr)
    sys.exit(2)


def _unknown_override(argv: list[str]) -> str | None:
  """'config.optim.lrr is not a known config field (did you mean config.optim.lr?).'"""
  spec = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
  if spec is None:
    return None
  path, _, arg = spec.partition(":")
  module_spec = importlib.util.spec_from_file_location("_config_file", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  config = module.get_config(arg) if arg else module.get_config()
  for override in argv:
    if not override.startswith("--config."):
      continue
    field = override.split("=", 1)[0].removeprefix("--")
    node, walked = config, "config"
    for key in field.split(".")[1:]:
      if not hasattr(node, "keys") or key not in node:
        close = difflib.get_close_matches(key, list(node.keys()) if hasattr(node, "keys") else [], 1)
        hint = f" (did you mean {walked}.{close[0]}?)" if close else ""
        return f"{field} is not a known config field{hint}."
      node, walked = node[key], f"{walked}.{key}"
  return None


def _initialize_distributed() -> None:
  import jax  # pylint: disable=g-import-not-at-top

  if _COORDINATOR.value:
    if os.environ.get("JAX_PLATFORMS", "") == "cpu":
      jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        _COORDINATOR.value, num_processes=_NUM_PROCESSES.value, process_id=_PROCESS_ID.value
    )


# Libraries that narrate every step of their work at INFO (Orbax logs ~30 lines per save).
_CHATTY_LIBRARIES = ("/orbax/", "/grain/", "/tensorflow_datasets/", "/jax/_src/")


def _quiet_library_logs() -> None:
  """Keeps warnings from everywhere but INFO only from eclip_jax (unless --verbosity>=1)."""
  if logging.get_verbosity() > logging.INFO:
    return

  def keep(record) -> bool:
    return record.levelno >= python_logging.WARNING or not any(
        part in record.pathname for part in _CHATTY_LIBRARIES)

  logging.get_absl_handler().addFilter(keep)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  _initialize_distributed()
  from eclip_jax import trainer  # pylint: disable=g-import-not-at-top  (after distributed init)

  _quiet_library_logs()
  config = _CONFIG.value
  if _MODE.value == "train":
    trainer.train(config, _WORKDIR.value)
  elif _MODE.value == "export":
    print(f"exported parameters to {trainer.export(config, _WORKDIR.value)}")
  else:
    results = trainer.evaluate(config, _WORKDIR.value)
    for key, value in sorted(results.items()):
      print(f"{key:40s} {value:.4f}")


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
