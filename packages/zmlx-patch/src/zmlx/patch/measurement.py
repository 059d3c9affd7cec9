"""Measurement switches: module-level flags of the patterns that pick between bit-identical kernel forms or fusions,
for A/B runs on the GPU (tools/gpu/ab_decode.py, tools/gpu/capsule_switch.py). They are not patch() arguments: the
per-family defaults live in the registry, and a switch is promoted there only with a capsule. Capsules record the
flags as the run found them (zmlx-bench's ``methodology.switches``).
"""

from __future__ import annotations

import importlib

# (pattern module under zmlx.patch.patterns, flag): each read when a block is patched or traced
FLAGS: tuple[tuple[str, str], ...] = (
    ("_experts", "QMV_CORE"),  # top-k < 8 4-bit experts / dense gate+up on zk.qmv's core (default on, v11)
    ("_experts", "Q4_BATCH"),  # those launches in their batch loop form (default on, v12)
    ("_layer", "FOLD_RESIDUAL"),  # a traced layer's `h + moe(x)` inside the experts' launch
    ("_layer", "FOLD_PROJECTIONS"),  # residual adds inside o_proj / down_proj (v11: slower, off)
    ("_layer", "FOLD_NORMS"),  # norms inside the q/k/v or gate/up launch (v11: slower, off)
    ("_layer", "FOLD_ROPE"),  # q and k rotated in one launch (v11: slower, off)
    ("qk_norm_rope", "TRACE_PROLOGUE"),  # the attention prologue traced by compile_blocks
)


# each flag's value in the source (what a fresh process runs), for reports that show only what a run changed; a
# test holds it equal to the modules' own
DEFAULTS: dict[str, bool] = {
    "_experts.QMV_CORE": True, "_experts.Q4_BATCH": True, "_layer.FOLD_RESIDUAL": True,
    "_layer.FOLD_PROJECTIONS": False, "_layer.FOLD_NORMS": False, "_layer.FOLD_ROPE": False,
    "qk_norm_rope.TRACE_PROLOGUE": True,
}


def changed(flags: dict[str, bool]) -> dict[str, bool]:
    """The flags of ``flags`` whose value is not today's default (unknown names kept: an older or newer zmlx's)."""
    return {k: v for k, v in flags.items() if DEFAULTS.get(k) is not v}


def measurement_flags() -> dict[str, bool]:
    """``"module.FLAG" -> value`` for every measurement switch, as set now."""
    return {f"{module}.{flag}": bool(getattr(importlib.import_module(f"zmlx.patch.patterns.{module}"), flag))
            for module, flag in FLAGS}
