r"""`product_manifest`: bring your own listings, as a JSONL manifest, to the record schema.

One product listing per line (blank lines are ignored), for example:

  {"product_id": "sku-1", "catalog_id": "cat-9", "seller_id": "s1",
   "title": "Red ceramic mug 350ml", "description": "Dishwasher safe.", "category": "mug",
   "attributes": {"color": "red", "material": "ceramic"},
   "images": ["img/1.jpg", "img/2.png"], "boxes": [[0.1, 0.2, 0.6, 0.9], [0, 0, 1, 1]],
   "video_frames": ["vid/1/000.jpg", "vid/1/001.jpg"], "audio": "aud/1.wav",
   "restricted": false, "split": "train"}

(shown wrapped; in the file each listing is one line). Fields:

  product_id    required, unique string.
  title         required, non-empty after stripping whitespace.
  images        required, >= 1 image files (JPEG and PNG are stored byte for byte; any other
                format PIL reads, e.g. WebP, BMP or TIFF, is re-encoded as PNG, keeping
                transparency and 16-bit gray; training composites transparent pixels on
                `input.background`, white by default).
  catalog_id    the catalog product this listing sells; listings sharing it are duplicates
                of each other. Default: the product_id (a catalog product of its own).
  seller_id     default "".       description   default "".
  category      default "unknown". The category vocabulary is the sorted set of names.
  attributes    an object (its key order is kept) or a list of [key, value] pairs; values
                are strings (numbers and booleans are written as JSON).
  boxes         absent, or one [x0, y0, x1, y1] box per image, in [0, 1] of the image.
  video_frames  image files, in order.
  audio         a 16-bit PCM WAV file; stereo is averaged to mono.
  restricted    default false.
  split         default "train"; lowercase letters, digits, "_". The splits present in the
                manifest are the dataset's splits.

File paths are relative to the manifest's directory; absolute paths (and gs:// URLs) work
too. `product_index` is the listing's 0-based line number in the manifest; `catalog_index`
is its catalog_id's position among the sorted distinct catalog_ids.

A line that cannot become a record (malformed JSON, a missing or empty required field, a
duplicate product_id, a missing or undecodable file, bad boxes, ...) is skipped with a
warning "{manifest}:{line}: {reason}: {detail}", counted by reason in `builder.report`, and
the counts are stored in the dataset's metadata.json. Build, then read back:

  python -m eclip_jax.data.prepare --dataset=product_manifest --manifest=shop.jsonl \
      --data_dir=DIR
  tfds.data_source("product_manifest", data_dir=DIR)  # or "product_manifest/<config>"

Any lowercase config name works (`--dataset=product_manifest/myshop`), so one data_dir can
hold several manifests' datasets. A prepared dataset is reused as is when prepared again
with the manifest it was built from; another manifest, or the same file edited since (the
build records its absolute path and SHA-256), is refused with the two ways out: `--overwrite`
(which deletes the old build first) or a new config name.
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
import wave
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from etils import epath
from PIL import Image

from eclip_jax.data import schema
from eclip_jax.data import transforms

# Config and split names: they become directory and file names.
_NAME = re.compile(r"[a-z0-9_]+")
_REQUIRED_FIELDS = ("product_id", "title", "images")
# MPO is how PIL names JPEGs with a second embedded picture: still a plain JPEG to decoders.
_STORED_AS_IS = ("JPEG", "PNG", "MPO")
# The modes PIL writes as PNG (its writer has no 32-bit "I", nor CMYK).
_PNG_MODES = ("1", "L", "LA", "I;16", "I;16B", "P", "RGB", "RGBA")
# metadata.json keeps the first messages; the log has them all.
_MAX_STORED_MESSAGES = 1000


# ---------------------------------------------------------------------------------------
# The report: what was written, what was skipped and why.
# ---------------------------------------------------------------------------------------


@dataclasses.dataclass
class ManifestReport:
  """Records written per split, lines skipped per reason, one message per skipped line."""

  manifest: str = ""
  written: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  skipped: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  messages: list[str] = dataclasses.field(default_factory=list)

  def skip(self, line_no: int, reason: str, detail: str) -> None:
    message = f"{self.manifest}:{line_no}: {reason}: {detail}"
    self.skipped[reason] += 1
    self.messages.append(message)
    logging.warning("%s", message)

  def summary(self) -> str:
    def counts(counter):
      return ", ".join(f"{key}: {counter[key]}" for key in sorted(counter))

    line = f"product_manifest: wrote {sum(self.written.values())} records"
    line += f" ({counts(self.written)})" if self.written else ""
    line += f"; skipped {sum(self.skipped.values())}"
    return line + (f" ({counts(self.skipped)})" if self.skipped else "")

  def to_json(self) -> dict[str, Any]:
    return {
        "manifest": self.manifest,
        "summary": self.summary(),
        "written": dict(self.written),
        "skipped": dict(self.skipped),
        "messages": self.messages[:_MAX_STORED_MESSAGES],
    }

  @classmethod
  def from_json(cls, stored: Mapping[str, Any]) -> ManifestReport:
    return cls(
        manifest=stored["manifest"],
        written=collections.Counter(stored["written"]),
        skipped=collections.Counter(stored["skipped"]),
        messages=list(stored["messages"]),
    )


class _SkipLine(Exception):
  """A manifest line that cannot become a record; `reason` is its report category."""

  def __init__(self, reason: str, detail: str):
    super().__init__(detail)
    self.reason = reason


# ---------------------------------------------------------------------------------------
# First pass: parse and check every line, without reading the files it names.
# ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Listing:
  """A well-formed manifest line; its files are read only when its record is written."""

  line_no: int  # 1-based
  product_id: str
  catalog_id: str
  seller_id: str
  title: str
  description: str
  category: str
  attributes: list[tuple[str, str]]
  images: list[str]
  boxes: np.ndarray
  video_frames: list[str]
  audio: str | None
  restricted: bool
  split: str


@dataclasses.dataclass(frozen=True)
class _Scan:
  """The first pass over a manifest: its well-formed lines and what they imply."""

  listings: list[_Listing]
  problems: list[tuple[int, str, str]]  # (line_no, reason, detail) of skipped lines
  category_names: list[str]
  catalog_index: dict[str, int]
  splits: list[str]


def _scan_manifest(path: epath.Path) -> _Scan:
  listings, problems, first_line_of = [], [], {}
  with path.open("rb") as f:  # bytes: a line that is not UTF-8 is one bad line, not fatal
    for line_no, raw_line in enumerate(f, start=1):
      if not raw_line.strip():
        continue
      try:
        listing = _parse_line(line_no, raw_line)
        if listing.product_id in first_line_of:
          first = first_line_of[listing.product_id]
          raise _SkipLine("duplicate_product_id", f"{listing.product_id!r} is on line {first}")
      except _SkipLine as skip:
        problems.append((line_no, skip.reason, str(skip)))
        continue
      first_line_of[listing.product_id] = line_no
      listings.append(listing)
  catalog_ids = sorted({listing.catalog_id for listing in listings})
  return _Scan(
      listings=listings,
      problems=problems,
      category_names=sorted({listing.category for listing in listings}),
      catalog_index={catalog_id: i for i, catalog_id in enumerate(catalog_ids)},
      splits=sorted({listing.split for listing in listings}),
  )


def _parse_line(line_no: int, raw_line: bytes) -> _Listing:
  try:
    entry = json.loads(raw_line.decode("utf-8-sig"))  # -sig: tolerate a byte-order mark
  except UnicodeDecodeError as e:
    raise _SkipLine("malformed_json", f"not UTF-8: {e}") from None
  except json.JSONDecodeError as e:  # its own "line 1" would mislead: say the column only
    raise _SkipLine("malformed_json", f"{e.msg} at column {e.colno}") from None
  if not isinstance(entry, dict):
    raise _SkipLine("malformed_json", f"a {type(entry).__name__}, not a JSON object")
  for key in _REQUIRED_FIELDS:
    if entry.get(key) is None:
      raise _SkipLine("missing_field", f"no {key!r}")
  title = _field(entry, "title", str, "")
  if not title.strip():
    raise _SkipLine("empty_title", "the title is blank")
  product_id = _field(entry, "product_id", str, "")
  if not product_id:
    raise _SkipLine("missing_field", "'product_id' is empty")
  images = _file_list(entry, "images")
  if not images:
    raise _SkipLine("missing_field", "'images' lists no files")
  split = _field(entry, "split", str, "train")
  if not _NAME.fullmatch(split):
    raise _SkipLine("bad_field", f"split {split!r} is not lowercase letters, digits, '_'")
  # Whitespace-normalized: category names are stored one per line in category.labels.txt.
  category = " ".join(_field(entry, "category", str, "").split()) or "unknown"
  return _Listing(
      line_no=line_no,
      product_id=product_id,
      catalog_id=_field(entry, "catalog_id", str, "") or product_id,
      seller_id=_field(entry, "seller_id", str, ""),
      title=title,
      description=_field(entry, "description", str, ""),
      category=category,
      attributes=_attributes(entry),
      images=images,
      boxes=_boxes(entry, title, images),
      video_frames=_file_list(entry, "video_frames"),
      audio=_field(entry, "audio", str, None),
      restricted=_field(entry, "restricted", bool, False),
      split=split,
  )


def _field(entry: Mapping[str, Any], key: str, kind: type, default: Any) -> Any:
  """entry[key] if it is a `kind`; `default` if absent or null."""
  value = entry.get(key)
  if value is None:
    return default
  if not isinstance(value, kind):
    raise _SkipLine("bad_field", f"{key!r} should be {kind.__name__}, got {type(value).__name__}")
  return value


def _file_list(entry: Mapping[str, Any], key: str) -> list[str]:
  files = _field(entry, key, list, [])
  if not all(isinstance(name, str) and name for name in files):
    raise _SkipLine("bad_field", f"{key!r} must be a list of file paths")
  return files


def _attributes(entry: Mapping[str, Any]) -> list[tuple[str, str]]:
  raw = entry.get("attributes") or []
  pairs = list(raw.items()) if isinstance(raw, dict) else raw
  if not isinstance(pairs, list) or not all(
      isinstance(pair, (list, tuple)) and len(pair) == 2 and isinstance(pair[0], str)
      for pair in pairs
  ):
    raise _SkipLine("bad_field", "'attributes' must be an object or a list of [key, value]")
  table = []
  for key, value in pairs:
    if not isinstance(value, (str, int, float, bool)):
      raise _SkipLine("bad_field", f"attribute {key!r} is not a string, number or boolean")
    table.append((key, value if isinstance(value, str) else json.dumps(value)))
  return table


def _boxes(entry: Mapping[str, Any], title: str, images: list[str]) -> np.ndarray:
  try:
    boxes = np.asarray(entry.get("boxes") or np.zeros((0, 4)), np.float32)
  except (TypeError, ValueError):
    boxes = None
  if boxes is None or boxes.ndim != 2 or boxes.shape[1] != 4:
    raise _SkipLine("bad_boxes", "'boxes' must be a list of [x0, y0, x1, y1]")
  # schema.validate_record owns the box invariants (count, range, order); checking them
  # here, before any file is read, skips such a line cheaply.
  no_audio = {"waveform": (), "sample_rate": 0}
  try:
    schema.validate_record({"title": title, "images": images, "boxes": boxes, "audio": no_audio})
  except schema.RecordError as e:
    raise _SkipLine("bad_boxes", str(e)) from None
  return boxes


# ---------------------------------------------------------------------------------------
# Second pass: read the files of a listing into its record.
# ---------------------------------------------------------------------------------------


def _read_bytes(path: epath.Path) -> bytes:
  try:
    return path.read_bytes()
  except OSError as e:
    raise _SkipLine("missing_file", f"cannot read {path}: {e.strerror or e}") from None


def _read_image(path: epath.Path) -> bytes:
  """The encoded JPEG/PNG bytes of an image file, checked to decode in full."""
  data = _read_bytes(path)
  try:
    with Image.open(io.BytesIO(data)) as image:
      image.load()  # decodes every pixel: catches truncated files, not just bad headers
      if image.format in _STORED_AS_IS:
        return data
      if image.mode not in _PNG_MODES:
        # Transparency is kept for decoding to composite on input.background; anything
        # else becomes the RGB decoding would make of it.
        image = image.convert("RGBA") if image.has_transparency_data else transforms.to_rgb(image)
      buffer = io.BytesIO()
      image.save(buffer, format="PNG")
      return buffer.getvalue()
  except Exception as e:  # pylint: disable=broad-except  (PIL raises many types on bad data)
    raise _SkipLine("undecodable_file", f"cannot decode image {path}: {e}") from None


def _read_audio(path: epath.Path) -> dict[str, Any]:
  """A 16-bit PCM WAV file as a mono int16 waveform and its sample rate."""
  data = _read_bytes(path)
  try:
    with wave.open(io.BytesIO(data)) as wav:
      channels, sample_width = wav.getnchannels(), wav.getsampwidth()
      sample_rate, num_frames = wav.getframerate(), wav.getnframes()
      frames = wav.readframes(num_frames)
  except (wave.Error, EOFError) as e:
    raise _SkipLine("bad_audio", f"cannot read WAV {path}: {e}") from None
  if sample_width != 2:
    raise _SkipLine("bad_audio", f"{path} has {8 * sample_width}-bit samples, not 16-bit")
  if len(frames) != num_frames * channels * sample_width:
    raise _SkipLine("bad_audio", f"{path} is truncated")
  samples = np.frombuffer(frames, "<i2").reshape(num_frames, channels)
  waveform = np.round(samples.mean(axis=1)).astype(np.int16)
  return {"waveform": waveform, "sample_rate": sample_rate}


def _make_record(listing: _Listing, scan: _Scan, base_dir: epath.Path) -> dict[str, Any]:
  def resolve(name: str) -> epath.Path:
    path = epath.Path(name)
    return path if path.is_absolute() else base_dir / name

  record = schema.empty_optional_fields()
  record.update({
      "product_id": listing.product_id,
      "catalog_id": listing.catalog_id,
      "product_index": listing.line_no - 1,
      "catalog_index": scan.catalog_index[listing.catalog_id],
      "seller_id": listing.seller_id,
      "title": listing.title,
      "description": listing.description,
      "category": listing.category,  # ClassLabel maps the name to its index
      "category_name": listing.category,
      "attributes": [{"key": key, "value": value} for key, value in listing.attributes],
      "images": [_read_image(resolve(name)) for name in listing.images],
      "boxes": listing.boxes,
      "video_frames": [_read_image(resolve(name)) for name in listing.video_frames],
      "restricted": listing.restricted,
  })
  if listing.audio:
    record["audio"] = _read_audio(resolve(listing.audio))
  try:
    schema.validate_record(record)
  except schema.RecordError as e:
    raise _SkipLine("invalid_record", str(e)) from None
  return record


# ---------------------------------------------------------------------------------------
# The builder.
# ---------------------------------------------------------------------------------------


def _source(manifest: epath.Path) -> dict[str, str]:
  """What a build came from: the manifest's absolute path and the SHA-256 of its bytes."""
  digest = hashlib.sha256()
  with manifest.open("rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      digest.update(chunk)
  # epath's resolve() would prefix a gs:// path with the working directory.
  path = manifest if "://" in str(manifest) else manifest.resolve()
  return {"path": str(path), "sha256": digest.hexdigest()}


@functools.cache  # one object per name: TFDS tells configs apart by identity
def _named_config(name: str) -> tfds.core.BuilderConfig:
  if not _NAME.fullmatch(name):
    raise ValueError(
        f"product_manifest config {name!r}: use lowercase letters, digits and '_' only"
    )
  return tfds.core.BuilderConfig(name=name, description=f"The manifest built as {name!r}.")


class ProductManifest(tfds.core.GeneratorBasedBuilder):
  """Product listings from a JSONL manifest (see the module docstring for the format)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}
  BUILDER_CONFIGS = [_named_config("default")]

  def __init__(self, *, manifest: str | None = None, **kwargs):
    """`manifest` (a JSONL path) is needed to build, not to read a prepared dataset."""
    self._manifest = epath.Path(manifest) if manifest else None
    self.report = ManifestReport(manifest=str(self._manifest or ""))
    super().__init__(**kwargs)
    if self.is_prepared():  # a reused build reports what it was built with
      self.report = ManifestReport.from_json(self.info.metadata["report"])
      if self._manifest is not None:
        self._check_built_from_manifest()

  def _check_built_from_manifest(self) -> None:
    """Refuses to reuse a build of another manifest, or of this one before it changed."""
    built_from = self.info.metadata.get("source")
    if built_from is None:  # built before builds recorded their source
      return
    source = _source(self._manifest)
    if source == built_from:
      return
    if source["path"] == built_from["path"]:
      what = f"{built_from['path']} as it was before it changed"
    else:
      what = f"{built_from['path']}, not {source['path']}"
    raise ValueError(
        f"{self.data_path} holds product_manifest/{self.builder_config.name} built from "
        f"{what}; pass --overwrite to rebuild it, or build this manifest under a new name "
        "with --dataset=product_manifest/<name>.")

  @classmethod
  def get_builder_config(cls, name: str, version=None) -> tfds.core.BuilderConfig:
    return super().get_builder_config(name, version) or _named_config(name)

  def summary(self) -> str:
    return self.report.summary()

  @property
  def manifest_splits(self) -> list[str]:
    """The splits the manifest's well-formed lines name (found without reading any file)."""
    return self._scan.splits

  @functools.cached_property
  def _scan(self) -> _Scan:
    return _scan_manifest(self._manifest)

  def _info(self) -> tfds.core.DatasetInfo:
    # Without a manifest (reading), TFDS restores the names from category.labels.txt.
    category_names = self._scan.category_names if self._manifest else None
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
          f"{self.data_path} holds product_manifest/{self.builder_config.name} built from "
          f"a manifest with other categories than {self._manifest}: rebuild with prepare "
          "--overwrite, or build it under another config name (product_manifest/<name>)."
      )

  def _download_and_prepare(self, dl_manager, download_config) -> None:
    self.report = ManifestReport(manifest=str(self._manifest))
    super()._download_and_prepare(dl_manager, download_config)
    self.info.metadata["report"] = self.report.to_json()
    self.info.metadata["source"] = _source(self._manifest)
    logging.info("%s", self.report.summary())

  def _split_generators(self, dl_manager) -> dict[str, Iterator[tuple[str, dict[str, Any]]]]:
    del dl_manager  # the manifest names the files; nothing to download
    if self._manifest is None:
      raise ValueError("product_manifest needs manifest=FILE (a JSONL manifest) to build.")
    for line_no, reason, detail in self._scan.problems:
      self.report.skip(line_no, reason, detail)
    generators = {}
    for split in self._scan.splits:
      # TFDS fails on a split without examples, so a split whose every line was skipped
      # is left out; taking its first record finds out.
      examples = self._generate_examples(split)
      first = next(examples, None)
      if first is None:
        logging.warning("product_manifest: every line of split %r was skipped", split)
        continue
      generators[split] = itertools.chain([first], examples)
    if not generators:
      raise ValueError(f"{self._manifest}: no line became a record; {self.report.summary()}")
    return generators

  def _generate_examples(self, split: str) -> Iterator[tuple[str, dict[str, Any]]]:
    for listing in self._scan.listings:
      if listing.split != split:
        continue
      try:
        record = _make_record(listing, self._scan, self._manifest.parent)
      except _SkipLine as skip:
        self.report.skip(listing.line_no, skip.reason, str(skip))
        continue
      self.report.written[split] += 1
      yield listing.product_id, record
