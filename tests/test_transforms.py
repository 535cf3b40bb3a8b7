"""Example transforms: crop-aware decode, crops and boxes, views, masks, skip markers."""

import io

import numpy as np
import pytest
from PIL import Image

from eclip_jax.data import schema
from eclip_jax.data import tokenizer as tokenizer_lib
from eclip_jax.data import transforms


def _encode(pixels, fmt="JPEG"):
  buffer = io.BytesIO()
  Image.fromarray(pixels).save(buffer, format=fmt, quality=95)
  return buffer.getvalue()


def _solid(color, size=48):
  return np.full((size, size, 3), color, np.uint8)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
  path = tmp_path_factory.mktemp("tok") / "spm.model"
  texts = [f"{c} mug {k}: {v}" for c in ("red", "blue") for k, v in [("color", c)]] * 50
  return tokenizer_lib.Tokenizer(tokenizer_lib.train_tokenizer(texts, path, vocab_size=400))


def _record(images, title="red mug", **fields):
  record = schema.empty_optional_fields()
  record.update(
      product_index=7, catalog_index=3, category=2, title=title.encode(),
      images=images, attributes={"key": [b"color"], "value": [b"red"]},
  )
  record.update(fields)
  return record


def test_crop_aware_decode_matches_full_decode():
  # A smooth 512px image: DCT-scaled decoding should barely change a 64px crop.
  y, x = np.mgrid[0:512, 0:512]
  pixels = np.stack([x / 2, y / 2, (x + y) / 4], axis=-1).astype(np.uint8)
  encoded = _encode(pixels)
  crop = (64.0, 32.0, 448.0, 416.0)
  drafted, used_crop, source_size = transforms.decode_crop_resize(encoded, 64, lambda w, h: crop)
  assert used_crop == crop and source_size == (512, 512)
  reference = np.asarray(
      Image.open(io.BytesIO(encoded)).convert("RGB").resize(
          (64, 64), Image.Resampling.BILINEAR, box=crop)
  )
  assert np.abs(drafted.astype(float) - reference).mean() < 2.0


@pytest.mark.parametrize("mode,fmt", [("L", "JPEG"), ("RGBA", "PNG"), ("P", "PNG"),
                                      ("RGB", "JPEG"), ("CMYK", "JPEG")])
def test_every_source_mode_decodes_to_rgb(mode, fmt):
  source = Image.fromarray(_solid((200, 40, 90), size=32)).convert(mode)
  buffer = io.BytesIO()
  source.save(buffer, format=fmt)
  pixels, _, _ = transforms.decode_crop_resize(buffer.getvalue(), 16, transforms.center_crop_box)
  expected = np.asarray(source.convert("RGB")).reshape(-1, 3).mean(axis=0)  # P dithers
  assert pixels.shape == (16, 16, 3) and pixels.dtype == np.uint8
  np.testing.assert_allclose(pixels.reshape(-1, 3).mean(axis=0), expected, atol=3)


def _encoded_in_mode(mode, fmt="PNG"):
  """A 4x1 image of `mode` (its pixel values below), encoded losslessly as `fmt`."""
  row = {
      "1": [0, 1, 1, 0],
      "L": [0, 50, 200, 255],
      "LA": [(100, 255), (100, 0), (100, 128), (0, 64)],
      "RGBA": [(200, 100, 0, 255), (200, 100, 0, 0), (200, 100, 0, 128), (0, 0, 255, 64)],
      "CMYK": [(0, 0, 0, 0), (255, 0, 0, 0), (51, 0, 0, 51), (0, 0, 0, 255)],
  }
  if mode in ("I;16", "I;16B"):  # a 16-bit gradient: 0, 257 (=1/255), 32896, 65535
    values = np.array([0, 257, 32896, 65535], ">u2" if mode == "I;16B" else "<u2")
    image = Image.frombytes(mode, (4, 1), values.tobytes())
  elif mode == "I":  # 32-bit integers: a 16-bit PNG as older PIL opened it; out of range clipped
    image = Image.fromarray(np.array([[-5, 257, 32896, 70000]], np.int32), "I")
  elif mode == "P":  # a palette whose entry 1 is transparent
    image = Image.new("P", (4, 1))
    image.putpalette([255, 0, 0, 0, 0, 255, 10, 20, 30] + [0] * 759)
    image.putdata([0, 1, 2, 1])
    image.info["transparency"] = 1
  else:
    image = Image.new(mode, (4, 1))
    image.putdata(row[mode])
  buffer = io.BytesIO()
  image.save(buffer, format=fmt, **({"transparency": 1} if mode == "P" else {}))
  return buffer.getvalue()


def _over(color, alpha, background=255):
  """Alpha compositing in float64, rounded: the reference for transparent pixels."""
  return int(np.floor(color * alpha / 255 + background * (255 - alpha) / 255 + 0.5))


# Expected RGB of each pixel on the default white background; CMYK -> RGB is
# (255 - C)(255 - K)/255; 16-bit values v -> round(v * 255 / 65535).
_MODE_PIXELS = {
    "1": [(0, 0, 0), (255, 255, 255), (255, 255, 255), (0, 0, 0)],
    "L": [(0, 0, 0), (50, 50, 50), (200, 200, 200), (255, 255, 255)],
    "LA": [(100, 100, 100), (255, 255, 255), (_over(100, 128),) * 3, (_over(0, 64),) * 3],
    "P": [(255, 0, 0), (255, 255, 255), (10, 20, 30), (255, 255, 255)],
    "RGBA": [(200, 100, 0), (255, 255, 255), (_over(200, 128), _over(100, 128), _over(0, 128)),
             (_over(0, 64), _over(0, 64), 255)],
    "I;16": [(0, 0, 0), (1, 1, 1), (128, 128, 128), (255, 255, 255)],
    "I;16B": [(0, 0, 0), (1, 1, 1), (128, 128, 128), (255, 255, 255)],
    "I": [(0, 0, 0), (1, 1, 1), (128, 128, 128), (255, 255, 255)],
    "CMYK": [(255, 255, 255), (0, 255, 255), (163, 204, 204), (0, 0, 0)],
}


@pytest.mark.parametrize("mode,fmt", [("1", "PNG"), ("L", "PNG"), ("LA", "PNG"), ("P", "PNG"),
                                      ("RGBA", "PNG"), ("I;16", "PNG"), ("I;16B", "TIFF"),
                                      ("I", "TIFF"), ("CMYK", "TIFF")])
def test_each_image_mode_decodes_to_exact_rgb(mode, fmt):
  """16-bit gray scales to 8 bits (not clipped to white), transparency is composited on
  white (not on black)."""
  # The whole 4x1 image resized to 4x4: columns kept, the one row repeated (no resampling).
  pixels, _, _ = transforms.decode_crop_resize(_encoded_in_mode(mode, fmt), 4,
                                               lambda w, h: (0, 0, w, h))
  np.testing.assert_array_equal(pixels[0], np.array(_MODE_PIXELS[mode], np.uint8))


def test_transparency_is_composited_on_the_configured_background():
  background = (10, 20, 230)
  pixels, _, _ = transforms.decode_crop_resize(_encoded_in_mode("RGBA"), 4,
                                               lambda w, h: (0, 0, w, h), background)
  expected = [(200, 100, 0), background,
              tuple(_over(c, 128, b) for c, b in zip((200, 100, 0), background)),
              tuple(_over(c, 64, b) for c, b in zip((0, 0, 255), background))]
  np.testing.assert_array_equal(pixels[0], np.array(expected, np.uint8))


def test_undecodable_bytes_raise_skip():
  with pytest.raises(transforms.SkipRecord, match="undecodable_image"):
    transforms.decode_crop_resize(b"\xff\xd8 not a jpeg", 32, transforms.center_crop_box)
  truncated = _encode(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8))[:300]
  with pytest.raises(transforms.SkipRecord):
    transforms.decode_crop_resize(truncated, 32, transforms.center_crop_box)


def test_random_resized_crop_stays_inside_and_respects_scale():
  rng = np.random.default_rng(0)
  for _ in range(200):
    left, top, right, bottom = transforms.random_resized_crop_box(rng, 120, 80, (0.3, 1.0))
    assert 0 <= left < right <= 120 + 1e-9 and 0 <= top < bottom <= 80 + 1e-9
    area = (right - left) * (bottom - top) / (120 * 80)
    assert 0.3 - 1e-9 <= area <= 1.0 + 1e-9


def test_box_in_crop_known_answer():
  # Source 100x50, box x 20..60, y 10..40 px; crop x 10..90, y 0..40 px.
  box = np.array([0.2, 0.2, 0.6, 0.8], np.float32)
  mapped, visible = transforms.box_in_crop(box, (10, 0, 90, 40), (100, 50), flipped=False)
  np.testing.assert_allclose(mapped, [10 / 80, 10 / 40, 50 / 80, 1.0], atol=1e-6)
  assert visible
  flipped, _ = transforms.box_in_crop(box, (10, 0, 90, 40), (100, 50), flipped=True)
  np.testing.assert_allclose(flipped, [1 - 50 / 80, 10 / 40, 1 - 10 / 80, 1.0], atol=1e-6)
  _, visible = transforms.box_in_crop(box, (70, 0, 100, 50), (100, 50), flipped=False)
  assert not visible


def test_box_region_known_answers():
  # A 20x10 box at (40..60, 20..30) of a 100x50 image: side 20 * 1.5 = 30, centred.
  box = np.array([0.4, 0.4, 0.6, 0.6], np.float32)
  np.testing.assert_allclose(transforms.box_region(box, 100, 50, 0.5), (35, 10, 65, 40))
  # Near the border the square shifts inside the image; larger than the image, it shrinks.
  corner = np.array([0.0, 0.0, 0.1, 0.2], np.float32)
  np.testing.assert_allclose(transforms.box_region(corner, 100, 50, 1.0), (0, 0, 20, 20))
  np.testing.assert_allclose(transforms.box_region(box, 100, 50, 5.0), (25, 0, 75, 50))
  # crop_within maps a crop of the region back to source pixels.
  assert transforms.crop_within((35, 15, 65, 45), lambda w, h: (0, 0, w / 2, h)) == (
      35, 15, 50, 45)


def test_crop_to_box_shows_the_product_and_maps_its_box(tokenizer):
  # A gray 96px photo with a small red square product at (60..72, 12..24).
  pixels = np.full((96, 96, 3), 128, np.uint8)
  pixels[12:24, 60:72] = (255, 0, 0)
  box = np.array([[60 / 96, 12 / 96, 72 / 96, 24 / 96]], np.float32)
  record = _record([_encode(pixels, "PNG")], boxes=box)
  plain = transforms.ExampleTransform(tokenizer, image_size=16)(record)
  oracle = transforms.ExampleTransform(tokenizer, image_size=16, crop_to_box=True,
                                       box_context=0.5)(record)
  red = lambda image: float(((image[..., 0] > 191) & (image[..., 1] < 128)).mean())  # noqa: E731
  assert red(plain["image"]) < 0.05
  # The region is the 18px square around the box: the product fills (12/18)^2 of it.
  assert abs(red(oracle["image"]) - (12 / 18) ** 2) < 0.1
  np.testing.assert_allclose(oracle["box"], [3 / 18, 3 / 18, 15 / 18, 15 / 18], atol=1e-5)
  # Training crops stay inside the region, so the product is always in view.
  train = transforms.ExampleTransform(tokenizer, image_size=16, crop_to_box=True)
  for seed in range(5):
    assert train(record, np.random.default_rng(seed))["box_mask"]
  with pytest.raises(ValueError, match="crop_to_box needs a box"):
    train(_record([_encode(pixels, "PNG")]), np.random.default_rng(0))


def test_two_views_are_two_different_images_of_the_product(tokenizer):
  red, blue = _encode(_solid((255, 0, 0))), _encode(_solid((0, 0, 255)))
  transform = transforms.ExampleTransform(tokenizer, image_size=16, num_views=2)
  for seed in range(10):
    example = transform(_record([red, blue]), np.random.default_rng(seed))
    assert example["images"].shape == (2, 16, 16, 3)
    dominant = sorted(int(np.argmax(view.mean(axis=(0, 1)))) for view in example["images"])
    assert dominant == [0, 2]  # one red view, one blue view
    assert example["view_mask"].tolist() == [True, True]
  # A single image serves both views, augmented differently; the second is not a new image.
  rng = np.random.default_rng(0)
  y, x = np.mgrid[0:64, 0:64]
  textured = _encode(np.stack([x * 4, y * 4, (x * y) % 256], -1).astype(np.uint8))
  example = transforms.ExampleTransform(tokenizer, image_size=16, num_views=2)(
      _record([textured]), rng)
  assert not np.allclose(example["images"][0], example["images"][1])
  assert example["view_mask"].tolist() == [True, False]


def test_example_keys_values_and_absent_modalities(tokenizer):
  transform = transforms.ExampleTransform(
      tokenizer, modalities=tuple(transforms.MODALITIES), image_size=16, audio_samples=100,
      video_frames=4, video_size=8,
  )
  record = _record([_encode(_solid((0, 255, 0)), "PNG")], title="  RED Mug ",
                   boxes=np.array([[0.0, 0.0, 1.0, 1.0]], np.float32))
  example = transform(record)  # eval: center crop, no flip
  assert example["image"].shape == (16, 16, 3) and example["image"].dtype == np.uint8
  np.testing.assert_array_equal(example["image"][..., 1], 255)
  np.testing.assert_array_equal(example["text_tokens"], tokenizer.encode(["red mug"], 32)[0][0])
  assert example["box_mask"] and example["product_id"] == 7 and example["catalog_id"] == 3
  assert example["table_mask"].any()
  # Absent video and audio: zeros with all-false masks (the modality is missing).
  assert example["video"].shape == (4, 8, 8, 3) and not example["video_mask"].any()
  assert example["audio"].shape == (100,) and not example["audio_mask"].any()
  assert not transform(_record([_encode(_solid(0), "PNG")], attributes={"key": [], "value": []})
                       )["table_mask"].any()


def test_audio_resampled_and_video_frames_sampled(tokenizer):
  transform = transforms.ExampleTransform(
      tokenizer, modalities=("text", "video", "audio"), audio_samples=80,
      audio_sample_rate=8000, video_frames=4, video_size=8,
  )
  waveform = (np.sin(np.arange(160) / 5) * 16000).astype(np.int16)  # 10 ms at 16 kHz
  frames = [_encode(_solid((i * 30, 0, 0), 16)) for i in range(2)]
  example = transform(_record([], audio={"waveform": waveform, "sample_rate": 16000},
                              video_frames=frames))
  assert example["audio_mask"].sum() == 80  # 160 samples at 16 kHz = 80 at 8 kHz
  np.testing.assert_allclose(example["audio"][40], waveform[80] / 32768, atol=0.02)
  np.testing.assert_array_equal(example["video_mask"], [True, True, False, False])


@pytest.mark.parametrize("record_kwargs, reason", [
    (dict(title="   "), "empty_title"),
    (dict(images=[]), "no_images"),
    (dict(images=[b"garbage"]), "undecodable_image"),
])
def test_bad_records_become_skip_markers(tokenizer, record_kwargs, reason):
  transform = transforms.ExampleTransform(tokenizer, image_size=16)
  record = _record([_encode(_solid(0))])
  record.update({k: (v.encode() if k == "title" else v) for k, v in record_kwargs.items()})
  assert transform(record, np.random.default_rng(0)) == {
      transforms.SKIP_KEY: transforms.SKIP_REASONS.index(reason)}


def test_normalizer_mismatch_is_refused(tokenizer):
  with pytest.raises(ValueError, match="trained after 'basic'"):
    transforms.ExampleTransform(tokenizer, text_normalizer="none")
