"""``zmlx-bench report --plot``: per-run decode tok/s of both sides, one panel per model (matplotlib)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from .capsule import Capsule

__all__ = ["PlotUnavailable", "plot_decode_runs"]


class PlotUnavailable(Exception):
    """matplotlib is not installed, or the image cannot be written."""


def plot_decode_runs(capsules: Sequence[tuple[str, Capsule]], out: str | os.PathLike[str]) -> None:
    """Write a PNG: decode tok/s of each measured run, baseline and patched, for every model."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: no display needed on servers or in CI
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        raise PlotUnavailable(
            "--plot needs matplotlib, which is not installed: pip install 'zmlx-bench[plot]'"
        ) from None
    panels = [(path, r) for path, c in capsules for r in c.results]
    if not panels:
        raise PlotUnavailable("--plot: the capsule(s) hold no model results to plot")
    cols = min(2, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6 * cols, 3.6 * rows), squeeze=False)
    for ax, (path, r) in zip(axes.flat, panels, strict=False):
        for side, values, marker in (("baseline", r.baseline.decode_tps, "o"),
                                     ("patched", r.patched.decode_tps, "s")):
            ax.plot(range(1, len(values) + 1), values, marker=marker, label=side)
        lo, hi = r.summary.decode_speedup_ci95
        ax.set_title(f"{r.model}\nx{r.summary.decode_speedup:.3f} [{lo:.3f}, {hi:.3f}]  ({Path(path).name})",
                     fontsize=9)
        ax.set_xlabel("measured run")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("decode tok/s")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.tight_layout()
    try:
        fig.savefig(out, dpi=120)
    except OSError as e:
        raise PlotUnavailable(f"--plot: cannot write {out}: {e.strerror or e}") from None
    finally:
        plt.close(fig)
