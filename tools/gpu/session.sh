#!/usr/bin/env bash
# One GPU-host session: GPU tests, kernel check table and kernel microbenchmark, logs under $OUT.
# Run from the checkout root after `bash .gpu/b/install.sh && source /root/zmlx-wheels/env.sh`.
set -uo pipefail
OUT=${OUT:-/tmp/zmlx-out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/device.txt"
git rev-parse --short HEAD 2>/dev/null | tee -a "$OUT/device.txt"
python3 -m pytest -m gpu -q -p no:cacheprovider "$@" 2>&1 | tee "$OUT/gpu-tests.log" | tail -40
python3 -m zmlx.kernels check 2>&1 | tee "$OUT/kernels-check.log" | tail -15
python3 tools/bench_kernels.py 2>&1 | tee "$OUT/microbench.md"
