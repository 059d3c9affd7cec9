"""Interleaved A/B of prefill in ONE process: ms to the first token of a fresh 512-token prompt, per configuration.

  python3 tools/gpu/prefill_ab.py synthetic:llama-3-8b --configs stock default default+eager --rounds 8

Capsules time prefill as ``prompt_tokens / ttft`` (validate.generation: mlx-lm's generate_step, the prompt in one
chunk, then the first token). This times the same thing, and separately the prompt's forward alone (the cache
evaluated, as generate_step's prefill loop does), with configurations in ab_decode.py's names, patched and
unpatched between rounds so host drift cancels; each is timed on its second prompt after patching. A tool for finding what slows prefill; claims come from capsules.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from ab_decode import parse_config, rotation, with_config  # noqa: E402


def ttft_ms(model, prompt, decode: int = 1) -> tuple[float, float]:
    """(ms to the first token through generate_step, ms of the prompt's forward with the cache evaluated); the
    generation then goes on untimed to ``decode`` tokens (a capsule decodes 500 between its prompts)."""
    import mlx.core as mx
    from mlx_lm.generate import generate_step
    from mlx_lm.models.cache import make_prompt_cache
    from mlx_lm.sample_utils import make_sampler

    mx.synchronize()
    t0 = time.perf_counter()
    gen = generate_step(prompt, model, max_tokens=max(decode, 2), sampler=make_sampler(temp=0.0))
    next(gen)
    first = (time.perf_counter() - t0) * 1e3
    for _ in range(decode - 1):
        next(gen)
    gen.close()
    mx.synchronize()
    cache = make_prompt_cache(model)
    t0 = time.perf_counter()
    model(prompt[None, :-1], cache=cache)
    mx.eval([c.state for c in cache])
    return first, (time.perf_counter() - t0) * 1e3


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model")
    p.add_argument("--configs", nargs="+", default=["stock", "default"])
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--prompt-tokens", type=int, default=512)
    p.add_argument("--decode-tokens", type=int, default=1, help="tokens generated (untimed) after each first one")
    p.add_argument("--cache-dir", default="/tmp/zmlx-synth")
    args = p.parse_args(argv)
    configs = {name: parse_config(name) for name in args.configs}

    import mlx.core as mx
    from zmlx.validate import load_model

    model, _, _ = load_model(args.model, cache_dir=args.cache_dir)
    mx.random.seed(0)
    prompt = mx.random.randint(0, model.args.vocab_size, (args.prompt_tokens,)).astype(mx.uint32)
    first: dict[str, list[float]] = {c: [] for c in configs}
    fwd: dict[str, list[float]] = {c: [] for c in configs}
    names = list(configs)
    for rnd in range(args.rounds + 1):  # round 0 warms every configuration up
        for name in rotation(names, rnd):
            def run():
                ttft_ms(model, prompt)  # untimed: a patch traces its blocks on first use (capsules patch once, warm up)
                return ttft_ms(model, prompt, args.decode_tokens)

            a, b = with_config(model, name, configs[name], run)
            if rnd:
                first[name].append(a)
                fwd[name].append(b)
    print(f"{args.model}: {args.prompt_tokens}-token prompt x {args.rounds} rounds, interleaved; ms median [min, max]")
    base = statistics.median(first[names[0]])
    for name in names:
        f, w = first[name], fwd[name]
        print(f"  {name:<22} first token {statistics.median(f):7.2f} [{min(f):.2f}, {max(f):.2f}]"
              f"  x{base / statistics.median(f):.3f} vs {names[0]}   forward only {statistics.median(w):7.2f}"
              f" [{min(w):.2f}, {max(w):.2f}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
