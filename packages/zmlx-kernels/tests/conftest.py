import pytest
from zmlx.kernels.backend import gpu_backend

requires_gpu = pytest.mark.skipif(gpu_backend() is None, reason="needs a Metal or CUDA GPU (MLX has neither here)")
