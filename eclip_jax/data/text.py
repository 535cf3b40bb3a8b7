"""Text normalizers, chosen by name in config (`input.text_normalizer`), and e-CLIP's title
cleaning ops and pair filters (`input.title_cleaning`, ...).

The tokenizer is trained on text passed through the same normalizer the pipeline applies,
so the normalizer a dataset's tokenizer was trained with is recorded beside the model and
checked when the pipeline opens it.
"""

from __future__ import annotations

import html
import re
import unicodedata
from collections.abc import Callable

_WHITESPACE = re.compile(r"\s+")


def _identity(text: str) -> str:
  return text


def _basic(text: str) -> str:
  """NFKC (full-width forms and compatibility characters fold to plain ones), lowercase
  (a no-op for scripts without case), and collapsed whitespace."""
  text = unicodedata.normalize("NFKC", text).lower()
  return _WHITESPACE.sub(" ", text).strip()


NORMALIZERS: dict[str, Callable[[str], str]] = {"none": _identity, "basic": _basic}


def get_normalizer(name: str) -> Callable[[str], str]:
  if name not in NORMALIZERS:
    raise ValueError(
        f"input.text_normalizer={name!r} is unknown; choose one of {sorted(NORMALIZERS)}"
    )
  return NORMALIZERS[name]


# ---------------------------------------------------------------------------------------
# Title cleaning (e-CLIP): ops chosen by `input.title_cleaning`, applied to titles in order
# before the normalizer, and the pair filters that drop what is left too short or not text.
# ---------------------------------------------------------------------------------------

# Marketing phrases listings add to titles, in the languages toyshop and the e-CLIP
# publication's market use; `input.promo_phrases` replaces the list.
DEFAULT_PROMO_PHRASES = (
    "free shipping", "free delivery", "hot sale", "best seller", "bestseller", "new arrival",
    "limited offer", "limited edition", "top quality", "high quality", "100% authentic",
    "big sale", "on sale", "sale", "special offer", "discount", "clearance", "lowest price",
    "gift idea", "official store", "fast delivery", "【hot】",
    "무료배송", "당일발송", "특가", "할인", "包邮", "热卖", "新品", "特价", "正品",
)

_TAG = re.compile(r"<[^<>]*>")
# Pictographs, dingbats, symbols and their joiners: flags (regional indicators), skin-tone
# modifiers, variation selector 16, zero-width joiner, keycap, tag characters.
_EMOJI = re.compile(
    "[\U0001F000-\U0001FAFF\U00002600-\U000027BF\U00002300-\U000023FF\U00002B00-\U00002BFF"
    "\U0001F1E6-\U0001F1FF\U0000FE0F\U0000200D\U000020E3\U000E0020-\U000E007F]+")


def _is_ascii_alnum(char: str) -> bool:
  return char.isascii() and char.isalnum()


def _phrase_pattern(phrase: str) -> str:
  """`phrase` matched case-insensitively, as a whole word where it starts or ends with a
  Latin letter or digit (CJK and Hangul phrases match anywhere: those scripts run words
  together)."""
  pattern = re.escape(phrase)
  if _is_ascii_alnum(phrase[0]):
    pattern = r"(?<![A-Za-z0-9])" + pattern
  if _is_ascii_alnum(phrase[-1]):
    pattern += r"(?![A-Za-z0-9])"
  return pattern


def _strip_edges(text: str) -> str:
  """Collapsed whitespace, without punctuation or symbols left dangling at either end
  (what stripping a leading "HOT SALE!" leaves behind)."""
  text = _WHITESPACE.sub(" ", text).strip()
  edge = lambda c: unicodedata.category(c)[0] in "PSZ"  # noqa: E731
  start, stop = 0, len(text)
  while start < stop and edge(text[start]):
    start += 1
  while stop > start and edge(text[stop - 1]):
    stop -= 1
  return text[start:stop]


def title_cleaner(ops: tuple[str, ...], promo_phrases: tuple[str, ...] = DEFAULT_PROMO_PHRASES
                  ) -> Callable[[str], str]:
  """The function that applies `ops` in order to a title. The ops:

      nfkc        Unicode NFKC: full-width and compatibility forms fold to plain ones
      casefold    case folding where the script has case (a no-op for CJK, Hangul)
      strip_html  tags removed (replaced by a space), then entities decoded (&amp; -> &)
      strip_emoji pictographs, dingbats, flags and their joiners removed
      strip_promo `promo_phrases` removed, case-insensitively (longest phrase first)
      whitespace  whitespace collapsed, and punctuation/symbols trimmed from both ends
  """
  phrases = sorted((p for p in promo_phrases if p), key=len, reverse=True)
  promo = re.compile("|".join(map(_phrase_pattern, phrases)), re.IGNORECASE) if phrases else None
  steps = {
      "nfkc": lambda t: unicodedata.normalize("NFKC", t),
      "casefold": str.casefold,
      "strip_html": lambda t: html.unescape(_TAG.sub(" ", t)),
      "strip_emoji": lambda t: _EMOJI.sub(" ", t),
      "strip_promo": lambda t: promo.sub(" ", t) if promo else t,
      "whitespace": _strip_edges,
  }
  unknown = [op for op in ops if op not in steps]
  if unknown:
    raise ValueError(f"input.title_cleaning has unknown ops {unknown}; known: {sorted(steps)}.")
  chosen = [steps[op] for op in ops]

  def clean(text: str) -> str:
    for step in chosen:
      text = step(text)
    return text

  return clean


def text_fraction(text: str) -> float:
  """The share of a text's non-space characters that are letters or digits (1 for an
  empty text: nothing in it is non-text)."""
  chars = [c for c in text if not c.isspace()]
  if not chars:
    return 1.0
  return sum(unicodedata.category(c)[0] in "LN" for c in chars) / len(chars)
