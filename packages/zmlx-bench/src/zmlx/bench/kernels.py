"""``zmlx-bench kernels``: each zmlx.kernels op, fused kernel against its pure-MLX reference, at decode
(M=1) and prefill (M=512) shapes of the models zmlx patches, on the default device.

Each call is evaluated and synchronised on its own, so a time includes launch and sync latency: at M=1 that is
what a decode step pays per op. On a machine without a GPU backend no kernel can run (the public op *is* the
reference there): the command says so on stderr, records the reference timings only, and exits 0.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import import_module
from typing import Any

from . import stats
from .capsule import KernelBench, KernelTiming

__all__ = ["CASES", "run_kernel_bench"]

DECODE_M, PREFILL_M = 1, 512


@dataclass(frozen=True)
class Case:
    """One op at one model's shapes; ``make(m)`` returns (positional inputs, keyword arguments) for M tokens."""

    op: str
    module: str  # zmlx.kernels.ops.<module> holds <op>_reference
    case: str
    make: Callable[[int], tuple[list[Any], dict[str, Any]]]


def _normal(shape: tuple[int, ...], key: int, scale: float = 1.0) -> Any:
    import mlx.core as mx

    return (scale * mx.random.normal(shape, key=mx.random.key(key))).astype(mx.bfloat16)


def _act(k: int, inter: int) -> Callable[[int], tuple[list[Any], dict[str, Any]]]:
    return lambda m: ([_normal((m, k, inter), 1), _normal((m, k, inter), 2)], {})


def _geglu(inter: int) -> Callable[[int], tuple[list[Any], dict[str, Any]]]:
    return lambda m: ([_normal((m, inter), 1), _normal((m, inter), 2)], {"approximate": True})


def _norm(d: int) -> Callable[[int], tuple[list[Any], dict[str, Any]]]:
    return lambda m: ([_normal((m, d), 1), _normal((m, d), 2, 3.0), 1 + _normal((d,), 3, 0.1), 1e-6], {})


def _router(e: int, **kw: Any) -> Callable[[int], tuple[list[Any], dict[str, Any]]]:
    def make(m: int) -> tuple[list[Any], dict[str, Any]]:
        import mlx.core as mx

        args = dict(kw)
        if "bias" in args:
            args["bias"] = _normal((e,), 5, 0.1).astype(mx.float32)
        k = args.pop("k")
        return [_normal((m, e), 4), k], args

    return make


def _combine(k: int, d: int) -> Callable[[int], tuple[list[Any], dict[str, Any]]]:
    def make(m: int) -> tuple[list[Any], dict[str, Any]]:
        import mlx.core as mx

        scores = mx.softmax(_normal((m, k), 6).astype(mx.float32), axis=-1, precise=True)
        return [_normal((m, k, d), 7), scores], {"fp32": True}

    return make


# Shapes of the models zmlx targets (qwen3-30b-a3b: 128 experts top-8, D 2048, expert I 768; lfm2-8b-a1b: 32
# experts top-4; gpt-oss-20b: 32 experts top-4, D 2880; deepseek-v3: 256 experts in 8 groups; llama-3-8b dense).
CASES: tuple[Case, ...] = (
    Case("softmax_topk", "routing", "qwen3-30b-a3b", _router(128, k=8, renormalize=True)),
    Case("topk_softmax", "routing", "gpt-oss-20b", _router(32, k=4)),
    Case("sigmoid_topk", "routing", "lfm2-8b-a1b", _router(32, k=4, bias=True, renormalize=True)),
    Case("grouped_sigmoid_topk", "routing", "deepseek-v3", _router(
        256, k=8, bias=True, n_group=8, topk_group=4, renormalize=True, scale=2.5)),
    Case("moe_combine", "combine", "qwen3-30b-a3b", _combine(8, 2048)),
    Case("swiglu", "activations", "qwen3-30b-a3b", _act(8, 768)),
    Case("swiglu_oai", "activations", "gpt-oss-20b", _act(4, 2880)),
    Case("geglu", "activations", "gemma-3-4b", _geglu(10240)),
    Case("add_rms_norm", "norms", "llama-3-8b", _norm(4096)),
)


def _time_us(fn: Callable[..., Any], args: list[Any], kw: dict[str, Any], *, repeats: int,
             iterations: int) -> float:
    """Median over ``repeats`` of the mean wall time of ``iterations`` calls, each evaluated on its own."""
    import mlx.core as mx

    for _ in range(3):
        mx.eval(fn(*args, **kw))
    mx.synchronize()
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(iterations):
            mx.eval(fn(*args, **kw))
        mx.synchronize()
        samples.append((time.perf_counter() - t0) / iterations * 1e6)
    return stats.median(samples)


def _identical(a: Any, b: Any) -> bool:
    import mlx.core as mx

    a = a if isinstance(a, tuple | list) else (a,)
    b = b if isinstance(b, tuple | list) else (b,)
    return len(a) == len(b) and all(
        x.shape == y.shape and x.dtype == y.dtype and bool(mx.array_equal(x, y, equal_nan=True))
        for x, y in zip(a, b, strict=True)
    )


def _resolve(kernels: Any, case: Case) -> tuple[Callable[..., Any], Callable[..., Any]] | None:
    """(public op, reference) or None where this zmlx.kernels does not have the op."""
    try:
        ops_mod = import_module(f"zmlx.kernels.ops.{case.module}")
    except ImportError:
        return None
    op, ref = getattr(kernels, case.op, None), getattr(ops_mod, f"{case.op}_reference", None)
    return None if op is None or ref is None else (op, ref)


def run_kernel_bench(
    *,
    ops: list[str] | None = None,
    repeats: int = 5,
    iterations: int = 20,
    tokens: tuple[int, ...] = (DECODE_M, PREFILL_M),
    progress: Callable[[str], None] | None = None,
) -> KernelBench:
    """Time every case (or those whose op is in ``ops``) at each M in ``tokens``."""
    import mlx.core as mx

    from .env import collect_environment

    env = collect_environment()
    gpu = env.backend in ("metal", "cuda")
    say = progress or (lambda _msg: None)
    notes = [] if gpu else [
        f"no GPU backend ({env.backend}): zmlx kernels cannot run here; reference timings only"]
    results: list[KernelTiming] = []
    try:
        kernels = import_module("zmlx.kernels")
    except ImportError as e:
        notes.append(f"zmlx.kernels does not import: {type(e).__name__}: {e}")
        say(notes[-1])
        return KernelBench(backend=env.backend, device=env.device, repeats=repeats, iterations=iterations,
                           note="; ".join(notes), results=[])
    for case in CASES:
        if ops is not None and case.op not in ops:
            continue
        fns = _resolve(kernels, case)
        if fns is None:
            notes.append(f"{case.op}: not in this zmlx.kernels, skipped")
            say(notes[-1])
            continue
        op, ref = fns
        for m in tokens:
            args, kw = case.make(m)
            mx.eval([a for a in args if isinstance(a, mx.array)] + [v for v in kw.values()
                                                                    if isinstance(v, mx.array)])
            fused_us = identical = None
            try:
                ref_us = _time_us(ref, args, kw, repeats=repeats, iterations=iterations)
                if gpu:
                    fused_us = _time_us(op, args, kw, repeats=repeats, iterations=iterations)
                    identical = _identical(op(*args, **kw), ref(*args, **kw))
            except (TypeError, ValueError, RuntimeError) as e:  # an op whose signature or limits moved on
                notes.append(f"{case.op} M={m}: {type(e).__name__}: {e}")
                say(notes[-1])
                continue
            results.append(KernelTiming(
                op=case.op, case=case.case, tokens=m,
                shapes=[list(a.shape) for a in args if isinstance(a, mx.array)],
                dtype="bfloat16", reference_us=round(ref_us, 2),
                fused_us=None if fused_us is None else round(fused_us, 2),
                speedup=None if fused_us is None else round(ref_us / fused_us, 4),
                identical=identical,
            ))
            fused = "-" if fused_us is None else f"{fused_us:.1f} us"
            say(f"{case.op} M={m}: reference {ref_us:.1f} us, fused {fused}")
    return KernelBench(
        backend=env.backend, device=env.device, repeats=repeats, iterations=iterations,
        note="; ".join(notes), results=results,
    )
