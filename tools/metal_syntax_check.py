"""Syntax- and type-check every emitted Metal kernel with a host C++ compiler (CI has no Apple toolchain).

Each kernel's full source (as MLX would generate it around the body) is compiled with ``-fsyntax-only``
against ``metal_shim.h``, once per example template instantiation and once per float dtype.
Usage: ``uv run python tools/metal_syntax_check.py`` (exit 1 if any kernel fails).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

SHIM = Path(__file__).with_name("metal_shim.h")
DTYPES = ("float", "float16", "bfloat16")


def compiler() -> str | None:
    for cxx in ("clang++", "g++", "c++"):
        if shutil.which(cxx):
            return cxx
    return None


def check_source(source: str, cxx: str) -> tuple[bool, str]:
    text = source.replace("#include <metal_stdlib>", f'#include "{SHIM}"')
    proc = subprocess.run(
        [cxx, "-std=c++17", "-fsyntax-only", "-Wno-attributes", "-Wno-unknown-attributes", "-x", "c++", "-"],
        input=text, capture_output=True, text=True,
    )
    err = "\n".join(line for line in proc.stderr.splitlines() if "unrecognized command-line option" not in line)
    return proc.returncode == 0, err


def all_sources():
    from zmlx.kernels import catalogue
    from zmlx.kernels.emit import full_source

    for op in catalogue.ops():
        for variant, spec in op.kernel_specs().items():
            dtype_params = [k for k, v in spec.templates if isinstance(v, str)]
            for dtype in DTYPES if dtype_params else (None,):
                tmpl = {k: dtype for k in dtype_params[:1]} if dtype else {}
                yield f"{op.name}/{variant}[{dtype or '-'}]", full_source(spec, "metal", tmpl)


def main() -> int:
    cxx = compiler()
    if cxx is None:
        print("error: no C++ compiler (clang++ or g++) found for the Metal syntax check", file=sys.stderr)
        return 2
    failed = 0
    n = 0
    for label, src in all_sources():
        ok, err = check_source(src, cxx)
        n += 1
        if not ok:
            failed += 1
            print(f"FAIL {label}\n{err}\n")
    print(f"Metal syntax check ({cxx} -fsyntax-only with tools/metal_shim.h): {n - failed}/{n} kernels OK")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
