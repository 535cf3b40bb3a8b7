"""Two-tower image-text model (CLIP / SigLIP): a ViT and a text transformer, each projected
linearly into a shared `embed_dim`-wide space.

    batch["image"] [B,H,W,3]                       -> ViT  -> proj -> image_emb [B,D]
    batch["text_tokens"], batch["text_mask"] [B,T] -> text -> proj -> text_emb  [B,D]

Only the towers whose inputs are in the batch run, so evaluators can encode images and texts
separately. Outputs (the contract objectives and evaluators read):

    image_emb, text_emb   L2-normalized, float32
    image_tokens          patch tokens [B,N,image width], after the image tower's final LN
    image_grid            (gh, gw), the patch grid of image_tokens
    text_tokens_out       per-position text features [B,T,text width]
    logit_scale           exp(log(1/tau)) clipped at 100, float32 scalar (always present)
    logit_bias            the sigmoid loss's additive bias, float32 scalar (always present)
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from eclip_jax.models import text as text_lib
from eclip_jax.models import vit
from eclip_jax.models.layers import DType, partitioned
from eclip_jax.metrics import transformer_flops

MAX_LOGIT_SCALE = 100.0


def l2_normalize(x: jax.Array) -> jax.Array:
  """`x / |x|` along the last axis, in float32; rsqrt of a floored square keeps grads finite."""
  x = x.astype(jnp.float32)
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), 1e-12))


class TwoTower(nn.Module):
  """CLIP-style model; `image` / `text` are the ViT / TextTransformer fields (see those)."""

  image: dict[str, Any]  # variant, patch_size, pool
  text: dict[str, Any]  # variant, vocab_size, max_len, pool
  embed_dim: int
  temperature_init: float = 0.07
  bias_init: float = -10.0
  dtype: str | DType = "float32"  # compute dtype
  param_dtype: str | DType = "float32"
  scan_layers: bool = False
  remat_policy: str = "none"

  @nn.compact
  def __call__(self, batch: dict[str, jax.Array], *, train: bool = False) -> dict[str, Any]:
    del train  # no dropout or batch statistics; `train` is part of every model's signature
    dtype, param_dtype = jnp.dtype(self.dtype), jnp.dtype(self.param_dtype)
    tower_kwargs = dict(
        scan_layers=self.scan_layers,
        remat_policy=self.remat_policy,
        dtype=dtype,
        param_dtype=param_dtype,
    )

    def project(pooled, name):
      return nn.Dense(
          self.embed_dim,
          use_bias=False,
          kernel_init=partitioned(nn.initializers.lecun_normal(), ("embed", "joint")),
          dtype=dtype,
          param_dtype=param_dtype,
          name=name,
      )(pooled)

    outputs = {}
    if "image" in batch:
      pooled, extras = vit.ViT(**self.image, **tower_kwargs, name="image_tower")(batch["image"])
      outputs["image_emb"] = l2_normalize(project(pooled, "image_proj"))
      outputs["image_tokens"] = extras["tokens"]
      outputs["image_grid"] = extras["grid"]
    if "text_tokens" in batch:
      pooled, extras = text_lib.TextTransformer(**self.text, **tower_kwargs, name="text_tower")(
          batch["text_tokens"], batch["text_mask"]
      )
      outputs["text_emb"] = l2_normalize(project(pooled, "text_proj"))
      outputs["text_tokens_out"] = extras["tokens"]

    # The two scalars stay float32 whatever param_dtype is: in bfloat16, log(1/tau) ~ 2.7 moves
    # in steps of 1/64, which would swallow every optimizer update.
    def scalar(name, value):
      return self.param(name, partitioned(nn.initializers.constant(value), ()), (), jnp.float32)

    log_scale = scalar("logit_scale", math.log(1.0 / self.temperature_init))
    outputs["logit_scale"] = jnp.exp(jnp.minimum(log_scale, math.log(MAX_LOGIT_SCALE)))
    outputs["logit_bias"] = scalar("logit_bias", self.bias_init)
    return outputs

  def flops_per_example(self, image_size: int, text_len: int) -> float:
    """Analytic forward FLOPs of one image–title pair: the matmuls of both towers and
    projections (norms, softmaxes and the loss are negligible next to them)."""
    vit_size, patch = vit.parse_variant(self.image["variant"], self.image.get("patch_size"))
    num_patches = (image_size // patch) ** 2
    text_size = text_lib.SIZES[self.text["variant"]]
    image = (2 * num_patches * patch * patch * 3 * vit_size.width
             + transformer_flops(num_patches, *vit_size)
             + 2 * vit_size.width * self.embed_dim)
    text = transformer_flops(text_len, *text_size) + 2 * text_size.width * self.embed_dim
    return float(image + text)
