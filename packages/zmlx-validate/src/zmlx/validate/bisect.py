"""Find the first pattern, then the first decoder layer, that alone breaks token identity.

Each probe patches a subset, generates greedily until the first token that differs from the baseline's (or
``max_tokens``), and unpatches. Layer probes patch everything the pattern matches and then put the original class
back on every module outside ``layers[i]``: zmlx.patch swaps classes in place, so a module whose class changed
was patched, and restoring its class un-patches it (``unpatch`` afterwards finds nothing left to do there).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from .fidelity import PatchFn, PatchInfo, UnpatchFn
from .generation import first_mismatch, greedy_run
from .record import Bisection

_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)(?:\.|$)")


def layer_of(path: str) -> int | None:
    m = _LAYER.search(path)
    return int(m.group(1)) if m else None


class _Prober:
    def __init__(self, model: Any, prompt_ids: Sequence[int], reference: Sequence[int], patch_fn: PatchFn,
                 unpatch_fn: UnpatchFn, patch_kwargs: dict[str, Any], prefill_step_size: int):
        self.model, self.prompt_ids, self.reference = model, list(prompt_ids), list(reference)
        self.patch_fn, self.unpatch_fn = patch_fn, unpatch_fn
        self.kwargs = {"verbose": False, **patch_kwargs}
        self.prefill_step_size = prefill_step_size

    def _generate(self) -> int | None:
        run = greedy_run(self.model, self.prompt_ids, len(self.reference), stop_on_mismatch=self.reference,
                         prefill_step_size=self.prefill_step_size)
        return first_mismatch(self.reference[: len(run.tokens)], run.tokens)

    def probe(self, patterns: list[str] | None, layer: int | None = None) -> tuple[int | None, list[str]]:
        """First divergent position (None: identical) and the module paths that were patched."""
        before = {path: type(m) for path, m in self.model.named_modules()}
        kwargs = dict(self.kwargs)
        if patterns is not None:
            kwargs["patterns"] = patterns
        self.patch_fn(self.model, **kwargs)
        try:
            patched = []
            for path, module in self.model.named_modules():
                if before.get(path, type(module)) is type(module):
                    continue
                if layer is not None and layer_of(path) != layer:
                    module.__class__ = before[path]  # un-patch outside the probed layer
                else:
                    patched.append(path)
            if not patched:
                return None, []
            return self._generate(), patched
        finally:
            self.unpatch_fn(self.model)


def bisect(model: Any, *, prompt_ids: Sequence[int], reference: Sequence[int], info: PatchInfo,
           patch_kwargs: dict[str, Any], patch_fn: PatchFn, unpatch_fn: UnpatchFn,
           prefill_step_size: int = 2048) -> Bisection:
    """Narrow a FAIL down to a pattern and a layer. ``reference`` is the baseline's token sequence."""
    prober = _Prober(model, prompt_ids, reference, patch_fn, unpatch_fn, patch_kwargs, prefill_step_size)
    applied = [p for p in info.patterns if info.counts.get(p, 0) > 0] or list(info.patterns)
    full_pos, _ = prober.probe(None)
    if full_pos is None:
        return Bisection(note="the patched model matched the baseline when re-run: the divergence is not "
                              "deterministic")
    pattern: str | None = None
    position = full_pos
    for name in applied:
        pos, _ = prober.probe([name])
        if pos is not None:
            pattern, position = name, pos
            break
    subset = [pattern] if pattern is not None else None
    n_layers = len(getattr(model, "layers", None) or [])
    for i in range(n_layers):
        pos, modules = prober.probe(subset, layer=i)
        if pos is not None:
            return Bisection(pattern=pattern, layer=i, modules=modules, position=pos,
                             note="" if pattern else "no single pattern diverges alone; layer found with all")
    note = ("no single layer diverges alone; the divergence needs several layers patched"
            if n_layers else "the model has no `layers` list to bisect")
    if pattern is None:
        note = "no single pattern diverges alone (the combination does); " + note
    return Bisection(pattern=pattern, position=position, note=note)
