"""Model modules: shapes and contracts, attention and causality against references, scan /
remat equivalence, logical partitioning, and parameter counts of the standard sizes."""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from eclip_jax import models
from eclip_jax.models import layers, text, two_tower, vit

VOCAB, TEXT_LEN, IMAGE_SIZE, EMBED_DIM = 100, 16, 32, 32
LOGICAL_NAMES = {"batch", "embed", "mlp", "heads", "kv", "vocab", "joint", "length", "layers", None}
# The layout the deployed configs shard with (parallel.DEFAULT_SHARDING_RULES at writing).
RULES = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("vocab", "tensor"),
)


def tiny_two_tower(**overrides) -> two_tower.TwoTower:
  fields = dict(
      image={"variant": "tiny", "patch_size": 8, "pool": "map"},
      text={"variant": "tiny", "vocab_size": VOCAB, "max_len": TEXT_LEN, "pool": "eos"},
      embed_dim=EMBED_DIM,
  )
  return two_tower.TwoTower(**(fields | overrides))


def text_batch(lengths, seed=0, length=TEXT_LEN):
  """Tokenizer layout: BOS, random pieces, EOS, PAD=0; `lengths` counts BOS..EOS."""
  rng = np.random.default_rng(seed)
  tokens = np.zeros((len(lengths), length), np.int32)
  for row, n in enumerate(lengths):
    tokens[row, :n] = [2, *rng.integers(4, VOCAB, n - 2), 3]
  return jnp.asarray(tokens), jnp.asarray(tokens != 0)


def image_batch(batch_size, seed=0, height=IMAGE_SIZE, width=IMAGE_SIZE):
  rng = np.random.default_rng(seed)
  return jnp.asarray(rng.uniform(-1, 1, (batch_size, height, width, 3)), jnp.float32)


def full_batch(batch_size=4, seed=0):
  tokens, mask = text_batch([5, 16, 9, 3][:batch_size], seed)
  return {"image": image_batch(batch_size, seed), "text_tokens": tokens, "text_mask": mask}


def stack_layers(tree):
  """Unscanned params (`block_0` ... `block_{n-1}`) -> the scanned layout (`blocks`, stacked)."""
  if not isinstance(tree, dict):
    return tree
  blocks = sorted((k for k in tree if k.startswith("block_")), key=lambda k: int(k[6:]))
  stacked = {k: stack_layers(v) for k, v in tree.items() if k not in blocks}
  if blocks:
    stacked["blocks"] = jax.tree.map(lambda *xs: jnp.stack(xs), *(tree[k] for k in blocks))
  return stacked


@pytest.fixture(scope="module")
def tiny():
  """The tiny two-tower (unscanned, MAP image pooling, EOS text pooling), its batch and its
  unboxed variables, initialized once (init compiles for seconds on CPU). Every test jits its
  applies: running a model op by op costs seconds more than compiling it."""
  model, batch = tiny_two_tower(), full_batch()
  return model, batch, nn.unbox(jax.jit(model.init)(jax.random.key(0), batch))


def random_variables(module, *inputs, seed=0):
  """Variables shaped as `module.init` makes them, drawn from N(0, 0.1) with numpy.

  For tests that need some parameters, not a particular initialization: on CPU, compiling
  init's random number generation takes seconds per model.
  """
  abstract = nn.unbox(jax.eval_shape(module.init, jax.random.key(0), *inputs))
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda a: jnp.asarray(rng.normal(0, 0.1, a.shape), a.dtype), abstract)


def param_count(module, *inputs) -> int:
  abstract = jax.eval_shape(module.init, jax.random.key(0), *inputs)
  return sum(leaf.size for leaf in jax.tree.leaves(nn.unbox(abstract)))


# ---------------------------------------------------------------------------- two tower


def test_two_tower_outputs_and_scalars(tiny):
  model, batch, variables = tiny
  apply = jax.jit(model.apply)
  out = apply(variables, batch)

  assert set(out) == {"image_emb", "text_emb", "image_tokens", "image_grid", "text_tokens_out",
                      "patch_text_sim", "logit_scale", "logit_bias"}
  assert out["patch_text_sim"].shape == (4, 4, 4)
  assert out["image_emb"].shape == out["text_emb"].shape == (4, EMBED_DIM)
  assert out["image_emb"].dtype == out["text_emb"].dtype == jnp.float32
  np.testing.assert_allclose(jnp.linalg.norm(out["image_emb"], axis=-1), 1.0, rtol=1e-6)
  np.testing.assert_allclose(jnp.linalg.norm(out["text_emb"], axis=-1), 1.0, rtol=1e-6)
  assert out["image_tokens"].shape == (4, (IMAGE_SIZE // 8) ** 2, 64)
  assert tuple(map(int, out["image_grid"])) == (4, 4)  # Python ints, until jit returns them
  assert out["text_tokens_out"].shape == (4, TEXT_LEN, 64)
  assert out["logit_scale"].shape == out["logit_bias"].shape == ()
  assert out["logit_scale"].dtype == out["logit_bias"].dtype == jnp.float32
  np.testing.assert_allclose(out["logit_scale"], 1 / 0.07, rtol=1e-6)
  assert float(out["logit_bias"]) == -10.0

  params = dict(variables["params"])
  params["logit_scale"] = jnp.float32(math.log(1000.0))  # above the clip at log(100)
  np.testing.assert_allclose(apply({"params": params}, batch)["logit_scale"], 100.0, rtol=1e-6)


def test_two_tower_runs_only_the_towers_given(tiny):
  model, batch, variables = tiny
  apply = jax.jit(model.apply)
  both = apply(variables, batch)

  images_only = apply(variables, {"image": batch["image"]})
  assert set(images_only) == {"image_emb", "image_tokens", "image_grid", "logit_scale",
                              "logit_bias"}
  np.testing.assert_allclose(images_only["image_emb"], both["image_emb"], atol=1e-6)

  texts_only = apply(variables, {k: batch[k] for k in ("text_tokens", "text_mask")})
  assert set(texts_only) == {"text_emb", "text_tokens_out", "logit_scale", "logit_bias"}
  np.testing.assert_allclose(texts_only["text_emb"], both["text_emb"], atol=1e-6)


def test_the_image_tower_refuses_unscaled_uint8_pixels(tiny):
  model, batch, variables = tiny
  pixels = {"image": np.zeros(batch["image"].shape, np.uint8)}
  with pytest.raises(TypeError, match="float pixels in input.value_range, not uint8"):
    model.apply(variables, pixels)


def test_two_tower_bfloat16_compute_keeps_float32_params_and_embeddings(tiny):
  model, batch, variables = tiny
  bf16_model = tiny_two_tower(dtype="bfloat16", param_dtype="float32")
  abstract = jax.eval_shape(bf16_model.init, jax.random.key(0), batch)
  assert {leaf.dtype for leaf in jax.tree.leaves(nn.unbox(abstract))} == {jnp.dtype("float32")}

  out = jax.jit(bf16_model.apply)(variables, batch)
  assert out["image_tokens"].dtype == out["text_tokens_out"].dtype == jnp.bfloat16
  assert out["image_emb"].dtype == out["text_emb"].dtype == jnp.float32
  np.testing.assert_allclose(jnp.linalg.norm(out["image_emb"], axis=-1), 1.0, rtol=1e-6)
  # bfloat16 has 8 mantissa bits: the embeddings agree with float32 to about 1e-2.
  want = jax.jit(model.apply)(variables, batch)["image_emb"]
  np.testing.assert_allclose(out["image_emb"], want, atol=5e-2)


def test_build_model_from_config():
  config = ml_collections.ConfigDict({
      "name": "two_tower",
      "image": {"variant": "tiny", "patch_size": 8, "pool": "gap"},
      "text": {"variant": "tiny", "vocab_size": VOCAB, "max_len": TEXT_LEN, "pool": "cls"},
      "embed_dim": 24,
      "temperature_init": 0.1,
  })
  model = models.build_model(config)
  assert isinstance(model, two_tower.TwoTower)
  assert model.image["pool"] == "gap" and model.text["pool"] == "cls"
  assert model.embed_dim == 24 and model.temperature_init == 0.1

  with pytest.raises(ValueError, match="two_tower"):
    models.build_model(ml_collections.ConfigDict({"name": "siamese"}))
  config.embed_width = 3
  with pytest.raises(ValueError, match="model.embed_width"):
    models.build_model(config)


# ---------------------------------------------------------------------------- layers


def reference_attention(params, inputs_q, inputs_kv, mask):
  """Plain einsum/softmax multi-head attention with the module's parameters."""
  def project(name, x):
    return jnp.einsum("bte,ehd->bthd", x, params[name]["kernel"]) + params[name]["bias"]

  query, key, value = project("query", inputs_q), project("key", inputs_kv), project("value", inputs_kv)
  logits = jnp.einsum("bqhd,bkhd->bhqk", query, key) / math.sqrt(query.shape[-1])
  weights = jax.nn.softmax(jnp.where(mask, logits, -jnp.inf), axis=-1)
  encoded = jnp.einsum("bhqk,bkhd->bqhd", weights, value)
  return jnp.einsum("bqhd,hde->bqe", encoded, params["out"]["kernel"]) + params["out"]["bias"]


@pytest.mark.parametrize("causal", [False, True])
def test_attention_matches_einsum_reference(causal):
  rng = np.random.default_rng(0)
  batch, queries, keys, width, heads = 3, 5, 7 if not causal else 5, 16, 4
  inputs_q = jnp.asarray(rng.normal(size=(batch, queries, width)), jnp.float32)
  inputs_kv = jnp.asarray(rng.normal(size=(batch, keys, width)), jnp.float32)
  mask = rng.random((batch, heads, queries, keys)) < 0.6
  mask[..., 0] = True  # every query keeps a key
  mask = jnp.asarray(mask)
  attention = layers.MultiHeadAttention(num_heads=heads, causal=causal)
  # Random (so non-zero) biases too, so a mixed-up bias would show.
  params = random_variables(attention, inputs_q, inputs_kv, mask)["params"]

  got = jax.jit(attention.apply)({"params": params}, inputs_q, inputs_kv, mask)
  reference_mask = mask & jnp.tril(jnp.ones((queries, keys), bool)) if causal else mask
  want = reference_attention(params, inputs_q, inputs_kv, reference_mask)
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def test_scanned_encoder_equals_unrolled_with_stacked_params(tiny):
  model, batch, unrolled_vars = tiny
  scanned = tiny_two_tower(scan_layers=True)
  scanned_shapes = jax.tree.map(jnp.shape, nn.unbox(jax.eval_shape(scanned.init,
                                                                   jax.random.key(0), batch)))
  stacked = stack_layers(unrolled_vars)
  assert jax.tree.map(jnp.shape, stacked) == scanned_shapes

  want = jax.jit(model.apply)(unrolled_vars, batch)
  got = jax.jit(scanned.apply)(stacked, batch)
  for key in ("image_emb", "text_emb", "image_tokens", "text_tokens_out"):
    np.testing.assert_allclose(got[key], want[key], atol=1e-5, err_msg=key)


@pytest.mark.parametrize("scan_layers", [False, True])
def test_remat_policies_match_no_remat(scan_layers):
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 6, 32)), jnp.float32)
  mask = jnp.ones((2, 1, 1, 6), bool).at[1, ..., 4:].set(False)

  def encoder(policy):
    return layers.Encoder(depth=2, num_heads=2, mlp_dim=64, causal=True,
                          scan_layers=scan_layers, remat_policy=policy)

  # Remat changes no parameter, so one set serves every policy.
  params = random_variables(encoder("none"), x, mask)["params"]

  def loss_and_grads(policy, params, x):
    loss = lambda p, x: jnp.sum(encoder(policy).apply({"params": p}, x, mask) ** 2)  # noqa: E731
    return jax.value_and_grad(loss, argnums=(0, 1))(params, x)

  # One jit for all policies: compiling is most of this test's time.
  policies = ("none", "full", "dots", "dots_no_batch")
  results = jax.jit(lambda p, x: [loss_and_grads(policy, p, x) for policy in policies])(params, x)
  for policy, got in zip(policies[1:], results[1:]):
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6,
                                                         err_msg=policy), got, results[0])

  # ... and each policy did reach jax.checkpoint.
  traced_policy = {"none": None, "full": "policy=None",
                   "dots": "DotsSaveable(only_if_no_batch_dims=False)",
                   "dots_no_batch": "DotsSaveable(only_if_no_batch_dims=True)"}
  for policy, expected in traced_policy.items():
    jaxpr = str(jax.make_jaxpr(lambda p, x: loss_and_grads(policy, p, x))(params, x))  # noqa: B023
    assert ("policy=" in jaxpr) == (expected is not None), policy
    assert expected is None or expected in jaxpr, policy

  with pytest.raises(ValueError, match="remat_policy='everything'"):
    loss_and_grads("everything", params, x)


@pytest.mark.parametrize("scan_layers", [False, True])
def test_every_param_has_a_logical_spec_of_its_rank(scan_layers):
  model = tiny_two_tower(scan_layers=scan_layers)
  abstract = jax.eval_shape(model.init, jax.random.key(0), full_batch())
  boxes = jax.tree.leaves(abstract, is_leaf=lambda x: isinstance(x, nn.Partitioned))
  assert len(boxes) > 20
  for box in boxes:
    assert isinstance(box, nn.LogicallyPartitioned), box
    assert len(box.names) == box.value.ndim, box
    assert set(box.names) <= LOGICAL_NAMES, box.names
  # nn.Partitioned leaves only: a plain array would be a leaf of its own.
  assert len(boxes) == len(jax.tree.leaves(abstract))

  specs = nn.get_partition_spec(abstract)["params"]
  attention = "blocks" if scan_layers else "block_0"
  query_spec = specs["text_tower"]["encoder"][attention]["attn"]["query"]["kernel"]
  assert tuple(query_spec) == (("layers",) if scan_layers else ()) + ("embed", "heads", "kv")
  assert tuple(specs["text_tower"]["token_embed"]) == ("vocab", "embed")
  assert tuple(specs["image_proj"]["kernel"]) == ("embed", "joint")
  assert tuple(specs["logit_scale"]) == ()


def test_sharded_apply_matches_single_device(tiny):
  """The logical names map onto a 2x2x2 (data, fsdp, tensor) mesh and change no number."""
  mesh = jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"),
                       axis_types=(jax.sharding.AxisType.Auto,) * 3)
  model, batch, variables = tiny
  scanned = tiny_two_tower(scan_layers=True)
  abstract = jax.eval_shape(scanned.init, jax.random.key(0), batch)
  shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(abstract), mesh, RULES)
  sharded_vars = jax.device_put(stack_layers(variables), nn.unbox(shardings))
  kernel = sharded_vars["params"]["text_tower"]["encoder"]["blocks"]["mlp"]["fc1"]["kernel"]
  assert kernel.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor")

  batch = {k: jnp.concatenate([v, v]) for k, v in batch.items()}  # 8 rows, one per device
  sharded_batch = jax.device_put(
      batch, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(("data", "fsdp"))))
  with jax.set_mesh(mesh), nn.logical_axis_rules(RULES):
    sharded = jax.jit(scanned.apply)(sharded_vars, sharded_batch)
  single = jax.jit(model.apply)(variables, batch)
  for key in ("image_emb", "text_emb"):
    np.testing.assert_allclose(sharded[key], single[key], atol=1e-5, err_msg=key)


# ---------------------------------------------------------------------------- text tower


def text_tower_vars(tiny):
  """The tiny model's text-tower variables; both poolings have the same parameters."""
  return {"params": tiny[2]["params"]["text_tower"]}


def test_text_eos_pooling_is_causal_and_ignores_padding(tiny):
  tower = text.TextTransformer("tiny", VOCAB, TEXT_LEN, pool="eos")
  tokens, mask = text_batch([9, 12])
  variables, apply = text_tower_vars(tiny), jax.jit(tower.apply)
  pooled, extras = apply(variables, tokens, mask)
  features = extras["tokens"]
  np.testing.assert_allclose(pooled, features[jnp.arange(2), jnp.array([8, 11])], atol=0)

  # A different token at position t + 1 = 5 leaves positions <= 4 alone, but not the EOS.
  changed = apply(variables, tokens.at[:, 5].set(77), mask)
  np.testing.assert_allclose(changed[1]["tokens"][:, :5], features[:, :5], atol=1e-6)
  assert np.abs(changed[1]["tokens"][:, 5] - features[:, 5]).max() > 1e-3
  assert np.abs(changed[0] - pooled).max() > 1e-3

  # Different padding ids (after EOS), or less padding, leave the text positions and the pool.
  noisy = apply(variables, tokens.at[0, 9:].set(55), mask)
  np.testing.assert_allclose(noisy[0], pooled, atol=1e-6)
  np.testing.assert_allclose(noisy[1]["tokens"][0, :9], features[0, :9], atol=1e-6)
  short_pooled, _ = apply(variables, tokens[:1, :9], mask[:1, :9])
  np.testing.assert_allclose(short_pooled[0], pooled[0], atol=1e-5)


def test_text_cls_pooling_is_bidirectional_and_ignores_padding(tiny):
  tower = text.TextTransformer("tiny", VOCAB, TEXT_LEN, pool="cls")
  tokens, mask = text_batch([9, 12])
  variables, apply = text_tower_vars(tiny), jax.jit(tower.apply)
  pooled, extras = apply(variables, tokens, mask)
  np.testing.assert_allclose(pooled, extras["tokens"][:, 0], atol=0)

  # Position 0 sees the whole text ...
  assert np.abs(apply(variables, tokens.at[:, 5].set(77), mask)[0] - pooled).max() > 1e-3
  # ... but no padding.
  np.testing.assert_allclose(apply(variables, tokens.at[0, 9:].set(55), mask)[0], pooled,
                             atol=1e-6)
  short_pooled, _ = apply(variables, tokens[:1, :9], mask[:1, :9])
  np.testing.assert_allclose(short_pooled[0], pooled[0], atol=1e-5)


def test_text_b_matches_clip_text_tower_param_count():
  tokens, mask = jnp.zeros((1, 77), jnp.int32), jnp.ones((1, 77), bool)
  # OpenAI CLIP ViT-B/32's text side is 63,428,097 params, of which the 512x512
  # text_projection (262,144) and logit_scale (1) live in our TwoTower instead.
  assert param_count(text.TextTransformer("B", 49_408, 77), tokens, mask) == 63_165_952


# ---------------------------------------------------------------------------- image tower


@pytest.mark.parametrize("pool", ["cls", "gap", "map"])
def test_vit_pooling_shapes(pool):
  tower = vit.ViT("tiny", patch_size=8, pool=pool)
  images = image_batch(2, height=32, width=16)
  variables = random_variables(tower, images)
  pooled, extras = jax.jit(tower.apply)(variables, images)
  assert pooled.shape == (2, 64)
  assert tuple(map(int, extras["grid"])) == (4, 2)
  assert extras["tokens"].shape == (2, 8, 64)  # patches only, no [CLS]
  if pool == "gap":
    np.testing.assert_allclose(pooled, extras["tokens"].mean(axis=1), atol=1e-6)
  assert ("cls_token" in variables["params"]) == (pool == "cls")
  assert ("map_head" in variables["params"]) == (pool == "map")


def test_vit_variants_param_counts():
  images = jnp.zeros((1, 224, 224, 3))
  # ViT-S/16 without a classifier head: ~21.7M (timm's vit_small_patch16_224 minus its head).
  assert abs(param_count(vit.ViT("S/16"), images) / 21.7e6 - 1) < 0.02
  # ViT-B/16 without a head: ~85.8M.
  assert abs(param_count(vit.ViT("B/16"), images) / 85.8e6 - 1) < 0.02


def test_vit_variant_errors():
  images = jnp.zeros((1, 32, 32, 3))
  for variant, patch_size, match in [("H/14", None, "variant='H/14'"), ("B", None, "variant='B'"),
                                     ("B/16", 8, "patch_size=8"), ("tiny", 5, "divisible")]:
    with pytest.raises(ValueError, match=match):
      jax.eval_shape(vit.ViT(variant, patch_size=patch_size).init, jax.random.key(0), images)
  assert vit.parse_variant("L/14") == (vit.SIZES["L"], 14)
  assert vit.parse_variant("tiny") == (vit.SIZES["tiny"], 8)


def test_analytic_flops_match_xla_cost_analysis():
  """The MFU numerator: the analytic count is close to XLA's count of the compiled forward."""
  model = models.build_model(ml_collections.ConfigDict({
      "name": "two_tower", "embed_dim": 64,
      "image": {"variant": "mini/8", "pool": "gap"},
      "text": {"variant": "mini", "vocab_size": 500, "max_len": 16, "pool": "eos"},
  }))
  batch = {"image": jnp.zeros((4, 64, 64, 3)), "text_tokens": jnp.ones((4, 16), jnp.int32),
           "text_mask": jnp.ones((4, 16), bool)}
  params = jax.eval_shape(model.init, jax.random.key(0), batch)
  compiled = jax.jit(model.apply).lower(params, batch).compile()
  xla_flops = compiled.cost_analysis()["flops"] / 4
  input_config = ml_collections.ConfigDict(
      {"modalities": ("image", "text"), "image_size": 64, "max_text_len": 16, "num_views": 1})
  assert model.flops_per_example(input_config) == pytest.approx(xla_flops, rel=0.1)


def _config(name: str) -> ml_collections.ConfigDict:
  from configs import clip, eclip, scale  # pylint: disable=g-import-not-at-top
  return {"clip": clip, "eclip": eclip, "scale": scale}[name].get_config("tiny")


@pytest.mark.parametrize("name", ["clip", "eclip", "scale"])
def test_attention_impl_reaches_every_encoder_attention(name, monkeypatch):
  from eclip_jax import trainer  # pylint: disable=g-import-not-at-top
  kernels = []
  fused_attention = jax.nn.dot_product_attention

  def recording(*args, implementation=None, **kwargs):
    kernels.append(implementation)
    return fused_attention(*args, **kwargs)  # XLA's: "cudnn" is only traced here, never run

  monkeypatch.setattr(jax.nn, "dot_product_attention", recording)
  monkeypatch.setattr(layers, "check_attention_impl", lambda impl: None)  # allow it on CPU
  config = _config(name)
  config.model.attention_impl = "cudnn"
  trainer.Setup(config)  # traces init: every attention layer of the model once
  # ECLIP's instance decoder keeps XLA for self-attention among its few queries (its
  # cross-attention computes the weights explicitly, for the instance maps).
  expected_xla = config.model.decoder.depth if name == "eclip" else 0
  assert kernels.count("xla") == expected_xla and kernels.count("cudnn") >= 2, kernels
  assert set(kernels) <= {"xla", "cudnn"}


def test_attention_impl_misconfigured():
  from eclip_jax import cli, trainer  # pylint: disable=g-import-not-at-top
  config = _config("clip")
  for impl, message in [
      ("cudnn", "attention_impl='cudnn' (cuDNN flash attention) needs a GPU; this run's "
                "backend is cpu: use 'xla'"),
      ("flash", "attention_impl='flash' is not one of ('xla', 'cudnn')"),
  ]:
    config.model.attention_impl = impl
    with pytest.raises(ValueError) as error:
      trainer.Setup(config)
    assert cli.one_line(error.value) == message
