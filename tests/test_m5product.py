"""m5product: an M5Product release directory -> ArrayRecord, read back without TensorFlow."""

import collections
import json
import logging
import os
import re
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from eclip_jax.data import builders
from eclip_jax.data import m5product as m5product_lib
from eclip_jax.data import pipeline
from eclip_jax.data import prepare


def _save(path, array):
  path.parent.mkdir(parents=True, exist_ok=True)
  np.save(path, array)


def _features(rng, *shape):
  """float32 values that float16 holds exactly, so read-back arrays compare equal."""
  return rng.standard_normal(shape).astype(np.float16).astype(np.float32)


def _write_release(root, items, splits):
  """items: {id: entry (written as JSON)}; splits: {name: [ids]} or raw text."""
  root.mkdir(parents=True, exist_ok=True)
  (root / "items.json").write_text(json.dumps(items))
  (root / "splits").mkdir(exist_ok=True)
  for name, ids in splits.items():
    (root / "splits" / f"{name}.txt").write_text(ids if isinstance(ids, str) else
                                                 "\n".join(ids) + "\n")
  return root


def _records_by_id(data_source):
  records = (data_source[i] for i in range(len(data_source)))
  return {record["product_id"].decode(): record for record in records}


def _build(release, data_dir, **kwargs):
  builder = m5product_lib.M5Product(m5product_dir=str(release), data_dir=str(data_dir),
                                    file_format="array_record", **kwargs)
  builder.download_and_prepare()
  return builder


@pytest.fixture
def release(tmp_path):
  """A small release with one problem of each kind; returns (root, the arrays written)."""
  rng = np.random.default_rng(0)
  root = tmp_path / "m5"
  arrays = {
      "1001": {"image_feats": _features(rng, 36, 2048), "image_boxes": _features(rng, 36, 5),
               "video_feats": _features(rng, 12, 1024), "audio_feats": _features(rng, 80, 751)},
      # 1002 has no video file: absent, not a problem.
      "1002": {"image_feats": _features(rng, 36, 2048), "image_boxes": _features(rng, 36, 5),
               "audio_feats": _features(rng, 80, 751)},
      "1003": {"image_feats": _features(rng, 36, 1024),  # the wrong width
               "image_boxes": _features(rng, 36, 5), "video_feats": _features(rng, 5, 1024)},
      "1005": {"image_feats": _features(rng, 36, 2048),  # its boxes are missing
               "audio_feats": _features(rng, 751, 80)},  # transposed
      "1008": {"image_feats": np.full((36, 2048), 1e5, np.float32),  # beyond float16
               "image_boxes": _features(rng, 36, 5)},
  }
  for item_id, files in arrays.items():
    for folder, array in files.items():
      _save(root / folder / f"{item_id}.npy", array)
  (root / "video_feats/1005.npy").write_bytes(b"not an npy file")
  items = {
      "1001": {"title": "Red running shoe", "pv": "color#:#red#;#size#:# 42 ", "label": "shoes"},
      "1002": {"title": "Blue wool sweater", "label": 7,
               "pv": "color#:#blue#;#nonsense#;#material#:#wool#:#cotton#;#"},
      "1003": {"title": "Ceramic mug", "label": "mug"},
      "1004": {"pv": "color#:#green", "label": "shoes"},  # no title
      "1005": {"title": "Desk lamp", "pv": 5},  # no label, pv not a string
      "1006": {"title": "Unlisted", "label": "shoes"},  # no split names it
      "1007": "just a string",
      "1008": {"title": "Oversized", "label": "shoes"},
  }
  splits = {
      "pretrain": ["1001", "1002", "1003", "1004", "1007", "9999", "1001"],
      "retrieval_gallery_coarse": ["1001", "1008"],
      "retrieval_query_coarse": ["1002"],
      "retrieval_gallery_fine": ["1004"],  # no usable item: left out
      "retrieval_query_fine": ["1005"],
      "classification_train": "\n1003\n\n",
      "classification_test": ["1005"],
  }
  return _write_release(root, items, splits), arrays


def test_release_round_trips_with_problems_counted_by_reason(release, tmp_path, caplog):
  root, arrays = release
  with caplog.at_level(logging.INFO):
    builder = _build(root, tmp_path / "data")

  data_source = tfds.data_source("m5product", data_dir=str(tmp_path / "data"))
  by_split = {split: _records_by_id(source) for split, source in data_source.items()}
  assert {split: sorted(records) for split, records in by_split.items()} == {
      "pretrain": ["1001", "1002", "1003"],
      "retrieval_gallery_coarse": ["1001", "1008"],
      "retrieval_query_coarse": ["1002"],
      "retrieval_query_fine": ["1005"],
      "classification_train": ["1003"],
      "classification_test": ["1005"],
  }
  shoe, sweater, mug = (by_split["pretrain"][i] for i in ("1001", "1002", "1003"))
  lamp = by_split["classification_test"]["1005"]
  oversized = by_split["retrieval_gallery_coarse"]["1008"]

  # Text, table, labels and ids.
  assert shoe["title"] == b"Red running shoe"
  assert list(shoe["attributes"]["key"]) == [b"color", b"size"]
  assert list(shoe["attributes"]["value"]) == [b"red", b"42"]
  assert list(sweater["attributes"]["key"]) == [b"color"]  # two malformed pairs dropped
  assert len(mug["attributes"]["key"]) == len(lamp["attributes"]["key"]) == 0
  names = ["7", "mug", "shoes", "unknown"]
  assert builder.info.features["category"].names == names
  assert [r["category_name"] for r in (shoe, sweater, mug, lamp)] == [
      b"shoes", b"7", b"mug", b"unknown"]
  assert [r["category"] for r in (shoe, sweater, mug, lamp)] == [2, 0, 1, 3]
  # Indices: positions among the sorted usable ids (1001 1002 1003 1005 1006 1008), the
  # same in every split an item is in.
  assert [r["product_index"] for r in (shoe, sweater, mug, lamp, oversized)] == [0, 1, 2, 3, 5]
  assert by_split["retrieval_gallery_coarse"]["1001"]["product_index"] == 0
  assert shoe["catalog_id"] == b"1001" and shoe["catalog_index"] == 0

  # Features exactly as written, as float16 (boxes float32); problems leave theirs empty.
  np.testing.assert_array_equal(shoe["region_feats"], arrays["1001"]["image_feats"])
  np.testing.assert_array_equal(shoe["region_boxes"], arrays["1001"]["image_boxes"])
  np.testing.assert_array_equal(shoe["frame_feats"], arrays["1001"]["video_feats"])
  np.testing.assert_array_equal(shoe["mel"], arrays["1001"]["audio_feats"])
  assert (shoe["region_feats"].dtype, shoe["region_boxes"].dtype) == (np.float16, np.float32)
  assert shoe["frame_feats"].dtype == shoe["mel"].dtype == np.float16
  np.testing.assert_array_equal(sweater["region_feats"], arrays["1002"]["image_feats"])
  np.testing.assert_array_equal(sweater["mel"], arrays["1002"]["audio_feats"])
  assert sweater["frame_feats"].shape == (0, 1024)
  np.testing.assert_array_equal(mug["frame_feats"], arrays["1003"]["video_feats"])
  for record in (mug, lamp, oversized):
    assert record["region_feats"].shape == (0, 2048) and record["region_boxes"].shape == (0, 5)
  assert lamp["frame_feats"].shape == (0, 1024)
  assert mug["mel"].shape == lamp["mel"].shape == oversized["mel"].shape == (80, 0)
  # The release has no pixels, frames or waveforms.
  for record in (shoe, sweater, mug, lamp, oversized):
    assert len(record["images"]) == len(record["video_frames"]) == 0
    assert len(record["audio"]["waveform"]) == 0 and record["audio"]["sample_rate"] == 0
    assert record["boxes"].shape == (0, 4) and record["seller_id"] == b""

  report = builder.report
  assert report.written == {
      "pretrain": 3, "retrieval_gallery_coarse": 2, "retrieval_query_coarse": 1,
      "retrieval_query_fine": 1, "classification_train": 1, "classification_test": 1}
  assert report.skipped == collections.Counter({
      "missing_title": 1, "bad_entry": 1, "not_in_table": 1, "duplicate_in_split": 1,
      "in_no_split": 1})
  # 1005 is in two splits; its problems are counted once.
  assert report.dropped == collections.Counter({
      "malformed_pv_pair": 2, "bad_pv": 1, "bad_shape_image_feats": 1,
      "missing_image_boxes": 1, "unreadable_video_feats": 1, "bad_shape_audio_feats": 1,
      "bad_values_image_feats": 1})
  assert report.absent == collections.Counter({"table": 2, "video": 2, "audio": 2})

  # One warning per problem (the unlisted item is only counted), naming the file.
  assert len(report.messages) == sum(report.skipped.values()) - 1 + sum(report.dropped.values())
  warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  assert set(report.messages) <= set(warnings)
  assert any(str(root / "video_feats/1005.npy") in m and "unreadable_video_feats" in m
             for m in report.messages)
  assert any(m.startswith(f"{root / 'splits/pretrain.txt'}:7: duplicate_in_split")
             for m in report.messages)
  assert any("'retrieval_gallery_fine'" in w for w in warnings)
  assert report.summary() in caplog.text
  assert report.summary().startswith("m5product: wrote 9 records (classification_test: 1, ")

  stored = json.loads((tmp_path / "data/m5product/default/1.0.0/metadata.json").read_text())
  for counter in ("written", "skipped", "dropped", "absent"):
    assert stored["report"][counter] == dict(getattr(report, counter)), counter
  assert stored["report"]["summary"] == report.summary()
  assert stored["source"]["path"] == str(root)
  # A reading builder (no release) reports what the build counted.
  reader = builders.builder("m5product", data_dir=str(tmp_path / "data"))
  assert isinstance(reader, m5product_lib.M5Product)
  assert reader.summary() == report.summary()
  assert "tensorflow" not in sys.modules


def _title_only_release(root, num_items=20):
  items = {f"{i:04d}": {"title": f"green wool scarf number {i}", "pv": f"size#:#{i}",
                        "label": "scarf" if i % 2 else "hat",
                        **({"catalog_id": "shared"} if i < 2 else {})}
           for i in range(num_items)}
  ids = sorted(items)
  return _write_release(root, items, {"pretrain": ids[:15], "classification_test": ids[15:]})


def test_prepare_builds_reuses_and_feeds_text_and_table(tmp_path):
  """Items with a title and a table only: prepare trains the tokenizer on `pretrain`, the
  pipeline reads text and table, and the image modality skips every record by name."""
  root = _title_only_release(tmp_path / "m5")
  data_dir = str(tmp_path / "data")
  with pytest.raises(ValueError, match=re.escape(
      f"{root} has no 'train' split (its splits: ['classification_test', 'pretrain']), which "
      "the tokenizer is trained on and training reads; pass --train_split=<split> here and "
      "--config.input.train_split=<split> to training.")):
    prepare.prepare("m5product", data_dir, m5product_dir=str(root), vocab_size=300)
  assert not (tmp_path / "data/m5product").exists()

  builder, tokenizer_path = prepare.prepare("m5product", data_dir, m5product_dir=str(root),
                                            vocab_size=300, train_split="pretrain")
  assert tokenizer_path.exists()
  assert {s: i.num_examples for s, i in builder.info.splits.items()} == {
      "pretrain": 15, "classification_test": 5}
  assert builder.report.absent == {"image": 20, "video": 20, "audio": 20}
  records = _records_by_id(builder.as_data_source("pretrain"))
  assert records["0000"]["catalog_id"] == records["0001"]["catalog_id"] == b"shared"
  assert records["0000"]["catalog_index"] == records["0001"]["catalog_index"]
  assert len({int(r["catalog_index"]) for r in records.values()}) == 14

  config = pipeline.default_input_config()
  config.update(dataset="m5product", data_dir=data_dir, train_split="pretrain",
                vocab_size=300, batch_size=8, modalities=("text", "table"))
  batch = next(pipeline.make_train_iterator(config, seed=0, process_index=0, process_count=1))
  assert batch["text_tokens"].shape == (8, 32) and batch["text_mask"].any(axis=1).all()
  assert batch["table_mask"].any(axis=1).all()
  config.modalities = ("image", "text")
  with pytest.raises(RuntimeError, match="every record of the training split is being skipped"):
    next(pipeline.make_train_iterator(config, seed=0, process_index=0, process_count=1))

  # Prepared again from the same release: reused. Its items.json edited: refused.
  stamps = [os.stat(f).st_mtime_ns for f in sorted(builder.data_path.iterdir())]
  again, _ = prepare.prepare("m5product", data_dir, m5product_dir=str(root), vocab_size=300,
                             train_split="pretrain")
  assert [os.stat(f).st_mtime_ns for f in sorted(again.data_path.iterdir())] == stamps
  items = json.loads((root / "items.json").read_text())
  items["0000"]["title"] = "edited"
  (root / "items.json").write_text(json.dumps(items))
  with pytest.raises(ValueError, match=re.escape(
      f"built from {root} as it was before its items.json or split files changed; pass "
      "--overwrite to rebuild it, or build this release under a new name with "
      "--dataset=m5product/<name>.")):
    prepare.prepare("m5product", data_dir, m5product_dir=str(root), vocab_size=300,
                    train_split="pretrain")
  rebuilt, _ = prepare.prepare("m5product", data_dir, m5product_dir=str(root), vocab_size=300,
                               train_split="pretrain", overwrite=True)
  assert _records_by_id(rebuilt.as_data_source("pretrain"))["0000"]["title"] == b"edited"


def test_what_cannot_be_built_is_one_clear_error(tmp_path):
  data_dir = str(tmp_path / "data")
  with pytest.raises(ValueError, match="needs --m5product_dir=DIR"):
    prepare.make_builder("m5product", data_dir)
  with pytest.raises(ValueError, match="there is no such directory"):
    prepare.make_builder("m5product", data_dir, m5product_dir=str(tmp_path / "nowhere"))
  (tmp_path / "empty").mkdir()
  with pytest.raises(ValueError, match=re.escape(f"{tmp_path / 'empty/items.json'}: there is "
                                                 "no such file")):
    prepare.make_builder("m5product", data_dir, m5product_dir=str(tmp_path / "empty"))

  bad_name = _write_release(tmp_path / "bad_name", {"1": {"title": "t"}}, {"Pretrain": ["1"]})
  with pytest.raises(ValueError, match="a split's name must be lowercase"):
    _build(bad_name, data_dir)
  not_json = _write_release(tmp_path / "not_json", {}, {"pretrain": ["1"]})
  (not_json / "items.json").write_text("{'single': 'quotes'}")
  with pytest.raises(ValueError, match="not a JSON file"):
    _build(not_json, data_dir)
  nothing = _write_release(tmp_path / "nothing", {"1": {"pv": "a#:#b"}, "2": []},
                           {"pretrain": ["1", "2", "3"]})
  with pytest.raises(ValueError, match=re.escape(
      f"{nothing}: no item became a record; m5product: wrote 0 records; skipped 3 "
      "(bad_entry: 1, missing_title: 1, not_in_table: 1)")):
    _build(nothing, data_dir)
