"""SCALE's unimodal encoders: each turns one modality of the batch into a token sequence.

Every encoder returns an `Encoded`: `tokens` [B,T,W] (after its tower's final LN), `mask`
[B,T] (True where a token exists), and `emb` [B,D], its first token projected to the joint
width and L2-normalized. The first token is the modality's pooled summary:

    text / table   BOS of the text tower, bidirectional (`pool="cls"`)
    image pixels   the ViT's [CLS], then the patch tokens
    image regions  the mean of the region tokens (region feature + box embedding), then them
    video frames   the mean of the per-frame tokens (ViT [CLS] per frame + temporal position)
    video feats    the mean of the per-frame tokens (linear feature + temporal position)
    audio          the mean of the mel-patch tokens (`patch_frames` mel frames per token;
                   1 is the release's linear embedding of each 80-d mel frame)

A missing modality (its mask all False for a row) and padding are *zero-imputed* before
anything reads them (`impute`): whatever a batch holds there, every output is the same, which
is what lets the fusion model promise that a missing modality changes nothing. Masked
modeling hides regions, frames and mel frames the same way (their `*_mlm_mask`), as UNITER
and SCALE zero the hidden features; text and table read their `*_tokens_masked` instead.

The feature encoders run a `layers.Encoder` over their tokens with padding keys masked out,
sized by a dict of `width`, `depth`, `num_heads`, `mlp_dim`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from eclip_jax.data import tokenizer as tokenizer_lib
from eclip_jax.models import layers
from eclip_jax.models import two_tower
from eclip_jax.models import vit
from eclip_jax.models.layers import DType, partitioned


class Encoded(NamedTuple):
  """One modality's encoder output (module docstring)."""

  tokens: jax.Array  # [B,T,W]
  mask: jax.Array  # [B,T] bool
  emb: jax.Array  # [B,D] float32, L2-normalized


def impute(x: jax.Array, keep: jax.Array, fill=0) -> jax.Array:
  """`x` with every position where `keep` [B,T] is False replaced by `fill`."""
  keep = keep.reshape(keep.shape + (1,) * (x.ndim - keep.ndim))
  return jnp.where(keep, x, jnp.asarray(fill, x.dtype))


def dense(features: int, axes: tuple[str | None, str | None], dtype: DType, param_dtype: DType,
          name: str, use_bias: bool = True) -> nn.Dense:
  """A Dense layer whose kernel carries the logical names `axes` (bias: the output's)."""
  return nn.Dense(
      features,
      use_bias=use_bias,
      kernel_init=partitioned(nn.initializers.lecun_normal(), axes),
      bias_init=partitioned(nn.initializers.zeros, axes[1:]),
      dtype=dtype,
      param_dtype=param_dtype,
      name=name,
  )


def joint_embedding(module: nn.Module, pooled: jax.Array, embed_dim: int) -> jax.Array:
  """The pooled token projected to the joint width (`proj`, no bias, as the two-tower's
  projections) and L2-normalized, in float32."""
  proj = dense(embed_dim, ("embed", "joint"), module.dtype, module.param_dtype, "proj",
               use_bias=False)
  return two_tower.l2_normalize(proj(pooled))


class TextEncoder(nn.Module):
  """Title or table text: `tower` (a `text.TextTransformer` with `pool="cls"`, possibly
  shared with another TextEncoder) + this encoder's own projection."""

  tower: nn.Module
  embed_dim: int
  dtype: DType = jnp.float32
  param_dtype: DType = jnp.float32

  @nn.compact
  def __call__(self, tokens: jax.Array, mask: jax.Array) -> Encoded:
    mask = mask.astype(bool)
    pooled, extras = self.tower(impute(tokens, mask, tokenizer_lib.PAD_ID), mask)
    return Encoded(extras["tokens"], mask, joint_embedding(self, pooled, self.embed_dim))


class ImagePixelEncoder(nn.Module):
  """Pixels through a ViT (`tower`: ViT fields; pooling forced to "cls"): [CLS] + patch tokens.

  The batch has no image mask (an example without an image is never made), so every row
  has one; `present` [B] lets a caller mark rows without (their pixels are zero-imputed).
  """

  tower: dict[str, Any]
  embed_dim: int
  scan_layers: bool = False
  remat_policy: str = "none"
  attention_impl: str = "xla"
  dtype: DType = jnp.float32
  param_dtype: DType = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, present: jax.Array) -> Encoded:
    tower = vit.ViT(**{**self.tower, "pool": "cls"}, scan_layers=self.scan_layers,
                    remat_policy=self.remat_policy, attention_impl=self.attention_impl,
                    dtype=self.dtype, param_dtype=self.param_dtype, name="tower")
    pooled, extras = tower(impute(images, present))
    tokens = jnp.concatenate([pooled[:, None], extras["tokens"]], axis=1)
    mask = jnp.broadcast_to(present[:, None], tokens.shape[:2])
    return Encoded(tokens, mask, joint_embedding(self, pooled, self.embed_dim))


class TokenSequenceEncoder(nn.Module):
  """Embedded tokens [B,N,W] + mask [B,N] -> [mean token; tokens] through a transformer.

  The prepended token is the masked mean of the tokens (0 for a row without any): a global
  summary that needs no parameter and sits first, where the fusion model reads a modality.
  `positions` adds a learned position embedding first (time for video and audio; regions
  have their box embedding instead).
  """

  width: int
  depth: int
  num_heads: int
  mlp_dim: int
  embed_dim: int
  positions: bool = True
  scan_layers: bool = False
  remat_policy: str = "none"
  attention_impl: str = "xla"
  dtype: DType = jnp.float32
  param_dtype: DType = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array) -> Encoded:
    if self.positions:
      pos_embed = self.param(
          "pos_embed",
          partitioned(nn.initializers.normal(stddev=0.02), (None, "length", "embed")),
          (1, x.shape[1], self.width),
          self.param_dtype,
      )
      x = x + pos_embed.astype(x.dtype)
    x = impute(x, mask)  # padding tokens carry no position embedding either
    count = jnp.sum(mask, axis=1, keepdims=True, dtype=jnp.float32)
    mean = jnp.sum(x, axis=1) / jnp.maximum(count, 1.0).astype(x.dtype)
    tokens = jnp.concatenate([mean[:, None], x], axis=1)
    mask = jnp.concatenate([jnp.any(mask, axis=1, keepdims=True), mask], axis=1)
    tokens = nn.with_logical_constraint(tokens, layers.ACTIVATION_AXES)
    tokens = layers.Encoder(
        self.depth, self.num_heads, self.mlp_dim, scan_layers=self.scan_layers,
        remat_policy=self.remat_policy, attention_impl=self.attention_impl, dtype=self.dtype,
        param_dtype=self.param_dtype,
        name="encoder",
    )(tokens, mask[:, None, None, :])
    return Encoded(tokens, mask, joint_embedding(self, tokens[:, 0], self.embed_dim))


def _sequence_encoder(module: nn.Module, size: dict[str, int], positions: bool
                      ) -> TokenSequenceEncoder:
  return TokenSequenceEncoder(
      **size, embed_dim=module.embed_dim, positions=positions, scan_layers=module.scan_layers,
      remat_policy=module.remat_policy, attention_impl=module.attention_impl, dtype=module.dtype,
      param_dtype=module.param_dtype,
      name="sequence")


class RegionEncoder(nn.Module):
  """Region features [B,R,2048] and boxes [B,R,5]: a linear embedding of each plus a linear
  embedding of its box, LayerNormed, then the sequence encoder (`size`)."""

  size: dict[str, int]
  embed_dim: int
  scan_layers: bool = False
  remat_policy: str = "none"
  attention_impl: str = "xla"
  dtype: DType = jnp.float32
  param_dtype: DType = jnp.float32

  @nn.compact
  def __call__(self, feats: jax.Array, boxes: jax.Array, mask: jax.Array) -> Encoded:
    width = self.size["width"]
    x = (dense(width, (None, "embed"), self.dtype, self.param_dtype, "feat_embed")(
        impute(feats, mask))
         + dense(width, (None, "embed"), self.dtype, self.param_dtype, "box_embed")(
             impute(boxes, mask)))
    x = layers.layer_norm(self.dtype, self.param_dtype, name="ln_embed")(x)
    return _sequence_encoder(self, self.size, positions=False)(x, mask)


class VideoEncoder(nn.Module):
  """Frames [B,F,H,W,3] through a ViT each (`frame_tower`: ViT fields, [CLS] pooled), or frame
  features [B,F,1024]; either linearly to `size["width"]`, then a learned temporal position
  embedding and the sequence encoder.

  The frame ViT is the image encoder's module but not its parameters: its position
  embedding is sized by the frame grid, which differs from the image's (`input.video_size`).
  """

  size: dict[str, int]
  embed_dim: int
  frame_tower: dict[str, Any] | None = None
  scan_layers: bool = False
  remat_policy: str = "none"
  attention_impl: str = "xla"
  dtype: DType = jnp.float32
  param_dtype: DType = jnp.float32

  @nn.compact
  def __call__(self, frames: jax.Array, mask: jax.Array) -> Encoded:
    mask = mask.astype(bool)
    frames = impute(frames, mask)
    if frames.ndim == 5:  # pixels
      if self.frame_tower is None:
        raise ValueError("model.video.frame_tower (ViT fields) is needed to encode video pixels")
      batch, num_frames = frames.shape[:2]
      pooled, _ = vit.ViT(**{**self.frame_tower, "pool": "cls"}, scan_layers=self.scan_layers,
                          remat_policy=self.remat_policy, attention_impl=self.attention_impl,
                          dtype=self.dtype, param_dtype=self.param_dtype, name="frame_tower")(
          frames.reshape(batch * num_frames, *frames.shape[2:]))
      frames = pooled.reshape(batch, num_frames, -1)
    x = dense(self.size["width"], (None, "embed"), self.dtype, self.param_dtype,
              "frame_embed")(frames)
    return _sequence_encoder(self, self.size, positions=True)(x, mask)


def audio_patches(mel: jax.Array, mask: jax.Array, patch_frames: int
                  ) -> tuple[jax.Array, jax.Array]:
  """[B,T,80] mel frames -> ([B,N,patch_frames*80] patches, [B,N] mask), N = ceil(T/P):
  the last patch is zero-padded; a patch exists when any of its frames does."""
  batch, num_frames, bins = mel.shape
  num_patches = -(-num_frames // patch_frames)
  pad = num_patches * patch_frames - num_frames
  mel = jnp.pad(mel, ((0, 0), (0, pad), (0, 0)))
  mask = jnp.pad(mask, ((0, 0), (0, pad)))
  patches = mel.reshape(batch, num_patches, patch_frames * bins)
  return patches, jnp.any(mask.reshape(batch, num_patches, patch_frames), axis=-1)


class AudioEncoder(nn.Module):
  """Log-mel frames [B,T,80] grouped `patch_frames` at a time, each patch linearly embedded,
  then a temporal position embedding and the sequence encoder (`size`)."""

  size: dict[str, int]
  embed_dim: int
  patch_frames: int = 1
  scan_layers: bool = False
  remat_policy: str = "none"
  attention_impl: str = "xla"
  dtype: DType = jnp.float32
  param_dtype: DType = jnp.float32

  @nn.compact
  def __call__(self, mel: jax.Array, mask: jax.Array) -> Encoded:
    mask = mask.astype(bool)
    patches, patch_mask = audio_patches(impute(mel, mask), mask, self.patch_frames)
    x = dense(self.size["width"], (None, "embed"), self.dtype, self.param_dtype,
              "patch_embed")(patches)
    return _sequence_encoder(self, self.size, positions=True)(x, patch_mask)
