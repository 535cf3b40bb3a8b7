r"""Train-step time of SCALE tiny against the CLIP two-tower baseline, same batch.

  python benchmarks/scale_step.py [--batch=128] [--steps=3] [--rounds=3] [--devices=1]

For each row it builds the config, AOT-compiles the real train step
(trainer.compile_train_step: forward, every objective, backward, AdamW) on random inputs of
the config's example spec, then times the rows in turn for `--rounds` rounds of `--steps`
steps each (so machine noise spreads over all of them) and reports the median. Rows:

  clip tiny            configs/clip.py:tiny (ViT tiny /8 at 64 px, text tiny)
  scale text+image     configs/scale.py:tiny,modalities=text+image: CLIP tiny's towers +
                       2 fusion blocks, the title's MLM, one contrastive pair
  scale, five          configs/scale.py:tiny: + table, video (4 frames), audio (log-mel),
                       10 pairs, five masked-modeling terms
  scale, five learned  the same with scale.harmonize=learned
  scale, five, MLM at every position
                       scale, five with the title's and table's vocabulary heads scoring
                       every position (model.mlm_slots=None), not the masked ones only

`vs clip` is the time ratio to the first row. Data loading is not included
(benchmarks/input_pipeline.py measures the pipeline).
"""

from __future__ import annotations

import harness  # noqa: F401  (first: sets the device count before JAX starts)

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402

from configs import clip as clip_config  # noqa: E402
from configs import scale as scale_config  # noqa: E402


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--steps", type=int, default=3)
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--devices", type=int, default=1)
  args = parser.parse_args()

  rows = {"clip tiny": clip_config.get_config("tiny"),
          "scale text+image": scale_config.get_config("tiny,modalities=text+image"),
          "scale, five": scale_config.get_config("tiny"),
          "scale, five learned": scale_config.get_config("tiny,harmonize=learned"),
          "scale, five, MLM at every position": scale_config.get_config("tiny")}
  rows["scale, five, MLM at every position"].model.mlm_slots = None
  compiled = {}
  for name, config in rows.items():
    config.input.batch_size = args.batch
    compiled[name] = list(harness.compiled_step(config)[:3])
  times = {name: [] for name in rows}
  for _ in range(args.rounds):
    for name, entry in compiled.items():
      step, state, batch = entry
      for _ in range(args.steps):
        start = time.perf_counter()
        state, metrics = step(state, batch)
        jax.block_until_ready(metrics)
        times[name].append(time.perf_counter() - start)
      entry[1] = state

  print(f"python benchmarks/scale_step.py --batch={args.batch} --steps={args.steps} "
        f"--rounds={args.rounds} --devices={args.devices}\n")
  width = max(map(len, rows))
  print(f"{'what':{width}s} | {'ms/step':>8s} | {'examples/s':>10s} | {'vs clip':>7s}")
  print("-" * (width + 34))
  baseline = statistics.median(times["clip tiny"])
  for name, measured in times.items():
    seconds = statistics.median(measured)
    print(f"{name:{width}s} | {1e3 * seconds:8.1f} | {args.batch / seconds:10.0f} | "
          f"{seconds / baseline:7.2f}")


if __name__ == "__main__":
  main()
