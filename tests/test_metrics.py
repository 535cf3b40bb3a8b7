"""metrics.jsonl writing (and its truncation on resume), MFU, and the run summary table."""

import json
import re

import pytest
from absl import app

from eclip_jax import metrics, summarize


@pytest.mark.parametrize("append", [True, False])  # False: how gs:// (no appends) is written
def test_resumed_writer_drops_rows_after_the_checkpoint(tmp_path, append):
  writer = metrics.MetricWriter(tmp_path)
  writer._append = append  # pylint: disable=protected-access
  for step in (1, 2, 3, 4):
    writer.write(step, {"train/loss": 1.0 / step})
  writer.close()
  # The run died after logging step 4 but its last checkpoint is step 2.
  writer = metrics.MetricWriter(tmp_path, resume_step=2)
  writer._append = append  # pylint: disable=protected-access
  writer.write(3, {"train/loss": 0.5, "train/nan": float("nan")})
  writer.close()
  rows = metrics.read_metrics(tmp_path)
  assert [r["step"] for r in rows] == [1, 2, 3]
  assert rows[-1] == {"step": 3, "train/loss": 0.5, "train/nan": None}  # JSON has no NaN
  assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


def test_mfu():
  assert metrics.mfu(6e9, 1000.0, 8, 1e12) == pytest.approx(6e12 / 8e12)
  assert metrics.mfu(6e9, 1000.0, 8, 0.0) is None


def test_summary_table_mean_and_std(tmp_path):
  for seed, value in enumerate([0.2, 0.4, 0.6]):
    run = tmp_path / f"seed{seed}"
    run.mkdir()
    rows = [{"step": 5, "train/loss": 2.0}, {"step": 10, "eval/r1": value}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  table = summarize.table([str(tmp_path / f"seed{i}") for i in range(3)], ["eval/r1", "train/loss"])
  assert "| mean ± std (n=3) | | 0.4000 ± 0.2000 | 2.0000 ± 0.0000 |" in table
  assert f"| {tmp_path / 'seed1'} | 10 | 0.4000 | 2.0000 |" in table


def test_summarize_skips_log_files_and_rejects_directories_without_metrics(tmp_path, capsys):
  (tmp_path / "seed0").mkdir()
  (tmp_path / "seed0" / "metrics.jsonl").write_text('{"step": 1}\n')
  (tmp_path / "seed0.log").write_text("step 1/1\n")
  paths = [str(tmp_path / "seed0"), str(tmp_path / "seed0.log")]
  assert summarize.run_workdirs(paths) == [str(tmp_path / "seed0")]
  assert "skipped 1 files" in capsys.readouterr().err
  (tmp_path / "empty").mkdir()
  with pytest.raises(app.UsageError, match="has no metrics.jsonl"):
    summarize.run_workdirs([str(tmp_path / "empty")])


def test_pointing_reading_names_both_references(tmp_path):
  run = tmp_path / "eclip_tiny"
  run.mkdir()
  final = {"step": 600, "eval/grounding/pointing_acc": 0.4567,
           "eval/grounding/center_pointing": 0.3249, "eval/grounding/chance_pointing": 0.2312}
  (run / "metrics.jsonl").write_text(json.dumps(final) + "\n")
  assert summarize.pointing_reading(str(run)) == (
      "eclip_tiny finds the product in 46% of photos vs center prior 32% (box-area chance 23%)")
  (run / "metrics.jsonl").write_text('{"step": 600, "eval/retrieval/i2t_r1": 0.1}\n')
  assert summarize.pointing_reading(str(run)) is None


def test_summarize_rejects_a_metric_that_no_run_logged(tmp_path):
  run = tmp_path / "seed0"
  run.mkdir()
  row = {"step": 10, "train/loss": 2.0, "eval/retrieval/i2t_r1": 0.5}
  (run / "metrics.jsonl").write_text(json.dumps(row) + "\n")
  with pytest.raises(app.UsageError, match=re.escape(
      "--metrics: no run logged 'eval/retrival/i2t_r1'; did you mean eval/retrieval/i2t_r1? "
      "they logged eval/retrieval/i2t_r1, train/loss.")):
    summarize.table([str(run)], ["train/loss", "eval/retrival/i2t_r1"])
