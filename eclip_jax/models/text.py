"""CLIP-style text transformer.

    tokens [B,T] int32, mask [B,T] bool -> token + position embedding -> Encoder (final LN)
    -> pooled [B,width], per-position features [B,T,width]

The tokenizer lays a text out as `BOS pieces... EOS PAD...` with `mask` True on BOS..EOS
(eclip_jax/data/tokenizer.py). Two poolings:

- `"eos"` (CLIP): causal attention, pooled = the features at EOS, position `sum(mask) - 1`,
  which by causality have seen the whole text and nothing after it.
- `"cls"`: bidirectional attention, pooled = the features at BOS (position 0).

Both also mask padding keys, so no position ever attends to padding: the features at text
positions do not depend on what fills the padding.

Variants: `"tiny"` (CPU tests), `"S"`, `"B"` (CLIP's text tower), `"L"`. As in the ViT,
`activation`, `norm_eps` and `width` / `depth` / `num_heads` / `mlp_dim` (each replacing the
variant's when set) let the tower hold an imported CLIP text tower exactly
(eclip_jax/interop.py). CLIP pools at its EOS token, which `"eos"` pooling finds as the last
masked-in position when the mask covers BOS..EOS.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from eclip_jax.models import layers
from eclip_jax.models.layers import DType, TowerSize, partitioned

SIZES = {
    "tiny": TowerSize(width=64, depth=2, num_heads=2, mlp_dim=256),
    "mini": TowerSize(width=128, depth=4, num_heads=4, mlp_dim=512),
    "S": TowerSize(width=384, depth=12, num_heads=6, mlp_dim=1536),
    "B": TowerSize(width=512, depth=12, num_heads=8, mlp_dim=2048),
    "L": TowerSize(width=768, depth=12, num_heads=12, mlp_dim=3072),
}
POOLS = ("eos", "cls")


class TextTransformer(nn.Module):
  """Text tower: (`tokens` [B,T], `mask` [B,T]) -> (pooled [B,width], {"tokens"})."""

  variant: str
  vocab_size: int
  max_len: int
  pool: str = "eos"
  activation: str = layers.DEFAULT_ACTIVATION
  norm_eps: float = layers.DEFAULT_NORM_EPS
  width: int | None = None
  depth: int | None = None
  num_heads: int | None = None
  mlp_dim: int | None = None
  scan_layers: bool = False
  remat_policy: str = "none"
  attention_impl: str = "xla"  # layers.ATTENTION_IMPLS
  dtype: DType = jnp.float32
  param_dtype: DType = jnp.float32

  def size(self) -> TowerSize:
    """The variant's size, with the size fields that are set."""
    if self.variant not in SIZES:
      raise ValueError(f"text variant={self.variant!r} is not one of {tuple(SIZES)}")
    return SIZES[self.variant].override(width=self.width, depth=self.depth,
                                        num_heads=self.num_heads, mlp_dim=self.mlp_dim)

  @nn.compact
  def __call__(self, tokens: jax.Array, mask: jax.Array) -> tuple[jax.Array, dict]:
    size = self.size()
    if self.pool not in POOLS:
      raise ValueError(f"text pool={self.pool!r} is not one of {POOLS}")
    length = tokens.shape[1]
    if length > self.max_len:
      raise ValueError(
          f"text length {length} exceeds the text tower's max_len={self.max_len}; raise "
          "max_len or shorten input.max_text_len"
      )

    token_embed = self.param(
        "token_embed",
        partitioned(nn.initializers.normal(stddev=0.02), ("vocab", "embed")),
        (self.vocab_size, size.width),
        self.param_dtype,
    )
    # Gather the table's `embed` shards before the lookup, as FSDP does for every weight at
    # its use: left alone, XLA cannot move the looked-up rows from the table's `embed`
    # sharding to the activations' `batch` sharding and replicates them instead.
    token_embed = nn.with_logical_constraint(token_embed.astype(self.dtype), ("vocab", None))
    x = jnp.take(token_embed, tokens, axis=0)
    pos_embed = self.param(
        "pos_embed",
        partitioned(nn.initializers.normal(stddev=0.01), (None, "length", "embed")),
        (1, self.max_len, size.width),
        self.param_dtype,
    )
    x = x + pos_embed[:, :length].astype(self.dtype)

    key_mask = mask.astype(bool)[:, None, None, :]  # [B, 1 (heads), 1 (queries), T]
    x = layers.Encoder(
        size.depth,
        size.num_heads,
        size.mlp_dim,
        causal=self.pool == "eos",
        scan_layers=self.scan_layers,
        remat_policy=self.remat_policy,
        attention_impl=self.attention_impl,
        dtype=self.dtype,
        param_dtype=self.param_dtype,
        activation=self.activation,
        norm_eps=self.norm_eps,
        name="encoder",
    )(x, key_mask)

    if self.pool == "eos":
      # An all-padding row (a missing text) pools position 0 rather than indexing -1.
      eos_position = jnp.maximum(jnp.sum(mask, axis=1, dtype=jnp.int32) - 1, 0)
      pooled = jnp.take_along_axis(x, eos_position[:, None, None], axis=1)[:, 0]
    else:
      pooled = x[:, 0]
    return pooled, {"tokens": x}
