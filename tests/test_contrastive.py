"""Sharded contrastive losses (every impl) against a single-device float64 reference, and the
clip objective."""

import functools
import itertools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from eclip_jax import objectives, parallel
from eclip_jax.objectives import contrastive

BATCH, DIM = 48, 16  # 6 rows per device on 8 devices
ROWS = P(("data", "fsdp"))
MESH_SHAPES = [(8, 1, 1), (4, 2, 1), (2, 2, 2)]
# (impl, tile). A tile of 4 does not divide the 6 rows per device: the last tile overlaps.
IMPLS = [("gather", None), ("ring", None), ("tiled", 4)]


def _mesh(shape):
  return parallel.make_mesh(dict(zip(parallel.MESH_AXES, shape)))


def _embeddings(seed, batch=BATCH):
  rng = np.random.default_rng(seed)
  x, y = rng.normal(size=(2, batch, DIM))
  # Titles correlated with their images, so positives score high and the loss is not flat.
  y = x + 0.8 * y
  normalize = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)
  return normalize(x).astype(np.float32), normalize(y).astype(np.float32)


def _duplicate_ids(seed, batch=BATCH):
  """Groups of 3 rows sharing an id, shuffled so that groups span devices."""
  return np.random.default_rng(seed).permutation(np.arange(batch) // 3).astype(np.int32)


def _reference_loss(x, y, logit_scale, logit_bias, ids, kind):
  """The DESIGN.md formulas on one device: full B×B logits, soft targets, no sharding."""
  logits = logit_scale * x @ y.T + logit_bias
  ids = jnp.arange(x.shape[0]) if ids is None else ids
  positives = (ids[:, None] == ids[None, :]).astype(logits.dtype)
  if kind == "sigmoid":
    signs = 2.0 * positives - 1.0
    return jnp.sum(jnp.log1p(jnp.exp(-signs * logits))) / x.shape[0]
  targets = positives / positives.sum(axis=1, keepdims=True)  # symmetric: rows = columns
  row_ce = -jnp.sum(targets * jax.nn.log_softmax(logits, axis=1), axis=1)
  col_ce = -jnp.sum(targets * jax.nn.log_softmax(logits.T, axis=1), axis=1)
  return 0.5 * (row_ce.mean() + col_ce.mean())


def _reference_weighted_loss(x, y, logit_scale, logit_bias, ids, kind, weights):
  """The row-weighted formulas on the rows of weight > 0 alone, which are then a plain
  batch: no masks, so nothing here shares the implementations' masking."""
  kept = np.flatnonzero(weights > 0)
  x, y, w = x[kept], y[kept], jnp.asarray(weights[kept])
  logits = logit_scale * x @ y.T + logit_bias
  ids = jnp.asarray(kept if ids is None else ids[kept])
  positives = (ids[:, None] == ids[None, :]).astype(logits.dtype)
  if kind == "sigmoid":
    signs = 2.0 * positives - 1.0
    pair_weights = 0.5 * (w[:, None] + w[None, :])
    return jnp.sum(pair_weights * jnp.log1p(jnp.exp(-signs * logits))) / jnp.sum(w)
  targets = positives / positives.sum(axis=1, keepdims=True)
  row_ce = -jnp.sum(targets * jax.nn.log_softmax(logits, axis=1), axis=1)
  col_ce = -jnp.sum(targets * jax.nn.log_softmax(logits.T, axis=1), axis=1)
  return 0.5 * (jnp.sum(w * row_ce) + jnp.sum(w * col_ce)) / jnp.sum(w)


def _reference_value_and_grad(x, y, logit_scale, logit_bias, ids, kind, weights=None):
  with jax.enable_x64(True):
    args = [np.asarray(a, np.float64) for a in (x, y, logit_scale, logit_bias)]
    if weights is None:
      loss_fn = functools.partial(_reference_loss, ids=None if ids is None else jnp.asarray(ids),
                                  kind=kind)
    else:
      loss_fn = functools.partial(_reference_weighted_loss, ids=ids, kind=kind,
                                  weights=np.asarray(weights, np.float64))
    loss, grads = jax.value_and_grad(loss_fn, argnums=(0, 1, 2, 3))(*args)
    return np.asarray(loss), [np.asarray(g) for g in grads]


def _sharded_value_and_grad(mesh, kind, x, y, logit_scale, logit_bias, ids,
                            impl="gather", tile=None, weights=None):
  rows, replicated = NamedSharding(mesh, ROWS), NamedSharding(mesh, P())
  x, y = jax.device_put(x, rows), jax.device_put(y, rows)
  ids = None if ids is None else jax.device_put(ids, rows)
  weights = None if weights is None else jax.device_put(weights, rows)
  logit_scale = jax.device_put(jnp.float32(logit_scale), replicated)
  logit_bias = jax.device_put(jnp.float32(logit_bias), replicated)

  def loss_fn(x, y, logit_scale, logit_bias):
    return contrastive.contrastive_loss(x, y, logit_scale, logit_bias, ids, kind=kind,
                                        impl=impl, tile=tile, mesh=mesh, row_weights=weights)

  loss, grads = jax.jit(jax.value_and_grad(loss_fn, argnums=(0, 1, 2, 3)))(
      x, y, logit_scale, logit_bias)
  return np.asarray(loss), [np.asarray(g) for g in grads]


def _assert_close(actual, expected, rtol):
  # Relative to the array's scale, so near-zero entries (the softmax bias gradient, which
  # is zero in exact arithmetic) are held to the same standard as the large ones.
  atol = rtol * max(float(np.abs(expected).max()), 1e-2)
  np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol)


def _check_against_reference(mesh_shape, impl, tile, kind, ids, batch=BATCH, weights=None):
  x, y = _embeddings(seed=0, batch=batch)
  logit_scale, logit_bias = 7.5, (-3.0 if kind == "sigmoid" else 0.5)

  loss, grads = _sharded_value_and_grad(
      _mesh(mesh_shape), kind, x, y, logit_scale, logit_bias, ids, impl=impl, tile=tile,
      weights=weights)
  ref_loss, ref_grads = _reference_value_and_grad(x, y, logit_scale, logit_bias, ids, kind,
                                                  weights)

  assert loss.dtype == np.float32 and loss.shape == ()
  _assert_close(loss, ref_loss, rtol=1e-5)
  for name, grad, ref_grad in zip(("x", "y", "logit_scale", "logit_bias"), grads, ref_grads):
    assert grad.shape == ref_grad.shape, name
    _assert_close(grad, ref_grad, rtol=1e-5)


def _reference_cases() -> list:
  """Each impl × kind × positives once, the meshes taking turns: every impl meets all three."""
  cases = []
  for (impl, tile), (i, (kind, duplicates)) in itertools.product(
      IMPLS, enumerate(itertools.product(contrastive.KINDS, (False, True)))):
    mesh_shape = MESH_SHAPES[i % len(MESH_SHAPES)]
    case_id = "-".join([impl, kind, "duplicate_ids" if duplicates else "pairs",
                        "x".join(map(str, mesh_shape))])
    cases.append(pytest.param(mesh_shape, impl, tile, kind, duplicates, id=case_id))
  return cases


@pytest.mark.parametrize("mesh_shape, impl, tile, kind, duplicates", _reference_cases())
def test_impls_match_float64_reference(mesh_shape, impl, tile, kind, duplicates):
  ids = _duplicate_ids(seed=1) if duplicates else None
  _check_against_reference(mesh_shape, impl, tile, kind, ids)


@pytest.mark.parametrize("kind", contrastive.KINDS)
@pytest.mark.parametrize("impl, tile", [("ring", None), ("tiled", 2), ("tiled", 3),
                                        ("tiled", 64)])
def test_odd_sizes_match_float64_reference(impl, tile, kind):
  # 5 rows per device: tiles of 2 and 3 leave a remainder (the last tile overlaps), 64 is
  # clipped to one tile of 5; groups of 3 duplicate ids straddle devices.
  batch = 40
  _check_against_reference((4, 2, 1), impl, tile, kind, _duplicate_ids(seed=5, batch=batch),
                           batch=batch)


def _row_weights(seed, batch=BATCH):
  """Weights in [0.25, 2], with a quarter of the rows at 0, spread over the devices."""
  rng = np.random.default_rng(seed)
  weights = rng.uniform(0.25, 2.0, size=batch).astype(np.float32)
  weights[rng.permutation(batch)[: batch // 4]] = 0.0
  return weights


@pytest.mark.parametrize("mesh_shape, impl, tile, kind, duplicates", _reference_cases())
def test_row_weights_match_float64_reference(mesh_shape, impl, tile, kind, duplicates):
  ids = _duplicate_ids(seed=1) if duplicates else None
  _check_against_reference(mesh_shape, impl, tile, kind, ids, weights=_row_weights(seed=2))


@pytest.mark.parametrize("kind", contrastive.KINDS)
@pytest.mark.parametrize("impl, tile", [("gather", None), ("ring", None), ("tiled", 3)])
def test_row_weights_at_odd_sizes_match_float64_reference(impl, tile, kind):
  # 5 rows per device, tiles of 3 overlap; one device's rows all have weight 0, and some
  # duplicate groups keep a single row of weight > 0 (its only positive is itself).
  batch = 40
  weights = _row_weights(seed=3, batch=batch)
  weights[10:15] = 0.0
  _check_against_reference((4, 2, 1), impl, tile, kind, _duplicate_ids(seed=5, batch=batch),
                           batch=batch, weights=weights)


@pytest.mark.parametrize("kind", contrastive.KINDS)
@pytest.mark.parametrize("impl, tile", IMPLS)
def test_unit_row_weights_equal_no_weights(impl, tile, kind):
  mesh, x, y = _mesh((4, 2, 1)), *_embeddings(seed=4)
  ids = _duplicate_ids(seed=1)
  plain = _sharded_value_and_grad(mesh, kind, x, y, 7.5, -3.0, ids, impl=impl, tile=tile)
  unit = _sharded_value_and_grad(mesh, kind, x, y, 7.5, -3.0, ids, impl=impl, tile=tile,
                                 weights=np.ones(BATCH, np.float32))
  _assert_close(unit[0], plain[0], rtol=1e-6)
  for unit_grad, plain_grad in zip(unit[1], plain[1]):
    _assert_close(unit_grad, plain_grad, rtol=1e-5)


@pytest.mark.parametrize("kind", contrastive.KINDS)
@pytest.mark.parametrize("impl, tile", IMPLS)
def test_all_zero_row_weights_give_zero_loss_and_gradients(impl, tile, kind):
  x, y = _embeddings(seed=0)
  loss, grads = _sharded_value_and_grad(
      _mesh((2, 2, 2)), kind, x, y, 7.5, -3.0, _duplicate_ids(seed=1), impl=impl, tile=tile,
      weights=np.zeros(BATCH, np.float32))
  assert loss == 0.0
  for grad in grads:
    assert np.all(grad == 0.0)  # NaN compares unequal: this also rules it out


@pytest.mark.parametrize("impl, tile", IMPLS)
def test_weighted_accuracy_counts_weighted_rows_against_weighted_candidates(impl, tile):
  mesh = _mesh((2, 2, 2))
  x, y = _embeddings(seed=6)
  ids, weights = _duplicate_ids(seed=7), _row_weights(seed=8)
  rows = NamedSharding(mesh, ROWS)
  _, accuracy = jax.jit(functools.partial(
      contrastive.contrastive_loss_and_accuracy, impl=impl, tile=tile, mesh=mesh))(
          jax.device_put(x, rows), jax.device_put(y, rows), 7.5, None,
          jax.device_put(ids, rows), row_weights=jax.device_put(weights, rows))
  kept = weights > 0
  scores = np.where(kept[None, :], x @ y.T, -np.inf)
  hits = ids[np.argmax(scores, axis=1)] == ids
  np.testing.assert_allclose(accuracy, np.sum(weights * hits * kept) / np.sum(weights),
                             rtol=1e-6)


def test_duplicate_ids_change_the_loss():
  # Guards the reference test against ids being silently ignored.
  x, y = _embeddings(seed=0)
  mesh = _mesh((4, 2, 1))
  pairs, _ = _sharded_value_and_grad(mesh, "softmax", x, y, 7.5, 0.0, None)
  grouped, _ = _sharded_value_and_grad(mesh, "softmax", x, y, 7.5, 0.0, _duplicate_ids(1))
  assert abs(float(pairs) - float(grouped)) > 1e-2


@pytest.mark.parametrize("kind", contrastive.KINDS)
@pytest.mark.parametrize("impl, tile", IMPLS)
def test_bfloat16_inputs_accumulate_in_float32(impl, tile, kind):
  mesh = _mesh((4, 2, 1))
  x, y = _embeddings(seed=2)
  loss_fn = functools.partial(
      contrastive.contrastive_loss, kind=kind, impl=impl, tile=tile, mesh=mesh)
  value_and_grad = jax.jit(jax.value_and_grad(loss_fn, argnums=(0, 1)))
  rows = NamedSharding(mesh, ROWS)
  f32_loss, f32_grads = value_and_grad(jax.device_put(x, rows), jax.device_put(y, rows), 7.5, -3.0)
  bf16_loss, bf16_grads = value_and_grad(jax.device_put(x.astype(jnp.bfloat16), rows),
                                         jax.device_put(y.astype(jnp.bfloat16), rows), 7.5, -3.0)
  assert bf16_loss.dtype == jnp.float32
  np.testing.assert_allclose(bf16_loss, f32_loss, rtol=2e-2)
  for bf16_grad, f32_grad in zip(bf16_grads, f32_grads):
    assert bf16_grad.dtype == jnp.bfloat16
    _assert_close(np.asarray(bf16_grad, np.float32), f32_grad, rtol=5e-2)


@pytest.mark.parametrize("impl, tile", IMPLS + [("tiled", 5)])
def test_accuracy_is_top1_over_the_global_batch(impl, tile):
  mesh = _mesh((2, 2, 2))
  x, y = _embeddings(seed=6)
  ids = _duplicate_ids(seed=7)
  rows = NamedSharding(mesh, ROWS)
  loss_and_accuracy = jax.jit(functools.partial(
      contrastive.contrastive_loss_and_accuracy, impl=impl, tile=tile, mesh=mesh))
  _, accuracy = loss_and_accuracy(
      jax.device_put(x, rows), jax.device_put(y, rows), 7.5, None, jax.device_put(ids, rows))
  best = np.argmax(x @ y.T, axis=1)
  np.testing.assert_allclose(accuracy, np.mean(ids[best] == ids))
  assert 0.0 < float(accuracy) < 1.0  # informative, not saturated


@pytest.mark.parametrize("kwargs, batch, message", [
    ({"kind": "hinge"}, BATCH, "Unknown contrastive loss kind 'hinge'; known: softmax, sigmoid"),
    ({"impl": "rings"}, BATCH,
     "Unknown contrastive loss impl 'rings'; implemented: gather, ring, tiled"),
    ({"impl": "tiled", "tile": 0}, BATCH, "tile=0 must be a positive number of rows"),
    ({}, 12, "global batch 12 is not divisible by the 8 devices"),
    ({"batch_axes": ("data", "replica")}, BATCH, "absent from the mesh"),
])
def test_misconfiguration_fails_clearly(kwargs, batch, message):
  x, y = _embeddings(seed=0, batch=batch)
  with pytest.raises(ValueError, match=message):
    contrastive.contrastive_loss(x, y, 7.5, mesh=_mesh((4, 2, 1)), **kwargs)


def _clip_inputs(mesh):
  rows = NamedSharding(mesh, ROWS)
  x, y = _embeddings(seed=3)
  outputs = {
      "image_emb": jax.device_put(x, rows),
      "text_emb": jax.device_put(y, rows),
      "logit_scale": jnp.float32(7.5),
      "logit_bias": jnp.float32(-3.0),
  }
  batch = {
      "catalog_id": jax.device_put(_duplicate_ids(seed=4), rows),
      "product_id": jax.device_put(np.arange(BATCH, dtype=np.int32), rows),
  }
  return outputs, batch


@pytest.mark.parametrize("kind", contrastive.KINDS)
@pytest.mark.parametrize("impl", [impl for impl, _ in IMPLS])
def test_clip_objective_catalog_positives(impl, kind):
  mesh = _mesh((2, 2, 2))
  outputs, batch = _clip_inputs(mesh)
  # loss.tile = 0 asks for the default tile.
  loss_config = ml_collections.ConfigDict(
      {"kind": kind, "impl": impl, "positives": "catalog", "tile": 0})
  ctx = objectives.ObjectiveContext(mesh=mesh, loss_config=loss_config)

  objective = objectives.get_objective("clip")
  loss, metrics = jax.jit(lambda outputs, batch: objective(outputs, batch, ctx))(outputs, batch)

  expected = jax.jit(functools.partial(contrastive.contrastive_loss, kind=kind, mesh=mesh))(
      outputs["image_emb"], outputs["text_emb"], 7.5, -3.0, batch["catalog_id"])
  np.testing.assert_allclose(loss, expected, rtol=1e-5)  # gather's, up to summation order
  expected_keys = {"logit_scale", "i2t_acc"}
  if kind == "sigmoid":
    expected_keys.add("logit_bias")
  assert set(metrics) == expected_keys
  assert all(np.shape(value) == () for value in metrics.values())

  x, y = np.asarray(outputs["image_emb"]), np.asarray(outputs["text_emb"])
  catalog_id = np.asarray(batch["catalog_id"])
  best = np.argmax(x @ y.T, axis=1)
  np.testing.assert_allclose(metrics["i2t_acc"], np.mean(catalog_id[best] == catalog_id))
  assert 0.0 < float(metrics["i2t_acc"]) < 1.0  # informative, not saturated


@pytest.mark.parametrize("positives", ["pair", "product"])
def test_clip_objective_pairs_without_duplicates(positives):
  # product_id is all-distinct here, so both mean "row i matches row i only".
  mesh = _mesh((4, 2, 1))
  outputs, batch = _clip_inputs(mesh)
  loss_config = ml_collections.ConfigDict(
      {"kind": "softmax", "impl": "gather", "positives": positives, "tile": 0})
  ctx = objectives.ObjectiveContext(mesh=mesh, loss_config=loss_config)
  objective = objectives.get_objective("clip")
  loss, _ = jax.jit(lambda outputs, batch: objective(outputs, batch, ctx))(outputs, batch)
  expected = jax.jit(functools.partial(contrastive.contrastive_loss, mesh=mesh))(
      outputs["image_emb"], outputs["text_emb"], 7.5)
  np.testing.assert_allclose(loss, expected, rtol=1e-6)


def test_unknown_objective_lists_known_ones():
  with pytest.raises(ValueError, match="Unknown objective 'clipp'; known: clip"):
    objectives.get_objective("clipp")
