#!/usr/bin/env bash
# Focused GPU pass: expert-kernel exactness, expert microbench, then patch + validate GPU tests with reasons.
set -uo pipefail
OUT=${OUT:-/tmp/zmlx-out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; cat .zmlx-commit 2>/dev/null; } | tee "$OUT/device.txt"
timeout 200 python3 -m pytest -q -p no:cacheprovider -rfE --tb=line packages/zmlx-kernels/tests/test_kernels_gpu.py -k moe 2>&1 | tail -8 | tee "$OUT/moe-exact.log"
timeout 90 python3 tools/bench_kernels.py --experts-only --chain 10 --reps 7 2>&1 | tee "$OUT/microbench-experts.md" | tail -8
timeout 200 python3 -m pytest -q -p no:cacheprovider -rfE --tb=line -s packages/zmlx-patch/tests/test_patch_gpu.py 2>&1 | grep -E "^\[gpu\]|^FAILED|^E |passed|failed" | tee "$OUT/patch-gpu.log" | tail -60
