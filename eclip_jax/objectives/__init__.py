"""Training objectives, chosen by name from a config.

An objective is `fn(outputs, batch, ctx) -> (loss, metrics)`: `outputs` is the model's dict
(`image_emb`, `text_emb`, ...), `batch` the global batch dict, `ctx` what the step knows
beyond them (mesh, loss config). `loss` is a float32 scalar; `metrics` maps names to scalars
that the trainer logs as `train/<name>`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import ml_collections

from eclip_jax.objectives import contrastive
from eclip_jax.objectives import eclip


@dataclasses.dataclass(frozen=True)
class ObjectiveContext:
  """What an objective needs beyond the model outputs and the batch.

  Attributes:
    mesh: the device mesh the batch is sharded over.
    loss_config: the config's `loss` section (`kind`, `impl`, `positives`, `tile`, ...).
    batch_axes: mesh axes whose product splits the batch rows.
  """

  mesh: jax.sharding.Mesh
  loss_config: ml_collections.ConfigDict
  batch_axes: tuple[str, ...] = contrastive.BATCH_AXES


Objective = Callable[
    [dict[str, Any], dict[str, Any], ObjectiveContext],
    tuple[jax.Array, dict[str, jax.Array]],
]

_OBJECTIVES: dict[str, Objective] = {
    "clip": contrastive.clip_objective,
    "instance_text": eclip.instance_text_objective,
    "instance_consistency": eclip.instance_consistency_objective,
    "selection_kl": eclip.selection_kl_objective,
    "query_diversity": eclip.query_diversity_objective,
}


def get_objective(name: str) -> Objective:
  """The objective registered as `name`."""
  if name not in _OBJECTIVES:
    raise ValueError(f"Unknown objective {name!r}; known: {', '.join(sorted(_OBJECTIVES))}.")
  return _OBJECTIVES[name]
