"""Grounding without boxes: does the model's map of the product fall on the product's box?

Every image of the split whose ground-truth box is visible in the (center-cropped) view is
scored on the model's map [gh, gw] over its patch grid, the output named by `map_output`:

* `"instance_attn"`: ECLIP's instance map, queries weighted by the title-guided selection;
* `"instance_attn_img"`: the same with the image-only selection head (no title);
* `"patch_text_sim"`: cosine of each projected patch with the title: the map any two-tower
  (CLIP) model has, so that the baseline gets a number too.

Metrics:

    pointing_acc     the map's highest cell has its center inside the box (the pointing game)
    chance_pointing  the fraction of cell centers inside the box, averaged: what a cell
                     picked uniformly at random scores (about the box's share of the image)
    center_pointing  the fraction of boxes holding the image's center: what always pointing
                     at the center scores. Large products often cover the center (toyshop
                     1.0.0 `cluttered`: 0.56 against box-area chance 0.20; toyshop 2.0.0
                     spreads products over the frame to keep it within 2x), so a map has
                     learned to find the product only where it beats the higher of the two
    mean_iou         IoU with the box of the bounding box of the cells at or above
                     `threshold` of the map, after scaling the map to [0, 1] (min to max)
    full_image_iou   the IoU of predicting the whole image (the box's area), a trivial floor
    num_examples, num_without_box (box not visible in the view), num_skipped (bad records)

A split without any visible box (a manifest without boxes) reports the counts alone, with a
warning, so that a config listing grounding still trains on such a dataset.

Pictures: with a workdir and `num_pictures` > 0, the first records of the split are drawn
into `WORKDIR/pictures/<name>.png` (rewritten at each evaluation): per record the photo with
its box (green) beside the map over it with the predicted box (red).

Config entry (`config.evals.<name>`): `type="grounding"`, `split="validation"`,
`map_output="instance_attn"`, `threshold=0.5`, `num_pictures=16`, and any `config.input`
field to override (`batch_size`, ...).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from absl import logging
from PIL import Image, ImageDraw

from eclip_jax.data import pipeline
from eclip_jax.evals import common

# map output -> whether the model needs the title to compute it
MAPS = {"instance_attn": True, "instance_attn_img": False, "patch_text_sim": True}
PICTURE_TILE = 128  # pixels per picture tile (toyshop's 64 px photos are too small to read)
PICTURES_PER_ROW = 4


def cell_centers(grid: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
  """(x, y) of each cell's center in [0, 1] image coordinates, each [gh, gw]."""
  gh, gw = grid
  y, x = np.mgrid[0:gh, 0:gw]
  return (x + 0.5) / gw, (y + 0.5) / gh


def _inside(x: np.ndarray, y: np.ndarray, box: np.ndarray) -> np.ndarray:
  return (x >= box[0]) & (x <= box[2]) & (y >= box[1]) & (y <= box[3])


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
  """IoU of two xyxy boxes."""
  width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
  height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
  intersection = width * height
  union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - intersection
  return float(intersection / union) if union > 0 else 0.0


def map_box(heatmap: np.ndarray, threshold: float) -> np.ndarray:
  """xyxy in [0, 1] bounding the cells at or above `threshold` of the map scaled to [0, 1]."""
  gh, gw = heatmap.shape
  low, high = float(heatmap.min()), float(heatmap.max())
  scaled = (heatmap - low) / (high - low) if high > low else np.ones_like(heatmap)
  rows, cols = np.nonzero(scaled >= threshold)
  return np.array([cols.min() / gw, rows.min() / gh, (cols.max() + 1) / gw, (rows.max() + 1) / gh],
                  np.float32)


def pointing_references(boxes: np.ndarray, grid: tuple[int, int]) -> dict[str, float]:
  """What pointing scores without looking, on boxes [N, 4] and a [gh, gw] cell grid: a
  uniformly random cell (`chance_pointing`) and always the image center (`center_pointing`)."""
  x, y = cell_centers(grid)
  boxes = np.asarray(boxes, np.float32)
  return {"chance_pointing": float(np.mean([np.mean(_inside(x, y, box)) for box in boxes])),
          "center_pointing": float(np.mean([_inside(0.5, 0.5, box) for box in boxes]))}


def grounding_metrics(maps: np.ndarray, boxes: np.ndarray, threshold: float) -> dict[str, float]:
  """Pointing game, its references and IoUs of maps [N, gh, gw] with boxes [N, 4]."""
  maps = np.nan_to_num(np.asarray(maps, np.float32), nan=-np.inf)
  x, y = cell_centers(maps.shape[1:])
  hits, ious, full = [], [], []
  for heatmap, box in zip(maps, np.asarray(boxes, np.float32)):
    row, col = np.unravel_index(np.argmax(heatmap), heatmap.shape)
    hits.append(_inside(x[row, col], y[row, col], box))
    ious.append(box_iou(map_box(np.nan_to_num(heatmap, neginf=0.0), threshold), box))
    full.append(box_iou(np.array([0, 0, 1, 1], np.float32), box))
  return {"pointing_acc": float(np.mean(hits)), **pointing_references(boxes, maps.shape[1:]),
          "mean_iou": float(np.mean(ious)), "full_image_iou": float(np.mean(full))}


class GroundingEvaluator(common.SplitEvaluator):
  """Pointing game and box IoU of a model's product map (see the module docstring)."""

  DEFAULTS = {"map_output": "instance_attn", "threshold": 0.5, "num_pictures": 16}
  MODALITIES = ("image", "text")

  def __init__(self, name: str, entry: Mapping[str, Any], **kwargs):
    super().__init__(name, entry, **kwargs)
    fields = self.data.fields
    self.map_output = fields["map_output"]
    if self.map_output not in MAPS:
      raise ValueError(f"config.evals.{name}.map_output={self.map_output!r} is unknown; "
                       f"choose one of {sorted(MAPS)}.")
    self.threshold = float(fields["threshold"])
    if not 0.0 < self.threshold <= 1.0:
      raise ValueError(f"config.evals.{name}.threshold={self.threshold} must be in (0, 1].")
    self.num_pictures = int(fields["num_pictures"])

  def run(self, params: Any) -> dict[str, float | int]:
    inputs = ("image", "text_tokens", "text_mask") if MAPS[self.map_output] else ("image",)
    split = self.data.run_model(
        params, inputs=inputs, outputs=(self.map_output,),
        labels=("box", "box_mask", pipeline.RECORD_INDEX_KEY),
    )
    has_box = split["box_mask"]
    counts = dict(num_examples=int(has_box.sum()), num_without_box=int((~has_box).sum()),
                  num_skipped=self.data.num_records - len(has_box))
    if not has_box.any():
      logging.warning("config.evals.%s: no image of split %r has a visible box, so there is "
                      "nothing to ground (toyshop records boxes; a manifest needs \"boxes\").",
                      self.data.name, self.data.split)
      return counts
    maps = split[self.map_output]
    metrics = grounding_metrics(maps[has_box], split["box"][has_box], self.threshold)
    metrics.update(counts)
    if self.data.workdir is not None and self.num_pictures > 0 and jax.process_index() == 0:
      self._write_pictures(maps, split[pipeline.RECORD_INDEX_KEY])
    return metrics

  def _write_pictures(self, maps: np.ndarray, record_indices: np.ndarray) -> None:
    """The first `num_pictures` records: photo + box | map overlay + box + predicted box."""
    source = pipeline.open_split(self.data.builder, self.data.split,
                                 self.data.transform.required_fields())
    row_of = {int(index): row for row, index in enumerate(record_indices)}
    tiles = []
    for index in sorted(row_of)[: self.num_pictures]:
      example = self.data.transform(source[index])  # the view the model saw (deterministic)
      box = example["box"] if example["box_mask"] else None
      tiles.append(_picture_pair(example["image"], maps[row_of[index]], box, self.threshold))
    if not tiles:
      return
    columns = min(PICTURES_PER_ROW, len(tiles))
    rows = -(-len(tiles) // columns)
    sheet = Image.new("RGB", (columns * 2 * PICTURE_TILE, rows * PICTURE_TILE), "white")
    for i, pair in enumerate(tiles):
      sheet.paste(pair, ((i % columns) * 2 * PICTURE_TILE, (i // columns) * PICTURE_TILE))
    directory = self.data.workdir / "pictures"
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / f"{self.data.name}.png").open("wb") as f:
      sheet.save(f, format="PNG")


def _picture_pair(image: np.ndarray, heatmap: np.ndarray, box: np.ndarray | None,
                  threshold: float) -> Image.Image:
  """The uint8 photo beside its heat map, the true box on both, the predicted one on the map."""
  photo = Image.fromarray(np.ascontiguousarray(image)).resize((PICTURE_TILE, PICTURE_TILE))
  heatmap = np.nan_to_num(np.asarray(heatmap, np.float32))
  scaled = (heatmap - heatmap.min()) / max(float(heatmap.max() - heatmap.min()), 1e-12)
  heat = Image.fromarray((scaled * 255).astype(np.uint8)).resize(
      (PICTURE_TILE, PICTURE_TILE), Image.Resampling.BILINEAR)
  # A red-to-yellow heat colour blended over the grey photo.
  heat = np.asarray(heat, np.float32)[..., None] / 255
  colour = np.concatenate([np.ones_like(heat), heat, np.zeros_like(heat)], -1) * 255
  grey = np.asarray(photo.convert("L").convert("RGB"), np.float32)
  overlay = Image.fromarray((grey * (1 - 0.6 * heat) + colour * 0.6 * heat).astype(np.uint8))
  pair = Image.new("RGB", (2 * PICTURE_TILE, PICTURE_TILE))
  pair.paste(photo, (0, 0))
  pair.paste(overlay, (PICTURE_TILE, 0))
  draw = ImageDraw.Draw(pair)
  to_pixels = lambda b, dx: [dx + b[0] * PICTURE_TILE, b[1] * PICTURE_TILE,  # noqa: E731
                             dx + b[2] * PICTURE_TILE - 1, b[3] * PICTURE_TILE - 1]
  if box is not None:
    draw.rectangle(to_pixels(box, 0), outline=(0, 255, 0), width=2)
    draw.rectangle(to_pixels(box, PICTURE_TILE), outline=(0, 255, 0), width=2)
  draw.rectangle(to_pixels(map_box(heatmap, threshold), PICTURE_TILE), outline=(255, 0, 0),
                 width=2)
  return pair
