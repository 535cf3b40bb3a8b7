"""The SCALE model: outputs for every modality and input kind, that missing modalities and
padding change nothing, the fused embedding, the registry, sharding and analytic FLOPs."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from eclip_jax import models
from eclip_jax import trainer
from eclip_jax.data import pipeline
from eclip_jax.metrics import transformer_flops
from eclip_jax.models import scale
from eclip_jax.models import vit

VOCAB, EMBED_DIM, BATCH = 40, 8, 4
TEXT_LEN, TABLE_LEN, IMAGE_SIZE, FRAMES, FRAME_SIZE = 6, 8, 16, 3, 8
REGIONS, MEL_FRAMES, PATCH_FRAMES = 4, 10, 4
SIZE = {"width": 16, "depth": 1, "num_heads": 2, "mlp_dim": 32}
VIT = {"variant": "tiny", "patch_size": 8, **SIZE}
LOGICAL_NAMES = {"batch", "embed", "mlp", "heads", "kv", "vocab", "joint", "length", "layers", None}
RULES = (("batch", ("data", "fsdp")), ("embed", "fsdp"), ("mlp", "tensor"),
         ("heads", "tensor"), ("vocab", "tensor"))
# Rows: 0 has everything; 1 lacks the table; 2 lacks video and audio; 3 lacks regions.
MISSING = {"table": [1], "video": [2], "audio": [2], "image": [3]}


def model_fields(**overrides):
  fields = dict(
      text={"variant": "tiny", "vocab_size": VOCAB, "max_len": TABLE_LEN, **SIZE},
      fusion=SIZE, embed_dim=EMBED_DIM, image=VIT, regions=SIZE,
      video={**SIZE, "frame_tower": VIT}, audio={**SIZE, "patch_frames": PATCH_FRAMES},
  )
  return fields | overrides


def make_batch(kind: str, seed: int = 0) -> dict[str, np.ndarray]:
  """Random inputs of every modality, `kind` "raw" (pixels) or "features", with padding of
  varied length and the rows of MISSING without their modality (their arrays random too)."""
  rng = np.random.default_rng(seed)
  def lengths(maximum, minimum=1):
    return rng.integers(minimum, maximum + 1, BATCH)
  def mask(maximum, name=None):
    m = np.arange(maximum)[None] < lengths(maximum)[:, None]
    m[MISSING.get(name, [])] = False
    return m
  batch = {
      "text_tokens": rng.integers(0, VOCAB, (BATCH, TEXT_LEN)).astype(np.int32),
      "text_mask": mask(TEXT_LEN),
      "table_tokens": rng.integers(0, VOCAB, (BATCH, TABLE_LEN)).astype(np.int32),
      "table_mask": mask(TABLE_LEN, "table"),
      "audio_mel": rng.normal(size=(BATCH, MEL_FRAMES, 80)).astype(np.float32),
      "audio_mel_mask": mask(MEL_FRAMES, "audio"),
  }
  if kind == "raw":
    batch["image"] = rng.uniform(-1, 1, (BATCH, IMAGE_SIZE, IMAGE_SIZE, 3)).astype(np.float32)
    batch["video"] = rng.uniform(-1, 1, (BATCH, FRAMES, FRAME_SIZE, FRAME_SIZE, 3)).astype(
        np.float32)
    batch["video_mask"] = mask(FRAMES, "video")
  else:
    batch["region_feats"] = rng.normal(size=(BATCH, REGIONS, 2048)).astype(np.float32)
    batch["region_boxes"] = rng.uniform(size=(BATCH, REGIONS, 5)).astype(np.float32)
    batch["region_mask"] = mask(REGIONS, "image")
    batch["frame_feats"] = rng.normal(size=(BATCH, FRAMES, 1024)).astype(np.float32)
    batch["frame_mask"] = mask(FRAMES, "video")
  return batch


# The arrays a modality's mask covers, by mask key.
COVERED = {"text_mask": ("text_tokens",), "table_mask": ("table_tokens",),
           "audio_mel_mask": ("audio_mel",), "video_mask": ("video",),
           "region_mask": ("region_feats", "region_boxes"), "frame_mask": ("frame_feats",)}


def perturb(batch, where: dict[str, np.ndarray], seed=1):
  """`batch` with random values in the arrays each mask key of `where` covers, at the
  positions (rows, or rows x tokens) `where[mask key]` is True."""
  rng = np.random.default_rng(seed)
  changed = dict(batch)
  for mask_key, positions in where.items():
    for key in COVERED[mask_key]:
      noise = (rng.integers(0, VOCAB, batch[key].shape).astype(np.int32)
               if batch[key].dtype == np.int32 else
               rng.normal(size=batch[key].shape).astype(np.float32) * 5)
      keep = positions.reshape(positions.shape + (1,) * (batch[key].ndim - positions.ndim))
      changed[key] = np.where(keep, noise, batch[key])
  return changed


def random_variables(model, batch, seed=0):
  """Variables shaped as init makes them, from N(0, 0.2) (init's RNG compiles for seconds)."""
  abstract = nn.unbox(jax.eval_shape(model.init, jax.random.key(0), batch))
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda a: jnp.asarray(rng.normal(0, 0.2, a.shape), a.dtype), abstract)


@pytest.fixture(scope="module", params=["raw", "features"])
def setup(request):
  model = scale.Scale(**model_fields())
  batch = make_batch(request.param)
  return request.param, model, batch, random_variables(model, batch), jax.jit(model.apply)


def test_outputs_of_all_five_modalities(setup):
  kind, _, batch, variables, apply = setup
  out = apply(variables, batch)
  per_modality = {f"{p}{m}{s}" for m in scale.MODALITIES
                  for p, s in (("", "_emb"), ("", "_present"), ("fused_", "_emb"))}
  heads = {"text_mlm_logits", "table_mlm_logits", "audio_mel_pred"}
  heads |= {"region_pred", "frame_pred"} if kind == "features" else {"image_patch_pred"}
  assert set(out) == per_modality | heads | {"fused_emb", "logit_scale", "logit_bias",
                                            "harmonization"}
  np.testing.assert_array_equal(out["harmonization"],
                                variables["params"]["harmonization"]["harmonization"])
  for m in scale.MODALITIES:
    for key in (f"{m}_emb", f"fused_{m}_emb"):
      assert out[key].shape == (BATCH, EMBED_DIM) and out[key].dtype == jnp.float32, key
    present = np.ones(BATCH, bool)
    present[MISSING.get(m, [])] = kind == "raw" and m == "image"  # pixels are always there
    np.testing.assert_array_equal(out[f"{m}_present"], present, err_msg=m)
    norms = np.linalg.norm(out[f"{m}_emb"], axis=-1)
    np.testing.assert_allclose(norms, present.astype(np.float32), atol=1e-5, err_msg=m)
  assert out["text_mlm_logits"].shape == (BATCH, TEXT_LEN, VOCAB)
  assert out["table_mlm_logits"].shape == (BATCH, TABLE_LEN, VOCAB)
  assert out["audio_mel_pred"].shape == (BATCH, MEL_FRAMES, 80)
  if kind == "features":
    assert out["region_pred"].shape == (BATCH, REGIONS, 2048)
    assert out["frame_pred"].shape == (BATCH, FRAMES, 1024)
  else:  # one prediction per 8x8 patch of the 16-pixel image
    assert out["image_patch_pred"].shape == (BATCH, 4, 8 * 8 * 3)
  assert out["logit_scale"].shape == ()
  np.testing.assert_allclose(out["logit_scale"], np.exp(variables["params"]["logit_scale"]),
                             rtol=1e-6)


def test_fused_emb_is_the_sum_of_the_present_fused_embeddings(setup):
  _, _, batch, variables, apply = setup
  out = apply(variables, batch)
  want = sum(np.where(np.asarray(out[f"{m}_present"])[:, None], out[f"fused_{m}_emb"], 0.0)
             for m in scale.MODALITIES)
  np.testing.assert_allclose(out["fused_emb"], want, atol=1e-6)
  for m in scale.MODALITIES:
    missing = ~np.asarray(out[f"{m}_present"])
    np.testing.assert_array_equal(np.asarray(out[f"fused_{m}_emb"])[missing], 0.0)


def _assert_same_outputs(got, want):
  assert set(got) == set(want)
  for key in want:
    np.testing.assert_allclose(got[key], want[key], atol=1e-6, rtol=0, err_msg=key)


def test_a_missing_modality_changes_no_output(setup):
  """Random values in every missing modality's arrays (its rows' masks all False) leave
  every output of every row as it was; the same change to a present row does not."""
  _, _, batch, variables, apply = setup
  want = apply(variables, batch)
  missing = {key: ~batch[key].any(axis=1) for key in COVERED if key in batch}
  assert sum(int(rows.sum()) for rows in missing.values()) >= 3
  _assert_same_outputs(apply(variables, perturb(batch, missing)), want)

  present_row = {"audio_mel_mask": np.arange(BATCH) == 0}  # row 0 has its audio
  changed = apply(variables, perturb(batch, present_row))
  assert np.abs(changed["fused_text_emb"][0] - want["fused_text_emb"][0]).max() > 1e-3


def test_fusion_never_attends_to_a_missing_modality(setup):
  """Where a row lacks a modality, its other modalities' outputs are those of a batch that
  never had that modality at all: the fusion attends to none of its (imputed) tokens."""
  _, _, batch, variables, apply = setup
  full = apply(variables, batch)
  without_table = apply(variables, {k: v for k, v in batch.items() if "table" not in k})
  row = np.array(MISSING["table"])
  for m in ("text", "image", "video", "audio"):
    np.testing.assert_allclose(full[f"fused_{m}_emb"][row], without_table[f"fused_{m}_emb"][row],
                               atol=1e-6, err_msg=m)
  np.testing.assert_allclose(full["fused_emb"][row], without_table["fused_emb"][row], atol=1e-6)
  # A row that has its table is changed by it (the comparison above can fail).
  assert np.abs(full["fused_text_emb"][0] - without_table["fused_text_emb"][0]).max() > 1e-3


def test_mlm_slots_score_the_masked_positions_only(setup):
  """With `mlm_slots`, the vocabulary heads run on each row's masked positions (in order,
  then unmasked ones to fill K) and give the every-position logits there; nothing else
  changes."""
  _, _, batch, variables, apply = setup
  rng = np.random.default_rng(3)
  batch = dict(batch)
  for name, length in (("text", TEXT_LEN), ("table", TABLE_LEN)):
    targets = np.full((BATCH, length), -1, np.int32)
    for row in range(BATCH):  # 0, 1, 2 and 0 targets
      where = np.sort(rng.choice(length, size=row % 3, replace=False))
      targets[row, where] = rng.integers(0, VOCAB, len(where))
    batch[f"{name}_mlm_targets"] = targets
  want = apply(variables, batch)
  slots = {"text": 2, "table": 3}
  got = jax.jit(scale.Scale(**model_fields(mlm_slots=slots)).apply)(variables, batch)
  for name, count in slots.items():
    positions = np.asarray(got.pop(f"{name}_mlm_positions"))
    assert positions.shape == (BATCH, count)
    for row, targets in enumerate(batch[f"{name}_mlm_targets"]):
      masked = np.flatnonzero(targets >= 0)
      np.testing.assert_array_equal(positions[row, :len(masked)], masked)
      assert len(set(positions[row])) == count
    np.testing.assert_allclose(
        got.pop(f"{name}_mlm_logits"),
        np.take_along_axis(want.pop(f"{name}_mlm_logits"), positions[..., None], axis=1),
        atol=1e-6, rtol=0, err_msg=name)
  assert set(got) == set(want)
  for key in want:
    np.testing.assert_allclose(got[key], want[key], atol=1e-6, rtol=0, err_msg=key)


def test_more_padding_changes_no_output(setup):
  """Two more title positions, masked out and holding random tokens, change nothing."""
  _, _, batch, variables, apply = setup
  want = apply(variables, batch)
  rng = np.random.default_rng(2)
  longer = dict(batch)
  longer["text_tokens"] = np.concatenate(
      [batch["text_tokens"], rng.integers(0, VOCAB, (BATCH, 2)).astype(np.int32)], axis=1)
  longer["text_mask"] = np.concatenate([batch["text_mask"], np.zeros((BATCH, 2), bool)], axis=1)
  got = apply(variables, longer)
  got["text_mlm_logits"] = got["text_mlm_logits"][:, :TEXT_LEN]
  for key in want:
    np.testing.assert_allclose(got[key], want[key], atol=1e-6, rtol=0, err_msg=key)


def test_padding_changes_no_output(setup):
  _, _, batch, variables, apply = setup
  want = apply(variables, batch)
  padding = {key: ~batch[key].astype(bool) for key in COVERED if key in batch}
  assert all(p.any() for p in padding.values())
  _assert_same_outputs(apply(variables, perturb(batch, padding)), want)


def test_masked_modeling_inputs_replace_the_clean_ones(setup):
  """With `*_tokens_masked` the text towers read those; under `*_mlm_mask` the regions,
  frames, mel frames and image patches are read as zeros (they stay the regression
  targets)."""
  kind, _, batch, variables, apply = setup
  rng = np.random.default_rng(3)
  masked, want_batch = dict(batch), dict(batch)
  for name in ("text", "table"):
    masked[f"{name}_tokens_masked"] = want_batch[f"{name}_tokens"] = np.where(
        rng.random(batch[f"{name}_tokens"].shape) < 0.3, 1, batch[f"{name}_tokens"]).astype(
            np.int32)
  hidden = {"audio_mel": "audio_mel_mlm_mask"}
  if kind == "features":
    hidden |= {"region_feats": "region_mlm_mask", "frame_feats": "frame_mlm_mask"}
  for key, mlm_key in hidden.items():
    masked[mlm_key] = rng.random(batch[key].shape[:2]) < 0.3
    want_batch[key] = np.where(masked[mlm_key][..., None], 0.0, batch[key]).astype(np.float32)
  if kind == "raw":  # the 16-pixel image's four 8x8 patches, row-major
    masked["image_mlm_mask"] = np.array([[1, 0, 0, 1], [0, 1, 0, 0], [0, 0, 0, 0],
                                         [1, 1, 1, 1]], bool)
    pixels = batch["image"].copy()
    for row, patches in enumerate(masked["image_mlm_mask"]):
      for index in np.flatnonzero(patches):
        r, c = divmod(index, 2)
        pixels[row, 8 * r:8 * r + 8, 8 * c:8 * c + 8] = 0.0
    want_batch["image"] = pixels
  _assert_same_outputs(apply(variables, masked), apply(variables, want_batch))
  assert np.abs(apply(variables, masked)["text_emb"] - apply(variables, batch)["text_emb"]
                ).max() > 1e-3


def test_patchify_flattens_row_major_patches_and_hide_patches_zeroes_them():
  images = np.random.default_rng(0).normal(size=(2, 6, 9, 3)).astype(np.float32)
  patches = np.asarray(vit.patchify(jnp.asarray(images), 3))
  assert patches.shape == (2, 6, 27)
  for r in range(2):
    for c in range(3):
      np.testing.assert_array_equal(patches[:, 3 * r + c],
                                    images[:, 3 * r:3 * r + 3, 3 * c:3 * c + 3].reshape(2, -1))
  hidden = np.zeros((2, 6), bool)
  hidden[0, 4] = hidden[1, 0] = True
  kept = np.asarray(vit.hide_patches(jnp.asarray(images), jnp.asarray(hidden), 3))
  np.testing.assert_array_equal(np.asarray(vit.patchify(jnp.asarray(kept), 3)),
                                np.where(hidden[..., None], 0.0, patches))


def test_runs_only_the_modalities_the_batch_holds(setup):
  _, _, batch, variables, apply = setup
  texts = apply(variables, {k: batch[k] for k in ("text_tokens", "text_mask")})
  assert set(texts) == {"text_emb", "text_present", "fused_text_emb", "fused_emb",
                        "text_mlm_logits", "logit_scale", "logit_bias", "harmonization"}
  # Before fusion, a modality's embedding is its encoder's alone.
  np.testing.assert_allclose(texts["text_emb"], apply(variables, batch)["text_emb"], atol=1e-6)


def test_builds_from_a_config_and_inits_from_the_example_spec():
  input_config = pipeline.default_input_config()
  input_config.update(modalities=("image", "text", "table", "video_feats", "audio_mel",
                                  "regions"),
                      masking=True, max_text_len=TEXT_LEN, max_table_len=TABLE_LEN,
                      image_size=IMAGE_SIZE, audio_mel_frames=MEL_FRAMES,
                      max_regions=REGIONS, video_feat_frames=FRAMES)
  batch = trainer.init_batch(input_config)
  assert "text_tokens_masked" in batch and "region_mlm_mask" in batch
  config = ml_collections.ConfigDict({"name": "scale", **model_fields(
      modalities=("text", "table", "image", "video", "audio"))})
  model = models.build_model(config)
  assert isinstance(model, scale.Scale)
  variables = jax.eval_shape(model.init, jax.random.key(0), batch)
  params = nn.unbox(variables)["params"]
  assert "region_encoder" in params and "image_encoder" not in params  # auto: the features
  assert params["text_encoder"]["proj"]["kernel"].shape == (SIZE["width"], EMBED_DIM)
  assert "table_tower" not in params  # share_text_encoders: one text tower
  out = jax.eval_shape(model.apply, variables, batch)
  assert out["region_pred"].shape == (1, REGIONS, 2048)

  boxes = jax.tree.leaves(variables, is_leaf=lambda x: isinstance(x, nn.Partitioned))
  assert len(boxes) == len(jax.tree.leaves(variables)) > 50  # every param is partitioned
  for box in boxes:
    assert isinstance(box, nn.LogicallyPartitioned) and len(box.names) == box.value.ndim, box
    assert set(box.names) <= LOGICAL_NAMES, box.names

  # bfloat16 compute keeps float32 params and embeddings; scanned, rematerialized blocks build.
  bf16 = scale.Scale(**model_fields(dtype="bfloat16", scan_layers=True, remat_policy="full"))
  variables = jax.eval_shape(bf16.init, jax.random.key(0), batch)
  assert {leaf.dtype for leaf in jax.tree.leaves(nn.unbox(variables))} == {jnp.dtype("float32")}
  out = jax.eval_shape(bf16.apply, variables, batch)
  assert out["fused_emb"].dtype == out["text_emb"].dtype == jnp.float32
  assert out["text_mlm_logits"].dtype == jnp.float32

  separate = models.build_model(ml_collections.ConfigDict(
      {"name": "scale", **model_fields(share_text_encoders=False)}))
  assert "table_tower" in nn.unbox(jax.eval_shape(separate.init, jax.random.key(0), batch))[
      "params"]
  config.bogus = 1
  with pytest.raises(ValueError, match="model.bogus is not a field of model 'scale'"):
    models.build_model(config)


def test_sharded_apply_matches_single_device():
  mesh = jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"),
                       axis_types=(jax.sharding.AxisType.Auto,) * 3)
  model = scale.Scale(**model_fields())
  batch = {k: np.concatenate([v, v]) for k, v in make_batch("features").items()}  # 8 rows
  variables = random_variables(model, batch)
  abstract = jax.eval_shape(model.init, jax.random.key(0), batch)
  shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(abstract), mesh, RULES)
  sharded_vars = jax.device_put(variables, nn.unbox(shardings))
  kernel = sharded_vars["params"]["fusion"]["block_0"]["mlp"]["fc1"]["kernel"]
  assert kernel.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
  sharded_batch = jax.device_put(
      batch, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(("data", "fsdp"))))
  with jax.set_mesh(mesh), nn.logical_axis_rules(RULES):
    sharded = jax.jit(model.apply)(sharded_vars, sharded_batch)
  single = jax.jit(model.apply)(variables, batch)
  for key in single:
    np.testing.assert_allclose(sharded[key], single[key], atol=1e-5, err_msg=key)


def test_flops_per_example_matches_a_hand_count():
  model = scale.Scale(**model_fields(modalities=("text", "image", "audio")))
  input_config = ml_collections.ConfigDict(dict(
      modalities=("text", "regions", "audio_mel"), max_text_len=TEXT_LEN,
      max_regions=REGIONS, audio_mel_frames=MEL_FRAMES))
  w, m, d, v = 16, 32, EMBED_DIM, VOCAB
  def blocks(tokens):  # one layer: qkv + out, MLP, scores and weighted sums
    return 8 * tokens * w * w + 4 * tokens * w * m + 4 * tokens * tokens * w
  patches = 3  # ceil(10 / 4)
  text = blocks(TEXT_LEN)
  regions = 2 * REGIONS * 2053 * w + blocks(REGIONS + 1)
  audio = 2 * patches * 320 * w + blocks(patches + 1)
  tokens = TEXT_LEN + (REGIONS + 1) + (patches + 1)
  fusion = blocks(tokens) + 2 * tokens * w * w + 3 * 2 * (w + w) * d
  heads = (TEXT_LEN * (2 * w * w + 2 * w * v) + REGIONS * (2 * w * w + 2 * w * 2048)
           + patches * (2 * w * w + 2 * w * 320))
  want = text + regions + audio + fusion + heads
  got = model.flops_per_example(input_config)
  assert got > 0
  assert abs(got - want) / want < 0.05, (got, want)
  assert transformer_flops(TEXT_LEN, w, 1, 2, m) == text
  # Pixels instead of features: a bigger count, still positive.
  input_config.modalities = ("text", "image", "audio_mel")
  input_config.image_size = IMAGE_SIZE
  assert model.flops_per_example(input_config) > 0
