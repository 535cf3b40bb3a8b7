"""Pre-LayerNorm transformer pieces shared by every tower.

Every parameter is created through `nn.with_logical_partitioning`, so a parameter tree from
`jax.eval_shape(model.init, ...)` names each axis with one of the logical names

    embed   model width             mlp     MLP hidden width
    heads   attention heads         kv      per-head width
    vocab   token ids               length  sequence positions
    joint   joint embedding width   layers  stacked layers of a scanned encoder

and a config's `sharding_rules` decides which mesh axes they live on. Activations are
constrained to `ACTIVATION_AXES` at block boundaries, which is where XLA's sharding
propagation most needs a hint.

`Encoder` can scan its blocks (`nn.scan`: one compiled block, parameters stacked on a leading
`layers` axis) and rematerialize them (`nn.remat` with one of `REMAT_POLICIES`).

The MLP's `activation` (one of `ACTIVATIONS`) and the LayerNorms' `norm_eps` are fields
so that imported checkpoints (OpenAI CLIP: QuickGELU, eps 1e-5; eclip_jax/interop.py) run
exactly as trained; the defaults are what every model of this codebase trains with.

`attention_impl` picks `jax.nn.dot_product_attention`'s kernel (one of `ATTENTION_IMPLS`):
"xla" (any backend) or "cudnn" (cuDNN's fused flash attention: GPU only, float16/bfloat16,
head dims up to 128; cuDNN raises for shapes it does not support).
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

DType = Any  # a jnp dtype (or anything `jnp.dtype` accepts)

ACTIVATION_AXES = ("batch", "length", "embed")

# What each remat policy saves for the backward pass; "none" turns remat off.
_CHECKPOINT_POLICIES = {
    "full": None,  # save nothing: recompute the whole block
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}
REMAT_POLICIES = ("none", *_CHECKPOINT_POLICIES)

ATTENTION_IMPLS = ("xla", "cudnn")


def check_attention_impl(attention_impl: str) -> None:
  if attention_impl not in ATTENTION_IMPLS:
    raise ValueError(f"attention_impl={attention_impl!r} is not one of {ATTENTION_IMPLS}")
  if attention_impl == "cudnn" and jax.default_backend() != "gpu":
    raise ValueError(f"attention_impl='cudnn' (cuDNN flash attention) needs a GPU; this "
                     f"run's backend is {jax.default_backend()}: use 'xla'")

partitioned = nn.with_logical_partitioning

ACTIVATIONS = {
    "gelu_tanh": nn.gelu,  # flax's default GELU, the tanh approximation
    "gelu": functools.partial(nn.gelu, approximate=False),  # exact (erf)
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),  # OpenAI CLIP's
}
DEFAULT_ACTIVATION = "gelu_tanh"
DEFAULT_NORM_EPS = 1e-6  # flax's LayerNorm default


class TowerSize(NamedTuple):
  """The shape of a transformer tower."""

  width: int
  depth: int
  num_heads: int
  mlp_dim: int

  def override(self, **fields: int | None) -> TowerSize:
    """This size with the fields that are not None replaced (a tower field such as
    `width=48` reshapes a named variant, e.g. to match an imported checkpoint)."""
    return self._replace(**{k: int(v) for k, v in fields.items() if v is not None})


def layer_norm(dtype: DType, param_dtype: DType, name: str | None = None,
               epsilon: float = DEFAULT_NORM_EPS) -> nn.LayerNorm:
  return nn.LayerNorm(
      epsilon=epsilon,
      dtype=dtype,
      param_dtype=param_dtype,
      scale_init=partitioned(nn.initializers.ones, ("embed",)),
      bias_init=partitioned(nn.initializers.zeros, ("embed",)),
      name=name,
  )


class _DenseEinsum(nn.Module):
  """`einsum(equation, x, kernel) + bias` with the kernel's first `num_in_dims` contracted.

  This is nn.DenseGeneral with the kernel created in its real shape. DenseGeneral (flax 0.12)
  initializes a flattened 2-d kernel and reshapes it; with logical axis rules active (a
  sharded init, or nn.scan, which traces the initializers even under apply) unboxing that
  flat kernel constrains it with the 3-d names and fails.
  """

  equation: str
  kernel_shape: tuple[int, ...]
  kernel_axes: tuple[str | None, ...]
  num_in_dims: int
  dtype: DType = jnp.float32
  param_dtype: DType = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    num_dims = len(self.kernel_shape)
    kernel_init = nn.initializers.xavier_uniform(
        in_axis=tuple(range(self.num_in_dims)), out_axis=tuple(range(self.num_in_dims, num_dims))
    )
    kernel = self.param(
        "kernel", partitioned(kernel_init, self.kernel_axes), self.kernel_shape, self.param_dtype
    )
    bias = self.param(
        "bias",
        partitioned(nn.initializers.zeros, self.kernel_axes[self.num_in_dims:]),
        self.kernel_shape[self.num_in_dims:],
        self.param_dtype,
    )
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    return jnp.einsum(self.equation, x, kernel) + bias


class MultiHeadAttention(nn.Module):
  """Multi-head dot-product attention from `inputs_q` to `inputs_kv` (self-attention if None).

  `mask` is boolean, broadcastable to [B, heads, Q, K], True where a query may attend to a
  key; `causal` additionally hides keys after each query. With `return_weights`, the call
  returns `(output, weights)`, weights [B, heads, Q, K] in float32: the attention is then
  computed explicitly rather than by the fused kernel (the instance decoder's maps).
  """

  num_heads: int
  causal: bool = False
  dtype: DType = jnp.float32
  param_dtype: DType = jnp.float32
  return_weights: bool = False
  attention_impl: str = "xla"

  @nn.compact
  def __call__(self, inputs_q: jax.Array, inputs_kv: jax.Array | None = None,
               mask: jax.Array | None = None):
    inputs_kv = inputs_q if inputs_kv is None else inputs_kv
    width = inputs_q.shape[-1]
    if width % self.num_heads:
      raise ValueError(f"width {width} is not divisible by num_heads={self.num_heads}")
    head_dim = width // self.num_heads
    check_attention_impl(self.attention_impl)

    def project(name):
      return _DenseEinsum(
          "...e,ehd->...hd",
          (width, self.num_heads, head_dim),
          ("embed", "heads", "kv"),
          num_in_dims=1,
          dtype=self.dtype,
          param_dtype=self.param_dtype,
          name=name,
      )

    query = project("query")(inputs_q)
    key = project("key")(inputs_kv)
    value = project("value")(inputs_kv)
    weights = None
    if self.return_weights:
      if self.causal or mask is not None:
        raise ValueError("return_weights supports unmasked, non-causal attention only "
                         "(the instance decoder's cross-attention)")
      logits = jnp.einsum("bqhd,bkhd->bhqk", query, key, preferred_element_type=jnp.float32)
      weights = jax.nn.softmax(logits * head_dim**-0.5, axis=-1)
      encoded = jnp.einsum("bhqk,bkhd->bqhd", weights.astype(value.dtype), value)
    else:
      # Logits and softmax run in float32 whatever the compute dtype.
      encoded = jax.nn.dot_product_attention(query, key, value, mask=mask, is_causal=self.causal,
                                             implementation=self.attention_impl)
    output = _DenseEinsum(
        "...hd,hde->...e",
        (self.num_heads, head_dim, width),
        ("heads", "kv", "embed"),
        num_in_dims=2,
        dtype=self.dtype,
        param_dtype=self.param_dtype,
        name="out",
    )(encoded)
    return (output, weights) if self.return_weights else output


class MlpBlock(nn.Module):
  """Dense -> activation (GELU) -> Dense, back to the input width."""

  mlp_dim: int
  dtype: DType = jnp.float32
  param_dtype: DType = jnp.float32
  activation: str = DEFAULT_ACTIVATION

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if self.activation not in ACTIVATIONS:
      raise ValueError(f"activation={self.activation!r} is not one of {tuple(ACTIVATIONS)}")
    def dense(features, axes, name):
      return nn.Dense(
          features,
          kernel_init=partitioned(nn.initializers.xavier_uniform(), axes),
          bias_init=partitioned(nn.initializers.normal(stddev=1e-6), axes[1:]),
          dtype=self.dtype,
          param_dtype=self.param_dtype,
          name=name,
      )

    width = x.shape[-1]
    x = ACTIVATIONS[self.activation](dense(self.mlp_dim, ("embed", "mlp"), "fc1")(x))
    return dense(width, ("mlp", "embed"), "fc2")(x)


class TransformerBlock(nn.Module):
  """Pre-LN block: x + attn(LN(x)), then x + mlp(LN(x))."""

  num_heads: int
  mlp_dim: int
  causal: bool = False
  dtype: DType = jnp.float32
  param_dtype: DType = jnp.float32
  activation: str = DEFAULT_ACTIVATION
  norm_eps: float = DEFAULT_NORM_EPS
  attention_impl: str = "xla"

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    x = nn.with_logical_constraint(x, ACTIVATION_AXES)
    y = layer_norm(self.dtype, self.param_dtype, name="ln_attn", epsilon=self.norm_eps)(x)
    x = x + MultiHeadAttention(
        self.num_heads, self.causal, self.dtype, self.param_dtype,
        attention_impl=self.attention_impl, name="attn",
    )(y, mask=mask)
    y = layer_norm(self.dtype, self.param_dtype, name="ln_mlp", epsilon=self.norm_eps)(x)
    x = x + MlpBlock(self.mlp_dim, self.dtype, self.param_dtype, self.activation, name="mlp")(y)
    return nn.with_logical_constraint(x, ACTIVATION_AXES)


def _scan_body(block: TransformerBlock, x: jax.Array, mask: jax.Array | None):
  return block(x, mask), None


class Encoder(nn.Module):
  """`depth` transformer blocks and a final LayerNorm.

  Unscanned, the blocks are `block_0` ... `block_{depth-1}`; scanned, they are one `blocks`
  module whose parameters carry a leading `layers` axis of size `depth`. Scanning compiles
  one block instead of `depth`, which matters for compile time at L/14 sizes.
  """

  depth: int
  num_heads: int
  mlp_dim: int
  causal: bool = False
  scan_layers: bool = False
  remat_policy: str = "none"
  dtype: DType = jnp.float32
  param_dtype: DType = jnp.float32
  activation: str = DEFAULT_ACTIVATION
  norm_eps: float = DEFAULT_NORM_EPS
  attention_impl: str = "xla"

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    if self.remat_policy not in REMAT_POLICIES:
      raise ValueError(
          f"remat_policy={self.remat_policy!r} is not one of {REMAT_POLICIES}; pick one of those"
      )
    block_cls = TransformerBlock
    if self.remat_policy != "none":
      # scan already keeps XLA from folding the recomputation back into the forward pass,
      # so prevent_cse's extra barriers would only cost there (see jax.checkpoint's docs).
      block_cls = nn.remat(
          block_cls,
          policy=_CHECKPOINT_POLICIES[self.remat_policy],
          prevent_cse=not self.scan_layers,
      )

    def make_block(name):
      return block_cls(self.num_heads, self.mlp_dim, self.causal, self.dtype, self.param_dtype,
                       self.activation, self.norm_eps, self.attention_impl, name=name)

    if self.scan_layers:
      scan = nn.scan(
          _scan_body,
          variable_axes={"params": 0},
          split_rngs={"params": True},
          in_axes=nn.broadcast,
          length=self.depth,
          metadata_params={nn.PARTITION_NAME: "layers"},
      )
      x, _ = scan(make_block("blocks"), x, mask)
    else:
      for i in range(self.depth):
        x = make_block(f"block_{i}")(x, mask)
    return layer_norm(self.dtype, self.param_dtype, name="ln_final", epsilon=self.norm_eps)(x)
