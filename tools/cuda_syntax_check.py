"""Compile every emitted CUDA kernel with nvcc for sm_90a, without a GPU: syntax, types, registers and spills.

Each kernel's full source, as MLX's ``cuda_kernel`` would generate it around the body, is compiled to a cubin
against MLX 0.32.4's CUDA device headers (vendored in ``mlx_cuda_headers/``, MIT, see its README), once per kernel
with the first dtype template set to bfloat16 (the decode dtype) and the others at their examples. ptxas reports
registers per thread: a threadgroup of N threads needs N x registers <= 65536 or the launch fails ("too many
resources requested", the first quantized_router at 1024 threads).
Usage: ``uv run python tools/cuda_syntax_check.py [--launches]`` (exit 1 if any kernel fails to compile, 2 without
nvcc); ``--launches`` also compiles every instantiation the ops' check cases launch (~110, a few minutes) and checks
that its threadgroup fits the register file.
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
REGISTER_FILE = 65536  # 32-bit registers per SM (and per block) on sm_90


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


def _type_name(value):
    import mlx.core as mx

    if isinstance(value, mx.Dtype):
        return {mx.float32: "float", mx.float16: "float16", mx.bfloat16: "bfloat16", mx.int32: "int32",
                mx.uint32: "uint32"}[value]
    return value


def launched_instantiations() -> list[tuple[str, object, dict, int]]:
    """Every distinct (kernel, template) the ops' check cases launch on CUDA, with its threadgroup size.

    Runs each op's ``check_cases`` kernels with the target forced to CUDA and ``launch`` recording its arguments
    instead of launching (outputs are zeros), so the instantiations are the ones the GPU tests compile.
    """
    import importlib
    import pkgutil

    import mlx.core as mx
    from zmlx.kernels import catalogue, ops

    seen: dict[tuple, tuple[str, object, dict, int]] = {}

    def fake_launch(spec, backend, *, inputs, output_shapes, output_dtypes, threads, threadgroup, blocks_y=1,
                    template=(), stream=None):
        tmpl = {k: _type_name(v) for k, v in template}
        key = (spec.kernel_name, tuple(sorted(tmpl.items())), threadgroup)
        seen.setdefault(key, (spec.name, spec, tmpl, threadgroup))
        return [mx.zeros(tuple(s), d) for s, d in zip(output_shapes, output_dtypes, strict=True)]

    saved = []
    for info in pkgutil.iter_modules(ops.__path__):
        mod = importlib.import_module(f"zmlx.kernels.ops.{info.name}")
        for name, value in (("launch", fake_launch), ("target_for", lambda stream=None: "cuda")):
            if hasattr(mod, name):
                saved.append((mod, name, getattr(mod, name)))
                setattr(mod, name, value)
    try:
        for op in catalogue.ops():
            for case in op.check_cases(0):
                case.kernel()
    finally:
        for mod, name, value in saved:
            setattr(mod, name, value)
    return list(seen.values())


def fits_register_file(source: str, threadgroup: int, compiler: str) -> tuple[bool, str]:
    """Whether a threadgroup of ``threadgroup`` threads of this kernel fits the SM's 65536 registers."""
    ok, err, regs, spills = compile_source(source, compiler)
    if not ok or regs is None:
        return False, err or "no register count"
    need = regs * threadgroup
    return need <= REGISTER_FILE and not spills, f"{regs} registers x {threadgroup} threads = {need}, {spills} B spilled"


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
    if "--launches" in sys.argv:  # every instantiation the check cases launch, at its threadgroup size
        from zmlx.kernels.emit import full_source

        insts = launched_instantiations()
        with ThreadPoolExecutor(max_workers=2) as pool:
            fits = list(pool.map(lambda i: fits_register_file(full_source(i[1], "cuda", i[2]), i[3], compiler),
                                 insts))
        for (name, _, tmpl, _), (ok, what) in zip(insts, fits, strict=True):
            failed += not ok
            if not ok:
                print(f"FAIL {name} {tmpl}: {what}")
        print(f"{sum(ok for ok, _ in fits)} of {len(insts)} launched instantiations fit the register file")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
