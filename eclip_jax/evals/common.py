"""What every evaluator shares: reading its config entry, and one model pass over a split.

An entry of `config.evals` holds the evaluator's own fields (`type`, `split`, and those of
its type) and, optionally, overrides of `config.input` fields (`batch_size`, `dataset`,
`data_dir`, `image_size`, ...): an evaluator reads its split the way training reads the
train split, except where its entry says otherwise. Misconfiguration fails when the
evaluator is built, before anything compiles.

`SplitEvaluator` is the base of every evaluator: it builds the entry's `EvalSplit` from the
class's `DEFAULTS` (its fields) and `MODALITIES` (what it decodes).

The held-out splits go by two names: an evaluator asking for `validation` or `test` on a
dataset that has only the other one (a manifest's splits are its own) evaluates on that
one, with a warning; `check_splits` reports every evaluator left without a split at once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import jax
import ml_collections
import numpy as np
from absl import logging
from etils import epath
from jax.sharding import Mesh

from eclip_jax import parallel
from eclip_jax.data import pipeline
from eclip_jax.data import schema

ApplyFn = Callable[[Any, dict[str, jax.Array]], dict[str, jax.Array]]

COMMON_DEFAULTS = {"type": None, "split": "validation", "in_training": True}
KS = (1, 5, 10)  # the K of the retrieval metrics (R@K, mAP@K, Prec@K)
# Score blocks of at most this many query x gallery entries (64 MiB of float32).
MAX_BLOCK_SCORES = 1 << 24
# Model outputs an evaluator may use as an image's embedding: those computed from the image
# alone. (ECLIP's title-guided `instance_emb` would let a title choose its own image's
# embedding: a leak in retrieval and classification.)
IMAGE_EMBEDDINGS = ("image_emb", "instance_emb_img")
# Set by the evaluator from what it compares, so an entry may not override them.
_EVALUATOR_INPUT_FIELDS = ("modalities", "num_views")
# Names of held-out splits that stand in for each other, preferred first.
HELD_OUT_SPLITS = ("validation", "test")


def resolve_split(requested: str, splits: Sequence[str]) -> str | None:
  """The split an evaluator asking for `requested` reads: `requested` if the dataset has it,
  the dataset's other held-out split if `requested` is one of HELD_OUT_SPLITS, else None."""
  if requested in splits:
    return requested
  if requested in HELD_OUT_SPLITS:
    return next((split for split in HELD_OUT_SPLITS if split in splits), None)
  return None


def check_splits(evals_config: ml_collections.ConfigDict,
                 input_config: ml_collections.ConfigDict) -> None:
  """Raises one ValueError naming every evaluator whose split the dataset lacks (and which
  has no stand-in), with the override that fixes each."""
  missing = []
  for name, entry in evals_config.items():
    dataset = entry.get("dataset", input_config.dataset)
    builder = pipeline.prepared_builder(dataset, entry.get("data_dir", input_config.data_dir))
    requested = entry.get("split", COMMON_DEFAULTS["split"])
    if resolve_split(requested, list(builder.info.splits)) is None:
      missing.append((name, requested, dataset, sorted(builder.info.splits)))
  if missing:
    raise ValueError(_missing_splits_message(missing))


def _missing_splits_message(missing: Sequence[tuple[str, str, str, list[str]]]) -> str:
  """The error for (evaluator, split, dataset, its splits) tuples: `config.evals.a.split=
  'test', config.evals.b.split='test' are not splits of the dataset (product_manifest has
  ['train']); pass --config.evals.a.split=train ...`."""
  fields = ", ".join(f"config.evals.{name}.split={split!r}" for name, split, _, _ in missing)
  datasets = "; ".join(sorted({f"{dataset} has {splits}" for _, _, dataset, splits in missing}))
  fixes = " ".join(f"--config.evals.{name}.split={_suggested_split(splits)}"
                   for name, _, _, splits in missing)
  message = (f"{fields} {'is not a split' if len(missing) == 1 else 'are not splits'} of the "
             f"dataset ({datasets}); pass {fixes}")
  if all(_suggested_split(splits) == "train" for _, _, _, splits in missing):
    message += (", or give the dataset a held-out split (manifest lines with "
                "\"split\": \"validation\")")
  return message + "."


def _suggested_split(splits: Sequence[str]) -> str:
  """A held-out split the dataset has, else its training split."""
  held_out = [s for s in HELD_OUT_SPLITS if s in splits] + [s for s in splits if s != "train"]
  return (held_out or ["train"])[0]


class EvalSplit:
  """One evaluator's entry, the input section it reads its split with, and the model pass.

  Attributes: `name`, `fields` (the evaluator's own fields, defaults filled in),
  `input_config`, `split`, `batch_size` (global), `builder`, `transform` (its tokenizer
  is the run's), `num_records` (in the split, skipped ones included), `workdir` (where
  artifacts such as pictures go; None: nowhere).
  """

  def __init__(
      self,
      name: str,
      entry: Mapping[str, Any],
      defaults: Mapping[str, Any],
      *,
      input_config: ml_collections.ConfigDict,
      apply_fn: ApplyFn,
      mesh: Mesh,
      modalities: Sequence[str],
      num_views: int = 1,
      workdir: epath.Path | None = None,
  ):
    self.name, self.apply_fn, self.mesh, self.workdir = name, apply_fn, mesh, workdir
    known = {**COMMON_DEFAULTS, **defaults}
    self.fields, overrides = dict(known), {}
    for key, value in entry.items():
      if key in known:
        self.fields[key] = value
      elif key in input_config and key not in _EVALUATOR_INPUT_FIELDS:
        overrides[key] = value
      else:
        raise ValueError(
            f"config.evals.{name}.{key} is neither a field of {entry['type']} evaluators "
            f"{sorted(known)} nor an input field it may override; remove or rename it."
        )

    self.input_config = input_config.copy_and_resolve_references()
    self.input_config.update(overrides)
    # Only what the evaluator compares is decoded (no video for a retrieval of images by
    # titles), and the evaluator's number of deterministic views (the first images of each
    # record), whatever training takes.
    self.input_config.modalities = tuple(modalities)
    self.input_config.num_views = num_views

    self.batch_size = self.input_config.batch_size
    num_shards = parallel.data_parallel_size(mesh)
    if self.batch_size % num_shards:
      field = f"evals.{name}" if "batch_size" in overrides else "input"
      raise ValueError(
          f"config.{field}.batch_size={self.batch_size} is not divisible by the data-parallel "
          f"size {num_shards} (mesh data x fsdp); make it a multiple of {num_shards}."
      )

    requested = self.fields["split"]
    self.builder = pipeline.prepared_builder(self.input_config.dataset, self.input_config.data_dir)
    splits = self.builder.info.splits
    self.split = resolve_split(requested, list(splits))
    if self.split is None:
      raise ValueError(_missing_splits_message(
          [(name, requested, self.input_config.dataset, sorted(splits))]))
    if self.split != requested:
      logging.warning("config.evals.%s.split=%r is not a split of %s; evaluating on its %r "
                      "split instead.", name, requested, self.input_config.dataset, self.split)
    self.num_records = splits[self.split].num_examples
    if not self.num_records:
      raise ValueError(
          f"config.evals.{name}.split={self.split!r} of {self.input_config.dataset} is empty; "
          "choose a split with examples."
      )
    self.transform = pipeline.make_transform(self.input_config, self.builder)

  def image_output(self) -> str:
    """The entry's `image_output` field, checked against IMAGE_EMBEDDINGS."""
    key = self.fields["image_output"]
    if key not in IMAGE_EMBEDDINGS:
      raise ValueError(
          f"config.evals.{self.name}.image_output={key!r} is not an image-only embedding; "
          f"choose one of {IMAGE_EMBEDDINGS}.")
    return key

  def run_model(
      self,
      params: Any,
      *,
      inputs: Sequence[str],
      outputs: Sequence[str],
      labels: Sequence[str],
  ) -> dict[str, np.ndarray]:
    """One pass over the split: host arrays of the valid examples of all processes.

    The model sees the batch keys `inputs`; the result holds its `outputs` and the batch's
    `labels`, row-aligned, every example of the split once (skipped records and padding
    rows dropped).
    """
    per_batch = []
    iterator = pipeline.make_eval_iterator(
        self.input_config, self.split, batch_size=self.batch_size
    )
    with contextlib.closing(iterator):
      for batch in iterator:
        model_outputs = self.apply_fn(
            params, parallel.to_global({k: batch[k] for k in inputs}, self.mesh)
        )
        kept = parallel.to_global({k: batch[k] for k in (*labels, pipeline.VALID_KEY)}, self.mesh)
        kept.update({k: model_outputs[k] for k in outputs})
        per_batch.append(kept)
    # One gather at the end rather than one per batch, so that the host keeps preparing
    # batches while the devices compute.
    per_batch = parallel.to_host(per_batch)
    columns = {k: np.concatenate([b[k] for b in per_batch]) for k in per_batch[0]}
    valid = columns.pop(pipeline.VALID_KEY)
    return {k: v[valid] for k, v in columns.items()}


class SplitEvaluator:
  """Base of the evaluators: one config entry, one split, `run(params) -> metrics`.

  A subclass sets `DEFAULTS` (its fields and their defaults), `MODALITIES` (what its
  split is decoded with) and defines `run(params)` (one pass over the split, metrics
  without a prefix); `views_per_record(name, entry)` may ask for several images per record.
  The entry's split and fields are `self.data` (an `EvalSplit`).
  """

  DEFAULTS: ClassVar[Mapping[str, Any]] = {}
  MODALITIES: ClassVar[tuple[str, ...]] = ("image",)

  def __init__(
      self,
      name: str,
      entry: Mapping[str, Any],
      *,
      input_config: ml_collections.ConfigDict,
      apply_fn: ApplyFn,
      mesh: Mesh,
      workdir: epath.Path | None = None,
  ):
    self.name = name
    self.data = EvalSplit(
        name, entry, self.DEFAULTS, input_config=input_config, apply_fn=apply_fn, mesh=mesh,
        modalities=self.MODALITIES, num_views=self.views_per_record(name, entry),
        workdir=workdir,
    )

  @classmethod
  def views_per_record(cls, name: str, entry: Mapping[str, Any]) -> int:
    del name, entry
    return 1

  def positive_id_key(self, allowed: Sequence[str] = tuple(schema.POSITIVES)) -> str | None:
    """The batch key of the entry's `positives` field (None for "pair")."""
    return schema.positive_id_key(self.data.fields["positives"],
                                  f"config.evals.{self.name}.positives", allowed)


def l2_normalize(embeddings: np.ndarray) -> np.ndarray:
  """Rows scaled to unit length, in float32 (scores are cosines whatever the model returns)."""
  embeddings = np.asarray(embeddings, np.float32)
  norms = np.linalg.norm(embeddings, axis=-1, keepdims=True)
  return embeddings / np.maximum(norms, 1e-12)
