"""Training objectives, chosen by name from a config.

An objective is `fn(outputs, batch, ctx) -> (loss, metrics)`: `outputs` is the model's dict
(`image_emb`, `text_emb`, ...), `batch` the global batch dict, `ctx` what the step knows
beyond them (mesh, the `loss` section, the method's own config section). `loss` is a float32
scalar; `metrics` maps names to scalars. `config.objectives` maps objective names to weights;
the training loss is their weighted sum, and the trainer logs each objective's loss as
`train/<objective>/loss` and its metrics as `train/<objective>/<metric>`, so two objectives
never overwrite each other's numbers. `train/duplicate_rate` is the fraction of the batch's
rows whose catalog product has another listing in the batch: the false negatives that
plain pair labels (`loss.positives="pair"`) would create.

A method's knobs live in a config section of its own (`config.eclip`, ...): an objective is
registered with the section it reads, which it then finds as `ctx.method_config`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from eclip_jax.objectives import clip
from eclip_jax.objectives import eclip
from eclip_jax.objectives import scale
from eclip_jax.objectives.common import ObjectiveContext

Objective = Callable[
    [dict[str, Any], dict[str, Any], ObjectiveContext],
    tuple[jax.Array, dict[str, jax.Array]],
]


@dataclasses.dataclass(frozen=True)
class _Registered:
  fn: Objective
  config_section: str | None  # the method section the objective reads, if any


_OBJECTIVES: dict[str, _Registered] = {}


def register(name: str, fn: Objective, config_section: str | None = None) -> None:
  """Makes `fn` available to configs as `config.objectives.<name>`."""
  if name in _OBJECTIVES:
    raise ValueError(f"an objective named {name!r} is registered already")
  _OBJECTIVES[name] = _Registered(fn, config_section)


register("clip", clip.clip_objective)
register("instance_text", eclip.instance_text_objective, eclip.CONFIG_SECTION)
register("instance_consistency", eclip.instance_consistency_objective, eclip.CONFIG_SECTION)
register("selection_kl", eclip.selection_kl_objective, eclip.CONFIG_SECTION)
register("query_diversity", eclip.query_diversity_objective, eclip.CONFIG_SECTION)
register("scale_contrastive", scale.scale_contrastive_objective, scale.CONFIG_SECTION)
register("scale_masked", scale.scale_masked_objective, scale.CONFIG_SECTION)


def _registered(name: str) -> _Registered:
  if name not in _OBJECTIVES:
    raise ValueError(f"Unknown objective {name!r}; known: {', '.join(sorted(_OBJECTIVES))}.")
  return _OBJECTIVES[name]


def get_objective(name: str) -> Objective:
  """The objective registered as `name`."""
  return _registered(name).fn


def config_section(name: str) -> str | None:
  """The method config section objective `name` reads (None: none)."""
  return _registered(name).config_section


def method_sections() -> frozenset[str]:
  """Every config section some registered objective reads."""
  return frozenset(r.config_section for r in _OBJECTIVES.values() if r.config_section)


def duplicate_rate(ids: jax.Array) -> jax.Array:
  """The fraction of rows whose id another row of the batch shares."""
  # Sorted, a row has a duplicate when a neighbour equals it: O(B log B), not B x B.
  ids = jnp.sort(ids)
  same = ids[1:] == ids[:-1]
  no = jnp.zeros((1,), bool)
  return jnp.mean(jnp.concatenate([no, same]) | jnp.concatenate([same, no]))


LossFn = Callable[[dict[str, Any], dict[str, Any]], tuple[jax.Array, dict[str, jax.Array]]]


def weighted_loss(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> LossFn:
  """`(outputs, batch) -> (Σ weight · loss, metrics)` over `config.objectives`, each
  objective's loss and metrics under its name (`"<objective>/loss"`, `"<objective>/<m>"`)."""
  terms = []
  for name, weight in config.objectives.items():
    section = config_section(name)
    if section is not None and section not in config:
      raise ValueError(f"objective {name!r} reads config.{section}, which this config lacks; "
                       f"add the section (configs/{section}.py has its fields).")
    ctx = ObjectiveContext(mesh=mesh, loss_config=config.loss,
                           method_config=config[section] if section else None)
    terms.append((name, get_objective(name), float(weight), ctx))

  def loss_fn(outputs, batch):
    total, metrics = 0.0, {}
    if "catalog_id" in batch:
      metrics["duplicate_rate"] = duplicate_rate(batch["catalog_id"])
    for name, objective, weight, ctx in terms:
      loss, values = objective(outputs, batch, ctx)
      total += weight * loss
      metrics[f"{name}/loss"] = loss
      metrics.update({f"{name}/{key}": value for key, value in values.items()})
    return total, metrics

  return loss_fn
