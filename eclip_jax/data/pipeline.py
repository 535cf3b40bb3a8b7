"""Input pipelines assembled from a config's `input` section.

Training (`make_train_iterator`):

    tfds.data_source(split) -> grain.MapDataset -> seeded shuffle -> repeat (reshuffled
    every epoch) -> ExampleTransform (random, seeded per element) -> this process's rows of
    every global batch -> drop + tally skip markers -> batch (drop remainder)
    -> multiprocessing prefetch -> a thread assembling `input.prefetch_batches` batches
    ahead -> pop the tallies into the iterator's running `stats`

The iterator is a `grain.DatasetIterator`: `get_state()`/`set_state()` round-trip, and the
skip counts are part of the state, so a restored run reports the same totals. Resuming
requires the same `input.num_workers` (Grain slices the stream per worker). A batch-size
schedule (`BatchSchedule`) forms one iterator per stage, each starting at the stream row
where the stages before it stopped, so the example stream is the same whatever the batch
sizes. `example_spec` describes an example's keys, shapes and dtypes without reading data.

SCALE's masked-modeling masks (`input.masking`) are drawn by the transform from the same
per-element seed, so they too are the same after a resume.

Evaluation (`make_eval_iterator`) walks a split once, in order: every example exactly once
over all processes, padded to full, equally many batches per process, with `_valid` false
on padding rows and on records that had to be skipped.
"""

from __future__ import annotations

import bisect
import dataclasses
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import grain
import jax
import ml_collections
import numpy as np
import tensorflow_datasets as tfds
from absl import flags, logging

from eclip_jax.data import builders  # (importing it registers the builders)
from eclip_jax.data import text as text_lib
from eclip_jax.data import tokenizer as tokenizer_lib
from eclip_jax.data import transforms

VALID_KEY = "_valid"
# Evaluation rows carry their record's index in the split (-1 on padding rows), so an
# evaluator can find a given record's row whatever order the processes' rows arrive in.
RECORD_INDEX_KEY = "_record_index"


def default_input_config() -> ml_collections.ConfigDict:
  """The `input` section every method config starts from (fields documented inline)."""
  return ml_collections.ConfigDict({
      "dataset": "toyshop/tiny",  # TFDS name[/config]
      "data_dir": "data",  # where `prepare` built it
      "train_split": "train",
      "batch_size": 64,  # global, over all processes
      "num_workers": 0,  # Grain worker processes; 0 = in the main process
      "read_threads": 4,  # threads per process reading + transforming records
      "prefetch_buffer_size": 128,  # elements read ahead per process
      # Whole training batches a background thread assembles ahead of the loop (0 = none),
      # while the loop waits for a step (config.max_steps_in_flight): the fetch then finds
      # its batch ready instead of pulling each example through the iterators itself.
      "prefetch_batches": 2,
      "modalities": ("image", "text"),  # of transforms.MODALITIES
      "image_size": 64,
      "num_views": 1,  # images of the product per example (ECLIP uses 2)
      "crop_scale": (0.35, 1.0),  # random-resized-crop area fraction (training)
      "flip": True,
      # Oracle diagnostic: crop train and eval images to their product box (+ box_context of
      # its side) first. Needs boxes; makes the grounding evaluator's numbers meaningless.
      "crop_to_box": False,
      "box_context": 0.25,
      # The range the models see pixels in: batches carry uint8 pixels, which the compiled
      # step maps onto it (model_inputs).
      "value_range": (-1.0, 1.0),
      "background": (255, 255, 255),  # the RGB that transparent image pixels show
      "tokenizer": "",  # .model path; "" = the one `prepare` stored beside the dataset
      "vocab_size": 8000,  # picks that default tokenizer
      "text_normalizer": "basic",
      # e-CLIP's title cleaning (data/text.py title_cleaner): ops applied to titles in order,
      # e.g. ("nfkc", "strip_html", "strip_emoji", "strip_promo", "casefold", "whitespace");
      # the promo phrases it strips; and the pair filters (0 = off): pairs whose cleaned
      # title has fewer tokens, or a smaller share of letters and digits, are skipped.
      "title_cleaning": (),
      "promo_phrases": text_lib.DEFAULT_PROMO_PHRASES,
      "min_title_tokens": 0,
      "min_title_text_fraction": 0.0,
      "max_text_len": 32,
      "max_table_len": 64,
      "video_frames": 8,
      "video_size": 32,
      "audio_samples": 8000,
      "audio_sample_rate": 16_000,
      # SCALE's modalities (transforms.py): `audio_mel` = log-mel frames of the waveform at
      # audio_sample_rate (25 ms Hann window, 10 ms hop, 80 Slaney mel bins, log(power +
      # 1e-6)), or the record's pre-extracted mel matrix when it has no waveform, cropped
      # (randomly in training) or zero-padded to this many frames (751: M5Product's 7.5 s).
      "audio_mel_frames": 751,
      "max_regions": 36,  # `regions`: pre-extracted region features + boxes kept per example
      "video_feat_frames": 12,  # `video_feats`: frame features, sampled uniformly if more
      # `table` adds `table_entity` (per token, the index of its key (2i) or value (2i + 1),
      # -1 on separators and padding) and `table_is_value`; masking turns it on.
      "table_entities": False,
      # Masked modeling (SCALE): in training, input.mask_prob of the title's tokens (80/10/10
      # [MASK]/random/kept), of the table's tokens (whole keys or values), and of the present
      # regions, frame features and mel frames are chosen, seeded per example; evaluation
      # masks nothing. Adds text_tokens_masked, text_mlm_targets, table_tokens_masked,
      # table_mlm_targets, region_mlm_mask, frame_mlm_mask, audio_mel_mlm_mask.
      "masking": False,
      "mask_prob": 0.15,
      # With masking, whole patches of this many pixels a side are hidden from the image for
      # masked-patch regression (image_mlm_mask); the image encoder's patch size. 0: none.
      "mask_patch_size": 0,
      # Incomplete training examples (SCALE's missing modalities; evaluation sees every
      # modality): this share of the training records loses a random non-empty proper
      # subset of its modalities, the same records in every epoch and run (`image_present`
      # then says which examples have their image); `complete_only` skips every training
      # example that lacks one of `modalities` (counted as skipped/incomplete).
      "simulate_missing": 0.0,
      "complete_only": False,
  })


class FieldsDataSource:
  """A TFDS ArrayRecord split that deserializes only some top-level fields.

  Parsing every field of a record (eight video frames, a waveform, ...) costs several times
  more than parsing the few a CLIP-style transform reads; TFDS's numpy parser skips
  serialized fields absent from the spec it is given.
  """

  def __init__(self, tfds_source, fields: Sequence[str]):
    all_features = tfds_source.dataset_info.features
    self._features = tfds.features.FeaturesDict({f: all_features[f] for f in fields})
    self._records = tfds_source.data_source  # raw serialized records

  def __len__(self) -> int:
    return len(self._records)

  def __getitem__(self, index: int) -> dict[str, Any]:
    return self._features.deserialize_example_np(self._records[index])


def prepared_builder(dataset: str, data_dir: str) -> tfds.core.DatasetBuilder:
  """The builder of a prepared dataset, or one clear error saying how to build it."""
  builder = builders.builder(dataset, data_dir=data_dir)
  if not builder.is_prepared():
    raise FileNotFoundError(
        f"input.dataset={dataset!r} is not built in input.data_dir={data_dir!r}; build it "
        f"with `python -m eclip_jax.data.prepare --dataset={dataset} --data_dir={data_dir}`"
    )
  return builder


def open_split(builder: tfds.core.DatasetBuilder, split: str, fields: Sequence[str] | None = None):
  """The random-access data source of `split`, deserializing only `fields` if given."""
  if split not in builder.info.splits:
    raise ValueError(
        f"split {split!r} of {builder.info.full_name} does not exist; it has "
        f"{sorted(builder.info.splits)}"
    )
  source = builder.as_data_source(split=split)
  return source if fields is None else FieldsDataSource(source, fields)


def tokenizer_path(input_config: ml_collections.ConfigDict,
                   builder: tfds.core.DatasetBuilder) -> str:
  """`input.tokenizer`, else the tokenizer `prepare` stored beside the dataset."""
  return input_config.tokenizer or str(
      tokenizer_lib.default_tokenizer_path(builder.data_dir, input_config.vocab_size))


def make_transform(
    input_config: ml_collections.ConfigDict, builder: tfds.core.DatasetBuilder | None
) -> transforms.ExampleTransform:
  """The example transform the `input` section describes, with the dataset's tokenizer
  (`builder` None: without one, a transform that only describes examples)."""
  tokenizer = None
  if builder is not None:
    tokenizer = tokenizer_lib.Tokenizer(tokenizer_path(input_config, builder))
  return transforms.ExampleTransform(
      tokenizer=tokenizer,
      modalities=tuple(input_config.modalities),
      image_size=input_config.image_size,
      num_views=input_config.num_views,
      crop_scale=tuple(input_config.crop_scale),
      flip=input_config.flip,
      crop_to_box=input_config.crop_to_box,
      box_context=input_config.box_context,
      background=tuple(input_config.background),
      max_text_len=input_config.max_text_len,
      text_normalizer=input_config.text_normalizer,
      title_cleaning=tuple(input_config.title_cleaning),
      promo_phrases=tuple(input_config.promo_phrases),
      min_title_tokens=input_config.min_title_tokens,
      min_title_text_fraction=input_config.min_title_text_fraction,
      max_table_len=input_config.max_table_len,
      video_frames=input_config.video_frames,
      video_size=input_config.video_size,
      audio_samples=input_config.audio_samples,
      audio_sample_rate=input_config.audio_sample_rate,
      audio_mel_frames=input_config.audio_mel_frames,
      max_regions=input_config.max_regions,
      video_feat_frames=input_config.video_feat_frames,
      table_entities=input_config.table_entities,
      masking=input_config.masking,
      mask_prob=input_config.mask_prob,
      mask_patch_size=input_config.mask_patch_size,
      simulate_missing=input_config.simulate_missing,
      complete_only=input_config.complete_only,
  )


def example_spec(input_config: ml_collections.ConfigDict) -> dict[str, transforms.ArraySpec]:
  """Every key of a training example the `input` section describes, with shape and dtype
  (no data needed): what models are initialized from and FLOPs are counted on."""
  return make_transform(input_config, builder=None).example_spec()


def model_inputs(batch: Mapping[str, Any], value_range: tuple[float, float]) -> dict[str, Any]:
  """`batch` as the models take it: its uint8 pixel fields (`transforms.PIXEL_FIELDS`) as
  float32 in `value_range`, in whatever program traces this (the trainer's compiled step and
  evaluation forward: on the device). Pixel fields already in floating point are taken to
  be in `value_range` and pass unchanged.

  Inside a compiled program XLA may fuse `x * scale + low` into one multiply-add, which
  rounds once instead of twice: 158 of the 256 levels then land one float32 rounding
  (≤ 1.2e-7 in [-1, 1]) from what `transforms.to_value_range` gives on the host. (A lookup of the
  host's 256 values avoids that, but a persistent compilation cache then returned XLA:CPU
  executables that trained to NaN: BENCHMARKS.md, "uint8 pixels to the device".)
  """
  return {key: transforms.to_value_range(value, value_range)
          if key in transforms.PIXEL_FIELDS and value.dtype == np.uint8 else value
          for key, value in batch.items()}


def _prefetch_in_workers(dataset: grain.IterDataset, num_workers: int) -> grain.IterDataset:
  if num_workers <= 0:
    return dataset
  # Grain's workers read absl flags; outside an absl app (pytest, Colab) nobody parsed them.
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
  return dataset.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))


def per_process_batch_size(global_batch_size: int, process_count: int) -> int:
  if global_batch_size % process_count:
    raise ValueError(
        f"input.batch_size={global_batch_size} is not divisible by the {process_count} "
        "processes; make it a multiple of the process count"
    )
  return global_batch_size // process_count


# ---------------------------------------------------------------------------------------
# Training.
# ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class BatchSchedule:
  """The global batch size of every step: `stages` = ((first step, batch), ...), from step 0.

  A step is counted as the train state counts it, by the steps completed before it: stage s
  holds the steps with `stages[s][0] <= step < stages[s + 1][0]`. Global batch t of the run
  is rows [rows_before(t), rows_before(t) + batch_size(t)) of the one example stream, so
  a change of batch size neither skips nor repeats an example.
  """

  stages: tuple[tuple[int, int], ...]

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> BatchSchedule:
    """`input.batch_size` from step 0, then `train.batch_schedule`'s stages."""
    stages = [(0, int(config.input.batch_size))]
    for entry in config.train.batch_schedule:
      if len(entry) != 2:
        raise ValueError(f"config.train.batch_schedule entry {tuple(entry)} is not a "
                         "(start_step, global_batch) pair.")
      start, batch = int(entry[0]), int(entry[1])
      if start <= stages[-1][0] or batch < 1:
        raise ValueError(
            f"config.train.batch_schedule={tuple(map(tuple, config.train.batch_schedule))} "
            "must list (start_step, global_batch) with start steps increasing from 1 and "
            "positive batches (input.batch_size is the batch from step 0).")
      stages.append((start, batch))
    return cls(tuple(stages))

  def stage(self, step: int) -> int:
    """The index of the stage that `step` (steps completed) falls in."""
    return bisect.bisect_right([start for start, _ in self.stages], step) - 1

  def batch_size(self, step: int) -> int:
    return self.stages[self.stage(step)][1]

  def rows_before(self, step: int) -> int:
    """Examples of the stream that the steps before `step` consumed."""
    rows = 0
    for (start, batch), (end, _) in zip(self.stages, [*self.stages[1:], (step, 0)]):
      rows += batch * max(0, min(end, step) - start)
    return rows


class _ProcessRows(grain.MapDataset):
  """This process's rows of every global batch of an endless example stream.

  Global batch t is rows [s + t*B, s + (t+1)*B) of the one stream all processes index (s:
  the rows earlier batch sizes consumed); process i owns its rows [i*b, (i+1)*b) of it
  (b = B / processes). Each process reads only its own rows, yet the global batches, and so
  training, are the same for any number of processes (as long as no record is skipped: a
  skip pulls the next of the process's own rows forward).
  """

  def __init__(self, parent: grain.MapDataset, global_batch_size: int, process_index: int,
               process_count: int, start_row: int = 0):
    super().__init__(parent)
    self._global_batch_size = global_batch_size
    self._batch_size = per_process_batch_size(global_batch_size, process_count)
    self._offset = start_row + process_index * self._batch_size
    self._start_row = start_row

  def __len__(self) -> int:
    return (len(self._parent) - self._start_row) // self._global_batch_size * self._batch_size

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    batch, row = divmod(index, self._batch_size)
    return self._parent[batch * self._global_batch_size + self._offset + row]


class _DropSkipped(grain.IterDataset):
  """Drops skip markers; the next kept example carries the tally of what was dropped."""

  def __init__(self, parent: grain.IterDataset, max_consecutive_skips: int):
    super().__init__(parent)
    self._max_consecutive_skips = max_consecutive_skips

  def __iter__(self) -> grain.DatasetIterator:
    return _DropSkippedIterator(self._parent.__iter__(), self._max_consecutive_skips)


class _DropSkippedIterator(grain.DatasetIterator):

  def __init__(self, parent: grain.DatasetIterator, max_consecutive_skips: int):
    super().__init__(parent)
    self._max_consecutive_skips = max_consecutive_skips

  def __next__(self) -> dict[str, np.ndarray]:
    tally = np.zeros(len(transforms.SKIP_REASONS), np.int32)
    while True:
      element = next(self._parent)
      if transforms.SKIP_KEY not in element:
        element[transforms.SKIPPED_KEY] = tally
        return element
      tally[element[transforms.SKIP_KEY]] += 1
      if tally.sum() > self._max_consecutive_skips:  # a whole epoch of bad records
        counts = dict(zip(transforms.SKIP_REASONS, tally.tolist()))
        raise RuntimeError(f"every record of the training split is being skipped: {counts}")

  def get_state(self) -> dict[str, Any]:
    return self._parent.get_state()

  def set_state(self, state: dict[str, Any]) -> None:
    self._parent.set_state(state)


# Skips that are not the data's fault (input.complete_only's "incomplete") are counted but
# not warned about: they are what the config asked for.
_BAD_RECORD_REASONS = np.array([reason != "incomplete" for reason in transforms.SKIP_REASONS])


class SkipCountingIterator(grain.DatasetIterator):
  """Removes the per-example skip tallies from batches and keeps running totals.

  `stats` maps `skipped/<reason>` to counts over the whole run (restored with the state).
  """

  def __init__(self, parent: grain.DatasetIterator):
    super().__init__(parent)
    self._skipped = np.zeros(len(transforms.SKIP_REASONS), np.int64)

  def __next__(self) -> dict[str, np.ndarray]:
    batch = next(self._parent)
    newly_skipped = np.asarray(batch.pop(transforms.SKIPPED_KEY)).reshape(
        -1, len(transforms.SKIP_REASONS)).sum(axis=0)
    self._skipped += newly_skipped
    if newly_skipped[_BAD_RECORD_REASONS].any():
      logging.warning("input pipeline skipped bad records; totals so far: %s", self.stats)
    return batch

  def add_skipped(self, stats: Mapping[str, int]) -> None:
    """Adds another iterator's `stats` to the totals (a run's earlier input pipelines)."""
    self._skipped += np.asarray(
        [stats.get(f"skipped/{reason}", 0) for reason in transforms.SKIP_REASONS], np.int64)

  @property
  def stats(self) -> dict[str, int]:
    return {f"skipped/{r}": int(n) for r, n in zip(transforms.SKIP_REASONS, self._skipped)}

  def get_state(self) -> dict[str, Any]:
    return {"parent": self._parent.get_state(), "skipped": self._skipped.tolist()}

  def set_state(self, state: dict[str, Any]) -> None:
    self._parent.set_state(state["parent"])
    # A state saved before a skip reason was added has fewer counts: those reasons were 0.
    self._skipped = np.zeros(len(transforms.SKIP_REASONS), np.int64)
    self._skipped[: len(state["skipped"])] = state["skipped"]

  def close(self) -> None:
    self._parent.close()


def make_train_iterator(
    input_config: ml_collections.ConfigDict,
    *,
    seed: int,
    process_index: int | None = None,
    process_count: int | None = None,
    global_batch_size: int | None = None,
    start_row: int = 0,
) -> SkipCountingIterator:
  """An endless, checkpointable iterator of this process's training batches.

  Batches have `global_batch_size` rows over all processes (default `input.batch_size`)
  and start at row `start_row` of the example stream (a batch schedule's later stages).
  """
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  global_batch_size = global_batch_size or input_config.batch_size
  batch_size = per_process_batch_size(global_batch_size, process_count)
  builder = prepared_builder(input_config.dataset, input_config.data_dir)
  transform = make_transform(input_config, builder)
  source = open_split(builder, input_config.train_split, transform.required_fields())

  dataset = grain.MapDataset.source(source).shuffle(seed=seed).repeat()
  dataset = dataset.random_map(transform, seed=seed)
  dataset = _ProcessRows(dataset, global_batch_size, process_index, process_count, start_row)
  dataset = dataset.to_iter_dataset(
      grain.ReadOptions(
          num_threads=input_config.read_threads,
          prefetch_buffer_size=input_config.prefetch_buffer_size,
      )
  )
  # A whole epoch's share of skips in a row means nothing usable is left.
  dataset = _DropSkipped(dataset, max_consecutive_skips=math.ceil(len(source) / process_count))
  dataset = dataset.batch(batch_size, drop_remainder=True)
  dataset = _prefetch_in_workers(dataset, input_config.num_workers)
  if input_config.prefetch_batches:
    # Its checkpoint state is that of the batches handed out, not of those read ahead.
    dataset = grain.experimental.ThreadPrefetchIterDataset(
        dataset, prefetch_buffer_size=input_config.prefetch_batches)
  return SkipCountingIterator(dataset.__iter__())


# ---------------------------------------------------------------------------------------
# Evaluation.
# ---------------------------------------------------------------------------------------


class _EvalExample:
  """Index -> example of this process's shard, or a `_valid=False` padding row."""

  def __init__(self, source, transform: transforms.ExampleTransform, start: int, stop: int):
    self._source, self._transform = source, transform
    self._start, self._stop = start, stop
    self._padding = None

  def __call__(self, offset: int) -> dict[str, np.ndarray]:
    index = self._start + offset
    tally = np.zeros(len(transforms.SKIP_REASONS), np.int32)
    if index < self._stop:
      example = self._transform(self._source[index])
      if transforms.SKIP_KEY not in example:
        return {**example, VALID_KEY: np.bool_(True), RECORD_INDEX_KEY: np.int32(index),
                transforms.SKIPPED_KEY: tally}
      tally[example[transforms.SKIP_KEY]] = 1
    return {**self._padding_row(), transforms.SKIPPED_KEY: tally}

  def _padding_row(self) -> dict[str, np.ndarray]:
    """Zeros shaped like a real example (the first good record of the split)."""
    if self._padding is None:
      for index in range(len(self._source)):
        example = self._transform(self._source[index])
        if transforms.SKIP_KEY not in example:
          self._padding = {k: np.zeros_like(v) for k, v in example.items()}
          self._padding[VALID_KEY] = np.bool_(False)
          self._padding[RECORD_INDEX_KEY] = np.int32(-1)
          break
      else:
        raise RuntimeError("every record of the evaluation split is unusable")
    return self._padding


def eval_shard(num_examples: int, process_index: int, process_count: int) -> tuple[int, int]:
  """The contiguous [start, stop) of examples this process evaluates."""
  per_process = math.ceil(num_examples / process_count)
  start = min(num_examples, process_index * per_process)
  return start, min(num_examples, start + per_process)


def make_eval_iterator(
    input_config: ml_collections.ConfigDict,
    split: str,
    *,
    process_index: int | None = None,
    process_count: int | None = None,
    batch_size: int | None = None,
) -> Iterator[dict[str, np.ndarray]]:
  """One pass over `split`; every process yields the same number of full batches."""
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  batch_size = per_process_batch_size(batch_size or input_config.batch_size, process_count)
  builder = prepared_builder(input_config.dataset, input_config.data_dir)
  transform = make_transform(input_config, builder)
  source = open_split(builder, split, transform.required_fields())
  start, stop = eval_shard(len(source), process_index, process_count)
  # Every process runs the same number of batches, or a collective would wait forever.
  num_batches = math.ceil(math.ceil(len(source) / process_count) / batch_size)

  dataset = grain.MapDataset.range(num_batches * batch_size)
  dataset = dataset.map(_EvalExample(source, transform, start, stop))
  # Batch before worker slicing, so workers hand out whole batches and every one is full.
  dataset = dataset.batch(batch_size).to_iter_dataset(
      grain.ReadOptions(
          num_threads=input_config.read_threads,
          prefetch_buffer_size=input_config.prefetch_buffer_size,
      )
  )
  dataset = _prefetch_in_workers(dataset, input_config.num_workers)
  return SkipCountingIterator(dataset.__iter__())
