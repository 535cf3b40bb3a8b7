"""Helpers shared by the tests: a tiny config, synthetic batches, compiled steps, and the
binary run in subprocesses (one process or several on loopback)."""

import os
import pathlib
import re
import socket
import subprocess
import sys
import time

import jax
import numpy as np

from configs import clip
from eclip_jax import checkpoint as checkpoint_lib
from eclip_jax import metrics as metrics_lib
from eclip_jax import parallel, trainer

REPO = pathlib.Path(__file__).resolve().parents[1]
EXIT_PREEMPTED = 75
# Every subprocess run shares total_steps (the learning-rate schedule is compiled into the
# step), so the compilation cache serves all of them.
RUN_FLAGS = ("--config.total_steps=1000", "--config.log_every_steps=1")
# The overrides that make a clip.py:tiny,runlocal run take seconds (`tiny_config`'s sizes).
TINY_FLAGS = ("--config.input.vocab_size=1000", "--config.input.image_size=32",
              "--config.input.batch_size=16", "--config.input.max_text_len=16",
              "--config.model.embed_dim=32")


# --- In-process: a tiny config, synthetic batches, compiled steps. --------------------------
def tiny_config(data_dir=None, **overrides):
  """clip.py:tiny,runlocal at test size (32 px, 16 tokens, batch 16), with dotted overrides."""
  config = clip.get_config("tiny,runlocal")
  config.model.image.variant = "tiny"
  config.input.image_size = 32
  config.input.max_text_len = 16
  config.input.vocab_size = 1000
  config.input.batch_size = 16
  config.model.embed_dim = 32
  if data_dir is not None:
    config.input.data_dir = data_dir
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split(".")
    for parent in parents:
      node = node[parent]
    node[leaf] = value
  return config


def random_batch(config, rng=0):
  """A synthetic batch for `config`: random images and titles, pairs of duplicate listings."""
  rng = np.random.default_rng(rng)
  b, size, length = config.input.batch_size, config.input.image_size, config.input.max_text_len
  lengths = rng.integers(3, length + 1, size=b)
  mask = np.arange(length)[None] < lengths[:, None]
  catalog = rng.permutation(b) // 2  # pairs of duplicate listings
  return {
      "image": rng.integers(0, 256, size=(b, size, size, 3), dtype=np.uint8),
      "text_tokens": np.where(mask, rng.integers(4, 900, size=(b, length)), 0).astype(np.int32),
      "text_mask": mask,
      "product_id": np.arange(b, dtype=np.int32),
      "catalog_id": catalog.astype(np.int32),
  }


def run_steps(config, mesh, state_host, batches):
  """Runs the compiled step from `state_host` (numpy) on `mesh`; returns losses and params."""
  setup = trainer.Setup(config, mesh)
  state = jax.device_put(state_host, setup.state_shardings)
  losses = []
  step_fn = None
  for batch in batches:
    batch = parallel.to_global(batch, mesh)
    step_fn = step_fn or trainer.compile_train_step(setup, batch)
    state, metrics = step_fn(state, batch)
    losses.append(float(metrics["loss"]))
  return losses, jax.device_get(state.params)


def run_binary(workdir, data_dir, *flags, check=True):
  """Runs the binary on a tiny config to the end; raises with its stderr if it fails."""
  command = binary_command(workdir, data_dir, *flags, run_flags=())
  result = subprocess.run(command, capture_output=True, text=True, cwd=REPO,
                          env=plain_cpu_env(), timeout=600)
  if check and result.returncode:
    raise AssertionError(result.stderr[-3000:])
  return result


def plain_cpu_env():
  return {**os.environ, "JAX_PLATFORMS": "cpu",
          "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}


def final_params(workdir, config):
  """The params of the latest checkpoint in `workdir`, on the host."""
  setup = trainer.Setup(config)
  checkpointer = checkpoint_lib.Checkpointer(workdir)
  state = checkpointer.restore(checkpointer.latest_step(), setup.abstract_state)
  checkpointer.close()
  return jax.device_get(state.params)


# --- Subprocesses: the binary, alone or as several processes on loopback. -----------------
def binary_args(workdir, data_dir, *flags, run_flags=RUN_FLAGS) -> list[str]:
  """The binary's flags for a tiny run (the settings `tiny_config` describes)."""
  return ["--config=configs/clip.py:tiny,runlocal", f"--workdir={workdir}",
          f"--config.input.data_dir={data_dir}", *TINY_FLAGS, *run_flags, *flags]


def binary_command(*args, **kwargs) -> list[str]:
  return [sys.executable, "-m", "eclip_jax.main", *binary_args(*args, **kwargs)]


def subprocess_env(compilation_cache_env, devices: int = 8, **extra) -> dict[str, str]:
  return {**plain_cpu_env(), **compilation_cache_env,
          "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", **extra}


def start(command, env, log_path) -> subprocess.Popen:
  """Starts `command` in the repo with stdout and stderr going to `log_path`."""
  with open(log_path, "w") as log:
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)


def finish(process: subprocess.Popen, log_path, timeout=300) -> tuple[int, str]:
  code = process.wait(timeout=timeout)
  return code, pathlib.Path(log_path).read_text()


def wait_until(condition, process: subprocess.Popen, timeout=300, poll=0.05) -> None:
  """Polls `condition()` until true; fails if `process` exits first or time runs out."""
  deadline = time.monotonic() + timeout
  while not condition():
    assert process.poll() is None, f"the process exited ({process.returncode}) too early"
    assert time.monotonic() < deadline, "timed out"
    time.sleep(poll)


def logged_steps(log_path) -> list[int]:
  """The steps of the progress lines process 0 printed ("step 3/1000 | loss ...")."""
  return [int(s) for s in re.findall(r"^step (\d+)/", pathlib.Path(log_path).read_text(), re.M)]


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def process_commands(workdir, data_dir, *flags, num_processes=2) -> list[list[str]]:
  port = free_port()
  return [binary_command(workdir, data_dir, *flags, f"--coordinator_address=127.0.0.1:{port}",
                         f"--num_processes={num_processes}", f"--process_id={i}")
          for i in range(num_processes)]


def losses(workdir) -> list[float]:
  return [row["train/loss"] for row in metrics_lib.read_metrics(workdir)]


