"""A quantized matrix-vector product at decode, bit-identical to MLX's CUDA ``qmv`` and faster on the device.

``nn.QuantizedLinear`` at one token runs MLX's ``qmv_kernel``: one warp per output row, 8 rows a block, each lane
loading 8 bytes of codes a step. On the H100 it moves 4-bit weights at ~0.6 TB/s (2026-11-27, ncu, llama-3-8b:
225 launches, 6.3 ms of a 7.9 ms step). The arithmetic per row is fixed by docs/notes-mlx-cuda-qmv.md: lane ``l``
owns codes ``l*16 + i + 512*r`` (4-bit), one bf16 accumulator per ``i`` summed over ``r`` in order with
``fma(x, fma(q, scale, bias), acc)`` (each one rounding in bf16), the lane's 16 accumulators added in float from
+0 in order, a butterfly over 16..1 lanes, one rounding to bf16. This kernel keeps exactly that per row and changes
only what MLX leaves free: each warp runs ``R`` rows at once over ``U`` unrolled steps (more bytes in flight), the
codes are dequantised two at a time in packed bf16 (HFMA2, as MLX's own SASS does), and x pairs are re-packed once a
step for all ``R`` rows. ``+ bias`` (QuantizedLinear's own add) is one bf16 rounding, as MLX's add is.

Kernel path: CUDA, bf16 activations / scales / biases, affine 4-bit, K a multiple of 16 and of the group size,
fewer than 8 token rows (MLX's qmv range). Everything else, Metal and the CPU run ``mx.quantized_matmul`` itself.
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np

from ..backend import compiled, launch, target_for
from ._base import REF_TOLERANCE, CheckCase, OpInfo, RefCheck, as_float64
from .moe_experts import Quant, mlx_numerics
from .qmv_kernels import SPEC, SPEC_MANY

# 4 warps a block. One row a warp beat 2 and 4 at every projection size (more warps in flight); 4 rows a warp only at
# lm-head sizes, where x's reuse over 4 rows pays (tools/gpu/qmv_bench.py under ncu, H100, 2026-11-27)
WARPS = 4
WIDE = 65536


def geometry(n: int) -> tuple[int, int]:
    """(rows a warp, warps a block) for ``n`` output rows."""
    return (4 if n >= WIDE else 1), WARPS


def qmv_reference(x: mx.array, w: Quant, *, group_size: int, bits: int, bias: mx.array | None = None) -> mx.array:
    """What ``nn.QuantizedLinear`` (affine) computes: ``quantized_matmul``, then ``+ bias`` as its own op."""
    y = mx.quantized_matmul(x, w[0], scales=w[1], biases=w[2], transpose=True, group_size=group_size, bits=bits)
    return y if bias is None else y + bias


def matrix_fits(w: Quant, group_size: int, bits: int, bias: mx.array | None = None, rows: int = 1) -> bool:
    """A bf16 4-bit affine matrix (and bias) that MLX multiplies by ``rows`` token rows with ``qmv``."""
    wq, s, b = w
    if wq.ndim != 2 or bits != 4:
        return False
    n, k = wq.shape[0], wq.shape[1] * 8
    return (s.dtype == mx.bfloat16 and b is not None and b.dtype == mx.bfloat16 and group_size in (32, 64, 128)
            and s.shape == (n, k // group_size) and (bias is None or (bias.dtype == mx.bfloat16 and bias.shape == (n,)))
            and mlx_numerics(rows, n, k, group_size, bits) == "qmv")


def fits(x: mx.array, w: Quant, group_size: int, bits: int, bias: mx.array | None = None) -> bool:
    """One to seven bf16 token rows times a 4-bit affine matrix MLX runs as ``qmv`` (the kernel's numerics)."""
    if x.ndim == 0 or x.dtype != mx.bfloat16 or w[0].ndim != 2 or w[0].shape[1] * 8 != x.shape[-1]:
        return False
    return matrix_fits(w, group_size, bits, bias, x.size // x.shape[-1])


def qmv(x: mx.array, w: Quant, *, group_size: int, bits: int, bias: mx.array | None = None,
        rows_per_warp: int | None = None, unroll: int = 4, warps: int | None = None,
        stream: mx.Stream | None = None) -> mx.array:
    """``x @ dequantize(w).T (+ bias)`` for an affine-quantized ``w = (weight, scales, biases)``: exactly what
    ``nn.QuantizedLinear`` returns on every device, faster on CUDA at decode. ``rows_per_warp`` / ``unroll`` / ``warps`` (a block) tune the
    launch (tools/gpu/qmv_bench.py; other kernel shapes: qmv_tuning.py) and never change the result."""
    if warps not in (None, 1, 2, 4, 8, 16, 32) or rows_per_warp not in (None, 1, 2, 4) or unroll not in (1, 2, 4, 8):
        raise ValueError(f"qmv: warps must be a power of two up to 32, rows_per_warp 1, 2 or 4, unroll 1, 2, 4 or 8; "
                         f"got {warps}, {rows_per_warp}, {unroll}")
    if target_for(stream) != "cuda" or not fits(x, w, group_size, bits, bias):
        return qmv_reference(x, w, group_size=group_size, bits=bits, bias=bias)
    n, k = w[0].shape[0], x.shape[-1]
    rows = x.size // k
    r0, warps0 = geometry(n)
    r, warps = rows_per_warp or r0, warps or warps0
    per_block = r * warps
    (out,) = launch(
        SPEC, "cuda", inputs=(x, *w, bias if bias is not None else w[1]), output_shapes=[(*x.shape[:-1], n)],
        output_dtypes=[x.dtype], threads=-(-n // per_block) * warps * 32, threadgroup=warps * 32, blocks_y=rows,
        template=[("T", x.dtype), ("QGS", group_size), ("R", r), ("U", unroll), ("HAS_BIAS", bias is not None)],
        stream=stream,
    )
    return out


class QmvPlan:
    """``qmv`` for one fixed matrix, its launch worked out once: a decode step calls a model's projections hundreds
    of times, and ``qmv``'s checks and launch building cost ~6 us of Python a call (MLX's own quantized_matmul ~1 us;
    H100 host, 2026-11-27). A call checks only what can change per call (x's dtype, width and rows, the device)."""

    __slots__ = ("w", "bias", "group_size", "bits", "n", "k", "kernel", "inputs", "template", "grid", "threadgroup",
                 "group", "res_kernel")

    def __init__(self, w: Quant, *, group_size: int, bits: int, bias: mx.array | None = None):
        self.w, self.bias, self.group_size, self.bits = w, bias, group_size, bits
        self.group = None  # a QmvManyPlan this matrix leads (zmlx-patch's project()), kept with it
        self.n, self.k = w[0].shape[0], (w[0].shape[-1] * 32 // bits if w[0].ndim == 2 else -1)
        self.kernel = self.res_kernel = None
        if matrix_fits(w, group_size, bits, bias):  # x is checked per call
            r, warps = geometry(self.n)
            self.kernel = compiled(SPEC, "cuda") if target_for(None) == "cuda" else None
            self.inputs = (*w, bias if bias is not None else w[1])
            self.template = [("T", mx.bfloat16), ("QGS", group_size), ("R", r), ("U", 4),
                             ("HAS_BIAS", bias is not None)]
            self.grid = (-(-self.n // (r * warps)) * warps * 32, 1, 1)
            self.threadgroup = (warps * 32, 1, 1)

    def __call__(self, x: mx.array) -> mx.array:
        shape = x.shape
        if (self.kernel is None or x.dtype != mx.bfloat16 or shape[-1] != self.k or x.size >= 8 * self.k
                or mx.default_device().type != mx.DeviceType.gpu):
            return qmv(x, self.w, group_size=self.group_size, bits=self.bits, bias=self.bias)
        rows = x.size // self.k
        return self.kernel(inputs=[x, *self.inputs], output_shapes=[(*shape[:-1], self.n)],
                           output_dtypes=[mx.bfloat16], grid=(self.grid[0], rows, 1), threadgroup=self.threadgroup,
                           template=self.template)[0]

    def residual(self, x: mx.array, res: mx.array) -> mx.array:
        """``res + self(x)`` (a layer's residual add after its projection): one launch on the kernel path
        (qmv_residual.py), else the two ops."""
        shape = x.shape
        if (self.kernel is None or x.dtype != mx.bfloat16 or shape[-1] != self.k or x.size >= 8 * self.k
                or res.dtype != mx.bfloat16 or tuple(res.shape) != (*shape[:-1], self.n)
                or mx.default_device().type != mx.DeviceType.gpu):
            return res + self(x)
        if self.res_kernel is None:
            from .qmv_residual import SPEC as RES  # it builds on this module's core

            self.res_kernel = compiled(RES, "cuda")
        return self.res_kernel(inputs=[x, *self.inputs, res], output_shapes=[res.shape], output_dtypes=[mx.bfloat16],
                               grid=(self.grid[0], x.size // self.k, 1), threadgroup=self.threadgroup,
                               template=self.template)[0]


def qmv_many(x: mx.array, ws: tuple[Quant, ...], *, group_size: int, bits: int,
             biases: tuple[mx.array | None, ...] | None = None, stream: mx.Stream | None = None) -> tuple[mx.array, ...]:
    """``tuple(qmv(x, w) for w in ws)`` for two or three matrices of one width (q/k/v, gate/up): one launch on
    CUDA at decode, each row computed exactly as ``qmv`` computes it."""
    biases = biases if biases is not None else (None,) * len(ws)
    if len(biases) != len(ws):
        raise ValueError(f"qmv_many: {len(ws)} matrices but {len(biases)} biases")
    if (target_for(stream) != "cuda" or len(ws) not in (2, 3) or len({b is None for b in biases}) != 1
            or not all(fits(x, w, group_size, bits, b) for w, b in zip(ws, biases, strict=True))):
        return tuple(qmv(x, w, group_size=group_size, bits=bits, bias=b, stream=stream)
                     for w, b in zip(ws, biases, strict=True))
    return _launch_many(x, ws, biases, group_size, stream)


def _many_args(ws, biases, group_size):
    """The launch's inputs after x, template, and its rows: a missing third matrix repeats the second."""
    full = list(zip(ws, biases, strict=True)) + [(ws[-1], biases[-1])] * (3 - len(ws))
    inputs = [a for w, b in full for a in (*w, b if b is not None else w[1])]
    template = [("T", mx.bfloat16), ("QGS", group_size), ("R", 1), ("U", 4), ("HAS_BIAS", biases[0] is not None),
                ("NM", len(ws))]
    return inputs, template, sum(w[0].shape[0] for w in ws)


def _launch_many(x, ws, biases, group_size, stream):
    inputs, template, rows = _many_args(ws, biases, group_size)
    outs = launch(
        SPEC_MANY, "cuda", inputs=(x, *inputs),
        output_shapes=[(*x.shape[:-1], w[0].shape[0]) for w in ws] + [(1,)] * (3 - len(ws)),
        output_dtypes=[x.dtype] * 3, threads=-(-rows // WARPS) * WARPS * 32, threadgroup=WARPS * 32,
        blocks_y=x.size // x.shape[-1], template=template, stream=stream,
    )
    return tuple(outs[: len(ws)])


class QmvManyPlan:
    """``qmv_many`` for fixed matrices, worked out once (as QmvPlan)."""

    __slots__ = ("arrays", "ws", "biases", "group_size", "bits", "k", "n", "kernel", "inputs", "template", "grid")

    def __init__(self, ws: tuple[Quant, ...], *, group_size: int, bits: int,
                 biases: tuple[mx.array | None, ...] | None = None):
        self.ws, self.group_size, self.bits = ws, group_size, bits
        self.biases = biases if biases is not None else (None,) * len(ws)
        self.arrays = tuple(a for w in ws for a in w) + self.biases  # what a caller compares to see stale weights
        self.k = ws[0][0].shape[-1] * 32 // bits if ws[0][0].ndim == 2 else -1
        self.n = tuple(w[0].shape[0] for w in ws)
        self.kernel = None
        if (len(ws) in (2, 3) and len({b is None for b in self.biases}) == 1 and len({w[0].shape[-1] for w in ws}) == 1
                and all(matrix_fits(w, group_size, bits, b) for w, b in zip(ws, self.biases, strict=True))
                and target_for(None) == "cuda"):
            self.kernel = compiled(SPEC_MANY, "cuda")
            self.inputs, self.template, rows = _many_args(ws, self.biases, group_size)
            self.grid = -(-rows // WARPS) * WARPS * 32

    def __call__(self, x: mx.array) -> tuple[mx.array, ...]:
        shape = x.shape
        if (self.kernel is None or x.dtype != mx.bfloat16 or shape[-1] != self.k or x.size >= 8 * self.k
                or mx.default_device().type != mx.DeviceType.gpu):
            return qmv_many(x, self.ws, group_size=self.group_size, bits=self.bits, biases=self.biases)
        lead = shape[:-1]
        outs = self.kernel(inputs=[x, *self.inputs],
                           output_shapes=[(*lead, n) for n in self.n] + [(1,)] * (3 - len(self.n)),
                           output_dtypes=[mx.bfloat16] * 3, grid=(self.grid, x.size // self.k, 1),
                           threadgroup=(WARPS * 32, 1, 1), template=self.template)
        return tuple(outs[: len(self.n)])


def kernel_specs():
    return {"qmv": SPEC, "qmv_many": SPEC_MANY}


# --- checks ----------------------------------------------------------------------------------------------------

# (rows N, K, group size, token rows, bias): llama-3-8b / qwen3 decode shapes, a residue step (K = 2880, gpt-oss),
# group sizes 32 / 128, odd row counts (31, 33, 123) and several token rows
CASES = (
    (4096, 4096, 64, 1, False),
    (1024, 2048, 64, 1, False),
    (2880, 2880, 64, 1, True),
    (123, 4096, 32, 1, False),
    (33, 1152, 128, 3, True),
    (31, 576, 64, 7, False),
)


def make_case(n: int, k: int, group_size: int, rows: int, bias: bool, key: mx.array):
    """Token rows, a 4-bit matrix with every seventh row a copy of its neighbour (equal outputs), an optional bias."""
    k1, k2, k3 = mx.random.split(key, 3)
    x = mx.random.normal((1, rows, k), key=k1).astype(mx.bfloat16)
    src = mx.arange(n)
    src = mx.where(src % 7 == 6, src - 1, src)
    w = (mx.random.normal((n, k), key=k2) * 0.05)[src].astype(mx.bfloat16)
    q = mx.quantize(w, group_size=group_size, bits=4)
    b = (mx.random.normal((n,), key=k3) * 0.1).astype(mx.bfloat16) if bias else None
    return x, q, b


def check_cases(seed: int) -> list[CheckCase]:
    cases = []
    for i, (n, k, gs, rows, bias) in enumerate(CASES):
        x, q, b = make_case(n, k, gs, rows, bias, mx.random.key(seed + i))
        for r in (1, 2, 4):  # every launch shape gives MLX's bits
            cases.append(CheckCase(
                "qmv", f"{n}x{k}_g{gs}_m{rows}_r{r}", "bfloat16",
                kernel=lambda x=x, q=q, b=b, gs=gs, r=r: [qmv(x, q, group_size=gs, bits=4, bias=b, rows_per_warp=r)],
                reference=lambda x=x, q=q, b=b, gs=gs: [qmv_reference(x, q, group_size=gs, bits=4, bias=b)],
                exact=True))
    # several matrices in one launch: q/k/v of llama's and qwen3's shapes (biased, gpt-oss-like), gate/up, odd sizes
    for i, (ns, k, gs, rows, bias) in enumerate(MANY_CASES):
        x, _, _ = make_case(ns[0], k, gs, rows, False, mx.random.key(seed + 100 + i))
        ws, bs = zip(*(make_case(n, k, gs, rows, bias, mx.random.key(seed + 200 + 3 * i + j))[1:]
                       for j, n in enumerate(ns)), strict=True)
        cases.append(CheckCase(
            "qmv", f"many_{'+'.join(map(str, ns))}x{k}_g{gs}_m{rows}", "bfloat16",
            kernel=lambda x=x, ws=ws, bs=bs, gs=gs: list(qmv_many(x, ws, group_size=gs, bits=4, biases=bs)),
            reference=lambda x=x, ws=ws, bs=bs, gs=gs: [qmv_reference(x, w, group_size=gs, bits=4, bias=b)
                                                          for w, b in zip(ws, bs, strict=True)],
            exact=True))
    return cases


# (rows of each matrix, K, group size, token rows, biases)
MANY_CASES = (
    ((4096, 1024, 1024), 4096, 64, 1, False),
    ((4096, 512, 512), 2048, 64, 1, False),
    ((4096, 512, 512), 2880, 64, 1, True),
    ((14336, 14336), 4096, 64, 1, False),
    ((123, 33, 31), 576, 32, 3, True),
    ((31, 33), 1152, 128, 7, False),
)


def projection_error(x: mx.array, w: Quant, got: mx.array, group_size: int, bits: int,
                     bias: mx.array | None = None) -> float:
    """Largest error of a projection's result ``got`` (any shape holding rows x N) against float64 math on the
    dequantized matrix (``+ bias``), relative to the magnitudes summed: a few bf16 roundings of a K-term sum."""
    wd = as_float64(mx.dequantize(*w, group_size=group_size, bits=bits))
    xd = as_float64(x).reshape(-1, wd.shape[1])
    bd = 0.0 if bias is None else as_float64(bias)
    want = xd @ wd.T + bd
    scale = np.abs(xd) @ np.abs(wd).T + np.abs(bd) + 1e-3
    return float(np.max(np.abs(as_float64(got).reshape(want.shape) - want) / scale))


def reference_checks(seed: int) -> list[RefCheck]:
    """The reference against float64 dequantise-and-multiply (projection_error)."""
    out = []
    for i, (n, k, gs, rows, bias) in enumerate(CASES[3:]):
        x, q, b = make_case(n, k, gs, rows, bias, mx.random.key(seed + i))
        with mx.stream(mx.cpu):
            got = qmv_reference(x, q, group_size=gs, bits=4, bias=b)
        out.append(RefCheck("qmv", f"{n}x{k}_g{gs}_m{rows}", "bfloat16", projection_error(x, q, got, gs, 4, b),
                            REF_TOLERANCE[mx.bfloat16]))
    return out


OP = OpInfo(
    name="qmv",
    summary="quantized matrix x one token (QuantizedLinear at decode) in MLX's CUDA qmv numerics, more rows in flight",
    variants=("qmv", "qmv_many"),
    reference="zmlx.kernels.ops.qmv.qmv_reference",
    kernel_specs=kernel_specs,
    check_cases=check_cases,
    reference_checks=reference_checks,
)
