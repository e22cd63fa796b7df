#!/usr/bin/env bash
# The prepared single-GPU check (H100 / H200): stage-3 XL train step (bf16, random weights) at
# batch 16 and 32, with and without per-layer remat (scanned layers), and beam-5 decode; then batch 16
# again with every attention on the einsum path, against cuDNN's fused attention in the runs before;
# prints step time, examples/s, MFU and peak memory per run (benchmarks/stage3_step_and_decode.py
# says how each is measured).
#
#   benchmarks/gpu.sh [extra arguments for benchmarks.stage3_step_and_decode]
#
# Needs a Python with this package and a CUDA build of the pinned jax, e.g.
#   python3 -m venv .venv && .venv/bin/pip install -e . \
#     && .venv/bin/pip install "jax[cuda12]==$(sed -n 's/^jax==//p' requirements.txt)"
# PYTHON picks the interpreter (default .venv/bin/python, else python3). Results are appended to
# benchmarks/results/stage3_step_and_decode.jsonl (and copied to $OUT when it is set).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
if ! "$PYTHON" -c 'import jax, sys; sys.exit(jax.default_backend() != "gpu")'; then
  echo "gpu.sh: $PYTHON's jax sees no GPU; install jax[cuda12] at the pinned version (see the header)" >&2
  exit 1
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_MEM_FRACTION=0.95
for batch in 16 32; do
  for remat in none full; do
    "$PYTHON" -m benchmarks.stage3_step_and_decode --size xl --batch "$batch" --remat "$remat" "$@" \
      || echo "gpu.sh: batch $batch remat=$remat failed (out of memory?); continuing" >&2
  done
done
"$PYTHON" -m benchmarks.stage3_step_and_decode --size xl --batch 16 --attention einsum "$@" \
  || echo "gpu.sh: batch 16 attention=einsum failed; continuing" >&2
if [[ -n "${OUT:-}" ]]; then
  cp benchmarks/results/stage3_step_and_decode.jsonl "$OUT"/
fi
