"""Plain-text and Markdown tables, plus the number formats every report shares."""

from __future__ import annotations

from collections.abc import Sequence

from zmlx.validate.record import UNSTABLE, Fidelity, SideResult, unstable_baseline_runs, verdict_of

from . import stats

__all__ = ["fidelity_cell", "pairs_cell", "ratio_cell", "render", "side_cell", "verdict_cell"]


def render(headers: Sequence[str], rows: Sequence[Sequence[str]], *, markdown: bool = False) -> str:
    """A table: Markdown pipes, or space-aligned columns for a terminal."""
    if markdown:
        def line(cells: Sequence[str]) -> str:
            return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

        out = [line(headers), "|" + "|".join("---" for _ in headers) + "|"]
        out += [line(r) for r in rows]
        return "\n".join(out)
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]

    def text(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    return "\n".join([text(headers), text(["-" * w for w in widths]), *(text(r) for r in rows)])


def _num(v: float) -> str:
    return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.1f}"


def side_cell(values: Sequence[float]) -> str:
    """Median with the min-max range of the runs: ``121.2 (119.8-123.0)``."""
    if not values:
        return "-"
    lo, hi = stats.spread(values)
    return f"{_num(stats.median(values))} ({_num(lo)}-{_num(hi)})"


def ratio_cell(ratio: float, ci: tuple[float, float] | None = None) -> str:
    """``x1.052 [1.031, 1.070]``."""
    s = f"x{ratio:.3f}"
    return s if ci is None else f"{s} [{ci[0]:.3f}, {ci[1]:.3f}]"


def verdict_cell(ci: tuple[float, float], runs: int) -> str:
    """Where 1.0 (no change) lies relative to the 95% interval; no verdict on too few runs."""
    if runs < stats.MIN_RUNS_FOR_VERDICT:
        return f"no verdict (< {stats.MIN_RUNS_FOR_VERDICT} runs)"
    if ci[0] > 1.0:
        return "faster"
    if ci[1] < 1.0:
        return "slower"
    return "within noise"


def pairs_cell(baseline: Sequence[float], patched: Sequence[float]) -> str:
    """``4/5``: in how many interleaved pairs (baseline run i, then patched run i) the patched run was faster.
    A paired reading beside the two-sample interval: slow host drift hits both runs of a pair alike."""
    n = min(len(baseline), len(patched))
    return f"{sum(p > b for b, p in zip(baseline[:n], patched[:n]))}/{n}"


def fidelity_cell(f: Fidelity) -> str:
    matched = sum(r.matched for r in f.runs)
    total = sum(r.total for r in f.runs)
    verdict = verdict_of(f)
    if verdict == UNSTABLE:  # the baseline disagrees with itself: say so, never blame the patch
        (run, token), *_ = unstable_baseline_runs(f)
        s = (f"UNSTABLE: baseline run {run} differs from run 1 at token {token}; "
             f"patched {matched}/{total} tok, {len(f.runs)} runs")
        return s if f.verdict == UNSTABLE else f"{s} (recorded as {f.verdict})"
    s = f"{verdict} {matched}/{total} tok, {len(f.runs)} runs"
    d = f.first_divergence
    if d is not None:
        s += f"; first diverges run {d.run + 1} token {d.position}"
    return s


def memory_cell(baseline: SideResult, patched: SideResult) -> str:
    return f"{baseline.peak_memory_gb:.2f} / {patched.peak_memory_gb:.2f}"
