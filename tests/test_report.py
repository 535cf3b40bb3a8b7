"""eclip_jax.report: a run's and a sweep's report.md with PNGs of the expected size that show
the logged numbers."""

import json
import re

import numpy as np
from PIL import Image

from eclip_jax import metrics as metrics_lib
from eclip_jax import report


def _check_png(path):
  """A valid PNG of the report's size with something drawn on it."""
  with Image.open(path) as image:
    image.verify()
  with Image.open(path) as image:
    assert image.format == "PNG" and image.size == (1200, 800), (path, image.size)
    pixels = np.asarray(image.convert("RGB"))
  not_white = np.any(pixels < 250, axis=-1).mean()
  assert not_white > 0.01, (path, not_white)  # axes, lines and text, not an empty canvas
  assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 8, path


def _embedded_images(report_file):
  return re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report_file.read_text())


def test_run_report_plots_every_group_with_the_logged_values(tiny_eclip_run, tmp_path):
  workdir, _ = tiny_eclip_run
  report_file = report.write_run_report(workdir, tmp_path / "report")
  images = _embedded_images(report_file)
  for stem in ("losses", "training", "learning_rate", "throughput", "eval_retrieval",
               "eval_grounding", "eval_product_retrieval"):
    assert f"{stem}.png" in images
  for name in images:
    if name.startswith("pictures_"):  # the grounding evaluator's picture, copied as written
      assert (tmp_path / "report" / name).read_bytes() == (
          workdir / "pictures" / name.removeprefix("pictures_")).read_bytes()
    else:
      _check_png(tmp_path / "report" / name)
  assert "pictures_grounding.png" in images

  rows = metrics_lib.read_metrics(workdir)
  figures = report.run_figures(rows)
  lines = {line.get_label(): line for line in figures["losses"].axes[0].lines}
  losses = [(r["step"], r["train/loss"]) for r in rows if "train/loss" in r]
  assert list(lines["train/loss"].get_xdata()) == [s for s, _ in losses] == [2, 4, 6]
  assert list(lines["train/loss"].get_ydata()) == [v for _, v in losses]
  assert "train/clip/loss" in lines and "train/instance_text/loss" in lines
  evals = {line.get_label(): line for line in figures["eval_retrieval"].axes[0].lines}
  assert list(evals["i2t_r1"].get_xdata()) == [3, 6]  # evaluated at steps 3 and 6
  assert "num_examples" not in evals  # counts are not curves

  text = report_file.read_text()
  last = [r for r in rows if "eval/retrieval/i2t_r10" in r][-1]["eval/retrieval/i2t_r10"]
  assert f"| eval/retrieval/i2t_r10 | {last:.4g} |" in text


def test_sweep_report_compares_the_runs(tiny_eclip_run, tmp_path):
  """Two runs: the tiny ECLIP run and one whose metrics are written here by hand."""
  other = tmp_path / "runs" / "lr=0.002"
  writer = metrics_lib.MetricWriter(other)
  writer.write(2, {"train/loss": 9.0})
  writer.write(6, {"train/loss": 7.5, "eval/retrieval/i2t_r1": 0.25})
  writer.close()
  workdir, _ = tiny_eclip_run
  sweepdir = tmp_path / "sweep"
  sweepdir.mkdir()
  entries = [{"name": "lr=0.001", "workdir": str(workdir), "overrides": {"optim.lr": 1e-3},
              "status": "done"},
             {"name": "lr=0.002", "workdir": str(other), "overrides": {"optim.lr": 2e-3},
              "status": "done"},
             {"name": "lr=0.004", "workdir": str(tmp_path / "never_started"),
              "overrides": {"optim.lr": 4e-3}, "status": "failed"}]
  (sweepdir / report.SWEEP_INDEX).write_text("".join(json.dumps(e) + "\n" for e in entries))
  report_file = report.write_sweep_report(
      sweepdir, ["eval/retrieval/i2t_r1", "train/loss", "eval/absent/metric"])
  text = report_file.read_text()
  assert "2 of 3 runs have metrics" in text
  ours = [r for r in metrics_lib.read_metrics(workdir) if "eval/retrieval/i2t_r1" in r][-1]
  assert f"| {other} | 6 | 0.2500 | 7.5000 |" in text
  assert f"| {workdir} | 6 | {ours['eval/retrieval/i2t_r1']:.4f} |" in text
  assert "eval/absent/metric" not in text  # no run has it: no column
  assert _embedded_images(report_file) == ["final_metrics.png", "loss_curves.png"]
  for name in _embedded_images(report_file):
    _check_png(sweepdir / "report" / name)


def test_report_binary_needs_a_run_or_a_sweep(tmp_path):
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top

  result = subprocess.run([sys.executable, "-m", "eclip_jax.report", f"--workdir={tmp_path}"],
                          capture_output=True, text=True, check=False)
  assert result.returncode != 0
  assert "has neither metrics.jsonl (a run) nor sweep.jsonl" in result.stderr
