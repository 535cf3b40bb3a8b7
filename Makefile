# Thin wrappers around a local virtualenv; every target sets it up first.
VENV := .venv
PY := $(VENV)/bin/python
DATA_DIR ?= data

.PHONY: demo test bench clean

$(VENV)/.installed: setup.py
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

demo: $(VENV)/.installed
	$(PY) -m eclip_jax.data.prepare --dataset=toyshop/tiny --data_dir=$(DATA_DIR) --show=3

test: $(VENV)/.installed
	$(PY) -m pytest -q tests

bench: $(VENV)/.installed
	$(PY) benchmarks/input_pipeline.py

clean:
	rm -rf $(VENV) *.egg-info
