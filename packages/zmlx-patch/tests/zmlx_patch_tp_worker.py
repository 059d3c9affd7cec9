"""One rank of the tensor-parallel check (run by mlx.launch): a tiny qwen3_moe sharded with model.shard(),
greedy tokens unpatched vs patched. Rank 0 writes the result as JSON to argv[1]."""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import mlx.core as mx  # noqa: E402
import zmlx.kernels as zk  # noqa: E402
import zmlx_patch_tiny as tiny  # noqa: E402
from mlx_lm.generate import generate_step  # noqa: E402
from mlx_lm.sample_utils import make_sampler  # noqa: E402
from zmlx.patch import patch, unpatch  # noqa: E402


def greedy(model, prompt: mx.array, n: int) -> list[int]:
    return [t for t, _ in generate_step(prompt, model, max_tokens=n, sampler=make_sampler(temp=0.0))]


def main() -> None:
    group = mx.distributed.init(strict=True)
    model = tiny.build("qwen3_moe", num_attention_heads=4, num_key_value_heads=2)  # same seed on every rank
    model.shard(group)
    prompt = tiny.tokens(6)[0]
    fused_calls = [0]
    real = zk.moe_combine

    def counting(*args, **kwargs):
        fused_calls[0] += 1
        return real(*args, **kwargs)

    zk.moe_combine = counting
    base = greedy(model, prompt, 16)
    result = patch(model, verbose=False)
    patched = greedy(model, prompt, 16)
    restored = unpatch(model)
    if group.rank() == 0:
        out = dict(size=group.size(), counts=result.counts, base=base, patched=patched, restored=restored,
                   fused_calls=fused_calls[0],
                   sharded=[m.sharding_group is not None for m in (model.model.layers[1].mlp,)])
        with open(sys.argv[1], "w") as f:
            json.dump(out, f)


if __name__ == "__main__":
    main()
