"""Tokenizer: token layout, truncation, byte fallback, persistence."""

import pickle

import numpy as np
import pytest

from eclip_jax.data import text
from eclip_jax.data import tokenizer as tokenizer_lib

TITLES = [f"{c} {m} mug {i}" for i, (c, m) in enumerate(
    [("red", "ceramic"), ("blue", "glass"), ("green", "metal"), ("navy", "plastic")] * 50)]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
  path = tmp_path_factory.mktemp("tok") / "spm.model"
  return tokenizer_lib.Tokenizer(
      tokenizer_lib.train_tokenizer(TITLES, path, vocab_size=400, normalizer="basic")
  )


def test_layout_is_bos_pieces_eos_then_padding(tokenizer):
  tokens, mask = tokenizer.encode(["red mug", ""], max_len=10)
  assert tokens.dtype == np.int32 and tokens.shape == (2, 10)
  row = tokens[0]
  length = int(mask[0].sum())
  assert row[0] == tokenizer_lib.BOS_ID and row[length - 1] == tokenizer_lib.EOS_ID
  assert np.all(row[length:] == tokenizer_lib.PAD_ID)
  np.testing.assert_array_equal(mask, tokens != tokenizer_lib.PAD_ID)
  # An empty text is BOS EOS.
  np.testing.assert_array_equal(tokens[1, :3], [tokenizer_lib.BOS_ID, tokenizer_lib.EOS_ID, 0])


def test_truncation_keeps_eos(tokenizer):
  tokens, mask = tokenizer.encode(["red ceramic mug " * 20], max_len=6)
  assert mask.all()
  assert tokens[0, 0] == tokenizer_lib.BOS_ID and tokens[0, -1] == tokenizer_lib.EOS_ID


def test_round_trip_and_byte_fallback(tokenizer):
  tokens, _ = tokenizer.encode(["red glass mug"], max_len=16)
  assert tokenizer.decode(tokens[0]) == "red glass mug"
  # Characters never seen in training encode as bytes, never as UNK, and decode back.
  unseen = "杯子 ☕"
  tokens, _ = tokenizer.encode([unseen], max_len=64)
  assert tokenizer_lib.UNK_ID not in tokens
  assert tokenizer.decode(tokens[0]) == unseen


def test_pickles_for_worker_processes(tokenizer):
  clone = pickle.loads(pickle.dumps(tokenizer))
  np.testing.assert_array_equal(
      clone.encode(["navy mug"], 8)[0], tokenizer.encode(["navy mug"], 8)[0]
  )


def test_records_normalizer_and_missing_model_is_clear(tokenizer, tmp_path):
  assert tokenizer.normalizer == "basic"
  with pytest.raises(FileNotFoundError, match="eclip_jax.data.prepare"):
    tokenizer_lib.Tokenizer(tmp_path / "nope.model")


def test_basic_normalizer():
  normalize = text.get_normalizer("basic")
  assert normalize("  ＲＥＤ\tMug\n２ｐｃｓ ") == "red mug 2pcs"
  with pytest.raises(ValueError, match="input.text_normalizer"):
    text.get_normalizer("fancy")
