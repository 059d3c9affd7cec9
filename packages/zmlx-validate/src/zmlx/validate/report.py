"""Text output of zmlx-validate (stdout) and the environment fields of the JSON record."""

from __future__ import annotations

import math
import os
import platform
import re
from collections.abc import Mapping
from importlib import metadata
from typing import Any, TextIO

from .fidelity import FidelityResult
from .record import UNSTABLE, Bisection, Fidelity, unstable_baseline_runs, verdict_of

# MLX's own switch (read once, at the first CUDA attention call) between cuDNN SDPA and MLX's attention kernels
CUDNN_SDPA_VAR = "MLX_CUDA_USE_CUDNN_SDPA"


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


def mlx_env_vars(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Every ``MLX_*`` environment variable, sorted: MLX reads them to pick kernels (zmlx itself reads none)."""
    env = os.environ if environ is None else environ
    return {k: env[k] for k in sorted(env) if k.startswith("MLX_")}


def _mlx_flag_off(value: str | None) -> bool:
    # MLX parses its switches with atoi: unset keeps the default (on); "0" or a non-number turns it off.
    if value is None:
        return False
    m = re.match(r"\s*[+-]?\d+", value)
    return m is None or int(m.group()) == 0


def unstable_line(fidelity: Fidelity, *, backend: str, mlx_env: Mapping[str, str],
                  where: str = "on this machine") -> str:
    """One line saying that the baseline disagrees with itself, where, and (on CUDA) the known cause; "" if not."""
    bad = unstable_baseline_runs(fidelity)
    if not bad:
        return ""
    (run, token), *rest = bad
    line = f"UNSTABLE: baseline run {run} differs from baseline run 1 at token {token}"
    if rest:
        line += " (" + ", ".join(f"run {r} at token {t}" for r, t in rest) + ")"
    line += f": stock mlx-lm itself is not deterministic {where}, so no token comparison can pass"
    if any(m.matched != m.total for m in fidelity.runs):
        line += " (patched runs differ too, which cannot be attributed to zmlx while the baseline varies)"
    if backend == "cuda":
        value = mlx_env.get(CUDNN_SDPA_VAR)
        if _mlx_flag_off(value):
            line += f"; {CUDNN_SDPA_VAR}={value} was set, so MLX's cuDNN attention is not the cause here"
        else:
            line += (f"; on CUDA the known cause is MLX's cuDNN attention (SDPA): run with {CUDNN_SDPA_VAR}=0, "
                     "MLX's own setting (not zmlx configuration), for MLX's deterministic attention kernels")
    return line


def _tok(tokenizer: Any, token: int) -> str:
    try:
        return repr(tokenizer.decode([token]))
    except Exception:  # a tokenizer that cannot decode one id still gets the id printed
        return "?"


def _fmt(x: float, nd: int = 1) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:,.{nd}f}"


def divergence_line(result: FidelityResult, tokenizer: Any, *, backend: str = "",
                    mlx_env: Mapping[str, str] | None = None) -> str:
    if verdict_of(result.fidelity) == UNSTABLE:
        return unstable_line(result.fidelity, backend=backend,
                             mlx_env=mlx_env_vars() if mlx_env is None else mlx_env)
    d = result.fidelity.first_divergence
    if d is None:
        return ""
    line = (f"first divergence: run {d.run + 1}, token {d.position}: baseline {d.baseline_token} "
            f"{_tok(tokenizer, d.baseline_token)} (top1-top2 margin {_fmt(d.baseline_margin, 4)}) vs patched "
            f"{d.patched_token} {_tok(tokenizer, d.patched_token)} (margin {_fmt(d.patched_margin, 4)})")
    if not d.reproduced:
        line += "; NOT reproduced when re-run (non-deterministic)"
    return line


def print_report(out: TextIO, *, name: str, result: FidelityResult, tokenizer: Any, max_tokens: int,
                 runs: int, prompt_tokens: int, bisection: Bisection | None, backend: str = "",
                 mlx_env: Mapping[str, str] | None = None) -> None:
    """The text report; ``backend`` and ``mlx_env`` (default: this process's MLX_* variables) only shape the
    explanation of an UNSTABLE baseline."""
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
    line = divergence_line(result, tokenizer, backend=backend, mlx_env=mlx_env)
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
