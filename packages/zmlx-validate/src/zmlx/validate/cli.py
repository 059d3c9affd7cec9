"""zmlx-validate: is a zmlx-patched model token-identical to stock mlx-lm? (also ``python -m zmlx.validate``)

Exit status: 0 PASS, 1 FAIL, 2 usage or load error (one line on stderr, no traceback), 3 UNSTABLE (the stock model
is not deterministic on this machine, so no token comparison can pass).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator, Sequence
from typing import Any

from zmlx.patch import switches  # light: the flags, no mlx-lm import

from .prompt import DEFAULT_PROMPT

EXIT_PASS, EXIT_FAIL, EXIT_USAGE, EXIT_UNSTABLE = 0, 1, 2, 3
EPILOG = ("exit status: 0 PASS; 1 FAIL (a patched run's tokens differ from the baseline's); 2 usage or load error; "
          "3 UNSTABLE (the stock model is not deterministic here: its own runs differ, so no token comparison can "
          "pass; on CUDA, MLX's cuDNN attention is the known cause and MLX_CUDA_USE_CUDNN_SDPA=0, an MLX setting, "
          "makes it deterministic)")


class UsageError(Exception):
    pass


def _names(value: str | None) -> list[str] | None:
    if value is None:
        return None
    return [v.strip() for v in value.split(",") if v.strip()]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="zmlx-validate",
        description="Greedy-decode a model unpatched and zmlx-patched, alternating runs, and compare every token.",
        epilog=EPILOG,
    )
    p.add_argument("model", nargs="?", default=None, metavar="MODEL",
                   help="local mlx-lm folder, Hugging Face id, or synthetic:NAME "
                        "(default: synthetic:qwen3-moe-tiny, built offline)")
    p.add_argument("--model", dest="model_opt", default=None, help=argparse.SUPPRESS)  # mlx-lm's spelling
    p.add_argument("--max-tokens", "-m", type=int, default=500, help="tokens generated per run (default 500)")
    p.add_argument("--runs", type=int, default=5, help="timed runs per side, alternating (default 5)")
    p.add_argument("--warmup", type=int, default=1, help="warm-up runs per side before timing (default 1)")
    p.add_argument("--prompt", "-p", default=DEFAULT_PROMPT, help="prompt text (default: a fixed question)")
    p.add_argument("--ignore-chat-template", action="store_true", help="encode the prompt as plain text")
    p.add_argument("--patterns", default=None, help="comma-separated patterns to apply (default: patch()'s)")
    p.add_argument("--exclude", default=None, help="comma-separated patterns to leave out")
    p.add_argument("--max-fused-tokens", type=int, default=32,
                   help="fused path only when a block sees at most this many tokens (default 32)")
    switches.add_arguments(p)  # --[no-]fuse-projections, --[no-]compile-blocks and the opt-ins
    p.add_argument("--prefill-step-size", type=int, default=2048, help="prompt chunk size, both sides (2048)")
    p.add_argument("--seed", type=int, default=0, help="seed of synthetic weights and of MLX's RNG (default 0)")
    p.add_argument("--json", metavar="PATH", default=None, help="write the ValidationRecord as JSON (atomic)")
    p.add_argument("--bisect", action="store_true", help="on FAIL, find the first breaking pattern and layer")
    p.add_argument("--cache-dir", default=None,
                   help="synthetic checkpoint cache (default: $XDG_CACHE_HOME/zmlx/synthetic or "
                        "~/.cache/zmlx/synthetic)")
    p.add_argument("--list-synthetic", action="store_true",
                   help="list synthetic checkpoints with parameter counts and on-disk sizes, then exit")
    p.add_argument("--stats", action="store_true",
                   help="print greedy token diversity and top1-top2 margins instead of validating "
                        "(with --list-synthetic: for every tiny checkpoint)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress display")
    return p


def _check_args(args: argparse.Namespace) -> None:
    if args.model_opt is not None:
        if args.model is not None and args.model != args.model_opt:
            raise UsageError("give MODEL once (positional or --model)")
        args.model = args.model_opt
    for flag, value, low in (("--max-tokens", args.max_tokens, 1), ("--runs", args.runs, 1),
                             ("--warmup", args.warmup, 0), ("--max-fused-tokens", args.max_fused_tokens, 0),
                             ("--prefill-step-size", args.prefill_step_size, 1)):
        if value < low:
            raise UsageError(f"{flag} must be >= {low}, got {value}")
    if not args.prompt:
        raise UsageError("--prompt must not be empty")
    args.patterns = _names(args.patterns)
    args.exclude = _names(args.exclude) or []


def _check_patterns(args: argparse.Namespace) -> None:
    from zmlx.patch import list_patterns

    known = list_patterns()
    unknown = [n for n in (args.patterns or []) + args.exclude if n not in known]
    if unknown:
        raise UsageError(f"unknown pattern(s) {', '.join(unknown)}; known: {', '.join(known)}")


@contextlib.contextmanager
def progress_display(quiet: bool) -> Iterator[Any]:
    """A rich progress bar on stderr, or None when quiet or stderr is not a terminal."""
    if quiet or not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("loading", total=None)

        def update(desc: str, n: int, total: int) -> None:
            bar.update(task, description=desc, advance=n, total=total)

        yield update


def _status(msg: str, quiet: bool) -> None:
    if not quiet and sys.stderr.isatty():
        print(msg, file=sys.stderr, flush=True)


def list_synthetic(args: argparse.Namespace, out: Any) -> int:
    from .synthetic import ZOO, estimate

    rows = []
    for spec in ZOO.values():
        size = estimate(spec)
        rows.append((spec.name, spec.model_type, f"{size.parameters / 1e6:,.1f}M",
                     f"{size.bytes / 1e9:,.3f} GB" if size.bytes >= 1e8 else f"{size.bytes / 1e6:,.2f} MB",
                     "tiny" if spec.tiny else f"full ({spec.source})"))
    out.write(f"{'name':18}{'model_type':14}{'params':>10}{'on disk':>13}  kind\n")
    for r in rows:
        out.write(f"{r[0]:18}{r[1]:14}{r[2]:>10}{r[3]:>13}  {r[4]}\n")
    if args.stats:
        out.write(f"\ngreedy quality over {args.max_tokens} tokens (seed {args.seed}):\n")
        for spec in ZOO.values():
            if spec.tiny:
                out.write(f"{spec.name:18}{_quality(args, 'synthetic:' + spec.name).line()}\n")
    return EXIT_PASS


def _quality(args: argparse.Namespace, model_spec: str | None):
    from .loading import load_model
    from .prompt import encode_prompt
    from .quality import greedy_quality

    model, tokenizer, _ = load_model(model_spec, cache_dir=args.cache_dir, seed=args.seed)
    ids = encode_prompt(tokenizer, args.prompt, chat_template=not args.ignore_chat_template)
    return greedy_quality(model, ids, args.max_tokens)


def validate(args: argparse.Namespace, out: Any) -> int:
    import mlx.core as mx

    from .bisect import bisect
    from .fidelity import default_patch_fns, run_fidelity
    from .loading import load_model
    from .prompt import encode_prompt
    from .record import PASS, UNSTABLE, ValidationRecord, write_json_atomic
    from .report import environment, mlx_env_vars, print_report

    patch_fn, unpatch_fn = args.patch_fns if getattr(args, "patch_fns", None) else default_patch_fns()
    mx.random.seed(args.seed)
    _status(f"loading {args.model or 'synthetic:qwen3-moe-tiny'} ...", args.quiet)
    model, tokenizer, name = load_model(args.model, cache_dir=args.cache_dir, seed=args.seed)
    prompt_ids = encode_prompt(tokenizer, args.prompt, chat_template=not args.ignore_chat_template)
    if not prompt_ids:
        raise UsageError("the prompt encodes to no tokens")
    patch_kwargs: dict[str, Any] = {"max_fused_tokens": args.max_fused_tokens}

    patch_kwargs.update(switches.given(args))
    if args.patterns is not None:
        patch_kwargs["patterns"] = args.patterns
    if args.exclude:
        patch_kwargs["exclude"] = args.exclude
    with progress_display(args.quiet) as progress:
        result = run_fidelity(model, tokenizer, prompt_ids=prompt_ids, max_tokens=args.max_tokens,
                              runs=args.runs, warmup=args.warmup, patch_kwargs=patch_kwargs,
                              prefill_step_size=args.prefill_step_size, progress=progress,
                              patch_fn=patch_fn, unpatch_fn=unpatch_fn)
    bisection = None
    if args.bisect and result.fidelity.verdict == "FAIL" and result.fidelity.first_divergence is not None:
        _status("bisecting ...", args.quiet)
        bisection = bisect(model, prompt_ids=prompt_ids, reference=result.baseline_tokens[0], info=result.patch,
                           patch_kwargs=patch_kwargs, patch_fn=patch_fn, unpatch_fn=unpatch_fn,
                           prefill_step_size=args.prefill_step_size)
    env, mlx_env = environment(), mlx_env_vars()
    print_report(out, name=name, result=result, tokenizer=tokenizer, max_tokens=args.max_tokens,
                 runs=args.runs, prompt_tokens=len(prompt_ids), bisection=bisection, backend=env["backend"],
                 mlx_env=mlx_env)
    if args.json:
        options = switches.effective(patch_kwargs)
        if result.patch.fuse_projections is not None:
            options["fuse_projections"] = result.patch.fuse_projections
        record = ValidationRecord(
            model=name, model_type=result.patch.model_type, patterns=result.patch.patterns,
            counts=result.patch.counts, max_tokens=args.max_tokens, runs=args.runs, warmup_runs=args.warmup,
            seed=args.seed, max_fused_tokens=args.max_fused_tokens, prompt=args.prompt,
            fidelity=result.fidelity, baseline=result.baseline, patched=result.patched,
            decode_speedup=result.decode_speedup, prefill_speedup=result.prefill_speedup,
            bisect=bisection, mlx_env=mlx_env, patch_options=options, **env,
        )
        write_json_atomic(args.json, record)
    verdict = result.fidelity.verdict
    return EXIT_PASS if verdict == PASS else EXIT_UNSTABLE if verdict == UNSTABLE else EXIT_FAIL


def main(argv: Sequence[str] | None = None, *, patch_fns: tuple[Any, Any] | None = None) -> int:
    """Entry point. ``patch_fns``: (patch, unpatch) replacements, for tests only."""
    from .loading import LoadError

    parser = build_parser()
    args = parser.parse_args(argv)  # argparse prints usage and exits 2 on bad flags
    args.patch_fns = patch_fns
    out = sys.stdout
    try:
        _check_args(args)
        if args.list_synthetic:
            return list_synthetic(args, out)
        if patch_fns is None:
            _check_patterns(args)
        if args.stats:
            q = _quality(args, args.model)
            out.write(f"{args.model or 'synthetic:qwen3-moe-tiny'}: {q.line()}\n")
            return EXIT_PASS
        return validate(args, out)
    except (UsageError, LoadError) as e:
        print(f"zmlx-validate: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except ImportError as e:
        print(f"zmlx-validate: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("zmlx-validate: interrupted", file=sys.stderr)
        return 130
