"""tools/gpu/profile_decode.py: --summarize (ncu CSV, log lines first, mixed units -> device time per step) and --graph."""

import importlib.util
import re
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("gpu") / "profile_decode.py"
HEADER = ('"ID","Process ID","Process Name","Host Name","Kernel Name","Context","Stream","Block Size","Grid Size",'
          '"Device","CC","Section Name","Metric Name","Metric Unit","Metric Value"')


def _row(i: int, kernel: str, unit: str, value: str, metric: str = "gpu__time_duration.sum") -> str:
    return (f'"{i}","1","python3","h","{kernel}","1","7","(128, 1, 1)","(1, 1, 1)","0","9.0",'
            f'"Command line profiler metrics","{metric}","{unit}","{value}"')


def _tool():
    spec = importlib.util.spec_from_file_location("profile_decode", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_summarize_sums_per_kernel_across_units_and_steps(tmp_path, capsys):
    csv = tmp_path / "k.csv"
    csv.write_text("\n".join([
        "==PROF== Connected to process 1",
        HEADER,
        _row(0, "void mlx::core::cu::qmm_sm80_kernel<64, cutlass::bfloat16_t>(int)", "nsecond", "28,000"),
        _row(0, "void mlx::core::cu::qmm_sm80_kernel<64, cutlass::bfloat16_t>(int)", "byte", "7,000,000",
             metric="dram__bytes_read.sum"),
        _row(1, "void mlx::core::cu::qmm_sm80_kernel<64, cutlass::bfloat16_t>(int)", "usecond", "30"),
        _row(2, "custom_kernel_zmlx_moe_combine_abc", "usecond", "4.5"),
        _row(3, "custom_kernel_zmlx_moe_combine_abc", "msecond", "0.0055"),
    ]) + "\n")
    assert _tool().main(["--summarize", str(csv), "--steps", "2"]) == 0
    out = capsys.readouterr().out
    assert "device time per step: 34.0 us over 2 kernel launches" in out
    assert "| `qmm_sm80_kernel` | 1 | 29.0 | 85.3% |" in out
    assert "| `custom_kernel_zmlx_moe_combine_abc` | 1 | 5.0 | 14.7% |" in out


def test_summarize_a_missing_or_foreign_file_exits_2(tmp_path, capsys):
    tool = _tool()
    assert tool.main(["--summarize", str(tmp_path / "nope.csv")]) == 2
    other = tmp_path / "other.csv"
    other.write_text('"a","b"\n"1","2"\n')
    assert tool.main(["--summarize", str(other)]) == 2
    assert "cannot summarize" in capsys.readouterr().err


def test_fusion_cost_summarize_reads_the_same_log_and_refuses_others(tmp_path, capsys, monkeypatch):
    spec = importlib.util.spec_from_file_location("fusion_cost", SCRIPT.with_name("fusion_cost.py"))
    fusion = importlib.util.module_from_spec(spec)
    monkeypatch.syspath_prepend(str(SCRIPT.parent))  # fusion_cost reads ncu's CSV with profile_decode's reader
    spec.loader.exec_module(fusion)
    log = tmp_path / "f.csv"
    log.write_text("\n".join(["==PROF== Connected", HEADER, _row(0, "custom_kernel_zmlx_qkv_abc", "nsecond", "34,080"),
                              _row(1, "custom_kernel_zmlx_qkv_abc", "usecond", "36"),
                              _row(2, "void fill_kernel<float>", "usecond", "2")]) + "\n")
    assert fusion.main(["--summarize", str(log)]) == 0
    out = capsys.readouterr().out
    assert "| `custom_kernel_zmlx_qkv_abc` | 2 | 35.04 |" in out and "fill_kernel" not in out
    for bad, why in ((tmp_path / "none.csv", "cannot read it"), (SCRIPT, "no gpu__time_duration.sum rows")):
        assert fusion.main(["--summarize", str(bad)]) == 2
        assert why in capsys.readouterr().err


def test_graph_counts_one_decode_steps_primitives(tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(SCRIPT.parent))  # _model reads ab_decode's config parser
    tool = _tool()
    assert tool.main(["synthetic:llama-tiny", "--graph", "--cache-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    rows = dict(re.findall(r"^\| `(\w+)` \| (\d+) \|$", out, re.M))
    total, layers = map(int, re.search(r"primitives per decode step: (\d+) \(.* over (\d+) layers", out).groups())
    assert layers == 2 and total == sum(map(int, rows.values()))
    assert int(rows["SliceUpdate"]) == 2 * layers, "one keys and one values write into each layer's KV cache"
    assert int(rows["ArgReduce"]) == 1, "the greedy pick of the next token"


def test_graph_and_time_are_one_or_the_other(capsys):
    with pytest.raises(SystemExit) as exc:
        _tool().main(["synthetic:llama-tiny", "--graph", "--time"])
    assert exc.value.code == 2 and "not allowed with" in capsys.readouterr().err
