"""Interleaved A/B of patch configurations in ONE process on one host: decode ms per token, per configuration.

  python3 tools/gpu/ab_decode.py synthetic:qwen3-30b-a3b --configs stock moe moe+qk moe+qk+res --rounds 5

Capsules compare stock with one patched configuration across processes; this compares several configurations
against each other on the same loaded model (patch / unpatch between them), rounds interleaved, so host-to-host
noise cancels. Each configuration's greedy tokens are checked against stock's. A tool for deciding defaults; the
speed claims in docs still come from capsules.

A synthetic:NAME checkpoint is built on first use under --cache-dir (on the lent H100 qwen3-30b-a3b took over 3
minutes, gpt-oss-20b about 2): give the first call on a fresh host that time, or build with a short run first.

Config names join parts with '+': moe (moe_mlp), qk (qk_norm_rope), res (residual_norm), mlp (swiglu_mlp,
geglu_mlp), conv (conv_layer), fuse (fuse_projections=True), eager (compile_blocks=False); 'stock' is the unpatched
model, 'default' the model patched as users get it (patch() with no arguments). Switch parts turn one default-on
fusion off or one opt-in fusion on, alone or after 'default' (default+nofold, moe+conv+router...): 'nofold' keeps
traced layers (conv_layer, attention_layer) from folding the residual add into the expert launch; 'router', 'qkv'
and 'convproj' are the opt-ins patch(fuse_router=True), patch(fuse_qkv=True) and patch(fuse_conv_proj=True): the router projection inside the
routing launch (zk.quantized_router), the q/k/v projections inside the q/k norm + RoPE launch (zk.qkv_norm_rope),
LFM2's conv in_proj inside the short-conv launch (zk.short_conv_proj); 'noprologue' keeps compile_blocks from
tracing the qk_norm_rope attention prologue; 'noq4core' runs 4-bit top-k < 8 fused experts on the older
one-block-a-row kernels instead of zk.qmv's core (moe_experts_q4.py, the default since v11); 'q4step' runs those in
zk.qmv's step loop form instead of the batch form (every unrolled step's loads first; the default since v12); 'projfold' adds a traced layer's residuals inside its
o_proj and dense down_proj launches (zk.qmv_residual where quantized_linear patched them: default+layer+lin+projfold); 'normfold' runs a traced
layer's norms inside the q/k/v or gate/up launch that reads them (zk.qmv_many_norm); 'ropefold' a traced
Llama-style layer's q and k rotations as one launch (zk.rope_qk). Pattern parts after 'default' add opt-in patterns to the family's
defaults: default+layer is patch(patterns=defaults + ['attention_layer']) (layer: the decoder layer traced around
the KV-cache update and SDPA).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

PARTS = {"moe": ["moe_mlp"], "qk": ["qk_norm_rope"], "res": ["residual_norm"], "mlp": ["swiglu_mlp", "geglu_mlp"],
         "conv": ["conv_layer"], "layer": ["attention_layer"], "lin": ["quantized_linear"],
         "switch": ["quantized_switch_linear"]}
# switch part -> (pattern module, its module-level flag, the flag's value while a config naming the part runs;
# the opposite otherwise): measurement switches that are not patch() arguments
SWITCHES = {"nofold": ("_layer", "FOLD_RESIDUAL", False), "noprologue": ("qk_norm_rope", "TRACE_PROLOGUE", False),
            "noq4core": ("_experts", "QMV_CORE", False), "q4step": ("_experts", "Q4_BATCH", False), "projfold": ("_layer", "FOLD_PROJECTIONS", True),
            "normfold": ("_layer", "FOLD_NORMS", True), "ropefold": ("_layer", "FOLD_ROPE", True)}
# part -> the opt-in patch() argument it turns on, alone or after 'default'
OPT_INS = {"router": "fuse_router", "qkv": "fuse_qkv", "convproj": "fuse_conv_proj", "fuse": "fuse_projections"}
# in a parsed 'default+<pattern part>' configuration: the family's default patterns, the named ones added
DEFAULTS = "<defaults>"


def parse_config(name: str) -> tuple[list[str] | None, dict[str, bool]] | None:
    """'moe+qk+fuse' -> (patterns, patch kwargs); None for 'stock'; 'default' is patch() with no arguments."""
    if name == "stock":
        return None
    parts = name.split("+")
    if parts[0] == "default" and all(p in SWITCHES or p in OPT_INS or p in PARTS for p in parts[1:]):
        extra = [pattern for p in parts[1:] if p in PARTS for pattern in PARTS[p]]
        return ([DEFAULTS, *extra] if extra else None), {OPT_INS[p]: True for p in parts[1:] if p in OPT_INS}
    patterns: list[str] = []
    kwargs = {"fuse_projections": False, "compile_blocks": True}
    for part in parts:
        if part in SWITCHES:  # applied in main(), around this configuration's runs
            continue
        if part in OPT_INS:
            kwargs[OPT_INS[part]] = True
            continue
        if part == "fuse":
            kwargs["fuse_projections"] = True
        elif part == "eager":
            kwargs["compile_blocks"] = False
        elif part in PARTS:
            patterns += PARTS[part]
        else:
            known = [*PARTS, "fuse", "eager", *SWITCHES, *OPT_INS]
            raise SystemExit(f"ab_decode: unknown config part {part!r} in {name!r}; known: {', '.join(known)}")
    return patterns, kwargs


def patterns_for(model, patterns: list[str] | None) -> list[str] | None:
    """A parsed configuration's patterns for ``model``: DEFAULTS stands for its family's default patterns."""
    if patterns and patterns[0] == DEFAULTS:
        from zmlx.patch.registry import FAMILIES, detect_model_type

        return FAMILIES[detect_model_type(model)].default_patterns() + patterns[1:]
    return patterns


def apply_switches(name: str) -> None:
    """Set each switch's flag for configuration ``name``."""
    import importlib

    for switch, (module, flag, on) in SWITCHES.items():
        setattr(importlib.import_module(f"zmlx.patch.patterns.{module}"), flag, on == (switch in name.split("+")))


def with_config(model, name: str, cfg, fn):
    """``fn()`` with configuration ``name`` applied to ``model`` (its switches, then patch()), unpatched after."""
    from zmlx.patch import patch, unpatch

    apply_switches(name)
    if cfg is not None:
        patch(model, patterns=patterns_for(model, cfg[0]), verbose=False, **cfg[1])
    try:
        return fn()
    finally:
        unpatch(model)


def rotation(names: list[str], rnd: int) -> list[str]:
    """The configurations' order in round ``rnd``: rotated each round so none always follows the same one."""
    return names[rnd % len(names):] + names[: rnd % len(names)]


# Tokens not timed at the start of each decode: a configuration is re-patched every round, so its first decode steps
# trace its blocks again (compile_blocks), a cost a user who patches once pays once per process, not per token
UNTIMED = 4


def decode(model, prompt, n: int) -> tuple[list[int], float]:
    """Greedy tokens and wall ms per token after the first UNTIMED (mlx-lm's pipelined generate_step)."""
    from mlx_lm.generate import generate_step
    from mlx_lm.sample_utils import make_sampler

    tokens, t0 = [], 0.0
    for i, (tok, _) in enumerate(generate_step(prompt, model, max_tokens=n, sampler=make_sampler(temp=0.0))):
        tokens.append(int(tok))
        if i == UNTIMED - 1:
            t0 = time.perf_counter()
    return tokens, (time.perf_counter() - t0) * 1e3 / (n - UNTIMED)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model")
    p.add_argument("--configs", nargs="+", default=["stock", "moe", "moe+qk"])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--max-tokens", "-m", type=int, default=128)
    p.add_argument("--prompt-tokens", type=int, default=128)
    p.add_argument("--cache-dir", default="/tmp/zmlx-synth")
    args = p.parse_args(argv)
    if args.max_tokens <= UNTIMED:
        p.error(f"--max-tokens must be more than the {UNTIMED} untimed tokens")
    configs = {name: parse_config(name) for name in args.configs}

    import mlx.core as mx
    from zmlx.validate import load_model

    model, _, _ = load_model(args.model, cache_dir=args.cache_dir)
    mx.random.seed(0)
    prompt = mx.random.randint(0, model.args.vocab_size, (args.prompt_tokens,))
    ms: dict[str, list[float]] = {c: [] for c in configs}
    ref: list[int] | None = None
    diverged: dict[str, int] = {}
    names = list(configs)
    paired: dict[str, list[float]] = {c: [] for c in configs}  # stock ms / config ms within one round
    for rnd in range(args.rounds + 1):  # round 0 warms every configuration up (compiles, traces)
        for name in rotation(names, rnd):
            toks, per_token = with_config(model, name, configs[name], lambda: decode(model, prompt, args.max_tokens))
            if name == "stock" and ref is None:
                ref = toks
            if ref is not None and toks != ref:
                diverged.setdefault(name, next((i for i, (a, b) in enumerate(zip(ref, toks)) if a != b), len(toks)))
            if rnd:
                ms[name].append(per_token)
        if rnd and "stock" in ms:
            for name in names:
                paired[name].append(ms["stock"][-1] / ms[name][-1])
        if rnd:  # progress, in case the host's time limit cuts the run short
            print(f"round {rnd}: " + " ".join(f"{n}={ms[n][-1]:.2f}" for n in names), flush=True)
    print(f"{args.model}: {args.max_tokens} tokens x {args.rounds} rounds, interleaved; ms/token median [min, max];"
          " speedup = median over rounds of stock/config within the round [min, max]")
    for name, xs in ms.items():
        med = statistics.median(xs)
        pr = paired[name]
        rel = f"  x{statistics.median(pr):.3f} [{min(pr):.3f}, {max(pr):.3f}]" if pr else ""
        tok = f"  DIVERGES at token {diverged[name]}" if name in diverged else ("  tokens = stock" if ref else "")
        print(f"  {name:<18} {med:7.2f} [{min(xs):.2f}, {max(xs):.2f}]{rel}{tok}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
