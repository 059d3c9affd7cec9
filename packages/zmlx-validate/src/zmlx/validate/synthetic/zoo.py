"""The synthetic checkpoint zoo: names -> mlx-lm configs (+ init scales).

``*-tiny`` entries are CPU-sized versions of every family zmlx.patch supports (all projection inputs are multiples
of 64 so that 4-bit g64 quantization covers every layer, as in community checkpoints; on the CPU an unquantized
bf16 MoE cannot run). The full-size entries use the published configs' shapes (see the Hugging Face repos named in
``source``); they are for GPU hosts and are never built by the CPU tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .init import Gains


@dataclass(frozen=True)
class SyntheticSpec:
    name: str
    config: dict[str, Any]  # mlx-lm config.json before quantization
    tiny: bool
    gains: Gains = field(default_factory=Gains)
    source: str = ""  # the public checkpoint whose shapes a full-size entry copies

    @property
    def model_type(self) -> str:
        return self.config["model_type"]

    @property
    def num_experts(self) -> int:
        c = self.config
        for k in ("num_experts", "num_local_experts", "n_routed_experts"):
            if c.get(k):
                return int(c[k])
        return 0


_V = 1024  # tiny vocabulary
_ATTN = dict(num_attention_heads=4, num_key_value_heads=2, head_dim=32, rms_norm_eps=1e-6, vocab_size=_V,
             rope_theta=1e6, max_position_embeddings=4096, tie_word_embeddings=False)


def _tiny(name: str, gains: Gains | None = None, **config: Any) -> SyntheticSpec:
    return SyntheticSpec(name=name, config=config, tiny=True, gains=gains or Gains())


def _full(name: str, source: str, gains: Gains | None = None, **config: Any) -> SyntheticSpec:
    return SyntheticSpec(name=name, config=config, tiny=False, gains=gains or Gains(), source=source)


# Tied embeddings make the logits `E . norm(h)`; with h dominated by the current token's own embedding the model
# repeats that token forever. These families get small embeddings, stronger layer outputs, and the logit scale
# from the final norm instead (see init.Gains).
_TIED_LFM2 = Gains(embed_std=0.7, out_gain=4.0)
_GEMMA = Gains(embed_std=0.09, out_gain=4.0, final_norm_gain=8.0)
_GEMMA2 = Gains(embed_std=0.09, out_gain=4.0, final_norm_gain=5.0, post_norm_gain=3.0)
_LFM2_TINY_LAYERS = ["conv", "full_attention", "conv", "full_attention"]
_LFM2_8B_LAYERS = ["full_attention" if i in (2, 6, 10, 14, 18, 21) else "conv" for i in range(24)]

# Tiny shapes keep every quantized matmul input dimension above 64: MLX CUDA routes K <= group_size to its
# qmm_sm90 JIT path, which fails on the H100 host (docs/perf-notes.md); real checkpoints never have K <= 64.
SPECS: tuple[SyntheticSpec, ...] = (
    # --- tiny MoE ---------------------------------------------------------------------------------------------
    _tiny("qwen3-moe-tiny", model_type="qwen3_moe", hidden_size=128, num_hidden_layers=2, intermediate_size=256,
          num_experts=16, num_experts_per_tok=4, moe_intermediate_size=128, norm_topk_prob=True,
          decoder_sparse_step=1, mlp_only_layers=[], **_ATTN),
    _tiny("qwen2-moe-tiny", model_type="qwen2_moe", hidden_size=128, num_hidden_layers=2, intermediate_size=256,
          num_experts=16, num_experts_per_tok=4, moe_intermediate_size=128, shared_expert_intermediate_size=128,
          **{k: v for k, v in _ATTN.items() if k != "head_dim"}),
    _tiny("olmoe-tiny", model_type="olmoe", hidden_size=128, num_hidden_layers=2, intermediate_size=128,
          num_experts=16, num_experts_per_tok=4, norm_topk_prob=False, **_ATTN),
    _tiny("mixtral-tiny", model_type="mixtral", hidden_size=128, num_hidden_layers=2, intermediate_size=128,
          num_local_experts=8, num_experts_per_tok=2,
          **{k: v for k, v in _ATTN.items() if k not in ("head_dim", "max_position_embeddings")}),
    _tiny("gpt-oss-tiny", model_type="gpt_oss", hidden_size=128, num_hidden_layers=2, intermediate_size=128,
          num_local_experts=16, num_experts_per_tok=4, head_dim=32, num_attention_heads=4, num_key_value_heads=2,
          sliding_window=16, rope_theta=150000, rms_norm_eps=1e-5, vocab_size=_V,
          layer_types=["sliding_attention", "full_attention"], tie_word_embeddings=False),
    _tiny("granitemoe-tiny", model_type="granitemoe", hidden_size=128, num_hidden_layers=2, intermediate_size=128,
          num_local_experts=16, num_experts_per_tok=4, logits_scaling=1.0, attention_multiplier=1 / 32 ** 0.5,
          embedding_multiplier=1.0, residual_multiplier=1.0, attention_bias=False,
          **{k: v for k, v in _ATTN.items() if k != "head_dim"}),
    _tiny("lfm2-moe-tiny", _TIED_LFM2, model_type="lfm2_moe", vocab_size=_V, hidden_size=128, intermediate_size=256,
          moe_intermediate_size=128, num_hidden_layers=4, num_experts=16, num_experts_per_tok=4,
          norm_topk_prob=True, use_expert_bias=True, routed_scaling_factor=1.0, num_dense_layers=1,
          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096, norm_eps=1e-5,
          conv_bias=False, conv_L_cache=3, rope_theta=1e6, layer_types=_LFM2_TINY_LAYERS),
    _tiny("minimax-tiny", model_type="minimax", hidden_size=128, intermediate_size=128, num_attention_heads=4,
          num_key_value_heads=2, head_dim=32, max_position_embeddings=4096, num_experts_per_tok=4,
          num_local_experts=16, shared_intermediate_size=0, num_hidden_layers=2, rms_norm_eps=1e-6,
          rope_theta=1e6, rotary_dim=32, vocab_size=_V, tie_word_embeddings=False),
    _tiny("deepseek-v3-tiny", model_type="deepseek_v3", vocab_size=_V, hidden_size=128, intermediate_size=256,
          moe_intermediate_size=128, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=4,
          n_shared_experts=1, n_routed_experts=16, routed_scaling_factor=2.5, kv_lora_rank=128, q_lora_rank=128,
          qk_rope_head_dim=32, v_head_dim=32, qk_nope_head_dim=32, n_group=4, topk_group=2,
          num_experts_per_tok=4, moe_layer_freq=1, first_k_dense_replace=1, max_position_embeddings=4096,
          rms_norm_eps=1e-6, rope_theta=10000.0, norm_topk_prob=True),
    _tiny("glm4-moe-tiny", model_type="glm4_moe", vocab_size=_V, hidden_size=128, intermediate_size=256,
          max_position_embeddings=4096, moe_intermediate_size=128, norm_topk_prob=True, num_attention_heads=4,
          n_group=4, head_dim=32, topk_group=2, n_shared_experts=1, n_routed_experts=16,
          routed_scaling_factor=2.5, num_experts_per_tok=4, first_k_dense_replace=1, num_hidden_layers=3,
          num_key_value_heads=2, rms_norm_eps=1e-5, rope_theta=1e6, rope_scaling=None, use_qk_norm=True,
          tie_word_embeddings=False, attention_bias=True, partial_rotary_factor=0.5),
    # --- tiny dense -------------------------------------------------------------------------------------------
    _tiny("llama-tiny", model_type="llama", hidden_size=128, num_hidden_layers=2, intermediate_size=256,
          **{k: v for k, v in _ATTN.items() if k != "head_dim"}),
    _tiny("qwen3-tiny", model_type="qwen3", hidden_size=128, num_hidden_layers=2, intermediate_size=256, **_ATTN),
    _tiny("phi3-tiny", model_type="phi3", hidden_size=128, num_hidden_layers=2, intermediate_size=256,
          num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5, vocab_size=_V,
          max_position_embeddings=4096, original_max_position_embeddings=4096, tie_word_embeddings=False),
    _tiny("lfm2-tiny", _TIED_LFM2, model_type="lfm2", vocab_size=_V, hidden_size=128, num_hidden_layers=4,
          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096, norm_eps=1e-5,
          conv_bias=False, conv_L_cache=3, block_dim=128, block_ff_dim=384, block_multiple_of=64,
          block_ffn_dim_multiplier=1.0, block_auto_adjust_ff_dim=True, layer_types=_LFM2_TINY_LAYERS),
    _tiny("gemma-tiny", _GEMMA, model_type="gemma", hidden_size=128, num_hidden_layers=2,
          intermediate_size=256, num_attention_heads=4, head_dim=32, rms_norm_eps=1e-6, vocab_size=_V,
          num_key_value_heads=2),
    _tiny("gemma2-tiny", _GEMMA2, model_type="gemma2", hidden_size=128, num_hidden_layers=2,
          intermediate_size=256, num_attention_heads=4, head_dim=32, rms_norm_eps=1e-6, vocab_size=_V,
          num_key_value_heads=2, query_pre_attn_scalar=32),
    # --- full published shapes (GPU hosts) --------------------------------------------------------------------
    _full("qwen3-30b-a3b", "Qwen/Qwen3-30B-A3B", model_type="qwen3_moe", hidden_size=2048, num_hidden_layers=48,
          intermediate_size=6144, num_attention_heads=32, num_key_value_heads=4, head_dim=128, rms_norm_eps=1e-6,
          vocab_size=151936, num_experts=128, num_experts_per_tok=8, moe_intermediate_size=768,
          norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[], rope_theta=1e6,
          max_position_embeddings=40960, tie_word_embeddings=False),
    _full("lfm2-8b-a1b", "LiquidAI/LFM2-8B-A1B", Gains(embed_std=8.0 / 2048**0.5, out_gain=4.0), model_type="lfm2_moe", vocab_size=65536, hidden_size=2048,
          intermediate_size=7168, moe_intermediate_size=1792, num_hidden_layers=24, num_experts=32,
          num_experts_per_tok=4, norm_topk_prob=True, use_expert_bias=True, routed_scaling_factor=1.0,
          num_dense_layers=2, num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=128000,
          norm_eps=1e-5, conv_bias=False, conv_L_cache=3, rope_theta=1e6, layer_types=_LFM2_8B_LAYERS),
    _full("gpt-oss-20b", "openai/gpt-oss-20b", model_type="gpt_oss", num_hidden_layers=24, num_local_experts=32,
          num_experts_per_tok=4, vocab_size=201088, rms_norm_eps=1e-5, hidden_size=2880, intermediate_size=2880,
          head_dim=64, num_attention_heads=64, num_key_value_heads=8, sliding_window=128, rope_theta=150000,
          rope_scaling={"rope_type": "yarn", "factor": 32.0, "beta_fast": 32.0, "beta_slow": 1.0,
                        "truncate": False, "original_max_position_embeddings": 4096},
          layer_types=["sliding_attention", "full_attention"] * 12, max_position_embeddings=131072,
          tie_word_embeddings=False),
    _full("mixtral-8x7b", "mistralai/Mixtral-8x7B-v0.1", model_type="mixtral", vocab_size=32000, hidden_size=4096,
          intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
          num_local_experts=8, num_experts_per_tok=2, rms_norm_eps=1e-5, rope_theta=1e6,
          max_position_embeddings=32768, tie_word_embeddings=False),
    _full("llama-3-8b", "meta-llama/Meta-Llama-3-8B", model_type="llama", vocab_size=128256, hidden_size=4096,
          intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
          rms_norm_eps=1e-5, rope_theta=500000.0, max_position_embeddings=8192, tie_word_embeddings=False),
    _full("qwen3-8b", "Qwen/Qwen3-8B", model_type="qwen3", vocab_size=151936, hidden_size=4096,
          intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32, num_key_value_heads=8,
          head_dim=128, rms_norm_eps=1e-6, rope_theta=1e6, max_position_embeddings=40960,
          tie_word_embeddings=False),
)

ZOO: dict[str, SyntheticSpec] = {s.name: s for s in SPECS}
DEFAULT = "qwen3-moe-tiny"


def get_spec(name: str) -> SyntheticSpec:
    """The spec called ``name`` (with or without the ``synthetic:`` prefix); KeyError lists the known names."""
    name = name.removeprefix("synthetic:")
    try:
        return ZOO[name]
    except KeyError:
        raise KeyError(f"unknown synthetic checkpoint {name!r}; known: {', '.join(ZOO)}") from None
