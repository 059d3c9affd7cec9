"""A Llama-style attention block's prologue at one token in one launch: q/k/v projections (+ their biases), RoPE.

For attention without q/k norms (llama, qwen2, mixtral, gpt-oss): three affine-quantized ``QuantizedLinear`` projections (MLX
``qmv`` launches, then ``+ bias`` as its own rounding where the layer has one), the reshapes, ``mx.fast.rope`` of q
and k (``nn.RoPE``: base and scale; ``Llama3RoPE``: its precomputed ``freqs``; ``YarnRoPE``: freqs, q and k first
scaled by its ``mscale``) and the value transpose. The kernel
runs qkv.py's layout, one threadgroup per head (q heads, then k, then v): the head's rows in MLX's CUDA qmv numerics
(_qmv.py) into shared memory, rounded to the activations' dtype, the bias added as its own rounding; v heads write
them out, q/k heads rotate them as MLX's CUDA ``rope_single`` kernel does at one token (``inv_freq`` as
``exp2(-d * log2(base))`` or ``1 / freqs[d]``, ``theta = scale * offset * inv_freq``, the same two products per pair).
With ``input_norm`` the decoder layer's RMSNorm runs first in every block (qkv.py's ``INPUT_NORM``).

Kernel path: CUDA, one token, bf16 activations/scales/biases, the three projections affine with one group size and
bit width, RoPE over the whole head. Everything else runs the reference's MLX ops, which are the block's own.
Bit-exact on the H100 (9282618, YarnRoPE too), but one block a head: 88 us a llama layer on the device (perf-notes
v9), so zmlx-patch uses it only under ``patch(model, fuse_qkv=True)`` in a layer traced by ``attention_layer``.
"""

from __future__ import annotations

import mlx.core as mx

from ..backend import constant, launch, position_input, target_for
from ..emit import KernelSpec, Param
from ._base import CheckCase, OpInfo, RefCheck
from ._qmv import qmv_rows, rows_per_warp
from .attention import _log2f
from .moe_experts import Quant
from .norms import mlx_rms_layout
from .qkv import (
    CHECK_SHAPE,
    INPUT_NORM,
    QMV_X,
    _project,
    input_norm_fits,
    make_case,
    projections_fit,
    value_checks,
)

# MLX's rope_single for pair p of one head at one token (inside a loop over p; `pos` = scale * offset, `dst` the
# output row): the rotation GPU-exact in this kernel since 9282618, shared with rope_qk.py; @SRC@ names the input row
ROTATE_PAIR = """\
    const float inv_freq = HAS_FREQS ? 1.0f / freqs[p]
                                     : zm_exp2f(-(static_cast<float>(p) / static_cast<float>(HD / 2)) * params[0]);
    const float theta = pos * inv_freq;
    const float costheta = zm_cosf(theta);
    const float sintheta = zm_sinf(theta);
    const int i1 = TRADITIONAL ? 2 * p : p;
    const int i2 = TRADITIONAL ? i1 + 1 : i1 + HD / 2;
    // YarnRoPE scales q and k first (x.at[..., :dims].multiply(mscale): one rounding in T)
    const float x1 = static_cast<float>(HAS_MSCALE ? zm_mul(@SRC@[i1], static_cast<T>(params[2])) : @SRC@[i1]);
    const float x2 = static_cast<float>(HAS_MSCALE ? zm_mul(@SRC@[i2], static_cast<T>(params[2])) : @SRC@[i2]);
    const float rx1 = x1 * costheta - x2 * sintheta;
    const float rx2 = x1 * sintheta + x2 * costheta;
    dst[i1] = static_cast<T>(rx1);
    dst[i2] = static_cast<T>(rx2);
"""

_BODY = """\
  const int hb = int(zm_bid);  // q heads, then k heads, then v heads
  if (hb >= HQ + 2 * HK) return;
  ZM_SHARED float rms_partial[32];
  ZM_SHARED T proj[HD];
  const int which = hb < HQ ? 0 : (hb < HQ + HK ? 1 : 2);
  const int h = which == 0 ? hb : (which == 1 ? hb - HQ : hb - HQ - HK);
  ZM_DEVICE const uint32_t* qmv_w = which == 0 ? w_q : (which == 1 ? w_k : w_v);
  ZM_DEVICE const T* qmv_s = which == 0 ? s_q : (which == 1 ? s_k : s_v);
  ZM_DEVICE const T* qmv_b = which == 0 ? b_q : (which == 1 ? b_k : b_v);
  ZM_DEVICE const T* lin_b = which == 0 ? lb_q : (which == 1 ? lb_k : lb_v);
  const int qmv_kw = w_q_shape[w_q_ndim - 1];
""" + QMV_X + """\
  const int qmv_rows = HD;
  const int qmv_row0 = h * HD;
""" + qmv_rows("if (HAS_BIAS) g = zm_add_rn(g, lin_b[qmv_row0 + e]);\n          proj[e] = g;") + """\
  ZM_BARRIER();
  if (which == 2) {  // v: the projection itself, at (b, h, l) = (0, h, 0)
    for (int e = int(zm_tid); e < HD; e += int(zm_bdim)) v_out[h * HD + e] = proj[e];
    return;
  }
  // MLX's rope_single at one token: position scale * offset, one (cos, sin) per pair (attention.py's NORM_ROPE
  // rotates alike; its text is left as the GPU tested it rather than shared with this one)
  ZM_DEVICE T* dst = (which == 0 ? q_out : k_out) + h * HD;
  const float pos = params[1] * static_cast<float>(pos0[0]);
  for (int p = int(zm_tid); p < HD / 2; p += int(zm_bdim)) {
""" + ROTATE_PAIR.replace("@SRC@", "proj") + """\
  }
"""

_INPUTS = (Param("x"), Param("w_q", "uint32_t"), Param("s_q"), Param("b_q"), Param("w_k", "uint32_t"), Param("s_k"),
           Param("b_k"), Param("w_v", "uint32_t"), Param("s_v"), Param("b_v"), Param("lb_q"), Param("lb_k"),
           Param("lb_v"), Param("freqs", "float"), Param("params", "float"), Param("pos0", "int32_t"))
_TEMPLATES = (("T", "float"), ("A", "float"), ("BITS", 4), ("QGS", 64), ("R", 4), ("HD", 128), ("HQ", 4), ("HK", 2),
              ("HAS_BIAS", False), ("HAS_FREQS", False), ("HAS_MSCALE", False), ("TRADITIONAL", False))
SPEC = KernelSpec(name="qkv_rope", inputs=_INPUTS, outputs=(Param("q_out"), Param("k_out"), Param("v_out")),
                  body=_BODY, templates=_TEMPLATES)
# with the decoder layer's input RMSNorm in front (qkv.py's INPUT_NORM: each block into its own row of xn)
SPEC_IN = KernelSpec(name="qkv_rope_in", inputs=(_INPUTS[0], Param("in_w"), Param("in_eps", "float"), *_INPUTS[1:]),
                     outputs=(*SPEC.outputs, Param("xn")), body=_BODY.replace(QMV_X, INPUT_NORM),
                     templates=(*_TEMPLATES, ("IBS", 128), ("ICH", 2), ("IRD", 8)))
_THREADS = 256
Biases = tuple[mx.array | None, mx.array | None, mx.array | None]


def qkv_rope_reference(x: mx.array, q: Quant, k: Quant, v: Quant, *, n_heads: int, n_kv_heads: int, group_size: int,
                       bits: int, offset: int | mx.array, base: float | None = None, freqs: mx.array | None = None,
                       scale: float = 1.0, traditional: bool = False, biases: Biases = (None, None, None),
                       input_norm: tuple[mx.array, float] | None = None, mscale: float = 1.0):
    """Llama's attention up to the cache: (input RMSNorm,) projections (+ bias), reshapes, ``mx.fast.rope``
    (after YarnRoPE's ``x.at[..., :dims].multiply(mscale)`` where ``mscale != 1``)."""
    if input_norm is not None:
        x = mx.fast.rms_norm(x, *input_norm)
    b, seq, _ = x.shape
    outs = []
    for p, bias, n in zip((q, k, v), biases, (n_heads, n_kv_heads, n_kv_heads), strict=True):
        y = _project(x, p, group_size, bits)
        outs.append((y if bias is None else y + bias).reshape(b, seq, n, -1).transpose(0, 2, 1, 3))
    dims = outs[0].shape[-1]
    if mscale != 1.0:
        outs[:2] = [y.at[..., :dims].multiply(mscale) for y in outs[:2]]
    rope = dict(traditional=traditional, base=base, scale=scale, offset=offset, freqs=freqs)
    return mx.fast.rope(outs[0], dims, **rope), mx.fast.rope(outs[1], dims, **rope), outs[2]


def _fits(x, quants, biases, freqs, head_dim, n_heads, n_kv_heads, group_size, bits, base) -> bool:
    rows = (n_heads * head_dim, n_kv_heads * head_dim, n_kv_heads * head_dim)
    return ((freqs is not None or base is not None)
            and (freqs is None or (freqs.dtype == mx.float32 and freqs.shape == (head_dim // 2,)))
            and len({b is None for b in biases}) == 1  # all three biased or none (one HAS_BIAS)
            and all(b is None or (b.dtype == x.dtype and b.shape == (n,)) for b, n in zip(biases, rows, strict=True))
            and projections_fit(x, quants, head_dim, n_heads, n_kv_heads, group_size, bits))


def qkv_rope(x: mx.array, q: Quant, k: Quant, v: Quant, *, n_heads: int, n_kv_heads: int, group_size: int, bits: int,
             offset: int | mx.array, base: float | None = None, freqs: mx.array | None = None, scale: float = 1.0,
             traditional: bool = False, biases: Biases = (None, None, None),
             input_norm: tuple[mx.array, float] | None = None, mscale: float = 1.0, stream: mx.Stream | None = None):
    """``x``: (B, L, D) -> q (B, HQ, L, HD), k and v (B, HK, L, HD): projected (``biases`` added), q/k rotated by
    ``mx.fast.rope`` over the whole head (``base`` or ``freqs``, ``scale``, ``traditional``). ``input_norm = (w, eps)``:
    ``x`` un-normalised, the decoder layer's RMSNorm first. ``mscale``: YarnRoPE's scaling of q and k before the
    rotation. ``offset``: an int or one int32 array."""
    if (base is None) == (freqs is None):
        raise ValueError("qkv_rope: give exactly one of base and freqs")
    head_dim = q[0].shape[0] // n_heads
    kw = dict(n_heads=n_heads, n_kv_heads=n_kv_heads, group_size=group_size, bits=bits, offset=offset, base=base,
              freqs=freqs, scale=scale, traditional=traditional, biases=biases, mscale=mscale)
    fits = target_for(stream) == "cuda" and _fits(x, (q, k, v), biases, freqs, head_dim, n_heads, n_kv_heads,
                                                  group_size, bits, base)
    if input_norm is not None and not (fits and input_norm_fits(x, input_norm[0], _THREADS)):
        x, input_norm = mx.fast.rms_norm(x, *input_norm, stream=stream), None  # the layer's norm, as it runs it
    if not fits:  # the block's own MLX ops (Metal's qmv sums in another order; the CPU's are the reference)
        return qkv_rope_reference(x, q, k, v, input_norm=input_norm, **kw)
    blocks, bias = n_heads + 2 * n_kv_heads, next((b for b in biases if b is not None), None)
    template = [("T", x.dtype), ("A", mx.float32 if bits == 8 else x.dtype), ("BITS", bits), ("QGS", group_size),
                ("R", rows_per_warp(bits, head_dim, _THREADS // 32)), ("HD", head_dim), ("HQ", n_heads),
                ("HK", n_kv_heads), ("HAS_BIAS", bias is not None), ("HAS_FREQS", freqs is not None),
                ("HAS_MSCALE", mscale != 1.0), ("TRADITIONAL", traditional)]
    params = constant((_log2f(base) if base is not None else 0.0, scale, mscale))
    lin = tuple(b if b is not None else q[1] for b in biases)  # placeholders the kernel does not read
    tail = (*lin, freqs if freqs is not None else params, params, position_input(offset))
    shapes = [(1, n_heads, 1, head_dim), (1, n_kv_heads, 1, head_dim), (1, n_kv_heads, 1, head_dim)]
    if input_norm is None:
        spec, inputs, extra = SPEC, (x, *q, *k, *v, *tail), []
    else:
        spec, extra = SPEC_IN, [(blocks, x.shape[-1])]
        inputs = (x, input_norm[0], constant((input_norm[1],)), *q, *k, *v, *tail)
        template += list(zip(("IBS", "ICH", "IRD"), mlx_rms_layout(x.shape[-1], x.dtype), strict=True))
    out = launch(spec, "cuda", inputs=inputs, output_shapes=shapes + extra, output_dtypes=[x.dtype] * (3 + len(extra)),
                 threads=blocks * _THREADS, threadgroup=_THREADS, template=template, stream=stream)
    return tuple(out[:3])


# --- checks: llama-3-8b (32/8 x 128, D 4096, Llama3RoPE), qwen2 (biases, base), gpt-oss (YarnRoPE), odd sizes ----

# (HQ, HK, HD, D, group size, bits, offset, rope: "base", "freqs" or "yarn" (freqs + mscale), biases, traditional,
# input norm)
CASES = (
    (32, 8, 128, 4096, 64, 4, 517, "freqs", False, False, True),
    (28, 4, 128, 3584, 64, 4, 3001, "base", True, False, True),
    (5, 1, 64, 320, 32, 8, 123, "base", True, True, False),
    (3, 3, 128, 640, 128, 4, 31, "freqs", False, False, False),
    (64, 8, 64, 2880, 64, 4, 777, "yarn", True, False, True),  # gpt-oss: biases, YarnRoPE's freqs and mscale
)


def _case(hq, hk, hd, d, gs, bits, rope, bias, key, dtype=mx.bfloat16):
    x, (q, k, v), _, _ = make_case(hq, hk, hd, d, gs, bits, key, dtype)
    kb, kf = mx.random.split(mx.random.split(key)[1])
    biases = tuple((0.5 * mx.random.normal((n * hd,), key=kk)).astype(x.dtype)
                   for n, kk in zip((hq, hk, hk), mx.random.split(kb, 3), strict=True)) if bias else (None,) * 3
    # Llama3RoPE-like: smooth frequencies with a stretched tail
    freqs = (10000.0 ** (mx.arange(0, hd, 2, dtype=mx.float32) / hd)) * (1 + 7 * (mx.arange(hd // 2) > hd // 4))
    if rope == "yarn":
        return x, (q, k, v), biases, dict(freqs=freqs.astype(mx.float32), mscale=1.3465735902799727)
    return x, (q, k, v), biases, dict(freqs=freqs.astype(mx.float32)) if rope == "freqs" else dict(base=500000.0)


def check_cases(seed: int) -> list[CheckCase]:
    cases = []
    key = mx.random.key(seed)
    for hq, hk, hd, d, gs, bits, offset, rope, bias, trad, norm in CASES:
        key, sub = mx.random.split(key)
        x, (q, k, v), biases, rope_kw = _case(hq, hk, hd, d, gs, bits, rope, bias, sub)
        kw = dict(n_heads=hq, n_kv_heads=hk, group_size=gs, bits=bits, offset=offset, traditional=trad,
                  biases=biases, **rope_kw)
        if norm:  # the un-normalised row and the layer's RMSNorm
            x = 3 * x
            kw["input_norm"] = ((1 + 0.1 * mx.random.normal((d,), key=sub)).astype(x.dtype), 1e-5)
        # the first case passes the position as a device array, as a traced decode step does
        kern = dict(kw, offset=mx.array([offset], dtype=mx.int32)) if rope == "freqs" and norm else kw
        cases.append(CheckCase(
            op="qkv_rope", variant=f"HQ{hq} HK{hk} HD{hd} D{d} g{gs} {bits}-bit {rope}{' +bias' if bias else ''}"
                                   f"{' traditional' if trad else ''}{' +input norm' if norm else ''}",
            dtype="bfloat16",
            kernel=lambda a=(x, q, k, v), kw_=kern: list(qkv_rope(*a, **kw_)),
            reference=lambda a=(x, q, k, v), kw_=kw: list(qkv_rope_reference(*a, **kw_)),
            exact=True,
        ))
    return cases


def reference_checks(seed: int) -> list[RefCheck]:
    """The reference's v (projection + bias) against float64 math on the dequantized weights; q/k are
    ``mx.fast.rope`` of the same projections, MLX's own op."""
    hq, hk, hd, d, gs, bits = CHECK_SHAPE

    def run(dtype, key):
        x, (q, k, v), biases, rope = _case(hq, hk, hd, d, gs, bits, "base", True, key, dtype)
        _, _, got = qkv_rope_reference(x, q, k, v, n_heads=hq, n_kv_heads=hk, group_size=gs, bits=bits, offset=5,
                                       biases=biases, **rope)
        return x, v, got, biases[2]

    return value_checks("qkv_rope", "v + bias", seed, run)


OP = OpInfo(
    name="qkv_rope",
    summary="Llama-style attention prologue at one token: (input RMSNorm,) q/k/v projections (+ bias), RoPE",
    variants=("qkv_rope", "qkv_rope_in"),
    reference="zmlx.kernels.ops.qkv_rope.qkv_rope_reference",
    kernel_specs=lambda: {"qkv_rope": SPEC, "qkv_rope_in": SPEC_IN},
    check_cases=check_cases,
    reference_checks=reference_checks,
)
