"""Multi-process runs on loopback, as on a pod: two processes train exactly like one, write a
checkpoint one process restores, stop together on a signal to either, and a dead process
ends the run; the local launcher's commands and exit codes (its shellcheck is in
test_launch.py, with the other scripts')."""

import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from eclip_jax import checkpoint as checkpoint_lib
from tests.helpers import (EXIT_PREEMPTED, REPO, binary_args, binary_command, final_params,
                           finish, logged_steps, losses, process_commands, start, subprocess_env,
                           tiny_config, wait_until)

LAUNCHER = REPO / "launch" / "local_multiprocess.sh"


# --- Tests. -------------------------------------------------------------------------------
@pytest.mark.slow
def test_two_processes_train_like_one(toyshop_tiny, tmp_path, compilation_cache_env):
  """2 processes x 4 devices (through the launcher) == 1 process x 8 devices: same losses,
  and the checkpoint both processes wrote restores in this one process."""
  data_dir = toyshop_tiny[0]
  flags = ("--config.stop_after_steps=5", "--config.checkpoint_every_steps=5")
  env = subprocess_env(compilation_cache_env, N="2", DEVICES="4", PYTHON=sys.executable)
  two = start([str(LAUNCHER), *binary_args(tmp_path / "two", data_dir, *flags)], env,
              tmp_path / "two.log")
  one = start(binary_command(tmp_path / "one", data_dir, *flags), subprocess_env(compilation_cache_env),
              tmp_path / "one.log")
  for process, log in ((one, "one.log"), (two, "two.log")):
    code, output = finish(process, tmp_path / log)
    assert code == 0, output[-3000:]

  assert len(losses(tmp_path / "one")) == 5
  np.testing.assert_allclose(losses(tmp_path / "two"), losses(tmp_path / "one"), rtol=1e-6)
  two_checkpoints = tmp_path / "two" / checkpoint_lib.CHECKPOINT_DIR
  assert checkpoint_lib.Checkpointer(tmp_path / "two").all_steps() == [5]
  assert sorted(p.name for p in (two_checkpoints / "5" / "data").glob("*.json")) == [
      "process_0-of-2.json", "process_1-of-2.json"]
  config = tiny_config(data_dir)
  # Adam turns reduction-order noise into ~1e-6 differences (see test_trainer).
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
               final_params(tmp_path / "two", config), final_params(tmp_path / "one", config))


@pytest.mark.slow
def test_sigterm_to_one_process_stops_all_at_one_step(toyshop_tiny, tmp_path,
                                                      compilation_cache_env):
  commands = process_commands(tmp_path / "run", toyshop_tiny[0], "--config.stop_after_steps=200",
                              "--config.checkpoint_every_steps=0")
  env = subprocess_env(compilation_cache_env, devices=4)
  logs = [tmp_path / f"process_{i}.log" for i in range(2)]
  processes = [start(command, env, log) for command, log in zip(commands, logs)]
  wait_until(lambda: 2 in logged_steps(logs[0]), processes[0])
  processes[1].send_signal(signal.SIGTERM)  # a preemption notice reaching one host only
  results = [finish(process, log) for process, log in zip(processes, logs)]

  assert [code for code, _ in results] == [EXIT_PREEMPTED] * 2, results[0][1][-3000:]
  steps = checkpoint_lib.Checkpointer(tmp_path / "run").all_steps()
  assert len(steps) == 1 and 2 < steps[0] < 200
  for _, output in results:
    assert (f"saved checkpoint {tmp_path / 'run' / 'checkpoints' / str(steps[0])}; run the same "
            "command again" in output)
  assert logged_steps(logs[0])[-1] == steps[0]


@pytest.mark.slow
def test_a_dead_process_ends_the_other(toyshop_tiny, tmp_path, compilation_cache_env):
  """SIGKILL process 1 mid-training: process 0 (the coordinator) exits non-zero well within
  60 s: it fails at its next collective, or after --heartbeat_timeout_seconds=30 at the
  latest. (Process 0 dying ends process 1 the same way, through JAX's error polling.)"""
  victim, survivor = 1, 0
  commands = process_commands(tmp_path / "run", toyshop_tiny[0],
                              "--config.stop_after_steps=1000", "--config.checkpoint_every_steps=0")
  env = subprocess_env(compilation_cache_env, devices=4)
  logs = [tmp_path / f"process_{i}.log" for i in range(2)]
  processes = [start(command, env, log) for command, log in zip(commands, logs)]
  wait_until(lambda: 3 in logged_steps(logs[0]), processes[0])
  processes[victim].kill()
  killed_at = time.monotonic()
  code, output = finish(processes[survivor], logs[survivor], timeout=120)
  elapsed = time.monotonic() - killed_at
  assert code != 0, output[-3000:]
  assert elapsed < 60, elapsed
  processes[victim].wait()


@pytest.mark.parametrize("dry_run", [("--dry_run",), ()])
def test_launcher_dry_run_prints_the_commands(dry_run):
  env = {**os.environ, "N": "3", "DEVICES": "2", "PORT": "4321", "PYTHON": "python3",
         "DRY_RUN": "0" if dry_run else "1"}
  result = subprocess.run([str(LAUNCHER), *dry_run, "--config=configs/clip.py:tiny",
                           "--workdir=runs/a b"], capture_output=True, text=True, env=env,
                          check=True)
  assert result.stdout.splitlines() == [
      "env JAX_PLATFORMS=cpu XLA_FLAGS=--xla_force_host_platform_device_count=2 python3 -m "
      f"eclip_jax.main --coordinator_address=127.0.0.1:4321 --num_processes=3 --process_id={i} "
      r"--config=configs/clip.py:tiny --workdir=runs/a\ b" for i in range(3)]


FAKE_PYTHON = """#!/usr/bin/env bash
# Stands in for python: process 1 fails at once with exit code 3 when FAIL is set; the others
# run until a SIGTERM, which they answer like a preempted run.
for arg in "$@"; do
  if [[ "$arg" == --process_id=1 && -n "${FAIL:-}" ]]; then exit 3; fi
done
sleep 20 &
trap 'kill $!; exit 75' TERM
touch "$STARTED_DIR/$$"
wait
"""


@pytest.mark.parametrize("fail", [True, False])
def test_launcher_exit_codes(tmp_path, fail):
  """One process failing ends the others and the launcher with its code; a SIGTERM to the
  launcher reaches every process, and their preempted exit code comes back."""
  fake_python = tmp_path / "python"
  fake_python.write_text(FAKE_PYTHON)
  fake_python.chmod(0o755)
  started_dir = tmp_path / "started"
  started_dir.mkdir()
  env = {**os.environ, "N": "3", "PORT": "4321", "PYTHON": str(fake_python),
         "FAIL": "1" if fail else "", "STARTED_DIR": str(started_dir)}
  started = time.monotonic()
  launcher = subprocess.Popen([str(LAUNCHER), "--workdir=unused"], env=env)
  if not fail:
    wait_until(lambda: len(list(started_dir.iterdir())) == 3, launcher, timeout=10)
    launcher.send_signal(signal.SIGTERM)
  assert launcher.wait(timeout=20) == (3 if fail else EXIT_PREEMPTED)
  assert time.monotonic() - started < 10  # nobody waited for the 20 s sleeps
