"""The one plotting helper: figure size, style, labels and saving (used by every chapter).

Strand-specific figures live beside their analyses (e.g. ``qwen_anatomy.weights.plots``) and are built
from these functions, so every figure in the book shares one look.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

STYLE = {
    "figure.dpi": 110,
    "savefig.dpi": 150,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "font.size": 10,
    "axes.titlesize": 11,
    "legend.frameon": False,
}


def use_style() -> None:
    matplotlib.rcParams.update(STYLE)


def figure(ncols: int = 1, nrows: int = 1, width: float = 6.4, height: float = 3.6, **kwargs):
    """(fig, axes) with the house style; width/height are per panel, in inches."""
    import matplotlib.pyplot as plt

    use_style()
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False, **kwargs)
    fig.set_layout_engine("constrained")
    return fig, (axes[0, 0] if nrows == ncols == 1 else axes)


def label(ax, xlabel: str, ylabel: str, title: str | None = None) -> None:
    """Every axis labelled (with units in the label text)."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)


def save(fig, path: str | Path, formats: Sequence[str] = ("png",)) -> list[Path]:
    """Save a figure in each format (path's suffix is replaced); returns the written paths."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for fmt in formats:
        target = path.with_suffix(f".{fmt}")
        fig.savefig(target, bbox_inches="tight")
        written.append(target)
    return written


def heatmap(ax, matrix, xlabel: str, ylabel: str, title: str, cbar_label: str, cmap: str = "viridis", **kw):
    """A labelled matrix image with its colour bar (e.g. a layer x head map)."""
    im = ax.imshow(matrix, aspect="auto", cmap=cmap, interpolation="nearest", **kw)
    ax.grid(False)
    label(ax, xlabel, ylabel, title)
    ax.figure.colorbar(im, ax=ax, label=cbar_label)
    return im
