"""A quantized projection and the residual add it feeds, at decode: ``residual + (x @ dequantize(w).T (+ bias))``.

A pre-norm decoder layer adds each block's last projection to its residual stream (``h = x + o_proj(a)``,
``out = h + down_proj(m)``); MLX runs the projection (``qmv`` at decode) and the add as two launches. This is
``zk.qmv``'s core (qmv.py, bit-identical to MLX's qmv) with the add as its last rounding: ``zm_add_rn`` of two bf16
values, one rounding of their exact sum, as MLX's add and as the fused MoE down+combine's residual epilogue (GPU-exact
since 4664f0c). One launch and one intermediate array fewer a block. Written without a GPU (2026-11-27): zmlx-patch
uses it only under the measurement switch ``_layer.FOLD_PROJECTIONS`` until the GPU tests and a capsule say so.
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np

from ..backend import launch, target_for
from ..emit import KernelSpec, Param
from ._base import REF_TOLERANCE, CheckCase, OpInfo, RefCheck, as_float64
from .moe_experts import Quant
from .qmv import fits, geometry, make_case, qmv_reference
from .qmv_kernels import CORE, ONE

_OUT_LINE = "      outq[size_t(m) * size_t(N) + size_t(row0 + r)] = g;\n"
if CORE.count(_OUT_LINE) != 1:  # qmv's core changed shape: fail at import
    raise RuntimeError("qmv.py's core no longer writes out through one line")
_BODY = ONE + CORE.replace(
    _OUT_LINE, "      outq[size_t(m) * size_t(N) + size_t(row0 + r)] = zm_add_rn(res[size_t(m) * size_t(N) + "
               "size_t(row0 + r)], g);\n")

SPEC = KernelSpec(
    name="qmv_residual",
    inputs=(Param("x"), Param("w", "uint32_t"), Param("s"), Param("b"), Param("bias"), Param("res")),
    outputs=(Param("out"),),
    body=_BODY,
    templates=(("T", "float"), ("QGS", 64), ("R", 1), ("U", 4), ("HAS_BIAS", False)),
)


def qmv_residual_reference(x: mx.array, w: Quant, residual: mx.array, *, group_size: int, bits: int,
                           bias: mx.array | None = None) -> mx.array:
    """The layer's two ops: QuantizedLinear (quantized_matmul, + bias), then ``residual +`` it."""
    return residual + qmv_reference(x, w, group_size=group_size, bits=bits, bias=bias)


def residual_fits(x: mx.array, w: Quant, residual: mx.array, group_size: int, bits: int,
                  bias: mx.array | None = None) -> bool:
    """zk.qmv's kernel path, and a bf16 residual of exactly the output's shape (no broadcast, no promotion)."""
    return (fits(x, w, group_size, bits, bias) and residual.dtype == mx.bfloat16
            and tuple(residual.shape) == (*x.shape[:-1], w[0].shape[0]))


def qmv_residual(x: mx.array, w: Quant, residual: mx.array, *, group_size: int, bits: int,
                 bias: mx.array | None = None, stream: mx.Stream | None = None) -> mx.array:
    """``residual + QuantizedLinear(x)`` on every device; on CUDA at decode one launch in MLX's qmv arithmetic."""
    if target_for(stream) != "cuda" or not residual_fits(x, w, residual, group_size, bits, bias):
        return qmv_residual_reference(x, w, residual, group_size=group_size, bits=bits, bias=bias)
    n, k = w[0].shape[0], x.shape[-1]
    r, warps = geometry(n)
    (out,) = launch(
        SPEC, "cuda", inputs=(x, *w, bias if bias is not None else w[1], residual),
        output_shapes=[residual.shape], output_dtypes=[x.dtype], threads=-(-n // (r * warps)) * warps * 32,
        threadgroup=warps * 32, blocks_y=x.size // k,
        template=[("T", x.dtype), ("QGS", group_size), ("R", r), ("U", 4), ("HAS_BIAS", bias is not None)],
        stream=stream,
    )
    return out


# --- checks ----------------------------------------------------------------------------------------------------

# (rows N, K, group size, token rows, bias): llama's o_proj and down at decode, gpt-oss's residue step with a bias,
# odd row counts, several token rows, g32 / g128; residuals with exact cancellations (-y) and ties
CASES = (
    (4096, 4096, 64, 1, False),
    (4096, 14336, 64, 1, False),
    (2880, 2880, 64, 1, True),
    (123, 576, 32, 3, False),
    (33, 1152, 128, 7, True),
)


def _residual(x, q, b, gs, key):
    y = qmv_reference(x, q, group_size=gs, bits=4, bias=b)
    r = (mx.random.normal(y.shape, key=key) * 4).astype(mx.bfloat16)
    return mx.where(mx.arange(y.shape[-1]) % 7 == 0, -y, r)  # some sums exactly zero


def check_cases(seed: int) -> list[CheckCase]:
    cases = []
    for i, (n, k, gs, rows, bias) in enumerate(CASES):
        x, q, b = make_case(n, k, gs, rows, bias, mx.random.key(seed + 300 + i))
        res = _residual(x, q, b, gs, mx.random.key(seed + 400 + i))
        cases.append(CheckCase(
            "qmv_residual", f"{n}x{k}_g{gs}_m{rows}{'_bias' if bias else ''}", "bfloat16",
            kernel=lambda x=x, q=q, b=b, r=res, gs=gs: [qmv_residual(x, q, r, group_size=gs, bits=4, bias=b)],
            reference=lambda x=x, q=q, b=b, r=res, gs=gs: [
                qmv_residual_reference(x, q, r, group_size=gs, bits=4, bias=b)],
            exact=True))
    return cases


def reference_checks(seed: int) -> list[RefCheck]:
    """The reference against float64 math: ``residual + x @ dequantize(w).T + bias``, relative to the magnitudes
    summed (a few bf16 roundings: the K-term sum, the bias, the add)."""
    out = []
    for i, (n, k, gs, rows, bias) in enumerate(CASES[3:]):
        x, q, b = make_case(n, k, gs, rows, bias, mx.random.key(seed + 300 + i))
        res = _residual(x, q, b, gs, mx.random.key(seed + 400 + i))
        with mx.stream(mx.cpu):
            got = qmv_residual_reference(x, q, res, group_size=gs, bits=4, bias=b)
        wd = as_float64(mx.dequantize(*q, group_size=gs, bits=4))
        xd, rd = as_float64(x).reshape(-1, k), as_float64(res).reshape(-1, n)
        bd = 0.0 if b is None else as_float64(b)
        want = rd + xd @ wd.T + bd
        scale = np.abs(rd) + np.abs(xd) @ np.abs(wd).T + np.abs(bd) + 1e-3
        err = float(np.max(np.abs(as_float64(got).reshape(want.shape) - want) / scale))
        out.append(RefCheck("qmv_residual", f"{n}x{k}_g{gs}_m{rows}", "bfloat16", err, REF_TOLERANCE[mx.bfloat16]))
    return out


OP = OpInfo(
    name="qmv_residual",
    summary="a quantized projection plus the residual add it feeds (o_proj, down_proj at decode), one launch in "
            "MLX's qmv numerics",
    variants=("qmv_residual",),
    reference="zmlx.kernels.ops.qmv_residual.qmv_residual_reference",
    kernel_specs=lambda: {"qmv_residual": SPEC},
    check_cases=check_cases,
    reference_checks=reference_checks,
)
