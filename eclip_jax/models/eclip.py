"""ECLIP: the two-tower model plus an instance decoder that finds the product in the photo.

    images -> ViT -> pooled -> image_proj -> image_emb                     (global, as CLIP)
                  -> patch tokens -> InstanceDecoder (K queries) -> instance_proj
                                  -> query_emb e_k [K,D] + cross-attention maps
    title  -> text tower -> text_emb t

Selecting the product among the K instances (METHODS.md §1; our choices are fields here):

* text-guided (training, and whenever a title is at hand): w = softmax_k(<e_k, t> / tau_sel),
  `instance_emb` v = normalize(sum_k w_k e_k), `instance_attn` = sum_k w_k map_k;
* image-only (retrieval by photo): a small MLP scores each query, s_k = MLP(features_k);
  `instance_emb_img` = normalize(sum_k softmax(s)_k e_k), `instance_attn_img` likewise. The
  head reads the decoder's features through a stop-gradient: the `selection_kl` objective
  teaches it to imitate w without reshaping the decoder through the scores (the instance
  objectives still train the decoder through the e_k they weight).

Outputs, beyond the two-tower ones (a view axis after the batch axis for `images` input):

    query_emb          [B,K,D]      L2-normalized per-query embeddings
    query_attn         [B,K,gh,gw]  last decoder layer's cross-attention, heads averaged
    query_attn_heads   [B,heads,K,gh,gw]  the same per head
    selection_logits   [B,K]        the image-only head's scores s
    instance_emb_img, instance_attn_img   image-only selection (always)
    selection_weights  [B,K]        text-guided w (with a title)
    instance_emb, instance_attn           text-guided selection (with a title)
    instance_logit_scale          the instance losses' own exp(log(1/tau)), clipped at 100
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from eclip_jax.models import instance_decoder
from eclip_jax.models import two_tower
from eclip_jax.models import vit
from eclip_jax.models.layers import partitioned

INSTANCE_OUTPUTS = (
    "query_emb", "query_attn", "query_attn_heads", "selection_logits", "instance_emb_img",
    "instance_attn_img", "selection_weights", "instance_emb", "instance_attn",
)


def select(weights: jax.Array, query_emb: jax.Array, query_attn: jax.Array):
  """(normalized sum_k w_k e_k, sum_k w_k map_k) for weights [B,K] over K queries."""
  instance_emb = two_tower.l2_normalize(jnp.einsum("bk,bkd->bd", weights, query_emb))
  instance_attn = jnp.einsum("bk,bkhw->bhw", weights, query_attn)
  return instance_emb, instance_attn


class ECLIP(two_tower.TwoTower):
  """Two towers + instance decoder + instance selection (see the module docstring).

  `decoder` holds the InstanceDecoder fields (`num_queries`, `depth`, `num_heads`,
  `mlp_dim`); it runs at the image tower's width.
  """

  decoder: dict[str, Any] | None = None
  selection_temperature: float = 0.1
  selection_mlp_dim: int = 128

  @nn.compact
  def __call__(self, batch: dict[str, jax.Array], *, train: bool = False) -> dict[str, Any]:
    del train
    outputs, views = self.encode_towers(batch)
    if "image_tokens" in outputs:
      outputs.update(self._instances(outputs, views))
    log_scale = self.scalar("instance_logit_scale", math.log(1.0 / self.temperature_init))
    outputs["instance_logit_scale"] = jnp.exp(
        jnp.minimum(log_scale, math.log(two_tower.MAX_LOGIT_SCALE)))
    return two_tower.split_views(outputs, views, two_tower.IMAGE_OUTPUTS + INSTANCE_OUTPUTS)

  def _instances(self, outputs: dict[str, Any], views: int | None) -> dict[str, jax.Array]:
    dtype, param_dtype = jnp.dtype(self.dtype), jnp.dtype(self.param_dtype)
    decoded = instance_decoder.InstanceDecoder(
        **(self.decoder or {}), dtype=dtype, param_dtype=param_dtype, name="instance_decoder"
    )(outputs["image_tokens"])
    features, cross_attn = decoded["features"], decoded["cross_attn"]
    query_emb = two_tower.l2_normalize(nn.Dense(
        self.embed_dim, use_bias=False,
        kernel_init=partitioned(nn.initializers.lecun_normal(), ("embed", "joint")),
        dtype=dtype, param_dtype=param_dtype, name="instance_proj",
    )(features))
    grid = outputs["image_grid"]
    query_attn_heads = cross_attn.reshape(*cross_attn.shape[:3], *grid)
    query_attn = jnp.mean(query_attn_heads, axis=1)

    hidden = nn.gelu(nn.Dense(
        self.selection_mlp_dim,
        kernel_init=partitioned(nn.initializers.xavier_uniform(), ("embed", "mlp")),
        bias_init=partitioned(nn.initializers.zeros, ("mlp",)),
        dtype=dtype, param_dtype=param_dtype, name="selection_fc1",
    )(jax.lax.stop_gradient(features)))
    selection_logits = nn.Dense(
        1,
        kernel_init=partitioned(nn.initializers.zeros, ("mlp", None)),
        bias_init=partitioned(nn.initializers.zeros, (None,)),
        dtype=dtype, param_dtype=param_dtype, name="selection_fc2",
    )(hidden)[..., 0].astype(jnp.float32)
    instance_emb_img, instance_attn_img = select(
        jax.nn.softmax(selection_logits, axis=-1), query_emb, query_attn)
    result = {
        "query_emb": query_emb,
        "query_attn": query_attn,
        "query_attn_heads": query_attn_heads,
        "selection_logits": selection_logits,
        "instance_emb_img": instance_emb_img,
        "instance_attn_img": instance_attn_img,
    }
    if "text_emb" in outputs:
      text_emb = two_tower.repeat_views(outputs["text_emb"], views)
      similarity = jnp.einsum("bkd,bd->bk", query_emb, text_emb)
      weights = jax.nn.softmax(similarity / self.selection_temperature, axis=-1)
      result["selection_weights"] = weights
      result["instance_emb"], result["instance_attn"] = select(weights, query_emb, query_attn)
    return result

  def flops_per_example(self, input_config) -> float:
    """The two towers' FLOPs plus, per view, the decoder's and the per-query projection's
    (the selection head is negligible)."""
    towers = super().flops_per_example(input_config)
    if "image" not in input_config.modalities:
      return towers
    vit_size, patch = vit.ViT(**self.image, parent=None).shape()
    decoder = instance_decoder.InstanceDecoder(**(self.decoder or {}), parent=None)
    num_patches = (input_config.image_size // patch) ** 2
    per_view = (decoder.flops_per_image(num_patches, vit_size.width)
                + 2 * decoder.num_queries * vit_size.width * self.embed_dim)
    return towers + input_config.num_views * per_view
