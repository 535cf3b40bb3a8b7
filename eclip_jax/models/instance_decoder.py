"""ECLIP's instance decoder: K learnable instance queries read the image's patch tokens.

    instance_queries [K, width] (learned, broadcast over the batch)
    -> depth x [ self-attention among the queries
                 -> cross-attention from the queries to the patch tokens
                 -> MLP ]              (pre-LN residual blocks, as in the towers)
    -> final LN -> per-query features [B, K, width]

The last layer's cross-attention weights are the *instance maps*: for each query, where in
the image it read from. They are returned per head ([B, heads, K, N], float32), and the
model averages heads and weights queries by the instance selection (models/eclip.py).

The queries carry the logical axis `queries`, so a config's sharding rules can place them
(replicated by default: K is small).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from eclip_jax.models import layers
from eclip_jax.models.layers import DType, partitioned

QUERY_AXES = ("batch", "queries", "embed")


class DecoderLayer(nn.Module):
  """Self-attention among queries -> cross-attention to the tokens -> MLP (pre-LN)."""

  num_heads: int
  mlp_dim: int
  dtype: DType = jnp.float32
  param_dtype: DType = jnp.float32

  @nn.compact
  def __call__(self, queries: jax.Array, tokens: jax.Array) -> tuple[jax.Array, jax.Array]:
    def norm(name):
      return layers.layer_norm(self.dtype, self.param_dtype, name=name)

    def attention(name, return_weights=False):
      return layers.MultiHeadAttention(self.num_heads, dtype=self.dtype,
                                       param_dtype=self.param_dtype,
                                       return_weights=return_weights, name=name)

    queries = nn.with_logical_constraint(queries, QUERY_AXES)
    queries = queries + attention("self_attn")(norm("ln_self")(queries))
    attended, weights = attention("cross_attn", return_weights=True)(
        norm("ln_cross")(queries), tokens)
    queries = queries + attended
    queries = queries + layers.MlpBlock(self.mlp_dim, self.dtype, self.param_dtype, name="mlp")(
        norm("ln_mlp")(queries))
    return nn.with_logical_constraint(queries, QUERY_AXES), weights


class InstanceDecoder(nn.Module):
  """`tokens` [B, N, width] -> ({"features": [B, K, width], "cross_attn": [B, heads, K, N]}).

  The decoder works at the tokens' width; `cross_attn` is the last layer's.
  """

  num_queries: int = 8
  depth: int = 2
  num_heads: int = 2
  mlp_dim: int = 256
  dtype: DType = jnp.float32
  param_dtype: DType = jnp.float32

  @nn.compact
  def __call__(self, tokens: jax.Array) -> dict[str, jax.Array]:
    if self.depth < 1:
      raise ValueError(f"instance decoder depth={self.depth} must be at least 1")
    batch, _, width = tokens.shape
    instance_queries = self.param(
        "instance_queries",
        partitioned(nn.initializers.normal(stddev=0.02), ("queries", "embed")),
        (self.num_queries, width),
        self.param_dtype,
    )
    queries = jnp.broadcast_to(instance_queries.astype(self.dtype),
                               (batch, self.num_queries, width))
    tokens = nn.with_logical_constraint(tokens, layers.ACTIVATION_AXES)
    for i in range(self.depth):
      queries, cross_attn = DecoderLayer(self.num_heads, self.mlp_dim, self.dtype,
                                         self.param_dtype, name=f"layer_{i}")(queries, tokens)
    features = layers.layer_norm(self.dtype, self.param_dtype, name="ln_final")(queries)
    return {"features": features, "cross_attn": cross_attn}

  def flops_per_image(self, num_tokens: int, width: int) -> float:
    """Forward matmul FLOPs for one image: per layer, the query/key/value/out projections
    of both attentions (keys and values of the cross-attention over all tokens), their
    score and mixing matmuls, and the MLP."""
    k, n = self.num_queries, num_tokens
    self_attn = 2 * 4 * k * width * width + 2 * 2 * k * k * width
    cross_attn = 2 * 2 * k * width * width + 2 * 2 * n * width * width + 2 * 2 * k * n * width
    mlp = 2 * 2 * k * width * self.mlp_dim
    return float(self.depth * (self_attn + cross_attn + mlp))
