"""Dev check: a contact sheet of rendered photos, a row per clutter level.

  python -m eclip_jax.data.toyshop sheet.png [--size 224] [--seed 0] [--boxes]
"""

from __future__ import annotations

import argparse

import numpy as np
from PIL import Image, ImageDraw

from eclip_jax.data.toyshop import looks
from eclip_jax.data.toyshop import scenes


def _contact_sheet(path: str, image_size: int, seed: int, first_category: int, boxes: bool) -> None:
  """4 x 6 grid: rows cycle through the clutter levels; categories run across."""
  rng = np.random.default_rng(seed)
  rows, cols = 4, 6
  sheet = Image.new("RGB", (cols * (image_size + 4), rows * (image_size + 4)), (255, 255, 255))
  for i in range(rows * cols):
    category = looks.CATEGORIES[(first_category + i) % len(looks.CATEGORIES)]
    clutter = scenes.CLUTTER_LEVELS[(i // cols) % len(scenes.CLUTTER_LEVELS)]
    rgb, box, _ = scenes.render_image(looks.random_look(rng, category), image_size=image_size,
                                      clutter=clutter, rng=rng)
    tile = Image.fromarray(rgb)
    if boxes:
      ImageDraw.Draw(tile).rectangle(list(box * image_size - [0, 0, 1, 1]), outline=(255, 0, 0))
    sheet.paste(tile, ((i % cols) * (image_size + 4), (i // cols) * (image_size + 4)))
  sheet.save(path)


if __name__ == "__main__":
  parser = argparse.ArgumentParser(description="Render a toyshop contact sheet.")
  parser.add_argument("out", help="output PNG path")
  parser.add_argument("--size", type=int, default=224)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--first-category", type=int, default=0)
  parser.add_argument("--boxes", action="store_true", help="outline the product boxes")
  args = parser.parse_args()
  _contact_sheet(args.out, args.size, args.seed, args.first_category, args.boxes)
