"""One greedy generation run through mlx-lm's own ``generate_step``, timed token by token.

Both sides of a comparison go through exactly this function (same sampler, same ``prefill_step_size``), so any
difference in tokens comes from the model, never from the harness.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import mlx.core as mx

from .record import RunStats
from .stats import percentile

ProgressFn = Callable[[int], None]  # called with the number of new tokens since the last call
_PROGRESS_EVERY = 16  # tokens between progress callbacks: keeps host work per token negligible


@dataclass
class GreedyRun:
    tokens: list[int]
    prompt_tokens: int
    ttft_s: float  # prompt processing + first token
    latencies_s: list[float]  # between consecutive tokens after the first
    peak_memory_gb: float
    margins: list[float] = field(default_factory=list)  # top-1 minus top-2 logprob per step (if collected)
    margin_at: float | None = None  # the margin at the requested step

    def stats(self) -> RunStats:
        n = len(self.tokens)
        decode_s = sum(self.latencies_s)
        lat_ms = [x * 1e3 for x in self.latencies_s]
        return RunStats(
            prompt_tokens=self.prompt_tokens,
            generated_tokens=n,
            prefill_tps=self.prompt_tokens / self.ttft_s if self.ttft_s > 0 else 0.0,
            decode_tps=(n - 1) / decode_s if n > 1 and decode_s > 0 else 0.0,
            ttft_s=self.ttft_s,
            token_latency_ms_p50=percentile(lat_ms, 50) if lat_ms else 0.0,
            token_latency_ms_p90=percentile(lat_ms, 90) if lat_ms else 0.0,
            token_latency_ms_p99=percentile(lat_ms, 99) if lat_ms else 0.0,
            peak_memory_gb=self.peak_memory_gb,
        )


def top2_margin(logprobs: mx.array) -> float:
    top = mx.topk(logprobs.astype(mx.float32), 2)
    return float(top.max() - top.min())


def greedy_run(
    model,
    prompt_ids: Sequence[int],
    max_tokens: int,
    *,
    prefill_step_size: int = 2048,
    collect_margins: bool = False,
    margin_at: int | None = None,
    stop_on_mismatch: Sequence[int] | None = None,
    progress: ProgressFn | None = None,
) -> GreedyRun:
    """Greedy-decode ``max_tokens`` tokens (no EOS stop).

    ``stop_on_mismatch``: a reference sequence; generation stops at the first token that differs from it (the
    differing token is kept), which makes bisection cheap. ``margin_at``: only compute the margin at that step.
    """
    from mlx_lm.generate import generate_step
    from mlx_lm.sample_utils import make_sampler

    sampler = make_sampler(temp=0.0)
    prompt = mx.array(list(prompt_ids), dtype=mx.uint32)
    mx.reset_peak_memory()
    tokens: list[int] = []
    latencies: list[float] = []
    margins: list[float] = []
    at: float | None = None
    pending = 0
    t0 = time.perf_counter()
    t_prev = t0
    ttft = 0.0
    gen = generate_step(prompt, model, max_tokens=max_tokens, sampler=sampler, prefill_step_size=prefill_step_size)
    try:
        for i, (tok, logprobs) in enumerate(gen):
            now = time.perf_counter()
            if i == 0:
                ttft = now - t0
            else:
                latencies.append(now - t_prev)
            t_prev = now
            tokens.append(int(tok))
            if collect_margins:
                margins.append(top2_margin(logprobs))
            if margin_at is not None and i == margin_at:
                at = top2_margin(logprobs)
            pending += 1
            if progress is not None and pending >= _PROGRESS_EVERY:
                progress(pending)
                pending = 0
            if stop_on_mismatch is not None and (i >= len(stop_on_mismatch) or tok != stop_on_mismatch[i]):
                break
            if margin_at is not None and i >= margin_at and stop_on_mismatch is None and not collect_margins:
                break
    finally:
        gen.close()
    if progress is not None and pending:
        progress(pending)
    return GreedyRun(tokens=tokens, prompt_tokens=len(prompt_ids), ttft_s=ttft, latencies_s=latencies,
                     peak_memory_gb=mx.get_peak_memory() / 1e9, margins=margins, margin_at=at)


def first_mismatch(a: Sequence[int], b: Sequence[int]) -> int | None:
    """The first position where ``a`` and ``b`` differ (a length difference counts), or None."""
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))
