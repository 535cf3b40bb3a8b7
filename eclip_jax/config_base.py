"""The fields every method config has, with their defaults and meaning.

Method configs (`configs/*.py`) start from `base_config()` and fill in `model`, `objectives`
and `evals`, plus their method's own section (`eclip`, ...: named by the objectives that read
it, eclip_jax/objectives); the trainer rejects fields of the other sections that are not
defined here, so a typo fails loudly instead of being ignored.
"""

from __future__ import annotations

import ml_collections

from eclip_jax import parallel
from eclip_jax.data import pipeline

# Sections whose fields each method defines.
OPEN_SECTIONS = ("model", "objectives", "evals")
# Fields that moved: old spelling -> new one (an old spelling fails, naming the new).
MOVED_FIELDS = {"loss.instance_selection": "eclip.instance_selection"}


def base_config() -> ml_collections.ConfigDict:
  """Every field a method config has; method files fill in `model`, `objectives`, `evals`."""
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.total_steps = 1000  # the length of the schedule
  config.stop_after_steps = 0  # stop (with a checkpoint) at this step; 0 = at total_steps
  config.log_every_steps = 50
  # Steps dispatched but unfinished at most (0 = no limit): the loop waits for the oldest
  # while the input pipeline reads ahead (trainer.StepsInFlight).
  config.max_steps_in_flight = 2
  config.eval_every_steps = 500  # 0: only at the end
  config.checkpoint_every_steps = 500
  config.keep_checkpoints = 3  # most recent ones kept
  config.keep_checkpoints_every_steps = 0  # also keep every M-th step forever (0: none)
  # A save blocks the loop for one device-side copy of the train state and Orbax saves from a
  # thread (eclip_jax/checkpoint.py); False when device memory has no room for that copy.
  config.checkpoint_handoff = True
  # Load params only (not opt state) from a run workdir, checkpoint or export dir, or a
  # .safetensors file (this codebase's or OpenAI/HF CLIP's: eclip_jax/interop.py).
  config.init_from = ""
  config.init_params = ".*"  # regex over "/"-joined param paths to take from init_from
  config.peak_flops_per_device = 0.0  # for MFU; 0 = unknown, MFU not reported
  # The binary keeps compiled programs here (JAX's persistent compilation cache), so a run
  # restarted after preemption, a repeated eval or sweep trial of the same shapes skips
  # compiling. "" = none; $JAX_COMPILATION_CACHE_DIR, when set, is used instead.
  config.compilation_cache_dir = "~/.cache/eclip_jax/jax"

  config.input = pipeline.default_input_config()
  config.mesh = parallel.default_mesh_config()
  config.sharding_rules = parallel.DEFAULT_SHARDING_RULES

  config.model = ml_collections.ConfigDict()
  config.objectives = ml_collections.ConfigDict()  # objective name -> loss weight

  config.loss = ml_collections.ConfigDict({
      "kind": "softmax",  # "softmax" (CLIP InfoNCE) or "sigmoid" (SigLIP)
      # How contrastive_loss spreads the B x B logits over devices: "gather" (b x B per
      # device), "ring" (b x b blocks passed around), "tiled" (tile x tile blocks; memory
      # linear in b, and no slower: BENCHMARKS.md).
      "impl": "tiled",
      "positives": "pair",  # "pair", "product" or "catalog": rows with equal ids are positives
      "tile": 0,  # rows per tile for impl="tiled"; 0 = contrastive.DEFAULT_TILE (1024)
  })

  # How a step forms its gradients and how big its batches are (eclip_jax/gradients.py).
  config.train = ml_collections.ConfigDict({
      "gradients": "full",  # a registered gradient strategy: "full" or "grad_cache"
      "streams": 1,  # grad_cache: micro-batches per step (activations of one at a time)
      # ((start_step, global_batch), ...): from `start_step` steps on, batches have
      # `global_batch` rows; before the first stage, input.batch_size.
      "batch_schedule": (),
      # The learning rate of a stage: optim.lr x f(stage batch / input.batch_size), f one of
      # "none" (1), "linear", "sqrt".
      "batch_lr_scaling": "none",
  })

  config.optim = ml_collections.ConfigDict({
      "lr": 1e-3,
      "schedule": "cosine",  # "cosine", "linear" (to 0) or "constant", after linear warmup
      "warmup_steps": 100,
      "end_lr_fraction": 0.0,
      "weight_decay": 0.1,
      "b1": 0.9,
      "b2": 0.98,
      "eps": 1e-6,
      "grad_clip": 1.0,  # global norm; 0 = off
      # Regexes over "/"-joined param paths. No decay on norms, biases, embeddings, temperature:
      "no_decay": r"(^|/)(bias|scale|token_embed|pos_embed|cls_token|probe|logit_scale|logit_bias)$",
      "lr_multipliers": (),  # ((regex, multiplier), ...), first match wins
      "freeze": "",  # regex of params kept fixed (e.g. "^img/" for a pretrained image tower)
  })

  config.evals = ml_collections.ConfigDict()

  # Which model outputs eclip_jax/inference.py returns for this run's checkpoints.
  config.inference = ml_collections.ConfigDict({
      "image_output": "image_emb",  # encode_images: an image-only embedding
      "product_output": "image_emb",  # encode_products: the photo's embedding given its title
      "image_map_output": "",  # instance_maps without titles ("": the model has none)
      "product_map_output": "patch_text_sim",  # instance_maps with titles
  })
  return config
