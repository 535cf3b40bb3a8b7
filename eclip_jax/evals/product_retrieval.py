"""Image-only same-product retrieval: every photo queries the gallery of all the other photos.

Each record contributes its first `num_views` images (fewer when it has fewer: a repeated
image is not a gallery item). A query's positives are the gallery photos of the same product:
by `positives`, `"catalog"` (default: any listing of the catalog product, whose photos show
the same item) or `"product"` (the query's own listing only). The query itself is never in
its gallery. This is how a shopper's photo finds the product, and what an instance-level
embedding (ECLIP's `instance_emb_img`) is for.

Metrics, with the M5Product protocol's definitions (METHODS.md §3): for a query with P
positives in the gallery and K' = min(K, P),

    map{K}   mean over queries of (1/K') * sum over ranks r <= K holding a positive of
             precision@r
    r1       fraction of queries whose top-ranked photo is a positive
    chance_r1  the expected r1 of a random ranking (mean of P / (gallery size))

over the queries with at least one positive (`num_queries`; `num_without_positive` others;
a split without any, e.g. a manifest of one photo per listing and no duplicates, reports
these counts alone, with a warning).
Ties between scores (rare with float embeddings) are broken arbitrarily. `num_skipped` counts
bad records of the split.

Config entry (`config.evals.<name>`): `type="product_retrieval"`, `split="validation"`,
`positives="catalog"`, `num_views=2`, `image_output="image_emb"` (or `"instance_emb_img"`),
and any `config.input` field to override (`batch_size`, ...).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from absl import logging

from eclip_jax.evals import common

# A photo is its own "pair": as positives that would leave none (the query is not in its
# gallery), so product retrieval takes the two listing-level vocabularies only.
POSITIVES = ("product", "catalog")


def top_k_hits(embeddings: np.ndarray, ids: np.ndarray, k: int,
               gallery: np.ndarray | None = None,
               gallery_ids: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Each row queries all the other rows, or, given `gallery` (and its `gallery_ids`), every
  gallery row: ([N, k] whether the r-th best is a positive, [N] number of positives in its
  gallery). Scores are dot products in float32; k is capped at the gallery size."""
  embeddings, ids = np.asarray(embeddings, np.float32), np.asarray(ids)
  exclude_self = gallery is None  # a photo is not its own answer
  if exclude_self:
    gallery, gallery_ids = embeddings, ids
  gallery, gallery_ids = np.asarray(gallery, np.float32), np.asarray(gallery_ids)
  num = len(embeddings)
  k = min(k, len(gallery) - exclude_self)
  hits = np.zeros((num, k), bool)
  num_positives = np.zeros(num, np.int64)
  block = max(1, common.MAX_BLOCK_SCORES // max(1, len(gallery)))
  for start in range(0, num, block):
    rows = np.arange(start, min(num, start + block))
    scores = embeddings[rows] @ gallery.T
    positive = ids[rows, None] == gallery_ids[None, :]
    if exclude_self:
      scores[np.arange(len(rows)), rows] = -np.inf
      positive[np.arange(len(rows)), rows] = False
    scores = np.nan_to_num(scores, nan=-np.inf)
    num_positives[rows] = positive.sum(axis=1)
    # The k best, in order: a partial partition, then a stable sort of those k only.
    candidates = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, candidates, 1), axis=1, kind="stable")
    best = np.take_along_axis(candidates, order, 1)[:, :k]
    hits[rows] = np.take_along_axis(positive, best, 1)
  return hits, num_positives


def average_precision_at(hits: np.ndarray, num_positives: np.ndarray, k: int) -> np.ndarray:
  """[N] AP@k of `top_k_hits`'s rows: (1/K') * sum over ranks r <= k holding a positive of
  precision@r, K' = min(k, number of positives) (rows need a positive)."""
  ranks = np.arange(1, hits.shape[1] + 1)
  precision = np.cumsum(hits, axis=1) / ranks
  return np.sum((hits * precision)[:, :k], axis=1) / np.minimum(k, num_positives)


def precision_at(hits: np.ndarray, num_positives: np.ndarray, k: int) -> np.ndarray:
  """[N] Prec@k of `top_k_hits`'s rows as the M5Product protocol defines it: positives among
  the k best / K', K' = min(k, the row's number of positives)."""
  return np.sum(hits[:, :k], axis=1) / np.minimum(k, num_positives)


def same_product_metrics(embeddings: np.ndarray, ids: np.ndarray,
                         ks: Sequence[int] = common.KS) -> dict[str, float | int]:
  """mAP@K for each K, R@1 and chance R@1 of rows querying each other (module docstring)."""
  hits, num_positives = top_k_hits(embeddings, ids, max(ks))
  answerable = num_positives > 0
  hits, num_positives = hits[answerable], num_positives[answerable]
  metrics = {"num_queries": int(answerable.sum()),
             "num_without_positive": int((~answerable).sum())}
  if not metrics["num_queries"]:
    return metrics  # nothing to rank
  for k in ks:
    metrics[f"map{k}"] = float(np.mean(average_precision_at(hits, num_positives, k)))
  metrics["r1"] = float(np.mean(hits[:, 0]))
  metrics["chance_r1"] = float(np.mean(num_positives / (len(embeddings) - 1)))
  return metrics


class ProductRetrievalEvaluator(common.SplitEvaluator):
  """Photo -> photos of the same product over one split (see the module docstring)."""

  DEFAULTS = {"positives": "catalog", "num_views": 2, "image_output": "image_emb"}
  MODALITIES = ("image",)

  def __init__(self, name: str, entry: Mapping[str, Any], **kwargs):
    super().__init__(name, entry, **kwargs)
    self.id_key = self.positive_id_key(POSITIVES)
    self.image_output = self.data.image_output()
    self.num_views = self.data.fields["num_views"]

  @classmethod
  def views_per_record(cls, name: str, entry: Mapping[str, Any]) -> int:
    num_views = entry.get("num_views", cls.DEFAULTS["num_views"])
    if not isinstance(num_views, int) or num_views < 1:
      raise ValueError(f"config.evals.{name}.num_views={num_views!r} must be a positive int.")
    return num_views

  def run(self, params: Any) -> dict[str, float | int]:
    multi_view = self.num_views > 1
    split = self.data.run_model(
        params,
        inputs=("images",) if multi_view else ("image",),
        outputs=(self.image_output,),
        labels=(self.id_key, "view_mask") if multi_view else (self.id_key,),
    )
    embeddings, ids = split[self.image_output], split[self.id_key]
    if multi_view:  # [records, V, D] -> one row per distinct photo
      new_view = split["view_mask"]
      ids = np.broadcast_to(ids[:, None], new_view.shape)[new_view]
      embeddings = embeddings[new_view]
    metrics = same_product_metrics(common.l2_normalize(embeddings), ids)
    metrics["num_skipped"] = self.data.num_records - len(split[self.id_key])
    if not metrics["num_queries"]:
      logging.warning("config.evals.%s: no photo of split %r has another photo of its product "
                      "to find; product retrieval needs listings with several photos or "
                      "duplicate listings (a shared catalog_id).", self.data.name, self.data.split)
    return metrics
