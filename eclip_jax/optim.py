"""The optimizer from a config's `optim` section: AdamW with warmup + decay schedules,
global-norm clipping, a weight-decay mask, per-parameter learning-rate multipliers, freezing.

Parameters are selected by regexes over their "/"-joined path, e.g. `img/Transformer/
encoderblock_0/MlpBlock_0/Dense_0/kernel`. The same helpers work on boxed (logically
partitioned) parameter trees, so the optimizer state can be created sharded.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

SCHEDULES = ("cosine", "linear", "constant")
# How the learning rate follows the batch size of a batch schedule's stage: the multiplier of
# a stage whose batch is `ratio` times the first stage's.
BATCH_LR_SCALINGS = {"none": lambda ratio: 1.0, "linear": lambda ratio: ratio,
                     "sqrt": math.sqrt}


def param_path(path) -> str:
  """A `jax.tree_util` key path -> "a/b/c"."""
  return "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def map_params(fn: Callable[[str, Any], Any], params: Any) -> Any:
  """`fn(path, leaf)` over a param tree whose leaves may be `nn.Partitioned` boxes; returns
  a tree with one value per parameter (a tree prefix of a boxed tree, as optax masks allow)."""
  return jax.tree_util.tree_map_with_path(
      lambda path, leaf: fn(param_path(path), leaf),
      params,
      is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata),
  )


def learning_rate_schedule(optim: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
  """Linear warmup from 0 to `lr`, then cosine or linear decay to `lr * end_lr_fraction`."""
  if optim.schedule not in SCHEDULES:
    raise ValueError(f"config.optim.schedule={optim.schedule!r} is unknown; use one of {SCHEDULES}.")
  warmup = min(optim.warmup_steps, total_steps)
  decay_steps = max(total_steps - warmup, 1)
  end_lr = optim.lr * optim.end_lr_fraction
  if optim.schedule == "cosine":
    decay = optax.cosine_decay_schedule(optim.lr, decay_steps, alpha=optim.end_lr_fraction)
  elif optim.schedule == "linear":
    decay = optax.linear_schedule(optim.lr, end_lr, decay_steps)
  else:
    decay = optax.constant_schedule(optim.lr)
  return optax.join_schedules([optax.linear_schedule(0.0, optim.lr, warmup), decay], [warmup])


def scale_by_batch_stage(schedule: optax.Schedule, stages: Sequence[tuple[int, int]],
                         scaling: str) -> optax.Schedule:
  """`schedule` times the `scaling` rule's multiplier of each batch stage ((first step,
  global batch), ...; the first stage's multiplier is 1)."""
  if scaling not in BATCH_LR_SCALINGS:
    raise ValueError(f"config.train.batch_lr_scaling={scaling!r} is unknown; use one of "
                     f"{sorted(BATCH_LR_SCALINGS)}.")
  if len(stages) == 1 or scaling == "none":
    return schedule
  base = stages[0][1]
  multipliers = jnp.array([BATCH_LR_SCALINGS[scaling](batch / base) for _, batch in stages],
                          jnp.float32)
  starts = jnp.array([start for start, _ in stages], jnp.int32)

  def scaled(count):
    return schedule(count) * multipliers[jnp.sum(count >= starts) - 1]

  return scaled


def _matches(pattern: str) -> Callable[[str], bool]:
  compiled = re.compile(pattern) if pattern else None
  return lambda path: bool(compiled and compiled.search(path))


def _leaf_ndim(leaf) -> int:
  return len(nn.meta.unbox(leaf).shape)


def _lr_multiplier(optim: ml_collections.ConfigDict, path: str) -> float:
  if _matches(optim.freeze)(path):
    return 0.0
  for pattern, multiplier in optim.lr_multipliers:
    if re.search(pattern, path):
      return float(multiplier)
  return 1.0


def _scale_by_multipliers(multipliers: Callable[[Any], Any]) -> optax.GradientTransformation:
  """Multiplies each parameter's update by a constant (0 freezes it)."""

  def update(updates, state, params=None):
    del params
    return jax.tree.map(lambda u, m: u * jnp.asarray(m, u.dtype), updates, multipliers(updates)), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def make_optimizer(
    optim: ml_collections.ConfigDict, total_steps: int,
    batch_stages: Sequence[tuple[int, int]] = ((0, 1),), batch_lr_scaling: str = "none",
) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """AdamW as a chain: freeze -> clip -> Adam moments -> masked decay -> -lr x multiplier.

  Frozen parameters get zero gradients *before* clipping, so they do not count in the global
  norm, and are excluded from weight decay, so they stay exactly as loaded. With a batch
  schedule (`batch_stages`), the learning rate follows its stages by `batch_lr_scaling`.
  """
  schedule = scale_by_batch_stage(learning_rate_schedule(optim, total_steps), batch_stages,
                                  batch_lr_scaling)
  frozen = _matches(optim.freeze)
  no_decay = _matches(optim.no_decay)

  def decay_mask(params):
    # Only matrices decay; vectors and scalars are norms, biases and temperatures.
    return map_params(
        lambda path, leaf: _leaf_ndim(leaf) >= 2 and not no_decay(path) and not frozen(path),
        params,
    )

  def gradient_mask(params):
    return map_params(lambda path, leaf: 0.0 if frozen(path) else 1.0, params)

  def lr_multipliers(params):
    return map_params(lambda path, leaf: _lr_multiplier(optim, path), params)

  chain = [_scale_by_multipliers(gradient_mask)]
  if optim.grad_clip:
    chain.append(optax.clip_by_global_norm(optim.grad_clip))
  chain += [
      optax.scale_by_adam(b1=optim.b1, b2=optim.b2, eps=optim.eps),
      optax.add_decayed_weights(optim.weight_decay, mask=decay_mask),
      optax.scale_by_learning_rate(schedule),
      _scale_by_multipliers(lr_multipliers),
  ]
  return optax.chain(*chain), schedule
