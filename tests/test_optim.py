"""The optimizer from config: schedules, weight-decay mask, lr multipliers, freezing."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eclip_jax import config_base, optim


def _optim_config(**overrides):
  config = config_base.base_config().optim
  config.update(overrides)
  return config


def _params():
  return {
      "img": {"Dense_0": {"kernel": jnp.ones((4, 3)), "bias": jnp.ones((3,))},
              "LayerNorm_0": {"scale": jnp.ones((3,))}},
      "txt": {"token_embed": jnp.ones((10, 3)), "Dense_0": {"kernel": jnp.ones((3, 3))}},
      "logit_scale": jnp.ones(()),
  }


def test_schedules_warm_up_then_decay_to_the_end_fraction():
  config = _optim_config(lr=1.0, warmup_steps=10, end_lr_fraction=0.1)
  cosine = optim.learning_rate_schedule(config, total_steps=110)
  np.testing.assert_allclose([cosine(0), cosine(5), cosine(10), cosine(60), cosine(110)],
                             [0.0, 0.5, 1.0, 0.55, 0.1], atol=1e-6)
  config.schedule = "linear"
  linear = optim.learning_rate_schedule(config, total_steps=110)
  np.testing.assert_allclose([linear(10), linear(60), linear(110)], [1.0, 0.55, 0.1], atol=1e-6)
  config.schedule = "constant"
  assert float(optim.learning_rate_schedule(config, total_steps=110)(100)) == 1.0
  config.schedule = "step"
  with pytest.raises(ValueError, match="config.optim.schedule='step' is unknown"):
    optim.learning_rate_schedule(config, total_steps=110)


def _one_step(config, grads_value=0.0):
  """One update with zero (or constant) gradients: what remains is weight decay and lr."""
  tx, _ = optim.make_optimizer(config, total_steps=10)
  params = _params()
  state = tx.init(params)
  grads = jax.tree.map(lambda p: jnp.full_like(p, grads_value), params)
  updates, _ = tx.update(grads, state, params)
  return updates


def test_weight_decay_only_on_matrices_that_are_not_embeddings():
  updates = _one_step(_optim_config(lr=1.0, warmup_steps=0, weight_decay=0.5, grad_clip=0.0))
  # With zero gradients, Adam's update is 0 and the update is -lr * wd * param where decayed.
  assert float(updates["img"]["Dense_0"]["kernel"][0, 0]) == pytest.approx(-0.5)
  assert float(updates["txt"]["Dense_0"]["kernel"][0, 0]) == pytest.approx(-0.5)
  for no_decay in (updates["img"]["Dense_0"]["bias"], updates["img"]["LayerNorm_0"]["scale"],
                   updates["txt"]["token_embed"], updates["logit_scale"]):
    assert float(jnp.abs(no_decay).max()) == 0.0


def test_freeze_and_lr_multipliers():
  config = _optim_config(lr=1.0, warmup_steps=0, weight_decay=0.0, grad_clip=0.0,
                         freeze="^img/", lr_multipliers=((r"^txt/token_embed$", 0.1),))
  updates = _one_step(config, grads_value=1.0)
  assert all(float(jnp.abs(u).max()) == 0.0 for u in jax.tree.leaves(updates["img"]))
  # Adam's first step moves every unfrozen parameter by ~lr (the sign of the gradient).
  np.testing.assert_allclose(updates["txt"]["Dense_0"]["kernel"], -1.0, rtol=1e-4)
  np.testing.assert_allclose(updates["txt"]["token_embed"], -0.1, rtol=1e-4)


def test_masks_accept_logically_partitioned_params():
  """The trainer creates the optimizer state from boxed params, so it is sharded like them."""
  names = lambda p: ("embed", "mlp")[: p.ndim] if p.ndim <= 2 else (None,) * p.ndim  # noqa: E731
  boxed = jax.tree.map(lambda p: nn.Partitioned(p, names=names(p)), _params())
  tx, _ = optim.make_optimizer(_optim_config(), total_steps=10)
  specs = jax.tree.leaves(nn.get_partition_spec(tx.init(boxed)),
                          is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
  # Adam's two moments of each of the 2 kernels and the embedding carry the params' names.
  assert specs.count(jax.sharding.PartitionSpec("embed", "mlp")) == 2 * 3
