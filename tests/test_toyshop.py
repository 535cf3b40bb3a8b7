"""toyshop as a TFDS dataset: determinism, splits, duplicates, records, prepare CLI."""

import collections
import io
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from eclip_jax.data import builders
from eclip_jax.data import prepare
from eclip_jax.data import schema
from eclip_jax.data import tokenizer as tokenizer_lib
from eclip_jax.data import toyshop
from eclip_jax.data.toyshop import scenes


def _all_records(data_dir, dataset="toyshop/tiny"):
  sources = tfds.data_source(dataset, data_dir=data_dir, download=False)
  return {split: [source[i] for i in range(len(source))] for split, source in sources.items()}


def _array_record_bytes(builder):
  files = sorted(p for p in builder.data_path.iterdir() if ".array_record" in p.name)
  assert len(files) == 3  # one file per split
  return {p.name: p.read_bytes() for p in files}


def test_same_seed_gives_byte_identical_records_serial_or_parallel(toyshop_tiny, tmp_path):
  _, serial = toyshop_tiny
  parallel, _ = prepare.prepare("toyshop/tiny", str(tmp_path), num_workers=2, vocab_size=1000)
  assert _array_record_bytes(parallel) == _array_record_bytes(serial)


def test_different_seed_gives_different_world():
  first = toyshop.make_listing(toyshop.spec_from_name("tiny"), 0)
  other = toyshop.make_listing(toyshop.spec_from_name("tiny_seed1"), 0)
  assert first["images"][0] != other["images"][0]


def test_splits_have_disjoint_products_and_cover_the_catalog(toyshop_tiny):
  records = _all_records(toyshop_tiny[0])
  catalog_ids = {s: {r["catalog_id"] for r in rs} for s, rs in records.items()}
  assert set(records) == {"train", "validation", "test"}
  assert not catalog_ids["train"] & catalog_ids["validation"]
  assert not catalog_ids["train"] & catalog_ids["test"]
  assert not catalog_ids["validation"] & catalog_ids["test"]
  product_index = [r["product_index"] for rs in records.values() for r in rs]
  assert sorted(product_index) == list(range(toyshop.SIZE_NUM_LISTINGS["tiny"]))


def test_catalog_duplicates_are_different_listings_of_one_product(toyshop_tiny):
  listings = collections.defaultdict(list)
  for record in _all_records(toyshop_tiny[0])["train"]:
    listings[record["catalog_index"]].append(record)
  duplicated = [rs for rs in listings.values() if len(rs) > 1]
  assert len(duplicated) >= 10
  for first, second in (rs[:2] for rs in duplicated):
    assert first["product_id"] != second["product_id"]
    assert first["category"] == second["category"]
    assert first["images"][0] != second["images"][0]  # each seller shot their own photos
  assert any(rs[0]["title"] != rs[1]["title"] for rs in duplicated)


def test_records_satisfy_the_schema_and_carry_every_modality(toyshop_tiny):
  _, builder = toyshop_tiny
  records = _all_records(toyshop_tiny[0])["train"]
  names = builder.info.features["category"].names
  assert len(names) >= 20 and names == list(toyshop.CATEGORY_NAMES)
  restricted = {names[r["category"]] for r in records if r["restricted"]}
  assert restricted and restricted <= {"knife", "wine", "lighter"}
  for record in records:
    schema.validate_record({**record, "title": record["title"].decode()})
    assert names[record["category"]] == record["category_name"].decode()
    assert 2 <= len(record["images"]) <= 4 and len(record["boxes"]) == len(record["images"])
    assert record["images"][0][:2] in (b"\xff\xd8", b"\x89P")  # JPEG or PNG bytes
    assert len(record["video_frames"]) == 8
    assert record["audio"]["sample_rate"] == 16000 and len(record["audio"]["waveform"]) == 8000
    keys = [k.decode() for k in record["attributes"]["key"]]
    assert set(keys) <= set(toyshop.ATTRIBUTE_KEYS) | {k for k, _ in toyshop.NOISE_TABLE_KEYS}


def test_titles_are_noisy_but_name_the_product(toyshop_tiny):
  records = _all_records(toyshop_tiny[0])["train"]
  synonyms = {info[0]: info[1] for info in toyshop.CATEGORY_INFO.values()}
  named = sum(
      any(s in r["title"].decode().lower() for s in synonyms[r["category_name"].decode()])
      for r in records
  )
  assert named / len(records) > 0.85  # the rest carry a typo in the category word
  fluffy = sum(any(f.lower() in r["title"].decode().lower() for f in toyshop.FLUFF)
               for r in records)
  assert 0.2 < fluffy / len(records) < 0.95


def test_config_names_parse_and_canonicalize():
  spec = toyshop.spec_from_name("small_lifestyle_224px_seed3")
  assert (spec.num_listings, spec.clutter, spec.image_size, spec.seed) == (3000, "lifestyle", 224, 3)
  assert builders.canonical_toyshop_name(toyshop.spec_from_name("tiny_cluttered_64px")) == "tiny"
  assert toyshop.spec_from_name("medium_light_seed2").clutter == "light"
  with pytest.raises(ValueError, match="unknown toyshop config 'huge'"):
    toyshop.spec_from_name("huge")


def test_prepare_is_idempotent(toyshop_tiny):
  data_dir, builder = toyshop_tiny
  stamps = {p.name: os.stat(p).st_mtime_ns for p in builder.data_path.iterdir()}
  again, tokenizer_path = prepare.prepare("toyshop/tiny", data_dir, vocab_size=1000)
  assert {p.name: os.stat(p).st_mtime_ns for p in again.data_path.iterdir()} == stamps
  assert tokenizer_path == tokenizer_lib.default_tokenizer_path(builder.data_dir, 1000)


def test_cli_builds_without_tensorflow(toyshop_tiny):
  """The real command, in a fresh process: it reuses the build and never imports TF."""
  data_dir, _ = toyshop_tiny
  script = (
      "import runpy, sys\n"
      "sys.argv = ['prepare', '--dataset=toyshop/tiny', '--data_dir=" + data_dir + "',"
      " '--vocab_size=1000', '--show=1']\n"
      "try:\n  runpy.run_module('eclip_jax.data.prepare', run_name='__main__')\n"
      "except SystemExit as e:\n  assert not e.code, e.code\n"
      "assert 'tensorflow' not in sys.modules, 'TensorFlow was imported'\n"
      "print('NO_TF_OK')\n"
  )
  result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"}, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "NO_TF_OK" in result.stdout and "per-field summary" in result.stdout
  try:
    import tensorflow  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
    has_tf = True
  except ImportError:
    has_tf = False
  assert not has_tf, "tensorflow must not be installed in the project's environment"


@pytest.mark.parametrize("clutter", toyshop.CLUTTER_LEVELS)
def test_stored_boxes_contain_the_product_pixels(clutter, monkeypatch):
  """The product is what a photo adds to its scene (background and distractors): those
  pixels must lie inside the stored box. Photo and scene are recorded as the renderer makes
  them, and the stored, decoded image must be that photo up to JPEG noise. Occluders are
  left out, since they add pixels of their own."""
  photos, backdrops = [], []
  render_image, backdrop = scenes.render_image, scenes._backdrop

  def recording_render_image(*args, **kwargs):
    rgb, box, mask = render_image(*args, **kwargs)
    photos.append(rgb.astype(np.float32))
    return rgb, box, mask

  def recording_backdrop(*args):
    frame, surfaces = backdrop(*args)
    backdrops.append(np.clip(frame + 0.5, 0, 255).astype(np.uint8).astype(np.float32))
    return frame, surfaces

  monkeypatch.setattr(scenes, "render_image", recording_render_image)
  monkeypatch.setattr(scenes, "_backdrop", recording_backdrop)
  monkeypatch.setattr(scenes, "_occluder", lambda *args: None)
  spec = toyshop.spec_from_name(f"tiny_{clutter}")
  for index in range(8):
    photos.clear()
    backdrops.clear()  # the video's scene comes after the photos' and is left over by zip
    record = toyshop.make_listing(spec, index)
    for encoded, box, photo, scene in zip(record["images"], record["boxes"], photos, backdrops):
      stored = np.asarray(Image.open(io.BytesIO(encoded)).convert("RGB"), np.float32)
      # JPEG noise reaches 17 on textures; two different photos differ by 22 or more.
      assert np.abs(stored - photo).mean() < 20
      size = photo.shape[0]
      # Where the product changed the scene, more than antialiasing or a faint stroke does.
      rows, cols = np.nonzero(np.abs(photo - scene).sum(-1) > 120)
      assert len(rows) > 0.003 * size * size
      x0, y0 = np.floor(box[:2] * size) - 1
      x1, y1 = np.ceil(box[2:] * size) + 1
      inside = (cols >= x0) & (cols < x1) & (rows >= y0) & (rows < y1)
      assert inside.mean() > 0.98, (index, box, inside.mean())
