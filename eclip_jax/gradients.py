"""Gradient strategies: how a train step turns (params, batch) into the loss and its gradients.

`config.train.gradients` names one; the trainer's step then applies the optimizer to what it
returns. A strategy is

    fn(loss: StepLoss, params, batch, rng) -> ((loss, metrics), grads)

where `StepLoss` holds the two halves of the training loss, so a strategy may take them
apart: `forward(params, batch, rng) -> outputs` (the model) and `objectives(outputs, batch)
-> (loss, metrics)` (the weighted objectives). `loss(params, batch, rng)` composes them.

    full   `jax.value_and_grad` of the whole global batch's loss (the default)

A strategy that splits the batch into micro-batches takes them with
`parallel.split_microbatches`, which keeps each one spread over every device. Register a new
strategy with `register(name, fn)`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import ml_collections

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


_STRATEGIES: dict[str, Strategy] = {"full": full_gradients}


def register(name: str, strategy: Strategy) -> None:
  """Makes `strategy` available as `config.train.gradients=<name>`."""
  if name in _STRATEGIES:
    raise ValueError(f"a gradient strategy named {name!r} is registered already")
  _STRATEGIES[name] = strategy


def get(name: str) -> Strategy:
  if name not in _STRATEGIES:
    raise ValueError(f"config.train.gradients={name!r} is not a gradient strategy; known: "
                     f"{sorted(_STRATEGIES)}.")
  return _STRATEGIES[name]
