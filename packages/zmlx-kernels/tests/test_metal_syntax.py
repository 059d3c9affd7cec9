"""CI syntax check of every emitted Metal kernel (host C++ compiler + tools/metal_shim.h)."""

import importlib.util
from pathlib import Path

import pytest

TOOL = Path(__file__).resolve().parents[3] / "tools" / "metal_syntax_check.py"
spec = importlib.util.spec_from_file_location("metal_syntax_check", TOOL)
msc = importlib.util.module_from_spec(spec)
spec.loader.exec_module(msc)

SOURCES = list(msc.all_sources())


@pytest.mark.skipif(msc.compiler() is None, reason="no C++ compiler on this machine")
@pytest.mark.parametrize("label,source", SOURCES, ids=[s[0] for s in SOURCES])
def test_metal_kernel_compiles(label, source):
    ok, err = msc.check_source(source, msc.compiler())
    assert ok, f"{label}:\n{err}"


def test_checker_rejects_a_broken_kernel():
    cxx = msc.compiler()
    if cxx is None:
        pytest.skip("no C++ compiler")
    label, source = SOURCES[0]
    broken = source.replace("zm_tid", "zm_tidd", 1) if "zm_tid" in source else source + "\nint x = ;"
    ok, _ = msc.check_source(broken, cxx)
    assert not ok
