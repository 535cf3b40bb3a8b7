"""The vocabulary of a catalog product's look: categories, colors, patterns, materials, sizes.

A `ProductLook` is everything the renderer draws a product from; the catalog (catalog.py)
draws one per catalog product, the scenes (scenes.py) draw random ones as distractors.
"""

from __future__ import annotations

import dataclasses

import numpy as np

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
