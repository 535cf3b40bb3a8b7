"""The trainer: sharded steps equal single-device ones, exact resume, resharding restore,
init_from, misconfiguration errors, non-finite loss."""

import json
import logging
import re
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from eclip_jax import checkpoint as checkpoint_lib
from eclip_jax import evals as evals_lib
from eclip_jax import metrics as metrics_lib
from eclip_jax import parallel, trainer
from tests.helpers import (REPO, binary_command, final_params, plain_cpu_env, random_batch,
                           run_binary, run_steps, tiny_config)


@pytest.mark.parametrize("mesh_config", [{"data": 8}, {"data": 4, "fsdp": 2},
                                         {"data": 2, "fsdp": 2, "tensor": 2}])
def test_sharded_steps_equal_single_device(mesh_config):
  config = tiny_config(**{"loss.positives": "catalog"})
  single = parallel.make_mesh({"data": 1}, devices=jax.devices()[:1])
  state = jax.device_get(trainer.Setup(config, single).init_state())
  batches = [random_batch(config, rng=i) for i in range(2)]
  losses_1, params_1 = run_steps(config, single, state, batches)
  losses_8, params_8 = run_steps(config, parallel.make_mesh(mesh_config), state, batches)
  np.testing.assert_allclose(losses_8, losses_1, rtol=1e-5)
  # Adam divides by sqrt(v): entries with near-zero gradients turn reduction-order noise into
  # ~1e-6 absolute differences, far below the ~1e-3 size of an update.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
               params_8, params_1)
  assert losses_1[1] != losses_1[0]  # the step really updated the params


def test_the_step_scales_uint8_pixels_on_the_device_as_the_host_would():
  config = tiny_config()
  config.input.value_range = (-0.5, 2.0)
  low, high = config.input.value_range
  single = parallel.make_mesh({"data": 1}, devices=jax.devices()[:1])
  state = jax.device_get(trainer.Setup(config, single).init_state())
  pixels = random_batch(config)  # uint8 images, as the pipeline's
  host = dict(pixels, image=(low + pixels["image"] * np.float64((high - low) / 255)).astype(
      np.float32))
  losses_pixels, params_pixels = run_steps(config, single, state, [pixels])
  losses_host, params_host = run_steps(config, single, state, [host])
  np.testing.assert_allclose(losses_pixels, losses_host, rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               params_pixels, params_host)


def test_init_is_sharded_by_the_rules():
  config = tiny_config()
  config.mesh = {"data": 2, "fsdp": 2, "tensor": 2}
  setup = trainer.Setup(config)
  state = setup.init_state()
  kernel = state.params["image_tower"]["encoder"]["block_0"]["mlp"]["fc1"]["kernel"]
  assert kernel.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
  # Each device holds a quarter of it: split over fsdp (2) x tensor (2).
  assert kernel.addressable_shards[0].data.size == kernel.size // 4


@pytest.mark.slow
def test_resume_is_exact(toyshop_tiny, tmp_path):
  """6 steps straight == 3 steps, a new process, 3 more: bitwise params, equal losses."""
  data_dir = toyshop_tiny[0]
  common = ["--config.total_steps=6", "--config.log_every_steps=1",
            "--config.checkpoint_every_steps=3"]
  run_binary(tmp_path / "straight", data_dir, *common)
  run_binary(tmp_path / "resumed", data_dir, *common, "--config.stop_after_steps=3")
  assert checkpoint_lib.Checkpointer(tmp_path / "resumed").all_steps() == [3]
  run_binary(tmp_path / "resumed", data_dir, *common)

  config = tiny_config(toyshop_tiny[0])
  straight, resumed = (final_params(tmp_path / name, config) for name in ("straight", "resumed"))
  jax.tree.map(np.testing.assert_array_equal, straight, resumed)
  loss = lambda name: [r["train/loss"] for r in metrics_lib.read_metrics(tmp_path / name)]  # noqa: E731
  assert loss("straight") == loss("resumed") and len(loss("straight")) == 6


def test_checkpoint_restores_on_other_meshes(tmp_path, monkeypatch):
  config = tiny_config()
  setup_8 = trainer.Setup(config, parallel.make_mesh({"data": 4, "fsdp": 2}))
  state = setup_8.init_state()
  monkeypatch.chdir(tmp_path)  # a relative workdir, as `make demo` passes
  checkpointer = checkpoint_lib.Checkpointer("run")
  checkpointer.save(1, state, None, config)
  checkpointer.wait()
  expected = jax.device_get(state.params)
  for mesh in (parallel.make_mesh({"data": 1}, devices=jax.devices()[:1]),
               parallel.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})):
    setup = trainer.Setup(config, mesh)
    restored = checkpointer.restore(1, setup.abstract_state)
    leaves = jax.tree.leaves(restored.params)
    assert all(leaf.sharding.mesh.shape == mesh.shape for leaf in leaves)
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(restored.params), expected)
  checkpointer.close()


@pytest.mark.parametrize("handoff", [True, False])
def test_an_async_save_holds_the_state_it_was_given_while_steps_donate_it(tmp_path, handoff):
  """`save` returns before the checkpoint is written and the next steps donate the state's
  buffers: what is written is still the state `save` was given. The handoff's device-side
  copy is sharded as the state and shares no buffer with it."""
  config = tiny_config()
  setup = trainer.Setup(config, parallel.make_mesh({"data": 4, "fsdp": 2}))
  state = setup.init_state()
  expected = jax.device_get(state)
  copied = checkpoint_lib.copy_state(state)
  for leaf, copy in zip(jax.tree.leaves(state), jax.tree.leaves(copied)):
    assert copy.sharding.is_equivalent_to(leaf.sharding, leaf.ndim)
    assert {s.data.unsafe_buffer_pointer() for s in copy.addressable_shards}.isdisjoint(
        s.data.unsafe_buffer_pointer() for s in leaf.addressable_shards)
  del copied
  step = jax.jit(lambda state: jax.tree.map(lambda x: x + 1, state), donate_argnums=0)
  checkpointer = checkpoint_lib.Checkpointer(tmp_path, handoff=handoff)
  checkpointer.save(1, state, None, config)
  for _ in range(3):
    state = step(state)
  checkpointer.check_saves()
  checkpointer.wait()
  restored = jax.device_get(checkpointer.restore(1, setup.abstract_state))
  jax.tree.map(np.testing.assert_array_equal, restored, expected)
  np.testing.assert_array_equal(jax.device_get(state.step), expected.step + 3)
  checkpointer.close()


class _DispatchedStep:
  """A step's result that records when the loop blocks on it."""

  def __init__(self, index: int, blocked_on: list[int]):
    self.index, self._blocked_on = index, blocked_on

  def block_until_ready(self):
    self._blocked_on.append(self.index)
    return self


@pytest.mark.parametrize("limit,blocked_on", [(0, []), (1, [0, 1, 2, 3]), (2, [0, 1, 2]),
                                              (3, [0, 1])])
def test_the_loop_waits_for_the_oldest_step_beyond_max_steps_in_flight(limit, blocked_on):
  """After each dispatch, fewer than `limit` steps stay unfinished, the oldest waited for first."""
  waited = []
  in_flight = trainer.StepsInFlight(limit)
  for index in range(4):
    in_flight.add({"loss": _DispatchedStep(index, waited)})
  assert waited == blocked_on


def test_init_from_loads_only_matching_params(tmp_path):
  config = tiny_config()
  source = trainer.Setup(config).init_state()
  checkpointer = checkpoint_lib.Checkpointer(tmp_path / "pretrained")
  checkpointer.save(7, source, None, config)
  checkpointer.close()

  config.seed = 1
  setup = trainer.Setup(config)
  fresh = setup.init_state()
  loaded = checkpoint_lib.load_params(str(tmp_path / "pretrained"), fresh.params,
                                      setup.abstract_state.params, "^image_tower/")
  np.testing.assert_array_equal(loaded["image_tower"]["patch_embed"]["kernel"],
                                source.params["image_tower"]["patch_embed"]["kernel"])
  np.testing.assert_array_equal(loaded["text_tower"]["token_embed"],
                                fresh.params["text_tower"]["token_embed"])
  with pytest.raises(ValueError, match="matches no parameter"):
    checkpoint_lib.load_params(str(tmp_path / "pretrained"), fresh.params,
                               setup.abstract_state.params, "^nothing/")


# --- Misconfiguration: one sentence, before compiling. ---------------------------------------
def test_batch_not_divisible_by_data_parallel_size(toyshop_tiny):
  config = tiny_config(toyshop_tiny[0], **{"input.batch_size": 12})
  with pytest.raises(ValueError, match=r"config.input.batch_size=12 is not divisible by the "
                                       r"data-parallel size 8"):
    trainer.validate_config(config, parallel.make_mesh({"data": 8}))


def test_unknown_config_field_in_a_file(toyshop_tiny):
  config = tiny_config(toyshop_tiny[0])
  config.optim.lrr = 3.0
  with pytest.raises(ValueError, match=r"config.optim.lrr is not a known config field"):
    trainer.validate_config(config, parallel.make_mesh({"data": 8}))


def test_unknown_loss_impl(toyshop_tiny):
  config = tiny_config(toyshop_tiny[0], **{"loss.impl": "allreduce"})
  with pytest.raises(ValueError, match=r"config.loss.impl='allreduce' is unknown"):
    trainer.validate_config(config, parallel.make_mesh({"data": 8}))


def test_unknown_config_override_on_the_command_line(tmp_path):
  result = run_binary(tmp_path, "unused", "--config.optim.lrr=3", check=False)
  assert result.returncode != 0
  assert result.stderr.strip().splitlines() == [
      "error: config.optim.lrr is not a known config field (did you mean config.optim.lr?)."]


def test_missing_dataset_and_tokenizer(toyshop_tiny, tmp_path):
  mesh = parallel.make_mesh({"data": 8})
  with pytest.raises(FileNotFoundError, match=r"input.dataset='toyshop/tiny' is not built"):
    trainer.validate_config(tiny_config(str(tmp_path)), mesh)
  config = tiny_config(toyshop_tiny[0], **{"input.vocab_size": 123})
  with pytest.raises(FileNotFoundError, match=r"the tokenizer .*spm_unigram_123.model does not "
                                              r"exist; set config.input.tokenizer"):
    trainer.validate_config(config, mesh)


def test_mesh_that_does_not_fit():
  with pytest.raises(ValueError, match=r"config.mesh=.* does not fit 8 devices"):
    parallel.make_mesh({"data": 3, "fsdp": -1})


def test_non_finite_loss_stops_without_saving(toyshop_tiny, tmp_path):
  config = tiny_config(toyshop_tiny[0], **{"optim.lr": 1e30, "optim.warmup_steps": 0,
                                       "optim.grad_clip": 0.0, "total_steps": 6,
                                       "log_every_steps": 1, "checkpoint_every_steps": 2})
  config.evals = {}
  with pytest.raises(trainer.NonFiniteLossError, match=r"non-finite at step \d"):
    trainer.train(config, str(tmp_path))
  checkpointer = checkpoint_lib.Checkpointer(tmp_path)
  for step in checkpointer.all_steps():  # whatever was saved came from a finite state
    state = checkpointer.restore(step, trainer.Setup(config).abstract_state)
    assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(jax.device_get(state.params)))
  checkpointer.close()


def test_training_run_writes_the_contract_outputs(toyshop_tiny, tmp_path):
  """A short run on toyshop/tiny: loss goes down, metrics.jsonl and eval_results.json keys."""
  config = tiny_config(toyshop_tiny[0], **{"total_steps": 30, "log_every_steps": 10,
                                       "optim.lr": 3e-3, "optim.warmup_steps": 5,
                                       "checkpoint_every_steps": 30})
  trainer.train(config, str(tmp_path))
  rows = metrics_lib.read_metrics(tmp_path)
  train_rows = [r for r in rows if "train/loss" in r]
  assert [r["step"] for r in train_rows] == [10, 20, 30]
  assert train_rows[-1]["train/loss"] < train_rows[0]["train/loss"]
  for key in ("train/lr", "train/grad_norm", "train/param_norm", "train/clip/loss",
              "train/clip/logit_scale", "train/clip/i2t_acc",
              "perf/steps_per_sec", "perf/examples_per_sec", "perf/data_wait_frac",
              "perf/device_idle_frac"):
    assert key in train_rows[-1], key
  assert any("eval/retrieval/i2t_r1" in r for r in rows)
  assert json.loads((tmp_path / "config.json").read_text())["total_steps"] == 30

  results = trainer.evaluate(config, str(tmp_path))
  on_disk = json.loads((tmp_path / trainer.EVAL_RESULTS_FILE).read_text())
  assert on_disk == results and on_disk["step"] == 30
  last_eval = [r for r in rows if "eval/retrieval/i2t_r1" in r][-1]
  assert on_disk["retrieval/i2t_r1"] == pytest.approx(last_eval["eval/retrieval/i2t_r1"])

  exported = trainer.export(config, str(tmp_path))
  setup = trainer.Setup(config)
  with ocp.StandardCheckpointer() as checkpointer:
    params = checkpointer.restore(exported / "params", setup.abstract_state.params)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(params),
               final_params(tmp_path, config))


def test_a_moved_config_override_names_its_new_home(tmp_path):
  result = run_binary(tmp_path, "unused", "--config.loss.instance_selection=text", check=False)
  assert result.returncode != 0
  assert result.stderr.strip().splitlines() == [
      "error: config.loss.instance_selection moved to config.eclip.instance_selection; set "
      "that instead."]


# --- Numeric ranges: one sentence naming the field, before compiling. ------------------------
@pytest.mark.parametrize("field, value, message", [
    ("total_steps", -5, "config.total_steps=-5: must be an integer >= 1"),
    ("log_every_steps", 0, "config.log_every_steps=0: must be an integer >= 1"),
    ("eval_every_steps", -1, "config.eval_every_steps=-1: must be an integer >= 0"),
    ("checkpoint_every_steps", -2, "config.checkpoint_every_steps=-2: must be an integer >= 0"),
    ("keep_checkpoints", 0, "config.keep_checkpoints=0: must be an integer >= 1"),
    ("optim.lr", float("nan"), "config.optim.lr=nan: must be a finite number >= 0"),
    ("optim.lr", -1e-3, "config.optim.lr=-0.001: must be a finite number >= 0"),
    ("optim.warmup_steps", -1, "config.optim.warmup_steps=-1: must be an integer >= 0"),
    ("optim.weight_decay", -0.1, "config.optim.weight_decay=-0.1: must be a finite number >= 0"),
    ("optim.grad_clip", float("inf"), "config.optim.grad_clip=inf: must be a finite number >= 0"),
    ("optim.b2", 1.0, "config.optim.b2=1.0: must be a finite number in [0, 1)"),
    ("optim.eps", 0.0, "config.optim.eps=0.0: must be a finite number > 0"),
    ("max_steps_in_flight", -1, "config.max_steps_in_flight=-1: must be an integer >= 0"),
    ("input.batch_size", 0, "config.input.batch_size=0: must be an integer >= 1"),
    ("input.num_views", 0, "config.input.num_views=0: must be an integer >= 1"),
    ("input.max_text_len", 1, "config.input.max_text_len=1: must be an integer >= 2"),
    ("input.crop_scale", (0.0, 1.0),
     "config.input.crop_scale=(0.0, 1.0): each entry must be a finite number in (0, 1]"),
    ("input.crop_scale", (0.9, 0.5),
     "config.input.crop_scale=(0.9, 0.5) must be two finite numbers, the first smaller"),
    ("input.background", (0, 0, 256),
     "config.input.background=(0, 0, 256): each entry must be an integer in [0, 255]"),
    ("input.image_size", 30, "config.input.image_size=30 is not a multiple of the ViT patch "
                             "size 8 (config.model.image); use a multiple of 8, e.g. 32."),
    ("evals.retrieval.batch_size", 0,
     "config.evals.retrieval.batch_size=0: must be an integer >= 1"),
])
def test_numeric_fields_out_of_range(toyshop_tiny, field, value, message):
  config = tiny_config(toyshop_tiny[0], **{field: value})
  with pytest.raises(ValueError, match=re.escape(message)):
    trainer.validate_config(config, parallel.make_mesh({"data": 8}))


# --- Stock configs on a manifest dataset. ----------------------------------------------------
@pytest.fixture(scope="module")
def manifest_data(tmp_path_factory):
  """Two manifest datasets in one data_dir: `held_out` (train 24, validation 8) and
  `train_only` (train 24); no boxes. Returns the data_dir."""
  from eclip_jax.data import prepare  # pylint: disable=g-import-not-at-top
  from tests import test_manifest  # pylint: disable=g-import-not-at-top

  root = tmp_path_factory.mktemp("manifest")
  colors = ["red", "blue", "green", "yellow"]
  images = [test_manifest._write_image(root / f"{c}.jpg", c, "JPEG") for c in colors]
  lines = [{"product_id": f"p{i}", "title": f"{colors[i % 4]} mug {i}", "category": "mug",
            "images": [str(images[i % 4])], "split": "validation" if i >= 24 else "train"}
           for i in range(32)]
  data_dir = str(root / "data")
  for name, kept in (("held_out", lines), ("train_only", lines[:24])):
    prepare.prepare(f"product_manifest/{name}", data_dir,
                    manifest=str(test_manifest._write_manifest(root / f"{name}.jsonl", kept)),
                    vocab_size=1000)
  return data_dir


def test_stock_evaluators_use_the_held_out_split_a_manifest_has(manifest_data, caplog):
  """clip.py's evaluators ask for validation and test; a manifest with only validation
  evaluates all of them there (with a warning for each that asked for test)."""
  config = tiny_config(manifest_data, **{"input.dataset": "product_manifest/held_out"})
  mesh = parallel.make_mesh({"data": 8})
  trainer.validate_config(config, mesh)
  with caplog.at_level(logging.WARNING):
    evaluators = evals_lib.build_evaluators(
        config.evals, input_config=config.input, apply_fn=None, mesh=mesh)
  assert {name: e.data.split for name, e in evaluators.items()} == dict.fromkeys(
      ["retrieval", "zeroshot", "product_retrieval", "grounding", "downstream"], "validation")
  for name in ("product_retrieval", "grounding", "downstream"):
    assert (f"config.evals.{name}.split='test' is not a split of product_manifest/held_out; "
            "evaluating on its 'validation' split instead.") in caplog.text


def test_evaluators_without_a_split_are_reported_in_one_message(manifest_data):
  config = tiny_config(manifest_data, **{"input.dataset": "product_manifest/train_only"})
  with pytest.raises(ValueError, match=re.escape(
      "config.evals.grounding.split='test', config.evals.product_retrieval.split='test', "
      "config.evals.retrieval.split='validation', config.evals.zeroshot.split='validation' are "
      "not splits of the dataset (product_manifest/train_only has ['train']); pass "
      "--config.evals.grounding.split=train --config.evals.product_retrieval.split=train "
      "--config.evals.retrieval.split=train --config.evals.zeroshot.split=train, or "
      "give the dataset a held-out split (manifest lines with \"split\": \"validation\").")):
    trainer.validate_config(config, parallel.make_mesh({"data": 8}))
  # The downstream suite, which training skips, is left out of that message (its own says
  # what it lacks when --mode=eval builds it).
  config.evals.downstream.split = "train"
  with pytest.raises(ValueError, match=re.escape(
      "config.evals.downstream: the probes would train on the split they are scored on")):
    evals_lib.build_evaluators(config.evals, input_config=config.input, apply_fn=None,
                               mesh=parallel.make_mesh({"data": 8}))


def test_a_batch_larger_than_the_train_split_warns(manifest_data, caplog):
  config = tiny_config(manifest_data, **{"input.dataset": "product_manifest/held_out",
                                     "input.batch_size": 32})
  with caplog.at_level(logging.WARNING):
    trainer.validate_config(config, parallel.make_mesh({"data": 8}))
  assert ("config.input.batch_size=32 is larger than the 24 examples of "
          "product_manifest/held_out's 'train' split: every batch holds some of them more "
          "than once.") in caplog.text


@pytest.mark.slow
def test_the_stock_clip_config_trains_and_evaluates_on_a_manifest(manifest_data, tmp_path):
  """configs/clip.py unchanged but for the dataset: trains, evaluates all four evaluators on
  the manifest's validation split (grounding, without boxes, reports its counts only)."""
  run_binary(tmp_path, manifest_data, "--config.input.dataset=product_manifest/held_out")
  final = metrics_lib.read_metrics(tmp_path)[-1]
  assert final["step"] == 10
  assert final["eval/retrieval/num_examples"] == final["eval/zeroshot/num_examples"] == 8
  assert final["eval/grounding/num_examples"] == 0
  assert final["eval/grounding/num_without_box"] == 8
  assert checkpoint_lib.Checkpointer(tmp_path).all_steps() == [5, 10]


# --- The binary's errors: one line, exit 2 for usage errors and 1 for failures. -------------
def _one_error_line(result, code):
  lines = (result.stdout + result.stderr).strip().splitlines()
  assert result.returncode == code, lines[-20:]
  assert len(lines) == 1 and lines[0].startswith("error: "), lines[-20:]
  return lines[0]


@pytest.mark.parametrize("flags, code, line", [
    (["--config.total_steps=abc"], 2,
     "error: flag --config.total_steps=abc: invalid literal for int() with base 10: 'abc'"),
    (["--config.total_steps=-5"], 2,
     "error: config.total_steps=-5: must be an integer >= 1; set --config.total_steps to such "
     "a value."),
    (["--config.input.dataset=nosuchset"], 2,
     "error: input.dataset='nosuchset': there is no dataset 'nosuchset'; use toyshop/<config>, "
     "product_manifest[/<name>] or m5product[/<name>]."),
    (["--config.input.dataset=toyshop/tinny"], 2,
     "error: input.dataset='toyshop/tinny': there is no toyshop config 'tinny' (did you mean "
     "toyshop/tiny?)"),
    (["--mode=eval"], 1, "error: {workdir} has no checkpoint to evaluate; train first."),
    (["--mode=export"], 1, "error: {workdir} has no checkpoint to export; train first."),
])
def test_binary_errors_are_one_line(toyshop_tiny, tmp_path, flags, code, line):
  workdir = tmp_path / "run"
  result = run_binary(workdir, toyshop_tiny[0], *flags, check=False)
  assert _one_error_line(result, code).startswith(line.format(workdir=workdir))
  assert not (workdir / checkpoint_lib.CHECKPOINT_DIR).exists()  # eval/export create nothing


@pytest.mark.slow
def test_the_binary_keeps_compiled_programs_in_config_compilation_cache_dir(toyshop_tiny,
                                                                            tmp_path):
  """A second run of the same config loads its programs from the cache the first wrote; a
  cache directory that cannot be made costs one warning, not the run. (The suite's own
  $JAX_COMPILATION_CACHE_DIR, which would take precedence, is left out here.)"""
  env = {k: v for k, v in plain_cpu_env().items() if k != "JAX_COMPILATION_CACHE_DIR"}
  env.update(JAX_LOG_COMPILES="1",  # cache hits logged as warnings
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")

  def run(name, cache):
    command = binary_command(tmp_path / name, toyshop_tiny[0], "--config.total_steps=2",
                             "--config.eval_every_steps=0", "--config.evals={}",
                             f"--config.compilation_cache_dir={cache}", run_flags=())
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=env,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stderr

  cache = tmp_path / "cache"
  assert "Persistent compilation cache hit" not in run("first", cache)
  assert any(cache.iterdir())
  assert "Persistent compilation cache hit for 'jit_train_step'" in run("second", cache)

  (tmp_path / "a_file").write_text("")
  stderr = run("unusable", tmp_path / "a_file" / "cache")
  assert stderr.count("No compilation cache (config.compilation_cache_dir)") == 1
  assert "Error reading persistent compilation cache" not in stderr


def test_a_missing_config_file_is_one_line_and_verbosity_shows_the_traceback(tmp_path):
  run = lambda *flags: subprocess.run(  # noqa: E731
      [sys.executable, "-m", "eclip_jax.main", f"--workdir={tmp_path}", *flags],
      capture_output=True, text=True, cwd=REPO, env=plain_cpu_env(), timeout=600)
  assert _one_error_line(run("--config=configs/nope.py"), 2) == (
      "error: --config=configs/nope.py: there is no config file configs/nope.py.")
  verbose = run("--config=configs/clip.py:tiny", "--config.optim.lr=nan", "--verbosity=1")
  assert verbose.returncode == 2 and "Traceback (most recent call last)" in verbose.stderr
  assert "\nerror: config.optim.lr=nan: must be a finite number >= 0" in verbose.stderr


def test_prepare_errors_are_one_line(tmp_path):
  command = [sys.executable, "-m", "eclip_jax.data.prepare", "--dataset=toyshop/tinny",
             f"--data_dir={tmp_path}"]
  result = subprocess.run(command, capture_output=True, text=True, cwd=REPO,
                          env=plain_cpu_env(), timeout=600)
  assert _one_error_line(result, 2).startswith(
      "error: --dataset='toyshop/tinny': there is no toyshop config 'tinny' (did you mean "
      "toyshop/tiny?)")
