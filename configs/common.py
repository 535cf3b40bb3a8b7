"""Helpers shared by the method configs: the fields every config has, and argument parsing.

A config file's `get_config(arg)` receives the text after the colon in
`--config=configs/clip.py:tiny,runlocal`; `parse_arg` turns it into named options.
"""

from __future__ import annotations

import ml_collections

from eclip_jax import interop
from eclip_jax.config_base import base_config  # noqa: F401  (re-exported for config files)

CLIP_TOWERS = ("image", "text")
CLIP_TEXT_LEN = 77  # CLIP's position embeddings (a shorter input.max_text_len is fine)


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """`"tiny,runlocal,steps=10"` -> {variant: "tiny", runlocal: True, steps: 10}.

  A bare word is either a boolean option named in `defaults` (set to True) or the variant;
  `key=value` sets an option and keeps the type of its default.
  """
  options = dict(defaults)
  for word in filter(None, (arg or "").split(",")):
    key, sep, value = word.partition("=")
    if not sep and isinstance(defaults.get(key), bool):
      options[key] = True
    elif not sep:
      options["variant"] = key
    elif key not in defaults:
      raise ValueError(f"unknown config argument {key!r}; known: {sorted(defaults)}")
    else:
      options[key] = type(defaults[key])(value) if defaults[key] is not None else value
  return ml_collections.ConfigDict(options)


def make_runlocal(config: ml_collections.ConfigDict) -> None:
  """Shrinks a config in place to a smoke run on toyshop/tiny: seconds on a laptop.

  The architecture is kept (that is what a smoke run checks); data, batch and steps shrink.
  """
  config.input.dataset = "toyshop/tiny"
  config.input.batch_size = 16
  config.input.num_workers = 0
  config.total_steps = 10
  config.log_every_steps = 2
  config.eval_every_steps = 0  # evaluate at the end only
  config.checkpoint_every_steps = 5
  config.optim.warmup_steps = 2
  for name in config.evals:
    config.evals[name].batch_size = 16


def downstream_eval(image_output: str = "image_emb") -> dict:
  """The downstream suite's entry (eclip_jax/evals/downstream.py): the five product tasks,
  probes trained on the train split and scored on test. It embeds the whole train split, so
  training leaves it to `--mode=eval` (in_training=False)."""
  return {"type": "downstream", "split": "test", "train_split": "train",
          "image_output": image_output}


def use_clip_layout(config: ml_collections.ConfigDict, towers: str) -> None:
  """Lays out the towers named in `towers` (`"image"`, `"text"` or `"image+text"`; `""`:
  none) as OpenAI CLIP's, so that `--config.init_from=<CLIP .safetensors>` loads into them
  exactly (eclip_jax/interop.py). The sizes stay the variant's: `b32`, `b16` and `l14` are
  CLIP ViT-B/32, B/16 and L/14 (at 224 px).

  The text layout takes CLIP's 49408-token BPE vocabulary, which this codebase's
  SentencePiece tokenizers do not produce: see interop.py before importing a text tower.
  """
  chosen = set(filter(None, towers.split("+")))
  if chosen - set(CLIP_TOWERS):
    raise ValueError(f"clip_towers={towers!r}: name towers of {CLIP_TOWERS} joined by '+'")
  clip = {"activation": "quick_gelu", "norm_eps": interop.CLIP_NORM_EPS}
  if "image" in chosen:
    config.model.image.update(pool="cls", pre_norm=True, **clip)
  if "text" in chosen:
    # These two fields refer to input fields (which pick the tokenizer): replace, not set.
    del config.model.text["vocab_size"], config.model.text["max_len"]
    config.model.text.update(vocab_size=interop.CLIP_VOCAB_SIZE, max_len=CLIP_TEXT_LEN,
                             pool="eos", **clip)
