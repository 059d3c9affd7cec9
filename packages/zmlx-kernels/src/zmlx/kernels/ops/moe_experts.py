"""Fused quantized expert MLPs at decode: ``gate+up+activation`` and ``down+combine``, two launches per MoE block.

References are exactly what mlx-lm's ``SwitchGLU`` (and a dense quantized MLP) computes for one token:
``gather_qmm`` for up, then gate (+ expert bias where the family has one), the activation, ``gather_qmm`` for
down, then the family's combine. The kernels (moe_experts_kernels.py) reproduce MLX's CUDA arithmetic for the
same calls, choosing ``qmv`` or ``mma`` numerics exactly where MLX would choose gather_qmv or qmm_sm80, so on CUDA
the outputs are bit-identical. Anything outside what a kernel mirrors (other dtypes, shapes MLX sends to
qmm_naive, more than one token) runs the reference.
"""

from __future__ import annotations

import math

import mlx.core as mx
import numpy as np

from ..backend import constant, launch, target_for
from ._base import CheckCase, OpInfo, RefCheck
from .activations import geglu_reference, swiglu_oai_reference, swiglu_reference
from .combine import _promote, moe_combine_reference
from .moe_experts_kernels import ACTIVATIONS, SPECS

Quant = tuple[mx.array, mx.array, mx.array]  # (packed weights [E, N, K*bits/32], scales, biases)


def _activate(act: str, gate: mx.array, up: mx.array, alpha: float, limit: float) -> mx.array:
    if act == "swiglu":
        return swiglu_reference(gate, up)
    if act == "swiglu_oai":
        return swiglu_oai_reference(gate, up, alpha, limit)
    return geglu_reference(gate, up, approximate=act == "geglu_tanh")


def _gather(x: mx.array, q: Quant, idx: mx.array, group_size: int, bits: int, bias: mx.array | None) -> mx.array:
    # mlx-lm QuantizedSwitchLinear: gather_qmm, then + bias[indices] as its own op
    y = mx.gather_qmm(x, q[0], q[1], q[2], rhs_indices=idx, transpose=True, group_size=group_size, bits=bits)
    return y if bias is None else y + mx.expand_dims(bias[idx], -2)


def moe_gate_up_reference(x, indices, gate: Quant, up: Quant, *, group_size, bits, activation,
                          gate_bias=None, up_bias=None, alpha=1.702, limit=7.0) -> mx.array:
    k = indices.size
    xe = x.reshape(1, 1, 1, 1, x.shape[-1])  # SwitchGLU: expand_dims(x, (-2, -3)) of a [1, 1, D] token
    idx = indices.reshape(1, 1, k)
    x_up = _gather(xe, up, idx, group_size, bits, up_bias)
    x_gate = _gather(xe, gate, idx, group_size, bits, gate_bias)
    return _activate(activation, x_gate, x_up, alpha, limit).reshape(k, -1)


def moe_down_combine_reference(h, indices, down: Quant, scores, *, group_size, bits, fp32, down_bias=None,
                               residual=None):
    k = indices.size
    idx = indices.reshape(1, 1, k)
    y = _gather(h.reshape(1, 1, k, 1, h.shape[-1]), down, idx, group_size, bits, down_bias).squeeze(-2)
    y = moe_combine_reference(y, scores.reshape(1, 1, k), fp32=fp32).reshape(-1)
    return y if residual is None else residual.reshape(-1) + y  # the decoder layer's `h + moe(x)`


def mlx_numerics(rows: int, n: int, k: int, group_size: int, bits: int) -> str | None:
    """Which MLX CUDA kernel a gather_qmm / quantized_matmul of ``rows`` = tokens x top_k rows runs, as numerics."""
    if bits not in (4, 8) or k % 16 or k % group_size:
        return None
    if rows < 8:
        return "qmv"
    if n % 128 == 0 and k % max(64, group_size) == 0:
        return "mma"
    return None  # qmm_naive: not mirrored


def _dummy(dtype: mx.Dtype) -> mx.array:
    return constant((0,), dtype)  # stands in for an absent bias (the kernel never reads it)


def dense_gate_up_reference(x, gate: Quant, up: Quant, *, group_size, bits, activation, alpha=1.702, limit=7.0):
    # a dense MLP's two QuantizedLinear calls (gate first, as mlx-lm writes it), then the activation
    def qmm(q):
        return mx.quantized_matmul(x, q[0], q[1], q[2], transpose=True, group_size=group_size, bits=bits)

    g = qmm(gate)
    return _activate(activation, g, qmm(up), alpha, limit)


def dense_gate_up(x: mx.array, gate: Quant, up: Quant, *, group_size: int, bits: int, activation: str = "swiglu",
                  alpha: float = 1.702, limit: float = 7.0, qmv_core: bool = True, q4_form: str = "batch",
                  stream: mx.Stream | None = None) -> mx.array:
    """``act(gate(x), up(x))`` of a dense quantized MLP for one token, shaped like ``x`` with ``N`` columns.

    MLX runs a one-token quantized_matmul as qmv, the same arithmetic as gather_qmv: one fused launch replaces
    the two projections and the activation.
    """
    n = gate[0].shape[-2]
    if (target_for(stream) != "cuda" or x.size != x.shape[-1] or not _fusable(x, (gate, up))
            or mlx_numerics(1, n, x.shape[-1], group_size, bits) != "qmv"):
        return dense_gate_up_reference(x, gate, up, group_size=group_size, bits=bits, activation=activation,
                                       alpha=alpha, limit=limit)
    return moe_gate_up(x, constant((0,), mx.uint32), gate, up, group_size=group_size, bits=bits, activation=activation,
                       alpha=alpha, limit=limit, out_shape=(*x.shape[:-1], n), qmv_core=qmv_core, q4_form=q4_form,
                       stream=stream)


def _fusable(x: mx.array, qs: tuple[Quant, ...]) -> bool:
    return x.dtype == mx.bfloat16 and all(q[1].dtype == mx.bfloat16 and q[2] is not None for q in qs)


def moe_gate_up(x: mx.array, indices: mx.array, gate: Quant, up: Quant, *, group_size: int, bits: int,
                activation: str = "swiglu", gate_bias: mx.array | None = None, up_bias: mx.array | None = None,
                alpha: float = 1.702, limit: float = 7.0, out_shape: tuple[int, ...] | None = None,
                qmv_core: bool = True, q4_form: str = "batch", stream: mx.Stream | None = None) -> mx.array:
    """Activation of the gate and up projections of the ``k`` experts in ``indices`` for one token: ``[k, N]``.

    ``out_shape`` (same size) names the result's shape directly: every reshape is a graph node on the decode path.
    ``qmv_core`` (default on): 4-bit launches in MLX's qmv numerics take moe_experts_q4.py's kernel (zk.qmv's launch
    shape and packed dequantisation, the same results; on an H100 1.6-2.3x less time a call than the one-block-a-row
    kernel, docs/profiles/20261127_h100_session7_qmv_core.md); False keeps that kernel; 8-bit and mma launches are
    unaffected. ``q4_form``:
    that kernel's loop, ``"batch"`` (default: every unrolled step's loads first; 1.3-1.5x less device time a launch
    on an H100, perf-notes v12) or ``"step"`` (zk.qmv's), the same results.
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    target = target_for(stream)
    k = indices.size
    n, kdim = gate[0].shape[-2], x.shape[-1]
    numerics = mlx_numerics(k, n, kdim, group_size, bits)
    if target != "cuda" or numerics is None or x.size != kdim or not _fusable(x, (gate, up)):
        # Metal kernels are emitted and syntax-checked but their numerics are not MLX's Metal qmv: reference there.
        h = moe_gate_up_reference(x, indices, gate, up, group_size=group_size, bits=bits, activation=activation,
                                  gate_bias=gate_bias, up_bias=up_bias, alpha=alpha, limit=limit)
        return h if out_shape is None else h.reshape(out_shape)
    has_bias = gate_bias is not None
    # the kernels index flat memory: inputs go in with their own (row-contiguous) shapes, no reshape nodes
    inputs = (x, indices if indices.dtype == mx.uint32 else indices.astype(mx.uint32), *gate, *up,
              gate_bias if has_bias else _dummy(x.dtype), up_bias if has_bias else _dummy(x.dtype),
              constant((alpha, limit)))
    if qmv_core and numerics == "qmv" and bits == 4:
        from . import moe_experts_q4 as q4  # it builds on qmv.py, which imports this module

        return launch(
            q4.SPECS[f"gate_up_q4_{activation}" + q4.suffix(q4_form)], target, inputs=inputs,
            output_shapes=[out_shape or (k, n)], output_dtypes=[x.dtype], threads=-(-n // q4.WARPS) * q4.WARPS * 32,
            threadgroup=q4.WARPS * 32, blocks_y=k,
            template=[("T", x.dtype), ("GS", group_size), ("U", 4), ("HAS_BIAS", has_bias), ("X_PER_EXPERT", False)],
            stream=stream,
        )[0]
    warps = 8 if numerics == "qmv" else 4
    rows_per_block = warps if numerics == "qmv" else warps * 8
    blocks = -(-n // rows_per_block)
    return launch(
        SPECS[f"gate_up_{numerics}_{activation}"], target, inputs=inputs,
        output_shapes=[out_shape or (k, n)], output_dtypes=[x.dtype], threads=blocks * warps * 32,
        threadgroup=warps * 32,
        blocks_y=k,
        template=[("T", x.dtype), ("A", mx.float32 if bits == 8 else x.dtype), ("BITS", bits),
                  ("GS", group_size), ("HAS_BIAS", has_bias), ("X_PER_EXPERT", False)],
        stream=stream,
    )[0]


def moe_down_combine(h: mx.array, indices: mx.array, down: Quant, scores: mx.array, *, group_size: int,
                     bits: int, fp32: bool, down_bias: mx.array | None = None, residual: mx.array | None = None,
                     out_shape: tuple[int, ...] | None = None, qmv_core: bool = True, q4_form: str = "batch",
                     stream: mx.Stream | None = None) -> mx.array:
    """Down projection of each expert's ``h`` row, then the family's weighted combine in routing order: ``[D]``
    (or ``out_shape``, same size). ``residual`` (``[D]`` values, the combine's dtype) is added last, rounded
    once, as a decoder layer's ``h + moe(x)``. ``qmv_core`` and ``q4_form`` as in ``moe_gate_up``: one warp per
    output row over all k slots (moe_experts_q4.py)."""
    target = target_for(stream)
    k = indices.size
    n, kdim = down[0].shape[-2], h.shape[-1]
    numerics = mlx_numerics(k, n, kdim, group_size, bits)
    p = _promote(h.dtype, scores.dtype)
    out_dtype = h.dtype if fp32 else p
    if residual is not None and (residual.size != n or residual.dtype != out_dtype):
        raise ValueError(f"moe_down_combine: residual must be {n} values of {out_dtype}, got {residual.shape} "
                         f"{residual.dtype}")
    # k <= 16: the mma kernel stages k x 2 KB of weights in static shared memory
    if target != "cuda" or numerics is None or h.shape[0] != k or not _fusable(h, (down,)) or k > 16:
        y = moe_down_combine_reference(h, indices, down, scores, group_size=group_size, bits=bits, fp32=fp32,
                                       down_bias=down_bias, residual=residual)
        return y if out_shape is None else y.reshape(out_shape)
    inputs = (h, indices if indices.dtype == mx.uint32 else indices.astype(mx.uint32), *down,
              down_bias if down_bias is not None else _dummy(h.dtype), scores,
              residual if residual is not None else _dummy(out_dtype))
    if qmv_core and numerics == "qmv" and bits == 4:
        from . import moe_experts_q4 as q4

        return launch(
            q4.SPECS["down_combine_q4" + q4.suffix(q4_form)], target, inputs=inputs, output_shapes=[out_shape or (n,)],
            output_dtypes=[out_dtype], threads=-(-n // q4.WARPS) * q4.WARPS * 32, threadgroup=q4.WARPS * 32,
            template=[("T", h.dtype), ("P", p), ("O", out_dtype), ("GS", group_size), ("KTOP", k),
                      ("U", q4.down_unroll(q4_form, k)),
                      ("HAS_BIAS", down_bias is not None), ("HAS_RES", residual is not None)],
            stream=stream,
        )[0]
    blocks = n if numerics == "qmv" else -(-n // 8)
    return launch(
        SPECS[f"down_combine_{numerics}"], target, inputs=inputs,
        output_shapes=[out_shape or (n,)], output_dtypes=[out_dtype], threads=blocks * k * 32, threadgroup=k * 32,
        template=[("T", h.dtype), ("A", mx.float32 if bits == 8 else h.dtype), ("P", p), ("O", out_dtype),
                  ("BITS", bits), ("GS", group_size), ("KTOP", k), ("HAS_BIAS", down_bias is not None),
                  ("HAS_RES", residual is not None)],
        stream=stream,
    )[0]


# --- checks -----------------------------------------------------------------------------------------------

# (name, experts E, top k, hidden D, intermediate I, group size, bits, activation, expert biases)
CASES = (
    ("qmv top4 D320 (k tail)", 8, 4, 320, 256, 64, 4, "swiglu", False),
    ("qmv top2 8-bit", 8, 2, 256, 128, 64, 8, "swiglu", False),
    ("qmv top4 g32 oai+bias", 8, 4, 384, 256, 32, 4, "swiglu_oai", True),
    ("qmv top1 g128 gelu", 4, 1, 256, 128, 128, 4, "geglu_tanh", False),
    ("qmv top3 E33 (odd slots, experts)", 33, 3, 192, 320, 64, 4, "swiglu", False),
    ("qmv top7 E31 g32", 31, 7, 256, 128, 32, 4, "geglu_erf", False),
    ("mma top8", 16, 8, 256, 128, 64, 4, "swiglu", False),
    ("mma top8 g128 8-bit", 8, 8, 512, 256, 128, 8, "swiglu", False),
    ("mma top8 oai+bias", 16, 8, 256, 128, 64, 4, "swiglu_oai", True),
    # top-k > 8: the down kernel's narrower chunks (CW = 32 words), with a tail chunk and 8-bit g32
    ("mma top10 8-bit g32", 16, 10, 256, 256, 32, 8, "swiglu", False),
    ("mma top16 (tail chunk)", 32, 16, 256, 384, 64, 4, "swiglu", False),
)


def make_case(e, k, d, i, gs, bits, bias, key, dtype=mx.bfloat16):
    keys = mx.random.split(key, 9)

    def quant(n, kk, key):
        w = (mx.random.normal((e, n, kk), key=key) * 0.05).astype(dtype)
        return mx.quantize(w, group_size=gs, bits=bits)

    x = mx.random.normal((d,), key=keys[0]).astype(dtype)
    inds = mx.random.permutation(e, key=keys[1])[:k].astype(mx.uint32)
    scores = mx.softmax(mx.random.normal((k,), key=keys[2])).astype(dtype)
    gate, up, down = quant(i, d, keys[3]), quant(i, d, keys[4]), quant(d, i, keys[5])
    biases = tuple((mx.random.normal((e, n), key=kk) * 0.1).astype(dtype)
                   for n, kk in ((i, keys[6]), (i, keys[7]), (d, keys[8]))) if bias else (None, None, None)
    return x, inds, scores, gate, up, down, biases


def check_cases(seed: int) -> list[CheckCase]:
    cases = []
    key = mx.random.key(seed)
    for name, e, k, d, i, gs, bits, act, bias in CASES:
        key, sub = mx.random.split(key)
        x, inds, scores, gate, up, down, (gb, ub, db) = make_case(e, k, d, i, gs, bits, bias, sub)
        h_ref = moe_gate_up_reference(x, inds, gate, up, activation=act, gate_bias=gb, up_bias=ub, group_size=gs,
                                      bits=bits)
        # 4-bit qmv-numerics cases also run on zk.qmv's core (moe_experts_q4.py), which must give the same bits
        forms = ((False, "step"), (True, "step"), (True, "batch")) if bits == 4 and k < 8 else ((False, "step"),)
        for core, form in forms:
            kw = dict(group_size=gs, bits=bits, qmv_core=core, q4_form=form)
            tag = (" qmv_core" if core else "") + (" batch" if form == "batch" else "")
            cases.append(CheckCase(
                op="moe_experts", variant=f"gate_up {name}{tag}", dtype="bfloat16",
                kernel=lambda x=x, inds=inds, g=gate, u=up, a=act, gb=gb, ub=ub, kw=kw: [
                    moe_gate_up(x, inds, g, u, activation=a, gate_bias=gb, up_bias=ub, **kw)],
                reference=lambda h=h_ref: [h], exact=True))
            cases += _down_cases(name + tag, x, d, h_ref, inds, scores, down, db, kw)
    return cases


def _down_cases(name, x, d, h_ref, inds, scores, down, db, kw) -> list[CheckCase]:
    cases = []
    ref_kw = {k: v for k, v in kw.items() if k not in ("qmv_core", "q4_form")}
    # the residual epilogue on the fp32 combine (the output stays in x's dtype), residual with ties to x
    res = mx.where(mx.arange(d) % 5 == 0, x, -x).astype(mx.bfloat16)
    for fp32, sc, r in ((False, scores, None), (True, scores.astype(mx.float32), None),
                        (True, scores.astype(mx.float32), res)):
        cases.append(CheckCase(
            op="moe_experts", variant=f"down_combine {name} fp32={fp32}{' +residual' if r is not None else ''}",
            dtype="bfloat16",
            kernel=lambda h=h_ref, inds=inds, dn=down, sc=sc, f=fp32, db=db, kw=kw, r=r: [
                moe_down_combine(h, inds, dn, sc, fp32=f, down_bias=db, residual=r, **kw)],
            reference=lambda h=h_ref, inds=inds, dn=down, sc=sc, f=fp32, db=db, kw=ref_kw, r=r: [
                moe_down_combine_reference(h, inds, dn, sc, fp32=f, down_bias=db, residual=r, **kw)],
            exact=True))
    return cases


DENSE_CASES = (("dense swiglu D4096->1024", 4096, 1024, 64, 4, "swiglu"),
               ("dense gelu D320 g32", 320, 384, 32, 4, "geglu_tanh"),
               ("dense swiglu 8-bit", 512, 256, 64, 8, "swiglu"))


def dense_check_cases(seed: int) -> list[CheckCase]:
    cases = []
    key = mx.random.key(seed)
    for name, d, n, gs, bits, act in DENSE_CASES:
        key, k1, k2, k3 = mx.random.split(key, 4)
        x = mx.random.normal((1, 1, d), key=k1).astype(mx.bfloat16)
        gate, up = (mx.quantize((mx.random.normal((n, d), key=kk) * 0.05).astype(mx.bfloat16), gs, bits)
                    for kk in (k2, k3))
        kw = dict(group_size=gs, bits=bits, activation=act)
        for core, form in ((False, "step"), (True, "step"), (True, "batch")) if bits == 4 else ((False, "step"),):
            cases.append(CheckCase(
                op="moe_experts", variant=name + (" qmv_core" if core else "") + (" batch" if form == "batch" else ""),
                dtype="bfloat16",
                kernel=lambda x=x, g=gate, u=up, kw=kw, core=core, form=form: [
                    dense_gate_up(x, g, u, qmv_core=core, q4_form=form, **kw)],
                reference=lambda x=x, g=gate, u=up, kw=kw: [dense_gate_up_reference(x, g, u, **kw)], exact=True))
    return cases


def reference_checks(seed: int) -> list[RefCheck]:
    """The composed reference against float64 math on the dequantized weights (relative to the output RMS).

    In float32: with bf16 activations MLX's quantized matmuls accumulate in bf16 (errors of several percent over a
    few hundred terms are MLX's own), which would hide a wrong composition.
    """
    out = []
    key = mx.random.key(seed)
    for name, e, k, d, i, gs, bits, act, bias in CASES:
        key, sub = mx.random.split(key)
        x, inds, scores, gate, up, down, (gb, ub, db) = make_case(e, k, d, i, gs, bits, bias, sub, mx.float32)
        kw = dict(group_size=gs, bits=bits)
        h = moe_gate_up_reference(x, inds, gate, up, activation=act, gate_bias=gb, up_bias=ub, **kw)
        y = moe_down_combine_reference(h, inds, down, scores, fp32=True, down_bias=db, **kw)

        def f64(a):
            return np.array(a.astype(mx.float32), dtype=np.float64)

        def deq(q, gs=gs, bits=bits):
            return f64(mx.dequantize(q[0], q[1], q[2], group_size=gs, bits=bits))

        sel = np.array(inds).astype(np.int64)
        xg = deq(gate)[sel] @ f64(x) + (f64(gb)[sel] if bias else 0)
        xu = deq(up)[sel] @ f64(x) + (f64(ub)[sel] if bias else 0)
        if act == "swiglu":
            h64 = xg / (1 + np.exp(-xg)) * xu
        elif act == "swiglu_oai":
            gm = np.minimum(xg, 7.0)
            h64 = (np.clip(xu, -7, 7) + 1) * gm / (1 + np.exp(-1.702 * gm))
        elif act == "geglu_erf":
            h64 = 0.5 * xg * (1 + np.vectorize(math.erf)(xg / np.sqrt(2))) * xu
        else:
            h64 = 0.5 * xg * (1 + np.tanh(np.sqrt(2 / np.pi) * (xg + 0.044715 * xg**3))) * xu
        yk = np.einsum("kdi,ki->kd", deq(down)[sel], f64(h)) + (f64(db)[sel] if bias else 0)
        y64 = (yk * f64(scores)[:, None]).sum(0)
        err_h = float(np.max(np.abs(f64(h) - h64)) / (np.sqrt(np.mean(h64**2)) + 1e-9))
        err_y = float(np.max(np.abs(f64(y) - y64)) / (np.sqrt(np.mean(y64**2)) + 1e-9))
        out.append(RefCheck("moe_experts", name, "float32", max(err_h, err_y), 1e-4))
    return out


def _q4_specs():
    from .moe_experts_q4 import SPECS as Q4

    return Q4


OP = OpInfo(
    name="moe_experts",
    summary="quantized expert MLP at decode: gate+up+activation, down+combine (MLX qmv / qmm_sm80 numerics)",
    variants=(*SPECS, "gate_up_q4_<activation>", "down_combine_q4"),
    reference="zmlx.kernels.ops.moe_experts.moe_{gate_up,down_combine}_reference (mx.gather_qmm as SwitchGLU)",
    kernel_specs=lambda: {**SPECS, **_q4_specs()},
    check_cases=lambda seed: check_cases(seed) + dense_check_cases(seed),
    reference_checks=reference_checks,
)
