"""Every op emits complete sources for both backends, from one body."""

import pytest
from zmlx.kernels import catalogue
from zmlx.kernels.__main__ import main as kernels_main
from zmlx.kernels.emit import BACKENDS, emit, full_source

ALL_SPECS = [(op.name, v, s) for op in catalogue.ops() for v, s in op.kernel_specs().items()]


def test_catalogue_has_every_op_family():
    names = {op.name for op in catalogue.ops()}
    assert {"routing", "combine", "activations", "norms"} <= names
    variants = {v for op in catalogue.ops() for v in op.variants}
    assert {"swiglu", "geglu_erf", "geglu_tanh", "swiglu_oai", "add_rms_norm"} <= variants


@pytest.mark.parametrize("op,variant,spec", ALL_SPECS, ids=[f"{o}/{v}" for o, v, _ in ALL_SPECS])
def test_one_body_two_backends(op, variant, spec):
    metal, cuda = emit(spec, "metal"), emit(spec, "cuda")
    # the body is shared verbatim; only the index preamble and the prelude differ
    assert spec.body in metal.source and spec.body in cuda.source
    assert "thread_position_in_threadgroup" in metal.source and "threadIdx.x" in cuda.source
    assert "simd_sum" in metal.header and "__shfl_xor_sync" in cuda.header
    assert "__shfl" not in metal.header and "threadgroup_barrier" not in cuda.header
    for backend in BACKENDS:
        text = full_source(spec, backend)
        assert spec.kernel_name in text
        for p in spec.inputs + spec.outputs:
            assert p.name in text


def test_kernel_names_are_unique_per_source():
    names = [s.kernel_name for _, _, s in ALL_SPECS]
    assert len(names) == len(set(names))


def test_cli_list_and_emit(capsys):
    assert kernels_main(["list"]) == 0
    out = capsys.readouterr().out
    for op in catalogue.ops():
        assert op.name in out
    for backend in BACKENDS:
        assert kernels_main(["emit", "activations", "--backend", backend]) == 0
        text = capsys.readouterr().out
        assert text.count("=====") >= 2 * 4
        assert ("__global__" in text) == (backend == "cuda")
        assert ("[[kernel]]" in text) == (backend == "metal")


def test_cli_emit_unknown_op(capsys):
    assert kernels_main(["emit", "nope", "--backend", "cuda"]) == 2
    assert "unknown op" in capsys.readouterr().err


def test_cli_check_without_gpu(capsys):
    from zmlx.kernels.backend import gpu_backend

    if gpu_backend() is not None:
        pytest.skip("this test covers the no-GPU path")
    assert kernels_main(["check"]) == 0
    out = capsys.readouterr().out
    assert "no kernel could run" in out
    assert "Emission:" in out
