"""Zero-shot image <-> text retrieval over a split: recall@{1,5,10} in both directions.

Every image of the split queries the gallery of all its titles (`i2t`), and every title the
gallery of all its images (`t2i`). A query is a hit at K when one of its positives is among
the K best-scoring gallery items. Positives are, by the entry's `positives` field (the
vocabulary of `loss.positives`, data/schema.py):

* `"pair"` or `"product"`: the query's own listing only (each listing is one row here);
* `"catalog"` (default): any listing of the same catalog product (matched on `catalog_id`),
  because the duplicate listings of a product by other sellers are as correct an answer
  as the query's own; with `"pair"` they count as misses.

Config entry (`config.evals.<name>`): `type="retrieval"`, `split="validation"`,
`positives="catalog"`, `image_output="image_emb"` (or ECLIP's `"instance_emb_img"`), and any
`config.input` field to override (`batch_size`, ...).
Metrics: `i2t_r{1,5,10}`, `t2i_r{1,5,10}`, `chance_r1` (the expected R@1 of a random
ranking), `num_examples`, `num_skipped` (bad records of the split).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from eclip_jax.evals import common


def first_positive_ranks(
    queries: np.ndarray, gallery: np.ndarray, query_ids: np.ndarray, gallery_ids: np.ndarray
) -> np.ndarray:
  """For each query, the number of non-positives scored at or above its best positive.

  0 means a positive is the top hit, so R@K is the fraction of queries with rank < K.
  Gallery item j is a positive of query i when `gallery_ids[j] == query_ids[i]`; a query
  without positives gets rank `len(gallery)`. Ties count against the query, so a collapsed
  model (all scores equal) scores 0, not 1. Scores are `queries @ gallery.T` in float32,
  computed in blocks of queries to bound memory.
  """
  queries = np.asarray(queries, np.float32)
  gallery = np.asarray(gallery, np.float32)
  query_ids, gallery_ids = np.asarray(query_ids), np.asarray(gallery_ids)
  ranks = np.empty(len(queries), np.int64)
  block = max(1, common.MAX_BLOCK_SCORES // max(1, len(gallery)))
  for start in range(0, len(queries), block):
    scores = queries[start : start + block] @ gallery.T
    positive = query_ids[start : start + block, None] == gallery_ids[None, :]
    best_positive = np.where(positive, scores, -np.inf).max(axis=1, keepdims=True)
    # "not below" rather than ">=": a NaN score then counts against the query.
    at_or_above = ~(scores < best_positive)
    ranks[start : start + block] = np.sum(at_or_above & ~positive, axis=1)
  return ranks


def retrieval_metrics(
    image_emb: np.ndarray, text_emb: np.ndarray, ids: np.ndarray, ks: Sequence[int] = common.KS
) -> dict[str, float | int]:
  """R@K both ways for row-aligned image/text embeddings; equal `ids` are positives."""
  metrics = {}
  for direction, queries, gallery in (("i2t", image_emb, text_emb), ("t2i", text_emb, image_emb)):
    ranks = first_positive_ranks(queries, gallery, ids, ids)
    for k in ks:
      metrics[f"{direction}_r{k}"] = float(np.mean(ranks < k))
  # A random ranking puts one of a query's P positives first with probability P / N.
  _, group, group_sizes = np.unique(ids, return_inverse=True, return_counts=True)
  metrics["chance_r1"] = float(np.mean(group_sizes[group] / len(ids)))
  metrics["num_examples"] = len(ids)
  return metrics


class RetrievalEvaluator(common.SplitEvaluator):
  """Image <-> title retrieval over one split (see the module docstring)."""

  DEFAULTS = {"positives": "catalog", "image_output": "image_emb"}
  MODALITIES = ("image", "text")

  def __init__(self, name: str, entry, **kwargs):
    super().__init__(name, entry, **kwargs)
    self.image_output = self.data.image_output()
    # Each listing is one row: its own title is its only "pair" or "product" positive.
    self.id_key = self.positive_id_key() or "product_id"

  def run(self, params: Any) -> dict[str, float | int]:
    split = self.data.run_model(
        params,
        inputs=("image", "text_tokens", "text_mask"),
        outputs=(self.image_output, "text_emb"),
        labels=(self.id_key,),
    )
    metrics = retrieval_metrics(
        common.l2_normalize(split[self.image_output]),
        common.l2_normalize(split["text_emb"]),
        split[self.id_key],
    )
    metrics["num_skipped"] = self.data.num_records - metrics["num_examples"]
    return metrics
