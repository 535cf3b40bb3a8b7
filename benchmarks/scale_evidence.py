r"""SCALE's evidence on the demo preset: the modality ablation (with the released code's task
weighting and without any), missing modalities and self-harmonization,
`configs/scale.py:tiny`, several seeds.

  python benchmarks/scale_evidence.py [--arms=five,harmonize_off,...] [--seeds=0,1,2] \
      [--data_dir=data] [--root=workdirs/scale_evidence] [--record=results/scale_runs.json] \
      [--summarize_only] [-- extra flags for every run]

It builds `toyshop/medium_light` (reused when built), then trains each arm (`ARMS`: a
`configs/scale.py:tiny,...` argument) once per seed into `ROOT/{arm}_seed{seed}`, seed by
seed (every arm at seed 0 first), each run ending with the M5Product protocol on the
validation split; a run that `--record` holds, or whose workdir holds its final evaluation,
is skipped and an interrupted one resumes from its checkpoint, so the command can be stopped
and run again, on another machine too (on 2 cores a run with all five modalities takes ~14
minutes, fewer with fewer). Each run's figures go into `--record` as it finishes (commit it:
`study.py`, `summarize.update_record`), and the tables are drawn from the record, so they
survive the workdirs: `TABLES` (arm rows, mean ± std over the recorded seeds of coarse
mAP@1/@5, fine mAP@1, probe accuracy and NMI) and `DIAGNOSTICS` (what the weighting did).
`--summarize_only` skips training.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys

import study

from eclip_jax import summarize
from eclip_jax.objectives import scale as scale_objectives

DATASET = "toyshop/medium_light"  # scale.py:tiny's, the demo preset
# arm -> the configs/scale.py argument after "tiny" (what changes against `five`: all five
# modalities, the released code's harmonization, every training item complete).
ARMS = {
    "five": "",
    "harmonize_off": "harmonize=off",
    "harmonize_learned": "harmonize=learned",
    "text": "modalities=text",
    "text+image": "modalities=text+image",
    "text+image+table": "modalities=text+image+table",
    "text+image+table+video": "modalities=text+image+table+video",
    "missing0.3": "missing=0.3",
    "missing0.3_complete_only": "missing=0.3,complete_only",
}
# The ablation again without any task weighting: the released code's weights go negative
# for pairs whose embeddings disagree (RESULTS.md), which confounds what a modality adds.
_ABLATION = ("text", "text+image", "text+image+table", "text+image+table+video")
ARMS.update({f"{arm}_off": f"{ARMS[arm]},harmonize=off" for arm in _ABLATION})
TABLES = {
    ("The ablation: one modality added per row (the publication's order; the released "
     "code's weighting)"):
        (*_ABLATION, "five"),
    "The same ablation without task weighting (`harmonize=off` on every row)":
        (*(f"{arm}_off" for arm in _ABLATION), "harmonize_off"),
    "30% of the training items missing a random subset of their modalities":
        ("five", "missing0.3", "missing0.3_complete_only"),
    "Self-harmonization: the released code's, the paper's learned S, none":
        ("five", "harmonize_learned", "harmonize_off"),
}
METRICS = {"coarse mAP@1": "eval/m5product/coarse/map1",
           "coarse mAP@5": "eval/m5product/coarse/map5",
           "fine mAP@1": "eval/m5product/fine/map1",
           "probe acc": "eval/m5product/probe_acc",
           "NMI": "eval/m5product/nmi"}
# What the tasks' weighting did, from the last training log: per modality pair the weight
# of its NT-Xent, its in-batch accuracy and loss; per masked term its weight (each averaged
# over the pairs / terms a run has). "off" logs no weights: every task has weight 1.
_PAIRS = ["_".join(pair) for pair in itertools.combinations(scale_objectives.MODALITIES, 2)]
DIAGNOSTICS = {
    "pair weight": [f"train/scale_contrastive/weight_{pair}" for pair in _PAIRS],
    "pair accuracy": [f"train/scale_contrastive/acc_{pair}" for pair in _PAIRS],
    "pair loss": [f"train/scale_contrastive/loss_{pair}" for pair in _PAIRS],
    "masked weight": [f"train/scale_masked/weight_{term}"
                      for term in scale_objectives.MASKED_TERMS],
}
# Also recorded, not tabulated: the finer Prec@K / mAP@10 and purity, and the training loss.
RECORDED = (*METRICS.values(), "eval/m5product/coarse/map10", "eval/m5product/coarse/prec1",
            "eval/m5product/coarse/prec5", "eval/m5product/fine/map5",
            "eval/m5product/fine/prec1", "eval/m5product/purity", "train/loss",
            *itertools.chain(*DIAGNOSTICS.values()))
FINAL = METRICS["NMI"]  # the protocol's last figure: a run holding it has finished


def _finished(workdir: str) -> bool:
  return study.finished(workdir, FINAL)


def _config(arm: str) -> str:
  return "configs/scale.py:" + ",".join(filter(None, ("tiny", ARMS[arm])))


def train(args, extra: list[str]) -> None:
  study.run([sys.executable, "-m", "eclip_jax.data.prepare", f"--dataset={DATASET}",
        f"--data_dir={args.data_dir}"])
  for seed in args.seeds:  # seed-major: a stopped command leaves every arm at the same seeds
    for arm in args.arms:
      workdir = os.path.join(args.root, f"{arm}_seed{seed}")
      study.train_and_record(
          f"{arm}_seed{seed}", workdir,
          [sys.executable, "-m", "eclip_jax.main", f"--config={_config(arm)}",
           f"--workdir={workdir}", f"--config.input.dataset={DATASET}",
           f"--config.input.data_dir={args.data_dir}", f"--config.seed={seed}", *extra],
          FINAL, args.record, RECORDED)


def update_record(args) -> dict[str, dict]:
  """Records every finished requested run; returns the record's runs."""
  finished = {f"{arm}_seed{seed}": os.path.join(args.root, f"{arm}_seed{seed}")
              for arm in args.arms for seed in args.seeds}
  finished = {name: workdir for name, workdir in finished.items() if _finished(workdir)}
  return study.record(args.record, finished, RECORDED)


def arm_table(arms, seeds, recorded: dict[str, dict],
              columns: dict[str, str | list[str]] = METRICS) -> str:
  """One row per arm: each column's mean ± std over the arm's recorded seeds that logged
  it (`seeds` counts those that logged any). A column is a metric, or a list of metrics
  whose mean over those a run has is the run's value."""
  columns = {name: [keys] if isinstance(keys, str) else keys for name, keys in columns.items()}
  lines = ["| arm | seeds | " + " | ".join(columns) + " |", "|---|---|" + "---|" * len(columns)]
  for arm in arms:
    runs = [recorded[f"{arm}_seed{s}"]["metrics"] for s in seeds if f"{arm}_seed{s}" in recorded]
    runs = [run for run in runs if any(k in run for keys in columns.values() for k in keys)]
    cells = []
    for keys in columns.values():
      values = [sum(run[k] for k in keys if k in run) / sum(k in run for k in keys)
                for run in runs if any(k in run for k in keys)]
      cells.append("{:.4f} ± {:.4f}".format(*summarize.mean_std(values)) if values else "–")
    lines.append(f"| {arm} | {len(runs)} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def main():
  argv, extra = study.split_argv(sys.argv[1:])
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--arms", default=",".join(ARMS))
  parser.add_argument("--seeds", default="0,1,2")
  parser.add_argument("--data_dir", default="data")
  parser.add_argument("--root", default="workdirs/scale_evidence")
  parser.add_argument("--record", default="results/scale_runs.json")
  parser.add_argument("--summarize_only", action="store_true")
  args = parser.parse_args(argv)
  args.arms, args.seeds = args.arms.split(","), [int(s) for s in args.seeds.split(",")]
  unknown = sorted(set(args.arms) - set(ARMS))
  if unknown:
    sys.exit(f"--arms: {unknown} are not of {list(ARMS)}")
  if not args.summarize_only:
    train(args, extra)
  recorded = update_record(args)
  for title, arms in TABLES.items():
    print(f"\n### {title}\n")
    print(arm_table(arms, args.seeds, recorded))
  print("\n### What the weighting did (last training log; means over each run's pairs / terms)\n")
  print(arm_table(list(ARMS), args.seeds, recorded, DIAGNOSTICS))
  print("\n" + " ".join(["python"] + sys.argv))


if __name__ == "__main__":
  main()
