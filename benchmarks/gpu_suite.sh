#!/usr/bin/env bash
# The GPU suite: one run, <= 8 minutes on one H100/H200, needing only the repo and its install.
#   bash benchmarks/gpu_suite.sh [OUT_DIR] [--tiny]      (OUT_DIR default: runs/gpu-suite-<date>)
# Writes OUT_DIR/suite.json (rows: DiT step ours vs diffusers at HunyuanVideo's 13B architecture,
# each attention backend, fp8 vs bf16 weights, step caching, tiled VAE decode; peak memory of each)
# and OUT_DIR/suite.log. --tiny runs the same code at tiny sizes on CPU (the preflight the tests run).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="runs/gpu-suite-$(date -u +%Y%m%d-%H%M%S)"
if [[ $# -gt 0 && "$1" != --* ]]; then OUT="$1"; shift; fi
mkdir -p "$OUT"
PY="${PYTHON:-$( [[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python )}"
{
  echo "gpu_suite: $(date -u +%FT%TZ) $(git rev-parse --short HEAD 2>/dev/null || echo no-git)"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
  HF_HUB_OFFLINE=1 timeout 480 "$PY" benchmarks/gpu_suite.py --out "$OUT" "$@"
} 2>&1 | tee "$OUT/suite.log"
