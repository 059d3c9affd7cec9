"""Device time of each fused expert launch alone, per model shape and loop form, under ncu (no host time in it):

    ncu --metrics gpu__time_duration.sum --csv -k regex:zmlx_moe --log-file e.csv python3 tools/gpu/experts_ncu.py
    python3 tools/gpu/experts_ncu.py --summarize e.csv

The run launches every single-launch row of the microbench's expert cases (gate+up alone, down+combine alone, a
dense gate+up; each kernel form) ``--calls`` times, one launch a call, in a fixed order; ncu's rows for kernels named
zmlx_moe* then map onto that order. The summary gives each row's median us and the GB/s of its weights.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path


def rows():
    """(label, weight bytes, one-launch callable) for each single-launch expert case, in launch order."""
    import mlx.core as mx
    from zmlx.kernels import microbench

    out = []
    for label, shape, nbytes, fused, _ in microbench._expert_cases(mx.random.key(0)):
        single = "gate+up (" in label or "down+combine (" in label or ("dense" in label and "(qmv core" in label)
        if single:
            out.append((f"{label} | {shape}", nbytes, fused))
    return out


def run(calls: int) -> None:
    import mlx.core as mx

    for _label, _, fn in rows():
        for _ in range(calls):
            mx.eval(fn())
    mx.synchronize()


def summarize(path: str, calls: int) -> int:
    sys.path.insert(0, str(Path(__file__).parent))
    from profile_decode import kernel_times

    times = [us for name, us in kernel_times(path) if "zmlx_moe" in name]
    labels = rows()
    if len(times) != calls * len(labels):
        print(f"experts_ncu: {len(times)} zmlx_moe launches in {path}, expected {calls} x {len(labels)}; was the "
              f"run made with the same --calls and -k regex:zmlx_moe?", file=sys.stderr)
        return 1
    print("| launch | shape | device us (median) | weights GB/s |\n|---|---|---|---|")
    for i, (label, nbytes, _) in enumerate(labels):
        med = statistics.median(times[i * calls + 1:(i + 1) * calls])  # main() keeps calls >= 2
        name, shape = label.split(" | ")
        print(f"| {name} | {shape} | {med:.1f} | {nbytes / med / 1e3:.0f} |")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=5, help="launches of each row (the first is left out: warm-up)")
    ap.add_argument("--summarize", metavar="CSV", help="map an ncu --csv log of a run onto the rows")
    args = ap.parse_args(argv)
    if args.calls < 2:
        ap.error("--calls must be at least 2 (the first launch of each row is left out)")
    if args.summarize:
        return summarize(args.summarize, args.calls)
    from zmlx.kernels.backend import gpu_backend

    if gpu_backend() != "cuda":
        print("experts_ncu: needs MLX's CUDA backend (ncu profiles CUDA kernels)", file=sys.stderr)
        return 2
    run(args.calls)
    return 0


if __name__ == "__main__":
    sys.exit(main())
