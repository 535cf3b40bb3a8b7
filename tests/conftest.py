"""Test-wide setup: 8 simulated CPU devices and one persistent compilation cache, set before
anything imports JAX."""

import atexit
import os
import shutil
import tempfile

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Many tests compile the same small programs (a tiny config's train step, its evaluators);
# XLA's persistent cache, keyed by the program, compiles each once per session (the same
# tests/test_trainer.py measured 240 s with it, 328 s without). Subprocesses inherit it.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _CACHE_DIR = tempfile.mkdtemp(prefix="eclip_jax_tests_jax_cache_")
  atexit.register(shutil.rmtree, _CACHE_DIR, ignore_errors=True)
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE_DIR
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

import pytest  # noqa: E402  (after the environment is set)


@pytest.fixture(scope="session")
def toyshop_tiny(tmp_path_factory):
  """toyshop/tiny and its tokenizer, built once per test session: (data_dir, builder)."""
  from eclip_jax.data import prepare  # pylint: disable=g-import-not-at-top

  data_dir = str(tmp_path_factory.mktemp("data"))
  builder, _ = prepare.prepare("toyshop/tiny", data_dir, num_workers=1, vocab_size=1000)
  return data_dir, builder


@pytest.fixture(scope="session")
def compilation_cache_env(tmp_path_factory):
  """Environment for subprocess runs sharing one persistent compilation cache: each distinct
  program compiles once per session instead of once per process (tens of seconds each)."""
  return {"JAX_COMPILATION_CACHE_DIR": str(tmp_path_factory.mktemp("jax_cache")),
          "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}


@pytest.fixture
def tiny_input_config(toyshop_tiny):
  """The default `input` section pointed at toyshop/tiny, small batches, in-process."""
  from eclip_jax.data import pipeline  # pylint: disable=g-import-not-at-top

  config = pipeline.default_input_config()
  config.data_dir = toyshop_tiny[0]
  config.vocab_size = 1000
  config.batch_size = 8
  config.image_size = 32
  return config


def pytest_configure(config):
  config.addinivalue_line(
      "markers", "slow: end-to-end runs (subprocesses, many steps); still run in CI"
  )


@pytest.fixture(scope="session")
def tiny_eclip_run(toyshop_tiny, tmp_path_factory):
  """A 6-step ECLIP tiny run on toyshop/tiny, its parameters sharded over a 2x2x2 mesh of the
  8 devices, evaluated at steps 3 and 6 (grounding pictures included), then exported:
  (workdir, config). What the inference, notebook and report tests read."""
  from configs import eclip  # pylint: disable=g-import-not-at-top
  from eclip_jax import trainer  # pylint: disable=g-import-not-at-top

  config = eclip.get_config("tiny,runlocal")
  config.input.data_dir = toyshop_tiny[0]
  config.input.vocab_size = 1000
  config.input.image_size = 32
  config.input.max_text_len = 16
  config.model.embed_dim = 32
  config.mesh = {"data": 2, "fsdp": 2, "tensor": 2}
  config.total_steps = 6
  config.log_every_steps = 2
  config.eval_every_steps = 3
  config.checkpoint_every_steps = 6
  workdir = tmp_path_factory.mktemp("eclip_run")
  trainer.train(config, str(workdir))
  trainer.export(config, str(workdir))
  return workdir, config
