#!/usr/bin/env bash
# The GPU work still open (issues 3, 4, 6), in one host session after the two-step install:
#   bash .gpu/b/install.sh && source /root/zmlx-wheels/env.sh && bash tools/gpu/next.sh [tests|bench]
# Logs and capsules land in $OUT (names without '+': the device tool drops such files).
set -uo pipefail
OUT=${OUT:-/tmp/zmlx-out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
# MLX's cuDNN attention makes stock decode nondeterministic after a long prefill (docs/perf-notes.md): token
# comparisons need MLX's own attention kernels. This is MLX's setting; capsules record it under mlx_env.
export MLX_CUDA_USE_CUDNN_SDPA=0
what=${1:-tests}
if [ "$what" = tests ]; then
  timeout 280 python3 -m pytest -m gpu -q -p no:cacheprovider -rfE -s packages/zmlx-patch/tests/test_patch_gpu.py \
    2>&1 | grep -E "^\[gpu\]|^FAILED|passed|failed" | tee "$OUT/patch-gpu.log" | tail -50
  timeout 280 python3 -m pytest -m gpu -q -p no:cacheprovider -rfE -s packages/zmlx-validate/tests/test_validate_gpu.py \
    2>&1 | grep -E "^\[gpu|^FAILED|passed|failed" | tee "$OUT/validate-gpu.log" | tail -30
else
  C=$(cat .zmlx-commit 2>/dev/null || echo unknown)
  for flag in "" "--fuse-projections"; do
    timeout 280 python3 -m zmlx.bench run synthetic:qwen3-30b-a3b synthetic:gpt-oss-20b --runs 5 --max-tokens 256 \
      --prompt-tokens 512 --cache-dir /tmp/zmlx-synth --quiet $flag --note "zmlx $C" \
      --out "$OUT/h100_moe${flag:+_fused}.json" 2>&1 | grep -E "^\[|error" | head -4
  done
fi
