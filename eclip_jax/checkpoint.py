"""Checkpoints: Orbax `CheckpointManager` over `WORKDIR/checkpoints/<step>/`, async.

Each checkpoint holds three items:

- `state`: the train state (step, params, optimizer state), saved sharded by every process;
- `data`: each process's input iterator state (Grain's handler, one JSON file per process),
  so a resumed run sees exactly the batches an uninterrupted run would;
- `config`: the run's config as JSON, for notebooks and `--mode=eval`.

Restoring goes through an abstract target carrying the *current* mesh's shardings, so a
checkpoint written on one topology (8 devices) restores on another (1 device, a 2x2x2 mesh).
Orbax writes into a temporary directory and renames it when complete, so a crash mid-save
never leaves a checkpoint that looks finished. A finished one damaged later (a truncated or
deleted file) fails to restore; `restore_latest` then falls back to the one before it.

An async save blocks the loop for one dispatch: `save` copies the train state on the device
(the next step donates the state's buffers) and hands Orbax's `save` to a thread. Orbax's own
async save would block for its per-array host work before it returns (115–135 ms at
`clip.py:tiny`'s 240 arrays on 2 cores, 54–60% of a step; BENCHMARKS.md); the price is one more
copy of the train state in device memory until Orbax has copied it to the host
(`handoff=False`: Orbax's async save as it is, for a run that has no room for it).

A save that cannot be written (a read-only mount, a full disk, a bucket without write
permission) raises `CheckpointWriteError`, one sentence naming the folder and the OS error:
`check_writable` finds the usual cases before anything compiles, the step directory is
created in Orbax's `save` itself (Orbax's default creates it in a thread whose failure leaves
the save waiting for a signal for minutes), and `check_saves` surfaces a save that failed in
the background (in the handoff thread or in Orbax's) at the next step.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import errno
import json
import os
import re
from collections.abc import Callable, Mapping
from typing import Any

import grain
import jax
import jax.numpy as jnp
import ml_collections
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from eclip_jax import interop
from eclip_jax import optim

# What a checkpoint's data item restores into: an iterator, a function of the step giving
# one (when which iterator depends on the step), or nothing.
DataTarget = grain.DatasetIterator | Callable[[int], grain.DatasetIterator] | None

CHECKPOINT_DIR = "checkpoints"
EXPORT_PARAMS = "params"  # an export dir's params (`save_params`), beside its config.json
CORRUPT_SUFFIX = ".corrupt"  # an unreadable checkpoint is renamed `<step>.corrupt`
# TensorStore reports an OS error inside its message: "... No space left on device
# [os_error_code='28']".
_TENSORSTORE_OS_ERROR = re.compile(r"\[os_error_code='(\d+)'\]")


class CheckpointWriteError(RuntimeError):
  """A checkpoint (or the workdir) cannot be written; the message names the path and why."""


class _DataStateSnapshot:
  """The input iterator's state, frozen when `save` is called.

  Grain's handler calls `get_state()` when it writes, which with async checkpointing may be
  after training has moved on; a snapshot pins the state to the saved step. Grain's handler
  writes a non-`DatasetIterator` item's `get_state()` bytes verbatim (here: JSON).
  """

  def __init__(self, iterator: grain.DatasetIterator):
    self._state = json.dumps(iterator.get_state(), indent=1).encode()

  def get_state(self) -> bytes:
    return self._state


class Checkpointer:
  """Saves and restores the train state, the data iterator and the config of one run."""

  def __init__(self, workdir: str | epath.Path, *, keep: int = 3, keep_every: int = 0,
               async_save: bool = True, handoff: bool = True):
    self.directory = absolute(workdir) / CHECKPOINT_DIR
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep,
        keep_period=keep_every or None,  # steps divisible by it are never deleted
        enable_async_checkpointing=async_save,
        create=True,
        cleanup_tmp_directories=True,  # leftovers of a save interrupted by a crash
        # A step directory that cannot be created then fails in `save`, at once.
        async_options=ocp.AsyncOptions(create_directories_asynchronously=False),
    )
    self._manager = ocp.CheckpointManager(
        self.directory, item_names=("state", "data", "config"), options=options
    )
    self._unchecked_step = None  # the last save's step until its outcome is known
    # Async saves with a handoff: Orbax's `save` runs here, one at a time, in order.
    self._handoff = (concurrent.futures.ThreadPoolExecutor(1, "checkpoint_handoff")
                     if async_save and handoff else None)
    self._handed_off: concurrent.futures.Future | None = None  # the last handoff

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state: Any, data_iterator: grain.DatasetIterator | None,
           config: ml_collections.ConfigDict) -> None:
    """Saves `state` at `step`: async, returns once the state is copied (on the device with
    the handoff, else to the host); sync, once it is on disk."""
    self.wait()  # as Orbax's save would, but naming the step of a failure the right one
    items = {"config": ocp.args.JsonSave(json.loads(config.to_json_best_effort()))}
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointSave(_DataStateSnapshot(data_iterator))
    if self._handoff is None:
      self._save(step, state, items)
    else:
      self._handed_off = self._handoff.submit(self._save, step, copy_state(state), items)
    self._unchecked_step = step

  def _save(self, step: int, state: Any, items: dict[str, Any]) -> None:
    with self._naming_write_errors(step):
      self._manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                       **items), force=True)

  def check_saves(self) -> None:
    """Raises `CheckpointWriteError` if the last save failed in the background; does not
    wait for one still in progress (cheap enough to call every step)."""
    if self._unchecked_step is None or (self._handed_off and not self._handed_off.done()):
      return
    if not self._manager.is_saving_in_progress():
      self.wait()

  @contextlib.contextmanager
  def _naming_write_errors(self, step: int | None):
    """Orbax's write errors (OSError, or TensorStore's ValueError carrying an OS error
    code) as one `CheckpointWriteError` naming the directory."""
    try:
      yield
    except (OSError, ValueError) as error:
      reason = _os_error_reason(error)
      if reason is None:
        raise
      what = "checkpoints" if step is None else f"checkpoint {step}"
      raise write_error(self.directory, reason, what) from error

  def restore(self, step: int, abstract_state: Any, data_iterator: DataTarget = None,
              defaults: Mapping[str, Any] | None = None) -> Any:
    """The state at `step`, laid out as `abstract_state` says; restores the data iterator
    too (`data_iterator`: the iterator, or a function of the step giving it).

    A checkpoint written before the state had some field (a dataclass field of
    `abstract_state` it lacks) restores with that field taken from `defaults`.
    """
    missing = self._missing_fields(step, abstract_state)
    unfilled = sorted(set(missing) - set(defaults or {}))
    if unfilled:
      raise ValueError(f"checkpoint {step} in {self.directory} has no {unfilled} in its state; "
                       "it was written by an incompatible version.")
    target = abstract_state
    if missing:
      target = {name: getattr(abstract_state, name) for name in _field_names(abstract_state)
                if name not in missing}
    items = {"state": ocp.args.StandardRestore(target)}
    if callable(data_iterator):
      data_iterator = data_iterator(step)
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
    state = self._manager.restore(step, args=ocp.args.Composite(**items))["state"]
    if missing:
      state = abstract_state.replace(**state, **{name: defaults[name] for name in missing})
    return state

  def _missing_fields(self, step: int, abstract_state: Any) -> list[str]:
    if not dataclasses.is_dataclass(abstract_state):
      return []
    # The manager knows an item's handler only once it saved or restored it in this process.
    metadata = ocp.StandardCheckpointHandler().metadata(self.directory / str(step) / "state")
    saved = set(metadata.tree)
    return [name for name in _field_names(abstract_state) if name not in saved]

  def restore_latest(self, abstract_state: Any, data_iterator: DataTarget = None,
                     defaults: Mapping[str, Any] | None = None) -> Any | None:
    """The state of the newest checkpoint that restores (None without checkpoints);
    `data_iterator` and `defaults` as in `restore`.

    Newer ones that fail to restore on any process are renamed `<step>.corrupt`, with a
    warning naming them and the step used instead. When none restores, a RuntimeError says
    so (with the newest one's error) and nothing is renamed: a changed config fails on every
    step alike and is no corruption.
    """
    unreadable, errors = [], []
    for step in sorted(self.all_steps(), reverse=True):
      try:
        state, error = self.restore(step, abstract_state, data_iterator, defaults), None
      except Exception as e:  # pylint: disable=broad-except  (TensorStore raises `Exception`)
        state, error = None, e
      # Every process must resume from the same step, and each reads only its own shards.
      if not ocp.multihost.global_max([error is not None])[0]:
        if unreadable:
          self._set_aside(unreadable, step, errors)
        return state
      unreadable.append(step)
      errors.append(error)
    if unreadable:
      raise RuntimeError(
          f"no checkpoint in {self.directory} restores (the newest, {unreadable[0]}: "
          f"{_first_line(errors[0])}); a run whose model or optimizer config changed cannot "
          f"resume: train in a new --workdir (--config.init_from={self.directory.parent} "
          "loads the parameters that still fit).") from errors[0]
    return None

  def _set_aside(self, steps: list[int], restored_step: int,
                 errors: list[Exception | None]) -> None:
    """Renames unreadable checkpoints so that nothing resumes from or overwrites them."""
    reasons = "; ".join(f"{step}: {_first_line(error)}" for step, error in zip(steps, errors))
    logging.warning("Checkpoint(s) %s in %s do not restore (%s); restored step %d instead and "
                    "renamed them to <step>%s.", steps, self.directory, reasons, restored_step,
                    CORRUPT_SUFFIX)
    if jax.process_index() == 0:
      for step in steps:
        (self.directory / str(step)).rename(self.directory / f"{step}{CORRUPT_SUFFIX}")
    ocp.multihost.sync_global_processes(f"eclip_set_aside_{steps[0]}")
    self._manager.reload()

  def reached_preemption(self, step: int) -> bool:
    """True at the step where every process stops after any of them got a preemption notice
    (SIGTERM, through JAX's preemption sync manager); always False in a lone process that did
    not initialize `jax.distributed`."""
    return self._manager.reached_preemption(step)

  def restore_config(self, step: int) -> dict[str, Any]:
    return self._manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))[
        "config"
    ]

  def wait(self) -> None:
    """Blocks until the last async save is on disk; raises `CheckpointWriteError` if it
    failed."""
    step, self._unchecked_step = self._unchecked_step, None
    handed_off, self._handed_off = self._handed_off, None
    if handed_off is not None:
      handed_off.result()  # the handoff's own error, already named
    with self._naming_write_errors(step):
      self._manager.wait_until_finished()

  def close(self) -> None:
    self.wait()
    if self._handoff is not None:
      self._handoff.shutdown()
    self._manager.close()


@jax.jit
def copy_state(state: Any) -> Any:
  """`state` in new buffers, sharded alike, in one dispatch: what a save hands off, which
  the next step's donation of `state` leaves alone."""
  return jax.tree.map(jnp.copy, state)


def _field_names(state: Any) -> list[str]:
  return [field.name for field in dataclasses.fields(state)]


# What fails to write a file when storage, not the program, is the problem.
STORAGE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG, errno.EACCES, errno.EPERM)


def naming_the_workdir(error: Exception, workdir: str | epath.Path) -> Exception:
  """A full disk fails whichever writer of a run comes first (metrics, TensorBoard,
  pictures), mostly with an OS error that names no file: such an error becomes one that
  names the run's folder; any other is returned as it is."""
  if not (isinstance(error, OSError) and error.filename is None
          and error.errno in STORAGE_ERRNOS):
    return error
  named = write_error(workdir, error.strerror)
  named.__cause__ = error  # for the traceback --verbosity=1 prints
  return named


def write_error(directory: epath.Path, reason: str, what: str = "") -> CheckpointWriteError:
  """'cannot write [what ]to DIRECTORY: REASON; make it writable (...) or choose another
  --workdir.'"""
  return CheckpointWriteError(
      f"cannot write {what + ' ' if what else ''}to {directory}: {reason}; make it writable "
      "(a read-only mount? a full disk? no write permission on the bucket?) or choose another "
      "--workdir.")


def _os_error_reason(error: BaseException) -> str | None:
  """'No space left on device' for an OS error that is, or caused, `error`; else None."""
  while error is not None:
    if isinstance(error, OSError) and error.strerror:
      return f"{error.strerror} ({error.filename})" if error.filename else error.strerror
    code = _TENSORSTORE_OS_ERROR.search(str(error))
    if code:
      return os.strerror(int(code.group(1)))
    error = error.__cause__
  return None


def check_writable(workdir: str | epath.Path) -> None:
  """Raises `CheckpointWriteError` unless this process can create files in `workdir` and
  in its checkpoint folder (creating both), so that a run fails before compiling rather
  than at its first save."""
  workdir = absolute(workdir)
  for directory in (workdir, workdir / CHECKPOINT_DIR):
    probe = directory / f".write_test.{jax.process_index()}"
    try:
      directory.mkdir(parents=True, exist_ok=True)
      probe.write_text("")
      probe.unlink()
    except OSError as error:
      raise write_error(directory, _os_error_reason(error) or str(error)) from error


def latest_step(workdir: str | epath.Path) -> int | None:
  """The newest finished checkpoint's step in `workdir`, without creating anything."""
  directory = absolute(workdir) / CHECKPOINT_DIR
  if not directory.is_dir():
    return None
  return max(ocp.utils.checkpoint_steps(directory), default=None)


def _first_line(error: Exception | None) -> str:
  """What went wrong, in one line. TensorStore's restore errors run to pages (the whole
  store spec, printed as `<bound method ...>`); the error they wrap says what."""
  if error is None:
    return "failed on another process"
  while error.__cause__ is not None:
    error = error.__cause__
  return next(iter(str(error).splitlines()), type(error).__name__)[:500]


def absolute(path: str | epath.Path) -> epath.Path:
  """Orbax refuses relative paths; remote ones (gs://...) are already absolute."""
  path = epath.Path(path)
  return path if "://" in str(path) else path.resolve()


def abstract_with_shardings(tree: Any, shardings: Any) -> Any:
  """`jax.ShapeDtypeStruct`s carrying the target shardings: Orbax's restore target."""
  return jax.tree.map(
      lambda leaf, sharding: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding),
      tree,
      shardings,
  )


def _resolve_checkpoint_dir(path: str) -> tuple[epath.Path, int]:
  """`init_from` may name a run workdir, its `checkpoints/` dir or one step's dir."""
  path = absolute(path)
  if (path / CHECKPOINT_DIR).exists():
    path = path / CHECKPOINT_DIR
  if path.name.isdigit() and (path / "state").exists():
    return path.parent, int(path.name)
  steps = ocp.utils.checkpoint_steps(path) if path.exists() else []
  if not steps:
    raise FileNotFoundError(
        f"config.init_from={str(path)!r} has no checkpoint; point it at a run workdir, its "
        "checkpoints/ directory or one step's directory."
    )
  return path, max(steps)


def load_params(init_from: str, params: Any, abstract_params: Any, include: str, *,
                value_range: tuple[float, float] = (-1.0, 1.0)) -> Any:
  """`params` with the leaves whose path matches `include` replaced by those saved in
  `init_from` (params only; the optimizer state starts fresh).

  `init_from` is a run workdir, its `checkpoints/` dir, one step's dir, an export dir
  (`--mode=export`'s `WORKDIR/export`) or a weights file: a `.safetensors` (or PyTorch
  state dict) of this codebase's params or of an OpenAI/HF CLIP model (eclip_jax/interop.py,
  which also says what `value_range`, the input images' range, is for). Parameters a weights
  file lacks keep their values in `params`, with a warning naming them.
  """
  pattern = re.compile(include)
  wanted = optim.map_params(lambda path, _: bool(pattern.search(path)), params)
  target = _prune(abstract_params, wanted)
  if not target:
    raise ValueError(f"config.init_params={include!r} matches no parameter.")
  if interop.is_weight_file(init_from):
    loaded = _prune(interop.read_params(init_from, abstract_params, include=include,
                                        value_range=value_range), wanted)
    shardings = {path: leaf.sharding for path, leaf in interop.flatten(target).items()}
    restored = interop.unflatten({path: jax.device_put(value, shardings[path])
                                  for path, value in interop.flatten(loaded).items()})
    missing = sorted(set(shardings) - set(interop.flatten(restored)))
    if missing:
      logging.warning("%s has no weights for %d of the %d parameters config.init_params=%r "
                      "selects; they keep their initial values: %s", init_from, len(missing),
                      len(shardings), include, ", ".join(missing))
    source = init_from
  elif (absolute(init_from) / EXPORT_PARAMS).exists():
    restored = _restore_export(absolute(init_from) / EXPORT_PARAMS, target)
    source = init_from
  else:
    directory, step = _resolve_checkpoint_dir(init_from)
    with ocp.CheckpointManager(directory, item_names=("state",)) as manager:
      restored = manager.restore(
          step,
          args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
              item={"params": target},
              restore_args=ocp.checkpoint_utils.construct_restore_args({"params": target}),
              partial_restore=True,
          )),
      )["state"]["params"]
    source = f"{directory} step {step}"
  logging.info("Loaded %d parameter arrays from %s.", len(jax.tree.leaves(restored)), source)
  return _merge(params, restored)


def _restore_export(directory: epath.Path, target: dict) -> dict:
  """The leaves of `target` from an export's params (an Orbax PyTree of params alone)."""
  with ocp.PyTreeCheckpointer() as checkpointer:
    return checkpointer.restore(directory, args=ocp.args.PyTreeRestore(
        item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
        partial_restore=True))


def save_params(directory: epath.Path, params: Any) -> None:
  """Params alone as one Orbax PyTree (replaces an older export at the same path)."""
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(absolute(directory), params, force=True)


def _prune(tree: dict, wanted: dict) -> dict:
  """The sub-dict of `tree` whose leaves are `True` in `wanted` (empty branches dropped)."""
  pruned = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      value = _prune(value, wanted[key])
      if value:
        pruned[key] = value
    elif wanted[key]:
      pruned[key] = value
  return pruned


def _merge(tree: dict, update: dict) -> dict:
  return {key: _merge(value, update[key]) if isinstance(value, dict) and key in update
          else update.get(key, value) for key, value in tree.items()}
