r"""Final metrics of several runs as a markdown table with mean ± std (seeds, sweeps).

  python -m eclip_jax.summarize workdirs/clip_tiny_seed* \
      --metrics=eval/retrieval/i2t_r1,eval/retrieval/chance_r1,eval/zeroshot/top1

Each run contributes the last value of each metric in its `metrics.jsonl`. `--noaggregate`
drops the mean ± std row (to put different methods side by side, as `make demo` does).
`--reading` adds a line per run with a grounding evaluation, reading its pointing accuracy
against both references: "RUN finds the product in N% of photos vs center prior M% (box-area
chance K%)".

`--downstream` tabulates the downstream suite instead (each run's `downstream.json`, written
by `--mode=eval`): runs named alike but for a `_seedN` suffix form one group, a row per task
metric, a column per group and input (`--inputs`, default all three), mean ± std:

  python -m eclip_jax.summarize --downstream --inputs=image+text workdirs/e_clip_seed* \
      workdirs/clip_seed*
Arguments that are files, not directories (a glob catching `RUN.log` beside `RUN/`), are
skipped and named on stderr; a directory without `metrics.jsonl` is an error, and so is a
metric no run has (a misspelt key would otherwise be a silent column of "–").
"""

from __future__ import annotations

import datetime
import difflib
import json
import os
import statistics
import sys
from collections.abc import Mapping, Sequence

from absl import app, flags
from etils import epath

from eclip_jax import cli
from eclip_jax import metrics as metrics_lib

_METRICS = flags.DEFINE_list(
    "metrics", ["eval/retrieval/i2t_r1", "eval/retrieval/t2i_r1", "eval/zeroshot/top1"],
    "Metric keys to tabulate.")
_AGGREGATE = flags.DEFINE_bool("aggregate", True, "End with a mean ± std row over the runs.")
_READING = flags.DEFINE_bool("reading", False, "Read each run's pointing against its references.")
_DOWNSTREAM = flags.DEFINE_bool(
    "downstream", False, "Tabulate the runs' downstream.json (seed groups, mean ± std).")
_INPUTS = flags.DEFINE_list(
    "inputs", ["image", "text", "image+text"], "With --downstream: the inputs to show.")


def final_metrics(workdir: str) -> dict[str, float]:
  """The last logged value of every key of a run (the step included, as `step`)."""
  final = {}
  for row in metrics_lib.read_metrics(workdir):
    final.update({k: v for k, v in row.items() if v is not None})
  return final


def table(workdirs: Sequence[str], keys: Sequence[str], aggregate: bool = True) -> str:
  """One row per run, then (`aggregate`) `mean ± std` over the runs (sample std; n-1)."""
  return runs_table({workdir: final_metrics(workdir) for workdir in workdirs}, keys, aggregate)


def runs_table(runs: Mapping[str, Mapping[str, float]], keys: Sequence[str],
               aggregate: bool = True) -> str:
  """`table` of final metrics already at hand (run name -> metrics), e.g. from a record of
  runs whose workdirs are gone; a metric a run lacks is "–"."""
  _check_keys(keys, runs)
  lines = ["| run | step | " + " | ".join(keys) + " |", "|---|---|" + "---|" * len(keys)]
  for run, final in runs.items():
    values = " | ".join(f"{final[k]:.4f}" if k in final else "–" for k in keys)
    lines.append(f"| {run} | {final.get('step', '–')} | {values} |")
  if not aggregate:
    return "\n".join(lines)
  summary = []
  for key in keys:
    values = [final[key] for final in runs.values() if key in final]
    summary.append("{:.4f} ± {:.4f}".format(*mean_std(values)) if values else "–")
  lines.append(f"| mean ± std (n={len(runs)}) | | " + " | ".join(summary) + " |")
  return "\n".join(lines)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
  """Mean and sample standard deviation (n-1; 0 for a single value)."""
  return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def update_record(path: str, workdirs: Mapping[str, str], keys: Sequence[str],
                  world: str) -> dict[str, dict]:
  """Adds the final `keys` of runs (name -> finished workdir) to the JSON record at `path`
  and returns all its runs (name -> {"metrics", "measured", "source"}).

  A record keeps measurements that outlive their workdirs (commit it beside the tables drawn
  from it), so a study can span machines and sessions; a workdir present replaces its run's
  entry. One record holds runs on one `world` (e.g. "toyshop 2.0.0": the data's builder and
  version): runs on another world are not comparable, so adding to it is a one-line error.
  """
  record = {"world": world, "runs": {}}
  if os.path.isfile(path):
    with open(path) as f:
      record = json.load(f)
    if record["world"] != world:
      raise app.UsageError(f"{path} holds runs on {record['world']}, these are on {world}: "
                           "move it aside or record elsewhere")
  for name, workdir in workdirs.items():
    final = final_metrics(workdir)
    written = (epath.Path(workdir) / metrics_lib.METRICS_FILE).stat().mtime
    record["runs"][name] = {
        "metrics": {k: final[k] for k in ("step", *keys) if k in final},
        "measured": datetime.datetime.fromtimestamp(written, datetime.timezone.utc)
                    .strftime("%Y-%m-%d"),
        "source": f"workdir {workdir}",
    }
  record["runs"] = dict(sorted(record["runs"].items()))
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path + ".tmp", "w") as f:  # then renamed: never a half-written record
    json.dump(record, f, indent=1)
    f.write("\n")
  os.replace(path + ".tmp", path)
  return record["runs"]


def pointing_reading(workdir: str, name: str = "grounding") -> str | None:
  """One sentence reading evaluator `name`'s pointing against its two references, if any."""
  final = final_metrics(workdir)
  keys = [f"eval/{name}/{k}" for k in ("pointing_acc", "center_pointing", "chance_pointing")]
  if not all(k in final for k in keys):
    return None
  pointing, center, chance = (final[k] for k in keys)
  run = epath.Path(workdir).name
  return (f"{run} finds the product in {pointing:.0%} of photos vs center prior {center:.0%} "
          f"(box-area chance {chance:.0%})")


def _check_keys(keys: Sequence[str], runs: Mapping[str, Mapping[str, float]]) -> None:
  """Raises UsageError for a key that none of the runs logged."""
  logged = sorted({key for final in runs.values() for key in final} - {"step"})
  for key in keys:
    if key not in logged:
      close = difflib.get_close_matches(key, logged, n=1)
      hint = f"did you mean {close[0]}? " if close else ""
      raise app.UsageError(f"--metrics: no run logged {key!r}; {hint}they logged "
                           f"{', '.join(logged)}.")


def run_workdirs(paths: Sequence[str]) -> list[str]:
  """`paths` without the plain files among them (reported on stderr); every directory left
  must hold a `metrics.jsonl`."""
  files = [path for path in paths if epath.Path(path).is_file()]  # epath: gs:// works too
  if files:
    print(f"summarize: skipped {len(files)} files that are not run workdirs: "
          + " ".join(files), file=sys.stderr)
  workdirs = [path for path in paths if path not in files]
  for workdir in workdirs:
    if not (epath.Path(workdir) / metrics_lib.METRICS_FILE).is_file():
      raise app.UsageError(f"{workdir} is not a run workdir: it has no metrics.jsonl")
  if not workdirs:
    raise app.UsageError("name the run workdirs to summarize")
  return workdirs


def downstream_table(workdirs: Sequence[str], inputs: Sequence[str]) -> str:
  """The downstream suite of the runs, seeds grouped (`downstream.aggregate`)."""
  # Here, not at the top: the suite's module loads JAX and scikit-learn, which the metrics
  # tables (what `make demo` prints) do not need.
  from eclip_jax.evals import downstream  # pylint: disable=g-import-not-at-top

  unknown = [kind for kind in inputs if kind not in downstream.INPUTS]
  if unknown:
    raise app.UsageError(f"--inputs: {unknown} are not of {list(downstream.INPUTS)}")
  try:
    groups = downstream.aggregate(workdirs)
  except FileNotFoundError as error:
    raise app.UsageError(str(error)) from error
  seeds = ", ".join(f"{group} n={max(n for _, _, n in metrics.values())}"
                    for group, metrics in groups.items())
  return downstream.markdown_table(groups, inputs) + f"\nruns per group: {seeds}"


def main(argv):
  try:
    workdirs = run_workdirs(argv[1:])
    if _DOWNSTREAM.value:
      print(downstream_table(workdirs, _INPUTS.value))
      return
    print(table(workdirs, _METRICS.value, _AGGREGATE.value))
  except app.UsageError as error:
    cli.fail(error, cli.EXIT_USAGE)
  if _READING.value:
    readings = [pointing_reading(workdir) for workdir in workdirs]
    print("\n" + "\n".join(r for r in readings if r))


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
