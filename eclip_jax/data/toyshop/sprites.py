"""A product's sprite: the drawn body textured, posed, and composited into frames.

1. `sprite_canvas`: the category's drawer (drawers.py) fills a 2x canvas; the body gets
   the look's color + pattern, then its material's surface look (metal bands, wood grain,
   fabric noise, leather edges, ceramic glaze, see-through glass) and the brand emblem; the
   layers are alpha-composited into one premultiplied RGBA sprite.
2. `pose`: flipped, rotated in-plane and downsampled 2x (the antialiasing), cropped to its
   visible pixels.
3. `paste` / `alpha_map`: premultiplied "over" into a float frame, and where the sprite's
   alpha lands in it (clipped to the frame: the ground truth of boxes and masks).
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from eclip_jax.data.toyshop import drawers
from eclip_jax.data.toyshop import looks

_SUPERSAMPLE = 2
# Drawers keep products inside [0.05, 0.95] of the unit square, so the
# product's longest side is this fraction of the sprite canvas.
_DESIGN_EXTENT = 0.9


@functools.lru_cache(maxsize=256)
def _pattern_weights(pattern: str, n: int) -> np.ndarray:
  """Per-pixel weight of the accent color for an n x n body (read-only)."""
  period = max(4.0, n / 8)
  y = np.arange(n, dtype=np.float32)[:, None]
  x = np.arange(n, dtype=np.float32)[None, :]
  if pattern == "striped":
    w = (y // (period / 2)) % 2
  elif pattern == "checkered":
    w = (x // (period / 2) + y // (period / 2)) % 2
  elif pattern == "dotted":
    shifted_x = x + (y // period % 2) * period / 2  # offset rows like a dot print
    dx = shifted_x % period - period / 2
    dy = y % period - period / 2
    w = (dx * dx + dy * dy) < (0.3 * period) ** 2
  elif pattern == "gradient":
    w = y / max(n - 1, 1)
  else:
    w = np.zeros(1)
  w = np.ascontiguousarray(np.broadcast_to(w, (n, n)), dtype=np.float32)
  w.flags.writeable = False
  return w


def _body_texture(look: looks.ProductLook, n: int) -> np.ndarray:
  color = np.asarray(looks.COLORS[look.color], np.float32)
  if look.pattern == "solid":
    return np.broadcast_to(color, (n, n, 3)).copy()
  accent = np.asarray(looks.COLORS[look.accent_color], np.float32)
  w = _pattern_weights(look.pattern, n)[..., None]
  return color + w * (accent - color)


def _apply_material(material: str, rgb: np.ndarray, mask: Image.Image,
                    rng: np.random.Generator) -> float:
  """Applies the material's surface look to the body colors `rgb` in place.

  Returns the body opacity (below 1 only for see-through glass)."""
  n = rgb.shape[0]
  bbox = mask.getbbox() or (0, 0, n, n)
  x0, y0, x1, y1 = bbox
  width, height = max(x1 - x0, 1), max(y1 - y0, 1)
  u = (np.arange(n, dtype=np.float32) - x0) / width  # 0..1 across the body
  v = (np.arange(n, dtype=np.float32) - y0) / height
  # Mild cylindrical shading gives every body some depth.
  rgb *= (1.0 - 0.15 * (2 * u - 1) ** 2)[None, :, None]
  opacity = 1.0
  if material == "metal":
    band = np.exp(-(((u - 0.3) / 0.07) ** 2)) + 0.5 * np.exp(-(((u - 0.72) / 0.05) ** 2))
    rgb *= 0.8
    rgb += (200 * band)[None, :, None]
  elif material == "wood":
    phase = rng.uniform(0, 2 * np.pi)
    grain = np.sin(2 * np.pi * 9 * v[:, None] + 1.5 * np.sin(2 * np.pi * 1.3 * u[None, :]) + phase)
    rgb *= np.where(grain > 0.75, 0.68, 1.0)[..., None]
  elif material == "fabric":
    # One noise value per output pixel (2x2 supersampled pixels) survives downsampling.
    half = (n + 1) // 2
    noise = rng.standard_normal((half, half), dtype=np.float32)
    noise = np.repeat(np.repeat(noise, 2, 0), 2, 1)[:n, :n]
    rgb *= (1.0 + 0.13 * noise)[..., None]
  elif material == "leather":
    _leather_edges(rgb, mask)
  elif material == "ceramic":
    cx, cy = 0.3, 0.25
    dist2 = ((u[None, :] - cx) / 0.14) ** 2 + ((v[:, None] - cy) / 0.12) ** 2
    spot = np.exp(-dist2)[..., None]
    rgb += (255 - rgb) * 0.9 * spot
  elif material == "glass":
    streak = np.exp(-(((u - 0.25) / 0.05) ** 2))
    rgb += (255 - rgb) * (0.15 + 0.6 * streak)[None, :, None]
    opacity = 0.6
  return opacity


def _leather_edges(rgb: np.ndarray, mask: Image.Image) -> None:
  """Darken the body near its outline and add light stitch dashes just inside it."""
  n = rgb.shape[0]
  radius = max(2, round(n * 0.05))
  # A box blur of the mask is ~0.5 at the outline and rises to 1 at `radius` inside.
  depth = np.asarray(mask.filter(ImageFilter.BoxBlur(radius)), np.float32) / 255
  rgb *= (0.55 + 0.45 * np.clip((depth - 0.5) / 0.35, 0, 1))[..., None]
  yy, xx = np.ogrid[0:n, 0:n]
  dash = ((xx + yy) // max(2, radius)) % 2 == 0
  stitch = (depth > 0.68) & (depth < 0.8) & dash
  rgb[stitch] = (230, 215, 185)


_GLYPH_COUNT = 8


def _brand_ink(brand: int) -> tuple[drawers.RGB, drawers.RGB]:
  """Brand glyph fill and outline colors: hue from the index, outline alternating."""
  hue = (brand * 5 % looks.NUM_BRANDS) / looks.NUM_BRANDS
  rgb = [0.5 + 0.5 * math.cos(2 * math.pi * (hue - k / 3)) for k in range(3)]
  fill = tuple(int(30 + 200 * c) for c in rgb)
  outline = (250, 250, 250) if brand < _GLYPH_COUNT else (20, 20, 20)
  return fill, outline


def _draw_emblem(pen: drawers.Pen, brand: int, anchor: drawers.Anchor) -> None:
  cx, cy, r = (c * pen.n for c in anchor)
  fill, outline = _brand_ink(brand)
  draw = ImageDraw.Draw(pen.front_img)
  width = max(1, round(r * 0.25))
  shape = brand % _GLYPH_COUNT
  box = (cx - r, cy - r, cx + r, cy + r)
  if shape == 0:
    draw.ellipse(box, fill=fill, outline=outline, width=width)
  elif shape == 1:
    draw.rectangle(box, fill=fill, outline=outline, width=width)
  elif shape == 2:
    draw.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=fill, outline=outline)
  elif shape == 3:
    diamond = [(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)]
    draw.polygon(diamond, fill=fill, outline=outline)
  elif shape == 4:
    star = [(cx + (r if k % 2 == 0 else 0.45 * r) * math.sin(k * math.pi / 5),
             cy - (r if k % 2 == 0 else 0.45 * r) * math.cos(k * math.pi / 5)) for k in range(10)]
    draw.polygon(star, fill=fill, outline=outline)
  elif shape == 5:
    draw.ellipse(box, fill=outline)
    draw.ellipse(box, outline=fill, width=max(1, round(r * 0.45)))
  elif shape == 6:
    draw.rectangle(box, fill=outline)
    draw.rectangle((cx - r, cy - r * 0.7, cx + r, cy - r * 0.15), fill=fill)
    draw.rectangle((cx - r, cy + r * 0.15, cx + r, cy + r * 0.7), fill=fill)
  else:
    draw.rectangle((cx - r, cy - r * 0.35, cx + r, cy + r * 0.35), fill=fill, outline=outline)
    draw.rectangle((cx - r * 0.35, cy - r, cx + r * 0.35, cy + r), fill=fill, outline=outline)


def sprite_canvas(look: looks.ProductLook, side_px: float, rng: np.random.Generator) -> Image.Image:
  """Unposed product sprite at 2x resolution, premultiplied ("RGBa")."""
  n = max(8, round(side_px * _SUPERSAMPLE / _DESIGN_EXTENT))
  pen = drawers.Pen(n, drawers.palette(look))
  anchor = drawers.DRAWERS[look.category](pen, look.shape_variant)
  rgb = _body_texture(look, n)
  opacity = _apply_material(look.material, rgb, pen.body_img, rng)
  body = np.empty((n, n, 4), np.uint8)
  body[..., :3] = np.clip(rgb, 0, 255)
  body[..., 3] = np.asarray(pen.body_img, np.float32) * opacity
  _draw_emblem(pen, look.brand, anchor)
  sprite = Image.alpha_composite(pen.back_img, Image.fromarray(body, "RGBA"))
  sprite = Image.alpha_composite(sprite, pen.front_img)
  # Cropping to the drawn pixels keeps the (costly) rotation small.
  return sprite.crop(sprite.getbbox()).convert("RGBa")


class Sprite(NamedTuple):
  rgb: np.ndarray  # float32 [h, w, 3], premultiplied, 0..255
  alpha: np.ndarray  # float32 [h, w], 0..1


def pose(canvas: Image.Image, angle_deg: float, flip: bool) -> Sprite:
  """Flip, rotate and downsample a 2x sprite canvas; crop to its visible pixels."""
  img = canvas.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if flip else canvas
  # Bilinear is enough here: the 2x reduction that follows does the antialiasing.
  img = img.rotate(angle_deg, resample=Image.Resampling.BILINEAR, expand=True)
  arr = np.asarray(img.reduce(_SUPERSAMPLE), np.float32)
  rows = np.flatnonzero(arr[..., 3].any(axis=1))
  cols = np.flatnonzero(arr[..., 3].any(axis=0))
  arr = arr[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
  # Resampling clips channels separately; premultiplied color must not exceed alpha.
  return Sprite(np.minimum(arr[..., :3], arr[..., 3:]), arr[..., 3] / 255)


def _overlap(size: int, sprite: Sprite, x: int, y: int):
  """(frame slices, sprite slices) where a sprite with top-left (x, y) meets the frame."""
  h, w = sprite.alpha.shape
  fx0, fy0, fx1, fy1 = max(x, 0), max(y, 0), min(x + w, size), min(y + h, size)
  if fx0 >= fx1 or fy0 >= fy1:
    return None
  return (slice(fy0, fy1), slice(fx0, fx1)), (slice(fy0 - y, fy1 - y), slice(fx0 - x, fx1 - x))


def paste(frame: np.ndarray, sprite: Sprite, x: int, y: int) -> None:
  """Premultiplied "over" compositing of a sprite into a float frame, in place."""
  hit = _overlap(frame.shape[0], sprite, x, y)
  if hit is None:
    return
  fs, ss = hit
  a = sprite.alpha[ss][..., None]
  frame[fs] = frame[fs] * (1 - a) + sprite.rgb[ss]


def alpha_map(size: int, sprite: Sprite, x: int, y: int) -> np.ndarray:
  """The sprite's alpha placed in a size x size frame."""
  out = np.zeros((size, size), np.float32)
  hit = _overlap(size, sprite, x, y)
  if hit is not None:
    out[hit[0]] = sprite.alpha[hit[1]]
  return out


# Share of the (longest side)^2 square that a compact product covers; sparser
# designs are enlarged towards it so that a small knife is still findable.
_TARGET_COVERAGE = 0.45
_MAX_COVERAGE_BOOST = 1.6


@functools.lru_cache(maxsize=None)
def coverage_boost(category: str, variant: int) -> float:
  """Side multiplier for a design covering less of its square than a compact one."""
  n = 128
  look = looks.ProductLook(category, "red", "solid", "plastic", "medium", variant, 0, "blue")
  pen = drawers.Pen(n, drawers.palette(look))
  drawers.DRAWERS[category](pen, variant)
  alpha = np.maximum(np.asarray(pen.body_img), np.asarray(pen.back_img)[..., 3])
  alpha = np.maximum(alpha, np.asarray(pen.front_img)[..., 3])
  coverage = (alpha > 127).sum() / (n * _DESIGN_EXTENT) ** 2
  return float(np.clip(np.sqrt(_TARGET_COVERAGE / coverage), 1.0, _MAX_COVERAGE_BOOST))
