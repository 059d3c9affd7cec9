"""Compile every emitted CUDA kernel with nvcc for sm_90a, without a GPU: syntax, types, registers and spills.

Each kernel's full source, as MLX's ``cuda_kernel`` would generate it around the body, is compiled to a cubin
against MLX 0.32.4's CUDA device headers (vendored in ``mlx_cuda_headers/``, MIT, see its README), once per kernel
with the first dtype template set to bfloat16 (the decode dtype) and the others at their examples. ptxas reports
registers per thread: a threadgroup of N threads needs N x registers <= 65536 or the launch fails ("too many
resources requested", the first quantized_router at 1024 threads).
Usage: ``uv run python tools/cuda_syntax_check.py`` (exit 1 if any kernel fails to compile, 2 without nvcc).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HEADERS = Path(__file__).with_name("mlx_cuda_headers")
ARCH = "sm_90a"  # the lent H100 / H200 (Hopper)


def nvcc() -> str | None:
    return shutil.which("nvcc")


def compile_source(source: str, compiler: str) -> tuple[bool, str, int | None, int]:
    """(compiled, diagnostics, registers per thread, spill bytes) of one kernel source."""
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "kernel.cu"
        src.write_text(source)
        proc = subprocess.run(
            [compiler, f"-arch={ARCH}", "-cubin", "-std=c++17", "-I", str(HEADERS), "-Xptxas", "-v",
             "-diag-suppress", "177,550", "-o", str(Path(tmp) / "kernel.cubin"), str(src)],
            capture_output=True, text=True,
        )
    out = proc.stdout + proc.stderr
    regs = re.search(r"Used (\d+) registers", out)
    spills = sum(int(n) for n in re.findall(r"(\d+) bytes spill (?:stores|loads)", out))
    errors = "\n".join(line for line in out.splitlines() if "error" in line or "warning" in line)
    return proc.returncode == 0, errors, int(regs.group(1)) if regs else None, spills


def all_sources():
    from zmlx.kernels import catalogue
    from zmlx.kernels.emit import full_source

    for op in catalogue.ops():
        for variant, spec in op.kernel_specs().items():
            dtype_params = [k for k, v in spec.templates if isinstance(v, str)]
            tmpl = {dtype_params[0]: "bfloat16"} if dtype_params else {}
            yield f"{op.name}/{variant}", full_source(spec, "cuda", tmpl)


def main() -> int:
    compiler = nvcc()
    if compiler is None:
        print("error: nvcc not found: the CUDA compile check needs the CUDA toolkit (no GPU needed)", file=sys.stderr)
        return 2
    sources = list(all_sources())
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda s: compile_source(s[1], compiler), sources))
    failed = 0
    print(f"{'kernel':<44} {'registers':>9} {'spill B':>8}  result")
    for (label, _), (ok, err, regs, spills) in zip(sources, results, strict=True):
        failed += not ok
        print(f"{label:<44} {regs if regs is not None else '-':>9} {spills:>8}  {'ok' if ok else 'FAIL'}")
        if not ok:
            print(err)
    print(f"{len(sources) - failed} of {len(sources)} CUDA kernels compile for {ARCH}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
