"""Host cost per primitive on MLX's CUDA backend at decode shapes: graph building and dispatch (async_eval), per op.

  python3 tools/gpu/dispatch_cost.py [--n 300] [--hidden 2048]

For each op, N independent instances (distinct inputs, so nothing is shared) are built, then dispatched with one
``mx.async_eval``: the host microseconds per instance of each phase, and the device wait after dispatch. On a
host-bound decode step the sum over its primitives of build + dispatch is the step time.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time


def cases(d: int):
    import mlx.core as mx
    import mlx.nn as nn
    import zmlx.kernels as zk

    bf = mx.bfloat16
    conv = nn.Conv1d(d, d, kernel_size=3, groups=d, bias=False)
    conv.set_dtype(bf)
    lin = nn.QuantizedLinear(d, 3 * d, bias=False, group_size=64, bits=4)
    lin.set_dtype(bf)  # scales and biases in bf16, as a bf16 checkpoint has them
    w = mx.random.normal((d,)).astype(bf)
    mx.eval(conv.parameters(), lin.parameters(), w)

    def x(shape=(1, 1, d)):
        return mx.random.normal(shape).astype(bf)

    return {
        "multiply": (lambda: (x(), x()), lambda a, b: a * b),
        "concatenate (2+1 rows)": (lambda: (x((1, 2, d)), x()), lambda a, b: mx.concatenate([a, b], axis=1)),
        "conv1d depthwise k=3 (3 rows)": (lambda: (x((1, 3, d)),), lambda a: conv(a)),
        "rms_norm": (lambda: (x(),), lambda a: mx.fast.rms_norm(a, w, 1e-5)),
        "quantized_matmul 4-bit (qmv)": (lambda: (x(),), lambda a: lin(a)),
        "split into 3 + multiply": (lambda: (x((1, 1, 3 * d)),), lambda a: (lambda p: p[0] * p[1])(mx.split(a, 3, -1))),
        "add + rms_norm (2 MLX ops)": (lambda: (x(), x()), lambda a, b: mx.fast.rms_norm(a + b, w, 1e-5)),
        "zk.add_rms_norm (custom kernel)": (lambda: (x(), x()), lambda a, b: zk.add_rms_norm(a, b, w, 1e-5)),
        "short conv as mlx-lm (5 MLX ops)": (lambda: (x((1, 1, 3 * d)), x((1, 2, d))),
                                             lambda a, s: zk.ops.conv.short_conv_reference(a, s, conv.weight)),
        "zk.short_conv (custom kernel)": (lambda: (x((1, 1, 3 * d)), x((1, 2, d))),
                                          lambda a, s: zk.short_conv(a, s, conv.weight)),
    }


def measure(make, op, n: int) -> tuple[float, float, float]:
    import mlx.core as mx

    inputs = [make() for _ in range(n)]
    mx.eval(inputs)
    t0 = time.perf_counter()
    outs = [op(*a) for a in inputs]
    t1 = time.perf_counter()
    mx.async_eval(outs)
    t2 = time.perf_counter()
    mx.eval(outs)
    t3 = time.perf_counter()
    return (t1 - t0) * 1e6 / n, (t2 - t1) * 1e6 / n, (t3 - t2) * 1e6 / n


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=300, help="instances per op and repetition")
    p.add_argument("--hidden", type=int, default=2048)
    p.add_argument("--reps", type=int, default=5)
    args = p.parse_args(argv)
    import mlx.core as mx

    print(f"device {mx.default_device()}, hidden {args.hidden}, {args.n} instances x {args.reps} reps (median)")
    print("| op | build us | dispatch us | device wait us |\n|---|---|---|---|")
    for name, (make, op) in cases(args.hidden).items():
        measure(make, op, 8)  # warm-up: kernels compiled, plans found
        rows = [measure(make, op, args.n) for _ in range(args.reps)]
        b, dsp, w = (statistics.median(r[i] for r in rows) for i in range(3))
        print(f"| {name} | {b:.1f} | {dsp:.1f} | {w:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
