"""zk.add_norm_router on the CPU: its semantics (the layer's add + RMSNorm, then routing(QuantizedLinear(normed))),
when the one launch is taken and with what, and the spliced source. The kernel itself is compared bit for bit on
the GPU (test_kernels_gpu.py runs norm_router.check_cases: the decode shapes of qwen3/lfm2/gpt-oss/mixtral and
odd sizes, tied router rows)."""

import mlx.core as mx
import mlx.nn as nn
import pytest
from zmlx.kernels import add_norm_router
from zmlx.kernels.ops import norm_router as NR
from zmlx.kernels.ops import router as RT
from zmlx.kernels.ops import routing as R


def _layer_inputs(e: int, d: int, dtype, seed: int, bits: int = 8, gs: int = 64):
    key = mx.random.key(seed)
    k1, k2, k3, k4 = mx.random.split(key, 4)
    x = mx.random.normal((1, 1, d), key=k1).astype(dtype)
    r = (3 * mx.random.normal((1, 1, d), key=k2)).astype(dtype)
    norm = nn.RMSNorm(d, eps=1e-6)
    norm.weight = (1 + 0.1 * mx.random.normal((d,), key=k3)).astype(dtype)
    lin = nn.Linear(d, e, bias=False)
    w = mx.random.normal((e, d), key=k4) * 0.05
    lin.weight = mx.where((mx.arange(e) % 4 == 1)[:, None], mx.roll(w, 1, axis=0), w)  # tied rows: tied logits
    lin.set_dtype(dtype)
    router = nn.QuantizedLinear.from_linear(lin, group_size=gs, bits=bits)
    return x, r, norm, router


@pytest.mark.parametrize("dtype", [mx.bfloat16, mx.float16, mx.float32])
@pytest.mark.parametrize("e,d", [(128, 2048), (33, 320), (31, 192)])
def test_is_the_layers_add_norm_then_routing_of_its_router(e, d, dtype):
    x, r, norm, router = _layer_inputs(e, d, dtype, seed=e + d)
    quant = (router.weight, router.scales, router.biases)
    # sigmoid gating's own eps next to the norm's: the two must not be confused
    gating = dict(renormalize=True, eps=1e-3, scale=2.5)
    h, normed, inds, weights = add_norm_router(x, r, norm.weight, norm.eps, quant, group_size=64, bits=8,
                                               variant="sigmoid_topk", k=4, **gating)
    want_h = x + r
    want_normed = norm(want_h)
    want_inds, want_w = R.sigmoid_topk_reference(router(want_normed), 4, **gating)
    mx.eval(h, normed, inds, weights)
    assert mx.array_equal(h, want_h).item() and mx.array_equal(normed, want_normed).item()
    assert mx.array_equal(inds, want_inds).item() and mx.array_equal(weights, want_w).item()
    assert mx.sum(want_normed != 0).item() > d // 2 and len(set(inds.flatten().tolist())) == 4  # not zeros; 4 experts


def _args(e, d, dtype=mx.bfloat16, weight_dtype=None, bits=8):
    x, r, norm, router = _layer_inputs(e, d, dtype, seed=7, bits=bits)
    w = norm.weight if weight_dtype is None else norm.weight.astype(weight_dtype)
    return NR.fused_launch_args(x, r, w, (router.weight, router.scales, router.biases), None, min(8, e), 64, bits,
                                "softmax_topk", renormalize=True)


def test_one_launch_where_the_block_can_sum_as_mlx_rms_norm_does():
    args = _args(128, 2048)  # qwen3-30b-a3b: 256 threads, MLX's rms_norm on 128 of them, 2 chunks of 8
    tmpl = dict(args["template"])
    assert args["threadgroup"] == 256 and (tmpl["BS"], tmpl["NCH"], tmpl["NRD"]) == (128, 2, 8)
    assert dict(_args(32, 2880)["template"])["BS"] == 128  # gpt-oss's unaligned row
    assert _args(2, 2048) is None, "a 64-thread router block cannot hold MLX's 128 rms_norm threads"
    assert _args(32, 12288) is None, "MLX's 1024-thread rms_norm past 8192 bf16"
    assert _args(128, 2048, weight_dtype=mx.float32) is None and _args(128, 2048, dtype=mx.float16) is None


def test_the_splice_normalises_then_projects_normed():
    for variant, spec in NR.SPECS.items():
        body = spec.body
        assert "qmv_x = hidden" not in body and body.count("qmv_x = normed + base;") == 1
        barrier = body.index("ZM_DEVICE_BARRIER();")
        assert body.index("normed[base + e] =") < barrier < body.index("qmv_x = normed"), variant
        assert body.count("ZM_SHARED float rms_partial[32];") == 1 and "NRD" in body
        assert [p.name for p in spec.outputs] == ["inds", "weights", "h_out", "normed"]
        # the router's inputs follow the add + norm's
        assert [p.name for p in spec.inputs][:4] == ["hidden", "resid", "nw", "neps"]
        assert [p.name for p in spec.inputs][4:] == [p.name for p in RT.SPECS[variant].inputs][1:]


def test_bad_arguments_are_refused():
    x, r, norm, router = _layer_inputs(8, 128, mx.bfloat16, seed=3)
    quant = (router.weight, router.scales, router.biases)
    with pytest.raises(ValueError, match="variant must be one of"):
        add_norm_router(x, r, norm.weight, 1e-6, quant, group_size=64, bits=8, variant="top1", k=2)
    with pytest.raises(ValueError, match="share shape and dtype"):
        add_norm_router(x, r[..., :64], norm.weight, 1e-6, quant, group_size=64, bits=8, variant="topk_softmax",
                        k=2)
