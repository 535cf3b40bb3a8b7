r"""Where a train step's time goes: XLA's per-op times from a `jax.profiler` trace, attributed
to the model's modules, and how many cores the step keeps busy.

  python benchmarks/profile_step.py [--config=clip.py:tiny] [--steps=5] [--top=12]
      [--trace_dir=/tmp/profile_step] [--devices=1] [--set='model.scan_layers=False']

`--set` changes config fields as train_step.py's `--try` does. It compiles the config's
real train step (benchmarks/harness.py), traces `--steps` steps,
reads the trace back (`jax.profiler.ProfileData`) and joins every XLA op event with the
compiled HLO's `op_name` metadata, which names the JAX code that emitted the op. Tables:

  by module      per step, op time summed over threads, forward vs backward (`transpose(`
                 in the op name), grouped by the first three levels of the module path
  by op kind     fusion kinds (`ynn_fusion`: XLA:CPU's YNNPACK dot fusions; `*_fusion`: loop
                 fusions named by their ops; `copy`/`transpose`: layout changes)
  top ops        the single most expensive ops with their HLO shapes and JAX source
  parallelism    the share of the traced span with 0, 1, 2, ... ops running at once, i.e.
                 how well the step uses the machine's cores (on CPU)

On CPU the trace has one line per XLA:CPU worker thread; on GPU/TPU the same join works on
the device planes, though their op names carry less of the source.
"""

from __future__ import annotations

import harness  # noqa: F401  (first: sets the device count before JAX starts)

import argparse  # noqa: E402
import collections  # noqa: E402
import pathlib  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
from collections.abc import Callable  # noqa: E402

import jax  # noqa: E402

import train_step  # noqa: E402

# Trace events that are the runtime's own bookkeeping, not ops.
_RUNTIME_EVENTS = ("ThunkExecutor", "ThreadpoolListener", "end:", "SlinkyThreadPool")
_HLO_OP = re.compile(r"%([\w.\-]+) = (\S+) [^\n]*?op_name=\"([^\"]*)\"")


def hlo_ops(hlo_text: str) -> dict[str, tuple[str, str]]:
  """HLO instruction name -> (its shape, the op_name of the JAX code that emitted it)."""
  return {m.group(1): (m.group(2), m.group(3)) for m in _HLO_OP.finditer(hlo_text)}


def module_of(op_name: str, depth: int = 3) -> str:
  """'fwd'/'bwd' and the first `depth` levels of the module path of a JAX op_name such as
  'jit(train_step)/transpose(jvp(TwoTower))/TwoTower.encode_towers/image_tower/encoder/...'
  (path elements with parentheses are transformations, not modules)."""
  backward = "transpose(" in op_name
  parts = [p for p in op_name.split("/")[1:] if p and "(" not in p]
  return f"{'bwd' if backward else 'fwd'} {'/'.join(parts[:depth]) or '(top level)'}"


def op_kind(name: str) -> str:
  return re.sub(r"\.\d+$", "", name)


def op_events(trace_file: str) -> list[tuple[int, int, str]]:
  """(start ns, end ns, op name) of every XLA op event in a trace."""
  data = jax.profiler.ProfileData.from_file(trace_file)
  events = []
  for plane in data.planes:
    for line in plane.lines:
      if line.name == "python":
        continue
      for event in line.events:
        if not event.name.startswith(_RUNTIME_EVENTS):
          events.append((event.start_ns, event.start_ns + event.duration_ns, event.name))
  return events


def concurrency(events: list[tuple[int, int, str]]) -> dict[int, float]:
  """The share of the events' span with k of them running at once, for each k."""
  if not events:
    return {}
  edges = sorted([(start, 1) for start, _, _ in events] + [(end, -1) for _, end, _ in events])
  shares, running, last = collections.Counter(), 0, edges[0][0]
  for time_ns, change in edges:
    shares[running] += time_ns - last
    running, last = running + change, time_ns
  span = edges[-1][0] - edges[0][0]
  return {k: v / span for k, v in sorted(shares.items())}


def profile(config, steps: int, trace_dir: str) -> dict:
  """Traces `steps` compiled train steps of `config`; returns the aggregated tables."""
  step, state, batch, _ = harness.compiled_step(config)
  shutil.rmtree(trace_dir, ignore_errors=True)
  with jax.profiler.trace(trace_dir):
    for _ in range(steps):
      state, metrics = step(state, batch)
      jax.block_until_ready(metrics)
  trace_file = str(max(pathlib.Path(trace_dir).rglob("*.xplane.pb"), key=lambda p: p.stat().st_mtime))
  ops = hlo_ops(step.as_text())
  events = [e for e in op_events(trace_file) if e[2] in ops]
  by_module, by_kind, by_op = collections.Counter(), collections.Counter(), collections.Counter()
  for start, end, name in events:
    ms = (end - start) / 1e6 / steps
    by_module[module_of(ops[name][1])] += ms
    by_kind[op_kind(name)] += ms
    by_op[name] += ms
  span_ms = (max(e[1] for e in events) - min(e[0] for e in events)) / 1e6 / steps if events else 0
  return {"by_module": by_module, "by_kind": by_kind, "by_op": by_op, "ops": ops,
          "span_ms": span_ms, "concurrency": concurrency(events),
          "op_ms": sum(by_op.values())}


def report(result: dict, top: int) -> str:
  lines = [f"traced step span {result['span_ms']:.1f} ms; op time summed over threads "
           f"{result['op_ms']:.1f} ms/step", "", "ms/step | by module"]
  lines += [f"{ms:7.2f} | {name}" for name, ms in result["by_module"].most_common(top)]
  lines += ["", "ms/step | by op kind"]
  lines += [f"{ms:7.2f} | {name}" for name, ms in result["by_kind"].most_common(top)]
  lines += ["", "ms/step | top ops | shape | JAX source"]
  for name, ms in result["by_op"].most_common(top):
    shape, source = result["ops"][name]
    lines.append(f"{ms:7.2f} | {name} | {shape} | ...{source[-70:]}")
  lines += ["", "ops running at once | share of the step span"]
  lines += [f"{k:19d} | {share:.0%}" for k, share in result["concurrency"].items()]
  return "\n".join(lines)


def main(argv: list[str] | None = None, print_fn: Callable[[str], None] = print) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--config", default="clip.py:tiny")
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--top", type=int, default=12)
  parser.add_argument("--trace_dir", default="/tmp/profile_step")
  parser.add_argument("--devices", type=int, default=1)
  parser.add_argument("--set", dest="fields", default="",
                      help="FIELD=VALUE[;FIELD=VALUE...]: config fields to change")
  args = parser.parse_args(argv)
  config = train_step.load_config(args.config)
  if args.fields:
    config = train_step.with_fields(config, train_step.parse_try(args.fields))
  result = profile(config, args.steps, args.trace_dir)
  print_fn(f"python benchmarks/profile_step.py --config={args.config} --steps={args.steps} "
           f"--top={args.top} --devices={args.devices}"
           + (f" --set='{args.fields}'" if args.fields else "") + "\n")
  print_fn(report(result, args.top))
  return result


if __name__ == "__main__":
  main()
