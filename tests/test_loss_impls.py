"""The trainer takes the contrastive loss implementation from `config.loss.impl`, and the
implementations train alike: same losses, metrics and parameters over a few steps."""

import jax
import numpy as np
import pytest

from eclip_jax import parallel, trainer
from tests.helpers import random_batch, run_steps, tiny_config

# 16 examples on 8 devices: 2 rows per device, so tile=1 really tiles (2×2 tiles per block).
IMPLS = [("ring", 0), ("tiled", 1)]


@pytest.mark.parametrize("sigmoid", [False, True], ids=["softmax", "sigmoid"])
def test_impls_train_alike(sigmoid):
  mesh = parallel.make_mesh({"data": 4, "fsdp": 2})
  configs = {
      impl: tiny_config(**{"loss.positives": "catalog", "loss.impl": impl, "loss.tile": tile})
      for impl, tile in [("gather", 0), *IMPLS]
  }
  if sigmoid:
    for config in configs.values():
      config.loss.kind = "sigmoid"
  state = jax.device_get(trainer.Setup(configs["gather"], mesh).init_state())
  batches = [random_batch(configs["gather"], rng=i) for i in range(3)]

  losses, params = run_steps(configs["gather"], mesh, state, batches)
  assert losses[2] != losses[0]  # the steps really trained
  for impl, _ in IMPLS:
    impl_losses, impl_params = run_steps(configs[impl], mesh, state, batches)
    np.testing.assert_allclose(impl_losses, losses, rtol=1e-5, err_msg=impl)
    # As in test_trainer: Adam turns reduction-order noise on near-zero gradients into ~1e-6
    # absolute differences, far below the ~1e-3 size of an update.
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
                 impl_params, params)
