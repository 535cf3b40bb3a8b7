"""The catalog, its listings, and their text: titles, descriptions, attribute tables.

The world has the structure the three methods need and real corpora only partly have:

* a **catalog product** is a category plus attributes (color, accent color, pattern,
  material, size, shape variant, brand), a `looks.ProductLook` the renderer draws;
* **listings** (what a record is) are sellers' offers of a catalog product. Popular products
  are listed by several sellers: their records share `catalog_id` but have their own
  `product_id`, seller, noisy title, attribute table and photos — the duplicate-listing
  false negatives e-CLIP is about;
* **splits** are drawn per catalog product, so the same product never appears in two splits.

Everything is a pure function of `ToyshopSpec` and a listing index: the catalog comes from
`rng(seed, 0)` and listing i from `rng(seed, 1, i)`, so records are byte-identical for a
seed however many processes generate them and in whatever order.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from eclip_jax.data import schema
from eclip_jax.data.toyshop import audio
from eclip_jax.data.toyshop import looks
from eclip_jax.data.toyshop import scenes

# Approximate listing counts per size; "tiny" is for tests and runs in seconds.
SIZE_NUM_LISTINGS = {"tiny": 240, "small": 3_000, "medium": 24_000, "large": 120_000}
SPLIT_FRACTIONS = (("train", 0.8), ("validation", 0.1), ("test", 0.1))
RESTRICTED_CATEGORIES = frozenset({"knife", "wine", "lighter"})

# Category id -> (display name used as the class name, title synonyms, plausible materials).
CATEGORY_INFO: dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]] = {
    "mug": ("mug", ("mug", "coffee mug", "cup"), ("ceramic", "glass", "metal", "plastic")),
    "sneaker": ("sneaker", ("sneaker", "sneakers", "running shoe", "trainers"),
                ("fabric", "leather", "plastic")),
    "lamp": ("lamp", ("lamp", "desk lamp", "table light"), ("metal", "wood", "ceramic", "glass")),
    "backpack": ("backpack", ("backpack", "rucksack", "school bag"), ("fabric", "leather")),
    "bottle": ("bottle", ("bottle", "water bottle", "flask"), ("plastic", "metal", "glass")),
    "chair": ("chair", ("chair", "dining chair", "seat"), ("wood", "metal", "plastic", "fabric")),
    "watch": ("watch", ("watch", "wristwatch", "wrist watch"), ("metal", "leather", "plastic")),
    "tshirt": ("t-shirt", ("t-shirt", "tee", "tshirt", "top"), ("fabric",)),
    "cap": ("cap", ("cap", "baseball cap", "hat"), ("fabric", "leather")),
    "sunglasses": ("sunglasses", ("sunglasses", "shades", "sun glasses"),
                   ("plastic", "metal")),
    "headphones": ("headphones", ("headphones", "headset", "over-ear headphones"),
                   ("plastic", "metal", "leather")),
    "phone": ("smartphone", ("smartphone", "phone", "mobile phone"), ("metal", "glass", "plastic")),
    "laptop": ("laptop", ("laptop", "notebook computer", "ultrabook"), ("metal", "plastic")),
    "teapot": ("teapot", ("teapot", "tea pot", "kettle for tea"), ("ceramic", "metal", "glass")),
    "vase": ("vase", ("vase", "flower vase"), ("ceramic", "glass")),
    "umbrella": ("umbrella", ("umbrella", "parasol", "rain umbrella"), ("fabric", "plastic")),
    "handbag": ("handbag", ("handbag", "purse", "tote bag"), ("leather", "fabric")),
    "book": ("book", ("book", "journal", "hardcover book"), ("leather", "fabric")),
    "guitar": ("guitar", ("guitar", "acoustic guitar"), ("wood",)),
    "clock": ("clock", ("clock", "wall clock"), ("wood", "metal", "plastic", "glass")),
    "bowl": ("bowl", ("bowl", "salad bowl", "serving bowl"), ("ceramic", "wood", "glass")),
    "candle": ("candle", ("candle", "scented candle", "pillar candle"), ("ceramic", "glass")),
    "knife": ("knife", ("knife", "kitchen knife", "chef knife"), ("metal", "wood")),
    "wine": ("wine", ("wine", "red wine", "glass of wine", "wine glass"), ("glass",)),
    "lighter": ("lighter", ("lighter", "pocket lighter"), ("metal", "plastic")),
}
assert tuple(CATEGORY_INFO) == looks.CATEGORIES, "category tables out of sync"
CATEGORY_NAMES = tuple(info[0] for info in CATEGORY_INFO.values())

BRANDS = ("Zentro", "Okavo", "Pellin", "Quarra", "Ruvik", "Solune", "Tamsa", "Umbri",
          "Veltra", "Wexor", "Yarrow", "Zibo", "Calto", "Dorin", "Elvan", "Fjara")
assert len(BRANDS) == looks.NUM_BRANDS

COLOR_WORDS = {
    "red": ("red", "crimson", "scarlet"), "orange": ("orange", "tangerine"),
    "yellow": ("yellow", "lemon", "mustard"), "green": ("green", "forest green"),
    "teal": ("teal", "turquoise"), "blue": ("blue", "royal blue", "sky blue"),
    "navy": ("navy", "dark blue", "navy blue"), "purple": ("purple", "violet", "lilac"),
    "pink": ("pink", "rose"), "brown": ("brown", "chocolate", "coffee brown"),
    "black": ("black", "jet black"), "white": ("white", "ivory", "snow white"),
    "gray": ("gray", "grey", "charcoal"),
}
PATTERN_WORDS = {
    "solid": ("plain", "solid", ""), "striped": ("striped", "stripe"),
    "dotted": ("polka dot", "dotted"), "checkered": ("checkered", "plaid", "check"),
    "gradient": ("gradient", "ombre"),
}
MATERIAL_WORDS = {
    "plastic": ("plastic",), "metal": ("metal", "steel", "stainless steel"),
    "wood": ("wooden", "wood"), "leather": ("leather", "genuine leather", "pu leather"),
    "fabric": ("fabric", "cotton", "canvas"), "ceramic": ("ceramic", "porcelain"),
    "glass": ("glass", "crystal"),
}
SIZE_WORDS = {"small": ("small", "mini", "compact"), "medium": ("medium", "regular", ""),
              "large": ("large", "big", "xl")}
STYLE_WORDS = ("classic", "slim", "chunky")
FLUFF = ("hot sale", "free shipping", "2026 new", "best seller", "limited offer",
         "gift idea", "official store", "100% authentic", "fast delivery", "★★★",
         "【hot】", "new arrival!!", "top quality")
NOISE_TABLE_KEYS = (
    ("ships_from", ("Busan", "Lyon", "Austin", "Osaka", "Porto", "Leeds")),
    ("warranty", ("none", "6 months", "1 year", "2 years")),
    ("model_year", ("2023", "2024", "2025", "2026")),
    ("package", ("box", "bag", "gift box")),
)
ATTRIBUTE_KEYS = ("brand", "color", "pattern", "material", "size", "style")


@dataclasses.dataclass(frozen=True)
class ToyshopSpec:
  """Everything that determines a toyshop dataset's bytes."""

  num_listings: int
  image_size: int = 64
  clutter: str = "cluttered"
  seed: int = 0
  min_images: int = 2
  max_images: int = 4
  video_size: int = 32
  num_video_frames: int = 8
  audio_sample_rate: int = 16_000
  audio_seconds: float = 0.5
  jpeg_quality: int = 90
  png_fraction: float = 0.1  # a share of images stored as PNG, so both decoders are exercised

  def __post_init__(self):
    if self.clutter not in scenes.CLUTTER_LEVELS:
      raise ValueError(f"clutter must be one of {scenes.CLUTTER_LEVELS}, got {self.clutter!r}")
    if not 1 <= self.min_images <= self.max_images:
      raise ValueError("need 1 <= min_images <= max_images")


_NAME_RE = re.compile(
    rf"^(?P<size>[a-z]+)(?:_(?P<clutter>{'|'.join(scenes.CLUTTER_LEVELS)}))?"
    r"(?:_(?P<px>\d+)px)?(?:_seed(?P<seed>\d+))?$"
)


def spec_from_name(name: str) -> ToyshopSpec:
  """Parses `{size}[_{clutter}][_{N}px][_seed{K}]`, e.g. `small_lifestyle_224px_seed3`.

  Omitted parts default to cluttered, 64px, seed 0; `tiny` is `tiny_cluttered_64px_seed0`.
  """
  match = _NAME_RE.match(name)
  if not match or match["size"] not in SIZE_NUM_LISTINGS:
    raise ValueError(
        f"unknown toyshop config {name!r}: expected {{size}}[_{{clutter}}][_{{N}}px]"
        f"[_seed{{K}}] with size in {sorted(SIZE_NUM_LISTINGS)} and clutter in "
        f"{scenes.CLUTTER_LEVELS}, e.g. 'small_lifestyle_224px_seed3'"
    )
  return ToyshopSpec(
      num_listings=SIZE_NUM_LISTINGS[match["size"]],
      clutter=match["clutter"] or "cluttered",
      image_size=int(match["px"] or 64),
      seed=int(match["seed"] or 0),
  )


# ---------------------------------------------------------------------------------------
# The catalog.
# ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Catalog:
  """Catalog products and the listings that offer them (index = product_index)."""

  looks: tuple[looks.ProductLook, ...]  # per catalog product
  product_split: tuple[str, ...]  # per catalog product
  listing_catalog: np.ndarray  # [num_listings] catalog index of each listing
  listing_seller: np.ndarray  # [num_listings]

  def listings_of_split(self, split: str) -> np.ndarray:
    splits = np.asarray(self.product_split)[self.listing_catalog]
    return np.flatnonzero(splits == split)


def _random_catalog_look(rng: np.random.Generator) -> looks.ProductLook:
  category = looks.CATEGORIES[rng.integers(len(looks.CATEGORIES))]
  color_names = list(looks.COLORS)
  color, accent = rng.choice(len(color_names), size=2, replace=False)
  materials = CATEGORY_INFO[category][2]
  return looks.ProductLook(
      category=category,
      color=color_names[color],
      pattern=looks.PATTERNS[rng.integers(len(looks.PATTERNS))],
      material=materials[rng.integers(len(materials))],
      size=looks.SIZES[rng.integers(len(looks.SIZES))],
      shape_variant=int(rng.integers(looks.NUM_SHAPE_VARIANTS)),
      brand=int(rng.integers(looks.NUM_BRANDS)),
      accent_color=color_names[accent],
  )


@functools.lru_cache(maxsize=4)
def build_catalog(spec: ToyshopSpec) -> Catalog:
  """Draws catalog products until their listings reach `spec.num_listings`."""
  rng = np.random.default_rng([spec.seed, 0])
  catalog_looks, listing_catalog = [], []
  while len(listing_catalog) < spec.num_listings:
    # Most products have one seller; popular ones two or three (duplicate listings).
    num_sellers = int(rng.choice([1, 2, 3], p=[0.6, 0.25, 0.15]))
    listing_catalog.extend([len(catalog_looks)] * num_sellers)
    catalog_looks.append(_random_catalog_look(rng))
  listing_catalog = np.asarray(listing_catalog[: spec.num_listings], np.int64)

  order = rng.permutation(len(catalog_looks))
  product_split = [""] * len(catalog_looks)
  start = 0
  for i, (split, fraction) in enumerate(SPLIT_FRACTIONS):
    last = i == len(SPLIT_FRACTIONS) - 1
    stop = len(catalog_looks) if last else start + round(fraction * len(catalog_looks))
    for product in order[start:stop]:
      product_split[product] = split
    start = stop
  num_sellers_total = 50 + spec.num_listings // 20
  return Catalog(
      looks=tuple(catalog_looks),
      product_split=tuple(product_split),
      listing_catalog=listing_catalog,
      listing_seller=rng.integers(num_sellers_total, size=spec.num_listings),
  )


# ---------------------------------------------------------------------------------------
# Text: titles, descriptions, attribute tables.
# ---------------------------------------------------------------------------------------


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
  return options[rng.integers(len(options))]


def _typo(rng: np.random.Generator, word: str) -> str:
  if len(word) < 4:
    return word
  i = int(rng.integers(1, len(word) - 1))
  kind = rng.integers(3)
  if kind == 0:  # swap two neighbours
    return word[:i] + word[i + 1] + word[i] + word[i + 2:]
  if kind == 1:  # drop a letter
    return word[:i] + word[i + 1:]
  return word[:i] + word[i] + word[i:]  # double a letter


def attribute_values(look: looks.ProductLook) -> dict[str, str]:
  """The true attribute table of a catalog product (canonical values)."""
  return {
      "brand": BRANDS[look.brand],
      "color": look.color,
      "pattern": look.pattern,
      "material": look.material,
      "size": look.size,
      "style": STYLE_WORDS[look.shape_variant],
  }


def make_title(rng: np.random.Generator, look: looks.ProductLook) -> str:
  """A seller's noisy title: synonyms, dropped attributes, shuffles, typos, fluff."""
  words = [
      ("brand", BRANDS[look.brand]),
      ("size", _pick(rng, SIZE_WORDS[look.size])),
      ("color", _pick(rng, COLOR_WORDS[look.color])),
      ("pattern", _pick(rng, PATTERN_WORDS[look.pattern])),
      ("material", _pick(rng, MATERIAL_WORDS[look.material])),
      ("style", STYLE_WORDS[look.shape_variant]),
  ]
  # Sellers omit attributes; category and (mostly) color survive.
  words = [(k, w) for k, w in words if w and (k == "color" or rng.random() > 0.2)]
  if rng.random() < 0.3:
    words = [words[i] for i in rng.permutation(len(words))]
  parts = [w for _, w in words] + [_pick(rng, CATEGORY_INFO[look.category][1])]
  parts = [_typo(rng, p) if rng.random() < 0.07 else p for p in parts]
  for _ in range(int(rng.integers(0, 3))):
    fluff = _pick(rng, FLUFF)
    parts = [fluff] + parts if rng.random() < 0.5 else parts + [fluff]
  title = " ".join(parts)
  return title.upper() if rng.random() < 0.05 else title


def make_description(rng: np.random.Generator, look: looks.ProductLook) -> str:
  name = CATEGORY_INFO[look.category][0]
  pattern = PATTERN_WORDS[look.pattern][0] or "plain"
  sentences = [
      f"This {_pick(rng, COLOR_WORDS[look.color])} {name} by {BRANDS[look.brand]} is made of "
      f"{_pick(rng, MATERIAL_WORDS[look.material])} with a {pattern} finish.",
      f"Its {STYLE_WORDS[look.shape_variant]} design comes in a "
      f"{SIZE_WORDS[look.size][0]} size with {look.accent_color} details.",
      _pick(rng, ("Perfect as a gift.", "Ships in 24 hours.", "Easy to clean.",
                  "Loved by thousands of customers.", "Limited stock available.")),
  ]
  return " ".join(sentences[i] for i in rng.permutation(len(sentences)))


def make_attribute_table(rng: np.random.Generator, look: looks.ProductLook) -> list[dict]:
  """Ordered key/value pairs: some true attributes missing, some noise keys added."""
  table = [(k, v) for k, v in attribute_values(look).items() if rng.random() > 0.15]
  for key, values in NOISE_TABLE_KEYS:
    if rng.random() < 0.3:
      table.insert(int(rng.integers(len(table) + 1)), (key, _pick(rng, values)))
  return [{"key": k, "value": v} for k, v in table]


# ---------------------------------------------------------------------------------------
# Listings.
# ---------------------------------------------------------------------------------------


def _encode_image(pixels: np.ndarray, png: bool, quality: int) -> bytes:
  buffer = io.BytesIO()
  if png:
    Image.fromarray(pixels).save(buffer, format="PNG", optimize=False)
  else:
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
  return buffer.getvalue()


def make_listing(spec: ToyshopSpec, product_index: int) -> dict[str, Any]:
  """The full record of listing `product_index` (schema.product_features)."""
  catalog = build_catalog(spec)
  catalog_index = int(catalog.listing_catalog[product_index])
  look = catalog.looks[catalog_index]
  rng = np.random.default_rng([spec.seed, 1, product_index])

  images, boxes = [], []
  for _ in range(int(rng.integers(spec.min_images, spec.max_images + 1))):
    pixels, box, _ = scenes.render_image(
        look, image_size=spec.image_size, clutter=spec.clutter, rng=rng
    )
    images.append(_encode_image(pixels, rng.random() < spec.png_fraction, spec.jpeg_quality))
    boxes.append(box)
  frames, _ = scenes.render_video(
      look, image_size=spec.video_size, num_frames=spec.num_video_frames,
      clutter=spec.clutter, rng=rng,
  )
  waveform = audio.render_audio(
      look, sample_rate=spec.audio_sample_rate, duration_s=spec.audio_seconds, rng=rng
  )
  record = schema.empty_optional_fields()
  record.update({
      "product_id": f"P{product_index:07d}",
      "catalog_id": f"C{catalog_index:07d}",
      "product_index": product_index,
      "catalog_index": catalog_index,
      "seller_id": f"S{int(catalog.listing_seller[product_index]):05d}",
      "title": make_title(rng, look),
      "description": make_description(rng, look),
      "category": looks.CATEGORIES.index(look.category),
      "category_name": CATEGORY_INFO[look.category][0],
      "attributes": make_attribute_table(rng, look),
      "images": images,
      "boxes": np.stack(boxes).astype(np.float32),
      "video_frames": [_encode_image(f, False, spec.jpeg_quality) for f in frames],
      "audio": {"waveform": waveform, "sample_rate": spec.audio_sample_rate},
      "restricted": look.category in RESTRICTED_CATEGORIES,
  })
  return record
