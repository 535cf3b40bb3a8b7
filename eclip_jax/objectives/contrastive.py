"""Image–text contrastive losses over a batch sharded across devices, and the "clip" objective.

With logits `L = logit_scale · x yᵀ (+ logit_bias)` over the global batch of B rows:

    softmax = ½ (mean_i CE_row_i + mean_j CE_col_j),
              CE_row_i = logsumexp_j L_ij − mean_{j positive for i} L_ij   (columns alike)
    sigmoid = (1/B) Σ_i Σ_j −log σ(z_ij L_ij),  z_ij = +1 for positives, −1 otherwise

Rows with equal `ids` are positives of each other (duplicate listings of one catalog
product); without ids, row i matches row i only.

`x` and `y` are split by rows over the product of the mesh's batch axes; every other axis
(e.g. "tensor") holds replicas. An implementation is a function selected by `impl` that runs
inside `jax.shard_map` and sees one device's `b = B / n` rows:

- "gather": all-gather the other side's embeddings and score the local rows against the
  whole batch (a b×B block per direction). Simple and fast while b×B fits in memory.

Every implementation accumulates in float32, whatever the embedding dtype, and differentiates
through its collectives: JAX transposes an `all_gather` into a reduce-scatter, so each
device's embedding gradients arrive on the device that owns those rows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import PartitionSpec as P

if TYPE_CHECKING:
  from eclip_jax.objectives import ObjectiveContext

BATCH_AXES = ("data", "fsdp")
KINDS = ("softmax", "sigmoid")

# loss.positives -> the batch key holding the ids that make rows positives of each other.
POSITIVE_ID_KEYS = {"pair": None, "product": "product_id", "catalog": "catalog_id"}


# ---------------------------------------------------------------------------------------------
# Per-block math, shared by every implementation
# ---------------------------------------------------------------------------------------------


def _logits(rows: jax.Array, cols: jax.Array, logit_scale, logit_bias) -> jax.Array:
  """`logit_scale · rows colsᵀ (+ logit_bias)`, accumulated in float32."""
  logits = logit_scale * jnp.dot(rows, cols.T, preferred_element_type=jnp.float32)
  return logits if logit_bias is None else logits + logit_bias


def _block_positives(ids, num_rows: int, batch_axes: tuple[str, ...], global_batch: int):
  """[b, B] mask of positives: this device's rows against every row of the global batch."""
  if ids is None:
    # Row i matches column i only. This device holds global rows [k·b, (k+1)·b), k being its
    # index over the batch axes: the same order in which `all_gather` concatenates shards.
    row_ids = lax.axis_index(batch_axes) * num_rows + jnp.arange(num_rows)
    col_ids = jnp.arange(global_batch)
  else:
    row_ids, col_ids = ids, lax.all_gather(ids, batch_axes, tiled=True)
  return row_ids[:, None] == col_ids[None, :]


def _softmax_sum(logits: jax.Array, positives: jax.Array) -> jax.Array:
  """Σ over rows of the cross-entropy against a target uniform over each row's positives."""
  # Every row has at least one positive (itself), so the mean is defined.
  positive_mean = (
      jnp.sum(jnp.where(positives, logits, 0.0), axis=1) / jnp.sum(positives, axis=1))
  return jnp.sum(jax.nn.logsumexp(logits, axis=1) - positive_mean)


def _sigmoid_sum(logits: jax.Array, positives: jax.Array) -> jax.Array:
  """Σ over the block of −log σ(z · L)."""
  return -jnp.sum(jax.nn.log_sigmoid(jnp.where(positives, logits, -logits)))


# ---------------------------------------------------------------------------------------------
# Implementations: fn(x, y, logit_scale, logit_bias, ids, *, kind, mesh, batch_axes, tile)
# ---------------------------------------------------------------------------------------------


def _gather_loss(x, y, logit_scale, logit_bias, ids, *, kind, mesh, batch_axes, tile):
  """Each device gathers the other side and scores its own rows against the whole batch."""
  del tile  # whole b×B blocks at once; bounding the block is what impl="tiled" is for
  global_batch = x.shape[0]

  def per_device(x, y, logit_scale, logit_bias, ids):
    positives = _block_positives(ids, x.shape[0], batch_axes, global_batch)
    image_to_text = _logits(x, lax.all_gather(y, batch_axes, tiled=True), logit_scale, logit_bias)
    if kind == "sigmoid":
      # The devices' b×B blocks tile the B×B matrix exactly once: one direction is all of it.
      local = _sigmoid_sum(image_to_text, positives)
    else:
      # Columns owned here: local y rows against all of x, i.e. rows of Lᵀ. Ids are shared by
      # both sides, so the positives mask is the same.
      text_to_image = _logits(
          y, lax.all_gather(x, batch_axes, tiled=True), logit_scale, logit_bias)
      local = 0.5 * (_softmax_sum(image_to_text, positives)
                     + _softmax_sum(text_to_image, positives))
    return lax.psum(local, batch_axes) / global_batch

  rows = P(batch_axes)
  return jax.shard_map(
      per_device, mesh=mesh, in_specs=(rows, rows, P(), P(), rows), out_specs=P(),
  )(x, y, logit_scale, logit_bias, ids)


_IMPLS = {"gather": _gather_loss}


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------


def _check_batch(x, y, ids, mesh: jax.sharding.Mesh, batch_axes: tuple[str, ...]) -> None:
  """Fails before tracing on shapes the sharded implementations cannot split."""
  missing = [axis for axis in batch_axes if axis not in mesh.shape]
  if missing:
    raise ValueError(
        f"batch_axes {batch_axes} name axes {missing} absent from the mesh "
        f"{dict(mesh.shape)}; pass batch axes the mesh has.")
  if x.ndim != 2 or x.shape != y.shape:
    raise ValueError(
        f"x and y must both be [B, D] with equal shapes; got {x.shape} and {y.shape}.")
  if ids is not None and ids.shape != x.shape[:1]:
    raise ValueError(f"ids must be [B] = {x.shape[:1]}; got {ids.shape}.")
  num_shards = math.prod(mesh.shape[axis] for axis in batch_axes)
  if x.shape[0] % num_shards:
    raise ValueError(
        f"global batch {x.shape[0]} is not divisible by the {num_shards} devices of the batch "
        f"axes {batch_axes}; set input.batch_size to a multiple of {num_shards}.")


def contrastive_loss(
    x: jax.Array,
    y: jax.Array,
    logit_scale: jax.Array | float,
    logit_bias: jax.Array | float | None = None,
    ids: jax.Array | None = None,
    *,
    kind: str = "softmax",
    impl: str = "gather",
    mesh: jax.sharding.Mesh,
    batch_axes: Sequence[str] = BATCH_AXES,
    tile: int | None = None,
) -> jax.Array:
  """Mean contrastive loss over the global batch (the module docstring has the math).

  Args:
    x: [B, D] embeddings (e.g. images), rows sharded over `batch_axes`, used as given.
    y: [B, D] embeddings of the other side (e.g. titles), sharded like `x`.
    logit_scale: the logit multiplier, already exponentiated; a replicated scalar.
    logit_bias: an additive logit bias (sigmoid), a replicated scalar, or None.
    ids: optional [B] ints sharded like `x`; rows of equal ids are positives of each other.
    kind: "softmax" (CLIP InfoNCE, both directions) or "sigmoid" (SigLIP).
    impl: how the B×B logits are spread over devices; see the module docstring.
    mesh: the device mesh `x` and `y` live on.
    batch_axes: mesh axes whose product splits the rows.
    tile: block size for impls that tile the logits; others ignore it.

  Returns:
    A float32 scalar, replicated.
  """
  if kind not in KINDS:
    raise ValueError(f"Unknown contrastive loss kind {kind!r}; known: {', '.join(KINDS)}.")
  if impl not in _IMPLS:
    raise ValueError(
        f"Unknown contrastive loss impl {impl!r}; implemented: {', '.join(_IMPLS)}.")
  batch_axes = tuple(batch_axes)
  _check_batch(x, y, ids, mesh, batch_axes)
  logit_scale = jnp.asarray(logit_scale, jnp.float32)
  if logit_bias is not None:
    logit_bias = jnp.asarray(logit_bias, jnp.float32)
  return _IMPLS[impl](
      x, y, logit_scale, logit_bias, ids,
      kind=kind, mesh=mesh, batch_axes=batch_axes, tile=tile)


def i2t_accuracy(
    x: jax.Array,
    y: jax.Array,
    ids: jax.Array | None = None,
    *,
    mesh: jax.sharding.Mesh,
    batch_axes: Sequence[str] = BATCH_AXES,
) -> jax.Array:
  """Fraction of rows of `x` whose best-scoring row of `y` in the global batch is a positive.

  A positive logit scale and a shared bias do not move the argmax, so raw dot products rank.
  Not differentiated: a metric, not a loss.
  """
  batch_axes = tuple(batch_axes)
  _check_batch(x, y, ids, mesh, batch_axes)
  global_batch = x.shape[0]

  def per_device(x, y, ids):
    positives = _block_positives(ids, x.shape[0], batch_axes, global_batch)
    scores = jnp.dot(
        x, lax.all_gather(y, batch_axes, tiled=True).T, preferred_element_type=jnp.float32)
    best = jnp.argmax(scores, axis=1)
    hits = jnp.take_along_axis(positives, best[:, None], axis=1)
    return lax.psum(jnp.sum(hits, dtype=jnp.float32), batch_axes) / global_batch

  rows = P(batch_axes)
  return jax.shard_map(
      per_device, mesh=mesh, in_specs=(rows, rows, rows), out_specs=P(),
  )(lax.stop_gradient(x), lax.stop_gradient(y), ids)


def clip_objective(
    outputs: dict[str, Any], batch: dict[str, Any], ctx: ObjectiveContext,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Image–title contrastive loss on a two-tower model's (L2-normalized) embeddings.

  `ctx.loss_config.positives` picks what counts as a match: "pair" (the row's own title),
  "product" (rows of one `product_id`) or "catalog" (duplicate listings: one `catalog_id`).
  """
  config = ctx.loss_config
  if config.positives not in POSITIVE_ID_KEYS:
    raise ValueError(
        f"Unknown loss.positives {config.positives!r}; known: {', '.join(POSITIVE_ID_KEYS)}.")
  id_key = POSITIVE_ID_KEYS[config.positives]
  ids = None if id_key is None else batch[id_key]
  image_emb, text_emb = outputs["image_emb"], outputs["text_emb"]
  logit_scale = outputs["logit_scale"]
  # A shared bias cancels in a softmax; only the sigmoid loss uses (and trains) it.
  logit_bias = outputs.get("logit_bias") if config.kind == "sigmoid" else None

  loss = contrastive_loss(
      image_emb, text_emb, logit_scale, logit_bias, ids,
      kind=config.kind, impl=config.impl, mesh=ctx.mesh, batch_axes=ctx.batch_axes,
      tile=config.get("tile") or None)
  metrics = {
      "contrastive_loss": loss,
      "logit_scale": logit_scale,
      "i2t_acc": i2t_accuracy(image_emb, text_emb, ids, mesh=ctx.mesh,
                              batch_axes=ctx.batch_axes),
  }
  if logit_bias is not None:
    metrics["logit_bias"] = logit_bias
  return loss, metrics
