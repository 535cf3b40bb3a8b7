"""toyshop: the built-in synthetic product world.

No public e-commerce corpus can be downloaded on a fresh machine, so eclip_jax generates
one, with the ground truth real corpora lack (boxes, catalog ids, exact attributes).
Everything is a pure function of a `ToyshopSpec` and a listing index, so a seed fixes every
byte of every split (builders.py turns it into a TFDS dataset). Where things live:

  catalog.py      the spec and its config names, catalog products, listings (duplicates by
                  several sellers), splits, noisy titles, descriptions, attribute tables;
                  `make_listing` assembles one record
  looks.py        a product's look: category, colors, pattern, material, size, variant, brand
  drawers.py      the 25 categories' drawings, from primitives in the unit square
  sprites.py      texture, material, emblem, pose and compositing of a drawn product
  backgrounds.py  studio, texture and room backgrounds
  scenes.py       the clutter levels: product scale and position, distractors, occlusion,
                  photos and videos with exact boxes
  audio.py        the product's sound (size -> pitch, material -> timbre, category -> rhythm)
  __main__.py     dev checks: a contact sheet, each level's position priors (`--references`)
"""

from eclip_jax.data.toyshop.audio import render_audio
from eclip_jax.data.toyshop.catalog import (
    ATTRIBUTE_KEYS,
    CATEGORY_INFO,
    CATEGORY_NAMES,
    FLUFF,
    NOISE_TABLE_KEYS,
    RESTRICTED_CATEGORIES,
    SIZE_NUM_LISTINGS,
    SPLIT_FRACTIONS,
    ToyshopSpec,
    build_catalog,
    make_listing,
    spec_from_name,
)
from eclip_jax.data.toyshop.looks import (
    CATEGORIES,
    COLORS,
    MATERIALS,
    NUM_BRANDS,
    NUM_SHAPE_VARIANTS,
    PATTERNS,
    SIZES,
    ProductLook,
    random_look,
)
from eclip_jax.data.toyshop.scenes import CLUTTER_LEVELS, render_image, render_video
