"""A switch (expert) layer's quantized projection at decode, bit-identical to MLX's CUDA ``gather_qmv``, faster.

mlx-lm's ``QuantizedSwitchLinear`` calls ``mx.gather_qmm(x, w, scales, biases, rhs_indices=indices)``: at one token
with top-k < 8 MLX runs ``gather_qmv``, whose arithmetic per output row is ``qmv``'s (docs/notes-mlx-cuda-qmv.md):
slot ``l`` multiplies expert ``indices[l]``'s matrix by its x row. This kernel is qmv.py's core with the slot's
expert and x row chosen in front of it (one slot per grid row), so every row is computed exactly as ``zk.qmv``
computes it, which is MLX's qmv. Where MLX's gather_qmv moves a top-2 mixtral expert at ~0.6-0.7 TB/s, zk.qmv's core
reached 1.1-1.8 TB/s on dense matrices of the same shapes (perf-notes v9). Bit-identical to mx.gather_qmm in its
GPU checks (5d210df, H200); its speed is not yet measured, so zmlx-patch uses it only under the opt-in
``quantized_switch_linear``.

Kernel path: CUDA, bf16 x / scales / biases, affine 4-bit, one token row per slot (``x.shape[-2] == 1``), fewer
than 8 slots, x shared by every slot or one row per slot. Everything else runs ``mx.gather_qmm`` itself.
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np

from ..backend import launch, target_for
from ..emit import KernelSpec, Param
from ._base import CheckCase, OpInfo, RefCheck
from .moe_experts import Quant, mlx_numerics
from .qmv import WARPS
from .qmv_kernels import CORE

_GATHER = """\
  // w (E, N, K/8); slot l = zm_bid_y: expert inds[l], x row (XPER ? l : 0), output row l
  const int KW = w_shape[w_ndim - 1];
  const int N = w_shape[w_ndim - 2];
  const int row0 = (int(zm_bid) * int(zm_bdim / 32u) + int(zm_warp)) * R;
  if (row0 >= N) return;
  const int l = int(zm_bid_y);
  const size_t e = size_t(inds[l]);
  const size_t groups = size_t(N) * size_t(KW * 8 / QGS);
  ZM_DEVICE const uint32_t* wq = w + e * size_t(N) * size_t(KW);
  ZM_DEVICE const T* sq = s + e * groups;
  ZM_DEVICE const T* bq = b + e * groups;
  ZM_DEVICE const T* biasq = s;  // no linear bias here (QuantizedSwitchLinear adds its own after the product)
  ZM_DEVICE T* outq = out + size_t(l) * size_t(N);
  ZM_DEVICE const T* xq = x + size_t(XPER ? l : 0) * size_t(KW * 8);
"""
_X_LINE = "  ZM_DEVICE const T* xr = x + size_t(m) * size_t(K);\n"
_OUT_LINE = "      outq[size_t(m) * size_t(N) + size_t(row0 + r)] = g;\n"
if CORE.count(_X_LINE) != 1 or CORE.count(_OUT_LINE) != 1:  # qmv's core changed shape: fail at import
    raise RuntimeError("qmv.py's core no longer reads x and writes out through one line each")
_BODY = _GATHER + CORE.replace(_X_LINE, "  ZM_DEVICE const T* xr = xq;\n").replace(
    _OUT_LINE, "      outq[size_t(row0 + r)] = g;\n")

SPEC = KernelSpec(
    name="gather_qmv",
    inputs=(Param("x"), Param("w", "uint32_t"), Param("s"), Param("b"), Param("inds", "uint32_t")),
    outputs=(Param("out"),),
    body=_BODY,
    templates=(("T", "float"), ("QGS", 64), ("R", 1), ("U", 4), ("HAS_BIAS", False), ("XPER", False)),
)


def gather_qmv_reference(x: mx.array, w: Quant, indices: mx.array, *, group_size: int, bits: int) -> mx.array:
    """What ``QuantizedSwitchLinear`` computes before its bias: ``mx.gather_qmm`` with the experts as rhs."""
    return mx.gather_qmm(x, w[0], w[1], w[2], rhs_indices=indices, transpose=True, group_size=group_size, bits=bits)


def fits(x: mx.array, w: Quant, indices: mx.array, group_size: int, bits: int) -> bool:
    """bf16, affine 4-bit experts, one row a slot, fewer than 8 slots (MLX's gather_qmv), x shared or per slot."""
    wq, s, b = w
    if wq.ndim != 3 or x.ndim < 2 or bits != 4 or b is None or x.shape[-2] != 1:
        return False
    k, n, slots = x.shape[-1], wq.shape[1], indices.size
    xrows = x.size // k
    return (x.dtype == mx.bfloat16 and s.dtype == mx.bfloat16 and b.dtype == mx.bfloat16
            and indices.dtype in (mx.uint32, mx.int32) and wq.shape[2] * 8 == k and group_size in (32, 64, 128)
            and s.shape == (wq.shape[0], n, k // group_size)
            and (xrows == 1 or tuple(x.shape[:-2]) == tuple(indices.shape))
            and mlx_numerics(slots, n, k, group_size, bits) == "qmv")


def gather_qmv(x: mx.array, w: Quant, indices: mx.array, *, group_size: int, bits: int,
               stream: mx.Stream | None = None) -> mx.array:
    """``mx.gather_qmm(x, *w, rhs_indices=indices, transpose=True)`` on every device; on CUDA at decode one
    launch in MLX's gather_qmv arithmetic with more rows in flight."""
    if target_for(stream) != "cuda" or not fits(x, w, indices, group_size, bits):
        return gather_qmv_reference(x, w, indices, group_size=group_size, bits=bits)
    n, slots = w[0].shape[1], indices.size
    lead = np.broadcast_shapes(tuple(x.shape[:-2]), tuple(indices.shape))
    (out,) = launch(
        SPEC, "cuda", inputs=(x, *w, (indices if indices.dtype == mx.uint32 else indices.astype(mx.uint32)).reshape(-1)), output_shapes=[(*lead, 1, n)],
        output_dtypes=[x.dtype], threads=-(-n // WARPS) * WARPS * 32, threadgroup=WARPS * 32, blocks_y=slots,
        template=[("T", x.dtype), ("QGS", group_size), ("R", 1), ("U", 4), ("HAS_BIAS", False),
                  ("XPER", x.size // x.shape[-1] > 1)],
        stream=stream,
    )
    return out


def kernel_specs():
    return {"gather_qmv": SPEC}


# --- checks ----------------------------------------------------------------------------------------------------

# (experts, N, K, group size, slots, x per slot): mixtral's top-2 up/gate and down, gpt-oss's and lfm2's top-4,
# odd sizes with a residue step and 32/128 groups
CASES = (
    (8, 14336, 4096, 64, 2, False),
    (8, 4096, 14336, 64, 2, True),
    (32, 2880, 2880, 64, 4, True),
    (32, 1792, 2048, 64, 4, False),
    (5, 123, 576, 32, 3, True),
    (7, 33, 1152, 128, 7, False),
)


def make_case(experts: int, n: int, k: int, group_size: int, slots: int, per_slot: bool, key: mx.array):
    """x (one row, or one per slot, in SwitchGLU's layout), experts with a repeated matrix, indices with a repeated
    expert (equal outputs in two slots)."""
    k1, k2, k3 = mx.random.split(key, 3)
    x = mx.random.normal((1, 1, slots if per_slot else 1, 1, k), key=k1).astype(mx.bfloat16)
    w = (mx.random.normal((experts, n, k), key=k2) * 0.05)
    w = mx.concatenate([w[:1], w[:-1]]).astype(mx.bfloat16)  # experts 0 and 1 equal
    q = mx.quantize(w, group_size=group_size, bits=4)
    inds = mx.random.randint(0, experts, (1, 1, slots), key=k3).astype(mx.uint32)
    if slots > 1:
        inds = mx.concatenate([inds[..., :1], inds[..., :-1]], axis=-1)  # slots 0 and 1 pick the same expert
    return x, q, inds


def check_cases(seed: int) -> list[CheckCase]:
    cases = []
    for i, (e, n, k, gs, slots, per) in enumerate(CASES):
        x, q, inds = make_case(e, n, k, gs, slots, per, mx.random.key(seed + i))
        cases.append(CheckCase(
            "gather_qmv", f"{e}x{n}x{k}_g{gs}_k{slots}{'_per_slot' if per else ''}", "bfloat16",
            kernel=lambda x=x, q=q, i=inds, gs=gs: [gather_qmv(x, q, i, group_size=gs, bits=4)],
            reference=lambda x=x, q=q, i=inds, gs=gs: [gather_qmv_reference(x, q, i, group_size=gs, bits=4)],
            exact=True))
    return cases


def reference_checks(seed: int) -> list[RefCheck]:
    """The reference is mx.gather_qmm itself; checked against each slot's dense product (qmv's own float64 check
    covers the product's accuracy)."""
    out = []
    for i, (e, n, k, gs, slots, per) in enumerate(CASES[4:]):
        x, q, inds = make_case(e, n, k, gs, slots, per, mx.random.key(seed + i))
        with mx.stream(mx.cpu):
            got = gather_qmv_reference(x, q, inds, group_size=gs, bits=4)
            rows = x.reshape(-1, k)
            want = mx.stack([mx.quantized_matmul(rows[j if per else 0], q[0][int(inds.reshape(-1)[j])],
                                                 q[1][int(inds.reshape(-1)[j])], q[2][int(inds.reshape(-1)[j])],
                                                 transpose=True, group_size=gs, bits=4) for j in range(slots)])
        err = float(mx.max(mx.abs(got.reshape(slots, n).astype(mx.float32) - want.astype(mx.float32))).item())
        out.append(RefCheck("gather_qmv", f"{e}x{n}x{k}_k{slots}", "bfloat16", err, 0.0))
    return out


OP = OpInfo(
    name="gather_qmv",
    summary="a switch layer's quantized projection at decode (QuantizedSwitchLinear, top-k < 8) in MLX's gather_qmv "
            "numerics, more rows in flight",
    variants=("gather_qmv",),
    reference="zmlx.kernels.ops.gather_qmv.gather_qmv_reference",
    kernel_specs=kernel_specs,
    check_cases=check_cases,
    reference_checks=reference_checks,
)
