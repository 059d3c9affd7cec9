"""Per-family semantics: what each mlx-lm block computes, written as data the patterns interpret.

Every entry names the exact mlx-lm class it describes (``module:Class``); a pattern only swaps an instance whose
class is exactly that one, so a family's math is never guessed from names. The MoE rows follow mlx-lm 0.32's block
code line for line (router, gating op and flags, experts, shared expert, combine rounding); the gating ops and
their flags follow the family -> call table in ``zmlx.kernels.ops.routing``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Literal

Layout = Literal["gate_up_down", "w1_w3_w2", "fused_gate_up"]
Activation = Literal["silu", "gelu", "gelu_approx"]


@dataclass(frozen=True)
class Attr:
    """A value read from the patched block at call time (dotted attribute path), e.g. ``Attr("top_k")``."""

    path: str


@dataclass(frozen=True)
class XDtype:
    """Stands for the block input's dtype (``out_dtype=x.dtype`` in the routing call)."""


@dataclass(frozen=True)
class DenseSite:
    """A gated MLP: ``down(act(gate(x)) * up(x))``."""

    block: str
    layout: Layout
    activation: Activation
    # set by patch(fuse_projections=True): at one token, gate+up quantized projections + activation in one launch
    fuse_projections: bool = False


@dataclass(frozen=True)
class Gating:
    """One ``zmlx.kernels`` routing call: ``getattr(zk, op)(logits, **args)`` -> ``(indices, weights)``."""

    op: Literal["softmax_topk", "topk_softmax", "sigmoid_topk", "grouped_sigmoid_topk"]
    args: tuple[tuple[str, Attr | XDtype | bool | float | int | str | None], ...]


# How a block turns x into router logits, exactly as its own code does.
#   linear:       router(x)                 (nn.Linear or its quantized form; may carry a bias)
#   linear_fp32:  router(x.astype(float32)) (minimax)
#   weight:       x @ router.weight.T       (deepseek_v3 / glm4_moe MoEGate, a raw weight array)
Logits = Literal["linear", "linear_fp32", "weight"]
# Shared expert, added after the routed combine:
#   sigmoid_gated: y + sigmoid(shared_expert_gate(x)) * shared_expert(x)   (qwen2_moe, qwen3_next)
#   plain:         y + shared_experts(x), when the block has one           (deepseek_v3, glm4_moe)
Shared = Literal["none", "sigmoid_gated", "plain"]


@dataclass(frozen=True)
class MoeSite:
    block: str
    router: str
    logits: Logits
    gating: Gating
    experts: str = "switch_mlp"
    shared: Shared = "none"
    # the block's combine ends with ``.astype(y.dtype)``: zk.moe_combine(..., fp32=True)
    combine_fp32: bool = False
    # the block routes ``x.reshape(-1, D)`` and reshapes the result back (olmoe)
    flatten_tokens: bool = False
    # set by patch(fuse_projections=True): at one token, the quantized experts run as two fused launches
    fuse_projections: bool = False
    # set by patch(fuse_router=True): an affine-quantized router's projection runs inside the routing launch
    fuse_router: bool = False


@dataclass(frozen=True)
class ResidualSite:
    """A pre-norm decoder layer whose ``__call__`` is exactly

    ``r = attn(input_layernorm(x), mask, cache); h = x + r; r = ffn(post_attention_layernorm(h)); out = h + r``
    with ``post_attention_layernorm`` an ``nn.RMSNorm``.
    """

    block: str
    attn: str
    ffn: str


@dataclass(frozen=True)
class AttentionSite:
    """An attention block whose ``__call__`` is exactly Qwen3's: projections, per-head ``q_norm``/``k_norm``
    (``nn.RMSNorm``), ``transpose(0, 2, 1, 3)``, ``rope(., offset=cache.offset)`` (``nn.RoPE``, all dims),
    ``cache.update_and_fetch``, mlx-lm's ``scaled_dot_product_attention``, then the output projection.
    """

    block: str
    q_norm: str
    k_norm: str
    out: str
    # set by patch(fuse_qkv=True): at one token, affine-quantized q/k/v projections run inside the norm+RoPE launch
    fuse_qkv: bool = False
    # set by patch(compile_blocks=True): at one token the prologue up to the cache update runs through mx.compile
    traced: bool = False


@dataclass(frozen=True)
class PlainAttentionSite:
    """An attention block whose ``__call__`` is exactly Llama's: projections, ``reshape(B, L, H, -1).transpose(0, 2,
    1, 3)`` of q/k/v, ``rope(., offset=cache.offset)`` of q and k, ``cache.update_and_fetch``, mlx-lm's
    ``scaled_dot_product_attention``, the transpose back, the output projection. ``heads`` names its head counts."""

    block: str
    heads: tuple[str, str] = ("n_heads", "n_kv_heads")
    out: str = "o_proj"
    scale: str = "scale"  # the attribute SDPA's scale is read from
    sinks: bool = False  # gpt-oss: SDPA gets the block's learned ``sinks``


@dataclass(frozen=True)
class LayerSite:
    """A pre-norm decoder layer (the ResidualSite shape) whose attention block is an AttentionSite or a
    PlainAttentionSite: at one token its step runs as two traced graphs around the KV-cache update and SDPA, which
    change shape every step."""

    block: str
    attn: str
    ffn: str
    attention: AttentionSite | PlainAttentionSite
    # set by patch(compile_blocks=True): without it the pattern runs the layer's own code
    traced: bool = False
    # set when patterns include residual_norm: `h = x + r; post_attention_layernorm(h)` as one zk.add_rms_norm
    residual_norm: bool = False
    # set by patch(fuse_qkv=True): the prologue's q/k/v projections inside the norm + RoPE launch
    fuse_qkv: bool = False


@dataclass(frozen=True)
class ConvLayerSite:
    """An LFM2 decoder layer: ``h = x + conv(operator_norm(x), mask, cache); out = h + feed_forward(ffn_norm(h))``
    with mlx-lm's ``ShortConv`` (depthwise ``nn.Conv1d`` over ``[cache[0], B * x]``, ``C *`` gate, ``out_proj``).
    """

    block: str
    # set by patch(compile_blocks=True): the decode step runs through mx.compile
    traced: bool = False
    # set when patterns include residual_norm: every layer's `h = x + r; ffn_norm(h)` as one zk.add_rms_norm
    residual_norm: bool = False
    # set by patch(fuse_conv_proj=True): an affine-quantized in_proj runs inside the short-conv launch
    fuse_conv_proj: bool = False
    # the attention layers' block (qk_norm_rope's site); set when patterns include attention_layer: their decode step
    # runs as two traced graphs around the KV-cache update and SDPA
    attention: AttentionSite | None = None
    trace_attention: bool = False


@dataclass(frozen=True)
class LinearSite:
    """A quantized linear layer anywhere in the model (``mlx.nn``'s class, not a family's): ``x @ W.T (+ b)``."""

    block: str = "mlx.nn:QuantizedLinear"


LINEAR = LinearSite()
SWITCH_LINEAR = LinearSite("mlx_lm.models.switch_layers:QuantizedSwitchLinear")


def resolve_class(block: str) -> type | None:
    """``"mlx_lm.models.llama:MLP"`` -> the class, or None if this mlx-lm lacks it."""
    module_name, _, qualname = block.partition(":")
    try:
        obj: object = importlib.import_module(module_name)
    except ImportError:
        return None
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj if isinstance(obj, type) else None


def _m(model: str, cls: str) -> str:
    return f"mlx_lm.models.{model}:{cls}"


def swiglu(model: str, cls: str = "MLP", layout: Layout = "gate_up_down") -> DenseSite:
    return DenseSite(_m(model, cls), layout, "silu")


K = Attr  # readability in the table below
X_DTYPE = XDtype()
_GROUPED = (("k", K("gate.top_k")), ("bias", K("gate.e_score_correction_bias")), ("n_group", K("gate.n_group")),
            ("topk_group", K("gate.topk_group")), ("renormalize", K("gate.norm_topk_prob")),
            ("scale", K("gate.routed_scaling_factor")))

# --- MoE gating, one row per family (mlx-lm 0.32 block code; calls per zmlx.kernels.ops.routing's table) ------
# neg_select: the block selects with argpartition(-s, kth=k-1)[..., :k] rather than argpartition(s, kth=-k)[-k:];
# the two break ties and order the k experts differently, and that order is the order of the combine sum.
# combine_fp32: the block's combine ends with .astype(y.dtype) (float32 weights accumulate in float32, then cast).
MOE: dict[str, MoeSite] = {
    # softmax(precise) -> top-k -> renorm if norm_topk_prob; combine cast back to y.dtype
    "qwen3_moe": MoeSite(
        _m("qwen3_moe", "Qwen3MoeSparseMoeBlock"), "gate", "linear",
        Gating("softmax_topk", (("k", K("top_k")), ("renormalize", K("norm_topk_prob")))),
        combine_fp32=True,
    ),
    # softmax(precise) -> top-k (neg), no renorm; sigmoid-gated shared expert
    "qwen2_moe": MoeSite(
        _m("qwen2_moe", "Qwen2MoeSparseMoeBlock"), "gate", "linear",
        Gating("softmax_topk", (("k", K("top_k")), ("renormalize", False), ("neg_select", True))),
        shared="sigmoid_gated",
    ),
    # as qwen3_moe without the combine cast, + sigmoid-gated shared expert; also qwen3_5 / qwen3_5_moe
    "qwen3_next": MoeSite(
        _m("qwen3_next", "Qwen3NextSparseMoeBlock"), "gate", "linear",
        Gating("softmax_topk", (("k", K("top_k")), ("renormalize", K("norm_topk_prob")))),
        shared="sigmoid_gated",
    ),
    # softmax(precise) over flattened tokens -> top-k (neg) -> renorm if norm_topk_prob
    "olmoe": MoeSite(
        _m("olmoe", "OlmoeSparseMoeBlock"), "gate", "linear",
        Gating("softmax_topk", (("k", K("top_k")), ("renormalize", K("norm_topk_prob")), ("neg_select", True))),
        flatten_tokens=True,
    ),
    # top-k on logits (neg) -> softmax(precise) over the k
    "mixtral": MoeSite(
        _m("mixtral", "MixtralSparseMoeBlock"), "gate", "linear",
        Gating("topk_softmax", (("k", K("num_experts_per_tok")), ("neg_select", True))),
    ),
    # top-k on logits -> softmax(precise) over the k; router has a bias; experts SwitchGLU(SwigluOAI, bias)
    "gpt_oss": MoeSite(
        _m("gpt_oss", "MLPBlock"), "router", "linear",
        Gating("topk_softmax", (("k", K("num_experts_per_tok")),)),
        experts="experts",
    ),
    # top-k on logits -> softmax over the k in float32; combine in float32 then cast
    "granitemoe": MoeSite(
        _m("granitemoe", "GraniteMoeMoE"), "router.layer", "linear",
        Gating("topk_softmax", (("k", K("router.top_k")), ("fp32", True))),
        combine_fp32=True,
    ),
    # sigmoid; select on float32(sig) + expert_bias (if use_expert_bias); weights = sig, /(sum+1e-6), x rsf, cast
    "lfm2_moe": MoeSite(
        _m("lfm2_moe", "Lfm2MoeSparseMoeBlock"), "gate", "linear",
        Gating("sigmoid_topk", (("k", K("top_k")), ("bias", K("expert_bias")), ("renormalize", K("norm_topk_prob")),
                                ("eps", 1e-6), ("scale", K("routed_scaling_factor")), ("out_dtype", X_DTYPE))),
    ),
    # sigmoid(float32 logits) + e_score_correction_bias select (neg); /(sum+1e-20); cast to x.dtype
    "minimax": MoeSite(
        _m("minimax", "MiniMaxSparseMoeBlock"), "gate", "linear_fp32",
        Gating("sigmoid_topk", (("k", K("num_experts_per_tok")), ("bias", K("e_score_correction_bias")),
                                ("renormalize", True), ("eps", 1e-20), ("neg_select", True),
                                ("out_dtype", X_DTYPE))),
    ),
    # noaux_tc: sigmoid(float32) + bias, group top-2 sums, drop the worst groups, top-k, renorm, x rsf (float32)
    "deepseek_v3": MoeSite(
        _m("deepseek_v3", "DeepseekV3MoE"), "gate", "weight",
        Gating("grouped_sigmoid_topk", _GROUPED),
        shared="plain", combine_fp32=True,
    ),
    "glm4_moe": MoeSite(
        _m("glm4_moe", "MoE"), "gate", "weight",
        Gating("grouped_sigmoid_topk", _GROUPED),
        shared="plain", combine_fp32=True,
    ),
}

# --- dense gated MLPs --------------------------------------------------------------------------------------
DENSE: dict[str, tuple[DenseSite, ...]] = {
    "llama": (swiglu("llama"),),
    "qwen2": (swiglu("qwen2"),),
    "qwen3": (swiglu("qwen3"),),
    "phi3": (swiglu("phi3", layout="fused_gate_up"),),  # gate_up_proj: first half gate, second half up
    "lfm2": (swiglu("lfm2", layout="w1_w3_w2"),),  # w1 = gate, w3 = up, w2 = down
    "gemma": (DenseSite(_m("gemma", "MLP"), "gate_up_down", "gelu"),),  # exact erf GELU
    "gemma2": (DenseSite(_m("gemma2", "MLP"), "gate_up_down", "gelu_approx"),),  # tanh GELU
    "gemma3_text": (DenseSite(_m("gemma3_text", "MLP"), "gate_up_down", "gelu_approx"),),
    # dense layers and shared experts inside MoE models
    "qwen3_moe": (swiglu("qwen3_moe"),),
    "qwen2_moe": (swiglu("qwen2_moe"),),
    "qwen3_next": (swiglu("qwen3_next", "Qwen3NextMLP"),),
    "lfm2_moe": (swiglu("lfm2_moe"),),
    "deepseek_v3": (swiglu("deepseek_v3", "DeepseekV3MLP"),),
    "glm4_moe": (swiglu("glm4_moe"),),
}

# --- residual add + RMSNorm (layers whose __call__ matches ResidualSite's docstring, checked by reading them) --
RESIDUAL: dict[str, tuple[ResidualSite, ...]] = {
    "llama": (ResidualSite(_m("llama", "TransformerBlock"), "self_attn", "mlp"),),
    "qwen2": (ResidualSite(_m("qwen2", "TransformerBlock"), "self_attn", "mlp"),),
    "qwen3": (ResidualSite(_m("qwen3", "TransformerBlock"), "self_attn", "mlp"),),
    "qwen3_moe": (ResidualSite(_m("qwen3_moe", "Qwen3MoeDecoderLayer"), "self_attn", "mlp"),),
    "qwen2_moe": (ResidualSite(_m("qwen2_moe", "Qwen2MoeDecoderLayer"), "self_attn", "mlp"),),
    "mixtral": (ResidualSite(_m("mixtral", "MixtralDecoderLayer"), "self_attn", "block_sparse_moe"),),
}


# Attention blocks with per-head q/k RMSNorm before RoPE, each __call__ line for line the AttentionSite shape.
ATTENTION: dict[str, tuple[AttentionSite, ...]] = {
    "qwen3": (AttentionSite(_m("qwen3", "Attention"), "q_norm", "k_norm", "o_proj"),),
    "qwen3_moe": (AttentionSite(_m("qwen3_moe", "Attention"), "q_norm", "k_norm", "o_proj"),),
    "lfm2": (AttentionSite(_m("lfm2", "Attention"), "q_layernorm", "k_layernorm", "out_proj"),),
    "lfm2_moe": (AttentionSite(_m("lfm2_moe", "Attention"), "q_layernorm", "k_layernorm", "out_proj"),),
}


# Decoder layers traced around the cache update (attention_layer): the ResidualSite layers with an ATTENTION block.
# qwen2_moe is left out: its sigmoid-gated shared expert rounds differently when traced (perf-notes v3).
_PLAIN_ATTENTION: dict[str, PlainAttentionSite] = {
    "llama": PlainAttentionSite(_m("llama", "Attention")),
    "qwen2": PlainAttentionSite(_m("qwen2", "Attention")),
    "mixtral": PlainAttentionSite(_m("mixtral", "MixtralAttention"), heads=("num_heads", "num_key_value_heads")),
}
LAYER: dict[str, tuple[LayerSite, ...]] = {
    key: (LayerSite(RESIDUAL[key][0].block, RESIDUAL[key][0].attn, RESIDUAL[key][0].ffn,
                    ATTENTION[key][0] if key in ATTENTION else _PLAIN_ATTENTION[key]),)
    for key in ("qwen3", "qwen3_moe", *_PLAIN_ATTENTION)
}
# gpt-oss: `x = residual + attn(norm(x)); x = residual + mlp(norm(x))` (the ResidualSite math), its attention Llama's
# up to the cache with views spelled `reshape(B, L, -1, D).swapaxes(1, 2)`, then SDPA with sinks and `sm_scale`
LAYER["gpt_oss"] = (LayerSite(_m("gpt_oss", "TransformerBlock"), "self_attn", "mlp", PlainAttentionSite(
    _m("gpt_oss", "AttentionBlock"), heads=("num_attention_heads", "num_key_value_heads"), scale="sm_scale",
    sinks=True)),)


# Short-convolution decoder layers (LFM2), each __call__ (with ShortConv's) line for line the ConvLayerSite shape.
CONV_LAYER: dict[str, tuple[ConvLayerSite, ...]] = {
    key: (ConvLayerSite(_m(key, "Lfm2DecoderLayer"), attention=ATTENTION[key][0]),) for key in ("lfm2", "lfm2_moe")
}
