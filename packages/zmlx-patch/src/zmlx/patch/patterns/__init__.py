"""The patterns: each checks a block's structure against its site and supplies the fused ``__call__`` body."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import mlx.nn as nn

from . import (
    attention_layer,
    conv_layer,
    geglu_mlp,
    moe_mlp,
    qk_norm_rope,
    quantized_linear,
    quantized_switch_linear,
    residual_norm,
    swiglu_mlp,
)


@dataclass(frozen=True)
class Pattern:
    name: str
    # (module, site) -> None when the module matches, else the reason it is skipped
    check: Callable[[nn.Module, Any], str | None]
    # (module, site, x, *args) -> output; runs only when the block sees <= max_fused_tokens tokens
    fused: Callable[..., Any]
    summary: str
    # site -> whether patch(compile_blocks=True) may trace the fused path (it must take only x)
    compilable: Callable[[Any], bool] = lambda site: True
    # (module, site) -> whether fuse_projections can fuse this module's quantized projections
    fusable: Callable[[nn.Module, Any], bool] = lambda module, site: False
    # (module, site) -> False for instances of the site's class the pattern is not about (left alone, not "skipped")
    applies: Callable[[nn.Module, Any], bool] = lambda module, site: True


PATTERNS: dict[str, Pattern] = {
    p.name: p
    for p in (
        # dense MLPs are ~4 primitives: a traced call costs about what it saves (llama capsule, perf-notes)
        Pattern("swiglu_mlp", swiglu_mlp.check, swiglu_mlp.fused, swiglu_mlp.SUMMARY, compilable=lambda site: False),
        Pattern("geglu_mlp", geglu_mlp.check, geglu_mlp.fused, geglu_mlp.SUMMARY, compilable=lambda site: False),
        Pattern("moe_mlp", moe_mlp.check, moe_mlp.fused, moe_mlp.SUMMARY, compilable=moe_mlp.compilable,
                fusable=moe_mlp.fusable),
        # the KV cache update inside the block changes shape every step: never traced
        Pattern("qk_norm_rope", qk_norm_rope.check, qk_norm_rope.fused, qk_norm_rope.SUMMARY,
                compilable=lambda site: False),
        # traces itself (conv state in and out, cache bookkeeping outside the trace) when compile_blocks is on
        Pattern("conv_layer", conv_layer.check, conv_layer.fused, conv_layer.SUMMARY,
                compilable=lambda site: False, applies=conv_layer.applies),
        # traces itself in two graphs around the KV-cache update and SDPA when compile_blocks is on
        Pattern("attention_layer", attention_layer.check, attention_layer.fused, attention_layer.SUMMARY,
                compilable=lambda site: False),
        # a single projection: nothing to trace; inside a traced layer it is traced with the layer
        Pattern("quantized_linear", quantized_linear.check, quantized_linear.fused, quantized_linear.SUMMARY,
                compilable=lambda site: False),
        # called by SwitchGLU, itself traced where moe_mlp traces the block
        Pattern("quantized_switch_linear", quantized_switch_linear.check, quantized_switch_linear.fused,
                quantized_switch_linear.SUMMARY, compilable=lambda site: False),
        Pattern("residual_norm", residual_norm.check, residual_norm.fused, residual_norm.SUMMARY,
                compilable=lambda site: False),
    )
}

