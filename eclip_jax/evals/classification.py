"""Zero-shot category classification: each image takes the class whose prompts it matches.

A class's embedding is CLIP's prompt ensemble: every template ("a photo of a {}.", ...)
filled with each of the class's names, normalized and tokenized exactly as the input
pipeline treats titles, embedded by the text tower, L2-normalized, averaged over the
class's prompts and renormalized. An image is classified by cosine similarity to the class
embeddings. The classes are the dataset's `category` labels, named by their display name
(toyshop's category keys through `toyshop.CATEGORY_INFO`, other labels with `_` read as a
space) or, with `names="synonyms"`, by every word toyshop's titles use for the category
("mug", "coffee mug", "cup"; other datasets have only the display name).

Config entry (`config.evals.<name>`): `type="zeroshot_classification"`,
`split="validation"`, `templates=DEFAULT_TEMPLATES` (format strings with one `{}`),
`names="display"` (or `"synonyms"`), `image_output="image_emb"` (or ECLIP's
`"instance_emb_img"`), and any `config.input` field to override (`batch_size`, ...).
Metrics: `top1`, `top5`, `chance_top1` (1 / number of classes), `num_examples`,
`num_skipped` (bad records of the split).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from eclip_jax import parallel
from eclip_jax.data import text as text_lib
from eclip_jax.data import toyshop
from eclip_jax.evals import common

DEFAULT_TEMPLATES = ("a photo of a {}.", "a {} for sale.", "{}")


def class_display_name(dataset_name: str, label: str) -> str:
  """How a prompt names the class of ClassLabel name `label` of dataset `dataset_name`."""
  if dataset_name == "toyshop" and label in toyshop.CATEGORY_INFO:
    return toyshop.CATEGORY_INFO[label][0]
  return label.replace("_", " ")


def class_synonyms(dataset_name: str, label: str) -> tuple[str, ...]:
  """Every name the dataset's titles use for the class (the display name where unknown)."""
  display = class_display_name(dataset_name, label)
  if dataset_name == "toyshop":  # toyshop's labels are the display names
    for name, synonyms, _ in toyshop.CATEGORY_INFO.values():
      if name == display:
        return synonyms
  return (display,)


def _replicated_rows_to_global(batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Rows every process holds in full -> global arrays split over the batch axes.

  `parallel.to_global` takes each process's own rows; the prompts are the same on every
  process, so each passes all of them and keeps the rows its devices hold.
  """
  sharding = parallel.batch_sharding(mesh)
  return {
      key: jax.make_array_from_process_local_data(sharding, value, value.shape)
      for key, value in batch.items()
  }


class PromptEnsemble:
  """Class embeddings from prompts, CLIP's way: each class's names x `templates`, normalized
  and tokenized as the split's titles are, embedded by the text tower, L2-normalized,
  averaged per class and renormalized.

  Attributes: `prompt_tokens`, `prompt_mask` (class-major rows), `prompt_class` (whose
  prompt each row is). `embed(params)` -> [num_classes, D] unit-length class embeddings.
  """

  def __init__(self, class_names: Sequence[Sequence[str]], templates: Sequence[str],
               data: common.EvalSplit):
    self.data, self.num_classes = data, len(class_names)
    normalize = text_lib.get_normalizer(data.input_config.text_normalizer)
    prompts, prompt_class = [], []
    for index, names in enumerate(class_names):
      for class_name in names:
        prompts += [normalize(t.format(class_name)) for t in templates]
        prompt_class += [index] * len(templates)
    self.prompt_class = np.asarray(prompt_class)
    self.prompt_tokens, self.prompt_mask = data.transform.tokenizer.encode(
        prompts, data.input_config.max_text_len
    )
    self._prompt_batches = self._batch_prompts(parallel.data_parallel_size(data.mesh))

  def _batch_prompts(self, num_shards: int) -> list[dict[str, np.ndarray]]:
    """Equal-shaped prompt batches (one compilation) that split evenly over the devices."""
    num_prompts = len(self.prompt_tokens)
    batch_size = min(self.data.batch_size, math.ceil(num_prompts / num_shards) * num_shards)
    padding = -num_prompts % batch_size
    # Padding rows repeat the last prompt, so the text tower never sees an empty text.
    pad = lambda rows: np.pad(rows, ((0, padding), (0, 0)), mode="edge")  # noqa: E731
    tokens, mask = pad(self.prompt_tokens), pad(self.prompt_mask)
    return [
        {"text_tokens": tokens[i : i + batch_size], "text_mask": mask[i : i + batch_size]}
        for i in range(0, len(tokens), batch_size)
    ]

  def embed(self, params: Any) -> np.ndarray:
    prompt_emb = [
        self.data.apply_fn(params, _replicated_rows_to_global(batch, self.data.mesh))["text_emb"]
        for batch in self._prompt_batches
    ]
    prompt_emb = np.concatenate(parallel.to_host(prompt_emb))[: len(self.prompt_tokens)]
    class_sum = np.zeros((self.num_classes, prompt_emb.shape[-1]), np.float64)
    np.add.at(class_sum, self.prompt_class, common.l2_normalize(prompt_emb))
    return common.l2_normalize(class_sum)


def check_templates(name: str, field: str, templates: Sequence[str]) -> tuple[str, ...]:
  """`templates` as a tuple, or a ValueError naming `config.evals.<name>.<field>`."""
  templates = tuple(templates)
  if not templates or any(t.count("{}") != 1 for t in templates):
    raise ValueError(
        f"config.evals.{name}.{field}={templates!r} must be a non-empty tuple of format "
        "strings with exactly one '{}' (where the class name goes)."
    )
  return templates


def category_prompts(name: str, data: common.EvalSplit, names: str,
                     templates: Sequence[str]) -> PromptEnsemble:
  """The prompt ensemble of the split's `category` classes, named by `names` ("display" or
  "synonyms"; see the module docstring)."""
  namers = {"display": lambda *label: (class_display_name(*label),), "synonyms": class_synonyms}
  if names not in namers:
    raise ValueError(f"config.evals.{name}.names={names!r} is unknown; choose one of "
                     f"{sorted(namers)}.")
  builder = data.builder
  labels = builder.info.features["category"].names
  return PromptEnsemble([namers[names](builder.name, label) for label in labels],
                        templates, data)


def topk_accuracies(scores: np.ndarray, labels: np.ndarray) -> dict[str, float]:
  """`top1`, `top5` of [N, classes] `scores` against integer `labels` (ties count against;
  NaN scores too)."""
  true_score = np.take_along_axis(scores, labels[:, None], axis=1)
  # Classes scored not below the true one, itself excluded ("not below": a NaN counts against).
  ranks = np.sum(~(scores < true_score), axis=1) - 1
  return {"top1": float(np.mean(ranks < 1)), "top5": float(np.mean(ranks < 5))}


class ZeroShotClassificationEvaluator(common.SplitEvaluator):
  """Top-1/top-5 category accuracy from prompt-ensembled class embeddings."""

  DEFAULTS = {"templates": DEFAULT_TEMPLATES, "names": "display", "image_output": "image_emb"}
  MODALITIES = ("image",)

  def __init__(self, name: str, entry: Mapping[str, Any], **kwargs):
    super().__init__(name, entry, **kwargs)
    self.image_output = self.data.image_output()
    self.templates = check_templates(name, "templates", self.data.fields["templates"])
    self.prompts = category_prompts(name, self.data, self.data.fields["names"], self.templates)
    self.class_names = tuple(class_display_name(self.data.builder.name, label)
                             for label in self.data.builder.info.features["category"].names)

  def class_embeddings(self, params: Any) -> np.ndarray:
    """[num_classes, D] unit-length prompt-ensembled class embeddings."""
    return self.prompts.embed(params)

  def run(self, params: Any) -> dict[str, float | int]:
    class_emb = self.class_embeddings(params)
    split = self.data.run_model(
        params, inputs=("image",), outputs=(self.image_output,), labels=("category",)
    )
    scores = common.l2_normalize(split[self.image_output]) @ class_emb.T
    return {
        **topk_accuracies(scores, split["category"]),
        "chance_top1": 1.0 / len(self.class_names),
        "num_examples": len(split["category"]),
        "num_skipped": self.data.num_records - len(split["category"]),
    }
