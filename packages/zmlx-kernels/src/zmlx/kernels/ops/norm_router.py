"""A decoder layer's residual add, post-attention RMSNorm, MoE router projection and routing in one launch.

At decode a MoE layer runs ``h = x + r``, ``normed = rms_norm(h, w, eps)`` (two MLX launches, or one
``zk.add_rms_norm``), then ``routing(router(normed))`` (MLX's ``qmv`` and the routing kernel, or one
``zk.quantized_router``). Here the router kernel (router.py: one threadgroup per token row) first does the add and
the norm itself, with norms.py's arithmetic (``h`` rounded to the dtype, the float32 sum of squares in MLX's CUDA
``rms_norm`` order on the first ``BS`` threads, MLX's finish), writes ``h`` and ``normed`` out for the experts and
the residual, and projects ``normed`` re-read from its own writes. Every rounding is one the two fused ops already
reproduce, so the four outputs are bit-identical to ``add_rms_norm`` followed by ``quantized_router`` wherever
those are (CUDA; the sum needs MLX's thread count ``BS`` no larger than the block's).

Kernel path: the router kernel's (CUDA, bf16, affine, fewer than 8 rows), a norm weight in the activations'
dtype, and rows short enough for MLX's 64/128-thread ``rms_norm`` (a bf16 row up to 8192). Everything else runs
``zk.add_rms_norm`` then ``zk.quantized_router``. zmlx-patch uses it where both ``patch(residual_norm=...)``'s
pattern and ``fuse_router=True`` are asked for (one launch instead of two, or four stock). Bit-exact on the H100
(9282618), but one block reads the whole router: 41 us a qwen3 layer on the device (perf-notes v9), so opt-in.
"""

from __future__ import annotations

import mlx.core as mx

from ..backend import constant, launch, target_for
from ..emit import KernelSpec, Param
from . import router as RT
from ._base import REF_TOLERANCE, CheckCase, OpInfo, RefCheck, dtype_name
from .moe_experts import Quant
from .norms import (
    RMS_SUM_OF_SQUARES,
    add_rms_norm,
    add_rms_norm_error,
    add_rms_norm_reference,
    mlx_rms_layout,
)
from .routing_kernels import _HEADER

# the router body's reads are named after the routing kernel's templates; its NR (rows per thread) is not the
# norm's NR (reads per thread), so the norm's sum runs under the name NRD
_SUM = RMS_SUM_OF_SQUARES.replace("NR", "NRD")
_QMV_X = "  ZM_DEVICE const T* qmv_x = hidden + size_t(row) * size_t(qmv_kw * (32 / BITS));\n"

# h = hidden + resid and normed = rms_norm(h) on threads < BS (norms.py's _BODY, one row), then the projection
# reads normed back: the barrier orders the row's device writes before any thread of the block reads them
_ADD_NORM = """\
  ZM_SHARED float rms_partial[32];
  const int D = hidden_shape[hidden_ndim - 1];
  const size_t base = size_t(row) * size_t(D);
  ZM_DEVICE T* src = h_out + base;
  if (t < BS) {
    for (int i = 0; i < NCH; ++i) {
      for (int j = 0; j < NRD; ++j) {
        const int e = (BS * i + t) * NRD + j;
        if (e < D) src[e] = zm_add(hidden[base + e], resid[base + e]);
      }
    }
  }
""" + _SUM + """\
  const float inv = zm_rsqrt(ss / float(D) + neps[0]);
  if (t < BS) {
    for (int i = 0; i < NCH; ++i) {
      for (int j = 0; j < NRD; ++j) {
        const int e = (BS * i + t) * NRD + j;
        if (e < D) normed[base + e] = zm_mul(nw[e], static_cast<T>(static_cast<float>(src[e]) * inv));
      }
    }
  }
  ZM_DEVICE_BARRIER();
  ZM_DEVICE const T* qmv_x = normed + base;
"""


def _body(variant: str) -> str:
    body = RT.SPECS[variant].body
    if body.count(_QMV_X) != 1 or _SUM.count("NRD") != RMS_SUM_OF_SQUARES.count("NR"):
        raise RuntimeError("router / norm kernel bodies changed shape: update norm_router's splice")
    return body.replace(_QMV_X, _ADD_NORM)


def _spec(variant: str) -> KernelSpec:
    router = RT.SPECS[variant]
    return KernelSpec(
        name=f"norm_router_{variant}",
        inputs=(Param("hidden"), Param("resid"), Param("nw"), Param("neps", "float"), *router.inputs[1:]),
        outputs=(*router.outputs, Param("h_out"), Param("normed")),
        body=_body(variant),
        header=_HEADER,
        templates=(*router.templates, ("BS", 128), ("NCH", 2), ("NRD", 8)),
    )


SPECS: dict[str, KernelSpec] = {v: _spec(v) for v in RT.VARIANTS}


def add_norm_router_reference(x: mx.array, residual: mx.array, weight: mx.array, norm_eps: float, router: Quant, *,
                              group_size: int, bits: int, variant: str, k: int,
                              router_bias: mx.array | None = None, **gating):
    """``(h, normed, inds, weights)``: the layer's add and RMSNorm, then routing(router(normed))."""
    h, normed = add_rms_norm_reference(x, residual, weight, norm_eps)
    inds, weights = RT.quantized_router_reference(normed, router, group_size=group_size, bits=bits,
                                                  variant=variant, k=k, router_bias=router_bias, **gating)
    return h, normed, inds, weights


def add_norm_router(x: mx.array, residual: mx.array, weight: mx.array, norm_eps: float, router: Quant, *,
                    group_size: int, bits: int, variant: str, k: int, router_bias: mx.array | None = None,
                    stream: mx.Stream | None = None, **gating):
    """``h = x + residual``, ``normed = rms_norm(h, weight, norm_eps)``, ``inds, weights = routing(router(normed))``
    (``variant``/``gating`` as ``quantized_router`` takes them: sigmoid gating has an ``eps`` of its own).
    Returns ``(h, normed, inds, weights)``."""
    if variant not in RT.VARIANTS:
        raise ValueError(f"add_norm_router: variant must be one of {RT.VARIANTS}, got {variant!r}")
    if x.shape != residual.shape or x.dtype != residual.dtype:
        raise ValueError("add_norm_router: x and residual must share shape and dtype")
    args = fused_launch_args(x, residual, weight, router, router_bias, k, group_size, bits, variant, **gating) \
        if target_for(stream) == "cuda" else None
    if args is None:
        h, normed = add_rms_norm(x, residual, weight, norm_eps, stream=stream)
        inds, weights = RT.quantized_router(normed, router, group_size=group_size, bits=bits, variant=variant,
                                            k=k, router_bias=router_bias, stream=stream, **gating)
        return h, normed, inds, weights
    # the router's launch with the add + norm's inputs up front, its two outputs after, and MLX's norm layout
    inds, weights, h, normed = launch(
        SPECS[variant], "cuda", inputs=(x, residual, weight, constant((norm_eps,)), *args["inputs"][1:]),
        output_shapes=[*args["output_shapes"], x.shape, x.shape],
        output_dtypes=[*args["output_dtypes"], x.dtype, x.dtype], threads=args["threads"],
        threadgroup=args["threadgroup"], template=args["template"], stream=stream,
    )
    return h, normed, inds, weights


def fused_launch_args(x, residual, weight, router, router_bias, k, group_size, bits, variant, **gating):
    """The router kernel's launch arguments with MLX's rms_norm layout added (BS, NCH, NRD), or None where the
    one launch would not reproduce add_rms_norm + quantized_router: the router's own limits, a norm weight of
    another dtype or width, or MLX's rms_norm threads more than the router's block holds (rows past 8192 bf16)."""
    if weight.dtype != x.dtype or weight.shape != x.shape[-1:] or x.shape != residual.shape:
        return None
    if not RT._fits(x, router, router_bias, k, bits, group_size):
        return None
    args = RT.launch_args(variant, x, router, router_bias, k, group_size, bits, **gating)
    threads, chunks, reads = mlx_rms_layout(x.shape[-1], x.dtype)
    if threads > args["threadgroup"]:
        return None
    args["template"] = [*args["template"], ("BS", threads), ("NCH", chunks), ("NRD", reads)]
    return args


def kernel_specs():
    return {f"norm_router_{v}": spec for v, spec in SPECS.items()}


# --- checks ----------------------------------------------------------------------------------------------------

def _case_inputs(experts: int, hidden: int, group_size: int, bits: int, rbias: bool, rows: int, key: mx.array,
                 dtype: mx.Dtype = mx.bfloat16):
    """router.py's case (tied router rows), plus a residual and a norm weight: `h` is what gets routed."""
    k1, k2, k3 = mx.random.split(key, 3)
    x, q, b = RT.make_case(experts, hidden, group_size, bits, rbias, rows, k1, dtype)
    r = (3 * mx.random.normal(x.shape, key=k2)).astype(dtype)
    w = (1 + 0.1 * mx.random.normal((hidden,), key=k3)).astype(dtype)
    return x, r, w, q, b


def check_cases(seed: int) -> list[CheckCase]:
    cases = []
    key = mx.random.key(seed)
    for variant, e, k, d, gs, bits, rbias, rows, kw0 in RT.CASES:
        key, sub, kb = mx.random.split(key, 3)
        x, r, w, q, b = _case_inputs(e, d, gs, bits, rbias, rows, sub)
        kw = dict(group_size=gs, bits=bits, variant=variant, k=k, router_bias=b, **RT._gating(variant, e, kw0, kb))
        cases.append(CheckCase(
            op="norm_router", variant=f"{variant} E{e} k{k} D{d} g{gs} {bits}-bit{' +bias' if rbias else ''} x{rows}",
            dtype="bfloat16",
            kernel=lambda x=x, r=r, w=w, q=q, kw=kw: list(add_norm_router(x, r, w, 1e-6, q, **kw)),
            reference=lambda x=x, r=r, w=w, q=q, kw=kw: list(add_norm_router_reference(x, r, w, 1e-6, q, **kw)),
            exact=True,
        ))
    return cases


def reference_checks(seed: int) -> list[RefCheck]:
    """h and normed against float64 math (norms.py checks the same two ops; the routing after them is router.py's
    reference, checked there)."""
    out = []
    key = mx.random.key(seed)
    for dtype in (mx.float32, mx.bfloat16):
        key, sub = mx.random.split(key)
        x, r, w, q, b = _case_inputs(32, 320, 64, 8, False, 3, sub, dtype)
        h, normed, _, _ = add_norm_router_reference(x, r, w, 1e-5, q, group_size=64, bits=8,
                                                    variant="softmax_topk", k=4, renormalize=True)
        out.append(RefCheck("norm_router", "h, normed", dtype_name(dtype),
                            add_rms_norm_error(x, r, w, 1e-5, h, normed), REF_TOLERANCE[dtype]))
    return out


OP = OpInfo(
    name="norm_router",
    summary="residual add + RMSNorm + MoE router projection + routing in one launch (decode, CUDA)",
    variants=tuple(f"norm_router_{v}" for v in RT.VARIANTS),
    reference="zmlx.kernels.ops.norm_router.add_norm_router_reference",
    kernel_specs=kernel_specs,
    check_cases=check_cases,
    reference_checks=reference_checks,
)
