"""The M5Product protocol (METHODS.md §3): retrieval, linear probe and clustering of one
embedding per listing.

The embedding is the model output `embedding_output`: SCALE's `fused_emb` (the sum of the
fused per-modality outputs, the protocol's embedding) by default, or any other, e.g.
`image_emb` for a two-tower model. It is used as the model returns it: the released
protocol scores retrieval by dot products of the summed fused outputs, unnormalized
(`normalize=True` scales every row to unit length first, for retrieval, probe and
clustering alike). The model sees exactly the batch keys of the entry's `modalities`
(input modalities, transforms.MODALITIES: "image", "text", "table", "regions", ...).

Retrieval: each query ranks the gallery by dot product. Positives are the gallery items of
the query's category (`coarse/`) or of its product, `catalog_id` (`fine/`). By default
queries and gallery are the evaluated split, each query removed from its own gallery; an
entry may name a query split and a gallery split instead (an m5product build's
`retrieval_query_coarse` / `retrieval_gallery_coarse`, or the `_fine` pair: distinct
records, nothing removed; both prefixes are reported for either pair). For a query with P
positives in its gallery and K' = min(K, P), K in KS = (1, 5, 10):

    map{K}    mean over queries of (1/K') * sum over ranks r <= K holding a positive of
              precision@r (product_retrieval.average_precision_at)
    prec{K}   mean over queries of (positives among the K best) / K' (the protocol's K')

over the queries with at least one positive (`<prefix>/num_queries`; the others are left
out, as in product_retrieval). Ties between scores are broken arbitrarily.

Classification: `probe_acc`, the category accuracy of downstream.LinearProbe (its fixed
recipe) trained on `train_split` and scored on the evaluated split. Clustering: `nmi` and
`purity` of k-means on the evaluated split, k = the number of its categories
(downstream.clustering_metrics, seeded by `seed`).

Config entry (`config.evals.<name>`): `type="m5product"`, `split="validation"` (an m5product
build: "classification_test"), `train_split="train"` ("classification_train"),
`query_split=""` and `gallery_split=""` (both or neither), `embedding_output="fused_emb"`,
`modalities=("image", "text")`, `normalize=False`, `seed=0` (k-means), `in_training=False`
(the probe embeds the whole training split: `--mode=eval`, as downstream), and any
`config.input` field to override. Counts: `num_examples` (of the evaluated split), `num_skipped` (bad records of
every split read).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from eclip_jax.data import transforms
from eclip_jax.evals import common
from eclip_jax.evals import downstream
from eclip_jax.evals import product_retrieval

# Retrieval prefix -> the batch key whose equality makes a positive.
POSITIVES = {"coarse": "category", "fine": "catalog_id"}
LABELS = ("category", "catalog_id")


def ranking_metrics(queries: np.ndarray, query_ids: np.ndarray,
                    gallery: np.ndarray | None = None, gallery_ids: np.ndarray | None = None,
                    ks: Sequence[int] = common.KS) -> dict[str, float | int]:
  """map{K}, prec{K} and num_queries of rows querying each other (gallery None: each row
  removed from its own gallery) or `gallery` (module docstring)."""
  hits, num_positives = product_retrieval.top_k_hits(queries, query_ids, max(ks),
                                                     gallery, gallery_ids)
  answerable = num_positives > 0
  hits, num_positives = hits[answerable], num_positives[answerable]
  metrics = {"num_queries": int(answerable.sum())}
  if not metrics["num_queries"]:
    return metrics
  for k in ks:
    metrics[f"map{k}"] = float(np.mean(
        product_retrieval.average_precision_at(hits, num_positives, k)))
  for k in ks:
    metrics[f"prec{k}"] = float(np.mean(product_retrieval.precision_at(hits, num_positives, k)))
  return metrics


class M5ProductEvaluator(common.SplitEvaluator):
  """The M5Product protocol on one checkpoint (see the module docstring)."""

  DEFAULTS = {
      "train_split": "train",
      "query_split": "",
      "gallery_split": "",
      "embedding_output": "fused_emb",
      "modalities": ("image", "text"),
      "normalize": False,
      "seed": 0,
      "in_training": False,  # it embeds the whole training split, as downstream does
  }

  def __init__(self, name: str, entry: Mapping[str, Any], **kwargs):
    modalities = entry.get("modalities", self.DEFAULTS["modalities"])
    if isinstance(modalities, str) or not modalities or any(
        m not in transforms.MODALITIES for m in modalities):
      raise ValueError(
          f"config.evals.{name}.modalities={modalities!r} must be a non-empty tuple of "
          f"input modalities; choose from {tuple(transforms.MODALITIES)}.")
    self.MODALITIES = tuple(modalities)  # pylint: disable=invalid-name  (what is decoded)
    super().__init__(name, entry, **kwargs)
    fields = self.data.fields
    if not isinstance(fields["embedding_output"], str) or not fields["embedding_output"]:
      raise ValueError(f"config.evals.{name}.embedding_output={fields['embedding_output']!r} "
                       "must name a model output, e.g. 'fused_emb' or 'image_emb'.")
    if bool(fields["query_split"]) != bool(fields["gallery_split"]):
      raise ValueError(f"config.evals.{name}: query_split={fields['query_split']!r} and "
                       f"gallery_split={fields['gallery_split']!r}; name both or neither.")
    splits = sorted(self.data.builder.info.splits)
    for field in ("train_split", "query_split", "gallery_split"):
      if fields[field] and fields[field] not in splits:
        raise ValueError(f"config.evals.{name}.{field}={fields[field]!r} is not a split of "
                         f"{self.data.input_config.dataset} (it has {splits}).")
    if fields["query_split"] and fields["query_split"] == fields["gallery_split"]:
      raise ValueError(f"config.evals.{name}: query_split and gallery_split are both "
                       f"{fields['query_split']!r}; leave both empty to query a split with "
                       "itself (each query removed from its gallery).")

    def split_data(split: str) -> common.EvalSplit:
      if split == self.data.split:
        return self.data
      return common.EvalSplit(name, {**entry, "split": split}, self.DEFAULTS,
                              input_config=kwargs["input_config"], apply_fn=kwargs["apply_fn"],
                              mesh=kwargs["mesh"], modalities=self.MODALITIES,
                              workdir=kwargs.get("workdir"))

    self.train_data = split_data(fields["train_split"])
    if self.train_data is self.data:
      raise ValueError(
          f"config.evals.{name}: the probe would train on the split it is scored on "
          f"({self.data.split!r}); set train_split and split to different splits.")
    self.query_data = self.gallery_data = None
    if fields["query_split"]:
      self.query_data = split_data(fields["query_split"])
      self.gallery_data = split_data(fields["gallery_split"])
    # The model's inputs: every batch key of the decoded modalities, and nothing else.
    self.inputs = tuple(key for modality in self.MODALITIES
                        for key in transforms.MODALITIES[modality].spec(self.data.transform))

  def _embed(self, data: common.EvalSplit, params: Any,
             cache: dict[str, dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """{"emb": [N, D] float32, "category", "catalog_id"} of `data`'s split (once per run)."""
    if data.split not in cache:
      key = data.fields["embedding_output"]
      try:
        split = data.run_model(params, inputs=self.inputs, outputs=(key,), labels=LABELS)
      except KeyError as error:
        if error.args != (key,):
          raise
        raise ValueError(f"config.evals.{self.name}.embedding_output={key!r} is not an output "
                         f"of the model given {list(self.MODALITIES)}; choose one it "
                         "returns, e.g. 'fused_emb' (SCALE) or 'image_emb'.") from None
      embeddings = np.asarray(split.pop(key), np.float32)
      split["emb"] = common.l2_normalize(embeddings) if data.fields["normalize"] else embeddings
      split["num_skipped"] = data.num_records - len(embeddings)
      cache[data.split] = split
    return cache[data.split]

  def run(self, params: Any) -> dict[str, float | int]:
    cache = {}
    test = self._embed(self.data, params, cache)
    train = self._embed(self.train_data, params, cache)
    if self.query_data is None:
      query, gallery = test, None
    else:
      query = self._embed(self.query_data, params, cache)
      gallery = self._embed(self.gallery_data, params, cache)

    metrics = {}
    for prefix, label in POSITIVES.items():
      ranked = ranking_metrics(query["emb"], query[label],
                               None if gallery is None else gallery["emb"],
                               None if gallery is None else gallery[label])
      metrics.update({f"{prefix}/{k}": v for k, v in ranked.items()})

    num_categories = len(self.data.builder.info.features["category"].names)
    probe = downstream.LinearProbe(train["emb"], train["category"], num_categories)
    metrics["probe_acc"] = float(np.mean(
        probe.logits(test["emb"]).argmax(-1) == test["category"]))
    clustering = downstream.clustering_metrics(test["emb"], test["category"],
                                               self.data.fields["seed"])
    metrics["nmi"], metrics["purity"] = clustering["nmi"], clustering["purity"]
    metrics["num_examples"] = len(test["category"])
    metrics["num_skipped"] = sum(split["num_skipped"] for split in cache.values())
    return metrics
