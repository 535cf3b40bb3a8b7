"""Evaluators, built by name from a config's `evals` section.

`config.evals` holds named entries, each choosing an evaluator by `type`:

    config.evals.val_retrieval = dict(type="retrieval", positives="catalog")
    config.evals.val_zeroshot = dict(type="zeroshot_classification", split="test")

`build_evaluators` turns them into objects whose `run(params)` makes one pass over the
entry's split and returns flat metrics (`{"i2t_r1": ...}`; the trainer prefixes
`eval/<name>/`). Each type's module docstring lists its fields and metrics; every entry
also takes `split` (default "validation"), `in_training` (default True: whether training
runs it every `eval_every_steps`, or only `--mode=eval` does) and overrides of `config.input` fields, notably
`batch_size` (global, a multiple of the data-parallel size).

The model is reached only through `apply_fn(params, global_batch) -> outputs`, supplied by
the trainer: evaluators read the output names DESIGN.md fixes (`image_emb`, `text_emb`,
`instance_emb_img`, `instance_attn`, ...), never model internals.
"""

from __future__ import annotations

from typing import Any, Protocol

import ml_collections
from etils import epath
from jax.sharding import Mesh

from eclip_jax.evals import classification
from eclip_jax.evals import common
from eclip_jax.evals import downstream
from eclip_jax.evals import grounding
from eclip_jax.evals import m5product
from eclip_jax.evals import product_retrieval
from eclip_jax.evals import retrieval


class Evaluator(Protocol):

  def run(self, params: Any) -> dict[str, float | int]:
    """One pass over the evaluator's split with `params`; metrics without a prefix."""


EVALUATORS: dict[str, type[Evaluator]] = {
    "retrieval": retrieval.RetrievalEvaluator,
    "zeroshot_classification": classification.ZeroShotClassificationEvaluator,
    "product_retrieval": product_retrieval.ProductRetrievalEvaluator,
    "grounding": grounding.GroundingEvaluator,
    "downstream": downstream.DownstreamEvaluator,
    "m5product": m5product.M5ProductEvaluator,
}


def runs_in_training(entry: ml_collections.ConfigDict) -> bool:
  """Whether training runs the entry (its `in_training` field, else its type's default)."""
  evaluator = EVALUATORS.get(entry.get("type"))
  defaults = {**common.COMMON_DEFAULTS, **(evaluator.DEFAULTS if evaluator else {})}
  return bool(entry.get("in_training", defaults["in_training"]))


def training_entries(evals_config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The entries of `evals_config` that training runs."""
  return ml_collections.ConfigDict(
      {name: entry for name, entry in evals_config.items() if runs_in_training(entry)})


def build_evaluators(
    evals_config: ml_collections.ConfigDict,
    *,
    input_config: ml_collections.ConfigDict,
    apply_fn: common.ApplyFn,
    mesh: Mesh,
    workdir: str | epath.Path | None = None,
    in_training: bool = False,
) -> dict[str, Evaluator]:
  """One evaluator per entry of `evals_config`; misconfiguration raises here, before any
  compilation. Evaluators that draw pictures or write tables put them under `workdir`
  (None: nowhere). `in_training`: only the entries that run during training (their
  `in_training` field; the downstream suite's is False)."""
  evaluators = {}
  for name, entry in evals_config.items():
    kind = entry.get("type")
    if kind not in EVALUATORS:
      raise ValueError(
          f"config.evals.{name}.type={kind!r} is unknown; known types: {sorted(EVALUATORS)}"
      )
    if in_training and not runs_in_training(entry):
      continue
    evaluators[name] = EVALUATORS[kind](
        name, entry, input_config=input_config, apply_fn=apply_fn, mesh=mesh,
        workdir=None if workdir is None else epath.Path(workdir),
    )
  return evaluators
