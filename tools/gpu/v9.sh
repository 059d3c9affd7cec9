#!/usr/bin/env bash
# v9 on the lent GPU (after the two-step install; later calls on the warm host need only the `source`):
#   bash tools/gpu/v9.sh tests [MODEL...]   # every kernel check (CUDA sources now #included) and the patch modes
#     default, quantized_linear and q4core on every tiny family; builds the named synthetic checkpoints meanwhile
#   bash tools/gpu/v9.sh ab MODEL CONFIG...  # in-process interleaved A/B (ab_decode.py), 3 rounds of 128 tokens
#   bash tools/gpu/v9.sh capsule MODEL TAG [zmlx-bench run flags]  # 500 tokens x 5 runs -> $OUT/MODEL_TAG.json
#   bash tools/gpu/v9.sh prefill MODEL CONFIG...  # in-process interleaved prefill A/B (prefill_ab.py), 8 rounds
#   bash tools/gpu/v9.sh graphs MODEL CONFIG...  # per configuration, CUDA graph API calls over one 2 x 64-token
#     ab_decode run under nsys (cudaGraphInstantiate against cudaGraphExecUpdate: MLX's graph cache, perf-notes v10b)
#   bash tools/gpu/v9.sh bistable MODEL N CONFIG...  # N fresh processes a configuration: step split and CUDA graphs
#   bash tools/gpu/v9.sh qmv-ncu  # zk.qmv's launch forms (step, batch, half-warp) vs MLX's qmv under ncu -> qmv-ncu.md
#   bash tools/gpu/v9.sh ncu-experts  # each fused expert launch's device time alone under ncu, per shape and form
#   bash tools/gpu/v9.sh experts [OLD_KERNELS_PY]  # fused expert MLPs at decode (bench_kernels --experts-only;
#     top-k < 8 rows also "(qmv core)" per loop form and per launch: moe_experts_q4.py); with a path, again with
#     that file swapped in for the ops/ module of its name (an earlier version), then restored
set -uo pipefail
OUT=${OUT:-/tmp/zmlx-out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 MLX_CUDA_USE_CUDNN_SDPA=0
PT=(python3 -m pytest -m gpu -q -p no:cacheprovider -rfE)
case "${1:-}" in
  tests)
    shift
    for m in "$@"; do
      ( timeout 500 python3 -c "import sys; from zmlx.validate import load_model; load_model(sys.argv[1], \
        cache_dir='/tmp/zmlx-synth')" "synthetic:$m" > "$OUT/build-$m.log" 2>&1; echo "built $m: exit $?" ) &
    done
    # the kernel file in three processes: one took over 570 s beside the checkpoint builds (session 7)
    K=packages/zmlx-kernels/tests/test_kernels_gpu.py
    ( timeout 570 "${PT[@]}" $K -k moe_experts > "$OUT/k.log" 2>&1 ) &
    ( timeout 570 "${PT[@]}" $K -k "not moe_experts and (qmv or gather)" > "$OUT/k2.log" 2>&1 ) &
    ( timeout 570 "${PT[@]}" $K -k "not moe_experts and not qmv and not gather" > "$OUT/k3.log" 2>&1 ) &
    ( timeout 570 "${PT[@]}" packages/zmlx-patch/tests/test_patch_gpu.py -k "quantized_linear or default or q4core" \
      > "$OUT/p.log" 2>&1 ) &
    wait
    for f in k k2 k3 p; do echo "== $f: $(tail -1 "$OUT/$f.log")"; grep -E "^FAILED|^ERROR" "$OUT/$f.log" | head -8; done
    ;;
  ab)
    m=synthetic:$2; shift 2
    timeout 560 python3 tools/gpu/ab_decode.py "$m" --configs "$@" --rounds 3 2>&1 | tail -$(( $# + 1 ))
    ;;
  capsule)
    m=$2; tag=$3; shift 3
    timeout 560 python3 -m zmlx.bench run "synthetic:$m" --runs 5 --max-tokens 500 --prompt-tokens 512 --warmup 1 \
      --cache-dir /tmp/zmlx-synth --quiet --note "zmlx $(cat .zmlx-commit 2>/dev/null) $tag $*" "$@" \
      --out "$OUT/${m}_${tag}.json" 2>&1 | grep -v "incorrect regex pattern" | tail -2
    python3 -m zmlx.bench report "$OUT/${m}_${tag}.json" 2>&1 | grep -E "^synthetic:" | head -2
    ;;
  prefill)
    m=synthetic:$2; shift 2
    timeout 560 python3 tools/gpu/prefill_ab.py "$m" --configs "$@" --rounds 8 2>&1 | tail -$(( $# + 1 ))
    ;;
  graphs)
    m=synthetic:$2; shift 2
    command -v nsys >/dev/null || { echo "graphs: no nsys on this host" >&2; exit 2; }
    for c in "$@"; do
      timeout 250 nsys profile -t cuda -o "$OUT/graphs-$c" --force-overwrite true \
        python3 tools/gpu/ab_decode.py "$m" --configs "$c" --rounds 1 -m 64 > "$OUT/graphs-$c.log" 2>&1
      echo "== $c: $(grep -E "^  $c " "$OUT/graphs-$c.log")"
      nsys stats -q -r cuda_api_sum -f csv "$OUT/graphs-$c.nsys-rep" 2>/dev/null | grep -iE "graph|Name" | cut -d, -f2-3,9
    done
    ;;
  bistable)  # the patched step's process-to-process swing (perf-notes bound 9): N fresh processes per configuration,
    # each one's step split into host build / dispatch / device wait; then one more process writing every CUDA graph
    # it commits (MLX_SAVE_CUDA_GRAPHS_DOT_FILE, PREFIX_N.dot a graph; kept on /tmp and counted, apart from the
    # timed runs because writing them costs host time)
    [ $# -ge 4 ] && [ "$3" -gt 0 ] 2>/dev/null || { echo "usage: bash tools/gpu/v9.sh bistable MODEL N CONFIG..." >&2; exit 2; }
    m=synthetic:$2; n=$3; shift 3
    for c in "$@"; do
      for i in $(seq "$n"); do
        timeout 200 python3 tools/gpu/profile_decode.py "$m" --config "$c" --steps 64 --time \
          > "$OUT/bistable-$c-$i.log" 2>&1
        echo "== $c #$i: $(grep -E "ms/step|ms/token" "$OUT/bistable-$c-$i.log" | tr "\n" " ")"
      done
      d=/tmp/zmlx-dots/$c; rm -rf "$d"; mkdir -p "$d"
      MLX_SAVE_CUDA_GRAPHS_DOT_FILE="$d/g" timeout 200 python3 tools/gpu/profile_decode.py "$m" --config "$c" \
        --steps 8 --time > /dev/null 2>&1
      echo "== $c graphs: $(find "$d" -name "*.dot" | wc -l) written, $(find "$d" -name "*.dot" -exec md5sum {} + \
        | cut -d" " -f1 | sort -u | wc -l) distinct"
    done
    ;;
  qmv-ncu)  # zk.qmv's launch forms (step r*, batch b*, half-warp h*) against MLX's qmv: device us, % of DRAM peak
    command -v ncu >/dev/null || { echo "qmv-ncu: no ncu on this host" >&2; exit 2; }
    timeout 400 ncu --profile-from-start off --metrics gpu__time_duration.sum,dram__throughput.avg.pct_of_peak_sustained_elapsed \
      --csv --log-file "$OUT/qmv-ncu.csv" python3 tools/gpu/qmv_bench.py --ncu > "$OUT/qmv-ncu.out" 2>&1
    python3 tools/gpu/qmv_bench.py --summarize "$OUT/qmv-ncu.csv" > "$OUT/qmv-ncu.md" 2>&1 || tail -5 "$OUT/qmv-ncu.out"
    grep -E "^\\|" "$OUT/qmv-ncu.md" | head -60
    ;;
  ncu-experts)  # each fused expert launch's device time alone, per shape and loop form (tools/gpu/experts_ncu.py)
    command -v ncu >/dev/null || { echo "ncu-experts: no ncu on this host" >&2; exit 2; }
    timeout 300 ncu --metrics gpu__time_duration.sum --csv -k regex:zmlx_moe --log-file "$OUT/experts-ncu.csv" \
      python3 tools/gpu/experts_ncu.py > "$OUT/experts-ncu.out" 2>&1
    python3 tools/gpu/experts_ncu.py --summarize "$OUT/experts-ncu.csv" 2>&1 || tail -5 "$OUT/experts-ncu.out"
    ;;
  experts)
    # OLD: an earlier version of one kernel-text module of ops/ (moe_experts_mma.py, moe_experts_q4.py, ...), swapped
    # in under its own name for a second run, then restored
    f=packages/zmlx-kernels/src/zmlx/kernels/ops/$(basename "${2:-moe_experts_kernels.py}")
    timeout 250 python3 tools/bench_kernels.py --experts-only > "$OUT/experts-new.md" 2>&1
    if [ -n "${2:-}" ]; then
      cp "$f" /tmp/zm-current.py && cp "$2" "$f"
      timeout 250 python3 tools/bench_kernels.py --experts-only > "$OUT/experts-old.md" 2>&1
      cp /tmp/zm-current.py "$f"
    fi
    for s in new old; do [ -f "$OUT/experts-$s.md" ] && { echo "== $s"; grep -E "^\\|" "$OUT/experts-$s.md"; }; done
    ;;
  *) echo "usage: bash tools/gpu/v9.sh tests [MODEL...]|ab MODEL CONFIG...|capsule MODEL TAG [flags]|prefill MODEL CONFIG...|graphs MODEL CONFIG...|bistable MODEL N CONFIG...|qmv-ncu|ncu-experts|experts [OLD]" >&2; exit 2 ;;
esac
