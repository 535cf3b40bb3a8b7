"""The product record: one listing of a product, as every dataset in eclip_jax stores it.

A record is a TFDS `FeaturesDict` written to ArrayRecord. Three rules keep it readable
without TensorFlow and cheap to read:

* Images and video frames are stored as *encoded* JPEG/PNG bytes (a bytes `Tensor`, not
  `tfds.features.Image`, whose encode path needs TensorFlow and whose numpy decode path
  decodes eagerly). Grain transforms decode them, crop-aware.
* Optional modalities are always present with a length-0 leading dimension when absent
  (no images of a video, an empty waveform, zero region features), so every record has
  the same keys and a transform can tell "absent" from "present" by length alone.
* String ids (`product_id`, `catalog_id`) are kept for people; their dense integer forms
  (`product_index`, `catalog_index`, unique within the dataset) are what batches carry,
  because a hashed id would collide inside million-example batches and turn two
  different products into false positives of each other.

Pre-extracted features (the M5Product release: 36 region features of 2048-d with 5-d
boxes, ≤12 per-second video features of 1024-d, an 80-bin mel matrix) are stored as
float16: half the disk, and far more precision than the features carry.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

REGION_FEATURE_DIM = 2048
REGION_BOX_DIM = 5
FRAME_FEATURE_DIM = 1024
MEL_BINS = 80

_BYTES = tfds.features.Encoding.BYTES


def product_features(category_names: Sequence[str] | None) -> tfds.features.FeaturesDict:
  """The record schema; `category_names` is the category vocabulary (None when reading).

  When a builder is constructed only to read, TFDS restores the category names from the
  `category.labels.txt` file written beside the data.
  """
  category = (
      tfds.features.ClassLabel(names=list(category_names))
      if category_names is not None
      else tfds.features.ClassLabel()
  )
  return tfds.features.FeaturesDict({
      "product_id": tfds.features.Text(),
      "catalog_id": tfds.features.Text(),
      "product_index": tfds.features.Scalar(dtype=np.int64),
      "catalog_index": tfds.features.Scalar(dtype=np.int64),
      "seller_id": tfds.features.Text(),
      "title": tfds.features.Text(),
      "description": tfds.features.Text(),
      "category": category,
      "category_name": tfds.features.Text(),
      "attributes": tfds.features.Sequence({
          "key": tfds.features.Text(),
          "value": tfds.features.Text(),
      }),
      # 1..V encoded JPEG/PNG images of the product.
      "images": tfds.features.Sequence(tfds.features.Tensor(shape=(), dtype=np.object_)),
      # Per image xyxy in [0, 1]; either empty (no boxes known) or one per image.
      "boxes": tfds.features.Tensor(shape=(None, 4), dtype=np.float32),
      "video_frames": tfds.features.Sequence(
          tfds.features.Tensor(shape=(), dtype=np.object_)
      ),
      "audio": tfds.features.FeaturesDict({
          "waveform": tfds.features.Tensor(shape=(None,), dtype=np.int16, encoding=_BYTES),
          "sample_rate": tfds.features.Scalar(dtype=np.int32),
      }),
      "region_feats": tfds.features.Tensor(
          shape=(None, REGION_FEATURE_DIM), dtype=np.float16, encoding=_BYTES
      ),
      "region_boxes": tfds.features.Tensor(
          shape=(None, REGION_BOX_DIM), dtype=np.float32, encoding=_BYTES
      ),
      "frame_feats": tfds.features.Tensor(
          shape=(None, FRAME_FEATURE_DIM), dtype=np.float16, encoding=_BYTES
      ),
      "mel": tfds.features.Tensor(shape=(MEL_BINS, None), dtype=np.float16, encoding=_BYTES),
      "restricted": tfds.features.Scalar(dtype=np.bool_),
  })


def empty_optional_fields() -> dict[str, Any]:
  """Values for every optional field when a listing has none of them."""
  return {
      "description": "",
      "boxes": np.zeros((0, 4), np.float32),
      "video_frames": [],
      "audio": {"waveform": np.zeros((0,), np.int16), "sample_rate": 0},
      "region_feats": np.zeros((0, REGION_FEATURE_DIM), np.float16),
      "region_boxes": np.zeros((0, REGION_BOX_DIM), np.float32),
      "frame_feats": np.zeros((0, FRAME_FEATURE_DIM), np.float16),
      "mel": np.zeros((MEL_BINS, 0), np.float16),
      "restricted": False,
  }


# What makes two rows of a batch (or two items of an evaluation split) positives of each
# other, by the names configs use (`loss.positives`, an evaluator's `positives`) -> the batch
# key whose equal values make them so. "pair": a row matches itself only (its own title);
# "product": the same listing; "catalog": any listing of the same catalog product (duplicate
# listings by other sellers, which plain pair labels would count as negatives).
POSITIVES = {"pair": None, "product": "product_id", "catalog": "catalog_id"}


def positive_id_key(positives: str, field: str, allowed=tuple(POSITIVES)) -> str | None:
  """The batch key of `positives` (None for "pair"); `field` names the config field in the
  error for a value outside `allowed`."""
  if positives not in allowed:
    raise ValueError(f"{field}={positives!r} is unknown; choose one of {sorted(allowed)}.")
  return POSITIVES[positives]


class RecordError(ValueError):
  """A record that does not satisfy the schema's invariants."""


def validate_record(record: Mapping[str, Any]) -> None:
  """Checks the invariants TFDS's shape checks cannot express; raises RecordError."""
  if not str(record["title"]).strip():
    raise RecordError("empty title")
  num_images = len(record["images"])
  if num_images == 0:
    raise RecordError("no images")
  boxes = np.asarray(record["boxes"])
  if len(boxes) not in (0, num_images):
    raise RecordError(f"{len(boxes)} boxes for {num_images} images (need 0 or one each)")
  if len(boxes) and not (
      np.all((boxes >= 0) & (boxes <= 1))
      and np.all(boxes[:, 2] > boxes[:, 0])
      and np.all(boxes[:, 3] > boxes[:, 1])
  ):
    raise RecordError("boxes must be xyxy with 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1")
  audio = record["audio"]
  if len(audio["waveform"]) and audio["sample_rate"] <= 0:
    raise RecordError("audio waveform without a positive sample_rate")
