"""zk.qmv against MLX's qmv at the decode shapes of real models: bit-identity, then device time per launch shape.

  python3 tools/gpu/qmv_bench.py                 # bit-identity of every launch shape, host-timed us per call
  ncu --profile-from-start off --metrics gpu__time_duration.sum,dram__throughput.avg.pct_of_peak_sustained_elapsed \\
      --csv --log-file q.csv python3 tools/gpu/qmv_bench.py --ncu
  python3 tools/gpu/qmv_bench.py --summarize q.csv   # device us and % of DRAM peak per (shape, form)

Forms: ``mlx`` (mx.quantized_matmul, what QuantizedLinear runs), ``auto`` (zk.qmv's own geometry) and
``rR_uU[_wW]`` (zk.qmv, R rows a warp, U steps unrolled, W warps a block). Every form of a shape is checked bit-identical to ``mlx`` before it is timed.
"""

from __future__ import annotations

import argparse
import csv
import ctypes
import statistics
import sys
import time
from collections import defaultdict

# (name, N, K): llama-3-8b q/o, k/v, gate/up, down, lm_head; qwen3-30b-a3b q, k/v, o, lm_head; gpt-oss (residue)
SHAPES = (
    ("llama.q", 4096, 4096), ("llama.kv", 1024, 4096), ("llama.gate", 14336, 4096), ("llama.down", 4096, 14336),
    ("llama.head", 128256, 4096), ("qwen3.q", 4096, 2048), ("qwen3.kv", 512, 2048), ("qwen3.o", 2048, 4096),
    ("qwen3.head", 151936, 2048), ("gptoss.q", 4096, 2880),
)
# rR_uU[_wW]: R rows a warp, U steps unrolled, W warps a block (default 4)
# bR_uU[_wW]: qmv_tuning's batch kernel (every unrolled step's loads first); hU[_wW]: its half-warp kernel
FORMS = ("mlx", "auto", "r1_u4", "r1_u4_w2", "r1_u4_w8", "r1_u8", "r1_u2", "r4_u4", "r4_u4_w8", "b1_u4", "b1_u8",
         "b2_u4", "b1_u4_w8", "h4", "h8", "h4_w8")
REPS = 5
# zk.gather_qmv against mx.gather_qmm (MLX's gather_qmv): (name, experts, N, K, slots, x per slot)
GATHER = (("mixtral.up", 8, 14336, 4096, 2, False), ("mixtral.down", 8, 4096, 14336, 2, True),
          ("gptoss.up", 32, 2880, 2880, 4, False), ("lfm2.up", 32, 1792, 2048, 4, False))
GFORMS = ("mlx", "zk")


def _inputs(n, k):
    import mlx.core as mx

    mx.random.seed(n + k)
    x = mx.random.normal((1, 1, k)).astype(mx.bfloat16)
    w = (mx.random.normal((n, k)) * 0.05).astype(mx.bfloat16)
    q = mx.quantize(w, group_size=64, bits=4)
    mx.eval(x, q)
    return x, q


def _call(form, x, q):
    import mlx.core as mx
    from zmlx.kernels.ops import qmv

    if form == "mlx":
        return mx.quantized_matmul(x, *q, transpose=True, group_size=64, bits=4)
    if form == "auto":
        return qmv.qmv(x, q, group_size=64, bits=4)
    from zmlx.kernels.ops import qmv_tuning

    parts = {p[0]: int(p[1:]) for p in form.split("_")}
    if "h" in parts:
        return qmv_tuning.qmv_variant(x, q, group_size=64, bits=4, variant="half", unroll=parts["h"],
                                      warps=parts.get("w", 4))
    if "b" in parts:
        return qmv_tuning.qmv_variant(x, q, group_size=64, bits=4, variant="batch", rows_per_warp=parts["b"],
                                      unroll=parts["u"], warps=parts.get("w", 4))
    return qmv.qmv(x, q, group_size=64, bits=4, rows_per_warp=parts["r"], unroll=parts["u"], warps=parts.get("w"))


def _gather_inputs(e, n, k, slots, per):
    import mlx.core as mx

    mx.random.seed(e + n + k)
    x = mx.random.normal((1, 1, slots if per else 1, 1, k)).astype(mx.bfloat16)
    q = mx.quantize((mx.random.normal((e, n, k)) * 0.05).astype(mx.bfloat16), group_size=64, bits=4)
    inds = mx.random.randint(0, e, (1, 1, slots)).astype(mx.uint32)
    mx.eval(x, q, inds)
    return x, q, inds


def _gather_call(form, x, q, inds):
    import mlx.core as mx
    from zmlx.kernels.ops import gather_qmv

    if form == "mlx":
        return mx.gather_qmm(x, *q, rhs_indices=inds, transpose=True, group_size=64, bits=4)
    return gather_qmv.gather_qmv(x, q, inds, group_size=64, bits=4)


def run(ncu: bool) -> int:
    import mlx.core as mx
    import numpy as np

    bad = 0
    cases = [(name, *_inputs(n, k)) for name, n, k in SHAPES]
    for name, x, q in cases:  # identity (and every instantiation compiled) before anything is timed
        want = np.array(_call("mlx", x, q).astype(mx.float32))
        for form in FORMS[1:]:
            got = np.array(_call(form, x, q).astype(mx.float32))
            if not np.array_equal(got, want):
                bad += 1
                print(f"NOT IDENTICAL {name} {form}: {int((got != want).sum())} of {want.size} differ")
    gcases = [(g[0], *_gather_inputs(*g[1:])) for g in GATHER]
    for name, x, q, inds in gcases:
        want = np.array(_gather_call("mlx", x, q, inds).astype(mx.float32))
        got = np.array(_gather_call("zk", x, q, inds).astype(mx.float32))
        if not np.array_equal(got, want):
            bad += 1
            print(f"NOT IDENTICAL {name} gather: {int((got != want).sum())} of {want.size} differ")
    total = len(cases) * (len(FORMS) - 1) + len(gcases)
    print(f"identity: {total - bad} of {total} forms bit-identical")
    cuda = ctypes.CDLL("libcuda.so.1") if ncu else None
    if cuda:
        cuda.cuProfilerStart()
    for name, x, q in cases:
        for form in FORMS:
            times = []
            for _ in range(REPS if ncu else 50):
                t0 = time.perf_counter()
                mx.eval(_call(form, x, q))
                times.append((time.perf_counter() - t0) * 1e6)
            if not ncu:
                print(f"{name:11s} {form:6s} host-synced us/call median {statistics.median(times):8.1f}")
    for name, x, q, inds in gcases:
        for form in GFORMS:
            times = []
            for _ in range(REPS if ncu else 50):
                t0 = time.perf_counter()
                mx.eval(_gather_call(form, x, q, inds))
                times.append((time.perf_counter() - t0) * 1e6)
            if not ncu:
                print(f"{name:12s} {form:6s} host-synced us/call median {statistics.median(times):8.1f}")
    if cuda:
        cuda.cuProfilerStop()
    return 1 if bad else 0


def summarize(path: str) -> None:
    rows = [r for r in csv.DictReader(line for line in open(path) if line.startswith('"'))
            if "qmv" in r["Kernel Name"]]
    metric = defaultdict(dict)  # launch id -> metric -> value
    order = []
    for r in rows:
        lid = r["ID"]
        if lid not in metric:
            order.append(lid)
        value = float(r["Metric Value"].replace(",", ""))
        unit = r.get("Metric Unit", "")
        if r["Metric Name"] == "gpu__time_duration.sum":  # to ns, whatever unit ncu chose
            value *= 1.0 if unit.startswith("n") else 1e3 if unit.startswith("u") else 1e6
        metric[lid][r["Metric Name"]] = value
    labels = [(name, form) for name, _, _ in SHAPES for form in FORMS for _ in range(REPS)]
    labels += [(g[0], form) for g in GATHER for form in GFORMS for _ in range(REPS)]
    if len(order) != len(labels):
        raise ValueError(f"{len(order)} qmv launches in the log, expected {len(labels)}")
    per = defaultdict(list)
    for lid, label in zip(order, labels):
        per[label].append(metric[lid])
    print("| shape | form | device us (median) | DRAM % of peak |\n|---|---|---|---|")
    for name, n, k in SHAPES:
        for form in FORMS:
            v = per[(name, form)]
            us = statistics.median(m["gpu__time_duration.sum"] for m in v) / 1e3
            dram = statistics.median(m.get("dram__throughput.avg.pct_of_peak_sustained_elapsed", 0.0) for m in v)
            print(f"| {name} {n}x{k} | {form} | {us:.1f} | {dram:.0f} |")
    for name, e, n, k, slots, _ in GATHER:
        for form in GFORMS:
            v = per[(name, form)]
            us = statistics.median(m["gpu__time_duration.sum"] for m in v) / 1e3
            dram = statistics.median(m.get("dram__throughput.avg.pct_of_peak_sustained_elapsed", 0.0) for m in v)
            print(f"| {name} {e}x{n}x{k} top-{slots} | {form} | {us:.1f} | {dram:.0f} |")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ncu", action="store_true", help="bracket the timed launches for ncu --profile-from-start off")
    p.add_argument("--summarize", metavar="CSV")
    a = p.parse_args(argv)
    if a.summarize:
        summarize(a.summarize)
        return 0
    return run(a.ncu)


if __name__ == "__main__":
    sys.exit(main())
