"""Short conv: the reference is mlx-lm's ShortConv at one token with a cache; bad shapes fail with a clear error."""

import mlx.core as mx
import mlx.nn as nn
import pytest
from zmlx import kernels as zk
from zmlx.kernels.ops import conv

DTYPES = [mx.float32, mx.float16, mx.bfloat16]


def _short_conv_layer(d: int, k: int, bias: bool, dtype: mx.Dtype, seed: int):
    from mlx_lm.models.lfm2 import ModelArgs, ShortConv

    args = ModelArgs(model_type="lfm2", vocab_size=8, hidden_size=d, num_hidden_layers=1, num_attention_heads=1,
                     num_key_value_heads=1, max_position_embeddings=8, norm_eps=1e-5, conv_bias=bias,
                     conv_L_cache=k, block_dim=d, block_ff_dim=d, block_multiple_of=1,
                     block_ffn_dim_multiplier=1.0, block_auto_adjust_ff_dim=False, full_attn_idxs=[])
    layer = ShortConv(args, 0)
    mx.random.seed(seed)
    layer.update(nn.utils.tree_map(lambda a: mx.random.normal(a.shape).astype(dtype), layer.parameters()))
    return layer


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d,k,bias", [(31, 3, False), (33, 3, True), (123, 4, False)])
def test_short_conv_is_mlx_lm_short_conv_at_one_token(dtype, d, k, bias):
    from mlx_lm.models.cache import ArraysCache

    layer = _short_conv_layer(d, k, bias, dtype, seed=d + k)
    keys = mx.random.split(mx.random.key(d), 2)
    x = mx.random.normal((2, 1, d), key=keys[0]).astype(dtype)
    state = mx.random.normal((2, k - 1, d), key=keys[1]).astype(dtype)
    state = mx.where(mx.arange(d) % 5 == 0, state[:, :1], state)  # repeated taps
    cache = ArraysCache(size=1)
    cache[0] = state
    want = layer(x, cache=cache)

    y, new_state = zk.short_conv(layer.in_proj(x), state, layer.conv.weight, layer.conv.get("bias"))
    got = layer.out_proj(y)
    assert got.dtype == want.dtype and mx.array_equal(got, want).item()
    assert mx.array_equal(new_state, cache[0]).item()


def test_short_conv_rejects_what_it_does_not_compute():
    bcx, state, w = mx.zeros((1, 1, 96)), mx.zeros((1, 2, 32)), mx.zeros((32, 3, 1))
    with pytest.raises(ValueError, match="one token"):
        zk.short_conv(mx.zeros((1, 2, 96)), state, w)
    with pytest.raises(ValueError, match="state must be"):
        zk.short_conv(bcx, mx.zeros((1, 2, 31)), w)
    with pytest.raises(ValueError, match="depthwise"):
        zk.short_conv(bcx, state, mx.zeros((32, 3, 32)))
    with pytest.raises(ValueError, match="bias"):
        zk.short_conv(bcx, state, w, mx.zeros((31,)))
    with pytest.raises(ValueError, match="dtype"):
        zk.short_conv(bcx, state.astype(mx.float16), w)


def test_reference_against_float64():
    checks = conv.reference_checks(seed=4)
    assert len(checks) == 3 and all(c.passed for c in checks), checks


def test_check_cases_cover_odd_widths_and_exact_dtypes_only():
    cases = conv.check_cases(seed=0)
    assert {c.dtype for c in cases} == {"bfloat16", "float16"}  # float32 runs the reference itself
    assert all(c.exact for c in cases)
    assert any("d31" in c.variant for c in cases) and any("d123" in c.variant and "bias" in c.variant for c in cases)


def test_the_kernel_runs_only_where_it_is_exact(monkeypatch):
    launched: list[str] = []
    monkeypatch.setattr(conv, "target_for", lambda stream=None: "cuda")  # as on a CUDA host
    monkeypatch.setattr(conv, "launch", lambda spec, *a, **kw: launched.append(str(kw["template"][0][1])) or [
        mx.zeros(kw["output_shapes"][0], kw["output_dtypes"][0]), mx.zeros(kw["output_shapes"][1])])
    state = mx.ones((1, 2, 32))
    for act, wt in ((mx.float32, mx.float32), (mx.bfloat16, mx.float32), (mx.float16, mx.bfloat16)):
        bcx, w = mx.ones((1, 1, 96), act), mx.ones((32, 3, 1), wt)
        zk.short_conv(bcx, state.astype(act), w)  # the reference: MLX's conv rounds these its own way
    assert launched == []
    zk.short_conv(mx.ones((1, 1, 96), mx.bfloat16), state.astype(mx.bfloat16), mx.ones((32, 3, 1), mx.bfloat16))
    assert launched == ["mlx.core.bfloat16"]


# --- short_conv_proj: in_proj computed inside the short-conv launch ----------------------------------------------


def _quantized_short_conv(d: int, k: int, bias: bool, dtype: mx.Dtype, seed: int, bits: int = 4):
    layer = _short_conv_layer(d, k, bias, dtype, seed)
    layer.in_proj.pop("bias", None)  # conv_bias also biases in_proj; the op takes a bias-free in_proj (LFM2's)
    layer.in_proj = nn.QuantizedLinear.from_linear(layer.in_proj, group_size=64, bits=bits)
    return layer


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d,k,bias,bits", [(64, 3, False, 4), (128, 3, True, 8), (192, 4, False, 4)])
def test_short_conv_proj_is_mlx_lm_short_conv_with_its_in_proj(dtype, d, k, bias, bits):
    from mlx_lm.models.cache import ArraysCache

    layer = _quantized_short_conv(d, k, bias, dtype, seed=d + k, bits=bits)
    keys = mx.random.split(mx.random.key(d + 1), 2)
    x = mx.random.normal((1, 1, d), key=keys[0]).astype(dtype)
    state = mx.random.normal((1, k - 1, d), key=keys[1]).astype(dtype)
    cache = ArraysCache(size=1)
    cache[0] = state
    want = layer(x, cache=cache)

    p = layer.in_proj
    y, new_state = zk.short_conv_proj(x, (p.weight, p.scales, p.biases), state, layer.conv.weight,
                                      layer.conv.get("bias"), group_size=64, bits=bits)
    got = layer.out_proj(y)
    assert got.dtype == want.dtype and mx.array_equal(got, want).item()
    assert mx.array_equal(new_state, cache[0]).item()


def _proj_args(d=64, kdim=128, bits=4, dtype=mx.bfloat16, n=1, k=3):
    w = mx.quantize(mx.random.normal((3 * d, kdim)).astype(dtype), group_size=64, bits=bits)
    return (mx.ones((n, 1, kdim), dtype), w, mx.ones((n, k - 1, d), dtype), mx.ones((d, k, 1), dtype))


@pytest.mark.parametrize("over,takes_kernel", [
    (dict(), True), (dict(bits=8), True), (dict(d=33, kdim=320), True),
    (dict(dtype=mx.float16), False), (dict(dtype=mx.float32), False),
    (dict(n=2), False),        # one token of one sequence only
    (dict(kdim=64), False),    # K <= group size: MLX may take qmm_sm90
])
def test_short_conv_proj_kernel_only_where_it_mirrors_mlx(monkeypatch, over, takes_kernel):
    seen = []
    monkeypatch.setattr(conv, "target_for", lambda stream=None: "cuda")
    monkeypatch.setattr(conv, "launch", lambda spec, backend, **kw: seen.append((spec, kw)) or [
        mx.zeros(s, t) for s, t in zip(kw["output_shapes"], kw["output_dtypes"], strict=True)])
    args = _proj_args(**over)
    conv.short_conv_proj(*args, group_size=64, bits=over.get("bits", 4))
    assert [s.name for s, _ in seen] == (["short_conv_proj"] if takes_kernel else ["short_conv"] * (
        over.get("dtype", mx.bfloat16) != mx.float32))  # the fallback's short_conv runs its own kernel where exact
    if takes_kernel:
        kw = dict(seen[0][1]["template"])
        d = args[2].shape[-1]
        assert seen[0][1]["threads"] == -(-d // kw["CB"]) * seen[0][1]["threadgroup"] and kw["ORDER"] == conv.CUDA_ORDER


def test_short_conv_proj_body_is_short_conv_tail_on_shared_rows():
    # the per-channel tail is short_conv's own text with its three reads of bcx redirected to the shared rows,
    # and short_conv's kernel (checked on the H100) is unchanged by the derivation
    assert conv.SPEC.kernel_name == "zmlx_short_conv_b13d8ffebb"
    body = conv.PROJ_SPEC.body
    assert "bcx" not in body and body.count("sh_b[ch], sh_v[ch]") == 1 and body.count("sh_c[ch]") == 1
    assert body.index("sh_v[e] = g;") < body.index("ZM_BARRIER()") < body.index("const T bx")
