"""Interleaved greedy runs of one loaded model, unpatched (A) and patched (B): A B A B ... after a warm-up.

Drift (thermal, caches, allocator) hits both sides alike because they alternate. The model is patched once, in the
warm-up; each baseline run then runs inside ``zmlx.patch.suspended`` (the original classes back, so unpatched code
exactly), and the patched runs reuse what patching built (compile_blocks' traces), as a user who patches once and
generates many times does. With injected patch functions (tests) it is patched and unpatched around every patched
run instead. Every run's tokens are compared, not just the first: patched run i and baseline run i against baseline run 0. A baseline run that differs from baseline run 0
makes the verdict UNSTABLE (stock mlx-lm is not deterministic there), whatever the patched runs did.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

from .generation import GreedyRun, ProgressFn, first_mismatch, greedy_run
from .record import FAIL, PASS, UNSTABLE, Divergence, Fidelity, RunMatch, SideResult
from .stats import median, ratio

PatchFn = Callable[..., Any]  # patch(model, patterns=None, exclude=(), max_fused_tokens=32, verbose=...)
UnpatchFn = Callable[[Any], Any]
SuspendFn = Callable[[Any], AbstractContextManager[Any]]  # zmlx.patch.suspended: run the model unpatched inside
# progress(description, tokens_done_delta, total_tokens): the CLI turns this into a progress bar
RunProgress = Callable[[str, int, int], None]

WARMUP_TOKENS = 16


@dataclass(frozen=True)
class PatchInfo:
    """What ``patch`` reported, read defensively from its PatchResult."""

    model_type: str
    counts: dict[str, int]
    patterns: list[str]
    # PatchResult.fuse_projections: the switch as resolved for this model (None: the patch did not say)
    fuse_projections: bool | None = None

    @classmethod
    def from_result(cls, result: Any, model: Any) -> PatchInfo:
        counts = {str(k): int(v) for k, v in (getattr(result, "counts", None) or {}).items()}
        patterns = None
        for attr in ("patterns", "applied", "patterns_applied"):
            value = getattr(result, attr, None)
            if value:
                patterns = [str(p) for p in value]
                break
        if patterns is None:
            patterns = [k for k, v in counts.items() if v > 0]
        model_type = getattr(result, "model_type", None) or getattr(model, "model_type", "unknown")
        fused = getattr(result, "fuse_projections", None)
        return cls(model_type=str(model_type), counts=counts, patterns=patterns,
                   fuse_projections=fused if isinstance(fused, bool) else None)


@dataclass(frozen=True)
class FidelityResult:
    fidelity: Fidelity
    baseline: SideResult
    patched: SideResult
    patch: PatchInfo
    baseline_tokens: list[list[int]] = field(repr=False)
    patched_tokens: list[list[int]] = field(repr=False)

    @property
    def decode_speedup(self) -> float:
        return ratio(self.patched.median_decode_tps, self.baseline.median_decode_tps)

    @property
    def prefill_speedup(self) -> float:
        return ratio(self.patched.median_prefill_tps, self.baseline.median_prefill_tps)


def default_patch_fns() -> tuple[PatchFn, UnpatchFn]:
    from zmlx.patch import patch, unpatch

    return patch, unpatch


def side_result(runs: Sequence[GreedyRun]) -> SideResult:
    stats = [r.stats() for r in runs]
    prefill = [s.prefill_tps for s in stats]
    decode = [s.decode_tps for s in stats]
    return SideResult(
        runs=stats,
        prefill_tps=prefill,
        decode_tps=decode,
        ttft_s=[s.ttft_s for s in stats],
        peak_memory_gb=max((s.peak_memory_gb for s in stats), default=0.0),
        median_prefill_tps=median(prefill) if prefill else 0.0,
        median_decode_tps=median(decode) if decode else 0.0,
    )


def _match(reference: Sequence[int], tokens: Sequence[int]) -> RunMatch:
    pos = first_mismatch(reference, tokens)
    return RunMatch(matched=len(reference) if pos is None else pos, total=len(reference))


class _Sides:
    """Switches one model between its unpatched and patched state: patched once and suspended for baseline runs
    when a ``suspend_fn`` is given, else patched and unpatched around every patched run."""

    def __init__(self, model: Any, patch_fn: PatchFn, unpatch_fn: UnpatchFn, patch_kwargs: dict[str, Any],
                 suspend_fn: SuspendFn | None = None):
        self.model, self.patch_fn, self.unpatch_fn = model, patch_fn, unpatch_fn
        self.kwargs = {"verbose": False, **patch_kwargs}
        self.suspend_fn = suspend_fn
        self.result: Any = None  # what the held patch returned (suspend mode)

    def patch(self, **overrides: Any) -> Any:
        return self.patch_fn(self.model, **{**self.kwargs, **overrides})

    def unpatch(self) -> None:
        self.unpatch_fn(self.model)

    def baseline(self) -> AbstractContextManager[Any]:
        return self.suspend_fn(self.model) if self.suspend_fn and self.result is not None else nullcontext()

    @contextmanager
    def patched(self) -> Iterator[Any]:
        """The model patched for the block; yields what patch() returned."""
        if self.suspend_fn is None:
            result = self.patch()
            try:
                yield result
            finally:
                self.unpatch()
            return
        if self.result is None:
            self.result = self.patch()
        yield self.result

    def release(self) -> None:
        """Leave the model unpatched (suspend mode holds the patch until here)."""
        if self.suspend_fn is not None and self.result is not None:
            self.unpatch()
            self.result = None


def run_fidelity(
    model: Any,
    tokenizer: Any = None,
    *,
    prompt_ids: Sequence[int],
    max_tokens: int = 500,
    runs: int = 5,
    warmup: int = 1,
    patch_kwargs: dict[str, Any] | None = None,
    prefill_step_size: int = 2048,
    progress: RunProgress | None = None,
    patch_fn: PatchFn | None = None,
    unpatch_fn: UnpatchFn | None = None,
    suspend_fn: SuspendFn | None = None,
) -> FidelityResult:
    """Compare greedy decoding of ``model`` unpatched and patched, token for token, over ``runs`` pairs.

    ``tokenizer`` is unused (kept so callers can pass what ``load_model`` returned). ``patch_fn``/``unpatch_fn``
    default to ``zmlx.patch.patch``/``unpatch`` and then ``suspend_fn`` to ``zmlx.patch.suspended``; tests inject
    deliberately wrong ones (and no ``suspend_fn``: re-patched around every run). The model is left unpatched.
    """
    if max_tokens < 1 or runs < 1 or warmup < 0:
        raise ValueError("max_tokens and runs must be >= 1 and warmup >= 0")
    default_patch, default_unpatch = default_patch_fns()
    patch_fn, unpatch_fn = patch_fn or default_patch, unpatch_fn or default_unpatch
    if suspend_fn is None and (patch_fn, unpatch_fn) == (default_patch, default_unpatch):
        from zmlx.patch import suspended as suspend_fn
    sides = _Sides(model, patch_fn, unpatch_fn, dict(patch_kwargs or {}), suspend_fn)
    warm_tokens = min(max_tokens, WARMUP_TOKENS)
    total = 2 * (warmup * warm_tokens + runs * max_tokens)

    def tick(desc: str) -> ProgressFn | None:
        return None if progress is None else (lambda n: progress(desc, n, total))

    def run(desc: str, **kw: Any) -> GreedyRun:
        return greedy_run(model, prompt_ids, max_tokens, prefill_step_size=prefill_step_size,
                          progress=tick(desc), **kw)

    info: PatchInfo | None = None
    base_runs: list[GreedyRun] = []
    patched_runs: list[GreedyRun] = []
    try:
        for _ in range(warmup):
            with sides.baseline():
                greedy_run(model, prompt_ids, warm_tokens, prefill_step_size=prefill_step_size,
                           progress=tick("warm-up"))
            with sides.patched() as result:
                info = PatchInfo.from_result(result, model)
                greedy_run(model, prompt_ids, warm_tokens, prefill_step_size=prefill_step_size,
                           progress=tick("warm-up"))
        for i in range(runs):
            with sides.baseline():
                base_runs.append(run(f"baseline {i + 1}/{runs}"))
            with sides.patched() as result:
                info = info or PatchInfo.from_result(result, model)
                patched_runs.append(run(f"patched {i + 1}/{runs}"))
    finally:
        sides.release()

    reference = base_runs[0].tokens
    baseline_matches = [_match(reference, r.tokens) for r in base_runs]
    patched_matches = [_match(reference, r.tokens) for r in patched_runs]
    divergence = None
    for i, r in enumerate(patched_runs):
        pos = first_mismatch(reference, r.tokens)
        if pos is not None:
            divergence = _probe_divergence(sides, prompt_ids, reference, r.tokens, i, pos, prefill_step_size)
            break
    if any(m.matched != m.total for m in baseline_matches):
        verdict = UNSTABLE  # stock mlx-lm disagrees with itself: a patched difference cannot be attributed
    else:
        verdict = PASS if divergence is None else FAIL
    fidelity = Fidelity(verdict=verdict, runs=patched_matches, first_divergence=divergence,
                        baseline_runs=baseline_matches)
    assert info is not None
    return FidelityResult(
        fidelity=fidelity,
        baseline=side_result(base_runs),
        patched=side_result(patched_runs),
        patch=info,
        baseline_tokens=[r.tokens for r in base_runs],
        patched_tokens=[r.tokens for r in patched_runs],
    )


def _probe_divergence(sides: _Sides, prompt_ids: Sequence[int], reference: Sequence[int],
                      patched_tokens: Sequence[int], run: int, pos: int, prefill_step_size: int) -> Divergence:
    """Re-run both sides up to ``pos`` to read their top-1/top-2 margins there (timed runs never pay for it)."""
    n = pos + 1
    base = greedy_run(sides.model, prompt_ids, n, prefill_step_size=prefill_step_size, margin_at=pos)
    sides.patch()
    try:
        pat = greedy_run(sides.model, prompt_ids, n, prefill_step_size=prefill_step_size, margin_at=pos)
    finally:
        sides.unpatch()
    ref_tok = reference[pos] if pos < len(reference) else -1
    pat_tok = patched_tokens[pos] if pos < len(patched_tokens) else -1
    reproduced = base.tokens == list(reference[:n]) and pat.tokens == list(patched_tokens[:n])
    return Divergence(run=run, position=pos, baseline_token=ref_tok, patched_token=pat_tok,
                      baseline_margin=base.margin_at,
                      patched_margin=pat.margin_at,
                      reproduced=reproduced)
