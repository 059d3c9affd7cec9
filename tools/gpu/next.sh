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
P=packages/zmlx-patch/tests/test_patch_gpu.py
# every mode of the patch file (14 modes x 21 tiny families), six processes of 2-5 minutes each (session 8)
job patch-default "${PT[@]}" $P -k "default or quantized_linear or q4core"
job patch-fuse "${PT[@]}" $P -k "fuse_projections or attention_layer"
job patch-stacked "${PT[@]}" $P -k "stacked or folds"
job patch-unfused "${PT[@]}" $P -k "unfused or eager"
job patch-residual "${PT[@]}" $P -k "residual_norm or qkv"
job patch-opt-ins "${PT[@]}" $P -k "conv_proj or quantized_router or quantized_switch_linear"
job validate "${PT[@]}" packages/zmlx-validate/tests/test_validate_gpu.py
job rope-offsets "${PT[@]}" packages/zmlx-patch/tests/test_rope_offset_gpu.py
# the kernel file in three processes: one took over 570 s (session 7)
job kernels-moe "${PT[@]}" $K/test_kernels_gpu.py -k moe_experts
job kernels-qmv "${PT[@]}" $K/test_kernels_gpu.py -k "not moe_experts and (qmv or gather)"
job kernels-rest "${PT[@]}" $K/test_kernels_gpu.py -k "not moe_experts and not qmv and not gather"
job routing "${PT[@]}" $K/test_routing_gpu.py
wait
cat "$OUT/device.txt"
for f in "$OUT"/*.log; do
  echo "== $(basename "$f" .log): $(grep -E '(passed|failed|error).* in [0-9.]+s' "$f" | tail -1) $(tail -1 "$f")"
  grep -E "^FAILED|^ERROR" "$f" | head -8
done
