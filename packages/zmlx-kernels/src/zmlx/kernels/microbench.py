"""Per-op microbenchmark: each fused op against its pure-MLX reference, at decode (M=1) and prefill (M=512) shapes
of the models zmlx patches, plus the decode-shape quantized expert MLPs. The one case table and the two timers
behind ``tools/bench_kernels.py`` (chained calls, the docs table) and ``zmlx-bench kernels`` (synchronised calls,
written into capsules).

- :func:`time_chained`: ``chain`` independent calls evaluated as one graph, median per-call time over ``reps``:
  throughput, host cost of each call included.
- :func:`time_synced`: each call evaluated and synchronised on its own: the latency a decode step pays per op.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from importlib import import_module
from typing import Any

import mlx.core as mx

from .backend import gpu_backend

DECODE_M, PREFILL_M = 1, 512


@dataclass(frozen=True)
class OpCase:
    """One op at one model's shapes; ``make(m)`` returns (positional inputs, keyword arguments) for M tokens."""

    op: str
    module: str  # zmlx.kernels.ops.<module> holds <op>_reference
    case: str
    make: Callable[[int], tuple[list[Any], dict[str, Any]]]

    def functions(self) -> tuple[Callable[..., Any], Callable[..., Any]] | None:
        """(public op, its reference), or None where this zmlx.kernels lacks either."""
        try:
            ops_mod = import_module(f"zmlx.kernels.ops.{self.module}")
        except ImportError:
            return None
        op = getattr(import_module("zmlx.kernels"), self.op, None)
        ref = getattr(ops_mod, f"{self.op}_reference", None)
        return None if op is None or ref is None else (op, ref)


def _normal(shape: tuple[int, ...], key: int, scale: float = 1.0) -> mx.array:
    return (scale * mx.random.normal(shape, key=mx.random.key(key))).astype(mx.bfloat16)


def _act(k: int, inter: int) -> Callable[[int], tuple[list[Any], dict[str, Any]]]:
    return lambda m: ([_normal((m, k, inter), 1), _normal((m, k, inter), 2)], {})


def _geglu(inter: int) -> Callable[[int], tuple[list[Any], dict[str, Any]]]:
    return lambda m: ([_normal((m, inter), 1), _normal((m, inter), 2)], {"approximate": True})


def _norm(d: int) -> Callable[[int], tuple[list[Any], dict[str, Any]]]:
    return lambda m: ([_normal((m, d), 1), _normal((m, d), 2, 3.0), 1 + _normal((d,), 3, 0.1), 1e-6], {})


def _qk(hq: int, hk: int, d: int) -> Callable[[int], tuple[list[Any], dict[str, Any]]]:
    return lambda m: ([_normal((m, 1, hq, d), 1, 4.0), _normal((m, 1, hk, d), 2), 1 + _normal((d,), 3, 0.1),
                       1 + _normal((d,), 4, 0.1), 1e-6, 1e-6], {"offset": 517, "base": 1e6})


def _router(e: int, **kw: Any) -> Callable[[int], tuple[list[Any], dict[str, Any]]]:
    def make(m: int) -> tuple[list[Any], dict[str, Any]]:
        args = dict(kw)
        if "bias" in args:
            args["bias"] = _normal((e,), 5, 0.1).astype(mx.float32)
        k = args.pop("k")
        return [_normal((m, e), 4), k], args

    return make


def _combine(k: int, d: int) -> Callable[[int], tuple[list[Any], dict[str, Any]]]:
    def make(m: int) -> tuple[list[Any], dict[str, Any]]:
        scores = mx.softmax(_normal((m, k), 6).astype(mx.float32), axis=-1, precise=True)
        return [_normal((m, k, d), 7), scores], {"fp32": True}

    return make


# Shapes of the models zmlx targets (qwen3-30b-a3b: 128 experts top-8, D 2048, expert I 768; lfm2-8b-a1b: 32
# experts top-4; gpt-oss-20b: 32 experts top-4, D 2880; deepseek-v3: 256 experts in 8 groups; llama-3-8b dense).
OP_CASES: tuple[OpCase, ...] = (
    OpCase("softmax_topk", "routing", "qwen3-30b-a3b", _router(128, k=8, renormalize=True)),
    OpCase("topk_softmax", "routing", "gpt-oss-20b", _router(32, k=4)),
    OpCase("sigmoid_topk", "routing", "lfm2-8b-a1b", _router(32, k=4, bias=True, renormalize=True)),
    OpCase("grouped_sigmoid_topk", "routing", "deepseek-v3", _router(
        256, k=8, bias=True, n_group=8, topk_group=4, renormalize=True, scale=2.5)),
    OpCase("moe_combine", "combine", "qwen3-30b-a3b", _combine(8, 2048)),
    OpCase("swiglu", "activations", "qwen3-30b-a3b", _act(8, 768)),
    OpCase("swiglu_oai", "activations", "gpt-oss-20b", _act(4, 2880)),
    OpCase("geglu", "activations", "gemma-3-4b", _geglu(10240)),
    OpCase("add_rms_norm", "norms", "llama-3-8b", _norm(4096)),
    OpCase("qk_norm_rope", "attention", "qwen3-30b-a3b", _qk(32, 4, 128)),
)

# Decode-shape expert MLPs of the benchmark models: (name, experts, top k, hidden, intermediate); E=0 is dense.
EXPERT_SHAPES = (("qwen3-30b-a3b experts", 128, 8, 2048, 768), ("lfm2-8b-a1b experts", 32, 4, 2048, 1792),
                 ("gpt-oss-20b experts", 32, 4, 2880, 2880), ("mixtral-8x7b experts", 8, 2, 4096, 14336),
                 ("llama-3-8b dense MLP", 0, 1, 4096, 14336))


def time_chained(fn: Callable[[], object], chain: int, reps: int) -> tuple[float, float]:
    """(median, max - min) per-call microseconds of ``chain`` independent calls evaluated together."""
    mx.eval(fn())  # compile + warm
    samples = []
    for _ in range(reps):
        mx.synchronize()
        t0 = time.perf_counter()
        mx.eval([fn() for _ in range(chain)])
        mx.synchronize()
        samples.append((time.perf_counter() - t0) / chain * 1e6)
    samples.sort()
    return statistics.median(samples), samples[-1] - samples[0]


def time_synced(fn: Callable[[], object], repeats: int, iterations: int) -> float:
    """Median over ``repeats`` of the mean microseconds of ``iterations`` calls, each evaluated on its own."""
    for _ in range(3):
        mx.eval(fn())
    mx.synchronize()
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(iterations):
            mx.eval(fn())
        mx.synchronize()
        samples.append((time.perf_counter() - t0) / iterations * 1e6)
    return statistics.median(samples)


@dataclass(frozen=True)
class BenchRow:
    op: str
    shape: str
    m: int
    fused_us: float
    reference_us: float
    fused_spread_us: float
    reference_spread_us: float
    fused_gbps: float | None = None  # weight bytes read per second by the fused kernels (expert rows only)

    @property
    def speedup(self) -> float:
        return self.reference_us / self.fused_us if self.fused_us else float("nan")


def _expert_cases(key: mx.array) -> list[tuple[str, str, float, Callable, Callable]]:
    from .ops import moe_experts as me

    out = []
    for name, e, k, d, i in EXPERT_SHAPES:
        keys = mx.random.split(key, 6)
        ne = max(e, 1)
        x = mx.random.normal((1, 1, d), key=keys[0]).astype(mx.bfloat16)
        q = [mx.quantize((mx.random.normal((ne, n, kk), key=keys[j + 1]) * 0.05).astype(mx.bfloat16), 64, 4)
             for j, (n, kk) in enumerate(((i, d), (i, d), (d, i)))]
        bytes_per_expert = sum(w.nbytes + s.nbytes + b.nbytes for w, s, b in q) / ne
        # top-k < 8 (qmv numerics): the older one-block-a-row kernels, then zk.qmv's core (moe_experts_q4.py) in each
        # loop form; the same results, other launch shapes
        forms = ((False, "step"), (True, "step"), (True, "batch")) if k < 8 else ((True, "step"),)

        def label(core, form, what="", name=name, k=k):
            return name + what + (f" (qmv core{', batch' if form == 'batch' else ''})" if core and k < 8 else "")

        if e == 0:
            g, u = [tuple(a[0] for a in qq) for qq in q[:2]]
            for core, form in forms:
                out.append((label(core, form), f"[1,{d}]->[1,{i}] gate+up", 2 * bytes_per_expert / 3,
                            lambda x=x, g=g, u=u, c=core, f=form: me.dense_gate_up(x, g, u, group_size=64, bits=4,
                                                                                 qmv_core=c, q4_form=f),
                            lambda x=x, g=g, u=u: me.dense_gate_up_reference(x, g, u, group_size=64, bits=4,
                                                                            activation="swiglu")))
            continue
        inds = mx.random.permutation(e, key=keys[4])[:k].astype(mx.uint32)
        scores = mx.softmax(mx.random.normal((k,), key=keys[5])).astype(mx.bfloat16)
        h = me.moe_gate_up_reference(x, inds, q[0], q[1], group_size=64, bits=4, activation="swiglu")
        shape = f"E={e} k={k} D={d} I={i}"

        def gate_up(x=x, inds=inds, q=q, core=True, form="step"):
            return me.moe_gate_up(x, inds, q[0], q[1], group_size=64, bits=4, qmv_core=core, q4_form=form)

        def down(h, inds=inds, q=q, scores=scores, core=True, form="step"):
            return me.moe_down_combine(h, inds, q[2], scores, group_size=64, bits=4, fp32=False, qmv_core=core,
                                       q4_form=form)

        def ref_gate_up(x=x, inds=inds, q=q):
            return me.moe_gate_up_reference(x, inds, q[0], q[1], group_size=64, bits=4, activation="swiglu")

        def ref_down(h, inds=inds, q=q, scores=scores):
            return me.moe_down_combine_reference(h, inds, q[2], scores, group_size=64, bits=4, fp32=False)

        for core, form in forms:
            out.append((label(core, form), shape, k * bytes_per_expert,
                        lambda c=core, f=form, gu=gate_up, dn=down: dn(gu(core=c, form=f), core=c, form=f),
                        lambda gu=ref_gate_up, dn=ref_down: dn(gu())))
        for core, form in forms[1:]:  # each launch alone on the core, to tell which of the two bounds the pair
            out.append((label(core, form, " gate+up"), shape, k * bytes_per_expert * 2 / 3,
                        lambda c=core, f=form, gu=gate_up: gu(core=c, form=f), ref_gate_up))
            out.append((label(core, form, " down+combine"), shape, k * bytes_per_expert / 3,
                        lambda c=core, f=form, h=h, dn=down: dn(h, core=c, form=f), lambda h=h, dn=ref_down: dn(h)))
    return out


def run(ms: tuple[int, ...] = (DECODE_M, PREFILL_M), chain: int = 50, reps: int = 15, seed: int = 0,
        experts_only: bool = False) -> list[BenchRow]:
    """Chained timings of every op case at each M, then the expert MLPs at decode; needs a GPU."""
    if gpu_backend() is None:
        raise RuntimeError("the kernel microbenchmark needs a Metal or CUDA GPU; MLX has neither here")
    mx.random.seed(seed)
    rows = []
    with mx.stream(mx.gpu):
        for m in () if experts_only else ms:
            for case in OP_CASES:
                fns = case.functions()
                if fns is None:
                    continue
                args, kw = case.make(m)
                shape = "x".join(str(s) for s in args[0].shape)
                f_med, f_spread = time_chained(partial(fns[0], *args, **kw), chain, reps)
                r_med, r_spread = time_chained(partial(fns[1], *args, **kw), chain, reps)
                rows.append(BenchRow(f"{case.op} ({case.case})", f"[{shape}]", m, f_med, r_med, f_spread, r_spread))
        for op, shape, nbytes, fused, ref in _expert_cases(mx.random.key(seed)):
            f_med, f_spread = time_chained(fused, chain, reps)
            r_med, r_spread = time_chained(ref, chain, reps)
            rows.append(BenchRow(op, shape, 1, f_med, r_med, f_spread, r_spread, nbytes / f_med / 1e3))
    return rows


def format_table(rows: list[BenchRow]) -> str:
    head = "| op | shape | fused us | reference us | speedup | fused GB/s |\n|---|---|---|---|---|---|\n"
    return head + "".join(
        f"| {r.op} | {r.shape} | {r.fused_us:.1f} (±{r.fused_spread_us / 2:.1f}) | "
        f"{r.reference_us:.1f} (±{r.reference_spread_us / 2:.1f}) | {r.speedup:.2f}x | "
        f"{'' if r.fused_gbps is None else f'{r.fused_gbps:.0f}'} |\n"
        for r in rows
    )
