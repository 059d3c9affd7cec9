"""CI compile check of every emitted CUDA kernel (nvcc for sm_90a against MLX's vendored device headers; no GPU)."""

import importlib.util
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

TOOL = Path(__file__).resolve().parents[3] / "tools" / "cuda_syntax_check.py"
spec = importlib.util.spec_from_file_location("cuda_syntax_check", TOOL)
csc = importlib.util.module_from_spec(spec)
spec.loader.exec_module(csc)

pytestmark = pytest.mark.skipif(csc.nvcc() is None, reason="no nvcc on this machine")


def test_every_cuda_kernel_compiles_without_spills():
    sources = list(csc.all_sources())
    with ThreadPoolExecutor(max_workers=2) as pool:  # ~1-2 s of nvcc per kernel
        results = list(pool.map(lambda s: csc.compile_source(s[1], csc.nvcc()), sources))
    failed = [f"{label}:\n{err}" for (label, _), (ok, err, _, _) in zip(sources, results, strict=True) if not ok]
    assert not failed, "\n\n".join(failed)
    spilled = [label for (label, _), (_, _, _, spills) in zip(sources, results, strict=True) if spills]
    assert not spilled, f"register spills (local memory on the decode path): {spilled}"
    assert all(regs is not None and regs <= 255 for _, _, regs, _ in results)


def test_checker_rejects_a_broken_kernel():
    label, source = next(csc.all_sources())
    ok, err, _, _ = csc.compile_source(source.replace("zm_tid", "zm_tidd", 1), csc.nvcc())
    assert not ok and "zm_tid" in err  # its declaration renamed: every later use is undefined


def test_new_high_register_kernels_fit_their_launches():
    """The kernels that compute projections themselves (router, norm_router, qkv, short_conv_proj: 86-208 registers a thread)
    at every instantiation their check cases launch: threadgroup x registers within the register file (1024 threads of
    the first router kernel did not fit: "too many resources requested for launch" on the H100)."""
    from zmlx.kernels.emit import full_source

    insts = [i for i in csc.launched_instantiations() if i[0].startswith(("router_", "norm_router_", "qkv_", "short_conv_proj"))]
    assert len(insts) >= 7
    with ThreadPoolExecutor(max_workers=2) as pool:
        fits = list(pool.map(lambda i: csc.fits_register_file(full_source(i[1], "cuda", i[2]), i[3], csc.nvcc()),
                             insts))
    bad = [f"{i[0]} {i[2]}: {what}" for i, (ok, what) in zip(insts, fits, strict=True) if not ok]
    assert not bad, "\n".join(bad)
