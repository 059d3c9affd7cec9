#!/usr/bin/env bash
# Capsules on the GPU host: `bash tools/gpu/bench.sh MODEL...` after the install step (see session.sh).
# Synthetic checkpoints are built once under /tmp/zmlx-synth and reused while the host stays up.
set -uo pipefail
OUT=${OUT:-/tmp/zmlx-out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
# Stock decode is only deterministic with MLX's own attention on CUDA (docs/perf-notes.md); recorded in mlx_env.
export MLX_CUDA_USE_CUDNN_SDPA=${MLX_CUDA_USE_CUDNN_SDPA:-0}
python3 -m zmlx.bench run "$@" --runs 5 --max-tokens 256 --prompt-tokens 512 --warmup 1 \
  --cache-dir /tmp/zmlx-synth --note "zmlx $(cat .zmlx-commit 2>/dev/null || echo unknown)" --out "$OUT/" 2>&1 | tail -40
