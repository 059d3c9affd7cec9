"""The kernel microbenchmark: refuses to time without a GPU, and its table carries every row it is given."""

import importlib.util
from pathlib import Path

import pytest
from zmlx.kernels import microbench
from zmlx.kernels.backend import gpu_backend

TOOL = Path(__file__).resolve().parents[3] / "tools" / "bench_kernels.py"


def test_table_lists_every_row_with_speedup_and_bandwidth():
    rows = [microbench.BenchRow("swiglu", "[1,8,768]", 1, 10.0, 20.0, 1.0, 2.0),
            microbench.BenchRow("experts", "E=8", 1, 50.0, 25.0, 4.0, 2.0, fused_gbps=123.4)]
    table = microbench.format_table(rows)
    lines = table.strip().splitlines()
    assert len(lines) == 2 + len(rows)
    assert "| swiglu | [1,8,768] | 10.0 (±0.5) | 20.0 (±1.0) | 2.00x |  |" in lines
    assert "0.50x" in lines[3] and "| 123 |" in lines[3]


@pytest.mark.skipif(gpu_backend() is not None, reason="covers the no-GPU refusal")
def test_no_gpu_is_a_clear_error(capsys):
    with pytest.raises(RuntimeError, match="needs a Metal or CUDA GPU"):
        microbench.run(chain=1, reps=1)
    spec = importlib.util.spec_from_file_location("bench_kernels", TOOL)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    assert tool.main([]) == 2
    assert "no GPU here" in capsys.readouterr().err


def test_every_op_case_resolves_and_its_inputs_run_the_op():
    import mlx.core as mx

    assert {c.op for c in microbench.OP_CASES} >= {"softmax_topk", "topk_softmax", "sigmoid_topk",
                                                   "grouped_sigmoid_topk", "moe_combine", "swiglu", "add_rms_norm"}
    for case in microbench.OP_CASES:
        fns = case.functions()
        assert fns is not None, f"{case.op}: public op or reference missing"
        args, kw = case.make(3)
        got, want = fns[0](*args, **kw), fns[1](*args, **kw)
        got, want = (got, want) if isinstance(got, tuple) else ((got,), (want,))
        assert all(g.shape == w.shape and g.shape[0] == 3 for g, w in zip(got, want, strict=True)), case.op
        if gpu_backend() is None:  # the public op is the reference here
            assert all(mx.array_equal(g, w).item() for g, w in zip(got, want, strict=True)), case.op
