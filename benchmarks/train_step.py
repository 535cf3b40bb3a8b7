r"""Our train step per config, against the PyTorch peer's, alternated in one run.

  python benchmarks/train_step.py [--config=clip.py:tiny --config=...] [--rounds=5]
      [--steps=N] [--peers=eager,compiled] [--devices=1] [--try='model.dtype=bfloat16' ...]

Configs (default: all three):
  clip.py:tiny   the demo's CLIP (ViT tiny /8 at 64 px, text tiny, batch 128)
  clip.py:s16    clip.py:s16's towers (ViT S/16, text S: 12 layers at width 384) at 128 px,
                 batch 32, float32, no remat (the peer keeps every activation too)
  eclip.py:tiny  the demo's ECLIP (two views, instance decoder; no PyTorch peer exists)
  clip.py:b16    for a GPU/TPU: clip.py:b16 as configured (bf16, scanned, remat) at 256
                 examples per chip (BENCHMARKS.md, "On an accelerator")
Any other `<file>.py:<arg>` of configs/ runs as its config says. A config that scans its
layers (s16, as every accelerator config, for compile time) also runs unscanned; on a GPU
every config also runs with cuDNN flash attention (`model.attention_impl="cudnn"`). Each
`--try=FIELD=VALUE[;FIELD=VALUE...]` adds a row per config with those fields changed,
timed in the same rounds (a config switch measured before/after in one run).

Per config and implementation: the steady-state step time (median over `--rounds` rounds
of `steps` steps, the implementations taking turns each round so that machine noise
spreads over all of them), examples/s, compile time (ours: lower + compile; torch.compile:
its first step), peak memory (ours: XLA's `memory_analysis()`: arguments + outputs +
temporaries - aliased), FLOPs per step (analytic: 3x the forward matmuls, the trainer's
MFU count; XLA: `cost_analysis()` of the compiled step), the achieved rate, MFU against the
peak this run measured (CPU: a 2048^3 f32 matmul; GPU/TPU: the chip's dense bf16 peak), and
on our rows `vs eager` / `vs compiled` = that peer's step time / ours (> 1: ours is faster).
The peer is transformers' CLIPModel at the same sizes (benchmarks/peer_clip_torch.py),
eager and torch.compile'd. XLA's count covers a scanned loop's body once, so it reads
~1/depth of the analytic count for scanned configs.
"""

from __future__ import annotations

import harness  # noqa: F401  (first: sets the device count before JAX starts)

import argparse  # noqa: E402
import ast  # noqa: E402
import importlib  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Mapping, Sequence  # noqa: E402
from typing import Any  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402

from configs import clip as clip_config  # noqa: E402
from configs import eclip as eclip_config  # noqa: E402

DEFAULT_CONFIGS = ("clip.py:tiny", "clip.py:s16", "eclip.py:tiny")
# Steps per round: a round of each config takes a few seconds.
STEPS_PER_ROUND = {"clip.py:tiny": 10, "clip.py:s16": 2, "eclip.py:tiny": 5}
# Dense bf16 peak FLOP/s per chip, by a prefix of `device_kind` (vendors' data sheets).
ACCELERATOR_PEAKS = {
    "NVIDIA H100": 989e12, "NVIDIA H200": 989e12, "NVIDIA A100": 312e12,
    "NVIDIA L4": 121e12, "TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5e": 197e12,
    "TPU v5p": 459e12, "TPU v6 lite": 918e12, "TPU v6e": 918e12,
}


def load_config(name: str) -> ml_collections.ConfigDict:
  """A benchmark config by name (module docstring)."""
  if name == "clip.py:s16":
    config = clip_config.get_config("s16")
    config.input.image_size, config.input.batch_size = 128, 32
    config.model.update(dtype="float32", remat_policy="none")
    return config
  if name == "eclip.py:tiny":
    return eclip_config.get_config("tiny")
  if name == "clip.py:b16":  # the accelerator check: bf16, scanned, 256 examples per chip
    config = clip_config.get_config("b16")
    config.input.batch_size = 256 * jax.device_count()
    return config
  module, _, arg = name.partition(":")
  return importlib.import_module(f"configs.{module.removesuffix('.py')}").get_config(arg)


def peak_flops_per_device(seconds: float = 2.0) -> tuple[float, str]:
  """(peak FLOP/s of one device, where it comes from)."""
  kind = jax.devices()[0].device_kind
  for prefix, peak in ACCELERATOR_PEAKS.items():
    if kind.startswith(prefix):
      return peak, f"{kind} bf16 data sheet"
  n = 2048
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  matmul = jax.jit(lambda x: x @ x).lower(a).compile()
  jax.block_until_ready(matmul(a))
  rates, deadline = [], time.perf_counter() + seconds
  while time.perf_counter() < deadline or len(rates) < 3:
    start = time.perf_counter()
    jax.block_until_ready(matmul(a))
    rates.append(2 * n**3 / (time.perf_counter() - start))
  return statistics.median(rates), f"{kind}: measured {n}^3 f32 matmul"


class Ours:
  """Our compiled train step on one config, with its static figures."""

  def __init__(self, config: ml_collections.ConfigDict, name: str = "eclip_jax"):
    self.name = name
    start = time.perf_counter()
    self._step, self._state, self._batch, setup = harness.compiled_step(config)
    self.compile_seconds = time.perf_counter() - start  # + the warmup step, which is small
    memory = self._step.memory_analysis()
    self.peak_bytes = (None if memory is None else
                       memory.argument_size_in_bytes + memory.output_size_in_bytes
                       + memory.temp_size_in_bytes - memory.alias_size_in_bytes)
    cost = self._step.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    self.xla_flops = float(cost.get("flops", 0.0)) if cost else None
    self.analytic_flops = setup.train_flops_per_example * config.input.batch_size
    self.num_params = sum(x.size for x in jax.tree.leaves(self._state.params))

  def step(self) -> None:
    self._state, metrics = self._step(self._state, self._batch)
    jax.block_until_ready(metrics)


PEER_NAMES = {"eager": "torch eager", "compiled": "torch.compile"}


class Peer:
  """transformers' CLIPModel at the config's sizes, eager or compiled."""

  def __init__(self, config: ml_collections.ConfigDict, compile: bool):
    import peer_clip_torch  # pylint: disable=g-import-not-at-top  (torch: a benchmark extra)
    self.name = PEER_NAMES["compiled" if compile else "eager"]
    self._step, model = peer_clip_torch.make_step(config, compile=compile)
    start = time.perf_counter()
    self._step()
    self.compile_seconds = time.perf_counter() - start
    self.num_params = peer_clip_torch.num_params(model)
    self.peak_bytes = self.xla_flops = None
    self.analytic_flops = None

  def step(self) -> None:
    self._step()


def has_peer(config: ml_collections.ConfigDict) -> bool:
  return config.model.name == "two_tower"


def parse_try(text: str) -> dict[str, Any]:
  """"model.dtype=bfloat16;model.remat_policy=full" -> {dotted field: value}; values are
  Python literals where they parse as one (2e-3, True, (0.9, 1.0)), strings otherwise."""
  fields = {}
  for assignment in text.split(";"):
    key, sep, value = assignment.partition("=")
    if not sep or not key:
      raise ValueError(f"--try={text!r}: write FIELD=VALUE[;FIELD=VALUE...]")
    try:
      fields[key.strip()] = ast.literal_eval(value.strip())
    except (ValueError, SyntaxError):
      fields[key.strip()] = value.strip()
  return fields


def with_fields(config: ml_collections.ConfigDict, fields: Mapping[str, Any]
                ) -> ml_collections.ConfigDict:
  """A copy of `config` with dotted `fields` set (a field the config lacks is an error)."""
  config = config.copy_and_resolve_references()
  for key, value in fields.items():
    *parents, leaf = key.split(".")
    node = config
    for parent in parents:
      node = node[parent]
    if leaf not in node:
      raise ValueError(f"--try: the config has no field {key!r}")
    node[leaf] = value
  return config


def our_variants(config: ml_collections.ConfigDict, tries: Sequence[str] = ()
                 ) -> dict[str, ml_collections.ConfigDict]:
  """Our implementations of a config: as it is; where it scans its layers (which
  accelerator configs do for compile time), also unscanned; on a GPU, also with cuDNN's
  flash attention (`model.attention_impl="cudnn"`); and one per `tries` entry (`--try`:
  the config with those fields changed)."""
  variants = {"eclip_jax": config}
  if config.model.get("scan_layers"):
    variants = {"eclip_jax scan": config,
                "eclip_jax no scan": with_fields(config, {"model.scan_layers": False})}
  if jax.default_backend() == "gpu" and config.model.get("attention_impl") == "xla":
    variants[f"{next(iter(variants))} cudnn"] = with_fields(
        config, {"model.attention_impl": "cudnn"})
  for text in tries:
    variants[f"eclip_jax {text}"] = with_fields(config, parse_try(text))
  return variants


def measure(configs: Mapping[str, ml_collections.ConfigDict], rounds: int, steps: int | None,
            peers: list[str], tries: Sequence[str] = ()) -> tuple[list[dict], float, str]:
  """(one row per config and implementation, peak FLOP/s, its source); `peers`: which
  PyTorch peers run beside ours ("eager", "compiled"); `tries`: field changes to time as
  well (`our_variants`). Our rows carry `vs_<peer>` = the peer's step time / ours (> 1:
  ours is faster)."""
  peak, peak_source = peak_flops_per_device()
  # A CPU's measured peak is already the whole host's (XLA:CPU's devices share its cores).
  peak_devices = 1 if jax.default_backend() == "cpu" else jax.device_count()
  rows = []
  for name, config in configs.items():
    ours = [Ours(variant, impl_name)
            for impl_name, variant in our_variants(config, tries).items()]
    others = [Peer(config, compile=kind == "compiled") for kind in peers] if has_peer(config) else []
    n = steps or STEPS_PER_ROUND.get(name, 5)
    times: dict[str, list[float]] = {impl.name: [] for impl in ours + others}
    for _ in range(rounds):
      for impl in ours + others:
        for _ in range(n):
          start = time.perf_counter()
          impl.step()
          times[impl.name].append(time.perf_counter() - start)
    median = {impl_name: statistics.median(t) for impl_name, t in times.items()}
    flops = ours[0].analytic_flops  # the same model: the same count for every row
    for impl in ours + others:
      seconds = median[impl.name]
      rows.append({
          "config": name, "impl": impl.name, "ms": 1e3 * seconds,
          "examples_per_s": config.input.batch_size / seconds,
          "compile_s": impl.compile_seconds, "params": impl.num_params,
          "peak_mib": None if impl.peak_bytes is None else impl.peak_bytes / 2**20,
          "gflop": flops / 1e9, "xla_gflop": None if impl.xla_flops is None else impl.xla_flops / 1e9,
          "gflop_per_s": flops / seconds / 1e9,
          "mfu": flops / seconds / (peak * peak_devices),
          **{f"vs_{kind}": (median[peer_name] / seconds if impl in ours and peer_name in median
                            else None) for kind, peer_name in PEER_NAMES.items()},
      })
  return rows, peak, peak_source


COLUMNS = [("config", "config", "{}"), ("impl", "impl", "{}"), ("ms", "ms/step", "{:.1f}"),
           ("examples_per_s", "ex/s", "{:.0f}"), ("compile_s", "compile s", "{:.1f}"),
           ("params", "params", "{:,}"), ("peak_mib", "peak MiB", "{:.0f}"),
           ("gflop", "GFLOP", "{:.2f}"), ("xla_gflop", "XLA GFLOP", "{:.2f}"),
           ("gflop_per_s", "GFLOP/s", "{:.0f}"), ("mfu", "MFU", "{:.1%}"),
           ("vs_eager", "vs eager", "{:.2f}"), ("vs_compiled", "vs compiled", "{:.2f}")]


def format_table(rows: list[dict]) -> str:
  return harness.format_table(rows, COLUMNS)


def main(argv: list[str] | None = None, print_fn: Callable[[str], None] = print):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--config", action="append")
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--steps", type=int, default=None, help="per round (default: per config)")
  parser.add_argument("--peers", default="eager,compiled",
                      help="the PyTorch peers to run: eager, compiled, both or none ('')")
  parser.add_argument("--devices", type=int, default=1)
  parser.add_argument("--try", dest="tries", action="append", default=[],
                      help="also time each config with FIELD=VALUE[;FIELD=VALUE...] set "
                           "(repeatable; e.g. 'model.dtype=bfloat16')")
  args = parser.parse_args(argv)
  names = args.config or list(DEFAULT_CONFIGS)
  peers = [kind for kind in args.peers.split(",") if kind]
  if set(peers) - {"eager", "compiled"}:
    parser.error(f"--peers={args.peers!r}: name eager and/or compiled")
  if peers and jax.default_backend() != "cpu":
    parser.error("the PyTorch peer is a CPU build (torch 2.13.0+cpu): pass --peers= on "
                 f"{jax.default_backend()}")
  rows, peak, source = measure({n: load_config(n) for n in names}, args.rounds, args.steps,
                               peers, args.tries)
  command = " ".join(["python benchmarks/train_step.py", *(f"--config={n}" for n in names),
                      f"--rounds={args.rounds}", *([f"--steps={args.steps}"] if args.steps else []),
                      f"--peers={args.peers}", f"--devices={args.devices}",
                      *(f"--try='{text}'" for text in args.tries)])
  print_fn(f"{command}\n\npeak {peak / 1e9:.0f} GFLOP/s per device ({source})\n")
  print_fn(format_table(rows))
  return rows


if __name__ == "__main__":
  main()
