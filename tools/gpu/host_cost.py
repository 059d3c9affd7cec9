"""Host cost of one call, fused op vs its reference, at decode shape (M=1): graph building alone (no eval), and
building + evaluating a chain of independent calls. On MLX CUDA a custom kernel's host cost decides whether
replacing a few built-in primitives pays at all (docs/perf-notes.md).

  python3 tools/gpu/host_cost.py [--ops qk_norm_rope add_rms_norm ...] [--calls 400]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time


def per_call_us(fn, calls: int, evaluate: bool) -> float:
    import mlx.core as mx

    samples = []
    for _ in range(7):
        mx.synchronize()
        t0 = time.perf_counter()
        outs = [fn() for _ in range(calls)]
        if evaluate:
            mx.eval(outs)
            mx.synchronize()
        samples.append((time.perf_counter() - t0) * 1e6 / calls)
        mx.eval(outs)
    return statistics.median(samples)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--ops", nargs="*")
    p.add_argument("--calls", type=int, default=400)
    args = p.parse_args(argv)
    import mlx.core as mx
    from zmlx.kernels import microbench

    print("| op | case | fused build us | reference build us | fused build+eval us | reference build+eval us |")
    print("|---|---|---|---|---|---|")
    for case in microbench.OP_CASES:
        if args.ops and case.op not in args.ops:
            continue
        fns = case.functions()
        if fns is None:
            continue
        pos, kw = case.make(1)
        mx.eval(pos[0])
        fused = lambda f=fns[0], a=pos, k=kw: f(*a, **k)  # noqa: E731
        ref = lambda f=fns[1], a=pos, k=kw: f(*a, **k)  # noqa: E731
        mx.eval(fused(), ref())
        row = [per_call_us(f, args.calls, e) for e in (False, True) for f in (fused, ref)]
        print(f"| {case.op} | {case.case} | " + " | ".join(f"{v:.1f}" for v in row) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
