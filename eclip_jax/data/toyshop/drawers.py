"""The 25 category drawers: each composes its product from primitives in the unit square.

A drawer paints onto a `Pen`'s three layers of a 2x-supersampled canvas: *back*
(flat-colored parts behind the body, e.g. a mug handle or backpack straps), *body* (a mask
that sprites.py fills with the look's color + pattern and gives the material's surface
treatment) and *front* (flat-colored details such as laces, rims). It returns where the
brand emblem goes. Each category has `looks.NUM_SHAPE_VARIANTS` shape variants.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from PIL import Image, ImageDraw

from eclip_jax.data.toyshop import looks

RGB = tuple[int, int, int]


def scaled(rgb: RGB, factor: float) -> RGB:
  return tuple(int(min(255, c * factor)) for c in rgb)


def palette(look: looks.ProductLook) -> dict[str, RGB]:
  """Named paints for the non-body parts of a product."""
  body = looks.COLORS[look.color]
  return {
      "accent": looks.COLORS[look.accent_color],
      "dark": scaled(body, 0.55),
      "trim": (48, 48, 54),
      "light": (240, 238, 232),
      "metal": (188, 192, 200),
      "screen": (22, 28, 44),
      "flame": (255, 185, 50),
      "wood": (150, 102, 58),
  }


class Pen:
  """Draws unit-square shapes. Paint "body" goes to the body mask (fill 255);
  "erase" cuts the body mask; any other paint is a palette color drawn on the
  front layer, or on the back layer with back=True."""

  def __init__(self, n: int, palette: dict[str, RGB]):
    self.n = n
    self.palette = palette
    self.back_img = Image.new("RGBA", (n, n))
    self.body_img = Image.new("L", (n, n))
    self.front_img = Image.new("RGBA", (n, n))
    self._back = ImageDraw.Draw(self.back_img)
    self._body = ImageDraw.Draw(self.body_img)
    self._front = ImageDraw.Draw(self.front_img)

  def _target(self, paint: str, back: bool):
    if paint == "body":
      return self._body, 255
    if paint == "erase":
      return self._body, 0
    return (self._back if back else self._front), self.palette[paint] + (255,)

  def _px(self, coords) -> list[float]:
    return [c * self.n for c in coords]

  def _pts(self, points) -> list[tuple[float, float]]:
    return [(x * self.n, y * self.n) for x, y in points]

  def _width(self, width: float) -> int:
    return max(1, round(width * self.n))

  def rect(self, box, paint, *, radius=0.0, back=False):
    draw, fill = self._target(paint, back)
    draw.rounded_rectangle(self._px(box), radius=radius * self.n, fill=fill)

  def ellipse(self, box, paint, *, width=0.0, back=False):
    draw, fill = self._target(paint, back)
    if width:
      draw.ellipse(self._px(box), outline=fill, width=self._width(width))
    else:
      draw.ellipse(self._px(box), fill=fill)

  def poly(self, points, paint, *, back=False):
    draw, fill = self._target(paint, back)
    draw.polygon(self._pts(points), fill=fill)

  def line(self, points, paint, width, *, back=False):
    draw, fill = self._target(paint, back)
    draw.line(self._pts(points), fill=fill, width=self._width(width), joint="curve")

  def arc(self, box, start, end, paint, width, *, back=False):
    draw, fill = self._target(paint, back)
    draw.arc(self._px(box), start, end, fill=fill, width=self._width(width))

  def pie(self, box, start, end, paint, *, back=False):
    draw, fill = self._target(paint, back)
    draw.pieslice(self._px(box), start, end, fill=fill)


def _mirrored(cx: float, profile) -> list[tuple[float, float]]:
  """Closed polygon of a shape symmetric about x=cx from (y, half_width) pairs."""
  right = [(cx + hw, y) for y, hw in profile]
  left = [(cx - hw, y) for y, hw in reversed(profile)]
  return right + left


# Each drawer draws one category for a shape variant and returns the brand
# emblem anchor (cx, cy, radius) in unit coordinates.
Anchor = tuple[float, float, float]


def _draw_mug(p: Pen, v: int) -> Anchor:
  w, h = ((0.52, 0.66), (0.64, 0.48), (0.44, 0.78))[v]
  x0, y0 = 0.42 - w / 2, 0.5 - h / 2
  x1, y1 = x0 + w, y0 + h
  p.ellipse((x1 - 0.1, y0 + 0.14 * h, x1 + 0.24, y0 + 0.78 * h), "body", width=0.08)
  p.rect((x0, y0, x1, y1 - 0.04), "body")
  p.ellipse((x0, y1 - 0.08, x1, y1), "body")
  p.ellipse((x0, y0 - 0.05, x1, y0 + 0.05), "body")
  p.ellipse((x0 + 0.03, y0 - 0.035, x1 - 0.03, y0 + 0.035), "dark")
  return (x0 + w / 2, y0 + 0.55 * h, 0.07)


def _draw_sneaker(p: Pen, v: int) -> Anchor:
  heel_top = (0.42, 0.16, 0.4)[v]
  sole_top = (0.72, 0.72, 0.64)[v]
  p.poly([(0.07, sole_top), (0.07, heel_top + 0.05), (0.12, heel_top), (0.36, heel_top + 0.02),
          (0.44, 0.42), (0.62, 0.5), (0.86, 0.56), (0.95, 0.66), (0.95, sole_top)], "body")
  p.rect((0.05, sole_top, 0.96, 0.84), "accent" if v == 2 else "light", radius=0.04)
  p.line([(0.05, sole_top + 0.01), (0.96, sole_top + 0.01)], "trim", 0.015)
  p.pie((0.78, 0.56, 1.0, 0.8), 180, 360, "light")
  for i in range(3):
    x = 0.46 + 0.07 * i
    p.line([(x - 0.03, 0.44 + 0.035 * i), (x + 0.04, 0.47 + 0.035 * i)], "light", 0.025)
  p.line([(0.2, sole_top - 0.06), (0.45, sole_top - 0.14), (0.7, sole_top - 0.08)], "accent", 0.035)
  return (0.2, heel_top + 0.14, 0.06)


def _draw_lamp(p: Pen, v: int) -> Anchor:
  if v == 2:  # desk lamp: jointed arm and a cone head
    p.ellipse((0.12, 0.84, 0.56, 0.95), "trim")
    p.line([(0.34, 0.88), (0.22, 0.5), (0.55, 0.26)], "metal", 0.04)
    p.poly([(0.48, 0.14), (0.66, 0.08), (0.94, 0.44), (0.62, 0.56)], "body")
    p.ellipse((0.74, 0.42, 0.86, 0.54), "flame")
    return (0.68, 0.3, 0.06)
  if v == 0:  # table lamp, conical shade
    p.poly([(0.3, 0.06), (0.7, 0.06), (0.88, 0.48), (0.12, 0.48)], "body")
  else:  # dome shade
    p.pie((0.1, 0.08, 0.9, 0.88), 180, 360, "body")
    p.ellipse((0.4, 0.42, 0.6, 0.54), "flame", back=True)
  p.line([(0.5, 0.48), (0.5, 0.86)], "metal", 0.05, back=True)
  p.ellipse((0.28, 0.82, 0.72, 0.95), "trim")
  return (0.5, 0.3, 0.07)


def _draw_backpack(p: Pen, v: int) -> Anchor:
  x0, y0, x1 = ((0.24, 0.14, 0.76), (0.12, 0.28, 0.88), (0.18, 0.18, 0.82))[v]
  p.arc((0.38, y0 - 0.12, 0.62, y0 + 0.1), 180, 360, "trim", 0.04, back=True)
  p.line([(x0 + 0.02, y0 + 0.1), (x0 - 0.04, 0.9)], "trim", 0.05, back=True)
  p.line([(x1 - 0.02, y0 + 0.1), (x1 + 0.04, 0.9)], "trim", 0.05, back=True)
  p.rect((x0, y0, x1, 0.94), "body", radius=0.12)
  p.rect((x0 + 0.08, 0.58, x1 - 0.08, 0.88), "accent", radius=0.06)
  p.line([(x0 + 0.12, 0.64), (x1 - 0.12, 0.64)], "trim", 0.015)
  if v == 2:  # top flap with a buckle
    p.poly([(x0, y0 + 0.06), (x1, y0 + 0.06), (x1, 0.42), (0.5, 0.5), (x0, 0.42)], "dark")
    p.rect((0.46, 0.44, 0.54, 0.52), "metal")
  return (0.5, 0.74 if v == 2 else 0.42, 0.06)


def _draw_bottle(p: Pen, v: int) -> Anchor:
  if v == 0:  # sports bottle
    p.rect((0.4, 0.05, 0.6, 0.17), "accent", radius=0.03)
    p.rect((0.43, 0.15, 0.57, 0.22), "body")
    p.rect((0.3, 0.2, 0.7, 0.95), "body", radius=0.08)
    for y in (0.42, 0.48, 0.54):
      p.line([(0.31, y), (0.69, y)], "dark", 0.015)
    return (0.5, 0.72, 0.07)
  if v == 1:  # flask with shoulders and a label
    p.rect((0.42, 0.05, 0.58, 0.15), "accent")
    p.poly(_mirrored(0.5, [(0.14, 0.06), (0.28, 0.07), (0.4, 0.24), (0.95, 0.24)]), "body")
    p.rect((0.27, 0.55, 0.73, 0.78), "light")
    return (0.5, 0.66, 0.07)
  p.ellipse((0.6, 0.35, 0.92, 0.75), "body", width=0.06)  # jug with a side handle
  p.rect((0.4, 0.06, 0.6, 0.16), "accent", radius=0.02)
  p.poly(_mirrored(0.5, [(0.15, 0.08), (0.3, 0.1), (0.4, 0.3), (0.95, 0.3)]), "body")
  return (0.5, 0.65, 0.08)


def _draw_chair(p: Pen, v: int) -> Anchor:
  if v == 1:  # armchair
    p.rect((0.15, 0.1, 0.85, 0.62), "body", radius=0.08)
    p.rect((0.15, 0.52, 0.85, 0.8), "body", radius=0.05)
    for x in (0.05, 0.73):
      p.rect((x, 0.38, x + 0.22, 0.82), "body", radius=0.06)
    p.line([(0.27, 0.6), (0.73, 0.6)], "dark", 0.02)
    p.line([(0.2, 0.8), (0.18, 0.92)], "trim", 0.04)
    p.line([(0.8, 0.8), (0.82, 0.92)], "trim", 0.04)
    return (0.5, 0.33, 0.07)
  if v == 2:  # office chair on a star base
    p.line([(0.5, 0.6), (0.5, 0.82)], "metal", 0.05)
    for end in ((0.14, 0.92), (0.86, 0.92), (0.5, 0.95)):
      p.line([(0.5, 0.82), end], "trim", 0.04)
      p.ellipse((end[0] - 0.04, end[1] - 0.02, end[0] + 0.04, end[1] + 0.04), "trim")
    p.rect((0.27, 0.05, 0.73, 0.48), "body", radius=0.1)
    p.rect((0.2, 0.5, 0.8, 0.62), "body", radius=0.05)
    return (0.5, 0.26, 0.07)
  for x_top, x_bot in ((0.3, 0.3), (0.7, 0.7), (0.23, 0.2), (0.77, 0.8)):  # dining chair
    p.line([(x_top, 0.5), (x_bot, 0.95)], "trim", 0.045)
  p.rect((0.27, 0.05, 0.73, 0.42), "body", radius=0.04)
  p.line([(0.3, 0.4), (0.3, 0.55)], "body", 0.05)
  p.line([(0.7, 0.4), (0.7, 0.55)], "body", 0.05)
  p.poly([(0.26, 0.5), (0.74, 0.5), (0.82, 0.62), (0.18, 0.62)], "body")
  return (0.5, 0.23, 0.07)


def _draw_watch(p: Pen, v: int) -> Anchor:
  p.rect((0.36, 0.03, 0.64, 0.97), "body", radius=0.05)
  for y in (0.12, 0.2, 0.8, 0.88):
    p.line([(0.37, y), (0.63, y)], "dark", 0.015)
  case = (0.2, 0.26, 0.8, 0.74)
  face = (0.26, 0.32, 0.74, 0.68)
  if v == 1:
    p.rect(case, "metal", radius=0.08)
    p.rect(face, "light", radius=0.05)
  else:
    p.ellipse(case, "body" if v == 2 else "metal")
    p.ellipse(face, "screen" if v == 2 else "light")
  p.rect((0.79, 0.46, 0.85, 0.54), "metal")
  hands = "light" if v == 2 else "trim"
  p.line([(0.5, 0.5), (0.5, 0.37)], hands, 0.025)
  p.line([(0.5, 0.5), (0.62, 0.55)], hands, 0.025)
  return (0.5, 0.6, 0.04)


def _draw_tshirt(p: Pen, v: int) -> Anchor:
  sleeve = {
      0: [(0.05, 0.3), (0.15, 0.47), (0.25, 0.4)],
      1: [(0.1, 0.2), (0.03, 0.82), (0.14, 0.84), (0.25, 0.4)],
      2: [(0.08, 0.28), (0.17, 0.44), (0.25, 0.38)],
  }[v]
  neck_depth = 0.3 if v == 2 else 0.18
  left = [(0.36, 0.1)] + sleeve + [(0.25, 0.95)]
  right = [(1 - x, y) for x, y in reversed(left)]
  p.poly(left + right + [(0.5, neck_depth)], "body")
  p.line([(0.36, 0.1), (0.5, neck_depth), (0.64, 0.1)], "accent", 0.03)
  return (0.5, 0.45 if v == 2 else 0.4, 0.08)


def _draw_cap(p: Pen, v: int) -> Anchor:
  if v == 0:  # baseball cap, brim to the right
    p.ellipse((0.45, 0.46, 0.97, 0.6), "body")
    p.line([(0.5, 0.56), (0.95, 0.54)], "dark", 0.02)
    p.pie((0.06, 0.2, 0.76, 0.86), 180, 360, "body")
    p.line([(0.41, 0.21), (0.41, 0.53)], "dark", 0.015)
    p.ellipse((0.38, 0.17, 0.44, 0.23), "accent")
    return (0.28, 0.4, 0.07)
  if v == 1:  # beanie with pompom
    p.pie((0.14, 0.14, 0.86, 0.94), 180, 360, "body")
    p.rect((0.12, 0.5, 0.88, 0.72), "body", radius=0.03)
    for i in range(9):
      x = 0.16 + 0.085 * i
      p.line([(x, 0.52), (x, 0.7)], "dark", 0.012)
    p.ellipse((0.4, 0.04, 0.6, 0.22), "accent")
    return (0.5, 0.36, 0.07)
  p.poly([(0.3, 0.22), (0.7, 0.22), (0.78, 0.6), (0.22, 0.6)], "body")  # bucket hat
  p.poly([(0.22, 0.58), (0.78, 0.58), (0.95, 0.76), (0.05, 0.76)], "body")
  p.line([(0.23, 0.55), (0.77, 0.55)], "accent", 0.04)
  return (0.5, 0.38, 0.07)


def _draw_sunglasses(p: Pen, v: int) -> Anchor:
  lenses = {
      0: [(0.06, 0.32, 0.46, 0.7), (0.54, 0.32, 0.94, 0.7)],
      1: [(0.05, 0.34, 0.46, 0.66), (0.54, 0.34, 0.95, 0.66)],
      2: [(0.06, 0.3, 0.46, 0.72), (0.54, 0.3, 0.94, 0.72)],
  }[v]
  for box in lenses:
    if v == 1:
      p.rect(box, "screen", radius=0.06, back=True)
      p.rect(box, "body", radius=0.06)
      p.rect((box[0] + 0.05, box[1] + 0.05, box[2] - 0.05, box[3] - 0.05), "erase",
             radius=0.03)
    elif v == 2:  # aviator teardrops
      x0, y0, x1, y1 = box
      drop = [(x0, y0), (x1, y0), (x1 - 0.03, y0 + 0.25), (x0 + 0.12, y1), (x0 + 0.02, y0 + 0.2)]
      p.poly(drop, "screen", back=True)
      p.line(drop + [drop[0]], "body", 0.035)
    else:
      p.ellipse(box, "screen", back=True)
      p.ellipse(box, "body", width=0.06)
  p.arc((0.42, 0.34, 0.58, 0.5), 180, 360, "body", 0.04)
  p.line([(0.04, 0.38), (0.01, 0.34)], "body", 0.04)
  p.line([(0.96, 0.38), (0.99, 0.34)], "body", 0.04)
  p.line([(0.14, 0.42), (0.2, 0.38)], "light", 0.02)
  return (0.86, 0.6, 0.035)


def _draw_headphones(p: Pen, v: int) -> Anchor:
  band_width = (0.09, 0.07, 0.04)[v]
  p.arc((0.14, 0.05, 0.86, 0.9), 180, 360, "body" if v < 2 else "metal", band_width)
  if v == 2:
    p.arc((0.3, 0.08, 0.7, 0.4), 200, 340, "body", 0.05)
  for x in (0.06, 0.72):
    if v == 0:
      p.rect((x, 0.42, x + 0.22, 0.82), "body", radius=0.07)
    else:
      p.ellipse((x, 0.44, x + 0.22, 0.78), "body")
    inner = x + 0.16 if x < 0.5 else x
    p.rect((inner, 0.48, inner + 0.06, 0.76), "trim", radius=0.02)
  return (0.17, 0.62, 0.06)


def _draw_phone(p: Pen, v: int) -> Anchor:
  p.rect((0.27, 0.05, 0.73, 0.95), "body", radius=0.08)
  p.rect((0.72, 0.22, 0.745, 0.34), "trim")
  lens_spots = {
      0: [(0.35, 0.13), (0.45, 0.13), (0.35, 0.23)],
      1: [(0.36, 0.14)],
      2: [(0.36, 0.12), (0.36, 0.2), (0.36, 0.28)],
  }[v]
  if v != 1:
    xs, ys = [x for x, _ in lens_spots], [y for _, y in lens_spots]
    p.rect((min(xs) - 0.06, min(ys) - 0.06, max(xs) + 0.06, max(ys) + 0.06), "dark", radius=0.04)
  for x, y in lens_spots:
    p.ellipse((x - 0.04, y - 0.04, x + 0.04, y + 0.04), "metal")
    p.ellipse((x - 0.028, y - 0.028, x + 0.028, y + 0.028), "screen")
  return (0.5, 0.56, 0.07)


def _draw_laptop(p: Pen, v: int) -> Anchor:
  if v == 1:  # closed, seen from above
    p.rect((0.05, 0.2, 0.95, 0.8), "body", radius=0.05)
    p.line([(0.08, 0.76), (0.92, 0.76)], "dark", 0.02)
    return (0.5, 0.48, 0.08)
  lid_top, base_bot = (0.1, 0.8) if v == 0 else (0.2, 0.74)
  p.rect((0.12, lid_top, 0.88, 0.62), "body", radius=0.03)
  p.rect((0.16, lid_top + 0.04, 0.84, 0.58), "screen")
  p.poly([(0.12, 0.62), (0.88, 0.62), (0.98, base_bot), (0.02, base_bot)], "body")
  p.poly([(0.2, 0.64), (0.8, 0.64), (0.85, base_bot - 0.07), (0.15, base_bot - 0.07)], "trim")
  p.rect((0.42, base_bot - 0.055, 0.58, base_bot - 0.015), "dark")
  return (0.5, (lid_top + 0.6) / 2, 0.06)


def _draw_teapot(p: Pen, v: int) -> Anchor:
  body = ((0.2, 0.32, 0.8, 0.92), (0.26, 0.24, 0.74, 0.94), (0.14, 0.44, 0.86, 0.9))[v]
  x0, y0, x1, y1 = body
  cy = (y0 + y1) / 2
  p.ellipse((0.04, y0 + 0.08, 0.3, cy + 0.14), "body", width=0.06)
  p.poly([(x1 - 0.06, cy), (0.92, y0 - 0.04), (0.97, y0), (x1, cy + 0.14)], "body")
  p.ellipse(body, "body")
  p.pie((0.35, y0 - 0.1, 0.65, y0 + 0.1), 180, 360, "body")
  p.line([(0.35, y0 + 0.005), (0.65, y0 + 0.005)], "dark", 0.02)
  p.ellipse((0.46, y0 - 0.16, 0.54, y0 - 0.08), "accent")
  return (0.5, cy + 0.05, 0.07)


def _draw_vase(p: Pen, v: int) -> Anchor:
  profile = (
      [(0.05, 0.13), (0.12, 0.1), (0.25, 0.1), (0.42, 0.28), (0.62, 0.32), (0.82, 0.22),
       (0.95, 0.15)],
      [(0.05, 0.22), (0.1, 0.2), (0.95, 0.2)],
      [(0.05, 0.09), (0.32, 0.07), (0.45, 0.18), (0.58, 0.33), (0.74, 0.36), (0.88, 0.28),
       (0.95, 0.18)],
  )[v]
  p.poly(_mirrored(0.5, profile), "body")
  rim = profile[0][1]
  p.ellipse((0.5 - rim, 0.03, 0.5 + rim, 0.07), "dark")
  return (0.5, 0.68, 0.07)


def _draw_umbrella(p: Pen, v: int) -> Anchor:
  if v == 2:  # closed umbrella
    p.line([(0.5, 0.04), (0.5, 0.86)], "trim", 0.03)
    p.arc((0.5, 0.8, 0.7, 0.96), 0, 180, "trim", 0.04)
    p.poly([(0.5, 0.06), (0.67, 0.32), (0.62, 0.78), (0.38, 0.78), (0.33, 0.32)], "body")
    p.rect((0.42, 0.4, 0.58, 0.46), "accent")
    return (0.5, 0.6, 0.05)
  top, bottom = (0.06, 0.56) if v == 0 else (0.22, 0.5)
  apex = (0.5, top)
  p.pie((0.02, top, 0.98, 2 * bottom - top), 180, 360, "body")
  for i in range(4):  # scalloped hem between the rib tips
    x = 0.02 + 0.24 * i + 0.12
    p.ellipse((x - 0.1, bottom - 0.05, x + 0.1, bottom + 0.05), "erase")
  for i in range(5):
    p.line([apex, (0.02 + 0.24 * i, bottom)], "dark", 0.015)
  p.line([apex, (0.5, 0.88)], "trim", 0.03)
  p.arc((0.5, 0.8, 0.68, 0.96), 0, 180, "trim", 0.035)
  return (0.5, (top + bottom) / 2, 0.05)


def _draw_handbag(p: Pen, v: int) -> Anchor:
  if v == 2:  # clutch with a wrist chain
    p.arc((0.65, 0.2, 0.98, 0.7), 190, 80, "metal", 0.02, back=True)
    p.rect((0.05, 0.38, 0.95, 0.76), "body", radius=0.05)
    p.poly([(0.05, 0.4), (0.95, 0.4), (0.5, 0.62)], "dark")
    p.ellipse((0.47, 0.57, 0.53, 0.63), "metal")
    return (0.5, 0.7, 0.035)
  handle_top = 0.06 if v == 0 else 0.14
  p.arc((0.3, handle_top, 0.7, 0.62), 180, 360, "dark", 0.05, back=True)
  if v == 0:  # tote
    p.poly([(0.2, 0.36), (0.8, 0.36), (0.92, 0.92), (0.08, 0.92)], "body")
    p.rect((0.46, 0.4, 0.54, 0.46), "metal")
    return (0.5, 0.66, 0.07)
  p.rect((0.1, 0.36, 0.9, 0.9), "body", radius=0.06)  # satchel with a flap
  p.poly([(0.1, 0.38), (0.9, 0.38), (0.9, 0.56), (0.5, 0.68), (0.1, 0.56)], "dark")
  p.rect((0.45, 0.6, 0.55, 0.7), "metal")
  return (0.5, 0.8, 0.05)


def _draw_book(p: Pen, v: int) -> Anchor:
  if v == 2:  # stack of three books, the sold one on top
    p.rect((0.1, 0.72, 0.9, 0.92), "accent")
    p.rect((0.14, 0.54, 0.86, 0.72), "dark")
    p.rect((0.06, 0.3, 0.94, 0.54), "body")
    for y0, y1, x1 in ((0.72, 0.92, 0.9), (0.54, 0.72, 0.86), (0.3, 0.54, 0.94)):
      p.rect((x1 - 0.04, y0 + 0.03, x1 - 0.01, y1 - 0.03), "light")
    return (0.5, 0.42, 0.07)
  x0, x1 = (0.2, 0.8) if v == 0 else (0.16, 0.76)
  if v == 1:  # page block of a thick book, seen at an angle
    p.poly([(x1, 0.07), (0.86, 0.11), (0.86, 0.97), (x1, 0.95)], "light", back=True)
  p.rect((x0, 0.05, x1, 0.95), "body", radius=0.015)
  p.rect((x0, 0.05, x0 + 0.07, 0.95), "dark")
  p.rect((x0 + 0.14, 0.18, x1 - 0.08, 0.3), "accent")
  p.line([(x0 + 0.14, 0.36), (x1 - 0.16, 0.36)], "light", 0.02)
  return ((x0 + x1) / 2 + 0.03, 0.7, 0.08)


def _draw_guitar(p: Pen, v: int) -> Anchor:
  neck_top = (0.1, 0.06, 0.26)[v]
  p.rect((0.46, neck_top, 0.54, 0.58), "wood")
  p.rect((0.43, neck_top - 0.08, 0.57, neck_top + 0.02), "trim", radius=0.02)
  if v == 1:  # electric: offset double-cutaway body
    p.ellipse((0.2, 0.5, 0.8, 0.96), "body")
    p.poly([(0.22, 0.62), (0.3, 0.34), (0.42, 0.5), (0.58, 0.5), (0.66, 0.4), (0.78, 0.64)], "body")
    p.poly([(0.5, 0.62), (0.72, 0.66), (0.66, 0.86), (0.5, 0.84)], "light")
    for y in (0.6, 0.7):
      p.rect((0.42, y, 0.58, y + 0.04), "trim")
  else:  # acoustic / ukulele: two bouts and a sound hole
    p.ellipse((0.2, 0.52, 0.8, 0.97), "body")
    p.ellipse((0.27, 0.36, 0.73, 0.7), "body")
    p.ellipse((0.42, 0.52, 0.58, 0.66), "screen")
    p.rect((0.4, 0.8, 0.6, 0.83), "trim")
  p.line([(0.5, neck_top), (0.5, 0.82)], "light", 0.008)
  return (0.34, 0.86, 0.04)


def _draw_clock(p: Pen, v: int) -> Anchor:
  if v == 1:  # alarm clock with bells and legs
    for x in (0.12, 0.64):
      p.ellipse((x, 0.03, x + 0.24, 0.24), "body")
    p.line([(0.28, 0.8), (0.18, 0.96)], "trim", 0.04)
    p.line([(0.72, 0.8), (0.82, 0.96)], "trim", 0.04)
    case, face = (0.14, 0.12, 0.86, 0.88), (0.24, 0.22, 0.76, 0.78)
  else:
    case, face = (0.05, 0.05, 0.95, 0.95), (0.2, 0.2, 0.8, 0.8)
  if v == 2:
    p.rect(case, "body", radius=0.08)
    p.rect(face, "light", radius=0.04)
  else:
    p.ellipse(case, "body")
    p.ellipse(face, "light")
  cx, cy = (face[0] + face[2]) / 2, (face[1] + face[3]) / 2
  r = (face[2] - face[0]) / 2
  for k in range(12):
    a = k * math.pi / 6
    p.line([(cx + 0.8 * r * math.cos(a), cy + 0.8 * r * math.sin(a)),
            (cx + 0.95 * r * math.cos(a), cy + 0.95 * r * math.sin(a))], "trim", 0.015)
  p.line([(cx, cy), (cx, cy - 0.6 * r)], "trim", 0.03)
  p.line([(cx, cy), (cx + 0.45 * r, cy + 0.2 * r)], "trim", 0.03)
  return (cx, cy + 0.45 * r, 0.05)


def _draw_bowl(p: Pen, v: int) -> Anchor:
  rim_y, depth, x0 = ((0.35, 0.5, 0.05), (0.45, 0.32, 0.03), (0.3, 0.42, 0.1))[v]
  x1 = 1 - x0
  foot_bot = rim_y + depth + (0.2 if v == 2 else 0.05)
  p.rect((0.38, rim_y + depth - 0.08, 0.62, foot_bot), "dark", radius=0.02)
  p.pie((x0, rim_y - depth, x1, rim_y + depth), 0, 180, "body")
  p.ellipse((x0, rim_y - 0.08, x1, rim_y + 0.08), "body")
  p.ellipse((x0 + 0.04, rim_y - 0.06, x1 - 0.04, rim_y + 0.06), "dark")
  return (0.5, rim_y + 0.45 * depth, 0.07)


def _draw_candle(p: Pen, v: int) -> Anchor:
  x0, x1, top = ((0.28, 0.72, 0.34), (0.4, 0.6, 0.26), (0.24, 0.76, 0.42))[v]
  bottom = 0.84 if v == 1 else 0.95
  if v == 1:  # taper candle in a holder dish
    p.ellipse((0.2, 0.82, 0.8, 0.95), "metal")
  if v == 2:  # jar candle: the body is the wax seen through the jar
    p.rect((x0 - 0.04, top - 0.1, x1 + 0.04, bottom), "metal", radius=0.04, back=True)
  p.rect((x0, top, x1, bottom), "body", radius=0.02)
  p.ellipse((x0, top - 0.04, x1, top + 0.04), "dark")
  if v == 2:
    p.rect((x0, 0.62, x1, 0.8), "accent")
  p.line([(0.5, top), (0.5, top - 0.06)], "trim", 0.015)
  p.ellipse((0.44, top - 0.24, 0.56, top - 0.04), "flame")
  p.ellipse((0.47, top - 0.14, 0.53, top - 0.06), "light")
  return (0.5, (top + bottom) / 2 + 0.05, 0.05 if v == 1 else 0.07)


def _draw_knife(p: Pen, v: int) -> Anchor:
  # Drawn along the diagonal so a long, thin object still fills its canvas.
  def along(t: float, off: float) -> tuple[float, float]:
    # t runs from the handle end (0) to the tip (1); off is across the knife.
    return (0.06 + 0.88 * t + 0.7 * off, 0.94 - 0.88 * t + 0.7 * off)

  blade_width = (0.16, 0.24, 0.13)[v]
  if v == 1:  # cleaver: rectangular blade
    blade = [along(0.4, -0.02), along(1.0, -0.02), along(1.0, blade_width), along(0.4, blade_width)]
  else:
    blade = [along(0.4, -0.02), along(1.0, -0.02), along(0.6, blade_width), along(0.4, blade_width)]
  p.poly(blade, "metal")
  p.poly([along(0.0, -0.05), along(0.42, -0.05), along(0.42, 0.06), along(0.0, 0.06)], "body")
  p.poly([along(0.38, -0.06), along(0.43, -0.06), along(0.43, blade_width),
          along(0.38, blade_width)], "metal")
  for t in (0.1, 0.2, 0.3):
    x, y = along(t, 0.005)
    p.ellipse((x - 0.015, y - 0.015, x + 0.015, y + 0.015), "light")
  if v == 1:
    x, y = along(0.88, 0.15)
    p.ellipse((x - 0.03, y - 0.03, x + 0.03, y + 0.03), "erase")
  return (*along(0.72, blade_width / 3), 0.04)


def _draw_wine(p: Pen, v: int) -> Anchor:
  bowl_profile = (
      [(0.05, 0.2), (0.2, 0.26), (0.38, 0.25), (0.5, 0.17), (0.56, 0.04)],
      [(0.03, 0.1), (0.3, 0.11), (0.5, 0.09), (0.58, 0.03)],
      [(0.2, 0.38), (0.3, 0.33), (0.4, 0.2), (0.46, 0.04)],
  )[v]
  stem_top = bowl_profile[-1][0]
  p.rect((0.475, stem_top - 0.02, 0.525, 0.9), "body")
  p.ellipse((0.26, 0.86, 0.74, 0.95), "body")
  p.poly(_mirrored(0.5, bowl_profile), "body")
  top_y, top_w = bowl_profile[0]
  p.ellipse((0.5 - top_w, top_y - 0.02, 0.5 + top_w, top_y + 0.02), "dark")
  p.line([(0.5 - top_w + 0.06, top_y + 0.06), (0.5 - top_w + 0.08, stem_top - 0.12)], "light", 0.02)
  return (0.5, (top_y + stem_top) / 2, 0.05)


def _draw_lighter(p: Pen, v: int) -> Anchor:
  if v == 1:  # disposable: slim body, metal hood and spark wheel
    p.rect((0.32, 0.26, 0.68, 0.95), "body", radius=0.06)
    p.rect((0.32, 0.1, 0.68, 0.28), "metal")
    p.ellipse((0.36, 0.03, 0.52, 0.17), "trim")
    p.rect((0.56, 0.05, 0.66, 0.12), "accent")
    return (0.5, 0.6, 0.07)
  if v == 2:  # torch lighter with an angled nozzle
    p.poly([(0.58, 0.16), (0.82, 0.04), (0.9, 0.14), (0.7, 0.3)], "metal")
    p.rect((0.22, 0.24, 0.74, 0.95), "body", radius=0.08)
    p.rect((0.3, 0.36, 0.4, 0.5), "accent", radius=0.02)
    return (0.48, 0.72, 0.08)
  p.rect((0.24, 0.06, 0.76, 0.36), "body", radius=0.04)  # flip-top
  p.rect((0.24, 0.36, 0.76, 0.95), "body", radius=0.04)
  p.line([(0.24, 0.36), (0.76, 0.36)], "dark", 0.02)
  p.rect((0.7, 0.28, 0.78, 0.44), "metal")
  return (0.5, 0.64, 0.09)


DRAWERS: dict[str, Callable[[Pen, int], Anchor]] = {
    name: globals()[f"_draw_{name}"] for name in looks.CATEGORIES
}
