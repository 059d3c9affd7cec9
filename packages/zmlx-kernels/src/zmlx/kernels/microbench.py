"""Per-op microbenchmark: fused kernel vs its pure-MLX reference, at decode (M=1) and prefill (M=512) shapes.

Each timing evaluates ``chain`` independent calls in one graph and reports the median per-call time over
``reps`` repetitions, after a warm-up that also compiles the kernels. Used by ``tools/bench_kernels.py`` and
``zmlx-bench kernels``. Needs a GPU: the reference-only timings on a CPU say nothing about the kernels.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import mlx.core as mx

from . import add_rms_norm, geglu, moe_combine, softmax_topk, swiglu, swiglu_oai, topk_softmax
from .backend import gpu_backend
from .ops.activations import geglu_reference, swiglu_oai_reference, swiglu_reference
from .ops.norms import add_rms_norm_reference


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


def _time(fn: Callable[[], object], chain: int, reps: int) -> tuple[float, float]:
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


def _cases(m: int, key: mx.array) -> list[tuple[str, str, Callable, Callable]]:
    from .ops import routing

    ks = mx.random.split(key, 8)
    bf = mx.bfloat16
    logits = mx.random.normal((m, 128), key=ks[0]).astype(bf)
    logits32 = mx.random.normal((m, 32), key=ks[1]).astype(bf)
    y = mx.random.normal((m, 8, 2048), key=ks[2]).astype(bf)
    scores = mx.softmax(mx.random.normal((m, 8), key=ks[3]), axis=-1).astype(bf)
    g = mx.random.normal((m, 8, 768), key=ks[4]).astype(bf)
    u = mx.random.normal((m, 8, 768), key=ks[5]).astype(bf)
    x = mx.random.normal((m, 4096), key=ks[6]).astype(bf)
    r = mx.random.normal((m, 4096), key=ks[7]).astype(bf)
    w = mx.ones((4096,), dtype=bf)
    return [
        ("softmax_topk (E=128, k=8, renorm)", "[M,128]",
         lambda: softmax_topk(logits, 8, renormalize=True),
         lambda: routing.softmax_topk_reference(logits, 8, renormalize=True)),
        ("topk_softmax (E=32, k=4)", "[M,32]",
         lambda: topk_softmax(logits32, 4), lambda: routing.topk_softmax_reference(logits32, 4)),
        ("moe_combine fp32 (k=8, D=2048)", "[M,8,2048]",
         lambda: moe_combine(y, scores, fp32=True), lambda: routing_free_combine(y, scores)),
        ("swiglu (8 x 768)", "[M,8,768]", lambda: swiglu(g, u), lambda: swiglu_reference(g, u)),
        ("geglu tanh (8 x 768)", "[M,8,768]", lambda: geglu(g, u, approximate=True),
         lambda: geglu_reference(g, u, approximate=True)),
        ("swiglu_oai (8 x 768)", "[M,8,768]", lambda: swiglu_oai(g, u), lambda: swiglu_oai_reference(g, u)),
        ("add_rms_norm (D=4096)", "[M,4096]", lambda: add_rms_norm(x, r, w, 1e-6),
         lambda: add_rms_norm_reference(x, r, w, 1e-6)),
    ]


def routing_free_combine(y: mx.array, scores: mx.array) -> mx.array:
    # qwen3_moe's combine, as the reference the fused combine replaces
    return (y * scores[..., None]).sum(axis=-2).astype(y.dtype)


# Decode-shape expert MLPs of the benchmark models: (name, experts, top k, hidden, intermediate); E=0 is dense.
EXPERT_SHAPES = (("qwen3-30b-a3b experts", 128, 8, 2048, 768), ("lfm2-8b-a1b experts", 32, 4, 2048, 1792),
                 ("gpt-oss-20b experts", 32, 4, 2880, 2880), ("llama-3-8b dense MLP", 0, 1, 4096, 14336))


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
        if e == 0:
            g, u = [tuple(a[0] for a in qq) for qq in q[:2]]
            out.append((name, f"[1,{d}]->[1,{i}] gate+up", 2 * bytes_per_expert / 3,
                        lambda x=x, g=g, u=u: me.dense_gate_up(x, g, u, group_size=64, bits=4),
                        lambda x=x, g=g, u=u: me.dense_gate_up_reference(x, g, u, group_size=64, bits=4,
                                                                        activation="swiglu")))
            continue
        inds = mx.random.permutation(e, key=keys[4])[:k].astype(mx.uint32)
        scores = mx.softmax(mx.random.normal((k,), key=keys[5])).astype(mx.bfloat16)

        def fused(x=x, inds=inds, q=q, scores=scores):
            h = me.moe_gate_up(x, inds, q[0], q[1], group_size=64, bits=4)
            return me.moe_down_combine(h, inds, q[2], scores, group_size=64, bits=4, fp32=False)

        def ref(x=x, inds=inds, q=q, scores=scores):
            h = me.moe_gate_up_reference(x, inds, q[0], q[1], group_size=64, bits=4, activation="swiglu")
            return me.moe_down_combine_reference(h, inds, q[2], scores, group_size=64, bits=4, fp32=False)

        out.append((name, f"E={e} k={k} D={d} I={i}", k * bytes_per_expert, fused, ref))
    return out


def run(ms: tuple[int, ...] = (1, 512), chain: int = 50, reps: int = 15, seed: int = 0,
        experts_only: bool = False) -> list[BenchRow]:
    if gpu_backend() is None:
        raise RuntimeError("the kernel microbenchmark needs a Metal or CUDA GPU; MLX has neither here")
    rows = []
    with mx.stream(mx.gpu):
        for m in () if experts_only else ms:
            for op, shape, fused, ref in _cases(m, mx.random.key(seed)):
                f_med, f_spread = _time(fused, chain, reps)
                r_med, r_spread = _time(ref, chain, reps)
                rows.append(BenchRow(op, shape.replace("M", str(m)), m, f_med, r_med, f_spread, r_spread))
        for op, shape, nbytes, fused, ref in _expert_cases(mx.random.key(seed)):
            f_med, f_spread = _time(fused, chain, reps)
            r_med, r_spread = _time(ref, chain, reps)
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
