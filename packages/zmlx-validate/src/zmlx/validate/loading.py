"""Resolve a MODEL argument (local folder, Hugging Face id, ``synthetic:NAME`` or nothing) and load it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .synthetic import DEFAULT, get_spec, load_synthetic

SYNTHETIC_PREFIX = "synthetic:"


class LoadError(ValueError):
    """A model could not be resolved or loaded; the message is one line meant for the user."""


def _looks_like_path(spec: str) -> bool:
    # A Hugging Face id is "org/name"; anything else with a slash, or starting like a path, is a folder.
    return spec.startswith(("/", ".", "~")) or spec.count("/") != 1 or os.sep != "/" and os.sep in spec


def load_model(spec: str | None, *, cache_dir: str | os.PathLike[str] | None = None,
               seed: int = 0) -> tuple[Any, Any, str]:
    """``(model, tokenizer, resolved_name)`` for a MODEL argument.

    ``None`` or ``""`` -> the default synthetic checkpoint; ``synthetic:NAME`` -> built (once) into ``cache_dir``
    (default: the user cache) with weights from ``seed``; an existing folder -> ``mlx_lm.load``; otherwise a Hugging
    Face id through mlx-lm's own loader and cache. Raises :class:`LoadError` with a one-line message.
    """
    if not spec:
        spec = SYNTHETIC_PREFIX + DEFAULT
    if spec.startswith(SYNTHETIC_PREFIX):
        try:
            name = get_spec(spec).name
        except KeyError as e:
            raise LoadError(str(e.args[0])) from None
        try:
            model, tokenizer, _ = load_synthetic(name, seed=seed, cache_dir=cache_dir)
        except OSError as e:
            raise LoadError(f"cannot build synthetic:{name}: {e}") from None
        return model, tokenizer, SYNTHETIC_PREFIX + name

    import mlx_lm

    path = Path(spec).expanduser()
    if path.exists():
        if not path.is_dir() or not (path / "config.json").is_file():
            raise LoadError(f"{spec} is not an mlx-lm checkpoint folder (no config.json)")
        target = str(path)
    elif _looks_like_path(spec):
        raise LoadError(f"no such model folder: {spec}")
    else:
        target = spec
    try:
        model, tokenizer = mlx_lm.load(target)
    except Exception as e:  # mlx-lm raises many kinds (hub errors, ValueError, KeyError, FileNotFoundError ...)
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise LoadError(f"cannot load {spec}: {msg}") from None
    return model, tokenizer, spec
