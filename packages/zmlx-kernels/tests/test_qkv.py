"""zk.qkv_norm_rope on the CPU: its semantics (three QuantizedLinear projections, then qk_norm_rope and the value
transpose, bit for bit), when it takes the kernel, what the kernel is launched with, and its emitted source. The
kernel itself is compared on the GPU (test_kernels_gpu.py runs qkv.check_cases)."""

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from zmlx.kernels import catalogue
from zmlx.kernels import qkv_norm_rope as zk_qkv_norm_rope
from zmlx.kernels.emit import emit
from zmlx.kernels.ops import attention as ATT
from zmlx.kernels.ops import qkv as QKV


def _proj(n, d, gs, bits, dtype, key):
    lin = nn.Linear(d, n, bias=False)
    lin.weight = mx.random.normal((n, d), key=key) * 0.05
    lin.set_dtype(dtype)
    return nn.QuantizedLinear.from_linear(lin, group_size=gs, bits=bits)


def _quant(lin):
    return (lin.weight, lin.scales, lin.biases)


@pytest.mark.parametrize("dtype", [mx.bfloat16, mx.float16, mx.float32])
@pytest.mark.parametrize("hq,hk,hd,d,gs,bits,seq", [(4, 2, 64, 256, 64, 4, 1), (5, 1, 32, 128, 32, 8, 3),
                                                     (3, 3, 128, 192, 64, 4, 1)])
def test_is_projections_then_qk_norm_rope(dtype, hq, hk, hd, d, gs, bits, seq):
    ks = mx.random.split(mx.random.key(hq * hd + d), 6)
    q, k, v = (_proj(n * hd, d, gs, bits, dtype, kk) for n, kk in ((hq, ks[0]), (hk, ks[1]), (hk, ks[2])))
    qw = (1 + 0.2 * mx.random.normal((hd,), key=ks[3])).astype(dtype)
    kw = (1 + 0.2 * mx.random.normal((hd,), key=ks[4])).astype(dtype)
    x = mx.random.normal((1, seq, d), key=ks[5]).astype(dtype)
    args = dict(offset=77, base=1e6, scale=1.0, traditional=bits == 8)
    got = zk_qkv_norm_rope(x, _quant(q), _quant(k), _quant(v), qw, kw, 1e-6, 1e-5, n_heads=hq, n_kv_heads=hk,
                           group_size=gs, bits=bits, **args)
    # what the qk_norm_rope pattern computes with the block's own projections
    wq, wk = ATT.qk_norm_rope_reference(q(x).reshape(1, seq, hq, -1), k(x).reshape(1, seq, hk, -1), qw, kw, 1e-6,
                                        1e-5, **args)
    want = (wq, wk, v(x).reshape(1, seq, hk, -1).transpose(0, 2, 1, 3))
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape and g.dtype == w.dtype
        assert np.array_equal(np.array(g.astype(mx.float32)), np.array(w.astype(mx.float32)))


def test_rejects_malformed_inputs():
    q = _proj(64, 128, 64, 4, mx.float32, mx.random.key(0))
    with pytest.raises(ValueError, match="must be"):
        QKV.qkv_norm_rope(mx.ones((128,)), _quant(q), _quant(q), _quant(q), mx.ones((64,)), mx.ones((64,)), 1e-6,
                          1e-6, n_heads=1, n_kv_heads=1, group_size=64, bits=4, offset=0, base=10000.0)


def _case(**over):
    c = dict(hq=4, hk=2, hd=64, d=256, gs=64, bits=4, dtype=mx.bfloat16, seq=1, norm_dtype=None) | over
    ks = mx.random.split(mx.random.key(3), 4)
    projs = [_quant(_proj(n * c["hd"], c["d"], c["gs"], c["bits"], c["dtype"], kk))
             for n, kk in ((c["hq"], ks[0]), (c["hk"], ks[1]), (c["hk"], ks[2]))]
    x = mx.random.normal((1, c["seq"], c["d"]), key=ks[3]).astype(c["dtype"])
    w = mx.ones((c["hd"],), c["norm_dtype"] or c["dtype"])
    return c, x, projs, w


@pytest.mark.parametrize("over,takes_kernel", [
    (dict(), True), (dict(bits=8), True), (dict(hq=5, hk=1, hd=128, d=320, gs=32), True),
    (dict(seq=2), False),             # one token only
    (dict(dtype=mx.float16), False), (dict(dtype=mx.float32), False),
    (dict(d=64), False),              # K <= group size: MLX may take qmm_sm90
    (dict(norm_dtype=mx.float32), False),  # the kernel reads the norm weights as the activations' dtype
])
def test_kernel_only_where_it_mirrors_mlx(monkeypatch, over, takes_kernel):
    seen = []
    monkeypatch.setattr(QKV, "target_for", lambda stream=None: "cuda")
    monkeypatch.setattr(QKV, "launch", lambda spec, backend, **kw: seen.append(kw) or ("q", "k", "v"))
    monkeypatch.setattr(QKV, "qk_norm_rope", lambda *a, **kw: ("fallback q", "fallback k"))
    c, x, projs, w = _case(**over)
    out = QKV.qkv_norm_rope(x, *projs, mx.ones_like(w).astype(c["dtype"]), w, 1e-6, 1e-6, n_heads=c["hq"], n_kv_heads=c["hk"], group_size=c["gs"],
                            bits=c["bits"], offset=3, base=10000.0)
    assert (out == ("q", "k", "v")) == takes_kernel and len(seen) == int(takes_kernel)
    if takes_kernel:
        kw = seen[0]
        tmpl = dict(kw["template"])
        threads, chunks, reads = ATT.mlx_rms_layout(c["hd"], c["dtype"])
        # one threadgroup per head; the norm part keeps MLX's RMSNorm layout for a row of HD
        assert kw["threads"] == (c["hq"] + 2 * c["hk"]) * kw["threadgroup"] and kw["threadgroup"] >= threads
        assert (tmpl["BS"], tmpl["NCH"], tmpl["NR"]) == (threads, chunks, reads)
        assert tmpl["HD"] == c["hd"] and tmpl["HQ"] == c["hq"] and tmpl["HK"] == c["hk"]
        assert tmpl["A"] == (mx.float32 if c["bits"] == 8 else mx.bfloat16) and tmpl["QGS"] == c["gs"]
        assert kw["output_shapes"] == [(1, c["hq"], 1, c["hd"]), (1, c["hk"], 1, c["hd"]), (1, c["hk"], 1, c["hd"])]


@pytest.mark.parametrize("backend", ["cuda", "metal"])
def test_emitted_body_projects_then_normalises(backend):
    src = emit(QKV.SPEC, backend).full_text()
    assert "proj[e] = g;" in src and ATT.NORM_ROPE in src
    assert src.index("proj[e] = g;") < src.index("v_out[h * HD + e] = proj[e]") < src.index("zm_rsqrt(ss")


def test_qk_norm_rope_source_unchanged_by_the_shared_snippet():
    # qk_norm_rope's body is assembled from the snippet it shares with qkv.py: the text MLX compiles stays the
    # one the GPU tests passed with (its digest names the kernel)
    assert ATT.SPEC.kernel_name == "zmlx_qk_norm_rope_bd699476d4"


def test_catalogue_entry_and_checks():
    op = catalogue.find("qkv")
    assert set(op.kernel_specs()) == set(op.variants) == {"qkv_norm_rope", "qkv_norm_rope_in"}
    cases = op.check_cases(0)
    assert len(cases) == 2 * len(QKV.CASES) and all(c.exact for c in cases)
    assert sum("input norm" in c.variant for c in cases) == len(QKV.CASES)
    for c in cases[4:]:  # the small ones: on the CPU the op is its reference
        for a, b in zip(c.kernel(), c.reference(), strict=True):
            assert np.array_equal(np.array(a.astype(mx.float32)), np.array(b.astype(mx.float32)))
    assert all(r.passed for r in op.reference_checks(0))


@pytest.mark.parametrize("d", [2048, 320, 12288])
def test_input_norm_is_the_layers_rms_norm_first(d):
    """input_norm=(w, eps): on the CPU exactly mx.fast.rms_norm then the op; the one-launch form only where the
    block holds MLX's rms_norm threads for the row (not its 1024-thread kernel past 8192 bf16)."""
    key = mx.random.key(d)
    x, (q, k, v), qw, kw = QKV.make_case(4, 2, 64, d, 64, 4, key)
    x = 5 * x
    w = (1 + 0.1 * mx.random.normal((d,), key=mx.random.split(key)[1])).astype(x.dtype)
    args = dict(n_heads=4, n_kv_heads=2, group_size=64, bits=4, offset=33, base=10000.0)
    got = QKV.qkv_norm_rope(x, q, k, v, qw, kw, 1e-6, 1e-6, input_norm=(w, 1e-5), **args)
    want = QKV.qkv_norm_rope(mx.fast.rms_norm(x, w, 1e-5), q, k, v, qw, kw, 1e-6, 1e-6, **args)
    assert all(mx.array_equal(a, b).item() for a, b in zip(got, want, strict=True))
    assert QKV.input_norm_fits(x, w, 256) == (d <= 8192)
    assert not QKV.input_norm_fits(x, w.astype(mx.float32), 256)


def test_input_norm_splice_normalises_into_the_blocks_own_row_then_projects_it():
    body = QKV.SPEC_IN.body
    assert "qmv_x = x;" not in body and body.count("ZM_DEVICE const T* qmv_x = xrow;") == 1
    assert body.index("xrow[e] = zm_mul(in_w[e]") < body.index("ZM_DEVICE_BARRIER();") < body.index("qmv_x = xrow")
    assert "xn + size_t(hb)" in body, "one scratch row per block: no block reads another's"
    assert [p.name for p in QKV.SPEC_IN.outputs] == ["q_out", "k_out", "v_out", "xn"]
