"""Fixtures for zmlx-bench tests: capsules built from known numbers, so report/compare tests need no model."""

from __future__ import annotations

import random

import msgspec
import pytest
from zmlx.bench.capsule import Capsule, Environment, Methodology, ModelResult
from zmlx.bench.run import summarize
from zmlx.validate.record import Divergence, Fidelity, RunMatch, RunStats, SideResult


def side(decode: list[float], prefill: list[float], mem: float = 1.25) -> SideResult:
    runs = [RunStats(prompt_tokens=32, generated_tokens=16, prefill_tps=p, decode_tps=d, ttft_s=32 / p,
                     token_latency_ms_p50=1000 / d, token_latency_ms_p90=1100 / d, token_latency_ms_p99=1300 / d,
                     peak_memory_gb=mem) for d, p in zip(decode, prefill, strict=True)]
    return SideResult(runs=runs, prefill_tps=prefill, decode_tps=decode, ttft_s=[r.ttft_s for r in runs],
                      peak_memory_gb=mem, median_prefill_tps=sorted(prefill)[len(prefill) // 2],
                      median_decode_tps=sorted(decode)[len(decode) // 2])


def model_result(model: str, base: list[float], patched: list[float], *, fail: bool = False,
                 unstable: bool = False, verdict: str | None = None) -> ModelResult:
    """``unstable``: baseline run 3 left baseline run 1 at token 5 (``verdict`` overrides what is recorded, e.g.
    "FAIL" as zmlx wrote before UNSTABLE existed)."""
    b = side(base, [x * 10 for x in base])
    p = side(patched, [x * 10 for x in base], mem=1.26)
    n = len(base)
    runs = [RunMatch(matched=16, total=16) for _ in range(n)]
    div = None
    if fail:
        runs[1] = RunMatch(matched=7, total=16)
        div = Divergence(run=1, position=7, baseline_token=11, patched_token=12, baseline_margin=0.01,
                         patched_margin=0.02)
    base_runs = [RunMatch(matched=16, total=16) for _ in range(n)]
    if unstable:
        base_runs[2] = RunMatch(matched=5, total=16)
    recorded = verdict or ("UNSTABLE" if unstable else "FAIL" if fail else "PASS")
    fid = Fidelity(verdict=recorded, runs=runs, first_divergence=div, baseline_runs=base_runs)
    return ModelResult(model=model, name=model, model_type="qwen3_moe", patterns=["moe_mlp"],
                       counts={"moe_mlp": 2}, fidelity=fid, baseline=b, patched=p,
                       summary=summarize(b, p, seed=0, resamples=500))


def environment() -> Environment:
    return Environment(os="Linux", os_version="6.1", arch="x86_64", backend="cuda", device="NVIDIA H100 80GB HBM3",
                       driver="580.65", device_memory_gb=79.6, system_memory_gb=125.0, python="3.12.3",
                       mlx="0.32.4", mlx_lm="0.32.2", packages={"zmlx-bench": "0.1.0"},
                       git_commit="0123456789abcdef0123456789abcdef01234567", git_dirty=False)


def make_capsule(speedup: float = 1.10, seed: int = 1, models: tuple[str, ...] = ("synthetic:a", "synthetic:b"),
                 fail: bool = False, unstable: bool = False, verdict: str | None = None,
                 mlx_env: dict[str, str] | None = None) -> Capsule:
    rng = random.Random(seed)
    results = []
    for m in models:
        base = [100 + rng.uniform(-1, 1) for _ in range(5)]
        results.append(model_result(m, base, [x * speedup + rng.uniform(-1, 1) for x in base], fail=fail,
                                    unstable=unstable, verdict=verdict))
    meth = Methodology(prompt_tokens=32, max_tokens=16, warmup_runs=1, runs=5, seed=0, max_fused_tokens=32,
                       prompt="test", bootstrap_resamples=500, command=["zmlx-bench", "run", *models])
    env = environment() if mlx_env is None else msgspec.structs.replace(environment(), mlx_env=mlx_env)
    return Capsule(created_utc="2026-11-27T10:00:00Z", environment=env, methodology=meth, results=results)


@pytest.fixture
def capsule_factory():
    return make_capsule


@pytest.fixture
def model_result_factory():
    return model_result
