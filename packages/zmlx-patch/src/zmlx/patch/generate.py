"""zmlx-generate: mlx_lm.generate with zmlx patches applied (``python -m zmlx.patch.generate``).

Loads with ``mlx_lm.load``, patches, generates with ``stream_generate`` and prints the text plus mlx-lm's own
prompt_tps / generation_tps / peak_memory lines.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import switches
from .registry import PATTERNS

DEFAULT_PROMPT = "hello"
DEFAULT_MAX_TOKENS = 100


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line and exit 2, no usage dump
        print(f"zmlx-generate: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def _pattern_list(value: str) -> list[str]:
    names = [n.strip() for n in value.split(",") if n.strip()]
    unknown = [n for n in names if n not in PATTERNS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown pattern(s) {unknown}; known: {list(PATTERNS)}")
    return names


def _non_negative(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        n = -1
    if n < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value!r}")
    return n


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="zmlx-generate", description="Generate with an mlx-lm model patched by zmlx.")
    p.add_argument("--model", required=True, help="local model directory or Hugging Face repo id")
    p.add_argument("--prompt", "-p", default=DEFAULT_PROMPT, help="prompt text ('-' reads stdin)")
    p.add_argument("--max-tokens", "-m", type=_non_negative, default=DEFAULT_MAX_TOKENS)
    p.add_argument("--temp", type=float, default=0.0, help="sampling temperature (0 = greedy)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--ignore-chat-template", action="store_true", help="use the raw prompt")
    p.add_argument("--patterns", type=_pattern_list, default=None,
                   help="comma-separated patterns (overrides the family defaults)")
    p.add_argument("--exclude", type=_pattern_list, default=[], help="comma-separated patterns to skip")
    p.add_argument("--no-patch", action="store_true", help="run mlx-lm unpatched (baseline)")
    p.add_argument("--max-fused-tokens", type=_non_negative, default=32,
                   help="fused path only when a block sees at most this many tokens (default 32)")
    switches.add_arguments(p)
    return p


def _looks_local(model: str) -> bool:
    return model.startswith(("/", ".", "~")) or Path(model).exists()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.no_patch and (args.patterns or args.exclude):
        print("zmlx-generate: error: --no-patch cannot be combined with --patterns/--exclude", file=sys.stderr)
        return 2
    path = Path(args.model).expanduser()
    if _looks_local(args.model) and not path.is_dir():
        print(f"zmlx-generate: error: model directory not found: {args.model}", file=sys.stderr)
        return 2
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt

    import mlx.core as mx
    import mlx_lm
    from mlx_lm.sample_utils import make_sampler

    from . import patch

    try:
        model, tokenizer = mlx_lm.load(str(path) if path.is_dir() else args.model)
    except Exception as e:  # any load failure is a usage error for the CLI
        print(f"zmlx-generate: error: cannot load model {args.model}: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    if not args.no_patch:
        patch(model, patterns=args.patterns, exclude=args.exclude, max_fused_tokens=args.max_fused_tokens,
              **switches.given(args))
    if args.seed is not None:
        mx.random.seed(args.seed)
    if not args.ignore_chat_template and getattr(tokenizer, "chat_template", None):
        prompt = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )

    response = None
    print("=" * 10)
    for response in mlx_lm.stream_generate(
        model, tokenizer, prompt, max_tokens=args.max_tokens, sampler=make_sampler(temp=args.temp)
    ):
        print(response.text, end="", flush=True)
    print()
    print("=" * 10)
    if response is None:
        print("No text generated for this prompt")
        return 0
    print(f"Prompt: {response.prompt_tokens} tokens, {response.prompt_tps:.3f} tokens-per-sec")
    print(f"Generation: {response.generation_tokens} tokens, {response.generation_tps:.3f} tokens-per-sec")
    print(f"Peak memory: {response.peak_memory:.3f} GB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
