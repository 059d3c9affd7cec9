"""RoPE of a Llama-style layer's q and k at one token in one launch: ``mx.fast.rope`` of each, as two launches did.

Llama-style attention (llama, qwen2, mixtral, gpt-oss) rotates q and k with two ``mx.fast.rope`` calls (after
YarnRoPE's ``mscale`` multiply where it has one). At one token every (head, pair) is independent: one thread a pair
over q's heads then k's, each rotated as MLX's CUDA ``rope_single`` does (``inv_freq`` as ``exp2(-d * log2(base))``
or ``1 / freqs[d]``, ``theta = scale * offset * inv_freq``, the same two products per pair in float, one rounding),
which qkv_rope.py's rotation reproduces bit for bit on the H100 (9282618); this kernel runs that very text
(``qkv_rope.ROTATE_PAIR``), its pair read from q / k instead of shared memory. Written without a GPU (2026-11-27): zmlx-patch uses it only under the
measurement switch ``_layer.FOLD_ROPE`` until the GPU tests and a capsule say so.

Kernel path: CUDA, one token (``(1, 1, H, D)`` rows, the projections' layout), q and k of one float dtype, the
rotation over the whole head. Everything else runs the reference, the block's own ops.
"""

from __future__ import annotations

import mlx.core as mx

from ..backend import constant, launch, position_input, target_for
from ..emit import KernelSpec, Param
from ._base import CheckCase, OpInfo, RefCheck
from .attention import _log2f
from .qkv_rope import ROTATE_PAIR

_BODY = """\
  // thread t: pair p of head t / (HD / 2), q's HQ heads then k's HK; in (1, 1, H, HD) rows, out (1, H, 1, HD)
  const int t = int(zm_tid) + int(zm_bid) * int(zm_bdim);
  if (t >= (HQ + HK) * (HD / 2)) return;
  const int head = t / (HD / 2), p = t % (HD / 2);
  const bool is_q = head < HQ;
  ZM_DEVICE const T* src = is_q ? q + head * HD : k + (head - HQ) * HD;
  ZM_DEVICE T* dst = is_q ? q_out + head * HD : k_out + (head - HQ) * HD;
  const float pos = params[1] * static_cast<float>(pos0[0]);
  {  // qkv_rope.py's rotation of the pair
""" + ROTATE_PAIR.replace("@SRC@", "src") + """\
  }
"""

SPEC = KernelSpec(
    name="rope_qk",
    inputs=(Param("q"), Param("k"), Param("freqs", "float"), Param("params", "float"), Param("pos0", "int32_t")),
    outputs=(Param("q_out"), Param("k_out")),
    body=_BODY,
    templates=(("T", "float"), ("HD", 128), ("HQ", 32), ("HK", 8), ("HAS_FREQS", False), ("HAS_MSCALE", False),
               ("TRADITIONAL", False)),
)
_THREADS = 256


def rope_qk_reference(q: mx.array, k: mx.array, *, offset: int | mx.array, base: float | None = None,
                      freqs: mx.array | None = None, scale: float = 1.0, traditional: bool = False,
                      mscale: float = 1.0) -> tuple[mx.array, mx.array]:
    """The block's ops: (B, L, H, D) -> (B, H, L, D), YarnRoPE's mscale multiply where not 1, ``mx.fast.rope``."""
    outs = [y.transpose(0, 2, 1, 3) for y in (q, k)]
    dims = outs[0].shape[-1]
    if mscale != 1.0:
        outs = [y.at[..., :dims].multiply(mscale) for y in outs]
    rope = dict(traditional=traditional, base=base, scale=scale, offset=offset, freqs=freqs)
    return mx.fast.rope(outs[0], dims, **rope), mx.fast.rope(outs[1], dims, **rope)


def _fits(q: mx.array, k: mx.array, freqs: mx.array | None) -> bool:
    hd = q.shape[-1]
    return (q.ndim == 4 and q.shape[:2] == (1, 1) and k.ndim == 4 and k.shape[:2] == (1, 1) and k.shape[-1] == hd
            and q.dtype == k.dtype and q.dtype in (mx.bfloat16, mx.float16, mx.float32) and hd % 2 == 0
            and (freqs is None or (freqs.dtype == mx.float32 and freqs.shape == (hd // 2,))))


def rope_qk(q: mx.array, k: mx.array, *, offset: int | mx.array, base: float | None = None,
            freqs: mx.array | None = None, scale: float = 1.0, traditional: bool = False, mscale: float = 1.0,
            stream: mx.Stream | None = None) -> tuple[mx.array, mx.array]:
    """``q`` (B, L, HQ, D), ``k`` (B, L, HK, D) -> both rotated in the cache's (B, H, L, D) layout, exactly as the
    block's two ``mx.fast.rope`` calls (``base`` or ``freqs``, ``scale``, ``traditional``, YarnRoPE's ``mscale``).
    ``offset``: an int or one int32 array."""
    if (base is None) == (freqs is None):
        raise ValueError("rope_qk: give exactly one of base and freqs")
    kw = dict(offset=offset, base=base, freqs=freqs, scale=scale, traditional=traditional, mscale=mscale)
    if target_for(stream) != "cuda" or not _fits(q, k, freqs):
        return rope_qk_reference(q, k, **kw)
    hq, hk, hd = q.shape[2], k.shape[2], q.shape[-1]
    params = constant((_log2f(base) if base is not None else 0.0, scale, mscale))
    out = launch(
        SPEC, "cuda", inputs=(q, k, freqs if freqs is not None else params, params, position_input(offset)),
        output_shapes=[(1, hq, 1, hd), (1, hk, 1, hd)], output_dtypes=[q.dtype] * 2,
        threads=-(-(hq + hk) * (hd // 2) // _THREADS) * _THREADS, threadgroup=_THREADS,
        template=[("T", q.dtype), ("HD", hd), ("HQ", hq), ("HK", hk), ("HAS_FREQS", freqs is not None),
                  ("HAS_MSCALE", mscale != 1.0), ("TRADITIONAL", traditional)],
        stream=stream,
    )
    return out[0], out[1]


# --- checks ----------------------------------------------------------------------------------------------------

# (HQ, HK, HD, offset, rope, traditional, dtype): llama-3-8b (Llama3RoPE freqs), qwen2 (base), gpt-oss (YarnRoPE),
# odd head counts, traditional, fp16 / fp32
CASES = (
    (32, 8, 128, 517, "freqs", False, mx.bfloat16),
    (28, 4, 128, 3001, "base", False, mx.bfloat16),
    (64, 8, 64, 777, "yarn", False, mx.bfloat16),
    (5, 1, 64, 123, "base", True, mx.float16),
    (3, 3, 128, 31, "freqs", False, mx.float32),
)


def make_case(hq, hk, hd, rope, dtype, key):
    kq, kk = mx.random.split(key)
    q = (mx.random.normal((1, 1, hq, hd), key=kq) * 2).astype(dtype)
    k = (mx.random.normal((1, 1, hk, hd), key=kk) * 2).astype(dtype)
    k = mx.concatenate([q[:, :, :1], k[:, :, 1:]], axis=2) if hk > 1 else k  # a k head equal to a q head
    freqs = (10000.0 ** (mx.arange(0, hd, 2, dtype=mx.float32) / hd)) * (1 + 7 * (mx.arange(hd // 2) > hd // 4))
    if rope == "yarn":
        return q, k, dict(freqs=freqs.astype(mx.float32), mscale=1.3465735902799727)
    return q, k, dict(freqs=freqs.astype(mx.float32)) if rope == "freqs" else dict(base=500000.0)


def check_cases(seed: int) -> list[CheckCase]:
    cases = []
    for i, (hq, hk, hd, offset, rope, trad, dtype) in enumerate(CASES):
        q, k, kw = make_case(hq, hk, hd, rope, dtype, mx.random.key(seed + i))
        kw = dict(kw, offset=offset, traditional=trad)
        name = {mx.bfloat16: "bfloat16", mx.float16: "float16", mx.float32: "float32"}[dtype]
        cases.append(CheckCase(
            "rope_qk", f"{hq}+{hk}x{hd}_{rope}{'_trad' if trad else ''}_pos{offset}", name,
            kernel=lambda q=q, k=k, kw=kw: list(rope_qk(q, k, **kw)),
            reference=lambda q=q, k=k, kw=kw: list(rope_qk_reference(q, k, **kw)), exact=True))
    return cases


def reference_checks(seed: int) -> list[RefCheck]:
    """The reference is mx.fast.rope itself; checked against the rotation computed in float64."""
    import numpy as np

    out = []
    for i, (hq, hk, hd, offset, rope, trad, _) in enumerate(CASES[:2]):
        q, k, kw = make_case(hq, hk, hd, rope, mx.float32, mx.random.key(seed + i))
        got, _ = rope_qk_reference(q, k, offset=offset, traditional=trad, **kw)
        x = np.array(q, dtype=np.float64).reshape(hq, hd)
        inv = (1.0 / np.array(kw["freqs"], dtype=np.float64) if "freqs" in kw
               else kw["base"] ** (-np.arange(hd // 2) / (hd // 2)))
        th = offset * inv
        x1, x2 = (x[:, 0::2], x[:, 1::2]) if trad else (x[:, : hd // 2], x[:, hd // 2:])
        r1, r2 = x1 * np.cos(th) - x2 * np.sin(th), x1 * np.sin(th) + x2 * np.cos(th)
        want = np.empty_like(x)
        if trad:
            want[:, 0::2], want[:, 1::2] = r1, r2
        else:
            want[:, : hd // 2], want[:, hd // 2:] = r1, r2
        err = float(np.max(np.abs(np.array(got, dtype=np.float64).reshape(hq, hd) - want)))
        # float32 angles up to ~3000 rad carry ~2e-4 rad of rounding: a few 1e-4 on values of a few units
        out.append(RefCheck("rope_qk", f"{hq}x{hd}_{rope}", "float32", err, 4e-3))
    return out


OP = OpInfo(
    name="rope_qk",
    summary="RoPE of q and k at one token in one launch (mx.fast.rope's rope_single arithmetic; Llama3RoPE / "
            "YarnRoPE freqs, mscale)",
    variants=("rope_qk",),
    reference="zmlx.kernels.ops.rope_qk.rope_qk_reference",
    kernel_specs=lambda: {"rope_qk": SPEC},
    check_cases=check_cases,
    reference_checks=reference_checks,
)
