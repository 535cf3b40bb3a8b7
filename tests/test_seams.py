"""The trainer's seams for new methods: gradient strategies, micro-batches spread over every
device, batch sizes that change between steps, inputs from the pipeline's example spec,
objective metrics under their objective's name, method config sections, and a train state
whose new fields still restore from older checkpoints. Plus the trajectories recorded
before these seams were opened, which they must not have moved."""

import time

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from configs import clip, eclip
from eclip_jax import checkpoint as checkpoint_lib
from eclip_jax import gradients, models, objectives, optim, parallel, trainer
from eclip_jax import metrics as metrics_lib
from eclip_jax.data import pipeline, transforms
from tests.helpers import final_params, random_batch, run_steps, tiny_config


# ---------------------------------------------------------------------------------------
# The step did not move: losses recorded on the code before the seams were opened.
# ---------------------------------------------------------------------------------------
# (config, views) -> the losses of 4 steps and sum(|params|) after them, on the batches of
# `_trajectory_batch`, 8 devices. Recorded bit for bit on the 2-core development machine;
# the tolerance only allows another CPU's float rounding (a changed step differs by far
# more within 4 steps).
RECORDED = {
    "clip": ([3.378284215927124, 3.3411459922790527, 2.9997105598449707, 3.0034403800964355],
             20265.74837717312),
    "eclip": ([12.006937980651855, 11.780434608459473, 9.382645606994629, 8.61651611328125],
              33911.15722510136),
}


def _trajectory_config(name):
  """clip.py:tiny / eclip.py:tiny with every setting the recording depended on pinned."""
  config = {"clip": clip, "eclip": eclip}[name].get_config("tiny")
  config.input.update(batch_size=16, image_size=32, max_text_len=16, vocab_size=1000,
                      num_views=2 if name == "eclip" else 1)
  config.model.image.patch_size = 8
  config.model.temperature_init = 0.07
  config.model.embed_dim = 128
  config.optim.update(lr=2e-3, warmup_steps=2, weight_decay=0.1)
  config.total_steps = 600
  config.loss.update(positives="catalog", impl="tiled")
  config.mesh = {"data": 8, "fsdp": 1, "tensor": 1}
  return config


def _trajectory_batch(config, seed):
  rng = np.random.default_rng(seed)
  b, size, length = config.input.batch_size, config.input.image_size, config.input.max_text_len
  views = config.input.num_views
  mask = np.arange(length)[None] < rng.integers(3, length + 1, size=b)[:, None]
  shape = (b, size, size, 3) if views == 1 else (b, views, size, size, 3)
  return {
      "image" if views == 1 else "images": rng.uniform(-1, 1, size=shape).astype(np.float32),
      "text_tokens": np.where(mask, rng.integers(4, 900, size=(b, length)), 0).astype(np.int32),
      "text_mask": mask,
      "product_id": np.arange(b, dtype=np.int32),
      "catalog_id": (rng.permutation(b) // 2).astype(np.int32),
  }


@pytest.mark.parametrize("name", sorted(RECORDED))
def test_training_trajectory_is_the_recorded_one(name):
  config = _trajectory_config(name)
  setup = trainer.Setup(config)
  state, step_fn, losses = setup.init_state(), None, []
  for seed in range(4):
    batch = parallel.to_global(_trajectory_batch(config, seed), setup.mesh)
    step_fn = step_fn or trainer.compile_train_step(setup, batch)
    state, metrics = step_fn(state, batch)
    losses.append(float(metrics["loss"]))
  params = jax.device_get(state.params)
  param_sum = sum(np.abs(np.asarray(leaf, np.float64)).sum() for leaf in jax.tree.leaves(params))
  expected_losses, expected_sum = RECORDED[name]
  np.testing.assert_allclose(losses, expected_losses, rtol=1e-6)
  np.testing.assert_allclose(param_sum, expected_sum, rtol=1e-6)


# ---------------------------------------------------------------------------------------
# Gradient strategies and micro-batches.
# ---------------------------------------------------------------------------------------


def _per_row_objective(outputs, batch, ctx):
  """A loss that is a mean over rows, so that micro-batches average to the whole batch's."""
  del batch, ctx
  gap = outputs["image_emb"] - outputs["text_emb"]
  return jnp.mean(jnp.sum(gap * gap, axis=-1)), {}


def _two_microbatches(loss: gradients.StepLoss, params, batch, rng):
  """The mean of two micro-batches' losses and gradients."""
  halves = parallel.split_microbatches(batch, 2, loss.mesh)
  results = [jax.value_and_grad(loss, has_aux=True)(
      params, {k: v[m] for k, v in halves.items()}, rng) for m in range(2)]
  (value, metrics), grads = jax.tree.map(lambda a, b: (a + b) / 2, *results)
  return (value, metrics), grads


objectives.register("test_per_row", _per_row_objective)
gradients.register("test_two_microbatches", _two_microbatches)


def test_a_registered_gradient_strategy_trains_through_the_config():
  mesh = parallel.make_mesh({"data": 4, "fsdp": 2})
  full = tiny_config(**{"objectives": ml_collections.ConfigDict({"test_per_row": 1.0})})
  split = tiny_config(**{"objectives": ml_collections.ConfigDict({"test_per_row": 1.0}),
                         "train.gradients": "test_two_microbatches"})
  state = jax.device_get(trainer.Setup(full, mesh).init_state())
  batches = [random_batch(full, rng=i) for i in range(3)]
  losses_full, params_full = run_steps(full, mesh, state, batches)
  losses_split, params_split = run_steps(split, mesh, state, batches)
  assert losses_full[2] != losses_full[0]  # the steps trained
  np.testing.assert_allclose(losses_split, losses_full, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
               params_split, params_full)


def test_unknown_gradient_strategy_is_one_sentence(toyshop_tiny):
  config = tiny_config(toyshop_tiny[0], **{"train.gradients": "cached"})
  with pytest.raises(ValueError, match=r"config.train.gradients='cached' is not a gradient "
                                       r"strategy; known: \[.*'full'"):
    trainer.validate_config(config, parallel.make_mesh({"data": 8}))


def test_microbatches_keep_every_device_busy_and_merge_back():
  mesh = parallel.make_mesh({"data": 4, "fsdp": 2})
  rows = jnp.arange(32 * 3, dtype=jnp.float32).reshape(32, 3)
  batch = {"x": jax.device_put(rows, parallel.batch_sharding(mesh)),
           "ids": jax.device_put(jnp.arange(32), parallel.batch_sharding(mesh))}
  split = jax.jit(lambda b: parallel.split_microbatches(b, 4, mesh))(batch)
  assert split["x"].shape == (4, 8, 3)
  assert split["x"].sharding.spec == P(None, parallel.BATCH_AXES)
  # Device k holds rows [4k, 4k + 4) of the batch; micro-batch m takes its m-th row, so
  # every micro-batch has a row on every device and no row leaves its device.
  for shard in batch["ids"].addressable_shards:
    split_shard = next(s for s in split["ids"].addressable_shards if s.device == shard.device)
    assert split_shard.data.shape == (4, 1)
    np.testing.assert_array_equal(np.asarray(split_shard.data)[:, 0], np.asarray(shard.data))
  # Every row once, and merging restores the batch's order.
  assert sorted(np.asarray(split["ids"]).ravel().tolist()) == list(range(32))
  merged = jax.jit(lambda t: parallel.merge_microbatches(t, mesh))(split)
  np.testing.assert_array_equal(merged["x"], rows)


def test_microbatches_that_do_not_divide_the_per_device_rows_fail_clearly():
  mesh = parallel.make_mesh({"data": 8})
  with pytest.raises(ValueError, match="does not split into 3 micro-batches; make "
                                       "input.batch_size a multiple of 24"):
    parallel.split_microbatches({"x": jnp.zeros((16, 2))}, 3, mesh)


# ---------------------------------------------------------------------------------------
# Batch sizes that change between steps.
# ---------------------------------------------------------------------------------------


def test_batch_schedule_stages_and_rows():
  config = tiny_config(**{"train.batch_schedule": ((3, 32), (5, 8))})
  schedule = pipeline.BatchSchedule.from_config(config)
  assert schedule.stages == ((0, 16), (3, 32), (5, 8))
  assert [schedule.batch_size(s) for s in range(7)] == [16, 16, 16, 32, 32, 8, 8]
  assert [schedule.rows_before(s) for s in (0, 3, 4, 5, 6)] == [0, 48, 80, 112, 120]
  for bad in (((0, 32),), ((3, 32), (3, 64)), ((3, 0),), ((3,),)):
    with pytest.raises(ValueError, match="config.train.batch_schedule"):
      pipeline.BatchSchedule.from_config(tiny_config(**{"train.batch_schedule": bad}))


@pytest.mark.parametrize("scaling, multipliers", [("none", (1, 1, 1)), ("linear", (1, 2, 0.5)),
                                                  ("sqrt", (1, 2**0.5, 0.5**0.5))])
def test_learning_rate_follows_the_batch_stage(scaling, multipliers):
  scaled = optim.scale_by_batch_stage(lambda count: jnp.float32(0.1),
                                      ((0, 16), (3, 32), (5, 8)), scaling)
  expected = [0.1 * multipliers[0]] * 3 + [0.1 * multipliers[1]] * 2 + [0.1 * multipliers[2]]
  np.testing.assert_allclose([float(scaled(jnp.int32(c))) for c in range(6)], expected,
                             rtol=1e-6)


def test_a_batch_schedule_reads_the_stream_without_loss_or_repeat(tiny_input_config):
  """Across a stage boundary (a re-formed pipeline) the stream goes on where it was: the
  rows are those of one fixed-size pipeline, in its order, each example once an epoch."""
  tiny_input_config.batch_size = 8
  config = ml_collections.ConfigDict({"input": tiny_input_config,
                                      "train": {"batch_schedule": ((5, 24),)}})
  schedule = pipeline.BatchSchedule.from_config(config)
  staged = []
  for (start, batch_size), steps in zip(schedule.stages, (5, 6)):
    iterator = pipeline.make_train_iterator(
        tiny_input_config, seed=0, global_batch_size=batch_size,
        start_row=schedule.rows_before(start))
    for _ in range(steps):  # 5 x 8 + 6 x 24 = 184 rows: all but 7 of toyshop/tiny's 191
      batch = next(iterator)
      assert len(batch["product_id"]) == batch_size
      staged += batch["product_id"].tolist()
    iterator.close()
  iterator = pipeline.make_train_iterator(tiny_input_config, seed=0)
  fixed = [i for _ in range(23) for i in next(iterator)["product_id"].tolist()]
  iterator.close()
  assert staged == fixed
  assert len(set(staged)) == len(staged) == 184


def _compiles_counted(monkeypatch):
  calls = []
  original = trainer.compile_train_step

  def counting(setup, batch):
    calls.append({k: v.shape for k, v in batch.items()})
    return original(setup, batch)

  monkeypatch.setattr(trainer, "compile_train_step", counting)
  return calls


def test_a_batch_size_change_compiles_two_steps_and_resumes_exactly(
    toyshop_tiny, tmp_path, monkeypatch):
  config = tiny_config(toyshop_tiny[0], **{
      "total_steps": 6, "log_every_steps": 1, "checkpoint_every_steps": 3,
      "train.batch_schedule": ((3, 32),), "train.batch_lr_scaling": "linear"})
  config.evals = ml_collections.ConfigDict()
  compiles = _compiles_counted(monkeypatch)
  trainer.train(config, str(tmp_path / "straight"))
  assert [shapes["product_id"] for shapes in compiles] == [(16,), (32,)]

  rows = metrics_lib.read_metrics(tmp_path / "straight")
  examples_per_step = [r["perf/examples_per_sec"] / r["perf/steps_per_sec"] for r in rows]
  np.testing.assert_allclose(examples_per_step, [16] * 3 + [32] * 3, rtol=1e-6)
  base_lr = optim.learning_rate_schedule(config.optim, config.total_steps)
  np.testing.assert_allclose([r["train/lr"] for r in rows],
                             [float(base_lr(s)) * (1 if s < 3 else 2) for s in range(6)],
                             rtol=1e-6)

  # Stopped at the boundary, the checkpoint's data state is stage 0's and the rerun forms
  # stage 1's pipeline from it; stopped within stage 1, the rerun resumes inside the stage.
  straight = [r["train/loss"] for r in rows]
  for stop in (3, 4):
    workdir = tmp_path / f"stopped_at_{stop}"
    stopped = config.copy_and_resolve_references()
    stopped.stop_after_steps = stop
    trainer.train(stopped, str(workdir))
    trainer.train(config, str(workdir))
    assert [r["train/loss"] for r in metrics_lib.read_metrics(workdir)] == straight
    jax.tree.map(np.testing.assert_array_equal, final_params(workdir, config),
                 final_params(tmp_path / "straight", config))


# ---------------------------------------------------------------------------------------
# Inputs from the example spec.
# ---------------------------------------------------------------------------------------


def test_example_spec_describes_every_transformed_example(tiny_input_config, toyshop_tiny):
  """Each modality's spec is exactly what its transform produces, in training and eval."""
  for modalities, views in ((tuple(transforms.MODALITIES), 1), (("image", "text"), 2)):
    tiny_input_config.modalities, tiny_input_config.num_views = modalities, views
    transform = pipeline.make_transform(tiny_input_config, toyshop_tiny[1])
    spec = pipeline.example_spec(tiny_input_config)
    assert spec == transform.example_spec()
    source = pipeline.open_split(toyshop_tiny[1], "train", transform.required_fields())
    for rng in (None, np.random.default_rng(0)):
      example = transform(source[0], rng)
      assert set(example) == set(spec)
      for key, value in example.items():
        assert (np.shape(value), np.asarray(value).dtype) == spec[key], key


class _FakeModalityModel(nn.Module):
  """Reads a modality no built-in model knows: `fake_sizes` [B, 5]."""

  embed_dim: int = 8

  @nn.compact
  def __call__(self, batch, *, train=False):
    del train
    return {"fake_emb": nn.Dense(self.embed_dim, name="fake_proj")(batch["fake_sizes"])}


def test_a_model_with_a_new_modality_initializes_from_the_spec(monkeypatch):
  monkeypatch.setitem(transforms.MODALITIES, "fake", transforms.Modality(
      fields=("category",),
      spec=lambda transform: {"fake_sizes": transforms.ArraySpec((5,), np.dtype(np.float32))},
      apply=lambda transform, record, rng: {
          "fake_sizes": np.full((5,), record["category"], np.float32)}))
  monkeypatch.setitem(models.MODELS, "fake_modality", _FakeModalityModel)
  config = tiny_config(**{"input.modalities": ("fake",),
                          "objectives": ml_collections.ConfigDict({"test_per_row": 1.0})})
  config.model = ml_collections.ConfigDict({"name": "fake_modality", "embed_dim": 8})
  setup = trainer.Setup(config)
  kernel = setup.init_state().params["fake_proj"]["kernel"]
  assert kernel.shape == (5, 8)
  assert "fake_sizes" in trainer.init_batch(config.input)


# ---------------------------------------------------------------------------------------
# Objectives: metrics under their names, method sections, moved fields.
# ---------------------------------------------------------------------------------------


def _constant_objective(value):
  def objective(outputs, batch, ctx):
    del outputs, batch, ctx
    return jnp.float32(value), {"accuracy": jnp.float32(value / 10)}
  return objective


objectives.register("test_constant_1", _constant_objective(1.0))
objectives.register("test_constant_2", _constant_objective(2.0))


def test_objective_metrics_live_under_their_objectives_name():
  config = tiny_config(**{"objectives": ml_collections.ConfigDict(
      {"test_constant_1": 0.5, "test_constant_2": 3.0})})
  loss, metrics = objectives.weighted_loss(config, parallel.make_mesh({"data": 8}))({}, {})
  assert float(loss) == 0.5 * 1.0 + 3.0 * 2.0
  # Both objectives report "accuracy": neither overwrites the other.
  assert {k: float(v) for k, v in metrics.items()} == pytest.approx({
      "test_constant_1/loss": 1.0, "test_constant_1/accuracy": 0.1,
      "test_constant_2/loss": 2.0, "test_constant_2/accuracy": 0.2})


def test_a_methods_objectives_read_its_config_section(toyshop_tiny):
  config = eclip.get_config("tiny,runlocal")
  config.input.data_dir, config.input.vocab_size = toyshop_tiny[0], 1000
  trainer.validate_config(config, parallel.make_mesh({"data": 8}))  # `eclip` is known
  del config.eclip
  with pytest.raises(ValueError, match=r"objective 'instance_\w+' reads config.eclip, which "
                                       r"this config lacks"):
    objectives.weighted_loss(config, parallel.make_mesh({"data": 8}))
  clip_config = tiny_config(toyshop_tiny[0])
  clip_config.scael = ml_collections.ConfigDict()
  with pytest.raises(ValueError, match=r"config.scael is not a known config field"):
    trainer.validate_config(clip_config, parallel.make_mesh({"data": 8}))


def test_a_moved_field_names_its_new_home(toyshop_tiny):
  config = eclip.get_config("tiny,runlocal")
  config.input.data_dir = toyshop_tiny[0]
  config.loss.instance_selection = "text"
  with pytest.raises(ValueError, match=r"config.loss.instance_selection moved to "
                                       r"config.eclip.instance_selection"):
    trainer.validate_config(config, parallel.make_mesh({"data": 8}))


# ---------------------------------------------------------------------------------------
# The train state's rng, and checkpoints written before it existed.
# ---------------------------------------------------------------------------------------


@flax.struct.dataclass
class _StateBeforeRng:
  """TrainState as checkpoints written before it had an rng hold it."""

  step: jax.Array
  params: object
  opt_state: object
  nonfinite_step: jax.Array


def test_a_checkpoint_without_rng_restores_with_the_seeds_rng(tmp_path):
  config = tiny_config()
  setup = trainer.Setup(config)
  state = setup.init_state()
  old = _StateBeforeRng(state.step, state.params, state.opt_state, state.nonfinite_step)
  checkpointer = checkpoint_lib.Checkpointer(tmp_path)
  checkpointer.save(5, old, None, config)
  checkpointer.wait()
  restored = checkpointer.restore(5, setup.abstract_state, defaults=setup.state_defaults())
  checkpointer.close()
  np.testing.assert_array_equal(restored.rng, trainer.initial_rng(config.seed))
  assert restored.rng.sharding.is_equivalent_to(setup.state_shardings.rng, 1)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(restored.params),
               jax.device_get(state.params))
  with pytest.raises(ValueError, match=r"has no \['rng'\] in its state"):
    checkpoint_lib.Checkpointer(tmp_path).restore(5, setup.abstract_state)


def test_the_step_rng_differs_per_step_and_reaches_the_model(monkeypatch):
  """A model drawing `make_rng("dropout")` gets fold_in(state.rng, step): new every step."""
  seen = []

  class Noisy(nn.Module):
    @nn.compact
    def __call__(self, batch, *, train=False):
      scale = self.param("scale", nn.initializers.ones, ())
      noise = jax.random.uniform(self.make_rng("dropout"), ()) if train else 0.0
      jax.debug.callback(seen.append, noise)
      return {"image_emb": scale * batch["image"].reshape(batch["image"].shape[0], -1)[:, :4],
              "text_emb": jnp.zeros((batch["image"].shape[0], 4))}

  monkeypatch.setitem(models.MODELS, "noisy", Noisy)
  config = tiny_config(**{"objectives": ml_collections.ConfigDict({"test_per_row": 1.0})})
  config.model = ml_collections.ConfigDict({"name": "noisy"})
  mesh = parallel.make_mesh({"data": 8})
  state = jax.device_get(trainer.Setup(config, mesh).init_state())
  run_steps(config, mesh, state, [random_batch(config, rng=i) for i in range(2)])
  train_noise = [float(n) for n in seen if float(n) != 0.0]
  assert len(set(train_noise)) == 2  # one draw per step, different at each


def test_step_timer_counts_examples_of_each_step():
  timer = metrics_lib.StepTimer()
  for batch_size in (16, 16, 32):
    timer.step_done(batch_size)
  rates = timer.rates()
  assert rates["perf/examples_per_sec"] / rates["perf/steps_per_sec"] == pytest.approx(64 / 3)


@jax.jit
def _long_step(x):
  """A step that runs for about a second on 2 cores (60 chained 1024^3 matmuls): dispatched
  asynchronously, it is still running 0.2 s later."""
  return jax.lax.fori_loop(0, 60, lambda _, y: jnp.tanh(y @ y), x)


def test_step_timer_counts_idle_time_only_when_no_step_runs():
  x = jnp.full((1024, 1024), 1e-3)
  _long_step(x).block_until_ready()  # compiled outside the timed parts

  # The host takes 0.2 s to dispatch after a step that had already finished: all idle.
  timer = metrics_lib.StepTimer()
  timer.step_done(8, jnp.zeros(()).block_until_ready())
  time.sleep(0.2)
  timer.step_done(8, jnp.zeros(()))
  assert timer.rates()["perf/device_idle_frac"] > 0.5

  # The host takes as long while the previous step still runs: no idle time at all.
  timer = metrics_lib.StepTimer()
  timer.step_done(8, _long_step(x))
  time.sleep(0.2)
  timer.step_done(8, jnp.zeros(()))
  assert timer.rates()["perf/device_idle_frac"] == 0.0

  # A pause (evaluation, compilation) between a finished step and the next is not idle time.
  timer = metrics_lib.StepTimer()
  timer.step_done(8, jnp.zeros(()).block_until_ready())
  time.sleep(0.05)  # lets the watcher record the finished step
  with timer.paused():
    time.sleep(0.3)
  timer.step_done(8, _long_step(x))
  time.sleep(0.1)
  assert timer.rates()["perf/device_idle_frac"] < 0.5
  assert "perf/device_idle_frac" not in metrics_lib.StepTimer().rates()  # no outputs given
