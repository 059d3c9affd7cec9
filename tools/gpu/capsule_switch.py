"""A capsule with ab_decode's measurement switches set (module flags that are not patch() arguments):

    python3 tools/gpu/capsule_switch.py noq4core[,projfold] -- synthetic:MODEL --runs 5 ... --note "..."

Everything after ``--`` goes to ``zmlx-bench run``. The capsule records the switches as the run found them
(``methodology.switches``; ``zmlx-bench report`` shows those off their default); switches not named keep their
defaults (unlike ab_decode, which sets every one).
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from ab_decode import SWITCHES  # noqa: E402


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print(__doc__, file=sys.stderr)
        return 2
    names = [n for n in argv[0].split(",") if n]
    unknown = [n for n in names if n not in SWITCHES]
    if unknown:
        print(f"capsule_switch: unknown switch {', '.join(unknown)} (known: {', '.join(SWITCHES)})", file=sys.stderr)
        return 2
    for name in names:
        module, flag, value = SWITCHES[name]
        setattr(importlib.import_module(f"zmlx.patch.patterns.{module}"), flag, value)
    from zmlx.bench.cli import main as bench_main

    return bench_main(["run", *argv[2:]])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
