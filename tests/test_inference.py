"""inference.Model: a checkpoint written on 8 devices loads on 1 and embeds as the training-time
model does; image inputs in every form; search against a numpy ranking; clear errors."""

import io
import json
import os
import shutil
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
from PIL import Image

from eclip_jax import checkpoint as checkpoint_lib
from eclip_jax import inference, parallel, trainer
from eclip_jax.data import pipeline

NUM_RECORDS = 10  # not a multiple of the batch: the padding path runs


def _records(config):
  """(first photo bytes, title) of the first test records, and their evaluation batch."""
  input_config = config.input.copy_and_resolve_references()
  input_config.num_views = 1  # one photo per record, as the inference API embeds them
  builder = pipeline.prepared_builder(input_config.dataset, input_config.data_dir)
  transform = pipeline.make_transform(input_config, builder)
  source = pipeline.open_split(builder, "test")
  records = [source[i] for i in range(NUM_RECORDS)]
  examples = [transform(record) for record in records]
  batch = {key: np.stack([e[key] for e in examples])
           for key in ("image", "text_tokens", "text_mask")}
  photos = [bytes(record["images"][0]) for record in records]
  titles = [record["title"].decode() for record in records]
  return photos, titles, batch


def _training_time_outputs(workdir, config, batch):
  """The checkpoint restored whole (train state) on the run's own 2x2x2 mesh, applied to the
  evaluation pipeline's batch (padded to the 8 devices)."""
  setup = trainer.Setup(config, parallel.make_mesh(config.mesh))
  checkpointer = checkpoint_lib.Checkpointer(workdir)
  state = checkpointer.restore(checkpointer.latest_step(), setup.abstract_state)
  checkpointer.close()
  padded = {k: np.concatenate([v, np.zeros((16 - len(v), *v.shape[1:]), v.dtype)])
            for k, v in batch.items()}
  outputs = jax.device_get(setup.apply_fn()(state.params, padded))
  image_only = jax.device_get(setup.apply_fn()(state.params, {"image": padded["image"]}))
  return ({k: v[:NUM_RECORDS] for k, v in outputs.items() if k in
           ("text_emb", "instance_emb", "instance_attn")}
          | {k: v[:NUM_RECORDS] for k, v in image_only.items() if k in
             ("instance_emb_img", "instance_attn_img", "query_attn")})


_ONE_DEVICE_SCRIPT = textwrap.dedent("""
    import json, sys
    import jax, numpy as np
    from eclip_jax import inference
    path, photos_dir, out = sys.argv[1:]
    titles = json.load(open(f"{photos_dir}/titles.json"))
    photos = [f"{photos_dir}/{i}.jpg" for i in range(len(titles))]
    model = inference.Model.load(path, batch_size=4)
    products = model.encode_products(photos, titles)
    np.savez(out, devices=jax.device_count(), step=model.step,
             images=model.encode_images(photos), texts=model.encode_texts(titles),
             product_images=products["image"], product_texts=products["text"],
             maps=model.instance_maps(photos)["map"],
             title_maps=model.instance_maps(photos, titles)["map"],
             queries=model.instance_maps(photos)["queries"])
""")


@pytest.mark.slow
def test_load_on_one_device_matches_the_training_time_model(tiny_eclip_run, tmp_path):
  workdir, config = tiny_eclip_run
  photos, titles, batch = _records(config)
  expected = _training_time_outputs(workdir, config, batch)
  for i, photo in enumerate(photos):
    (tmp_path / f"{i}.jpg").write_bytes(photo)
  (tmp_path / "titles.json").write_text(json.dumps(titles))
  # A fresh process with one CPU device, as in Colab: no forced device count.
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env.update(JAX_PLATFORMS="cpu", PYTHONPATH=os.getcwd())
  for source in (workdir, workdir / trainer.EXPORT_DIR):
    out = tmp_path / "out.npz"
    subprocess.run([sys.executable, "-c", _ONE_DEVICE_SCRIPT, str(source), str(tmp_path),
                    str(out)], check=True, env=env, timeout=600, capture_output=True)
    got = np.load(out)
    assert int(got["devices"]) == 1 and int(got["step"]) == 6
    close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)  # noqa: E731
    close(got["images"], expected["instance_emb_img"])  # ECLIP's config: image-only instance
    close(got["texts"], expected["text_emb"])
    close(got["product_images"], expected["instance_emb"])  # ... and title-guided with a title
    close(got["product_texts"], expected["text_emb"])
    close(got["maps"], expected["instance_attn_img"])
    close(got["title_maps"], expected["instance_attn"])
    close(got["queries"], expected["query_attn"])
  # The embeddings differ between products (not a constant output).
  assert np.linalg.norm(got["images"][0] - got["images"][1]) > 1e-3


@pytest.fixture(scope="module")
def model(tiny_eclip_run):
  return inference.Model.load(tiny_eclip_run[0] / trainer.EXPORT_DIR, batch_size=8)


def test_every_image_form_is_prepared_as_evaluation_prepares_it(model, tiny_eclip_run):
  photos, _, batch = _records(tiny_eclip_run[1])
  prepared = model.preprocess_images(photos)
  np.testing.assert_array_equal(prepared, batch["image"])

  photo = Image.open(io.BytesIO(photos[0]))
  png = io.BytesIO()
  photo.save(png, format="PNG")
  pixels = np.asarray(photo.convert("RGB"))
  forms = [photo, pixels, png.getvalue(), pixels[None].repeat(2, 0)]
  embedded = [model.encode_images([form] if not isinstance(form, np.ndarray) or form.ndim == 3
                                  else form) for form in forms]
  for embedding in embedded:  # PIL, array, PNG bytes, an [N, H, W, 3] stack: the same pixels
    np.testing.assert_allclose(embedding[0], embedded[0][0], rtol=1e-6, atol=1e-7)

  # A non-square image is cut to its central square before resizing (the resampling filter
  # reaches a pixel past the square, so the outermost output columns may differ).
  wide = np.random.default_rng(0).integers(0, 256, size=(40, 60, 3), dtype=np.uint8)
  np.testing.assert_array_equal(
      model.preprocess_images([wide])[:, :, 2:-2],
      model.preprocess_images([np.ascontiguousarray(wide[:, 10:50])])[:, :, 2:-2])


def test_search_ranks_by_cosine_like_numpy(model):
  rng = np.random.default_rng(0)
  queries, gallery = rng.normal(size=(3, 32)), rng.normal(size=(50, 32)) * 3.0
  indices, scores = model.search(queries, gallery, k=5)
  cosine = (queries / np.linalg.norm(queries, axis=1, keepdims=True)) @ (
      gallery / np.linalg.norm(gallery, axis=1, keepdims=True)).T
  np.testing.assert_array_equal(indices, np.argsort(-cosine, axis=1)[:, :5])
  np.testing.assert_allclose(scores, np.sort(cosine, axis=1)[:, ::-1][:, :5], rtol=1e-5)
  assert model.search(queries, gallery[:2], k=5)[0].shape == (3, 2)


def test_embeddings_of_long_lists_do_not_depend_on_batching(model, tiny_eclip_run):
  photos, titles, _ = _records(tiny_eclip_run[1])
  many = model.encode_texts(titles * 3, progress=True)  # 30 texts in batches of 8
  np.testing.assert_allclose(many[:NUM_RECORDS], many[-NUM_RECORDS:], rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(many[:NUM_RECORDS], model.encode_texts(titles), rtol=1e-6,
                             atol=1e-7)
  assert model.encode_images(photos).shape == (NUM_RECORDS, 32)


def test_errors_name_the_fix(model, tiny_eclip_run, tmp_path):
  workdir = tiny_eclip_run[0]
  with pytest.raises(FileNotFoundError, match="neither a run workdir"):
    inference.Model.load(tmp_path)
  with pytest.raises(FileNotFoundError, match=r"no checkpoint of step 3; it has \[6\]"):
    inference.Model.load(workdir, step=3)
  with pytest.raises(ValueError, match="an export of step 6, not 2"):
    inference.Model.load(workdir / trainer.EXPORT_DIR, step=2)
  with pytest.raises(ValueError, match="uint8"):
    model.encode_images([np.zeros((8, 8, 3), np.float32)])
  with pytest.raises(TypeError, match="a list of images"):
    model.encode_images("photo.jpg")
  with pytest.raises(ValueError, match="could not be decoded"):
    model.encode_images([b"not an image"])
  with pytest.raises(ValueError, match="2 images but 1 titles"):
    model.encode_products([np.zeros((8, 8, 3), np.uint8)] * 2, ["one"])
  with pytest.raises(TypeError, match="a list of strings"):
    model.encode_texts("red shoe")
  with pytest.raises(FileNotFoundError, match="no checkpoint yet"):
    (tmp_path / "fresh" / checkpoint_lib.CHECKPOINT_DIR).mkdir(parents=True)
    inference.Model.load(tmp_path / "fresh")
  # A CLIP run's config has no image-only map: its maps need the titles.
  model.config.inference.image_map_output = ""
  try:
    with pytest.raises(ValueError, match="no map of an image alone .* pass titles"):
      model.instance_maps([np.zeros((8, 8, 3), np.uint8)])
  finally:
    model.config.inference.image_map_output = "instance_attn_img"


def test_a_run_trained_with_cudnn_attention_opens_off_gpu(model, tiny_eclip_run, tmp_path):
  export = tmp_path / "export"
  shutil.copytree(tiny_eclip_run[0] / trainer.EXPORT_DIR, export)
  config = json.loads((export / "config.json").read_text())
  config["model"]["attention_impl"] = "cudnn"  # as a GPU run would have trained
  (export / "config.json").write_text(json.dumps(config))
  photos, titles, _ = _records(tiny_eclip_run[1])
  reopened = inference.Model.load(export, batch_size=8)
  assert reopened.config.model.attention_impl == "xla"  # the same attention, CPU's kernel
  np.testing.assert_array_equal(reopened.encode_images(photos), model.encode_images(photos))
  np.testing.assert_array_equal(reopened.encode_texts(titles), model.encode_texts(titles))
