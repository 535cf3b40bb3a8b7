"""Text normalizers, chosen by name in config (`input.text_normalizer`).

The tokenizer is trained on text passed through the same normalizer the pipeline applies,
so the normalizer a dataset's tokenizer was trained with is recorded beside the model and
checked when the pipeline opens it.
"""

from __future__ import annotations

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
