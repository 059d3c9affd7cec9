"""Synthetic checkpoints: determinism, atomic cache, tokenizer, sizes of the full shapes, greedy quality."""

from __future__ import annotations

import json

import pytest
from zmlx.validate.synthetic import (
    MARKER,
    ZOO,
    builder,
    ensure_checkpoint,
    estimate,
    get_spec,
    load_synthetic,
)
from zmlx.validate.synthetic.builder import checkpoint_dir


def _marker(path):
    return json.loads((path / MARKER).read_text())


def test_same_seed_same_weights_other_seed_other_weights(tmp_path):
    spec = get_spec("llama-tiny")
    a = ensure_checkpoint(spec, seed=0, cache_dir=tmp_path / "a")
    b = ensure_checkpoint(spec, seed=0, cache_dir=tmp_path / "b")
    c = ensure_checkpoint(spec, seed=1, cache_dir=tmp_path / "a")
    assert a.name == b.name and a != c
    assert _marker(a)["weights_sha256"] == _marker(b)["weights_sha256"]
    assert _marker(a)["weights_sha256"] != _marker(c)["weights_sha256"]
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()


def test_cache_is_reused(tmp_path, monkeypatch):
    spec = get_spec("qwen3-tiny")
    path = ensure_checkpoint(spec, cache_dir=tmp_path)
    monkeypatch.setattr(builder, "write_checkpoint", lambda *a, **k: pytest.fail("rebuilt a cached checkpoint"))
    assert ensure_checkpoint(spec, cache_dir=tmp_path) == path


def test_interrupted_build_leaves_no_broken_cache(tmp_path, monkeypatch):
    spec = get_spec("qwen3-tiny")

    def boom(*_a, **_k):
        raise RuntimeError("simulated crash after the weights were written")

    monkeypatch.setattr(builder, "save_tokenizer", boom)  # fails mid-build: weights saved, tokenizer not
    with pytest.raises(RuntimeError, match="simulated crash"):
        ensure_checkpoint(spec, cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []  # neither the final folder nor the temporary one
    monkeypatch.undo()
    # a folder left without its marker (e.g. by an older, non-atomic writer) is rebuilt, not trusted
    final = checkpoint_dir(spec, 0, tmp_path)
    final.mkdir(parents=True)
    (final / "config.json").write_text("{}")
    path = ensure_checkpoint(spec, cache_dir=tmp_path)
    assert path == final and (path / MARKER).is_file() and (path / "tokenizer.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == [final.name]


def test_checkpoint_is_a_community_style_4bit_mlx_checkpoint(tmp_path):
    import mlx.core as mx
    import mlx.nn as nn

    model, tokenizer, path = load_synthetic("qwen3-moe-tiny", cache_dir=tmp_path)
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["quantization"]["bits"] == 4 and cfg["quantization"]["group_size"] == 64
    assert cfg["quantization"]["model.layers.0.mlp.gate"] == {"group_size": 64, "bits": 8}  # router 8-bit
    assert isinstance(model.layers[0].mlp.gate, nn.QuantizedLinear) and model.layers[0].mlp.gate.bits == 8
    assert isinstance(model.model.embed_tokens, nn.QuantizedEmbedding)
    assert model.model.norm.weight.dtype == mx.bfloat16
    # the tokenizer covers the vocabulary exactly, and every id decodes
    assert len(tokenizer._tokenizer) == cfg["vocab_size"] == 1024
    text = tokenizer.decode(list(range(cfg["vocab_size"])))
    assert "<x0>" in text
    assert tokenizer.eos_token_id == cfg["eos_token_id"]


def test_lfm2_moe_keeps_expert_bias_fp32(tmp_path):
    import mlx.core as mx

    model, _, _ = load_synthetic("lfm2-moe-tiny", cache_dir=tmp_path)
    block = model.layers[1].feed_forward
    assert block.expert_bias.dtype == mx.float32
    assert mx.abs(block.expert_bias).max().item() > 0  # randomised, not the zero init


# Published sizes (4-bit g64 affine, as on the H100 host: shared/notes/h100-baseline.md) and parameter counts
FULL = {
    "qwen3-30b-a3b": (17.18e9, 30.5e9),
    "lfm2-8b-a1b": (4.69e9, 8.3e9),
    "gpt-oss-20b": (11.78e9, 20.9e9),
    "llama-3-8b": (4.52e9, 8.03e9),
    "mixtral-8x7b": (26.27e9, 46.7e9),
    "qwen3-8b": (4.61e9, 8.19e9),
}


@pytest.mark.parametrize("name", sorted(FULL))
def test_full_size_config_instantiates_with_the_published_size(name):
    from mlx_lm.utils import _get_classes

    spec = ZOO[name]
    assert not spec.tiny
    _, args_cls = _get_classes(dict(spec.config))
    args = args_cls.from_dict(dict(spec.config))
    assert args.vocab_size == spec.config["vocab_size"]
    size = estimate(spec)  # lazily: nothing of the 17 GB is allocated
    want_bytes, want_params = FULL[name]
    assert size.bytes == pytest.approx(want_bytes, rel=0.005)
    assert size.parameters == pytest.approx(want_params, rel=0.005)


def test_every_tiny_checkpoint_builds_loads_and_is_varied(tmp_path):
    from zmlx.validate.prompt import DEFAULT_PROMPT, encode_prompt
    from zmlx.validate.quality import greedy_quality

    for spec in ZOO.values():
        if not spec.tiny:
            continue
        model, tokenizer, _ = load_synthetic(spec.name, cache_dir=tmp_path)
        q = greedy_quality(model, encode_prompt(tokenizer, DEFAULT_PROMPT), 64)
        assert q.tokens == 64
        assert q.distinct_share >= 0.3, (spec.name, q)
        assert 0.2 <= q.margin_median <= 8.0, (spec.name, q)
