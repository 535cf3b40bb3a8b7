"""Runs survive their faults: SIGKILL anywhere (mid-checkpoint too) loses only the steps since
the last complete checkpoint, SIGTERM saves and exits so that a re-run continues, and a
damaged latest checkpoint falls back to the one before. Each compares bitwise with an
uninterrupted run."""

import errno
import logging
import os
import random
import re
import shutil
import signal
import subprocess
import threading
import time

import jax
import numpy as np
import pytest
from absl import logging as absl_logging

from eclip_jax import checkpoint as checkpoint_lib
from eclip_jax import cli, trainer
from eclip_jax.data import pipeline
from tests.helpers import (EXIT_PREEMPTED, binary_command, final_params, finish, logged_steps,
                           losses, start, subprocess_env, tiny_config, wait_until)

STEPS = 10
FLAGS = (f"--config.stop_after_steps={STEPS}", "--config.checkpoint_every_steps=2")


@pytest.fixture(scope="module")
def reference(toyshop_tiny, tmp_path_factory, compilation_cache_env):
  """The workdir of an uninterrupted run of STEPS steps (checkpoints 6, 8, 10 kept)."""
  workdir = tmp_path_factory.mktemp("reference")
  log = workdir.parent / "reference.log"
  code, output = finish(start(binary_command(workdir, toyshop_tiny[0], *FLAGS),
                              subprocess_env(compilation_cache_env), log), log)
  assert code == 0, output[-3000:]
  return workdir


def _complete_steps(workdir) -> list[int]:
  """Finished checkpoints: Orbax renames a temporary directory to the step when done."""
  directory = workdir / checkpoint_lib.CHECKPOINT_DIR
  return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


def _writing(workdir) -> list[int]:
  """Steps whose checkpoint is being written (temporary directories)."""
  directory = workdir / checkpoint_lib.CHECKPOINT_DIR
  return [int(p.name.split(".")[0]) for p in directory.glob("*.orbax-checkpoint-tmp*")]


def _resumed_from(output: str) -> int | None:
  match = re.search(r"Resuming from \S+/checkpoints/(\d+)\.", output)
  return int(match.group(1)) if match else None


def _assert_same_as(workdir, reference, data_dir) -> None:
  config = tiny_config(data_dir)
  jax.tree.map(np.testing.assert_array_equal, final_params(workdir, config),
               final_params(reference, config))
  assert losses(workdir) == losses(reference) and len(losses(workdir)) == STEPS


@pytest.mark.slow
def test_sigkill_anywhere_then_resume_is_exact(reference, toyshop_tiny, tmp_path,
                                               compilation_cache_env):
  """Kills at a random step, during an async checkpoint write (training already past the
  step being saved) and at a random time after start; each restart resumes from the last
  complete checkpoint, and the run ends as if never interrupted."""
  rng = random.Random(0)
  workdir = tmp_path / "run"
  command, env = binary_command(workdir, toyshop_tiny[0], *FLAGS), subprocess_env(compilation_cache_env)
  resume_step = None
  for attempt, kill_point in enumerate(("random step", "async write", "random time")):
    log = tmp_path / f"attempt_{attempt}.log"
    started = time.monotonic()
    process = start(command, env, log)
    if kill_point == "random step":
      step = rng.randint(2, STEPS // 2)  # leaves checkpoints to write for the next attempt
      wait_until(lambda: step in logged_steps(log), process)  # noqa: B023
    elif kill_point == "async write":
      wait_until(lambda: any(s < max(logged_steps(log), default=0)  # noqa: B023
                             for s in _writing(workdir)), process, poll=0.002)
    else:
      delay = rng.uniform(0.5, 4.0)  # within the startup and first steps
      wait_until(lambda: time.monotonic() - started > delay, process)  # noqa: B023
    process.kill()
    process.wait()
    if kill_point != "random time":  # which may come before the restore
      assert _resumed_from(log.read_text()) == resume_step, kill_point
    if kill_point == "async write":  # the write was cut short and is not a checkpoint
      assert _writing(workdir) and not set(_writing(workdir)) & set(_complete_steps(workdir))
    resume_step = max(_complete_steps(workdir), default=None)

  log = tmp_path / "final.log"
  code, output = finish(start(command, env, log), log)
  assert code == 0, output[-3000:]
  assert _resumed_from(output) == resume_step
  _assert_same_as(workdir, reference, toyshop_tiny[0])


@pytest.mark.slow
def test_sigterm_saves_and_a_rerun_continues(reference, toyshop_tiny, tmp_path,
                                             compilation_cache_env):
  workdir = tmp_path / "run"
  command, env = binary_command(workdir, toyshop_tiny[0], *FLAGS), subprocess_env(compilation_cache_env)
  first, second = tmp_path / "first.log", tmp_path / "second.log"
  process = start(command, env, first)
  wait_until(lambda: 3 in logged_steps(first), process)
  process.send_signal(signal.SIGTERM)
  code, output = finish(process, first)

  stopped = logged_steps(first)[-1]
  assert code == EXIT_PREEMPTED and 3 <= stopped < STEPS, output[-3000:]
  checkpoint = workdir / checkpoint_lib.CHECKPOINT_DIR / str(stopped)
  assert (f"Stopped by SIGTERM/SIGINT after step {stopped} and saved checkpoint {checkpoint}; "
          "run the same command again to continue from there." in output)
  assert _complete_steps(workdir)[-1] == stopped  # saved there, even between the every-2 saves

  code, output = finish(start(command, env, second), second)
  assert code == 0, output[-3000:]
  assert _resumed_from(output) == stopped and logged_steps(second)[0] == stopped + 1
  _assert_same_as(workdir, reference, toyshop_tiny[0])


@pytest.mark.slow
def test_truncated_latest_checkpoint_falls_back_to_the_previous(reference, toyshop_tiny,
                                                                tmp_path, compilation_cache_env):
  workdir = tmp_path / "run"
  shutil.copytree(reference, workdir)
  previous, latest = _complete_steps(workdir)[-2:]
  state_files = (workdir / checkpoint_lib.CHECKPOINT_DIR / str(latest) / "state").rglob("*")
  largest = max((p for p in state_files if p.is_file()), key=lambda p: p.stat().st_size)
  os.truncate(largest, largest.stat().st_size // 2)

  log = tmp_path / "run.log"
  code, output = finish(start(binary_command(workdir, toyshop_tiny[0], *FLAGS),
                              subprocess_env(compilation_cache_env), log), log)
  assert code == 0, output[-3000:]
  assert re.search(rf"^W.*Checkpoint\(s\) \[{latest}\] in \S+ do not restore \(.+\); restored "
                   rf"step {previous} instead", output, re.M), output[-3000:]
  assert _resumed_from(output) == previous and logged_steps(log)[0] == previous + 1
  assert (workdir / checkpoint_lib.CHECKPOINT_DIR / f"{latest}.corrupt").is_dir()
  _assert_same_as(workdir, reference, toyshop_tiny[0])  # steps 9, 10 redone exactly


@pytest.mark.slow
# Orbax leaves the reads of the failed restores' other arrays unawaited.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_deleted_file_falls_back_but_a_changed_config_renames_nothing(reference, toyshop_tiny,
                                                                       tmp_path, caplog):
  workdir = tmp_path / "run"
  shutil.copytree(reference, workdir)
  (workdir / checkpoint_lib.CHECKPOINT_DIR / "10" / "state" / "_METADATA").unlink()
  config = tiny_config(toyshop_tiny[0])

  other_model = tiny_config(toyshop_tiny[0], **{"model.embed_dim": 16})
  checkpointer = checkpoint_lib.Checkpointer(workdir)
  with pytest.raises(Exception):  # every step fails alike: no corruption, nothing renamed
    checkpointer.restore_latest(trainer.Setup(other_model).abstract_state)
  assert checkpointer.all_steps() == [6, 8, 10]

  with caplog.at_level(logging.WARNING):
    state = checkpointer.restore_latest(trainer.Setup(config).abstract_state)
  checkpointer.close()
  assert int(state.step) == 8 and checkpointer.all_steps() == [6, 8]
  assert re.search(r"Checkpoint\(s\) \[10\] in \S+ do not restore .*restored step 8 instead",
                   caplog.text)
  intact = checkpoint_lib.Checkpointer(reference)
  expected = intact.restore(8, trainer.Setup(config).abstract_state)
  intact.close()
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.params),
               jax.device_get(expected.params))


# --- Checkpoints that cannot be written: one sentence naming the path, never a hang. --------
def _error_lines(output: str) -> list[str]:
  return [line for line in output.splitlines() if line.startswith("error: ")]


def test_an_unwritable_workdir_fails_before_compiling(toyshop_tiny, tmp_path,
                                                      compilation_cache_env):
  (tmp_path / "file").write_text("")
  workdir = tmp_path / "file" / "run"  # under a regular file: nothing can be created there
  log = tmp_path / "run.log"
  started = time.monotonic()
  code, output = finish(start(binary_command(workdir, toyshop_tiny[0]),
                              subprocess_env(compilation_cache_env), log), log, timeout=30)
  assert time.monotonic() - started < 30
  assert code == 1 and output.strip().splitlines() == [
      f"error: cannot write to {workdir}: Not a directory ({workdir}); make it writable (a "
      "read-only mount? a full disk? no write permission on the bucket?) or choose another "
      "--workdir."], output[-3000:]


# What writing into such a directory fails with (root: EPERM, from the immutable attribute).
_READ_ONLY_REASON = os.strerror(errno.EPERM if os.geteuid() == 0 else errno.EACCES)


@pytest.fixture
def make_read_only():
  """Makes directories unwritable for this process, as a read-only mount does: chmod, or as
  root (whom modes do not stop) the immutable attribute. Undone at teardown."""
  made = []

  def make(directory):
    directory.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
      if not shutil.which("chattr") or subprocess.run(["chattr", "+i", directory]).returncode:
        pytest.skip("root, and no immutable attribute here to make a directory read-only")
    else:
      directory.chmod(0o555)
    made.append(directory)
    try:
      (directory / "probe").mkdir()
    except OSError:
      return directory
    pytest.skip(f"could not make {directory} read-only")

  yield make
  for directory in made:
    if os.geteuid() == 0:
      subprocess.run(["chattr", "-i", str(directory)], check=True)
    else:
      directory.chmod(0o755)


def test_a_read_only_checkpoint_folder_fails_before_compiling(toyshop_tiny, tmp_path,
                                                              compilation_cache_env,
                                                              make_read_only):
  """It used to train up to the first save, then wait 300 s (ignoring Ctrl-C) for a signal
  from the thread that had failed to create the step directory."""
  workdir = tmp_path / "run"
  directory = make_read_only(workdir / checkpoint_lib.CHECKPOINT_DIR)
  log = tmp_path / "run.log"
  process = start(binary_command(workdir, toyshop_tiny[0]), subprocess_env(compilation_cache_env), log)
  try:
    code, output = finish(process, log, timeout=30)
  finally:
    process.kill()
  assert code == 1 and output.strip().splitlines() == [
      f"error: cannot write to {directory}: {_READ_ONLY_REASON} ({directory}/.write_test.0); "
      "make it writable (a read-only mount? a full disk? no write permission on the bucket?) "
      "or choose another --workdir."], output[-3000:]


def test_a_checkpoint_folder_that_becomes_read_only_fails_the_save_at_once(
    tmp_path, tiny_input_config, make_read_only):
  """Orbax's default creates the step directory in a thread whose failure left the save (of
  the data iterator's state, written synchronously) waiting 300 s for a signal; now the save
  raises within seconds, naming the folder."""
  config = tiny_config()
  state = trainer.Setup(config).init_state()
  data_iterator = pipeline.make_train_iterator(tiny_input_config, seed=0)
  checkpointer = checkpoint_lib.Checkpointer(tmp_path)
  directory = make_read_only(tmp_path / checkpoint_lib.CHECKPOINT_DIR)
  raised = []

  def save():
    try:
      checkpointer.save(1, state, data_iterator, config)
      checkpointer.wait()
    except Exception as error:  # pylint: disable=broad-except
      raised.append(error)

  thread = threading.Thread(target=save, daemon=True)
  thread.start()
  thread.join(timeout=20)
  assert not thread.is_alive(), "the save hangs"
  assert [str(e) for e in raised] == [
      f"cannot write checkpoint 1 to {directory}: {_READ_ONLY_REASON} "
      f"({directory}/1.orbax-checkpoint-tmp); make it writable (a read-only mount? a full disk? "
      "no write permission on the bucket?) or choose another --workdir."]
  assert isinstance(raised[0], checkpoint_lib.CheckpointWriteError)
  checkpointer.close()
  data_iterator.close()


# Runs a command whose files may not grow past 256 KiB: writes past it fail with EFBIG, as
# on a full disk (the signal that would kill the process instead is ignored).
_LIMIT_FILE_SIZE = ["bash", "-c", 'ulimit -f 256 && trap "" XFSZ && exec "$@"', "limit"]


def test_a_full_disk_error_that_names_no_file_names_the_workdir():
  """Any writer may meet the full disk first (metrics, TensorBoard, pictures); Python's
  error for a failed write names no file."""
  name_the_workdir = checkpoint_lib.naming_the_workdir
  full = name_the_workdir(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), "/runs/a")
  assert str(full) == (
      "cannot write to /runs/a: No space left on device; make it writable (a read-only mount? "
      "a full disk? no write permission on the bucket?) or choose another --workdir.")
  missing = FileNotFoundError(errno.ENOENT, "No such file or directory", "/runs/a/x")
  assert name_the_workdir(missing, "/runs/a") is missing


@pytest.mark.slow
def test_a_save_that_fails_in_the_background_stops_the_run(toyshop_tiny, tmp_path,
                                                           compilation_cache_env):
  """The arrays of the step-5 save fail to write after training moved on: the run stops
  within seconds with one line naming the folder and the OS error."""
  workdir, log = tmp_path / "run", tmp_path / "run.log"
  command = _LIMIT_FILE_SIZE + binary_command(workdir, toyshop_tiny[0])
  code, output = finish(start(command, subprocess_env(compilation_cache_env), log), log, timeout=60)
  assert code == 1, output[-3000:]
  assert output.strip().splitlines()[-1] == (
      f"error: cannot write checkpoint 5 to {workdir / 'checkpoints'}: File too large; make it "
      "writable (a read-only mount? a full disk? no write permission on the bucket?) or "
      "choose another --workdir."), output[-3000:]
  assert len(_error_lines(output)) == 1 and "Traceback" not in output
  assert not _complete_steps(workdir)


def test_a_second_ctrl_c_interrupts_at_once():
  """The first SIGINT asks for a graceful stop; the second raises KeyboardInterrupt, even
  while a save (here: a sleep) would otherwise keep the run waiting."""
  with trainer._stop_on_signals(None) as stop_requested:  # pylint: disable=protected-access
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.1)
    assert stop_requested(1)
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
      os.kill(os.getpid(), signal.SIGINT)
      time.sleep(10)
    assert time.monotonic() - started < 5
  assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


# Orbax leaves the reads of the failed restore's other arrays unawaited.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_the_fallback_warning_says_why_a_checkpoint_does_not_restore(tmp_path, caplog):
  config = tiny_config()
  setup = trainer.Setup(config)
  state = setup.init_state()
  checkpointer = checkpoint_lib.Checkpointer(tmp_path)
  for step in (1, 2):
    checkpointer.save(step, state, None, config)
  checkpointer.wait()
  files = (tmp_path / checkpoint_lib.CHECKPOINT_DIR / "2" / "state").rglob("*")
  largest = max((p for p in files if p.is_file()), key=lambda p: p.stat().st_size)
  os.truncate(largest, largest.stat().st_size // 2)
  with caplog.at_level(logging.WARNING):
    checkpointer.restore_latest(setup.abstract_state)
  checkpointer.close()
  assert checkpointer.all_steps() == [1]
  # TensorStore's own message, not its `<bound method ...>` dump of the store spec.
  assert re.search(r"Checkpoint\(s\) \[2\] in \S+ do not restore \(2: OUT_OF_RANGE: Error "
                   r"reading .*Requested byte range \[\d+, \d+\) is not valid for value of "
                   r"size \d+\); restored step 1 instead", caplog.text), caplog.text
  assert "bound method" not in caplog.text


def test_library_errors_lose_their_tracebacks_and_ours_keep_them():
  """Without --verbosity, a library's logged error (asyncio's report of an Orbax task's
  unretrieved error included) prints no traceback that could precede `cli.fail`'s line."""
  handler = absl_logging.get_absl_handler()
  before = list(handler.filters)
  cli.quiet_library_logs()
  try:
    (keep,) = [f for f in handler.filters if f not in before]

    def record(path: str, level: int) -> logging.LogRecord:
      try:
        raise ValueError("a failed write")
      except ValueError as error:
        return logging.LogRecord("x", level, path, 1, "failed", None,
                                 (ValueError, error, error.__traceback__))

    for library in ("/py/lib/python3.11/asyncio/base_events.py",
                    "/venv/site-packages/orbax/checkpoint/checkpoint_manager.py"):
      logged = record(library, logging.ERROR)
      assert keep(logged) and logged.exc_info is None, library
    ours = record("/repo/eclip_jax/trainer.py", logging.ERROR)
    assert keep(ours) and ours.exc_info is not None
    assert not keep(record("/venv/site-packages/orbax/checkpoint/checkpoint_manager.py",
                           logging.INFO))
  finally:
    handler.filters[:] = before
