"""MoE combine: ``(y * scores[..., None]).sum(axis=-2)`` over the k experts of each token.

``y`` is ``[..., k, D]`` (expert outputs, in the routing's argpartition order), ``scores`` ``[..., k]``.
``fp32=False`` is mixtral/qwen2_moe/olmoe/gpt_oss/lfm2/minimax/qwen3_next: the result keeps the promoted dtype
of ``y * scores``. ``fp32=True`` is qwen3_moe/granitemoe/deepseek_v3/glm4_moe, which add ``.astype(y.dtype)``:
with float32 scores (granitemoe, deepseek) the products and the sum are float32, then cast once.

Rounding that the kernel reproduces (one thread per output element):
- the product rounds once in the promoted dtype P (MLX casts both operands to P, then multiplies);
- ``sum(axis=-2)`` is a column reduce. In MLX 0.32.4 CUDA, for ``k <= 32`` and ``D % (16 / sizeof(P)) == 0``
  it is ``col_reduce_small`` (mlx/backend/cuda/reduce/col_reduce.cu): each output is accumulated sequentially
  over k in index order, starting from 0, in P itself (``ReduceResult<Sum, bfloat16>`` is bfloat16: every
  partial sum rounds to bf16). The kernel does exactly that, so on CUDA it is bit-identical. Other shapes take
  ``col_reduce_looped`` (a tree over k), which this kernel does not emulate: there the op runs the reference.
- Metal's column reduce order was not verified: the Metal kernel sums in the same order, within tolerance.
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np

from ..backend import gpu_backend, launch, target_for
from ..emit import KernelSpec, Param
from ._base import DTYPES, REF_TOLERANCE, TOLERANCE, CheckCase, OpInfo, RefCheck, dtype_name


def moe_combine_reference(y: mx.array, scores: mx.array, *, fp32: bool) -> mx.array:
    out = (y * scores[..., None]).sum(axis=-2)
    return out.astype(y.dtype) if fp32 else out


_BODY = """\
  int n = 1;
  for (int d = 0; d < y_ndim; ++d) n *= y_shape[d];
  const int D = y_shape[y_ndim - 1];
  const int K = y_shape[y_ndim - 2];
  const int n_out = n / K;
  const int i = int(zm_bid * zm_bdim + zm_tid);
  if (i >= n_out) return;
  const int r = i / D;
  const int d = i - r * D;
  P acc = P(0.0f);  // MLX's Sum init, then one rounding per step, k in index order
  for (int j = 0; j < K; ++j) {
    // _rn: the multiply and the sum are separate MLX primitives, so no FMA contraction between them
    const P prod = zm_mul_rn(P(float(y[(size_t(r) * K + j) * D + d])), P(float(scores[size_t(r) * K + j])));
    acc = zm_add_rn(acc, prod);
  }
  out[i] = O(float(acc));
"""

SPEC = KernelSpec(
    name="moe_combine",
    inputs=(Param("y", "Y"), Param("scores", "S")),
    outputs=(Param("out", "O"),),
    body=_BODY,
    templates=(("P", "float"), ("O", "float")),
)
_THREADS = 256
_PROMOTED: dict[tuple[mx.Dtype, mx.Dtype], mx.Dtype] = {}


def _promote(a: mx.Dtype, b: mx.Dtype) -> mx.Dtype:
    p = _PROMOTED.get((a, b))
    if p is None:
        p = _PROMOTED[(a, b)] = (mx.zeros((1,), dtype=a) * mx.zeros((1,), dtype=b)).dtype
    return p


def _exact_on_cuda(k: int, d: int, p: mx.Dtype) -> bool:
    return k <= 32 and d % (16 // p.size) == 0


def moe_combine(y: mx.array, scores: mx.array, *, fp32: bool, stream: mx.Stream | None = None) -> mx.array:
    """Weighted sum of the k expert outputs of each token, rounding as the family's expression does."""
    if y.ndim < 2 or scores.shape != y.shape[:-1]:
        raise ValueError(f"moe_combine: y [..., k, D] and scores [..., k] expected, got {y.shape} and {scores.shape}")
    backend = target_for(stream)
    k, d = y.shape[-2], y.shape[-1]
    p = _promote(y.dtype, scores.dtype)
    if backend == "cpu" or p not in DTYPES or (backend == "cuda" and not _exact_on_cuda(k, d, p)):
        return moe_combine_reference(y, scores, fp32=fp32)
    o = y.dtype if fp32 else p
    n_out = y.size // k
    return launch(
        SPEC, backend, inputs=(y, scores), output_shapes=[(*y.shape[:-2], d)], output_dtypes=[o],
        threads=n_out, threadgroup=_THREADS, template=[("P", p), ("O", o)], stream=stream,
    )[0]


def kernel_specs() -> dict[str, KernelSpec]:
    return {"moe_combine": SPEC}


# --- checks -----------------------------------------------------------------------------------------------

# (leading shape, k, D, scores in float32, fp32 flag)
_CASES = (((1,), 8, 64, False, True), ((3,), 4, 96, False, False), ((2, 2), 2, 128, True, True),
          ((5,), 1, 64, False, False), ((3,), 16, 32, True, False))


def make_inputs(lead, k, d, scores_f32, dtype, key):
    k1, k2 = mx.random.split(key)
    y = (mx.random.normal((*lead, k, d), key=k1) * 3).astype(dtype)
    s = mx.softmax(mx.random.normal((*lead, k), key=k2), axis=-1)
    return y, s.astype(mx.float32 if scores_f32 else dtype)


def check_cases(seed: int) -> list[CheckCase]:
    cases = []
    key = mx.random.key(seed)
    for lead, k, d, sf32, fp32 in _CASES:
        for dtype in DTYPES:
            key, sub = mx.random.split(key)
            y, s = make_inputs(lead, k, d, sf32, dtype, sub)
            out_dtype = y.dtype if fp32 else _promote(y.dtype, s.dtype)
            cases.append(CheckCase(
                op="combine", variant="moe_combine" + ("_fp32" if fp32 else ""), dtype=dtype_name(dtype),
                kernel=lambda y=y, s=s, f=fp32: [moe_combine(y, s, fp32=f)],
                reference=lambda y=y, s=s, f=fp32: [moe_combine_reference(y, s, fp32=f)],
                exact=gpu_backend() != "metal", atol=TOLERANCE[out_dtype],
            ))
    return cases


def reference_checks(seed: int) -> list[RefCheck]:
    out = []
    key = mx.random.key(seed)
    for lead, k, d, sf32, fp32 in _CASES:
        for dtype in DTYPES:
            key, sub = mx.random.split(key)
            y, s = make_inputs(lead, k, d, sf32, dtype, sub)
            got = np.array(moe_combine_reference(y, s, fp32=fp32).astype(mx.float32), np.float64)
            y64 = np.array(y.astype(mx.float32), np.float64)
            s64 = np.array(s.astype(mx.float32), np.float64)
            want = (y64 * s64[..., None]).sum(-2)
            err = float(np.max(np.abs(got - want) / (np.abs(want) + 1.0)))
            out.append(RefCheck("combine", f"fp32={fp32}", dtype_name(dtype), err, REF_TOLERANCE[dtype] * k))
    return out


OP = OpInfo(
    name="combine",
    summary="MoE combine: sum over k of y * scores, in MLX's column-reduce order",
    variants=("moe_combine",),
    reference="zmlx.kernels.ops.combine.moe_combine_reference",
    kernel_specs=kernel_specs,
    check_cases=check_cases,
    reference_checks=reference_checks,
)
