r"""The binary: train or evaluate any method config.

  python -m eclip_jax.main --config=configs/clip.py:tiny --workdir=workdirs/clip_tiny \
      [--mode=train|eval] [--config.optim.lr=3e-4 ...]

`--mode=train` trains, resuming automatically from the workdir's latest checkpoint.
`--mode=eval` evaluates the latest checkpoint with `config.evals` and writes
`WORKDIR/eval_results.json`. `--mode=export` writes the latest checkpoint's parameters
alone to `WORKDIR/export/` for inference.

Multi-process runs add `--coordinator_address=HOST:PORT --num_processes=N --process_id=I`
(or set `ECLIP_COORDINATOR_ADDRESS`, `ECLIP_NUM_PROCESSES`, `ECLIP_PROCESS_ID`); on TPU VMs,
under SLURM (`srun`) or Open MPI nothing is needed: JAX detects the cluster. A process that
fails exits at once, and the others follow within `--heartbeat_timeout_seconds`.

Exit codes: 0 done; 75 (EX_TEMPFAIL) stopped by SIGTERM/SIGINT after saving a checkpoint, so
run the same command again to continue; 2 a usage error (a flag, the config file, a config
value); 1 another failure; 130 a second Ctrl-C, which stops at once. Errors end as one
`error: ...` line; `--verbosity=1` prints the traceback too.
"""

from __future__ import annotations

import difflib
import importlib.util
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from eclip_jax import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file[:arg].", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (metrics, checkpoints).")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "eval", "export"], "What to do.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", os.environ.get("ECLIP_COORDINATOR_ADDRESS"),
    "HOST:PORT of process 0 in a multi-process run (default $ECLIP_COORDINATOR_ADDRESS; not "
    "needed where JAX detects the cluster: TPU VMs, SLURM, Open MPI).")
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", os.environ.get("ECLIP_NUM_PROCESSES"),
    "Processes in the run (default $ECLIP_NUM_PROCESSES).")
_PROCESS_ID = flags.DEFINE_integer(
    "process_id", os.environ.get("ECLIP_PROCESS_ID"),
    "This process's index (default $ECLIP_PROCESS_ID).")
_INITIALIZATION_TIMEOUT = flags.DEFINE_integer(
    "initialization_timeout_seconds", 300,
    "How long the processes of a multi-process run wait for each other to start.")
_HEARTBEAT_TIMEOUT = flags.DEFINE_integer(
    "heartbeat_timeout_seconds", 30,
    "A process silent this long counts as dead, and every other process is terminated "
    "(JAX's default, 100, leaves the survivors of a dead peer hanging for minutes).")
_SHUTDOWN_TIMEOUT = flags.DEFINE_integer(
    "shutdown_timeout_seconds", 60,
    "How long a process that finished waits at exit for the others to finish too.")
flags.mark_flags_as_required(["config", "workdir"])

# sysexits.h EX_TEMPFAIL, "try again later": schedulers and launchers can requeue on it.
EXIT_PREEMPTED = 75


def _parse_flags(argv: list[str]) -> list[str]:
  """absl parsing with its errors as one `error:` line (exit 2); so are a config file that
  is missing or fails to load, and a `--config.x.y` override of a field that does not
  exist, instead of a traceback from inside ml_collections."""
  for spec in _config_specs(argv):
    if not os.path.isfile(spec.partition(":")[0]):
      cli.fail(f"--config={spec}: there is no config file {spec.partition(':')[0]}.",
               cli.EXIT_USAGE, argv=argv)
  try:
    argv = flags.FLAGS(argv)
    _CONFIG.value  # pylint: disable=pointless-statement  (loads the file, lazy otherwise)
    return argv
  except (AttributeError, KeyError) as error:  # what ml_collections raises for a bad override
    cli.fail(_unknown_override(argv) or error, cli.EXIT_USAGE, argv=argv)
  except Exception as error:  # pylint: disable=broad-except  (anything the config file raises)
    cli.fail(error, cli.EXIT_USAGE, argv=argv)


def _config_specs(argv: list[str]) -> list[str]:
  """`path[:arg]` of every `--config=path[:arg]` (absl loads each, and keeps the last)."""
  return [a.split("=", 1)[1] for a in argv if a.startswith("--config=")]


def _unknown_override(argv: list[str]) -> str | None:
  """'config.optim.lrr is not a known config field (did you mean config.optim.lr?).'"""
  specs = _config_specs(argv)
  if not specs:
    return None
  spec = specs[-1]
  path, _, arg = spec.partition(":")
  module_spec = importlib.util.spec_from_file_location("_config_file", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  config = module.get_config(arg) if arg else module.get_config()
  for override in argv:
    if not override.startswith("--config."):
      continue
    field = override.split("=", 1)[0].removeprefix("--")
    from eclip_jax import config_base  # pylint: disable=g-import-not-at-top  (loads JAX)

    moved = config_base.MOVED_FIELDS.get(field.removeprefix("config."))
    if moved:
      return f"{field} moved to config.{moved}; set that instead."
    node, walked = config, "config"
    for key in field.split(".")[1:]:
      if not hasattr(node, "keys") or key not in node:
        close = difflib.get_close_matches(key, list(node.keys()) if hasattr(node, "keys") else [], 1)
        hint = f" (did you mean {walked}.{close[0]}?)" if close else ""
        return f"{field} is not a known config field{hint}."
      node, walked = node[key], f"{walked}.{key}"
  return None


def _initialize_distributed() -> None:
  """Joins the run's other processes, if it has any (flags, else a cluster JAX detects)."""
  import jax  # pylint: disable=g-import-not-at-top

  if _COORDINATOR.value is None and _detected_process_count() == 1:
    return  # a lone process needs no coordination service
  jax.config.update("jax_cpu_collectives_implementation", "gloo")  # for CPU devices only
  jax.distributed.initialize(
      _COORDINATOR.value,
      num_processes=_NUM_PROCESSES.value,
      process_id=_PROCESS_ID.value,
      initialization_timeout=_INITIALIZATION_TIMEOUT.value,
      heartbeat_timeout_seconds=_HEARTBEAT_TIMEOUT.value,
      shutdown_timeout_seconds=_SHUTDOWN_TIMEOUT.value,
  )


def _detected_process_count() -> int:
  """Processes of the cluster `jax.distributed.initialize()` would detect, else 1.

  JAX has no public query for this; its cluster registry (Cloud TPU VMs and GKE, SLURM,
  Open MPI, Kubernetes) is the list `initialize()` itself walks. A one-process allocation
  (`salloc` with one task, a single-host TPU VM) is left alone, so that several such runs
  can share a machine without fighting over the coordinator port.
  """
  from jax._src import clusters  # pylint: disable=g-import-not-at-top

  for cluster in clusters.ClusterEnv._cluster_types:  # pylint: disable=protected-access
    if not cluster.opt_in_only_method and cluster.is_env_present():
      return cluster.get_process_count()
  return 1


# Least recently used programs are deleted beyond this (an eclip.py:tiny run writes ~2 MB).
COMPILATION_CACHE_MAX_BYTES = 4 << 30


def _use_compilation_cache(directory: str) -> None:
  """Points JAX's persistent compilation cache at `directory` (config.compilation_cache_dir)
  unless $JAX_COMPILATION_CACHE_DIR already chose one. Only process 0 writes entries (JAX);
  an entry that fails to read is recompiled. A local directory that cannot be created or
  written to leaves the cache off with one warning, instead of a warning per compile."""
  import jax  # pylint: disable=g-import-not-at-top

  if not directory or jax.config.jax_compilation_cache_dir:
    return
  directory = os.path.expanduser(directory)
  if "://" not in directory:  # a remote path (gs://...) is left to JAX's file system layer
    try:
      os.makedirs(directory, exist_ok=True)
      if not os.access(directory, os.W_OK):
        raise PermissionError(f"{directory} is not writable")
    except OSError as error:
      logging.warning("No compilation cache (config.compilation_cache_dir): %s; every "
                      "program compiles afresh.", error)
      return
  jax.config.update("jax_compilation_cache_dir", directory)
  jax.config.update("jax_compilation_cache_max_size", COMPILATION_CACHE_MAX_BYTES)


def _drop_abandoned_write_callbacks() -> None:
  """After a failed save, TensorStore finishes the writes Orbax abandoned by calling back into
  Orbax's closed event loop, and each 'Event loop is closed' reaches `sys.unraisablehook` as
  a traceback (dozens, around the error line that already says what failed)."""
  if logging.get_verbosity() > logging.INFO:
    return
  default = sys.unraisablehook

  def unraisablehook(unraisable):
    if not (unraisable.exc_type is RuntimeError
            and str(unraisable.exc_value) == "Event loop is closed"):
      default(unraisable)

  sys.unraisablehook = unraisablehook


def main(argv):
  cli.no_arguments(argv)
  try:
    _initialize_distributed()
  except Exception as error:  # pylint: disable=broad-except
    cli.fail(error, cli.EXIT_FAILURE)
  from eclip_jax import trainer  # pylint: disable=g-import-not-at-top  (after distributed init)

  cli.quiet_library_logs()
  _drop_abandoned_write_callbacks()
  _use_compilation_cache(_CONFIG.value.compilation_cache_dir)
  try:
    _run(_CONFIG.value, _WORKDIR.value)
  except trainer.Preempted as stop:
    print(stop, file=sys.stderr)
    sys.exit(EXIT_PREEMPTED)
  except KeyboardInterrupt:  # a second Ctrl-C (the first stops gracefully), or one at startup
    # At once: a save that hangs keeps a thread the interpreter's exit would wait for.
    cli.fail("interrupted; a checkpoint being written is left incomplete, and the run "
             "resumes from the last complete one when started again.", cli.EXIT_INTERRUPTED,
             at_once=True)
  except Exception as error:  # pylint: disable=broad-except
    from eclip_jax import checkpoint as checkpoint_lib  # pylint: disable=g-import-not-at-top

    cli.fail(checkpoint_lib.naming_the_workdir(error, _WORKDIR.value), at_once=_multiprocess())


def _run(config, workdir: str) -> None:
  from eclip_jax import trainer  # pylint: disable=g-import-not-at-top

  if _MODE.value == "train":
    trainer.train(config, workdir)
  elif _MODE.value == "export":
    print(f"exported parameters to {trainer.export(config, workdir)}")
  else:
    results = trainer.evaluate(config, workdir)
    for key, value in sorted(results.items()):
      print(f"{key:40s} {value:.4f}")


def _multiprocess() -> bool:
  """A failed process of a multi-process run exits at once instead of waiting in JAX's exit
  barrier (`--shutdown_timeout_seconds`) for peers stuck in a collective that waits for it;
  its closed connections make those peers fail at once too."""
  import jax  # pylint: disable=g-import-not-at-top

  return jax.process_count() > 1


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
