"""``zmlx-bench``: run benchmarks into repro capsules, and read, compare and describe them.

Exit codes: 0 done; 1 a run finished and its capsule was written, but a model's patched tokens diverged (fidelity
FAIL); 2 bad usage, an unreadable capsule or a model that cannot be loaded (one line on stderr, no traceback);
3 the capsule was written, no model FAILed, but a model's stock baseline was not deterministic (UNSTABLE: no token
comparison can pass there); 130 interrupted (Ctrl-C), nothing written.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import msgspec
from zmlx.patch import switches  # light: the flags, no mlx-lm import

from . import compare, report, stats
from .capsule import SCHEMA_TAG, Capsule, CapsuleError, json_schema, load_capsule, save_capsule

__all__ = ["main"]


def _names(values: list[str] | None) -> list[str] | None:
    """``--patterns a,b --patterns c`` -> ["a", "b", "c"]; None when the flag was not given."""
    if values is None:
        return None
    return [n.strip() for v in values for n in v.split(",") if n.strip()]


def _nonneg(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {v}")
    return v


def _positive(text: str) -> int:
    v = _nonneg(text)
    if v == 0:
        raise argparse.ArgumentTypeError("must be >= 1, got 0")
    return v


def _fail(msg: str, code: int = 2) -> int:
    print(f"error: {msg}", file=sys.stderr)
    return code


def _writable_dir(path: Path) -> str | None:
    """Why a file cannot be written in ``path``, or None; checked before a long run, creating nothing (the
    folder itself is made only when the capsule is written, so an interrupted run leaves nothing behind)."""
    probe = path.resolve()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        return f"cannot write into {path}: {probe} is not a directory"
    if not os.access(probe, os.W_OK):
        return f"output directory {probe} is not writable"
    return None


def _cmd_run(args: argparse.Namespace) -> int:
    from zmlx.validate.record import PASS, UNSTABLE

    from .run import BenchError, resolve_out, run_models

    if args.out is not None:
        target = Path(args.out)
        as_dir = target.is_dir() or args.out.endswith(("/", "\\"))
        why = _writable_dir(target if as_dir else (target.parent if str(target.parent) else Path(".")))
        if why:
            return _fail(why)
    patterns, exclude = _names(args.patterns), _names(args.exclude) or []
    from zmlx.patch import list_patterns

    # Checked before any model loads: a typo should not cost a multi-minute checkpoint load.
    unknown = [p for p in (patterns or []) + exclude if p not in list_patterns()]
    if unknown:
        return _fail(f"unknown pattern(s) {', '.join(unknown)}; known: {', '.join(list_patterns())}")
    try:
        capsule = run_models(
            args.models, runs=args.runs, max_tokens=args.max_tokens, prompt_tokens=args.prompt_tokens,
            warmup=args.warmup, seed=args.seed, max_fused_tokens=args.max_fused_tokens,
            fuse_projections=args.fuse_projections, compile_blocks=args.compile_blocks,
            fuse_router=args.fuse_router, fuse_qkv=args.fuse_qkv, fuse_conv_proj=args.fuse_conv_proj,
            patterns=patterns,
            exclude=exclude, cache_dir=args.cache_dir, resamples=args.resamples, kernels=args.kernels,
            command=["zmlx-bench", *args.argv], quiet=args.quiet,
        )
        if args.note:
            capsule = msgspec.structs.replace(capsule, note=args.note)
        path = resolve_out(args.out, capsule, args.models)
        save_capsule(path, capsule)
    except KeyboardInterrupt:
        print("\ninterrupted: no capsule written", file=sys.stderr)
        return 130
    except BenchError as e:
        return _fail(str(e))
    if not args.quiet:
        print(report.format_capsule(capsule, str(path)))
    print(f"capsule written to {path}", file=sys.stderr)
    verdicts = {r.model: r.fidelity.verdict for r in capsule.results}
    failed = [m for m, v in verdicts.items() if v not in (PASS, UNSTABLE)]
    unstable = [m for m, v in verdicts.items() if v == UNSTABLE]
    if unstable:  # said even when another model FAILed: these models' verdicts are not the patch's doing
        print(f"error: fidelity UNSTABLE (stock mlx-lm is not deterministic here): {', '.join(unstable)}",
              file=sys.stderr)
        if args.quiet:  # the report (not printed when quiet) carries the explanation otherwise
            for line in report.unstable_notes(capsule):
                print(line, file=sys.stderr)
    if failed:
        return _fail(f"fidelity FAIL (patched tokens differ from baseline): {', '.join(failed)}", code=1)
    return 3 if unstable else 0


def _cmd_env(args: argparse.Namespace) -> int:
    from .env import collect_environment, format_environment

    env = collect_environment()
    if args.json:
        sys.stdout.write(msgspec.json.format(msgspec.json.encode(env), indent=2).decode() + "\n")
    else:
        print(format_environment(env))
    return 0


def _cmd_schema(args: argparse.Namespace) -> int:
    from zmlx.validate.record import write_json_atomic

    schema = json_schema()
    if args.out is None:
        sys.stdout.write(msgspec.json.format(msgspec.json.encode(schema), indent=2).decode() + "\n")
        return 0
    try:
        write_json_atomic(args.out, schema)  # type: ignore[arg-type]  # any msgspec-encodable object
    except OSError as e:
        return _fail(f"cannot write {args.out}: {e.strerror or e}")
    print(f"JSON Schema of {SCHEMA_TAG} written to {args.out}", file=sys.stderr)
    return 0


def _cmd_kernels(args: argparse.Namespace) -> int:
    from .env import collect_environment
    from .kernels import run_kernel_bench
    from .tables import render

    existing = None
    if args.out is not None and Path(args.out).exists():
        try:  # embed into an existing capsule; never overwrite a file that is not one
            existing = load_capsule(args.out)
        except CapsuleError as e:
            return _fail(f"--out: {e}")
    say = (lambda _m: None) if args.quiet else (lambda m: print(m, file=sys.stderr, flush=True))
    try:
        bench = run_kernel_bench(ops=_names(args.ops), repeats=args.repeats, iterations=args.iterations,
                                 progress=say)
    except KeyboardInterrupt:
        print("\ninterrupted: nothing written", file=sys.stderr)
        return 130
    if bench.backend == "cpu":
        print("note: no GPU backend on this machine: zmlx kernels cannot run here, so only the pure-MLX "
              "reference timings are shown", file=sys.stderr)
    if args.out is not None:
        if existing is not None:
            capsule = msgspec.structs.replace(existing, kernels=bench)
        else:
            created = dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")
            capsule = Capsule(created_utc=created, environment=collect_environment(), kernels=bench)
        try:
            save_capsule(args.out, capsule)
        except OSError as e:
            return _fail(f"cannot write {args.out}: {e.strerror or e}")
        print(f"kernel timings written to {args.out}", file=sys.stderr)
    print(render(report.KERNEL_HEADERS, report.kernel_rows(Capsule(
        created_utc="", environment=collect_environment(), kernels=bench))))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="zmlx-bench",
        description="Benchmark zmlx against unpatched mlx-lm into versioned repro capsules "
                    f"({SCHEMA_TAG}); report, compare and describe them.",
    )
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    r = sub.add_parser("run", help="benchmark models (baseline vs patched, interleaved) into one capsule")
    r.add_argument("models", nargs="+", metavar="MODEL", help="hub id, local path or synthetic:NAME")
    r.add_argument("--runs", "-n", type=_positive, default=5, help="measured runs per side (default 5)")
    r.add_argument("--max-tokens", "-m", type=_positive, default=256,
                   help="tokens generated per run (default 256)")
    r.add_argument("--prompt-tokens", "-p", type=_positive, default=512, help="prompt length (default 512)")
    r.add_argument("--patterns", action="append", metavar="P[,P]",
                   help="patch only these patterns (default: each family's defaults)")
    r.add_argument("--exclude", action="append", metavar="P[,P]", help="patterns to leave out")
    r.add_argument("--warmup", type=_nonneg, default=1, help="unmeasured warm-up runs per side (default 1)")
    r.add_argument("--seed", type=int, default=0, help="seeds the prompt and the bootstrap (default 0)")
    r.add_argument("--max-fused-tokens", type=_nonneg, default=32,
                   help="fused path only for M <= this many tokens (default 32)")
    switches.add_arguments(r)  # --[no-]fuse-projections, --[no-]compile-blocks and the opt-ins
    r.add_argument("--out", "-o", metavar="PATH",
                   help="capsule file, or a directory to name it in (YYYYMMDD_device_models.json); "
                        "default: that name in the current directory")
    r.add_argument("--cache-dir", metavar="DIR", help="where synthetic:NAME checkpoints are built and cached")
    r.add_argument("--kernels", action="store_true", help="also run the kernel microbenchmark into the capsule")
    r.add_argument("--resamples", type=_positive, default=stats.DEFAULT_RESAMPLES,
                   help=f"bootstrap resamples for the speedup interval (default {stats.DEFAULT_RESAMPLES})")
    r.add_argument("--note", default="", help="free text stored in the capsule (e.g. what changed, or the commit "
                                              "when the machine has no git checkout)")
    r.add_argument("--quiet", "-q", action="store_true", help="no progress on stderr, no report on stdout")
    r.set_defaults(func=_cmd_run)

    rep = sub.add_parser("report", help="print capsule(s): environment, methodology, per-model table")
    report.add_arguments(rep)
    rep.set_defaults(func=report.run)

    c = sub.add_parser("compare", help="the same models in two capsules; is the change outside the noise?")
    compare.add_arguments(c)
    c.set_defaults(func=compare.run)

    e = sub.add_parser("env", help="the environment block alone (for bug reports)")
    e.add_argument("--json", action="store_true", help="as JSON, as it appears in a capsule")
    e.set_defaults(func=_cmd_env)

    s = sub.add_parser("schema", help=f"the JSON Schema of {SCHEMA_TAG}")
    s.add_argument("--out", "-o", metavar="PATH", help="write it here (e.g. docs/capsule.schema.json)")
    s.set_defaults(func=_cmd_schema)

    k = sub.add_parser("kernels", help="per-op microbenchmark, fused vs reference, decode and prefill")
    k.add_argument("--ops", action="append", metavar="OP[,OP]", help="only these ops")
    k.add_argument("--repeats", type=_positive, default=5, help="timed repeats, median taken (default 5)")
    k.add_argument("--iterations", type=_positive, default=20, help="calls per repeat (default 20)")
    k.add_argument("--out", "-o", metavar="PATH",
                   help="write the timings into this capsule (replacing its kernels section), or a new one")
    k.add_argument("--quiet", "-q", action="store_true", help="no progress on stderr")
    k.set_defaults(func=_cmd_kernels)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # recorded in the capsule's methodology.command
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
