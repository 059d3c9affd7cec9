"""zmlx-validate end to end on the CPU: PASS, a detected FAIL (with bisect), JSON record, usage errors."""

from __future__ import annotations

import os
import subprocess
import sys

import mlx.core as mx
import msgspec
import pytest
from zmlx.validate.cli import main
from zmlx.validate.record import ValidationRecord


def _run(capsys, argv, **kw):
    rc = main(argv, **kw)
    out, err = capsys.readouterr()
    return rc, out, err


def test_default_command_passes_in_process(capsys, synth_cache):
    rc, out, err = _run(capsys, ["--cache-dir", synth_cache, "--quiet"])
    assert rc == 0, out + err
    assert out.strip().splitlines()[-1] == "PASS"
    assert "synthetic:qwen3-moe-tiny (qwen3_moe)" in out
    assert "2500/2500 tokens identical over 5 runs" in out
    assert "moe_mlp: 2" in out


def test_default_command_passes_as_subprocess(synth_cache):
    env = {k: v for k, v in os.environ.items() if k != "XDG_CACHE_HOME"}
    proc = subprocess.run([sys.executable, "-m", "zmlx.validate", "--cache-dir", synth_cache],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "PASS"
    assert proc.stderr == ""  # not a terminal: no progress display


def _wrong_class(original: type) -> type:
    # A deliberately wrong "fused" block: 1.5x the MoE output, only on decode steps (like a real pattern's guard).
    def __call__(self, x, *a, **k):
        y = original.__call__(self, x, *a, **k)
        return y * 1.5 if x.size // x.shape[-1] <= 1 else y

    return type(original.__name__, (original,), {"__call__": __call__, "_test_original": original})


class _Result:
    def __init__(self, counts, patterns):
        self.model_type = "qwen3_moe"
        self.counts = counts
        self.patterns = patterns
        self.skipped = []


def _fake_patch(model, patterns=None, exclude=(), max_fused_tokens=32, verbose=True):
    wanted = list(patterns or ["noop", "bad_moe"])
    counts = {}
    for name, module in (("noop", model.layers[0].self_attn), ("bad_moe", model.layers[1].mlp)):
        if name in wanted and name not in exclude:
            original = type(module)
            if name == "bad_moe":
                module.__class__ = _wrong_class(original)
            else:
                module.__class__ = type(original.__name__, (original,), {"_test_original": original})
            counts[name] = 1
    return _Result(counts, [p for p in wanted if p not in exclude])


def _fake_unpatch(model):
    n = 0
    for _, module in model.named_modules():
        original = type(module).__dict__.get("_test_original")
        if original is not None:
            module.__class__ = original
            n += 1
    return n


def test_wrong_pattern_fails_with_exit_1_and_bisects(capsys, synth_cache, tmp_path):
    path = tmp_path / "fail.json"
    rc, out, err = _run(capsys, ["--cache-dir", synth_cache, "--quiet", "--max-tokens", "48", "--runs", "2",
                                 "--bisect", "--json", str(path)], patch_fns=(_fake_patch, _fake_unpatch))
    assert rc == 1, out + err
    assert out.strip().splitlines()[-1] == "FAIL"
    assert "first divergence: run 1, token " in out
    assert "bisect: first break at pattern bad_moe, layer 1" in out
    rec = msgspec.json.decode(path.read_bytes(), type=ValidationRecord)
    d = rec.fidelity.first_divergence
    assert rec.fidelity.verdict == "FAIL" and d is not None and d.reproduced
    assert d.baseline_token != d.patched_token
    assert d.baseline_margin >= 0 and d.patched_margin >= 0
    assert rec.bisect is not None and rec.bisect.pattern == "bad_moe" and rec.bisect.layer == 1
    assert rec.bisect.modules == ["model.layers.1.mlp"]
    # every run was compared, and the model was left unpatched
    assert len(rec.fidelity.runs) == 2 and all(m.matched < m.total for m in rec.fidelity.runs)


def _restore_all(model) -> None:
    for _, module in model.named_modules():
        while (original := type(module).__dict__.get("_test_original")) is not None:
            module.__class__ = original


def _flaky_fns(perturb_after_unpatch: int):
    """(patch, unpatch) that also make the stock model nondeterministic: after the n-th unpatch the next baseline
    run gets a perturbed MoE block, as cuDNN attention does to stock mlx-lm on CUDA; any patch call clears it."""
    calls = 0

    def patch(model, **kw):
        _restore_all(model)
        return _fake_patch(model, **kw)

    def unpatch(model):
        nonlocal calls
        calls += 1
        _restore_all(model)
        if calls == perturb_after_unpatch:
            mlp = model.layers[1].mlp
            mlp.__class__ = _wrong_class(type(mlp))
        return 0

    return patch, unpatch


@pytest.mark.parametrize("patterns", ["noop", "noop,bad_moe"], ids=["patched-identical", "patched-differs-too"])
def test_nondeterministic_baseline_is_unstable_with_exit_3(capsys, synth_cache, tmp_path, patterns):
    path = tmp_path / "unstable.json"
    # warm-up 0, runs 2: baseline 1, patched 1, unpatch #1 (perturbs), baseline 2 differs from baseline 1
    rc, out, err = _run(capsys, ["--cache-dir", synth_cache, "--quiet", "-m", "48", "--runs", "2", "--warmup", "0",
                                 "--patterns", patterns, "--bisect", "--json", str(path)],
                        patch_fns=_flaky_fns(perturb_after_unpatch=1))
    assert rc == 3, out + err
    lines = out.strip().splitlines()
    assert lines[-1] == "UNSTABLE"
    rec = msgspec.json.decode(path.read_bytes(), type=ValidationRecord)
    f = rec.fidelity
    assert f.verdict == "UNSTABLE" and rec.bisect is None  # nothing to bisect against
    assert f.baseline_runs[0].matched == 48 and f.baseline_runs[1].matched < 48
    (explained,) = [ln for ln in lines if ln.startswith("UNSTABLE: ")]
    assert f"baseline run 2 differs from baseline run 1 at token {f.baseline_runs[1].matched}" in explained
    assert "stock mlx-lm itself is not deterministic on this machine" in explained
    assert ("patched runs differ too" in explained) == (patterns != "noop")
    if patterns == "noop":
        assert all(m.matched == m.total for m in f.runs) and f.first_divergence is None
    else:
        assert all(m.matched < m.total for m in f.runs)
    assert not any(ln.startswith("first divergence") for ln in lines)  # not reported as a patch failure
    assert rec.mlx_env == {k: v for k, v in os.environ.items() if k.startswith("MLX_")}
    if rec.backend != "cuda":
        assert "MLX_CUDA_USE_CUDNN_SDPA" not in explained


def test_unstable_line_names_cudnn_attention_only_on_cuda():
    from zmlx.validate.record import Fidelity, RunMatch
    from zmlx.validate.report import unstable_line

    f = Fidelity(verdict="UNSTABLE", runs=[RunMatch(matched=256, total=256)] * 3,
                 baseline_runs=[RunMatch(matched=256, total=256), RunMatch(matched=23, total=256),
                                RunMatch(matched=7, total=256)])
    cpu = unstable_line(f, backend="cpu", mlx_env={})
    assert cpu.startswith("UNSTABLE: baseline run 2 differs from baseline run 1 at token 23 (run 3 at token 7): ")
    assert "cuDNN" not in cpu and "patched runs differ" not in cpu
    cuda = unstable_line(f, backend="cuda", mlx_env={"MLX_USE_CUDA_GRAPHS": "1"})
    assert cuda.startswith(cpu) and "MLX's cuDNN attention" in cuda
    assert "MLX_CUDA_USE_CUDNN_SDPA=0, MLX's own setting (not zmlx configuration)" in cuda
    for off in ("0", " 0", "false"):  # MLX reads it with atoi
        assert "is not the cause here" in unstable_line(f, backend="cuda", mlx_env={"MLX_CUDA_USE_CUDNN_SDPA": off})
    assert "known cause" in unstable_line(f, backend="cuda", mlx_env={"MLX_CUDA_USE_CUDNN_SDPA": "1"})
    assert unstable_line(Fidelity(verdict="PASS", runs=f.runs, baseline_runs=f.runs), backend="cuda",
                         mlx_env={}) == ""


def test_json_round_trips_through_the_schema(capsys, synth_cache, tmp_path):
    path = tmp_path / "sub" / "rec.json"
    rc, out, _ = _run(capsys, ["--cache-dir", synth_cache, "--quiet", "-m", "24", "--runs", "2", "--warmup", "0",
                               "--json", str(path), "--seed", "0"])
    assert rc == 0, out
    raw = path.read_bytes()
    rec = msgspec.json.decode(raw, type=ValidationRecord)
    assert msgspec.json.decode(raw)["schema"] == "zmlx.validate/1"
    assert rec.model == "synthetic:qwen3-moe-tiny" and rec.model_type == "qwen3_moe"
    assert rec.fidelity.verdict == "PASS" and rec.bisect is None
    assert [m.matched for m in rec.fidelity.runs] == [24, 24]
    assert len(rec.baseline.runs) == 2 and rec.baseline.runs[0].generated_tokens == 24
    assert rec.baseline.median_decode_tps > 0 and rec.patched.median_decode_tps > 0
    assert rec.backend in ("cpu", "metal", "cuda") and rec.mlx_version == mx.__version__
    assert rec.patch_options == {"fuse_projections": False, "compile_blocks": True,  # patch()'s defaults
                                 "fuse_router": False, "fuse_qkv": False, "fuse_conv_proj": False}
    again = msgspec.json.decode(msgspec.json.encode(rec), type=ValidationRecord)
    assert again == rec
    assert not list(path.parent.glob(".*.tmp"))  # atomic write left no temporary file


def test_patch_switches_reach_the_patch_and_the_record(capsys, synth_cache, tmp_path):
    path = tmp_path / "rec.json"
    rc, out, _ = _run(capsys, ["--cache-dir", synth_cache, "--quiet", "-m", "6", "--runs", "1", "--warmup", "0",
                               "--fuse-projections", "--no-compile-blocks", "--fuse-router", "--fuse-qkv",
                               "--json", str(path)])
    assert rc == 0, out
    rec = msgspec.json.decode(path.read_bytes(), type=ValidationRecord)
    assert rec.patch_options == {"fuse_projections": True, "compile_blocks": False, "fuse_router": True,
                                 "fuse_qkv": True, "fuse_conv_proj": False}


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["/nonexistent/zmlx-model"], "no such model folder: /nonexistent/zmlx-model"),
        (["synthetic:no-such-model"], "unknown synthetic checkpoint 'no-such-model'; known: qwen3-moe-tiny"),
        (["--max-tokens", "0"], "--max-tokens must be >= 1, got 0"),
        (["--runs", "0"], "--runs must be >= 1"),
        (["--patterns", "no_such_pattern"], "unknown pattern(s) no_such_pattern"),
    ],
)
def test_bad_input_exits_2_with_one_line(capsys, synth_cache, argv, needle):
    rc, out, err = _run(capsys, [*argv, "--cache-dir", synth_cache, "--quiet"])
    assert rc == 2
    assert needle in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert out == ""


def test_folder_without_config_exits_2(capsys, tmp_path):
    rc, _, err = _run(capsys, [str(tmp_path), "--quiet"])
    assert rc == 2 and "not an mlx-lm checkpoint folder" in err


def test_bad_flag_is_an_argparse_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--max-tokens", "many"])
    assert e.value.code == 2
    assert "invalid int value" in capsys.readouterr().err


def test_list_synthetic_prints_every_name_with_sizes(capsys):
    from zmlx.validate.synthetic import ZOO

    rc, out, _ = _run(capsys, ["--list-synthetic"])
    assert rc == 0
    for name in ZOO:
        assert name in out
    assert "17.181 GB" in out  # qwen3-30b-a3b, as measured on the H100 host


def test_stats_reports_trained_looking_margins(capsys, synth_cache):
    rc, out, _ = _run(capsys, ["--stats", "-m", "200", "--cache-dir", synth_cache])
    assert rc == 0
    assert "200 tokens" in out and "distinct" in out and "margin median" in out
