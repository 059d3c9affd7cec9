"""zk.qkv_rope on the CPU: its semantics (Llama's attention up to the cache: projections + bias, reshapes,
mx.fast.rope with base or freqs, and the layer's input norm when given), when the one launch is taken, and the
emitted body. The kernel itself is compared bit for bit on the GPU (test_kernels_gpu.py runs qkv_rope.check_cases:
llama-3-8b's shape with Llama3RoPE freqs, a biased qwen2 shape, odd sizes)."""

import mlx.core as mx
import mlx.nn as nn
import pytest
from mlx_lm.models.rope_utils import Llama3RoPE, YarnRoPE
from zmlx.kernels import qkv_rope
from zmlx.kernels.ops import qkv_rope as QR


def _attention(hq, hk, hd, d, bias, dtype, seed):
    key = mx.random.key(seed)
    ks = mx.random.split(key, 4)
    lins = []
    for n, kk in zip((hq, hk, hk), ks[:3], strict=True):
        lin = nn.Linear(d, n * hd, bias=bias)
        lin.weight = mx.random.normal((n * hd, d), key=kk) * 0.05
        if bias:
            lin.bias = mx.random.normal((n * hd,), key=mx.random.split(kk)[1]) * 0.5
        lin.set_dtype(dtype)
        lins.append(nn.QuantizedLinear.from_linear(lin, group_size=64, bits=4))
    x = (3 * mx.random.normal((1, 1, d), key=ks[3])).astype(dtype)
    return x, lins


def _llama_prologue(x, lins, hq, hk, rope, offset):
    outs = [lin(x).reshape(1, 1, n, -1).transpose(0, 2, 1, 3) for lin, n in zip(lins, (hq, hk, hk), strict=True)]
    return rope(outs[0], offset=offset), rope(outs[1], offset=offset), outs[2]


ROPES = {
    "rope": lambda hd: nn.RoPE(hd, base=500000.0, scale=0.5),
    "rope-traditional": lambda hd: nn.RoPE(hd, traditional=True, base=10000.0),
    "llama3": lambda hd: Llama3RoPE(hd, max_position_embeddings=131072, base=500000.0, scaling_config={
        "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}),
    # gpt-oss's: freqs, and q/k scaled by mscale (~1.35) before the rotation
    "yarn": lambda hd: YarnRoPE(hd, max_position_embeddings=131072, base=150000.0, scaling_factor=32.0,
                                original_max_position_embeddings=4096, beta_fast=32.0, beta_slow=1.0),
}


def _rope_kwargs(rope) -> dict:
    if isinstance(rope, YarnRoPE):
        assert rope.mscale != 1.0
        return dict(freqs=rope._freqs, traditional=rope.traditional, mscale=rope.mscale)
    if isinstance(rope, Llama3RoPE):
        return dict(freqs=rope._freqs, traditional=rope.traditional)
    return dict(base=rope.base, scale=rope.scale, traditional=rope.traditional)


@pytest.mark.parametrize("dtype", [mx.bfloat16, mx.float16, mx.float32])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("rope_name", list(ROPES))
def test_is_llamas_attention_prologue(rope_name, bias, dtype):
    hq, hk, hd, d = 5, 1, 64, 320
    x, lins = _attention(hq, hk, hd, d, bias, dtype, seed=hd + bias)
    rope = ROPES[rope_name](hd)
    want = _llama_prologue(x, lins, hq, hk, rope, 123)
    quants = [(lin.weight, lin.scales, lin.biases) for lin in lins]
    biases = tuple(lin.bias for lin in lins) if bias else (None, None, None)
    got = qkv_rope(x, *quants, n_heads=hq, n_kv_heads=hk, group_size=64, bits=4, offset=mx.array([123], mx.int32),
                   biases=biases, **_rope_kwargs(rope))
    assert all(mx.array_equal(a, b).item() for a, b in zip(got, want, strict=True))
    # the layer's input norm first, when given
    w = (1 + 0.1 * mx.random.normal((d,), key=mx.random.key(3))).astype(dtype)
    got = qkv_rope(x, *quants, n_heads=hq, n_kv_heads=hk, group_size=64, bits=4, offset=123, biases=biases,
                   input_norm=(w, 1e-5), **_rope_kwargs(rope))
    want = _llama_prologue(mx.fast.rms_norm(x, w, 1e-5), lins, hq, hk, rope, 123)
    assert all(mx.array_equal(a, b).item() for a, b in zip(got, want, strict=True))


def test_kernel_path_limits():
    x, lins = _attention(4, 2, 64, 256, True, mx.bfloat16, seed=1)
    quants = tuple((lin.weight, lin.scales, lin.biases) for lin in lins)
    biases = tuple(lin.bias for lin in lins)
    args = (x, quants, biases, None, 64, 4, 2, 64, 4, 10000.0)
    assert QR._fits(*args)
    assert not QR._fits(x, quants, (biases[0], None, None), *args[3:]), "all three biased or none"
    assert not QR._fits(x.astype(mx.float16), *args[1:])
    assert not QR._fits(mx.concatenate([x, x], axis=1), *args[1:]), "one token only"
    assert QR._fits(x, quants, biases, mx.ones((32,), mx.float32), 64, 4, 2, 64, 4, None)
    assert not QR._fits(x, quants, biases, mx.ones((16,), mx.float32), 64, 4, 2, 64, 4, None)


def test_bad_arguments_are_refused():
    x, lins = _attention(4, 2, 64, 256, False, mx.bfloat16, seed=2)
    quants = [(lin.weight, lin.scales, lin.biases) for lin in lins]
    for rope in ({}, {"base": 1e4, "freqs": mx.ones((32,))}):
        with pytest.raises(ValueError, match="exactly one of base and freqs"):
            qkv_rope(x, *quants, n_heads=4, n_kv_heads=2, group_size=64, bits=4, offset=0, **rope)


def test_body_rotates_the_shared_row_as_mlx_rope_single():
    body = QR.SPEC.body
    assert "1.0f / freqs[p]" in body and "zm_exp2f(" in body and "params[1] * static_cast<float>(pos0[0])" in body
    assert "if (HAS_BIAS) g = zm_add_rn(g, lin_b[qmv_row0 + e]);" in body
    assert body.count("HAS_MSCALE ? zm_mul(proj[i") == 2, "YarnRoPE's mscale: q and k, one rounding each"
    assert "qmv_x = xrow;" in QR.SPEC_IN.body and "qmv_x = x;" not in QR.SPEC_IN.body
