"""Reversible class swap: a patched module keeps its instance, weights and attributes; only ``__class__`` changes.

The patched class is a cached subclass of the module's original class, so ``isinstance``, parameters,
``sharding_group`` and every attribute behave as before. Its ``__call__`` takes the pattern's fused path only while
the block sees at most ``max_fused_tokens`` tokens (decode) and otherwise runs the original class's ``__call__``
(prefill), so long inputs execute exactly mlx-lm's code. ``restore`` puts the original class back.

With ``compiled``, a block whose fused path takes only ``x`` runs it through ``mx.compile`` (one traced graph per
input shape, the module's arrays passed as live inputs so weight updates are seen): every later decode step replays
the traced primitives instead of rebuilding them in Python, which is most of a small block's host cost.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import mlx.core as mx
import mlx.nn as nn

# (original class, pattern name, max_fused_tokens, site, compiled) -> patched subclass; one class per combination so
# unpatching is a __class__ assignment (plus dropping the compiled function, the one per-instance attribute).
_CLASSES: dict[tuple[type, str, int, Any, bool], type] = {}
_COMPILED = "_zmlx_compiled"
_SUSPENDED = "_zmlx_suspended"  # the patched class of a module that core.suspended gave its original class for now

FusedFn = Callable[..., Any]


def token_count(x: mx.array) -> int:
    """Tokens a block sees: every leading dimension of a ``[..., D]`` activation."""
    return x.size // x.shape[-1] if x.ndim else 1


def compiled_fn(module: nn.Module, build: Callable[..., Callable[..., Any]], *args: Any) -> Callable[..., Any]:
    """The module's traced function: ``build(*args)`` on first use (no closure made per decode step), dropped by
    ``restore``."""
    fn = module.__dict__.get(_COMPILED)
    if fn is None:
        fn = build(*args)
        object.__setattr__(module, _COMPILED, fn)
    return fn


def forget_compiled(module: nn.Module) -> None:
    """Drop what ``compiled_fn`` built for ``module`` (its next call builds it again)."""
    module.__dict__.pop(_COMPILED, None)


def _trace_block(module: nn.Module, site: Any, fused: FusedFn) -> Callable[[mx.array], mx.array]:
    # inputs=module: its arrays are read at every call, so the traced graph never holds stale weights
    return mx.compile(lambda x: fused(module, site, x), inputs=module)


def has_collectives(module: nn.Module) -> bool:
    """A block sharded by ``model.shard()`` (its own ``sharding_group`` or sharded linears with a ``group``)."""
    return any(getattr(m, "sharding_group", None) is not None or getattr(m, "group", None) is not None
               for _, m in module.named_modules())


def patched_class(original: type, pattern: str, max_fused_tokens: int, site: Any, fused: FusedFn,
                  compiled: bool = False) -> type:
    """The subclass of ``original`` whose ``__call__`` runs ``fused(self, site, x, ...)`` for short inputs."""
    key = (original, pattern, max_fused_tokens, site, compiled)
    cls = _CLASSES.get(key)
    if cls is not None:
        return cls
    original_call = original.__call__

    def __call__(self, x, *args, **kwargs):
        if token_count(x) <= max_fused_tokens:
            if compiled and not args and not kwargs:
                return compiled_fn(self, _trace_block, self, site, fused)(x)
            return fused(self, site, x, *args, **kwargs)
        return original_call(self, x, *args, **kwargs)

    cls = type(
        original.__name__,
        (original,),
        {
            "__call__": __call__,
            "__module__": original.__module__,
            "__qualname__": original.__qualname__,
            "__doc__": original.__doc__,
            "_zmlx_original": original,
            "_zmlx_pattern": pattern,
            "_zmlx_max_fused_tokens": max_fused_tokens,
            "_zmlx_site": site,
            "_zmlx_compiled_path": compiled,
        },
    )
    _CLASSES[key] = cls
    return cls


def original_class(module: nn.Module) -> type | None:
    """The class a patched module had before patching, or None when it is not patched."""
    return type(module).__dict__.get("_zmlx_original")


def pattern_of(module: nn.Module) -> str | None:
    return type(module).__dict__.get("_zmlx_pattern")


def site_of(module: nn.Module) -> Any:
    """The site a patched module was patched with (None when it is not patched)."""
    return type(module).__dict__.get("_zmlx_site")


def swap(module: nn.Module, cls: type) -> None:
    module.__class__ = cls


def restore(module: nn.Module) -> bool:
    """Put the original class back; True when the module was patched (a suspended one included)."""
    original = original_class(module)
    suspended = module.__dict__.pop(_SUSPENDED, None)
    if original is None and suspended is None:
        return False
    forget_compiled(module)
    if original is not None:
        module.__class__ = original
    return True


def suspend(module: nn.Module) -> bool:
    """Give a patched module its original class until ``resume``; True when it was patched."""
    original = original_class(module)
    if original is None:
        return False
    module.__dict__[_SUSPENDED] = type(module)
    module.__class__ = original
    return True


def resume(module: nn.Module) -> None:
    """The patched class back, unless ``restore`` (unpatch) ran meanwhile."""
    cls = module.__dict__.pop(_SUSPENDED, None)
    if cls is not None:
        module.__class__ = cls
