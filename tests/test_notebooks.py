"""The Colab notebooks run headless, top to bottom, against a tiny run, and draw their figures.

Each runs in a fresh Jupyter kernel with one CPU device (as a Colab CPU runtime), from the
repository root, its parameters given through the `ECLIP_*` variables its parameters cell
reads; the install cell sees eclip_jax importable and skips.
"""

import base64
import io
import pathlib

import nbclient
import nbformat
import numpy as np
import pytest
from PIL import Image

from eclip_jax import checkpoint as checkpoint_lib
from eclip_jax import metrics as metrics_lib
from eclip_jax import trainer

REPO = pathlib.Path(__file__).resolve().parents[1]


def _execute(name, monkeypatch, **parameters):
  """Runs notebooks/<name>.ipynb; returns the executed notebook (raises on any cell error)."""
  monkeypatch.delenv("XLA_FLAGS", raising=False)  # one device, not the tests' eight
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  monkeypatch.setenv("PYTHONPATH", str(REPO))
  for key, value in parameters.items():
    monkeypatch.setenv(f"ECLIP_{key}", str(value))
  notebook = nbformat.read(REPO / "notebooks" / f"{name}.ipynb", as_version=4)
  client = nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                                   resources={"metadata": {"path": str(REPO)}})
  client.execute()
  return notebook


def _figures(cell):
  """The PNGs a cell displayed, decoded."""
  return [Image.open(io.BytesIO(base64.b64decode(output["data"]["image/png"])))
          for output in cell.get("outputs", []) if "image/png" in output.get("data", {})]


def _check_figures(notebook):
  """Every cell tagged `figure` displayed at least one PNG with something drawn on it."""
  tagged = [cell for cell in notebook.cells if "figure" in cell.metadata.get("tags", [])]
  assert tagged
  for cell in tagged:
    figures = _figures(cell)
    assert figures, cell.source[:200]
    for figure in figures:
      pixels = np.asarray(figure.convert("RGB"))
      assert min(figure.size) > 100 and np.any(pixels < 250, axis=-1).mean() > 0.01
  return tagged


def _text(cell):
  return "".join(output.get("text", "") for output in cell.get("outputs", []))


@pytest.mark.slow
def test_explore_checkpoint_runs_on_a_tiny_checkpoint(tiny_eclip_run, monkeypatch):
  workdir, config = tiny_eclip_run
  notebook = _execute("explore_checkpoint", monkeypatch, CHECKPOINT=workdir / trainer.EXPORT_DIR,
                      DATA_DIR=config.input.data_dir)
  tagged = _check_figures(notebook)
  assert len(tagged) == 5  # text->image, image->image, maps, curves, PCA
  assert len(_figures(tagged[2])) == 2  # the selected maps and ECLIP's per-query maps
  load = next(cell for cell in notebook.cells if "Model.load" in cell.source)
  assert "step 6 of a 'eclip' model, on [CpuDevice(id=0)]" in _text(load)
  assert "19 products of toyshop/tiny test: gallery (19, 32)" in _text(load)


@pytest.mark.slow
def test_train_in_colab_trains_evaluates_and_exports(toyshop_tiny, tmp_path, monkeypatch):
  workdir = tmp_path / "run"
  notebook = _execute("train_in_colab", monkeypatch, DATA_DIR=toyshop_tiny[0], WORKDIR=workdir,
                      DATASET="toyshop/tiny", VOCAB_SIZE=1000, CONFIG="tiny,runlocal", STEPS=4)
  _check_figures(notebook)
  assert checkpoint_lib.Checkpointer(workdir).all_steps() == [4]
  rows = metrics_lib.read_metrics(workdir)
  assert [row["step"] for row in rows if "train/loss" in row] == [1, 2, 3, 4]
  final = rows[-1]
  train = next(cell for cell in notebook.cells if "trainer.train" in cell.source)
  assert f"eval/retrieval/i2t_r1{' ' * 25}{final['eval/retrieval/i2t_r1']:.4f}" in _text(train)
  assert (workdir / trainer.EXPORT_DIR / trainer.EXPORT_SAFETENSORS).exists()
