"""The value checks of `trainer.validate_config`: numeric ranges, and what the dataset implies.

Every numeric field of the shared sections has a range in `RANGES` (evaluator entries'
overrides of `input` fields are checked against the same ranges); a value outside it fails
before anything compiles, with one sentence naming the field and what it must be, instead
of a run that does nothing (`total_steps=-5`), divides by zero after compiling
(`log_every_steps=0`) or reports a NaN loss at step 2 (`optim.lr=nan`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import ml_collections
import tensorflow_datasets as tfds
from absl import logging

from eclip_jax import evals as evals_lib
from eclip_jax.models import vit


@dataclasses.dataclass(frozen=True)
class Range:
  """Integers (or finite numbers) from `low` to `high`; `*_excluded` leaves out the end."""

  low: float
  high: float = math.inf
  integer: bool = True
  low_excluded: bool = False
  high_excluded: bool = False

  def __contains__(self, value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, int if self.integer else (int, float)):
      return False
    above = value > self.low if self.low_excluded else value >= self.low
    below = value < self.high if self.high_excluded else value <= self.high
    return math.isfinite(value) and above and below

  def __str__(self) -> str:
    kind = "an integer" if self.integer else "a finite number"
    if self.high == math.inf:
      return f"{kind} {'>' if self.low_excluded else '>='} {self.low:g}"
    return (f"{kind} in {'(' if self.low_excluded else '['}{self.low:g}, {self.high:g}"
            f"{')' if self.high_excluded else ']'}")


COUNT = Range(1)
COUNT_OR_ZERO = Range(0)  # 0: off (or "at the end only")
NON_NEGATIVE = Range(0, integer=False)
POSITIVE = Range(0, integer=False, low_excluded=True)
FRACTION = Range(0, 1, integer=False)
BYTE = Range(0, 255)

# Field path (under `config.`) -> the range of its value, or of each entry of a tuple value.
RANGES = {
    "total_steps": COUNT,
    "stop_after_steps": COUNT_OR_ZERO,
    "log_every_steps": COUNT,
    "max_steps_in_flight": COUNT_OR_ZERO,
    "eval_every_steps": COUNT_OR_ZERO,
    "checkpoint_every_steps": COUNT_OR_ZERO,
    "keep_checkpoints": COUNT,
    "keep_checkpoints_every_steps": COUNT_OR_ZERO,
    "peak_flops_per_device": NON_NEGATIVE,
    "input.batch_size": COUNT,
    "input.num_workers": COUNT_OR_ZERO,
    "input.read_threads": COUNT,
    "input.prefetch_buffer_size": COUNT,
    "input.prefetch_batches": COUNT_OR_ZERO,
    "input.image_size": COUNT,
    "input.num_views": COUNT,
    "input.crop_scale": Range(0, 1, integer=False, low_excluded=True),
    "input.box_context": NON_NEGATIVE,
    "input.background": BYTE,
    "input.vocab_size": Range(5),  # PAD, UNK, BOS, EOS and at least one piece
    "input.max_text_len": Range(2),  # BOS and EOS
    "input.max_table_len": Range(2),
    "input.video_frames": COUNT,
    "input.video_size": COUNT,
    "input.audio_samples": COUNT,
    "input.audio_sample_rate": COUNT,
    "input.audio_mel_frames": COUNT,
    "input.max_regions": COUNT,
    "input.video_feat_frames": COUNT,
    "input.mask_prob": Range(0, 1, integer=False, low_excluded=True),
    "optim.lr": NON_NEGATIVE,
    "optim.warmup_steps": COUNT_OR_ZERO,
    "optim.end_lr_fraction": FRACTION,
    "optim.weight_decay": NON_NEGATIVE,
    "optim.b1": Range(0, 1, integer=False, high_excluded=True),
    "optim.b2": Range(0, 1, integer=False, high_excluded=True),
    "optim.eps": POSITIVE,
    "optim.grad_clip": NON_NEGATIVE,  # 0: off
    "loss.tile": COUNT_OR_ZERO,  # 0: the default
    "train.streams": COUNT,
    "input.min_title_tokens": COUNT_OR_ZERO,  # 0: off
    "input.min_title_text_fraction": FRACTION,  # 0: off
}
# Tuple fields: their lengths, and those whose entries must increase.
_LENGTHS = {"input.crop_scale": 2, "input.value_range": 2, "input.background": 3}
_INTERVALS = ("input.crop_scale", "input.value_range")


def check_ranges(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError for the first numeric field outside its range."""
  for field, allowed in RANGES.items():
    _check(field, _get(config, field), allowed)
  for name, entry in config.evals.items():
    for key, value in entry.items():
      if f"input.{key}" in RANGES:
        _check(f"evals.{name}.{key}", value, RANGES[f"input.{key}"])
  for field, length in _LENGTHS.items():
    value = tuple(_get(config, field))
    if len(value) != length:
      raise ValueError(f"config.{field}={value} must have {length} entries; set "
                       f"--config.{field} to a tuple of {length}.")
    if field in _INTERVALS and not (all(math.isfinite(v) for v in value) and value[0] < value[1]):
      raise ValueError(f"config.{field}={value} must be two finite numbers, the first "
                       f"smaller; set --config.{field} to such a pair.")
  _check_patches(config)
  _check_mlm_slots(config)


def _get(config: ml_collections.ConfigDict, field: str) -> Any:
  for key in field.split("."):
    config = config[key]
  return config


def _check(field: str, value: Any, allowed: Range) -> None:
  values = value if isinstance(value, (tuple, list)) else (value,)
  if not values or any(v not in allowed for v in values):
    each = "each entry " if isinstance(value, (tuple, list)) else ""
    raise ValueError(f"config.{field}={value!r}: {each}must be {allowed}; set "
                     f"--config.{field} to such a value.")


def _check_patches(config: ml_collections.ConfigDict) -> None:
  """The image size of training and of every evaluator is a whole number of ViT patches."""
  image_tower = config.model.get("image")
  if image_tower is None or "variant" not in image_tower:
    return  # a model without a ViT image tower
  _, patch = vit.parse_variant(image_tower.variant, image_tower.get("patch_size"))
  sizes = {"input.image_size": config.input.image_size}
  sizes.update({f"evals.{name}.image_size": entry.image_size
                for name, entry in config.evals.items() if "image_size" in entry})
  for field, size in sizes.items():
    if size % patch:
      raise ValueError(
          f"config.{field}={size} is not a multiple of the ViT patch size {patch} "
          f"(config.model.image); use a multiple of {patch}, e.g. "
          f"{max(patch, round(size / patch) * patch)}.")


def _check_mlm_slots(config: ml_collections.ConfigDict) -> None:
  """`model.mlm_slots` (SCALE) leaves room for the targets 15%-style masking draws: at least
  ⌈input.mask_prob · length⌉ per row (a title's exact bound; a table's entities may take
  more, and what they leave unscored is counted)."""
  slots = config.model.get("mlm_slots") or {}
  lengths = {"text": "input.max_text_len", "table": "input.max_table_len"}
  for name, count in slots.items():
    if name not in lengths:
      raise ValueError(f"config.model.mlm_slots has {name!r}; it takes text and table.")
    _check(f"model.mlm_slots.{name}", count, COUNT_OR_ZERO)
    needed = math.ceil(config.input.mask_prob * _get(config, lengths[name]))
    if count and config.input.get("masking") and count < needed:
      raise ValueError(
          f"config.model.mlm_slots.{name}={count} is below the {needed} targets a row can have "
          f"(input.mask_prob {config.input.mask_prob} of config.{lengths[name]} "
          f"{_get(config, lengths[name])}); set it to {needed} or more, or 0 for every position.")


def check_dataset(config: ml_collections.ConfigDict, builder: tfds.core.DatasetBuilder) -> None:
  """The train split exists, every evaluator training runs has a split (one message for all),
  and a batch larger than the train split is worth a warning."""
  splits = builder.info.splits
  train_split = config.input.train_split
  if train_split not in splits:
    raise ValueError(
        f"config.input.train_split={train_split!r} is not a split of {config.input.dataset}; "
        f"choose one of {sorted(splits)}.")
  # The entries only --mode=eval runs (the downstream suite) say what they lack when built.
  evals_lib.common.check_splits(evals_lib.training_entries(config.evals), config.input)
  num_examples = splits[train_split].num_examples
  if config.input.batch_size > num_examples:
    logging.warning(
        "config.input.batch_size=%d is larger than the %d examples of %s's %r split: every "
        "batch holds some of them more than once.", config.input.batch_size, num_examples,
        config.input.dataset, train_split)
