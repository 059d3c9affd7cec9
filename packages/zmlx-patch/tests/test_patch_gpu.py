"""GPU (``pytest -m gpu``): on Metal/CUDA the patched blocks run zmlx kernels, not references.

Each family's tiny bf16 4-bit model decodes 120 greedy tokens unpatched and patched (two identically seeded
instances); the tokens must be identical, and teacher-forced decode logits (M=1) must be bit-equal. Results are
printed one line per family for docs/gpu-test-log.md.
"""

from __future__ import annotations

import mlx.core as mx
import pytest
import zmlx.kernels as zk
import zmlx_patch_tiny as tiny
from mlx_lm.generate import generate_step
from mlx_lm.models.cache import make_prompt_cache
from mlx_lm.sample_utils import make_sampler
from zmlx.kernels.backend import gpu_backend
from zmlx.patch import patch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(gpu_backend() is None, reason="no Metal or CUDA GPU: the fused kernels cannot run here"),
]
N_TOKENS = 120
OPS = ("swiglu", "geglu", "moe_combine", "softmax_topk", "topk_softmax", "sigmoid_topk", "grouped_sigmoid_topk")


def _greedy(model, prompt: mx.array, n: int) -> list[int]:
    return [t for t, _ in generate_step(prompt, model, max_tokens=n, sampler=make_sampler(temp=0.0))]


def _count_kernel_calls(monkeypatch) -> dict[str, int]:
    counts = dict.fromkeys(OPS, 0)
    for name in OPS:
        real = getattr(zk, name)

        def spy(*a, _real=real, _name=name, **kw):
            counts[_name] += 1
            return _real(*a, **kw)

        monkeypatch.setattr(zk, name, spy)
    return counts


@pytest.mark.parametrize("family", tiny.FAMILIES)
def test_greedy_tokens_identical_on_gpu(family, monkeypatch):
    prompt = tiny.tokens(6)[0]
    base = _greedy(tiny.build(family, quantized=True), prompt, N_TOKENS)
    model = tiny.build(family, quantized=True)
    result = patch(model, verbose=False)
    assert result.counts == tiny.CONFIGS[family][1]
    calls = _count_kernel_calls(monkeypatch)
    got = _greedy(model, prompt, N_TOKENS)
    first = next((i for i, (a, b) in enumerate(zip(base, got, strict=True)) if a != b), None)
    print(f"[gpu] {family}: {N_TOKENS} tokens, first divergence {first}, distinct tokens {len(set(base))}, "
          f"kernel calls { {k: v for k, v in calls.items() if v} }")
    assert sum(calls.values()) > 0
    assert got == base, f"{family}: greedy tokens diverge at {first}"


@pytest.mark.parametrize("family", tiny.MOE_FAMILIES)
def test_decode_logits_bit_identical_on_gpu(family):
    base_model = tiny.build(family, quantized=True)
    model = tiny.build(family, quantized=True)
    patch(model, verbose=False)
    seq = tiny.tokens(24, seed=5)
    caches = make_prompt_cache(base_model), make_prompt_cache(model)
    worst = 0.0
    for i in range(seq.shape[1]):
        step = seq[:, i : i + 1]
        want, got = base_model(step, cache=caches[0]), model(step, cache=caches[1])
        mx.eval(want, got)
        worst = max(worst, mx.abs(want.astype(mx.float32) - got.astype(mx.float32)).max().item())
    print(f"[gpu] {family}: max |logit diff| over {seq.shape[1]} decode steps = {worst}")
    assert worst == 0.0
