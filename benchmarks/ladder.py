r"""The claim as a curve: CLIP vs ECLIP tiny at every clutter level of toyshop, several seeds.

  python benchmarks/ladder.py [--size=medium] [--levels=clean,light,cluttered,lifestyle] \
      [--seeds=0,1,2] [--methods=clip,eclip] [--data_dir=data] [--root=workdirs/ladder] \
      [--plot=ladder.png] [--summarize_only] [-- extra flags for every run]

It builds `toyshop/{size}_{level}` for every level (reused when built), then trains and
evaluates `configs/{method}.py:tiny` on each once per seed into `ROOT/{size}_{level}/
{method}_seed{seed}`, one run after another, seed by seed (every level at seed 0 first); a
run that `--record` holds, or whose workdir already holds its final evaluation, is skipped,
and an interrupted one resumes from its checkpoint, so the command can be stopped and run
again. Then it prints
one table per level (its runs' final figures), the ladder table (mean ± std over the seeds
of image-only product mAP@10 and pointing accuracy per method, with the box-area chance
and center prior of the same test photos) and draws it into `--plot`: x the clutter level,
y product mAP@10 (log scale) and pointing accuracy, both methods, mean ± std, with the two
pointing references.
`--summarize_only` skips training and tabulates what the record and `--root` hold.

Every run's final figures go into `--record` as it finishes (JSON, `results/ladder_runs.json`
in the repository: commit it), and the tables and the plot are drawn from the record, so
they survive their workdirs: a machine that lost them, or a later session adding seeds,
keeps every earlier measurement with its date and source. A workdir present overwrites its
run's entry.
"""

from __future__ import annotations

import argparse
import os
import sys

import study

from eclip_jax import summarize

LEVEL_METRICS = ("eval/retrieval/i2t_r10", "eval/zeroshot/top1", "eval/product_retrieval/map10",
                 "eval/product_retrieval/r1", "eval/grounding/pointing_acc",
                 "eval/grounding/chance_pointing", "eval/grounding/center_pointing")
MAP10, POINTING = "eval/product_retrieval/map10", "eval/grounding/pointing_acc"
REFERENCES = ("eval/grounding/chance_pointing", "eval/grounding/center_pointing")


def _finished(workdir: str) -> bool:
  return study.finished(workdir, POINTING)


def train(args, extra: list[str]) -> None:
  for level in args.levels:
    study.run([sys.executable, "-m", "eclip_jax.data.prepare",
          f"--dataset=toyshop/{args.size}_{level}", f"--data_dir={args.data_dir}"])
  # Seed-major, so that a stopped command leaves every level measured at the same seeds.
  for seed in args.seeds:
    for level in args.levels:
      dataset = f"toyshop/{args.size}_{level}"
      for method in args.methods:
        name = _run_name(args.size, level, method, seed)
        workdir = os.path.join(args.root, name)
        study.train_and_record(
            name, workdir,
            [sys.executable, "-m", "eclip_jax.main", f"--config=configs/{method}.py:tiny",
             f"--workdir={workdir}", f"--config.input.dataset={dataset}",
             f"--config.input.data_dir={args.data_dir}", f"--config.seed={seed}",
             "--config.eval_every_steps=0", *extra],
            POINTING, args.record, LEVEL_METRICS)


def _run_name(size: str, level: str, method: str, seed: int) -> str:
  return f"{size}_{level}/{method}_seed{seed}"


def update_record(args) -> dict[str, dict]:
  """Writes every finished requested run's final figures into the record at `args.record`;
  returns its runs (`summarize.update_record`)."""
  finished = {}
  for level in args.levels:
    for method in args.methods:
      for seed in args.seeds:
        name = _run_name(args.size, level, method, seed)
        if _finished(os.path.join(args.root, name)):
          finished[name] = os.path.join(args.root, name)
  return study.record(args.record, finished, LEVEL_METRICS)


def ladder(args, recorded: dict[str, dict]):
  """level -> method (and "references") -> metric -> (mean, std, n) over recorded seeds."""
  rows = {}
  for level in args.levels:
    named, by_method = {}, {}  # run name -> metrics; method -> the metrics of its seeds
    for method in args.methods:
      for seed in args.seeds:
        name = _run_name(args.size, level, method, seed)
        if name in recorded:
          named[name] = recorded[name]["metrics"]
          by_method.setdefault(method, []).append(named[name])
    if not named:
      continue
    print(f"\n### toyshop/{args.size}_{level}\n")
    logged = [k for k in LEVEL_METRICS if any(k in final for final in named.values())]
    print(summarize.runs_table(named, logged, aggregate=False))
    rows[level] = {method: {k: (*summarize.mean_std([f[k] for f in finals]), len(finals))
                            for k in (MAP10, POINTING)}
                   for method, finals in by_method.items()}
    # The references depend on the test photos only: the same in every run of the level
    # (runs recorded without them, transcribed from a table that rounded them, do not count).
    rows[level]["references"] = {}
    for key in REFERENCES:
      values = [f[key] for f in named.values() if key in f]
      mean_std = summarize.mean_std(values) if values else (float("nan"), 0.0)
      rows[level]["references"][key] = (*mean_std, len(values))
  return rows


def ladder_table(rows, methods) -> str:
  header = ["level"] + [f"{m} {name}" for name in ("product mAP@10", "pointing")
                        for m in methods] + ["chance pointing", "center prior"]
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for level, row in rows.items():
    cells = [level]
    for key in (MAP10, POINTING):
      for method in methods:
        mean, std, n = row.get(method, {}).get(key, (float("nan"), 0.0, 0))
        cells.append(f"{mean:.4f} ± {std:.4f} (n={n})" if n else "–")
    cells += [f"{row['references'][k][0]:.3f}" if row["references"][k][2] else "–"
              for k in REFERENCES]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def plot(rows, methods, path: str) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top

  levels = list(rows)
  x = list(range(len(levels)))
  figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
  # mAP@10 on a log axis: it spans 0.001 (lifestyle) to 0.9 (clean), and the ratio between
  # the methods is the reading.
  for axis, key, title in ((left, MAP10, "image-only product mAP@10 (log scale)"),
                           (right, POINTING, "pointing accuracy")):
    for method in methods:
      points = [(i, *rows[level][method][key][:2]) for i, level in enumerate(levels)
                if method in rows[level]]
      if points:
        xs, means, stds = zip(*points)
        axis.errorbar(xs, means, yerr=stds, marker="o", capsize=4, label=method.upper())
    axis.set_title(title)
    axis.set_xticks(x, levels)
    axis.set_xlabel("clutter level")
    if key == POINTING:
      axis.set_ylim(bottom=0)
    else:
      axis.set_yscale("log")
    axis.grid(alpha=0.3)
  for key, style, label in ((REFERENCES[0], ":", "box-area chance"),
                            (REFERENCES[1], "--", "center prior")):
    right.plot(x, [rows[level]["references"][key][0] for level in levels], style, color="gray",
               marker="_", markersize=24, label=label)
  left.legend()
  right.legend()
  figure.tight_layout()
  figure.savefig(path, dpi=110)
  print(f"\nwrote {path}")


def main():
  argv, extra = study.split_argv(sys.argv[1:])
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--size", default="medium")
  parser.add_argument("--levels", default="clean,light,cluttered,lifestyle")
  parser.add_argument("--seeds", default="0,1,2")
  parser.add_argument("--methods", default="clip,eclip")
  parser.add_argument("--data_dir", default="data")
  parser.add_argument("--root", default="workdirs/ladder")
  parser.add_argument("--plot", default="ladder.png")
  parser.add_argument("--record", default="results/ladder_runs.json")
  parser.add_argument("--summarize_only", action="store_true")
  args = parser.parse_args(argv)
  args.levels, args.methods = args.levels.split(","), args.methods.split(",")
  args.seeds = [int(s) for s in args.seeds.split(",")]
  if not args.summarize_only:
    train(args, extra)
  rows = ladder(args, update_record(args))
  if not rows:
    sys.exit("no finished runs to summarize")
  print("\n### The ladder (mean ± std over seeds)\n")
  print(ladder_table(rows, args.methods))
  plot(rows, args.methods, args.plot)
  print("\n" + " ".join(["python"] + sys.argv))


if __name__ == "__main__":
  main()
