"""Photos and videos of a product: where clutter is decided.

A scene is a background (backgrounds.py), distractor products (random looks of *other*
categories drawn by the same sprite renderer) standing behind the product, the product
posed and placed, and, on "cluttered", sometimes one distractor in front of it occluding at
most 40% of it. The clutter level's row of `_CLUTTER` fixes the product's scale and the
distractors' number and scale; `_backdrop` picks the background.

Ground truth is exact because the product is composited last (except for the occluder):
the box is the tight box of the placed product alpha (> 0.5) inside the frame, and the mask
is that alpha minus the pixels the occluder covers.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from PIL import Image

from eclip_jax.data.toyshop import backgrounds
from eclip_jax.data.toyshop import looks
from eclip_jax.data.toyshop import sprites

CLUTTER_LEVELS = ("clean", "cluttered", "lifestyle")
_SIZE_SCALE = {"small": 0.8, "medium": 1.0, "large": 1.2}
_MAX_TILT_DEG = 25.0


@dataclasses.dataclass(frozen=True)
class _ClutterSpec:
  product_side: tuple[float, float]  # product's longest side as a fraction of the image
  distractors: tuple[int, int]  # inclusive count range
  distractor_side: tuple[float, float]


_CLUTTER = {
    "clean": _ClutterSpec((0.45, 0.80), (0, 0), (0.0, 0.0)),
    "cluttered": _ClutterSpec((0.30, 0.60), (2, 5), (0.2, 0.45)),
    # 17% rather than 15% keeps even a small product above 1% of a 64 px image.
    "lifestyle": _ClutterSpec((0.17, 0.30), (4, 8), (0.12, 0.45)),
}
_OCCLUSION_PROB = 0.3
_MAX_OCCLUDED = 0.4


def _product_side(look: looks.ProductLook, spec: _ClutterSpec, size: int,
                  rng: np.random.Generator) -> float:
  """Longest product side in pixels.

  The base range is narrowed so that base x size-scale stays within the
  clutter level's range; sparse designs then get their coverage boost, up to
  the top of that range."""
  lo, hi = spec.product_side
  base = rng.uniform(lo / _SIZE_SCALE["small"], hi / _SIZE_SCALE["large"])
  side = base * _SIZE_SCALE[look.size]
  return min(side * sprites.coverage_boost(look.category, look.shape_variant), hi) * size


def _place(sprite: sprites.Sprite, size: int, surfaces: list[backgrounds.Surface] | None,
           rng: np.random.Generator) -> tuple[int, int]:
  """Top-left of a sprite: inside the frame where it fits, standing on a surface if any."""
  h, w = sprite.alpha.shape
  x_lo, x_hi = min(0, size - w), max(0, size - w)
  if not surfaces:
    y_lo, y_hi = min(0, size - h), max(0, size - h)
    return round(rng.uniform(x_lo, x_hi)), round(rng.uniform(y_lo, y_hi))
  # Half the objects stand on the floor (surface 0), the rest on furniture.
  pick = 0 if len(surfaces) == 1 or rng.random() < 0.5 else rng.integers(1, len(surfaces))
  s = surfaces[pick]
  cx = rng.uniform(s.x_lo, s.x_hi)
  bottom = rng.uniform(s.y_lo, s.y_hi)
  x = float(np.clip(cx - w / 2, x_lo, x_hi))
  y = float(np.clip(bottom - h, min(0, size - h), max(0, size - h)))
  return round(x), round(y)


def _random_pose(canvas: Image.Image, rng: np.random.Generator) -> sprites.Sprite:
  return sprites.pose(canvas, rng.uniform(-_MAX_TILT_DEG, _MAX_TILT_DEG), bool(rng.random() < 0.5))


def _distractor(category: str, side_range: tuple[float, float], size: int,
                rng: np.random.Generator) -> sprites.Sprite:
  """A random look of any category but `category`, posed randomly."""
  others = [c for c in looks.CATEGORIES if c != category]
  look = looks.random_look(rng, others[rng.integers(len(others))])
  canvas = sprites.sprite_canvas(look, rng.uniform(*side_range) * size, rng)
  return _random_pose(canvas, rng)


def _backdrop(look: looks.ProductLook, size: int, clutter: str, rng: np.random.Generator
              ) -> tuple[np.ndarray, list[backgrounds.Surface] | None]:
  """Background plus the distractors that stand behind the product."""
  if clutter not in _CLUTTER:
    raise ValueError(f"clutter must be one of {CLUTTER_LEVELS}, got {clutter!r}")
  spec = _CLUTTER[clutter]
  surfaces = None
  if clutter == "clean":
    frame = backgrounds.clean_background(size, rng)
  elif clutter == "cluttered":
    frame = backgrounds.cluttered_background(size, rng)
  else:
    frame, surfaces = backgrounds.lifestyle_background(size, rng)
  count = rng.integers(spec.distractors[0], spec.distractors[1] + 1)
  placed = []
  for _ in range(count):
    sprite = _distractor(look.category, spec.distractor_side, size, rng)
    x, y = _place(sprite, size, surfaces, rng)
    placed.append((y + sprite.alpha.shape[0], x, y, sprite))
  # Paint from the back: objects standing lower in the frame are nearer.
  for _, x, y, sprite in sorted(placed, key=lambda item: item[0]):
    sprites.paste(frame, sprite, x, y)
  return frame, surfaces


def _box(product_alpha: np.ndarray) -> np.ndarray:
  """Tight [x0, y0, x1, y1] in [0, 1] of alpha > 0.5 (x1, y1 are exclusive edges)."""
  size = product_alpha.shape[0]
  solid = product_alpha > 0.5
  rows = np.flatnonzero(solid.any(axis=1))
  cols = np.flatnonzero(solid.any(axis=0))
  return np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], np.float32) / size


def _occluder(frame: np.ndarray, product: np.ndarray, look: looks.ProductLook,
              rng: np.random.Generator) -> np.ndarray | None:
  """Places a distractor in front of the product covering at most 40% of it.

  Tries positions along a random direction from the product center, moving
  outward until the covered share is small enough; returns its alpha map."""
  size = frame.shape[0]
  sprite = _distractor(look.category, (0.2, 0.4), size, rng)
  visible = product > 0.5
  rows, cols = np.nonzero(visible)
  cy, cx = rows.mean(), cols.mean()
  reach = 0.5 * (max(np.ptp(rows), np.ptp(cols)) + max(sprite.alpha.shape))
  theta = rng.uniform(0, 2 * np.pi)
  h, w = sprite.alpha.shape
  for t in (0.55, 0.7, 0.85, 1.0):
    x = round(cx + t * reach * np.cos(theta) - w / 2)
    y = round(cy + t * reach * np.sin(theta) - h / 2)
    alpha = sprites.alpha_map(size, sprite, x, y)
    if (visible & (alpha > 0.5)).sum() <= _MAX_OCCLUDED * visible.sum():
      sprites.paste(frame, sprite, x, y)
      return alpha
  return None


def render_image(look: looks.ProductLook, *, image_size: int, clutter: str, rng: np.random.Generator
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """One photo of `look`: (rgb uint8 [S,S,3], box float32 [4] xyxy in [0,1], mask bool [S,S])."""
  size = image_size
  frame, surfaces = _backdrop(look, size, clutter, rng)
  canvas = sprites.sprite_canvas(look, _product_side(look, _CLUTTER[clutter], size, rng), rng)
  sprite = _random_pose(canvas, rng)
  x, y = _place(sprite, size, surfaces, rng)
  sprites.paste(frame, sprite, x, y)
  product = sprites.alpha_map(size, sprite, x, y)
  mask = product > 0.5
  if clutter == "cluttered" and rng.random() < _OCCLUSION_PROB:
    occluder = _occluder(frame, product, look, rng)
    if occluder is not None:
      mask &= occluder <= 0.5
  rgb = np.clip(frame + 0.5, 0, 255).astype(np.uint8)
  return rgb, _box(product), mask


def render_video(look: looks.ProductLook, *, image_size: int, num_frames: int, clutter: str,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
  """A fixed scene with the product gliding along a smooth path while slowly spinning.

  Returns (frames uint8 [F,S,S,3], boxes float32 [F,4]). No occluder is used,
  so the product stays fully visible (up to the frame border)."""
  size = image_size
  backdrop, surfaces = _backdrop(look, size, clutter, rng)
  canvas = sprites.sprite_canvas(look, _product_side(look, _CLUTTER[clutter], size, rng), rng)
  flip = bool(rng.random() < 0.5)
  angle0 = rng.uniform(-_MAX_TILT_DEG, _MAX_TILT_DEG)
  spin = rng.uniform(1.5, 4.0) * rng.choice([-1.0, 1.0])  # degrees per frame
  first = sprites.pose(canvas, angle0, flip)
  x, y = _place(first, size, surfaces, rng)
  half = np.array(first.alpha.shape[::-1]) / 2  # (w, h) / 2
  start = np.array([x, y]) + half
  heading = rng.uniform(0, 2 * np.pi)
  travel = rng.uniform(0.15, 0.35) * size
  # Objects on a room's floor or furniture slide mostly sideways.
  vertical = 0.25 if surfaces else 1.0
  end = start + travel * np.array([np.cos(heading), vertical * np.sin(heading)])
  # Keep the path's end inside the frame wherever the product fits.
  end = np.clip(end, np.minimum(half, size / 2), np.maximum(size - half, size / 2))
  wobble = rng.uniform(-0.05, 0.05) * size
  normal = np.array([-np.sin(heading), np.cos(heading)])
  frames = np.empty((num_frames, size, size, 3), np.uint8)
  boxes = np.empty((num_frames, 4), np.float32)
  for f in range(num_frames):
    t = f / max(num_frames - 1, 1)
    ease = t * t * (3 - 2 * t)  # smoothstep: starts and stops gently
    center = start + (end - start) * ease + normal * wobble * np.sin(np.pi * t)
    sprite = first if f == 0 else sprites.pose(canvas, angle0 + spin * f, flip)
    h, w = sprite.alpha.shape
    px, py = round(center[0] - w / 2), round(center[1] - h / 2)
    frame = backdrop.copy()
    sprites.paste(frame, sprite, px, py)
    frames[f] = np.clip(frame + 0.5, 0, 255).astype(np.uint8)
    boxes[f] = _box(sprites.alpha_map(size, sprite, px, py))
  return frames, boxes
