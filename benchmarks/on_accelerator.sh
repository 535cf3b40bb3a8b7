#!/usr/bin/env bash
# ViT-B/16 CLIP on one GPU or TPU chip, in a few minutes: `clip.py:b16` as configured (bf16
# compute, scanned layers, `dots_no_batch` remat, 256 examples per chip), its step time,
# compile time, peak memory and MFU against the chip's dense bf16 peak, with XLA's attention
# and, on a GPU, cuDNN flash attention (the `cudnn` row); then a trace of where the step's
# time goes. Needs the accelerator's build of jax in the environment (BENCHMARKS.md).
#
#   bash benchmarks/on_accelerator.sh [PYTHON]    # PYTHON defaults to python
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${1:-python}
"$PY" - <<'PYTHON' || exit 1
import jax
print(f"jax {jax.__version__}: {jax.device_count()} x {jax.devices()[0].device_kind} "
      f"({jax.default_backend()})")
if jax.default_backend() == "cpu":
  raise SystemExit("error: this jax sees CPU devices only; install its GPU or TPU build "
                   "(BENCHMARKS.md, 'On an accelerator')")
PYTHON
"$PY" benchmarks/train_step.py --config=clip.py:b16 --peers= --rounds=3 --steps=10 || exit 1
"$PY" benchmarks/profile_step.py --config=clip.py:b16 --steps=3
