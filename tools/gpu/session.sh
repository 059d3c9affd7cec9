#!/usr/bin/env bash
# One GPU-host session: kernel check table, GPU tests and the kernel microbenchmark; logs under $OUT.
# On the lent H100: `bash .gpu/b/install.sh && source /root/zmlx-wheels/env.sh && bash tools/gpu/session.sh`.
set -uo pipefail
OUT=${OUT:-/tmp/zmlx-out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; python3 -c 'import mlx.core as mx; print("mlx", mx.__version__)'; } | tee "$OUT/device.txt"
timeout 150 python3 -m zmlx.kernels check --op moe_experts 2>&1 | tee "$OUT/kernels-check.log" | grep -E "NO|PASS|FAIL" | tail -20
timeout 120 python3 tools/bench_kernels.py --chain 20 --reps 9 2>&1 | tee "$OUT/microbench.md" | tail -20
timeout "${PYTEST_BUDGET:-240}" python3 -m pytest -m gpu -q -p no:cacheprovider -rfE packages tools 2>&1 | tee "$OUT/gpu-tests.log" | tail -25
