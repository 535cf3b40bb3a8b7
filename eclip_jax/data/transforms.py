"""Record -> example transforms run inside Grain (and its worker processes).

`ExampleTransform` turns one decoded TFDS record into one training or evaluation example:
a flat dict of fixed-shape numpy arrays with the batch keys DESIGN.md fixes (`image` or
`images`, `text_tokens`, `product_id`, ...). A record that cannot become an example (an
undecodable image, an empty title) becomes a *skip marker* `{SKIP_KEY: reason_index}`
instead of raising; the pipeline drops markers and counts them by reason.

Images are decoded crop-aware: the crop is chosen from the JPEG header's size before any
pixel is decoded, and libjpeg's DCT scaling (PIL `draft`) then decodes at the smallest of
1/1, 1/2, 1/4, 1/8 scale that still leaves the crop at least the output size. A 224px crop
out of a 1000px photo decodes about 16x fewer pixels; results match a full decode to
within resampling differences.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image

from eclip_jax.data import text as text_lib
from eclip_jax.data import tokenizer as tokenizer_lib

SKIP_KEY = "_skip"
SKIP_REASONS = ("empty_title", "no_images", "undecodable_image", "undecodable_video", "bad_audio")
SKIPPED_KEY = "_skipped"  # per-example tally of records skipped before it, [len(SKIP_REASONS)]
MODALITIES = ("image", "text", "table", "video", "audio")

PixelBox = tuple[float, float, float, float]  # left, top, right, bottom in source pixels


class SkipRecord(Exception):
  """Raised inside a transform to turn the record into a skip marker."""

  def __init__(self, reason: str):
    assert reason in SKIP_REASONS, reason
    super().__init__(reason)
    self.reason = reason


# ---------------------------------------------------------------------------------------
# Crops.
# ---------------------------------------------------------------------------------------


def random_resized_crop_box(
    rng: np.random.Generator,
    width: int,
    height: int,
    scale: tuple[float, float],
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> PixelBox:
  """Inception-style crop: area fraction in `scale`, log-uniform aspect ratio in `ratio`."""
  area = width * height
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(10):
    target_area = area * rng.uniform(*scale)
    aspect = math.exp(rng.uniform(*log_ratio))
    crop_w = math.sqrt(target_area * aspect)
    crop_h = math.sqrt(target_area / aspect)
    if crop_w <= width and crop_h <= height:
      left = rng.uniform(0, width - crop_w)
      top = rng.uniform(0, height - crop_h)
      return (left, top, left + crop_w, top + crop_h)
  return center_crop_box(width, height)


def center_crop_box(width: int, height: int) -> PixelBox:
  """The central square of side min(width, height): resize-shorter-side + center crop."""
  side = min(width, height)
  left, top = (width - side) / 2, (height - side) / 2
  return (left, top, left + side, top + side)


def box_region(box: np.ndarray, width: int, height: int, context: float) -> PixelBox:
  """The square around a normalized xyxy `box`: side (1 + context) x the box's longer side
  (at most the image's shorter side), centred on the box, then shifted inside the image."""
  x0, y0, x1, y1 = (float(v) for v in np.asarray(box, np.float64) * (width, height, width, height))
  side = min(max(x1 - x0, y1 - y0) * (1 + context), width, height)
  left = min(max((x0 + x1 - side) / 2, 0.0), width - side)
  top = min(max((y0 + y1 - side) / 2, 0.0), height - side)
  return (left, top, left + side, top + side)


def crop_within(region: PixelBox, choose_crop: Callable[[int, int], PixelBox]) -> PixelBox:
  """`choose_crop` applied to `region` as if it were the whole image, in source pixels."""
  left, top, right, bottom = region
  inner = choose_crop(right - left, bottom - top)
  return (left + inner[0], top + inner[1], left + inner[2], top + inner[3])


def decode_crop_resize(
    encoded: bytes, size: int, choose_crop: Callable[[int, int], PixelBox]
) -> tuple[np.ndarray, PixelBox, tuple[int, int]]:
  """Decodes `encoded`, crops `choose_crop(w, h)` and resizes to size x size.

  Returns (uint8 [size, size, 3], the crop in source pixels, the source (w, h)). Raises
  SkipRecord("undecodable_image") on bytes PIL cannot decode.
  """
  try:
    image = Image.open(io.BytesIO(encoded))
    width, height = image.size
    crop = choose_crop(width, height)
    if image.format == "JPEG":
      crop_side = min(crop[2] - crop[0], crop[3] - crop[1])
      reduction = 1
      while reduction < 8 and crop_side / (reduction * 2) >= size:
        reduction *= 2
      if reduction > 1:
        image.draft("RGB", (math.ceil(width / reduction), math.ceil(height / reduction)))
    image.load()  # decodes (at the drafted scale)
    if image.mode != "RGB":  # convert() would also copy an image that is RGB already
      image = image.convert("RGB")
  except (OSError, ValueError, Image.DecompressionBombError, SyntaxError) as error:
    raise SkipRecord("undecodable_image") from error
  scale_x, scale_y = image.size[0] / width, image.size[1] / height
  scaled = (crop[0] * scale_x, crop[1] * scale_y, crop[2] * scale_x, crop[3] * scale_y)
  return crop_resize(image, size, scaled), crop, (width, height)


def crop_resize(image: Image.Image, size: int, crop: PixelBox) -> np.ndarray:
  """`crop` (in the image's pixels) of an RGB image, resized to uint8 [size, size, 3]."""
  return np.asarray(image.resize((size, size), Image.Resampling.BILINEAR, box=crop))


def box_in_crop(
    box: np.ndarray, crop: PixelBox, source_size: tuple[int, int], flipped: bool
) -> tuple[np.ndarray, bool]:
  """Maps a normalized xyxy box of the source image into the output crop's coordinates.

  Returns (box clipped to [0, 1], whether any of it is inside the crop).
  """
  width, height = source_size
  crop_w, crop_h = crop[2] - crop[0], crop[3] - crop[1]
  x0 = (box[0] * width - crop[0]) / crop_w
  x1 = (box[2] * width - crop[0]) / crop_w
  y0 = (box[1] * height - crop[1]) / crop_h
  y1 = (box[3] * height - crop[1]) / crop_h
  if flipped:
    x0, x1 = 1 - x1, 1 - x0
  mapped = np.clip(np.array([x0, y0, x1, y1], np.float32), 0.0, 1.0)
  return mapped, bool(mapped[2] > mapped[0] and mapped[3] > mapped[1])


# ---------------------------------------------------------------------------------------
# The example transform.
# ---------------------------------------------------------------------------------------


@dataclasses.dataclass
class ExampleTransform:
  """Record -> example; `rng` None means evaluation (deterministic, no augmentation)."""

  tokenizer: tokenizer_lib.Tokenizer
  modalities: Sequence[str] = ("image", "text")
  image_size: int = 64
  num_views: int = 1
  crop_scale: tuple[float, float] = (0.35, 1.0)
  flip: bool = True
  value_range: tuple[float, float] = (-1.0, 1.0)
  # Diagnostic oracle: crop every image to the square around its product box (enlarged by
  # `box_context`) before the usual crop, so the model sees the product at full resolution.
  crop_to_box: bool = False
  box_context: float = 0.25
  max_text_len: int = 32
  text_normalizer: str = "basic"
  max_table_len: int = 64
  video_frames: int = 8
  video_size: int = 32
  audio_samples: int = 8000
  audio_sample_rate: int = 16_000

  def __post_init__(self):
    unknown = set(self.modalities) - set(MODALITIES)
    if unknown:
      raise ValueError(f"input.modalities has unknown {sorted(unknown)}; known: {MODALITIES}")
    self._normalize = text_lib.get_normalizer(self.text_normalizer)
    if self.tokenizer.normalizer not in (None, self.text_normalizer):
      raise ValueError(
          f"input.text_normalizer={self.text_normalizer!r} but the tokenizer "
          f"{self.tokenizer.model_path} was trained after {self.tokenizer.normalizer!r}; "
          "use the same normalizer or retrain the tokenizer"
      )

  def required_fields(self) -> tuple[str, ...]:
    """The record fields this transform reads (the pipeline deserializes only these)."""
    fields = ["product_index", "catalog_index", "category", "restricted"]
    per_modality = {"text": ["title"], "image": ["images", "boxes"], "table": ["attributes"],
                    "video": ["video_frames"], "audio": ["audio"]}
    for modality in self.modalities:
      fields += per_modality[modality]
    return tuple(fields)

  def __call__(self, record: Mapping[str, Any], rng: np.random.Generator | None = None):
    try:
      return self._transform(record, rng)
    except SkipRecord as skip:
      return {SKIP_KEY: SKIP_REASONS.index(skip.reason)}

  def _transform(self, record, rng) -> dict[str, np.ndarray]:
    example = {
        "product_id": np.int32(record["product_index"]),
        "catalog_id": np.int32(record["catalog_index"]),
        "category": np.int32(record["category"]),
        "restricted": np.bool_(record["restricted"]),
    }
    if "text" in self.modalities:
      title = self._normalize(_to_str(record["title"]))
      if not title:
        raise SkipRecord("empty_title")
      tokens, mask = self.tokenizer.encode([title], self.max_text_len)
      example["text_tokens"], example["text_mask"] = tokens[0], mask[0]
    if "image" in self.modalities:
      example.update(self._images(record, rng))
    if "table" in self.modalities:
      example.update(self._table(record))
    if "video" in self.modalities:
      example.update(self._video(record, rng))
    if "audio" in self.modalities:
      example.update(self._audio(record, rng))
    return example

  def _images(self, record, rng) -> dict[str, np.ndarray]:
    encoded = record["images"]
    if len(encoded) == 0:
      raise SkipRecord("no_images")
    boxes = np.asarray(record["boxes"], np.float32)
    if self.crop_to_box and len(boxes) == 0:
      raise ValueError(
          f"input.crop_to_box needs a box for every image; product {record['product_index']} "
          "has none (train without crop_to_box, or on a dataset that records boxes)")
    views, view_boxes, view_box_mask = [], [], []
    for image_index in self._view_indices(len(encoded), rng):
      if rng is None:
        choose_crop, flipped = center_crop_box, False
      else:
        choose_crop = lambda w, h: random_resized_crop_box(rng, w, h, self.crop_scale)  # noqa: E731
        flipped = self.flip and bool(rng.random() < 0.5)
      if self.crop_to_box:
        choose_crop = functools.partial(self._crop_in_box, boxes[image_index], choose_crop)
      pixels, crop, source_size = decode_crop_resize(
          encoded[image_index], self.image_size, choose_crop
      )
      views.append(to_value_range(pixels[:, ::-1] if flipped else pixels, self.value_range))
      if len(boxes):
        box, visible = box_in_crop(boxes[image_index], crop, source_size, flipped)
      else:
        box, visible = np.zeros(4, np.float32), False
      view_boxes.append(box)
      view_box_mask.append(visible)
    if self.num_views == 1:
      return {"image": views[0], "box": view_boxes[0], "box_mask": np.bool_(view_box_mask[0])}
    # A view is new when it shows an image no earlier view showed (`_view_indices` takes
    # distinct images first): repeats are fine for training, but not gallery items.
    new_view = np.arange(self.num_views) < len(encoded)
    return {"images": np.stack(views), "boxes": np.stack(view_boxes),
            "box_mask": np.array(view_box_mask), "view_mask": new_view}

  def _crop_in_box(self, box, choose_crop, width, height) -> PixelBox:
    return crop_within(box_region(box, width, height, self.box_context), choose_crop)

  def _view_indices(self, num_images: int, rng) -> list[int]:
    """Distinct images of the product where it has enough; otherwise images repeat (their
    augmentations still differ). Evaluation takes the first ones, in order."""
    if rng is None:
      return [i % num_images for i in range(self.num_views)]
    if self.num_views == 1:  # the common case, without rng.choice's overhead
      return [int(rng.integers(num_images))]
    distinct = rng.permutation(num_images)[: self.num_views].tolist()
    return distinct + rng.integers(num_images, size=self.num_views - len(distinct)).tolist()

  def _table(self, record) -> dict[str, np.ndarray]:
    attributes = record["attributes"]
    entries = [
        f"{_to_str(k)}: {_to_str(v)}" for k, v in zip(attributes["key"], attributes["value"])
    ]
    tokens, mask = self.tokenizer.encode([self._normalize(" ; ".join(entries))], self.max_table_len)
    # An empty table is an absent modality, not a table of BOS/EOS.
    return {"table_tokens": tokens[0], "table_mask": mask[0] & bool(entries)}

  def _video(self, record, rng) -> dict[str, np.ndarray]:
    del rng  # frames are sampled uniformly over the clip, the same in training and eval
    frames = record["video_frames"]
    video = np.zeros((self.video_frames, self.video_size, self.video_size, 3), np.uint8)
    mask = np.zeros((self.video_frames,), np.bool_)
    if len(frames):
      chosen = np.linspace(0, len(frames) - 1, num=min(self.video_frames, len(frames)))
      for slot, frame_index in enumerate(np.round(chosen).astype(int)):
        try:
          video[slot], _, _ = decode_crop_resize(
              frames[frame_index], self.video_size, lambda w, h: (0, 0, w, h)
          )
        except SkipRecord as error:
          raise SkipRecord("undecodable_video") from error
        mask[slot] = True
    return {"video": to_value_range(video, self.value_range), "video_mask": mask}

  def _audio(self, record, rng) -> dict[str, np.ndarray]:
    waveform = np.asarray(record["audio"]["waveform"], np.float32) / 32768.0
    sample_rate = int(record["audio"]["sample_rate"])
    audio = np.zeros((self.audio_samples,), np.float32)
    mask = np.zeros((self.audio_samples,), np.bool_)
    if len(waveform):
      if sample_rate <= 0:
        raise SkipRecord("bad_audio")
      if sample_rate != self.audio_sample_rate:  # linear resampling is enough for these models
        step = sample_rate / self.audio_sample_rate  # source samples per output sample
        positions = np.arange(max(1, round(len(waveform) / step))) * step
        waveform = np.interp(positions, np.arange(len(waveform)), waveform).astype(np.float32)
      start = 0
      if rng is not None and len(waveform) > self.audio_samples:
        start = int(rng.integers(len(waveform) - self.audio_samples + 1))
      clip = waveform[start : start + self.audio_samples]
      audio[: len(clip)], mask[: len(clip)] = clip, True
    return {"audio": audio, "audio_mask": mask}


def _to_str(value: bytes | str) -> str:
  return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else value


def to_value_range(pixels: np.ndarray, value_range: tuple[float, float]) -> np.ndarray:
  low, high = value_range
  scaled = pixels.astype(np.float32)  # a copy, also of a flipped view: contiguous output
  scaled *= (high - low) / 255.0
  scaled += low
  return scaled
