"""What a product stands in front of: studio sweeps, tinted sets, random textures, rooms.

Each clutter level (scenes.py) names one painter, `painter(size, rng) -> (frame, surfaces)`:
a float32 [size, size, 3] frame and, for rooms only, the surfaces (floor, tables, shelves,
sofas) objects stand on (None elsewhere: objects go anywhere in the frame).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from PIL import Image, ImageDraw

from eclip_jax.data.toyshop import drawers


class Surface(NamedTuple):
  """Where objects may stand: bottom edge y in [y_lo, y_hi], center x in [x_lo, x_hi]."""
  y_lo: float
  y_hi: float
  x_lo: float
  x_hi: float


def _random_rgb(rng: np.random.Generator, lo: int = 0, hi: int = 256) -> drawers.RGB:
  return tuple(int(c) for c in rng.integers(lo, hi, 3))


def _add_noise(frame: np.ndarray, sigma: float, rng: np.random.Generator) -> None:
  size = frame.shape[0]
  frame += sigma * rng.standard_normal((size, size, 1), dtype=np.float32)


def studio(size: int, rng: np.random.Generator) -> tuple[np.ndarray, None]:
  """A near-white sweep with a gentle vertical ramp."""
  base = rng.uniform(222, 248) + rng.uniform(-6, 6, 3)
  slope = rng.uniform(-14, 14)
  ramp = np.linspace(-0.5, 0.5, size, dtype=np.float32)[:, None, None]
  frame = np.asarray(base, np.float32) + slope * ramp + np.zeros((1, size, 1), np.float32)
  _add_noise(frame, 1.5, rng)
  return frame, None


def _blend(frame: np.ndarray, where: np.ndarray, rgb: drawers.RGB, opacity: float) -> None:
  """Mixes `rgb` into the frame at `opacity` wherever the [S,S] mask `where` is set."""
  weight = (where * np.float32(opacity))[..., None]
  frame += weight * (np.asarray(rgb, np.float32) - frame)


def _stripes_layer(frame: np.ndarray, rng: np.random.Generator) -> None:
  size = frame.shape[0]
  theta = rng.uniform(0, np.pi)
  period = size * rng.uniform(0.05, 0.2)
  coord = np.arange(size, dtype=np.float32)
  along = coord[None, :] * np.float32(np.cos(theta)) + coord[:, None] * np.float32(np.sin(theta))
  band = (along % np.float32(period)) < rng.uniform(0.25, 0.75) * period
  _blend(frame, band, _random_rgb(rng), rng.uniform(0.4, 0.9))


def _tiles_layer(frame: np.ndarray, rng: np.random.Generator) -> None:
  size = frame.shape[0]
  cell = max(2, int(size * rng.uniform(0.06, 0.2)))
  index = np.arange(size) // cell
  tiles = (index[None, :] + index[:, None]) % 2 == 1
  _blend(frame, tiles, _random_rgb(rng), 0.7)


def _blotches_layer(frame: np.ndarray, rng: np.random.Generator) -> None:
  size = frame.shape[0]
  img = Image.fromarray(np.clip(frame, 0, 255).astype(np.uint8))
  draw = ImageDraw.Draw(img)
  for _ in range(rng.integers(5, 14)):
    x, y = rng.uniform(-0.1, 1.0, 2) * size
    w, h = rng.uniform(0.05, 0.35, 2) * size
    shape = draw.ellipse if rng.random() < 0.6 else draw.rectangle
    shape((x, y, x + w, y + h), fill=_random_rgb(rng))
  frame[:] = np.asarray(img, np.float32)


def _color_noise_layer(frame: np.ndarray, rng: np.random.Generator) -> None:
  size = frame.shape[0]
  grid = rng.integers(0, 256, (rng.integers(3, 9), rng.integers(3, 9), 3), dtype=np.uint8)
  smooth = Image.fromarray(grid).resize((size, size), Image.Resampling.BICUBIC)
  frame *= 0.5
  frame += 0.5 * np.asarray(smooth, np.float32)


_TEXTURE_LAYERS = (_stripes_layer, _tiles_layer, _blotches_layer, _color_noise_layer)


def textures(size: int, rng: np.random.Generator) -> tuple[np.ndarray, None]:
  """Two to four random texture layers at full strength over a random color."""
  frame = np.empty((size, size, 3), np.float32)
  frame[:] = _random_rgb(rng)
  order = rng.permutation(len(_TEXTURE_LAYERS))[: rng.integers(2, len(_TEXTURE_LAYERS) + 1)]
  for k in order:
    _TEXTURE_LAYERS[k](frame, rng)
  _add_noise(frame, 5.0, rng)
  return frame, None


def _muted_rgb(rng: np.random.Generator, toward: int) -> drawers.RGB:
  """A random color pulled halfway to gray level `toward` (walls, floors)."""
  return tuple(int(0.45 * c + 0.55 * toward) for c in rng.integers(0, 256, 3))


def tinted_studio(size: int, rng: np.random.Generator) -> tuple[np.ndarray, None]:
  """A pale tinted set with one faint texture (a tablecloth, a wall): the common listing
  photo, busier than a studio sweep but nowhere near competing with the product."""
  frame = np.empty((size, size, 3), np.float32)
  frame[:] = _muted_rgb(rng, 215)
  textured = frame.copy()
  _TEXTURE_LAYERS[rng.integers(len(_TEXTURE_LAYERS))](textured, rng)
  frame += np.float32(rng.uniform(0.15, 0.35)) * (textured - frame)
  _add_noise(frame, 2.0, rng)
  return frame, None


def _draw_floor(draw: ImageDraw.ImageDraw, size: int, horizon: int,
                rng: np.random.Generator) -> None:
  floor = _muted_rgb(rng, 110) if rng.random() < 0.5 else _random_rgb(rng, 90, 170)
  draw.rectangle((0, horizon, size, size), fill=floor)
  seam = drawers.scaled(floor, 0.75)
  depth = size - horizon
  for k in range(1, 7):  # plank/tile seams, spaced wider toward the viewer
    y = horizon + depth * (k / 7) ** 1.5
    draw.line((0, y, size, y), fill=seam, width=1)
  if rng.random() < 0.5:  # tiles: seams converging to a vanishing point
    vx = size * rng.uniform(0.3, 0.7)
    for k in range(-4, 9):
      draw.line((vx + (k - 2) * size * 0.04, horizon, vx + (k - 2) * size * 0.35, size), fill=seam)


def _inset(box: tuple[float, float, float, float], pad: float) -> tuple[float, ...]:
  """`box` shrunk by `pad` pixels a side, or by a third of its extent where that is less
  (a fixed frame would turn a small box inside out)."""
  x0, y0, x1, y1 = box
  pad = min(pad, (x1 - x0) / 3, (y1 - y0) / 3)
  return (x0 + pad, y0 + pad, x1 - pad, y1 - pad)


def _draw_prop(draw, kind: str, size: int, horizon: int,
               rng: np.random.Generator) -> Surface | None:
  """Draws one room prop; returns the surface it offers objects, if any."""
  x = size * rng.uniform(0.0, 0.7)
  w = size * rng.uniform(0.2, 0.45)
  color = _muted_rgb(rng, 90)
  if kind == "window":
    y0, y1 = size * 0.06, horizon - size * rng.uniform(0.08, 0.2)
    if y1 <= y0:  # a horizon too high for a window (small video frames)
      return None
    draw.rectangle((x, y0, x + w, y1), fill=(238, 238, 232))
    draw.rectangle(_inset((x, y0, x + w, y1), 3), fill=(185, 212, 236))
    draw.line((x + w / 2, y0, x + w / 2, y1), fill=(238, 238, 232), width=2)
    draw.line((x, (y0 + y1) / 2, x + w, (y0 + y1) / 2), fill=(238, 238, 232), width=2)
    return None
  if kind == "picture":
    y0 = size * rng.uniform(0.05, 0.2)
    h = min(w * 0.8, horizon - y0 - size * 0.08)
    if h <= 0:
      return None
    draw.rectangle((x, y0, x + w * 0.7, y0 + h), fill=(60, 45, 35))
    draw.rectangle(_inset((x, y0, x + w * 0.7, y0 + h), 3), fill=_random_rgb(rng))
    draw.ellipse((x + w * 0.15, y0 + h * 0.3, x + w * 0.5, y0 + h * 0.8), fill=_random_rgb(rng))
    return None
  if kind == "table":
    top = horizon + size * rng.uniform(-0.02, 0.12)
    for leg_x in (x + w * 0.08, x + w * 0.88):
      draw.rectangle((leg_x, top, leg_x + size * 0.025, top + size * 0.28),
                     fill=drawers.scaled(color, 0.7))
    draw.rectangle((x, top, x + w, top + size * 0.035), fill=color)
    return Surface(top, top, x + w * 0.1, x + w * 0.9)
  if kind == "shelf":
    top = horizon - size * rng.uniform(0.15, 0.35)
    bottom = horizon + size * 0.12
    draw.rectangle((x, top, x + w * 0.7, bottom), fill=color)
    for k in (1, 2):
      y = top + (bottom - top) * k / 3
      draw.line((x, y, x + w * 0.7, y), fill=drawers.scaled(color, 0.6), width=2)
    return Surface(top, top, x + w * 0.1, x + w * 0.6)
  seat = horizon + size * rng.uniform(0.02, 0.1)  # sofa
  draw.rounded_rectangle((x, seat - size * 0.16, x + w * 1.3, seat + size * 0.14),
                         radius=size * 0.03, fill=color)
  draw.line((x + size * 0.02, seat, x + w * 1.3 - size * 0.02, seat),
            fill=drawers.scaled(color, 0.7), width=2)
  return Surface(seat, seat, x + w * 0.15, x + w * 1.15)


_PROPS = ("window", "picture", "table", "shelf", "sofa")


def room(size: int, rng: np.random.Generator) -> tuple[np.ndarray, list[Surface]]:
  """Wall, floor and two or three props (window, picture, table, shelf, sofa)."""
  horizon = int(size * rng.uniform(0.25, 0.75))
  img = Image.new("RGB", (size, size), _muted_rgb(rng, 205))
  draw = ImageDraw.Draw(img)
  _draw_floor(draw, size, horizon, rng)
  draw.rectangle((0, horizon - max(1, size // 40), size, horizon), fill=(236, 234, 228))
  surfaces = [Surface(horizon + 0.08 * size, 1.1 * size, 0, size)]
  for kind in rng.permutation(_PROPS)[: rng.integers(2, 4)]:
    surface = _draw_prop(draw, str(kind), size, horizon, rng)
    if surface is not None:
      surfaces.append(surface)
  frame = np.asarray(img, np.float32)
  # Soft light falloff from the top-left, like a window-lit room.
  yy, xx = np.ogrid[0:size, 0:size]
  frame *= (1.05 - 0.2 * (xx + yy) / (2 * size))[..., None].astype(np.float32)
  _add_noise(frame, 3.0, rng)
  return frame, surfaces
