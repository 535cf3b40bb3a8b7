"""SCALE's objectives (METHODS.md §3): pairwise contrastive and masked modeling, self-harmonized.

    scale_contrastive   NT-Xent between the unimodal embeddings of every pair of modalities
                        (10 pairs with five), each through the sharded `contrastive_loss`
    scale_masked        masked modeling on the fused outputs: title MLM, table masked entity
                        modeling, masked region / frame / mel-frame feature regression,
                        masked-patch pixel regression (an image encoded from pixels)

Model output contract (what these objectives read; the model provides exactly these names).
For each modality m the model has, in MODALITIES order: `{m}_emb` [B, D] (pooled unimodal
embedding), `{m}_present` [B] bool; the heads `text_mlm_logits` [B, L, V],
`table_mlm_logits` [B, Lt, V] (or [B, K, V] at the positions `text_mlm_positions` /
`table_mlm_positions` [B, K] say, when the model scores K per row), `region_pred`
[B, R, 2048], `frame_pred` [B, F, 1024], `audio_mel_pred` [B, T, 80], `image_patch_pred`
[B, P, p·p·3]; `logit_scale` (scalar, exponentiated) when `scale.temperature` is 0; and
`harmonization` [M, M] (M = len(MODALITIES), the parameter of `HarmonizationWeights`, which
the model hosts) when `scale.harmonize="learned"`. Batch keys (data/transforms.py):
`text_mlm_targets` [B, L] and `table_mlm_targets` [B, Lt] (the original token where masked,
-1 elsewhere), `region_feats` + `region_mlm_mask`, `frame_feats` + `frame_mlm_mask`, `audio_mel` +
`audio_mel_mlm_mask`, `image` + `image_mlm_mask` (per patch, row-major; the targets are the
image's p×p patches). A modality the model lacks takes part in nothing; a masked term whose
head or targets are absent is skipped. The heads are the model's predictions from the fused
outputs; `fused_{m}_emb` and `fused_emb` (also in the contract) are what evaluation reads,
and no loss here reads them.

Missing modalities. A pair's loss is the row-weighted InfoNCE with weight 0 on the rows
where either modality is missing: such a row is neither a query nor a candidate, so the
pair's loss never sees a missing modality (and the embedding of a missing modality, which
the model zero-imputes, gets no gradient). Masked terms count masked positions of present
rows only.

Self-harmonization (`config.scale.harmonize`). The tasks are indexed by an M×M matrix over
modalities: entry (i, j), i < j, is the pair (i, j); entry (i, i) is modality i's masked
term (text: title MLM, table: entity modeling, image: regions or pixel patches, video:
frames, audio: mel).

- "code" (METHODS.md's reading of the released code, which this repository cannot
  consult): per sample, C = the cosine matrix between the sample's present unimodal
  embeddings, so C is computed, not learned, and needs no parameter; S = C ⊙ softmax(C)
  (row softmax over the present modalities), rows L2-normalized; entries with a missing
  modality are 0. S_ij multiplies the sample's pair-(i,j) logits (its row of x is scaled,
  so as a query its logits are scaled; this goes through every `loss.impl`), and S_ii
  multiplies its masked loss of modality i. S is computed under stop_gradient: it weights
  the losses and is not a path along which the model could lower a loss by moving
  embeddings apart. S_ij < 0 where cosines are negative, and then that sample's logits
  change sign; the formula is kept as written.
- "learned" (the paper's): a learned S (the model's `harmonization`, initialized at 0)
  gives each task the weight w = 1 + S ⊙ softmax(S), one softmax over all the tasks (the
  upper triangle with the diagonal) whose modalities some row of the batch has; the others
  get weight 0. The "1 +" is this code's: the literal S ⊙ softmax(S) is 0 at S = 0, which
  would give the model no gradient at all, and its gradient then pushes S negative, i.e.
  towards maximizing the losses. With the 1, S = 0 is exactly "off". S is trained by the
  loss it weights, and nothing bounds w from below (if every S_t falls far below 0 the
  largest weights approach their S_t), so a run should watch `harmonization_mean`.
- "off": the plain sum of the pair losses, and of the masked terms.

Feature regression targets are standardized per vector by default (`scale.norm_targets`,
ours: default_config says why); the prediction heads then predict standardized features.

Every term's loss is logged as it enters the sum (`loss_<a>_<b>`, `loss_<term>`; with
"code" that is the harmonized loss), with its weight (`weight_<...>`: with "code" the mean
S entry over the rows that take part) and `harmonization_mean` (the mean of S over the
entries that take part: per sample for "code", the raw parameter for "learned").
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from eclip_jax.objectives import common

CONFIG_SECTION = "scale"  # the config section SCALE's objectives read (`ctx.method_config`)
MODALITIES = ("text", "table", "image", "video", "audio")
HARMONIZE = ("code", "learned", "off")
# Masked terms: name -> (modality whose diagonal entry weights it, model head, batch target
# key, batch mask key or None for token targets where -1 marks "not masked").
MASKED_TERMS = {
    "text_mlm": ("text", "text_mlm_logits", "text_mlm_targets", None),
    "table_mlm": ("table", "table_mlm_logits", "table_mlm_targets", None),
    "region": ("image", "region_pred", "region_feats", "region_mlm_mask"),
    "frame": ("video", "frame_pred", "frame_feats", "frame_mlm_mask"),
    "audio_mel": ("audio", "audio_mel_pred", "audio_mel", "audio_mel_mlm_mask"),
    # Pixels, when the image is encoded from them (no regions): the image's patches.
    "image_patch": ("image", "image_patch_pred", "image", "image_mlm_mask"),
}


def default_config() -> ml_collections.ConfigDict:
  """`config.scale`'s fields and their defaults."""
  return ml_collections.ConfigDict({
      # How the tasks are weighted: "code", "learned" or "off" (module docstring).
      "harmonize": "code",
      # NT-Xent temperature τ (the publication's 0.07): logits are cos / τ. 0 uses the
      # model's learned `logit_scale` instead.
      "temperature": 0.07,
      # Feature regression against each target vector standardized over its features (its
      # mean 0, variance 1: MAE's norm_pix_loss), not the raw features. Ours: raw log-mel
      # values (about -14..5) give an MSE near 60 that drowns every other term, and region
      # or frame features have their extractor's scale; standardized, each term starts near 1.
      "norm_targets": True,
  })


class HarmonizationWeights(nn.Module):
  """The learned S of `harmonize="learned"`: an M×M matrix initialized at 0.

  The SCALE model hosts it (so S is in the params and the optimizer updates it) and returns
  its value as `outputs["harmonization"]`; the objectives read only that output.
  """

  num_modalities: int = len(MODALITIES)

  @nn.compact
  def __call__(self) -> jax.Array:
    # Replicated: an M×M matrix (M ≤ 5) has nothing worth sharding.
    init = nn.with_logical_partitioning(nn.initializers.zeros, (None, None))
    return self.param("harmonization", init,
                      (self.num_modalities, self.num_modalities), jnp.float32)


def _mode(ctx) -> str:
  mode = ctx.method_config.harmonize
  if mode not in HARMONIZE:
    raise ValueError(f"config.scale.harmonize={mode!r} is unknown; choose one of "
                     f"{', '.join(HARMONIZE)}.")
  return mode


def _normalize(x: jax.Array) -> jax.Array:
  x = x.astype(jnp.float32)
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), 1e-12))


def _modalities(outputs: dict[str, Any]) -> list[str]:
  """The modalities the model has, in MODALITIES order."""
  return [m for m in MODALITIES if f"{m}_emb" in outputs]


def _presence(outputs: dict[str, Any]) -> jax.Array:
  """[B, M] bool: which modality each row has (False for modalities the model lacks)."""
  batch = next(outputs[f"{m}_emb"] for m in _modalities(outputs)).shape[0]
  # A modality the model has but does not report presence for is taken as always present.
  everywhere, nowhere = jnp.ones((batch,), bool), jnp.zeros((batch,), bool)
  return jnp.stack([outputs.get(f"{m}_present", everywhere).astype(bool)
                    if f"{m}_emb" in outputs else nowhere for m in MODALITIES], axis=1)


def code_harmonization(outputs: dict[str, Any]) -> jax.Array:
  """[B, M, M] per-sample S = rownorm(C ⊙ softmax(C)), C the cosines of the present
  unimodal embeddings; 0 wherever either modality is missing (stop-gradient)."""
  present = _presence(outputs)
  batch, dim = present.shape[0], next(outputs[f"{m}_emb"] for m in _modalities(outputs)).shape[1]
  zeros = jnp.zeros((batch, dim), jnp.float32)
  embs = jnp.stack([_normalize(outputs[f"{m}_emb"]) if f"{m}_emb" in outputs else zeros
                    for m in MODALITIES], axis=1)
  embs = jax.lax.stop_gradient(embs)
  cosines = jnp.einsum("bid,bjd->bij", embs, embs)
  both = present[:, :, None] & present[:, None, :]
  # A row with no present modality has no candidate: where=... over nothing would be NaN.
  softmax = jax.nn.softmax(cosines, axis=-1, where=both | ~jnp.any(both, -1, keepdims=True))
  harmonized = jnp.where(both, cosines * softmax, 0.0)
  norms = jnp.sqrt(jnp.sum(harmonized ** 2, axis=-1, keepdims=True))
  return harmonized / jnp.maximum(norms, 1e-12)


def _taking_part(outputs: dict[str, Any]) -> jax.Array:
  """[M] bool: the modalities the model has and some row of the global batch has."""
  return jnp.any(_presence(outputs), axis=0)


def learned_weights(harmonization: jax.Array, taking_part: jax.Array) -> jax.Array:
  """[M, M] task weights 1 + S ⊙ softmax(S), the softmax over the tasks (the upper triangle
  with the diagonal) whose modalities take part; 0 for every other entry."""
  used = taking_part[:, None] & taking_part[None, :] & jnp.triu(
      jnp.ones(harmonization.shape, bool))
  harmonization = harmonization.astype(jnp.float32)
  # Without any task (no modality in the batch) the softmax has nothing to normalize over.
  softmax = jax.nn.softmax(harmonization, axis=None, where=used | ~jnp.any(used))
  return jnp.where(used, 1.0 + harmonization * softmax, 0.0)


def _harmonization(outputs, ctx) -> tuple[str, jax.Array | None, jax.Array | None]:
  """(mode, S, weights): S as `harmonization_mean` reports it, and what multiplies the
  tasks: [B, M, M] per sample for "code" (S itself), [M, M] for "learned"."""
  mode = _mode(ctx)
  if mode == "code":
    harmonization = code_harmonization(outputs)
    present = _presence(outputs)
    both = (present[:, :, None] & present[:, None, :]).astype(jnp.float32)
    return mode, _mean(harmonization, both), harmonization
  if mode == "learned":
    if "harmonization" not in outputs:
      raise ValueError('config.scale.harmonize="learned" needs the model output '
                       '"harmonization" (objectives.scale.HarmonizationWeights).')
    taking_part = _taking_part(outputs)
    weights = learned_weights(outputs["harmonization"], taking_part)
    return mode, _mean(outputs["harmonization"], weights != 0), weights
  return mode, None, None


def _mean(values: jax.Array, where: jax.Array) -> jax.Array:
  """The mean of `values` over the entries `where` selects (0 when none)."""
  where = where.astype(jnp.float32)
  return jnp.sum(values * where) / jnp.maximum(jnp.sum(where), 1.0)


def _logit_scale(outputs, ctx) -> jax.Array:
  temperature = ctx.method_config.temperature
  return jnp.float32(1.0 / temperature) if temperature else outputs["logit_scale"]


def scale_contrastive_objective(outputs: dict[str, Any], batch: dict[str, Any], ctx):
  """Σ over modality pairs of the (harmonized) NT-Xent; see the module docstring."""
  mode, harmonization_mean, weights = _harmonization(outputs, ctx)
  present = _presence(outputs)
  logit_scale = _logit_scale(outputs, ctx)
  ids = common.positive_ids(batch, ctx.loss_config)
  total, metrics = jnp.float32(0.0), {"logit_scale": logit_scale}
  for a, b in itertools.combinations(_modalities(outputs), 2):
    i, j = MODALITIES.index(a), MODALITIES.index(b)
    rows = present[:, i] & present[:, j]
    x, y = _normalize(outputs[f"{a}_emb"]), _normalize(outputs[f"{b}_emb"])
    if mode == "code":
      # The sample's S_ij scales its query's logits: scaling its row of x does exactly that.
      x = x * weights[:, i, j, None]
      metrics[f"weight_{a}_{b}"] = _mean(weights[:, i, j], rows)
    loss, accuracy = common.configured_loss_and_accuracy(
        x, y, logit_scale, None, ids, ctx, kind="softmax", row_weights=rows.astype(jnp.float32))
    if mode == "learned":
      metrics[f"weight_{a}_{b}"] = weights[i, j]
      loss_weight = weights[i, j]
    else:
      loss_weight = 1.0
    total += loss_weight * loss
    metrics[f"loss_{a}_{b}"], metrics[f"acc_{a}_{b}"] = loss, accuracy
  if harmonization_mean is not None:
    metrics["harmonization_mean"] = harmonization_mean
  return total, metrics


def token_cross_entropy(logits: jax.Array, targets: jax.Array, rows: jax.Array,
                        row_weights: jax.Array | None = None) -> jax.Array:
  """Σ_b w_b Σ_l CE(logits_bl, t_bl) over the masked positions (t ≥ 0) of the rows `rows`
  keeps, divided by their count, over the global batch (0 when nothing is masked)."""
  masked = (targets >= 0) & rows[:, None]
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  picked = jnp.take_along_axis(log_probs, jnp.maximum(targets, 0)[..., None], axis=-1)[..., 0]
  return _masked_mean(-picked, masked, row_weights)


def standardize(targets: jax.Array, eps: float = 1e-6) -> jax.Array:
  """Each target vector (last axis) with its mean removed and divided by its std."""
  mean = jnp.mean(targets, axis=-1, keepdims=True)
  var = jnp.var(targets, axis=-1, keepdims=True)
  return (targets - mean) * jax.lax.rsqrt(var + eps)


def masked_mse(predictions: jax.Array, targets: jax.Array, mask: jax.Array, rows: jax.Array,
               row_weights: jax.Array | None = None, norm_targets: bool = False) -> jax.Array:
  """Σ_b w_b Σ_p mean_d (pred − target)² over the masked positions of the rows `rows` keeps,
  divided by their count (0 when nothing is masked); `norm_targets`: each target vector
  standardized first (`standardize`)."""
  targets = jax.lax.stop_gradient(targets.astype(jnp.float32))
  if norm_targets:
    targets = standardize(targets)
  error = jnp.mean((predictions.astype(jnp.float32) - targets) ** 2, axis=-1)
  return _masked_mean(error, mask.astype(bool) & rows[:, None], row_weights)


def _masked_mean(values: jax.Array, masked: jax.Array, row_weights) -> jax.Array:
  if row_weights is not None:
    values = values * row_weights[:, None]
  # jnp.where, not a product: a masked-out position's value may be anything, inf included.
  return jnp.sum(jnp.where(masked, values, 0.0)) / jnp.maximum(jnp.sum(masked), 1)


def scale_masked_objective(outputs: dict[str, Any], batch: dict[str, Any], ctx):
  """Σ over the masked terms the model and batch both have of the (harmonized) term."""
  mode, harmonization_mean, weights = _harmonization(outputs, ctx)
  present = _presence(outputs)
  total, metrics = jnp.float32(0.0), {}
  for name, (modality, head, target_key, mask_key) in MASKED_TERMS.items():
    if head not in outputs or target_key not in batch or (mask_key and mask_key not in batch):
      continue
    i = MODALITIES.index(modality)
    # The pipeline masks nothing in a row without the modality; `rows` makes that hold
    # whatever the batch says.
    rows, row_weights, loss_weight = present[:, i], None, 1.0
    if mode == "code":
      row_weights = weights[:, i, i]
      metrics[f"weight_{name}"] = _mean(row_weights, rows)
    elif mode == "learned":
      loss_weight = metrics[f"weight_{name}"] = weights[i, i]
    if mask_key is None:
      targets, positions = batch[target_key], outputs.get(head.replace("_logits", "_positions"))
      if positions is not None:  # the model scored these positions only (its `mlm_slots`)
        scored = jnp.take_along_axis(targets, positions, axis=1)
        metrics[f"unscored_{name}"] = (jnp.sum((targets >= 0) & rows[:, None])
                                       - jnp.sum((scored >= 0) & rows[:, None]))
        targets = scored
      loss = token_cross_entropy(outputs[head], targets, rows, row_weights)
    else:
      targets = batch[target_key]
      if name == "image_patch":  # [B,H,W,3] -> the prediction's [B,P,p·p·3] patches
        # Imported here: eclip_jax.models imports this module (the model hosts S).
        from eclip_jax.models import vit  # pylint: disable=g-import-not-at-top
        patch = math.isqrt(outputs[head].shape[-1] // targets.shape[-1])
        targets = vit.patchify(targets, patch)
      loss = masked_mse(outputs[head], targets, batch[mask_key], rows, row_weights,
                        ctx.method_config.norm_targets)
    total += loss_weight * loss
    metrics[f"loss_{name}"] = loss
  if harmonization_mean is not None:
    metrics["harmonization_mean"] = harmonization_mean
  return total, metrics
