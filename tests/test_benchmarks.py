"""Benchmark scripts run end to end at test size and report every figure (no timing claims:
which mode is faster is what they measure, not what a test may assume)."""

import argparse
import json
import math
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
import jax  # noqa: F401  (before the harness: the tests' 8 devices stay as conftest set them)

sys.path.insert(0, str(pathlib.Path(__file__).parents[1] / "benchmarks"))
import checkpoint_blocking  # noqa: E402  (benchmarks/ is scripts, not a package)
import data_wait  # noqa: E402
import dot_layout  # noqa: E402
import ladder  # noqa: E402
import profile_step  # noqa: E402
import scale_evidence  # noqa: E402
import startup  # noqa: E402
import train_step  # noqa: E402
from tests.helpers import TINY_FLAGS, tiny_config  # noqa: E402


def test_checkpoint_blocking_reports_every_mode():
  rows = checkpoint_blocking.measure({"clip.py:tiny": _tiny_clip()}, rounds=1, steps=1)
  by_mode = {row["mode"]: row for row in rows}
  assert len(rows) == 3 and set(by_mode) == set(checkpoint_blocking.MODES)
  for row in rows:
    for key in ("state_mib", "blocks_ms", "write_ms", "step_ms", "blocks_per_step",
                "next_step_ms"):
      assert math.isfinite(row[key]) and row[key] > 0, (row["mode"], key, row[key])
    assert math.isfinite(row["lost_per_step"])  # an overlapped step may beat the median
    assert row["overlap_step_ms"] is None or row["overlap_step_ms"] > 0
  assert by_mode["sync"]["overlapped"] == 0  # a synchronous save is done when it returns
  table = checkpoint_blocking.format_table(rows)
  assert len(table.splitlines()) == 2 + len(rows)


def test_data_wait_reports_every_mode_at_every_log_step(toyshop_tiny):
  config = tiny_config(toyshop_tiny[0], total_steps=100)
  rows = data_wait.measure({"tiny": config}, rounds=1, steps=3)
  assert [row["mode"] for row in rows] == list(data_wait.MODES)
  for row in rows:
    assert [len(row[key]) for key in data_wait.LOGGED] == [3] * len(data_wait.LOGGED)
    assert all(v > 0 for v in row["perf/examples_per_sec"])
    assert all(0 <= v <= 1 for v in row["perf/data_wait_frac"] + row["perf/device_idle_frac"])
  # The bound on steps in flight and the read-ahead change when work happens, not what.
  assert rows[0]["train/loss"] == rows[1]["train/loss"]
  assert len(data_wait.format_table(rows).splitlines()) == 2 + len(rows)


def test_startup_times_the_binary_with_a_cold_and_a_warm_cache(toyshop_tiny):
  rows = startup.measure(["clip.py:tiny,runlocal"], toyshop_tiny[0], rounds=1, steps=1,
                         extra_flags=TINY_FLAGS)
  assert [(row["config"], row["round"]) for row in rows] == [("clip.py:tiny,runlocal", 1)]
  assert rows[0]["cold"] > 0 and rows[0]["warm"] > 0
  assert len(startup.format_table(rows).splitlines()) == 2 + len(rows)


def test_the_accelerator_script_stops_at_once_without_an_accelerator():
  """On CPU it names the devices and exits 1 with one error line, timing nothing."""
  script = pathlib.Path(__file__).parents[1] / "benchmarks" / "on_accelerator.sh"
  result = subprocess.run(["bash", str(script), sys.executable], capture_output=True,
                          text=True, timeout=300)
  assert result.returncode == 1, result.stderr[-2000:]
  assert "(cpu)" in result.stdout and "train_step" not in result.stdout
  assert result.stderr.strip().splitlines()[-1].startswith(
      "error: this jax sees CPU devices only")


def test_dot_layout_times_the_same_computation_in_both_layouts(monkeypatch):
  monkeypatch.setitem(dot_layout.SHAPES, "test", (2, 3, 8, 16))
  outputs = [fn(*args) for fn, args in (dot_layout.program(2, 3, 8, 16, layout)
                                        for layout in dot_layout.LAYOUTS)]
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5), *outputs)
  rows = dot_layout.measure(["test"], rounds=1, repeats=1)
  assert [row["layout"] for row in rows] == list(dot_layout.LAYOUTS)
  assert all(row["ms"] > 0 and row["gflop_per_s"] > 0 for row in rows)
  assert rows[0]["vs_3d"] == 1.0
  assert len(dot_layout.format_table(rows).splitlines()) == 2 + len(rows)


def _tiny_clip():
  """clip.py:tiny at a test's size (compiles in seconds): one block per tower, 8 examples
  (one per test device) of 32 px, titles of 8 tokens."""
  config = train_step.load_config("clip.py:tiny")
  config.input.batch_size, config.input.image_size, config.input.max_text_len = 8, 32, 8
  config.model.image.depth = config.model.text.depth = 1
  return config


def test_train_step_rows_have_every_column():
  pytest.importorskip("torch")
  rows, peak, source = train_step.measure({"tiny": _tiny_clip()}, rounds=1, steps=1,
                                          peers=["eager"])
  assert peak > 0 and source
  assert [row["impl"] for row in rows] == ["eclip_jax", "torch eager"]
  ours, peer = rows
  for key in ("ms", "examples_per_s", "compile_s", "gflop", "xla_gflop", "gflop_per_s", "mfu",
              "peak_mib"):
    assert np.isfinite(ours[key]) and ours[key] > 0, key
  assert ours["vs_eager"] > 0 and ours["vs_compiled"] is None and peer["vs_eager"] is None
  # The same architecture on both sides: parameter counts within transformers' [CLS] token
  # and its two extra LayerNorms.
  assert abs(peer["params"] - ours["params"]) < 0.01 * ours["params"]
  table = train_step.format_table(rows)
  assert all(title in table for _, title, _ in train_step.COLUMNS)


def test_profile_attributes_op_time_to_modules(tmp_path):
  result = profile_step.profile(_tiny_clip(), steps=1, trace_dir=str(tmp_path))
  modules = " ".join(result["by_module"])
  assert "image_tower" in modules and "text_tower" in modules and "bwd" in modules
  assert result["op_ms"] > 0 and sum(result["by_kind"].values()) == pytest.approx(result["op_ms"])
  assert sum(result["concurrency"].values()) == pytest.approx(1.0)
  assert "by module" in profile_step.report(result, top=3)


def test_module_of_reads_jax_op_names():
  name = ("jit(train_step)/transpose(jvp(TwoTower))/TwoTower.encode_towers/image_tower/"
          "encoder/block_0/mlp/fc1/dot_general")
  assert profile_step.module_of(name, depth=3) == "bwd TwoTower.encode_towers/image_tower/encoder"
  assert profile_step.module_of("jit(train_step)/add", depth=3) == "fwd add"


def test_train_step_tries_a_field_change_in_the_same_run():
  assert train_step.parse_try("model.dtype=bfloat16;optim.lr=2e-3") == {
      "model.dtype": "bfloat16", "optim.lr": 2e-3}
  config = _tiny_clip()
  variants = train_step.our_variants(config, ["model.remat_policy=full"])
  assert list(variants) == ["eclip_jax", "eclip_jax model.remat_policy=full"]
  assert variants["eclip_jax model.remat_policy=full"].model.remat_policy == "full"
  assert config.model.remat_policy == "none"  # the configured one is left as it was
  with pytest.raises(ValueError, match="no field 'model.no_such_field'"):
    train_step.our_variants(config, ["model.no_such_field=1"])
  rows, _, _ = train_step.measure({"tiny": config}, rounds=1, steps=1, peers=[],
                                  tries=["model.remat_policy=full"])
  assert [row["impl"] for row in rows] == ["eclip_jax", "eclip_jax model.remat_policy=full"]


def test_ladder_record_keeps_runs_whose_workdirs_are_gone(tmp_path):
  def args(seeds):
    return argparse.Namespace(size="medium", levels=["light"], methods=["clip", "eclip"],
                              seeds=seeds, root=str(tmp_path / "runs"),
                              record=str(tmp_path / "record.json"))

  def finish(method, seed, value):
    workdir = tmp_path / "runs" / "medium_light" / f"{method}_seed{seed}"
    workdir.mkdir(parents=True)
    row = {"step": 600, ladder.MAP10: value, ladder.POINTING: 2 * value,
           ladder.REFERENCES[0]: 0.25, ladder.REFERENCES[1]: 0.5}
    (workdir / "metrics.jsonl").write_text(json.dumps(row) + "\n")

  finish("clip", 0, 0.1)
  finish("eclip", 0, 0.3)
  ladder.update_record(args([0]))
  shutil.rmtree(tmp_path / "runs")  # the machine that ran seed 0 is gone
  finish("clip", 1, 0.2)  # seed 1 of CLIP ran elsewhere
  rows = ladder.ladder(args([0, 1]), ladder.update_record(args([0, 1])))
  assert rows["light"]["clip"][ladder.MAP10] == pytest.approx((0.15, 0.0707107, 2))
  assert rows["light"]["eclip"][ladder.POINTING] == (0.6, 0.0, 1)
  assert rows["light"]["references"][ladder.REFERENCES[1]] == (0.5, 0.0, 3)
  recorded = json.loads((tmp_path / "record.json").read_text())
  assert recorded["world"].startswith("toyshop ")
  assert recorded["runs"]["medium_light/clip_seed1"]["source"].endswith("clip_seed1")
  assert "| eclip pointing |" in ladder.ladder_table(rows, ["clip", "eclip"])

  recorded["world"] = "toyshop 0.1.0"  # a record of another world is never mixed in
  (tmp_path / "record.json").write_text(json.dumps(recorded))
  with pytest.raises(SystemExit, match="holds runs on toyshop 0.1.0"):
    ladder.update_record(args([0]))


def test_scale_evidence_tabulates_recorded_arms(tmp_path):
  for arm, seed, value in (("five", 0, 0.2), ("five", 1, 0.4), ("text", 0, 0.1)):
    workdir = tmp_path / "runs" / f"{arm}_seed{seed}"
    workdir.mkdir(parents=True)
    row = {"step": 600, **{key: value for key in scale_evidence.METRICS.values()}}
    (workdir / "metrics.jsonl").write_text(json.dumps(row) + "\n")
  args = argparse.Namespace(arms=["five", "text", "harmonize_off"], seeds=[0, 1],
                            root=str(tmp_path / "runs"), record=str(tmp_path / "record.json"))
  recorded = scale_evidence.update_record(args)
  assert sorted(recorded) == ["five_seed0", "five_seed1", "text_seed0"]
  lines = scale_evidence.arm_table(["text", "five", "harmonize_off"], [0, 1], recorded).splitlines()
  assert lines[2] == "| text | 1 | " + " | ".join(["0.1000 ± 0.0000"] * 5) + " |"
  assert lines[3] == "| five | 2 | " + " | ".join(["0.3000 ± 0.1414"] * 5) + " |"
  assert lines[4] == "| harmonize_off | 0 | " + " | ".join(["–"] * 5) + " |"
  assert scale_evidence._config("five") == "configs/scale.py:tiny"
  assert scale_evidence._config("missing0.3_complete_only") == (
      "configs/scale.py:tiny,missing=0.3,complete_only")
  assert scale_evidence._config("text+image_off") == (
      "configs/scale.py:tiny,modalities=text+image,harmonize=off")


def test_scale_evidence_averages_a_diagnostic_over_the_pairs_each_run_has(tmp_path):
  """A two-modality run has one pair, a three-modality run three; "off" logs no weights."""
  weight = "train/scale_contrastive/weight_{}".format
  runs = {"text+image_seed0": {weight("text_image"): 0.4},
          "text+image+table_seed0": {weight("text_table"): 0.1, weight("text_image"): 0.2,
                                     weight("table_image"): 0.6},
          "harmonize_off_seed0": {"train/scale_contrastive/acc_text_image": 0.5}}
  for name, row in runs.items():
    workdir = tmp_path / "runs" / name
    workdir.mkdir(parents=True)
    (workdir / "metrics.jsonl").write_text(
        json.dumps({"step": 600, scale_evidence.FINAL: 0.1, **row}) + "\n")
  args = argparse.Namespace(arms=["text+image", "text+image+table", "harmonize_off"], seeds=[0],
                            root=str(tmp_path / "runs"), record=str(tmp_path / "record.json"))
  recorded = scale_evidence.update_record(args)
  lines = scale_evidence.arm_table(args.arms, [0], recorded,
                                   scale_evidence.DIAGNOSTICS).splitlines()
  assert lines[2].startswith("| text+image | 1 | 0.4000 ± 0.0000 | – |")
  assert lines[3].startswith("| text+image+table | 1 | 0.3000 ± 0.0000 | – |")
  assert lines[4].startswith("| harmonize_off | 1 | – | 0.5000 ± 0.0000 |")
