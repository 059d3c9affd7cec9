#!/usr/bin/env bash
# Every GPU test of the workspace in one host call, as parallel pytest processes on the one GPU (NVRTC compiles
# are CPU-bound and the host has 16 cores). After the two-step install:
#   bash .gpu/b/install.sh && source /root/zmlx-wheels/env.sh && bash tools/gpu/next.sh
# Logs land in $OUT (names without '+': the device tool drops such files); the summary prints last.
set -uo pipefail
OUT=${OUT:-/tmp/zmlx-out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
# MLX's cuDNN attention makes stock decode nondeterministic after a long prefill (docs/perf-notes.md): token
# comparisons need MLX's own attention kernels. This is MLX's setting; capsules record it under mlx_env.
export MLX_CUDA_USE_CUDNN_SDPA=0
LIMIT=${LIMIT:-500}
{ date -u +%FT%TZ; cat .zmlx-commit 2>/dev/null; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
  python3 -c 'import mlx.core as mx; print("mlx", mx.__version__)'; } > "$OUT/device.txt"
PT=(python3 -m pytest -m gpu -q -p no:cacheprovider -rfE -s)
K=packages/zmlx-kernels/tests
job() { local name=$1; shift; ( timeout "$LIMIT" "$@" > "$OUT/$name.log" 2>&1; echo "exit $?" >> "$OUT/$name.log" ) & }
job patch-default "${PT[@]}" packages/zmlx-patch/tests/test_patch_gpu.py -k default
job patch-fuse "${PT[@]}" packages/zmlx-patch/tests/test_patch_gpu.py -k "fuse_projections and not unfused"
job patch-unfused "${PT[@]}" packages/zmlx-patch/tests/test_patch_gpu.py -k unfused
job patch-eager "${PT[@]}" packages/zmlx-patch/tests/test_patch_gpu.py -k eager
job patch-residual "${PT[@]}" packages/zmlx-patch/tests/test_patch_gpu.py -k residual_norm
job patch-switches "${PT[@]}" packages/zmlx-patch/tests/test_patch_gpu.py -k "quantized_router or qkv or conv_proj or attention_layer or stacked"
job validate "${PT[@]}" packages/zmlx-validate/tests/test_validate_gpu.py
job rope-offsets "${PT[@]}" packages/zmlx-patch/tests/test_rope_offset_gpu.py
job kernels-moe "${PT[@]}" $K/test_kernels_gpu.py -k moe
job kernels-rest "${PT[@]}" $K/test_kernels_gpu.py -k "not moe"
job routing "${PT[@]}" $K/test_routing_gpu.py
wait
cat "$OUT/device.txt"
for f in "$OUT"/*.log; do
  echo "== $(basename "$f" .log): $(grep -E '(passed|failed|error).* in [0-9.]+s' "$f" | tail -1) $(tail -1 "$f")"
  grep -E "^FAILED|^ERROR" "$f" | head -8
done
