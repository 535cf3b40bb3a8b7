"""Helpers shared by the method configs: the fields every config has, and argument parsing.

A config file's `get_config(arg)` receives the text after the colon in
`--config=configs/clip.py:tiny,runlocal`; `parse_arg` turns it into named options.
"""

from __future__ import annotations

import ml_collections

from eclip_jax.config_base import base_config  # noqa: F401  (re-exported for config files)


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
