"""zmlx.validate: token-for-token fidelity of zmlx-patched models against stock mlx-lm.

Programmatic API (stable; zmlx-bench builds on it)::

    from zmlx.validate import load_model, run_fidelity, encode_prompt
    model, tokenizer, name = load_model("synthetic:qwen3-moe-tiny", cache_dir=None)
    result = run_fidelity(model, tokenizer, prompt_ids=encode_prompt(tokenizer, DEFAULT_PROMPT),
                          max_tokens=200, runs=3, warmup=1, patch_kwargs={"max_fused_tokens": 32})
    result.fidelity, result.baseline, result.patched   # record.py Structs
"""

from .fidelity import FidelityResult, PatchInfo, run_fidelity
from .loading import LoadError, load_model
from .prompt import DEFAULT_PROMPT, encode_prompt
from .record import (
    FAIL,
    PASS,
    UNSTABLE,
    Bisection,
    Divergence,
    Fidelity,
    RunMatch,
    RunStats,
    SideResult,
    ValidationRecord,
    verdict_of,
    write_json_atomic,
)

__all__ = [
    "DEFAULT_PROMPT", "FAIL", "PASS", "UNSTABLE", "Bisection", "Divergence", "Fidelity", "FidelityResult",
    "LoadError", "PatchInfo", "RunMatch", "RunStats", "SideResult", "ValidationRecord", "encode_prompt",
    "load_model", "run_fidelity", "verdict_of", "write_json_atomic",
]
