"""zk.qmv and QmvPlan: QuantizedLinear's own result on every device (the CPU runs the reference), which inputs the
CUDA kernel takes, and the CUDA source shortening that #includes kernel text from content-named files."""

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from zmlx import kernels as zk
from zmlx.kernels import backend
from zmlx.kernels.emit import emit
from zmlx.kernels.ops import gather_qmv as G
from zmlx.kernels.ops import qmv as Q


@pytest.mark.parametrize("n,k,gs,rows,bias", Q.CASES)
def test_qmv_is_quantized_linear(n, k, gs, rows, bias):
    x, q, b = Q.make_case(n, k, gs, rows, bias, mx.random.key(n + k))
    lin = nn.QuantizedLinear(k, n, bias=bias, group_size=gs, bits=4)
    lin.weight, lin.scales, lin.biases = q
    if bias:
        lin.bias = b
    want = lin(x)
    assert mx.array_equal(zk.qmv(x, q, group_size=gs, bits=4, bias=b), want).item()
    assert mx.array_equal(Q.QmvPlan(q, group_size=gs, bits=4, bias=b)(x), want).item()


def test_reference_against_float64():
    checks = Q.reference_checks(seed=2)
    assert len(checks) == 3 and all(c.passed for c in checks), checks


def test_kernel_takes_only_what_it_reproduces():
    x, q, b = Q.make_case(33, 1152, 128, 3, True, mx.random.key(0))
    assert Q.fits(x, q, 128, 4, b)
    assert not Q.fits(x.astype(mx.float16), q, 128, 4, b)  # MLX's fp16 qmv is another instantiation
    assert not Q.fits(mx.concatenate([x, x, x]), q, 128, 4, b)  # 9 rows: MLX leaves qmv at 8
    assert not Q.fits(x, q, 128, 4, b.astype(mx.float32))
    q8 = mx.quantize(mx.random.normal((33, 1152)).astype(mx.bfloat16), group_size=128, bits=8)
    assert not Q.fits(x, q8, 128, 8)
    assert Q.geometry(4096) == (1, 4) and Q.geometry(151936) == (4, 4)


def test_every_launch_shape_has_a_check_case():
    variants = {c.variant for c in Q.check_cases(seed=0)}
    assert len(variants) == 3 * len(Q.CASES) + len(Q.MANY_CASES) and all(c.exact for c in Q.check_cases(seed=0))


@pytest.mark.parametrize("ns,k,gs,rows,bias", Q.MANY_CASES)
def test_qmv_many_is_one_qmv_per_matrix(ns, k, gs, rows, bias):
    x = Q.make_case(ns[0], k, gs, rows, False, mx.random.key(k))[0]
    ws, bs = zip(*(Q.make_case(n, k, gs, rows, bias, mx.random.key(k + j))[1:] for j, n in enumerate(ns)),
                 strict=True)
    want = [zk.qmv(x, w, group_size=gs, bits=4, bias=b) for w, b in zip(ws, bs, strict=True)]
    for got in (zk.qmv_many(x, ws, group_size=gs, bits=4, biases=bs),
                Q.QmvManyPlan(ws, group_size=gs, bits=4, biases=bs)(x)):
        assert len(got) == len(ns) and all(mx.array_equal(g, w).item() for g, w in zip(got, want, strict=True))


def test_qmv_many_rejects_mismatched_biases():
    x, q, b = Q.make_case(31, 576, 64, 1, True, mx.random.key(0))
    with pytest.raises(ValueError, match="2 matrices but 1 biases"):
        zk.qmv_many(x, (q, q), group_size=64, bits=4, biases=(b,))


def test_cuda_source_by_include_names_the_shape_parameters(tmp_path, monkeypatch):
    monkeypatch.setattr(backend, "_include_dir", lambda: tmp_path)
    src = emit(Q.SPEC, "cuda")
    source, header = backend.by_include(Q.SPEC, src)
    files = sorted(tmp_path.iterdir())
    assert len(files) == 2 and {f.read_text() for f in files} == {src.source, src.header}
    assert all(str(f) in source + header for f in files)
    # MLX passes <input>_shape/_ndim only when the source it is given names them
    for name in ("w_shape", "w_ndim"):
        assert name in src.source and name in source
    assert "x_shape" not in source and len(source) + len(header) < 400 < len(src.source) + len(src.header)
    assert backend.by_include(Q.SPEC, src) == (source, header)  # same text, same files, rewritten never


def test_cuda_source_stays_inline_without_a_writable_directory(monkeypatch):
    monkeypatch.setattr(backend, "_include_dir", lambda: None)
    assert backend.by_include(Q.SPEC, emit(Q.SPEC, "cuda")) is None


def test_qmv_on_float_inputs_is_the_reference():
    x = mx.random.normal((1, 128), key=mx.random.key(3))
    q = mx.quantize(mx.random.normal((64, 128), key=mx.random.key(4)), group_size=64, bits=4)
    got = zk.qmv(x, q, group_size=64, bits=4)
    want = mx.quantized_matmul(x, *q, transpose=True, group_size=64, bits=4)
    assert np.array_equal(np.array(got), np.array(want))


def test_qmv_launch_arguments_are_checked():
    x, q, _ = Q.make_case(31, 576, 64, 1, False, mx.random.key(0))
    for bad in (dict(warps=3), dict(rows_per_warp=3), dict(unroll=5)):
        with pytest.raises(ValueError, match="warps must be a power of two"):
            Q.qmv(x, q, group_size=64, bits=4, **bad)
    assert mx.array_equal(Q.qmv(x, q, group_size=64, bits=4, warps=8, rows_per_warp=2, unroll=2),
                          Q.qmv_reference(x, q, group_size=64, bits=4)).item()


@pytest.mark.parametrize("case", range(len(G.CASES)))
def test_gather_qmv_is_gather_qmm(case):
    e, n, k, gs, slots, per = G.CASES[case]
    if n * k > 4096 * 4096:
        n = 257  # the decode shapes' row counts are the GPU checks'; here the K and slots matter
    x, q, inds = G.make_case(e, n, k, gs, slots, per, mx.random.key(case))
    got = zk.gather_qmv(x, q, inds, group_size=gs, bits=4)
    want = mx.gather_qmm(x, *q, rhs_indices=inds, transpose=True, group_size=gs, bits=4)
    assert got.shape == want.shape and mx.array_equal(got, want).item()
    assert G.fits(x, q, inds, gs, 4)
    assert not G.fits(x.astype(mx.float16), q, inds, gs, 4)
    eight = mx.zeros((1, 1, 8), dtype=mx.uint32)
    assert not G.fits(x[..., :1, :, :], q, eight, gs, 4)  # 8 slots: MLX's qmm_sm80 (or naive), not gather_qmv


def test_gather_qmv_reference_against_per_slot_products():
    checks = G.reference_checks(seed=1)
    assert len(checks) == 2 and all(c.passed for c in checks), checks


def test_tuning_kernels_are_qmv_everywhere_and_checked():
    from zmlx.kernels.ops import qmv_tuning as QT

    cases = QT.check_cases(seed=0)
    assert len(cases) == 3 * len(Q.CASES) and all(c.exact for c in cases)
    for c in cases[:6]:  # on the CPU: the reference path, QuantizedLinear's result
        assert all(mx.array_equal(a, b).item() for a, b in zip(c.kernel(), c.reference(), strict=True))
    x, q, _ = Q.make_case(31, 576, 64, 1, False, mx.random.key(0))
    with pytest.raises(ValueError, match="variant must be one of"):
        QT.qmv_variant(x, q, group_size=64, bits=4, variant="quarter")
