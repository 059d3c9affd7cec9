"""report / compare / env / kernels on capsules built from known numbers (no model needed)."""

from __future__ import annotations

import json
import subprocess
import sys

import msgspec
import pytest
from zmlx.bench.capsule import Environment, load_capsule, save_capsule
from zmlx.bench.cli import main


def _save(tmp_path, name, cap):
    p = tmp_path / name
    save_capsule(p, cap)
    return str(p)


def test_report_shows_environment_method_results_and_runs(tmp_path, capsule_factory, capsys):
    path = _save(tmp_path, "a.json", capsule_factory(speedup=1.10))
    assert main(["report", path]) == 0
    out = capsys.readouterr().out
    for needle in ("NVIDIA H100 80GB HBM3", "driver         580.65", "1 warm-up + 5 measured runs per side, interleaved",
                   "decode speedup [95% CI]", "faster", "PASS 80/80 tok, 5 runs", "runs of synthetic:b",
                   "zmlx-bench run synthetic:a synthetic:b", "1.25 / 1.26"):
        assert needle in out, needle


def test_report_shows_only_the_switches_a_run_changed(tmp_path, capsule_factory, capsys):
    cap = capsule_factory()
    plain = _save(tmp_path, "plain.json", cap)  # no switches recorded (older capsule): nothing shown
    flags = {"_experts.QMV_CORE": True, "_experts.Q4_BATCH": False}
    flipped = _save(tmp_path, "q4step.json", msgspec.structs.replace(
        cap, methodology=msgspec.structs.replace(cap.methodology, switches=flags)))
    assert main(["report", plain]) == 0 and "switches" not in capsys.readouterr().out
    assert main(["report", flipped]) == 0
    out = capsys.readouterr().out
    assert "switches _experts.Q4_BATCH=False;" in out and "QMV_CORE" not in out


def test_report_names_a_divergence(tmp_path, capsule_factory, capsys):
    path = _save(tmp_path, "f.json", capsule_factory(fail=True))
    assert main(["report", path]) == 0
    assert "FAIL 71/80 tok, 5 runs; first diverges run 2 token 7" in capsys.readouterr().out


def test_report_shows_an_unstable_baseline_distinctly(tmp_path, capsule_factory, capsys):
    path = _save(tmp_path, "u.json", capsule_factory(unstable=True, models=("synthetic:a",)))
    assert main(["report", path]) == 0
    out = capsys.readouterr().out
    assert "UNSTABLE: baseline run 3 differs from run 1 at token 5; patched 80/80 tok, 5 runs" in out
    assert "PASS" not in out and "recorded as" not in out
    (note,) = [ln for ln in out.splitlines() if ln.startswith("synthetic:a: UNSTABLE: ")]
    assert "stock mlx-lm itself is not deterministic on NVIDIA H100 80GB HBM3" in note
    assert "known cause is MLX's cuDNN attention" in note and "MLX_CUDA_USE_CUDNN_SDPA=0" in note
    assert "mlx env        none recorded" in out
    # the baseline rows say how far each baseline run followed baseline run 1
    assert [ln.split()[-1] for ln in out.splitlines() if ln.startswith("3    baseline")] == ["5/16"]
    assert main(["report", "--markdown", path]) == 0
    assert "\nsynthetic:a: UNSTABLE: baseline run 3 differs" in capsys.readouterr().out


def test_report_reads_an_older_fail_with_unstable_baseline_as_unstable(tmp_path, capsule_factory, capsys):
    env = {"MLX_CUDA_USE_CUDNN_SDPA": "0", "MLX_USE_CUDA_GRAPHS": "1"}
    old = _save(tmp_path, "old.json", capsule_factory(unstable=True, verdict="FAIL", mlx_env=env))
    ok = _save(tmp_path, "ok.json", capsule_factory(mlx_env=env))
    assert main(["report", old]) == 0
    out = capsys.readouterr().out
    assert out.count("UNSTABLE: baseline run 3 differs from run 1 at token 5") == 2 and "(recorded as FAIL)" in out
    assert "mlx env        MLX_CUDA_USE_CUDNN_SDPA=0 MLX_USE_CUDA_GRAPHS=1" in out
    assert "MLX_CUDA_USE_CUDNN_SDPA=0 was set, so MLX's cuDNN attention is not the cause here" in out
    assert main(["report", "--markdown", ok]) == 0
    assert "(0123456789ab), MLX_CUDA_USE_CUDNN_SDPA=0, MLX_USE_CUDA_GRAPHS=1  \n" in capsys.readouterr().out
    assert main(["compare", old, ok]) == 0
    assert capsys.readouterr().out.count("UNSTABLE / PASS") == 2


def test_markdown_accepts_several_capsules_each_named(tmp_path, capsule_factory, capsys):
    a = _save(tmp_path, "a.json", capsule_factory())
    b = _save(tmp_path, "b.json", capsule_factory(speedup=0.98, models=("synthetic:c",)))
    assert main(["report", "--markdown", a, b]) == 0
    md = capsys.readouterr().out
    assert md.startswith("# Benchmarks\n")
    assert f"Capsule: `{a}`" in md and f"Capsule: `{b}`" in md
    assert md.index(f"Capsule: `{a}`") < md.index("| synthetic:a |") < md.index(f"Capsule: `{b}`")
    assert md.count("\n|---|") == 2
    assert "| synthetic:c |" in md


def test_module_entry_points_match_the_console_script(tmp_path, capsule_factory):
    path = _save(tmp_path, "a.json", capsule_factory())
    outs = [subprocess.run([sys.executable, "-m", mod, *pre, path], capture_output=True, text=True, check=True).stdout
            for mod, pre in (("zmlx.bench.report", []), ("zmlx.bench", ["report"]))]
    assert outs[0] == outs[1] and "synthetic:a" in outs[0]


def test_compare_flags_changes_outside_the_noise(tmp_path, capsule_factory, capsys):
    a = _save(tmp_path, "a.json", capsule_factory(speedup=1.10, seed=1))
    same = _save(tmp_path, "same.json", capsule_factory(speedup=1.10, seed=2))
    worse = _save(tmp_path, "worse.json", capsule_factory(speedup=1.00, seed=3))
    assert main(["compare", a, same]) == 0
    out = capsys.readouterr().out
    assert out.count("within noise (intervals overlap)") == 2
    assert main(["compare", a, worse]) == 0
    out = capsys.readouterr().out
    assert out.count("lower in B") == 2 and "slower" in out


def test_compare_without_common_models_is_an_error(tmp_path, capsule_factory, capsys):
    a = _save(tmp_path, "a.json", capsule_factory(models=("synthetic:a",)))
    b = _save(tmp_path, "b.json", capsule_factory(models=("synthetic:b",)))
    assert main(["compare", a, b]) == 2
    assert "no model" in capsys.readouterr().err


def test_plot_without_matplotlib_is_a_clear_exit_2(tmp_path, capsule_factory, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed
    path = _save(tmp_path, "a.json", capsule_factory())
    png = tmp_path / "p.png"
    assert main(["report", path, "--plot", str(png)]) == 2
    cap = capsys.readouterr()
    assert cap.err == "error: --plot needs matplotlib, which is not installed: pip install 'zmlx-bench[plot]'\n"
    assert cap.out == "" and not png.exists()


def test_plot_draws_every_model(tmp_path, capsule_factory):
    pytest.importorskip("matplotlib")
    path = _save(tmp_path, "a.json", capsule_factory())
    png = tmp_path / "p.png"
    assert main(["report", path, "--plot", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_env_prints_the_block_and_json_decodes_as_environment(capsys, monkeypatch):
    monkeypatch.setenv("MLX_ZMLX_TEST_SWITCH", "0")
    monkeypatch.setenv("NOT_MLX_ZMLX_TEST", "1")
    assert main(["env"]) == 0
    text = capsys.readouterr().out
    assert "backend" in text and "mlx-lm" in text and "zmlx-bench" in text
    assert "MLX_ZMLX_TEST_SWITCH=0" in text and "NOT_MLX_ZMLX_TEST" not in text
    assert main(["env", "--json"]) == 0
    env = msgspec.json.decode(capsys.readouterr().out, type=Environment)
    assert env.mlx_env["MLX_ZMLX_TEST_SWITCH"] == "0" and all(k.startswith("MLX_") for k in env.mlx_env)
    assert env.backend in ("metal", "cuda", "cpu") and env.packages["zmlx-bench"]
    assert env.python.count(".") == 2


def test_kernels_on_cpu_times_references_and_embeds_into_a_capsule(tmp_path, capsule_factory, capsys):
    from zmlx.kernels.backend import gpu_backend

    path = _save(tmp_path, "a.json", capsule_factory())
    before = load_capsule(path)
    rc = main(["kernels", "--ops", "swiglu,add_rms_norm", "--repeats", "1", "--iterations", "1", "--out", path,
               "--quiet"])
    assert rc == 0
    after = load_capsule(path)
    assert after.results == before.results and after.environment == before.environment
    k = after.kernels
    assert {(t.op, t.tokens) for t in k.results} == {(op, m) for op in ("swiglu", "add_rms_norm") for m in (1, 512)}
    assert all(t.reference_us > 0 for t in k.results)
    if gpu_backend() is None:
        assert all(t.fused_us is None and t.identical is None for t in k.results)
        assert "cannot run here" in capsys.readouterr().err
    capsys.readouterr()
    assert main(["report", path]) == 0
    assert "add_rms_norm" in capsys.readouterr().out
    # A new file becomes a kernels-only capsule; a non-capsule file is never overwritten.
    new = tmp_path / "k.json"
    assert main(["kernels", "--ops", "swiglu", "--repeats", "1", "--iterations", "1", "--out", str(new), "-q"]) == 0
    assert load_capsule(new).methodology is None
    junk = tmp_path / "junk.json"
    junk.write_text(json.dumps({"hello": 1}))
    assert main(["kernels", "--ops", "swiglu", "--out", str(junk), "-q"]) == 2
    assert json.loads(junk.read_text()) == {"hello": 1}


@pytest.mark.parametrize(
    ("kinds", "rc", "said"),
    [(["fail"], 1, ["fidelity FAIL"]), (["unstable", "pass"], 3, ["fidelity UNSTABLE", "synthetic:a: UNSTABLE: baseline run 3 differs"]),
     (["unstable", "fail"], 1, ["fidelity UNSTABLE (stock mlx-lm is not deterministic here): synthetic:a",
                                "fidelity FAIL (patched tokens differ from baseline): synthetic:b"])],
    ids=["fail", "unstable", "fail-and-unstable"],
)
def test_run_writes_the_capsule_and_exits_by_verdict(tmp_path, monkeypatch, capsys, model_result_factory,
                                                      kinds, rc, said):
    from types import SimpleNamespace

    import zmlx.validate as validate
    from zmlx.validate import PatchInfo

    class Tok:
        def encode(self, text):
            return [ord(c) for c in text]

    todo = list(kinds)

    def fake_run(model, tokenizer, **kw):
        kind = todo.pop(0)
        r = model_result_factory("x", [100.0, 101.0, 99.0], [104.0, 103.0, 105.0], fail=kind == "fail",
                                 unstable=kind == "unstable")
        return SimpleNamespace(fidelity=r.fidelity, baseline=r.baseline, patched=r.patched,
                               patch=PatchInfo(model_type=r.model_type, counts=r.counts, patterns=r.patterns))

    monkeypatch.setattr(validate, "load_model", lambda spec, cache_dir=None: (object(), Tok(), spec), raising=False)
    monkeypatch.setattr(validate, "run_fidelity", fake_run, raising=False)
    out = tmp_path / "caps"
    models = ["synthetic:a", "synthetic:b"][:len(kinds)]
    assert main(["run", *models, "--runs", "3", "--patterns", "moe_mlp", "--out", f"{out}/", "-q"]) == rc
    err = capsys.readouterr().err
    assert all(s in err for s in said), err
    assert ("fidelity FAIL" in err) == ("fail" in kinds)
    (written,) = out.iterdir()
    cap = load_capsule(written)
    assert written.name.endswith(("_a.json", "_a_b.json")) and cap.methodology.patterns == ["moe_mlp"]
    assert [r.fidelity.verdict for r in cap.results] == [k.upper() for k in kinds]


def test_pairs_cell_counts_interleaved_pairs_where_patched_was_faster():
    from zmlx.bench.tables import pairs_cell

    assert pairs_cell([100.0, 110.0, 90.0], [105.0, 100.0, 95.0]) == "2/3"
    assert pairs_cell([100.0, 100.0], [100.0, 99.0]) == "0/2"  # a tie is not faster
    assert pairs_cell([100.0, 100.0, 100.0], [101.0, 102.0]) == "2/2"  # only complete pairs count


def test_report_has_the_pairs_column(tmp_path, capsule_factory, capsys):
    cap = capsule_factory(speedup=1.10, models=("synthetic:a",))
    r = cap.results[0]
    want = sum(p > b for b, p in zip(r.baseline.decode_tps, r.patched.decode_tps))
    path = _save(tmp_path, "p.json", cap)
    assert main(["report", "--markdown", path]) == 0
    out = capsys.readouterr().out
    assert "| pairs faster |" in out
    (row,) = [ln for ln in out.splitlines() if ln.startswith("| synthetic:a |")]
    assert row.split(" | ")[6] == f"{want}/{len(r.baseline.decode_tps)}"
