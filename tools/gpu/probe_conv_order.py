"""Which tap order of zk.short_conv reproduces MLX's depthwise conv1d on this GPU, on a million random outputs.

  python3 tools/gpu/probe_conv_order.py [--rows 512] [--hidden 2048]

Prints, per dtype and order, how many outputs differ from the eager reference (split, multiply, concatenate,
mx.conv1d, multiply). The order with zero differences in every dtype is what ops/conv.py's CUDA_ORDER must be.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=512)
    p.add_argument("--hidden", type=int, default=2048)
    args = p.parse_args(argv)
    import mlx.core as mx
    from zmlx.kernels.ops.conv import short_conv, short_conv_reference

    n, d = args.rows, args.hidden
    for dtype in (mx.bfloat16, mx.float16, mx.float32):
        for k in (3, 4):
            ks = mx.random.split(mx.random.key(k), 3)
            bcx = (2 * mx.random.normal((n, 1, 3 * d), key=ks[0])).astype(dtype)
            state = mx.random.normal((n, k - 1, d), key=ks[1]).astype(dtype)
            weight = mx.random.normal((d, k, 1), key=ks[2]).astype(dtype)
            want, want_state = short_conv_reference(bcx, state, weight)
            line = []
            for order in (0, 1):
                got, got_state = short_conv(bcx, state, weight, order=order)
                diff = (got != want).sum().item()
                same_state = mx.array_equal(got_state, want_state).item()
                line.append(f"order {order}: {diff} of {want.size} differ{'' if same_state else ', STATE DIFFERS'}")
            print(f"{dtype} K={k}: " + "; ".join(line), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
