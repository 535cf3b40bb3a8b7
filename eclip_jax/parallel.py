"""The device mesh, logical-axis sharding rules, and moving batches between host and mesh.

Every run has one mesh with axes `("data", "fsdp", "tensor")`:

- `data`: pure data parallelism (parameters replicated);
- `fsdp`: data parallelism whose devices also split the parameters and optimizer state
  (ZeRO-3 style; the batch is split over `data` x `fsdp`);
- `tensor`: model parallelism inside layers (heads, MLP hidden units).

Models name their axes logically (`embed`, `mlp`, `heads`, ...); a config's `sharding_rules`
maps those names to mesh axes, so changing the parallelism layout is a config edit.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")  # the batch dimension is split over both

# Logical name -> mesh axes. FSDP-style: parameters' `embed` axis is split over `fsdp`,
# the wide axes of attention and MLP over `tensor`. Unlisted names are replicated.
DEFAULT_SHARDING_RULES = (
    ("batch", BATCH_AXES),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("vocab", "tensor"),
    ("kv", None),
    ("joint", None),
    ("length", None),
    ("layers", None),
    ("queries", None),
)


def default_mesh_config() -> ml_collections.ConfigDict:
  """Axis sizes; -1 (at most one axis) takes all remaining devices."""
  return ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})


def mesh_shape(mesh_config: Mapping[str, int], num_devices: int) -> tuple[int, ...]:
  """Resolves -1 in the config's axis sizes; raises a one-sentence error on a mismatch."""
  unknown = set(mesh_config) - set(MESH_AXES)
  if unknown:
    raise ValueError(f"config.mesh has unknown axes {sorted(unknown)}; the axes are {MESH_AXES}.")
  sizes = [int(mesh_config.get(axis, 1)) for axis in MESH_AXES]
  if sizes.count(-1) > 1:
    raise ValueError(f"config.mesh={dict(mesh_config)} has more than one -1; set all but one axis.")
  fixed = math.prod(s for s in sizes if s != -1)
  if any(s == 0 or s < -1 for s in sizes) or num_devices % fixed:
    raise ValueError(
        f"config.mesh={dict(mesh_config)} does not fit {num_devices} devices; choose axis sizes "
        f"whose product is {num_devices} (or use -1 for one axis)."
    )
  sizes = [num_devices // fixed if s == -1 else s for s in sizes]
  if math.prod(sizes) != num_devices:
    raise ValueError(
        f"config.mesh={dict(mesh_config)} uses {math.prod(sizes)} of {num_devices} devices; "
        f"choose axis sizes whose product is {num_devices}."
    )
  return tuple(sizes)


def make_mesh(mesh_config: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
  """The run's mesh. Axes are `Auto`: XLA propagates shardings from the annotations."""
  devices = jax.devices() if devices is None else list(devices)
  shape = mesh_shape(mesh_config, len(devices))
  return jax.make_mesh(
      shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES), devices=devices
  )


def sharding_rules(rules: Sequence[Sequence[Any]] | None) -> tuple[tuple[str, Any], ...]:
  """Normalizes a config's `sharding_rules` (list of [logical, mesh axis or axes or None])."""
  rules = DEFAULT_SHARDING_RULES if rules is None else rules
  normalized = []
  for logical, mesh_axes in rules:
    axes = (mesh_axes,) if isinstance(mesh_axes, str) else tuple(mesh_axes or ())
    bad = [a for a in axes if a not in MESH_AXES]
    if bad:
      raise ValueError(
          f"config.sharding_rules maps {logical!r} to unknown mesh axes {bad}; use {MESH_AXES}."
      )
    normalized.append((str(logical), axes[0] if len(axes) == 1 else (axes or None)))
  return tuple(normalized)


def data_parallel_size(mesh: Mesh) -> int:
  return math.prod(mesh.shape[axis] for axis in BATCH_AXES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension split over `data` x `fsdp`, the rest replicated."""
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def logical_shardings(boxed_tree: Any, mesh: Mesh, rules) -> Any:
  """NamedShardings for a tree of `nn.Partitioned` leaves (e.g. `jax.eval_shape(init)`)."""
  return nn.logical_to_mesh_sharding(nn.get_partition_spec(boxed_tree), mesh, rules)


def split_microbatches(batch: Mapping[str, jax.Array], num_microbatches: int,
                       mesh: Mesh) -> dict[str, jax.Array]:
  """A global batch [B, ...] -> [M, B / M, ...] micro-batches, each spread over every device.

  Each device's rows are cut into M consecutive chunks and micro-batch m is every device's
  m-th chunk, so no data moves and each micro-batch keeps the whole mesh busy (a plain
  reshape would put micro-batch m on 1/M of the devices). `merge_microbatches` inverts it.
  """
  num_shards = data_parallel_size(mesh)

  def split(array):
    rows_per_device = array.shape[0] // num_shards
    if array.shape[0] % num_shards or rows_per_device % num_microbatches:
      raise ValueError(
          f"a global batch of {array.shape[0]} rows on {num_shards} data-parallel devices "
          f"does not split into {num_microbatches} micro-batches; make input.batch_size a "
          f"multiple of {num_shards * num_microbatches}.")
    chunk = rows_per_device // num_microbatches
    array = array.reshape(num_shards, num_microbatches, chunk, *array.shape[1:])
    array = jnp.swapaxes(array, 0, 1).reshape(num_microbatches, num_shards * chunk,
                                              *array.shape[3:])
    return jax.lax.with_sharding_constraint(array, NamedSharding(mesh, P(None, BATCH_AXES)))

  return {key: split(value) for key, value in batch.items()}


def merge_microbatches(tree: Any, mesh: Mesh) -> Any:
  """[M, B / M, ...] leaves in `split_microbatches`' order -> [B, ...] in the batch's order."""
  num_shards = data_parallel_size(mesh)

  def merge(array):
    num_microbatches, rows = array.shape[:2]
    array = array.reshape(num_microbatches, num_shards, rows // num_shards, *array.shape[2:])
    array = jnp.swapaxes(array, 0, 1).reshape(num_microbatches * rows, *array.shape[3:])
    return jax.lax.with_sharding_constraint(array, batch_sharding(mesh))

  return jax.tree.map(merge, tree)


def to_global(batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """This process's rows of a batch -> global arrays split over the batch axes.

  Every process passes its own `per_process_batch_size` rows; the result has the global batch
  as its leading dimension.
  """
  sharding = batch_sharding(mesh)
  return {
      key: jax.make_array_from_process_local_data(sharding, np.asarray(value))
      for key, value in batch.items()
  }


def to_host(tree: Any) -> Any:
  """Global arrays -> full numpy arrays on every process (for metrics and evaluation)."""
  if jax.process_count() == 1:
    return jax.tree.map(np.asarray, tree)
  return multihost_utils.process_allgather(tree, tiled=True)
