"""CLIP import: a random-weight `transformers` CLIPModel and its conversion embed the same images
and texts (≤ 1e-4), through `init_from` like a training run; safetensors export round trips."""

import jax
import numpy as np
import pytest

from configs import clip, eclip
from eclip_jax import checkpoint as checkpoint_lib
from eclip_jax import interop, trainer
from eclip_jax.data import tokenizer as tokenizer_lib
from eclip_jax.data import transforms

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")

NUM_EXAMPLES = 8  # a multiple of the 8 test devices
MAX_RELATIVE_ERROR = 1e-4

# Two layouts: ViT-B/32-like proportions with QuickGELU, and an unusual one (patch 7 over 28
# px, width 48 with 3 heads, exact GELU, 12 text positions of which the model keeps 10).
LAYOUTS = {
    "quick_gelu_patch8": dict(
        vision=dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                    num_attention_heads=4, image_size=32, patch_size=8),
        text=dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                  num_attention_heads=4, max_position_embeddings=16, vocab_size=1000),
        projection_dim=32, hidden_act="quick_gelu", max_text_len=16),
    "gelu_patch7_width48": dict(
        vision=dict(hidden_size=48, intermediate_size=80, num_hidden_layers=3,
                    num_attention_heads=3, image_size=28, patch_size=7),
        text=dict(hidden_size=40, intermediate_size=72, num_hidden_layers=2,
                  num_attention_heads=5, max_position_embeddings=12, vocab_size=700),
        projection_dim=24, hidden_act="gelu", max_text_len=10),
}


def _random_clip(layout, seed=0):
  """A CLIPModel whose every weight (norms and biases too) is random, in float32."""
  torch.manual_seed(seed)
  act = layout["hidden_act"]
  config = transformers.CLIPConfig(
      vision_config={**layout["vision"], "hidden_act": act},
      # EOS is this codebase's id 3: CLIP then pools at the first EOS, as we do at sum(mask)-1.
      text_config={**layout["text"], "hidden_act": act, "eos_token_id": tokenizer_lib.EOS_ID,
                   "bos_token_id": tokenizer_lib.BOS_ID, "pad_token_id": tokenizer_lib.PAD_ID},
      projection_dim=layout["projection_dim"],
  )
  model = transformers.CLIPModel(config).eval()
  generator = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, param in model.named_parameters():
      noise = torch.randn(param.shape, generator=generator)
      if name.endswith("logit_scale"):
        param.copy_(torch.tensor(2.5))
      elif "layer_norm" in name or "layrnorm" in name:  # scales around 1, biases around 0
        param.copy_((1.0 if name.endswith("weight") else 0.0) + 0.2 * noise)
      else:
        param.copy_(noise * param.shape[-1] ** -0.5 if param.ndim > 1 else 0.5 * noise)
  return model


def _config(layout, scan_layers=False, method=clip):
  """A config whose towers hold `layout` (clip_towers=image+text plus its sizes)."""
  config = method.get_config("tiny,runlocal,clip_towers=image+text")
  vision, text = layout["vision"], layout["text"]
  config.model.image.update(
      patch_size=vision["patch_size"], width=vision["hidden_size"],
      depth=vision["num_hidden_layers"], num_heads=vision["num_attention_heads"],
      mlp_dim=vision["intermediate_size"], activation=layout["hidden_act"])
  config.model.text.update(
      width=text["hidden_size"], depth=text["num_hidden_layers"],
      num_heads=text["num_attention_heads"], mlp_dim=text["intermediate_size"],
      vocab_size=text["vocab_size"], max_len=layout["max_text_len"],
      activation=layout["hidden_act"])
  config.model.embed_dim = layout["projection_dim"]
  config.model.scan_layers = scan_layers
  config.input.image_size = vision["image_size"]
  config.input.max_text_len = layout["max_text_len"]
  return config


def _inputs(layout, seed=0):
  rng = np.random.default_rng(seed)
  size = layout["vision"]["image_size"]
  pixels = rng.integers(0, 256, size=(NUM_EXAMPLES, size, size, 3), dtype=np.uint8)
  length = layout["max_text_len"]
  lengths = rng.integers(3, length + 1, size=NUM_EXAMPLES)
  tokens = np.full((NUM_EXAMPLES, length), tokenizer_lib.PAD_ID, np.int32)
  for row, n in enumerate(lengths):
    tokens[row, :n] = [tokenizer_lib.BOS_ID,
                       *rng.integers(4, layout["text"]["vocab_size"], size=n - 2),
                       tokenizer_lib.EOS_ID]
  return pixels, tokens, tokens != tokenizer_lib.PAD_ID


def _reference(model, pixels, tokens, mask):
  """CLIP's own embeddings, preprocessed CLIP's way (per-channel mean/std), unit length."""
  mean, std = np.array(interop.CLIP_MEAN), np.array(interop.CLIP_STD)
  pixel_values = ((pixels / 255.0 - mean) / std).transpose(0, 3, 1, 2).astype(np.float32)
  with torch.no_grad():
    image = model.get_image_features(pixel_values=torch.from_numpy(pixel_values)).pooler_output
    text = model.get_text_features(input_ids=torch.from_numpy(tokens).long(),
                                   attention_mask=torch.from_numpy(mask).long()).pooler_output
  unit = lambda x: (x / np.linalg.norm(x, axis=-1, keepdims=True))  # noqa: E731
  return unit(image.double().numpy()), unit(text.double().numpy())


def _random_params(abstract, seed=0):
  """Host params shaped like `abstract` (no compiled init: these tests only load into them)."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda a: rng.normal(size=a.shape).astype(a.dtype), abstract)


def _load_and_embed(config, weights_file, pixels, tokens, mask, include=".*"):
  """Params with `weights_file` loaded as `init_from` does; the model's embeddings."""
  setup = trainer.Setup(config)
  before = _random_params(setup.abstract_state.params)
  params = checkpoint_lib.load_params(str(weights_file), before, setup.abstract_state.params,
                                      include, value_range=tuple(config.input.value_range))
  images = transforms.to_value_range(pixels, tuple(config.input.value_range))
  outputs = setup.apply_fn()(params, {"image": images, "text_tokens": tokens, "text_mask": mask})
  return before, params, jax.device_get(outputs)


def _max_relative_error(ours, reference):
  """max over rows of |ours - reference| / |reference| (Euclidean)."""
  ours, reference = np.asarray(ours, np.float64), np.asarray(reference, np.float64)
  return float(np.max(np.linalg.norm(ours - reference, axis=-1)
                      / np.linalg.norm(reference, axis=-1)))


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_clip_import_matches_transformers(name, tmp_path):
  layout = LAYOUTS[name]
  model = _random_clip(layout)
  weights_file = tmp_path / "clip.safetensors"
  safetensors_torch.save_file(model.state_dict(), str(weights_file))
  pixels, tokens, mask = _inputs(layout)
  image_ref, text_ref = _reference(model, pixels, tokens, mask)
  # The unusual layout also goes into scanned towers (blocks stacked on load).
  _, params, outputs = _load_and_embed(_config(layout, scan_layers=name.startswith("gelu")),
                                       weights_file, pixels, tokens, mask)
  image_error = _max_relative_error(outputs["image_emb"], image_ref)
  text_error = _max_relative_error(outputs["text_emb"], text_ref)
  assert image_error <= MAX_RELATIVE_ERROR, image_error
  assert text_error <= MAX_RELATIVE_ERROR, text_error
  # Not trivially equal: different images / texts get different embeddings.
  assert np.min(np.linalg.norm(image_ref[:1] - image_ref[1:], axis=-1)) > 1e-2
  assert float(params["logit_scale"]) == pytest.approx(2.5)


def test_torch_state_dict_file_loads_without_pickle(tmp_path):
  """A `.bin` state dict reads through torch.load(weights_only=True), like the .safetensors."""
  layout = LAYOUTS["quick_gelu_patch8"]
  model = _random_clip(layout, seed=1)
  torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
  safetensors_torch.save_file(model.state_dict(), str(tmp_path / "clip.safetensors"))
  from_bin = interop.read_state_dict(tmp_path / "pytorch_model.bin")
  from_safetensors = interop.read_state_dict(tmp_path / "clip.safetensors")
  assert from_bin.keys() == from_safetensors.keys()
  for key in from_bin:
    np.testing.assert_array_equal(from_bin[key], from_safetensors[key])
  # A pickle of anything but tensors is refused.
  torch.save({"weight": torch.zeros(2), "code": object()}, tmp_path / "evil.bin")
  with pytest.raises(Exception, match="[Ww]eights only"):
    interop.read_state_dict(tmp_path / "evil.bin")


def test_patch_embedding_folds_clip_normalization():
  """The folded conv on our [-1, 1] pixels == CLIP's conv on its normalized pixels (float64)."""
  rng = np.random.default_rng(0)
  kernel = rng.normal(size=(5, 3, 4, 4))  # torch [out, in, kh, kw]
  pixels = rng.integers(0, 256, size=(4, 4, 3)).astype(np.float64)
  clip_input = (pixels / 255 - np.array(interop.CLIP_MEAN)) / np.array(interop.CLIP_STD)
  expected = np.einsum("oihw,hwi->o", kernel, clip_input)
  for low, high in ((-1.0, 1.0), (0.0, 1.0)):
    folded = interop._patch_embed(kernel, (low, high))  # pylint: disable=protected-access
    ours = low + (high - low) * pixels / 255
    got = np.einsum("hwio,hwi->o", folded["kernel"].astype(np.float64), ours) + folded["bias"]
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_image_tower_alone_into_eclip(tmp_path):
  """`init_params` picks the image tower out of a CLIP file for another method's model."""
  layout = LAYOUTS["quick_gelu_patch8"]
  model = _random_clip(layout)
  weights_file = tmp_path / "clip.safetensors"
  safetensors_torch.save_file(model.state_dict(), str(weights_file))
  pixels, tokens, mask = _inputs(layout)
  image_ref, _ = _reference(model, pixels, tokens, mask)
  config = _config(layout, method=eclip)
  config.model.text.vocab_size = 64  # our own tokenizer's vocabulary: the text tower stays ours
  before, params, outputs = _load_and_embed(config, weights_file, pixels, tokens, mask,
                                            include="^image_(tower|proj)/")
  assert _max_relative_error(outputs["image_emb"], image_ref) <= MAX_RELATIVE_ERROR
  for untouched in ("text_tower", "text_proj", "instance_decoder", "logit_scale"):
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(params[untouched]),
                 before[untouched])
  assert "instance_emb_img" in outputs  # ECLIP's own outputs run on the imported tower


def test_mismatched_layout_names_the_field(tmp_path):
  layout = LAYOUTS["quick_gelu_patch8"]
  weights_file = tmp_path / "clip.safetensors"
  safetensors_torch.save_file(_random_clip(layout).state_dict(), str(weights_file))

  def load(config):
    interop.read_params(weights_file, trainer.Setup(config).abstract_state.params)

  config = _config(layout)
  config.model.image.pre_norm = False
  with pytest.raises(ValueError, match=r"image_tower/ln_pre .* model.image.pre_norm=True"):
    load(config)
  config = _config(layout)
  config.model.text.vocab_size = 64
  with pytest.raises(ValueError, match=r"text_tower/token_embed has shape \(1000, 64\) .* "
                                       r"model.text.vocab_size=1000 "):
    load(config)
  config = _config(layout)
  config.input.image_size = 64
  with pytest.raises(ValueError, match="image_tower/pos_embed .* input.image_size"):
    load(config)
  config = _config(layout)
  config.model.image.depth = 1
  with pytest.raises(ValueError, match="image_tower/encoder/block_1 .* model.image.depth"):
    load(config)


def test_safetensors_export_round_trips_across_scan_layouts(tmp_path):
  """Params saved as safetensors load back bitwise, into unscanned and scanned towers."""
  layout = LAYOUTS["gelu_patch7_width48"]
  unscanned, scanned = (trainer.Setup(_config(layout, scan_layers=s)).abstract_state.params
                        for s in (False, True))
  params = _random_params(unscanned)
  interop.save_safetensors(tmp_path / "params.safetensors", params)
  assert "image_tower/encoder/block_0/attn/query/kernel" in interop.read_state_dict(
      tmp_path / "params.safetensors")
  same = checkpoint_lib.load_params(str(tmp_path / "params.safetensors"),
                                    _random_params(unscanned, seed=1), unscanned, ".*")
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(same), params)
  stacked = jax.device_get(checkpoint_lib.load_params(
      str(tmp_path / "params.safetensors"), _random_params(scanned, seed=1), scanned, ".*"))
  encoder = params["image_tower"]["encoder"]
  for i in range(layout["vision"]["num_hidden_layers"]):
    jax.tree.map(lambda s, u, i=i: np.testing.assert_array_equal(s[i], u),
                 stacked["image_tower"]["encoder"]["blocks"], encoder[f"block_{i}"])
  # And back: the scanned params saved, read into unscanned towers.
  interop.save_safetensors(tmp_path / "scanned.safetensors", stacked)
  jax.tree.map(np.testing.assert_array_equal,
               interop.read_params(tmp_path / "scanned.safetensors", unscanned), params)


# The published OpenAI CLIP layouts (transformers' CLIPConfig fields; the vision defaults are
# ViT-B/32's): every weight must find its place in the variant's towers, shapes equal.
OPENAI_LAYOUTS = {
    "b32": dict(vision=dict(patch_size=32), text={}, projection_dim=512),
    "b16": dict(vision=dict(patch_size=16), text={}, projection_dim=512),
    "l14": dict(vision=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                            num_attention_heads=16, patch_size=14),
                text=dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12),
                projection_dim=768),
}


@pytest.mark.parametrize("variant", sorted(OPENAI_LAYOUTS))
def test_variants_hold_the_openai_clip_layouts(variant):
  layout = OPENAI_LAYOUTS[variant]
  config = transformers.CLIPConfig(vision_config={"image_size": 224, **layout["vision"]},
                                   text_config=layout["text"],
                                   projection_dim=layout["projection_dim"])
  with torch.device("meta"):  # shapes only: nothing of the ~0.4B weights is allocated
    shapes = {k: tuple(v.shape) for k, v in transformers.CLIPModel(config).state_dict().items()}
  state_dict = {k: np.broadcast_to(np.float32(0), shape) for k, shape in shapes.items()}
  abstract = trainer.Setup(clip.get_config(f"{variant},clip_towers=image+text")
                           ).abstract_state.params
  loaded = interop._fit(interop.from_clip(state_dict), abstract, "")  # pylint: disable=protected-access
  placed = set(interop.flatten(loaded))
  assert set(interop.flatten(abstract)) - placed == {"logit_bias"}  # SigLIP's; CLIP has none
  heads = abstract["image_tower"]["encoder"]["blocks"]["attn"]["query"]["kernel"].shape[-2]
  assert heads == config.vision_config.num_attention_heads
