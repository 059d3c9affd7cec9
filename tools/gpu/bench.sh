#!/usr/bin/env bash
# Capsules on the GPU host: `bash tools/gpu/bench.sh MODEL...` after the install step (see session.sh).
# Synthetic checkpoints are built once under /tmp/zmlx-synth and reused while the host stays up.
set -uo pipefail
OUT=${OUT:-/tmp/zmlx-out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
python3 -m zmlx.bench run "$@" --runs 5 --max-tokens 500 --prompt-tokens 512 --warmup 1 \
  --cache-dir /tmp/zmlx-synth --note "zmlx $(cat .zmlx-commit 2>/dev/null || echo unknown)" --out "$OUT/" 2>&1 | tail -40
