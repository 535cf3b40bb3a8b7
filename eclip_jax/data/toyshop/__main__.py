"""Dev checks: a contact sheet of rendered photos, and each clutter level's position priors.

  python -m eclip_jax.data.toyshop --sheet=sheet.png [--size=224] [--seed=0] [--boxes]
  python -m eclip_jax.data.toyshop --references [--size=64] [--photos=600] [--grid=8]

`--references` renders `--photos` photos per level and prints what pointing scores without
looking (evals/grounding.py): a uniformly random cell of a `--grid` x `--grid` patch grid
(box-area chance) and always the image center (center prior), with the mean box area.
"""

from __future__ import annotations

import argparse

import numpy as np
from PIL import Image, ImageDraw

from eclip_jax.data.toyshop import looks
from eclip_jax.data.toyshop import scenes
from eclip_jax.evals import grounding


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


def _references(image_size: int, seed: int, photos: int, grid: int) -> str:
  lines = ["| level | box area | box-area chance | center prior | center / chance |",
           "|---|---|---|---|---|"]
  for clutter in scenes.CLUTTER_LEVELS:
    rng = np.random.default_rng(seed)
    boxes = np.stack([
        scenes.render_image(looks.random_look(rng), image_size=image_size, clutter=clutter,
                            rng=rng)[1]
        for _ in range(photos)
    ])
    area = np.mean((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    refs = grounding.pointing_references(boxes, (grid, grid))
    chance, center = refs["chance_pointing"], refs["center_pointing"]
    lines.append(f"| {clutter} | {area:.3f} | {chance:.3f} | {center:.3f} "
                 f"| {center / chance:.2f}x |")
  return "\n".join(lines)


if __name__ == "__main__":
  parser = argparse.ArgumentParser(description="toyshop dev checks.")
  parser.add_argument("--sheet", help="write a contact sheet to this PNG path")
  parser.add_argument("--references", action="store_true", help="print the position priors")
  parser.add_argument("--size", type=int, default=None, help="image size (224 sheet, 64 priors)")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--first-category", type=int, default=0)
  parser.add_argument("--boxes", action="store_true", help="outline the product boxes")
  parser.add_argument("--photos", type=int, default=600)
  parser.add_argument("--grid", type=int, default=8)
  args = parser.parse_args()
  if not args.sheet and not args.references:
    parser.error("name --sheet=PATH and/or --references")
  if args.sheet:
    _contact_sheet(args.sheet, args.size or 224, args.seed, args.first_category, args.boxes)
  if args.references:
    print(_references(args.size or 64, args.seed, args.photos, args.grid))
