"""``zmlx-bench run``: measure unpatched against patched decode on one or more models and write one capsule.

Per model: load it (hub id, local path or ``synthetic:NAME``) through zmlx-validate, build a prompt of exactly
``--prompt-tokens`` tokens, then let :func:`zmlx.validate.run_fidelity` do the warm-up and the interleaved
greedy runs (baseline, patched, baseline, ...), which compares the tokens of every run. The capsule is written
once, atomically, after the last model: an interrupted run (Ctrl-C) leaves no file behind.
"""

from __future__ import annotations

import datetime as dt
import gc
import random
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import stats
from .capsule import Capsule, Methodology, ModelResult, Summary
from .env import collect_environment

__all__ = ["default_capsule_name", "run_models", "summarize", "synth_prompt_ids"]

# A fixed vocabulary of plain words: any tokenizer encodes them, so the prompt is ordinary text, not id noise.
_WORDS = (
    "the model reads a long report about rivers mountains and cities then writes a careful summary of what "
    "changed over many years in each region with numbers dates names and small details that matter to people "
    "who live there work there or simply travel through on their way to somewhere else entirely"
).split()


class BenchError(Exception):
    """A usage or load problem: the message is one line; the CLI prints it and exits 2."""


def synth_prompt_ids(tokenizer: Any, n_tokens: int, *, seed: int = 0) -> list[int]:
    """Exactly ``n_tokens`` prompt token ids, the same for the same tokenizer and seed.

    Words drawn from a fixed list with ``random.Random(seed)`` are encoded as text (so a BOS token, if the
    tokenizer adds one, comes first, as in real use) until there are enough tokens, then cut to ``n_tokens``.
    """
    if n_tokens < 1:
        raise ValueError("prompt must have at least one token")
    rng = random.Random(seed)
    words: list[str] = []
    ids: list[int] = []
    while len(ids) < n_tokens:
        words.extend(rng.choice(_WORDS) for _ in range(max(16, n_tokens - len(ids))))
        ids = list(tokenizer.encode(" ".join(words)))
    return ids[:n_tokens]


def summarize(baseline: Any, patched: Any, *, seed: int, resamples: int) -> Summary:
    """Headline numbers of one model from the two :class:`~zmlx.validate.record.SideResult` records."""
    b_dec, p_dec = stats.median(baseline.decode_tps), stats.median(patched.decode_tps)
    b_pre, p_pre = stats.median(baseline.prefill_tps), stats.median(patched.prefill_tps)
    ci = stats.bootstrap_ratio_ci(patched.decode_tps, baseline.decode_tps, seed=seed, resamples=resamples)
    return Summary(
        decode_speedup=p_dec / b_dec,
        prefill_speedup=p_pre / b_pre,
        decode_speedup_ci95=ci,
        excludes_one=stats.excludes(ci, 1.0)
        and min(len(baseline.decode_tps), len(patched.decode_tps)) >= stats.MIN_RUNS_FOR_VERDICT,
        decode_ms_per_token_saved=1000.0 / b_dec - 1000.0 / p_dec,
        peak_memory_change_gb=patched.peak_memory_gb - baseline.peak_memory_gb,
    )


def _slug(text: str, limit: int = 40) -> str:
    s = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return s[:limit].strip("-") or "x"


def default_capsule_name(created: dt.datetime, device: str, models: Sequence[str]) -> str:
    """``YYYYMMDD_<device>_<models>.json``, e.g. ``20261127_nvidia-h100-80gb-hbm3_qwen3-30b-a3b.json``.

    Models are joined with ``_`` (letters, digits, ``-``, ``_`` only: names some file transports drop, like ``+``,
    never appear)."""
    names = "_".join(_slug(m.split(":", 1)[-1].rsplit("/", 1)[-1], 24) for m in models)
    return f"{created:%Y%m%d}_{_slug(device, 32)}_{names[:120]}.json"


class _Progress:
    """Plain status lines on stderr, one per run (readable in CI logs and through pipes, unlike a live bar)."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.prefix = ""
        self.desc = ""
        self.done = 0

    def say(self, msg: str) -> None:
        if not self.quiet:
            print(f"{self.prefix}{msg}", file=sys.stderr, flush=True)

    def start_model(self, prefix: str) -> None:
        self.prefix, self.desc, self.done = prefix, "", 0

    def __call__(self, desc: str, tokens: int, total: int) -> None:
        """zmlx.validate's RunProgress hook: (run description, new tokens, total tokens of the model)."""
        if desc != self.desc:
            self.desc = desc
            self.say(f"{desc} ({100 * self.done // max(total, 1)}% of {total} tokens)")
        self.done += tokens


def run_models(
    models: Sequence[str],
    *,
    runs: int = 5,
    max_tokens: int = 256,
    prompt_tokens: int = 512,
    warmup: int = 1,
    seed: int = 0,
    max_fused_tokens: int = 32,
    fuse_projections: bool | None = None,
    compile_blocks: bool | None = None,
    fuse_router: bool | None = None,
    fuse_qkv: bool | None = None,
    fuse_conv_proj: bool | None = None,
    patterns: list[str] | None = None,
    exclude: Sequence[str] = (),
    cache_dir: str | None = None,
    resamples: int = stats.DEFAULT_RESAMPLES,
    kernels: bool = False,
    command: Sequence[str] = (),
    quiet: bool = False,
) -> Capsule:
    """Benchmark every model in turn and return the capsule (nothing is written here)."""
    import mlx.core as mx
    from zmlx.validate import LoadError, load_model, run_fidelity

    progress = _Progress(quiet)
    created = dt.datetime.now(dt.UTC).replace(microsecond=0)
    env = collect_environment()
    from zmlx.patch import switches
    from zmlx.patch.measurement import measurement_flags

    patch_kwargs: dict[str, Any] = {"max_fused_tokens": max_fused_tokens}
    patch_kwargs.update({k: v for k, v in (("fuse_projections", fuse_projections),
                                           ("compile_blocks", compile_blocks), ("fuse_router", fuse_router),
                                           ("fuse_qkv", fuse_qkv), ("fuse_conv_proj", fuse_conv_proj))
                         if v is not None})
    # capsules record the values in effect, patch()'s defaults included
    in_effect = switches.effective(patch_kwargs)
    fuse_projections, compile_blocks = in_effect["fuse_projections"], in_effect["compile_blocks"]
    fuse_router, fuse_qkv = bool(in_effect["fuse_router"]), bool(in_effect["fuse_qkv"])
    fuse_conv_proj = bool(in_effect["fuse_conv_proj"])
    if patterns is not None:
        patch_kwargs["patterns"] = list(patterns)
    if exclude:
        patch_kwargs["exclude"] = list(exclude)

    results: list[ModelResult] = []
    for i, spec in enumerate(models, 1):
        progress.start_model(f"[{i}/{len(models)}] {spec}: ")
        progress.say("loading")
        t0 = time.perf_counter()
        try:
            model, tokenizer, name = load_model(spec, cache_dir=cache_dir)
        except LoadError as e:  # zmlx.validate's one-line message: unknown name, bad folder, hub error
            raise BenchError(f"cannot load model {spec!r}: {e}") from None
        load_s = time.perf_counter() - t0
        prompt_ids = synth_prompt_ids(tokenizer, prompt_tokens, seed=seed)
        progress.say(f"loaded {name} in {load_s:.1f}s; {warmup} warm-up + {runs} measured runs per side")
        res = run_fidelity(
            model, tokenizer, prompt_ids=prompt_ids, max_tokens=max_tokens, runs=runs, warmup=warmup,
            patch_kwargs=patch_kwargs, progress=progress,
        )
        summary = summarize(res.baseline, res.patched, seed=seed, resamples=resamples)
        results.append(ModelResult(
            model=spec,
            name=name,
            model_type=res.patch.model_type,
            patterns=list(res.patch.patterns),
            counts=dict(res.patch.counts),
            fidelity=res.fidelity,
            baseline=res.baseline,
            patched=res.patched,
            summary=summary,
            load_s=round(load_s, 3),
            fuse_projections=res.patch.fuse_projections,
        ))
        lo, hi = summary.decode_speedup_ci95
        progress.say(
            f"{res.fidelity.verdict}; decode {stats.median(res.baseline.decode_tps):.1f} -> "
            f"{stats.median(res.patched.decode_tps):.1f} tok/s, x{summary.decode_speedup:.3f} "
            f"[{lo:.3f}, {hi:.3f}]"
        )
        # Free the weights before the next model loads (several large checkpoints in one run).
        del model, tokenizer, res
        gc.collect()
        mx.clear_cache()

    kernel_bench = None
    if kernels:
        from .kernels import run_kernel_bench

        progress.prefix = "kernels: "
        kernel_bench = run_kernel_bench(progress=progress.say)

    return Capsule(
        created_utc=created.isoformat().replace("+00:00", "Z"),
        environment=env,
        methodology=Methodology(
            prompt_tokens=prompt_tokens,
            max_tokens=max_tokens,
            warmup_runs=warmup,
            runs=runs,
            patch_held=True,  # run_fidelity's default: zmlx.patch held, baseline runs suspended
            seed=seed,
            max_fused_tokens=max_fused_tokens,
            fuse_projections=fuse_projections,
            compile_blocks=compile_blocks,
            fuse_router=fuse_router,
            fuse_qkv=fuse_qkv,
            fuse_conv_proj=fuse_conv_proj,
            patterns=None if patterns is None else list(patterns),
            exclude=list(exclude),
            prompt=f"{prompt_tokens} tokens of seeded random plain words (zmlx.bench.run.synth_prompt_ids, "
                   f"seed {seed})",
            switches=measurement_flags(),
            bootstrap_resamples=resamples,
            command=list(command),
        ),
        results=results,
        kernels=kernel_bench,
    )


def resolve_out(out: str | None, capsule: Capsule, models: Sequence[str]) -> Path:
    """``--out``: a file path, or a directory (existing, or written with a trailing slash) to name it in."""
    created = dt.datetime.fromisoformat(capsule.created_utc.replace("Z", "+00:00"))
    name = default_capsule_name(created, capsule.environment.device, models)
    if out is None:
        return Path(name)
    p = Path(out)
    if p.is_dir() or out.endswith(("/", "\\")):
        return p / name
    return p
