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

Every image becomes 8-bit RGB the same way (`to_rgb`): 16-bit images (and 32-bit integer
ones, read as 16-bit) are scaled from 0..65535, and transparency (RGBA, LA, a palette or
colour with a transparent entry) is composited on `input.background` (default white: a
catalog cut-out stays a product on white, not on black). Pixels leave the pipeline as that
uint8 (`PIXEL_FIELDS`): the compiled step maps them onto `input.value_range` on the device
(`pipeline.model_inputs`), which spares the host a float copy of every image and the
transfer 4x the bytes.

SCALE's inputs (M5Product) are modalities too: `audio_mel` (log-mel frames from the
waveform, or the record's pre-extracted mel matrix), `regions` (pre-extracted region
features and boxes), `video_feats` (pre-extracted per-second frame features); the table can
carry its entity boundaries (`input.table_entities`) for masked entity modeling.

Presence: every modality's example has a mask that is all-false when the record lacks it
(`text_mask`, `table_mask`, `video_mask`, `audio_mask`, `region_mask`, `frame_mask`,
`audio_mel_mask`; an example without an image or a title is skipped, never made), so a
modality is present exactly when `<mask>.any()`: no separate `*_present` key is needed.

Masked modeling (`input.masking=True`): the masks are drawn here, from the example's seeded
generator, so they are reproducible and a resumed run draws the same ones; evaluation
(`rng` None) masks nothing but has the same keys. `input.mask_prob` (15%) of the title's
tokens get BERT's 80/10/10 corruption (`text_tokens_masked`, `text_mlm_targets`: the
original token where masked, -1 elsewhere); of the table's tokens, whole entities (a key or
a value) are chosen until that share is reached (`table_tokens_masked`,
`table_mlm_targets`, 80/10/10 per entity); of the present regions, frames and mel frames,
and (with `input.mask_patch_size`) of the image's patches, `region_mlm_mask`,
`frame_mlm_mask`, `audio_mel_mlm_mask`, `image_mlm_mask` say which to hide (the features and
pixels stay as they are: they are the regression targets; the model hides the inputs).
[MASK] is `tokenizer.MASK_ID`; random replacements are uniform over the content pieces.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
from PIL import Image

from eclip_jax.data import schema
from eclip_jax.data import text as text_lib
from eclip_jax.data import tokenizer as tokenizer_lib

SKIP_KEY = "_skip"
# Append only: iterator states store counts by position.
SKIP_REASONS = ("empty_title", "no_images", "undecodable_image", "undecodable_video", "bad_audio",
                "short_title", "non_text_title", "incomplete")
SKIPPED_KEY = "_skipped"  # per-example tally of records skipped before it, [len(SKIP_REASONS)]

PixelBox = tuple[float, float, float, float]  # left, top, right, bottom in source pixels
WHITE = (255, 255, 255)
# Modes whose gray levels span 0..65535 (PIL opens 16-bit PNGs and TIFFs as these).
_WIDE_GRAY_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N")


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


def to_rgb(image: Image.Image, background: tuple[int, int, int] = WHITE) -> Image.Image:
  """`image` as 8-bit RGB: wide gray levels scaled by 255/65535 (rounded), transparent
  pixels composited on `background` (alpha-weighted, rounded)."""
  if image.mode == "RGB":
    return image
  if image.mode in _WIDE_GRAY_MODES:
    gray = np.clip(np.asarray(image, np.int64), 0, 65535)
    return Image.fromarray(((gray * 255 + 32767) // 65535).astype(np.uint8)).convert("RGB")
  if image.has_transparency_data:
    rgba = image.convert("RGBA")
    composite = Image.new("RGB", image.size, tuple(background))
    composite.paste(rgba, mask=rgba.getchannel("A"))
    return composite
  return image.convert("RGB")


def decode_crop_resize(
    encoded: bytes, size: int, choose_crop: Callable[[int, int], PixelBox],
    background: tuple[int, int, int] = WHITE,
) -> tuple[np.ndarray, PixelBox, tuple[int, int]]:
  """Decodes `encoded`, crops `choose_crop(w, h)` and resizes to size x size.

  Returns (uint8 [size, size, 3], the crop in source pixels, the source (w, h)). Raises
  SkipRecord("undecodable_image") on bytes PIL cannot decode. Transparent pixels show
  `background`.
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
    image = to_rgb(image, background)
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
# Modalities: what each reads from a record and what it adds to an example.
# ---------------------------------------------------------------------------------------


class ArraySpec(NamedTuple):
  """The shape (without the batch axis) and dtype of one example key."""

  shape: tuple[int, ...]
  dtype: np.dtype


@dataclasses.dataclass(frozen=True)
class Modality:
  """How one modality of a record becomes example arrays (`input.modalities` names them).

  Attributes:
    fields: the record fields it reads (the pipeline deserializes only those).
    spec: `(transform) -> {key: ArraySpec}`, every key it adds, from the transform's settings.
    apply: `(transform, record, rng) -> {key: array}`, matching `spec` exactly; `rng` is the
      example's seeded generator in training (augmentation, masks for masked modeling: drawn
      here, they are reproducible and resume exactly) and None in evaluation. Raises
      `SkipRecord` on a record it cannot use.
    masks: the bool keys that say which of its positions exist, the first one deciding
      whether the example has the modality at all (any True); all False = missing.
    targets: its masked-modeling target keys whose -1 means "nothing to predict".
  """

  fields: tuple[str, ...]
  spec: Callable[[ExampleTransform], dict[str, ArraySpec]]
  apply: Callable[[ExampleTransform, Mapping[str, Any], np.random.Generator | None],
                  dict[str, np.ndarray]]
  masks: tuple[str, ...] = ()
  targets: tuple[str, ...] = ()


MODALITIES: dict[str, Modality] = {}


def register_modality(name: str, modality: Modality) -> None:
  """Makes `modality` available as `input.modalities` entry `name`."""
  if name in MODALITIES:
    raise ValueError(f"a modality named {name!r} is registered already")
  MODALITIES[name] = modality


# Keys every example has, whatever its modalities.
LABEL_SPEC = {
    "product_id": ArraySpec((), np.dtype(np.int32)),
    "catalog_id": ArraySpec((), np.dtype(np.int32)),
    "category": ArraySpec((), np.dtype(np.int32)),
    "restricted": ArraySpec((), np.dtype(np.bool_)),
}
LABEL_FIELDS = ("product_index", "catalog_index", "category", "restricted")


def _spec(**keys: tuple[tuple[int, ...], Any]) -> dict[str, ArraySpec]:
  return {key: ArraySpec(tuple(shape), np.dtype(dtype)) for key, (shape, dtype) in keys.items()}


_MISSING_SALT = 0x5CA1E  # seeds simulate_missing's per-record draw, apart from other draws


def present_modalities(example: Mapping[str, np.ndarray]) -> list[str]:
  """The registered modalities `example` has (in registry order): those of its modalities
  whose first mask key exists and holds a True."""
  return [name for name, modality in MODALITIES.items()
          if modality.masks and modality.masks[0] in example
          and np.any(example[modality.masks[0]])]


def remove_modalities(example: dict[str, np.ndarray], names: Sequence[str]) -> None:
  """Makes `example` lack the modalities `names`, in place: their masks all False and their
  masked-modeling targets -1 (what a record without them gives; the values stay, and the
  models read no position whose mask is False)."""
  for name in names:
    modality = MODALITIES[name]
    for key in modality.masks:
      if key in example:
        example[key] = np.zeros_like(example[key])
    for key in modality.targets:
      if key in example:
        example[key] = np.full_like(example[key], -1)


# ---------------------------------------------------------------------------------------
# The example transform.
# ---------------------------------------------------------------------------------------


@dataclasses.dataclass
class ExampleTransform:
  """Record -> example; `rng` None means evaluation (deterministic, no augmentation).

  `tokenizer` None gives a transform that can only describe its examples (`example_spec`),
  e.g. to initialize a model before any data exists.
  """

  tokenizer: tokenizer_lib.Tokenizer | None
  modalities: Sequence[str] = ("image", "text")
  image_size: int = 64
  num_views: int = 1
  crop_scale: tuple[float, float] = (0.35, 1.0)
  flip: bool = True
  # Diagnostic oracle: crop every image to the square around its product box (enlarged by
  # `box_context`) before the usual crop, so the model sees the product at full resolution.
  crop_to_box: bool = False
  box_context: float = 0.25
  background: tuple[int, int, int] = WHITE  # what transparent pixels show
  max_text_len: int = 32
  text_normalizer: str = "basic"
  # e-CLIP's title cleaning and pair filters (text.title_cleaner): the ops applied to titles
  # before the normalizer, and the minimum tokens / share of letters and digits a cleaned
  # title needs (0: no filter); filtered pairs are skipped and counted by reason.
  title_cleaning: tuple[str, ...] = ()
  promo_phrases: tuple[str, ...] = text_lib.DEFAULT_PROMO_PHRASES
  min_title_tokens: int = 0
  min_title_text_fraction: float = 0.0
  max_table_len: int = 64
  video_frames: int = 8
  video_size: int = 32
  audio_samples: int = 8000
  audio_sample_rate: int = 16_000
  # SCALE (module docstring): log-mel frames per example (751: M5Product's 7.5 s matrices),
  # region features kept (the release has 36), frame features kept (<= 12 per second).
  audio_mel_frames: int = 751
  max_regions: int = 36
  video_feat_frames: int = 12
  table_entities: bool = False  # add table_entity / table_is_value (masking implies it)
  masking: bool = False  # draw masked-modeling masks in training
  mask_prob: float = 0.15
  # With masking: hide whole `mask_patch_size`-pixel patches of the (one-view) image for
  # masked-patch regression (the image encoder's patch size); 0 hides no pixels.
  mask_patch_size: int = 0
  # Incomplete training examples (SCALE): `simulate_missing` of them lose a random non-empty
  # proper subset of their modalities, chosen per record (the same in every epoch and run);
  # `complete_only` skips every training example that lacks a modality (`incomplete`).
  # Evaluation sees every modality of every record.
  simulate_missing: float = 0.0
  complete_only: bool = False

  def __post_init__(self):
    for field in ("audio_mel_frames", "max_regions", "video_feat_frames"):
      if not getattr(self, field) >= 1:
        raise ValueError(f"input.{field}={getattr(self, field)!r} must be at least 1; raise it.")
    if not 0 < self.mask_prob <= 1:
      raise ValueError(f"input.mask_prob={self.mask_prob!r} must be in (0, 1] (0.15 is BERT's "
                       "and SCALE's); set it to such a share.")
    unknown = set(self.modalities) - set(MODALITIES)
    if unknown:
      raise ValueError(f"input.modalities has unknown {sorted(unknown)}; known: "
                       f"{tuple(MODALITIES)}")
    if self.mask_patch_size and (self.mask_patch_size < 0
                                 or self.image_size % self.mask_patch_size):
      raise ValueError(f"input.mask_patch_size={self.mask_patch_size!r} must divide "
                       f"input.image_size={self.image_size} (use the ViT's patch size).")
    if not 0 <= self.simulate_missing <= 1:
      raise ValueError(f"input.simulate_missing={self.simulate_missing!r} is a share of the "
                       "training examples: set it in [0, 1].")
    if (self.simulate_missing or self.complete_only) and self.num_views > 1:
      raise ValueError("input.simulate_missing and input.complete_only work with one image "
                       "per example; set input.num_views=1.")
    self._normalize = text_lib.get_normalizer(self.text_normalizer)
    self._clean_title = text_lib.title_cleaner(tuple(self.title_cleaning),
                                               tuple(self.promo_phrases))
    if self.min_title_tokens > self.max_text_len - 2:
      raise ValueError(
          f"input.min_title_tokens={self.min_title_tokens} exceeds the {self.max_text_len - 2} "
          "tokens a title can keep (input.max_text_len minus BOS and EOS); lower it.")
    if self.tokenizer is not None and self.tokenizer.normalizer not in (
        None, self.text_normalizer):
      raise ValueError(
          f"input.text_normalizer={self.text_normalizer!r} but the tokenizer "
          f"{self.tokenizer.model_path} was trained after {self.tokenizer.normalizer!r}; "
          "use the same normalizer or retrain the tokenizer"
      )

  def required_fields(self) -> tuple[str, ...]:
    """The record fields this transform reads (the pipeline deserializes only these)."""
    fields = list(LABEL_FIELDS)
    for name, modality in MODALITIES.items():
      if name in self.modalities:
        fields += modality.fields
    return tuple(fields)

  def example_spec(self) -> dict[str, ArraySpec]:
    """Every key of an example, with its shape and dtype: what a batch will hold."""
    spec = dict(LABEL_SPEC)
    for name, modality in MODALITIES.items():
      if name in self.modalities:
        spec.update(modality.spec(self))
    return spec

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
    # In registry order, whatever the config's order: each modality draws from `rng` in turn.
    for name, modality in MODALITIES.items():
      if name in self.modalities:
        example.update(modality.apply(self, record, rng))
    if rng is not None and self.simulate_missing:
      remove_modalities(example, self._simulated_missing(record, example))
    if rng is not None and self.complete_only and len(present_modalities(example)) < len(
        self.modalities):
      raise SkipRecord("incomplete")
    return example

  def _simulated_missing(self, record, example) -> list[str]:
    """The modalities `simulate_missing` takes from this record: none for 1 - p of records,
    else k of its n present ones, k uniform in 1..n-1. Drawn from the record's own index
    (not the training rng), so a record is incomplete in every epoch, seed and arm alike."""
    rng = np.random.default_rng((_MISSING_SALT, int(record["product_index"])))
    present = present_modalities(example)
    if len(present) < 2 or rng.random() >= self.simulate_missing:
      return []
    count = int(rng.integers(1, len(present)))
    return [present[i] for i in sorted(rng.permutation(len(present))[:count])]

  def normalize(self, text: str) -> str:
    """`input.text_normalizer` applied to `text`."""
    return self._normalize(text)

  def clean_title(self, title: str) -> str:
    """`input.title_cleaning`'s ops applied to a title (before the normalizer)."""
    return self._clean_title(title)

  def encode_text(self, text: str, max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Normalized and tokenized like every text of the pipeline: ([max_len], [max_len])."""
    tokens, mask = self.tokenizer.encode([self.normalize(text)], max_len)
    return tokens[0], mask[0]


def _text(transform: ExampleTransform, record, rng) -> dict[str, np.ndarray]:
  title = transform.clean_title(_to_str(record["title"]))
  if text_lib.text_fraction(title) < transform.min_title_text_fraction:
    raise SkipRecord("non_text_title")
  title = transform.normalize(title)
  if not title:
    raise SkipRecord("empty_title")
  tokens, mask = transform.tokenizer.encode([title], transform.max_text_len)
  if mask[0].sum() - 2 < transform.min_title_tokens:  # BOS and EOS are not the title's
    raise SkipRecord("short_title")
  example = {"text_tokens": tokens[0], "text_mask": mask[0]}
  if transform.masking:
    tokens = tokens[0]
    content = mask[0] & (tokens != tokenizer_lib.BOS_ID) & (tokens != tokenizer_lib.EOS_ID)
    units = np.where(content, np.arange(len(tokens)), -1)  # every piece is a unit of its own
    example["text_tokens_masked"], example["text_mlm_targets"] = _corrupt(
        transform, tokens, units, rng)
  return example


def _text_spec(transform: ExampleTransform) -> dict[str, ArraySpec]:
  length = (transform.max_text_len,)
  spec = _spec(text_tokens=(length, np.int32), text_mask=(length, np.bool_))
  if transform.masking:
    spec.update(_spec(text_tokens_masked=(length, np.int32), text_mlm_targets=(length, np.int32)))
  return spec


def _images(transform: ExampleTransform, record, rng) -> dict[str, np.ndarray]:
  encoded = record["images"]
  if len(encoded) == 0:
    raise SkipRecord("no_images")
  boxes = np.asarray(record["boxes"], np.float32)
  if transform.crop_to_box and len(boxes) == 0:
    raise ValueError(
        f"input.crop_to_box needs a box for every image; product {record['product_index']} "
        "has none (train without crop_to_box, or on a dataset that records boxes)")
  views, view_boxes, view_box_mask = [], [], []
  for image_index in _view_indices(transform.num_views, len(encoded), rng):
    if rng is None:
      choose_crop, flipped = center_crop_box, False
    else:
      choose_crop = lambda w, h: random_resized_crop_box(rng, w, h, transform.crop_scale)  # noqa: E731
      flipped = transform.flip and bool(rng.random() < 0.5)
    if transform.crop_to_box:
      choose_crop = functools.partial(_crop_in_box, boxes[image_index], transform.box_context,
                                      choose_crop)
    pixels, crop, source_size = decode_crop_resize(
        encoded[image_index], transform.image_size, choose_crop, transform.background
    )
    views.append(pixels[:, ::-1] if flipped else pixels)
    if len(boxes):
      box, visible = box_in_crop(boxes[image_index], crop, source_size, flipped)
    else:
      box, visible = np.zeros(4, np.float32), False
    view_boxes.append(box)
    view_box_mask.append(visible)
  if transform.num_views == 1:
    example = {"image": views[0], "box": view_boxes[0], "box_mask": np.bool_(view_box_mask[0])}
    if _image_presence(transform):
      example["image_present"] = np.bool_(True)
    if _masks_patches(transform):
      example["image_mlm_mask"] = _masked_positions(
          transform, np.ones(_num_patches(transform), np.bool_), rng)
    return example
  # A view is new when it shows an image no earlier view showed (`_view_indices` takes
  # distinct images first): repeats are fine for training, but not gallery items.
  new_view = np.arange(transform.num_views) < len(encoded)
  return {"images": np.stack(views), "boxes": np.stack(view_boxes),
          "box_mask": np.array(view_box_mask), "view_mask": new_view}


def _images_spec(transform: ExampleTransform) -> dict[str, ArraySpec]:
  pixels, views = (transform.image_size, transform.image_size, 3), transform.num_views
  if views == 1:
    spec = _spec(image=(pixels, np.uint8), box=((4,), np.float32), box_mask=((), np.bool_))
    if _image_presence(transform):
      spec.update(_spec(image_present=((), np.bool_)))
    if _masks_patches(transform):
      spec.update(_spec(**_mlm_mask_spec(transform, "image", _num_patches(transform))))
    return spec
  return _spec(images=((views, *pixels), np.uint8), boxes=((views, 4), np.float32),
               box_mask=((views,), np.bool_), view_mask=((views,), np.bool_))


def _image_presence(transform: ExampleTransform) -> bool:
  """Whether examples say if they have their image (`image_present`): only when some can
  lack it, i.e. with simulated missing modalities; a record always has an image otherwise."""
  return transform.simulate_missing > 0 or transform.complete_only


def _masks_patches(transform: ExampleTransform) -> bool:
  """Whether examples carry `image_mlm_mask`: the patches to hide, in row-major patch order
  (the ViT's), for masked-patch regression on pixels."""
  return transform.masking and transform.mask_patch_size > 0 and transform.num_views == 1


def _num_patches(transform: ExampleTransform) -> int:
  return (transform.image_size // transform.mask_patch_size) ** 2


def _crop_in_box(box, context: float, choose_crop, width, height) -> PixelBox:
  return crop_within(box_region(box, width, height, context), choose_crop)


def _view_indices(num_views: int, num_images: int, rng) -> list[int]:
  """Distinct images of the product where it has enough; otherwise images repeat (their
  augmentations still differ). Evaluation takes the first ones, in order."""
  if rng is None:
    return [i % num_images for i in range(num_views)]
  if num_views == 1:  # the common case, without rng.choice's overhead
    return [int(rng.integers(num_images))]
  distinct = rng.permutation(num_images)[:num_views].tolist()
  return distinct + rng.integers(num_images, size=num_views - len(distinct)).tolist()


def _table(transform: ExampleTransform, record, rng) -> dict[str, np.ndarray]:
  attributes = record["attributes"]
  pairs = [(_to_str(k), _to_str(v)) for k, v in zip(attributes["key"], attributes["value"])]
  serialized = " ; ".join(f"{k}: {v}" for k, v in pairs)
  if not _table_has_entities(transform):
    tokens, mask = transform.encode_text(serialized, transform.max_table_len)
    # An empty table is an absent modality, not a table of BOS/EOS.
    return {"table_tokens": tokens, "table_mask": mask & bool(pairs)}
  # The same tokens as above (one serialized text), with where each piece came from.
  text = transform.normalize(serialized)
  tokens, spans = transform.tokenizer.encode_with_spans(text, transform.max_table_len)
  entities = [transform.normalize(part) for pair in pairs for part in pair]
  entity = table_token_entities(text, entities, spans)
  example = {"table_tokens": tokens, "table_mask": (tokens != tokenizer_lib.PAD_ID) & bool(pairs),
             "table_entity": entity, "table_is_value": (entity >= 0) & (entity % 2 == 1)}
  if transform.masking:
    example["table_tokens_masked"], example["table_mlm_targets"] = _corrupt(
        transform, tokens, entity, rng)
  return example


def _table_has_entities(transform: ExampleTransform) -> bool:
  return transform.table_entities or transform.masking  # masked entity modeling needs them


def table_token_entities(text: str, entities: Sequence[str], spans: np.ndarray) -> np.ndarray:
  """Per token, the index of the entity of the serialized table `text` it belongs to.

  `entities` are the table's keys and values, each normalized on its own, in order (key i
  at 2i, value i at 2i + 1); `spans` the tokens' UTF-8 byte spans (`encode_with_spans`).
  Each entity is found in `text` after the one before it; an empty one, or one the
  normalizer changed in context, is not found and owns no token. A token takes the entity
  of the first byte of its span that has one (" red" is the value "red"; ": " and " ; "
  are nobody's: -1, like BOS, EOS and padding); a piece that covers no byte (a byte-fallback
  piece before a character's last, the leading word marker) takes the byte at its start.
  """
  char_entity = np.full(len(text), -1, np.int32)
  cursor = 0
  for index, entity in enumerate(entities):
    start = text.find(entity, cursor) if entity else -1
    if start >= 0:
      char_entity[start : start + len(entity)] = index
      cursor = start + len(entity)
  byte_entity = np.repeat(char_entity, [len(char.encode("utf-8")) for char in text])
  token_entity = np.full(len(spans), -1, np.int32)
  for token, (begin, end) in enumerate(spans):
    if begin >= 0:
      owners = byte_entity[begin : max(end, begin + 1)]
      owners = owners[owners >= 0]
      if len(owners):
        token_entity[token] = owners[0]
  return token_entity


def _table_spec(transform: ExampleTransform) -> dict[str, ArraySpec]:
  length = (transform.max_table_len,)
  spec = _spec(table_tokens=(length, np.int32), table_mask=(length, np.bool_))
  if _table_has_entities(transform):
    spec.update(_spec(table_entity=(length, np.int32), table_is_value=(length, np.bool_)))
  if transform.masking:
    spec.update(_spec(table_tokens_masked=(length, np.int32), table_mlm_targets=(length, np.int32)))
  return spec


def _video(transform: ExampleTransform, record, rng) -> dict[str, np.ndarray]:
  del rng  # frames are sampled uniformly over the clip, the same in training and eval
  frames = record["video_frames"]
  size = transform.video_size
  video = np.zeros((transform.video_frames, size, size, 3), np.uint8)
  mask = np.zeros((transform.video_frames,), np.bool_)
  if len(frames):
    chosen = np.linspace(0, len(frames) - 1, num=min(transform.video_frames, len(frames)))
    for slot, frame_index in enumerate(np.round(chosen).astype(int)):
      try:
        video[slot], _, _ = decode_crop_resize(frames[frame_index], size,
                                               lambda w, h: (0, 0, w, h), transform.background)
      except SkipRecord as error:
        raise SkipRecord("undecodable_video") from error
      mask[slot] = True
  return {"video": video, "video_mask": mask}


def _video_spec(transform: ExampleTransform) -> dict[str, ArraySpec]:
  frames, size = transform.video_frames, transform.video_size
  return _spec(video=((frames, size, size, 3), np.uint8), video_mask=((frames,), np.bool_))


def _audio(transform: ExampleTransform, record, rng) -> dict[str, np.ndarray]:
  waveform = _waveform(transform, record)
  num_samples = transform.audio_samples
  audio = np.zeros((num_samples,), np.float32)
  mask = np.zeros((num_samples,), np.bool_)
  if len(waveform):
    clip = _crop(waveform, num_samples, rng)
    audio[: len(clip)], mask[: len(clip)] = clip, True
  return {"audio": audio, "audio_mask": mask}


def _waveform(transform: ExampleTransform, record) -> np.ndarray:
  """The record's waveform in [-1, 1) at `input.audio_sample_rate` (empty when absent)."""
  waveform = np.asarray(record["audio"]["waveform"], np.float32) / 32768.0
  sample_rate = int(record["audio"]["sample_rate"])
  if len(waveform):
    if sample_rate <= 0:
      raise SkipRecord("bad_audio")
    if sample_rate != transform.audio_sample_rate:  # linear resampling is enough here
      step = sample_rate / transform.audio_sample_rate  # source samples per output sample
      positions = np.arange(max(1, round(len(waveform) / step))) * step
      waveform = np.interp(positions, np.arange(len(waveform)), waveform).astype(np.float32)
  return waveform


def _crop(sequence: np.ndarray, length: int, rng) -> np.ndarray:
  """At most `length` leading items of `sequence`: a random window of them in training,
  the first ones in evaluation."""
  start = 0
  if rng is not None and len(sequence) > length:
    start = int(rng.integers(len(sequence) - length + 1))
  return sequence[start : start + length]


def _audio_spec(transform: ExampleTransform) -> dict[str, ArraySpec]:
  samples = (transform.audio_samples,)
  return _spec(audio=(samples, np.float32), audio_mask=(samples, np.bool_))


# ---------------------------------------------------------------------------------------
# SCALE's feature modalities: log-mel audio, pre-extracted region and frame features.
# ---------------------------------------------------------------------------------------

# The log-mel parameters (Whisper's and most speech front ends'): a 25 ms periodic Hann
# window with an FFT of that size (400 samples at 16 kHz), a 10 ms hop, power spectra
# through 80 Slaney-scale triangles from 0 Hz to Nyquist, natural log of power + 1e-6.
MEL_WINDOW_SECONDS = 0.025
MEL_HOP_SECONDS = 0.010
MEL_FLOOR = 1e-6  # silence is log(1e-6) = -13.8, finite


def hz_to_mel(hz):
  """Slaney's mel scale (librosa's default): 3 mels per 200 Hz below 1 kHz, where pitch
  perception is about linear; 27 mels per factor 6.4 above, where it is logarithmic."""
  hz = np.asarray(hz, np.float64)
  above = 15.0 + np.log(np.maximum(hz, 1000.0) / 1000.0) * (27.0 / np.log(6.4))
  return np.where(hz < 1000.0, hz * 3.0 / 200.0, above)


def mel_to_hz(mel):
  mel = np.asarray(mel, np.float64)
  above = 1000.0 * np.exp((np.maximum(mel, 15.0) - 15.0) * (np.log(6.4) / 27.0))
  return np.where(mel < 15.0, mel * 200.0 / 3.0, above)


@functools.lru_cache(maxsize=8)
def mel_filterbank(sample_rate: int, fft_size: int, num_bins: int = schema.MEL_BINS
                   ) -> np.ndarray:
  """[fft_size // 2 + 1, num_bins] triangular filters (read-only): edges equally spaced in
  mels from 0 Hz to Nyquist, each triangle scaled by 2 / its width in Hz (Slaney's area
  normalization, so the wide high-frequency bins do not dominate the spectrum)."""
  edges = mel_to_hz(np.linspace(0.0, hz_to_mel(sample_rate / 2), num_bins + 2))
  freqs = np.arange(fft_size // 2 + 1) * (sample_rate / fft_size)
  lower, center, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
  rising, falling = (freqs - lower) / (center - lower), (upper - freqs) / (upper - center)
  weights = (np.maximum(0.0, np.minimum(rising, falling)) * (2.0 / (upper - lower))).T
  weights.setflags(write=False)  # shared by every call (the cache)
  return weights


@functools.lru_cache(maxsize=8)
def _mel_filter_entries(sample_rate: int, fft_size: int):
  """`mel_filterbank`'s nonzero entries, mel bin by mel bin: (their FFT bins, their weights,
  where each mel bin's run starts (clipped to the last entry), which mel bins have none)."""
  filters = mel_filterbank(sample_rate, fft_size).T  # [mel bins, FFT bins]
  mels, fft_bins = np.nonzero(filters)  # row-major: grouped by mel bin
  starts = np.searchsorted(mels, np.arange(len(filters)))
  empty = np.bincount(mels, minlength=len(filters)) == 0
  return fft_bins, filters[mels, fft_bins], np.minimum(starts, len(mels) - 1), empty


def apply_mel_filterbank(power: np.ndarray, sample_rate: int, fft_size: int) -> np.ndarray:
  """power [..., fft_size // 2 + 1] @ `mel_filterbank`, summing its ~2 nonzero entries per FFT
  bin only. Not a BLAS product: OpenBLAS splits even a 50x201x80 product over its own
  threads, which under a training step's load spin for milliseconds (log-mel 0.3 vs 0.6-13 ms
  per example in the pipeline's threads; BENCHMARKS.md, SCALE)."""
  fft_bins, weights, starts, empty = _mel_filter_entries(sample_rate, fft_size)
  mel = np.add.reduceat(power[..., fft_bins] * weights, starts, axis=-1)
  mel[..., empty] = 0.0  # reduceat gives an empty run the entry at its start
  return mel


def log_mel_spectrogram(waveform: np.ndarray, sample_rate: int) -> np.ndarray:
  """float32 [1 + len(waveform) // hop, 80] log-mel frames of a waveform in [-1, 1].

  Frame t is centred on sample t * hop (the waveform is zero-padded by half a window at
  both ends, librosa's `center=True`), so a clip of S seconds gives 100 S + 1 frames:
  M5Product's 751-frame matrices are 7.5 s clips.
  """
  window = round(MEL_WINDOW_SECONDS * sample_rate)
  hop = round(MEL_HOP_SECONDS * sample_rate)
  padded = np.pad(np.asarray(waveform, np.float64), window // 2)
  num_frames = 1 + len(waveform) // hop
  frames = np.lib.stride_tricks.sliding_window_view(padded, window)[::hop][:num_frames]
  hann = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(window) / window)  # periodic
  power = np.abs(np.fft.rfft(frames * hann, axis=-1)) ** 2
  return np.log(apply_mel_filterbank(power, sample_rate, window) + MEL_FLOOR).astype(np.float32)


def _audio_mel(transform: ExampleTransform, record, rng) -> dict[str, np.ndarray]:
  """Log-mel frames of the waveform; without one, the record's pre-extracted mel matrix
  (M5Product's, whose scale is the release's own: train on one source or the other)."""
  num_frames = transform.audio_mel_frames
  waveform = _waveform(transform, record)
  if len(waveform):
    # Crop the waveform, not the spectrogram: (F - 1) hops of samples give exactly F frames.
    hop = round(MEL_HOP_SECONDS * transform.audio_sample_rate)
    clip = _crop(waveform, max(1, (num_frames - 1) * hop), rng)
    frames = log_mel_spectrogram(clip, transform.audio_sample_rate)
  else:
    frames = _crop(np.asarray(record["mel"], np.float32).T, num_frames, rng)  # [T, 80]
  mel = np.zeros((num_frames, schema.MEL_BINS), np.float32)
  mask = np.zeros((num_frames,), np.bool_)
  mel[: len(frames)], mask[: len(frames)] = frames, True
  example = {"audio_mel": mel, "audio_mel_mask": mask}
  if transform.masking:
    example["audio_mel_mlm_mask"] = _masked_positions(transform, mask, rng)
  return example


def _audio_mel_spec(transform: ExampleTransform) -> dict[str, ArraySpec]:
  frames = transform.audio_mel_frames
  return _spec(audio_mel=((frames, schema.MEL_BINS), np.float32),
               audio_mel_mask=((frames,), np.bool_),
               **_mlm_mask_spec(transform, "audio_mel", frames))


def _regions(transform: ExampleTransform, record, rng) -> dict[str, np.ndarray]:
  """The first `input.max_regions` region features (float16 on disk, float32 here) and
  their boxes; the release's detector lists regions by confidence."""
  feats = np.asarray(record["region_feats"])[: transform.max_regions]
  boxes = np.asarray(record["region_boxes"], np.float32)[: len(feats)]
  count = transform.max_regions
  example = {
      "region_feats": np.zeros((count, schema.REGION_FEATURE_DIM), np.float32),
      "region_boxes": np.zeros((count, schema.REGION_BOX_DIM), np.float32),
      "region_mask": np.arange(count) < len(feats),
  }
  example["region_feats"][: len(feats)] = feats
  example["region_boxes"][: len(feats)] = boxes  # one box per feature (m5product checks)
  if transform.masking:
    example["region_mlm_mask"] = _masked_positions(transform, example["region_mask"], rng)
  return example


def _regions_spec(transform: ExampleTransform) -> dict[str, ArraySpec]:
  count = transform.max_regions
  return _spec(region_feats=((count, schema.REGION_FEATURE_DIM), np.float32),
               region_boxes=((count, schema.REGION_BOX_DIM), np.float32),
               region_mask=((count,), np.bool_), **_mlm_mask_spec(transform, "region", count))


def _video_feats(transform: ExampleTransform, record, rng) -> dict[str, np.ndarray]:
  """`input.video_feat_frames` frame features, sampled uniformly over a longer clip (like
  `video`'s frames, the same in training and evaluation)."""
  feats = np.asarray(record["frame_feats"])
  count = transform.video_feat_frames
  if len(feats) > count:
    feats = feats[np.round(np.linspace(0, len(feats) - 1, num=count)).astype(int)]
  example = {"frame_feats": np.zeros((count, schema.FRAME_FEATURE_DIM), np.float32),
             "frame_mask": np.arange(count) < len(feats)}
  example["frame_feats"][: len(feats)] = feats
  if transform.masking:
    example["frame_mlm_mask"] = _masked_positions(transform, example["frame_mask"], rng)
  return example


def _video_feats_spec(transform: ExampleTransform) -> dict[str, ArraySpec]:
  count = transform.video_feat_frames
  return _spec(frame_feats=((count, schema.FRAME_FEATURE_DIM), np.float32),
               frame_mask=((count,), np.bool_), **_mlm_mask_spec(transform, "frame", count))


# ---------------------------------------------------------------------------------------
# Masked modeling: which tokens, entities, regions and frames to hide.
# ---------------------------------------------------------------------------------------


def choose_units(rng: np.random.Generator, sizes: np.ndarray, prob: float) -> np.ndarray:
  """Bool [len(sizes)]: units (tokens, or whole entities of `sizes` tokens) taken in random
  order until `prob` of their total size is taken.

  The unit that would cross that budget is taken with the probability that makes the
  expected total exactly `prob` of it: a budget of 2.4 tokens takes 2 or 3 (3 in 40% of
  examples), where rounding would always take 2 and under-mask short titles.
  """
  sizes = np.asarray(sizes, np.float64)
  chosen = np.zeros(len(sizes), np.bool_)
  order = rng.permutation(len(sizes))
  budget = prob * sizes.sum()
  taken = np.cumsum(sizes[order])
  num_whole = int(np.searchsorted(taken, budget, side="right"))  # units within the budget
  chosen[order[:num_whole]] = True
  if num_whole < len(sizes):
    before = taken[num_whole - 1] if num_whole else 0.0
    chosen[order[num_whole]] = rng.random() * sizes[order[num_whole]] < budget - before
  return chosen


def _masked_positions(transform: ExampleTransform, present: np.ndarray, rng) -> np.ndarray:
  """`input.mask_prob` of the `present` positions, chosen at random; none in evaluation."""
  chosen = np.zeros(present.shape, np.bool_)
  if rng is not None:
    where = np.flatnonzero(present)
    chosen[where[choose_units(rng, np.ones(len(where)), transform.mask_prob)]] = True
  return chosen


def _corrupt(transform: ExampleTransform, tokens: np.ndarray, units: np.ndarray, rng
             ) -> tuple[np.ndarray, np.ndarray]:
  """BERT's corruption of whole units (`units`: per token, its unit, -1 for none).

  `input.mask_prob` of the unit tokens are chosen, unit by unit (`choose_units`); each chosen
  unit is then replaced by [MASK] (80%), by random content pieces (10%) or kept (10%).
  Returns (corrupted tokens, targets: the original token where chosen, -1 elsewhere).
  """
  corrupted, targets = tokens.copy(), np.full(tokens.shape, -1, np.int32)
  if rng is None:
    return corrupted, targets
  ids, sizes = np.unique(units[units >= 0], return_counts=True)
  chosen = ids[choose_units(rng, sizes, transform.mask_prob)]
  action = rng.random(len(chosen))  # per unit: the whole key or value is treated alike
  random_pieces = rng.integers(tokenizer_lib.NUM_SPECIAL_IDS, transform.tokenizer.vocab_size,
                               size=tokens.shape, dtype=np.int32)
  where = np.flatnonzero(np.isin(units, chosen))
  token_action = action[np.searchsorted(chosen, units[where])]
  targets[where] = tokens[where]
  corrupted[where[token_action < 0.8]] = tokenizer_lib.MASK_ID
  replaced = where[(token_action >= 0.8) & (token_action < 0.9)]
  corrupted[replaced] = random_pieces[replaced]
  return corrupted, targets


def _mlm_mask_spec(transform: ExampleTransform, prefix: str, length: int
                   ) -> dict[str, tuple[tuple[int, ...], Any]]:
  return {f"{prefix}_mlm_mask": ((length,), np.bool_)} if transform.masking else {}


# Registry order is the order modalities draw from `rng` (append new ones at the end, so
# existing configs keep their draws).
register_modality("image", Modality(("images", "boxes"), _images_spec, _images,
                                    masks=("image_present", "image_mlm_mask")))
register_modality("text", Modality(("title",), _text_spec, _text, masks=("text_mask",),
                                   targets=("text_mlm_targets",)))
register_modality("table", Modality(("attributes",), _table_spec, _table, masks=("table_mask",),
                                    targets=("table_mlm_targets",)))
register_modality("video", Modality(("video_frames",), _video_spec, _video,
                                    masks=("video_mask",)))
register_modality("audio", Modality(("audio",), _audio_spec, _audio, masks=("audio_mask",)))
register_modality("audio_mel", Modality(("audio", "mel"), _audio_mel_spec, _audio_mel,
                                        masks=("audio_mel_mask", "audio_mel_mlm_mask")))
register_modality("regions", Modality(("region_feats", "region_boxes"), _regions_spec,
                                      _regions, masks=("region_mask", "region_mlm_mask")))
register_modality("video_feats", Modality(("frame_feats",), _video_feats_spec, _video_feats,
                                          masks=("frame_mask", "frame_mlm_mask")))


def _to_str(value: bytes | str) -> str:
  return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else value


# The example fields that hold uint8 RGB pixels ([..., H, W, 3]).
PIXEL_FIELDS = ("image", "images", "video")


def to_value_range(pixels, value_range: tuple[float, float]):
  """uint8 `pixels` (numpy, or jax in a compiled program) as float32, 0..255 mapped linearly
  onto `value_range`."""
  low, high = value_range
  return pixels.astype(np.float32) * np.float32((high - low) / 255.0) + np.float32(low)
