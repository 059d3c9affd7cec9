"""``python -m zmlx.kernels list | emit OP --backend metal|cuda | check``."""

from __future__ import annotations

import argparse
import sys

from . import catalogue
from .emit import BACKENDS, emit, full_source


def _list(_: argparse.Namespace) -> int:
    rows = [("op", "variants", "backends", "reference")]
    for op in catalogue.ops():
        rows.append((op.name, ", ".join(op.variants), "metal, cuda, cpu(reference)", op.reference))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r[:3], widths)) + "  " + r[3])
    for op in catalogue.ops():
        print(f"\n{op.name}: {op.summary}")
    return 0


def _emit(args: argparse.Namespace) -> int:
    try:
        op = catalogue.find(args.op)
    except KeyError as e:
        print(f"error: {e.args[0]}", file=sys.stderr)
        return 2
    specs = op.kernel_specs()
    if args.op in specs:
        specs = {args.op: specs[args.op]}
    for variant, spec in specs.items():
        print(f"// ===== {op.name}/{variant} ({args.backend}) kernel {spec.kernel_name} =====")
        print(full_source(spec, args.backend) if not args.body_only else emit(spec, args.backend).full_text())
    return 0


def _check(args: argparse.Namespace) -> int:
    from .check import run_check

    return run_check(seed=args.seed, op_filter=args.op)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m zmlx.kernels", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="print the op catalogue").set_defaults(fn=_list)
    p = sub.add_parser("emit", help="print the generated kernel source of one op (or one variant)")
    p.add_argument("op")
    p.add_argument("--backend", choices=BACKENDS, required=True)
    p.add_argument("--body-only", action="store_true", help="print only the header and body handed to MLX")
    p.set_defaults(fn=_emit)
    p = sub.add_parser("check", help="run every kernel against its reference on the GPU present")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--op", default=None, help="only this op")
    p.set_defaults(fn=_check)
    args = parser.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
