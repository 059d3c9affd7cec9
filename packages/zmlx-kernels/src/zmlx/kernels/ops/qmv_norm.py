"""Two or three projections of one RMS-normalised row at decode (a decoder layer's input norm and its q/k/v, or its
post-attention norm and a dense MLP's gate/up) in one launch: ``qmv_many(rms_norm(x, weight, eps), ws)``.

MLX runs the norm (``rms_norm``: one block a row, a fixed float summation order) and then the projections. Here
every warp of ``zk.qmv_many``'s launch first computes the row's sum of squares in MLX's order itself, its 32 lanes
standing in for the ``IBS`` threads of MLX's block (thread ``32 v + lane`` summing its chunks and reads in order,
then MLX's two-level warp sum; norms.py's ``RMS_SUM_OF_SQUARES``, GPU-exact in ``zk.add_rms_norm``), then
normalises each x value as it loads it (``w * T(x * inv)``, MLX's two roundings) and projects it as qmv does. The
row is re-read once per warp (it is a few KB, in L1). One launch and one array fewer; the same bits by
construction. Written without a GPU (2026-11-27): zmlx-patch uses it only under the measurement switch
``_layer.FOLD_NORMS`` until the GPU tests and a capsule say so.
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np

from ..backend import compiled, constant, launch, target_for
from ..emit import KernelSpec, Param
from ._base import REF_TOLERANCE, CheckCase, OpInfo, RefCheck, as_float64
from .moe_experts import Quant
from .norms import mlx_rms_layout
from .qmv import MANY_CASES, WARPS, QmvManyPlan, _many_args, fits, make_case, projection_error, qmv_many
from .qmv_kernels import CORE_HEAD, CORE_TAIL, LOADS, MANY, MATH, SPEC_MANY

_NORM = """\
  // the row's RMSNorm in MLX's rms_norm order: lane l stands in for MLX's threads 32 v + l, v < IBS / 32
  float inv;
  {
    float part[IBS / 32];
#pragma unroll
    for (int v = 0; v < IBS / 32; ++v) {
      float ss = 0.0f;
      for (int i = 0; i < ICH; ++i) {
        for (int j = 0; j < IRD; ++j) {
          const int e = (IBS * i + 32 * v + lane) * IRD + j;
          if (e < K) {
            const float t = static_cast<float>(xr[e]);
            ss += t * t;
          }
        }
      }
      part[v] = zm_simd_sum(ss);
    }
    float ss = 0.0f;  // MLX's second level: lane v < IBS / 32 holds warp v's sum
#pragma unroll
    for (int v = 0; v < IBS / 32; ++v) ss = lane == v ? part[v] : ss;
    ss = zm_simd_sum(ss);
    inv = zm_rsqrt(ss / float(K) + in_eps[0]);
  }
"""
_X_LOADS = "    const uint4 xa = zm_load16(xr + k0);\n    const uint4 xb = zm_load16(xr + k0 + 8);\n"
if LOADS.count(_X_LOADS) != 1:  # qmv's core changed shape: fail at import
    raise RuntimeError("qmv.py's step no longer loads x through its two xa / xb lines")
_LOOP = """\
#pragma unroll U
  for (int k0 = lane * 16; k0 < K; k0 += 512) {
""" + LOADS.replace(_X_LOADS, """\
    const uint4 xa = zm_rms8(zm_load16(xr + k0), zm_load16(in_w + k0), inv);
    const uint4 xb = zm_rms8(zm_load16(xr + k0 + 8), zm_load16(in_w + k0 + 8), inv);
""") + MATH + "  }\n"

SPEC = KernelSpec(
    name="qmv_many_norm",
    inputs=(SPEC_MANY.inputs[0], Param("in_w"), Param("in_eps", "float"), *SPEC_MANY.inputs[1:]),
    outputs=SPEC_MANY.outputs,
    body=MANY + CORE_HEAD + _NORM + _LOOP + CORE_TAIL,
    templates=(*SPEC_MANY.templates, ("IBS", 128), ("ICH", 4), ("IRD", 8)),
)


def qmv_many_norm_reference(x: mx.array, weight: mx.array, eps: float, ws: tuple[Quant, ...], *, group_size: int,
                            bits: int, biases: tuple[mx.array | None, ...] | None = None) -> tuple[mx.array, ...]:
    """The layer's ops: ``nn.RMSNorm`` (mx.fast.rms_norm), then each projection."""
    return qmv_many(mx.fast.rms_norm(x, weight, eps), ws, group_size=group_size, bits=bits, biases=biases)


def norm_fits(x: mx.array, weight: mx.array) -> bool:
    """A bf16 norm weight of the row's width (the kernel normalises in bf16, as MLX's rms_norm does for bf16 x)."""
    return weight.dtype == mx.bfloat16 and tuple(weight.shape) == (x.shape[-1],)


def qmv_many_norm(x: mx.array, weight: mx.array, eps: float, ws: tuple[Quant, ...], *, group_size: int, bits: int,
                  biases: tuple[mx.array | None, ...] | None = None,
                  stream: mx.Stream | None = None) -> tuple[mx.array, ...]:
    """``qmv_many(rms_norm(x, weight, eps), ws)``: one launch on CUDA at decode, every row computed as
    zk.qmv_many computes it from the normalised row MLX's rms_norm writes."""
    biases = biases if biases is not None else (None,) * len(ws)
    if (target_for(stream) != "cuda" or len(ws) not in (2, 3) or len(biases) != len(ws)
            or len({b is None for b in biases}) != 1 or not norm_fits(x, weight)
            or not all(fits(x, w, group_size, bits, b) for w, b in zip(ws, biases, strict=True))):
        return qmv_many_norm_reference(x, weight, eps, ws, group_size=group_size, bits=bits, biases=biases)
    inputs, template, rows = _many_args(ws, biases, group_size)
    outs = launch(
        SPEC, "cuda", inputs=(x, weight, constant((eps,)), *inputs),
        output_shapes=[(*x.shape[:-1], w[0].shape[0]) for w in ws] + [(1,)] * (3 - len(ws)),
        output_dtypes=[x.dtype] * 3, threads=-(-rows // WARPS) * WARPS * 32, threadgroup=WARPS * 32,
        blocks_y=x.size // x.shape[-1], template=template + _layout(x), stream=stream,
    )
    return tuple(outs[: len(ws)])


def _layout(x: mx.array) -> list[tuple[str, int]]:
    return list(zip(("IBS", "ICH", "IRD"), mlx_rms_layout(x.shape[-1], x.dtype), strict=True))


def plan_normed(plan: QmvManyPlan, x: mx.array, weight: mx.array, eps: float) -> tuple[mx.array, ...]:
    """``plan(rms_norm(x, weight, eps))`` with the plan's precomputed launch (zmlx-patch's project_normed)."""
    shape = x.shape
    if (plan.kernel is None or x.dtype != mx.bfloat16 or shape[-1] != plan.k or x.size >= 8 * plan.k
            or not norm_fits(x, weight) or mx.default_device().type != mx.DeviceType.gpu):
        return plan(mx.fast.rms_norm(x, weight, eps))
    outs = compiled(SPEC, "cuda")(
        inputs=[x, weight, constant((eps,)), *plan.inputs],
        output_shapes=[(*shape[:-1], n) for n in plan.n] + [(1,)] * (3 - len(plan.n)),
        output_dtypes=[mx.bfloat16] * 3, grid=(plan.grid, x.size // plan.k, 1), threadgroup=(WARPS * 32, 1, 1),
        template=plan.template + _layout(x))
    return tuple(outs[: len(plan.n)])


# --- checks ----------------------------------------------------------------------------------------------------

def check_cases(seed: int) -> list[CheckCase]:
    """qmv_many's cases (llama / qwen3 / gpt-oss q/k/v with a residue step, odd widths, several token rows), the
    row normalised first; weights with a tie pattern, x rows scaled apart so each row's norm differs."""
    cases = []
    for i, (ns, k, gs, rows, bias) in enumerate(MANY_CASES):
        x, _, _ = make_case(ns[0], k, gs, rows, False, mx.random.key(seed + 500 + i))
        x = (x * (mx.arange(1, rows + 1).reshape(1, rows, 1) * 3)).astype(mx.bfloat16)
        w = (1 + 0.1 * mx.random.normal((k,), key=mx.random.key(seed + 600 + i))).astype(mx.bfloat16)
        ws, bs = zip(*(make_case(n, k, gs, rows, bias, mx.random.key(seed + 700 + 3 * i + j))[1:]
                       for j, n in enumerate(ns)), strict=True)
        kw = dict(group_size=gs, bits=4, biases=bs)
        cases.append(CheckCase(
            "qmv_many_norm", f"{'+'.join(map(str, ns))}x{k}_g{gs}_m{rows}{'_bias' if bias else ''}", "bfloat16",
            kernel=lambda x=x, w=w, ws=ws, kw=kw: list(qmv_many_norm(x, w, 1e-5, ws, **kw)),
            reference=lambda x=x, w=w, ws=ws, kw=kw: list(qmv_many_norm_reference(x, w, 1e-5, ws, **kw)),
            exact=True))
    return cases


def reference_checks(seed: int) -> list[RefCheck]:
    """The reference is the layer's two ops; checked against the norm computed in float64 then projected."""
    out = []
    for i, (ns, k, gs, rows, bias) in enumerate(MANY_CASES[:2]):
        x, q, b = make_case(ns[0], k, gs, rows, bias, mx.random.key(seed + 800 + i))
        w = (1 + 0.1 * mx.random.normal((k,), key=mx.random.key(seed + 900 + i))).astype(mx.bfloat16)
        with mx.stream(mx.cpu):
            (got,) = qmv_many_norm_reference(x, w, 1e-5, (q, q), group_size=gs, bits=4, biases=(b, b))[:1]
        xd = as_float64(x)
        xn = xd / np.sqrt((xd**2).mean(-1, keepdims=True) + 1e-5) * as_float64(w)
        err = projection_error(mx.array(xn.astype(np.float32)), q, got, gs, 4, b)
        out.append(RefCheck("qmv_many_norm", f"{ns[0]}x{k}_m{rows}", "bfloat16", err, REF_TOLERANCE[mx.bfloat16]))
    return out


OP = OpInfo(
    name="qmv_many_norm",
    summary="a row's RMSNorm and two or three projections of it (input norm + q/k/v, post norm + gate/up) in one "
            "launch, MLX's rms_norm and qmv numerics",
    variants=("qmv_many_norm",),
    reference="zmlx.kernels.ops.qmv_norm.qmv_many_norm_reference",
    kernel_specs=lambda: {"qmv_many_norm": SPEC},
    check_cases=check_cases,
    reference_checks=reference_checks,
)
