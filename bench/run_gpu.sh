#!/usr/bin/env bash
# The GPU benchmark (bench/gpu.py) on a machine with a CUDA GPU, in one go:
#   bash bench/run_gpu.sh
# Assumes the repository's .venv exists (make install) with a CUDA build of torch; nothing is
# downloaded (the models are built from their published configs with random weights).
# Results: bench-results/gpu.json, copied with the log to $OUT when $OUT is set.
# Sized to finish in under 8 minutes on one H200 (BENCH_GPU_DEPTH_CLIPS /
# BENCH_GPU_IDENTITIES_CLIPS override the clip counts).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
if [ ! -x "$PY" ]; then
    echo "run_gpu.sh: no .venv here; run 'make install' first" >&2
    exit 2
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
"$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())'
log=$(mktemp)
status=0
"$PY" -m bench --only gpu 2>&1 | tee "$log" || status=$?
if [ -n "${OUT:-}" ]; then
    mkdir -p "$OUT"
    cp bench-results/gpu.json "$OUT/" 2>/dev/null || true
    cp "$log" "$OUT/bench-gpu.log"
fi
rm -f "$log"
exit "$status"
