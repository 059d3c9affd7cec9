"""``python -m zmlx.kernels check``: every kernel against its reference on the GPU that is present.

Without a GPU it checks what can be checked here (references against float64 math, emission for both backends)
and says plainly that no kernel ran.
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np

from . import catalogue
from .backend import gpu_backend
from .emit import BACKENDS, emit


def _compare(got: list[mx.array], want: list[mx.array]) -> tuple[float, bool]:
    max_err, exact = 0.0, True
    for g, w in zip(got, want):
        if g.shape != w.shape or g.dtype != w.dtype:
            return float("inf"), False
        ga, wa = np.array(g.astype(mx.float32) if g.dtype != mx.uint32 else g), np.array(
            w.astype(mx.float32) if w.dtype != mx.uint32 else w)
        exact &= bool(np.array_equal(ga, wa, equal_nan=True))
        if ga.size:
            diff = np.abs(ga.astype(np.float64) - wa.astype(np.float64))
            max_err = max(max_err, float(np.nanmax(diff)) if not np.isnan(diff).all() else float("inf"))
    return max_err, exact


def _table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)))


def run_check(seed: int = 0, op_filter: str | None = None) -> int:
    ops = [catalogue.find(op_filter)] if op_filter else catalogue.ops()
    failed = 0
    rows = [("op", "variant", "dtype", "reference vs float64", "tolerance", "pass")]
    for op in ops:
        for rc in op.reference_checks(seed):
            rows.append((rc.op, rc.variant, rc.dtype, f"{rc.max_error:.3g}", f"{rc.tolerance:.0e}",
                         "yes" if rc.passed else "NO"))
            failed += not rc.passed
    print("References (pure MLX, on the CPU) against independent float64 math:")
    _table(rows)
    n_emit = 0
    for op in ops:
        for spec in op.kernel_specs().values():
            for backend in BACKENDS:
                if not emit(spec, backend).source.strip():
                    print(f"emission of {op.name}/{spec.name} for {backend} is empty")
                    failed += 1
                n_emit += 1
    print(f"\nEmission: {n_emit} kernel sources generated (Metal and CUDA).")
    backend = gpu_backend()
    if backend is None:
        print("\nNo GPU here (MLX has neither Metal nor CUDA): no kernel could run. "
              "Only the references and the emission were checked.")
        return 1 if failed else 0
    rows = [("op", "variant", "dtype", "backend", "max error", "bit-exact", "pass")]
    with mx.stream(mx.gpu):
        for op in ops:
            for case in op.check_cases(seed):
                got = case.kernel()
                want = case.reference()
                mx.eval(got, want)
                err, exact = _compare(list(got), list(want))
                ok = exact if case.exact else err <= case.atol
                failed += not ok
                rows.append((case.op, case.variant, case.dtype, backend, f"{err:.3g}",
                             "yes" if exact else "no", "yes" if ok else "NO"))
    print(f"\nKernels on {backend} ({mx.device_info().get('device_name', 'GPU') if hasattr(mx, 'device_info') else 'GPU'}):")
    _table(rows)
    print(f"\n{'FAIL' if failed else 'PASS'}: {failed} failing check(s)")
    return 1 if failed else 0
