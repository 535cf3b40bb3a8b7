r"""Input pipeline throughput vs. the raw JPEG-decode rate of the same images.

  python benchmarks/input_pipeline.py [--data_dir=/tmp/eclip_bench] [--workers=0,1,2]

For each (output size, source image size) pair it builds toyshop/small with images of the
source size (once; reused), then measures

* raw decode: a plain loop fully decoding the training split's images with PIL (one core),
* the training pipeline (`make_train_iterator`: shuffle, crop-aware decode,
  random-resized-crop + flip, tokenization, batching, prefetch) in examples/s
  with 0 (in-process), 1 and 2 Grain worker processes.

`per worker` divides a pipeline's rate by its worker count (0 workers counts as 1), and
`vs raw` compares that with the raw decode rate of the same images measured in the same
run. Rows with source = output size show the pipeline's overhead over decoding; rows
with larger sources (as real product photos are) add the effect of crop-aware decoding.

A second table bounds what any pipeline could reach. Besides decoding, every pipeline that
reads these records and trains on random-resized crops must (a) read each record from its
ArrayRecord file and (b) resample the crop to the output size. Both are measured here on
the same images, in the same run, and

    ceiling = raw decode time / (raw decode time + read time + crop-resize time)

is the largest `vs raw` a pipeline doing nothing else (no parsing, tokenization, batching
or hand-off between threads and processes) could reach.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time

import numpy as np
from PIL import Image


def raw_decode_rate(images: list[bytes], seconds: float) -> float:
  """Images decoded per second by a plain loop, cycling through `images`."""
  decoded, start = 0, time.perf_counter()
  while time.perf_counter() - start < seconds:
    for encoded in images:
      np.asarray(Image.open(io.BytesIO(encoded)).convert("RGB"))
    decoded += len(images)
  return decoded / (time.perf_counter() - start)


def per_image_seconds(work, items: list, seconds: float) -> float:
  """Seconds per item of `work(item)`, cycling through `items` for about `seconds`."""
  done, start = 0, time.perf_counter()
  while time.perf_counter() - start < seconds:
    for item in items:
      work(item)
    done += len(items)
  return (time.perf_counter() - start) / done


def unavoidable_costs(records, images: list[bytes], size: int, crop_scale, seconds: float):
  """(read, crop-resize) seconds per example: work no training pipeline can skip.

  `records` is the split's ArrayRecord source of serialized records, read in a shuffled
  order as training reads it; the crop-resize resamples a random-resized crop of an
  already decoded image to size x size, as the training transform does after decoding.
  """
  from eclip_jax.data import transforms  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(0)
  order = rng.permutation(len(records)).tolist()
  read = per_image_seconds(records.__getitem__, order, seconds)
  decoded = [Image.open(io.BytesIO(encoded)).convert("RGB") for encoded in images[:256]]
  crops = [(image, transforms.random_resized_crop_box(rng, *image.size, crop_scale))
           for image in decoded]
  resize = per_image_seconds(
      lambda pair: pair[0].resize((size, size), Image.Resampling.BILINEAR, box=pair[1]),
      crops, seconds)
  return read, resize


def pipeline_rate(config, warmup_batches: int, seconds: float) -> float:
  from eclip_jax.data import pipeline  # pylint: disable=g-import-not-at-top

  iterator = pipeline.make_train_iterator(config, seed=0)
  for _ in range(warmup_batches):  # worker start-up, first reads
    next(iterator)
  examples, start = 0, time.perf_counter()
  while time.perf_counter() - start < seconds:
    examples += len(next(iterator)["product_id"])
  rate = examples / (time.perf_counter() - start)
  iterator.close()
  return rate


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--data_dir", default="/tmp/eclip_bench")
  parser.add_argument("--sizes", default="64:64,224:224,64:128,224:448",
                      help="output:source image sizes")
  parser.add_argument("--workers", default="0,1,2")
  parser.add_argument("--batch_size", type=int, default=32)
  parser.add_argument("--seconds", type=float, default=8.0, help="per measurement")
  args = parser.parse_args()

  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  from eclip_jax.data import pipeline, prepare  # pylint: disable=g-import-not-at-top

  rows, ceilings = [], []
  for pair in args.sizes.split(","):
    size, source_size = map(int, pair.split(":"))
    # `small`, not `tiny`: Grain's index shuffle costs ~100 us per element on a 200-record
    # dataset (7 us at 100k), which would misstate the per-example overhead.
    dataset = "toyshop/small" + ("" if source_size == 64 else f"_{source_size}px")
    prepare.prepare(dataset, args.data_dir, vocab_size=1000)
    source = tfds.data_source(dataset, split="train", data_dir=args.data_dir)
    images = [source[i]["images"][0] for i in range(len(source))]
    raw = raw_decode_rate(images, args.seconds)
    rows.append((size, source_size, "raw decode loop", raw, raw, 1.0))
    read, resize = unavoidable_costs(source.data_source, images, size,
                                     tuple(pipeline.default_input_config().crop_scale),
                                     args.seconds / 2)
    ceilings.append((size, source_size, 1 / raw, read, resize,
                     (1 / raw) / (1 / raw + read + resize)))
    for workers in map(int, args.workers.split(",")):
      config = pipeline.default_input_config()
      config.update(dataset=dataset, data_dir=args.data_dir, vocab_size=1000,
                    image_size=size, batch_size=args.batch_size, num_workers=workers,
                    read_threads=1)
      rate = pipeline_rate(config, warmup_batches=3, seconds=args.seconds)
      per_worker = rate / max(workers, 1)
      rows.append((size, source_size, f"pipeline, {workers} workers", rate, per_worker,
                   per_worker / raw))

  print(f"\n{'out':>4} | {'source':>6} | {'what':<22} | {'examples/s':>10} | "
        f"{'per worker':>10} | {'vs raw':>6}")
  print("-" * 75)
  for size, source_size, what, rate, per_worker, ratio in rows:
    print(f"{size:>4} | {source_size:>6} | {what:<22} | {rate:>10.0f} | {per_worker:>10.0f} | "
          f"{ratio:>6.2f}")
  print(f"\n{'out':>4} | {'source':>6} | {'decode us':>9} | {'read us':>7} | "
        f"{'crop-resize us':>14} | {'ceiling':>7}")
  print("-" * 63)
  for size, source_size, decode, read, resize, ceiling in ceilings:
    print(f"{size:>4} | {source_size:>6} | {decode * 1e6:>9.0f} | {read * 1e6:>7.0f} | "
          f"{resize * 1e6:>14.0f} | {ceiling:>7.2f}")
  print(f"\nmachine: {os.cpu_count()} cores; command: python {' '.join(sys.argv)}")


if __name__ == "__main__":
  main()
