r"""SCALE: five unimodal encoders, one fusion transformer, pairwise contrastive and masked
modeling losses, self-harmonized (METHODS.md §3; README, "SCALE").

Trains from the raw modalities toyshop carries (pixels, video frames, waveform -> log-mel,
title, attribute table) or from an M5Product release's pre-extracted features (region
features + boxes, S3D frame features, mel matrices), with the same model code: the `m5`
variant reads the features. Run (after `make demo` or
`python -m eclip_jax.data.prepare --dataset=toyshop/medium_light --data_dir=data`):

  python -m eclip_jax.main --config=configs/scale.py:tiny --workdir=workdirs/scale_tiny

The run ends with the M5Product protocol (evals/m5product.py) on toyshop's validation
split: coarse (category) and fine (catalog product) retrieval mAP@K / Prec@K by the
summed fused embedding, a linear category probe trained on the train split, k-means NMI
and purity; `--mode=eval` repeats it on any checkpoint.

Arguments (after the colon, comma-separated):
  tiny | m5              the variant (sizes below)
  modalities=text+image  train with a subset of text, table, image, video, audio
                         (fusion, losses and the protocol's embedding use only those)
  harmonize=code         scale.harmonize: code (the released code's), learned, off
  missing=0.3            that share of the training items loses a random subset of its
                         modalities (input.simulate_missing), the same items in every run
  complete_only          train on the items that have every modality (skips the others)
  runlocal               a few-step smoke run on toyshop/tiny

Variants:
  tiny  CPU (toyshop/medium_light, 64 px): text towers ("tiny", shared by title and table),
        ViT tiny patch 8, video = 4 frames of 32 px through a one-block ViT then one
        temporal block, audio = 50 log-mel frames (0.5 s) in patches of 5, fusion 2 blocks
        at width 64; batch 128, 600 steps, lr 2e-3 cosine (CLIP tiny's schedule).
  m5    the publication's sizes on an m5product build (region / frame / mel features):
        6-layer encoders and fusion at width 768 (12 heads, MLP 3072), the title's and the
        table's towers shared as in the released code; the optimization settings are ours
        (the publication's are not all stated): batch 1024, lr 1e-4, 100k steps. Not run by
        this project: no figure is claimed for it.
"""

from __future__ import annotations

import math

import ml_collections

from configs import common
from eclip_jax.objectives import scale as scale_objectives

# The model's modalities, in the order the ablation adds them (the publication's).
MODALITIES = ("text", "image", "table", "video", "audio")
# Model modality -> the input modality that feeds it, from raw data (toyshop) or from the
# M5Product release's features.
RAW_INPUTS = {"text": "text", "table": "table", "image": "image", "video": "video",
              "audio": "audio_mel"}
FEATURE_INPUTS = {"text": "text", "table": "table", "image": "regions", "video": "video_feats",
                  "audio": "audio_mel"}


def _block(width: int, depth: int, num_heads: int, mlp_dim: int) -> dict[str, int]:
  return {"width": width, "depth": depth, "num_heads": num_heads, "mlp_dim": mlp_dim}


def _parse(arg: str | None) -> tuple[ml_collections.ConfigDict, tuple[str, ...]]:
  """(the options, the chosen modalities in fusion order)."""
  arg = common.parse_arg(arg, variant="tiny", runlocal=False, modalities="+".join(MODALITIES),
                         harmonize="code", missing=0.0, complete_only=False)
  if arg.variant not in ("tiny", "m5"):
    raise ValueError(f"unknown scale variant {arg.variant!r}; choose one of ['m5', 'tiny']")
  chosen = [m for m in arg.modalities.split("+") if m]
  unknown = sorted(set(chosen) - set(MODALITIES))
  if unknown or not chosen:
    raise ValueError(f"modalities={arg.modalities!r}: name some of {MODALITIES} joined by '+'")
  return arg, tuple(m for m in scale_objectives.MODALITIES if m in chosen)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg, modalities = _parse(arg)
  on_cpu = arg.variant == "tiny"
  config = common.base_config()
  inputs = RAW_INPUTS if on_cpu else FEATURE_INPUTS
  input_modalities = tuple(inputs[m] for m in modalities)

  config.total_steps = 600 if on_cpu else 100_000
  config.log_every_steps = 50 if on_cpu else 100
  config.eval_every_steps = 0 if on_cpu else 5000  # tiny: the protocol once, at the end
  config.checkpoint_every_steps = 300 if on_cpu else 2000

  config.input.dataset = "toyshop/medium_light" if on_cpu else "m5product"
  config.input.train_split = "train" if on_cpu else "pretrain"
  config.input.modalities = input_modalities
  config.input.batch_size = 128 if on_cpu else 1024
  config.input.num_workers = 0 if on_cpu else 8
  config.input.image_size = 64
  config.input.crop_scale = (0.7, 1.0)  # CLIP tiny's (configs/clip.py says why)
  config.input.max_text_len = 24 if on_cpu else 36  # the publication's title length
  config.input.max_table_len = 48 if on_cpu else 64
  config.input.video_frames = 4
  config.input.video_size = 32
  config.input.audio_mel_frames = 50 if on_cpu else 751
  config.input.masking = True
  config.input.mask_prob = 0.15
  config.input.mask_patch_size = 8 if on_cpu else 0  # the ViT's patches (m5: regions)
  config.input.simulate_missing = arg.missing
  config.input.complete_only = arg.complete_only

  text_length = max(config.input.max_text_len, config.input.max_table_len)  # shared tower
  if on_cpu:
    config.model = ml_collections.ConfigDict({
        "name": "scale",
        "text": {"variant": "tiny", "vocab_size": config.input.get_ref("vocab_size"),
                 "max_len": text_length},
        "image": {"variant": "tiny", "patch_size": 8},
        "video": {**_block(64, 1, 2, 128),
                  "frame_tower": {"variant": "tiny", "patch_size": 8, "depth": 1}},
        "audio": {**_block(64, 1, 2, 128), "patch_frames": 5},
        "fusion": _block(64, 2, 2, 256),
        "embed_dim": 128,
        "dtype": "float32",
    })
  else:
    size = _block(768, 6, 12, 3072)
    config.model = ml_collections.ConfigDict({
        "name": "scale",
        "text": {"variant": "B", "depth": 6, "vocab_size": config.input.get_ref("vocab_size"),
                 "max_len": text_length},
        "regions": size, "video": size, "audio": size, "fusion": size,
        "embed_dim": 768,
        "dtype": "bfloat16",
        "scan_layers": True,
        "remat_policy": "dots_no_batch",
    })
  config.model.modalities = modalities
  # The vocabulary heads score the masked positions only (1.7x faster at tiny; BENCHMARKS).
  # A title masks ≤ ⌈15% · L⌉ tokens; a table whole entities, ≤ ⌊15% · Lt⌋ tokens plus the
  # entity that crosses that budget: +4 covers entities of 5 tokens, toyshop's longest
  # (longer ones leave targets unscored, counted as train/scale_masked/unscored_table_mlm).
  config.model.mlm_slots = {
      "text": math.ceil(config.input.mask_prob * config.input.max_text_len),
      "table": math.ceil(config.input.mask_prob * config.input.max_table_len) + 4}
  config.model.attention_impl = "xla"  # "cudnn": cuDNN flash attention, on GPU (bf16)
  config.model.share_text_encoders = True  # the released code's choice

  config.objectives = ml_collections.ConfigDict({"scale_contrastive": 1.0, "scale_masked": 1.0})
  config.scale = scale_objectives.default_config()
  config.scale.harmonize = arg.harmonize
  # Listings of one catalog product are positives of each other (as CLIP tiny's labels).
  config.loss.positives = "catalog" if on_cpu else "pair"

  config.optim.lr = 2e-3 if on_cpu else 1e-4
  config.optim.warmup_steps = 100 if on_cpu else 5000
  config.optim.weight_decay = 0.1 if on_cpu else 0.01
  # The learned harmonization S is a weighting, not a feature: no decay towards 0.
  config.optim.no_decay = f"({config.optim.no_decay})|(^|/)harmonization$"

  protocol = {"type": "m5product", "modalities": input_modalities,
              # toyshop: every split holds every item's modalities; score the validation
              # listings, probe trained on train. m5product: the release's splits.
              "split": "validation" if on_cpu else "classification_test",
              "train_split": "train" if on_cpu else "classification_train",
              # tiny: at the end of training (eval_every_steps=0); m5: --mode=eval.
              "in_training": on_cpu}
  if not on_cpu:
    protocol.update(query_split="retrieval_query_fine", gallery_split="retrieval_gallery_fine")
  config.evals = ml_collections.ConfigDict({"m5product": protocol})

  if arg.runlocal:
    common.make_runlocal(config)
  return config
