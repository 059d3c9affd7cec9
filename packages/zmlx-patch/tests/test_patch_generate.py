"""zmlx-generate on a tiny saved checkpoint (offline tokenizer), and its usage errors (exit 2, one line)."""

from __future__ import annotations

import pytest
import zmlx_patch_tiny as tiny
from mlx_lm.utils import save_config, save_model
from zmlx.patch.generate import main


def _tokenizer(vocab: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["the quick brown fox jumps over the lazy dog"] * 50, trainer)
    tok.add_tokens([f"<x{i}>" for i in range(vocab - tok.get_vocab_size())])
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_qwen3_moe")
    save_model(path, tiny.build("qwen3_moe"))
    save_config(tiny.config("qwen3_moe"), path / "config.json")
    _tokenizer(tiny.V).save_pretrained(path)
    return path


def _run(capsys, *argv) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def test_generate_patched_and_unpatched_agree(model_dir, capsys):
    common = ["--model", str(model_dir), "-p", "the quick brown", "-m", "12", "--ignore-chat-template"]
    code, patched, _ = _run(capsys, *common)
    assert code == 0
    assert "[zmlx.patch] Applying 5 patterns: ['swiglu_mlp', 'geglu_mlp', 'moe_mlp', 'qk_norm_rope', 'conv_layer']" in patched
    assert "  moe_mlp: 2" in patched
    for line in ("Prompt: ", "tokens-per-sec", "Generation: ", "Peak memory: "):
        assert line in patched
    code, base, _ = _run(capsys, *common, "--no-patch")
    assert code == 0 and "[zmlx.patch]" not in base

    def text(out: str) -> str:
        return out.split("=" * 10)[1]

    assert text(patched) == text(base)


def test_generate_passes_the_patch_flags(model_dir, capsys, monkeypatch):
    import zmlx.patch as zp

    seen = []
    real = zp.patch
    monkeypatch.setattr(zp, "patch", lambda model, **kw: seen.append(kw) or real(model, **kw))
    common = ["--model", str(model_dir), "-p", "the quick brown", "-m", "4", "--ignore-chat-template"]
    assert _run(capsys, *common)[0] == 0
    assert _run(capsys, *common, "--fuse-projections", "--no-compile-blocks")[0] == 0
    # unset flags are not passed: patch()'s own defaults (per family for fuse_projections) apply
    assert [(kw.get("fuse_projections"), kw.get("compile_blocks")) for kw in seen] == [(None, None), (True, False)]


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["--model", "/nonexistent/tiny"], "model directory not found"),
        (["--model", "x", "--patterns", "warp_drive"], "unknown pattern"),
        (["--model", "x", "--max-tokens", "-3"], "expected an integer >= 0"),
        (["--model", "x", "--no-patch", "--exclude", "moe_mlp"], "cannot be combined"),
        ([], "--model"),
    ],
)
def test_generate_usage_errors_exit_2(capsys, argv, needle):
    code, _, err = _run(capsys, *argv)
    assert code == 2
    assert err.startswith("zmlx-generate: error:") and needle in err and "Traceback" not in err


def test_generate_unloadable_model_exits_2(tmp_path, capsys):
    (tmp_path / "config.json").write_text('{"model_type": "no_such_arch"}')
    code, _, err = _run(capsys, "--model", str(tmp_path))
    assert code == 2 and "cannot load model" in err
