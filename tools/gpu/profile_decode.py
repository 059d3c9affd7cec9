"""Where one decode step's time goes on a CUDA host: device time per kernel (under ncu) and host time per step.

  python3 tools/gpu/profile_decode.py MODEL [--config stock|default|moe+qk+fuse...] [--steps N] --time
      wall ms per decode step, eager (model + eval per token) and pipelined (mlx-lm's generate_step), and the
      eager step split into host graph building, host dispatch (async_eval) and the wait for the device
  ncu --profile-from-start off --metrics gpu__time_duration.sum --csv --log-file K.csv \\
      python3 tools/gpu/profile_decode.py MODEL --config C --steps 1
      kernels of exactly --steps decode steps, bracketed by cuProfilerStart/Stop after a warm-up
  python3 tools/gpu/profile_decode.py --summarize K.csv [--steps N]
      device microseconds per step by kernel, largest first
  python3 tools/gpu/profile_decode.py MODEL --config C --graph
      the primitives one decode step hands MLX to dispatch, by kind (mx.export_to_dot of the step's graph): what
      dispatch costs in count. On the CPU fast ops show as their decomposition and zmlx ops as their references
"""

from __future__ import annotations

import argparse
import csv
import ctypes
import re
import statistics
import sys
import time
from collections import defaultdict

PROMPT_TOKENS = 128


def _model(name: str, config: str, cache_dir: str | None):
    import mlx.core as mx
    from ab_decode import apply_switches, parse_config, patterns_for
    from zmlx.validate import load_model

    model, _, _ = load_model(name, cache_dir=cache_dir)
    apply_switches(config)
    if config == "default":
        from zmlx.patch import patch

        patch(model, verbose=True)
    elif config != "stock":
        from zmlx.patch import patch

        patterns, kwargs = parse_config(config)
        patch(model, patterns=patterns_for(model, patterns), verbose=True, **kwargs)
    mx.random.seed(0)
    prompt = mx.random.randint(0, model.args.vocab_size, (PROMPT_TOKENS,))
    return model, prompt


def _prefill(model, prompt):
    import mlx.core as mx
    from mlx_lm.models.cache import make_prompt_cache

    cache = make_prompt_cache(model)
    logits = model(prompt[None], cache=cache)
    tok = mx.argmax(logits[:, -1:], axis=-1)
    mx.eval(tok)
    return cache, tok


def _step(model, cache, tok):
    import mlx.core as mx

    tok = mx.argmax(model(tok, cache=cache)[:, -1:], axis=-1)
    mx.eval(tok)
    return tok


def _eager_steps(model, prompt, steps: int) -> None:
    """Synced steps, each split into graph build (Python), dispatch (async_eval) and the wait for the device."""
    import mlx.core as mx

    cache, tok = _prefill(model, prompt)
    for _ in range(8):
        tok = _step(model, cache, tok)
    eager, build, dispatch, wait = [], [], [], []
    for _ in range(steps):
        t0 = time.perf_counter()
        tok = mx.argmax(model(tok, cache=cache)[:, -1:], axis=-1)
        t1 = time.perf_counter()
        mx.async_eval(tok)  # MLX encodes and launches every kernel of the step on this thread
        t2 = time.perf_counter()
        mx.eval(tok)
        t3 = time.perf_counter()
        eager.append((t3 - t0) * 1e3)
        build.append((t1 - t0) * 1e3)
        dispatch.append((t2 - t1) * 1e3)
        wait.append((t3 - t2) * 1e3)
    print(f"eager ms/step median {statistics.median(eager):.3f} (min {min(eager):.3f}, max {max(eager):.3f}); "
          f"split, medians: host graph build {statistics.median(build):.3f} ms, host dispatch "
          f"{statistics.median(dispatch):.3f} ms, device wait after dispatch {statistics.median(wait):.3f} ms")


def time_steps(model, prompt, steps: int) -> None:
    import mlx.core as mx
    from mlx_lm.generate import generate_step, generation_stream
    from mlx_lm.sample_utils import make_sampler

    # on generate_step's stream: a block traced here (compile_blocks) replays on the stream it was traced on; traced
    # on the default stream it would make the generate_step timing below cross streams in every layer
    with mx.stream(generation_stream):
        _eager_steps(model, prompt, steps)
    stamps = []
    for _ in generate_step(prompt, model, max_tokens=steps + 8, sampler=make_sampler(temp=0.0)):
        stamps.append(time.perf_counter())
    piped = [(b - a) * 1e3 for a, b in zip(stamps[8:], stamps[9:])]
    print(f"generate_step ms/token median {statistics.median(piped):.3f} (min {min(piped):.3f}, "
          f"max {max(piped):.3f}); {steps} steps")


def profile_steps(model, prompt, steps: int) -> None:
    cuda = ctypes.CDLL("libcuda.so.1")
    cache, tok = _prefill(model, prompt)
    for _ in range(8):  # every kernel compiled and every graph shape seen before the profiled range
        tok = _step(model, cache, tok)
    cuda.cuProfilerStart()
    for _ in range(steps):
        tok = _step(model, cache, tok)
    cuda.cuProfilerStop()


_LABEL = re.compile(r'label ="([^"]+)"')


def graph_census(model, prompt) -> dict[str, int]:
    """Primitives in one decode step's graph (after warm-up steps, so traced blocks replay), by kind; fused
    elementwise segments of a trace count as one ``Compiled``."""
    import tempfile

    import mlx.core as mx
    from mlx_lm.generate import generation_stream

    with mx.stream(generation_stream):
        cache, tok = _prefill(model, prompt)
        for _ in range(4):
            tok = _step(model, cache, tok)
        nxt = mx.argmax(model(tok, cache=cache)[:, -1:], axis=-1)
        with tempfile.TemporaryDirectory() as d:
            mx.export_to_dot(f"{d}/step.dot", nxt)
            labels = _LABEL.findall(open(f"{d}/step.dot").read())
        mx.eval(nxt)
    counts: dict[str, int] = defaultdict(int)
    for label in labels:
        counts["Compiled" if label.startswith("Compiled") else label] += 1
    return dict(counts)


def print_census(counts: dict[str, int], layers: int) -> None:
    total = sum(counts.values())
    print(f"primitives per decode step: {total} ({total / max(layers, 1):.1f} per layer over {layers} layers)")
    print("| primitive | per step |\n|---|---|")
    for name, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        print(f"| `{name}` | {n} |")


def _family(kernel: str) -> str:
    name = re.sub(r"^(void )?", "", kernel)
    name = re.split(r"[<(]", name, maxsplit=1)[0]
    return name.split("::")[-1] or kernel[:60]


def kernel_times(path: str) -> list[tuple[str, float]]:
    """(kernel name, us) for each gpu__time_duration.sum row of an ``ncu --csv`` log (its own log lines first,
    any time unit). ValueError, saying which, for a file that cannot be read or has no such rows."""
    try:
        with open(path, newline="") as f:
            lines = [line for line in f if line.startswith('"')]  # ncu's own log lines come first
    except OSError as e:
        raise ValueError(f"cannot read it: {e.strerror}") from None
    out = []
    for row in csv.DictReader(lines):
        if row.get("Metric Name") != "gpu__time_duration.sum" or "Kernel Name" not in row:
            continue
        value = float(row["Metric Value"].replace(",", ""))
        unit = row.get("Metric Unit", "nsecond")
        out.append((row["Kernel Name"], value / 1e3 if unit.startswith("n") else value if unit.startswith("u")
                    else value * 1e3))
    if not out:
        raise ValueError("no gpu__time_duration.sum rows (run ncu with --metrics gpu__time_duration.sum --csv "
                         "--log-file PATH)")
    return out


def summarize(path: str, steps: int) -> None:
    per: dict[str, list[float]] = defaultdict(list)
    for kernel, us in kernel_times(path):
        per[_family(kernel)].append(us)
    total = sum(sum(v) for v in per.values())
    launches = sum(len(v) for v in per.values())
    print(f"device time per step: {total / steps:.1f} us over {launches / steps:.0f} kernel launches ({path})")
    print("| kernel | launches/step | us/step | share |\n|---|---|---|---|")
    for name, v in sorted(per.items(), key=lambda kv: -sum(kv[1])):
        print(f"| `{name}` | {len(v) / steps:.0f} | {sum(v) / steps:.1f} | {100 * sum(v) / total:.1f}% |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", nargs="?")
    p.add_argument("--config", default="stock",
                   help="stock, default (patch() as users call it) or an ab_decode.py config such as moe+qk+fuse")
    p.add_argument("--steps", type=int, default=1)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--time", action="store_true", help="time steps instead of bracketing them for ncu")
    mode.add_argument("--graph", action="store_true", help="count the primitives of one decode step, by kind")
    p.add_argument("--cache-dir", default="/tmp/zmlx-synth")
    p.add_argument("--summarize", metavar="CSV")
    args = p.parse_args(argv)
    if args.summarize:
        try:
            summarize(args.summarize, args.steps)
        except (KeyError, ValueError) as e:  # unreadable, or not an ncu --csv log
            print(f"profile_decode: error: cannot summarize {args.summarize}: {type(e).__name__}: {e}", file=sys.stderr)
            return 2
        return 0
    if not args.model:
        p.error("MODEL is required unless --summarize")
    model, prompt = _model(args.model, args.config, args.cache_dir)
    if args.graph:
        print_census(graph_census(model, prompt), len(getattr(model, "layers", [])))
        return 0
    (time_steps if args.time else profile_steps)(model, prompt, args.steps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
