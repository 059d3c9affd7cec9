"""On the GPU: every kernel against its reference on fresh random inputs, outputs poisoned with NaN first.

The cases are each op's ``check_cases`` (also ``python -m zmlx.kernels check``). Kernel instantiations (CUDA:
one NVRTC compile of ~0.5-2 s each; key = dtype + template constants, sizes are free): routing 13 (4 variants
x 3 dtypes + the E=512/k=16 limit), combine 5 ((P, O) pairs), activations 12 (4 variants x 3 dtypes), norms 3,
moe_experts as its check_cases list them (21 today). Before the cut: 62 (routing 42) without moe_experts.
"""

import mlx.core as mx
import numpy as np
import pytest
from zmlx.kernels import catalogue
from zmlx.kernels.backend import gpu_backend, poison_outputs

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(gpu_backend() is None, reason="needs a Metal or CUDA GPU")]

CASES = [c for op in catalogue.ops() for c in op.check_cases(seed=1234)]


@pytest.mark.parametrize("case", CASES, ids=[f"{c.op}/{c.variant}/{c.dtype}/{i}" for i, c in enumerate(CASES)])
def test_kernel_matches_reference(case):
    with mx.stream(mx.gpu), poison_outputs():
        got = [mx.array(a) for a in case.kernel()]
        want = [mx.array(a) for a in case.reference()]
        mx.eval(got, want)
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape and g.dtype == w.dtype
        ga, wa = np.array(g.astype(mx.float32)), np.array(w.astype(mx.float32))
        assert not np.isnan(ga).any() or np.isnan(wa).any(), "kernel left outputs unwritten (NaN poison)"
        if case.exact:
            assert np.array_equal(ga, wa), f"not bit-identical: max |diff| {np.nanmax(np.abs(ga - wa))}"
        else:
            assert np.nanmax(np.abs(ga - wa)) <= case.atol
