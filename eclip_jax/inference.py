r"""Use a checkpoint: embed images, titles and products, find the product, look at the maps.

    from eclip_jax import inference

    model = inference.Model.load("workdirs/eclip_tiny")      # or WORKDIR/export
    gallery = model.encode_images(["shoe.jpg", "bag.png", pil_image, uint8_array])
    queries = model.encode_texts(["red leather handbag"])
    indices, scores = model.search(queries, gallery, k=5)   # [1, 5] each, best first
    maps = model.instance_maps(["shoe.jpg"])["map"]          # [1, gh, gw] (ECLIP)

`Model.load` restores parameters only (no optimizer state) onto the devices present, laid
out for them, whatever topology wrote the checkpoint: one written on 8 devices loads on a
Colab CPU. It takes the run's config (from the checkpoint itself, or an export's
`config.json`) and its tokenizer (an export carries one; a workdir uses the dataset's).

Which output is an image's, a product's or a map is the run's choice, `config.inference`
(configs set it; e.g. ECLIP embeds a photo alone by its image-only instance embedding
`instance_emb_img`, and a photo with its title by the title-guided `instance_emb`), never
the caller's. Images are prepared as evaluation prepares them: the central square, resized
(bilinear) to the run's `input.image_size`, scaled to `input.value_range` (on the device).
Embeddings come back L2-normalized, float32 numpy arrays, one row per input.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from typing import Any, Union

import jax
import ml_collections
import numpy as np
from etils import epath
from PIL import Image
from tqdm import auto as tqdm

from eclip_jax import checkpoint as checkpoint_lib
from eclip_jax import config_base
from eclip_jax import parallel
from eclip_jax import trainer
from eclip_jax.data import pipeline
from eclip_jax.data import text as text_lib
from eclip_jax.data import tokenizer as tokenizer_lib
from eclip_jax.data import transforms
from eclip_jax.evals import common as evals_common

# An image: a file path, encoded bytes, a PIL image or uint8 pixels [H, W(, 3|4)].
ImageLike = Union[str, os.PathLike, bytes, Image.Image, np.ndarray]
DEFAULT_BATCH_SIZE = 64
PROGRESS_MIN_BATCHES = 4  # a progress bar from this many batches on


class Model:
  """A checkpoint's params with its config and tokenizer; see the module docstring."""

  def __init__(self, config: ml_collections.ConfigDict, params: Any, *, step: int,
               tokenizer: tokenizer_lib.Tokenizer | None, setup: trainer.Setup,
               batch_size: int = DEFAULT_BATCH_SIZE):
    self.config, self.params, self.step, self.tokenizer = config, params, step, tokenizer
    devices = parallel.data_parallel_size(setup.mesh)
    self.batch_size = math.ceil(batch_size / devices) * devices  # every device gets rows
    self._apply = setup.apply_fn()
    self._normalize = text_lib.get_normalizer(config.input.text_normalizer)

  # ------------------------------------------------------------------------------------------
  # Loading.
  # ------------------------------------------------------------------------------------------
  @classmethod
  def load(cls, path: str | os.PathLike, step: int | None = None, *,
           batch_size: int = DEFAULT_BATCH_SIZE, data_dir: str | None = None) -> Model:
    """The model of a run workdir (its latest checkpoint, or `step`) or of an export dir
    (`--mode=export`'s `WORKDIR/export`). `data_dir` replaces the run's `input.data_dir`,
    where a workdir's tokenizer is found (an export carries its own)."""
    path = checkpoint_lib.absolute(path)
    export = (path / checkpoint_lib.EXPORT_PARAMS).exists() and (path / "config.json").exists()
    if export:
      config_dict = json.loads((path / "config.json").read_text())
      saved_step = int((path / "step").read_text())
      if step is not None and step != saved_step:
        raise ValueError(f"{path} is an export of step {saved_step}, not {step}; load the run "
                         "workdir to pick another step")
      step, params_from = saved_step, path
    elif (path / checkpoint_lib.CHECKPOINT_DIR).exists():
      checkpointer = checkpoint_lib.Checkpointer(path)
      steps = checkpointer.all_steps()
      if not steps:
        checkpointer.close()
        raise FileNotFoundError(f"{path} has no checkpoint yet; train first")
      step = max(steps) if step is None else step
      if step not in steps:
        checkpointer.close()
        raise FileNotFoundError(f"{path} has no checkpoint of step {step}; it has {steps}")
      config_dict = checkpointer.restore_config(step)
      checkpointer.close()
      params_from = path / checkpoint_lib.CHECKPOINT_DIR / str(step)
    else:
      raise FileNotFoundError(f"{path} is neither a run workdir (with checkpoints/) nor an "
                              "export dir (with params/ and config.json)")

    config = _inference_config(config_dict, data_dir)
    setup = trainer.Setup(config, parallel.make_mesh(config.mesh))
    abstract = setup.abstract_state.params
    params = checkpoint_lib.load_params(str(params_from), abstract, abstract, ".*")
    tokenizer = None
    if "text" in config.input.modalities:
      tokenizer_file = path / trainer.EXPORT_TOKENIZER
      if not (export and tokenizer_file.exists()):
        builder = pipeline.prepared_builder(config.input.dataset, config.input.data_dir)
        tokenizer_file = pipeline.tokenizer_path(config.input, builder)
      tokenizer = tokenizer_lib.Tokenizer(tokenizer_file)
    return cls(config, params, step=step, tokenizer=tokenizer, setup=setup,
               batch_size=batch_size)

  # ------------------------------------------------------------------------------------------
  # Inputs.
  # ------------------------------------------------------------------------------------------
  @property
  def image_size(self) -> int:
    return self.config.input.image_size

  def preprocess_images(self, images: Sequence[ImageLike] | np.ndarray) -> np.ndarray:
    """uint8 [N, size, size, 3]: each image's central square, as the model sees it."""
    return np.stack([self._pixels(image) for image in _as_list(images)])

  def _pixels(self, image: ImageLike) -> np.ndarray:
    size = self.image_size
    if isinstance(image, (str, os.PathLike)):
      image = epath.Path(image).read_bytes()
    if isinstance(image, bytes):  # decoded as the evaluation pipeline decodes records
      try:
        return transforms.decode_crop_resize(image, size, transforms.center_crop_box)[0]
      except transforms.SkipRecord as error:
        raise ValueError("an image could not be decoded (not an image file?)") from error
    if isinstance(image, np.ndarray):
      if image.dtype != np.uint8 or image.ndim not in (2, 3):
        raise ValueError(f"image arrays must be uint8 [H, W] or [H, W, 3|4] pixels, got "
                         f"{image.dtype} {image.shape}")
      image = Image.fromarray(image)
    if not isinstance(image, Image.Image):
      raise TypeError(f"cannot read an image from a {type(image).__name__}; pass a path, "
                      "bytes, a PIL image or uint8 pixels")
    image = image if image.mode == "RGB" else image.convert("RGB")
    return transforms.crop_resize(image, size, transforms.center_crop_box(*image.size))

  def _tokens(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
    if self.tokenizer is None:
      raise ValueError("this run's model reads no text (input.modalities has no 'text')")
    tokens, mask = self.tokenizer.encode([self._normalize(t) for t in texts],
                                         self.config.input.max_text_len)
    return {"text_tokens": tokens, "text_mask": mask}

  def _images(self, images: Sequence[ImageLike]) -> dict[str, np.ndarray]:
    return {"image": self.preprocess_images(images)}  # uint8: the model scales it

  # ------------------------------------------------------------------------------------------
  # The model, batched.
  # ------------------------------------------------------------------------------------------
  def _run(self, count: int, make_batch: Callable[[int, int], dict[str, np.ndarray]],
           outputs: Sequence[str], progress: bool | None,
           optional: Sequence[str] = ()) -> dict[str, np.ndarray]:
    """`outputs` (and those of `optional` the model has) over rows [0, count),
    `make_batch(start, stop)` preparing each batch only when it runs; the last batch is
    padded (one compiled shape for all)."""
    if not count:
      raise ValueError("nothing to encode: the input list is empty")
    starts = range(0, count, self.batch_size)
    show = len(starts) >= PROGRESS_MIN_BATCHES if progress is None else progress
    results = {}
    for start in tqdm.tqdm(starts, disable=not show, unit="batch"):
      stop = min(count, start + self.batch_size)
      batch = {k: _pad(v, self.batch_size) for k, v in make_batch(start, stop).items()}
      model_outputs = self._apply(self.params, batch)
      for name in outputs:
        if name not in model_outputs:
          raise ValueError(f"the model ({self.config.model.name}) has no output {name!r}; fix "
                           f"config.inference (outputs: {sorted(model_outputs)})")
      for name in (*outputs, *(n for n in optional if n in model_outputs)):
        rows = np.asarray(jax.device_get(model_outputs[name]))[: stop - start]
        results.setdefault(name, []).append(rows)
    return {name: np.concatenate(parts) for name, parts in results.items()}

  def encode_images(self, images: Sequence[ImageLike] | np.ndarray, *,
                    progress: bool | None = None) -> np.ndarray:
    """[N, D] embeddings of images alone (`config.inference.image_output`)."""
    key = self.config.inference.image_output
    if key not in evals_common.IMAGE_EMBEDDINGS:
      raise ValueError(f"config.inference.image_output={key!r} is not an image-only "
                       f"embedding; choose one of {evals_common.IMAGE_EMBEDDINGS}")
    images = _as_list(images)
    return self._run(len(images), lambda a, b: self._images(images[a:b]), (key,),
                     progress)[key]

  def encode_texts(self, texts: Sequence[str], *, progress: bool | None = None) -> np.ndarray:
    """[N, D] embeddings of texts (titles, queries)."""
    texts = _as_text_list(texts)
    return self._run(len(texts), lambda a, b: self._tokens(texts[a:b]), ("text_emb",),
                     progress)["text_emb"]

  def encode_products(self, images: Sequence[ImageLike] | np.ndarray, titles: Sequence[str],
                      *, progress: bool | None = None) -> dict[str, np.ndarray]:
    """Products as photo + title: {"image": [N, D] the photo's embedding given its title
    (`config.inference.product_output`), "text": [N, D] the title's}."""
    images, titles = _as_list(images), _as_text_list(titles)
    if len(images) != len(titles):
      raise ValueError(f"{len(images)} images but {len(titles)} titles; give one per product")
    key = self.config.inference.product_output
    result = self._run(len(images),
                       lambda a, b: {**self._images(images[a:b]), **self._tokens(titles[a:b])},
                       (key, "text_emb"), progress)
    return {"image": result[key], "text": result["text_emb"]}

  def instance_maps(self, images: Sequence[ImageLike] | np.ndarray,
                    titles: Sequence[str] | None = None, *,
                    progress: bool | None = None) -> dict[str, np.ndarray]:
    """Where the model finds the product: {"map": [N, gh, gw]} over the patch grid
    (`config.inference.image_map_output`, or `product_map_output` with titles), and for
    ECLIP "queries": [N, K, gh, gw], each instance query's cross-attention."""
    images = _as_list(images)
    titles = None if titles is None else _as_text_list(titles)
    key = self.config.inference[
        "image_map_output" if titles is None else "product_map_output"]
    if not key:
      raise ValueError(f"this run's model ({self.config.model.name}) has no map of an image "
                       "alone (config.inference.image_map_output is empty); pass titles")

    def make_batch(start, stop):
      batch = self._images(images[start:stop])
      return batch if titles is None else {**batch, **self._tokens(titles[start:stop])}

    result = self._run(len(images), make_batch, (key,), progress, optional=("query_attn",))
    maps = {"map": result[key]}
    if "query_attn" in result:
      maps["queries"] = result["query_attn"]
    return maps

  # ------------------------------------------------------------------------------------------
  # Search.
  # ------------------------------------------------------------------------------------------
  @staticmethod
  def search(queries: np.ndarray, gallery: np.ndarray, k: int = 10
             ) -> tuple[np.ndarray, np.ndarray]:
    """The `k` gallery rows most cosine-similar to each query: (indices [Q, k], scores
    [Q, k]), best first. Both are [*, D] embeddings (from any of the encode methods)."""
    queries, gallery = (evals_common.l2_normalize(np.atleast_2d(x)) for x in (queries, gallery))
    if queries.shape[1] != gallery.shape[1]:
      raise ValueError(f"queries are {queries.shape[1]}-d but the gallery is "
                       f"{gallery.shape[1]}-d; embed both with the same model")
    k = min(k, len(gallery))
    scores = queries @ gallery.T
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1, kind="stable")
    indices = np.take_along_axis(top, order, axis=1)
    return indices, np.take_along_axis(scores, indices, axis=1)


def _inference_config(config_dict: dict[str, Any], data_dir: str | None
                      ) -> ml_collections.ConfigDict:
  """The run's config, laid out over the devices present (data parallel), with the
  attention kernel they have, and with the `inference` and `input` fields a run from before
  they existed lacks (their defaults are what it ran with)."""
  config = ml_collections.ConfigDict(config_dict)
  defaults = config_base.base_config().inference
  config.inference = ml_collections.ConfigDict({**defaults.to_dict(),
                                                **config.get("inference", {})})
  config.input = ml_collections.ConfigDict({**pipeline.default_input_config().to_dict(),
                                            **config.input.to_dict()})
  config.mesh = parallel.default_mesh_config()
  if config.model.get("attention_impl") == "cudnn" and jax.default_backend() != "gpu":
    config.model.attention_impl = "xla"  # the same attention: cuDNN's kernel is GPU-only
  if data_dir is not None:
    config.input.data_dir = data_dir
  return config


def _as_list(images: Sequence[ImageLike] | np.ndarray) -> list[ImageLike]:
  """A uint8 [N, H, W, 3] stack, or a list/tuple of images -> a list of images."""
  if isinstance(images, np.ndarray):
    if images.ndim != 4:
      raise ValueError(f"an array of images is [N, H, W, 3] uint8, got shape {images.shape}; "
                       "wrap a single image in a list")
    return list(images)
  if isinstance(images, (str, os.PathLike, bytes, Image.Image)):
    raise TypeError("pass a list of images, not one image")
  return list(images)


def _as_text_list(texts: Sequence[str]) -> list[str]:
  if isinstance(texts, str):
    raise TypeError("pass a list of strings, not one string")
  return list(texts)


def _pad(rows: np.ndarray, size: int) -> np.ndarray:
  """`rows` padded with zero rows to `size` (the padding's outputs are dropped)."""
  missing = size - len(rows)
  return rows if not missing else np.concatenate([rows, np.zeros((missing, *rows.shape[1:]),
                                                                 rows.dtype)])
