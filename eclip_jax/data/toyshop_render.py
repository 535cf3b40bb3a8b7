"""Pixel, video and audio rendering for "toyshop", a procedural product world.

Scene model
-----------
A product is described by a `ProductLook` (category, colors, pattern, material,
size, shape variant, brand). Rendering a look happens in two stages:

1. **Sprite.** The category's drawer composes the product from simple
   primitives in unit-square coordinates onto three layers of a 2x-supersampled
   canvas: *back* (flat-colored parts behind the body, e.g. a mug handle or
   backpack straps), *body* (a mask that is filled with the look's color +
   pattern and then given the material's surface treatment) and *front*
   (flat-colored details such as laces, rims, the brand emblem). The layers are
   alpha-composited into one premultiplied RGBA sprite.
2. **Pose and scene.** The sprite is flipped, rotated in-plane and downsampled
   2x (antialiasing), then composited over a background. The clutter level
   decides the background (near-uniform studio / random texture / a room with
   wall, floor and furniture), the number of distractor products (random looks
   of *other* categories drawn with the same sprite renderer) and the product's
   scale. In the "cluttered" level one distractor may be placed in front of the
   product, occluding at most 40% of it.

Ground truth is exact because the product is composited last (except for the
occluder): the box is the tight box of the placed product alpha (> 0.5) inside
the frame, and the mask is that alpha minus pixels covered by the occluder.

Audio encodes size as pitch, material as timbre (partials + decay) and category
as a strike rhythm. All randomness comes from the caller's `np.random.Generator`,
so a look and a generator state always give byte-identical outputs.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import zlib
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

CATEGORIES: tuple[str, ...] = (
    "mug", "sneaker", "lamp", "backpack", "bottle", "chair", "watch", "tshirt", "cap",
    "sunglasses", "headphones", "phone", "laptop", "teapot", "vase", "umbrella",
    "handbag", "book", "guitar", "clock", "bowl", "candle", "knife", "wine", "lighter",
)
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "orange": (245, 135, 25),
    "yellow": (245, 215, 40),
    "green": (55, 165, 55),
    "teal": (20, 160, 155),
    "blue": (45, 105, 225),
    "navy": (25, 35, 105),
    "purple": (125, 50, 175),
    "pink": (245, 135, 185),
    "brown": (125, 78, 40),
    "black": (25, 25, 25),
    "white": (245, 245, 245),
    "gray": (135, 135, 140),
}
PATTERNS: tuple[str, ...] = ("solid", "striped", "dotted", "checkered", "gradient")
MATERIALS: tuple[str, ...] = ("plastic", "metal", "wood", "leather", "fabric", "ceramic", "glass")
SIZES: tuple[str, ...] = ("small", "medium", "large")
NUM_SHAPE_VARIANTS = 3
NUM_BRANDS = 16
CLUTTER_LEVELS = ("clean", "cluttered", "lifestyle")

_SIZE_SCALE = {"small": 0.8, "medium": 1.0, "large": 1.2}
_SUPERSAMPLE = 2
# Drawers keep products inside [0.05, 0.95] of the unit square, so the
# product's longest side is this fraction of the sprite canvas.
_DESIGN_EXTENT = 0.9
_MAX_TILT_DEG = 25.0


@dataclasses.dataclass(frozen=True)
class ProductLook:
    category: str
    color: str
    pattern: str
    material: str
    size: str
    shape_variant: int
    brand: int
    accent_color: str

    def __post_init__(self):
        checks = (
            (self.category in CATEGORIES, "category"),
            (self.color in COLORS, "color"),
            (self.accent_color in COLORS, "accent_color"),
            (self.pattern in PATTERNS, "pattern"),
            (self.material in MATERIALS, "material"),
            (self.size in SIZES, "size"),
            (0 <= self.shape_variant < NUM_SHAPE_VARIANTS, "shape_variant"),
            (0 <= self.brand < NUM_BRANDS, "brand"),
        )
        for ok, field in checks:
            if not ok:
                raise ValueError(f"invalid ProductLook.{field}: {getattr(self, field)!r}")


def random_look(rng: np.random.Generator, category: str | None = None) -> ProductLook:
    """Uniformly random look (accent differs from color); `category` pins the category."""
    if category is None:
        category = CATEGORIES[rng.integers(len(CATEGORIES))]
    color_names = list(COLORS)
    color = color_names.pop(rng.integers(len(color_names)))
    return ProductLook(
        category=category,
        color=color,
        pattern=PATTERNS[rng.integers(len(PATTERNS))],
        material=MATERIALS[rng.integers(len(MATERIALS))],
        size=SIZES[rng.integers(len(SIZES))],
        shape_variant=int(rng.integers(NUM_SHAPE_VARIANTS)),
        brand=int(rng.integers(NUM_BRANDS)),
        accent_color=color_names[rng.integers(len(color_names))],
    )


# ---------------------------------------------------------------------------
# Sprite drawing: a pen that maps unit-square coordinates onto three layers.
# ---------------------------------------------------------------------------

RGB = tuple[int, int, int]


def _scaled(rgb: RGB, factor: float) -> RGB:
    return tuple(int(min(255, c * factor)) for c in rgb)


def _palette(look: ProductLook) -> dict[str, RGB]:
    """Named paints for the non-body parts of a product."""
    body = COLORS[look.color]
    return {
        "accent": COLORS[look.accent_color],
        "dark": _scaled(body, 0.55),
        "trim": (48, 48, 54),
        "light": (240, 238, 232),
        "metal": (188, 192, 200),
        "screen": (22, 28, 44),
        "flame": (255, 185, 50),
        "wood": (150, 102, 58),
    }


class _Pen:
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


def _draw_mug(p: _Pen, v: int) -> Anchor:
    w, h = ((0.52, 0.66), (0.64, 0.48), (0.44, 0.78))[v]
    x0, y0 = 0.42 - w / 2, 0.5 - h / 2
    x1, y1 = x0 + w, y0 + h
    p.ellipse((x1 - 0.1, y0 + 0.14 * h, x1 + 0.24, y0 + 0.78 * h), "body", width=0.08)
    p.rect((x0, y0, x1, y1 - 0.04), "body")
    p.ellipse((x0, y1 - 0.08, x1, y1), "body")
    p.ellipse((x0, y0 - 0.05, x1, y0 + 0.05), "body")
    p.ellipse((x0 + 0.03, y0 - 0.035, x1 - 0.03, y0 + 0.035), "dark")
    return (x0 + w / 2, y0 + 0.55 * h, 0.07)


def _draw_sneaker(p: _Pen, v: int) -> Anchor:
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


def _draw_lamp(p: _Pen, v: int) -> Anchor:
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


def _draw_backpack(p: _Pen, v: int) -> Anchor:
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


def _draw_bottle(p: _Pen, v: int) -> Anchor:
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


def _draw_chair(p: _Pen, v: int) -> Anchor:
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


def _draw_watch(p: _Pen, v: int) -> Anchor:
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


def _draw_tshirt(p: _Pen, v: int) -> Anchor:
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


def _draw_cap(p: _Pen, v: int) -> Anchor:
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


def _draw_sunglasses(p: _Pen, v: int) -> Anchor:
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


def _draw_headphones(p: _Pen, v: int) -> Anchor:
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


def _draw_phone(p: _Pen, v: int) -> Anchor:
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


def _draw_laptop(p: _Pen, v: int) -> Anchor:
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


def _draw_teapot(p: _Pen, v: int) -> Anchor:
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


def _draw_vase(p: _Pen, v: int) -> Anchor:
    profile = (
        [(0.05, 0.13), (0.12, 0.1), (0.25, 0.1), (0.42, 0.28), (0.62, 0.32), (0.82, 0.22), (0.95, 0.15)],
        [(0.05, 0.22), (0.1, 0.2), (0.95, 0.2)],
        [(0.05, 0.09), (0.32, 0.07), (0.45, 0.18), (0.58, 0.33), (0.74, 0.36), (0.88, 0.28), (0.95, 0.18)],
    )[v]
    p.poly(_mirrored(0.5, profile), "body")
    rim = profile[0][1]
    p.ellipse((0.5 - rim, 0.03, 0.5 + rim, 0.07), "dark")
    return (0.5, 0.68, 0.07)


def _draw_umbrella(p: _Pen, v: int) -> Anchor:
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


def _draw_handbag(p: _Pen, v: int) -> Anchor:
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


def _draw_book(p: _Pen, v: int) -> Anchor:
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


def _draw_guitar(p: _Pen, v: int) -> Anchor:
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


def _draw_clock(p: _Pen, v: int) -> Anchor:
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


def _draw_bowl(p: _Pen, v: int) -> Anchor:
    rim_y, depth, x0 = ((0.35, 0.5, 0.05), (0.45, 0.32, 0.03), (0.3, 0.42, 0.1))[v]
    x1 = 1 - x0
    foot_bot = rim_y + depth + (0.2 if v == 2 else 0.05)
    p.rect((0.38, rim_y + depth - 0.08, 0.62, foot_bot), "dark", radius=0.02)
    p.pie((x0, rim_y - depth, x1, rim_y + depth), 0, 180, "body")
    p.ellipse((x0, rim_y - 0.08, x1, rim_y + 0.08), "body")
    p.ellipse((x0 + 0.04, rim_y - 0.06, x1 - 0.04, rim_y + 0.06), "dark")
    return (0.5, rim_y + 0.45 * depth, 0.07)


def _draw_candle(p: _Pen, v: int) -> Anchor:
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


def _draw_knife(p: _Pen, v: int) -> Anchor:
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
    p.poly([along(0.38, -0.06), along(0.43, -0.06), along(0.43, blade_width), along(0.38, blade_width)],
           "metal")
    for t in (0.1, 0.2, 0.3):
        x, y = along(t, 0.005)
        p.ellipse((x - 0.015, y - 0.015, x + 0.015, y + 0.015), "light")
    if v == 1:
        x, y = along(0.88, 0.15)
        p.ellipse((x - 0.03, y - 0.03, x + 0.03, y + 0.03), "erase")
    return (*along(0.72, blade_width / 3), 0.04)


def _draw_wine(p: _Pen, v: int) -> Anchor:
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


def _draw_lighter(p: _Pen, v: int) -> Anchor:
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


_DRAWERS: dict[str, Callable[[_Pen, int], Anchor]] = {
    name: globals()[f"_draw_{name}"] for name in CATEGORIES
}


# ---------------------------------------------------------------------------
# Body texture: pattern, material, brand emblem.
# ---------------------------------------------------------------------------


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


def _body_texture(look: ProductLook, n: int) -> np.ndarray:
    color = np.asarray(COLORS[look.color], np.float32)
    if look.pattern == "solid":
        return np.broadcast_to(color, (n, n, 3)).copy()
    accent = np.asarray(COLORS[look.accent_color], np.float32)
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


def _brand_ink(brand: int) -> tuple[RGB, RGB]:
    """Brand glyph fill and outline colors: hue from the index, outline alternating."""
    hue = (brand * 5 % NUM_BRANDS) / NUM_BRANDS
    rgb = [0.5 + 0.5 * math.cos(2 * math.pi * (hue - k / 3)) for k in range(3)]
    fill = tuple(int(30 + 200 * c) for c in rgb)
    outline = (250, 250, 250) if brand < _GLYPH_COUNT else (20, 20, 20)
    return fill, outline


def _draw_emblem(pen: _Pen, brand: int, anchor: Anchor) -> None:
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
        draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=fill, outline=outline)
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


def _sprite_canvas(look: ProductLook, side_px: float, rng: np.random.Generator) -> Image.Image:
    """Unposed product sprite at 2x resolution, premultiplied ("RGBa")."""
    n = max(8, round(side_px * _SUPERSAMPLE / _DESIGN_EXTENT))
    pen = _Pen(n, _palette(look))
    anchor = _DRAWERS[look.category](pen, look.shape_variant)
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


class _Sprite(NamedTuple):
    rgb: np.ndarray  # float32 [h, w, 3], premultiplied, 0..255
    alpha: np.ndarray  # float32 [h, w], 0..1


def _pose(canvas: Image.Image, angle_deg: float, flip: bool) -> _Sprite:
    """Flip, rotate and downsample a 2x sprite canvas; crop to its visible pixels."""
    img = canvas.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if flip else canvas
    # Bilinear is enough here: the 2x reduction that follows does the antialiasing.
    img = img.rotate(angle_deg, resample=Image.Resampling.BILINEAR, expand=True)
    arr = np.asarray(img.reduce(_SUPERSAMPLE), np.float32)
    rows = np.flatnonzero(arr[..., 3].any(axis=1))
    cols = np.flatnonzero(arr[..., 3].any(axis=0))
    arr = arr[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    # Resampling clips channels separately; premultiplied color must not exceed alpha.
    return _Sprite(np.minimum(arr[..., :3], arr[..., 3:]), arr[..., 3] / 255)


def _overlap(size: int, sprite: _Sprite, x: int, y: int):
    """(frame slices, sprite slices) where a sprite with top-left (x, y) meets the frame."""
    h, w = sprite.alpha.shape
    fx0, fy0, fx1, fy1 = max(x, 0), max(y, 0), min(x + w, size), min(y + h, size)
    if fx0 >= fx1 or fy0 >= fy1:
        return None
    return (slice(fy0, fy1), slice(fx0, fx1)), (slice(fy0 - y, fy1 - y), slice(fx0 - x, fx1 - x))


def _paste(frame: np.ndarray, sprite: _Sprite, x: int, y: int) -> None:
    """Premultiplied "over" compositing of a sprite into a float frame, in place."""
    hit = _overlap(frame.shape[0], sprite, x, y)
    if hit is None:
        return
    fs, ss = hit
    a = sprite.alpha[ss][..., None]
    frame[fs] = frame[fs] * (1 - a) + sprite.rgb[ss]


def _alpha_map(size: int, sprite: _Sprite, x: int, y: int) -> np.ndarray:
    """The sprite's alpha placed in a size x size frame."""
    out = np.zeros((size, size), np.float32)
    hit = _overlap(size, sprite, x, y)
    if hit is not None:
        out[hit[0]] = sprite.alpha[hit[1]]
    return out


# ---------------------------------------------------------------------------
# Backgrounds.
# ---------------------------------------------------------------------------


class _Surface(NamedTuple):
    """Where objects may stand: bottom edge y in [y_lo, y_hi], center x in [x_lo, x_hi]."""
    y_lo: float
    y_hi: float
    x_lo: float
    x_hi: float


def _random_rgb(rng: np.random.Generator, lo: int = 0, hi: int = 256) -> RGB:
    return tuple(int(c) for c in rng.integers(lo, hi, 3))


def _add_noise(frame: np.ndarray, sigma: float, rng: np.random.Generator) -> None:
    size = frame.shape[0]
    frame += sigma * rng.standard_normal((size, size, 1), dtype=np.float32)


def _clean_background(size: int, rng: np.random.Generator) -> np.ndarray:
    base = rng.uniform(222, 248) + rng.uniform(-6, 6, 3)
    slope = rng.uniform(-14, 14)
    ramp = np.linspace(-0.5, 0.5, size, dtype=np.float32)[:, None, None]
    frame = np.asarray(base, np.float32) + slope * ramp + np.zeros((1, size, 1), np.float32)
    _add_noise(frame, 1.5, rng)
    return frame


def _blend(frame: np.ndarray, where: np.ndarray, rgb: RGB, opacity: float) -> None:
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


def _cluttered_background(size: int, rng: np.random.Generator) -> np.ndarray:
    frame = np.empty((size, size, 3), np.float32)
    frame[:] = _random_rgb(rng)
    order = rng.permutation(len(_TEXTURE_LAYERS))[: rng.integers(2, len(_TEXTURE_LAYERS) + 1)]
    for k in order:
        _TEXTURE_LAYERS[k](frame, rng)
    _add_noise(frame, 5.0, rng)
    return frame


def _muted_rgb(rng: np.random.Generator, toward: int) -> RGB:
    """A random color pulled halfway to gray level `toward` (walls, floors)."""
    return tuple(int(0.45 * c + 0.55 * toward) for c in rng.integers(0, 256, 3))


def _draw_floor(draw: ImageDraw.ImageDraw, size: int, horizon: int, rng: np.random.Generator) -> None:
    floor = _muted_rgb(rng, 110) if rng.random() < 0.5 else _random_rgb(rng, 90, 170)
    draw.rectangle((0, horizon, size, size), fill=floor)
    seam = _scaled(floor, 0.75)
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


def _draw_prop(draw, kind: str, size: int, horizon: int, rng: np.random.Generator) -> _Surface | None:
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
            draw.rectangle((leg_x, top, leg_x + size * 0.025, top + size * 0.28), fill=_scaled(color, 0.7))
        draw.rectangle((x, top, x + w, top + size * 0.035), fill=color)
        return _Surface(top, top, x + w * 0.1, x + w * 0.9)
    if kind == "shelf":
        top = horizon - size * rng.uniform(0.15, 0.35)
        bottom = horizon + size * 0.12
        draw.rectangle((x, top, x + w * 0.7, bottom), fill=color)
        for k in (1, 2):
            y = top + (bottom - top) * k / 3
            draw.line((x, y, x + w * 0.7, y), fill=_scaled(color, 0.6), width=2)
        return _Surface(top, top, x + w * 0.1, x + w * 0.6)
    seat = horizon + size * rng.uniform(0.02, 0.1)  # sofa
    draw.rounded_rectangle((x, seat - size * 0.16, x + w * 1.3, seat + size * 0.14),
                           radius=size * 0.03, fill=color)
    draw.line((x + size * 0.02, seat, x + w * 1.3 - size * 0.02, seat), fill=_scaled(color, 0.7), width=2)
    return _Surface(seat, seat, x + w * 0.15, x + w * 1.15)


_PROPS = ("window", "picture", "table", "shelf", "sofa")


def _lifestyle_background(size: int, rng: np.random.Generator) -> tuple[np.ndarray, list[_Surface]]:
    horizon = int(size * rng.uniform(0.38, 0.62))
    img = Image.new("RGB", (size, size), _muted_rgb(rng, 205))
    draw = ImageDraw.Draw(img)
    _draw_floor(draw, size, horizon, rng)
    draw.rectangle((0, horizon - max(1, size // 40), size, horizon), fill=(236, 234, 228))
    surfaces = [_Surface(horizon + 0.08 * size, size - 1, 0, size)]
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


# ---------------------------------------------------------------------------
# Scenes.
# ---------------------------------------------------------------------------


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
# Share of the (longest side)^2 square that a compact product covers; sparser
# designs are enlarged towards it so that a small knife is still findable.
_TARGET_COVERAGE = 0.45
_MAX_COVERAGE_BOOST = 1.6


@functools.lru_cache(maxsize=None)
def _coverage_boost(category: str, variant: int) -> float:
    """Side multiplier for a design covering less of its square than a compact one."""
    n = 128
    pen = _Pen(n, _palette(ProductLook(category, "red", "solid", "plastic", "medium", variant, 0, "blue")))
    _DRAWERS[category](pen, variant)
    alpha = np.maximum(np.asarray(pen.body_img), np.asarray(pen.back_img)[..., 3])
    alpha = np.maximum(alpha, np.asarray(pen.front_img)[..., 3])
    coverage = (alpha > 127).sum() / (n * _DESIGN_EXTENT) ** 2
    return float(np.clip(np.sqrt(_TARGET_COVERAGE / coverage), 1.0, _MAX_COVERAGE_BOOST))


def _product_side(look: ProductLook, spec: _ClutterSpec, size: int, rng: np.random.Generator) -> float:
    """Longest product side in pixels.

    The base range is narrowed so that base x size-scale stays within the
    clutter level's range; sparse designs then get their coverage boost, up to
    the top of that range."""
    lo, hi = spec.product_side
    base = rng.uniform(lo / _SIZE_SCALE["small"], hi / _SIZE_SCALE["large"])
    side = base * _SIZE_SCALE[look.size]
    return min(side * _coverage_boost(look.category, look.shape_variant), hi) * size


def _place(sprite: _Sprite, size: int, surfaces: list[_Surface] | None,
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


def _random_pose(canvas: Image.Image, rng: np.random.Generator) -> _Sprite:
    return _pose(canvas, rng.uniform(-_MAX_TILT_DEG, _MAX_TILT_DEG), bool(rng.random() < 0.5))


def _distractor(category: str, side_range: tuple[float, float], size: int,
                rng: np.random.Generator) -> _Sprite:
    """A random look of any category but `category`, posed randomly."""
    others = [c for c in CATEGORIES if c != category]
    look = random_look(rng, others[rng.integers(len(others))])
    canvas = _sprite_canvas(look, rng.uniform(*side_range) * size, rng)
    return _random_pose(canvas, rng)


def _backdrop(look: ProductLook, size: int, clutter: str, rng: np.random.Generator
              ) -> tuple[np.ndarray, list[_Surface] | None]:
    """Background plus the distractors that stand behind the product."""
    if clutter not in _CLUTTER:
        raise ValueError(f"clutter must be one of {CLUTTER_LEVELS}, got {clutter!r}")
    spec = _CLUTTER[clutter]
    surfaces = None
    if clutter == "clean":
        frame = _clean_background(size, rng)
    elif clutter == "cluttered":
        frame = _cluttered_background(size, rng)
    else:
        frame, surfaces = _lifestyle_background(size, rng)
    count = rng.integers(spec.distractors[0], spec.distractors[1] + 1)
    placed = []
    for _ in range(count):
        sprite = _distractor(look.category, spec.distractor_side, size, rng)
        x, y = _place(sprite, size, surfaces, rng)
        placed.append((y + sprite.alpha.shape[0], x, y, sprite))
    # Paint from the back: objects standing lower in the frame are nearer.
    for _, x, y, sprite in sorted(placed, key=lambda item: item[0]):
        _paste(frame, sprite, x, y)
    return frame, surfaces


def _box(product_alpha: np.ndarray) -> np.ndarray:
    """Tight [x0, y0, x1, y1] in [0, 1] of alpha > 0.5 (x1, y1 are exclusive edges)."""
    size = product_alpha.shape[0]
    solid = product_alpha > 0.5
    rows = np.flatnonzero(solid.any(axis=1))
    cols = np.flatnonzero(solid.any(axis=0))
    return np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], np.float32) / size


def _occluder(frame: np.ndarray, product: np.ndarray, look: ProductLook,
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
        alpha = _alpha_map(size, sprite, x, y)
        if (visible & (alpha > 0.5)).sum() <= _MAX_OCCLUDED * visible.sum():
            _paste(frame, sprite, x, y)
            return alpha
    return None


def render_image(look: ProductLook, *, image_size: int, clutter: str, rng: np.random.Generator
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One photo of `look`: (rgb uint8 [S,S,3], box float32 [4] xyxy in [0,1], mask bool [S,S])."""
    size = image_size
    frame, surfaces = _backdrop(look, size, clutter, rng)
    canvas = _sprite_canvas(look, _product_side(look, _CLUTTER[clutter], size, rng), rng)
    sprite = _random_pose(canvas, rng)
    x, y = _place(sprite, size, surfaces, rng)
    _paste(frame, sprite, x, y)
    product = _alpha_map(size, sprite, x, y)
    mask = product > 0.5
    if clutter == "cluttered" and rng.random() < _OCCLUSION_PROB:
        occluder = _occluder(frame, product, look, rng)
        if occluder is not None:
            mask &= occluder <= 0.5
    rgb = np.clip(frame + 0.5, 0, 255).astype(np.uint8)
    return rgb, _box(product), mask


def render_video(look: ProductLook, *, image_size: int, num_frames: int, clutter: str,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A fixed scene with the product gliding along a smooth path while slowly spinning.

    Returns (frames uint8 [F,S,S,3], boxes float32 [F,4]). No occluder is used,
    so the product stays fully visible (up to the frame border)."""
    size = image_size
    backdrop, surfaces = _backdrop(look, size, clutter, rng)
    canvas = _sprite_canvas(look, _product_side(look, _CLUTTER[clutter], size, rng), rng)
    flip = bool(rng.random() < 0.5)
    angle0 = rng.uniform(-_MAX_TILT_DEG, _MAX_TILT_DEG)
    spin = rng.uniform(1.5, 4.0) * rng.choice([-1.0, 1.0])  # degrees per frame
    first = _pose(canvas, angle0, flip)
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
        sprite = first if f == 0 else _pose(canvas, angle0 + spin * f, flip)
        h, w = sprite.alpha.shape
        px, py = round(center[0] - w / 2), round(center[1] - h / 2)
        frame = backdrop.copy()
        _paste(frame, sprite, px, py)
        frames[f] = np.clip(frame + 0.5, 0, 255).astype(np.uint8)
        boxes[f] = _box(_alpha_map(size, sprite, px, py))
    return frames, boxes


# ---------------------------------------------------------------------------
# Audio.
# ---------------------------------------------------------------------------

_PITCH_HZ = {"small": 880.0, "medium": 440.0, "large": 220.0}


class _Timbre(NamedTuple):
    partials: tuple[tuple[float, float], ...]  # (frequency ratio to f0, amplitude)
    decay_s: float  # decay time constant of the fundamental
    noise: float  # share of band-limited noise around f0


# The fundamental is always the loudest partial, so pitch is the spectral peak.
_TIMBRES = {
    "metal": _Timbre(tuple((k, 0.8 / k ** 0.3) for k in range(2, 11)), 0.8, 0.0),
    "wood": _Timbre(((2.0, 0.3), (3.0, 0.1)), 0.05, 0.05),
    "glass": _Timbre(((2.76, 0.5), (5.4, 0.35)), 0.5, 0.0),
    "fabric": _Timbre(((2.0, 0.1),), 0.08, 0.6),
    "ceramic": _Timbre(((2.32, 0.45), (4.25, 0.25)), 0.25, 0.0),
    "plastic": _Timbre(((2.0, 0.35), (3.0, 0.2), (4.0, 0.08)), 0.1, 0.1),
    "leather": _Timbre(((2.0, 0.2),), 0.04, 0.3),
}
_RHYTHM_SLOTS = 8


def _onsets(category: str, duration_s: float) -> list[tuple[float, float]]:
    """(time, amplitude) strikes for a category: slots of an 8-step grid picked by crc32."""
    bits = zlib.crc32(category.encode())
    slots = [0] + [k for k in range(1, _RHYTHM_SLOTS) if bits >> k & 1]
    if len(slots) < 2:
        slots.append(_RHYTHM_SLOTS // 2)
    step = 0.8 * duration_s / _RHYTHM_SLOTS
    return [(0.02 * duration_s + k * step, 0.6 + 0.4 * (bits >> (8 + k) & 1)) for k in slots]


def _strike(timbre: _Timbre, f0: float, t: np.ndarray, sample_rate: int,
            rng: np.random.Generator) -> np.ndarray:
    """One struck note: decaying partials (higher ones die faster) plus band noise."""
    attack = np.minimum(t / 0.003, 1.0)
    wave = np.sin(2 * np.pi * f0 * t) * np.exp(-t / timbre.decay_s)
    for ratio, amp in timbre.partials:
        if f0 * ratio < sample_rate / 2:
            wave += amp * np.sin(2 * np.pi * f0 * ratio * t) * np.exp(-t * math.sqrt(ratio) / timbre.decay_s)
    if timbre.noise:
        spectrum = np.fft.rfft(rng.standard_normal(t.size))
        freqs = np.fft.rfftfreq(t.size, 1 / sample_rate)
        spectrum *= np.exp(-(((freqs - f0) / (0.5 * f0)) ** 2))
        band = np.fft.irfft(spectrum, t.size)
        band /= np.abs(band).max() + 1e-9
        wave = (1 - timbre.noise) * wave + timbre.noise * band * np.exp(-t / (2 * timbre.decay_s))
    return wave * attack


def render_audio(look: ProductLook, *, sample_rate: int, duration_s: float,
                 rng: np.random.Generator) -> np.ndarray:
    """Struck-object sound: size -> pitch, material -> timbre, category -> rhythm.

    Returns mono int16 [round(sample_rate * duration_s)], peak ~0.8 full scale."""
    length = round(sample_rate * duration_s)
    f0 = _PITCH_HZ[look.size] * (1 + rng.uniform(-0.03, 0.03))
    t = np.arange(length) / sample_rate
    note = _strike(_TIMBRES[look.material], f0, t, sample_rate, rng)
    wave = np.zeros(length)
    for onset, amp in _onsets(look.category, duration_s):
        # Snapping onsets to whole periods of f0 keeps overlapping rings in phase,
        # so repeated strikes reinforce the fundamental instead of cancelling it.
        start = round(round(onset * f0) / f0 * sample_rate)
        if start < length:
            wave[start:] += amp * note[: length - start]
    wave /= np.abs(wave).max() + 1e-9
    wave += 0.005 * rng.standard_normal(length)
    wave *= 0.8 * 32767 / (np.abs(wave).max() + 1e-9)
    return np.round(wave).astype(np.int16)


# ---------------------------------------------------------------------------
# Dev check: contact sheet.
# ---------------------------------------------------------------------------


def _contact_sheet(path: str, image_size: int, seed: int, first_category: int, boxes: bool) -> None:
    """4 x 6 grid: rows cycle clean / cluttered / lifestyle; categories run across."""
    rng = np.random.default_rng(seed)
    rows, cols = 4, 6
    sheet = Image.new("RGB", (cols * (image_size + 4), rows * (image_size + 4)), (255, 255, 255))
    for i in range(rows * cols):
        category = CATEGORIES[(first_category + i) % len(CATEGORIES)]
        clutter = CLUTTER_LEVELS[(i // cols) % len(CLUTTER_LEVELS)]
        rgb, box, _ = render_image(random_look(rng, category), image_size=image_size,
                                   clutter=clutter, rng=rng)
        tile = Image.fromarray(rgb)
        if boxes:
            ImageDraw.Draw(tile).rectangle(list(box * image_size - [0, 0, 1, 1]), outline=(255, 0, 0))
        sheet.paste(tile, ((i % cols) * (image_size + 4), (i // cols) * (image_size + 4)))
    sheet.save(path)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Render a toyshop contact sheet.")
    parser.add_argument("out", help="output PNG path")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--first-category", type=int, default=0)
    parser.add_argument("--boxes", action="store_true", help="outline the product boxes")
    args = parser.parse_args()
    _contact_sheet(args.out, args.size, args.seed, args.first_category, args.boxes)
