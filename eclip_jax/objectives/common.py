"""What objectives share: their context, the ids that make rows positives, and the configured
contrastive loss (`loss.kind`, `loss.impl`, `loss.tile`) over one or several views."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections

from eclip_jax import parallel
from eclip_jax.data import schema
from eclip_jax.objectives import contrastive


@dataclasses.dataclass(frozen=True)
class ObjectiveContext:
  """What an objective needs beyond the model outputs and the batch.

  Attributes:
    mesh: the device mesh the batch is sharded over.
    loss_config: the config's `loss` section (`kind`, `impl`, `positives`, `tile`).
    batch_axes: mesh axes whose product splits the batch rows.
    method_config: the config section of the method the objective belongs to (e.g.
      `config.eclip`), for objectives registered with one; None otherwise.
  """

  mesh: jax.sharding.Mesh
  loss_config: ml_collections.ConfigDict
  batch_axes: tuple[str, ...] = parallel.BATCH_AXES
  method_config: ml_collections.ConfigDict | None = None


def positive_ids(batch: dict[str, Any], loss_config) -> jax.Array | None:
  """The ids that make rows positives of each other under `loss.positives` ("pair": none)."""
  id_key = schema.positive_id_key(loss_config.positives, "config.loss.positives")
  return None if id_key is None else batch[id_key]


def configured_loss_and_accuracy(
    x: jax.Array, y: jax.Array, logit_scale, logit_bias, ids, ctx: ObjectiveContext, *,
    kind: str | None = None, row_weights: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
  """`contrastive_loss_and_accuracy` with the implementation the config's `loss` section
  picks (`kind` overrides `loss.kind`)."""
  config = ctx.loss_config
  return contrastive.contrastive_loss_and_accuracy(
      x, y, logit_scale, logit_bias, ids, kind=kind or config.kind, impl=config.impl,
      mesh=ctx.mesh, batch_axes=ctx.batch_axes, tile=config.get("tile") or None,
      row_weights=row_weights)


def mean_of(results: Sequence[tuple[jax.Array, jax.Array]]) -> tuple[jax.Array, jax.Array]:
  """Element-wise mean of several (loss, accuracy) pairs."""
  return tuple(sum(r[i] for r in results) / len(results) for i in range(2))


def per_view_loss_and_accuracy(
    x: jax.Array, y: jax.Array, logit_scale, logit_bias, ids, ctx: ObjectiveContext, *,
    kind: str | None = None,
) -> tuple[jax.Array, jax.Array]:
  """`configured_loss_and_accuracy` of x [B,D] or, per view, of x [B,V,D] against y [B,D],
  averaged over the views (each view is an image of the row's product)."""
  views = [x] if x.ndim == 2 else [x[:, v] for v in range(x.shape[1])]
  return mean_of([configured_loss_and_accuracy(view, y, logit_scale, logit_bias, ids, ctx,
                                               kind=kind) for view in views])
