"""On the GPU, mx.fast.rope with the offset as a one-element int32 array (what attention_layer's traced graphs pass,
a view of zmlx.kernels.backend.positions) must rotate exactly as with the int offset stock mlx-lm passes."""

import mlx.core as mx
import mlx.nn as nn
import pytest
from mlx_lm.models.rope_utils import Llama3RoPE, YarnRoPE
from zmlx.kernels.backend import gpu_backend, positions

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(gpu_backend() is None, reason="no Metal or CUDA GPU"),
]

ROPES = {
    "rope": lambda d: nn.RoPE(d, base=500000.0),
    "rope-traditional": lambda d: nn.RoPE(d, traditional=True, base=10000.0),
    "llama3": lambda d: Llama3RoPE(d, max_position_embeddings=131072, base=500000.0, scaling_config={
        "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}),
    "yarn": lambda d: YarnRoPE(d, max_position_embeddings=131072, base=150000.0, scaling_factor=32.0,
                               original_max_position_embeddings=4096, beta_fast=32.0, beta_slow=1.0),
}


@pytest.mark.parametrize("dtype", [mx.bfloat16, mx.float16, mx.float32], ids=str)
@pytest.mark.parametrize("offset", [0, 31, 123, 4097])
@pytest.mark.parametrize("rope", list(ROPES))
def test_array_offset_rotates_as_the_int(rope, offset, dtype):
    d = 64
    r = ROPES[rope](d)
    x = (3 * mx.random.normal((1, 5, 1, d), key=mx.random.key(offset))).astype(dtype)  # (B, H, L=1, D)
    want = r(x, offset=offset)
    got = r(x, offset=positions(offset))
    mx.eval(want, got)
    assert mx.array_equal(want, got).item(), f"{rope} at offset {offset}: array offset rotates differently"
