"""Gradient strategies: how a train step turns (params, batch) into the loss and its gradients.

`config.train.gradients` names one; the trainer's step then applies the optimizer to what it
returns. A strategy is

    fn(loss: StepLoss, params, batch, rng) -> ((loss, metrics), grads)

where `StepLoss` holds the two halves of the training loss, so a strategy may take them
apart: `forward(params, batch, rng) -> outputs` (the model) and `objectives(outputs, batch)
-> (loss, metrics)` (the weighted objectives). `loss(params, batch, rng)` composes them.

    full        `jax.value_and_grad` of the whole global batch's loss (the default)
    grad_cache  e-CLIP's multi-stream accumulation: the same gradient with one micro-batch's
                activations at a time (`train.streams` micro-batches)

A strategy that splits the batch into micro-batches takes them with
`parallel.split_microbatches`, which keeps each one spread over every device. Register a new
strategy with `register(name, fn)`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from eclip_jax import parallel

Batch = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class StepLoss:
  """The training loss of one step, in the two halves a strategy may evaluate separately.

  Attributes:
    forward: `(params, batch, rng) -> outputs`, the model in training mode.
    objectives: `(outputs, batch) -> (loss, metrics)`, the config's weighted objectives.
    mesh: the device mesh the batch is sharded over.
    train_config: the config's `train` section (strategy options live there).
  """

  forward: Callable[[Any, Batch, jax.Array], dict[str, Any]]
  objectives: Callable[[dict[str, Any], Batch], tuple[jax.Array, dict[str, jax.Array]]]
  mesh: jax.sharding.Mesh
  train_config: ml_collections.ConfigDict

  def __call__(self, params, batch: Batch, rng: jax.Array):
    return self.objectives(self.forward(params, batch, rng), batch)


Strategy = Callable[[StepLoss, Any, Batch, jax.Array], tuple[tuple[jax.Array, dict], Any]]


def full_gradients(loss: StepLoss, params, batch: Batch, rng: jax.Array):
  """The gradient of the whole batch's loss in one backward pass."""
  return jax.value_and_grad(loss, has_aux=True)(params, batch, rng)


_STRATEGIES: dict[str, Strategy] = {}


def register(name: str, strategy: Strategy) -> None:
  """Makes `strategy` available as `config.train.gradients=<name>`."""
  if name in _STRATEGIES:
    raise ValueError(f"a gradient strategy named {name!r} is registered already")
  _STRATEGIES[name] = strategy


register("full", full_gradients)


def get(name: str) -> Strategy:
  if name not in _STRATEGIES:
    raise ValueError(f"config.train.gradients={name!r} is not a gradient strategy; known: "
                     f"{sorted(_STRATEGIES)}.")
  return _STRATEGIES[name]


def grad_cache_gradients(loss: StepLoss, params, batch: Batch, rng: jax.Array):
  """e-CLIP's multi-stream accumulation (GradCache): the full batch's gradient with the
  activations of one micro-batch at a time (`train.streams` = M micro-batches).

    pass 1  the model on each micro-batch, without keeping activations -> the outputs of
            the whole batch (embeddings are small: B x D)
    loss    the objectives on the whole batch's outputs (in-batch negatives over all B
            rows, any `loss.impl`), and d(loss)/d(outputs)
    pass 2  the model on each micro-batch again, back-propagating its rows of
            d(loss)/d(outputs); the parameter gradients are summed

The gradient equals `full`'s wherever the model treats rows independently (no batch
statistics); it costs one more forward pass than `full` (about a third more compute for a
forward:backward of 1:2). Outputs with the batch's rows as their leading axis are
per-row; every other output (temperatures, ...) depends on the params alone and is the same
for every micro-batch, so its cotangent is shared out evenly. Micro-batch m draws its
randomness from fold_in(rng, m), the same in both passes.
"""
  num_streams = int(loss.train_config.streams)
  micro = parallel.split_microbatches(batch, num_streams, loss.mesh)
  rows = next(iter(micro.values())).shape[1]

  def forward(params, index):
    return loss.forward(params, {key: value[index] for key, value in micro.items()},
                        jax.random.fold_in(rng, index))

  # Pass 1: stream the micro-batches through the model; only their outputs are kept.
  static = {}  # outputs that are Python values (e.g. the patch grid), the same each time

  def embed(_, index):
    outputs = forward(params, index)
    static.update({key: value for key, value in outputs.items()
                   if not isinstance(value, jax.Array)})
    return None, jax.lax.stop_gradient(
        {key: value for key, value in outputs.items() if key not in static})

  _, stacked = jax.lax.scan(embed, None, jnp.arange(num_streams))
  per_row = {key: value.ndim >= 2 and value.shape[1] == rows for key, value in stacked.items()}
  outputs = {key: parallel.merge_microbatches(value, loss.mesh) if per_row[key] else value[0]
             for key, value in stacked.items()}
  differentiable = _differentiable(outputs)
  constant = {key: value for key, value in outputs.items() if key not in differentiable}

  total, pullback, metrics = jax.vjp(
      lambda outs: loss.objectives({**outs, **constant, **static}, batch), differentiable,
      has_aux=True)
  (cotangents,) = pullback(jnp.ones_like(total))
  row_cotangents = parallel.split_microbatches(
      {key: value for key, value in cotangents.items() if per_row[key]}, num_streams, loss.mesh)
  shared_cotangents = {key: value / num_streams for key, value in cotangents.items()
                       if not per_row[key]}

  # Pass 2: each micro-batch again, back-propagating its rows of the cotangents.
  def accumulate(grads, index):
    _, micro_pullback = jax.vjp(lambda p: _differentiable(forward(p, index)), params)
    own = {key: value[index] for key, value in row_cotangents.items()}
    (micro_grads,) = micro_pullback({**own, **shared_cotangents})
    return jax.tree.map(jnp.add, grads, micro_grads), None

  grads, _ = jax.lax.scan(accumulate, jax.tree.map(jnp.zeros_like, params),
                          jnp.arange(num_streams))
  return (total, metrics), grads


def _differentiable(outputs: dict[str, Any]) -> dict[str, jax.Array]:
  """The floating-point array outputs: what gradients flow through."""
  return {key: value for key, value in outputs.items()
          if isinstance(value, jax.Array) and jnp.issubdtype(value.dtype, jnp.floating)}


register("grad_cache", grad_cache_gradients)
