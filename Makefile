# Thin wrappers around a local virtualenv; every target sets it up first.
VENV := .venv
PY := $(VENV)/bin/python
DATA_DIR ?= data
DEMO_WORKDIR ?= workdirs/demo_clip_tiny
DEMO_RUN := $(PY) -m eclip_jax.main --config=configs/clip.py:tiny --workdir=$(DEMO_WORKDIR) \
	--config.input.data_dir=$(DATA_DIR)

.PHONY: demo test bench clean

$(VENV)/.installed: setup.py
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

# Build toyshop/medium (cluttered), train the CLIP baseline on CPU, print its evaluation.
# A second `make demo` reuses the data and the finished run (delete DEMO_WORKDIR to retrain).
demo: $(VENV)/.installed
	$(PY) -m eclip_jax.data.prepare --dataset=toyshop/medium --data_dir=$(DATA_DIR)
	$(DEMO_RUN)
	$(DEMO_RUN) --mode=eval

test: $(VENV)/.installed
	$(PY) -m pytest -q tests

bench: $(VENV)/.installed
	$(PY) benchmarks/input_pipeline.py
	$(PY) benchmarks/contrastive_memory.py

clean:
	rm -rf $(VENV) *.egg-info
