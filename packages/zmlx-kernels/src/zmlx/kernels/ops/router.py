"""MoE router projection and routing in one launch: ``routing(quantized_linear(x))`` at decode.

A family's MoE block computes ``logits = gate(x)`` with an 8-bit (mlx-lm's quant predicate) ``QuantizedLinear``,
then routes them. Stock that is MLX's ``qmv`` launch, then routing; with zmlx routing it is still two launches
per MoE layer. Here one threadgroup per token row computes the E logits with MLX's CUDA ``qmv`` arithmetic
(one warp per expert row: docs/notes-mlx-cuda-qmv.md, the recipe moe_experts_kernels.py's qmv kernels follow),
rounds them to the activations' dtype (``+ bias`` as its own rounding, as ``QuantizedLinear`` adds it), keeps them
in shared memory, and runs routing_kernels.py's body on them unchanged: selection order, softmax/sigmoid and sums
are the routing kernel's, so the result is bit-identical to ``routing_op(router(x))`` wherever MLX runs ``qmv``.

Kernel path: CUDA, bf16 activations/scales/biases, affine 4/8-bit, fewer than 8 rows (MLX's qmv range; a decode
step has one), and the routing kernel's range (E <= 512, k <= 16). Everything else computes ``router(x)`` as
``QuantizedLinear`` does and calls the routing op, so the op is ``routing(router(x))`` everywhere.

Measured on the H100 (docs/perf-notes.md v7): bit-exact, but one block reading the whole router is slower on the
device than MLX's qmv over many blocks plus the routing kernel, so zmlx-patch uses it only under
``patch(model, fuse_router=True)``.
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np

from ..backend import launch, target_for
from ..emit import KernelSpec, Param
from . import routing as R
from ._base import REF_TOLERANCE, CheckCase, OpInfo, RefCheck, as_float64
from ._qmv import qmv_rows, rows_per_warp
from .moe_experts import Quant, mlx_numerics
from .routing_kernels import _EXAMPLE, _HEADER, MAX_EXPERTS, MAX_K, MODES, _body

_MAX_THREADS = 256
VARIANTS = ("softmax_topk", "topk_softmax", "sigmoid_topk")
_REFS = {"softmax_topk": R.softmax_topk_reference, "topk_softmax": R.topk_softmax_reference,
         "sigmoid_topk": R.sigmoid_topk_reference}
_OPS = {"softmax_topk": R.softmax_topk, "topk_softmax": R.topk_softmax, "sigmoid_topk": R.sigmoid_topk}

# The routing body reads its logits row through `x`; here `x` is the shared row the projection below fills.
_LOGITS_LINE = "  const auto x = logits + size_t(row) * E;\n"

# Router projection (_qmv.py: MLX's qmv numerics per row), + bias as its own rounding, into a shared row.
_PROJECTION = """\
  ZM_SHARED T sh_logits[E];
  ZM_DEVICE const uint32_t* qmv_w = rw;
  ZM_DEVICE const T* qmv_s = rs;
  ZM_DEVICE const T* qmv_b = rb;
  const int qmv_kw = rw_shape[rw_ndim - 1];
  ZM_DEVICE const T* qmv_x = hidden + size_t(row) * size_t(qmv_kw * (32 / BITS));
  const int qmv_rows = E;
  const int qmv_row0 = 0;
""" + qmv_rows("if (HAS_RBIAS) g = zm_add_rn(g, rbias[e]);\n          sh_logits[e] = g;") + """\
  ZM_BARRIER();
  const auto x = sh_logits;
"""


def _router_body(mode: int) -> str:
    body = _body(mode)
    if body.count(_LOGITS_LINE) != 1:  # the routing body changed shape: fail at import, not with wrong results
        raise RuntimeError("routing body no longer reads its logits through one `x` line")
    body = body.replace("logits_ndim", "hidden_ndim").replace("logits_shape", "hidden_shape")
    return body.replace(_LOGITS_LINE, _PROJECTION)


def _spec(variant: str) -> KernelSpec:
    return KernelSpec(
        name=f"router_{variant}",
        inputs=(Param("hidden"), Param("rw", "uint32_t"), Param("rs"), Param("rb"), Param("rbias"),
                Param("bias", "float"), Param("params", "float")),
        outputs=(Param("inds", "uint32_t"), Param("weights", "W")),
        body=_router_body(MODES[variant]),
        header=_HEADER,
        templates=(*_EXAMPLE, ("A", "float"), ("BITS", 8), ("QGS", 64), ("HAS_RBIAS", False), ("R", 2)),
    )


SPECS: dict[str, KernelSpec] = {v: _spec(v) for v in VARIANTS}


# --- reference and op ---------------------------------------------------------------------------------------

def router_logits(x: mx.array, router: Quant, *, group_size: int, bits: int,
                  router_bias: mx.array | None = None) -> mx.array:
    """What ``nn.QuantizedLinear`` (affine) computes: quantized_matmul, then ``+ bias`` as its own op."""
    w, s, b = router
    y = mx.quantized_matmul(x, w, scales=s, biases=b, transpose=True, group_size=group_size, bits=bits)
    return y if router_bias is None else y + router_bias


def quantized_router_reference(x: mx.array, router: Quant, *, group_size: int, bits: int, variant: str, k: int,
                               router_bias: mx.array | None = None, **gating):
    logits = router_logits(x, router, group_size=group_size, bits=bits, router_bias=router_bias)
    return _REFS[variant](logits, k, **gating)


def _fits(x: mx.array, router: Quant, router_bias: mx.array | None, k: int, bits: int, group_size: int) -> bool:
    w, s, b = router
    experts, kdim = w.shape[0], x.shape[-1] if x.ndim else 0
    rows = x.size // kdim if kdim else 0
    return (w.ndim == 2 and x.dtype == mx.bfloat16 and s.dtype == mx.bfloat16 and b is not None
            and b.dtype == mx.bfloat16 and (router_bias is None or (router_bias.dtype == mx.bfloat16
                                                                   and router_bias.shape == (experts,)))
            and 1 <= k <= min(MAX_K, experts) and experts <= MAX_EXPERTS and kdim > group_size
            and w.shape[1] * 32 // bits == kdim and mlx_numerics(rows, experts, kdim, group_size, bits) == "qmv")


def quantized_router(x: mx.array, router: Quant, *, group_size: int, bits: int, variant: str, k: int,
                     router_bias: mx.array | None = None, stream: mx.Stream | None = None, **gating):
    """``routing_op(router(x), k, **gating)`` for an affine-quantized router ``(weight, scales, biases)``.

    ``variant`` names the routing op (``softmax_topk``, ``topk_softmax``, ``sigmoid_topk``) and ``gating`` its
    keyword arguments. Returns ``(inds, weights)`` exactly as that op would.
    """
    if variant not in VARIANTS:
        raise ValueError(f"quantized_router: variant must be one of {VARIANTS}, got {variant!r}")
    target = target_for(stream)
    if target != "cuda" or not _fits(x, router, router_bias, k, bits, group_size):
        # Metal's qmv sums in another order: there (and on the CPU) the projection stays MLX's own.
        logits = router_logits(x, router, group_size=group_size, bits=bits, router_bias=router_bias)
        op = _REFS[variant] if target == "cpu" else _OPS[variant]
        return op(logits, k, **gating)
    return _launch(variant, x, router, router_bias, k, group_size, bits, stream, **gating)


def _launch(variant, x, router, router_bias, k, group_size, bits, stream, **gating):
    inds, weights = launch(SPECS[variant], "cuda", **launch_args(variant, x, router, router_bias, k, group_size, bits,
                                                                 **gating), stream=stream)
    return inds, weights


def launch_args(variant, x, router, router_bias, k, group_size, bits, *, renormalize=True, neg_select=False,
                fp32=False, bias=None, eps=1e-6, scale=1.0, out_dtype=None) -> dict:
    """The router kernel's launch for these arguments (inputs, output shapes and dtypes, geometry, template):
    norm_router.py launches the same kernel with its add + norm in front."""
    # the same template arguments the routing op derives for logits of x's dtype (routing.py, _run's callers)
    dt = x.dtype
    if variant == "softmax_topk":
        args = dict(wdtype=dt, neg=neg_select, renorm=renormalize)
    elif variant == "topk_softmax":
        soft = mx.float32 if fp32 else dt
        args = dict(wdtype=soft, soft_dtype=soft, neg=neg_select)
    else:
        args = dict(wdtype=out_dtype or dt, neg=neg_select, renorm=renormalize, bias=bias, eps=eps, scale=scale)
    experts = router[0].shape[0]
    tmpl, tg, bias_in, params = R.plan(variant, "cuda", dt, experts, x.ndim == 1, k, **args)
    # one warp per expert row, up to 8 warps: at 1024 threads the launch fails on the H100 (register file:
    # "too many resources requested"), 256 leaves the compiler its 255 registers a thread
    tb = max(tg, min(_MAX_THREADS, 32 * experts))
    rpw = rows_per_warp(bits, experts, tb // 32)
    rows = x.size // x.shape[-1]
    out_shape = (*x.shape[:-1], k)
    has_rbias = router_bias is not None
    return dict(
        inputs=(x, *router, router_bias if has_rbias else router[1], bias_in, params),
        output_shapes=[out_shape, out_shape], output_dtypes=[mx.uint32, args["wdtype"]],
        threads=rows * tb, threadgroup=tb,
        template=[*tmpl, ("A", mx.float32 if bits == 8 else dt), ("BITS", bits), ("QGS", group_size),
                  ("HAS_RBIAS", has_rbias), ("R", rpw)],
    )


def kernel_specs():
    # catalogue names: the routing op's variant names are routing's own
    return {f"router_{v}": spec for v, spec in SPECS.items()}


# --- checks ----------------------------------------------------------------------------------------------------

# (variant, experts, k, hidden, group size, bits, router bias, rows, gating keyword arguments): the decode shapes of
# qwen3_moe (128 x 2048, top-8), lfm2_moe (32 x 2048, top-4), gpt_oss (32 x 2880, biased router), mixtral (8, top-2)
# and odd sizes (31, 33, 123 experts; hidden sizes with a tail step; 4-bit; three token rows).
CASES = (
    ("softmax_topk", 128, 8, 2048, 64, 8, False, 1, dict(renormalize=True)),
    ("sigmoid_topk", 32, 4, 2048, 64, 8, False, 1, dict(bias=True, renormalize=True, eps=1e-6, scale=2.5,
                                                          out_dtype=mx.bfloat16)),
    ("topk_softmax", 32, 4, 2880, 64, 8, True, 1, dict()),
    ("topk_softmax", 8, 2, 4096, 64, 8, False, 1, dict(neg_select=True)),
    ("softmax_topk", 123, 4, 320, 64, 8, False, 3, dict(renormalize=False, neg_select=True)),
    ("sigmoid_topk", 33, 3, 96, 32, 4, False, 1, dict(renormalize=False)),
    ("topk_softmax", 31, 4, 640, 128, 4, True, 3, dict(fp32=True)),
)


def make_case(experts: int, hidden: int, group_size: int, bits: int, rbias: bool, rows: int, key: mx.array,
              dtype: mx.Dtype = mx.bfloat16):
    """Token rows, a quantized router with some rows repeated (equal logits: ties the selection must break by
    index), and an optional router bias (equal where the rows are)."""
    k1, k2, k3 = mx.random.split(key, 3)
    x = mx.random.normal((1, rows, hidden), key=k1).astype(dtype)
    w = mx.random.normal((experts, hidden), key=k2) * 0.05
    src = mx.arange(experts)
    src = mx.where(src % 5 == 3, src - 1, src)  # every fifth row copies its neighbour
    w = w[src].astype(dtype)
    q = mx.quantize(w, group_size=group_size, bits=bits)
    b = (mx.random.normal((experts,), key=k3) * 0.1)[src].astype(dtype) if rbias else None
    return x, q, b


def _gating(variant: str, experts: int, kw: dict, key: mx.array) -> dict:
    kw = dict(kw)
    if kw.pop("bias", False):
        kw["bias"] = R.tied_logits((experts,), mx.float32, key, levels=8.0) / 4
    return kw


def check_cases(seed: int) -> list[CheckCase]:
    cases = []
    key = mx.random.key(seed)
    for variant, e, k, d, gs, bits, rbias, rows, kw0 in CASES:
        key, sub, kb = mx.random.split(key, 3)
        x, q, b = make_case(e, d, gs, bits, rbias, rows, sub)
        kw = dict(group_size=gs, bits=bits, variant=variant, k=k, router_bias=b, **_gating(variant, e, kw0, kb))
        cases.append(CheckCase(
            op="router", variant=f"{variant} E{e} k{k} D{d} g{gs} {bits}-bit{' +bias' if rbias else ''} x{rows}",
            dtype="bfloat16",
            kernel=lambda x=x, q=q, kw=kw: list(quantized_router(x, q, **kw)),
            reference=lambda x=x, q=q, kw=kw: list(quantized_router_reference(x, q, **kw)),
            exact=True,
        ))
    return cases


def reference_checks(seed: int) -> list[RefCheck]:
    """The reference's logits against float64 math on the dequantized router (relative to sum |x w| per logit);
    the routing after them is routing.py's reference, checked there."""
    out = []
    key = mx.random.key(seed)
    for dtype in (mx.float32, mx.bfloat16):  # mx.quantize takes float32/bf16/fp16 alike; fp16 adds nothing here
        for _, e, _, d, gs, bits, rbias, rows, _ in CASES[:4]:
            key, sub = mx.random.split(key)
            x, q, b = make_case(e, d, gs, bits, rbias, rows, sub, dtype)
            got = as_float64(router_logits(x, q, group_size=gs, bits=bits, router_bias=b))
            wd = as_float64(mx.dequantize(*q, group_size=gs, bits=bits))
            xd = as_float64(x)
            want = xd @ wd.T + (as_float64(b) if b is not None else 0.0)
            scale = np.abs(xd) @ np.abs(wd).T + 1e-3
            err = float(np.max(np.abs(got - want) / scale))
            out.append(RefCheck("router", f"logits E{e} D{d} {bits}-bit", str(dtype).removeprefix("mlx.core."),
                                err, REF_TOLERANCE[dtype]))
    return out


OP = OpInfo(
    name="router",
    summary="MoE router projection (affine-quantized qmv, MLX's CUDA numerics) + routing in one launch",
    variants=tuple(f"router_{v}" for v in VARIANTS),
    reference="zmlx.kernels.ops.router.quantized_router_reference",
    kernel_specs=kernel_specs,
    check_cases=check_cases,
    reference_checks=reference_checks,
)
