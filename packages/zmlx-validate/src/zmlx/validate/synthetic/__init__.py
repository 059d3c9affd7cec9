"""Synthetic checkpoints: real mlx-lm architectures with deterministic random weights, built offline and cached.

``load_synthetic("qwen3-moe-tiny")`` builds (once) and loads a checkpoint; ``ZOO`` lists every name.
"""

from __future__ import annotations

import os
from pathlib import Path

from .builder import (
    BUILDER_VERSION,
    MARKER,
    SizeEstimate,
    checkpoint_dir,
    default_cache_root,
    ensure_checkpoint,
    estimate,
    weights_hash,
)
from .zoo import DEFAULT, ZOO, SyntheticSpec, get_spec

__all__ = [
    "BUILDER_VERSION", "DEFAULT", "MARKER", "ZOO", "SizeEstimate", "SyntheticSpec", "checkpoint_dir",
    "default_cache_root", "ensure_checkpoint", "estimate", "get_spec", "load_synthetic", "weights_hash",
]


def load_synthetic(name: str, *, seed: int = 0, cache_dir: str | os.PathLike[str] | None = None):
    """``(model, tokenizer, path)`` of the synthetic checkpoint ``name``, built into the cache first if needed."""
    import mlx_lm

    path: Path = ensure_checkpoint(get_spec(name), seed=seed, cache_dir=cache_dir)
    model, tokenizer = mlx_lm.load(str(path))
    return model, tokenizer, path
