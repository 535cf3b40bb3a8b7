"""The one trainer every method uses: sharded state, the step function, the loop and its hooks.

    config -> mesh, model, objectives, optimizer -> sharded init (or resume / init_from)
           -> AOT-compiled step (memory analysis logged) -> loop:
              next batch -> parallel.to_global -> step (at most config.max_steps_in_flight
              unfinished) -> hooks (metrics, evals, checkpoints)

Models, objectives and gradient strategies are plug-ins named by the config (`model.name`,
`objectives`, `train.gradients`); the trainer only knows their contracts:
`model.apply(variables, batch) -> outputs dict`, `objective(outputs, batch, ctx) -> (loss,
metrics)` and `strategy(step_loss, params, batch, rng) -> ((loss, metrics), grads)`. What a
batch holds comes from the input pipeline's description of an example (`example_spec`), so
a model with new inputs needs no trainer change.

The global batch size may change during training (`train.batch_schedule`): the input
pipeline re-forms at each stage's first step, and one step is compiled per batch shape.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from etils import epath

from eclip_jax import checkpoint as checkpoint_lib
from eclip_jax import config_base
from eclip_jax import config_checks
from eclip_jax import evals as evals_lib
from eclip_jax import gradients
from eclip_jax import interop
from eclip_jax import metrics as metrics_lib
from eclip_jax import models
from eclip_jax import objectives as objectives_lib
from eclip_jax import optim
from eclip_jax import parallel
from eclip_jax.data import pipeline
from eclip_jax.data import tokenizer as tokenizer_lib
from eclip_jax.objectives import contrastive


class NonFiniteLossError(RuntimeError):
  """The loss became NaN or inf; nothing was saved from that state."""


class Preempted(Exception):
  """SIGTERM/SIGINT stopped training early, after saving a checkpoint to resume from."""


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # steps completed
  params: Any
  opt_state: Any
  # The first step whose loss was NaN/inf, or -1. Kept on device so detecting it does not
  # synchronize host and device every step; the host reads it at log and checkpoint steps.
  nonfinite_step: jax.Array
  # Raw PRNG key data (uint32 [2]) for randomness on device; step k uses fold_in(rng, k).
  rng: jax.Array


def initial_rng(seed: int) -> jax.Array:
  """The train state's `rng` for `seed` (kept apart from the stream that initializes the
  params); also what a checkpoint written before states had one resumes with."""
  return jax.random.key_data(jax.random.fold_in(jax.random.key(seed), 1))


# --------------------------------------------------------------------------------------------
# Configuration checks: every misconfiguration fails here, before anything compiles.
# --------------------------------------------------------------------------------------------


def validate_config(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> None:
  """Raises one clear sentence naming the field and the fix."""
  _check_known_fields(config)
  config_checks.check_ranges(config)
  dp = parallel.data_parallel_size(mesh)
  stages = pipeline.BatchSchedule.from_config(config).stages
  for stage, (start, batch_size) in enumerate(stages):
    field = (f"config.input.batch_size={batch_size}" if stage == 0 else
             f"config.train.batch_schedule's batch {batch_size} (from step {start})")
    for divisor, what in ((dp, f"data-parallel size {dp} (mesh data x fsdp)"),
                          (jax.process_count(), f"{jax.process_count()} processes")):
      if batch_size % divisor:
        raise ValueError(f"{field} is not divisible by the {what}; use a multiple of "
                         f"{divisor}.")
  gradients.get(config.train.gradients)  # raises for unknown names
  streams = config.train.streams  # a positive integer (config_checks)
  for start, batch_size in stages:
    if streams > 1 and batch_size // dp % streams:
      raise ValueError(
          f"config.train.streams={streams} does not divide the {batch_size // dp} rows per "
          f"data-parallel device of the batch of {batch_size} (from step {start}); make the "
          f"global batch a multiple of {dp * streams}.")
  if config.train.batch_lr_scaling not in optim.BATCH_LR_SCALINGS:
    raise ValueError(f"config.train.batch_lr_scaling={config.train.batch_lr_scaling!r} is "
                     f"unknown; use one of {sorted(optim.BATCH_LR_SCALINGS)}.")
  if not config.objectives:
    raise ValueError("config.objectives is empty; name at least one objective and its weight.")
  for name in config.objectives:
    objectives_lib.get_objective(name)  # raises for unknown names
  if config.loss.impl not in contrastive.IMPLS:
    raise ValueError(f"config.loss.impl={config.loss.impl!r} is unknown; use one of "
                     f"{contrastive.IMPLS}.")
  builder = pipeline.prepared_builder(config.input.dataset, config.input.data_dir)
  config_checks.check_dataset(config, builder)
  tokenizer_path = pipeline.tokenizer_path(config.input, builder)
  if "text" in config.input.modalities and not epath.Path(tokenizer_path).exists():
    raise FileNotFoundError(
        f"the tokenizer {tokenizer_path} does not exist; set config.input.tokenizer to a "
        f".model file or build it with `python -m eclip_jax.data.prepare "
        f"--dataset={config.input.dataset} --data_dir={config.input.data_dir} "
        f"--vocab_size={config.input.vocab_size}`."
    )
  if config.init_from and not epath.Path(config.init_from).exists():
    raise FileNotFoundError(f"config.init_from={config.init_from!r} does not exist.")


def _check_known_fields(config: ml_collections.ConfigDict) -> None:
  """Every field is one `base_config` defines, one of a section methods fill, or a method's
  own section (named by the objectives that read it); moved fields name their new home."""
  base = config_base.base_config()
  method_sections = objectives_lib.method_sections()
  for key in config:
    if key not in base and key not in method_sections:
      raise ValueError(f"config.{key} is not a known config field; known: "
                       f"{sorted(set(base) | method_sections)}.")
  for section in base:
    if section in config_base.OPEN_SECTIONS or not isinstance(base[section], ml_collections.ConfigDict):
      continue
    for key in config[section]:
      if key not in base[section]:
        moved = config_base.MOVED_FIELDS.get(f"{section}.{key}")
        raise ValueError(
            f"config.{section}.{key} moved to config.{moved}; set that instead." if moved else
            f"config.{section}.{key} is not a known config field; "
            f"known: {sorted(base[section])}."
        )


# --------------------------------------------------------------------------------------------
# Sharded train state.
# --------------------------------------------------------------------------------------------
def init_batch(input_config: ml_collections.ConfigDict) -> dict[str, np.ndarray]:
  """One example of every key a training batch holds (`pipeline.example_spec`), for init:
  zeros, and True for boolean masks (every position present)."""
  return {
      key: (np.ones if spec.dtype == np.bool_ else np.zeros)((1, *spec.shape), spec.dtype)
      for key, spec in pipeline.example_spec(input_config).items()
  }


class Setup:
  """The pieces of a run built from its config: mesh, model, loss, optimizer, shardings.

  Everything that traces a model runs inside `self.context()`, which makes the mesh and
  the logical-axis rules visible to the model's sharding annotations.
  """

  def __init__(self, config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh | None = None):
    self.config = config
    self.mesh = mesh if mesh is not None else parallel.make_mesh(config.mesh)
    self.rules = parallel.sharding_rules(config.sharding_rules)
    self.model = models.build_model(config.model)
    self.batch_schedule = pipeline.BatchSchedule.from_config(config)
    self.optimizer, self.schedule = optim.make_optimizer(
        config.optim, config.total_steps, self.batch_schedule.stages,
        config.train.batch_lr_scaling)
    self.step_loss = gradients.StepLoss(
        forward=lambda params, batch, rng: self.model.apply(
            {"params": params}, batch, train=True, rngs={"dropout": rng}),
        objectives=objectives_lib.weighted_loss(config, self.mesh),
        mesh=self.mesh,
        train_config=config.train,
    )
    self.batch_sharding = parallel.batch_sharding(self.mesh)
    # Init traces outside `context()`: the sharding of the created params comes from
    # `state_shardings` (jit's out_shardings), and flax would otherwise also constrain
    # DenseGeneral's flat kernel to its multi-dimensional logical names.
    self._boxed_state = jax.eval_shape(self._init_boxed, jax.random.key(0))
    self.state_shardings = parallel.logical_shardings(self._boxed_state, self.mesh, self.rules)
    self.abstract_state = checkpoint_lib.abstract_with_shardings(
        nn.meta.unbox(self._boxed_state), self.state_shardings
    )
    # Forward + backward ~ 3x the forward matmuls; models without a count get no MFU.
    flops = getattr(self.model, "flops_per_example", None)
    self.train_flops_per_example = 3 * flops(config.input) if flops else 0.0

  @contextlib.contextmanager
  def context(self):
    """The mesh and the logical-axis rules, visible to the model's sharding annotations."""
    with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
      yield

  def model_inputs(self, batch: Mapping[str, Any]) -> dict[str, Any]:
    """A pipeline batch as the model and objectives take it: uint8 pixels scaled to
    `input.value_range`, in whatever program traces this (on the device)."""
    return pipeline.model_inputs(batch, tuple(self.config.input.value_range))

  def _init_boxed(self, rng: jax.Array) -> TrainState:
    variables = self.model.init(rng, self.model_inputs(init_batch(self.config.input)))
    params = variables["params"]
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=self.optimizer.init(params),
        nonfinite_step=jnp.full((), -1, jnp.int32),
        rng=initial_rng(self.config.seed),
    )

  def init_state(self) -> TrainState:
    """Parameters are created already sharded: no device ever holds the whole model."""
    init = jax.jit(lambda rng: nn.meta.unbox(self._init_boxed(rng)),
                   out_shardings=self.state_shardings)
    return init(jax.random.key(self.config.seed))

  def state_defaults(self) -> dict[str, jax.Array]:
    """Values for train-state fields that checkpoints of older versions lack."""
    return {"rng": jax.device_put(initial_rng(self.config.seed), self.state_shardings.rng)}

  def apply_fn(self) -> Callable[[Any, Mapping[str, jax.Array]], dict[str, jax.Array]]:
    """A jitted `(params, global batch) -> outputs` for evaluators (any subset of inputs)."""
    forward = jax.jit(
        lambda params, batch: self.model.apply({"params": params}, self.model_inputs(batch)),
        in_shardings=(self.state_shardings.params, self.batch_sharding),
    )

    def apply(params, batch):
      with self.context():
        return forward(params, batch)

    return apply


# --------------------------------------------------------------------------------------------
# The step.
# --------------------------------------------------------------------------------------------
def make_train_step(setup: Setup) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
  """The pure step function: the configured gradient strategy, then the optimizer update."""
  strategy = gradients.get(setup.config.train.gradients)

  def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    (loss, metrics), grads = strategy(setup.step_loss, state.params, setup.model_inputs(batch),
                                      rng)
    return apply_gradients(setup.optimizer, state, loss, metrics, grads)

  return train_step


def apply_gradients(optimizer: optax.GradientTransformation, state: TrainState, loss,
                    metrics: dict, grads) -> tuple[TrainState, dict]:
  """The optimizer half of every step: update, count the step, note a non-finite loss."""
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  step = state.step + 1
  first_nonfinite = (state.nonfinite_step < 0) & ~jnp.isfinite(loss)
  metrics = dict(metrics, loss=loss, grad_norm=optax.tree.norm(grads),
                 param_norm=optax.tree.norm(params))
  new_state = state.replace(
      step=step,
      params=params,
      opt_state=opt_state,
      nonfinite_step=jnp.where(first_nonfinite, step, state.nonfinite_step),
  )
  return new_state, metrics


def compile_train_step(setup: Setup, batch: Mapping[str, jax.Array]):
  """AOT-compiles the step for `batch`'s shapes and logs its per-device memory."""
  batch_shardings = {key: setup.batch_sharding for key in batch}
  step = jax.jit(
      make_train_step(setup),
      in_shardings=(setup.state_shardings, batch_shardings),
      out_shardings=(setup.state_shardings, parallel.replicated(setup.mesh)),
      donate_argnums=(0,),
  )
  abstract_batch = {
      key: jax.ShapeDtypeStruct(value.shape, value.dtype, sharding=setup.batch_sharding)
      for key, value in batch.items()
  }
  with setup.context():
    compiled = step.lower(setup.abstract_state, abstract_batch).compile()
  _log_memory(compiled)
  return compiled


def _log_memory(compiled) -> None:
  memory = compiled.memory_analysis()
  if memory is None:  # not every backend reports it
    return
  mib = lambda n: f"{n / 2**20:.1f} MiB"  # noqa: E731
  logging.info(
      "Compiled train step, per device: arguments %s, outputs %s, temporaries %s, "
      "generated code %s.",
      mib(memory.argument_size_in_bytes), mib(memory.output_size_in_bytes),
      mib(memory.temp_size_in_bytes), mib(memory.generated_code_size_in_bytes),
  )


# --------------------------------------------------------------------------------------------
# The loop.
# --------------------------------------------------------------------------------------------
def train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Trains (resuming from `workdir` if it has a checkpoint); returns the last metrics.

  SIGTERM or SIGINT ends the run after the step in flight, with a checkpoint of it, by
  raising `Preempted`.
  """
  workdir = epath.Path(workdir)
  mesh = parallel.make_mesh(config.mesh)
  validate_config(config, mesh)
  checkpoint_lib.check_writable(workdir)  # now, not at the first save after compiling
  setup = Setup(config, mesh)
  is_primary = jax.process_index() == 0
  if is_primary:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))

  data = _TrainData(config, setup.batch_schedule)
  checkpointer = checkpoint_lib.Checkpointer(
      workdir, keep=config.keep_checkpoints, keep_every=config.keep_checkpoints_every_steps,
      handoff=config.checkpoint_handoff,
  )
  state = _initial_state(setup, checkpointer, data)
  start_step = int(state.step)
  if start_step >= config.total_steps:
    logging.info("%s is already at step %d of %d; nothing to train.", workdir, start_step,
                 config.total_steps)
  evaluators = evals_lib.build_evaluators(
      config.evals, input_config=config.input, apply_fn=setup.apply_fn(), mesh=mesh,
      workdir=workdir, in_training=True,
  )
  writer = metrics_lib.MetricWriter(workdir, enabled=is_primary, resume_step=start_step)

  timer = metrics_lib.StepTimer()
  in_flight = StepsInFlight(config.max_steps_in_flight)
  progress = _Progress(start_step, config.total_steps, enabled=is_primary)
  compiled_steps, last, preempted = {}, {}, False  # batch shapes -> compiled step
  final_step = min(config.stop_after_steps or config.total_steps, config.total_steps)
  with _stop_on_signals(checkpointer) as stop_requested:
    for step in range(start_step + 1, final_step + 1):
      with timer.data_wait():
        batch = parallel.to_global(next(data.iterator_for(step - 1)), mesh)
      shapes = tuple(sorted((key, value.shape, value.dtype.name) for key, value in batch.items()))
      if shapes not in compiled_steps:
        with timer.paused():  # compilation is not training time
          compiled_steps[shapes] = compile_train_step(setup, batch)
        if len(compiled_steps) == 1:
          timer.reset()  # nor is the first batch's wait, the input pipeline starting up
      state, step_metrics = compiled_steps[shapes](state, batch)
      timer.step_done(batch_size=batch["product_id"].shape[0], outputs=step_metrics)
      in_flight.add(step_metrics)
      checkpointer.check_saves()  # a save that failed in the background stops the run now

      row = {}
      if step % config.log_every_steps == 0 or step == final_step:
        _check_finite(state)
        row = {f"train/{k}": v for k, v in jax.device_get(step_metrics).items()}
        row["train/lr"] = setup.schedule(step - 1)
        row.update(timer.rates())
        mfu = metrics_lib.mfu(setup.train_flops_per_example, row["perf/examples_per_sec"],
                              jax.device_count(), config.peak_flops_per_device)
        if mfu is not None:
          row["perf/mfu"] = mfu
        row.update(_skip_counts(data.iterator.stats))
        progress.update(step, row)
      if evaluators and (_every(step, config.eval_every_steps) or step == config.total_steps):
        _check_finite(state)
        with timer.paused():  # evaluation is not training throughput
          results = run_evaluators(evaluators, state.params)
        progress.message(_format_results(step, results))
        row.update(results)
      if row:
        writer.write(step, row)
        last.update(row)
      preempted = stop_requested(step) and step < final_step  # at the end it is just done
      if preempted or _every(step, config.checkpoint_every_steps) or step == final_step:
        _check_finite(state)  # never save a non-finite state
        checkpointer.save(step, state, data.iterator, config)
      if preempted:
        break
    checkpointer.wait()  # still shielded: a second SIGTERM must not cut the save short

  checkpointer.close()
  writer.close()
  data.close()
  progress.done()
  if preempted:
    raise Preempted(
        f"Stopped by SIGTERM/SIGINT after step {step} and saved checkpoint "
        f"{checkpointer.directory}/{step}; run the same command again to continue from there."
    )
  return last


class StepsInFlight:
  """Keeps at most `limit` dispatched steps unfinished (0: no limit; 1: synchronous).

  JAX dispatches asynchronously, so without a limit the loop runs ahead of the steps for as
  long as batches come: on the 2-core CPU, 14 (CLIP) to 30 (ECLIP) steps between two log
  lines, each holding its batch, with the loop sitting in the next fetch while the steps
  run. With a limit, the loop waits for the oldest step instead, and the input pipeline
  reads ahead meanwhile (`input.prefetch_batches`), so a fetch finds its batch ready. The
  default, 2, keeps one step queued behind the running one: the device does not wait for
  the loop's fetch and dispatch as long as they take less than a step (BENCHMARKS.md,
  "Input pipeline vs the step").
  """

  def __init__(self, limit: int):
    self._limit = limit
    self._unfinished = collections.deque()

  def add(self, outputs: Any) -> None:
    """Counts a step dispatched just now (`outputs`: any of its results); returns once at
    most `limit - 1` of the counted steps can still be running (the oldest waited for)."""
    if not self._limit:
      return
    self._unfinished.append(outputs)
    while len(self._unfinished) >= self._limit:
      jax.block_until_ready(self._unfinished.popleft())


class _TrainData:
  """The training batches of a run whose batch size may change (`train.batch_schedule`):
  one input pipeline per stage, each formed at its stage's first step where the previous
  one stopped reading the example stream, with the skip counts carried over."""

  def __init__(self, config: ml_collections.ConfigDict, schedule: pipeline.BatchSchedule):
    self._config, self._schedule = config, schedule
    self._stage = None
    self.iterator: pipeline.SkipCountingIterator | None = None

  def iterator_for(self, step: int) -> pipeline.SkipCountingIterator:
    """The iterator whose next batch is the one of `step` (counted in steps completed)."""
    stage = self._schedule.stage(step)
    if stage != self._stage:
      previous = self.iterator
      self._form(stage)
      if previous is not None:
        self.iterator.add_skipped(previous.stats)
        previous.close()
    return self.iterator

  def for_checkpoint_of(self, step: int) -> pipeline.SkipCountingIterator:
    """A fresh iterator of the stage that wrote the data state of checkpoint `step` (the
    stage of its last step), for the checkpoint to restore that state into."""
    self.close()
    self._form(self._schedule.stage(max(step - 1, 0)))
    return self.iterator

  def _form(self, stage: int) -> None:
    start, batch_size = self._schedule.stages[stage]
    self._stage = stage
    self.iterator = pipeline.make_train_iterator(
        self._config.input, seed=self._config.seed, global_batch_size=batch_size,
        start_row=self._schedule.rows_before(start))

  def close(self) -> None:
    if self.iterator is not None:
      self.iterator.close()
    self.iterator, self._stage = None, None


def _skip_counts(stats: Mapping[str, int]) -> dict[str, int]:
  """`train/skipped` (records dropped so far) and `train/skipped/<reason>` where nonzero."""
  counts = {f"train/{k}": v for k, v in stats.items() if k.startswith("skipped/") and v}
  return {"train/skipped": sum(counts.values()), **counts}


def _every(step: int, interval: int) -> bool:
  return interval > 0 and step % interval == 0


@contextlib.contextmanager
def _stop_on_signals(checkpointer: checkpoint_lib.Checkpointer):
  """Yields `stop_requested(step)`: true once SIGTERM or SIGINT arrived, at the same step on
  every process; a second Ctrl-C raises KeyboardInterrupt at once. The previous signal
  handlers are back on exit."""
  if jax.distributed.is_initialized():
    # JAX's preemption notifier owns SIGTERM and agrees on a stop step with the other
    # processes (Orbax asks it); Ctrl-C is routed to it so that it is agreed on too.
    handlers = {signal.SIGINT: lambda *_: os.kill(os.getpid(), signal.SIGTERM)}
    stop_requested = checkpointer.reached_preemption
  else:
    received = []
    handlers = dict.fromkeys((signal.SIGTERM, signal.SIGINT),
                             lambda signum, _: received.append(signum))
    stop_requested = lambda step: bool(received)  # noqa: E731
  handlers[signal.SIGINT] = _interrupt_on_second_press(handlers[signal.SIGINT])
  previous = {signum: signal.signal(signum, handler) for signum, handler in handlers.items()}
  try:
    yield stop_requested
  finally:
    for signum, handler in previous.items():
      signal.signal(signum, handler)


def _interrupt_on_second_press(handler: Callable[[int, Any], None]) -> Callable[[int, Any], None]:
  """`handler` on the first Ctrl-C; KeyboardInterrupt on the next, which someone presses
  because the graceful stop takes too long (a save to a hung file system, say)."""
  pressed = []

  def on_ctrl_c(signum, frame):
    if pressed:
      raise KeyboardInterrupt
    pressed.append(signum)
    handler(signum, frame)

  return on_ctrl_c


def _initial_state(setup: Setup, checkpointer, data: _TrainData) -> TrainState:
  """Resume from the workdir's latest readable checkpoint, else init (+ `init_from`)."""
  state = checkpointer.restore_latest(setup.abstract_state, data.for_checkpoint_of,
                                      defaults=setup.state_defaults())
  if state is not None:
    logging.info("Resuming from %s/%d.", checkpointer.directory, int(state.step))
    return state
  state = setup.init_state()
  if setup.config.init_from:
    params = checkpoint_lib.load_params(
        setup.config.init_from, state.params, setup.abstract_state.params,
        setup.config.init_params, value_range=tuple(setup.config.input.value_range),
    )
    state = state.replace(params=params)
  return state


def _check_finite(state: TrainState) -> None:
  bad_step = int(jax.device_get(state.nonfinite_step))
  if bad_step >= 0:
    raise NonFiniteLossError(
        f"the loss became non-finite at step {bad_step}; stopping without saving that state "
        "(lower optim.lr, raise optim.warmup_steps or check the inputs)."
    )


def run_evaluators(evaluators: Mapping[str, Any], params) -> dict[str, float]:
  results = {}
  for name, evaluator in evaluators.items():
    for metric, value in evaluator.run(params).items():
      results[f"eval/{name}/{metric}"] = float(value)
  return results


def _format_results(step: int, results: Mapping[str, float]) -> str:
  shown = ", ".join(f"{k.removeprefix('eval/')} {v:.4g}" for k, v in results.items())
  return f"step {step} eval: {shown}"


class _Progress:
  """One status line (rewritten in place on a terminal, appended otherwise) with ETA."""

  def __init__(self, start_step: int, total_steps: int, enabled: bool):
    self._start_step, self._total = start_step, total_steps
    self._enabled = enabled
    self._tty = enabled and sys.stderr.isatty()
    self._t0 = None

  def update(self, step: int, metrics: Mapping[str, float]) -> None:
    if not self._enabled:
      return
    now = time.perf_counter()
    if self._t0 is None:  # the first log step includes compilation; measure from here
      self._t0, self._t0_step = now, step
    rate = (step - self._t0_step) / max(now - self._t0, 1e-9)
    eta = metrics_lib.format_duration((self._total - step) / rate) if rate > 0 else "?"
    line = (f"step {step}/{self._total} | loss {metrics['train/loss']:.4f} | "
            f"{metrics['perf/examples_per_sec']:.0f} ex/s | "
            f"data wait {100 * metrics['perf/data_wait_frac']:.0f}% | "
            f"idle {100 * metrics['perf/device_idle_frac']:.0f}% | ETA {eta}")
    if self._tty:
      print("\r" + line.ljust(100), end="", file=sys.stderr, flush=True)
    else:
      print(line, file=sys.stderr, flush=True)

  def message(self, text: str) -> None:
    if self._enabled:
      print(("\n" if self._tty else "") + text, file=sys.stderr, flush=True)

  def done(self) -> None:
    if self._tty:
      print(file=sys.stderr)


# --------------------------------------------------------------------------------------------
# Evaluation of a finished (or running) run: --mode=eval.
# --------------------------------------------------------------------------------------------
EVAL_RESULTS_FILE = "eval_results.json"


def _latest_params(config: ml_collections.ConfigDict, workdir: epath.Path, purpose: str):
  """(setup, step, params) of the latest checkpoint in `workdir`, laid out on this mesh."""
  mesh = parallel.make_mesh(config.mesh)
  validate_config(config, mesh)
  setup = Setup(config, mesh)
  step = checkpoint_lib.latest_step(workdir)  # a Checkpointer would create checkpoints/
  if step is None:
    raise FileNotFoundError(f"{workdir} has no checkpoint to {purpose}; train first.")
  params = checkpoint_lib.load_params(
      str(workdir), setup.abstract_state.params, setup.abstract_state.params, ".*"
  )
  return setup, step, params


def evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Evaluates the latest checkpoint in `workdir`; writes `eval_results.json` (flat keys
  `"<eval>/<metric>"`) and returns it."""
  workdir = epath.Path(workdir)
  setup, step, params = _latest_params(config, workdir, "evaluate")
  evaluators = evals_lib.build_evaluators(
      config.evals, input_config=config.input, apply_fn=setup.apply_fn(), mesh=setup.mesh,
      workdir=workdir,
  )
  results = {k.removeprefix("eval/"): v for k, v in run_evaluators(evaluators, params).items()}
  results["step"] = step
  if jax.process_index() == 0:
    (workdir / EVAL_RESULTS_FILE).write_text(json.dumps(results, indent=2, sort_keys=True))
  return results


# --------------------------------------------------------------------------------------------
# Export: --mode=export.
# --------------------------------------------------------------------------------------------
EXPORT_DIR = "export"
EXPORT_SAFETENSORS = "params.safetensors"
EXPORT_TOKENIZER = "tokenizer.model"


def export(config: ml_collections.ConfigDict, workdir: str) -> epath.Path:
  """Writes the latest checkpoint's parameters alone (no optimizer state, a third of the
  size) to `WORKDIR/export/params` (Orbax) and `params.safetensors`, with `config.json`,
  `step` and the run's tokenizer beside them: all that inference (eclip_jax/inference.py)
  needs, wherever the dataset is."""
  workdir = epath.Path(workdir)
  _, step, params = _latest_params(config, workdir, "export")
  directory = workdir / EXPORT_DIR
  checkpoint_lib.save_params(directory / checkpoint_lib.EXPORT_PARAMS, params)
  host_params = parallel.to_host(params)  # every process takes part in the gather
  if jax.process_index() == 0:
    interop.save_safetensors(directory / EXPORT_SAFETENSORS, host_params)
    (directory / "config.json").write_text(config.to_json_best_effort(indent=2))
    (directory / "step").write_text(str(step))
    if "text" in config.input.modalities:
      builder = pipeline.prepared_builder(config.input.dataset, config.input.data_dir)
      tokenizer_lib.Tokenizer(pipeline.tokenizer_path(config.input, builder)).save(
          directory / EXPORT_TOKENIZER)
  return directory
