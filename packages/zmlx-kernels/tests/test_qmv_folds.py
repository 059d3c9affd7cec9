"""zk.qmv_residual and zk.qmv_many_norm on the CPU (their references: the layer's own two ops), and the CUDA launches
their plan paths (QmvPlan.residual, qmv_norm.plan_normed) build, simulated: which kernel, which inputs in the order
the spec names them, which template constants."""

import mlx.core as mx
import pytest
from zmlx import kernels as zk
from zmlx.kernels.ops import qmv as Q
from zmlx.kernels.ops import qmv_norm as QN
from zmlx.kernels.ops import qmv_residual as QR


@pytest.mark.parametrize("n,k,gs,rows,bias", QR.CASES[3:])
def test_qmv_residual_is_the_add_after_the_projection(n, k, gs, rows, bias):
    x, q, b = Q.make_case(n, k, gs, rows, bias, mx.random.key(11))
    res = (mx.random.normal((1, rows, n), key=mx.random.key(12)) * 3).astype(mx.bfloat16)
    got = zk.qmv_residual(x, q, res, group_size=gs, bits=4, bias=b)
    assert mx.array_equal(got, res + Q.qmv_reference(x, q, group_size=gs, bits=4, bias=b)).item()


def test_qmv_many_norm_is_the_norm_then_the_projections():
    x, q, b = Q.make_case(33, 576, 32, 3, True, mx.random.key(13))
    w = (1 + 0.1 * mx.random.normal((576,), key=mx.random.key(14))).astype(mx.bfloat16)
    got = zk.qmv_many_norm(x, w, 1e-6, (q, q), group_size=32, bits=4, biases=(b, b))
    want = Q.qmv_many(mx.fast.rms_norm(x, w, 1e-6), (q, q), group_size=32, bits=4, biases=(b, b))
    assert all(mx.array_equal(g, v).item() for g, v in zip(got, want, strict=True))


class _FakeKernel:
    """Stands in for MLX's compiled custom kernel: records one call, returns zeros of the asked shapes."""

    def __init__(self, spec):
        self.spec, self.calls = spec, []

    def __call__(self, *, inputs, output_shapes, output_dtypes, grid, threadgroup, template):
        assert len(inputs) == len(self.spec.inputs), "inputs must match the spec's names one for one"
        self.calls.append(dict(inputs=inputs, shapes=output_shapes, grid=grid, group=threadgroup,
                               template=dict(template)))
        return [mx.zeros(s, d) for s, d in zip(output_shapes, output_dtypes, strict=True)]


@pytest.fixture
def on_cuda(monkeypatch):
    """The plans' kernel path as on the lent GPU: target CUDA, a GPU default device, fake compiled kernels."""
    fakes = {}

    def compiled(spec, backend):
        assert backend == "cuda"
        return fakes.setdefault(spec.name, _FakeKernel(spec))

    for mod in (Q, QN):
        monkeypatch.setattr(mod, "compiled", compiled)
        monkeypatch.setattr(mod, "target_for", lambda stream=None: "cuda")

    class _Gpu:
        type = mx.DeviceType.gpu

    monkeypatch.setattr(mx, "default_device", lambda: _Gpu())
    return fakes


def test_plan_residual_launches_qmv_residual_with_the_plans_launch(on_cuda):
    x, q, b = Q.make_case(123, 576, 32, 1, True, mx.random.key(15))
    plan = Q.QmvPlan(q, group_size=32, bits=4, bias=b)
    res = mx.ones((1, 1, 123), mx.bfloat16)
    out = plan.residual(x, res)
    call = on_cuda["qmv_residual"].calls[-1]
    assert out.shape == res.shape and call["inputs"][-1] is res and call["inputs"][0] is x
    assert call["template"] == dict(plan.template) and call["grid"] == (plan.grid[0], 1, 1)
    plan.residual(x, res.astype(mx.float32))  # not the kernel's dtype: the two ops, no launch
    assert len(on_cuda["qmv_residual"].calls) == 1


def test_plan_normed_launches_qmv_many_norm_with_mlx_rms_layout(on_cuda):
    x, q, b = Q.make_case(31, 4096, 64, 1, True, mx.random.key(16))
    plan = Q.QmvManyPlan((q, q, q), group_size=64, bits=4, biases=(b, b, b))
    w = mx.ones((4096,), mx.bfloat16)
    outs = QN.plan_normed(plan, x, w, 1e-5)
    call = on_cuda["qmv_many_norm"].calls[-1]
    assert [o.shape for o in outs] == [(1, 1, 31)] * 3
    assert call["inputs"][0] is x and call["inputs"][1] is w and call["inputs"][3:] == list(plan.inputs)
    # MLX's rms_norm on a 4096-wide bf16 row: 128 threads, 4 chunks of 8 reads (norms.mlx_rms_layout)
    assert {k: call["template"][k] for k in ("IBS", "ICH", "IRD")} == {"IBS": 128, "ICH": 4, "IRD": 8}
    assert call["grid"] == (plan.grid, 1, 1) and call["template"]["NM"] == 3
