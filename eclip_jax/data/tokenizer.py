"""SentencePiece tokenizer: trained per dataset, stored beside it, loaded by path.

Token layout of an encoded text of length `max_len`:

    [BOS] piece_1 ... piece_n [EOS] [PAD] ... [PAD]      mask: 1 for BOS..EOS, 0 for PAD

Long texts are truncated *before* EOS is appended, so every sequence ends in EOS and a
CLIP-style text tower can pool at the EOS position (`argmax(mask * position)`), and
`max_len - 2` pieces of content fit. Ids are fixed: PAD 0, UNK 1, BOS 2, EOS 3. The model is
unigram with byte fallback, so any UTF-8 text (emoji, unseen scripts) encodes without UNK.

A JSON sidecar (`<model>.json`) records the text normalizer the model was trained after;
the pipeline refuses to pair a tokenizer with a different normalizer.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Sequence

import numpy as np
import sentencepiece as spm
from etils import epath

from eclip_jax.data import text as text_lib

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
# Masked language modeling's [MASK] token: byte fallback never emits UNK, so its id (and the
# text tower's embedding row for it) is free, and no tokenizer has to be retrained for it.
MASK_ID = UNK_ID
NUM_SPECIAL_IDS = 4  # ids below this are never content pieces


def default_tokenizer_path(dataset_dir: str | epath.Path, vocab_size: int) -> epath.Path:
  """Where `prepare` stores a dataset's tokenizer: inside its versioned directory."""
  return epath.Path(dataset_dir) / f"spm_unigram_{vocab_size}.model"


def train_tokenizer(
    texts: Iterable[str],
    model_path: str | epath.Path,
    *,
    vocab_size: int,
    normalizer: str = "basic",
    max_sentences: int = 2_000_000,
) -> epath.Path:
  """Trains a unigram model on `texts` (normalized with `normalizer`) and saves it.

  On small corpora the vocabulary may come out smaller than `vocab_size` (a soft limit),
  rather than failing as SentencePiece does by default.
  """
  normalize = text_lib.get_normalizer(normalizer)
  model_path = epath.Path(model_path)
  normalized = (normalize(t) for t in texts)
  model = _train_to_bytes(
      (t for t in normalized if t), vocab_size=vocab_size, max_sentences=max_sentences
  )
  model_path.parent.mkdir(parents=True, exist_ok=True)
  # Write-then-rename so a crash never leaves a half-written model for `prepare` to reuse.
  tmp_path = model_path.parent / (model_path.name + ".tmp")
  tmp_path.write_bytes(model)
  _sidecar(tmp_path).write_text(json.dumps({"normalizer": normalizer, "vocab_size": vocab_size}))
  _sidecar(tmp_path).rename(_sidecar(model_path))
  tmp_path.rename(model_path)
  return model_path


def _train_to_bytes(sentences: Iterable[str], *, vocab_size: int, max_sentences: int) -> bytes:
  model = io.BytesIO()
  try:
    _train(sentences, model, vocab_size=vocab_size, max_sentences=max_sentences)
  except RuntimeError as error:
    raise ValueError(
        f"could not train a {vocab_size}-piece tokenizer (byte fallback alone takes 256 "
        f"pieces plus one per distinct character): {error}"
    ) from error
  return model.getvalue()


def _train(sentences: Iterable[str], model: io.BytesIO, *, vocab_size: int, max_sentences: int):
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(sentences),
      model_writer=model,
      model_type="unigram",
      vocab_size=vocab_size,
      hard_vocab_limit=False,
      byte_fallback=True,
      character_coverage=0.9995,
      # Our normalizer already ran; SentencePiece's own NFKC would be a second, hidden one.
      normalization_rule_name="identity",
      pad_id=PAD_ID,
      unk_id=UNK_ID,
      bos_id=BOS_ID,
      eos_id=EOS_ID,
      input_sentence_size=max_sentences,
      shuffle_input_sentence=True,
      minloglevel=2,
  )


def _sidecar(model_path: epath.Path) -> epath.Path:
  return model_path.parent / (model_path.name + ".json")


class Tokenizer:
  """Encodes text to fixed-length id arrays with a mask; picklable (Grain workers)."""

  def __init__(self, model_path: str | epath.Path):
    self.model_path = epath.Path(model_path)
    if not self.model_path.exists():
      raise FileNotFoundError(
          f"tokenizer model {self.model_path} does not exist; build it with "
          "`python -m eclip_jax.data.prepare --dataset=... --data_dir=...` or set "
          "input.tokenizer to an existing .model file"
      )
    self._model_proto = self.model_path.read_bytes()
    sidecar = _sidecar(self.model_path)
    self.normalizer = (
        json.loads(sidecar.read_text())["normalizer"] if sidecar.exists() else None
    )
    self._load()

  def _load(self):
    self._sp = spm.SentencePieceProcessor(model_proto=self._model_proto)

  def __getstate__(self):
    return {k: v for k, v in self.__dict__.items() if k != "_sp"}

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._load()

  def save(self, model_path: str | epath.Path) -> epath.Path:
    """Writes this tokenizer (the model and its normalizer sidecar) to `model_path`."""
    model_path = epath.Path(model_path)
    model_path.write_bytes(self._model_proto)
    if self.normalizer is not None:
      _sidecar(model_path).write_text(json.dumps({"normalizer": self.normalizer}))
    return model_path

  @property
  def vocab_size(self) -> int:
    return self._sp.get_piece_size()

  def encode(self, texts: Sequence[str], max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Returns (tokens int32 [N, max_len], mask bool [N, max_len]); see module docstring."""
    if max_len < 2:
      raise ValueError(f"max_len must leave room for BOS and EOS, got {max_len}")
    tokens = np.full((len(texts), max_len), PAD_ID, np.int32)
    for row, text in enumerate(texts):
      # One string at a time: SentencePiece encodes a list on a thread pool, which costs
      # 50x more than the encoding itself for the short texts of a per-example transform.
      pieces = self._sp.encode(text)
      ids = [BOS_ID, *pieces[: max_len - 2], EOS_ID]
      tokens[row, : len(ids)] = ids
    return tokens, tokens != PAD_ID

  def encode_with_spans(self, text: str, max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """`encode([text], max_len)`'s tokens of one text, with each token's UTF-8 byte span.

    Returns (tokens int32 [max_len], spans int32 [max_len, 2]): the [begin, end) bytes of
    `text` each piece covers (-1 on BOS, EOS and PAD). A byte-fallback piece other than a
    character's last, and the leading word marker, cover no byte: begin == end.
    """
    if max_len < 2:
      raise ValueError(f"max_len must leave room for BOS and EOS, got {max_len}")
    pieces = self._sp.encode(text, return_type="proto").pieces[: max_len - 2]
    tokens = np.full((max_len,), PAD_ID, np.int32)
    spans = np.full((max_len, 2), -1, np.int32)
    tokens[: len(pieces) + 2] = [BOS_ID, *(piece.id for piece in pieces), EOS_ID]
    if pieces:
      spans[1 : len(pieces) + 1] = [(piece.begin, piece.end) for piece in pieces]
    return tokens, spans

  def decode(self, tokens: Sequence[int]) -> str:
    return self._sp.decode([int(t) for t in tokens if t not in (PAD_ID, BOS_ID, EOS_ID)])
