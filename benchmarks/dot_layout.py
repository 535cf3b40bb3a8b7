r"""XLA:CPU's transformer MLP on [batch, tokens, width] activations against the same rows
flattened to [batch * tokens, width].

  python benchmarks/dot_layout.py [--shape=s16] [--shape=tiny] [--rounds=3] [--devices=1]

Our towers apply their Dense layers to 3-D activations, as Flax models do. This times one
jitted program per layout: the forward and backward of a GELU MLP (x @ w1 -> gelu -> @ w2,
summed), six times in a dependent chain with a small weight update between, so that only
the layout differs. The two take turns each round; medians. Shapes (`--shape`): `s16` is
clip.py:s16's image tower at 128 px (batch 32, 64 tokens, width 384, MLP 1536), `tiny`
clip.py:tiny's (batch 128, 65 tokens, width 64, MLP 256). `GFLOP/s` counts the six MLPs'
dots: 2 forward and 3 backward each (both weight gradients and the hidden layer's; the
input's gradient is not asked for).
"""

from __future__ import annotations

import harness  # noqa: F401  (first: sets the device count before JAX starts)

import argparse  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Iterable  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

# name -> (batch, tokens, width, MLP width)
SHAPES = {"s16": (32, 64, 384, 1536), "tiny": (128, 65, 64, 256)}
LAYOUTS = ("[B, T, D]", "[B*T, D]")
CHAIN = 6  # dependent MLP forward + backward passes per program


def _mlp_loss(w1, w2, x):
  dense = lambda a, w: jax.lax.dot_general(a, w, (((a.ndim - 1,), (0,)), ((), ())))  # noqa: E731
  return jnp.sum(dense(jax.nn.gelu(dense(x, w1)), w2))


def program(batch: int, tokens: int, width: int, mlp: int, layout: str):
  """(jitted chain, its arguments) for one layout."""
  keys = jax.random.split(jax.random.PRNGKey(0), 3)
  shape = (batch, tokens, width) if layout == LAYOUTS[0] else (batch * tokens, width)
  x = jax.random.normal(keys[0], shape)
  w1 = jax.random.normal(keys[1], (width, mlp)) * width**-0.5
  w2 = jax.random.normal(keys[2], (mlp, width)) * mlp**-0.5
  grad = jax.grad(_mlp_loss, argnums=(0, 1))

  def chain(w1, w2, x):
    for _ in range(CHAIN):
      g1, g2 = grad(w1, w2, x)
      w1, w2 = w1 - 1e-6 * g1, w2 - 1e-6 * g2
    return w1, w2

  return jax.jit(chain), (w1, w2, x)


def measure(shapes: Iterable[str], rounds: int, repeats: int = 5) -> list[dict]:
  """A row per shape and layout: median ms per program and the dots' GFLOP/s."""
  rows = []
  for name in shapes:
    batch, tokens, width, mlp = SHAPES[name]
    flops = CHAIN * 5 * 2 * batch * tokens * width * mlp  # 5 dots of 2·B·T·D·M FLOPs
    programs = {layout: program(batch, tokens, width, mlp, layout) for layout in LAYOUTS}
    times = {layout: [] for layout in LAYOUTS}
    for fn, args in programs.values():
      jax.block_until_ready(fn(*args))  # compile
    for _ in range(rounds):
      for layout, (fn, args) in programs.items():
        for _ in range(repeats):
          start = time.perf_counter()
          jax.block_until_ready(fn(*args))
          times[layout].append(time.perf_counter() - start)
    for layout in LAYOUTS:
      seconds = statistics.median(times[layout])
      rows.append({"shape": name, "layout": layout, "ms": 1e3 * seconds,
                   "gflop_per_s": flops / seconds / 1e9,
                   "vs_3d": statistics.median(times[LAYOUTS[0]]) / seconds})
  return rows


COLUMNS: list[harness.Column] = [
    ("shape", "shape", "{}"), ("layout", "layout", "{}"), ("ms", "ms", "{:.1f}"),
    ("gflop_per_s", "GFLOP/s", "{:.0f}"), ("vs_3d", "vs [B, T, D]", "{:.2f}")]


def format_table(rows: Iterable[dict]) -> str:
  return harness.format_table(list(rows), COLUMNS)


def main(argv: list[str]) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--shape", action="append", choices=sorted(SHAPES))
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--devices", type=int, default=1, help="read by harness")
  args = parser.parse_args(argv)
  rows = measure(args.shape or ["s16", "tiny"], rounds=args.rounds)
  print("python benchmarks/dot_layout.py " + " ".join(argv))
  print()
  print(format_table(rows))


if __name__ == "__main__":
  main(sys.argv[1:])
