r"""Per-device memory and step time of the contrastive loss + gradient, per implementation.

  python benchmarks/contrastive_memory.py [--batches=4096,16384,65536,262144,1048576]
      [--impls=gather,ring,tiled] [--kind=softmax] [--dim=512] [--run_max_batch=16384]

On a simulated 8-device CPU mesh (data=8) and for each global batch and `impl`, it compiles
`jax.jit(jax.value_and_grad(contrastive_loss, argnums=(x, y, logit_scale)))` for [B, dim]
embeddings and reports the compiled program's per-device temporary memory
(`memory_analysis().temp_size_in_bytes`: everything but the inputs and outputs). The
compiled figure is exact and costs nothing to get, so it is reported for every size; the
step is also run and timed (median of `--repeats` after a warmup) where the global batch is at
most `--run_max_batch`, beyond which the b×B impl would not fit this machine's memory and a
step takes minutes on 2 cores. `vs gather` is the time ratio to "gather" in the same run.
Finally a least-squares fit of log(temp) on log(per-device batch) gives each impl's growth
exponent over the batches measured.
"""

from __future__ import annotations

import os

# 8 simulated devices; must be set before JAX is imported.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse  # noqa: E402
import functools  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

from eclip_jax import parallel  # noqa: E402
from eclip_jax.objectives import contrastive  # noqa: E402


def compile_loss_and_grad(mesh, impl, kind, tile, batch, dim, dtype):
  """The compiled loss + gradient for abstract [batch, dim] inputs sharded like a batch."""
  loss_fn = functools.partial(
      contrastive.contrastive_loss, kind=kind, impl=impl, mesh=mesh, tile=tile)
  step = jax.jit(jax.value_and_grad(loss_fn, argnums=(0, 1, 2)))
  rows, replicated = parallel.batch_sharding(mesh), NamedSharding(mesh, P())
  embeddings = jax.ShapeDtypeStruct((batch, dim), dtype, sharding=rows)
  scalar = jax.ShapeDtypeStruct((), jnp.float32, sharding=replicated)
  bias = scalar if kind == "sigmoid" else None
  return step.lower(embeddings, embeddings, scalar, bias).compile()


def step_milliseconds(compiled, mesh, kind, batch, dim, dtype, warmup, repeats):
  """Median wall time of one loss + gradient step on random unit-norm embeddings."""
  rng = np.random.default_rng(0)
  x, y = rng.normal(size=(2, batch, dim)).astype(np.float32)
  y = x + 0.8 * y  # matching pairs score higher, as in training
  rows = parallel.batch_sharding(mesh)
  x, y = (jax.device_put((a / np.linalg.norm(a, axis=1, keepdims=True)).astype(dtype), rows)
          for a in (x, y))
  replicated = parallel.replicated(mesh)
  scale = jax.device_put(jnp.float32(10.0), replicated)
  bias = jax.device_put(jnp.float32(-10.0), replicated) if kind == "sigmoid" else None
  times = []
  for i in range(warmup + repeats):
    start = time.perf_counter()
    jax.block_until_ready(compiled(x, y, scale, bias))
    if i >= warmup:
      times.append(1e3 * (time.perf_counter() - start))
  return statistics.median(times)


def growth_exponent(per_device_batches, temps) -> float:
  """Slope of log(temp) against log(per-device batch), least squares."""
  return float(np.polyfit(np.log(per_device_batches), np.log(temps), 1)[0])


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batches", default="4096,16384,65536,262144,1048576",
                      help="global batch sizes")
  parser.add_argument("--impls", default=",".join(contrastive.IMPLS))
  parser.add_argument("--kind", default="softmax", choices=contrastive.KINDS)
  parser.add_argument("--dim", type=int, default=512)
  parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  parser.add_argument("--tile", type=int, default=None,
                      help=f"impl=tiled rows per tile (default {contrastive.DEFAULT_TILE})")
  parser.add_argument("--run_max_batch", type=int, default=16384,
                      help="time steps only up to this global batch (compile-only above)")
  parser.add_argument("--warmup", type=int, default=1)
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args()

  mesh = parallel.make_mesh({"data": 8})
  dtype = jnp.dtype(args.dtype)
  impls = args.impls.split(",")
  results = {}  # (batch, impl) -> (temp MiB, ms or None)
  for batch in map(int, args.batches.split(",")):
    for impl in impls:
      compiled = compile_loss_and_grad(mesh, impl, args.kind, args.tile, batch, args.dim, dtype)
      temp = compiled.memory_analysis().temp_size_in_bytes / 2**20
      ms = None
      if batch <= args.run_max_batch:
        ms = step_milliseconds(compiled, mesh, args.kind, batch, args.dim, dtype,
                               args.warmup, args.repeats)
      results[batch, impl] = temp, ms
      print(f"  {batch} {impl}: {temp:.1f} MiB" + ("" if ms is None else f", {ms:.0f} ms"),
            file=sys.stderr, flush=True)

  num_devices = len(mesh.devices.flat)
  print(f"\n{'global B':>9} | {'per device':>10} | {'impl':<6} | {'temp MiB':>10} | "
        f"{'ms':>8} | {'vs gather':>9}")
  print("-" * 68)
  for (batch, impl), (temp, ms) in results.items():
    gather_ms = results.get((batch, "gather"), (None, None))[1]
    ratio = f"{ms / gather_ms:9.2f}" if ms is not None and gather_ms else f"{'':>9}"
    print(f"{batch:>9} | {batch // num_devices:>10} | {impl:<6} | {temp:>10.1f} | "
          f"{'' if ms is None else f'{ms:.0f}':>8} | {ratio}")
  print("\ngrowth of temp memory with the per-device batch b (fitted exponent):")
  for impl in impls:
    batches = [batch for batch, name in results if name == impl]
    temps = [results[batch, impl][0] for batch in batches]
    if len(batches) > 1:
      exponent = growth_exponent([batch // num_devices for batch in batches], temps)
      print(f"  {impl:<6} temp ∝ b^{exponent:.2f}")
  print(f"\nmachine: {os.cpu_count()} cores, {num_devices} simulated devices, "
        f"kind={args.kind}, dim={args.dim}, {args.dtype}, "
        f"tile={args.tile or contrastive.DEFAULT_TILE}; command: python {' '.join(sys.argv)}")


if __name__ == "__main__":
  main()
