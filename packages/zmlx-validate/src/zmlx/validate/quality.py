"""How "trained-looking" a model's greedy output is: token diversity and top-1/top-2 margins.

Random-weight models tend to repeat a short cycle of tokens and to have either flat logits (every comparison a coin
toss, so harmless last-bit differences flip tokens) or huge margins (so a comparison proves nothing). These numbers
show where a checkpoint sits; trained models typically give a median margin of one to a few nats.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .generation import greedy_run
from .stats import median, percentile


@dataclass(frozen=True)
class GreedyQuality:
    tokens: int
    distinct_share: float  # distinct tokens / generated tokens
    margin_median: float  # top-1 minus top-2 logprob, nats
    margin_p5: float

    def line(self) -> str:
        return (f"{self.tokens} tokens, {self.distinct_share:.0%} distinct, "
                f"top1-top2 margin median {self.margin_median:.3f}, p5 {self.margin_p5:.3f}")


def greedy_quality(model, prompt_ids: Sequence[int], max_tokens: int) -> GreedyQuality:
    run = greedy_run(model, prompt_ids, max_tokens, collect_margins=True)
    return GreedyQuality(
        tokens=len(run.tokens),
        distinct_share=len(set(run.tokens)) / max(len(run.tokens), 1),
        margin_median=median(run.margins),
        margin_p5=percentile(run.margins, 5),
    )
