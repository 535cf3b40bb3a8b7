r"""CLIP two-tower baseline: a ViT and a text transformer aligned with a contrastive loss.

The baseline every other method is measured against. Run (after `make demo` or
`python -m eclip_jax.data.prepare --dataset=toyshop/medium_light --data_dir=data`):

  python -m eclip_jax.main --config=configs/clip.py:tiny --workdir=workdirs/clip_tiny

Expected (toyshop 2.0.0 medium_light 64px, 2 CPU cores, 2-3 minutes of training when the
machine is idle): validation image->title R@1 0.027 ± 0.001 against a chance level of
0.0008 (2,392 listings), R@10 0.156 ± 0.012, zero-shot category top-1 0.136 ± 0.012 against
0.04, image-only product mAP@10 0.105 ± 0.009 (RESULTS.md, 3 seeds). On toyshop 1.0.0's
cluttered medium the same recipe reached R@10 0.039 and zero-shot 0.092.

Variants: `tiny` (CPU), `s16`, `b32`, `b16`, `l14` (accelerators; ViT S/16 ... L/14 with text
towers of matching size, bfloat16 compute, scanned + rematerialized layers). Add `runlocal`
to any variant for a few-step smoke run on toyshop/tiny, e.g. `--config=configs/clip.py:b16,runlocal`.
Add `sigmoid` for the SigLIP loss instead of softmax InfoNCE. Start from OpenAI CLIP weights
with `clip_towers=image` (or `image+text`), which lays those towers out as CLIP's, and
`--config.init_from=<CLIP model.safetensors>` (README, "Start from CLIP weights"):

  python -m eclip_jax.main --config=configs/clip.py:b32,clip_towers=image \
      --workdir=workdirs/clip_b32_from_openai --config.init_from=clip-vit-base-patch32.safetensors \
      --config.init_params='^image_(tower|proj)/'

Sweep (`get_sweep`): the variant's learning rate halved, as is and doubled, x seeds 0-2 (9
runs); with `runlocal`, lr halved and as is x seeds 0-1 (10-step runs on toyshop/tiny, about
2.5 minutes on 2 CPU cores):

  python launch/sweep.py --config=configs/clip.py:tiny --sweepdir=sweeps/clip_tiny_lr
  python launch/sweep.py --sweepdir=sweeps/clip_tiny_lr --summarize
"""

from __future__ import annotations

import ml_collections

from configs import common

# variant -> (image tower, text tower, joint width, global batch, lr, warmup, steps, image px)
VARIANTS = {
    "tiny": ("tiny", "tiny", 128, 128, 2e-3, 100, 600, 64),
    "s16": ("S/16", "S", 384, 4096, 1e-3, 2000, 30_000, 224),
    "b32": ("B/32", "B", 512, 32_768, 5e-4, 10_000, 100_000, 224),
    "b16": ("B/16", "B", 512, 32_768, 5e-4, 10_000, 100_000, 224),
    "l14": ("L/14", "L", 768, 32_768, 4e-4, 10_000, 100_000, 224),
}


def _parse(arg: str | None) -> ml_collections.ConfigDict:
  arg = common.parse_arg(arg, variant="tiny", runlocal=False, sigmoid=False, clip_towers="")
  if arg.variant not in VARIANTS:
    raise ValueError(f"unknown clip variant {arg.variant!r}; choose one of {sorted(VARIANTS)}")
  return arg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = _parse(arg)
  image_tower, text_tower, embed_dim, batch_size, lr, warmup, steps, image_px = VARIANTS[arg.variant]
  config = common.base_config()
  on_cpu = arg.variant == "tiny"

  config.total_steps = steps
  config.log_every_steps = 50 if on_cpu else 100
  config.eval_every_steps = 300 if on_cpu else 5000
  config.checkpoint_every_steps = 300 if on_cpu else 2000

  # toyshop/small (2.4k training listings) is memorized within the demo's 32 epochs and
  # generalizes barely above chance (RESULTS.md); medium's 19k listings are seen ~4 times.
  # `light` is the ladder's common listing photo: the level a tiny model visibly learns on.
  config.input.dataset = (
      "toyshop/medium_light" if on_cpu else f"toyshop/large_lifestyle_{image_px}px")
  config.input.batch_size = batch_size
  config.input.image_size = image_px
  config.input.max_text_len = 24
  config.input.num_workers = 0 if on_cpu else 8
  # Crops much smaller than the photo often cut the product out of a cluttered scene, and
  # then the title describes what is no longer there.
  config.input.crop_scale = (0.7, 1.0)

  config.model = ml_collections.ConfigDict({
      "name": "two_tower",
      "image": {"variant": image_tower, "pool": "gap"},
      "text": {
          "variant": text_tower,
          "vocab_size": config.input.get_ref("vocab_size"),
          "max_len": config.input.get_ref("max_text_len"),
          "pool": "eos",
      },
      "embed_dim": embed_dim,
      "dtype": "float32" if on_cpu else "bfloat16",
      "param_dtype": "float32",
      "scan_layers": not on_cpu,
      "remat_policy": "none" if on_cpu else "dots_no_batch",
      "attention_impl": "xla",  # "cudnn": cuDNN flash attention, on GPU (bf16)
  })
  if on_cpu:
    config.model.image.patch_size = 8
  common.use_clip_layout(config, arg.clip_towers)
  config.objectives = ml_collections.ConfigDict({"clip": 1.0})
  config.loss.kind = "sigmoid" if arg.sigmoid else "softmax"
  if arg.sigmoid:
    config.model.temperature_init = 0.1  # SigLIP's t'=log(10), with the bias at -10
  # toyshop lists one catalog product under several sellers: their rows are true positives.
  config.loss.positives = "catalog"

  config.optim.lr = lr
  config.optim.warmup_steps = warmup
  config.optim.weight_decay = 0.1 if on_cpu else 0.2

  config.evals = ml_collections.ConfigDict({
      "retrieval": {"type": "retrieval", "split": "validation", "positives": "catalog"},
      # Prompts name each category by every word the titles use for it (a prompt ensemble).
      "zeroshot": {"type": "zeroshot_classification", "split": "validation",
                   "names": "synonyms"},
      # What ECLIP is measured on (configs/eclip.py), with the two-tower model's own outputs:
      # photo -> photos of the same product, and the patch-title similarity map as grounding.
      "product_retrieval": {"type": "product_retrieval", "split": "test"},
      "grounding": {"type": "grounding", "split": "test", "map_output": "patch_text_sim"},
      # e-CLIP's five product tasks; `--mode=eval` only (it embeds the train split).
      "downstream": common.downstream_eval(),
  })

  if arg.runlocal:
    common.make_runlocal(config)
  return config


def get_sweep(arg: str | None = None) -> dict:
  """Learning rate around the variant's x seeds (launch/sweep.py expands it)."""
  arg = _parse(arg)
  lr = VARIANTS[arg.variant][4]
  if arg.runlocal:
    return {"grid": {"optim.lr": [lr / 2, lr], "seed": [0, 1]}}
  return {"grid": {"optim.lr": [lr / 2, lr, lr * 2], "seed": [0, 1, 2]}}
