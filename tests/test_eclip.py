"""ECLIP: the instance decoder, instance selection, the pretext objectives, and its evaluators."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from configs import eclip as eclip_config
from eclip_jax import objectives, parallel, trainer
from eclip_jax.evals import grounding, product_retrieval
from eclip_jax.models import eclip, instance_decoder
from eclip_jax.objectives import eclip as eclip_objectives
from tests.helpers import run_steps

DECODER = {"num_queries": 4, "depth": 2, "num_heads": 2, "mlp_dim": 32}


def _model(**overrides):
  fields = dict(
      image={"variant": "tiny", "patch_size": 8, "pool": "gap"},
      text={"variant": "tiny", "vocab_size": 100, "max_len": 8, "pool": "eos"},
      embed_dim=16, decoder=DECODER,
  )
  return eclip.ECLIP(**{**fields, **overrides})


def _batch(rng=0, batch=4, views=2, size=16, length=8):
  rng = np.random.default_rng(rng)
  return {
      "images": rng.normal(size=(batch, views, size, size, 3)).astype(np.float32),
      "text_tokens": rng.integers(4, 100, size=(batch, length)).astype(np.int32),
      "text_mask": np.ones((batch, length), bool),
  }


# ---------------------------------------------------------------------------------------------
# The decoder and the model's outputs.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mesh_shape", [(8, 1, 1), (2, 2, 2)])
def test_decoder_shapes_and_sharding_on_the_mesh(mesh_shape):
  mesh = parallel.make_mesh(dict(zip(parallel.MESH_AXES, mesh_shape)))
  rules = parallel.sharding_rules(parallel.DEFAULT_SHARDING_RULES)
  decoder = instance_decoder.InstanceDecoder(num_queries=4, depth=2, num_heads=2, mlp_dim=32)
  tokens = np.random.default_rng(0).normal(size=(16, 9, 8)).astype(np.float32)
  boxed = jax.eval_shape(decoder.init, jax.random.key(0), tokens)
  assert boxed["params"]["instance_queries"].names == ("queries", "embed")
  shardings = parallel.logical_shardings(boxed, mesh, rules)
  variables = jax.jit(lambda rng: nn.meta.unbox(decoder.init(rng, tokens)),
                      out_shardings=shardings)(jax.random.key(0))
  tokens = jax.device_put(tokens, parallel.batch_sharding(mesh))
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    out = jax.jit(decoder.apply)(variables, tokens)
  assert out["features"].shape == (16, 4, 8)
  assert out["cross_attn"].shape == (16, 2, 4, 9) and out["cross_attn"].dtype == jnp.float32
  # The batch stays split over the data-parallel devices, and each query's map is a
  # distribution over the patches.
  assert out["features"].sharding.spec[0] == parallel.BATCH_AXES or mesh_shape[1] == 1
  assert len(out["features"].addressable_shards) == 8
  assert out["features"].addressable_shards[0].data.shape[0] == 16 // (mesh_shape[0]
                                                                       * mesh_shape[1])
  np.testing.assert_allclose(np.asarray(out["cross_attn"]).sum(-1), 1.0, rtol=1e-5)
  # Sharded equals one device.
  single = decoder.apply(jax.device_get(variables), np.asarray(tokens))
  np.testing.assert_allclose(out["features"], single["features"], rtol=1e-5, atol=1e-5)


def test_selection_weights_and_instance_outputs():
  model = _model()
  batch = _batch()
  variables = jax.jit(model.init)(jax.random.key(0), batch)
  out = jax.tree.map(np.asarray, jax.jit(model.apply)(variables, batch))
  assert out["query_emb"].shape == (4, 2, 4, 16) and out["query_attn"].shape == (4, 2, 4, 2, 2)
  assert out["query_attn_heads"].shape == (4, 2, 2, 4, 2, 2)
  for weights in (out["selection_weights"], jax.nn.softmax(out["selection_logits"])):
    np.testing.assert_allclose(weights.sum(-1), 1.0, rtol=1e-6)
    assert (weights >= 0).all()
  # Float64 reference of the text-guided selection from the per-query outputs.
  query_emb, text = out["query_emb"].astype(np.float64), out["text_emb"].astype(np.float64)
  logits = np.einsum("bvkd,bd->bvk", query_emb, text) / model.selection_temperature
  weights = np.exp(logits - logits.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  np.testing.assert_allclose(out["selection_weights"], weights, rtol=1e-5, atol=1e-6)
  instance = np.einsum("bvk,bvkd->bvd", weights, query_emb)
  instance /= np.linalg.norm(instance, axis=-1, keepdims=True)
  np.testing.assert_allclose(out["instance_emb"], instance, rtol=1e-4, atol=1e-5)
  attn = np.einsum("bvk,bvkhw->bvhw", weights, out["query_attn"])
  np.testing.assert_allclose(out["instance_attn"], attn, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(out["instance_attn"].sum((-1, -2)), 1.0, rtol=1e-5)
  # The maps are the heads' average of the decoder's last cross-attention.
  np.testing.assert_allclose(out["query_attn"], out["query_attn_heads"].mean(2), rtol=1e-6)


def test_image_only_inputs_give_image_only_outputs():
  model = _model()
  variables = jax.jit(model.init)(jax.random.key(0), _batch())
  image = _batch()["images"][:, 0]
  out = jax.jit(model.apply)(variables, {"image": image})
  assert out["instance_emb_img"].shape == (4, 16) and out["instance_attn_img"].shape == (4, 2, 2)
  assert "instance_emb" not in out and "text_emb" not in out
  # One view through `image` equals the same view inside `images`.
  both = jax.jit(model.apply)(variables, _batch())
  np.testing.assert_allclose(out["instance_emb_img"], both["instance_emb_img"][:, 0],
                             rtol=1e-5, atol=1e-6)


def test_patch_text_similarity_map():
  model = _model()
  batch = _batch(views=2)
  variables = model.init(jax.random.key(0), batch)
  out = model.apply(variables, batch)
  proj = np.asarray(nn.meta.unbox(variables)["params"]["image_proj"]["kernel"], np.float64)
  patches = np.asarray(out["image_tokens"], np.float64) @ proj  # [B,V,N,D]
  patches /= np.linalg.norm(patches, axis=-1, keepdims=True)
  sim = np.einsum("bvnd,bd->bvn", patches, np.asarray(out["text_emb"], np.float64))
  np.testing.assert_allclose(out["patch_text_sim"], sim.reshape(4, 2, 2, 2), rtol=1e-4,
                             atol=1e-5)


def test_selection_head_kl_decreases_when_trained_alone():
  model = _model()
  batch = _batch(batch=8)
  params = jax.jit(model.init)(jax.random.key(0), batch)["params"]
  head = {k: v for k, v in params.items() if k.startswith("selection_")}
  # A distinct target per image: the text-guided selection at a sharp temperature.
  sharp = _model(selection_temperature=0.02)

  def kl(head_params, all_params):
    out = sharp.apply({"params": {**all_params, **head_params}}, batch)
    return eclip_objectives.selection_kl(out["selection_weights"], out["selection_logits"])

  # The head reads the decoder through a stop-gradient: the KL trains the head only.
  decoder_grads = jax.jit(jax.grad(lambda p: kl(head, p)))(params)
  assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(decoder_grads))

  optimizer = optax.adam(1e-2)
  opt_state = optimizer.init(head)
  step = jax.jit(lambda h, s: _kl_step(optimizer, functools.partial(kl, all_params=params), h, s))
  losses = []
  for _ in range(150):
    head, opt_state, loss = step(head, opt_state)
    losses.append(float(loss))
  assert losses[-1] < 0.2 * losses[0], (losses[0], losses[-1])
  assert max(losses[-20:]) < 0.3 * losses[0]  # settled low, not passing through


def _kl_step(optimizer, loss_fn, head, opt_state):
  loss, grads = jax.value_and_grad(loss_fn)(head)
  updates, opt_state = optimizer.update(grads, opt_state)
  return optax.apply_updates(head, updates), opt_state, loss


# ---------------------------------------------------------------------------------------------
# Objectives against float64 references.
# ---------------------------------------------------------------------------------------------


def _unit(rng, *shape):
  x = rng.normal(size=shape)
  return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _infonce64(x, y, scale, ids):
  """Symmetric InfoNCE with soft targets over positives, float64 numpy."""
  logits = scale * np.asarray(x, np.float64) @ np.asarray(y, np.float64).T
  positives = (ids[:, None] == ids[None, :]).astype(np.float64)
  targets = positives / positives.sum(1, keepdims=True)

  def cross_entropy(z):
    log_softmax = z - z.max(1, keepdims=True)
    log_softmax -= np.log(np.exp(log_softmax).sum(1, keepdims=True))
    return -(targets * log_softmax).sum(1).mean()

  return 0.5 * (cross_entropy(logits) + cross_entropy(logits.T))


def _objective_inputs(mesh, batch=16, views=2, queries=4, dim=8):
  rng = np.random.default_rng(0)
  text = _unit(rng, batch, dim)
  instance = _unit(rng, batch, views, dim) + 0.5 * text[:, None]  # correlated with titles
  instance /= np.linalg.norm(instance, axis=-1, keepdims=True)
  logits = rng.normal(size=(batch, views, queries)).astype(np.float32)
  weights = np.exp(rng.normal(size=(batch, views, queries)))
  weights = (weights / weights.sum(-1, keepdims=True)).astype(np.float32)
  outputs = {
      "image_emb": _unit(rng, batch, views, dim), "text_emb": text, "instance_emb": instance,
      "query_emb": _unit(rng, batch, views, queries, dim), "selection_weights": weights,
      "selection_logits": logits,
  }
  catalog = (rng.permutation(batch) // 2).astype(np.int32)
  rows = NamedSharding(mesh, P(parallel.BATCH_AXES))
  outputs = {k: jax.device_put(v, rows) for k, v in outputs.items()}
  outputs["logit_scale"] = jnp.float32(10.0)
  outputs["instance_logit_scale"] = jnp.float32(7.0)
  batch_dict = {"catalog_id": jax.device_put(catalog, rows)}
  return outputs, batch_dict


def _reference_terms(outputs, catalog):
  host = {k: np.asarray(v, np.float64) for k, v in outputs.items()}
  views = host["instance_emb"].shape[1]
  w, s = host["selection_weights"], host["selection_logits"]
  log_q = s - s.max(-1, keepdims=True)
  log_q -= np.log(np.exp(log_q).sum(-1, keepdims=True))
  q = host["query_emb"]
  cos = np.einsum("bvkd,bvld->bvkl", q, q)
  k = q.shape[-2]
  return {
      "clip": np.mean([_infonce64(host["image_emb"][:, v], host["text_emb"], 10.0, catalog)
                       for v in range(views)]),
      "instance_text": np.mean([_infonce64(host["instance_emb"][:, v], host["text_emb"], 7.0,
                                           catalog) for v in range(views)]),
      "instance_consistency": _infonce64(host["instance_emb"][:, 0], host["instance_emb"][:, 1],
                                         7.0, catalog),
      "selection_kl": np.mean(np.sum(w * (np.log(w) - log_q), -1)),
      "query_diversity": np.mean(((cos**2).sum((-1, -2)) - k) / (k * (k - 1))),
  }


@pytest.mark.parametrize("impl,selection", [("gather", "image"), ("ring", "text"),
                                            ("tiled", "image")])
def test_each_objective_term_equals_float64_reference(impl, selection):
  mesh = parallel.make_mesh({"data": 4, "fsdp": 2})
  outputs, batch = _objective_inputs(mesh)
  # The reference reads `instance_emb`; the objectives, the selection's embedding.
  outputs[eclip_objectives.SELECTIONS[selection]] = outputs.pop("instance_emb")
  loss_config = ml_collections.ConfigDict({"kind": "softmax", "impl": impl,
                                           "positives": "catalog", "tile": 1})
  ctx = objectives.ObjectiveContext(
      mesh=mesh, loss_config=loss_config,
      method_config=ml_collections.ConfigDict({"instance_selection": selection}))
  expected = _reference_terms({**outputs, "instance_emb": outputs[
      eclip_objectives.SELECTIONS[selection]]}, np.asarray(batch["catalog_id"]))
  for name, value in expected.items():
    loss, metrics = jax.jit(functools.partial(objectives.get_objective(name), ctx=ctx))(
        outputs, batch)
    np.testing.assert_allclose(float(loss), value, rtol=2e-5, err_msg=name)
    assert all(np.isfinite(float(v)) for v in metrics.values()), name


def test_consistency_needs_two_views():
  mesh = parallel.make_mesh({"data": 8})
  outputs, batch = _objective_inputs(mesh)
  outputs["instance_emb_img"] = outputs["instance_emb"][:, 0]
  ctx = objectives.ObjectiveContext(
      mesh=mesh, loss_config=ml_collections.ConfigDict(
          {"kind": "softmax", "impl": "gather", "positives": "catalog"}),
      method_config=ml_collections.ConfigDict({"instance_selection": "image"}))
  with pytest.raises(ValueError, match="num_views=2"):
    eclip_objectives.instance_consistency_objective(outputs, batch, ctx)


def test_eclip_sharded_steps_equal_single_device():
  config = eclip_config.get_config("tiny,runlocal")
  config.input.update(image_size=32, max_text_len=16, vocab_size=1000, batch_size=16)
  config.model.embed_dim = 32
  config.model.decoder.update(num_queries=4, mlp_dim=64)
  config.objectives.query_diversity = 0.1
  single = parallel.make_mesh({"data": 1}, devices=jax.devices()[:1])
  state = jax.device_get(trainer.Setup(config, single).init_state())
  rng = np.random.default_rng(0)
  batches = [{
      "images": rng.normal(size=(16, 2, 32, 32, 3)).astype(np.float32),
      "text_tokens": rng.integers(4, 900, size=(16, 16)).astype(np.int32),
      "text_mask": np.ones((16, 16), bool),
      "product_id": np.arange(16, dtype=np.int32),
      "catalog_id": (rng.permutation(16) // 2).astype(np.int32),
  } for _ in range(2)]
  losses_1, params_1 = run_steps(config, single, state, batches)
  losses_8, params_8 = run_steps(config, parallel.make_mesh({"data": 4, "fsdp": 2}), state, batches)
  np.testing.assert_allclose(losses_8, losses_1, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
               params_8, params_1)
  assert losses_1[1] != losses_1[0]  # the step really updated the params


# ---------------------------------------------------------------------------------------------
# Evaluator metrics on hand-made inputs.
# ---------------------------------------------------------------------------------------------


def test_pointing_game_on_hand_made_maps():
  box_left_half = np.array([0.0, 0.0, 0.5, 1.0], np.float32)
  hit = np.zeros((4, 4), np.float32)
  hit[1, 0] = 1.0  # peak in the left half
  miss = np.zeros((4, 4), np.float32)
  miss[2, 3] = 1.0  # peak in the right half
  exact = np.zeros((4, 4), np.float32)
  exact[:, :2] = 1.0  # the map is the box
  metrics = grounding.grounding_metrics(np.stack([hit, miss, exact]),
                                        np.stack([box_left_half] * 3), threshold=0.5)
  assert metrics["pointing_acc"] == pytest.approx(2 / 3)
  assert metrics["chance_pointing"] == pytest.approx(0.5)  # 8 of 16 cell centers inside
  # IoUs: one cell [0,.25]x[.25,.5] vs the half: 1/8; the right cell: 0; the box itself: 1.
  assert metrics["mean_iou"] == pytest.approx((1 / 8 + 0 + 1) / 3)
  assert metrics["full_image_iou"] == pytest.approx(0.5)
  assert metrics["center_pointing"] == pytest.approx(1.0)  # x = 0.5 is on the box's edge


def test_center_pointing_counts_boxes_holding_the_image_center():
  boxes = np.array([[0.4, 0.4, 0.6, 0.6],    # holds the center
                    [0.0, 0.0, 0.3, 0.3],    # a corner
                    [0.45, 0.6, 0.9, 0.95],  # straddles x = 0.5 but lies below the center
                    [0.1, 0.2, 0.7, 0.8]], np.float32)
  metrics = grounding.grounding_metrics(np.zeros((4, 4, 4), np.float32), boxes, threshold=0.5)
  assert metrics["center_pointing"] == pytest.approx(2 / 4)


def test_map_box_thresholds_the_scaled_map():
  heatmap = np.array([[0.0, 0.2], [0.6, 1.0]])  # scaled: same; >= 0.5: the bottom row
  np.testing.assert_allclose(grounding.map_box(heatmap, 0.5), [0, 0.5, 1, 1])
  np.testing.assert_allclose(grounding.map_box(heatmap - 5.0, 0.5), [0, 0.5, 1, 1])
  np.testing.assert_allclose(grounding.map_box(heatmap, 0.1), [0, 0, 1, 1])


def _reference_map(embeddings, ids, k):
  """Brute force: per query, fully sort all other photos; M5Product's AP@K."""
  aps, r1 = [], []
  for i in range(len(ids)):
    others = [j for j in range(len(ids)) if j != i]
    order = sorted(others, key=lambda j: -float(embeddings[i] @ embeddings[j]))
    num_positives = sum(ids[j] == ids[i] for j in others)
    if not num_positives:
      continue
    hits = [ids[j] == ids[i] for j in order[:k]]
    aps.append(sum(sum(hits[:r]) / r for r in range(1, len(hits) + 1) if hits[r - 1])
               / min(k, num_positives))
    r1.append(hits[0])
  return np.mean(aps), np.mean(r1)


def test_map_at_k_by_hand():
  # Query 0 has positives 1 and 2 and ranks them 1st and 3rd (photo 3 is 2nd):
  # AP@3 = (1/1 + 2/3) / min(3, 2) = 5/6. Photo 3 has no positive: not a query.
  embeddings = np.array([[1.0, 0.0], [0.99, 0.1], [0.5, 0.9], [0.9, 0.4]])
  embeddings = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
  ids = np.array([0, 0, 0, 1])
  hits, positives = product_retrieval.top_k_hits(embeddings, ids, 3)
  np.testing.assert_array_equal(hits[0], [True, False, True])
  np.testing.assert_array_equal(positives, [2, 2, 2, 0])
  metrics = product_retrieval.same_product_metrics(embeddings, ids, ks=(3,))
  assert metrics["num_queries"] == 3 and metrics["num_without_positive"] == 1
  assert metrics["map3"] == pytest.approx(_reference_map(embeddings, ids, 3)[0])
  assert metrics["chance_r1"] == pytest.approx(2 / 3)  # 2 positives among 3 other photos


def test_same_product_metrics_match_brute_force():
  rng = np.random.default_rng(0)
  ids = rng.integers(0, 12, size=60)
  embeddings = rng.normal(size=(60, 8)) + 2.0 * rng.normal(size=(12, 8))[ids]
  embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
  metrics = product_retrieval.same_product_metrics(embeddings, ids)
  for k in (1, 5, 10):
    assert metrics[f"map{k}"] == pytest.approx(_reference_map(embeddings, ids, k)[0], rel=1e-6)
  assert metrics["r1"] == pytest.approx(_reference_map(embeddings, ids, 1)[1])
  assert 0.2 < metrics["map10"] < 1.0  # neither trivial nor broken
