r"""e-CLIP's downstream suite (METHODS.md §2): five product tasks on frozen embeddings.

Each task is measured for three inputs of a listing: its first image (`image`), its title
(`text`) and both (`image+text`). Zero-shot scoring compares unit-length vectors: the image
or title embedding, and for image+text the normalized mean of the two. Linear probes read
features: the unit-length embedding, and for image+text the concatenation of the two.

| task | scored by | metrics (`<task>/<input>/<metric>`) |
|---|---|---|
| category classification | zero-shot (category prompts, as `zeroshot_classification`) and probe | `zeroshot_top1`, `zeroshot_top5`, `probe_top1`, `probe_top5` |
| attribute extraction | per attribute key: zero-shot over the key's values and probe | `zeroshot_acc/<key>`, `probe_acc/<key>`, and `zeroshot_acc_mean`, `probe_acc_mean` over keys |
| product matching | cosine similarity of a pair of listings | `roc_auc`, `best_f1` |
| product clustering | k-means, k = the number of categories in the split | `nmi`, `ari`, `purity` |
| restricted-product recognition | probe (there is no prompt for "restricted") | `precision`, `recall`, `f1`, `roc_auc` |

Attribute labels are the listings' own attribute tables (a listing without key k takes no
part in k's task). The keys are `attribute_keys`, or by default every key found in at
least `min_attribute_fraction` of the training listings (toyshop: its six true attributes,
not the noise keys sellers add to a third of the tables); a key's classes are the values
its training listings use, and an evaluated listing whose value is not among them is
left out of that key. Zero-shot names a value by its text (`_` read as a space) in
`attribute_templates`.

Matching pairs are drawn from the evaluated split with a fixed seed: every pair of listings
of one catalog product is a positive (at most `matching_pairs`, sampled), and each positive
(a, b) has a negative (a, c) with c another catalog product of a's category (any other
product where a's category has only one): the hard case a matching system meets after
blocking by category. `best_f1` is the highest F1 over all thresholds.

Linear probe, one fixed recipe for every probe: features standardized by the training
split's mean and standard deviation, then multinomial logistic regression (weights and
bias, zero-initialized) minimizing mean cross-entropy + (PROBE_L2 / 2) * |W|^2 with
PROBE_STEPS iterations of full-batch L-BFGS (optax.lbfgs); trained on `train_split`,
scored on `split`. Restricted recognition predicts "restricted" when its probability
exceeds 0.5.

The metrics go to the trainer (`eval/<name>/...`), and, when the evaluator has a workdir,
to `WORKDIR/<name>.json` (nested: task -> input -> metric) and `WORKDIR/<name>.md` (a table,
inputs as columns). Several runs side by side, mean ± std over seeds (`aggregate`):

  python -m eclip_jax.summarize --downstream [--inputs=image+text] workdirs/e_clip_seed* \
      workdirs/clip_seed*

Config entry (`config.evals.<name>`): `type="downstream"`, `split="validation"` (the
configs use "test"), `train_split="train"`, `image_output="image_emb"` (or ECLIP's `"instance_emb_img"`),
`templates`, `names` (the category prompts, as zeroshot_classification),
`attribute_templates`, `attribute_keys=()`, `min_attribute_fraction=0.5`,
`matching_pairs=20000`, `seed=0` (matching pairs and k-means), `in_training=False` (the
suite embeds the whole training split: it runs in `--mode=eval`), and any `config.input`
field to override. Counts: `num_examples`, `num_train_examples`, `num_skipped` (bad records
of either split), `matching/num_pairs`, `attributes/num_examples/<key>`.
"""

from __future__ import annotations

import collections
import functools
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from etils import epath
from sklearn import cluster as sk_cluster
from sklearn import metrics as sk_metrics

from eclip_jax import interop
from eclip_jax.data import pipeline
from eclip_jax.evals import classification
from eclip_jax.evals import common

INPUTS = ("image", "text", "image+text")
TASKS = ("category", "attributes", "matching", "clustering", "restricted")  # table order
ATTRIBUTE_TEMPLATES = ("a {} product.", "{}")
PROBE_L2 = 1e-4
PROBE_STEPS = 100


# ---------------------------------------------------------------------------------------
# The metrics, on host arrays.
# ---------------------------------------------------------------------------------------


def purity(labels: np.ndarray, clusters: np.ndarray) -> float:
  """Fraction of rows whose cluster's most common label is their own."""
  table = sk_metrics.cluster.contingency_matrix(labels, clusters)
  return float(table.max(axis=0).sum() / table.sum())


def clustering_metrics(embeddings: np.ndarray, labels: np.ndarray, seed: int) -> dict[str, float]:
  """k-means (k = distinct labels, 10 seeded restarts) of the rows: NMI, ARI, purity."""
  k = len(np.unique(labels))
  clusters = sk_cluster.KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(
      np.asarray(embeddings, np.float64))
  return {
      "nmi": float(sk_metrics.normalized_mutual_info_score(labels, clusters)),
      "ari": float(sk_metrics.adjusted_rand_score(labels, clusters)),
      "purity": purity(labels, clusters),
  }


def best_f1(targets: np.ndarray, scores: np.ndarray) -> float:
  """The highest F1 of `scores > threshold` over every threshold."""
  precision, recall, _ = sk_metrics.precision_recall_curve(targets, scores)
  f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
  return float(f1.max())


def matching_pairs(catalog: np.ndarray, category: np.ndarray, max_pairs: int,
                   seed: int) -> tuple[np.ndarray, np.ndarray]:
  """([P, 2] row pairs, [P] same-product targets): the positives and their hard negatives
  (see the module docstring); empty when no catalog product has two listings."""
  rng = np.random.default_rng(seed)
  rows_of = collections.defaultdict(list)
  for row, product in enumerate(catalog):
    rows_of[product].append(row)
  positives = np.asarray([(a, b) for rows in rows_of.values() for i, a in enumerate(rows)
                          for b in rows[i + 1:]], np.int64).reshape(-1, 2)
  if len(positives) > max_pairs:
    positives = positives[np.sort(rng.choice(len(positives), max_pairs, replace=False))]
  negatives = positives.copy()
  for pair in negatives:
    others = np.flatnonzero((category == category[pair[0]]) & (catalog != catalog[pair[0]]))
    if not len(others):
      others = np.flatnonzero(catalog != catalog[pair[0]])
    pair[1] = rng.choice(others)
  pairs = np.concatenate([positives, negatives])
  return pairs, np.repeat([True, False], len(positives))


def matching_metrics(embeddings: np.ndarray, pairs: np.ndarray,
                     targets: np.ndarray) -> dict[str, float]:
  """ROC-AUC and best F1 of the cosine similarity of each pair's unit-length rows."""
  scores = np.sum(embeddings[pairs[:, 0]] * embeddings[pairs[:, 1]], axis=-1)
  return {"roc_auc": float(sk_metrics.roc_auc_score(targets, scores)),
          "best_f1": best_f1(targets, scores)}


def binary_metrics(targets: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
  """Precision, recall, F1 of `probabilities > 0.5`, and ROC-AUC of the probabilities."""
  precision, recall, f1, _ = sk_metrics.precision_recall_fscore_support(
      targets, probabilities > 0.5, average="binary", zero_division=0)
  return {"precision": float(precision), "recall": float(recall), "f1": float(f1),
          "roc_auc": float(sk_metrics.roc_auc_score(targets, probabilities))}


# ---------------------------------------------------------------------------------------
# The linear probe.
# ---------------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("steps",))
def _fit_logistic_regression(features, labels, weights, class_mask, l2, steps):
  """L-BFGS on mean weighted cross-entropy + l2/2 |W|^2; masked classes never win."""

  def loss(params):
    logits = features @ params["w"] + params["b"]
    logits = jnp.where(class_mask, logits, -1e9)
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    return jnp.sum(weights * nll) / jnp.sum(weights) + 0.5 * l2 * jnp.sum(params["w"] ** 2)

  params = {"w": jnp.zeros((features.shape[1], class_mask.shape[0]), features.dtype),
            "b": jnp.zeros((class_mask.shape[0],), features.dtype)}
  optimizer = optax.lbfgs()
  value_and_grad = optax.value_and_grad_from_state(loss)

  def step(carry, _):
    params, state = carry
    value, grad = value_and_grad(params, state=state)
    updates, state = optimizer.update(grad, state, params, value=value, grad=grad, value_fn=loss)
    return (optax.apply_updates(params, updates), state), None

  (params, _), _ = jax.lax.scan(step, (params, optimizer.init(params)), length=steps)
  return params


class LinearProbe:
  """The module docstring's recipe, fitted at construction; `logits(features)`.

  Probes of one suite differ in rows, feature width and classes; padding all of them to
  `shape` = (rows, width, classes) compiles the fit once: padded rows weigh 0, padded
  feature columns are 0 (their weights stay 0 under the penalty) and padded classes are
  masked out.
  """

  def __init__(self, features: np.ndarray, labels: np.ndarray, num_classes: int,
               shape: tuple[int, int, int] | None = None):
    features = np.asarray(features, np.float32)
    rows, width, classes = shape or (len(features), features.shape[1], num_classes)
    self.mean = features.mean(axis=0)
    self.std = np.maximum(features.std(axis=0), 1e-6)
    self.width, self.num_classes = features.shape[1], num_classes
    padded = np.zeros((rows, width), np.float32)
    padded[: len(features), : self.width] = self._standardize(features)
    padded_labels = np.zeros(rows, np.int32)
    padded_labels[: len(labels)] = labels
    params = _fit_logistic_regression(
        padded, padded_labels, (np.arange(rows) < len(features)).astype(np.float32),
        np.arange(classes) < num_classes, PROBE_L2, PROBE_STEPS)
    self.w = np.asarray(params["w"])[: self.width, :num_classes]
    self.b = np.asarray(params["b"])[:num_classes]

  def _standardize(self, features: np.ndarray) -> np.ndarray:
    return (features - self.mean) / self.std

  def logits(self, features: np.ndarray) -> np.ndarray:
    return self._standardize(np.asarray(features, np.float32)) @ self.w + self.b


def softmax(logits: np.ndarray) -> np.ndarray:
  shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
  return shifted / shifted.sum(axis=-1, keepdims=True)


# ---------------------------------------------------------------------------------------
# The evaluator.
# ---------------------------------------------------------------------------------------


def read_attributes(builder, split: str, record_indices: np.ndarray) -> list[dict[str, str]]:
  """The attribute table ({key: value}) of each record of `split` at `record_indices`."""
  source = pipeline.open_split(builder, split, ["attributes"])
  tables = []
  for index in record_indices:
    attributes = source[int(index)]["attributes"]
    tables.append({_text(k): _text(v) for k, v in zip(attributes["key"], attributes["value"])})
  return tables


def _text(value) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


class DownstreamEvaluator(common.SplitEvaluator):
  """The five-task suite of the module docstring on one checkpoint."""

  DEFAULTS = {
      "train_split": "train",
      "image_output": "image_emb",
      "templates": classification.DEFAULT_TEMPLATES,
      "names": "synonyms",
      "attribute_templates": ATTRIBUTE_TEMPLATES,
      "attribute_keys": (),
      "min_attribute_fraction": 0.5,
      "matching_pairs": 20_000,
      "seed": 0,
      "in_training": False,
  }
  MODALITIES = ("image", "text")
  LABELS = ("category", "catalog_id", "restricted", pipeline.RECORD_INDEX_KEY)

  def __init__(self, name: str, entry: Mapping[str, Any], **kwargs):
    super().__init__(name, entry, **kwargs)
    fields = self.data.fields
    self.image_output = self.data.image_output()
    splits = sorted(self.data.builder.info.splits)
    if fields["train_split"] not in splits:
      raise ValueError(f"config.evals.{name}.train_split={fields['train_split']!r} is not a "
                       f"split of {self.data.input_config.dataset} (it has {splits}).")
    self.train_data = common.EvalSplit(
        name, {**entry, "split": fields["train_split"]}, self.DEFAULTS,
        input_config=kwargs["input_config"], apply_fn=kwargs["apply_fn"], mesh=kwargs["mesh"],
        modalities=self.MODALITIES)
    if self.train_data.split == self.data.split:
      raise ValueError(
          f"config.evals.{name}: the probes would train on the split they are scored on "
          f"({self.data.split!r}); set train_split and split to different splits.")
    if not 0 < fields["min_attribute_fraction"] <= 1:
      raise ValueError(f"config.evals.{name}.min_attribute_fraction="
                       f"{fields['min_attribute_fraction']} must be in (0, 1].")
    self.category_prompts = classification.category_prompts(
        name, self.data, fields["names"],
        classification.check_templates(name, "templates", fields["templates"]))
    self.attribute_templates = classification.check_templates(
        name, "attribute_templates", fields["attribute_templates"])

  def _embed(self, data: common.EvalSplit, params: Any) -> dict[str, np.ndarray]:
    split = data.run_model(params, inputs=("image", "text_tokens", "text_mask"),
                           outputs=(self.image_output, "text_emb"), labels=self.LABELS)
    image = common.l2_normalize(split.pop(self.image_output))
    text = common.l2_normalize(split.pop("text_emb"))
    split["zeroshot"] = {"image": image, "text": text,
                         "image+text": common.l2_normalize(image + text)}
    split["features"] = {"image": image, "text": text,
                         "image+text": np.concatenate([image, text], axis=-1)}
    split["attributes"] = read_attributes(data.builder, data.split,
                                          split[pipeline.RECORD_INDEX_KEY])
    return split

  def run(self, params: Any) -> dict[str, float | int]:
    train, test = self._embed(self.train_data, params), self._embed(self.data, params)
    num_categories = len(self.data.builder.info.features["category"].names)
    attributes = self._attribute_tasks(train["attributes"], test["attributes"])
    width = 2 * test["features"]["image"].shape[1]
    classes = max([num_categories, 2] + [len(values) for _, values, _, _ in attributes])
    shape = (len(train["category"]), width, classes)
    seed = self.data.fields["seed"]

    metrics = {"num_examples": len(test["category"]),
               "num_train_examples": len(train["category"]),
               "num_skipped": (self.data.num_records - len(test["category"])
                               + self.train_data.num_records - len(train["category"]))}
    category_emb = self.category_prompts.embed(params)
    attribute_emb = self._attribute_prompts(attributes).embed(params) if attributes else None
    pairs, same_product = matching_pairs(test["catalog_id"], test["category"],
                                         self.data.fields["matching_pairs"], seed)
    metrics["matching/num_pairs"] = len(pairs)
    restricted_probe = len(np.unique(train["restricted"])) == 2
    restricted_scored = len(np.unique(test["restricted"])) == 2
    if not (restricted_probe and restricted_scored):
      logging.warning("config.evals.%s: restricted-product recognition needs restricted and "
                      "other listings in both splits; skipping it.", self.name)
    if not len(pairs):
      logging.warning("config.evals.%s: no catalog product has two listings in split %r; "
                      "skipping product matching.", self.name, self.data.split)

    for kind in INPUTS:
      zeroshot, features = test["zeroshot"][kind], test["features"][kind]
      train_features = train["features"][kind]
      prefix = f"category/{kind}"
      for k, v in classification.topk_accuracies(zeroshot @ category_emb.T,
                                                 test["category"]).items():
        metrics[f"{prefix}/zeroshot_{k}"] = v
      probe = LinearProbe(train_features, train["category"], num_categories, shape)
      for k, v in classification.topk_accuracies(probe.logits(features),
                                                 test["category"]).items():
        metrics[f"{prefix}/probe_{k}"] = v

      offset, zeroshot_acc, probe_acc = 0, [], []
      for key, values, (train_rows, train_labels), (test_rows, test_labels) in attributes:
        scores = zeroshot[test_rows] @ attribute_emb[offset : offset + len(values)].T
        offset += len(values)
        probe = LinearProbe(train_features[train_rows], train_labels, len(values), shape)
        zeroshot_acc.append(float(np.mean(scores.argmax(-1) == test_labels)))
        probe_acc.append(float(np.mean(
            probe.logits(features[test_rows]).argmax(-1) == test_labels)))
        metrics[f"attributes/{kind}/zeroshot_acc/{key}"] = zeroshot_acc[-1]
        metrics[f"attributes/{kind}/probe_acc/{key}"] = probe_acc[-1]
      if attributes:
        metrics[f"attributes/{kind}/zeroshot_acc_mean"] = float(np.mean(zeroshot_acc))
        metrics[f"attributes/{kind}/probe_acc_mean"] = float(np.mean(probe_acc))

      if len(pairs):
        for k, v in matching_metrics(zeroshot, pairs, same_product).items():
          metrics[f"matching/{kind}/{k}"] = v
      for k, v in clustering_metrics(zeroshot, test["category"], seed).items():
        metrics[f"clustering/{kind}/{k}"] = v
      if restricted_probe and restricted_scored:
        probe = LinearProbe(train_features, train["restricted"].astype(np.int32), 2, shape)
        probability = softmax(probe.logits(features))[:, 1]
        for k, v in binary_metrics(test["restricted"], probability).items():
          metrics[f"restricted/{kind}/{k}"] = v

    for key, _, _, (test_rows, _) in attributes:
      metrics[f"attributes/num_examples/{key}"] = len(test_rows)
    self._write(metrics)
    return metrics

  def _attribute_tasks(self, train_tables, test_tables):
    """[(key, values, (train rows, labels), (test rows, labels))] of the evaluated keys."""
    keys = tuple(self.data.fields["attribute_keys"])
    if not keys:
      counts = collections.Counter(k for table in train_tables for k in table)
      threshold = self.data.fields["min_attribute_fraction"] * len(train_tables)
      keys = tuple(sorted(k for k, n in counts.items() if n >= threshold))
    tasks = []
    for key in keys:
      values = sorted({table[key] for table in train_tables if key in table})
      if len(values) < 2:
        logging.warning("config.evals.%s: attribute %r has %d value(s) in the training "
                        "split; skipping it.", self.name, key, len(values))
        continue
      index = {value: i for i, value in enumerate(values)}
      rows = []
      for tables in (train_tables, test_tables):
        kept = [(row, index[t[key]]) for row, t in enumerate(tables) if t.get(key) in index]
        rows.append(tuple(np.asarray(column, np.int64).reshape(-1)
                          for column in zip(*kept)) if kept else (np.zeros(0, np.int64),) * 2)
      if not len(rows[1][0]):
        logging.warning("config.evals.%s: no listing of split %r has a known %r; skipping it.",
                        self.name, self.data.split, key)
        continue
      tasks.append((key, values, rows[0], rows[1]))
    return tasks

  def _attribute_prompts(self, attributes) -> classification.PromptEnsemble:
    """One prompt ensemble for every key's values, in task order (one set of batches)."""
    names = [(value.replace("_", " "),) for _, values, _, _ in attributes for value in values]
    return classification.PromptEnsemble(names, self.attribute_templates, self.data)

  def _write(self, metrics: Mapping[str, float | int]) -> None:
    if self.data.workdir is None or jax.process_index() != 0:
      return
    (self.data.workdir / f"{self.name}.json").write_text(
        json.dumps(interop.unflatten(metrics), indent=2, sort_keys=True))
    (self.data.workdir / f"{self.name}.md").write_text(markdown_table({"": metrics}))


# ---------------------------------------------------------------------------------------
# Tables.
# ---------------------------------------------------------------------------------------


def _rows(metrics: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
  """"task/input/metric" keys -> {"task metric": {input: value}}, tasks in TASKS order."""
  rows = {}
  keyed = sorted((TASKS.index(k.split("/")[0]) if k.split("/")[0] in TASKS else len(TASKS), i)
                 for i, k in enumerate(metrics))
  keys = list(metrics)
  for _, i in keyed:
    parts = keys[i].split("/")
    if len(parts) >= 3 and parts[1] in INPUTS:
      rows.setdefault(f"{parts[0]} {'/'.join(parts[2:])}", {})[parts[1]] = metrics[keys[i]]
  return rows


def markdown_table(runs: Mapping[str, Mapping[str, Any]],
                   inputs: Sequence[str] = INPUTS) -> str:
  """The suite's metrics as a markdown table: a row per task metric, a column per (run,
  input of `inputs`). A value is a number or a (mean, std, n) tuple."""
  per_run = {name: _rows(metrics) for name, metrics in runs.items()}
  row_names = list(dict.fromkeys(r for rows in per_run.values() for r in rows))
  columns = [(name, kind) for name in runs for kind in inputs]
  header = [f"{name} {kind}".strip() for name, kind in columns]
  lines = ["| metric | " + " | ".join(header) + " |", "|---" * (len(columns) + 1) + "|"]
  for row in row_names:
    cells = [_cell(per_run[name].get(row, {}).get(kind)) for name, kind in columns]
    lines.append(f"| {row} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def _cell(value) -> str:
  if value is None:
    return "–"
  if isinstance(value, tuple):
    mean, std, n = value
    return f"{mean:.3f} ± {std:.3f}" if n > 1 else f"{mean:.3f}"
  return f"{value:.3f}"


def aggregate(workdirs: Sequence[str], name: str = "downstream") -> dict[str, dict[str, tuple]]:
  """Runs grouped by workdir name less its `_seedN` suffix -> metric -> (mean, std, n)."""
  groups = collections.defaultdict(list)
  for workdir in workdirs:
    path = epath.Path(workdir) / f"{name}.json"
    if not path.exists():
      raise FileNotFoundError(f"{path} does not exist; run `python -m eclip_jax.main "
                              f"--mode=eval` on {workdir} first.")
    groups[re.sub(r"_seed\d+$", "", epath.Path(workdir).name)].append(
        interop.flatten(json.loads(path.read_text())))
  table = {}
  for group, runs in groups.items():
    keys = list(dict.fromkeys(k for run in runs for k in run))
    table[group] = {}
    for key in keys:
      values = np.asarray([run[key] for run in runs if key in run], np.float64)
      table[group][key] = (float(values.mean()), float(values.std(ddof=1)) if len(values) > 1
                           else 0.0, len(values))
  return table
