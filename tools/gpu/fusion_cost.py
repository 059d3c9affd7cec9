"""Device and host cost of the opt-in fusions against the forms they replace, at the decode shapes of real models.

  python3 tools/gpu/fusion_cost.py                      # host: synchronised latency per call, both forms
  ncu --metrics gpu__time_duration.sum --csv --log-file r.csv python3 tools/gpu/fusion_cost.py --calls 20
  python3 tools/gpu/fusion_cost.py --summarize r.csv    # device: median us per kernel name

router: fused = zk.quantized_router (router projection + routing, one launch); split = MLX's quantized_matmul (qmv;
+ bias for gpt-oss), then the zmlx routing kernel (what moe_mlp runs by default).
qkv: fused = zk.qkv_norm_rope (q/k/v projections + q/k norm + RoPE, one launch); split = three MLX quantized_matmul,
the reshapes, zk.qk_norm_rope and the value transpose (what the qk_norm_rope pattern runs by default).
conv: fused = zk.short_conv_proj (LFM2's in_proj + short conv, one launch); split = MLX's quantized_matmul, then
zk.short_conv (what conv_layer runs by default).
rope: fused = mx.fast.rope with the offset a positions() view (what attention_layer's traced graphs pass); split =
the int offset stock mlx-lm passes (if MLX builds a host array for it, its managed page faults over, as zmlx's own
kernels' did: docs/perf-notes.md v8a).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections import defaultdict

# router: (model, experts, hidden, k, variant, router bias, gating keyword arguments)
ROUTER_SHAPES = (
    ("qwen3-30b-a3b", 128, 2048, 8, "softmax_topk", False, dict(renormalize=True)),
    ("lfm2-8b-a1b", 32, 2048, 4, "sigmoid_topk", False, dict(renormalize=True, eps=1e-6, scale=1.0)),
    ("gpt-oss-20b", 32, 2880, 4, "topk_softmax", True, dict()),
    ("mixtral-8x7b", 8, 4096, 2, "topk_softmax", False, dict(neg_select=True)),
)


# qkv: (model, q heads, kv heads, head dim, hidden, bits)
QKV_SHAPES = (
    ("qwen3-30b-a3b", 32, 4, 128, 2048, 4),
    ("lfm2-8b-a1b", 32, 8, 64, 2048, 4),
)


def _qkv_forms(hq, hk, hd, d, bits):
    import mlx.core as mx
    from zmlx.kernels.ops import attention as ATT
    from zmlx.kernels.ops import qkv as QKV

    x, (q, k, v), qw, kw = QKV.make_case(hq, hk, hd, d, 64, bits, mx.random.key(hq + hd))
    args = dict(offset=517, base=1e6, scale=1.0, traditional=False)

    def fused():
        return QKV.qkv_norm_rope(x, q, k, v, qw, kw, 1e-6, 1e-6, n_heads=hq, n_kv_heads=hk, group_size=64,
                                 bits=bits, **args)

    def split():
        qs, ks, vs = (QKV._project(x, p, 64, bits) for p in (q, k, v))
        qo, ko = ATT.qk_norm_rope(qs.reshape(1, 1, hq, -1), ks.reshape(1, 1, hk, -1), qw, kw, 1e-6, 1e-6, **args)
        return qo, ko, vs.reshape(1, 1, hk, -1).transpose(0, 2, 1, 3)

    return fused, split


def _conv_forms(d, k):
    import mlx.core as mx
    from zmlx.kernels.ops import conv

    ks = mx.random.split(mx.random.key(d + k), 4)
    x = mx.random.normal((1, 1, d), key=ks[0]).astype(mx.bfloat16)
    w_in = mx.quantize((mx.random.normal((3 * d, d), key=ks[1]) * 0.05).astype(mx.bfloat16), group_size=64, bits=4)
    state = mx.random.normal((1, k - 1, d), key=ks[2]).astype(mx.bfloat16)
    weight = mx.random.normal((d, k, 1), key=ks[3]).astype(mx.bfloat16)

    def fused():
        return conv.short_conv_proj(x, w_in, state, weight, group_size=64, bits=4)

    def split():
        bcx = mx.quantized_matmul(x, *w_in, transpose=True, group_size=64, bits=4)
        return conv.short_conv(bcx, state, weight)

    return fused, split


def _router_forms(e, d, k, variant, rbias, kw):
    import mlx.core as mx
    from zmlx.kernels.ops import router as RT
    from zmlx.kernels.ops import routing as R

    x, q, b = RT.make_case(e, d, 64, 8, rbias, 1, mx.random.key(e + d))
    if variant == "sigmoid_topk":
        kw = dict(kw, bias=R.tied_logits((e,), mx.float32, mx.random.key(1), levels=8.0) / 4)
    args = dict(group_size=64, bits=8, variant=variant, k=k, router_bias=b, **kw)
    op = getattr(R, variant)

    def fused():
        return RT.quantized_router(x, q, **args)

    def split():
        return op(RT.router_logits(x, q, group_size=64, bits=8, router_bias=b), k, **kw)

    return fused, split


def _rope_forms(heads: int, d: int, offset: int):
    import mlx.core as mx
    import mlx.nn as nn
    from zmlx.kernels.backend import positions

    rope = nn.RoPE(d, base=500000.0)
    x = mx.random.normal((1, heads, 1, d), key=mx.random.key(d)).astype(mx.bfloat16)

    def fused():
        return (rope(x, offset=positions(offset)),)

    def split():
        return (rope(x, offset=offset),)

    return fused, split


def run(calls: int, host_reps: int) -> None:
    import time

    import mlx.core as mx

    cases = [(f"router {m:<14} E{e:<4} D{d:<5} k{k}", _router_forms(e, d, k, v, rb, kw))
             for m, e, d, k, v, rb, kw in ROUTER_SHAPES]
    cases += [(f"qkv    {m:<14} {hq}/{hk} x {hd}, D{d}", _qkv_forms(hq, hk, hd, d, bits))
              for m, hq, hk, hd, d, bits in QKV_SHAPES]
    cases.append(("conv   lfm2-8b-a1b    D2048 K3", _conv_forms(2048, 3)))
    cases.append(("rope   llama-3-8b     32 x 128, offset 517", _rope_forms(32, 128, 517)))
    for label, (fused, split) in cases:
        f, s = fused(), split()
        mx.eval(f, s)
        same = all(mx.array_equal(a, b).item() for a, b in zip(f, s, strict=True))
        line = [f"{label}  fused == split: {same}"]
        for name, fn in (("fused", fused), ("split", split)):
            for _ in range(calls):  # what ncu profiles
                mx.eval(fn())
            ts = []
            for _ in range(host_reps):
                t0 = time.perf_counter()
                mx.eval(fn())
                ts.append((time.perf_counter() - t0) * 1e6)
            line.append(f"{name} {statistics.median(ts):6.1f} us/call synced")
        print("  ".join(line), flush=True)


def summarize(path: str) -> None:
    from profile_decode import kernel_times  # this folder: the one reader of ncu's CSV

    by_name: dict[str, list[float]] = defaultdict(list)
    for kernel, us in kernel_times(path):
        by_name[kernel[:60]].append(us)
    print("| kernel | launches | median us |\n|---|---|---|")
    for name, vs in by_name.items():
        if "zmlx" not in name and "qmv" not in name and "rope" not in name:  # the inputs' set-up kernels
            continue
        print(f"| `{name}` | {len(vs)} | {statistics.median(vs):.2f} |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--calls", type=int, default=20, help="calls of each form per shape (what ncu sees)")
    p.add_argument("--host-reps", type=int, default=200)
    p.add_argument("--summarize", metavar="CSV", help="summarise an ncu --csv log instead of running")
    args = p.parse_args(argv)
    if args.summarize:
        try:
            summarize(args.summarize)
        except (KeyError, ValueError) as e:  # unreadable, or not an ncu --csv log
            print(f"fusion_cost: error: cannot summarize {args.summarize}: {e}", file=sys.stderr)
            return 2
    else:
        run(args.calls, args.host_reps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
