"""zk.quantized_router on the CPU: its semantics (routing(QuantizedLinear(x)), bit for bit), when it takes the
kernel, what the kernel is launched with, and the emitted source. The kernel itself is compared on the GPU
(test_kernels_gpu.py runs router.check_cases: decode shapes of qwen3/lfm2/gpt-oss/mixtral and odd sizes)."""

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from zmlx.kernels import catalogue
from zmlx.kernels import quantized_router as zk_quantized_router
from zmlx.kernels.emit import emit
from zmlx.kernels.ops import router as RT
from zmlx.kernels.ops import routing as R


def _linear(e, d, gs, bits, bias, dtype, key):
    lin = nn.Linear(d, e, bias=bias)
    k1, k2 = mx.random.split(key)
    w = mx.random.normal((e, d), key=k1) * 0.05
    w = mx.where((mx.arange(e) % 4 == 1)[:, None], mx.roll(w, 1, axis=0), w)  # repeated rows: tied logits
    lin.weight = w
    if bias:
        lin.bias = mx.random.normal((e,), key=k2) * 0.1
    lin.set_dtype(dtype)
    return nn.QuantizedLinear.from_linear(lin, group_size=gs, bits=bits)


GATINGS = [
    ("softmax_topk", dict(renormalize=True)),
    ("softmax_topk", dict(renormalize=False, neg_select=True)),
    ("topk_softmax", dict()),
    ("topk_softmax", dict(neg_select=True, fp32=True)),
    ("sigmoid_topk", dict(renormalize=True, eps=1e-6, scale=2.5)),
    ("sigmoid_topk", dict(renormalize=False, neg_select=True)),
]


@pytest.mark.parametrize("dtype", [mx.bfloat16, mx.float16, mx.float32])
@pytest.mark.parametrize("variant,kw", GATINGS)
def test_is_routing_of_quantized_linear(variant, kw, dtype):
    for e, d, gs, bits, bias, k in ((33, 128, 64, 8, False, 4), (123, 256, 32, 4, True, 8), (31, 192, 64, 8, True, 3)):
        lin = _linear(e, d, gs, bits, bias, dtype, mx.random.key(e + d))
        x = mx.random.normal((1, 3, d), key=mx.random.key(7 * e)).astype(dtype)
        kwargs = dict(kw)
        if variant == "sigmoid_topk" and kw.get("renormalize"):
            kwargs["bias"] = R.tied_logits((e,), mx.float32, mx.random.key(e), levels=8.0) / 4
        got = zk_quantized_router(x, (lin.weight, lin.scales, lin.biases), group_size=gs, bits=bits,
                                  variant=variant, k=k, router_bias=lin["bias"] if bias else None, **kwargs)
        want = getattr(R, f"{variant}_reference")(lin(x), k, **kwargs)
        assert got[0].dtype == want[0].dtype and got[1].dtype == want[1].dtype
        assert np.array_equal(np.array(got[0]), np.array(want[0]))
        assert np.array_equal(np.array(got[1].astype(mx.float32)), np.array(want[1].astype(mx.float32)))


def test_rejects_unknown_variant():
    x = mx.ones((1, 128))
    lin = _linear(8, 128, 64, 8, False, mx.float32, mx.random.key(0))
    with pytest.raises(ValueError, match="variant must be one of"):
        RT.quantized_router(x, (lin.weight, lin.scales, lin.biases), group_size=64, bits=8,
                            variant="grouped_sigmoid_topk", k=2)


def _spy(monkeypatch):
    calls = []
    monkeypatch.setattr(RT, "target_for", lambda stream=None: "cuda")
    monkeypatch.setattr(RT, "_launch", lambda *a, **kw: calls.append((a, kw)) or ("kernel",))
    # the fallback's routing op would launch a CUDA routing kernel: stand in for it
    monkeypatch.setattr(RT, "_OPS", {v: (lambda *a, **kw: ("routing op",)) for v in RT.VARIANTS})
    return calls


@pytest.mark.parametrize("case,takes_kernel", [
    (dict(), True),                                  # lfm2-like: bf16, 8-bit g64, one token
    (dict(rows=7), True),                            # MLX still runs qmv below 8 rows
    (dict(rows=8), False),                           # qmm: other numerics
    (dict(dtype=mx.float16), False),                 # fp16/fp32 activations: not mirrored
    (dict(dtype=mx.float32), False),
    (dict(d=64), False),                             # K <= group size: MLX may take qmm_sm90
    (dict(e=513), False),                            # beyond the routing kernel's 512 experts
    (dict(k=17), False),
    (dict(bits=4), True),
    (dict(bias=True), True),
])
def test_kernel_only_where_it_mirrors_mlx(monkeypatch, case, takes_kernel):
    calls = _spy(monkeypatch)
    c = dict(e=32, d=256, gs=64, bits=8, bias=False, dtype=mx.bfloat16, rows=1, k=4) | case
    lin = _linear(c["e"], c["d"], c["gs"], c["bits"], c["bias"], c["dtype"], mx.random.key(1))
    x = mx.random.normal((1, c["rows"], c["d"])).astype(c["dtype"])
    out = RT.quantized_router(x, (lin.weight, lin.scales, lin.biases), group_size=c["gs"], bits=c["bits"],
                              variant="sigmoid_topk", k=c["k"], router_bias=lin["bias"] if c["bias"] else None)
    assert (out == ("kernel",)) == takes_kernel and len(calls) == int(takes_kernel)


@pytest.mark.parametrize("e,k,variant,tg_expected", [(128, 8, "softmax_topk", 32), (32, 4, "sigmoid_topk", 32),
                                                     (8, 2, "topk_softmax", 32), (512, 16, "softmax_topk", 64)])
def test_launch_geometry_and_template(monkeypatch, e, k, variant, tg_expected):
    seen = {}
    monkeypatch.setattr(RT, "launch", lambda spec, backend, **kw: seen.update(kw, spec=spec) or (None, None))
    lin = _linear(e, 256, 64, 8, False, mx.bfloat16, mx.random.key(2))
    x = mx.zeros((1, 1, 256), mx.bfloat16) + 0.5
    RT._launch(variant, x, (lin.weight, lin.scales, lin.biases), None, k, 64, 8, None,
               **({"renormalize": True} if variant == "softmax_topk" else {}))
    tmpl = dict(seen["template"])
    tb = seen["threadgroup"]
    # the routing part is the routing op's own template for logits of x's dtype
    assert tmpl["TG"] == tg_expected and tmpl["E"] == e and tmpl["K"] == k and tmpl["T"] == mx.bfloat16
    assert tb % 32 == 0 and tb >= tmpl["TG"] and tb <= max(256, tmpl["TG"]) and seen["threads"] == tb
    assert tmpl["R"] * (tb // 32) >= min(e, 4 * (tb // 32))  # every expert row has a warp (in at most ceil passes)
    assert tmpl["A"] == mx.float32 and tmpl["BITS"] == 8 and tmpl["QGS"] == 64 and tmpl["HAS_RBIAS"] is False
    assert seen["spec"] is RT.SPECS[variant]


@pytest.mark.parametrize("backend", ["cuda", "metal"])
@pytest.mark.parametrize("variant", RT.VARIANTS)
def test_emitted_body_projects_then_routes(backend, variant):
    src = emit(RT.SPECS[variant], backend).full_text()
    assert "logits +" not in src and "logits_shape" not in src  # the routing body now reads the shared row
    assert src.index("sh_logits[e] = g") < src.index("const auto x = sh_logits") < src.index("Phase B")


def test_body_guard_fails_loudly(monkeypatch):
    monkeypatch.setattr(RT, "_body", lambda mode: "  // a routing body without the logits line\n")
    with pytest.raises(RuntimeError, match="logits"):
        RT._router_body(0)


def test_catalogue_entry_and_checks():
    op = catalogue.find("router")
    assert set(op.kernel_specs()) == set(op.variants) == {f"router_{v}" for v in RT.VARIANTS}
    cases = op.check_cases(0)
    assert len(cases) == len(RT.CASES) and all(c.exact for c in cases)
    for c in cases:  # on the CPU the op is its reference: the checks compare like with like here
        for a, b in zip(c.kernel(), c.reference(), strict=True):
            assert np.array_equal(np.array(a.astype(mx.float32)), np.array(b.astype(mx.float32)))
    assert all(r.passed for r in op.reference_checks(0))
