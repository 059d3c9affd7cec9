"""model_type -> FamilySpec: which patterns apply to a family, at which blocks, and which are off by default.

Architecture comes from ``model.model_type`` (or ``model.args.model_type``) after mlx-lm's own remapping
(``mistral`` -> ``llama``), never from class names. Sites name exact mlx-lm classes rather than module paths:
dense and MoE layers share paths like ``model.layers.N.mlp`` and wrappers such as qwen3_5_moe nest the text
model deeper, while the class says exactly which code the block runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .families import (
    ATTENTION,
    CONV_LAYER,
    DENSE,
    LAYER,
    LINEAR,
    MOE,
    RESIDUAL,
    SWITCH_LINEAR,
    AttentionSite,
    ConvLayerSite,
    DenseSite,
    LayerSite,
    LinearSite,
    MoeSite,
    ResidualSite,
)

Site = DenseSite | MoeSite | ResidualSite | AttentionSite | ConvLayerSite | LayerSite | LinearSite

PATTERNS: tuple[str, ...] = ("swiglu_mlp", "geglu_mlp", "moe_mlp", "qk_norm_rope", "conv_layer", "attention_layer",
                             "residual_norm", "quantized_linear", "quantized_switch_linear")
# conv_layer (LFM2 only): bit-exact on the H100 and faster there: lfm2-8b-a1b defaults x1.98, x1.56, x1.48 with it on
# three hosts (capsules/20261127_h100_lfm2-8b-a1b_{conv-layer_2ae1cc8,defaults_b583d2f,conv-fold_4664f0c}.json;
# in-process A/B x1.60 against x1.31 without it)
DEFAULT_PATTERNS: tuple[str, ...] = ("swiglu_mlp", "geglu_mlp", "moe_mlp", "qk_norm_rope", "conv_layer")

# Bit-exact and token-identical on the H100 (every tiny family, 39d3c0c/11ddd0c), but not faster: in-process A/B
# on four full-size models had it neutral to slower (docs/perf-notes.md, v4), so it stays opt-in.
# Bit-exact and token-identical on the H100 in its 9 families (701f849); alone it measured no faster (v8f), so it is a
# default only where a capsule shows it with quantized_linear (registry.ON_CUDA: llama, qwen3_moe), opt-in elsewhere.
ATTENTION_LAYER_OPT_IN = ("opt-in: bit-exact on the H100; alone no faster (the decoder layer's decode step traced "
                          "around the KV-cache update and SDPA; docs/perf-notes.md v8e, v8f); a default on CUDA with "
                          "quantized_linear where a capsule measured it (registry.ON_CUDA)")

QUANTIZED_LINEAR_OPT_IN = ("opt-in: bit-identical on the H100 with 1.6-2x less device time a projection; a default on "
                           "CUDA only where a capsule measured it (registry.ON_CUDA: llama, qwen3_moe, gpt_oss), as "
                           "each call is a custom-kernel launch (docs/perf-notes.md v9)")

QUANTIZED_SWITCH_LINEAR_OPT_IN = ("opt-in: the experts' projections through zk.gather_qmv (zk.qmv's core, MLX's "
                                  "gather_qmv arithmetic); bit-identical on the GPU (5d210df), decode speed not yet "
                                  "measured (docs/perf-notes.md v9c)")

RESIDUAL_NORM_OPT_IN = ("opt-in: bit-exact on CUDA but no decode gain measured (in-process A/B x0.92-1.03 alone, "
                        "slower beside the other patterns; docs/perf-notes.md)")


@dataclass(frozen=True)
class FamilySpec:
    model_type: str
    sites: dict[str, tuple[Site, ...]]
    # pattern -> why it is off by default (a measured fidelity break); explicit patterns= overrides with a warning
    excluded: dict[str, str] = field(default_factory=dict)
    # pattern -> why it is available but not applied unless asked for
    opt_in: dict[str, str] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()
    # pattern -> why it is off by default on MLX's CUDA backend with projections unfused (a capsule shows it slower)
    slow_on_cuda: dict[str, str] = field(default_factory=dict)
    # why patch(fuse_projections=None) fuses the projections on CUDA for this family ("": it does not)
    fuse_on_cuda: str = ""
    # opt-in pattern -> why patch() applies it by default on CUDA for this family (the measurement that says so)
    on_cuda: dict[str, str] = field(default_factory=dict)

    def default_patterns(self) -> list[str]:
        return [p for p in DEFAULT_PATTERNS if p in self.sites and p not in self.excluded and p not in self.opt_in]


# Measured perf exclusions on CUDA (H100, MLX 0.32.4) with the projections unfused; each names its capsule.
SLOW_ON_CUDA: dict[str, dict[str, str]] = {
    "gpt_oss": {"moe_mlp": "unfused: decode x0.71 (median of 5 runs) on an H100: "
                           "capsules/20261126_h100_gpt-oss-20b_llama-3-8b.json; a custom-kernel launch costs MLX CUDA "
                           "more host time than the few ops it replaces (with fused projections, the default "
                           "here: x1.23 and x0.99)"},
    "mixtral": {"moe_mlp": "unfused: decode x0.750 [0.668, 0.886], slower, 0/5 pairs on an H100: "
                           "capsules/20261127_h100_mixtral-8x7b_defaults-v11_867ea08.json; with fused projections, "
                           "the default here, x1.321: "
                           "capsules/20261127_h100_mixtral-8x7b_fuse-layer-lin-q4batch-v12_a4f7ca5.json"},
}

# Families whose MoE blocks decode faster on CUDA with fused projections (H100, 500 tokens x 5 runs, token-identical).
# Small experts at decode are launch-bound, so two launches instead of MLX's ~8 win; mixtral's large experts are
# bandwidth-bound and won only on zk.qmv's core in the batch loop form (1.7-2x MLX's device rate). Families without
# a capsule are not listed.
FUSE_ON_CUDA: dict[str, str] = {
    "qwen3_moe": "decode x1.10 and x1.18 (each within noise; in-process A/B x1.44, docs/perf-notes.md): "
                 "capsules/20261126_h100_qwen3-30b-a3b_lfm2-8b-a1b_fuse_56a7570.json, "
                 "capsules/20261126_h100_qwen3-30b-a3b_fuse-2_56a7570.json",
    "lfm2_moe": "decode x2.231 [1.588, 3.897], faster, 5/5 pairs, with the experts on zk.qmv's core: "
                "capsules/20261127_h100_lfm2-8b-a1b_defaults-v11_867ea08.json; before it x1.46 [1.19, 1.85] and "
                "x1.21 [1.07, 2.15]: capsules/20261126_h100_qwen3-30b-a3b_lfm2-8b-a1b_fuse_56a7570.json, "
                "capsules/20261127_h100_lfm2-8b-a1b_gpt-oss-20b_defaults_7dd59bb.json",
    "gpt_oss": "decode x1.582 [1.402, 1.810], faster, 5/5 pairs, with the experts on zk.qmv's core and "
               "attention_layer + quantized_linear: capsules/20261127_h100_gpt-oss-20b_defaults-v11_867ea08.json; "
               "before it x1.23 [1.09, 1.48] on a slower host, x0.99 [0.82, 1.24] on a faster one: "
               "capsules/20261126_h100_gpt-oss-20b_moe-fuse_56a7570.json, "
               "capsules/20261127_h100_lfm2-8b-a1b_gpt-oss-20b_defaults_7dd59bb.json",
    "mixtral": "decode x1.321 [1.051, 1.470], faster, 5/5 pairs (prefill x1.001), with the experts on zk.qmv's core "
               "in the batch form and attention_layer + quantized_linear: "
               "capsules/20261127_h100_mixtral-8x7b_fuse-layer-lin-q4batch-v12_a4f7ca5.json; on a slower host "
               "x1.189 [1.144, 1.347] 5/5 and x1.208 [0.908, 1.360] 4/5, host-bound (perf-notes bound 5): "
               "capsules/20261127_h100_mixtral-8x7b_defaults-v12-2_17152f2.json, "
               "capsules/20261127_h100_mixtral-8x7b_defaults-v12_17152f2.json; unfused x0.750, "
               "capsules/20261127_h100_mixtral-8x7b_defaults-v11_867ea08.json; fused on the older kernels x0.68, "
               "capsules/20261126_h100_mixtral-8x7b_fuse_56a7570.json",
}


# Opt-in patterns that patch() applies by default on CUDA, per family, each with its measurement: every 4-bit projection
# through zk.qmv (1.6-2x less device time, bit-identical) inside decoder layers traced by attention_layer, so the
# projections' launches cost no Python per step
ON_CUDA: dict[str, dict[str, str]] = {
    "llama": dict.fromkeys(("attention_layer", "quantized_linear"),
        "with both (+ qmv_many): llama-3-8b decode x1.367 [1.218, 1.403], faster, 5/5 pairs (prefill x0.891), "
        "capsules/20261127_h200_llama-3-8b_defaults-v10_20608aa.json, and x1.021 [0.958, 1.151], within noise, "
        "on an H100, capsules/20261127_h100_llama-3-8b_defaults-v11_867ea08.json, x0.852 [0.651, 1.255], within "
        "noise, on another (its in-process A/B x1.255), capsules/20261127_h100_llama-3-8b_defaults-v12_a4f7ca5.json "
        "(bistable between processes, perf-notes bound 9); before "
        "qmv_many x1.021 and x1.185, within noise, capsules/20261127_h100_llama-3-8b_defaults-v9_7734bd2.json "
        "(docs/perf-notes.md v9, v10, v11)"),
    "qwen3_moe": dict.fromkeys(("attention_layer", "quantized_linear"),
        "with both: qwen3-30b-a3b decode x1.333 [1.050, 1.482], faster, 5/5 pairs, "
        "capsules/20261127_h200_qwen3-30b-a3b_defaults-v10_20608aa.json; x1.225 [1.055, 1.862] before the MMA "
        "experts' restructure, capsules/20261127_h100_qwen3-30b-a3b_defaults-v9_7734bd2.json (perf-notes v9, v10)"),
    "gpt_oss": dict.fromkeys(("attention_layer", "quantized_linear"),
        "with both and the experts on zk.qmv's core: gpt-oss-20b decode x1.582 [1.402, 1.810], faster, 5/5 pairs "
        "(prefill x1.019), capsules/20261127_h100_gpt-oss-20b_defaults-v11_867ea08.json; with both on the older "
        "expert kernels x0.970, capsules/20261127_h200_gpt-oss-20b_moe-lin-v10_20608aa.json (perf-notes v10, v11)"),
    "mixtral": dict.fromkeys(("attention_layer", "quantized_linear"),
        "with both and the experts fused on zk.qmv's core (batch form): mixtral-8x7b decode x1.321 [1.051, 1.470], "
        "faster, 5/5 pairs (prefill x1.001), capsules/20261127_h100_mixtral-8x7b_fuse-layer-lin-q4batch-v12_a4f7ca5.json;"
        " x1.189 and x1.208 on a slower host, capsules/20261127_h100_mixtral-8x7b_defaults-v12-2_17152f2.json; "
        "in-process A/B x1.379 against x1.183 in the step form (perf-notes v12)"),
}


def _family(model_type: str, sites_from: str | None = None, aliases: tuple[str, ...] = ()) -> FamilySpec:
    key = sites_from or model_type
    sites: dict[str, tuple[Site, ...]] = {}
    opt_in: dict[str, str] = {}
    dense = DENSE.get(key, ())
    swiglu = tuple(s for s in dense if s.activation == "silu")
    geglu = tuple(s for s in dense if s.activation != "silu")
    if swiglu:
        sites["swiglu_mlp"] = swiglu
    if geglu:
        sites["geglu_mlp"] = geglu
    if key in MOE:
        sites["moe_mlp"] = (MOE[key],)
        sites["quantized_switch_linear"] = (SWITCH_LINEAR,)
        opt_in["quantized_switch_linear"] = QUANTIZED_SWITCH_LINEAR_OPT_IN
    if key in ATTENTION:
        sites["qk_norm_rope"] = ATTENTION[key]
    if key in CONV_LAYER:
        sites["conv_layer"] = CONV_LAYER[key]
        # LFM2 layers are conv_layer's class: there residual_norm and attention_layer are flags of conv_layer, with no
        # class of their own
        sites["residual_norm"] = ()
        opt_in["residual_norm"] = RESIDUAL_NORM_OPT_IN
        sites["attention_layer"] = ()
        opt_in["attention_layer"] = ATTENTION_LAYER_OPT_IN
    if key in LAYER:
        sites["attention_layer"] = LAYER[key]
        opt_in["attention_layer"] = ATTENTION_LAYER_OPT_IN
    if key in RESIDUAL:
        sites["residual_norm"] = RESIDUAL[key]
        opt_in["residual_norm"] = RESIDUAL_NORM_OPT_IN
    sites["quantized_linear"] = (LINEAR,)  # any family: the class is mlx.nn's
    opt_in["quantized_linear"] = QUANTIZED_LINEAR_OPT_IN
    return FamilySpec(model_type, sites, opt_in=opt_in, aliases=aliases,
                      slow_on_cuda=SLOW_ON_CUDA.get(model_type, {}), fuse_on_cuda=FUSE_ON_CUDA.get(model_type, ""),
                      on_cuda={p: r for p, r in ON_CUDA.get(model_type, {}).items() if p in sites})


FAMILIES: dict[str, FamilySpec] = {
    f.model_type: f
    for f in (
        _family("llama", aliases=("mistral",)),
        _family("qwen2"),
        _family("qwen3"),
        _family("phi3"),
        _family("lfm2"),
        _family("gemma"),
        _family("gemma2"),
        _family("gemma3_text"),
        _family("qwen3_moe"),
        _family("qwen2_moe"),
        _family("qwen3_next"),
        # Qwen3.5 reuses qwen3_next's MLP and sparse MoE block classes
        _family("qwen3_5", sites_from="qwen3_next"),
        _family("qwen3_5_moe", sites_from="qwen3_next"),
        _family("lfm2_moe"),
        _family("mixtral"),
        _family("gpt_oss"),
        _family("olmoe"),
        _family("granitemoe"),
        _family("deepseek_v3"),
        _family("glm4_moe"),
        _family("minimax"),
    )
}


def detect_model_type(model: object) -> str | None:
    """The model's mlx-lm architecture name, after mlx-lm's remapping; None when the model declares none."""
    model_type = getattr(model, "model_type", None)
    if not isinstance(model_type, str):
        model_type = getattr(getattr(model, "args", None), "model_type", None)
    if not isinstance(model_type, str):
        return None
    from mlx_lm.utils import MODEL_REMAPPING

    return MODEL_REMAPPING.get(model_type, model_type)


def supported_model_types() -> list[str]:
    names = set(FAMILIES)
    for f in FAMILIES.values():
        names.update(f.aliases)
    return sorted(names)
