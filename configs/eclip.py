r"""ECLIP: the CLIP two-tower model plus instance queries that find the product in the photo.

Same towers, data, batch and schedule as `configs/clip.py` (the baseline it is compared
with), plus the instance decoder, two photos of each product per example and ECLIP's
pretext tasks (METHODS.md §1, eclip_jax/objectives/eclip.py). Run (after `make demo` or
`python -m eclip_jax.data.prepare --dataset=toyshop/medium_light --data_dir=data`):

  python -m eclip_jax.main --config=configs/eclip.py:tiny --workdir=workdirs/eclip_tiny

Expected on the demo preset toyshop/medium_light (seed 0, the `make demo` run): image-only
product retrieval mAP@10 0.202 against CLIP's 0.109, pointing accuracy 0.72 against a center
prior of 0.35 and box-area chance 0.23 (CLIP's patch-title map: 0.23).
Measured on toyshop 1.0.0's medium (cluttered 64px, 2 CPU cores; RESULTS.md, 5 seeds): image-only
product retrieval `eval/product_retrieval/map10` 0.012 ± 0.003 against CLIP's 0.004 ± 0.001,
pointing accuracy `eval/grounding/pointing_acc` 0.45 ± 0.09 against a chance level of 0.20
(but 0.56 for always pointing at the center, `center_pointing`), image->title R@10 0.057
against CLIP's 0.038. On toyshop/medium_lifestyle neither ECLIP nor CLIP leaves chance in
600 or 2400 steps; with every photo cropped to its product box (the oracle
`--config.input.crop_to_box=True`) both learn, so what fails there is finding the product.

Variants: `tiny` (CPU), `b16`, `l14` (accelerators; the clip.py variant of that name plus a
decoder of matching width). Add `runlocal` for a few-step smoke run on toyshop/tiny, and
`clip_towers=image` to start from CLIP's image tower as configs/clip.py says. Ablate
a pretext task by zeroing its weight, e.g. `--config.objectives.instance_consistency=0`.
"""

from __future__ import annotations

import ml_collections

from configs import clip
from configs import common

# variant -> (clip.py variant, instance queries K, decoder layers L, heads, decoder MLP width)
VARIANTS = {
    "tiny": ("tiny", 8, 2, 2, 256),
    "b16": ("b16", 16, 6, 12, 3072),
    "l14": ("l14", 16, 6, 16, 4096),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = common.parse_arg(arg, variant="tiny", runlocal=False, clip_towers="")
  if arg.variant not in VARIANTS:
    raise ValueError(f"unknown eclip variant {arg.variant!r}; choose one of {sorted(VARIANTS)}")
  clip_variant, num_queries, depth, num_heads, mlp_dim = VARIANTS[arg.variant]
  config = clip.get_config(f"{clip_variant},clip_towers={arg.clip_towers}")

  # Two different photos of each product per example (one photo, augmented twice, when a
  # listing has only one): the intra-product task compares their instances.
  config.input.num_views = 2

  config.model.name = "eclip"
  config.model.decoder = ml_collections.ConfigDict({
      "num_queries": num_queries, "depth": depth, "num_heads": num_heads, "mlp_dim": mlp_dim,
  })
  # tau_sel: at 0.1 the selection over cosine similarities in [-1, 1] can be nearly one-hot
  # or spread, as training decides.
  config.model.selection_temperature = 0.1
  config.model.selection_mlp_dim = 128

  # ECLIP's own knobs (the objectives read them as `ctx.method_config`).
  config.eclip = ml_collections.ConfigDict({
      # The instance embedding tasks (2) and (3) train. "image": the image-only selection's;
      # "text": the title-guided one, which carries the title into both sides of each
      # comparison, a shortcut those tasks learn instead of the product (RESULTS.md).
      "instance_selection": "image",
  })
  config.objectives = ml_collections.ConfigDict({
      "clip": 1.0,                  # (1) global image-title
      "instance_text": 1.0,         # (2) inter-product instance-title
      "instance_consistency": 1.0,  # (3) intra-product, two photos
      "selection_kl": 1.0,          # (4) the image-only selection head
      "query_diversity": 0.0,       # (5) optional regularizer, off by default
  })

  instance = "instance_emb_img"  # image-only: a title must not pick its own photo's embedding
  config.inference.update(image_output=instance, product_output="instance_emb",
                          image_map_output="instance_attn_img", product_map_output="instance_attn")
  config.evals = ml_collections.ConfigDict({
      "retrieval": {"type": "retrieval", "split": "validation", "image_output": instance},
      "zeroshot": {"type": "zeroshot_classification", "split": "validation",
                   "names": "synonyms", "image_output": instance},
      "product_retrieval": {"type": "product_retrieval", "split": "test",
                            "image_output": instance},
      "grounding": {"type": "grounding", "split": "test", "map_output": "instance_attn"},
      "grounding_img": {"type": "grounding", "split": "test", "map_output": "instance_attn_img",
                        "num_pictures": 0},
      # The global embedding of the same model, to separate the instance's contribution.
      "product_retrieval_global": {"type": "product_retrieval", "split": "test"},
      # e-CLIP's five product tasks; `--mode=eval` only (it embeds the train split).
      "downstream": common.downstream_eval(instance),
  })

  if arg.runlocal:
    common.make_runlocal(config)
  return config
