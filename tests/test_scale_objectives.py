"""SCALE's objectives against float64 numpy references, on the 8-device mesh and on one
device; self-harmonization's properties; missing modalities contribute nothing."""

import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from eclip_jax import objectives, parallel
from eclip_jax.objectives import scale
from eclip_jax.objectives.common import ObjectiveContext

BATCH, DIM, VOCAB = 16, 8, 13  # 2 rows per device on 8 devices
M = len(scale.MODALITIES)
HEADS = {"text_mlm_logits": (6, VOCAB), "table_mlm_logits": (5, VOCAB), "region_pred": (4, 6),
         "frame_pred": (3, 5), "audio_mel_pred": (7, 4),
         "image_patch_pred": (4, 2 * 2 * 3)}  # a 4x4 image in 2x2 patches
IMAGE_SIZE, PATCH = 4, 2


def _mesh(devices):
  return parallel.make_mesh(dict(zip(parallel.MESH_AXES, (devices, 1, 1))),
                            jax.devices()[:devices])


def _presence(rng):
  present = rng.uniform(size=(BATCH, M)) > 0.3
  present[:, 0] = True  # every listing has a title
  present[0, 1:] = False  # a title alone
  present[1] = True  # all five
  return present


def _example(seed=0):
  """(outputs, batch) as numpy: correlated modality embeddings of each product, masked
  positions everywhere (those of missing rows must be ignored)."""
  rng = np.random.default_rng(seed)
  present = _presence(rng)
  product = rng.normal(size=(BATCH, DIM))
  outputs = {}
  for index, m in enumerate(scale.MODALITIES):
    emb = product + 0.7 * rng.normal(size=(BATCH, DIM))
    emb[~present[:, index]] = 0.0  # the model zero-imputes a missing modality
    outputs[f"{m}_emb"] = emb.astype(np.float32)
    outputs[f"{m}_present"] = present[:, index]
    outputs[f"fused_{m}_emb"] = rng.normal(size=(BATCH, DIM)).astype(np.float32)
  outputs["fused_emb"] = rng.normal(size=(BATCH, DIM)).astype(np.float32)
  outputs["logit_scale"] = np.float32(10.0)
  outputs["harmonization"] = (0.5 * rng.normal(size=(M, M))).astype(np.float32)
  for head, shape in HEADS.items():
    outputs[head] = rng.normal(size=(BATCH, *shape)).astype(np.float32)
  batch = {"catalog_id": (np.arange(BATCH) // 2)[rng.permutation(BATCH)].astype(np.int32)}
  for name in ("text", "table"):
    logits = outputs[f"{name}_mlm_logits"]
    targets = rng.integers(0, VOCAB, size=logits.shape[:2])
    targets[rng.uniform(size=targets.shape) > 0.4] = -1
    batch[f"{name}_mlm_targets"] = targets.astype(np.int32)
  for head, (target, mask) in {"region_pred": ("region_feats", "region_mlm_mask"),
                               "frame_pred": ("frame_feats", "frame_mlm_mask"),
                               "audio_mel_pred": ("audio_mel", "audio_mel_mlm_mask")}.items():
    batch[target] = rng.normal(size=outputs[head].shape).astype(np.float32)
    batch[mask] = rng.uniform(size=outputs[head].shape[:2]) < 0.4
  batch["image"] = rng.normal(size=(BATCH, IMAGE_SIZE, IMAGE_SIZE, 3)).astype(np.float32)
  batch["image_mlm_mask"] = rng.uniform(size=outputs["image_patch_pred"].shape[:2]) < 0.4
  return outputs, batch


def _ref_patches(images):
  """[B, P, p*p*3]: patch (row r, column c) at index r * grid + c, flattened row by row."""
  grid = IMAGE_SIZE // PATCH
  return np.stack([images[:, r * PATCH:(r + 1) * PATCH, c * PATCH:(c + 1) * PATCH].reshape(
      len(images), -1) for r in range(grid) for c in range(grid)], axis=1)


def _ctx(mesh, harmonize, positives="pair", impl="gather", temperature=0.07,
         norm_targets=False):
  return ObjectiveContext(
      mesh=mesh,
      loss_config=ml_collections.ConfigDict(
          {"kind": "softmax", "impl": impl, "positives": positives, "tile": None}),
      method_config=ml_collections.ConfigDict(
          {"harmonize": harmonize, "temperature": temperature, "norm_targets": norm_targets}))


def _place(tree, mesh):
  """Batch-leading arrays sharded over the batch axes as the trainer's are; the rest
  replicated."""
  rows, replicated = NamedSharding(mesh, P(parallel.BATCH_AXES)), NamedSharding(mesh, P())
  return jax.tree.map(
      lambda a: jax.device_put(a, rows if np.ndim(a) and a.shape[0] == BATCH else replicated),
      tree)


def _run(objective, outputs, batch, ctx):
  fn = jax.jit(lambda o, b: objective(o, b, ctx))
  loss, metrics = fn(_place(outputs, ctx.mesh), _place(batch, ctx.mesh))
  return float(loss), {k: np.asarray(v) for k, v in metrics.items()}


# ---------------------------------------------------------------------------------------------
# float64 references
# ---------------------------------------------------------------------------------------------


def _normalize(x):
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-6)


def _ref_code_harmonization(outputs):
  """Per sample: C over its present modalities, S = C ⊙ softmax(C), rows L2-normalized."""
  harmonization = np.zeros((BATCH, M, M))
  for b in range(BATCH):
    kept = [i for i, m in enumerate(scale.MODALITIES) if outputs[f"{m}_present"][b]]
    embs = _normalize(np.stack([outputs[f"{scale.MODALITIES[i]}_emb"][b] for i in kept])
                      .astype(np.float64))
    cosines = embs @ embs.T
    softmax = np.exp(cosines) / np.exp(cosines).sum(axis=1, keepdims=True)
    s = cosines * softmax
    harmonization[b][np.ix_(kept, kept)] = s / np.linalg.norm(s, axis=1, keepdims=True)
  return harmonization


def _ref_learned_weights(raw, taking_part):
  used = np.triu(np.outer(taking_part, taking_part)).astype(bool)
  raw = raw.astype(np.float64)
  softmax = np.where(used, np.exp(raw), 0.0) / np.exp(raw[used]).sum()
  return np.where(used, 1.0 + raw * softmax, 0.0)


def _log_softmax(z):
  shifted = z - z.max(axis=1, keepdims=True)
  return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def _ref_info_nce(x, y, logit_scale, ids):
  """Symmetric InfoNCE over the given (kept) rows: a plain batch, no masks."""
  logits = logit_scale * x @ y.T
  positives = (ids[:, None] == ids[None, :]).astype(np.float64)
  targets = positives / positives.sum(axis=1, keepdims=True)
  row = -np.sum(targets * _log_softmax(logits), axis=1).mean()
  col = -np.sum(targets * _log_softmax(logits.T), axis=1).mean()
  return 0.5 * (row + col)


def _ref_contrastive(outputs, batch, harmonize, positives):
  """{pair: loss} and the total, each pair on the rows having both modalities."""
  code = _ref_code_harmonization(outputs)
  taking_part = np.array([outputs[f"{m}_present"].any() for m in scale.MODALITIES])
  learned = _ref_learned_weights(outputs["harmonization"], taking_part)
  ids = batch["catalog_id"] if positives == "catalog" else np.arange(BATCH)
  losses, total = {}, 0.0
  for (i, a), (j, b) in itertools.combinations(enumerate(scale.MODALITIES), 2):
    kept = np.flatnonzero(outputs[f"{a}_present"] & outputs[f"{b}_present"])
    x = _normalize(outputs[f"{a}_emb"][kept].astype(np.float64))
    y = _normalize(outputs[f"{b}_emb"][kept].astype(np.float64))
    if harmonize == "code":
      x = x * code[kept, i, j][:, None]
    loss = _ref_info_nce(x, y, 1 / 0.07, ids[kept]) if len(kept) else 0.0
    losses[f"{a}_{b}"] = loss
    total += (learned[i, j] if harmonize == "learned" else 1.0) * loss
  return losses, total


def _ref_masked(outputs, batch, harmonize, norm_targets=False):
  code = _ref_code_harmonization(outputs)
  taking_part = np.array([outputs[f"{m}_present"].any() for m in scale.MODALITIES])
  learned = _ref_learned_weights(outputs["harmonization"], taking_part)
  losses, total = {}, 0.0
  for name, (modality, head, target_key, mask_key) in scale.MASKED_TERMS.items():
    i = scale.MODALITIES.index(modality)
    present = outputs[f"{modality}_present"]
    weights = code[:, i, i] if harmonize == "code" else np.ones(BATCH)
    prediction = outputs[head].astype(np.float64)
    if mask_key is None:
      targets = batch[target_key]
      masked = (targets >= 0) & present[:, None]
      shifted = prediction - prediction.max(-1, keepdims=True)
      log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
      values = -np.take_along_axis(log_probs, np.maximum(targets, 0)[..., None], -1)[..., 0]
    else:
      masked = batch[mask_key] & present[:, None]
      targets = batch[target_key].astype(np.float64)
      if name == "image_patch":
        targets = _ref_patches(targets)
      if norm_targets:
        targets = ((targets - targets.mean(-1, keepdims=True))
                   / np.sqrt(targets.var(-1, keepdims=True) + 1e-6))
      values = np.mean((prediction - targets) ** 2, axis=-1)
    loss = np.sum((values * weights[:, None])[masked]) / max(masked.sum(), 1)
    losses[name] = loss
    total += (learned[i, i] if harmonize == "learned" else 1.0) * loss
  return losses, total


# ---------------------------------------------------------------------------------------------
# Losses against the references, on 8 devices and on one
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("harmonize, positives, impl", [
    ("off", "pair", "gather"), ("code", "catalog", "gather"), ("code", "pair", "tiled"),
    ("learned", "pair", "ring")])
def test_contrastive_matches_float64_reference_on_8_and_1_devices(harmonize, positives, impl):
  outputs, batch = _example(seed=0)
  ref_losses, ref_total = _ref_contrastive(outputs, batch, harmonize, positives)
  results = [_run(scale.scale_contrastive_objective, outputs, batch,
                  _ctx(_mesh(n), harmonize, positives, impl)) for n in (8, 1)]
  for loss, metrics in results:
    np.testing.assert_allclose(loss, ref_total, rtol=1e-5)
    for pair, ref in ref_losses.items():
      np.testing.assert_allclose(metrics[f"loss_{pair}"], ref, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-6)
  assert len(ref_losses) == 10


@pytest.mark.parametrize("harmonize, norm_targets", [
    ("code", False), ("learned", False), ("off", False), ("code", True)])
def test_masked_matches_float64_reference_on_8_and_1_devices(harmonize, norm_targets):
  outputs, batch = _example(seed=1)
  if norm_targets:  # features with an offset and scale of their own, as log-mel values have
    for key in ("region_feats", "frame_feats", "audio_mel", "image"):
      batch[key] = (3.0 * batch[key] - 8.0).astype(np.float32)
  ref_losses, ref_total = _ref_masked(outputs, batch, harmonize, norm_targets)
  results = [_run(scale.scale_masked_objective, outputs, batch,
                  _ctx(_mesh(n), harmonize, norm_targets=norm_targets)) for n in (8, 1)]
  for loss, metrics in results:
    np.testing.assert_allclose(loss, ref_total, rtol=1e-5)
    for name, ref in ref_losses.items():
      np.testing.assert_allclose(metrics[f"loss_{name}"], ref, rtol=1e-5)
  np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-6)


def test_mlm_at_slots_equals_every_position_and_counts_what_it_leaves():
  """Logits at the masked positions only (the model's `mlm_slots`) give the every-position
  loss when the slots hold every target; with fewer slots the rest are counted."""
  outputs, batch = _example(seed=3)
  ctx = _ctx(_mesh(8), "code")
  want_loss, want = _run(scale.scale_masked_objective, outputs, batch, ctx)
  for slots, leaves_out in ((None, False), (1, True)):
    sloted = dict(outputs)
    for name in ("text", "table"):
      targets, logits = batch[f"{name}_mlm_targets"], outputs[f"{name}_mlm_logits"]
      positions = np.argsort(targets < 0, axis=1, kind="stable")[:, :slots or targets.shape[1]]
      sloted[f"{name}_mlm_positions"] = positions.astype(np.int32)
      sloted[f"{name}_mlm_logits"] = np.take_along_axis(logits, positions[..., None], axis=1)
    loss, metrics = _run(scale.scale_masked_objective, sloted, batch, ctx)
    present = _example(seed=3)[0]
    for name in ("text", "table"):
      targets = batch[f"{name}_mlm_targets"]
      rows = present[f"{name}_present"][:, None]
      kept = np.take_along_axis(targets, sloted[f"{name}_mlm_positions"], axis=1)
      assert metrics[f"unscored_{name}_mlm"] == ((targets >= 0) & rows).sum() - (
          (kept >= 0) & rows).sum()
      assert (metrics[f"unscored_{name}_mlm"] > 0) == leaves_out
      if not leaves_out:
        np.testing.assert_allclose(metrics[f"loss_{name}_mlm"], want[f"loss_{name}_mlm"],
                                   rtol=1e-6)
    if not leaves_out:
      np.testing.assert_allclose(loss, want_loss, rtol=1e-6)


def test_absent_heads_and_targets_are_skipped():
  outputs, batch = _example(seed=2)
  del outputs["frame_pred"], batch["audio_mel_mlm_mask"]
  _, metrics = _run(scale.scale_masked_objective, outputs, batch, _ctx(_mesh(8), "off"))
  assert {k for k in metrics if k.startswith("loss_")} == {
      "loss_text_mlm", "loss_table_mlm", "loss_region", "loss_image_patch"}


# ---------------------------------------------------------------------------------------------
# Self-harmonization
# ---------------------------------------------------------------------------------------------


def test_code_harmonization_rows_are_unit_and_zero_where_missing():
  outputs, _ = _example(seed=3)
  harmonization = np.asarray(scale.code_harmonization(jax.tree.map(jnp.asarray, outputs)))
  np.testing.assert_allclose(harmonization, _ref_code_harmonization(outputs), atol=1e-6)
  present = np.stack([outputs[f"{m}_present"] for m in scale.MODALITIES], axis=1)
  np.testing.assert_allclose(np.linalg.norm(harmonization, axis=-1)[present], 1.0, rtol=1e-6)
  both = present[:, :, None] & present[:, None, :]
  assert np.all(harmonization[~both] == 0.0)


def test_code_harmonization_passes_no_gradient():
  # S weights the losses; moving the embeddings to change S must not be a way to lower them.
  outputs, _ = _example(seed=3)
  outputs = jax.tree.map(jnp.asarray, outputs)
  grads = jax.grad(lambda o: jnp.sum(scale.code_harmonization({**outputs, **o})))(
      {f"{m}_emb": outputs[f"{m}_emb"] for m in scale.MODALITIES})
  assert all(np.all(np.asarray(g) == 0.0) for g in grads.values())


def test_learned_weights_start_as_off_and_drop_missing_modalities():
  outputs, batch = _example(seed=4)
  outputs["video_present"] = np.zeros(BATCH, bool)  # no listing of the batch has a video
  outputs["harmonization"] = np.zeros((M, M), np.float32)
  mesh = _mesh(8)
  for objective in (scale.scale_contrastive_objective, scale.scale_masked_objective):
    learned, metrics = _run(objective, outputs, batch, _ctx(mesh, "learned"))
    off, off_metrics = _run(objective, outputs, batch, _ctx(mesh, "off"))
    np.testing.assert_allclose(learned, off, rtol=1e-6)
    # "off" is the plain sum of its terms.
    np.testing.assert_allclose(
        off, sum(v for k, v in off_metrics.items() if k.startswith("loss_")), rtol=1e-6)
    video_weights = {k: v for k, v in metrics.items() if k.startswith("weight_") and "video"
                     in k or k == "weight_frame"}
    assert video_weights and all(v == 0.0 for v in video_weights.values())
  raw = np.random.default_rng(0).normal(size=(M, M)).astype(np.float32)
  taking_part = np.array([True, True, True, False, True])
  np.testing.assert_allclose(scale.learned_weights(jnp.asarray(raw), jnp.asarray(taking_part)),
                             _ref_learned_weights(raw, taking_part), rtol=1e-6)


def test_harmonization_weights_module_is_a_zero_matrix_param():
  variables = nn.unbox(scale.HarmonizationWeights().init(jax.random.PRNGKey(0)))
  assert variables["params"]["harmonization"].shape == (M, M)
  assert np.all(scale.HarmonizationWeights().apply(variables) == 0.0)


def test_registered_with_the_scale_section():
  for name in ("scale_contrastive", "scale_masked"):
    assert objectives.config_section(name) == scale.CONFIG_SECTION == "scale"
  assert objectives.get_objective("scale_masked") is scale.scale_masked_objective
  assert set(scale.default_config()) == {"harmonize", "temperature", "norm_targets"}


# ---------------------------------------------------------------------------------------------
# Missing modalities contribute nothing
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("harmonize", ["code", "learned"])
def test_a_missing_modality_contributes_nothing(harmonize):
  outputs, batch = _example(seed=5)
  missing = ~outputs["image_present"]
  assert missing.any()
  mesh = _mesh(8)
  ctx = _ctx(mesh, harmonize)

  keys = ("image_emb", "region_pred")

  def total(differentiated, rest, b):
    o = {**rest, **differentiated}
    return (scale.scale_contrastive_objective(o, b, ctx)[0]
            + scale.scale_masked_objective(o, b, ctx)[0])

  value_and_grad = jax.jit(jax.value_and_grad(total))

  def run(o):
    # Only the float embeddings are differentiated: the presence flags are bool.
    differentiated = _place({k: v for k, v in o.items() if k in keys}, mesh)
    rest = _place({k: v for k, v in o.items() if k not in keys}, mesh)
    return value_and_grad(differentiated, rest, _place(batch, mesh))

  loss, grads = run(outputs)
  perturbed = dict(outputs)
  rng = np.random.default_rng(9)
  for key in keys:
    noise = rng.normal(size=outputs[key].shape).astype(np.float32)
    perturbed[key] = np.where(missing.reshape(-1, *[1] * (noise.ndim - 1)), 5 * noise,
                              outputs[key])
  perturbed_loss, _ = run(perturbed)
  np.testing.assert_allclose(perturbed_loss, loss, rtol=1e-6)
  for key in keys:
    assert np.all(np.asarray(grads[key])[missing] == 0.0), key
    assert np.any(np.asarray(grads[key])[~missing] != 0.0), key
