"""Tiny real mlx-lm models for the zmlx-patch tests: each family's own Model/ModelArgs, random non-zero weights.

Shapes keep every projection's input a multiple of 64 and above 64 so 4-bit quantization (group 64) covers the experts.
"""

from __future__ import annotations

import copy

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_unflatten
from mlx_lm.utils import _get_classes, quantize_model

# 128, not 64: MLX CUDA sends K <= group_size (64) quantized matmuls to its qmm_sm90 JIT path, which fails on
# the H100 host (see docs/perf-notes.md); real checkpoints never have K <= 64.
D, V = 128, 256
_ATTN = dict(hidden_size=D, num_attention_heads=4, num_key_value_heads=1, head_dim=32, rms_norm_eps=1e-5,
             vocab_size=V, max_position_embeddings=512, rope_theta=10000.0, tie_word_embeddings=False)
_QWEN_LINEAR = dict(linear_num_value_heads=4, linear_num_key_heads=1, linear_key_head_dim=32,
                    linear_value_head_dim=32, linear_conv_kernel_dim=4, full_attention_interval=2)

# per family: config, and the expected module counts per default pattern
CONFIGS: dict[str, tuple[dict, dict[str, int]]] = {
    "llama": (dict(_ATTN, num_hidden_layers=2, intermediate_size=128), {"swiglu_mlp": 2}),
    "mistral": (dict(_ATTN, num_hidden_layers=2, intermediate_size=128), {"swiglu_mlp": 2}),
    "qwen2": (dict(_ATTN, num_hidden_layers=2, intermediate_size=128), {"swiglu_mlp": 2}),
    "qwen3": (dict(_ATTN, num_hidden_layers=2, intermediate_size=128), {"swiglu_mlp": 2, "qk_norm_rope": 2}),
    "phi3": (dict(_ATTN, num_hidden_layers=2, intermediate_size=128, num_key_value_heads=2), {"swiglu_mlp": 2}),
    "lfm2": (dict(_ATTN, num_hidden_layers=3, norm_eps=1e-5, conv_bias=False, conv_L_cache=3, block_dim=D,
                  block_ff_dim=192, block_multiple_of=64, block_ffn_dim_multiplier=1.0,
                  block_auto_adjust_ff_dim=True, full_attn_idxs=[1]), {"swiglu_mlp": 3, "qk_norm_rope": 1, "conv_layer": 2}),
    "gemma": (dict(_ATTN, num_hidden_layers=2, intermediate_size=128), {"geglu_mlp": 2}),
    "gemma2": (dict(_ATTN, num_hidden_layers=2, intermediate_size=128, query_pre_attn_scalar=32.0),
               {"geglu_mlp": 2}),
    "gemma3_text": (dict(_ATTN, num_hidden_layers=2, intermediate_size=128, query_pre_attn_scalar=32,
                         sliding_window=16, sliding_window_pattern=2), {"geglu_mlp": 2}),
    "qwen3_moe": (dict(_ATTN, num_hidden_layers=3, intermediate_size=128, num_experts=8, num_experts_per_tok=3,
                       decoder_sparse_step=1, mlp_only_layers=[0], moe_intermediate_size=128,
                       norm_topk_prob=True), {"moe_mlp": 2, "swiglu_mlp": 1, "qk_norm_rope": 3}),
    "qwen2_moe": (dict(_ATTN, num_hidden_layers=2, intermediate_size=128, num_experts=8, num_experts_per_tok=3,
                       moe_intermediate_size=128, shared_expert_intermediate_size=128),
                  {"moe_mlp": 2, "swiglu_mlp": 2}),
    "qwen3_next": (dict(_ATTN, **_QWEN_LINEAR, num_hidden_layers=2, intermediate_size=128, num_experts=8,
                        num_experts_per_tok=3, decoder_sparse_step=1, shared_expert_intermediate_size=128,
                        mlp_only_layers=[], moe_intermediate_size=128, partial_rotary_factor=0.5,
                        norm_topk_prob=True), {"moe_mlp": 2, "swiglu_mlp": 2}),
    "qwen3_5_moe": (dict(_ATTN, **_QWEN_LINEAR, num_hidden_layers=2, intermediate_size=128, num_experts=8,
                         num_experts_per_tok=3, shared_expert_intermediate_size=128, moe_intermediate_size=128,
                         rope_parameters={"type": "default", "rope_theta": 10000.0,
                                          "partial_rotary_factor": 0.5, "mrope_section": [4, 2, 2]}),
                    {"moe_mlp": 2, "swiglu_mlp": 2}),
    "lfm2_moe": (dict(_ATTN, num_hidden_layers=3, intermediate_size=128, moe_intermediate_size=128, num_experts=8,
                      num_experts_per_tok=3, norm_topk_prob=True, use_expert_bias=True, num_dense_layers=1,
                      routed_scaling_factor=1.5, norm_eps=1e-5, conv_bias=False, conv_L_cache=3,
                      full_attn_idxs=[1]), {"moe_mlp": 2, "swiglu_mlp": 1, "qk_norm_rope": 1, "conv_layer": 2}),
    "mixtral": (dict(_ATTN, num_hidden_layers=2, intermediate_size=128, num_local_experts=8, num_experts_per_tok=3),
                {"moe_mlp": 2}),
    "gpt_oss": (dict(_ATTN, num_hidden_layers=2, intermediate_size=128, num_local_experts=8, num_experts_per_tok=3,
                     sliding_window=16, layer_types=["sliding_attention", "full_attention"]), {"moe_mlp": 2}),
    "olmoe": (dict(_ATTN, num_hidden_layers=2, intermediate_size=128, num_experts=8, num_experts_per_tok=3,
                   norm_topk_prob=True), {"moe_mlp": 2}),
    "granitemoe": (dict(_ATTN, num_hidden_layers=2, intermediate_size=128, num_local_experts=8,
                        num_experts_per_tok=3, logits_scaling=2.0, attention_multiplier=0.2,
                        embedding_multiplier=3.0, residual_multiplier=0.5, attention_bias=False),
                   {"moe_mlp": 2}),
    "deepseek_v3": (dict(_ATTN, num_hidden_layers=3, intermediate_size=128, moe_intermediate_size=128,
                         n_routed_experts=8, n_shared_experts=1, num_experts_per_tok=3, n_group=4, topk_group=2,
                         routed_scaling_factor=2.5, kv_lora_rank=32, q_lora_rank=128, qk_rope_head_dim=16,
                         v_head_dim=32, qk_nope_head_dim=32, first_k_dense_replace=1, norm_topk_prob=True),
                    {"moe_mlp": 2, "swiglu_mlp": 3}),
    "glm4_moe": (dict(_ATTN, num_hidden_layers=3, intermediate_size=128, moe_intermediate_size=128,
                      n_routed_experts=8, n_shared_experts=1, num_experts_per_tok=3, n_group=4, topk_group=2,
                      routed_scaling_factor=2.5, first_k_dense_replace=1, norm_topk_prob=True, rope_scaling=None,
                      use_qk_norm=True, attention_bias=False, partial_rotary_factor=0.5),
                 {"moe_mlp": 2, "swiglu_mlp": 3}),
    "minimax": (dict(_ATTN, num_hidden_layers=2, intermediate_size=128, num_local_experts=8, num_experts_per_tok=3,
                     shared_intermediate_size=128, rotary_dim=16), {"moe_mlp": 2}),
}
FAMILIES = sorted(CONFIGS)
MOE_FAMILIES = [f for f in FAMILIES if "moe_mlp" in CONFIGS[f][1]]


def config(family: str) -> dict:
    return dict(copy.deepcopy(CONFIGS[family][0]), model_type=family)


def _randomize(model: nn.Module, seed: int) -> None:
    """Default inits leave zeros/ones (biases, norms, routers' correction biases); perturb every parameter."""
    keys = mx.random.split(mx.random.key(seed), 4096)
    params = tree_flatten(model.parameters())
    new = []
    for i, (name, p) in enumerate(params):
        if not mx.issubdtype(p.dtype, mx.floating):
            new.append((name, p))
            continue
        noise = mx.random.normal(p.shape, key=keys[i]).astype(p.dtype)
        scale = 0.5 if name.endswith(("bias", "e_score_correction_bias", "expert_bias")) else 0.1
        new.append((name, p + scale * noise))
    model.update(tree_unflatten(new))
    mx.eval(model.parameters())


def build(family: str, *, quantized: bool = False, seed: int = 0, mode: str = "affine", **overrides) -> nn.Module:
    """float32 with random weights, or (quantized=True) bf16 activations with 4-bit weights: affine group 64, or
    another MLX quantization ``mode`` (mxfp4: group 32, no biases)."""
    cfg = dict(config(family), **overrides)
    mx.random.seed(seed)
    model_cls, args_cls = _get_classes(cfg)
    model = model_cls(args_cls.from_dict(cfg))
    _randomize(model, seed)
    if quantized:
        keep = getattr(model, "cast_predicate", lambda _: True)
        flat = [(k, v.astype(mx.bfloat16) if keep(k) and mx.issubdtype(v.dtype, mx.floating) else v)
                for k, v in tree_flatten(model.parameters())]
        model.update(tree_unflatten(flat))
        model, _ = quantize_model(model, cfg, group_size=64 if mode == "affine" else 32, bits=4, mode=mode)
    mx.eval(model.parameters())
    return model


def tokens(n: int, seed: int = 1) -> mx.array:
    return mx.random.randint(0, V, (1, n), key=mx.random.key(seed))


def logits(model: nn.Module, toks: mx.array) -> mx.array:
    out = model(toks)
    mx.eval(out)
    return out


def check_sees_weight_update(model: nn.Module, module: str, layer: int = 1, **patch_kwargs) -> None:
    """Patch ``model``, decode one token, scale ``layer``'s ``module`` (a dotted path to a quantized projection) scales
    by 3, decode again: the output must move (a traced graph holds no stale weight) and equal the unpatched one."""
    from mlx_lm.models.cache import make_prompt_cache
    from zmlx.patch import patch, unpatch

    one = tokens(1, seed=4)
    patch(model, verbose=False, **patch_kwargs)
    before = model(one, cache=make_prompt_cache(model))
    target = model.model.layers[layer]
    for name in module.split("."):
        target = getattr(target, name)
    target.scales = target.scales * 3
    after = model(one, cache=make_prompt_cache(model))
    unpatch(model)
    assert not mx.array_equal(before, after).item(), "a traced graph must not hold on to replaced weights"
    assert mx.array_equal(after, model(one, cache=make_prompt_cache(model))).item()


def traced_paths(model: nn.Module) -> list[str]:
    """Module paths that hold a traced decode function (patch(compile_blocks=True))."""
    return [path for path, m in model.named_modules() if "_zmlx_compiled" in m.__dict__]


def count_kernel_calls(monkeypatch, names) -> dict[str, int]:
    """Wrap each named ``zmlx.kernels`` op in a counting spy (undone by ``monkeypatch``); returns the live counts."""
    import zmlx.kernels as zk

    counts = dict.fromkeys(names, 0)
    for name in names:
        real = getattr(zk, name)

        def spy(*a, _real=real, _name=name, **kw):
            counts[_name] += 1
            return _real(*a, **kw)

        monkeypatch.setattr(zk, name, spy)
    return counts
