"""``zmlx-bench run``: a real short run on a tiny synthetic model, interruption, prompt synthesis."""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

import pytest
import zmlx.validate as validate
from zmlx.bench.capsule import load_capsule
from zmlx.bench.cli import main
from zmlx.bench.run import default_capsule_name, synth_prompt_ids
from zmlx.validate import PatchInfo


class CharTokenizer:
    """Encodes text one id per character (plus a BOS), like a byte-level tokenizer on plain ASCII."""

    def encode(self, text: str) -> list[int]:
        return [1] + [ord(c) for c in text]


def test_prompt_has_exact_length_and_is_deterministic():
    tok = CharTokenizer()
    for n in (1, 31, 33, 512):
        ids = synth_prompt_ids(tok, n, seed=0)
        assert len(ids) == n and ids[0] == 1
        assert ids == synth_prompt_ids(tok, n, seed=0)
    assert synth_prompt_ids(tok, 123, seed=0) != synth_prompt_ids(tok, 123, seed=1)
    with pytest.raises(ValueError):
        synth_prompt_ids(tok, 0)


def test_default_capsule_name_says_date_device_and_models():
    import datetime as dt

    name = default_capsule_name(dt.datetime(2026, 11, 27, tzinfo=dt.UTC), "NVIDIA H100 80GB HBM3",
                                ["synthetic:qwen3-30b-a3b", "mlx-community/Llama-3-8B-4bit"])
    assert name == "20261127_nvidia-h100-80gb-hbm3_qwen3-30b-a3b_llama-3-8b-4bit.json"


@pytest.fixture(scope="module")
def tiny_capsule(tmp_path_factory):
    """One real run on synthetic:qwen3-moe-tiny (CPU), shared by the tests that read it."""
    root = tmp_path_factory.mktemp("bench-run")
    out = root / "c.json"
    rc = main(["run", "synthetic:qwen3-moe-tiny", "--runs", "2", "--max-tokens", "16", "--prompt-tokens", "32",
               "--out", str(out), "--cache-dir", str(root / "cache"), "--resamples", "300", "--quiet"])
    return rc, out


def test_run_writes_a_capsule_that_report_compare_and_schema_accept(tiny_capsule, capsys, tmp_path):
    rc, out = tiny_capsule
    assert rc == 0
    cap = load_capsule(out)
    m = cap.methodology
    assert (m.runs, m.max_tokens, m.prompt_tokens, m.warmup_runs, m.order) == (2, 16, 32, 1, "interleaved")
    assert m.patch_held is True  # patched once; baseline runs inside zmlx.patch.suspended
    # the measurement switches as the run found them: today's defaults
    assert m.switches["_experts.QMV_CORE"] is True and m.switches["_layer.FOLD_NORMS"] is False
    assert m.command[:2] == ["zmlx-bench", "run"]
    assert cap.environment.backend == "cpu" and cap.environment.mlx
    (r,) = cap.results
    assert r.model == "synthetic:qwen3-moe-tiny" and r.model_type == "qwen3_moe"
    assert r.fidelity.verdict == "PASS"  # on the CPU every op is its reference: tokens must be identical
    assert len(r.fidelity.runs) == 2 and all(x.matched == x.total == 16 for x in r.fidelity.runs)
    for side in (r.baseline, r.patched):
        assert len(side.decode_tps) == len(side.prefill_tps) == len(side.ttft_s) == len(side.runs) == 2
        assert all(x > 0 for x in side.decode_tps + side.prefill_tps + side.ttft_s)
        assert all(run.prompt_tokens == 32 and run.generated_tokens == 16 for run in side.runs)
    lo, hi = r.summary.decode_speedup_ci95
    assert lo <= hi
    assert r.summary.excludes_one is False  # 2 runs per side are too few to call any change real
    # no flag given: the methodology says the family decides, the result what it resolved to (CPU: never fused)
    assert m.fuse_projections == "auto" and r.fuse_projections is False

    capsys.readouterr()
    assert main(["report", str(out)]) == 0
    text = capsys.readouterr().out
    assert "synthetic:qwen3-moe-tiny" in text and "PASS 32/32 tok" in text and "no verdict (< 5 runs)" in text
    assert main(["report", "--markdown", str(out), str(out)]) == 0
    md = capsys.readouterr().out
    assert md.count(f"Capsule: `{out}`") == 2 and "| synthetic:qwen3-moe-tiny |" in md
    assert main(["compare", str(out), str(out)]) == 0
    assert "within noise" in capsys.readouterr().out
    schema = tmp_path / "schema.json"
    assert main(["schema", "--out", str(schema)]) == 0
    assert "Capsule" in json.loads(schema.read_text())["$defs"]


def test_python_m_report_is_the_same_report(tiny_capsule, capsys):
    from zmlx.bench.report import main as report_main

    _, out = tiny_capsule
    assert main(["report", str(out)]) == 0
    via_cli = capsys.readouterr().out
    assert report_main([str(out)]) == 0
    assert capsys.readouterr().out == via_cli


def _fake_models(monkeypatch, model_result_factory, interrupt_at: int | None = None) -> list[dict]:
    """zmlx.validate's loader and fidelity run replaced by fakes; returns the list of run_fidelity keyword arguments
    (Ctrl-C at call ``interrupt_at``)."""
    calls: list[dict] = []

    def fake_load(spec, *, cache_dir=None):
        return SimpleNamespace(model_type="qwen3_moe"), CharTokenizer(), spec

    def fake_run(model, tokenizer, **kw):
        calls.append(kw)
        if len(calls) == interrupt_at:
            raise KeyboardInterrupt
        r = model_result_factory("x", [100.0, 101.0], [110.0, 111.0])
        return SimpleNamespace(fidelity=r.fidelity, baseline=r.baseline, patched=r.patched,
                               patch=PatchInfo(model_type="qwen3_moe", counts={"moe_mlp": 2}, patterns=["moe_mlp"]))

    monkeypatch.setattr(validate, "load_model", fake_load, raising=False)
    monkeypatch.setattr(validate, "run_fidelity", fake_run, raising=False)
    return calls


def test_interrupted_run_leaves_nothing_behind(tmp_path, monkeypatch, capsys, model_result_factory):
    """Ctrl-C during the second model: exit 130, no capsule, no temporary file."""
    calls = _fake_models(monkeypatch, model_result_factory, interrupt_at=2)
    out_dir = tmp_path / "out"
    rc = main(["run", "synthetic:a", "synthetic:b", "--runs", "2", "--prompt-tokens", "8",
               "--out", f"{out_dir}/new/"])
    assert rc == 130
    assert len(calls) == 2 and len(calls[0]["prompt_ids"]) == 8
    assert calls[0]["patch_kwargs"] == {"max_fused_tokens": 32}  # fuse_projections / compile_blocks: patch()'s defaults
    assert list(tmp_path.iterdir()) == []  # not even the output folder
    assert "interrupted: no capsule written" in capsys.readouterr().err


def test_interrupt_while_writing_leaves_no_partial_file(tmp_path, monkeypatch, capsule_factory):
    from zmlx.bench.capsule import save_capsule

    def boom(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(KeyboardInterrupt):
        save_capsule(tmp_path / "c.json", capsule_factory())
    assert list(tmp_path.iterdir()) == []


def test_unloadable_model_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    def fake_load(spec, *, cache_dir=None):
        raise validate.LoadError(f"unknown synthetic model {spec.split(':', 1)[1]!r}")

    monkeypatch.setattr(validate, "load_model", fake_load, raising=False)
    rc = main(["run", "synthetic:nope", "--out", str(tmp_path / "c.json"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: cannot load model 'synthetic:nope'") and err.count("\n") == 1
    assert not (tmp_path / "c.json").exists()


@pytest.mark.parametrize("argv", [["--runs", "0"], ["--max-tokens", "-3"], ["--prompt-tokens", "x"]])
def test_bad_numbers_are_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["run", "synthetic:qwen3-moe-tiny", *argv])
    assert exc.value.code == 2
    assert "Traceback" not in capsys.readouterr().err


def test_summary_calls_no_change_real_on_too_few_runs(model_result_factory):
    from zmlx.bench.run import summarize

    few = model_result_factory("x", [100.0, 100.5], [120.0, 120.5])
    s = summarize(few.baseline, few.patched, seed=0, resamples=500)
    assert s.decode_speedup_ci95[0] > 1.1 and not s.excludes_one
    many = model_result_factory("x", [100.0, 100.5, 99.5, 100.2, 99.8], [120.0, 120.5, 119.0, 121.0, 120.2])
    s = summarize(many.baseline, many.patched, seed=0, resamples=500)
    assert s.excludes_one and s.decode_speedup == 120.2 / 100.0
    assert s.decode_ms_per_token_saved == 1000 / 100.0 - 1000 / 120.2


def test_unwritable_out_fails_before_any_model_loads(tmp_path, monkeypatch, capsys):
    def fake_load(spec, *, cache_dir=None):
        raise AssertionError("must not load")

    monkeypatch.setattr(validate, "load_model", fake_load)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["run", "synthetic:a", "--out", f"{blocker}/c.json", "-q"]) == 2
    assert "is not a directory" in capsys.readouterr().err
    assert main(["run", "synthetic:a", "--patterns", "moe_mlp,nope", "-q"]) == 2
    assert "unknown pattern(s) nope" in capsys.readouterr().err


def test_opt_in_fusions_reach_the_patch_and_the_capsule(tmp_path, monkeypatch, capsys, model_result_factory):
    """--fuse-router / --fuse-qkv are patch() arguments; the capsule's methodology and report say they were on."""
    calls = _fake_models(monkeypatch, model_result_factory)
    out = tmp_path / "c.json"
    assert main(["run", "synthetic:a", "--runs", "2", "--prompt-tokens", "8", "--fuse-router", "--fuse-qkv",
                 "--quiet", "--out", str(out)]) == 0
    assert calls[0]["patch_kwargs"] == {"max_fused_tokens": 32, "fuse_router": True, "fuse_qkv": True}
    m = load_capsule(out).methodology
    assert m.fuse_router is True and m.fuse_qkv is True
    capsys.readouterr()
    assert main(["report", str(out)]) == 0
    assert "fuse_router=True, fuse_qkv=True" in capsys.readouterr().out
