# Thin wrappers around a local virtualenv; every target sets it up first.
VENV := .venv
PY := $(VENV)/bin/python
DATA_DIR ?= data
DEMO_WORKDIR ?= workdirs/demo
comma := ,
DEMO_METRICS := $(subst $() ,$(comma),eval/retrieval/i2t_r1 eval/retrieval/i2t_r10 \
	eval/retrieval/chance_r1 eval/zeroshot/top1 eval/product_retrieval/map10 eval/product_retrieval/r1 \
	eval/product_retrieval/chance_r1 eval/grounding/pointing_acc \
	eval/grounding/chance_pointing eval/grounding/center_pointing eval/grounding/mean_iou)
train = $(PY) -m eclip_jax.main --config=configs/$(1).py:tiny --workdir=$(DEMO_WORKDIR)/$(1)_tiny \
	--config.input.data_dir=$(DATA_DIR) --config.eval_every_steps=0

.PHONY: demo test bench clean

$(VENV)/.installed: setup.py
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

# Build toyshop/medium_light (the demo preset), train the CLIP baseline and ECLIP on CPU,
# print both side by side and read the pointing against its references; ECLIP's instance
# maps go to $(DEMO_WORKDIR)/eclip_tiny/pictures/grounding.png. A second `make demo` reuses
# the data and the finished runs (delete DEMO_WORKDIR to retrain).
demo: $(VENV)/.installed
	$(PY) -m eclip_jax.data.prepare --dataset=toyshop/medium_light --data_dir=$(DATA_DIR)
	$(call train,clip)
	$(call train,eclip)
	$(PY) -m eclip_jax.summarize $(DEMO_WORKDIR)/clip_tiny $(DEMO_WORKDIR)/eclip_tiny \
		--metrics=$(DEMO_METRICS) --noaggregate --reading

test: $(VENV)/.installed
	$(PY) -m pytest -q tests

bench: $(VENV)/.installed
	$(PY) benchmarks/input_pipeline.py
	$(PY) benchmarks/contrastive_memory.py
	$(PY) benchmarks/eclip_step.py
	$(PY) benchmarks/scale_step.py
	$(PY) benchmarks/train_step.py
	$(PY) benchmarks/dot_layout.py
	$(PY) benchmarks/checkpoint_blocking.py
	$(PY) -m eclip_jax.data.prepare --dataset=toyshop/medium_light --data_dir=$(DATA_DIR)
	$(PY) benchmarks/data_wait.py --data_dir=$(DATA_DIR)
	$(PY) benchmarks/startup.py --data_dir=$(DATA_DIR)

clean:
	rm -rf $(VENV) *.egg-info
