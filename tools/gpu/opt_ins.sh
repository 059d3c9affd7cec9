#!/usr/bin/env bash
# The opt-in fusions (patch(fuse_router=True), patch(fuse_qkv=True)) on the lent GPU, in two host calls of < 10 min:
#   bash .gpu/b/install.sh && source /root/zmlx-wheels/env.sh && bash tools/gpu/opt_ins.sh 1   # tests, cost, lfm2
#   source /root/zmlx-wheels/env.sh && bash tools/gpu/opt_ins.sh 2                            # qwen3 (builds 3+ min)
# Phase 1: kernel and patch GPU tests of both, device/host cost per launch (ncu), lfm2 decode A/B.
# Phase 2: qwen3 decode A/B and the host/device split of one step with and without fuse_qkv.
set -uo pipefail
OUT=${OUT:-/tmp/zmlx-out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 MLX_CUDA_USE_CUDNN_SDPA=0
PT=(python3 -m pytest -m gpu -q -p no:cacheprovider -rfE)
G=tools/gpu
case "${1:-1}" in
  1)
    timeout 150 "${PT[@]}" packages/zmlx-kernels/tests/test_kernels_gpu.py -k "router or qkv" 2>&1 | tail -4
    timeout 200 "${PT[@]}" packages/zmlx-patch/tests/test_patch_gpu.py -k "quantized_router or qkv" 2>&1 | tail -4
    timeout 60 python3 $G/fusion_cost.py 2>&1 | tail -6
    timeout 90 ncu --metrics gpu__time_duration.sum --csv --log-file "$OUT/fusion.csv" \
      python3 $G/fusion_cost.py --calls 10 --host-reps 1 > "$OUT/ncu.out" 2>&1
    python3 $G/fusion_cost.py --summarize "$OUT/fusion.csv"
    timeout 240 python3 $G/ab_decode.py synthetic:lfm2-8b-a1b --configs stock default default+qkv default+router \
      --rounds 6 2>&1 | tail -5
    ;;
  2)
    timeout 420 python3 $G/ab_decode.py synthetic:qwen3-30b-a3b --configs stock default default+qkv --rounds 5 \
      2>&1 | tail -4
    for c in default default+qkv; do
      echo "[time] $c: $(timeout 90 python3 $G/profile_decode.py synthetic:qwen3-30b-a3b --config $c --time \
        --steps 40 2>&1 | tail -2 | tr '\n' ' ')"
    done
    ;;
  *) echo "usage: bash tools/gpu/opt_ins.sh 1|2" >&2; exit 2 ;;
esac
