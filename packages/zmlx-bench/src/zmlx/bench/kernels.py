"""``zmlx-bench kernels``: each zmlx.kernels op, fused kernel against its pure-MLX reference, at decode
(M=1) and prefill (M=512) shapes of the models zmlx patches, on the default device.

The cases and the timer are ``zmlx.kernels.microbench``'s (one table for this command and tools/bench_kernels.py).
Each call is evaluated and synchronised on its own (``time_synced``), so a time includes launch and sync latency: at
M=1 that is what a decode step pays per op. On a machine without a GPU backend no kernel can run (the public op
*is* the reference there): the command says so on stderr, records the reference timings only, and exits 0.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from importlib import import_module
from typing import Any

from .capsule import KernelBench, KernelTiming

__all__ = ["run_kernel_bench"]


def _identical(a: Any, b: Any) -> bool:
    import mlx.core as mx

    a = a if isinstance(a, tuple | list) else (a,)
    b = b if isinstance(b, tuple | list) else (b,)
    return len(a) == len(b) and all(
        x.shape == y.shape and x.dtype == y.dtype and bool(mx.array_equal(x, y, equal_nan=True))
        for x, y in zip(a, b, strict=True)
    )


def run_kernel_bench(
    *,
    ops: list[str] | None = None,
    repeats: int = 5,
    iterations: int = 20,
    tokens: tuple[int, ...] = (1, 512),  # microbench.DECODE_M, PREFILL_M
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
        bench = import_module("zmlx.kernels.microbench")
    except ImportError as e:
        notes.append(f"zmlx.kernels does not import: {type(e).__name__}: {e}")
        say(notes[-1])
        return KernelBench(backend=env.backend, device=env.device, repeats=repeats, iterations=iterations,
                           note="; ".join(notes), results=[])
    for case in bench.OP_CASES:
        if ops is not None and case.op not in ops:
            continue
        fns = case.functions()
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
                ref_us = bench.time_synced(partial(ref, *args, **kw), repeats, iterations)
                if gpu:
                    fused_us = bench.time_synced(partial(op, *args, **kw), repeats, iterations)
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
