"""The result records zmlx writes: msgspec Structs, tagged and versioned.

Rules (msgspec schema evolution): every record type derives from :class:`Base`; a top-level record carries a
``schema`` tag whose string includes the version (``"zmlx.validate/1"``); new fields are only ever added with
defaults, so files written by newer versions stay readable by older readers (unknown fields are ignored).
``zmlx-bench`` capsules embed :class:`Fidelity` and :class:`SideResult` from here, so one definition of a
run's numbers serves both tools.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import msgspec


class Base(msgspec.Struct, kw_only=True, frozen=True, omit_defaults=False):
    """Base of every zmlx record.

    - ``kw_only``: fields are named at construction, so adding a field never shifts positions (msgspec applies
      it per class: every subclass repeats ``kw_only=True``).
    - ``frozen``: a record is a measurement; it is built once and never edited.
    - unknown fields are accepted on decode (no ``forbid_unknown_fields``): older readers skip what newer
      writers add.
    """


class RunStats(Base, kw_only=True):
    """One greedy generation run of one side (baseline or patched)."""

    prompt_tokens: int
    generated_tokens: int
    prefill_tps: float
    decode_tps: float
    ttft_s: float
    token_latency_ms_p50: float
    token_latency_ms_p90: float
    token_latency_ms_p99: float
    peak_memory_gb: float


class SideResult(Base, kw_only=True):
    """Raw per-run numbers of one side, in run order, plus their medians."""

    runs: list[RunStats]
    prefill_tps: list[float]
    decode_tps: list[float]
    ttft_s: list[float]
    peak_memory_gb: float
    median_prefill_tps: float
    median_decode_tps: float


class Divergence(Base, kw_only=True):
    """Where a patched run first left the baseline's tokens, and how close the call was."""

    run: int
    position: int
    baseline_token: int
    patched_token: int
    # top-1 minus top-2 logprob at that step; None when it could not be measured (JSON has no NaN)
    baseline_margin: float | None
    patched_margin: float | None
    # False when re-running both sides to read the margins did not give the same two tokens again
    # (the divergence is then not deterministic).
    reproduced: bool = True


class RunMatch(Base, kw_only=True):
    matched: int
    total: int


PASS, FAIL, UNSTABLE = "PASS", "FAIL", "UNSTABLE"
VERDICTS = (PASS, FAIL, UNSTABLE)


class Fidelity(Base, kw_only=True):
    """The token comparison of one model. ``verdict`` is one of :data:`VERDICTS`:

    - ``"PASS"``: every baseline run and every patched run produced baseline run 1's tokens;
    - ``"FAIL"``: the baseline repeats itself but a patched run differs (the patch changed the tokens);
    - ``"UNSTABLE"``: baseline runs differ from each other (stock mlx-lm is not deterministic on that machine), so
      no token comparison can pass and a patched difference cannot be attributed. Records written before
      UNSTABLE existed say ``"FAIL"`` here; :func:`verdict_of` re-derives the verdict from the runs.
    """

    verdict: str  # "PASS" | "FAIL" | "UNSTABLE"
    runs: list[RunMatch]  # patched run i against baseline run 0 (matched = common prefix length)
    first_divergence: Divergence | None = None
    # baseline run i against baseline run 0: any mismatch here makes the verdict UNSTABLE
    baseline_runs: list[RunMatch] = msgspec.field(default_factory=list)


def classify(runs: list[RunMatch], baseline_runs: list[RunMatch]) -> str:
    """The verdict of a comparison: an unstable baseline outranks any patched difference (nothing to blame)."""
    if any(m.matched != m.total for m in baseline_runs):
        return UNSTABLE
    return PASS if all(m.matched == m.total for m in runs) else FAIL


def verdict_of(fidelity: Fidelity) -> str:
    """``fidelity.verdict``, except that an older record's FAIL with an unstable baseline reads as UNSTABLE."""
    if fidelity.verdict == FAIL and any(m.matched != m.total for m in fidelity.baseline_runs):
        return UNSTABLE
    return fidelity.verdict


def unstable_baseline_runs(fidelity: Fidelity) -> list[tuple[int, int]]:
    """(baseline run number from 1, first token that differs from baseline run 1) of every unstable run."""
    return [(i + 1, m.matched) for i, m in enumerate(fidelity.baseline_runs) if m.matched != m.total]


class Bisection(Base, kw_only=True):
    """What ``--bisect`` found: the first pattern, then the first layer, that alone breaks fidelity."""

    pattern: str | None = None  # None: no single pattern diverges on its own
    layer: int | None = None  # None: no single layer diverges on its own (with `pattern`, or all patterns)
    modules: list[str] = msgspec.field(default_factory=list)  # patched module paths in that layer
    position: int | None = None  # first divergent token of the narrowest failing configuration
    note: str = ""


class ValidationRecord(Base, kw_only=True, tag_field="schema", tag="zmlx.validate/1"):
    """What ``zmlx-validate --json`` writes."""

    model: str
    model_type: str
    patterns: list[str]
    counts: dict[str, int]
    max_tokens: int
    runs: int
    warmup_runs: int
    seed: int
    max_fused_tokens: int
    prompt: str
    fidelity: Fidelity
    baseline: SideResult
    patched: SideResult
    decode_speedup: float
    prefill_speedup: float
    backend: str
    device: str
    zmlx_version: str
    mlx_version: str
    mlx_lm_version: str
    bisect: Bisection | None = None
    # every MLX_* environment variable set for the run: they select MLX's kernels (e.g. cuDNN attention on CUDA)
    mlx_env: dict[str, str] = msgspec.field(default_factory=dict)
    # patch()'s switches in effect for the patched side (fuse_projections, compile_blocks), defaults included and
    # resolved for this model (fuse_projections' per-family default)
    patch_options: dict[str, bool | str] = msgspec.field(default_factory=dict)


def write_json_atomic(path: str | os.PathLike[str], obj: msgspec.Struct) -> None:
    """Write ``obj`` as indented JSON so that ``path`` is either the old file or the whole new one."""
    path = Path(path)
    data = msgspec.json.format(msgspec.json.encode(obj), indent=2) + b"\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
