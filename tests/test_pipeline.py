"""Grain pipelines: shards, shuffle determinism, state round-trip, skips, eval coverage."""

import io

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from eclip_jax.data import pipeline
from eclip_jax.data import schema
from eclip_jax.data import tokenizer as tokenizer_lib
from eclip_jax.data import toyshop
from eclip_jax.data import transforms


def _take(iterator, num_batches):
  return [next(iterator) for _ in range(num_batches)]


def _ids(batches):
  return [int(i) for batch in batches for i in batch["product_id"]]


def test_batches_have_the_contract_keys_and_shapes(tiny_input_config):
  tiny_input_config.modalities = tuple(transforms.MODALITIES)
  batch = next(pipeline.make_train_iterator(tiny_input_config, seed=0))
  assert batch["image"].shape == (8, 32, 32, 3) and batch["image"].dtype == np.uint8
  assert batch["text_tokens"].shape == (8, 32) and batch["text_tokens"].dtype == np.int32
  assert batch["text_mask"].dtype == np.bool_
  for key in ("product_id", "catalog_id", "category", "restricted", "box", "box_mask",
              "table_tokens", "video", "video_mask", "audio", "audio_mask"):
    assert batch[key].shape[0] == 8, key
  assert transforms.SKIPPED_KEY not in batch
  assert batch["video_mask"].all() and batch["audio_mask"].all()  # toyshop has both


@pytest.mark.parametrize("value_range", [(-1.0, 1.0), (0.0, 1.0), (-0.5, 2.0)])
def test_model_inputs_map_pixels_onto_the_value_range_as_the_host_does(value_range):
  levels = np.arange(256).reshape(1, 16, 16, 1).repeat(3, axis=-1)
  low, high = value_range
  want = low + levels * ((high - low) / 255)  # float64
  host = transforms.to_value_range(levels.astype(np.uint8), value_range)
  np.testing.assert_allclose(host, want, rtol=0, atol=1e-6)
  batch = {"image": levels.astype(np.uint8), "images": levels[None].astype(np.uint8),
           "video": levels[None].astype(np.uint8), "audio": np.linspace(-1, 1, 5, np.float32),
           "text_tokens": np.arange(4, dtype=np.int32)}
  compiled = jax.jit(lambda b: pipeline.model_inputs(b, value_range))(batch)
  for key, expected in (("image", want), ("images", want[None]), ("video", want[None])):
    assert compiled[key].dtype == np.float32
    np.testing.assert_allclose(compiled[key], expected, rtol=0, atol=1e-6)
  np.testing.assert_array_equal(compiled["audio"], batch["audio"])
  np.testing.assert_array_equal(compiled["text_tokens"], batch["text_tokens"])
  # Pixels already in floating point are taken as in the range: unchanged.
  floats = {"image": host}
  assert pipeline.model_inputs(floats, value_range)["image"] is host


def test_two_views_are_the_same_product(tiny_input_config):
  tiny_input_config.num_views = 2
  batch = next(pipeline.make_train_iterator(tiny_input_config, seed=0))
  assert batch["images"].shape == (8, 2, 32, 32, 3) and batch["boxes"].shape == (8, 2, 4)
  assert not np.allclose(batch["images"][:, 0], batch["images"][:, 1])


def test_process_shards_are_disjoint_and_cover_the_split(tiny_input_config, toyshop_tiny):
  num_train = toyshop_tiny[1].info.splits["train"].num_examples
  tiny_input_config.batch_size = 3  # one example per process per batch
  seen = []
  for process_index in range(3):
    iterator = pipeline.make_train_iterator(
        tiny_input_config, seed=0, process_index=process_index, process_count=3)
    shard_size = len(range(process_index, num_train, 3))
    seen.append(_ids(_take(iterator, shard_size)))
    assert len(set(seen[-1])) == shard_size  # one epoch of the shard, no repeats
  assert sum(len(s) for s in seen) == num_train
  assert len(set().union(*map(set, seen))) == num_train


def test_shuffle_is_deterministic_per_seed_and_reshuffles_each_epoch(tiny_input_config):
  first = _ids(_take(pipeline.make_train_iterator(tiny_input_config, seed=1), 4))
  again = _ids(_take(pipeline.make_train_iterator(tiny_input_config, seed=1), 4))
  other = _ids(_take(pipeline.make_train_iterator(tiny_input_config, seed=2), 4))
  assert first == again and first != other
  tiny_input_config.batch_size = 191  # the whole train split: batch 0 and 1 are epochs 1, 2
  epoch_1, epoch_2 = (_ids([b]) for b in _take(
      pipeline.make_train_iterator(tiny_input_config, seed=1), 2))
  assert sorted(epoch_1) == sorted(epoch_2) and epoch_1 != epoch_2


@pytest.mark.parametrize("num_workers,prefetch_batches", [(0, 0), (0, 2), (2, 2)])
def test_state_round_trip_resumes_exactly(tiny_input_config, num_workers, prefetch_batches):
  tiny_input_config.num_workers = num_workers
  tiny_input_config.prefetch_batches = prefetch_batches  # the state is of batches handed out
  iterator = pipeline.make_train_iterator(tiny_input_config, seed=3)
  _take(iterator, 3)
  state = iterator.get_state()
  expected = _take(iterator, 4)
  iterator.close()
  resumed = pipeline.make_train_iterator(tiny_input_config, seed=3)
  resumed.set_state(state)
  actual = _take(resumed, 4)
  resumed.close()
  for want, got in zip(expected, actual):
    assert want.keys() == got.keys()
    for key in want:
      np.testing.assert_array_equal(want[key], got[key], err_msg=key)


def test_batch_prefetch_changes_no_batch(tiny_input_config):
  def batches(prefetch_batches):
    tiny_input_config.prefetch_batches = prefetch_batches
    iterator = pipeline.make_train_iterator(tiny_input_config, seed=5)
    taken = _take(iterator, 5)
    iterator.close()
    return taken

  for want, got in zip(batches(0), batches(3), strict=True):
    assert want.keys() == got.keys()
    for key in want:
      np.testing.assert_array_equal(want[key], got[key], err_msg=key)


def test_eval_yields_every_example_exactly_once(tiny_input_config, toyshop_tiny):
  source = tfds.data_source("toyshop/tiny", split="validation", data_dir=toyshop_tiny[0])
  expected = sorted(int(source[i]["product_index"]) for i in range(len(source)))
  tiny_input_config.batch_size = 12  # 4 per process; 30 examples -> 10 per process
  valid_ids, batch_counts = [], []
  for process_index in range(3):
    batches = list(pipeline.make_eval_iterator(
        tiny_input_config, "validation", process_index=process_index, process_count=3))
    batch_counts.append(len(batches))
    for batch in batches:
      assert batch["image"].shape[0] == 4 and batch[pipeline.VALID_KEY].dtype == np.bool_
      valid_ids += _ids([{"product_id": batch["product_id"][batch[pipeline.VALID_KEY]]}])
      assert not batch["image"][~batch[pipeline.VALID_KEY]].any()  # padding rows are zeros
  assert len(set(batch_counts)) == 1  # every process runs the same number of batches
  assert sorted(valid_ids) == expected


# ---------------------------------------------------------------------------------------
# Corrupt records met at read time.
# ---------------------------------------------------------------------------------------

BAD_TITLE, BAD_IMAGE = {3, 11}, {5, 6, 17}


class CorruptShop(tfds.core.GeneratorBasedBuilder):
  """toyshop listings with some titles emptied and some image bytes garbled after the
  build, as a bad converter or bit rot would leave them."""

  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return self.dataset_info_from_configs(features=schema.product_features(
        toyshop.CATEGORY_NAMES))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples(), "test": self._generate_examples()}

  def _generate_examples(self):
    spec = toyshop.spec_from_name("tiny")
    for index in range(24):
      record = toyshop.make_listing(spec, index)
      if index in BAD_TITLE:
        record["title"] = "  "
      if index in BAD_IMAGE:
        record["images"] = [b"\xff\xd8\xff garbage"] * len(record["images"])
      yield record["product_id"], record


@pytest.fixture(scope="module")
def corrupt_config(tmp_path_factory):
  data_dir = tmp_path_factory.mktemp("corrupt")
  CorruptShop(data_dir=str(data_dir), file_format="array_record").download_and_prepare()
  spec = toyshop.spec_from_name("tiny")
  titles = [toyshop.make_listing(spec, i)["title"] for i in range(40)]
  model = tokenizer_lib.train_tokenizer(titles * 5, data_dir / "spm.model", vocab_size=400)
  config = pipeline.default_input_config()
  config.update(dataset="corrupt_shop", data_dir=str(data_dir), tokenizer=str(model),
                batch_size=7, image_size=16)
  return config


def test_corrupt_records_are_skipped_and_counted(corrupt_config):
  iterator = pipeline.make_train_iterator(corrupt_config, seed=0)
  ids = _ids(_take(iterator, 6))  # 42 examples: one full epoch of 19 good ones, and more
  assert not set(ids) & (BAD_TITLE | BAD_IMAGE)
  assert set(ids[:19]) == set(range(24)) - BAD_TITLE - BAD_IMAGE
  stats = iterator.stats
  assert stats["skipped/empty_title"] >= 2 and stats["skipped/undecodable_image"] >= 3
  # Counted exactly: skips happen once per bad record per epoch, and are restored.
  state = iterator.get_state()
  resumed = pipeline.make_train_iterator(corrupt_config, seed=0)
  resumed.set_state(state)
  assert resumed.stats == stats


def test_eval_counts_corrupt_records_as_invalid_rows(corrupt_config):
  iterator = pipeline.make_eval_iterator(corrupt_config, "test")
  batches = list(iterator)
  valid = [int(i) for b in batches for i in b["product_id"][b[pipeline.VALID_KEY]]]
  assert sorted(valid) == sorted(set(range(24)) - BAD_TITLE - BAD_IMAGE)
  assert iterator.stats["skipped/empty_title"] == 2
  assert iterator.stats["skipped/undecodable_image"] == 3


def test_missing_dataset_and_bad_batch_size_fail_clearly(tiny_input_config, tmp_path):
  tiny_input_config.data_dir = str(tmp_path)
  with pytest.raises(FileNotFoundError, match="not built in input.data_dir"):
    pipeline.make_train_iterator(tiny_input_config, seed=0)
  with pytest.raises(ValueError, match="input.batch_size=8 is not divisible by the 3"):
    pipeline.per_process_batch_size(8, 3)


def test_garbled_jpeg_fixture_really_is_undecodable():
  with pytest.raises(OSError):
    Image.open(io.BytesIO(b"\xff\xd8\xff garbage")).load()
