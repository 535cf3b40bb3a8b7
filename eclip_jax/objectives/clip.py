"""The CLIP / SigLIP objective: image–title contrastive loss on a two-tower model's outputs."""

from __future__ import annotations

from typing import Any

import jax

from eclip_jax.objectives import common


def clip_objective(
    outputs: dict[str, Any], batch: dict[str, Any], ctx: common.ObjectiveContext,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Image–title contrastive loss on (L2-normalized) `image_emb` and `text_emb`.

  `ctx.loss_config.positives` picks what counts as a match: "pair" (the row's own title),
  "product" (rows of one `product_id`) or "catalog" (duplicate listings: one `catalog_id`).
  With several views per row (`image_emb` [B,V,D]) the loss is the mean over views.
  """
  logit_scale = outputs["logit_scale"]
  # A shared bias cancels in a softmax; only the sigmoid loss uses (and trains) it.
  logit_bias = outputs.get("logit_bias") if ctx.loss_config.kind == "sigmoid" else None
  # The accuracy comes out of the loss's own pass, so it costs no memory of its own.
  loss, i2t_acc = common.per_view_loss_and_accuracy(
      outputs["image_emb"], outputs["text_emb"], logit_scale, logit_bias,
      common.positive_ids(batch, ctx.loss_config), ctx)
  metrics = {"logit_scale": logit_scale, "i2t_acc": i2t_acc}
  if logit_bias is not None:
    metrics["logit_bias"] = logit_bias
  return loss, metrics
