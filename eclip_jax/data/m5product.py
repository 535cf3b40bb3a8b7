r"""`m5product`: the public M5Product release (pre-extracted features) in the record schema.

The release directory (`--m5product_dir=DIR`) is laid out as:

  DIR/items.json                 {item_id: {"title": str, "pv": "k1#:#v1#;#k2#:#v2",
                                            "label": <category label>}, ...}
  DIR/image_feats/{item_id}.npy  [N, 2048] image region features (N = 36 in the release)
  DIR/image_boxes/{item_id}.npy  [N, 5] the boxes of those regions, one per feature row
  DIR/video_feats/{item_id}.npy  [F, 1024], 1 <= F <= 12: S3D features, one per second
  DIR/audio_feats/{item_id}.npy  [80, T] mel matrix (T = 751 in the release)
  DIR/splits/{split}.txt         item ids, one per line (blank lines are ignored)

The split files of the release are `pretrain`, `retrieval_gallery_coarse`,
`retrieval_query_coarse`, `retrieval_gallery_fine`, `retrieval_query_fine`,
`classification_train` and `classification_test`; every `splits/*.txt` becomes the split of
its file name (lowercase letters, digits and "_"), and an item may be in several splits (its
record is written in each, with the same `product_index`).

An item becomes one record in each split that names it: `title` (required), `attributes`
from `pv` (pairs separated by `#;#`, key and value by `#:#`, both stripped and non-empty),
`category` from `label` (a string or a number; absent: "unknown"; the vocabulary is the
sorted set of names), `region_feats` + `region_boxes`, `frame_feats` and `mel` from the
feature files (stored as float16, boxes as float32). `catalog_id` is the entry's
"catalog_id" if it has one, else the item id (M5Product has no duplicate listings);
`product_index` is the item's position among the sorted ids of the usable entries of
items.json, `catalog_index` its catalog_id's among the sorted catalog ids.

The release has no pixels, frames or waveforms: `images`, `video_frames` and the waveform
are always empty. The input pipeline's `regions`, `video_feats` and `audio_mel` modalities
read the features (transforms.py); its pixel modalities see nothing here (`image` skips
every m5product record as `no_images`, `video` and `audio` see them as absent, fully
masked), and `text` and `table` read them as they are.

Any modality but the title may be missing, and the release misses many: an absent feature
file is stored as the schema's empty value and counted (once per item) in `report.absent`
per modality (`image`, `video`, `audio`; `table` for an item without `pv`), without a
warning per item. What is wrong, rather than missing, is logged as a warning, counted per
reason and stored in the dataset's metadata.json (`report`):

  skipped (an entry or a split line that gives no record)
    bad_entry           the entry of items.json is not an object, or its title, label or
                        catalog_id has the wrong type
    missing_title       no title, or a blank one
    not_in_table        a split file names an id items.json does not have
    duplicate_in_split  a split file names an id a second time (the first one is kept)
    in_no_split         a usable entry no split file names (counted, not warned about)
  dropped (part of a written record is left empty; once per item, in however many splits)
    bad_pv                      `pv` is not a string: no attributes
    malformed_pv_pair           one pair without exactly one `#:#`, or with an empty side
    unreadable_{file}           not a .npy file numpy reads without pickle
    bad_shape_{file}            not the shape above (boxes: one per region feature)
    bad_values_{file}           not real numbers, or not finite (also after float16)
    missing_image_feats / missing_image_boxes   one of the two image files without the other

where {file} is image_feats, image_boxes, video_feats or audio_feats. A bad image_feats
or image_boxes file empties both. Nothing is fatal but a missing or unparseable items.json,
no split file or one with a bad name, or no item at all that becomes a record. Build, then read:

  python -m eclip_jax.data.prepare --dataset=m5product --m5product_dir=DIR \
      --train_split=pretrain --data_dir=OUT
  tfds.data_source("m5product", data_dir=OUT)  # or "m5product/<config>"

Like product_manifest, any lowercase config name works (`--dataset=m5product/<name>`), and
a prepared dataset is reused only when prepared again from the same directory with the same
items.json and split files (their SHA-256 is recorded; the feature files are not hashed, so
after editing only those, rebuild with `--overwrite`).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
import io
import itertools
import json
import re
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from etils import epath

from eclip_jax.data import schema

# Config and split names: they become directory and file names.
_NAME = re.compile(r"[a-z0-9_]+")
_TABLE_FILE = "items.json"
_SPLITS_DIR = "splits"
_PAIR_SEPARATOR = "#;#"
_KEY_VALUE_SEPARATOR = "#:#"
_MAX_FRAMES = 12
_NPY_MAGIC = b"\x93NUMPY"
# metadata.json keeps the first messages; the log has them all.
_MAX_STORED_MESSAGES = 1000


# ---------------------------------------------------------------------------------------
# The report: what was written, skipped, dropped, and which modalities were absent.
# ---------------------------------------------------------------------------------------


@dataclasses.dataclass
class M5ProductReport:
  """Records per split; items skipped and record parts dropped per reason (see the module
  docstring); absent modalities; one message per warning."""

  source: str = ""
  written: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  skipped: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  dropped: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  absent: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  messages: list[str] = dataclasses.field(default_factory=list)

  def warn(self, counter: collections.Counter, where: str, reason: str, detail: str) -> None:
    message = f"{where}: {reason}: {detail}"
    counter[reason] += 1
    self.messages.append(message)
    logging.warning("%s", message)

  def summary(self) -> str:
    def counts(counter):
      return ", ".join(f"{key}: {counter[key]}" for key in sorted(counter))

    line = f"m5product: wrote {sum(self.written.values())} records"
    for name, counter in (("", self.written), ("skipped", self.skipped),
                          ("dropped", self.dropped), ("absent", self.absent)):
      if name:
        line += f"; {name} {sum(counter.values())}"
      line += f" ({counts(counter)})" if counter else ""
    return line

  def to_json(self) -> dict[str, Any]:
    return {
        "source": self.source,
        "summary": self.summary(),
        "written": dict(self.written),
        "skipped": dict(self.skipped),
        "dropped": dict(self.dropped),
        "absent": dict(self.absent),
        "messages": self.messages[:_MAX_STORED_MESSAGES],
    }

  @classmethod
  def from_json(cls, stored: Mapping[str, Any]) -> M5ProductReport:
    return cls(
        source=stored["source"],
        written=collections.Counter(stored["written"]),
        skipped=collections.Counter(stored["skipped"]),
        dropped=collections.Counter(stored["dropped"]),
        absent=collections.Counter(stored["absent"]),
        messages=list(stored["messages"]),
    )


class _Problem(Exception):
  """Something wrong with an entry or a file; `reason` is its report category."""

  def __init__(self, reason: str, detail: str):
    super().__init__(detail)
    self.reason = reason


# ---------------------------------------------------------------------------------------
# First pass: items.json and the split files, without reading any feature file.
# ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Item:
  """A usable entry of items.json; its feature files are read when its record is written."""

  item_id: str
  title: str
  category: str
  catalog_id: str
  attributes: list[tuple[str, str]]
  pv_problems: list[tuple[str, str]]  # (reason, detail) of what the table lost


@dataclasses.dataclass(frozen=True)
class _Scan:
  """The first pass over a release: usable items, the splits' ids, and what was wrong."""

  items: dict[str, _Item]
  splits: dict[str, list[str]]  # split -> ids of usable items, in file order, distinct
  problems: list[tuple[str, str, str, str]]  # (counter, where, reason, detail)
  unused: int  # usable items no split names
  product_index: dict[str, int]
  catalog_index: dict[str, int]
  category_names: list[str]


def _scan_release(release_dir: epath.Path) -> _Scan:
  table_path = release_dir / _TABLE_FILE
  problems, items, table = [], {}, _read_table(table_path)
  for item_id, entry in table.items():
    try:
      items[item_id] = _parse_entry(item_id, entry)
    except _Problem as problem:
      problems.append(("skipped", f"{table_path}: {item_id}", problem.reason, str(problem)))
  splits, named = {}, set()
  for split, path in _split_files(release_dir):
    ids, first_line_of = [], {}
    for line_no, item_id in _split_lines(path):
      where = f"{path}:{line_no}"
      if item_id in first_line_of:
        detail = f"{item_id!r} is on line {first_line_of[item_id]}"
        problems.append(("skipped", where, "duplicate_in_split", detail))
        continue
      first_line_of[item_id] = line_no
      named.add(item_id)
      if item_id in items:
        ids.append(item_id)
    splits[split] = ids
  for item_id in sorted(named - table.keys()):  # once per id, however many splits name it
    problems.append(("skipped", str(table_path), "not_in_table", f"no entry {item_id!r}"))
  used = sorted(named & items.keys())
  catalog_ids = sorted({items[item_id].catalog_id for item_id in items})
  return _Scan(
      items=items,
      splits=splits,
      problems=problems,
      unused=len(items) - len(used),
      product_index={item_id: i for i, item_id in enumerate(sorted(items))},
      catalog_index={catalog_id: i for i, catalog_id in enumerate(catalog_ids)},
      category_names=sorted({items[item_id].category for item_id in used}),
  )


def _read_table(path: epath.Path) -> dict[str, Any]:
  if not path.exists():
    raise ValueError(f"{path}: there is no such file; an M5Product release needs its "
                     f"{_TABLE_FILE} (see eclip_jax/data/m5product.py).")
  try:
    table = json.loads(path.read_bytes().decode("utf-8-sig"))
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise ValueError(f"{path}: not a JSON file ({e}).") from None
  if not isinstance(table, dict):
    raise ValueError(f"{path}: a JSON {type(table).__name__}, not an object of item ids.")
  return table


def _split_files(release_dir: epath.Path) -> list[tuple[str, epath.Path]]:
  splits_dir = release_dir / _SPLITS_DIR
  paths = sorted(splits_dir.glob("*.txt")) if splits_dir.exists() else []
  if not paths:
    raise ValueError(f"{splits_dir}: no split files (<split>.txt, one item id per line).")
  for path in paths:
    if not _NAME.fullmatch(path.stem):
      raise ValueError(f"{path}: a split's name must be lowercase letters, digits and '_'; "
                       "rename the file.")
  return [(path.stem, path) for path in paths]


def _split_lines(path: epath.Path) -> Iterator[tuple[int, str]]:
  for line_no, line in enumerate(path.read_text().splitlines(), start=1):
    if line.strip():
      yield line_no, line.strip()


def _parse_entry(item_id: str, entry: Any) -> _Item:
  if not isinstance(entry, dict):
    raise _Problem("bad_entry", f"a {type(entry).__name__}, not a JSON object")
  title = entry.get("title")
  if title is not None and not isinstance(title, str):
    raise _Problem("bad_entry", f"'title' should be str, got {type(title).__name__}")
  if not (title or "").strip():
    raise _Problem("missing_title", "no title" if title is None else "the title is blank")
  label = entry.get("label")
  if label is not None and (isinstance(label, bool) or not isinstance(label, (str, int, float))):
    raise _Problem("bad_entry", f"'label' should be a string or number, got {label!r}")
  catalog_id = entry.get("catalog_id")
  if catalog_id is not None and not isinstance(catalog_id, str):
    raise _Problem("bad_entry", f"'catalog_id' should be str, got {type(catalog_id).__name__}")
  attributes, pv_problems = _parse_pv(entry.get("pv"))
  return _Item(
      item_id=item_id,
      title=title,
      # Whitespace-normalized: category names are stored one per line in category.labels.txt.
      category=" ".join(str(label if label is not None else "").split()) or "unknown",
      catalog_id=catalog_id or item_id,
      attributes=attributes,
      pv_problems=pv_problems,
  )


def _parse_pv(pv: Any) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
  """The attribute table of a `pv` string, and what was wrong with it."""
  if pv is None:
    return [], []
  if not isinstance(pv, str):
    return [], [("bad_pv", f"'pv' should be str, got {type(pv).__name__}")]
  attributes, problems = [], []
  for pair in pv.split(_PAIR_SEPARATOR):
    if not pair.strip():  # a trailing or doubled separator: nothing lost
      continue
    parts = [part.strip() for part in pair.split(_KEY_VALUE_SEPARATOR)]
    if len(parts) != 2 or not all(parts):
      detail = f"pair {pair!r} is not key{_KEY_VALUE_SEPARATOR}value"
      problems.append(("malformed_pv_pair", detail))
      continue
    attributes.append((parts[0], parts[1]))
  return attributes, problems


# ---------------------------------------------------------------------------------------
# Second pass: read an item's feature files into its record.
# ---------------------------------------------------------------------------------------


def _load_array(path: epath.Path, kind: str) -> np.ndarray | None:
  """The array in `path`; None if there is no such file."""
  if not path.exists():
    return None
  try:
    data = path.read_bytes()
  except OSError as e:
    raise _Problem(f"unreadable_{kind}", f"cannot read {path}: {e.strerror or e}") from None
  # numpy takes anything without the .npy magic for a pickle, and says so: say what it is.
  if not data.startswith(_NPY_MAGIC):
    raise _Problem(f"unreadable_{kind}", f"{path} is not a .npy file")
  try:
    return np.load(io.BytesIO(data), allow_pickle=False)
  except Exception as e:  # pylint: disable=broad-except  (numpy raises many types on bad data)
    raise _Problem(f"unreadable_{kind}", f"cannot read {path}: {e}") from None


def _checked(array: np.ndarray, path: epath.Path, kind: str, shape_ok: bool, expected: str,
             dtype: type) -> np.ndarray:
  """`array` as `dtype`, if it has the right shape and real, finite values."""
  if not shape_ok:
    raise _Problem(f"bad_shape_{kind}", f"{path} has shape {list(array.shape)}, not {expected}")
  if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
    raise _Problem(f"bad_values_{kind}", f"{path} holds {array.dtype}, not real numbers")
  with np.errstate(over="ignore"):
    converted = array.astype(dtype)
  if not np.all(np.isfinite(converted)):
    raise _Problem(f"bad_values_{kind}",
                   f"{path} has values that are not finite (as {np.dtype(dtype).name})")
  return converted


def _region_features(release_dir: epath.Path, item_id: str) -> dict[str, np.ndarray] | None:
  """region_feats and region_boxes, or None when the item has neither file."""
  feats_path = release_dir / "image_feats" / f"{item_id}.npy"
  boxes_path = release_dir / "image_boxes" / f"{item_id}.npy"
  feats = _load_array(feats_path, "image_feats")
  boxes = _load_array(boxes_path, "image_boxes")
  if feats is None and boxes is None:
    return None
  if feats is None or boxes is None:
    kind, path = ("image_feats", feats_path) if feats is None else ("image_boxes", boxes_path)
    raise _Problem(f"missing_{kind}", f"there is no {path} (the other image file exists)")
  dim, box_dim = schema.REGION_FEATURE_DIM, schema.REGION_BOX_DIM
  feats = _checked(feats, feats_path, "image_feats",
                   feats.ndim == 2 and len(feats) >= 1 and feats.shape[1] == dim,
                   f"[N, {dim}]", np.float16)
  boxes = _checked(boxes, boxes_path, "image_boxes",
                   boxes.ndim == 2 and boxes.shape == (len(feats), box_dim),
                   f"[{len(feats)}, {box_dim}] (one box per region feature)", np.float32)
  return {"region_feats": feats, "region_boxes": boxes}


def _frame_features(release_dir: epath.Path, item_id: str) -> np.ndarray | None:
  path = release_dir / "video_feats" / f"{item_id}.npy"
  frames = _load_array(path, "video_feats")
  if frames is None:
    return None
  dim = schema.FRAME_FEATURE_DIM
  return _checked(frames, path, "video_feats",
                  frames.ndim == 2 and 1 <= len(frames) <= _MAX_FRAMES and frames.shape[1] == dim,
                  f"[1..{_MAX_FRAMES}, {dim}]", np.float16)


def _mel(release_dir: epath.Path, item_id: str) -> np.ndarray | None:
  path = release_dir / "audio_feats" / f"{item_id}.npy"
  mel = _load_array(path, "audio_feats")
  if mel is None:
    return None
  bins = schema.MEL_BINS
  return _checked(mel, path, "audio_feats",
                  mel.ndim == 2 and mel.shape[0] == bins and mel.shape[1] >= 1,
                  f"[{bins}, T]", np.float16)


# Per modality: its reader and how it fills the record. A problem empties only its own.
_FEATURES = {
    "image": (_region_features, lambda feats: feats),
    "video": (_frame_features, lambda frames: {"frame_feats": frames}),
    "audio": (_mel, lambda mel: {"mel": mel}),
}


def _make_record(item: _Item, scan: _Scan, release_dir: epath.Path,
                 problems: list[tuple[str, str]], absent: list[str]) -> dict[str, Any]:
  """The item's record; appends what was dropped to `problems` and absent modalities'
  names to `absent`."""
  record = schema.empty_optional_fields()
  record.update({
      "product_id": item.item_id,
      "catalog_id": item.catalog_id,
      "product_index": scan.product_index[item.item_id],
      "catalog_index": scan.catalog_index[item.catalog_id],
      "seller_id": "",
      "title": item.title,
      "category": item.category,  # ClassLabel maps the name to its index
      "category_name": item.category,
      "attributes": [{"key": key, "value": value} for key, value in item.attributes],
      "images": [],
  })
  problems.extend(item.pv_problems)
  if not item.attributes and not item.pv_problems:
    absent.append("table")
  for modality, (read, fields) in _FEATURES.items():
    try:
      value = read(release_dir, item.item_id)
    except _Problem as problem:
      problems.append((problem.reason, str(problem)))
      continue
    if value is None:
      absent.append(modality)
    else:
      record.update(fields(value))
  return record


# ---------------------------------------------------------------------------------------
# The builder.
# ---------------------------------------------------------------------------------------


def _source(release_dir: epath.Path) -> dict[str, str]:
  """What a build came from: the directory's absolute path and one SHA-256 over items.json
  and the split files (names and bytes). Feature files are not hashed: there are millions."""
  digest = hashlib.sha256()
  paths = [release_dir / _TABLE_FILE] + [path for _, path in _split_files(release_dir)]
  for path in paths:
    digest.update(f"{path.relative_to(release_dir)}\0".encode())
    with path.open("rb") as f:
      for chunk in iter(lambda: f.read(1 << 20), b""):
        digest.update(chunk)
  # epath's resolve() would prefix a gs:// path with the working directory.
  path = release_dir if "://" in str(release_dir) else release_dir.resolve()
  return {"path": str(path), "sha256": digest.hexdigest()}


@functools.cache  # one object per name: TFDS tells configs apart by identity
def _named_config(name: str) -> tfds.core.BuilderConfig:
  if not _NAME.fullmatch(name):
    raise ValueError(f"m5product config {name!r}: use lowercase letters, digits and '_' only")
  return tfds.core.BuilderConfig(name=name, description=f"The release built as {name!r}.")


class M5Product(tfds.core.GeneratorBasedBuilder):
  """M5Product items from a release directory (see the module docstring for its layout)."""

  name = "m5product"  # not TFDS's default from the class name, "m5_product"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}
  BUILDER_CONFIGS = [_named_config("default")]

  def __init__(self, *, m5product_dir: str | None = None, **kwargs):
    """`m5product_dir` (the release) is needed to build, not to read a prepared dataset."""
    self._release_dir = epath.Path(m5product_dir) if m5product_dir else None
    self.report = M5ProductReport(source=str(self._release_dir or ""))
    super().__init__(**kwargs)
    if self.is_prepared():  # a reused build reports what it was built with
      self.report = M5ProductReport.from_json(self.info.metadata["report"])
      if self._release_dir is not None:
        self._check_built_from_release()

  def _check_built_from_release(self) -> None:
    """Refuses to reuse a build of another release, or of this one before it changed."""
    built_from, source = self.info.metadata["source"], _source(self._release_dir)
    if source == built_from:
      return
    if source["path"] == built_from["path"]:
      what = f"{built_from['path']} as it was before its items.json or split files changed"
    else:
      what = f"{built_from['path']}, not {source['path']}"
    raise ValueError(
        f"{self.data_path} holds m5product/{self.builder_config.name} built from {what}; "
        "pass --overwrite to rebuild it, or build this release under a new name with "
        "--dataset=m5product/<name>.")

  @classmethod
  def get_builder_config(cls, name: str, version=None) -> tfds.core.BuilderConfig:
    return super().get_builder_config(name, version) or _named_config(name)

  def summary(self) -> str:
    return self.report.summary()

  @property
  def release_splits(self) -> list[str]:
    """The splits the release's split files name (found without reading a feature file)."""
    return sorted(self._scan.splits)

  @functools.cached_property
  def _scan(self) -> _Scan:
    return _scan_release(self._release_dir)

  def _info(self) -> tfds.core.DatasetInfo:
    # Without a release (reading), TFDS restores the names from category.labels.txt.
    category_names = self._scan.category_names if self._release_dir else None
    if category_names is not None:
      self._check_categories_on_disk(category_names)
    return self.dataset_info_from_configs(
        features=schema.product_features(category_names),
        # Filled while generating; written beside the data as metadata.json.
        metadata=tfds.core.MetadataDict(),
        homepage="https://github.com/eclip-jax/eclip_jax",
        description=__doc__,
    )

  def _check_categories_on_disk(self, category_names: list[str]) -> None:
    # TFDS loads a prepared dataset's names over ours at construction, and fails obscurely
    # when they differ; only deleting the old build first (prepare --overwrite) helps.
    labels_file = self.data_path / "category.labels.txt"
    if labels_file.exists() and labels_file.read_text().splitlines() != category_names:
      raise ValueError(
          f"{self.data_path} holds m5product/{self.builder_config.name} built from a release "
          f"with other labels than {self._release_dir}: rebuild with prepare --overwrite, or "
          "build it under another config name (m5product/<name>).")

  def _download_and_prepare(self, dl_manager, download_config) -> None:
    self.report = M5ProductReport(source=str(self._release_dir))
    self._reported: set[str] = set()  # items whose problems are counted (once per item)
    super()._download_and_prepare(dl_manager, download_config)
    if self._scan.unused:
      self.report.skipped["in_no_split"] += self._scan.unused
    self.info.metadata["report"] = self.report.to_json()
    self.info.metadata["source"] = _source(self._release_dir)
    logging.info("%s", self.report.summary())

  def _split_generators(self, dl_manager) -> dict[str, Iterator[tuple[str, dict[str, Any]]]]:
    del dl_manager  # the release is a local directory; nothing to download
    if self._release_dir is None:
      raise ValueError("m5product needs m5product_dir=DIR (the release directory) to build.")
    for counter, where, reason, detail in self._scan.problems:
      self.report.warn(getattr(self.report, counter), where, reason, detail)
    generators = {}
    for split in sorted(self._scan.splits):
      # TFDS fails on a split without examples, so a split none of whose ids is a usable
      # item is left out.
      examples = self._generate_examples(split)
      first = next(examples, None)
      if first is None:
        logging.warning("m5product: no item of split %r has a usable entry", split)
        continue
      generators[split] = itertools.chain([first], examples)
    if not generators:
      raise ValueError(f"{self._release_dir}: no item became a record; {self.report.summary()}")
    return generators

  def _generate_examples(self, split: str) -> Iterator[tuple[str, dict[str, Any]]]:
    table_path = self._release_dir / _TABLE_FILE
    for item_id in self._scan.splits[split]:
      problems, absent = [], []
      record = _make_record(self._scan.items[item_id], self._scan, self._release_dir,
                            problems, absent)
      if item_id not in self._reported:  # an item in several splits is counted once
        self._reported.add(item_id)
        for reason, detail in problems:
          self.report.warn(self.report.dropped, f"{table_path}: {item_id}", reason, detail)
        self.report.absent.update(absent)
      self.report.written[split] += 1
      yield item_id, record
