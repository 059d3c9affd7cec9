"""``zmlx-bench report CAPSULE [CAPSULE ...]``: read capsules back as text, Markdown or a plot.

``python -m zmlx.bench.report CAPSULE`` is the same command. With ``--markdown`` the output is a whole Markdown
document, one section per capsule naming its file, so docs/BENCHMARKS.md is generated, never hand-edited::

    uv run zmlx-bench report --markdown capsules/*.json > docs/BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence

from zmlx.validate.record import UNSTABLE, verdict_of
from zmlx.validate.report import unstable_line

from . import tables
from .capsule import Capsule, CapsuleError, ModelResult, load_capsule
from .env import format_environment

__all__ = ["add_arguments", "format_capsule", "format_markdown", "main", "run"]

RESULT_HEADERS = (
    "model", "fidelity", "decode tok/s baseline", "decode tok/s patched", "decode speedup [95% CI]", "vs noise",
    "pairs faster",
    "prefill tok/s baseline", "prefill tok/s patched", "prefill speedup",
    "peak GB base / patched", "patched modules",
)
RUN_HEADERS = ("run", "side", "prefill tok/s", "decode tok/s", "ttft ms", "token ms p50/p90/p99", "peak GB",
               "tokens matched")
KERNEL_HEADERS = ("op", "shape of", "M", "reference us", "fused us", "speedup", "identical")


def _methodology(c: Capsule) -> str:
    m = c.methodology
    if m is None:
        return "no model runs (kernels only)"
    pats = "family defaults" if m.patterns is None else ", ".join(m.patterns) or "none"
    if m.exclude:
        pats += f" (excluding {', '.join(m.exclude)})"
    return (
        f"{m.prompt_tokens}-token prompt, {m.max_tokens} generated tokens, {m.decoding}; "
        f"{m.warmup_runs} warm-up + {m.runs} measured runs per side, {m.order}"
        f"{' (patched once, baseline runs suspended)' if m.patch_held else ''}; seed {m.seed}; "
        f"fused path for M <= {m.max_fused_tokens}; patterns: {pats}; "
        f"fuse_projections={m.fuse_projections}, compile_blocks={m.compile_blocks}"
        f"{''.join(f', {k}=True' for k in ('fuse_router', 'fuse_qkv', 'fuse_conv_proj') if getattr(m, k))}; "
        f"{_switches(m.switches)}medians, speedup interval: {m.bootstrap_resamples} bootstrap resamples"
    )


def _switches(flags: dict[str, bool]) -> str:
    # measurement switches that differ from today's defaults (none recorded before the field existed)
    from zmlx.patch.measurement import changed

    diff = changed(flags)
    return f"switches {', '.join(f'{k}={v}' for k, v in sorted(diff.items()))}; " if diff else ""


def result_rows(c: Capsule) -> list[list[str]]:
    rows = []
    for r in c.results:
        s = r.summary
        counts = ", ".join(f"{k} {v}" for k, v in sorted(r.counts.items()) if v) or "none"
        if r.fuse_projections:
            counts += " (projections fused)"
        rows.append([
            r.model,
            tables.fidelity_cell(r.fidelity),
            tables.side_cell(r.baseline.decode_tps),
            tables.side_cell(r.patched.decode_tps),
            tables.ratio_cell(s.decode_speedup, s.decode_speedup_ci95),
            tables.verdict_cell(s.decode_speedup_ci95, min(len(r.baseline.decode_tps), len(r.patched.decode_tps))),
            tables.pairs_cell(r.baseline.decode_tps, r.patched.decode_tps),
            tables.side_cell(r.baseline.prefill_tps),
            tables.side_cell(r.patched.prefill_tps),
            tables.ratio_cell(s.prefill_speedup),
            tables.memory_cell(r.baseline, r.patched),
            counts,
        ])
    return rows


def run_rows(r: ModelResult) -> list[list[str]]:
    """Every measured run of both sides, in the order they ran (interleaved); tokens matched against baseline
    run 1 for both sides (a baseline row below full means stock mlx-lm was not deterministic)."""
    rows = []

    def match(matches: list, i: int) -> str:
        return f"{matches[i].matched}/{matches[i].total}" if i < len(matches) else "-"

    for i, (b, p) in enumerate(zip(r.baseline.runs, r.patched.runs, strict=False)):
        matched = {"baseline": match(r.fidelity.baseline_runs, i) if r.fidelity.baseline_runs else "",
                   "patched": match(r.fidelity.runs, i)}
        for side, s in (("baseline", b), ("patched", p)):
            rows.append([
                str(i + 1), side, f"{s.prefill_tps:.1f}", f"{s.decode_tps:.1f}", f"{s.ttft_s * 1000:.1f}",
                f"{s.token_latency_ms_p50:.2f}/{s.token_latency_ms_p90:.2f}/{s.token_latency_ms_p99:.2f}",
                f"{s.peak_memory_gb:.2f}", matched[side],
            ])
    return rows


def kernel_rows(c: Capsule) -> list[list[str]]:
    k = c.kernels
    if k is None:
        return []
    return [[
        t.op, t.case, str(t.tokens), f"{t.reference_us:.1f}",
        "-" if t.fused_us is None else f"{t.fused_us:.1f}",
        "-" if t.speedup is None else f"x{t.speedup:.2f}",
        "-" if t.identical is None else ("yes" if t.identical else "NO"),
    ] for t in k.results]


def unstable_notes(c: Capsule) -> list[str]:
    """One line per model whose baseline disagreed with itself: which run, which token, and the known cause."""
    e = c.environment
    return [f"{r.model}: " + unstable_line(r.fidelity, backend=e.backend, mlx_env=e.mlx_env, where=f"on {e.device}")
            for r in c.results if verdict_of(r.fidelity) == UNSTABLE]


def _env_line(c: Capsule) -> str:
    e = c.environment
    git = "no git" if e.git_commit is None else e.git_commit[:12] + (" dirty" if e.git_dirty else "")
    zmlx = e.packages.get("zmlx-patch") or e.packages.get("zmlx") or "?"
    mem = "" if e.device_memory_gb is None else f" ({e.device_memory_gb:g} GB)"
    drv = f", driver {e.driver}" if e.driver else ""
    env = "".join(f", {k}={v}" for k, v in e.mlx_env.items())
    return (f"{e.device}{mem}, {e.backend} backend{drv}; {e.os} {e.os_version}; python {e.python}, "
            f"mlx {e.mlx}, mlx-lm {e.mlx_lm or '-'}, zmlx {zmlx} ({git}){env}")


def format_capsule(c: Capsule, path: str) -> str:
    """The terminal report of one capsule."""
    out = [f"capsule   {path}", f"created   {c.created_utc}", "", "environment",
           format_environment(c.environment), "", "methodology", _methodology(c)]
    if c.methodology is not None and c.methodology.command:
        out.append("command: " + shlex.join(c.methodology.command))
    if c.results:
        out += ["", "results (median (min-max) of the measured runs; speedup = patched / baseline)",
                tables.render(RESULT_HEADERS, result_rows(c))]
        out += unstable_notes(c)
        for r in c.results:
            out += ["", f"runs of {r.model} ({r.name}, {r.model_type or 'unknown type'})",
                    tables.render(RUN_HEADERS, run_rows(r))]
    if c.kernels is not None:
        k = c.kernels
        out += ["", f"kernels ({k.backend}, {k.device}; median of {k.repeats} x {k.iterations} calls)",
                tables.render(KERNEL_HEADERS, kernel_rows(c))]
        if k.note:
            out.append(f"note: {k.note}")
    if c.note:
        out += ["", f"note: {c.note}"]
    return "\n".join(out)


def format_markdown(capsules: Sequence[tuple[str, Capsule]], *, argv: Sequence[str] = ()) -> str:
    """A Markdown document: one section per capsule, each naming its file."""
    cmd = shlex.join(["zmlx-bench", "report", "--markdown", *argv]) if argv else "zmlx-bench report --markdown"
    out = ["# Benchmarks", "",
           f"<!-- Generated by `{cmd}` from the capsules named below. Do not edit by hand. -->", "",
           "Each table is one repro capsule: baseline (unpatched mlx-lm) and patched runs interleaved on "
           "the same machine, greedy decoding, tokens compared on every run. Cells give the median of the "
           "measured runs with their min-max range; the decode speedup carries a 95% bootstrap interval, and "
           "\"vs noise\" says whether that interval excludes 1.0; \"pairs faster\" counts the interleaved "
           "pairs (baseline run i, then patched run i) in which the patched run decoded faster. The raw per-run "
           "numbers are in each capsule (`zmlx-bench report CAPSULE` prints them)."]
    for path, c in capsules:
        e = c.environment
        out += ["", f"## {e.device} ({e.backend}), {c.created_utc[:10]}", "",
                f"Capsule: `{path}`  ", f"Environment: {_env_line(c)}  ", f"Method: {_methodology(c)}"]
        if c.results:
            out += ["", tables.render(RESULT_HEADERS, result_rows(c), markdown=True)]
            out += [f"\n{line}" for line in unstable_notes(c)]
        if c.kernels is not None:
            k = c.kernels
            out += ["", f"Kernel microbenchmark (median of {k.repeats} x {k.iterations} calls, each evaluated "
                        "on its own):", "", tables.render(KERNEL_HEADERS, kernel_rows(c), markdown=True)]
            if k.note:
                out += ["", f"Note: {k.note}"]
        if c.note:
            out += ["", f"Note: {c.note}"]
    return "\n".join(out) + "\n"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("capsules", nargs="+", metavar="CAPSULE", help="capsule JSON file(s)")
    p.add_argument("--markdown", action="store_true",
                   help="emit a Markdown document (one section per capsule, naming its file), e.g. for "
                        "docs/BENCHMARKS.md")
    p.add_argument("--plot", metavar="PNG",
                   help="also draw per-run decode tok/s of both sides for every model (needs matplotlib: "
                        "pip install 'zmlx-bench[plot]')")


def run(args: argparse.Namespace) -> int:
    """The report command; returns the exit code (2: a capsule could not be read or matplotlib is missing)."""
    try:
        loaded = [(path, load_capsule(path)) for path in args.capsules]
    except CapsuleError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.plot:
        from .plot import PlotUnavailable, plot_decode_runs

        try:
            plot_decode_runs(loaded, args.plot)
        except PlotUnavailable as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    if args.markdown:
        sys.stdout.write(format_markdown(loaded, argv=args.capsules))
    else:
        print("\n\n".join(format_capsule(c, path) for path, c in loaded))
    if args.plot:
        print(f"plot written to {args.plot}", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m zmlx.bench.report",
                                description="Report on zmlx repro capsules.")
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
