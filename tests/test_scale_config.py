"""configs/scale.py: its arguments, and a tiny run that trains on the 8 simulated devices,
ends with the M5Product protocol and resumes exactly."""

import re

import jax
import ml_collections
import numpy as np
import pytest

from configs import scale
from eclip_jax import config_checks
from eclip_jax import metrics as metrics_lib
from eclip_jax import trainer
from tests.helpers import final_params


def test_modalities_choose_the_inputs_the_model_and_the_protocol():
  config = scale.get_config("tiny,modalities=image+text")
  assert config.model.modalities == ("text", "image")  # fusion order, whatever the argument's
  assert config.input.modalities == ("text", "image")
  assert config.evals.m5product.modalities == ("text", "image")
  full = scale.get_config("tiny")
  assert full.input.modalities == ("text", "table", "image", "video", "audio_mel")
  m5 = scale.get_config("m5,modalities=image+audio")
  assert m5.input.modalities == ("regions", "audio_mel")
  assert m5.model.fusion.width == 768 and m5.model.fusion.depth == 6


def test_knobs_reach_their_sections():
  config = scale.get_config("tiny,harmonize=learned,missing=0.3,complete_only")
  assert config.scale.harmonize == "learned"
  assert config.input.simulate_missing == 0.3 and config.input.complete_only
  assert scale.get_config("tiny").input.simulate_missing == 0.0


@pytest.mark.parametrize("arg, message", [
    ("tiny,modalities=text+smell", "modalities='text\\+smell'"),
    ("tiny,modalities=", "modalities=''"),
    ("huge", "unknown scale variant 'huge'"),
])
def test_bad_arguments_fail_with_one_clear_error(arg, message):
  with pytest.raises(ValueError, match=message):
    scale.get_config(arg)


def test_mlm_slots_cover_the_masked_targets_or_fail_before_compiling():
  config = scale.get_config("tiny")
  assert config.model.mlm_slots.text == 4  # ⌈0.15 · 24⌉: a title's targets, exactly
  config_checks.check_ranges(config)
  config.input.mask_prob = 0.3
  config.model.mlm_slots.table = 0  # every position: no bound to check
  with pytest.raises(ValueError, match=re.escape(
      "config.model.mlm_slots.text=4 is below the 8 targets a row can have (input.mask_prob "
      "0.3 of config.input.max_text_len 24); set it to 8 or more, or 0 for every position.")):
    config_checks.check_ranges(config)
  config.model.mlm_slots = {"title": 4}
  with pytest.raises(ValueError, match="mlm_slots has 'title'; it takes text and table"):
    config_checks.check_ranges(config)


def _tiny_run_config(data_dir, **overrides):
  config = scale.get_config("tiny,runlocal,harmonize=learned,missing=0.3")
  config.input.update(data_dir=data_dir, vocab_size=1000, image_size=32, max_text_len=16,
                      max_table_len=16, audio_mel_frames=20, video_size=16)
  config.model.text.max_len = 16
  config.model.embed_dim = 32
  config.total_steps = 6
  config.checkpoint_every_steps = 3
  config.log_every_steps = 1
  config.update(overrides)
  return config


@pytest.mark.slow
def test_tiny_trains_on_8_devices_evaluates_and_resumes_exactly(toyshop_tiny, tmp_path):
  assert jax.device_count() == 8
  config = _tiny_run_config(toyshop_tiny[0])
  trainer.train(config, str(tmp_path / "straight"))
  # The resumed run skips the protocol: evaluation reads the params, never changes them.
  unevaluated = {"evals": ml_collections.ConfigDict()}
  trainer.train(_tiny_run_config(toyshop_tiny[0], stop_after_steps=3, **unevaluated),
                str(tmp_path / "resumed"))
  trainer.train(_tiny_run_config(toyshop_tiny[0], **unevaluated), str(tmp_path / "resumed"))

  straight, resumed = (final_params(tmp_path / name, config) for name in ("straight", "resumed"))
  jax.tree.map(np.testing.assert_array_equal, straight, resumed)
  rows = {name: metrics_lib.read_metrics(tmp_path / name) for name in ("straight", "resumed")}
  train_rows = lambda name: [r for r in rows[name] if "train/loss" in r]  # noqa: E731
  losses = {name: [r["train/loss"] for r in train_rows(name)] for name in rows}
  assert losses["straight"] == losses["resumed"] and len(losses["straight"]) == 6
  assert np.isfinite(losses["straight"]).all()

  # The learned S starts at 0 and moves: it gets a gradient.
  assert np.abs(straight["harmonization"]["harmonization"]).max() > 0
  last = train_rows("straight")[-1]
  for term in ("loss_text_image", "loss_video_audio", "harmonization_mean"):
    assert np.isfinite(last[f"train/scale_contrastive/{term}"]), term
  assert np.isfinite(last["train/scale_masked/loss_text_mlm"])

  evaluated = {k: v for row in rows["straight"] for k, v in row.items()
               if k.startswith("eval/m5product/")}
  for key in ("coarse/map1", "coarse/map10", "fine/map1", "probe_acc", "nmi", "purity"):
    assert 0.0 <= evaluated[f"eval/m5product/{key}"] <= 1.0, key
