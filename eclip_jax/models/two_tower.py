"""Two-tower image-text model (CLIP / SigLIP): a ViT and a text transformer, each projected
linearly into a shared `embed_dim`-wide space.

    batch["image"] [B,H,W,3]                       -> ViT  -> proj -> image_emb [B,D]
    batch["images"] [B,V,H,W,3] (V views)          -> ViT  -> proj -> image_emb [B,V,D]
    batch["text_tokens"], batch["text_mask"] [B,T] -> text -> proj -> text_emb  [B,D]

Only the towers whose inputs are in the batch run, so evaluators can encode images and texts
separately. Outputs (the contract objectives and evaluators read; image outputs gain a view
axis after the batch axis when the input is `images`):

    image_emb, text_emb   L2-normalized, float32
    image_tokens          patch tokens [B,N,image width], after the image tower's final LN
    image_grid            (gh, gw), the patch grid of image_tokens
    patch_text_sim        [B,gh,gw] cosine of each projected patch token with the title
                          (with both inputs): the two-tower model's map of where the title
                          is in the image, for the grounding evaluator
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


def image_views(batch: dict[str, jax.Array]) -> tuple[jax.Array | None, int | None]:
  """The batch's images as one [B*V,H,W,3] stack and V (None for a single `image`)."""
  if "images" in batch:
    images = batch["images"]
    return images.reshape(-1, *images.shape[2:]), images.shape[1]
  return batch.get("image"), None


def repeat_views(per_example: jax.Array, views: int | None) -> jax.Array:
  """[B,...] -> [B*V,...], each row repeated for its V views (as `image_views` orders them)."""
  return per_example if views is None else jnp.repeat(per_example, views, axis=0)


# The outputs with one row per image (a view axis after the batch axis for `images`).
IMAGE_OUTPUTS = ("image_emb", "image_tokens", "patch_text_sim")


def split_views(outputs: dict[str, Any], views: int | None, keys: tuple[str, ...]):
  """`outputs` with each of `keys` reshaped [B*V,...] -> [B,V,...] (as is for one image)."""
  if views is None:
    return outputs
  return {k: v.reshape(-1, views, *v.shape[1:]) if k in keys else v for k, v in outputs.items()}


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
  attention_impl: str = "xla"  # layers.ATTENTION_IMPLS

  @nn.compact
  def __call__(self, batch: dict[str, jax.Array], *, train: bool = False) -> dict[str, Any]:
    del train  # no dropout or batch statistics; `train` is part of every model's signature
    outputs, views = self.encode_towers(batch)
    return split_views(outputs, views, IMAGE_OUTPUTS)

  def encode_towers(self, batch: dict[str, jax.Array]) -> tuple[dict[str, Any], int | None]:
    """The two towers, projections and scalars: (outputs, V). Image outputs keep the views
    flattened into the batch axis ([B*V,...]). Called from a subclass's compact `__call__`
    too (models/eclip.py), so the parameters keep the same names there."""
    dtype, param_dtype = jnp.dtype(self.dtype), jnp.dtype(self.param_dtype)
    tower_kwargs = dict(
        scan_layers=self.scan_layers,
        remat_policy=self.remat_policy,
        attention_impl=self.attention_impl,
        dtype=dtype,
        param_dtype=param_dtype,
    )

    def projection(name):
      return nn.Dense(
          self.embed_dim,
          use_bias=False,
          kernel_init=partitioned(nn.initializers.lecun_normal(), ("embed", "joint")),
          dtype=dtype,
          param_dtype=param_dtype,
          name=name,
      )

    outputs = {}
    if "text_tokens" in batch:
      pooled, extras = text_lib.TextTransformer(**self.text, **tower_kwargs, name="text_tower")(
          batch["text_tokens"], batch["text_mask"]
      )
      outputs["text_emb"] = l2_normalize(projection("text_proj")(pooled))
      outputs["text_tokens_out"] = extras["tokens"]
    images, views = image_views(batch)
    if images is not None:
      pooled, extras = vit.ViT(**self.image, **tower_kwargs, name="image_tower")(images)
      image_proj = projection("image_proj")
      outputs["image_emb"] = l2_normalize(image_proj(pooled))
      outputs["image_tokens"] = extras["tokens"]
      outputs["image_grid"] = grid = extras["grid"]
      if "text_emb" in outputs:
        patch_emb = l2_normalize(image_proj(extras["tokens"]))
        text_emb = repeat_views(outputs["text_emb"], views)
        sim = jnp.einsum("bnd,bd->bn", patch_emb, text_emb)
        outputs["patch_text_sim"] = sim.reshape(-1, *grid)

    # The two scalars stay float32 whatever param_dtype is: in bfloat16, log(1/tau) ~ 2.7 moves
    # in steps of 1/64, which would swallow every optimizer update.
    log_scale = self.scalar("logit_scale", math.log(1.0 / self.temperature_init))
    outputs["logit_scale"] = jnp.exp(jnp.minimum(log_scale, math.log(MAX_LOGIT_SCALE)))
    outputs["logit_bias"] = self.scalar("logit_bias", self.bias_init)
    return outputs, views

  def scalar(self, name: str, value: float) -> jax.Array:
    return self.param(name, partitioned(nn.initializers.constant(value), ()), (), jnp.float32)

  def flops_per_example(self, input_config) -> float:
    """Analytic forward FLOPs of one example of `input_config` (its `num_views` images and
    its title, where those modalities are in): the matmuls of both towers and projections
    (norms, softmaxes and the loss are negligible)."""
    flops = 0.0
    if "image" in input_config.modalities:
      vit_size, patch = vit.ViT(**self.image, parent=None).shape()
      num_patches = (input_config.image_size // patch) ** 2
      image = (2 * num_patches * patch * patch * 3 * vit_size.width
               + transformer_flops(num_patches, *vit_size)
               + 2 * vit_size.width * self.embed_dim)
      flops += input_config.num_views * image
    if "text" in input_config.modalities:
      text_size = text_lib.TextTransformer(**self.text, parent=None).size()
      flops += (transformer_flops(input_config.max_text_len, *text_size)
                + 2 * text_size.width * self.embed_dim)
    return float(flops)
