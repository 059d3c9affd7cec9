"""``zmlx-bench compare A B``: the same models in two capsules side by side (two commits, two machines).

Noise is judged two ways, both from the raw runs: (1) the decode speedups' 95% intervals overlap or not;
(2) a bootstrap interval of B's median patched decode over A's, which must exclude 1.0 to count as a change.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from zmlx.validate.record import verdict_of

from . import stats, tables
from .capsule import Capsule, CapsuleError, load_capsule

__all__ = ["add_arguments", "format_compare", "run"]

HEADERS = (
    "model", "speedup A [95% CI]", "speedup B [95% CI]", "speedup change", "patched decode A",
    "patched decode B",     "patched B/A [95% CI]", "baseline B/A", "fidelity A / B",
)
KERNEL_HEADERS = ("op", "M", "fused us A", "fused us B", "B/A", "reference us A", "reference us B")


def _overlap(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return a[0] <= b[1] and b[0] <= a[1]


def _speedup_change(a: Capsule, b: Capsule, model: str, seed: int) -> list[str]:
    ra = next(r for r in a.results if r.model == model)
    rb = next(r for r in b.results if r.model == model)
    sa, sb = ra.summary, rb.summary
    if _overlap(sa.decode_speedup_ci95, sb.decode_speedup_ci95):
        change = "within noise (intervals overlap)"
    else:
        change = "higher in B" if sb.decode_speedup > sa.decode_speedup else "lower in B"
    ci = stats.bootstrap_ratio_ci(rb.patched.decode_tps, ra.patched.decode_tps, seed=seed)
    pa, pb = stats.median(ra.patched.decode_tps), stats.median(rb.patched.decode_tps)
    ba, bb = stats.median(ra.baseline.decode_tps), stats.median(rb.baseline.decode_tps)
    return [
        model,
        tables.ratio_cell(sa.decode_speedup, sa.decode_speedup_ci95),
        tables.ratio_cell(sb.decode_speedup, sb.decode_speedup_ci95),
        f"{(sb.decode_speedup - sa.decode_speedup) * 100:+.1f} pts, {change}",
        tables.side_cell(ra.patched.decode_tps),
        tables.side_cell(rb.patched.decode_tps),
        f"{tables.ratio_cell(pb / pa, ci)} "
        f"{tables.verdict_cell(ci, min(len(ra.patched.decode_tps), len(rb.patched.decode_tps)))}",
        tables.ratio_cell(bb / ba),
        f"{verdict_of(ra.fidelity)} / {verdict_of(rb.fidelity)}",
    ]


def _kernel_rows(a: Capsule, b: Capsule) -> list[list[str]]:
    if a.kernels is None or b.kernels is None:
        return []
    index = {(t.op, t.case, t.tokens): t for t in b.kernels.results}
    rows = []
    for ta in a.kernels.results:
        tb = index.get((ta.op, ta.case, ta.tokens))
        if tb is None:
            continue

        def us(v: float | None) -> str:
            return "-" if v is None else f"{v:.1f}"

        ratio = "-" if not (ta.fused_us and tb.fused_us) else tables.ratio_cell(tb.fused_us / ta.fused_us)
        rows.append([ta.op, str(ta.tokens), us(ta.fused_us), us(tb.fused_us), ratio,
                     us(ta.reference_us), us(tb.reference_us)])
    return rows


def _who(c: Capsule) -> str:
    e = c.environment
    git = "no git" if e.git_commit is None else e.git_commit[:12] + (" dirty" if e.git_dirty else "")
    return f"{e.device} ({e.backend}), mlx {e.mlx}, {git}, {c.created_utc}"


def format_compare(a: tuple[str, Capsule], b: tuple[str, Capsule], *, seed: int = 0,
                   markdown: bool = False) -> tuple[str, bool]:
    """The comparison text, and whether the two capsules had anything in common."""
    (pa, ca), (pb, cb) = a, b
    models_a = [r.model for r in ca.results]
    models_b = {r.model for r in cb.results}
    common = [m for m in models_a if m in models_b]
    out = [f"A  {pa}: {_who(ca)}", f"B  {pb}: {_who(cb)}"]
    ma, mb = ca.methodology, cb.methodology
    if ma is not None and mb is not None:
        keys = ("prompt_tokens", "max_tokens", "warmup_runs", "runs", "max_fused_tokens", "patterns", "exclude")
        diffs = [f"{k} {getattr(ma, k)} vs {getattr(mb, k)}" for k in keys if getattr(ma, k) != getattr(mb, k)]
        if diffs:
            out.append("methodology differs: " + "; ".join(diffs))
    if common:
        rows = [_speedup_change(ca, cb, m, seed) for m in common]
        out += ["", tables.render(HEADERS, rows, markdown=markdown)]
    only = [f"{m} (only in A)" for m in models_a if m not in models_b]
    only += [f"{r.model} (only in B)" for r in cb.results if r.model not in set(models_a)]
    if only:
        out += ["", "not compared: " + ", ".join(only)]
    krows = _kernel_rows(ca, cb)
    if krows:
        out += ["", "kernels", tables.render(KERNEL_HEADERS, krows, markdown=markdown)]
    return "\n".join(out), bool(common or krows)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("a", metavar="A", help="the earlier / reference capsule")
    p.add_argument("b", metavar="B", help="the capsule to compare with A")
    p.add_argument("--markdown", action="store_true", help="Markdown tables")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")


def run(args: argparse.Namespace) -> int:
    try:
        a, b = load_capsule(args.a), load_capsule(args.b)
    except CapsuleError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    text, any_common = format_compare((args.a, a), (args.b, b), seed=args.seed, markdown=args.markdown)
    print(text)
    if not any_common:
        print("error: the two capsules have no model (and no kernel timing) in common", file=sys.stderr)
        return 2
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="zmlx-bench compare")
    add_arguments(p)
    return run(p.parse_args(argv))
