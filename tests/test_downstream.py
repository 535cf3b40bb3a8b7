"""The downstream suite: each metric against a value worked out by hand, the linear probe
against scikit-learn's logistic regression, and the evaluator end to end on the 8-device
mesh (oracle models, and a random linear model against a one-device reference)."""

import json
import math
import re

import jax
import ml_collections
import numpy as np
import pytest
from absl import app
from sklearn import linear_model

from eclip_jax import evals
from eclip_jax import interop
from eclip_jax import parallel
from eclip_jax import summarize
from eclip_jax.data import pipeline
from eclip_jax.data import toyshop
from eclip_jax.evals import downstream
from tests import test_evals


@pytest.fixture(scope="module")
def mesh():
  return parallel.make_mesh({"data": 8})


# ---------------------------------------------------------------------------------------
# Metrics, worked out by hand.
# ---------------------------------------------------------------------------------------

# Three tight pairs of points; the labels put pair A in one class and split B and C.
_POINTS = np.array([[1, 0], [1, 0.01], [0, 1], [0.01, 1], [-1, 0], [-1, 0.01]])
_LABELS = np.array([0, 0, 1, 2, 1, 2])


def test_clustering_metrics_by_hand():
  """k-means finds the three pairs A, B, C. Contingency A: {0: 2}, B and C: {1: 1, 2: 1}.
  Purity (2 + 1 + 1) / 6. ARI: sum C(n_ij, 2) = 1, rows and columns each sum C(2, 2) * 3 = 3,
  C(6, 2) = 15: (1 - 9/15) / (3 - 9/15) = 1/6. NMI: MI = (1/3) ln 3 + (4/6) ln(3/2) and both
  entropies ln 3."""
  metrics = downstream.clustering_metrics(_POINTS, _LABELS, seed=0)
  assert metrics["purity"] == pytest.approx(4 / 6)
  assert metrics["ari"] == pytest.approx(1 / 6)
  assert metrics["nmi"] == pytest.approx(1 / 3 + (2 / 3) * math.log(1.5) / math.log(3))


def test_purity_by_hand():
  assert downstream.purity(np.array([0, 0, 1, 1, 1, 2]), np.array([0, 0, 0, 1, 1, 1])) == 4 / 6
  assert downstream.purity(np.array([3, 3, 5]), np.array([1, 1, 1])) == pytest.approx(2 / 3)


# Scores of five items, three of them positives.
_TARGETS = np.array([True, True, False, False, True])
_SCORES = np.array([0.9, 0.8, 0.7, 0.3, 0.2])


def test_best_f1_and_roc_auc_by_hand():
  """Thresholds keep the top 1..5: F1 = 1/2, 4/5, 2/3, 4/7, 3/4, so 4/5. ROC-AUC: of the 3 x 2
  positive-negative pairs, 0.9 and 0.8 beat both negatives and 0.2 neither: 4/6."""
  assert downstream.best_f1(_TARGETS, _SCORES) == pytest.approx(0.8)
  unit = np.stack([_SCORES, np.sqrt(1 - _SCORES**2)], axis=1)  # cos(pair) = _SCORES
  pairs = np.stack([np.full(5, 5), np.arange(5)], axis=1)
  embeddings = np.concatenate([unit, [[1.0, 0.0]]])
  metrics = downstream.matching_metrics(embeddings, pairs, _TARGETS)
  assert metrics == {"roc_auc": pytest.approx(4 / 6), "best_f1": pytest.approx(0.8)}


def test_binary_metrics_by_hand():
  """Above 0.5: items 0, 1, 2; TP 2, FP 1, FN 1."""
  metrics = downstream.binary_metrics(_TARGETS, _SCORES)
  assert metrics == pytest.approx(
      {"precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3, "roc_auc": 4 / 6})
  assert downstream.binary_metrics(_TARGETS, np.zeros(5))["precision"] == 0.0  # none predicted


def test_topk_accuracies_count_ties_against():
  from eclip_jax.evals import classification  # pylint: disable=g-import-not-at-top

  scores = np.array([[0.9, 0.1, 0.0], [0.5, 0.5, 0.0], [0.0, 0.2, 0.1], [np.nan, 0, 0]])
  labels = np.array([0, 1, 2, 0])
  top = classification.topk_accuracies(scores, labels)
  assert top["top1"] == 1 / 4  # row 1 ties, row 2 is second, row 3 is NaN
  assert classification.topk_accuracies(scores[:3], labels[:3])["top5"] == 1.0


def test_matching_pairs_take_hard_negatives_of_the_same_category():
  """Catalog products 0 (three listings, category 5), 1 (category 5), 2 and 3 (category 6):
  positives are the three pairs of product 0 and the pair of product 2; a negative keeps the
  positive's first listing and takes another product of its category, else any other."""
  catalog = np.array([0, 0, 0, 1, 2, 2])
  category = np.array([5, 5, 5, 5, 6, 6])
  pairs, targets = downstream.matching_pairs(catalog, category, max_pairs=100, seed=0)
  assert pairs[targets].tolist() == [[0, 1], [0, 2], [1, 2], [4, 5]]
  negatives = pairs[~targets]
  assert negatives[:3].tolist() == [[0, 3], [0, 3], [1, 3]]
  assert negatives[3, 0] == 4 and negatives[3, 1] in (0, 1, 2, 3)
  capped, capped_targets = downstream.matching_pairs(catalog, category, max_pairs=2, seed=0)
  assert len(capped) == 4 and capped_targets.sum() == 2
  none, _ = downstream.matching_pairs(np.arange(4), category[:4], max_pairs=100, seed=0)
  assert none.shape == (0, 2)


# ---------------------------------------------------------------------------------------
# The linear probe.
# ---------------------------------------------------------------------------------------


def test_linear_probe_is_scikit_learns_logistic_regression():
  """Same objective: sklearn minimizes |W|^2 / 2 + C * sum of cross-entropies, i.e. ours
  (mean cross-entropy + l2 / 2 |W|^2) with C = 1 / (l2 * N); on standardized features."""
  rng = np.random.default_rng(0)
  n, dim, classes = 300, 6, 4
  features = rng.normal(size=(n, dim)) * rng.uniform(0.5, 3, dim) + rng.normal(size=dim)
  standardized = (features - features.mean(0)) / features.std(0)
  logits = standardized @ rng.normal(size=(dim, classes)) + 2 * rng.normal(size=(n, classes))
  labels = logits.argmax(-1)
  assert len(np.unique(labels)) == classes
  probe = downstream.LinearProbe(features, labels, classes)
  reference = linear_model.LogisticRegression(
      C=1 / (downstream.PROBE_L2 * n), max_iter=10_000, tol=1e-10).fit(standardized, labels)
  np.testing.assert_allclose(downstream.softmax(probe.logits(features)),
                             reference.predict_proba(standardized), atol=2e-3)


def test_a_padded_probe_fits_the_same_model():
  """Rows of weight 0, zero feature columns and masked classes change nothing."""
  rng = np.random.default_rng(1)
  features, labels = rng.normal(size=(50, 3)), rng.integers(0, 3, 50)
  plain = downstream.LinearProbe(features, labels, 3)
  padded = downstream.LinearProbe(features, labels, 3, shape=(80, 7, 5))
  np.testing.assert_allclose(padded.logits(features), plain.logits(features), atol=1e-4)


# ---------------------------------------------------------------------------------------
# Tables.
# ---------------------------------------------------------------------------------------


def test_markdown_table():
  metrics = {"category/image/probe_top1": 0.5, "category/text/probe_top1": 0.25,
             "attributes/image/probe_acc/color": 1.0, "num_examples": 3}
  table = downstream.markdown_table({"": metrics}).splitlines()
  assert table[0] == "| metric | image | text | image+text |"
  assert table[2] == "| category probe_top1 | 0.500 | 0.250 | – |"
  assert table[3] == "| attributes probe_acc/color | 1.000 | – | – |"
  reordered = dict(reversed(list(metrics.items())))  # tasks keep TASKS order
  assert downstream.markdown_table({"": reordered}).splitlines()[2:] == table[2:]
  assert len(table) == 4  # counts are not table rows


def test_aggregate_groups_seeds_and_summarize_tabulates_them(tmp_path):
  for seed, value in enumerate((0.5, 0.7)):
    run = tmp_path / f"e_clip_seed{seed}"
    run.mkdir()
    (run / "downstream.json").write_text(json.dumps(
        interop.unflatten({"matching/image/roc_auc": value})))
  runs = [str(tmp_path / "e_clip_seed0"), str(tmp_path / "e_clip_seed1")]
  mean, std, n = downstream.aggregate(runs)["e_clip"]["matching/image/roc_auc"]
  assert (mean, n) == (pytest.approx(0.6), 2) and std == pytest.approx(np.std([0.5, 0.7], ddof=1))
  assert "| matching roc_auc | 0.600 ± 0.141 | – | – |" in summarize.downstream_table(
      runs, downstream.INPUTS)
  assert summarize.downstream_table(runs[:1], ["image"]).splitlines() == [
      "| metric | e_clip image |", "|---|---|", "| matching roc_auc | 0.500 |", "",
      "runs per group: e_clip n=1"]
  with pytest.raises(app.UsageError, match=re.escape("--inputs: ['photo'] are not of")):
    summarize.downstream_table(runs, ["photo"])
  with pytest.raises(app.UsageError, match="downstream.json does not exist"):
    summarize.downstream_table([str(tmp_path)], ["image"])


# ---------------------------------------------------------------------------------------
# The evaluator end to end.
# ---------------------------------------------------------------------------------------


def _build(mesh, input_config, apply_fn, workdir=None, **entry):
  built = evals.build_evaluators(
      ml_collections.ConfigDict({"downstream": {"type": "downstream", "split": "test", **entry}}),
      input_config=input_config, apply_fn=apply_fn, mesh=mesh, workdir=workdir)
  return built["downstream"]


def test_attribute_tasks_are_the_true_keys_with_the_records_values(mesh, tiny_input_config):
  evaluator = _build(mesh, tiny_input_config, None)
  train_source = pipeline.open_split(evaluator.data.builder, "train")
  test_source = pipeline.open_split(evaluator.data.builder, "test")
  train_tables = downstream.read_attributes(evaluator.data.builder, "train",
                                            np.arange(len(train_source)))
  test_tables = downstream.read_attributes(evaluator.data.builder, "test",
                                           np.arange(len(test_source)))
  tasks = evaluator._attribute_tasks(train_tables, test_tables)  # pylint: disable=protected-access
  # The noise keys sit in ~30% of the tables, below min_attribute_fraction=0.5.
  assert [key for key, *_ in tasks] == sorted(toyshop.catalog.ATTRIBUTE_KEYS)
  for key, values, (train_rows, train_labels), (test_rows, test_labels) in tasks:
    assert [values[i] for i in train_labels] == [train_tables[r][key] for r in train_rows]
    assert [values[i] for i in test_labels] == [test_tables[r][key] for r in test_rows]
    missing = [r for r, table in enumerate(test_tables) if table.get(key) not in values]
    assert sorted([*test_rows, *missing]) == list(range(len(test_tables)))
    raw = test_source[int(test_rows[0])]["attributes"]
    assert values[test_labels[0]] in [v.decode() for v in raw["value"]]


def test_an_oracle_model_scores_perfectly_where_its_embeddings_determine_the_answer(
    mesh, tiny_input_config, tmp_path):
  """Images embed as one-hots of their category and titles as one-hots of their catalog
  product: the image's category probe and clustering are perfect, and so is restricted
  recognition (a property of the category); titles match duplicates perfectly."""
  evaluator = _build(mesh, tiny_input_config, None, workdir=str(tmp_path))
  image_ids, text_ids = {}, {}
  for split in ("train", "test"):
    config = evaluator.data.input_config
    image_ids.update(test_evals._row_lookup(config, split, "image", "category"))
    text_ids.update(test_evals._row_lookup(config, split, "text_tokens", "catalog_id"))
  oracle = test_evals.OracleModel(mesh, 256, image_ids, {k: 64 + v for k, v in text_ids.items()})
  evaluator.data.apply_fn = evaluator.train_data.apply_fn = oracle
  metrics = evaluator.run(params={})

  assert metrics["num_examples"] == 19 and metrics["num_train_examples"] == 191
  assert metrics["num_skipped"] == 0
  assert metrics["category/image/probe_top1"] == 1.0
  for key in ("nmi", "ari", "purity"):
    assert metrics[f"clustering/image/{key}"] == pytest.approx(1.0)
  assert metrics["restricted/image/f1"] == metrics["restricted/image/roc_auc"] == 1.0
  assert metrics["matching/num_pairs"] > 0
  assert metrics["matching/text/roc_auc"] == metrics["matching/text/best_f1"] == 1.0
  for key in toyshop.catalog.ATTRIBUTE_KEYS:
    assert metrics[f"attributes/num_examples/{key}"] > 0
  written = json.loads((tmp_path / "downstream.json").read_text())
  assert interop.flatten(written) == pytest.approx(metrics)
  assert (tmp_path / "downstream.md").read_text() == downstream.markdown_table({"": metrics})


def test_a_jitted_sharded_model_scores_as_a_one_device_reference(mesh, tiny_input_config,
                                                                 monkeypatch):
  """A random linear model: the suite's zero-shot and matching figures equal those computed
  from embeddings made on one device, and it clusters those embeddings (k-means is not
  continuous in its input: float32 noise between 8 devices and one, ~1e-6, can move a
  point near a tie to another cluster, so clustering is checked on its input)."""
  clustered = []
  reference_clustering = downstream.clustering_metrics
  def clustering_metrics(embeddings, labels, seed):
    clustered.append(np.array(embeddings))
    return reference_clustering(embeddings, labels, seed)
  monkeypatch.setattr(downstream, "clustering_metrics", clustering_metrics)
  params, apply = test_evals._linear_model()
  apply_fn = jax.jit(apply, in_shardings=(parallel.replicated(mesh), parallel.batch_sharding(mesh)))
  evaluator = _build(mesh, tiny_input_config, apply_fn)
  metrics = evaluator.run(params)

  columns = {k: [] for k in ("image_emb", "text_emb", "category", "catalog_id")}
  for batch in pipeline.make_eval_iterator(evaluator.data.input_config, "test"):
    valid = batch[pipeline.VALID_KEY]
    outputs = jax.jit(apply)(params, {k: batch[k][valid]
                                      for k in ("image", "text_tokens", "text_mask")})
    for key in columns:
      columns[key].append(np.asarray(outputs[key] if key in outputs else batch[key][valid]))
  image, text, category, catalog = (np.concatenate(columns[k]) for k in columns)
  both = downstream.common.l2_normalize(image + text)
  pairs, targets = downstream.matching_pairs(catalog, category, 20_000, seed=0)
  for kind, embeddings, used in zip(("image", "text", "image+text"), (image, text, both),
                                    clustered, strict=True):
    np.testing.assert_allclose(used, embeddings, atol=1e-5, err_msg=kind)
    assert {k: metrics[f"clustering/{kind}/{k}"] for k in ("nmi", "ari", "purity")} == (
        reference_clustering(used, category, seed=0))
    assert {k: metrics[f"matching/{kind}/{k}"] for k in ("roc_auc", "best_f1")} == (
        pytest.approx(downstream.matching_metrics(embeddings, pairs, targets)))
  class_emb = evaluator.category_prompts.embed(params)
  top1 = np.mean((image @ class_emb.T).argmax(-1) == category)
  assert metrics["category/image/zeroshot_top1"] == pytest.approx(top1)


def test_training_skips_the_suite_and_eval_mode_runs_it(mesh, tiny_input_config):
  entries = ml_collections.ConfigDict({
      "downstream": {"type": "downstream", "split": "test"},
      "retrieval": {"type": "retrieval"},
      "forced": {"type": "downstream", "split": "test", "in_training": True}})
  for in_training, expected in ((True, ["retrieval", "forced"]),
                                (False, ["downstream", "retrieval", "forced"])):
    built = evals.build_evaluators(entries, input_config=tiny_input_config, apply_fn=None,
                                   mesh=mesh, in_training=in_training)
    assert sorted(built) == sorted(expected)


@pytest.mark.parametrize("entry, message", [
    ({"train_split": "test"}, "config.evals.downstream: the probes would train on the split "
                              "they are scored on ('test')"),
    ({"attribute_templates": ("no slot",)}, "config.evals.downstream.attribute_templates="),
    ({"min_attribute_fraction": 0.0}, "config.evals.downstream.min_attribute_fraction=0.0 "
                                      "must be in (0, 1]"),
    ({"train_split": "dev"}, "config.evals.downstream.train_split='dev' is not a split of "
                             "toyshop/tiny (it has ['test', 'train', 'validation'])"),
])
def test_misconfiguration_fails_with_one_clear_sentence(mesh, tiny_input_config, entry, message):
  with pytest.raises(ValueError, match=re.escape(message)):
    _build(mesh, tiny_input_config, None, **entry)
