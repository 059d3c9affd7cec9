"""Microbenchmark every fused op against its reference at decode and prefill shapes; prints a markdown table.

Usage (on a GPU machine): ``uv run python tools/bench_kernels.py [--chain 50] [--reps 15]``
"""

from __future__ import annotations

import argparse
import datetime
import platform
import sys

import mlx.core as mx
from zmlx.kernels import microbench
from zmlx.kernels.backend import gpu_backend


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--chain", type=int, default=50, help="independent calls per timed graph")
    ap.add_argument("--reps", type=int, default=15, help="timed repetitions (median reported)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--experts-only", action="store_true", help="only the decode-shape expert MLPs")
    args = ap.parse_args(argv)
    if gpu_backend() is None:
        print("error: no GPU here (MLX has neither Metal nor CUDA); nothing to time", file=sys.stderr)
        return 2
    info = mx.device_info() if hasattr(mx, "device_info") else {}
    print(f"# zmlx kernel microbenchmark, {datetime.date.today()}, {info.get('device_name', '?')} "
          f"({gpu_backend()}), mlx {mx.__version__}, python {platform.python_version()}")
    print(f"# median per call over {args.reps} reps of {args.chain} chained calls; ± is half the range\n")
    print(microbench.format_table(microbench.run(chain=args.chain, reps=args.reps, seed=args.seed, experts_only=args.experts_only)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
