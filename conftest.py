"""Repository-wide pytest setup: tests marked ``gpu`` skip cleanly where MLX has no Metal or CUDA GPU."""

import pytest


def _gpu_backend():
    import mlx.core as mx

    if mx.metal.is_available():
        return "metal"
    if mx.cuda.is_available():
        return "cuda"
    return None


def pytest_collection_modifyitems(config, items):
    if _gpu_backend() is not None:
        return
    skip = pytest.mark.skip(reason="needs a Metal or CUDA GPU (MLX has neither here); run `pytest -m gpu` on one")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
