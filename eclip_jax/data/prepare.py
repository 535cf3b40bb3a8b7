r"""Builds a dataset (TFDS, ArrayRecord) and its tokenizer; idempotent.

  python -m eclip_jax.data.prepare --dataset=toyshop/tiny --data_dir=/tmp/data
  python -m eclip_jax.data.prepare --dataset=product_manifest --manifest=shop.jsonl \
      --data_dir=/tmp/data
  python -m eclip_jax.data.prepare --dataset=m5product --m5product_dir=/data/m5product \
      --train_split=pretrain --data_dir=/tmp/data

A second call with the same arguments reuses the build and the tokenizer (a manifest that
changed since, or a changed M5Product release, is refused: rebuild with `--overwrite`).
The tokenizer is trained on `--train_split` (default "train", what configs train on:
`input.train_split`; M5Product's is "pretrain"); a manifest or release without that split
is refused before anything is built. `--show=N` prints N records and a
per-field summary of that split afterwards. Errors end as one `error: ...` line (exit 2
for a bad request, 1 for other failures; `--verbosity=1` adds the traceback).
"""

from __future__ import annotations

import collections
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from absl import app, flags, logging
from etils import epath

from eclip_jax import cli
from eclip_jax.data import builders
from eclip_jax.data import m5product as m5product_lib
from eclip_jax.data import manifest as manifest_lib
from eclip_jax.data import tokenizer as tokenizer_lib

_DATASET = flags.DEFINE_string("dataset", None, "name[/config], e.g. toyshop/tiny", required=True)
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Where TFDS datasets live.", required=True)
_MANIFEST = flags.DEFINE_string("manifest", None, "JSONL manifest (product_manifest only).")
_M5PRODUCT_DIR = flags.DEFINE_string(
    "m5product_dir", None, "The M5Product release directory (m5product only).")
_NUM_WORKERS = flags.DEFINE_integer("num_workers", None, "Generation processes (default: all cores).")
_VOCAB_SIZE = flags.DEFINE_integer("vocab_size", 8000, "SentencePiece vocabulary size (soft).")
_TEXT_NORMALIZER = flags.DEFINE_string("text_normalizer", "basic", "Normalizer for tokenizer training.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Rebuild even if the dataset exists.")
_TRAIN_SPLIT = flags.DEFINE_string(
    "train_split", "train", "The split the tokenizer is trained on (config.input.train_split).")
_SHOW = flags.DEFINE_integer("show", 0, "Print this many train records and a field summary.")


def make_builder(
    dataset: str,
    data_dir: str,
    *,
    manifest: str | None = None,
    m5product_dir: str | None = None,
    num_workers: int | None = None,
) -> tfds.core.DatasetBuilder:
  """The builder for `dataset` ("name[/config]") set up to write ArrayRecord in data_dir."""
  name = dataset.split("/")[0]
  kwargs: dict[str, Any] = {"data_dir": data_dir, "file_format": "array_record"}
  if name == "toyshop":
    kwargs["num_workers"] = num_workers
  elif name == "product_manifest":
    if manifest is None and not _is_built(dataset, data_dir):
      raise ValueError("--dataset=product_manifest needs --manifest=FILE (a JSONL manifest)")
    if manifest is not None and not epath.Path(manifest).is_file():
      raise ValueError(f"--manifest={manifest}: there is no such file.")
    kwargs["manifest"] = manifest
  elif name == "m5product":
    if m5product_dir is None and not _is_built(dataset, data_dir):
      raise ValueError("--dataset=m5product needs --m5product_dir=DIR (the release directory)")
    if m5product_dir is not None and not epath.Path(m5product_dir).is_dir():
      raise ValueError(f"--m5product_dir={m5product_dir}: there is no such directory.")
    kwargs["m5product_dir"] = m5product_dir
  return builders.builder(dataset, field="--dataset", **kwargs)


def _is_built(dataset: str, data_dir: str) -> bool:
  return builders.builder(dataset, field="--dataset", data_dir=data_dir).is_prepared()


def check_train_split(builder: tfds.core.DatasetBuilder, train_split: str) -> None:
  """Raises unless the dataset (built, or a manifest about to be) has `train_split`, which
  the tokenizer and training read."""
  if builder.is_prepared():
    splits, source = sorted(builder.info.splits), builder.info.full_name
  elif isinstance(builder, manifest_lib.ProductManifest):
    splits, source = builder.manifest_splits, builder.report.manifest
  elif isinstance(builder, m5product_lib.M5Product):
    splits, source = builder.release_splits, builder.report.source
  else:
    return  # a builder's own fixed splits
  if train_split not in splits:
    # A manifest's splits are the user's to name; a release's are fixed.
    rename = (f"name the training lines' split {train_split!r}, or "
              if builder.name == "product_manifest" else "")
    raise ValueError(
        f"{source} has no {train_split!r} split (its splits: {splits}), which the tokenizer "
        f"is trained on and training reads; {rename}pass --train_split=<split> here and "
        "--config.input.train_split=<split> to training.")


def tokenizer_texts(data_source: Any) -> Iterator[str]:
  """What the tokenizer is trained on: titles, and attribute keys and values."""
  for index in range(len(data_source)):
    record = data_source[index]
    yield record["title"].decode()
    attributes = record["attributes"]
    for key, value in zip(attributes["key"], attributes["value"]):
      yield f"{key.decode()}: {value.decode()}"


def prepare(
    dataset: str,
    data_dir: str,
    *,
    manifest: str | None = None,
    m5product_dir: str | None = None,
    num_workers: int | None = None,
    vocab_size: int = 8000,
    text_normalizer: str = "basic",
    overwrite: bool = False,
    train_split: str = "train",
) -> tuple[tfds.core.DatasetBuilder, epath.Path]:
  """Builds the dataset and its tokenizer unless present; returns (builder, tokenizer path)."""
  if overwrite and _is_built(dataset, data_dir):
    # Delete rather than FORCE_REDOWNLOAD: TFDS loads the old build's category names while
    # constructing the builder, and refuses a manifest whose categories changed.
    old_build = tfds.builder(dataset, data_dir=data_dir).data_path
    logging.info("--overwrite: deleting %s", old_build)
    old_build.rmtree()
  builder = make_builder(dataset, data_dir, manifest=manifest, m5product_dir=m5product_dir,
                         num_workers=num_workers)
  check_train_split(builder, train_split)
  builder.download_and_prepare()  # reuses an existing build
  check_train_split(builder, train_split)  # a split whose every line was skipped is left out

  tokenizer_path = tokenizer_lib.default_tokenizer_path(builder.data_dir, vocab_size)
  if not tokenizer_path.exists():
    train_source = builder.as_data_source(split=train_split)
    tokenizer_lib.train_tokenizer(
        tokenizer_texts(train_source),
        tokenizer_path,
        vocab_size=vocab_size,
        normalizer=text_normalizer,
    )
  return builder, tokenizer_path


def field_summary(data_source: Any, max_records: int = 1000) -> dict[str, str]:
  """One line per field: how often present and the typical size, over the first records."""
  present, sizes = collections.Counter(), collections.defaultdict(list)
  count = min(len(data_source), max_records)
  for index in range(count):
    for field, value in _flatten(data_source[index]).items():
      sized = isinstance(value, (bytes, str, list)) or np.ndim(value) > 0
      size = len(value) if isinstance(value, (bytes, str, list)) else np.size(value)
      sizes[field].append(size)
      present[field] += bool(size) if sized else 1  # a number or flag is always there
  return {
      field: f"present {present[field]}/{count}, size mean {np.mean(sizes[field]):.1f} "
      f"max {np.max(sizes[field])}"
      for field in sorted(sizes)
  }


def _flatten(record: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  flat = {}
  for key, value in record.items():
    if isinstance(value, Mapping):
      flat.update(_flatten(value, f"{prefix}{key}/"))
    else:
      flat[prefix + key] = value
  return flat


def show(builder: tfds.core.DatasetBuilder, num_records: int, split: str = "train") -> None:
  source = builder.as_data_source(split=split)
  print(f"{builder.info.full_name}: " + ", ".join(
      f"{split} {info.num_examples}" for split, info in builder.info.splits.items()))
  for index in range(min(num_records, len(source))):
    record = source[index]
    attributes = ", ".join(
        f"{k.decode()}={v.decode()}"
        for k, v in zip(record["attributes"]["key"], record["attributes"]["value"])
    )
    print(
        f"  {record['product_id'].decode()} catalog={record['catalog_id'].decode()} "
        f"[{record['category_name'].decode()}] {record['title'].decode()!r}\n"
        f"    attributes: {attributes}\n"
        f"    {len(record['images'])} images, {len(record['video_frames'])} video frames, "
        f"{len(record['audio']['waveform'])} audio samples, restricted={record['restricted']}\n"
        f"    features: {len(record['region_feats'])} regions, {len(record['frame_feats'])} "
        f"video seconds, {record['mel'].shape[1]} mel frames"
    )
  print(f"per-field summary ({split}):")
  for field, line in field_summary(source).items():
    print(f"  {field:22s} {line}")


def main(argv):
  cli.no_arguments(argv)
  try:
    builder, tokenizer_path = prepare(
        _DATASET.value,
        _DATA_DIR.value,
        manifest=_MANIFEST.value,
        m5product_dir=_M5PRODUCT_DIR.value,
        num_workers=_NUM_WORKERS.value,
        vocab_size=_VOCAB_SIZE.value,
        text_normalizer=_TEXT_NORMALIZER.value,
        overwrite=_OVERWRITE.value,
        train_split=_TRAIN_SPLIT.value,
    )
    print(f"dataset: {builder.data_dir}\ntokenizer: {tokenizer_path}")
    if _SHOW.value:
      show(builder, _SHOW.value, _TRAIN_SPLIT.value)
  except Exception as error:  # pylint: disable=broad-except
    cli.fail(error)


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
