"""TFDS builders writing ArrayRecord: `toyshop` (synthetic) here, `product_manifest` in
manifest.py, `m5product` in m5product.py. Importing this module registers all three with
TFDS.

Any toyshop config name of the form `{size}[_{clutter}][_{N}px][_seed{K}]` works, not just
the registered ones (see `toyshop.spec_from_name`); names are canonicalized, so `tiny` and
`tiny_cluttered_64px_seed0` are one dataset on disk.

`builder` is how the rest of the code constructs builders: an unknown dataset or config name
is one sentence with the nearest valid name, not TFDS's list of every registered dataset.
"""

from __future__ import annotations

import difflib
import multiprocessing
import os
import re
from collections.abc import Iterator
from typing import Any

import tensorflow_datasets as tfds

from eclip_jax.data import m5product  # noqa: F401  (registers m5product)
from eclip_jax.data import manifest  # noqa: F401  (registers product_manifest)
from eclip_jax.data import schema
from eclip_jax.data import toyshop


# TFDS prefixes what a builder's constructor raised with what it was constructing.
_CONSTRUCTION_PREFIX = re.compile(
    r'^Failed to construct dataset "[^"]+", builder_kwargs "\{.*?\}": ', re.S)


def builder(dataset: str, field: str = "input.dataset", **kwargs) -> tfds.core.DatasetBuilder:
  """`tfds.builder(dataset, **kwargs)`, raising one sentence (naming the config or flag
  `field`) for an unknown dataset or config."""
  try:
    return tfds.builder(dataset, **kwargs)
  except tfds.core.registered.DatasetNotFoundError as error:
    name = dataset.split("/")[0]
    known = ["toyshop", "product_manifest", "m5product",
             *tfds.list_builders(with_community_datasets=False)]
    raise ValueError(
        f"{field}={dataset!r}: there is no dataset {name!r}{_did_you_mean(name, known)}; "
        "use toyshop/<config>, product_manifest[/<name>] or m5product[/<name>].") from error
  except ValueError as error:
    message = _CONSTRUCTION_PREFIX.sub("", str(error), count=1)
    if dataset.startswith("toyshop/") and "BuilderConfig" in message:
      config = dataset.split("/", 1)[1]
      known = [c.name for c in Toyshop.BUILDER_CONFIGS]
      message = (
          f"there is no toyshop config {config!r}"
          f"{_did_you_mean(config, known, prefix='toyshop/')}; names are "
          f"{{size}}[_{{clutter}}][_{{N}}px][_seed{{K}}] with size one of "
          f"{list(toyshop.SIZE_NUM_LISTINGS)} and clutter one of "
          f"{list(toyshop.CLUTTER_LEVELS)}.")
    raise ValueError(f"{field}={dataset!r}: {message.splitlines()[0]}") from error


def _did_you_mean(name: str, known: list[str], prefix: str = "") -> str:
  close = difflib.get_close_matches(name, known, n=1)
  return f" (did you mean {prefix}{close[0]}?)" if close else ""


def canonical_toyshop_name(spec: toyshop.ToyshopSpec) -> str:
  size = next(s for s, n in toyshop.SIZE_NUM_LISTINGS.items() if n == spec.num_listings)
  name = size if spec.clutter == "cluttered" else f"{size}_{spec.clutter}"
  if spec.image_size != 64:
    name += f"_{spec.image_size}px"
  return name + (f"_seed{spec.seed}" if spec.seed else "")


class ToyshopConfig(tfds.core.BuilderConfig):
  """A toyshop variant; `spec` fixes every byte of the generated data."""

  def __init__(self, spec: toyshop.ToyshopSpec):
    super().__init__(
        name=canonical_toyshop_name(spec),
        description=(
            f"{spec.num_listings} listings, {spec.clutter} scenes, {spec.image_size}px "
            f"images, seed {spec.seed}"
        ),
    )
    self.spec = spec

  @classmethod
  def from_name(cls, name: str) -> ToyshopConfig:
    return cls(toyshop.spec_from_name(name))


# Generation runs in worker processes; each builds the (cached, deterministic) catalog once.
_worker_spec: toyshop.ToyshopSpec | None = None


def _init_worker(spec: toyshop.ToyshopSpec) -> None:
  global _worker_spec
  _worker_spec = spec
  toyshop.build_catalog(spec)


def _make_listing_in_worker(product_index: int) -> dict[str, Any]:
  return toyshop.make_listing(_worker_spec, product_index)


class Toyshop(tfds.core.GeneratorBasedBuilder):
  """Synthetic e-commerce listings with boxes, duplicates, video and audio."""

  VERSION = tfds.core.Version("2.0.0")
  RELEASE_NOTES = {
      "2.0.0": "A difficulty ladder: new level `light` between `clean` and `cluttered`. Off "
               "the studio, objects' centers are spread over the whole frame (products may "
               "be cut by its edge; boxes are clipped to it), so the center prior stays "
               "within 2x box-area chance; rooms' horizons vary more. `clean` is unchanged.",
      "1.0.0": "First release.",
  }
  BUILDER_CONFIGS = [
      ToyshopConfig.from_name(size if clutter == "cluttered" else f"{size}_{clutter}")
      for size in toyshop.SIZE_NUM_LISTINGS
      for clutter in toyshop.CLUTTER_LEVELS
  ]
  DEFAULT_BUILDER_CONFIG_NAME = "tiny"

  def __init__(self, *, num_workers: int | None = None, **kwargs):
    # Workers render in parallel; the default uses every core.
    self._num_workers = num_workers if num_workers is not None else (os.cpu_count() or 1)
    super().__init__(**kwargs)

  @classmethod
  def get_builder_config(cls, name: str, version=None) -> tfds.core.BuilderConfig | None:
    registered = super().get_builder_config(name, version)
    if registered is not None:
      return registered
    try:
      return ToyshopConfig.from_name(name)
    except ValueError:
      return None

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=schema.product_features(toyshop.CATEGORY_NAMES),
        homepage="https://github.com/eclip-jax/eclip_jax",
        description=__doc__,
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download: the world is generated
    return {split: self._generate_examples(split) for split, _ in toyshop.SPLIT_FRACTIONS}

  def _generate_examples(self, split: str) -> Iterator[tuple[str, dict[str, Any]]]:
    spec = self.builder_config.spec
    indices = [int(i) for i in toyshop.build_catalog(spec).listings_of_split(split)]
    num_workers = min(self._num_workers, max(1, len(indices) // 64))
    if num_workers <= 1:
      records = (toyshop.make_listing(spec, i) for i in indices)
      yield from ((r["product_id"], r) for r in records)
      return
    # spawn, not fork: the parent may have JAX's threads running (forking those deadlocks).
    context = multiprocessing.get_context("spawn")
    with context.Pool(num_workers, initializer=_init_worker, initargs=(spec,)) as pool:
      for record in pool.imap(_make_listing_in_worker, indices, chunksize=16):
        yield record["product_id"], record
