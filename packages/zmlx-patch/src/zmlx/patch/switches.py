"""patch()'s on/off switches for command lines: the flags are None unless given, so no CLI restates a default that
lives in ``patch``'s signature; :func:`effective` resolves them for records and capsules (zmlx-validate, zmlx-bench).
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

SWITCHES: dict[str, str] = {
    "fuse_projections": "fuse the quantized projections at decode",
    "compile_blocks": "trace patched MoE blocks with mx.compile at decode",
    "fuse_router": "run an affine-quantized MoE router's projection inside the routing launch",
    "fuse_qkv": "run attention's q/k/v projections inside its norm + RoPE launch (with attention_layer: input norm too)",
    "fuse_conv_proj": "run LFM2's conv in_proj inside the short-conv launch",
}


# patch()'s default for each switch (None: each family's own choice). Written here, not read from patch()'s
# signature, so the CLIs build their flags without importing mlx-lm; a test holds the two equal.
DEFAULTS: dict[str, bool | None] = {
    "fuse_projections": None,
    "compile_blocks": True,
    "fuse_router": False,
    "fuse_qkv": False,
    "fuse_conv_proj": False,
}


def defaults() -> dict[str, bool | None]:
    """patch()'s default for each switch (None: each family's own choice)."""
    return dict(DEFAULTS)


def add_arguments(parser: argparse.ArgumentParser | Any) -> None:
    """``--[no-]fuse-projections``, ``--[no-]compile-blocks`` and the opt-ins (``--[no-]fuse-router``,
    ``--[no-]fuse-qkv``, ``--[no-]fuse-conv-proj``), each None unless given."""
    for name, default in defaults().items():
        what = SWITCHES[name]
        parser.add_argument(f"--{name.replace('_', '-')}", action=argparse.BooleanOptionalAction, default=None,
                            help=f"{what} (patch({name}=...); default {_word(default)})")


def _word(default: bool | None) -> str:
    return "per model family" if default is None else "on" if default else "off"


def given(args: argparse.Namespace) -> dict[str, bool]:
    """The switches the command line set explicitly: pass these to patch() and its defaults apply to the rest."""
    return {name: getattr(args, name) for name in SWITCHES if getattr(args, name) is not None}


def effective(kwargs: Mapping[str, Any]) -> dict[str, bool | str]:
    """Every switch's value for a patch() call with ``kwargs``, defaults included; "auto" where the family decides
    (PatchResult.fuse_projections then says what it resolved to for one model)."""
    out: dict[str, bool | str] = {}
    for name, default in defaults().items():
        value = kwargs.get(name, default)
        out[name] = "auto" if value is None else bool(value)
    return out
