"""patch / unpatch: walk the model, match blocks to their family's sites, swap classes (see _swap)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import mlx.nn as nn
from zmlx.kernels.backend import gpu_backend

from ._version import check_mlx_lm_version

# before anything reads mlx-lm's block code: a clear ImportError outside the versions the patterns reproduce
MLX_LM_VERSION = check_mlx_lm_version()

from . import _swap  # noqa: E402
from .families import resolve_class  # noqa: E402
from .patterns import PATTERNS  # noqa: E402
from .registry import (  # noqa: E402
    DEFAULT_PATTERNS,
    FAMILIES,
    FamilySpec,
    Site,
    detect_model_type,
    supported_model_types,
)
from .registry import PATTERNS as PATTERN_NAMES  # noqa: E402

PREFIX = "[zmlx.patch]"


@dataclass
class PatchResult:
    """What ``patch`` did. ``counts`` maps pattern -> modules patched by this call."""

    model_type: str | None
    patterns: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    # (module path, reason) for every module a pattern matched by class but did not patch
    skipped: list[tuple[str, str]] = field(default_factory=list)
    # pattern -> reason, for family exclusions / opt-ins that were not applied
    not_applied: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    message: str = ""
    # whether the quantized projections were fused (patch()'s fuse_projections, the family default resolved)
    fuse_projections: bool = False
    # the opt-in fusions asked for (fuse_router, fuse_qkv, fuse_conv_proj), in that order
    opt_ins: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def list_patterns(model_type: str | None = None) -> list[str]:
    """All pattern names, or the patterns ``patch`` applies by default to ``model_type``."""
    if model_type is None:
        return list(PATTERN_NAMES)
    family = _family(model_type)
    return family.default_patterns() if family else []


def _family(model_type: str) -> FamilySpec | None:
    from mlx_lm.utils import MODEL_REMAPPING

    return FAMILIES.get(MODEL_REMAPPING.get(model_type, model_type))


def _names(value: str | Iterable[str] | None, what: str) -> list[str] | None:
    if value is None:
        return None
    names = [value] if isinstance(value, str) else list(value)
    unknown = [n for n in names if n not in PATTERNS]
    if unknown:
        raise ValueError(f"unknown {what} {unknown}; known patterns: {list(PATTERN_NAMES)}")
    return names


def _select(family: FamilySpec, patterns: list[str] | None, exclude: list[str], result: PatchResult,
            on_cuda: bool) -> list[str]:
    if patterns is None:
        # the global defaults minus the family's exclusions, as the tour prints them
        chosen = [p for p in DEFAULT_PATTERNS if p not in family.excluded]
        result.not_applied.update(family.excluded)
        result.not_applied.update(family.opt_in)
        if family.slow_on_cuda and not result.fuse_projections and on_cuda:
            chosen = [p for p in chosen if p not in family.slow_on_cuda]
            result.not_applied.update({p: f"slower on CUDA: {r}" for p, r in family.slow_on_cuda.items()})
        if on_cuda:  # opt-ins measured faster on CUDA for this family
            chosen += [p for p in family.on_cuda if p not in chosen and p not in family.excluded]
            for p in family.on_cuda:
                result.not_applied.pop(p, None)
    else:
        chosen = list(dict.fromkeys(patterns))
        for p in chosen:
            if p in family.excluded:
                result.warnings.append(
                    f"{PREFIX} warning: '{p}' is excluded by default for {family.model_type} "
                    f"({family.excluded[p]}); applying it because patterns= asks for it"
                )
    return [p for p in chosen if p not in exclude]


def patch(
    model: nn.Module,
    patterns: str | Iterable[str] | None = None,
    exclude: str | Iterable[str] = (),
    max_fused_tokens: int = 32,
    verbose: bool = True,
    fuse_projections: bool | None = None,
    compile_blocks: bool = True,
    fuse_router: bool = False,
    fuse_qkv: bool = False,
    fuse_conv_proj: bool = False,
) -> PatchResult:
    """Swap the model's matching blocks for fused versions; no weights change.

    ``patterns`` overrides the family's defaults (and its exclusions, with a warning); ``exclude`` removes
    patterns; the fused path runs only when a block sees at most ``max_fused_tokens`` tokens.
    ``fuse_projections`` also fuses the quantized projections at one token (decode): the experts of an MoE block
    become two launches (gate+up+activation, down+combine) and a dense MLP's gate+up one launch, each with the
    numerics MLX itself uses for that call. ``None`` (default) takes the family's measured choice: on for the MoE
    families whose capsules decode faster on CUDA (registry.FUSE_ON_CUDA: qwen3_moe, lfm2_moe, gpt_oss, mixtral), off
    elsewhere, and off on Metal, where nothing has been measured (docs/perf-notes.md).
    ``compile_blocks`` (default on) runs each patched MoE block's decode path through ``mx.compile`` (one trace
    per input shape; later steps replay it without rebuilding the graph in Python); sharded blocks stay eager.
    Three opt-in fusions, bit-exact where they run (CUDA, bf16, one token) and off by default (docs/perf-notes.md):
    ``fuse_router`` runs an affine-quantized MoE router's projection inside the routing launch (slower on the
    H100's device, v7; with the ``residual_norm`` pattern the layer's add and norm join it); ``fuse_qkv`` runs
    attention's q/k/v projections inside the q/k norm + RoPE launch (qwen3 / lfm2 attention; in a layer traced
    by ``attention_layer`` the input norm too, and Llama-style attention's projections + RoPE as one launch);
    ``fuse_conv_proj`` LFM2's conv in_proj inside the short-conv launch (v8d).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"patch() needs an mlx.nn.Module, got {type(model).__name__}")
    if isinstance(max_fused_tokens, bool) or not isinstance(max_fused_tokens, int) or max_fused_tokens < 0:
        raise ValueError(f"max_fused_tokens must be an int >= 0, got {max_fused_tokens!r}")
    wanted = _names(patterns, "patterns")
    excluded = _names(exclude, "exclude") or []

    model_type = detect_model_type(model)
    result = PatchResult(model_type=model_type)
    family = FAMILIES.get(model_type) if model_type else None
    if family is None:
        what = f"model_type '{model_type}'" if model_type else "a model without a model_type"
        result.message = (
            f"{PREFIX} {what} is not supported; nothing patched. Supported: {', '.join(supported_model_types())}"
        )
        if verbose:
            print(result.message)
        return result

    on_cuda = gpu_backend() == "cuda"
    if fuse_projections is None:
        fuse_projections = bool(family.fuse_on_cuda) and on_cuda
    result.fuse_projections = bool(fuse_projections)
    result.opt_ins = [name for name, on in (("fuse_router", fuse_router), ("fuse_qkv", fuse_qkv),
                                            ("fuse_conv_proj", fuse_conv_proj)) if on]
    result.patterns = _select(family, wanted, excluded, result, on_cuda)
    # patterns kept on CUDA only because the projections are fused: a block whose projections cannot be fused
    # (e.g. MXFP4 experts) would run the slower unfused path, so it keeps its own code
    needs_fusing = set(family.slow_on_cuda) if wanted is None and fuse_projections and on_cuda else set()
    by_class: dict[type, tuple[str, Site]] = {}
    # first pattern per class wins; residual_norm last, so a whole-layer pattern asked for too takes it as a flag
    # whatever the order of `patterns`
    for name in sorted(result.patterns, key=lambda n: n == "residual_norm"):
        for site in family.sites.get(name, ()):
            cls = resolve_class(site.block)
            if cls is not None:
                if hasattr(site, "residual_norm") and "residual_norm" in result.patterns:  # a layer pattern fuses it
                    site = dataclasses.replace(site, residual_norm=True)
                if hasattr(site, "trace_attention") and "attention_layer" in result.patterns:  # LFM2: conv_layer's
                    site = dataclasses.replace(site, trace_attention=True)
                by_class.setdefault(cls, (name, site))

    counts: dict[str, int] = {}
    already = 0
    for path, module in model.named_modules():
        if _swap.original_class(module) is not None:
            already += 1
            continue
        hit = by_class.get(type(module))
        if hit is None:
            continue
        name, site = hit
        pattern = PATTERNS[name]
        if not pattern.applies(module, site):
            continue
        reason = pattern.check(module, site)
        if reason:
            result.skipped.append((path, f"{name}: {reason}"))
            continue
        if name in needs_fusing and not pattern.fusable(module, site):
            result.skipped.append((path, f"{name}: projections not fusable here, and unfused it is slower on CUDA "
                                         f"({family.slow_on_cuda[name]})"))
            continue
        for flag, on in (("fuse_projections", fuse_projections), ("fuse_router", fuse_router),
                         ("fuse_qkv", fuse_qkv), ("fuse_conv_proj", fuse_conv_proj)):
            if on and hasattr(site, flag):
                site = dataclasses.replace(site, **{flag: True})
        collectives = _swap.has_collectives(module)
        if compile_blocks and hasattr(site, "traced") and not collectives:  # patterns that trace themselves
            site = dataclasses.replace(site, traced=True)
        compiled = compile_blocks and pattern.compilable(site) and not collectives
        _swap.swap(module, _swap.patched_class(type(module), name, max_fused_tokens, site, pattern.fused, compiled))
        counts[name] = counts.get(name, 0) + 1

    result.counts = dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
    if already:
        result.message = f"{PREFIX} {already} modules were already patched (left as they are)"
    if verbose:
        _print(result)
    return result


def _print(result: PatchResult) -> None:
    for line in result.warnings:
        print(line)
    print(f"{PREFIX} Applying {len(result.patterns)} patterns: {result.patterns}")
    if result.total:
        print(f"Patched {result.total} modules:")
        for name, n in result.counts.items():
            print(f"  {name}: {n}")
    else:
        print("Patched 0 modules.")
    if result.fuse_projections and {"moe_mlp", "swiglu_mlp", "geglu_mlp"} & set(result.counts):
        print(f"{PREFIX} fuse_projections: quantized projections fused at decode")
    skipped: dict[str, int] = {}
    for _, why in result.skipped:  # one line per reason, not per module
        skipped[why] = skipped.get(why, 0) + 1
    for why, n in skipped.items():
        print(f"{PREFIX} skipped {n} module{'s' if n > 1 else ''}: {why}")
    if result.opt_ins and result.total:
        print(f"{PREFIX} opt-in fusions (bit-exact where they run; see docs/perf-notes.md): {', '.join(result.opt_ins)}")
    slow = [p for p, why in result.not_applied.items() if why.startswith("slower on CUDA")]
    if slow:  # left out for speed, not fidelity: say so, and how to have them anyway
        print(f"{PREFIX} left out on CUDA, measured slower here: {', '.join(slow)} (patch(model, patterns=[...]) "
              f"applies them; python -m zmlx.patch list says why)")
    if result.message:
        print(result.message)


def unpatch(model: nn.Module) -> int:
    """Give every patched module its original class back; returns how many were restored."""
    return sum(_swap.restore(module) for _, module in model.named_modules())


@contextmanager
def suspended(model: nn.Module) -> Iterator[int]:
    """Run ``model`` unpatched inside the block, then patched again, without re-patching.

    Every patched module gets its original class back on entry (its code runs exactly as unpatched) and its patched
    class on exit; what patching built per module (compile_blocks' traced graphs) is kept, so a patched run after the
    block pays no re-tracing. Yields how many modules were suspended; ``unpatch`` inside the block ends their patch
    for good. For interleaved baseline / patched runs of one loaded model (zmlx-validate, zmlx-bench).
    """
    held = [module for _, module in model.named_modules() if _swap.suspend(module)]
    try:
        yield len(held)
    finally:
        for module in held:
            _swap.resume(module)
