"""An offline byte-level BPE tokenizer whose size is exactly a model's ``vocab_size``.

A small BPE is trained on an embedded English text (deterministic), then its vocabulary is padded with tokens
that no merge produces but every one of which decodes (``<x123>``-style strings made of byte-level characters), so
every id a random model can emit decodes, and mlx-lm picks its byte-level streaming detokenizer.
"""

from __future__ import annotations

import json
from pathlib import Path

EOS = "<|endoftext|>"

# What the BPE learns its merges from; the default prompt is made of the same words, so it tokenizes into merges.
CORPUS = """\
Explain the difference between TCP and UDP, and say when each one is the better choice for an application.
TCP is a connection oriented protocol: it guarantees that bytes arrive in order and retransmits what was lost.
UDP sends independent datagrams with no delivery guarantee, which keeps latency low for games, voice and video.
The quick brown fox jumps over the lazy dog while the model writes one token after another, greedily.
A language model reads a prompt, fills its key value cache, and then decodes new tokens one step at a time.
Mixture of experts layers route every token to a few experts and combine their outputs with the router weights.
Numbers like 0 1 2 3 4 5 6 7 8 9 10 100 1000 and symbols like ( ) [ ] { } : ; , . ! ? = + - * / appear in code.
def main():\n    return sum(x * x for x in range(10))\n
"""


def _train_bpe(target: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=target,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS.splitlines() * 20, trainer)
    return tok


def build_tokenizer_json(vocab_size: int) -> dict:
    """The ``tokenizer.json`` content of a byte-level BPE with exactly ``vocab_size`` ids."""
    if vocab_size < 300:
        raise ValueError(f"vocab_size {vocab_size} is too small for a byte-level tokenizer (needs >= 300)")
    tok = _train_bpe(min(vocab_size, 1024))
    data = json.loads(tok.to_str())
    vocab: dict[str, int] = data["model"]["vocab"]
    # Added tokens (the EOS) share the id space; the BPE vocab holds them too.
    used = set(vocab.values()) | {t["id"] for t in data.get("added_tokens", [])}
    next_id = max(used) + 1
    i = 0
    while next_id < vocab_size:
        name = f"<x{i}>"
        i += 1
        if name in vocab:
            continue
        vocab[name] = next_id
        next_id += 1
    return data


def save_tokenizer(path: Path, vocab_size: int) -> int:
    """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json for ``mlx_lm.load``; returns the
    EOS id."""
    data = build_tokenizer_json(vocab_size)
    eos_id = next(t["id"] for t in data["added_tokens"] if t["content"] == EOS)
    (path / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": EOS,
        "bos_token": None,
        "pad_token": EOS,
        "model_max_length": 1 << 20,
        "clean_up_tokenization_spaces": False,
        "added_tokens_decoder": {
            str(eos_id): {"content": EOS, "special": True, "lstrip": False, "rstrip": False,
                          "normalized": False, "single_word": False},
        },
    }
    (path / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    (path / "special_tokens_map.json").write_text(json.dumps({"eos_token": EOS, "pad_token": EOS}, indent=2))
    return eos_id
