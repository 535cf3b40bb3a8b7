"""SCALE's inputs: log-mel audio, region and frame features, table entities, masked modeling."""

import io

import numpy as np
import pytest
from PIL import Image

from eclip_jax.data import pipeline
from eclip_jax.data import schema
from eclip_jax.data import text as text_lib
from eclip_jax.data import tokenizer as tokenizer_lib
from eclip_jax.data import transforms

SCALE_MODALITIES = ("text", "table", "audio_mel", "regions", "video_feats")
WORDS = ("red", "blue", "green", "mug", "cup", "large", "small", "ceramic", "steel", "bottle",
         "lid", "handle", "matte", "glossy", "travel", "kitchen")


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
  path = tmp_path_factory.mktemp("tok") / "spm.model"
  texts = [" ".join(WORDS[i:] + WORDS[:i]) + " color: red ; size: large" for i in range(16)] * 20
  return tokenizer_lib.Tokenizer(tokenizer_lib.train_tokenizer(texts, path, vocab_size=300))


def _encode_png(color):
  buffer = io.BytesIO()
  Image.fromarray(np.full((16, 16, 3), color, np.uint8)).save(buffer, format="PNG")
  return buffer.getvalue()


def _record(title="red ceramic mug", pairs=(("color", "red"), ("size", "large")), **fields):
  record = schema.empty_optional_fields()
  record.update(product_index=1, catalog_index=1, category=0, title=title.encode(),
                images=[_encode_png((200, 30, 30))],
                attributes={"key": [k.encode() for k, _ in pairs],
                            "value": [v.encode() for _, v in pairs]})
  record.update(fields)
  return record


def _random_record(rng):
  """A listing with every SCALE modality, of random sizes (regions and frames sometimes
  absent)."""
  title = " ".join(rng.choice(WORDS, size=rng.integers(3, 15)))
  pairs = [(str(rng.choice(WORDS)), " ".join(rng.choice(WORDS, size=rng.integers(1, 4))))
           for _ in range(rng.integers(1, 6))]
  num_regions = rng.integers(0, 40)
  return _record(
      title, pairs,
      region_feats=rng.normal(size=(num_regions, 2048)).astype(np.float16),
      region_boxes=rng.uniform(size=(num_regions, 5)).astype(np.float32),
      frame_feats=rng.normal(size=(rng.integers(0, 20), 1024)).astype(np.float16),
      mel=rng.normal(size=(80, rng.integers(1, 60))).astype(np.float16),
  )


def _transform(tokenizer, **kwargs):
  kwargs.setdefault("modalities", SCALE_MODALITIES)
  return transforms.ExampleTransform(tokenizer, **kwargs)


# ---------------------------------------------------------------------------------------
# Log-mel audio.
# ---------------------------------------------------------------------------------------


def _slaney_mel(hz):
  return 3 * hz / 200 if hz < 1000 else 15 + 27 * np.log(hz / 1000) / np.log(6.4)


def _reference_log_mel(waveform, sample_rate):
  """float64, written out: frames by hand, a DFT as a matrix, Slaney triangles per bin."""
  window, hop, bins = int(0.025 * sample_rate), int(0.010 * sample_rate), 80
  padded = np.concatenate([np.zeros(window // 2), waveform, np.zeros(window // 2)])
  n = np.arange(window)
  hann = 0.5 * (1 - np.cos(2 * np.pi * n / window))
  k = np.arange(window // 2 + 1)
  dft = np.exp(-2j * np.pi * np.outer(k, n) / window)

  def to_hz(mel):
    return 200 * mel / 3 if mel < 15 else 1000 * 6.4 ** ((mel - 15) / 27)

  top = _slaney_mel(sample_rate / 2)
  edges = [to_hz(top * i / (bins + 1)) for i in range(bins + 2)]
  filters = np.zeros((bins, len(k)))
  for b in range(bins):
    low, mid, high = edges[b], edges[b + 1], edges[b + 2]
    for i, f in enumerate(k * sample_rate / window):
      if low < f <= mid:
        filters[b, i] = (f - low) / (mid - low)
      elif mid < f < high:
        filters[b, i] = (high - f) / (high - mid)
    filters[b] *= 2 / (high - low)
  frames = []
  for t in range(1 + len(waveform) // hop):
    spectrum = dft @ (padded[t * hop : t * hop + window] * hann)
    frames.append(np.log(filters @ np.abs(spectrum) ** 2 + 1e-6))
  return np.array(frames)


def test_log_mel_matches_a_direct_dft_reference():
  waveform = np.random.default_rng(0).uniform(-0.5, 0.5, 3205)  # 0.2 s, not a whole hop
  ours = transforms.log_mel_spectrogram(waveform, 16_000)
  reference = _reference_log_mel(waveform, 16_000)
  assert ours.shape == (21, 80) == reference.shape and ours.dtype == np.float32
  np.testing.assert_allclose(ours, reference, rtol=0, atol=2e-4)


@pytest.mark.parametrize("sample_rate,fft_size", [(16_000, 400), (22_050, 512), (16_000, 64)])
def test_the_mel_filterbank_applied_sparsely_equals_the_dense_product(sample_rate, fft_size):
  """(16 kHz, 64): 33 FFT bins for 80 mel bins, so most mel bins cover none."""
  filters = transforms.mel_filterbank(sample_rate, fft_size)
  power = np.random.default_rng(0).uniform(0, 1, (7, fft_size // 2 + 1)) ** 4
  sparse = transforms.apply_mel_filterbank(power, sample_rate, fft_size)
  np.testing.assert_allclose(sparse, power @ filters, rtol=1e-12, atol=1e-300)
  assert (sparse[:, ~filters.any(axis=0)] == 0).all()
  if fft_size == 64:
    assert (~filters.any(axis=0)).sum() > 20


@pytest.mark.parametrize("frequency", [440.0, 1000.0, 2500.0, 6000.0])
def test_a_sine_lands_in_the_mel_bin_around_its_frequency(frequency):
  time = np.arange(16_000) / 16_000
  mel = transforms.log_mel_spectrogram(0.5 * np.sin(2 * np.pi * frequency * time), 16_000)
  energy = np.exp(mel[5:-5]).mean(axis=0)  # frames away from the zero-padded ends
  # Slaney mel: linear below 1 kHz, log above; 82 edges equally spaced up to 8 kHz.
  centers = np.linspace(0, _slaney_mel(8000), 82)[1:-1]
  nearest = int(np.argmin(np.abs(centers - _slaney_mel(frequency))))
  assert abs(int(np.argmax(energy)) - nearest) <= 1  # below 1 kHz a bin is ~1 FFT bin wide
  assert energy[max(0, nearest - 2) : nearest + 3].sum() > 0.95 * energy.sum()


def test_audio_mel_from_a_waveform_is_cropped_padded_and_resampled(tokenizer):
  rng = np.random.default_rng(1)
  waveform = (rng.uniform(-0.5, 0.5, 16_000) * 32768).astype(np.int16)  # 1 s at 16 kHz
  record = _record(audio={"waveform": waveform, "sample_rate": 16_000})
  transform = _transform(tokenizer, modalities=("audio_mel",), audio_mel_frames=50)
  example = transform(record)
  assert example["audio_mel"].shape == (50, 80) and example["audio_mel_mask"].all()
  # Evaluation: the first 49 hops of samples, which give exactly 50 frames.
  np.testing.assert_array_equal(
      example["audio_mel"], transforms.log_mel_spectrogram(waveform[:49 * 160] / 32768, 16_000))
  # Training: a random 49-hop window of the samples (the only draw of this transform).
  for seed in range(3):
    start = np.random.default_rng(seed).integers(16_000 - 49 * 160 + 1)
    np.testing.assert_array_equal(
        transform(record, np.random.default_rng(seed))["audio_mel"],
        transforms.log_mel_spectrogram(waveform[start : start + 49 * 160] / 32768, 16_000))
  # A short clip: 1 + samples // hop frames, then zeros with a false mask.
  short = _record(audio={"waveform": waveform[:1000], "sample_rate": 16_000})
  example = transform(short)
  assert example["audio_mel_mask"].sum() == 7 and not example["audio_mel"][7:].any()
  # 8 kHz audio is resampled to input.audio_sample_rate first: 0.5 s -> 8000 samples at
  # 16 kHz -> 51 frames (read as 16 kHz it would be 26).
  slow = _record(audio={"waveform": waveform[:4000], "sample_rate": 8000})
  assert _transform(tokenizer, modalities=("audio_mel",), audio_mel_frames=60)(slow)[
      "audio_mel_mask"].sum() == 51


def test_audio_mel_reads_the_pre_extracted_matrix_without_a_waveform(tokenizer):
  mel = np.random.default_rng(2).normal(size=(80, 30)).astype(np.float16)
  transform = _transform(tokenizer, modalities=("audio_mel",), audio_mel_frames=40)
  example = transform(_record(mel=mel))
  np.testing.assert_array_equal(example["audio_mel"][:30], mel.T.astype(np.float32))
  assert example["audio_mel_mask"].tolist() == [True] * 30 + [False] * 10
  assert not example["audio_mel"][30:].any()
  # Longer than input.audio_mel_frames: the first frames in evaluation, a window in training.
  short = _transform(tokenizer, modalities=("audio_mel",), audio_mel_frames=10)
  np.testing.assert_array_equal(short(_record(mel=mel))["audio_mel"], mel.T[:10])
  trained = short(_record(mel=mel), np.random.default_rng(3))["audio_mel"]
  start = int(np.flatnonzero((mel.T == trained[0]).all(axis=1))[0])
  np.testing.assert_array_equal(trained, mel.T[start : start + 10])
  # A waveform wins over the matrix; neither is an absent modality.
  waveform = np.ones(800, np.int16)
  both = transform(_record(mel=mel, audio={"waveform": waveform, "sample_rate": 16_000}))
  assert both["audio_mel_mask"].sum() == 6
  assert not transform(_record())["audio_mel_mask"].any()


# ---------------------------------------------------------------------------------------
# Region and frame features.
# ---------------------------------------------------------------------------------------


def test_region_features_are_cut_or_padded_to_max_regions(tokenizer):
  rng = np.random.default_rng(4)
  feats = rng.normal(size=(40, 2048)).astype(np.float16)
  boxes = rng.uniform(size=(40, 5)).astype(np.float32)
  transform = _transform(tokenizer, modalities=("regions",))
  example = transform(_record(region_feats=feats, region_boxes=boxes))
  assert example["region_feats"].shape == (36, 2048)
  assert example["region_feats"].dtype == np.float32
  np.testing.assert_array_equal(example["region_feats"], feats[:36].astype(np.float32))
  np.testing.assert_array_equal(example["region_boxes"], boxes[:36])
  assert example["region_mask"].all()
  few = _transform(tokenizer, modalities=("regions",), max_regions=8)(
      _record(region_feats=feats[:3], region_boxes=boxes[:3]))
  assert few["region_mask"].tolist() == [True] * 3 + [False] * 5
  assert not few["region_feats"][3:].any() and not few["region_boxes"][3:].any()
  absent = transform(_record())
  assert not absent["region_mask"].any() and not absent["region_feats"].any()


def test_frame_features_are_sampled_uniformly_or_padded(tokenizer):
  feats = (np.arange(30)[:, None] * np.ones((1, 1024))).astype(np.float16)  # row i = i
  transform = _transform(tokenizer, modalities=("video_feats",))
  example = transform(_record(frame_feats=feats))
  assert example["frame_feats"].shape == (12, 1024) and example["frame_mask"].all()
  np.testing.assert_array_equal(example["frame_feats"][:, 0],
                                np.round(np.linspace(0, 29, 12)))  # first and last kept
  assert transform(_record(frame_feats=feats), np.random.default_rng(0))["frame_feats"][
      :, 0].tolist() == example["frame_feats"][:, 0].tolist()  # the same in training
  few = transform(_record(frame_feats=feats[:5]))
  assert few["frame_feats"][:5, 0].tolist() == [0, 1, 2, 3, 4]
  assert few["frame_mask"].tolist() == [True] * 5 + [False] * 7
  assert not transform(_record())["frame_mask"].any()


# ---------------------------------------------------------------------------------------
# Table entities.
# ---------------------------------------------------------------------------------------

TABLE = (("Color", "Deep  RED"), ("size", "large"), ("materiál", "ceramic 한국"),
         ("lid_type", "steel; travel"), ("x", ""))


def test_table_entities_label_every_token_of_each_key_and_value(tokenizer):
  record = _record(pairs=TABLE)
  # 128 tokens: all of it (this small tokenizer spells most words letter by letter).
  plain = _transform(tokenizer, modalities=("table",), max_table_len=128)(record)
  example = _transform(tokenizer, modalities=("table",), max_table_len=128,
                       table_entities=True)(record)
  assert example["table_tokens"][~example["table_mask"]].size  # padding: nothing cut off
  # The existing keys are untouched: the same serialization, tokenized as one text.
  for key in ("table_tokens", "table_mask"):
    np.testing.assert_array_equal(example[key], plain[key])
  tokens, entity = example["table_tokens"], example["table_entity"]
  parts = [text_lib.get_normalizer("basic")(p) for pair in TABLE for p in pair]
  for index, part in enumerate(parts):
    # Each entity's tokens, in order, spell exactly that key or value.
    assert tokenizer.decode(tokens[entity == index]).strip() == part, (index, part)
    assert (np.diff(np.flatnonzero(entity == index)) == 1).all()  # contiguous
  separators = tokenizer.decode(tokens[(entity == -1) & example["table_mask"]])
  assert set(separators) <= set(":; ")
  assert not example["table_mask"][entity == -1].all()  # BOS, EOS: mask true, entity -1
  np.testing.assert_array_equal(example["table_is_value"], (entity >= 0) & (entity % 2 == 1))
  assert (entity[~example["table_mask"]] == -1).all()


def test_table_entities_survive_truncation_and_an_empty_table(tokenizer):
  transform = _transform(tokenizer, modalities=("table",), table_entities=True, max_table_len=9)
  example = transform(_record(pairs=TABLE))
  assert example["table_mask"].all() and example["table_tokens"][-1] == tokenizer_lib.EOS_ID
  labelled = example["table_entity"][example["table_entity"] >= 0]
  assert labelled[0] == 0 and (np.diff(labelled) >= 0).all()
  empty = transform(_record(pairs=()))
  assert not empty["table_mask"].any() and (empty["table_entity"] == -1).all()


# ---------------------------------------------------------------------------------------
# Masked modeling.
# ---------------------------------------------------------------------------------------


def test_choose_units_takes_the_share_in_expectation():
  rng = np.random.default_rng(5)
  sizes = np.array([3, 1, 2, 5, 1, 1, 4])
  taken = [sizes[transforms.choose_units(rng, sizes, 0.15)].sum() for _ in range(20_000)]
  assert abs(np.mean(taken) - 0.15 * sizes.sum()) < 0.05  # 2.55 tokens of 17
  assert not transforms.choose_units(rng, np.zeros(0), 0.15).any()
  assert transforms.choose_units(rng, sizes, 1.0).all()


@pytest.fixture(scope="module")
def masked_examples(tokenizer):
  transform = _transform(tokenizer, masking=True)
  records = [(_random_record(np.random.default_rng(1000 + i))) for i in range(1500)]
  return transform, records, [transform(r, np.random.default_rng(i)) for i, r in
                              enumerate(records)]


def test_mlm_masks_15_percent_of_the_title_with_80_10_10(masked_examples):
  _, _, examples = masked_examples
  content = masked = to_mask = to_random = kept = 0
  for example in examples:
    tokens, targets = example["text_tokens"], example["text_mlm_targets"]
    corrupted = example["text_tokens_masked"]
    chosen = targets >= 0
    content += (example["text_mask"] & (tokens > tokenizer_lib.EOS_ID)).sum()
    assert (targets[chosen] == tokens[chosen]).all()
    assert (corrupted[~chosen] == tokens[~chosen]).all()
    assert (tokens[chosen] > tokenizer_lib.EOS_ID).all()  # never BOS, EOS or padding
    masked += chosen.sum()
    to_mask += (corrupted[chosen] == tokenizer_lib.MASK_ID).sum()
    kept += (corrupted[chosen] == tokens[chosen]).sum()
    to_random += ((corrupted[chosen] != tokens[chosen])
                  & (corrupted[chosen] != tokenizer_lib.MASK_ID)).sum()
    assert (corrupted >= 0).all() and (corrupted[chosen] != tokenizer_lib.PAD_ID).all()
  assert abs(masked / content - 0.15) < 0.01, masked / content
  assert abs(to_mask / masked - 0.8) < 0.03
  # A random piece may happen to be the original one (1 in ~300): counted as kept.
  assert abs(to_random / masked - 0.1) < 0.025 and abs(kept / masked - 0.1) < 0.025


def test_table_masking_takes_whole_entities_up_to_15_percent(masked_examples, tokenizer):
  _, records, examples = masked_examples
  plain = _transform(tokenizer, modalities=("table",))
  for record, example in zip(records[:300], examples):  # the table's tokens are unchanged
    np.testing.assert_array_equal(plain(record)["table_tokens"], example["table_tokens"])
  entity_tokens = masked = 0
  actions = {"mask": 0, "other": 0}
  for example in examples:
    entity, targets = example["table_entity"], example["table_mlm_targets"]
    corrupted, tokens = example["table_tokens_masked"], example["table_tokens"]
    chosen = targets >= 0
    assert (entity[chosen] >= 0).all()
    for index in np.unique(entity[entity >= 0]):
      of_entity = entity == index
      assert chosen[of_entity].all() or not chosen[of_entity].any()  # a whole key or value
      if chosen[of_entity].all():
        is_mask = corrupted[of_entity] == tokenizer_lib.MASK_ID
        assert is_mask.all() or not is_mask.any()  # one action for the whole entity
        actions["mask" if is_mask.all() else "other"] += 1
    assert (corrupted[~chosen] == tokens[~chosen]).all()
    entity_tokens += (entity >= 0).sum()
    masked += chosen.sum()
  assert abs(masked / entity_tokens - 0.15) < 0.015, masked / entity_tokens
  assert abs(actions["mask"] / sum(actions.values()) - 0.8) < 0.05


@pytest.mark.parametrize("key", ["region", "frame", "audio_mel"])
def test_feature_masks_hide_15_percent_of_the_present_positions(masked_examples, key):
  _, _, examples = masked_examples
  present = masked = 0
  for example in examples:
    chosen, mask = example[f"{key}_mlm_mask"], example[f"{key}_mask"]
    assert not chosen[~mask].any()
    present, masked = present + mask.sum(), masked + chosen.sum()
  assert abs(masked / present - 0.15) < 0.01, masked / present


def test_image_patches_are_masked_15_percent_seeded_and_none_in_evaluation(tokenizer):
  transform = _transform(tokenizer, modalities=("image", "text"), image_size=16, masking=True,
                         mask_patch_size=4)
  assert transform.example_spec()["image_mlm_mask"] == transforms.ArraySpec(
      (16,), np.dtype(bool))
  record = _record()
  masks = np.stack([transform(record, np.random.default_rng(i))["image_mlm_mask"]
                    for i in range(800)])
  assert abs(masks.mean() - 0.15) < 0.01, masks.mean()
  assert abs(masks[:, 0].mean() - masks[:, -1].mean()) < 0.06  # any patch alike
  np.testing.assert_array_equal(
      transform(record, np.random.default_rng(3))["image_mlm_mask"], masks[3])
  assert not transform(record)["image_mlm_mask"].any()
  # The pixels stay: they are the regression targets.
  np.testing.assert_array_equal(transform(record, np.random.default_rng(3))["image"],
                                _transform(tokenizer, modalities=("image", "text"),
                                           image_size=16)(record, np.random.default_rng(3))
                                ["image"])
  with pytest.raises(ValueError, match="input.mask_patch_size=5 must divide input.image_size"):
    _transform(tokenizer, modalities=("image",), image_size=16, masking=True, mask_patch_size=5)


def test_masks_are_seeded_and_absent_in_evaluation(masked_examples):
  transform, records, examples = masked_examples
  keys = [k for k in transform.example_spec() if "mlm" in k or k.endswith("_masked")]
  assert sorted(keys) == sorted([
      "text_tokens_masked", "text_mlm_targets", "table_tokens_masked", "table_mlm_targets",
      "audio_mel_mlm_mask", "region_mlm_mask", "frame_mlm_mask"])
  again = transform(records[0], np.random.default_rng(0))
  other = transform(records[0], np.random.default_rng(99))
  for key in keys:
    np.testing.assert_array_equal(again[key], examples[0][key])
  assert any(not np.array_equal(other[key], again[key]) for key in keys)
  evaluated = transform(records[0])
  assert set(evaluated) == set(examples[0])
  for key in keys:
    if key.endswith("_masked"):
      np.testing.assert_array_equal(evaluated[key], evaluated[key.replace("_masked", "")])
    elif key.endswith("targets"):
      assert (evaluated[key] == -1).all()
    else:
      assert not evaluated[key].any()


def test_examples_match_their_spec_and_existing_keys_stay_as_they_were(tokenizer):
  record = (_random_record(np.random.default_rng(6)))
  record["audio"] = {"waveform": np.arange(-3000, 3000, 7).astype(np.int16),
                     "sample_rate": 16_000}
  existing = ("image", "text", "table", "video", "audio")
  old = transforms.ExampleTransform(tokenizer, modalities=existing, image_size=16)
  new = transforms.ExampleTransform(tokenizer, modalities=tuple(transforms.MODALITIES),
                                    image_size=16, table_entities=True, audio_mel_frames=20)
  masked = transforms.ExampleTransform(tokenizer, modalities=tuple(transforms.MODALITIES),
                                       image_size=16, masking=True, audio_mel_frames=20,
                                       mask_patch_size=4)
  for rng_seed in (None, 7):
    rng = lambda: None if rng_seed is None else np.random.default_rng(rng_seed)  # noqa: E731
    before, after = old(record, rng()), new(record, rng())
    for key, value in before.items():  # new modalities draw after the existing ones
      np.testing.assert_array_equal(after[key], value, err_msg=key)
      assert after[key].dtype == value.dtype
    for transform in (new, masked):
      example = transform(record, rng())
      spec = transform.example_spec()
      assert set(example) == set(spec)
      for key, (shape, dtype) in spec.items():
        assert example[key].shape == shape and example[key].dtype == dtype, key


def test_an_m5product_record_without_pixels_becomes_an_example(tokenizer):
  """Only pre-extracted features, as the m5product builder writes them."""
  record = (_random_record(np.random.default_rng(8)))
  record["images"] = []
  example = _transform(tokenizer, masking=True)(record, np.random.default_rng(0))
  assert transforms.SKIP_KEY not in example and example["audio_mel_mask"].any()


@pytest.mark.parametrize("field, value, message", [
    ("mask_prob", 0.0, "input.mask_prob=0.0 must be in (0, 1]"),
    ("mask_prob", 1.5, "input.mask_prob=1.5 must be in (0, 1]"),
    ("max_regions", 0, "input.max_regions=0 must be at least 1"),
    ("video_feat_frames", -1, "input.video_feat_frames=-1 must be at least 1"),
    ("audio_mel_frames", 0, "input.audio_mel_frames=0 must be at least 1"),
])
def test_bad_settings_fail_with_one_clear_error(tokenizer, field, value, message):
  with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("]", r"\]")):
    _transform(tokenizer, **{field: value})


def test_the_train_pipeline_masks_the_same_way_after_a_resume(tiny_input_config):
  tiny_input_config.modalities = SCALE_MODALITIES
  tiny_input_config.masking = True
  tiny_input_config.audio_mel_frames = 64
  spec = pipeline.example_spec(tiny_input_config)
  iterator = pipeline.make_train_iterator(tiny_input_config, seed=3)
  first = next(iterator)
  state = iterator.get_state()
  second = next(iterator)
  for key, (shape, dtype) in spec.items():
    assert first[key].shape == (8, *shape) and first[key].dtype == dtype, key
  assert (first["text_mlm_targets"] >= 0).any() and first["audio_mel_mlm_mask"].any()
  resumed = pipeline.make_train_iterator(tiny_input_config, seed=3)
  resumed.set_state(state)
  again = next(resumed)
  for key in ("text_tokens_masked", "text_mlm_targets", "table_mlm_targets",
              "audio_mel_mlm_mask"):
    np.testing.assert_array_equal(again[key], second[key], err_msg=key)


# ---------------------------------------------------------------------------------------
# Missing modalities: simulated in training, or only complete examples kept.
# ---------------------------------------------------------------------------------------

WITH_PIXELS = ("image", "text", "table", "audio_mel", "regions", "video_feats")


def _records_with_ids(count):
  records = []
  for i in range(count):
    record = _random_record(np.random.default_rng(2000 + i))
    record["product_index"] = i
    records.append(record)
  return records


def test_simulated_missing_removes_a_proper_subset_from_the_same_share_of_records(tokenizer):
  full = _transform(tokenizer, modalities=WITH_PIXELS, image_size=16, masking=True,
                    mask_patch_size=4)
  transform = _transform(tokenizer, modalities=WITH_PIXELS, image_size=16, masking=True,
                         mask_patch_size=4, simulate_missing=0.3)
  assert transform.example_spec()["image_present"] == transforms.ArraySpec((), np.dtype(bool))
  eligible = changed = 0
  for i, record in enumerate(_records_with_ids(600)):
    base, example = full(record, np.random.default_rng(i)), transform(
        record, np.random.default_rng(i))
    # Without the knob no example says whether it has its image: every record has one.
    present = ["image", *transforms.present_modalities(base)]
    kept = transforms.present_modalities(example)
    # Per record, not per draw: another seed (epoch, run) takes the same modalities.
    assert transforms.present_modalities(transform(record, np.random.default_rng(i + 7))) == kept
    assert set(kept) <= set(present) and kept
    eligible += len(present) >= 2
    if kept != present:
      changed += 1
      assert len(kept) < len(present)
    for name in set(present) - set(kept):
      for key in transforms.MODALITIES[name].masks:
        assert key not in example or not example[key].any(), key
      for key in transforms.MODALITIES[name].targets:
        assert key not in example or (example[key] == -1).all(), key
    for key, value in base.items():  # what stays is drawn exactly as without the knob
      if not any(key in transforms.MODALITIES[n].masks + transforms.MODALITIES[n].targets
                 for n in set(present) - set(kept)):
        np.testing.assert_array_equal(example[key], value, err_msg=key)
    evaluated = transform(record)  # evaluation sees every modality
    assert transforms.present_modalities(evaluated) == [
        "image", *transforms.present_modalities(full(record))]
  assert abs(changed / eligible - 0.3) < 0.06, changed / eligible


def test_complete_only_skips_the_incomplete_training_records_as_incomplete(tokenizer):
  simulated = _transform(tokenizer, simulate_missing=0.5)
  transform = _transform(tokenizer, simulate_missing=0.5, complete_only=True)
  incomplete = transforms.SKIP_REASONS.index("incomplete")
  records = _records_with_ids(200)
  skipped = 0
  for i, record in enumerate(records):
    example = transform(record, np.random.default_rng(i))
    is_complete = len(transforms.present_modalities(
        simulated(record, np.random.default_rng(i)))) == len(SCALE_MODALITIES)
    assert (transforms.SKIP_KEY not in example) == is_complete
    if not is_complete:
      assert example[transforms.SKIP_KEY] == incomplete
      skipped += 1
    assert transforms.SKIP_KEY not in transform(record)  # never in evaluation
  assert 0 < skipped < len(records)
  # A record that lacks a modality of its own (no region features) is incomplete too.
  record = _record(region_feats=np.zeros((0, 2048), np.float16),
                   region_boxes=np.zeros((0, 5), np.float32),
                   frame_feats=np.ones((3, 1024), np.float16), mel=np.ones((80, 9), np.float16))
  only_complete = _transform(tokenizer, complete_only=True)
  assert only_complete(record, np.random.default_rng(0))[transforms.SKIP_KEY] == incomplete


def test_simulate_missing_rejects_shares_outside_0_1_and_multi_view(tokenizer):
  with pytest.raises(ValueError, match=r"input.simulate_missing=1.5 is a share"):
    _transform(tokenizer, simulate_missing=1.5)
  with pytest.raises(ValueError, match="set input.num_views=1"):
    _transform(tokenizer, modalities=("image", "text"), num_views=2, complete_only=True)


def test_the_train_pipeline_counts_incomplete_skips_and_resumes_them(tiny_input_config):
  tiny_input_config.modalities = ("image", "text", "table", "audio_mel")
  tiny_input_config.audio_mel_frames = 16
  tiny_input_config.simulate_missing = 0.5
  tiny_input_config.complete_only = True
  iterator = pipeline.make_train_iterator(tiny_input_config, seed=0)
  for _ in range(3):
    batch = next(iterator)
    assert batch["image_present"].all() and batch["table_mask"].any(axis=1).all()
  stats = iterator.stats
  assert stats["skipped/incomplete"] > 0
  assert sum(stats.values()) == stats["skipped/incomplete"]
  state = iterator.get_state()
  resumed = pipeline.make_train_iterator(tiny_input_config, seed=0)
  resumed.set_state(state)
  assert resumed.stats == stats
