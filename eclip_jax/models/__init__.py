"""Model registry: `build_model(config.model)` turns a config's `model` section into a module.

`model.name` picks the model; every other field of the section is passed to its constructor,
so a config can only set fields the model has (anything else fails here, naming the field).
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import ml_collections

from eclip_jax.models import eclip
from eclip_jax.models import scale
from eclip_jax.models import two_tower

MODELS: dict[str, type[nn.Module]] = {
    "two_tower": two_tower.TwoTower,
    "eclip": eclip.ECLIP,
    "scale": scale.Scale,
}

# Fields every flax module has that are not configuration.
_MODULE_PLUMBING = ("parent", "name")


def build_model(model_config: ml_collections.ConfigDict) -> nn.Module:
  """The module named by `model_config.name`, built from the section's other fields."""
  fields = model_config.to_dict()
  name = fields.pop("name", None)
  if name not in MODELS:
    raise ValueError(f"model.name={name!r} is not a known model; known: {sorted(MODELS)}")
  model_cls = MODELS[name]
  accepted = {f.name for f in dataclasses.fields(model_cls) if f.name not in _MODULE_PLUMBING}
  unknown = sorted(set(fields) - accepted)
  if unknown:
    raise ValueError(
        f"model.{unknown[0]} is not a field of model {name!r}; its fields are {sorted(accepted)}"
    )
  return model_cls(**fields)
