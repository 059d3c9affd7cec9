#!/usr/bin/env bash
# The opt-in fusions (patch(fuse_router=, fuse_qkv=, fuse_conv_proj=True)) on the lent GPU, in three host calls of < 10 min
# (after the two-step install; later calls on the warm host need only the `source`):
#   source /root/zmlx-wheels/env.sh && bash tools/gpu/opt_ins.sh tests [MODEL...]  # GPU tests of what never ran on
#     one (~5 min), building the named synthetic checkpoints meanwhile
#   source /root/zmlx-wheels/env.sh && bash tools/gpu/opt_ins.sh lfm2    # device cost (ncu), lfm2 decode A/B
#   source /root/zmlx-wheels/env.sh && bash tools/gpu/opt_ins.sh qwen3   # qwen3 A/B and host/device split (build 3+ min)
#   source /root/zmlx-wheels/env.sh && bash tools/gpu/opt_ins.sh layer [llama-3-8b]  # attention_layer: tests, split, A/B
#   source /root/zmlx-wheels/env.sh && bash tools/gpu/opt_ins.sh stack [MODEL [CONFIG...]]  # A/B: fewest launches
#   ... bash tools/gpu/opt_ins.sh capsule lfm2-8b-a1b --fuse-qkv ...     # the claim: a capsule, 500 tokens x 5 runs
#   source /root/zmlx-wheels/env.sh && bash tools/gpu/opt_ins.sh graph [MODEL]  # primitives per step, by kind
#   source /root/zmlx-wheels/env.sh && bash tools/gpu/opt_ins.sh mlxenv [MODEL]  # MLX's CUDA-graph batching vs dispatch
# On a fresh host the first decode of a model JIT-compiles MLX's own kernels for 1-2 minutes (cached on disk after):
# session 4's first three 80 s profiles all timed out. Profiles here allow 180 s.
# Timing phases run nothing else on the GPU.
set -uo pipefail
OUT=${OUT:-/tmp/zmlx-out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 MLX_CUDA_USE_CUDNN_SDPA=0
PT=(python3 -m pytest -m gpu -q -p no:cacheprovider -rfE)
G=tools/gpu
case "${1:-}" in
  tests)  # [MODEL...]: what has not yet run on a GPU: add_norm_router, qkv input norm, qkv_rope (kernels, patch mode
    # stacked), rope offsets; the named synthetic checkpoints are built meanwhile (CPU-bound) for the timing phases
    shift
    for m in "$@"; do
      ( timeout 420 python3 -c "import sys; from zmlx.validate import load_model; load_model(sys.argv[1], \
        cache_dir='/tmp/zmlx-synth')" "synthetic:$m" > "$OUT/build-$m.log" 2>&1; echo "built $m: exit $?" ) &
    done
    ( timeout 300 "${PT[@]}" packages/zmlx-kernels/tests/test_kernels_gpu.py -k "router or qkv" > "$OUT/k.log" 2>&1 ) &
    ( timeout 420 "${PT[@]}" packages/zmlx-patch/tests/test_patch_gpu.py -k stacked > "$OUT/pn.log" 2>&1 ) &
    ( timeout 300 "${PT[@]}" packages/zmlx-patch/tests/test_rope_offset_gpu.py > "$OUT/ro.log" 2>&1 ) &
    wait
    for f in k pn ro; do echo "== $f: $(tail -1 "$OUT/$f.log")"; grep -E "^FAILED|^ERROR" "$OUT/$f.log" | head -8; done
    ;;
  lfm2)
    timeout 60 python3 $G/fusion_cost.py 2>&1 | tail -6
    timeout 120 ncu --metrics gpu__time_duration.sum --csv --log-file "$OUT/fusion.csv" \
      python3 $G/fusion_cost.py --calls 10 --host-reps 1 > "$OUT/ncu.out" 2>&1
    python3 $G/fusion_cost.py --summarize "$OUT/fusion.csv"
    timeout 300 python3 $G/ab_decode.py synthetic:lfm2-8b-a1b --configs stock default default+qkv default+convproj default+qkv+convproj \
      --rounds 6 2>&1 | tail -5
    ;;
  qwen3)
    timeout 420 python3 $G/ab_decode.py synthetic:qwen3-30b-a3b --configs stock default default+qkv --rounds 5 \
      2>&1 | tail -4
    for c in default default+qkv; do
      echo "[time] $c: $(timeout 80 python3 $G/profile_decode.py synthetic:qwen3-30b-a3b --config $c --time \
        --steps 40 2>&1 | grep -E 'ms/(step|token)' | tr '\n' ' ')"
    done
    ;;
  layer)  # [MODEL]: the opt-in attention_layer: GPU tests, step split, A/B (default qwen3-30b-a3b, build 3+ min)
    m=synthetic:${2:-qwen3-30b-a3b}
    ( timeout 300 "${PT[@]}" packages/zmlx-patch/tests/test_patch_gpu.py -k "attention_layer or array_offset" \
      packages/zmlx-patch/tests/test_rope_offset_gpu.py > "$OUT/pl.log" 2>&1 )
    echo "== pl: $(tail -1 "$OUT/pl.log")"; grep -E "^FAILED|^ERROR" "$OUT/pl.log" | head -8
    for c in stock default default+layer; do
      echo "[time] $c: $(timeout 180 python3 $G/profile_decode.py "$m" --config $c --time --steps 40 2>&1 \
        | grep -E 'ms/(step|token)' | tr '\n' ' ')"
    done
    timeout 240 python3 $G/ab_decode.py "$m" --configs stock default default+layer --rounds 4 2>&1 | tail -4
    ;;
  stack)  # [MODEL [CONFIG...]]: the launch cuts stacked, one in-process A/B (re-traces left out of the timing).
    # Default configs: stock, the defaults, every opt-in (layer + qkv + router + res: the fewest launches); for
    # llama-3-8b add default+layer+qkv+res+fuse (the dense gate+up launch too)
    m=synthetic:${2:-qwen3-30b-a3b}; shift $(( $# < 2 ? $# : 2 ))
    configs=("$@"); [ ${#configs[@]} -gt 0 ] || configs=(stock default default+layer+qkv+router+res)
    timeout 560 python3 $G/ab_decode.py "$m" --configs "${configs[@]}" --rounds 4 2>&1 | tail -6
    ;;
  graph)  # [MODEL]: what dispatch costs in count: one decode step's primitives for each config (seconds each)
    m=synthetic:${2:-qwen3-30b-a3b}
    for c in stock default default+layer default+layer+qkv+router+res; do
      echo "== $c"; timeout 240 python3 $G/profile_decode.py "$m" --config $c --graph 2>&1 | grep -E "^(\||primitives)"
    done
    ;;
  mlxenv)  # [MODEL]: MLX's CUDA backend commits a CUDA graph every MLX_MAX_OPS_PER_BUFFER (20) kernels and drops its
    # whole graph cache past MLX_CUDA_GRAPH_CACHE_SIZE (100) keys: does dispatch (~7 us a primitive) move with them?
    m=synthetic:${2:-qwen3-30b-a3b}
    for e in "" "MLX_MAX_OPS_PER_BUFFER=60" "MLX_MAX_OPS_PER_BUFFER=200" "MLX_CUDA_GRAPH_CACHE_SIZE=1000"; do
      for c in stock default; do
        echo "[time] ${e:-MLX defaults} $c: $(env $e timeout 180 python3 $G/profile_decode.py "$m" --config $c --time \
          --steps 40 2>&1 | grep -E 'ms/(step|token)' | tr '\n' ' ')"
      done
    done
    ;;
  capsule)
    [ $# -ge 2 ] || { echo "usage: bash tools/gpu/opt_ins.sh capsule MODEL [zmlx-bench run flags]" >&2; exit 2; }
    m=$2; shift 2
    python3 -m zmlx.bench run "synthetic:$m" --runs 5 --max-tokens 500 --prompt-tokens 512 --warmup 1 \
      --cache-dir /tmp/zmlx-synth --quiet --note "zmlx $(cat .zmlx-commit 2>/dev/null) $*" "$@" \
      --out "$OUT/${m}_capsule.json" 2>&1 | grep -v "incorrect regex pattern" | tail -2
    ;;
  *) echo "usage: bash tools/gpu/opt_ins.sh tests [MODEL...]|lfm2|qwen3|layer [MODEL]|stack [MODEL [CONFIG...]]|graph [MODEL]|mlxenv [MODEL]|capsule MODEL [flags]" >&2; exit 2 ;;
esac
