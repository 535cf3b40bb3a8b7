"""ECLIP's pretext tasks (METHODS.md §1), each a registered objective with its own weight.

    clip                  (1) global image–title InfoNCE (objectives/clip.py)
    instance_text         (2) inter-product: instance embedding v vs the title, negatives the
                              other products of the global batch
    instance_consistency  (3) intra-product: v of two different photos of one product, against
                              the other products' instances
    selection_kl          (4) trains the image-only selection head: KL(stopgrad(w) || softmax(s))
    query_diversity       (5) optional: mean squared cosine between the K instance
                              embeddings of one image, pushing queries apart

(2) and (3) are softmax InfoNCE through `contrastive_loss` (any `loss.impl`, positives from
`loss.positives`), at the model's `instance_logit_scale`; the publication uses InfoNCE for
them, so `loss.kind` applies to (1) only. A config turns a task off with weight 0; its
value is still logged, which shows what an ablated run leaves untrained.

Which instance embedding (2) and (3) train is `eclip.instance_selection` (ECLIP's config
section, which the objectives see as `ctx.method_config`). "image" (the configs' default):
the image-only selection's `instance_emb_img`. "text": the title-guided `instance_emb`,
read literally from METHODS.md — but then a row's title chooses the mixture of queries on
both sides of each comparison: in (2) the title is compared with an embedding it selected
itself, and in (3) both photos' embeddings are selected by the same title. Queries that
ignore the image and a title-dependent mixture then satisfy both tasks; measured on toyshop,
training accuracy of (3) reaches 0.96 while test product retrieval stays near chance
(RESULTS.md). The title-guided selection still teaches the image-only head (4) and gives
the grounding map when a title is at hand.
"""

from __future__ import annotations

import itertools
from typing import Any

import jax
import jax.numpy as jnp

from eclip_jax.objectives import common

CONFIG_SECTION = "eclip"  # the config section ECLIP's objectives read (`ctx.method_config`)
SELECTIONS = {"image": "instance_emb_img", "text": "instance_emb"}


def _instance_emb(outputs: dict[str, Any], ctx) -> jax.Array:
  selection = ctx.method_config.instance_selection
  if selection not in SELECTIONS:
    raise ValueError(f"config.eclip.instance_selection={selection!r} is unknown; choose one "
                     f"of {sorted(SELECTIONS)}.")
  return outputs[SELECTIONS[selection]]


def instance_text_objective(outputs: dict[str, Any], batch: dict[str, Any], ctx):
  """(2) Instance embedding vs the title, per view ([B,V,D] or [B,D])."""
  loss, accuracy = common.per_view_loss_and_accuracy(
      _instance_emb(outputs, ctx), outputs["text_emb"], outputs["instance_logit_scale"], None,
      common.positive_ids(batch, ctx.loss_config), ctx, kind="softmax")
  return loss, {"i2t_acc": accuracy, "logit_scale": outputs["instance_logit_scale"]}


def instance_consistency_objective(outputs: dict[str, Any], batch: dict[str, Any], ctx):
  """(3) Instance embeddings of every pair of views of one product agree (mean over pairs)."""
  instance_emb = _instance_emb(outputs, ctx)
  if instance_emb.ndim != 3 or instance_emb.shape[1] < 2:
    raise ValueError(
        "the instance_consistency objective compares two photos of each product; set "
        "config.input.num_views=2 (or more).")
  ids = common.positive_ids(batch, ctx.loss_config)
  loss, accuracy = common.mean_of([
      common.configured_loss_and_accuracy(
          instance_emb[:, a], instance_emb[:, b], outputs["instance_logit_scale"], None, ids,
          ctx, kind="softmax")
      for a, b in itertools.combinations(range(instance_emb.shape[1]), 2)
  ])
  return loss, {"view_acc": accuracy}


def selection_kl(text_weights: jax.Array, image_logits: jax.Array) -> jax.Array:
  """Mean over rows of KL(stopgrad(w) || softmax(s)); [..., K] inputs."""
  target = jax.lax.stop_gradient(text_weights.astype(jnp.float32))
  log_predicted = jax.nn.log_softmax(image_logits.astype(jnp.float32), axis=-1)
  # xlogy: a target weight of exactly 0 contributes 0, not 0 * log 0 = nan.
  kl = jnp.sum(jax.scipy.special.xlogy(target, target) - target * log_predicted, axis=-1)
  return jnp.mean(kl)


def selection_kl_objective(outputs: dict[str, Any], batch: dict[str, Any], ctx):
  """(4) The image-only head learns the text-guided selection."""
  del batch, ctx
  weights, logits = outputs["selection_weights"], outputs["selection_logits"]
  loss = selection_kl(weights, logits)
  entropy = -jnp.mean(jnp.sum(jax.scipy.special.xlogy(weights, weights), axis=-1))
  agreement = jnp.mean(jnp.argmax(weights, -1) == jnp.argmax(logits, -1))
  return loss, {"entropy": entropy, "agreement": agreement}


def query_diversity(query_emb: jax.Array) -> jax.Array:
  """Mean over images and query pairs k != l of cos(e_k, e_l)^2; query_emb [..., K, D]
  normalized. 0 when the K embeddings are orthogonal, 1 when they coincide."""
  num_queries = query_emb.shape[-2]
  cosines = jnp.einsum("...kd,...ld->...kl", query_emb, query_emb).astype(jnp.float32)
  off_diagonal = 1.0 - jnp.eye(num_queries, dtype=jnp.float32)
  per_image = jnp.sum(cosines**2 * off_diagonal, axis=(-2, -1)) / (num_queries * (num_queries - 1))
  return jnp.mean(per_image)


def query_diversity_objective(outputs: dict[str, Any], batch: dict[str, Any], ctx):
  """(5) Penalizes instance queries that embed the same thing."""
  del batch, ctx
  return query_diversity(outputs["query_emb"]), {}
