"""The M5Product protocol evaluator: its ranking metrics worked out by hand, oracle models
end to end on toyshop/tiny over the 8-device mesh, and misconfiguration errors."""

import re

import jax
import ml_collections
import numpy as np
import pytest

from eclip_jax import evals
from eclip_jax import parallel
from eclip_jax.data import pipeline
from eclip_jax.evals import common
from eclip_jax.evals import m5product
from eclip_jax.evals import product_retrieval
from tests import test_evals


@pytest.fixture(scope="module")
def mesh():
  return parallel.make_mesh({"data": 8})


# ---------------------------------------------------------------------------------------
# Ranking metrics, worked out by hand.
# ---------------------------------------------------------------------------------------

# Three queries against a gallery of five (labels A=0, B=1, C=2).
_QUERIES = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
_QUERY_IDS = np.array([0, 1, 2])
_GALLERY = np.array([[3.0, 0.0], [2.0, 5.0], [1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
_GALLERY_IDS = np.array([0, 1, 0, 1, 0])


def test_ranking_metrics_by_hand():
  """Dot products, unnormalized.
  q0 (A): scores 3, 2, 1, 0, -1: ranked g0 g1 g2 g3 g4, hits 1 0 1 0 1, P = 3.
    AP@1 = 1/min(1, 3) = 1; AP@5 = AP@10 = (1/1 + 2/3 + 3/5) / min(5, 3) = 34/45 (the gallery
    has 5 items: ranks beyond 5 hold nothing). Prec@K = hits in the top K / K': Prec@1 = 1,
    Prec@2 = 1/2, Prec@5 = Prec@10 = 3/3 = 1.
  q1 (B): scores 0, 5, 0, 1, 0: g1, g3 (hits), then g0 g2 g4 tied at 0, all negatives (the tie
    cannot change anything). P = 2: AP@5 = (1 + 1) / min(5, 2) = 1 (the K' rule; 2/5 without
    it), AP@10 = 1. Prec@1 = Prec@2 = Prec@5 = Prec@10 = 1 (2/5 at K = 5 without K').
  q2 (C) has no positive in the gallery: not a query.
  Means over q0, q1: map1 = 1, map5 = map10 = (34/45 + 1) / 2 = 79/90; prec1 = prec5 =
  prec10 = 1."""
  metrics = m5product.ranking_metrics(_QUERIES, _QUERY_IDS, _GALLERY, _GALLERY_IDS)
  assert metrics == pytest.approx({
      "num_queries": 2, "map1": 1.0, "map5": 79 / 90, "map10": 79 / 90,
      "prec1": 1.0, "prec5": 1.0, "prec10": 1.0})
  hits, positives = product_retrieval.top_k_hits(_QUERIES, _QUERY_IDS, 10, _GALLERY,
                                                 _GALLERY_IDS)
  np.testing.assert_array_equal(hits[:2], [[1, 0, 1, 0, 1], [1, 1, 0, 0, 0]])
  np.testing.assert_array_equal(positives, [3, 2, 0])
  np.testing.assert_allclose(product_retrieval.average_precision_at(hits[:2], positives[:2], 5),
                             [34 / 45, 1.0])
  np.testing.assert_allclose(product_retrieval.precision_at(hits[:2], positives[:2], 2),
                             [0.5, 1.0])
  np.testing.assert_allclose(product_retrieval.precision_at(hits[:2], positives[:2], 10),
                             [1.0, 1.0])


def test_cosine_ranking_differs_from_the_protocols_dot_product():
  """Unit-length rows: q0 scores g0 and g2 1 (a tie of two positives), g1 2/sqrt(29) ~ 0.37,
  g3 0, g4 -1: hits 1 1 0 0 1, AP@5 = (1 + 1 + 3/5) / 3 = 13/15; q1 as before (g1 0.93, g3 1:
  still both first). map5 = (13/15 + 1) / 2 = 14/15; Prec@5 = 3/3 and 2/2."""
  metrics = m5product.ranking_metrics(common.l2_normalize(_QUERIES), _QUERY_IDS,
                                      common.l2_normalize(_GALLERY), _GALLERY_IDS)
  assert metrics["map5"] == pytest.approx(14 / 15)
  assert metrics["prec5"] == pytest.approx(1.0)


def test_rows_querying_each_other_leave_themselves_out():
  """Rows 0 and 1 are equal (label 0), row 2 is orthogonal (label 1). Row 0's gallery is rows
  1 and 2: hits 1 0 with P = 1 (itself would otherwise tie first), so AP@K = 1 for every K
  (K' = 1) and Prec@K = 1/1. Row 1 likewise; row 2 has no positive."""
  rows = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
  metrics = m5product.ranking_metrics(rows, np.array([0, 0, 1]))
  assert metrics == pytest.approx({"num_queries": 2, "map1": 1.0, "map5": 1.0, "map10": 1.0,
                                   "prec1": 1.0, "prec5": 1.0, "prec10": 1.0})
  assert m5product.ranking_metrics(rows, np.array([0, 1, 2])) == {"num_queries": 0}


# ---------------------------------------------------------------------------------------
# The evaluator end to end.
# ---------------------------------------------------------------------------------------


def _build(mesh, input_config, apply_fn=None, **entry):
  built = evals.build_evaluators(
      ml_collections.ConfigDict({"m5": {"type": "m5product", **entry}}),
      input_config=input_config, apply_fn=apply_fn, mesh=mesh)
  return built["m5"]


def _labels(input_config, split):
  """[(category, catalog_id)] of the valid rows of `split`, by image content."""
  rows = {}
  for batch in pipeline.make_eval_iterator(input_config, split):
    valid = batch[pipeline.VALID_KEY]
    for image, category, catalog in zip(batch["image"][valid], batch["category"][valid],
                                        batch["catalog_id"][valid]):
      rows[image.tobytes()] = (int(category), int(catalog))
  return rows


class FusedOracle:
  """`fused_emb` = one-hot(category) + 0.5 one-hot(catalog product), looked up from the
  image: same product scores 1.25, same category 1, anything else 0 (padding: zeros).
  Checks the model is given exactly `inputs`."""

  def __init__(self, mesh, labels, inputs):
    self.mesh, self.labels, self.inputs = mesh, labels, set(inputs)
    self.catalogs = {c: i for i, c in enumerate(sorted({c for _, c in labels.values()}))}
    self.dim = 32 + len(self.catalogs)

  def __call__(self, params, batch):
    del params
    assert set(batch) == self.inputs
    emb = np.zeros((len(batch["image"]), self.dim), np.float32)
    for row, image in enumerate(np.asarray(batch["image"])):
      if image.tobytes() in self.labels:
        category, catalog = self.labels[image.tobytes()]
        emb[row, category] = 1.0
        emb[row, 32 + self.catalogs[catalog]] = 0.5
    return {"fused_emb": jax.device_put(emb, parallel.batch_sharding(self.mesh))}


def _expected_precision(ids, k):
  """Prec@K of a perfect ranking: min(K, P) hits / K' = min(K, P), over the rows with P >= 1
  others alike."""
  others = np.array([(ids == i).sum() - 1 for i in ids])
  return float(np.mean(np.minimum(k, others[others > 0]) / np.minimum(k, others[others > 0])))


def test_an_oracle_model_scores_perfectly(mesh, tiny_input_config):
  evaluator = _build(mesh, tiny_input_config, batch_size=16)
  config = evaluator.data.input_config
  assert tuple(config.modalities) == ("image", "text")
  validation = _labels(config, "validation")
  oracle = FusedOracle(mesh, {**_labels(config, "train"), **_labels(config, "test"),
                              **validation},
                       ("image", "box", "box_mask", "text_tokens", "text_mask"))
  evaluator.data.apply_fn = evaluator.train_data.apply_fn = oracle
  metrics = evaluator.run(params={})

  assert metrics["num_examples"] == 30 and metrics["num_skipped"] == 0
  categories, catalogs = (np.array(column) for column in zip(*validation.values()))
  for prefix, ids in (("coarse", categories), ("fine", catalogs)):
    assert metrics[f"{prefix}/num_queries"] == sum((ids == i).sum() > 1 for i in ids) > 0
    for k in common.KS:
      assert metrics[f"{prefix}/map{k}"] == 1.0, (prefix, k)
      assert metrics[f"{prefix}/prec{k}"] == pytest.approx(_expected_precision(ids, k))
  assert metrics["probe_acc"] == 1.0
  assert metrics["nmi"] == pytest.approx(1.0) and metrics["purity"] == pytest.approx(1.0)

  # Queries of one split against the gallery of another: nothing is removed.
  crossed = _build(mesh, tiny_input_config, batch_size=16, query_split="test",
                   gallery_split="validation")
  crossed.data.apply_fn = crossed.train_data.apply_fn = oracle
  crossed.query_data.apply_fn = oracle
  crossed_metrics = crossed.run(params={})
  assert crossed_metrics["coarse/num_queries"] > 0 and crossed_metrics["coarse/map10"] == 1.0
  assert crossed_metrics["num_examples"] == 30


def test_modalities_choose_the_models_inputs(mesh, tiny_input_config):
  """Titles alone, embedded as one-hots of their category: the text tower is evaluated."""
  evaluator = _build(mesh, tiny_input_config, modalities=("text",), embedding_output="text_emb")
  assert evaluator.inputs == ("text_tokens", "text_mask")
  text_ids = {}
  for split in ("train", "validation"):
    text_ids.update(test_evals._row_lookup(  # pylint: disable=protected-access
        evaluator.data.input_config, split, "text_tokens", "category"))
  oracle = test_evals.OracleModel(mesh, 32, text_ids=text_ids)
  evaluator.data.apply_fn = evaluator.train_data.apply_fn = oracle
  metrics = evaluator.run(params={})
  assert metrics["coarse/map1"] == metrics["coarse/map10"] == metrics["probe_acc"] == 1.0


def test_a_missing_model_output_fails_with_one_sentence(mesh, tiny_input_config):
  evaluator = _build(mesh, tiny_input_config)
  evaluator.data.apply_fn = test_evals.OracleModel(mesh, 4)  # image_emb and text_emb only
  with pytest.raises(ValueError, match=re.escape(
      "config.evals.m5.embedding_output='fused_emb' is not an output of the model given "
      "['image', 'text']")):
    evaluator.run(params={})


@pytest.mark.parametrize("entry, message", [
    ({"modalities": ("photo",)}, "config.evals.m5.modalities=('photo',) must be a non-empty "
                                 "tuple of input modalities; choose from ("),
    ({"modalities": "image"}, "config.evals.m5.modalities='image' must be a non-empty tuple"),
    ({"query_split": "test"}, "config.evals.m5: query_split='test' and gallery_split=''; name "
                              "both or neither."),
    ({"query_split": "retrieval_query_coarse", "gallery_split": "retrieval_gallery_coarse"},
     "config.evals.m5.query_split='retrieval_query_coarse' is not a split of toyshop/tiny "
     "(it has ['test', 'train', 'validation'])."),
    ({"query_split": "test", "gallery_split": "test"},
     "config.evals.m5: query_split and gallery_split are both 'test'"),
    ({"train_split": "validation"}, "config.evals.m5: the probe would train on the split it "
                                    "is scored on ('validation')"),
    ({"embedding_output": ""}, "config.evals.m5.embedding_output='' must name a model output"),
    ({"normalise": True}, "config.evals.m5.normalise is neither a field of m5product "
                          "evaluators"),
])
def test_misconfiguration_fails_with_one_clear_sentence(mesh, tiny_input_config, entry, message):
  with pytest.raises(ValueError, match=re.escape(message)):
    _build(mesh, tiny_input_config, **entry)
