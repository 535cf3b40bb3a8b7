"""Evaluators: metrics against brute force, oracle and random models end to end on a
simulated 8-device mesh, and misconfiguration errors."""

import re

import jax
import ml_collections
import numpy as np
import pytest

from eclip_jax import evals
from eclip_jax import parallel
from eclip_jax.data import pipeline
from eclip_jax.data import toyshop
from eclip_jax.evals import classification
from eclip_jax.evals import common
from eclip_jax.evals import retrieval


@pytest.fixture(scope="module")
def mesh():
  return parallel.make_mesh({"data": 8})


# ---------------------------------------------------------------------------------------
# Metric functions against a brute-force reference.
# ---------------------------------------------------------------------------------------


def _reference_hit_at(queries, gallery, query_ids, gallery_ids, k):
  """Fraction of queries with a positive among the k best, sorting each query's gallery;
  among equal scores non-positives come first (ties count against the query)."""
  hits = []
  for query, query_id in zip(queries.astype(np.float64), query_ids):
    scores = gallery.astype(np.float64) @ query
    positive = gallery_ids == query_id
    order = sorted(range(len(gallery)), key=lambda j: (-scores[j], positive[j]))
    hits.append(positive[order[:k]].any())
  return float(np.mean(hits))


def _random_case(seed, num, num_ids, ties):
  """Row-aligned image/text embeddings and ids with duplicates; `ties`: small integer
  embeddings, so many scores are exactly equal."""
  rng = np.random.default_rng(seed)
  if ties:
    image, text = rng.integers(-1, 2, size=(2, num, 3)).astype(np.float32)
  else:
    image, text = rng.normal(size=(2, num, 16)).astype(np.float32)
  return image, text, rng.integers(0, num_ids, size=num)


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("num_ids", [60, 15])  # ~all distinct ("pair"), many duplicates
def test_retrieval_metrics_match_brute_force(num_ids, ties):
  image, text, ids = _random_case(seed=num_ids, num=60, num_ids=num_ids, ties=ties)
  metrics = retrieval.retrieval_metrics(image, text, ids)
  for k in common.KS:
    assert metrics[f"i2t_r{k}"] == _reference_hit_at(image, text, ids, ids, k), k
    assert metrics[f"t2i_r{k}"] == _reference_hit_at(text, image, ids, ids, k), k
  positives_per_query = [(ids == i).sum() for i in ids]
  assert metrics["chance_r1"] == pytest.approx(np.mean(positives_per_query) / 60)
  assert metrics["num_examples"] == 60


def test_ranks_are_the_same_computed_in_blocks(monkeypatch):
  image, text, ids = _random_case(seed=0, num=37, num_ids=20, ties=True)
  whole = retrieval.first_positive_ranks(image, text, ids, ids)
  monkeypatch.setattr(common, "MAX_BLOCK_SCORES", 5 * 37)  # 8 blocks, the last ragged
  np.testing.assert_array_equal(retrieval.first_positive_ranks(image, text, ids, ids), whole)


def test_collapsed_or_nan_embeddings_score_zero():
  ids = np.arange(10)
  collapsed = np.ones((10, 4), np.float32)
  assert retrieval.first_positive_ranks(collapsed, collapsed, ids, ids).tolist() == [9] * 10
  nan = np.full((10, 4), np.nan, np.float32)
  assert retrieval.retrieval_metrics(nan, nan, ids)["i2t_r5"] == 0.0  # rank 9 of 10


def test_class_display_names_and_synonyms():
  assert classification.class_display_name("toyshop", "tshirt") == "t-shirt"
  assert classification.class_display_name("toyshop", "phone") == "smartphone"
  assert classification.class_display_name("toyshop", "t-shirt") == "t-shirt"
  assert classification.class_display_name("m5product", "running_shoe") == "running shoe"
  assert classification.class_synonyms("toyshop", "t-shirt") == ("t-shirt", "tee", "tshirt", "top")
  assert classification.class_synonyms("toyshop", "mug") == ("mug", "coffee mug", "cup")
  assert classification.class_synonyms("m5product", "running_shoe") == ("running shoe",)


# ---------------------------------------------------------------------------------------
# End to end on toyshop/tiny with oracle and random models.
# ---------------------------------------------------------------------------------------


def _row_lookup(input_config, split, key, label):
  """{bytes of batch[key] row: batch[label] of that row} over the valid rows of `split`."""
  lookup = {}
  for batch in pipeline.make_eval_iterator(input_config, split):
    valid = batch[pipeline.VALID_KEY]
    for row, value in zip(batch[key][valid], batch[label][valid]):
      lookup[row.tobytes()] = int(value)
  return lookup


class OracleModel:
  """An `apply_fn` embedding images and texts as one-hots of identities looked up from their
  content (unknown content, i.e. padding, embeds as zeros). Records the batch sizes seen."""

  def __init__(self, mesh, dim, image_ids=None, text_ids=None):
    self.mesh, self.dim = mesh, dim
    self.image_ids, self.text_ids = image_ids or {}, text_ids or {}
    self.batch_sizes = []

  def _embed(self, rows, lookup):
    ids = [lookup.get(row.tobytes(), -1) for row in np.asarray(rows)]
    one_hot = jax.nn.one_hot(np.asarray(ids), self.dim)  # -1 -> all zeros
    return jax.device_put(one_hot, parallel.batch_sharding(self.mesh))

  def __call__(self, params, batch):
    del params
    (batch_size,) = {value.shape[0] for value in batch.values()}
    assert all(value.sharding == parallel.batch_sharding(self.mesh) for value in batch.values())
    self.batch_sizes.append(batch_size)
    outputs = {"logit_scale": jax.numpy.float32(1.0)}
    if "image" in batch:
      outputs["image_emb"] = self._embed(batch["image"], self.image_ids)
    if "text_tokens" in batch:
      outputs["text_emb"] = self._embed(batch["text_tokens"], self.text_ids)
    return outputs


def _build_one(mesh, input_config, apply_fn, **entry):
  name = "under_test"
  built = evals.build_evaluators(
      ml_collections.ConfigDict({name: entry}),
      input_config=input_config, apply_fn=apply_fn, mesh=mesh,
  )
  return built[name]


def _oracle_retrieval(mesh, input_config, identity, **entry):
  """A retrieval evaluator whose model embeds both modalities as one-hots of `identity`
  (the model comes after the evaluator: its lookups read the evaluator's input section)."""
  evaluator = _build_one(mesh, input_config, None, type="retrieval", **entry)
  eval_input, split = evaluator.data.input_config, evaluator.data.split
  image_ids = _row_lookup(eval_input, split, "image", identity)
  text_ids = _row_lookup(eval_input, split, "text_tokens", identity)
  assert len(image_ids) == len(text_ids) == 30  # every listing's photo and title differ
  evaluator.data.apply_fn = OracleModel(mesh, 256, image_ids, text_ids)
  return evaluator


@pytest.mark.parametrize("batch_size", [8, 16])  # 30 examples: 2 padding rows either way
@pytest.mark.parametrize("positives", ["pair", "catalog"])
def test_retrieval_oracle_is_perfect_and_counts_every_example_once(
    mesh, tiny_input_config, batch_size, positives):
  evaluator = _oracle_retrieval(
      mesh, tiny_input_config, "product_id", positives=positives, batch_size=batch_size)
  metrics = evaluator.run(params={})
  for k in common.KS:
    assert metrics[f"i2t_r{k}"] == metrics[f"t2i_r{k}"] == 1.0
  assert metrics["num_examples"] == 30 and metrics["num_skipped"] == 0
  assert set(evaluator.data.apply_fn.batch_sizes) == {batch_size}  # global batches
  if positives == "pair":
    assert metrics["chance_r1"] == pytest.approx(1 / 30)
  else:  # toyshop/tiny validation has duplicate listings: more positives than one
    assert metrics["chance_r1"] > 1 / 30


def test_retrieval_positives_decide_whether_duplicates_count(mesh, tiny_input_config):
  """A model that only knows the catalog product is perfect under "catalog" positives; under
  "pair" it ties each listing with its duplicates, which count against it."""
  catalog = _oracle_retrieval(mesh, tiny_input_config, "catalog_id", positives="catalog")
  assert catalog.run(params={})["i2t_r1"] == 1.0
  pair = _oracle_retrieval(mesh, tiny_input_config, "catalog_id", positives="pair")
  catalog_ids = np.array(list(_row_lookup(
      pair.data.input_config, "validation", "image", "catalog_id").values()))
  singletons = np.mean([(catalog_ids == c).sum() == 1 for c in catalog_ids])
  assert 0 < singletons < 1
  metrics = pair.run(params={})
  assert metrics["i2t_r1"] == metrics["t2i_r1"] == pytest.approx(singletons)
  assert metrics["i2t_r10"] == 1.0  # at most 3 listings per catalog product


def test_retrieval_of_a_random_model_is_at_chance(mesh, tiny_input_config):
  rng = np.random.default_rng(0)

  def random_model(params, batch):
    del params
    return {key: jax.device_put(
        rng.normal(size=(batch[inputs].shape[0], 32)).astype(np.float32),
        parallel.batch_sharding(mesh))
        for key, inputs in (("image_emb", "image"), ("text_emb", "text_tokens"))}

  evaluator = _build_one(
      mesh, tiny_input_config, random_model, type="retrieval", split="train", positives="pair",
      batch_size=32)
  metrics = evaluator.run(params={})
  num = metrics["num_examples"]
  assert num == 191 and metrics["chance_r1"] == pytest.approx(1 / num)
  for k in common.KS:  # hits ~ Binomial(num, k / num)
    expected = k / num
    tolerance = 4 * np.sqrt(expected * (1 - expected) / num)
    for direction in ("i2t", "t2i"):
      assert abs(metrics[f"{direction}_r{k}"] - expected) <= tolerance, (direction, k)


def _linear_model():
  """Params and apply function of a random linear model of images and titles."""
  rng = np.random.default_rng(0)
  params = {"image": rng.normal(size=(32 * 32 * 3, 16)).astype(np.float32),
            "text": rng.normal(size=(1000, 16)).astype(np.float32)}

  def apply(params, batch):
    outputs = {"logit_scale": jax.numpy.float32(1.0)}
    if "image" in batch:
      images = batch["image"].reshape(batch["image"].shape[0], -1)
      outputs["image_emb"] = _unit(images @ params["image"])
    if "text_tokens" in batch:
      pieces = params["text"][batch["text_tokens"]] * batch["text_mask"][..., None]
      outputs["text_emb"] = _unit(pieces.sum(axis=1))
    return outputs

  return params, apply


def _unit(x):
  return x / jax.numpy.linalg.norm(x, axis=-1, keepdims=True)


def test_a_jitted_sharded_model_scores_as_on_one_device(mesh, tiny_input_config):
  """The sharded path (global batches in, gathered outputs back) against the same model run
  batch by batch on host arrays."""
  params, apply = _linear_model()
  # Sharding-aware, as the trainer's `apply_fn` is.
  apply_fn = jax.jit(apply, in_shardings=(parallel.replicated(mesh), parallel.batch_sharding(mesh)))
  on_one_device = jax.jit(apply)
  evaluator = _build_one(mesh, tiny_input_config, apply_fn, type="retrieval", batch_size=16)
  image_emb, text_emb, ids = [], [], []
  for batch in pipeline.make_eval_iterator(evaluator.data.input_config, "validation"):
    valid = batch[pipeline.VALID_KEY]
    outputs = on_one_device(params, {
        k: batch[k][valid] for k in ("image", "text_tokens", "text_mask")})
    image_emb.append(outputs["image_emb"])
    text_emb.append(outputs["text_emb"])
    ids.append(batch["catalog_id"][valid])
  expected = retrieval.retrieval_metrics(*map(np.concatenate, (image_emb, text_emb, ids)))
  metrics = evaluator.run(params)
  assert metrics == {**expected, "num_skipped": 0}
  assert 0 < metrics["i2t_r10"] < 1  # a non-trivial case

  zeroshot = _build_one(mesh, tiny_input_config, apply_fn, type="zeroshot_classification")
  prompts = zeroshot.prompts
  prompt_emb = np.asarray(on_one_device(params, {
      "text_tokens": prompts.prompt_tokens, "text_mask": prompts.prompt_mask})["text_emb"])
  class_emb = prompt_emb.reshape(25, len(zeroshot.templates), 16).mean(axis=1)
  class_emb /= np.linalg.norm(class_emb, axis=-1, keepdims=True)
  np.testing.assert_allclose(zeroshot.class_embeddings(params), class_emb, atol=1e-5)


def test_zeroshot_synonyms_average_every_title_word_of_a_class(mesh, tiny_input_config):
  """names="synonyms": each class's prompts are its title words x the templates, and its
  embedding is their normalized mean (a numpy reference on the same prompt embeddings)."""
  params, apply = _linear_model()
  apply_fn = jax.jit(apply, in_shardings=(parallel.replicated(mesh), parallel.batch_sharding(mesh)))
  evaluator = _build_one(mesh, tiny_input_config, apply_fn, type="zeroshot_classification",
                         names="synonyms", templates=("{}", "a {}"))
  synonyms = [info[1] for info in toyshop.CATEGORY_INFO.values()]
  assert len(evaluator.prompts.prompt_tokens) == 2 * sum(len(words) for words in synonyms)
  tokenizer = evaluator.data.transform.tokenizer
  backpack = evaluator.prompts.prompt_class == 3
  assert [tokenizer.decode(t) for t in evaluator.prompts.prompt_tokens[backpack]] == [
      "backpack", "a backpack", "rucksack", "a rucksack", "school bag", "a school bag"]
  prompts = evaluator.prompts
  prompt_emb = np.asarray(jax.jit(apply)(params, {
      "text_tokens": prompts.prompt_tokens, "text_mask": prompts.prompt_mask})["text_emb"])
  prompt_emb = prompt_emb / np.linalg.norm(prompt_emb, axis=-1, keepdims=True)
  class_emb = np.stack([prompt_emb[prompts.prompt_class == c].mean(0) for c in range(25)])
  class_emb /= np.linalg.norm(class_emb, axis=-1, keepdims=True)
  np.testing.assert_allclose(evaluator.class_embeddings(params), class_emb, atol=1e-5)


# Also a mesh whose batch is split over data x fsdp and replicated over tensor.
@pytest.mark.parametrize("mesh_axes", [{"data": 8}, {"data": 2, "fsdp": 2, "tensor": 2}])
def test_zeroshot_classification_oracle_is_perfect(mesh_axes, tiny_input_config):
  mesh = parallel.make_mesh(mesh_axes)
  evaluator = _build_one(
      mesh, tiny_input_config, None, type="zeroshot_classification", batch_size=16)
  num_classes, num_templates = 25, len(classification.DEFAULT_TEMPLATES)
  assert len(evaluator.class_names) == num_classes and evaluator.class_names[7] == "t-shirt"
  tokenizer = evaluator.data.transform.tokenizer
  assert tokenizer.decode(evaluator.prompts.prompt_tokens[0]) == "a photo of a mug."
  prompt_tokens = evaluator.prompts.prompt_tokens
  assert tokenizer.decode(prompt_tokens[num_templates * 7 + 1]) == "a t-shirt for sale."

  text_classes = {row.tobytes(): index // num_templates
                  for index, row in enumerate(evaluator.prompts.prompt_tokens)}
  image_classes = _row_lookup(evaluator.data.input_config, "validation", "image", "category")
  model = OracleModel(mesh, num_classes, image_classes, text_classes)
  evaluator.data.apply_fn = model
  metrics = evaluator.run(params={})
  assert metrics == {"top1": 1.0, "top5": 1.0, "chance_top1": 1 / num_classes,
                     "num_examples": 30, "num_skipped": 0}
  # 75 prompts in 5 padded batches of 16, then 2 image batches of 16.
  assert model.batch_sizes == [16] * 7


def test_zeroshot_classification_scores_the_most_similar_class(mesh, tiny_input_config):
  """With every prompt embedded as the next class's one-hot, images land one class off."""
  evaluator = _build_one(mesh, tiny_input_config, None, type="zeroshot_classification",
                         templates=("{}", "a {}"))
  text_classes = {row.tobytes(): (index // 2 + 1) % 25
                  for index, row in enumerate(evaluator.prompts.prompt_tokens)}
  image_classes = _row_lookup(evaluator.data.input_config, "validation", "image", "category")
  evaluator.data.apply_fn = OracleModel(mesh, 25, image_classes, text_classes)
  metrics = evaluator.run(params={})
  # The image's own class embedding is orthogonal to it, tying with 23 other classes.
  assert metrics["top1"] == metrics["top5"] == 0.0


# ---------------------------------------------------------------------------------------
# Misconfiguration.
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("entry, message", [
    ({"type": "bar"}, "config.evals.under_test.type='bar' is unknown; known types: "
                      "['downstream', 'grounding', 'm5product', 'product_retrieval', "
                      "'retrieval', 'zeroshot_classification']"),
    ({"type": "retrieval", "batch_size": 12},
     "config.evals.under_test.batch_size=12 is not divisible by the data-parallel size 8"),
    ({"type": "retrieval", "positve": "pair"},
     "config.evals.under_test.positve is neither a field of retrieval evaluators"),
    ({"type": "retrieval", "modalities": ("image",)},
     "config.evals.under_test.modalities is neither a field of retrieval evaluators"),
    ({"type": "retrieval", "positives": "sku"},
     "config.evals.under_test.positives='sku' is unknown; choose one of ['catalog', 'pair', 'product']"),
    ({"type": "retrieval", "split": "dev"},
     "config.evals.under_test.split='dev' is not a split of the dataset (toyshop/tiny has "
     "['test', 'train', 'validation']); pass --config.evals.under_test.split=validation."),
    ({"type": "zeroshot_classification", "templates": ("a photo",)},
     "config.evals.under_test.templates=('a photo',) must be a non-empty tuple of format "
     "strings with exactly one '{}'"),
    ({"type": "zeroshot_classification", "names": "all"},
     "config.evals.under_test.names='all' is unknown; choose one of ['display', 'synonyms']"),
    ({"type": "retrieval", "dataset": "toyshop/small"},
     "input.dataset='toyshop/small' is not built in input.data_dir="),
])
def test_misconfiguration_fails_with_one_clear_sentence(mesh, tiny_input_config, entry, message):
  with pytest.raises((ValueError, FileNotFoundError), match=re.escape(message)):
    _build_one(mesh, tiny_input_config, None, **entry)


def test_batch_size_from_the_input_section_is_checked_too(mesh, tiny_input_config):
  tiny_input_config.batch_size = 4
  with pytest.raises(ValueError, match=re.escape(
      "config.input.batch_size=4 is not divisible by the data-parallel size 8")):
    _build_one(mesh, tiny_input_config, None, type="zeroshot_classification")
