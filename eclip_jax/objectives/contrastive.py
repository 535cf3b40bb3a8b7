"""Contrastive losses over a batch sharded across devices: the kernels every objective uses.

With logits `L = logit_scale · x yᵀ (+ logit_bias)` over the global batch of B rows:

    softmax = ½ (mean_i CE_row_i + mean_j CE_col_j),
              CE_row_i = logsumexp_j L_ij − mean_{j positive for i} L_ij   (columns alike)
    sigmoid = (1/B) Σ_i Σ_j −log σ(z_ij L_ij),  z_ij = +1 for positives, −1 otherwise

Rows with equal `ids` are positives of each other (duplicate listings of one catalog
product); without ids, row i matches row i only.

Row weights `w` (optional, [B], ≥ 0, constants: no gradient flows into them) generalize both:
a row of weight 0 is neither a query nor a candidate (e.g. a listing without the modality),
the sums over j run over rows of weight > 0 only, and the means become weighted means,

    softmax = (1 / 2W) (Σ_i w_i CE_row_i + Σ_j w_j CE_col_j),   W = Σ_i w_i
    sigmoid = (1 / W) Σ_i Σ_j ½ (w_i + w_j) · −log σ(z_ij L_ij)

which are the formulas above for w = 1, and 0 (with zero gradients) when every weight is 0.

`x` and `y` are split by rows over the product of the mesh's batch axes; every other axis
(e.g. "tensor") holds replicas. An implementation is a function selected by `impl` that runs
inside `jax.shard_map` on one device's `b = B / n` rows; per device they need:

- "gather": all-gather the other side's embeddings and score the local rows against the
  whole batch: b×B logits per direction. Simple and fast while b×B fits in memory.
- "ring": the devices form a ring over the batch axes. Each keeps its x rows and passes its y
  rows (with their ids and weights) around with `ppermute`; after n hops every device has
  scored its rows against every column, holding one b×b block at a time.
- "tiled": the ring, with each device's rows and the travelling columns cut into tiles of
  `tile` rows (Inf-CL's scheme), so that at most a tile×tile block of logits and a tile of
  columns exist at once: memory linear in b, whatever B.

Ring and tiled share one traversal (ring is tiled with a single tile of b rows). It never
holds a row or column of logits whole, so the softmax keeps running log-sum-exps instead:
each row's over the tiles it has met, and each column's travelling with its tile, which makes
one pass serve both directions. The positive terms need no travelling state: positives share
an id, so a row and a column that are positives of each other have the same count c, and
Σ_j (w_j/c_j) Σ_{i pos} L_ij = Σ_i (1/c_i) Σ_{j pos} w_j L_ij: each row accumulates its
positives' logits plain and weighted by the columns' weights, and both directions' positive
terms follow. The gradient is a `jax.custom_vjp` that walks the tiles again recomputing
the logits, carrying each column tile's gradient with it around the ring, home to its owner.
Plain autodiff, even with `jax.checkpoint` per hop, would store every tile that passes by:
all of y, B×D per device (BENCHMARKS.md has the measured figures).

Every implementation accumulates in float32, whatever the embedding dtype. "gather"
differentiates through its collectives: JAX transposes an `all_gather` into a reduce-scatter,
so each device's embedding gradients arrive on the device that owns those rows. Without
weights each implementation runs its unweighted program, not a weighted one with w = 1.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import PartitionSpec as P

from eclip_jax.parallel import BATCH_AXES

KINDS = ("softmax", "sigmoid")
# Rows per tile for impl="tiled" when `tile` is not given: a 1024×1024 float32 block is
# 4 MiB. Measured (BENCHMARKS.md): tiles of 256 to 2048 rows run equally fast at a 16k batch;
# 1024 keeps the temporaries of a 1M batch on 8 devices at 20 MiB per device (2048: 59 MiB).
DEFAULT_TILE = 1024


# ---------------------------------------------------------------------------------------------
# Per-block math, shared by every implementation
# ---------------------------------------------------------------------------------------------


def _ring_size(mesh: jax.sharding.Mesh, batch_axes: tuple[str, ...]) -> int:
  """How many devices split the batch (n)."""
  return math.prod(mesh.shape[axis] for axis in batch_axes)


def _dots(rows: jax.Array, cols: jax.Array) -> jax.Array:
  """`rows colsᵀ`, accumulated in float32."""
  return jnp.dot(rows, cols.T, preferred_element_type=jnp.float32)


def _scale_and_shift(dots: jax.Array, logit_scale, logit_bias) -> jax.Array:
  logits = logit_scale * dots
  return logits if logit_bias is None else logits + logit_bias


def _positional_ids(num_rows: int, batch_axes: tuple[str, ...]) -> jax.Array:
  """Global row indices of this device's rows: row i is then the only positive of row i."""
  # This device holds global rows [k·b, (k+1)·b), k being its index over the batch axes: the
  # same order in which `all_gather(..., tiled=True)` concatenates shards.
  return lax.axis_index(batch_axes) * num_rows + jnp.arange(num_rows)


def _sigmoid_terms(logits: jax.Array, positives: jax.Array) -> jax.Array:
  """−log σ(z · L) elementwise."""
  return -jax.nn.log_sigmoid(jnp.where(positives, logits, -logits))


def _pair_weights(row_weights: jax.Array, col_weights: jax.Array) -> jax.Array:
  """½ (w_i + w_j): the sigmoid loss's weight of pair (i, j)."""
  return 0.5 * (row_weights[:, None] + col_weights[None, :])


def _best_match(logits: jax.Array, positives: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Per row: the highest logit and whether its column is a positive."""
  # A positive logit scale and a shared bias do not move the argmax: logits rank like scores.
  best = jnp.argmax(logits, axis=1)
  hit = jnp.take_along_axis(positives, best[:, None], axis=1)[:, 0]
  return jnp.max(logits, axis=1), hit


def _total_weight(weights: jax.Array, batch_axes: tuple[str, ...]) -> jax.Array:
  """W = Σ w over the global batch, as a divisor: 1 when every weight is 0 (the sums it
  divides are 0 then, and so are the loss and its gradients)."""
  total = lax.psum(jnp.sum(weights), batch_axes)
  return jnp.where(total > 0, total, 1.0)


# ---------------------------------------------------------------------------------------------
# impl="gather": fn(x, y, logit_scale, logit_bias, ids, weights, *, kind, mesh, batch_axes,
# tile) -> (loss, i2t_accuracy), as every implementation
# ---------------------------------------------------------------------------------------------


def _softmax_sum(logits: jax.Array, positives: jax.Array) -> jax.Array:
  """Σ over rows of the cross-entropy against a target uniform over each row's positives."""
  # Every row has at least one positive (itself), so the mean is defined.
  positive_mean = (
      jnp.sum(jnp.where(positives, logits, 0.0), axis=1) / jnp.sum(positives, axis=1))
  return jnp.sum(jax.nn.logsumexp(logits, axis=1) - positive_mean)


def _weighted_softmax_sum(logits, positives, candidates, row_weights) -> jax.Array:
  """Σ_i w_i CE_row_i over the candidate columns (`positives` are candidates already)."""
  # A row with no candidate (every weight 0) or no positive (its only match has weight 0)
  # gets finite stand-ins: its term is dropped, and NaN must not leak into the gradient.
  candidates = candidates | ~jnp.any(candidates, axis=1, keepdims=True)
  count = jnp.maximum(jnp.sum(positives, axis=1), 1)
  positive_mean = jnp.sum(jnp.where(positives, logits, 0.0), axis=1) / count
  cross_entropy = jax.nn.logsumexp(logits, axis=1, where=candidates) - positive_mean
  return jnp.sum(jnp.where(row_weights > 0, row_weights * cross_entropy, 0.0))


def _gather_loss(x, y, logit_scale, logit_bias, ids, weights, *, kind, mesh, batch_axes, tile):
  """Each device gathers the other side and scores its own rows against the whole batch."""
  del tile  # whole b×B blocks at once; bounding the block is what impl="tiled" is for
  global_batch = x.shape[0]
  gather = functools.partial(lax.all_gather, axis_name=batch_axes, tiled=True)

  def per_device(x, y, logit_scale, logit_bias, ids, weights):
    if ids is None:
      row_ids, col_ids = _positional_ids(x.shape[0], batch_axes), jnp.arange(global_batch)
    else:
      row_ids, col_ids = ids, gather(ids)
    positives = row_ids[:, None] == col_ids[None, :]
    image_to_text = _scale_and_shift(_dots(x, gather(y)), logit_scale, logit_bias)
    # Columns owned here: local y rows against all of x, i.e. rows of Lᵀ. Ids and weights are
    # shared by both sides, so the positives and candidates masks are the same.
    text_to_image = lambda: _scale_and_shift(_dots(y, gather(x)), logit_scale, logit_bias)  # noqa: E731
    if weights is None:
      if kind == "sigmoid":
        # The devices' b×B blocks tile the B×B matrix exactly once: one direction is all of it.
        local = jnp.sum(_sigmoid_terms(image_to_text, positives))
      else:
        local = 0.5 * (_softmax_sum(image_to_text, positives)
                       + _softmax_sum(text_to_image(), positives))
      hits = jnp.sum(_best_match(lax.stop_gradient(image_to_text), positives)[1],
                     dtype=jnp.float32)
      normalizer = global_batch
    else:
      col_weights = gather(weights)
      candidates = (weights > 0)[:, None] & (col_weights > 0)[None, :]
      positives &= candidates
      if kind == "sigmoid":
        terms = _pair_weights(weights, col_weights) * _sigmoid_terms(image_to_text, positives)
        local = jnp.sum(jnp.where(candidates, terms, 0.0))
      else:
        local = 0.5 * (_weighted_softmax_sum(image_to_text, positives, candidates, weights)
                       + _weighted_softmax_sum(text_to_image(), positives, candidates, weights))
      scores = jnp.where(candidates, lax.stop_gradient(image_to_text), -jnp.inf)
      hits = jnp.sum(jnp.where(weights > 0, weights * _best_match(scores, positives)[1], 0.0))
      normalizer = _total_weight(weights, batch_axes)
    return (lax.psum(local, batch_axes) / normalizer,
            lax.psum(hits, batch_axes) / normalizer)

  rows = P(batch_axes)
  return jax.shard_map(
      per_device, mesh=mesh, in_specs=(rows, rows, P(), P(), rows, rows), out_specs=(P(), P()),
  )(x, y, logit_scale, logit_bias, ids, weights)


# ---------------------------------------------------------------------------------------------
# impl="ring" and impl="tiled": one traversal of tiles around the ring, a custom gradient
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Traversal:
  """The static shape of a traversal (hashable: it is a `custom_vjp` non-diff argument)."""

  kind: str
  mesh: jax.sharding.Mesh
  batch_axes: tuple[str, ...]
  tile: int  # rows per tile, ≤ the per-device batch


def _tile_start(index, tile: int, length: int) -> tuple[jax.Array, jax.Array]:
  """First row of tile `index` of `length` rows, and which of its rows the tile owns.

  When `tile` does not divide `length` the last tile is shifted back to end at `length`,
  overlapping its predecessor; the overlap is masked out. Every tile thus has `tile` rows
  and nothing is padded (a padded copy of the embeddings would cost b×D memory).
  """
  start = jnp.minimum(index * tile, length - tile)
  return start, start + jnp.arange(tile) >= index * tile


def _varying_full(shape, value, batch_axes: tuple[str, ...], dtype=jnp.float32) -> jax.Array:
  """A constant array typed as differing across devices, as loop carries that will must be."""
  return lax.pcast(jnp.full(shape, value, dtype), batch_axes, to="varying")


def _read(tree, start, size: int):
  return jax.tree.map(lambda a: lax.dynamic_slice_in_dim(a, start, size), tree)


def _write(tree, start, update):
  return jax.tree.map(lambda a, u: lax.dynamic_update_slice_in_dim(a, u, start, 0), tree, update)


def _tile_logits(x_tile, y_tile, row_ids, col_ids, row_owned, col_owned, logit_scale, logit_bias):
  """Raw dot products, logits, positives and the mask of pairs this tile owns."""
  dots = _dots(x_tile, y_tile)
  owned = row_owned[:, None] & col_owned[None, :]
  positives = (row_ids[:, None] == col_ids[None, :]) & owned
  return dots, _scale_and_shift(dots, logit_scale, logit_bias), positives, owned


def _owned(index, tile: int, length: int, weights_tile) -> jax.Array:
  """The rows of a tile that it owns and that take part (weight > 0, when weighted): a pair
  is scored only where both its row and its column are owned in this sense."""
  owned = _tile_start(index, tile, length)[1]
  return owned if weights_tile is None else owned & (weights_tile > 0)


def _ring_of_tiles(traversal: _Traversal, num_rows: int, state, column_tile: Callable,
                   visit: Callable, finish: Callable):
  """Visits every (local row tile, global column tile) pair once; returns the final `state`.

  For each local column tile c: `column_tile(c, state) -> (payload, accumulator)` starts it;
  it then makes n hops around the ring, and on every device it reaches,
  `visit(r, c, payload, state, accumulator) -> (state, accumulator)` runs for each local row
  tile r. After the n-th hop the accumulator is home again and
  `finish(c, state, accumulator) -> state` stores it. The payload (embeddings, ids, weights)
  never changes, so it is sent before the visits, leaving the transfer time to overlap them.
  """
  n, tile = _ring_size(traversal.mesh, traversal.batch_axes), traversal.tile
  num_tiles = -(-num_rows // tile)
  # Device k (its index over the batch axes, linearized as `axis_index` and `all_gather` do)
  # sends to k+1. Any single n-cycle would do: ids travel with their tile, and after n hops
  # every tile has met every device and is home.
  ring = [(k, (k + 1) % n) for k in range(n)]
  send = functools.partial(lax.ppermute, axis_name=traversal.batch_axes, perm=ring)

  def one_column_tile(c, state):
    def visit_rows(payload, state, accumulator):
      return lax.fori_loop(
          0, num_tiles, lambda r, carry: visit(r, c, payload, *carry), (state, accumulator))

    def hop(_, carry):
      payload, state, accumulator = carry
      next_payload = send(payload)
      state, accumulator = visit_rows(payload, state, accumulator)
      return next_payload, state, send(accumulator)

    payload, accumulator = column_tile(c, state)
    payload, state, accumulator = lax.fori_loop(0, n - 1, hop, (payload, state, accumulator))
    # The last device to see this tile sends back only the accumulator: the owner has the rest.
    state, accumulator = visit_rows(payload, state, accumulator)
    return finish(c, state, send(accumulator))

  return lax.fori_loop(0, num_tiles, one_column_tile, state)


def _traversal_forward(traversal: _Traversal, x, y, logit_scale, logit_bias, ids, weights):
  """(loss, accuracy, the per-row statistics the gradient needs)."""
  kind, tile, batch_axes = traversal.kind, traversal.tile, traversal.batch_axes
  global_batch = x.shape[0]
  weighted = weights is not None

  def per_device(x, y, logit_scale, logit_bias, ids, weights):
    b = x.shape[0]
    ids = _positional_ids(b, batch_axes) if ids is None else ids
    # Statistics of the local rows of x (updated per row tile) and of the local rows of y
    # (stored when their tile comes home).
    full = functools.partial(_varying_full, (b,), batch_axes=batch_axes)
    rows = {"best": full(-jnp.inf), "hit": full(False, dtype=bool)}
    if kind == "softmax":
      rows.update(lse=full(-jnp.inf), positive_sum=full(0.0), positive_count=full(0.0))
      if weighted:  # Σ_{j pos} w_j L_ij: the columns' positive terms, gathered by row
        rows.update(weighted_positive_sum=full(0.0))
      cols = {"lse": full(-jnp.inf)}
    else:
      rows.update(loss=full(0.0))
      cols = {}
    sides = {"embeddings": y, "ids": ids}
    if weighted:
      sides["weights"] = weights

    def column_tile(c, state):
      start, _ = _tile_start(c, tile, b)
      # Each column's log-sum-exp over the rows it has met travels with its tile. Starting
      # from the stored values makes storing them back exact: a shifted last tile's borrowed
      # columns were finished by its predecessor, and their pairs are masked out here.
      return _read(sides, start, tile), _read(state[1], start, tile)

    def visit(r, c, payload, state, col_stats):
      rows, cols = state
      row_start, _ = _tile_start(r, tile, b)
      x_tile, row_ids = _read((x, ids), row_start, tile)
      row_weights = _read(weights, row_start, tile) if weighted else None
      col_weights = payload.get("weights")
      _, logits, positives, owned = _tile_logits(
          x_tile, payload["embeddings"], row_ids, payload["ids"],
          _owned(r, tile, b, row_weights), _owned(c, tile, b, col_weights),
          logit_scale, logit_bias)
      # Pairs outside `owned` (overlapping tiles, weight 0) contribute each statistic's identity.
      old = _read(rows, row_start, tile)
      new = dict(old)
      best, hit = _best_match(jnp.where(owned, logits, -jnp.inf), positives)
      improved = best > old["best"]
      new["best"] = jnp.where(improved, best, old["best"])
      new["hit"] = jnp.where(improved, hit, old["hit"])
      if kind == "softmax":
        new["lse"] = jnp.logaddexp(old["lse"], jax.nn.logsumexp(logits, axis=1, where=owned))
        col_stats = {"lse": jnp.logaddexp(
            col_stats["lse"], jax.nn.logsumexp(logits, axis=0, where=owned))}
        new["positive_sum"] = old["positive_sum"] + jnp.sum(
            jnp.where(positives, logits, 0.0), axis=1)
        new["positive_count"] = old["positive_count"] + jnp.sum(positives, axis=1)
        if weighted:
          new["weighted_positive_sum"] = old["weighted_positive_sum"] + jnp.sum(
              jnp.where(positives, col_weights[None, :] * logits, 0.0), axis=1)
      else:
        terms = _sigmoid_terms(logits, positives)
        if weighted:
          terms = _pair_weights(row_weights, col_weights) * terms
        new["loss"] = old["loss"] + jnp.sum(jnp.where(owned, terms, 0.0), axis=1)
      return (_write(rows, row_start, new), cols), col_stats

    def finish(c, state, col_stats):
      rows, cols = state
      start, _ = _tile_start(c, tile, b)
      return rows, _write(cols, start, col_stats)

    rows, cols = _ring_of_tiles(traversal, b, (rows, cols), column_tile, visit, finish)
    if not weighted:
      if kind == "softmax":
        local = (0.5 * jnp.sum(rows["lse"] + cols["lse"])
                 - jnp.sum(rows["positive_sum"] / rows["positive_count"]))
        saved = (rows["lse"], rows["positive_count"], cols["lse"])
      else:
        local, saved = jnp.sum(rows["loss"]), ()
      hits, normalizer = jnp.sum(rows["hit"], dtype=jnp.float32), global_batch
    else:
      present = weights > 0
      if kind == "softmax":
        # Rows of weight 0 met no pair: their statistics are identities (−inf, 0), replaced
        # by finite stand-ins that the gradient masks out.
        row_lse = jnp.where(present, rows["lse"], 0.0)
        col_lse = jnp.where(present, cols["lse"], 0.0)
        count = jnp.maximum(rows["positive_count"], 1.0)
        positive_terms = (weights * rows["positive_sum"] + rows["weighted_positive_sum"]) / count
        local = 0.5 * jnp.sum(jnp.where(
            present, weights * (row_lse + col_lse) - positive_terms, 0.0))
        saved = (row_lse, count, col_lse)
      else:
        local, saved = jnp.sum(rows["loss"]), ()
      hits = jnp.sum(jnp.where(present, weights * rows["hit"], 0.0))
      normalizer = _total_weight(weights, batch_axes)
    loss = lax.psum(local, batch_axes) / normalizer
    accuracy = lax.psum(hits, batch_axes) / normalizer
    return loss, accuracy, saved

  rows = P(batch_axes)
  return jax.shard_map(
      per_device, mesh=traversal.mesh, in_specs=(rows, rows, P(), P(), rows, rows),
      out_specs=(P(), P(), rows),
  )(x, y, logit_scale, logit_bias, ids, weights)


def _logit_grads(kind, logits, positives, owned, saved_rows, saved_cols, normalizer,
                 row_weights=None, col_weights=None):
  """∂loss/∂logits on one tile: the module docstring's formulas, differentiated."""
  weighted = row_weights is not None
  if kind == "sigmoid":
    signs = jnp.where(positives, 1.0, -1.0)
    grads = -signs * jax.nn.sigmoid(-signs * logits)
    if weighted:
      grads = _pair_weights(row_weights, col_weights) * grads
  else:
    (row_lse, positive_count), (col_lse,) = saved_rows, saved_cols
    softmax_rows = jnp.exp(logits - row_lse[:, None])
    softmax_cols = jnp.exp(logits - col_lse[None, :])
    if not weighted:
      grads = 0.5 * (softmax_rows + softmax_cols) - positives / positive_count[:, None]
    else:
      grads = (0.5 * (row_weights[:, None] * softmax_rows + col_weights[None, :] * softmax_cols)
               - positives * _pair_weights(row_weights, col_weights) / positive_count[:, None])
  return jnp.where(owned, grads, 0.0) / normalizer


def _traversal_backward(traversal: _Traversal, residuals, cotangents):
  x, y, logit_scale, logit_bias, ids, weights, saved = residuals
  loss_cotangent, _ = cotangents  # the accuracy is a metric: nothing flows back through it
  kind, tile, batch_axes = traversal.kind, traversal.tile, traversal.batch_axes
  global_batch = x.shape[0]
  weighted = weights is not None

  def per_device(x, y, logit_scale, logit_bias, ids, weights, saved, loss_cotangent):
    b, dim = x.shape
    ids = _positional_ids(b, batch_axes) if ids is None else ids
    normalizer = _total_weight(weights, batch_axes) if weighted else global_batch
    saved_rows, saved_cols = (saved[:2], saved[2:]) if kind == "softmax" else ((), ())
    # dx, dy, ∂/∂logit_scale, ∂/∂logit_bias. A row of dx gathers contributions until the
    # end, so dx accumulates in float32; a row of dy is complete when its tile comes home, so
    # dy is stored in y's dtype (float32 accumulation happens in the travelling tile).
    zeros = functools.partial(_varying_full, value=0.0, batch_axes=batch_axes)
    grads = (zeros((b, dim)), zeros((b, dim), dtype=y.dtype), zeros(()), zeros(()))
    # The tile carries its columns' saved log-sum-exps; its dy accumulates on the way.
    sides = {"embeddings": y, "ids": ids, "saved": saved_cols}
    if weighted:
      sides["weights"] = weights

    def column_tile(c, grads):
      del grads  # the columns' saved statistics are all it starts from
      start, _ = _tile_start(c, tile, b)
      return _read(sides, start, tile), zeros((tile, dim))

    def visit(r, c, payload, grads, dy_tile):
      row_start, _ = _tile_start(r, tile, b)
      x_tile, row_ids, rows_saved = _read((x, ids, saved_rows), row_start, tile)
      row_weights = _read(weights, row_start, tile) if weighted else None
      col_weights = payload.get("weights")
      y_tile = payload["embeddings"]
      dots, logits, positives, owned = _tile_logits(
          x_tile, y_tile, row_ids, payload["ids"], _owned(r, tile, b, row_weights),
          _owned(c, tile, b, col_weights), logit_scale, logit_bias)
      logit_grads = loss_cotangent * _logit_grads(
          kind, logits, positives, owned, rows_saved, payload["saved"], normalizer,
          row_weights, col_weights)
      dx, dy, d_scale, d_bias = grads
      # L = s·x·yᵀ (+ bias): the chain rule through the dot products, as mixed-precision
      # matmuls (operands in the embeddings' dtype, float32 accumulation). Float32 operands
      # would have XLA convert all of x and y to float32 up front: 2·b·D·4 bytes for bf16.
      operand = logit_grads.astype(x.dtype)
      dx_tile = _read(dx, row_start, tile) + logit_scale * jnp.dot(
          operand, y_tile, preferred_element_type=jnp.float32)
      dy_tile = dy_tile + logit_scale * jnp.dot(
          operand.T, x_tile, preferred_element_type=jnp.float32)
      if kind == "sigmoid":
        # A shift shared by all logits cancels in a softmax: there its gradient is exactly 0
        # (summing the tiles' would return rounding noise).
        d_bias = d_bias + jnp.sum(logit_grads)
      grads = (_write(dx, row_start, dx_tile), dy, d_scale + jnp.sum(logit_grads * dots), d_bias)
      return grads, dy_tile

    def finish(c, grads, dy_tile):
      dx, dy, d_scale, d_bias = grads
      start, _ = _tile_start(c, tile, b)
      # A shifted last tile's borrowed columns got no gradient here: adding them is exact.
      dy_tile = (_read(dy, start, tile) + dy_tile).astype(dy.dtype)
      return dx, _write(dy, start, dy_tile), d_scale, d_bias

    dx, dy, d_scale, d_bias = _ring_of_tiles(traversal, b, grads, column_tile, visit, finish)
    return (dx.astype(x.dtype), dy, lax.psum(d_scale, batch_axes), lax.psum(d_bias, batch_axes))

  rows = P(batch_axes)
  dx, dy, d_scale, d_bias = jax.shard_map(
      per_device, mesh=traversal.mesh, in_specs=(rows, rows, P(), P(), rows, rows, rows, P()),
      out_specs=(rows, rows, P(), P()),
  )(x, y, logit_scale, logit_bias, ids, weights, saved, loss_cotangent)
  return dx, dy, d_scale, None if logit_bias is None else d_bias, None, None


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _traversal_loss(traversal: _Traversal, x, y, logit_scale, logit_bias, ids, weights):
  return _traversal_forward(traversal, x, y, logit_scale, logit_bias, ids, weights)[:2]


def _traversal_loss_fwd(traversal, x, y, logit_scale, logit_bias, ids, weights):
  loss, accuracy, saved = _traversal_forward(
      traversal, x, y, logit_scale, logit_bias, ids, weights)
  return (loss, accuracy), (x, y, logit_scale, logit_bias, ids, weights, saved)


_traversal_loss.defvjp(_traversal_loss_fwd, _traversal_backward)


def _ring_loss(x, y, logit_scale, logit_bias, ids, weights, *, kind, mesh, batch_axes, tile):
  """The traversal with one tile per device: b×b blocks, b×D in flight."""
  del tile  # the whole per-device block is one tile
  traversal = _Traversal(kind, mesh, batch_axes, tile=x.shape[0] // _ring_size(mesh, batch_axes))
  return _traversal_loss(traversal, x, y, logit_scale, logit_bias, ids, weights)


def _tiled_loss(x, y, logit_scale, logit_bias, ids, weights, *, kind, mesh, batch_axes, tile):
  """The traversal with tiles of `tile` rows (default DEFAULT_TILE): memory linear in b."""
  per_device = x.shape[0] // _ring_size(mesh, batch_axes)
  traversal = _Traversal(kind, mesh, batch_axes, tile=min(tile or DEFAULT_TILE, per_device))
  return _traversal_loss(traversal, x, y, logit_scale, logit_bias, ids, weights)


_IMPLS = {"gather": _gather_loss, "ring": _ring_loss, "tiled": _tiled_loss}
IMPLS = tuple(_IMPLS)  # the values `impl` (config `loss.impl`) accepts


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------


def _check_batch(x, y, ids, row_weights, mesh: jax.sharding.Mesh,
                 batch_axes: tuple[str, ...]) -> None:
  """Fails before tracing on shapes the sharded implementations cannot split."""
  missing = [axis for axis in batch_axes if axis not in mesh.shape]
  if missing:
    raise ValueError(
        f"batch_axes {batch_axes} name axes {missing} absent from the mesh "
        f"{dict(mesh.shape)}; pass batch axes the mesh has.")
  if x.ndim != 2 or x.shape != y.shape:
    raise ValueError(
        f"x and y must both be [B, D] with equal shapes; got {x.shape} and {y.shape}.")
  for name, column in (("ids", ids), ("row_weights", row_weights)):
    if column is not None and column.shape != x.shape[:1]:
      raise ValueError(f"{name} must be [B] = {x.shape[:1]}; got {column.shape}.")
  num_shards = _ring_size(mesh, batch_axes)
  if x.shape[0] % num_shards:
    raise ValueError(
        f"global batch {x.shape[0]} is not divisible by the {num_shards} devices of the batch "
        f"axes {batch_axes}; set input.batch_size to a multiple of {num_shards}.")


def contrastive_loss_and_accuracy(
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
    row_weights: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
  """`contrastive_loss` and, from the same pass, the image→text top-1 accuracy.

  The accuracy is the (weighted) fraction of rows of `x` whose highest-scoring row of `y`
  in the global batch (among rows of weight > 0) is a positive (ties go to the column met
  first). It is a metric: not differentiated.
  """
  if kind not in KINDS:
    raise ValueError(f"Unknown contrastive loss kind {kind!r}; known: {', '.join(KINDS)}.")
  if impl not in _IMPLS:
    raise ValueError(
        f"Unknown contrastive loss impl {impl!r}; implemented: {', '.join(_IMPLS)}.")
  if tile is not None and tile < 1:
    raise ValueError(f"tile={tile} must be a positive number of rows, or None for the default.")
  batch_axes = tuple(batch_axes)
  _check_batch(x, y, ids, row_weights, mesh, batch_axes)
  logit_scale = jnp.asarray(logit_scale, jnp.float32)
  if logit_bias is not None:
    logit_bias = jnp.asarray(logit_bias, jnp.float32)
  if row_weights is not None:
    row_weights = lax.stop_gradient(jnp.asarray(row_weights, jnp.float32))
  return _IMPLS[impl](
      x, y, logit_scale, logit_bias, ids, row_weights,
      kind=kind, mesh=mesh, batch_axes=batch_axes, tile=tile)


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
    row_weights: jax.Array | None = None,
) -> jax.Array:
  """Mean contrastive loss over the global batch (the module docstring has the math).

  Args:
    x: [B, D] embeddings (e.g. images), rows sharded over `batch_axes`, used as given.
    y: [B, D] embeddings of the other side (e.g. titles), sharded like `x`.
    logit_scale: the logit multiplier, already exponentiated; a replicated scalar.
    logit_bias: an additive logit bias (sigmoid), a replicated scalar, or None.
    ids: optional [B] ints sharded like `x`; rows of equal ids are positives of each other.
    kind: "softmax" (CLIP InfoNCE, both directions) or "sigmoid" (SigLIP).
    impl: "gather", "ring" or "tiled": how the B×B logits are spread over devices and
      time; see the module docstring.
    mesh: the device mesh `x` and `y` live on.
    batch_axes: mesh axes whose product splits the rows.
    tile: rows per tile for impl="tiled" (None: DEFAULT_TILE); other impls ignore it.
    row_weights: optional [B] weights ≥ 0 sharded like `x` (treated as constants): a row of
      weight 0 is neither a query nor a candidate, and the mean is over weighted rows.

  Returns:
    A float32 scalar, replicated.
  """
  return contrastive_loss_and_accuracy(
      x, y, logit_scale, logit_bias, ids, kind=kind, impl=impl, mesh=mesh,
      batch_axes=batch_axes, tile=tile, row_weights=row_weights)[0]
