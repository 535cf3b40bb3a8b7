"""product_manifest: JSONL manifest -> ArrayRecord, read back without TensorFlow."""

import collections
import io
import json
import logging
import pathlib
import re
import subprocess
import sys
import wave

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from eclip_jax.data import manifest as manifest_lib
from eclip_jax.data import transforms


def _write_image(path, color, format_name):
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.new("RGB", (16, 12), color).save(path, format=format_name)
  return path


def _write_wav(path, samples, sample_rate, sample_width=2):
  """samples: [frames, channels] integers."""
  samples = np.asarray(samples)
  path.parent.mkdir(parents=True, exist_ok=True)
  with wave.open(str(path), "wb") as wav:
    wav.setnchannels(samples.shape[1])
    wav.setsampwidth(sample_width)
    wav.setframerate(sample_rate)
    dtype = {1: np.uint8, 2: "<i2"}[sample_width]
    wav.writeframes(samples.astype(dtype).tobytes())
  return path


def _write_manifest(path, lines):
  """lines: dicts (written as JSON) or raw strings (written as they are)."""
  text = "\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines)
  path.write_text(text + "\n")
  return path


def _build(manifest, data_dir, **kwargs):
  builder = manifest_lib.ProductManifest(
      manifest=str(manifest), data_dir=str(data_dir), file_format="array_record", **kwargs
  )
  builder.download_and_prepare()
  return builder


def _records_by_id(data_source):
  records = (data_source[i] for i in range(len(data_source)))
  return {record["product_id"].decode(): record for record in records}


@pytest.fixture
def shop(tmp_path):
  """A shop directory with images, video frames and a stereo WAV."""
  _write_image(tmp_path / "img/red.jpg", (200, 30, 30), "JPEG")
  _write_image(tmp_path / "img/green.png", (30, 200, 30), "PNG")
  _write_image(tmp_path / "img/blue.webp", (30, 30, 200), "WEBP")
  for i in range(2):
    _write_image(tmp_path / f"vid/1/{i:03d}.jpg", (10 * i, 0, 0), "JPEG")
  _write_wav(tmp_path / "aud/1.wav", [[100, 300], [-6, -2], [7, 7]], sample_rate=8000)
  return tmp_path


def test_good_manifest_round_trips(shop, tmp_path):
  absolute_image = _write_image(tmp_path / "elsewhere/abs.png", (1, 2, 3), "PNG")
  manifest = _write_manifest(shop / "shop.jsonl", [
      {
          "product_id": "sku-1", "catalog_id": "cat-9", "seller_id": "s1",
          "title": "Red ceramic mug 350ml", "description": "Dishwasher safe.",
          "category": "mug", "attributes": {"color": "red", "material": "ceramic", "ml": 350},
          "images": ["img/red.jpg", "img/green.png"],
          "boxes": [[0.1, 0.2, 0.6, 0.9], [0.0, 0.0, 1.0, 1.0]],
          "video_frames": ["vid/1/000.jpg", "vid/1/001.jpg"], "audio": "aud/1.wav",
          "restricted": True, "split": "train",
      },
      "",  # blank lines are skipped silently, but still count as lines
      {
          "product_id": "sku-2", "catalog_id": "cat-9", "title": "Blue mug",
          "category": "vase", "attributes": [["size", "L"], ["color", "blue"]],
          "images": ["img/blue.webp"],
      },
      {"product_id": "sku-3", "title": "Plain thing", "images": [str(absolute_image)]},
  ])
  builder = _build(manifest, tmp_path / "data")
  assert builder.summary() == "product_manifest: wrote 3 records (train: 3); skipped 0"

  data_source = tfds.data_source("product_manifest", data_dir=str(tmp_path / "data"))
  assert set(data_source) == {"train"}
  records = _records_by_id(data_source["train"])
  mug, vase, plain = records["sku-1"], records["sku-2"], records["sku-3"]

  assert mug["title"] == b"Red ceramic mug 350ml"
  assert mug["description"] == b"Dishwasher safe." and mug["seller_id"] == b"s1"
  assert list(mug["attributes"]["key"]) == [b"color", b"material", b"ml"]
  assert list(mug["attributes"]["value"]) == [b"red", b"ceramic", b"350"]
  assert list(vase["attributes"]["key"]) == [b"size", b"color"]
  assert list(mug["images"]) == [
      (shop / "img/red.jpg").read_bytes(), (shop / "img/green.png").read_bytes()
  ]
  assert list(mug["video_frames"]) == [
      (shop / f"vid/1/{i:03d}.jpg").read_bytes() for i in range(2)
  ]
  np.testing.assert_allclose(mug["boxes"], [[0.1, 0.2, 0.6, 0.9], [0, 0, 1, 1]])
  assert plain["boxes"].shape == (0, 4)
  # Stereo averaged to mono (rounded half to even).
  np.testing.assert_array_equal(mug["audio"]["waveform"], [200, -4, 7])
  assert mug["audio"]["sample_rate"] == 8000
  assert len(plain["audio"]["waveform"]) == 0
  assert mug["restricted"] and not vase["restricted"]

  # WebP is re-encoded as PNG with the same pixels.
  (webp_png,) = vase["images"]
  assert webp_png.startswith(b"\x89PNG")
  np.testing.assert_array_equal(
      np.asarray(Image.open(shop / "img/blue.webp").convert("RGB")),
      np.asarray(Image.open(io.BytesIO(webp_png)).convert("RGB")),
  )
  assert list(plain["images"]) == [absolute_image.read_bytes()]

  # Ids: line numbers, and catalog_ids in sorted order (sku-3 is its own catalog product).
  assert [r["product_index"] for r in (mug, vase, plain)] == [0, 2, 3]
  assert mug["catalog_index"] == vase["catalog_index"] == 0 and plain["catalog_index"] == 1
  assert plain["catalog_id"] == b"sku-3"

  names = ["mug", "unknown", "vase"]
  assert builder.info.features["category"].names == names
  assert [r["category"] for r in (mug, vase, plain)] == [0, 2, 1]
  assert plain["category_name"] == b"unknown"
  assert "tensorflow" not in sys.modules


def test_fresh_process_reads_category_names_from_files(shop, tmp_path):
  manifest = _write_manifest(shop / "shop.jsonl", [
      {"product_id": "a", "title": "A", "images": ["img/red.jpg"], "category": "cup"},
      {"product_id": "b", "title": "B", "images": ["img/red.jpg"], "category": "bowl"},
  ])
  _build(manifest, tmp_path / "data")
  reader = (
      "import json, sys\n"
      "import eclip_jax.data.manifest\n"
      "import tensorflow_datasets as tfds\n"
      f"source = tfds.data_source('product_manifest', data_dir={str(tmp_path / 'data')!r})\n"
      "names = source['train'].dataset_info.features['category'].names\n"
      "print(json.dumps([names, len(source['train']), 'tensorflow' in sys.modules]))\n"
  )
  repo_root = pathlib.Path(__file__).parents[1]
  result = subprocess.run(
      [sys.executable, "-c", reader], cwd=repo_root, capture_output=True, text=True, check=True
  )
  assert json.loads(result.stdout.splitlines()[-1]) == [["bowl", "cup"], 2, False]


def test_bad_lines_are_skipped_counted_and_reported(shop, tmp_path, caplog):
  (shop / "img/truncated.jpg").write_bytes((shop / "img/red.jpg").read_bytes()[:300])
  _write_wav(shop / "aud/8bit.wav", [[1], [2]], sample_rate=8000, sample_width=1)
  (shop / "aud/noise.wav").write_bytes(b"not a wav at all")

  def listing(product_id, **fields):
    return {"product_id": product_id, "title": f"title {product_id}",
            "images": ["img/red.jpg"], **fields}

  lines = [
      listing("good-1"),                                                    # 1
      '{"product_id": "x", "title": ',                                      # 2
      {"title": "no id", "images": ["img/red.jpg"]},                        # 3
      listing("blank-title", title="   "),                                  # 4
      listing("good-1"),                                                    # 5
      listing("gone", images=["img/red.jpg", "img/nope.jpg"]),              # 6
      listing("cut", images=["img/truncated.jpg"]),                         # 7
      listing("few-boxes", images=["img/red.jpg"] * 2, boxes=[[0, 0, 1, 1]]),  # 8
      listing("wide-box", boxes=[[0.5, 0.0, 1.2, 1.0]]),                    # 9
      listing("noise", audio="aud/noise.wav"),                              # 10
      listing("8bit", audio="aud/8bit.wav"),                                # 11
      "",                                                                   # 12
      listing("good-2", split="test"),                                      # 13
      listing("no-frame", video_frames=["vid/1/000.jpg", "vid/9/000.jpg"]),  # 14
      "[1, 2]",                                                             # 15
      listing("odd-images", images="img/red.jpg"),                          # 16
      listing("lonely", split="validation", images=["img/lost.png"]),       # 17
      listing("no-images", images=[]),                                      # 18
  ]
  manifest = _write_manifest(shop / "shop.jsonl", lines)
  with caplog.at_level(logging.INFO):
    builder = _build(manifest, tmp_path / "data")

  data_source = tfds.data_source("product_manifest", data_dir=str(tmp_path / "data"))
  # `validation` lost its only line, so TFDS (which refuses empty splits) never sees it.
  assert set(data_source) == {"train", "test"}
  written = {**_records_by_id(data_source["train"]), **_records_by_id(data_source["test"])}
  assert set(written) == {"good-1", "good-2"}

  report = builder.report
  assert report.written == {"train": 1, "test": 1}
  assert report.skipped == collections.Counter({
      "malformed_json": 2, "missing_field": 2, "empty_title": 1, "duplicate_product_id": 1,
      "missing_file": 3, "undecodable_file": 1, "bad_boxes": 2, "bad_audio": 2,
      "bad_field": 1,
  })
  # One message per skipped line, naming the manifest, the line and (if any) the file.
  expected_files = {
      6: "img/nope.jpg", 7: "img/truncated.jpg", 10: "aud/noise.wav", 11: "aud/8bit.wav",
      14: "vid/9/000.jpg", 17: "img/lost.png",
  }
  skipped_lines = {2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 14, 15, 16, 17, 18}
  by_line = {}
  for message in report.messages:
    prefix = f"{manifest}:"
    assert message.startswith(prefix), message
    by_line[int(message[len(prefix):].split(":")[0])] = message
  assert set(by_line) == skipped_lines and len(report.messages) == len(skipped_lines)
  for line_no, file_name in expected_files.items():
    assert str(shop / file_name) in by_line[line_no]
  assert "duplicate_product_id" in by_line[5] and "line 1" in by_line[5]
  assert "empty_title" in by_line[4] and "missing_field" in by_line[3]

  # Every message reached the log as a warning, and the counts are stored beside the data.
  warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  assert set(report.messages) <= set(warnings)
  assert report.summary() in caplog.text
  assert report.summary() == (
      "product_manifest: wrote 2 records (test: 1, train: 1); skipped 15 (bad_audio: 2, "
      "bad_boxes: 2, bad_field: 1, duplicate_product_id: 1, empty_title: 1, "
      "malformed_json: 2, missing_field: 2, missing_file: 3, undecodable_file: 1)"
  )
  stored = json.loads((tmp_path / "data/product_manifest/default/1.0.0/metadata.json").read_text())
  assert stored["report"]["skipped"] == dict(report.skipped)
  assert stored["report"]["summary"] == report.summary()
  assert "tensorflow" not in sys.modules


def test_second_prepare_reuses_the_build(shop, tmp_path):
  manifest = _write_manifest(shop / "shop.jsonl", [
      {"product_id": "a", "title": "A", "images": ["img/red.jpg"], "category": "cup"},
      '{"broken',
  ])
  first = _build(manifest, tmp_path / "data")
  data_files = sorted((tmp_path / "data/product_manifest/default/1.0.0").glob("*.array_record*"))
  mtimes = [f.stat().st_mtime_ns for f in data_files]

  second = _build(manifest, tmp_path / "data")
  assert [f.stat().st_mtime_ns for f in data_files] == mtimes
  # The reused build reports what it was built with (from metadata.json).
  assert second.summary() == first.summary()
  assert second.report.messages == first.report.messages

  # A manifest whose categories differ cannot reuse that directory: say how to proceed.
  other = _write_manifest(shop / "other.jsonl", [
      {"product_id": "a", "title": "A", "images": ["img/red.jpg"], "category": "plate"},
  ])
  with pytest.raises(ValueError, match="other categories"):
    manifest_lib.ProductManifest(manifest=str(other), data_dir=str(tmp_path / "data"))


def test_splits_and_custom_config_name(shop, tmp_path):
  manifest = _write_manifest(shop / "shop.jsonl", [
      {"product_id": f"p{i}", "title": f"T{i}", "images": ["img/green.png"], "split": split}
      for i, split in enumerate(["train", "train", "test", "validation", "train"])
  ])
  builder = _build(manifest, tmp_path / "data", config="myshop")
  assert builder.info.full_name == "product_manifest/myshop/1.0.0"
  assert not (tmp_path / "data/product_manifest/default").exists()

  data_source = tfds.data_source("product_manifest/myshop", data_dir=str(tmp_path / "data"))
  assert {split: len(source) for split, source in data_source.items()} == {
      "train": 3, "test": 1, "validation": 1
  }
  assert set(_records_by_id(data_source["validation"])) == {"p3"}

  with pytest.raises(ValueError, match="lowercase letters"):
    manifest_lib.ProductManifest(config="My-Shop", data_dir=str(tmp_path / "data"))
  assert "tensorflow" not in sys.modules


def test_prepare_overwrite_rebuilds_a_manifest_whose_categories_changed(tmp_path):
  from eclip_jax.data import prepare  # pylint: disable=g-import-not-at-top

  image = _write_image(tmp_path / "a.jpg", "red", "JPEG")
  lines = [{"product_id": f"p{i}", "title": f"red thing number {i}", "images": [str(image)],
            "category": "mug"} for i in range(20)]
  first = _write_manifest(tmp_path / "first.jsonl", lines)
  second = _write_manifest(tmp_path / "second.jsonl",
                           [{**line, "category": "lamp"} for line in lines])
  data_dir = str(tmp_path / "data")
  builder, _ = prepare.prepare("product_manifest", data_dir, manifest=str(first), vocab_size=300)
  assert builder.info.features["category"].names == ["mug"]
  with pytest.raises(ValueError, match="rebuild with prepare --overwrite"):
    prepare.prepare("product_manifest", data_dir, manifest=str(second), vocab_size=300)
  builder, _ = prepare.prepare(
      "product_manifest", data_dir, manifest=str(second), vocab_size=300, overwrite=True)
  assert builder.info.features["category"].names == ["lamp"]
  reread = tfds.data_source("product_manifest", split="train", data_dir=data_dir)
  assert len(reread) == 20


def test_16_bit_and_transparent_images_keep_what_decoding_needs(shop, tmp_path):
  """Formats stored as PNG keep 16-bit gray and transparency, so that decoding scales the
  gray levels (instead of clipping them to white) and puts cut-outs on white (not black)."""
  gray = np.array([0, 257, 32896, 65535], ">u2")
  Image.frombytes("I;16B", (4, 1), gray.tobytes()).save(shop / "img/gray16.tif")
  cutout = Image.new("RGBA", (4, 1))
  cutout.putdata([(200, 100, 0, 255), (200, 100, 0, 0), (0, 0, 255, 255), (9, 9, 9, 0)])
  cutout.save(shop / "img/cutout.webp", lossless=True)
  manifest = _write_manifest(shop / "shop.jsonl", [
      {"product_id": "gray", "title": "Gray", "images": ["img/gray16.tif"]},
      {"product_id": "cut", "title": "Cut", "images": ["img/cutout.webp"]},
  ])
  _build(manifest, tmp_path / "data")
  records = _records_by_id(
      tfds.data_source("product_manifest", split="train", data_dir=str(tmp_path / "data")))
  whole = lambda w, h: (0, 0, w, h)  # noqa: E731  (4x1 -> 4x4: the row repeated)
  pixels, _, _ = transforms.decode_crop_resize(records["gray"]["images"][0], 4, whole)
  np.testing.assert_array_equal(pixels[0], [[0] * 3, [1] * 3, [128] * 3, [255] * 3])
  pixels, _, _ = transforms.decode_crop_resize(records["cut"]["images"][0], 4, whole)
  np.testing.assert_array_equal(pixels[0], [[200, 100, 0], [255] * 3, [0, 0, 255], [255] * 3])


def test_a_manifest_without_the_train_split_is_refused_before_building(tmp_path):
  from eclip_jax.data import prepare  # pylint: disable=g-import-not-at-top

  image = _write_image(tmp_path / "a.jpg", "red", "JPEG")
  manifest = _write_manifest(tmp_path / "shop.jsonl", [
      {"product_id": f"p{i}", "title": f"red thing number {i}", "images": [str(image)],
       "split": "training" if i < 15 else "val"} for i in range(20)])
  data_dir = tmp_path / "data"
  with pytest.raises(ValueError, match=re.escape(
      f"{manifest} has no 'train' split (its splits: ['training', 'val']), which the tokenizer "
      "is trained on and training reads; name the training lines' split 'train', or pass "
      "--train_split=<split> here and --config.input.train_split=<split> to training.")):
    prepare.prepare("product_manifest", str(data_dir), manifest=str(manifest), vocab_size=300)
  assert not (data_dir / "product_manifest").exists()  # nothing half-built to --overwrite

  builder, tokenizer_path = prepare.prepare("product_manifest", str(data_dir),
                                            manifest=str(manifest), vocab_size=300,
                                            train_split="training")
  assert {s: i.num_examples for s, i in builder.info.splits.items()} == {"training": 15, "val": 5}
  assert tokenizer_path.exists()


def test_prepare_refuses_a_build_of_another_or_an_edited_manifest(tmp_path):
  """The build records its manifest's path and hash: prepare with another manifest, or the
  same one edited, says how to proceed instead of silently reusing the old records."""
  from eclip_jax.data import prepare  # pylint: disable=g-import-not-at-top

  image = _write_image(tmp_path / "a.jpg", "red", "JPEG")
  lines = [{"product_id": f"p{i}", "title": f"red thing number {i}", "images": [str(image)]}
           for i in range(20)]
  first = _write_manifest(tmp_path / "first.jsonl", lines)
  second = _write_manifest(tmp_path / "second.jsonl",
                           lines + [{"product_id": "new", "title": "new", "images": [str(image)]}])
  data_dir = str(tmp_path / "data")
  prepare.prepare("product_manifest", data_dir, manifest=str(first), vocab_size=300)
  build = tmp_path / "data/product_manifest/default/1.0.0"
  how = ("; pass --overwrite to rebuild it, or build this manifest under a new name with "
         "--dataset=product_manifest/<name>.")
  with pytest.raises(ValueError, match=re.escape(
      f"{build} holds product_manifest/default built from {first}, not {second}{how}")):
    prepare.prepare("product_manifest", data_dir, manifest=str(second), vocab_size=300)

  original = first.read_text()
  first.write_text(original + json.dumps({"product_id": "x", "title": "x",
                                          "images": [str(image)]}) + "\n")
  with pytest.raises(ValueError, match=re.escape(
      f"built from {first} as it was before it changed{how}")):
    prepare.prepare("product_manifest", data_dir, manifest=str(first), vocab_size=300)

  first.write_text(original)  # the manifest it was built from: reused as it is
  builder, _ = prepare.prepare("product_manifest", data_dir, manifest=str(first), vocab_size=300)
  assert builder.info.splits["train"].num_examples == 20
  builder, _ = prepare.prepare("product_manifest/second", data_dir, manifest=str(second),
                               vocab_size=300)
  assert builder.info.splits["train"].num_examples == 21


def test_field_summary_counts_the_records_that_have_each_field(shop, tmp_path):
  manifest = _write_manifest(shop / "shop.jsonl", [
      {"product_id": f"p{i}", "title": f"T{i}", "images": ["img/red.jpg"],
       **({"description": "only this one", "boxes": [[0, 0, 1, 1]]} if i == 3 else {})}
      for i in range(10)])
  from eclip_jax.data import prepare  # pylint: disable=g-import-not-at-top

  summary = prepare.field_summary(_build(manifest, tmp_path / "data").as_data_source("train"))
  assert summary["description"] == "present 1/10, size mean 1.3 max 13"
  assert summary["boxes"].startswith("present 1/10,")
  assert summary["title"].startswith("present 10/10,")
  assert summary["restricted"].startswith("present 10/10,")  # a flag is always there
