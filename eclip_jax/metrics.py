"""Run outputs: `metrics.jsonl` + TensorBoard events, throughput timing, analytic FLOPs.

`metrics.jsonl` holds one JSON object per logged step: `{"step": s, "train/loss": ...,
"perf/steps_per_sec": ..., "eval/retrieval/i2t_r1": ...}`. Only process 0 writes.
"""

from __future__ import annotations

import contextlib
import json
import math
import threading
import time
from collections.abc import Mapping

import jax
import numpy as np
from etils import epath

METRICS_FILE = "metrics.jsonl"


class MetricWriter:
  """Appends to `metrics.jsonl` and TensorBoard; a resumed run first drops the lines of steps
  after the checkpoint it resumes from, so the file reads as one uninterrupted run."""

  def __init__(self, workdir: str | epath.Path, *, enabled: bool = True, resume_step: int = 0):
    self._enabled = enabled
    if not enabled:
      return
    workdir = epath.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    self._path = workdir / METRICS_FILE
    self._lines = []
    if self._path.exists():
      self._lines = [line + "\n" for line in self._path.read_text().splitlines()
                     if line and json.loads(line)["step"] <= resume_step]
      self._path.write_text("".join(self._lines))
    # Object stores (gs://, s3://) cannot append to an object: there the file is rewritten
    # whole at each log step (small: one line per logged step).
    self._append = "://" not in str(workdir)
    # Imported here so processes that never write (process_index > 0) need not load it.
    import tensorboardX  # pylint: disable=g-import-not-at-top

    self._tensorboard = tensorboardX.SummaryWriter(str(workdir / "tensorboard"))

  def write(self, step: int, metrics: Mapping[str, float]) -> None:
    if not self._enabled:
      return
    row = {"step": int(step), **{k: _to_float(v) for k, v in sorted(metrics.items())}}
    line = json.dumps(row) + "\n"
    if self._append:
      with self._path.open("a") as f:
        f.write(line)
    else:
      self._lines.append(line)
      self._path.write_text("".join(self._lines))
    for key, value in row.items():
      if key != "step" and value is not None and math.isfinite(value):
        self._tensorboard.add_scalar(key, value, int(step))
    self._tensorboard.flush()

  def close(self) -> None:
    if self._enabled:
      self._tensorboard.close()


def _to_float(value) -> float | None:
  value = float(np.asarray(value))
  return value if math.isfinite(value) else None  # JSON has no NaN


def read_metrics(workdir: str | epath.Path) -> list[dict[str, float]]:
  """The rows of a run's `metrics.jsonl` (notebooks, sweeps and tests read it back)."""
  path = epath.Path(workdir) / METRICS_FILE
  return [json.loads(line) for line in path.read_text().splitlines() if line]


class StepTimer:
  """Steps/s, examples/s, the fraction of wall time spent fetching input, and the fraction
  in which no step was running.

  Call `data_wait()` around fetching a batch and `step_done(batch_size, outputs)` right
  after dispatching each step (the batch size may change from step to step); `rates()`
  gives the averages since the previous call (or `reset()`).

  The two fractions differ because JAX dispatches asynchronously (on CPU too): the host
  fetches the next batch while the step runs. The trainer's loop waits for a step once
  `config.max_steps_in_flight` are unfinished, so a long fetch there means the input was
  not ready when the loop had room for a step; with no limit, the loop runs ahead of the
  steps and sits in the fetch instead, so `perf/data_wait_frac` (host time in the fetch)
  can be large while the step never waits. `perf/device_idle_frac` is the time the step
  did wait: before each step, how long after the previous one finished it was
  dispatched, max(0, dispatched_n - finished_(n-1)), summed. It counts every cause (input,
  logging, a blocking save) and needs `outputs`, any of the step's results: a short-lived
  thread per step blocks on them and records when they are ready (its wake-up latency,
  up to Python's thread switch interval of 5 ms, makes the figure a slight underestimate).
  """

  def __init__(self):
    self._last_finished = (-1, 0.0)  # (step index, perf_counter() when its outputs were ready)
    self._dispatched = 0
    self.reset()

  def reset(self) -> None:
    """Starts a new averaging window."""
    self._start = time.perf_counter()
    self._steps = 0
    self._examples = 0
    self._waiting = 0.0
    self._excluded = 0.0
    self._idle = 0.0
    self._idle_from = self._start  # what happened before a window is not its idle time

  @contextlib.contextmanager
  def data_wait(self):
    start = time.perf_counter()
    try:
      yield
    finally:
      self._waiting += time.perf_counter() - start

  @contextlib.contextmanager
  def paused(self):
    """Time inside (evaluation, compilation) counts neither as training nor as waiting."""
    start = time.perf_counter()
    try:
      yield
    finally:
      now = time.perf_counter()
      self._excluded += now - start
      self._idle_from = now

  def step_done(self, batch_size: int, outputs=None) -> None:
    """Counts a step dispatched just now; `outputs` (a pytree of its results) enables
    `perf/device_idle_frac`."""
    now = time.perf_counter()
    self._steps += 1
    self._examples += batch_size
    if outputs is None:
      return
    index, self._dispatched = self._dispatched, self._dispatched + 1
    finished_index, finished_at = self._last_finished
    if index and finished_index == index - 1:  # else it still runs (or none ran): no idle
      self._idle += max(0.0, now - max(finished_at, self._idle_from))
    # Not a daemon: the interpreter waits for it (at most one step) before shutting down, as
    # a daemon thread still blocked in XLA when it does aborts the process.
    threading.Thread(target=self._watch, args=(index, outputs)).start()

  def _watch(self, index: int, outputs) -> None:
    try:
      jax.block_until_ready(outputs)
    except Exception:  # pylint: disable=broad-except
      return  # a failed step raises in the training loop itself, where it is handled
    if index > self._last_finished[0]:  # steps finish in order; a late watcher changes nothing
      self._last_finished = (index, time.perf_counter())

  def rates(self) -> dict[str, float]:
    elapsed = max(time.perf_counter() - self._start - self._excluded, 1e-9)
    rates = {
        "perf/steps_per_sec": self._steps / elapsed,
        "perf/examples_per_sec": self._examples / elapsed,
        "perf/data_wait_frac": self._waiting / elapsed,
    }
    if self._dispatched:
      rates["perf/device_idle_frac"] = min(self._idle / elapsed, 1.0)
    self.reset()
    return rates


def transformer_flops(seq_len: int, width: int, depth: int, num_heads: int, mlp_dim: int) -> float:
  """Forward FLOPs of a transformer encoder on one sequence (multiply-add = 2 FLOPs):
  q/k/v/out projections 8·s·w², MLP 4·s·w·m, attention scores and weighted values 4·s²·w."""
  del num_heads  # the head split does not change the count
  per_layer = 8 * seq_len * width**2 + 4 * seq_len * width * mlp_dim + 4 * seq_len**2 * width
  return float(depth * per_layer)


def mfu(train_flops_per_example: float, examples_per_sec: float, num_devices: int,
        peak_flops_per_device: float) -> float | None:
  """Model FLOPs utilization; None when the peak is unknown (e.g. CPU)."""
  if peak_flops_per_device <= 0 or train_flops_per_example <= 0:
    return None
  return train_flops_per_example * examples_per_sec / (num_devices * peak_flops_per_device)


def format_duration(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  hours, rest = divmod(seconds, 3600)
  return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"
