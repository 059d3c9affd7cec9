#!/usr/bin/env bash
# Decode-step breakdown of one model on the GPU host: host ms/step per mode, then device us/step per kernel under
# ncu (stock and patched). Usage after the install step: bash tools/gpu/profile.sh synthetic:qwen3-30b-a3b
set -uo pipefail
OUT=${OUT:-/tmp/zmlx-out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 MLX_CUDA_USE_CUDNN_SDPA=0
M=${1:-synthetic:qwen3-30b-a3b}; S=${STEPS:-2}
P=tools/gpu/profile_decode.py
for mode in ${TIME_MODES:-stock default}; do
  echo "[time] $mode: $(timeout 120 python3 $P "$M" --config $mode --time --steps 40 2>&1 | tail -2 | tr '\n' ' ')"
done | tee "$OUT/host-time.txt"
for mode in ${NCU_MODES:-stock default}; do
  timeout 200 ncu --profile-from-start off --metrics gpu__time_duration.sum --csv --log-file "$OUT/ncu-$mode.csv" \
    python3 $P "$M" --config $mode --steps "$S" > "$OUT/ncu-$mode.out" 2>&1
  python3 $P --summarize "$OUT/ncu-$mode.csv" --steps "$S" > "$OUT/ncu-$mode.md" 2>&1
  head -14 "$OUT/ncu-$mode.md"; tail -2 "$OUT/ncu-$mode.out"
done
