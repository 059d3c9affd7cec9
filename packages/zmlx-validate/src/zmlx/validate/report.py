"""Text output of zmlx-validate (stdout) and the environment fields of the JSON record."""

from __future__ import annotations

import math
import platform
from importlib import metadata
from typing import Any, TextIO

from .fidelity import FidelityResult
from .record import Bisection


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "unknown"


def environment() -> dict[str, str]:
    """backend, device and versions for the record."""
    import mlx.core as mx
    from zmlx.kernels.backend import target_for

    device = ""
    try:
        info = mx.device_info()
        device = str(info.get("device_name") or info.get("architecture") or "")
    except Exception:  # device_info is missing or fails on some backends
        device = ""
    if not device:
        device = platform.processor() or platform.machine()
    return {
        "backend": target_for(),
        "device": device,
        "zmlx_version": _version("zmlx-validate"),
        "mlx_version": _version("mlx"),
        "mlx_lm_version": _version("mlx-lm"),
    }


def _tok(tokenizer: Any, token: int) -> str:
    try:
        return repr(tokenizer.decode([token]))
    except Exception:  # a tokenizer that cannot decode one id still gets the id printed
        return "?"


def _fmt(x: float, nd: int = 1) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:,.{nd}f}"


def divergence_line(result: FidelityResult, tokenizer: Any) -> str:
    d = result.fidelity.first_divergence
    if d is None:
        bad = [i for i, m in enumerate(result.fidelity.baseline_runs) if m.matched != m.total]
        if bad:
            m = result.fidelity.baseline_runs[bad[0]]
            return (f"baseline run {bad[0] + 1} differs from baseline run 1 at token {m.matched}: the unpatched model "
                    "is not deterministic, so no comparison is meaningful")
        return ""
    line = (f"first divergence: run {d.run + 1}, token {d.position}: baseline {d.baseline_token} "
            f"{_tok(tokenizer, d.baseline_token)} (top1-top2 margin {_fmt(d.baseline_margin, 4)}) vs patched "
            f"{d.patched_token} {_tok(tokenizer, d.patched_token)} (margin {_fmt(d.patched_margin, 4)})")
    if not d.reproduced:
        line += "; NOT reproduced when re-run (non-deterministic)"
    return line


def print_report(out: TextIO, *, name: str, result: FidelityResult, tokenizer: Any, max_tokens: int,
                 runs: int, prompt_tokens: int, bisection: Bisection | None) -> None:
    p = result.patch
    w = out.write
    w(f"model: {name} ({p.model_type}), prompt {prompt_tokens} tokens, {max_tokens} tokens x {runs} runs\n")
    patched = ", ".join(f"{k}: {v}" for k, v in p.counts.items()) or "none"
    w(f"patterns: {', '.join(p.patterns) or 'none'}; modules patched: {patched}\n")
    if not sum(p.counts.values()):
        w("warning: patch() changed no module of this model; the comparison is trivially identical\n")
    f = result.fidelity
    matched = sum(m.matched for m in f.runs)
    total = sum(m.total for m in f.runs)
    w(f"fidelity: {matched}/{total} tokens identical over {len(f.runs)} runs "
      f"(per run: {' '.join(f'{m.matched}/{m.total}' for m in f.runs)})\n")
    b, q = result.baseline, result.patched
    w(f"{'':18}{'baseline':>12}{'patched':>12}{'speedup':>10}\n")
    w(f"{'prompt tok/s':18}{_fmt(b.median_prefill_tps):>12}{_fmt(q.median_prefill_tps):>12}"
      f"{_fmt(result.prefill_speedup, 3) + 'x':>10}\n")
    w(f"{'generation tok/s':18}{_fmt(b.median_decode_tps):>12}{_fmt(q.median_decode_tps):>12}"
      f"{_fmt(result.decode_speedup, 3) + 'x':>10}\n")
    w(f"{'peak memory GB':18}{_fmt(b.peak_memory_gb, 3):>12}{_fmt(q.peak_memory_gb, 3):>12}\n")
    line = divergence_line(result, tokenizer)
    if line:
        w(line + "\n")
    if bisection is not None:
        where = (f"pattern {bisection.pattern or '(several together)'}, "
                 f"layer {bisection.layer if bisection.layer is not None else '(several together)'}")
        w(f"bisect: first break at {where}")
        if bisection.position is not None:
            w(f", token {bisection.position}")
        if bisection.modules:
            w(f"; modules: {', '.join(bisection.modules)}")
        if bisection.note:
            w(f" ({bisection.note})")
        w("\n")
    w(f"{f.verdict}\n")
