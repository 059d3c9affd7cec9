"""``python -m zmlx.patch list``: the support matrix (model_type, patterns, defaults, exclusions and why)."""

from __future__ import annotations

import sys

from .families import MoeSite
from .patterns import PATTERNS
from .registry import DEFAULT_PATTERNS, FAMILIES
from .registry import PATTERNS as PATTERN_NAMES

USAGE = "usage: python -m zmlx.patch list"


def support_matrix() -> list[str]:
    lines = [f"{'model_type':<14} {'default patterns':<46} {'opt-in / excluded':<56} notes"]
    for name, fam in FAMILIES.items():
        on = [p for p in DEFAULT_PATTERNS if p in fam.sites and p not in fam.excluded]
        off = ([f"{p} (opt-in{'; on by default on CUDA' if p in fam.on_cuda else ''})" for p in PATTERN_NAMES
                if p in fam.opt_in] + [f"{p} (excluded)" for p in fam.excluded]
               + [f"{p} (unfused: off on CUDA)" for p in fam.slow_on_cuda])
        notes = []
        moe = next((s for s in fam.sites.get("moe_mlp", ()) if isinstance(s, MoeSite)), None)
        if moe is not None:
            notes.append(f"gating={moe.gating.op}" + (f", shared={moe.shared}" if moe.shared != "none" else ""))
            if not PATTERNS["moe_mlp"].compilable(moe):
                notes.append("moe_mlp not traced")
        if fam.fuse_on_cuda:
            notes.append("projections fused on CUDA")
        if fam.aliases:
            notes.append(f"also: {', '.join(fam.aliases)}")
        lines.append(f"{name:<14} {', '.join(on) or '-':<46} {', '.join(off) or '-':<56} {'; '.join(notes)}")
    reasons = {r for fam in FAMILIES.values() for r in (*fam.opt_in.values(), *fam.excluded.values())}
    reasons |= {f"{name} {p} off on CUDA: {r}" for name, fam in FAMILIES.items() for p, r in fam.slow_on_cuda.items()}
    reasons |= {f"{name} projections fused on CUDA (fuse_projections=None): {fam.fuse_on_cuda}"
                for name, fam in FAMILIES.items() if fam.fuse_on_cuda}
    reasons |= {f"{name} {p} on by default on CUDA: {r}" for name, fam in FAMILIES.items() for p, r in fam.on_cuda.items()}
    if not any(fam.excluded for fam in FAMILIES.values()):
        lines.append("")
        lines.append("excluded for fidelity: none (no measured break yet; exclusions need a failing GPU run)")
    if any("moe_mlp not traced" in line for line in lines):
        reasons.add("moe_mlp not traced (compile_blocks): traced `y + sigmoid(g) * shared` rounds differently; greedy "
                    "tokens diverged at 61-94 on the H100 for qwen2_moe, qwen3_next, qwen3_5_moe (docs/gpu-test-log.md)")
    if reasons:
        lines.append("")
        lines.extend(f"why: {r}" for r in sorted(reasons))
    lines.append("")
    lines.extend(f"{name:<16} {p.summary}" for name, p in PATTERNS.items())
    return lines


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args != ["list"]:
        print(USAGE, file=sys.stderr)
        return 2
    print("\n".join(support_matrix()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
