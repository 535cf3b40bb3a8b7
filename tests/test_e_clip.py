"""e-CLIP: multi-stream accumulation (grad_cache) gives the full batch's gradient, the
duplicate rate, title cleaning and pair filtering, and the e_clip config."""

import jax
import ml_collections
import numpy as np
import pytest

from configs import e_clip, eclip
from eclip_jax import gradients, objectives, parallel, trainer
from eclip_jax import metrics as metrics_lib
from eclip_jax.data import pipeline, schema
from eclip_jax.data import text as text_lib
from eclip_jax.data import tokenizer as tokenizer_lib
from eclip_jax.data import transforms
from tests.helpers import random_batch, tiny_config


def _eclip_config():
  config = eclip.get_config("tiny,runlocal")
  config.input.update(image_size=32, max_text_len=16, vocab_size=1000, batch_size=16)
  config.model.embed_dim = 32
  return config


def _multi_view_batch(config, rng):
  batch = random_batch(config, rng)
  image = batch.pop("image")
  batch["images"] = np.stack([image, image[::-1]], axis=1)  # two views per row
  return batch


def _value_and_grads(config, strategy, mesh, batch):
  config.train.gradients, config.train.streams = strategy, 4
  setup = trainer.Setup(config, mesh)
  state = setup.init_state()
  batch = parallel.to_global(batch, mesh)
  strategy_fn = gradients.get(strategy)
  with setup.context():
    (loss, metrics), grads = jax.jit(
        lambda params, batch, rng: strategy_fn(setup.step_loss, params,
                                               setup.model_inputs(batch), rng)
    )(state.params, batch, jax.random.key(0))
  return float(loss), jax.device_get(metrics), jax.device_get(grads)


@pytest.mark.parametrize("model, impl", [("clip", "gather"), ("clip", "ring"), ("clip", "tiled"),
                                         ("eclip", "tiled")])
def test_grad_cache_gradient_equals_the_full_batch_gradient(model, impl):
  """4 micro-batches of 4 rows on 8 devices (2 per device, so every micro-batch spans all
  of them), duplicate listings across micro-batches: same loss, metrics and gradient."""
  mesh = parallel.make_mesh({"data": 4, "fsdp": 2})
  make = {"clip": (lambda: tiny_config(), random_batch),
          "eclip": (_eclip_config, _multi_view_batch)}[model]
  config = make[0]()
  config.input.batch_size = 32
  config.loss.update(impl=impl, positives="catalog", tile=1)
  batch = make[1](config, 0)
  full_loss, full_metrics, full_grads = _value_and_grads(config, "full", mesh, batch)
  cached_loss, cached_metrics, cached_grads = _value_and_grads(config, "grad_cache", mesh, batch)
  np.testing.assert_allclose(cached_loss, full_loss, rtol=1e-6)
  for key, value in full_metrics.items():
    np.testing.assert_allclose(cached_metrics[key], value, rtol=1e-5, atol=1e-7, err_msg=key)
  scale = max(float(np.abs(g).max()) for g in jax.tree.leaves(full_grads))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * scale),
               cached_grads, full_grads)


def test_streams_must_divide_the_rows_per_device(toyshop_tiny):
  config = tiny_config(toyshop_tiny[0], **{"train.gradients": "grad_cache",
                                            "train.streams": 3})
  with pytest.raises(ValueError, match=r"config.train.streams=3 does not divide the 2 rows per "
                                       r"data-parallel device"):
    trainer.validate_config(config, parallel.make_mesh({"data": 8}))


# ---------------------------------------------------------------------------------------
# The duplicate rate.
# ---------------------------------------------------------------------------------------


def test_duplicate_rate_counts_rows_whose_product_has_another_listing():
  ids = np.array([5, 1, 5, 2, 3, 3, 3, 9], np.int32)  # 5 twice, 3 three times
  assert float(objectives.duplicate_rate(jax.numpy.asarray(ids))) == 5 / 8
  assert float(objectives.duplicate_rate(jax.numpy.arange(8))) == 0.0
  mesh = parallel.make_mesh({"data": 8})
  config = tiny_config()
  loss_fn = objectives.weighted_loss(config, mesh)
  batch = parallel.to_global(random_batch(config, 0), mesh)  # pairs of duplicate listings
  features = batch["image"].astype(jax.numpy.float32).reshape(16, -1)
  outputs = {"image_emb": features[:, :8], "logit_scale": 10.0, "text_emb": features[:, 8:16]}
  _, metrics = jax.jit(loss_fn)(outputs, batch)
  assert float(metrics["duplicate_rate"]) == 1.0


# ---------------------------------------------------------------------------------------
# Title cleaning and pair filtering.
# ---------------------------------------------------------------------------------------

ALL_OPS = ("nfkc", "strip_html", "strip_emoji", "strip_promo", "casefold", "whitespace")


@pytest.mark.parametrize("title, cleaned", [
    ("🔥HOT SALE!🔥 Red <b>Ceramic</b> Mug &amp; Saucer - Free Shipping!!",
     "red ceramic mug & saucer"),
    ("무료배송 빨간 머그컵 350ml 특가", "빨간 머그컵 350ml"),  # Korean promo words
    ("【包邮】ＲＥＤ马克杯 热卖", "red马克杯"),  # Chinese promo, full-width Latin
    ("Ｓｎｅａｋｅｒ  &quot;Ａｉｒ&quot;\u3000ＭＡＸ", 'sneaker "air" max'),
    ("Salesman bag 👍🏽 ❤️ 🇰🇷", "salesman bag"),  # "sale" only as a word; skin tone, flag
    ("FREE SHIPPING | Hot Sale | best seller", ""),  # all promo: empty after cleaning
    ("", ""),
    ("<p></p>&nbsp;", ""),
])
def test_title_cleaning_on_tricky_titles(title, cleaned):
  assert text_lib.title_cleaner(ALL_OPS)(title) == cleaned


def test_title_cleaning_ops_apply_in_order_and_only_when_chosen():
  title = "<i>ＲＥＤ</i> Mug - Free Shipping"
  assert text_lib.title_cleaner(())(title) == title
  assert text_lib.title_cleaner(("nfkc",))(title) == "<i>RED</i> Mug - Free Shipping"
  # Trimming the ends takes the tag's "<" too: strip_html belongs before it.
  assert text_lib.title_cleaner(("strip_promo", "whitespace"))(title) == "i>ＲＥＤ</i> Mug"
  assert text_lib.title_cleaner(("strip_html", "strip_promo", "whitespace"))(title) == "ＲＥＤ Mug"
  assert text_lib.title_cleaner(("strip_promo",), promo_phrases=("mug",))(title) == (
      "<i>ＲＥＤ</i>   - Free Shipping")
  with pytest.raises(ValueError, match=r"input.title_cleaning has unknown ops \['strip_cats'\]"):
    text_lib.title_cleaner(("nfkc", "strip_cats"))


def test_text_fraction():
  assert text_lib.text_fraction("abc 123") == 1.0
  assert text_lib.text_fraction("ab!!") == 0.5
  assert text_lib.text_fraction("★★★ 머그") == 0.4
  assert text_lib.text_fraction("  ") == 1.0


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
  path = tmp_path_factory.mktemp("tok") / "spm.model"
  texts = ["red ceramic mug", "blue steel bottle", "green cotton cap"] * 50
  return tokenizer_lib.Tokenizer(tokenizer_lib.train_tokenizer(texts, path, vocab_size=300))


def _title_record(title):
  record = schema.empty_optional_fields()
  record.update(product_index=1, catalog_index=1, category=0, title=title.encode(),
                images=[], attributes={"key": [], "value": []})
  return record


def test_filtered_pairs_are_skipped_with_their_reason(tokenizer):
  # Tokens are the tokenizer's pieces (scripts without spaces have no words to count).
  pieces = lambda text: int(tokenizer.encode([text], 32)[1].sum()) - 2  # noqa: E731
  transform = transforms.ExampleTransform(
      tokenizer, modalities=("text",), title_cleaning=ALL_OPS,
      min_title_tokens=pieces("red ceramic mug"), min_title_text_fraction=0.5)
  reason = lambda title: transforms.SKIP_REASONS[transform(_title_record(title))[  # noqa: E731
      transforms.SKIP_KEY]]
  kept = transform(_title_record("Hot sale! Red ceramic mug"))
  np.testing.assert_array_equal(kept["text_tokens"],
                                tokenizer.encode(["red ceramic mug"], 32)[0][0])
  assert reason("Free shipping!!") == "empty_title"  # nothing left after cleaning
  assert pieces("red mug") < pieces("red ceramic mug") and reason("red mug") == "short_title"
  assert reason("r**e**d**m**u**g") == "non_text_title"  # 6 of 16 characters are text
  with pytest.raises(ValueError, match="input.min_title_tokens=40 exceeds the 30 tokens"):
    transforms.ExampleTransform(tokenizer, min_title_tokens=40)


def test_skip_counts_saved_before_new_reasons_restore(tiny_input_config):
  iterator = pipeline.make_train_iterator(tiny_input_config, seed=0)
  state = iterator.get_state()
  state["skipped"] = [3, 0, 1, 0, 0]  # a state from when there were five reasons
  iterator.set_state(state)
  assert iterator.stats["skipped/empty_title"] == 3 and iterator.stats["skipped/short_title"] == 0
  iterator.close()


# ---------------------------------------------------------------------------------------
# The e_clip config trains end to end.
# ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_e_clip_runlocal_trains_with_its_schedule_and_logs(toyshop_tiny, tmp_path):
  config = e_clip.get_config("tiny,runlocal")
  config.input.update(data_dir=toyshop_tiny[0], vocab_size=1000, image_size=32,
                      max_text_len=16)
  config.model.embed_dim = 32
  config.log_every_steps = 1
  config.evals = ml_collections.ConfigDict()
  trainer.train(config, str(tmp_path))
  rows = metrics_lib.read_metrics(tmp_path)
  assert [r["step"] for r in rows] == list(range(1, 11))
  sizes = [round(r["perf/examples_per_sec"] / r["perf/steps_per_sec"]) for r in rows]
  assert sizes == [16] * 5 + [32] * 5
  assert all(0.0 <= r["train/duplicate_rate"] <= 1.0 for r in rows)
  assert any(r["train/duplicate_rate"] > 0 for r in rows)  # toyshop lists duplicates
  assert np.isfinite([r["train/clip/loss"] for r in rows]).all()
