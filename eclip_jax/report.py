r"""Run reports: `report.md` with PNG plots, for a run or a sweep, to attach to a discussion.

  python -m eclip_jax.report --workdir=workdirs/eclip_tiny        # -> workdirs/eclip_tiny/report/
  python -m eclip_jax.report --workdir=sweeps/clip_tiny_lr [--metrics=eval/retrieval/i2t_r1,...]

A run's report (a workdir with `metrics.jsonl`) plots, over steps: the total loss and each
loss term (`train/loss`, `train/<objective>/loss`), the other training scalars (accuracies, norms,
temperatures), the learning rate, throughput (`perf/*`), and each evaluator's metrics; it
tabulates the last value of every metric and shows the evaluators' pictures
(`WORKDIR/pictures/*.png`, e.g. ECLIP's instance-map grid) where the run has them.

A sweep's report (a directory with launch/sweep.py's `sweep.jsonl`) tabulates the chosen
metrics' final values per run (`--metrics`, as eclip_jax.summarize takes), draws them as
bars, and overlays the runs' loss curves.

Every plot is a `FIGURE_PIXELS` PNG. TensorBoard has the same scalars interactively.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence

from absl import app, flags
from etils import epath
from matplotlib import figure as figure_lib

from eclip_jax import metrics as metrics_lib
from eclip_jax import summarize

_WORKDIR = flags.DEFINE_string("workdir", None, "A run workdir or a sweep directory.")
_OUT = flags.DEFINE_string("out", None, "Where report.md and the PNGs go (default WORKDIR/report).")

REPORT_DIR = "report"
REPORT_FILE = "report.md"
SWEEP_INDEX = "sweep.jsonl"  # launch/sweep.py's index of a sweep's runs
DPI = 100
FIGURE_INCHES = (12.0, 8.0)
FIGURE_PIXELS = (int(FIGURE_INCHES[0] * DPI), int(FIGURE_INCHES[1] * DPI))
# Training scalars that have a figure of their own, or are counts rather than curves.
_OWN_FIGURE = ("train/lr",)
_COUNTS = ("train/skipped",)


# --------------------------------------------------------------------------------------------
# Figures.
# --------------------------------------------------------------------------------------------
def _series(rows: Sequence[Mapping[str, float]], key: str) -> tuple[list[int], list[float]]:
  points = [(row["step"], row[key]) for row in rows if row.get(key) is not None]
  return [s for s, _ in points], [v for _, v in points]


def _new_figure() -> figure_lib.Figure:
  # A bare Figure (no pyplot): no global state, no display needed, any backend.
  return figure_lib.Figure(figsize=FIGURE_INCHES, dpi=DPI, layout="constrained")


def overlay_figure(rows: Sequence[Mapping[str, float]], keys: Sequence[str],
                   title: str, strip: str = "") -> figure_lib.Figure:
  """One axes, a line per key over steps (markers: evaluations are few), labelled by the
  key without the prefix `strip`."""
  fig = _new_figure()
  axes = fig.add_subplot()
  for key in keys:
    steps, values = _series(rows, key)
    axes.plot(steps, values, marker="o", markersize=3, label=key.removeprefix(strip))
  axes.set(title=title, xlabel="step")
  axes.grid(alpha=0.3)
  axes.legend(fontsize="small")
  return fig


def panels_figure(rows: Sequence[Mapping[str, float]], keys: Sequence[str],
                  title: str) -> figure_lib.Figure:
  """Small multiples: a panel per key over steps (scalars of unlike scales), 4 per row."""
  fig = _new_figure()
  columns = min(4, len(keys))
  grid = fig.subplots(math.ceil(len(keys) / columns), columns, squeeze=False)
  for axes, key in zip(grid.flat, keys):
    steps, values = _series(rows, key)
    axes.plot(steps, values, marker="o", markersize=3)
    axes.set_title(key, fontsize="small")
    axes.grid(alpha=0.3)
  for axes in list(grid.flat)[len(keys):]:
    axes.set_visible(False)
  fig.suptitle(title)
  return fig


def run_figures(rows: Sequence[Mapping[str, float]]) -> dict[str, figure_lib.Figure]:
  """A run's figures from its `metrics.jsonl` rows: {file stem: figure} (see the module
  docstring); a group without any logged key has no figure."""
  keys = sorted({key for row in rows for key, value in row.items()
                 if key != "step" and value is not None})
  train = [k for k in keys if k.startswith("train/") and k not in _OWN_FIGURE
           and not k.startswith(_COUNTS)]
  losses = [k for k in train if k == "train/loss" or k.endswith("/loss")]
  figures = {}
  if losses:
    figures["losses"] = overlay_figure(rows, losses, "loss and its terms")
  if other := [k for k in train if k not in losses]:
    figures["training"] = panels_figure(rows, other, "training scalars")
  if "train/lr" in keys:
    figures["learning_rate"] = overlay_figure(rows, ["train/lr"], "learning rate")
  if perf := [k for k in keys if k.startswith("perf/")]:
    figures["throughput"] = panels_figure(rows, perf, "throughput")
  evaluators = sorted({k.split("/")[1] for k in keys if k.startswith("eval/")})
  for name in evaluators:
    # Counts (num_examples, ...) are not curves.
    curves = [k for k in keys if k.startswith(f"eval/{name}/")
              and not k.split("/")[-1].startswith("num_")]
    if curves:
      figures[f"eval_{name}"] = overlay_figure(rows, curves, f"evaluation: {name}",
                                               strip=f"eval/{name}/")
  return figures


def _save(fig: figure_lib.Figure, path: epath.Path) -> None:
  with path.open("wb") as f:
    fig.savefig(f, format="png", dpi=DPI)  # no bbox_inches="tight": every PNG keeps its size


# --------------------------------------------------------------------------------------------
# report.md.
# --------------------------------------------------------------------------------------------
def write_run_report(workdir: str | os.PathLike, out: str | os.PathLike | None = None
                     ) -> epath.Path:
  """Writes `report.md` and its PNGs for the run in `workdir`; returns the report file."""
  workdir = epath.Path(workdir)
  out = epath.Path(out) if out else workdir / REPORT_DIR
  out.mkdir(parents=True, exist_ok=True)
  rows = metrics_lib.read_metrics(workdir)
  final = summarize.final_metrics(workdir)
  lines = [f"# Run report: {workdir}", ""]
  config_file = workdir / "config.json"
  if config_file.exists():
    config = json.loads(config_file.read_text())
    model = config.get("model", {})
    lines += [f"- model `{model.get('name')}` (image `{model.get('image', {}).get('variant')}`, "
              f"text `{model.get('text', {}).get('variant')}`), objectives "
              f"{', '.join(f'`{k}` x{v}' for k, v in config.get('objectives', {}).items())}",
              f"- data `{config['input']['dataset']}`, global batch "
              f"{config['input']['batch_size']}, {config['total_steps']} steps scheduled", ""]
  lines += [f"Last logged step: {final.get('step', '–')}.", ""]

  figures = run_figures(rows)
  for stem, fig in figures.items():
    _save(fig, out / f"{stem}.png")
    lines += [f"## {stem.replace('_', ' ')}", "", f"![{stem}]({stem}.png)", ""]
  evals = {k: v for k, v in final.items() if k.startswith("eval/")}
  if evals:
    lines += ["## Final evaluation", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v:.4g} |" for k, v in sorted(evals.items())] + [""]
  pictures = sorted((workdir / "pictures").glob("*.png")) if (workdir / "pictures").exists() else []
  for picture in pictures:
    name = f"pictures_{picture.name}"
    (out / name).write_bytes(picture.read_bytes())
    lines += [f"## Pictures: {picture.stem}", "",
              "Per record: the photo with its box (green) | the model's map over it with the "
              "predicted box (red).", "", f"![{picture.stem}]({name})", ""]
  report = out / REPORT_FILE
  report.write_text("\n".join(lines))
  return report


def write_sweep_report(sweepdir: str | os.PathLike, metrics: Sequence[str],
                       out: str | os.PathLike | None = None) -> epath.Path:
  """Writes `report.md` and its PNGs comparing the runs of the sweep in `sweepdir`."""
  sweepdir = epath.Path(sweepdir)
  out = epath.Path(out) if out else sweepdir / REPORT_DIR
  out.mkdir(parents=True, exist_ok=True)
  entries = [json.loads(line) for line in (sweepdir / SWEEP_INDEX).read_text().splitlines()
             if line]
  runs = {entry["name"]: entry["workdir"] for entry in entries
          if (epath.Path(entry["workdir"]) / metrics_lib.METRICS_FILE).exists()}
  if not runs:
    raise app.UsageError(f"no run of {sweepdir} has written metrics.jsonl yet")
  finals = {name: summarize.final_metrics(workdir) for name, workdir in runs.items()}
  shown = [m for m in metrics if any(m in final for final in finals.values())]
  lines = [f"# Sweep report: {sweepdir}", "", f"{len(runs)} of {len(entries)} runs have "
           "metrics. Final values:", "", summarize.table(list(runs.values()), shown), ""]

  fig = _new_figure()
  grid = fig.subplots(1, max(1, len(shown)), squeeze=False)[0]
  for axes, metric in zip(grid, shown):
    names = [name for name in runs if metric in finals[name]]
    axes.barh(names, [finals[name][metric] for name in names])
    axes.set_title(metric, fontsize="small")
    axes.tick_params(labelsize="x-small")
  fig.suptitle("final metrics per run")
  _save(fig, out / "final_metrics.png")
  lines += ["![final metrics](final_metrics.png)", ""]

  fig = _new_figure()
  axes = fig.add_subplot()
  for name, workdir in runs.items():
    axes.plot(*_series(metrics_lib.read_metrics(workdir), "train/loss"), label=name)
  axes.set(title="train/loss", xlabel="step")
  axes.grid(alpha=0.3)
  axes.legend(fontsize="x-small")
  _save(fig, out / "loss_curves.png")
  lines += ["![loss curves](loss_curves.png)", ""]
  report = out / REPORT_FILE
  report.write_text("\n".join(lines))
  return report


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not _WORKDIR.value:
    raise app.UsageError("--workdir names the run workdir or sweep directory to report on")
  workdir = epath.Path(_WORKDIR.value)
  if (workdir / SWEEP_INDEX).exists():
    report = write_sweep_report(workdir, flags.FLAGS.metrics, _OUT.value)
  elif (workdir / metrics_lib.METRICS_FILE).exists():
    report = write_run_report(workdir, _OUT.value)
  else:
    raise app.UsageError(f"{workdir} has neither metrics.jsonl (a run) nor {SWEEP_INDEX} "
                         "(a sweep)")
  print(f"wrote {report}")


if __name__ == "__main__":
  app.run(main)
