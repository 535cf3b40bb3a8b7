"""Photos and videos of a product: where clutter is decided.

The difficulty ladder is `_CLUTTER`, one row per level, easiest first:

  level      background     product side   distractors (side)   occluder   cut by the edge
  clean      studio sweep   45-80%         none                 no         never
  light      tinted set     40-70%         1-3 (15-30%)         no         up to 25%
  cluttered  textures       30-60%         2-5 (20-45%)         30%        up to 25%
  lifestyle  room           17-30%         4-8 (12-45%)         no         up to 25%

(sides are the longest side as a share of the frame). A scene is the level's background
(backgrounds.py), distractor products (random looks of *other* categories drawn by the same
sprite renderer) standing behind the product, the product posed and placed, and on
"cluttered" sometimes one distractor in front of it occluding at most 40% of it.

Position. On every level with distractors an object's center is uniform over the frame
(along its floor or furniture in a room), pushed back in where more than `max_cut` of its
width (height) would fall beyond the frame's edge: products are sometimes cut by it, as
in real photos. Were the product kept whole inside the frame, a
large one would almost always cover the image center, and "always point at the center"
would beat any grounding map (2.8x box-area chance on cluttered in toyshop 1.0.0; now at
most 2x, tested). Studio shots (`clean`) stay framed whole, as sellers shoot them.

Ground truth is exact because the product is composited last (except for the occluder):
the box is the tight box of the placed product alpha (> 0.5) inside the frame (clipped to
it), and the mask is that alpha minus the pixels the occluder covers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
from PIL import Image

from eclip_jax.data.toyshop import backgrounds
from eclip_jax.data.toyshop import looks
from eclip_jax.data.toyshop import sprites

_SIZE_SCALE = {"small": 0.8, "medium": 1.0, "large": 1.2}
_MAX_TILT_DEG = 25.0


@dataclasses.dataclass(frozen=True)
class _ClutterSpec:
  """One rung of the difficulty ladder (the table in the module docstring)."""

  background: Callable[[int, np.random.Generator],
                       tuple[np.ndarray, list[backgrounds.Surface] | None]]
  product_side: tuple[float, float]  # product's longest side as a fraction of the image
  distractors: tuple[int, int]  # inclusive count range
  distractor_side: tuple[float, float]
  occlusion: float = 0.0  # probability that a distractor is placed in front of the product
  # None: framed, each object anywhere it fits whole (studio shots). A share: each object's
  # center is uniform over the frame (along its surface in a room), pushed back in where
  # more than this share of its width (height) would fall beyond the frame's edge.
  max_cut: float | None = None


_CLUTTER = {
    "clean": _ClutterSpec(backgrounds.studio, (0.45, 0.80), (0, 0), (0.0, 0.0)),
    # The common listing photo: a few small props, the product by far the largest object.
    "light": _ClutterSpec(backgrounds.tinted_studio, (0.40, 0.70), (1, 3), (0.15, 0.30),
                          max_cut=0.25),
    "cluttered": _ClutterSpec(backgrounds.textures, (0.30, 0.60), (2, 5), (0.2, 0.45),
                              occlusion=0.3, max_cut=0.25),
    # 17% rather than 15% keeps even a small product above 1% of a 64 px image.
    "lifestyle": _ClutterSpec(backgrounds.room, (0.17, 0.30), (4, 8), (0.12, 0.45),
                              max_cut=0.25),
}
CLUTTER_LEVELS = tuple(_CLUTTER)
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


def _span(extent: int, size: int, max_cut: float) -> tuple[float, float]:
  """Range of a top-left coordinate that keeps at least `1 - max_cut` of `extent` inside the
  frame (the whole object when it fits and max_cut is 0)."""
  lo, hi = -max_cut * extent, size - (1 - max_cut) * extent
  return min(lo, hi), max(lo, hi)


def _place(sprite: sprites.Sprite, size: int, surfaces: list[backgrounds.Surface] | None,
           max_cut: float | None, rng: np.random.Generator) -> tuple[int, int]:
  """Top-left of a sprite (see `_ClutterSpec.max_cut`), standing on a surface if any."""
  h, w = sprite.alpha.shape
  (x_lo, x_hi), (y_lo, y_hi) = _span(w, size, max_cut or 0.0), _span(h, size, max_cut or 0.0)
  if max_cut is None:
    return round(rng.uniform(x_lo, x_hi)), round(rng.uniform(y_lo, y_hi))
  if not surfaces:
    cx, cy = rng.uniform(0, size, 2)
  else:
    # Half the objects stand on the floor (surface 0), the rest on furniture.
    pick = 0 if len(surfaces) == 1 or rng.random() < 0.5 else rng.integers(1, len(surfaces))
    s = surfaces[pick]
    cx, cy = rng.uniform(s.x_lo, s.x_hi), rng.uniform(s.y_lo, s.y_hi) - h / 2
  x, y = np.clip(cx - w / 2, x_lo, x_hi), np.clip(cy - h / 2, y_lo, y_hi)
  return round(float(x)), round(float(y))


def _random_pose(canvas: Image.Image, rng: np.random.Generator) -> sprites.Sprite:
  return sprites.pose(canvas, rng.uniform(-_MAX_TILT_DEG, _MAX_TILT_DEG), bool(rng.random() < 0.5))


def _distractor(category: str, side_range: tuple[float, float], size: int,
                rng: np.random.Generator) -> sprites.Sprite:
  """A random look of any category but `category`, posed randomly."""
  others = [c for c in looks.CATEGORIES if c != category]
  look = looks.random_look(rng, others[rng.integers(len(others))])
  canvas = sprites.sprite_canvas(look, rng.uniform(*side_range) * size, rng)
  return _random_pose(canvas, rng)


def _clutter_spec(clutter: str) -> _ClutterSpec:
  if clutter not in _CLUTTER:
    raise ValueError(f"clutter must be one of {CLUTTER_LEVELS}, got {clutter!r}")
  return _CLUTTER[clutter]


def _backdrop(look: looks.ProductLook, size: int, spec: _ClutterSpec, rng: np.random.Generator
              ) -> tuple[np.ndarray, list[backgrounds.Surface] | None]:
  """Background plus the distractors that stand behind the product."""
  frame, surfaces = spec.background(size, rng)
  count = rng.integers(spec.distractors[0], spec.distractors[1] + 1)
  placed = []
  for _ in range(count):
    sprite = _distractor(look.category, spec.distractor_side, size, rng)
    x, y = _place(sprite, size, surfaces, spec.max_cut, rng)
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
  size, spec = image_size, _clutter_spec(clutter)
  frame, surfaces = _backdrop(look, size, spec, rng)
  canvas = sprites.sprite_canvas(look, _product_side(look, spec, size, rng), rng)
  sprite = _random_pose(canvas, rng)
  x, y = _place(sprite, size, surfaces, spec.max_cut, rng)
  sprites.paste(frame, sprite, x, y)
  product = sprites.alpha_map(size, sprite, x, y)
  mask = product > 0.5
  if spec.occlusion and rng.random() < spec.occlusion:
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
  size, spec = image_size, _clutter_spec(clutter)
  backdrop, surfaces = _backdrop(look, size, spec, rng)
  canvas = sprites.sprite_canvas(look, _product_side(look, spec, size, rng), rng)
  flip = bool(rng.random() < 0.5)
  angle0 = rng.uniform(-_MAX_TILT_DEG, _MAX_TILT_DEG)
  spin = rng.uniform(1.5, 4.0) * rng.choice([-1.0, 1.0])  # degrees per frame
  first = sprites.pose(canvas, angle0, flip)
  x, y = _place(first, size, surfaces, spec.max_cut, rng)
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
