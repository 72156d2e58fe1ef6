"""Figures of chapter 10's quantisation sections, built on :mod:`qwen_anatomy.plotting`: one block on its
grid, the grids of every tensor by type, and the two stored copies of the tied matrix."""

from __future__ import annotations

import numpy as np

from ..plotting import figure, label
from .quant import DECODABLE, FORMATS


def type_figure(ex):
    """Left: one block's values (dots) on every point of its grid (grey lines; used points darker,
    0 dashed), codes on the right axis. Right: how often each code is used over all blocks measured."""
    fig, axes = figure(ncols=2, width=4.2, height=3.2)
    ax = axes[0, 0]
    used = set(np.unique(ex.values).tolist())
    for level in ex.grid:
        ax.axhline(
            level,
            color="0.45" if float(level) in used else "0.88",
            lw=0.6 if float(level) in used else 0.4,
            zorder=0,
        )
    ax.axhline(0.0, color="k", ls="--", lw=0.8, zorder=1)
    ax.plot(np.arange(ex.values.size), ex.values, "o", ms=4, zorder=2)
    lo_code, hi_code = FORMATS[ex.qtype]["codes"]
    # the grid's two ends, labelled with their codes
    for code, level in ((lo_code, ex.grid[0]), (hi_code, ex.grid[-1])):
        ax.annotate(f"code {code:+d}", (ex.values.size - 0.5, level), fontsize=7, va="center", ha="left",
                    annotation_clip=False)  # fmt: skip
    ax.grid(False)
    label(ax, "position in block", "value", f"{ex.qtype}: one block on its grid")
    ax = axes[0, 1]
    codes = np.arange(lo_code, hi_code + 1)
    share = ex.code_counts / max(ex.code_counts.sum(), 1)
    ax.bar(codes, share, width=1.0, color="C0")
    ax.set_yscale("log")
    label(ax, "code", "share of values (log scale)", f"{ex.qtype}: code usage")
    return fig


def show_type(ck, type_name: str, grids, model_label: str, heading: bool = False):
    """Chapter 10's section body for one GGUF type: the computed sentence about one real block
    (:func:`qwen_anatomy.weights.quant.example_sentence`) and, when the checkpoint stores the type, the
    block drawn on its grid (:func:`type_figure`). ``heading`` prefixes the type's name in bold (for
    the types listed after the chapter's own sections). Returns the figure or None."""
    from IPython.display import Markdown, display

    from . import quant

    ex = quant.type_example(ck, type_name, grids)
    text = quant.example_sentence(ex, type_name, model_label)
    display(Markdown(f"**{type_name}.** {text}" if heading else text))
    return type_figure(ex) if ex is not None else None


def grid_overview(table):
    """Per tensor, by type: distinct values per block against the most a block can hold, and the step
    relative to the block's largest magnitude (dots: tensors; short lines: the rule's nominal step)."""
    fig, axes = figure(ncols=2, width=4.0, height=3.2)
    types = [q for q in DECODABLE if q in set(table["qtype"])]
    rng = np.random.default_rng(0)
    for i, q in enumerate(types):
        sub = table[table["qtype"] == q]
        x = i + rng.uniform(-0.2, 0.2, len(sub))
        axes[0, 0].plot(x, sub["levels_mean"] / sub["levels_bound"], "o", ms=3, color=f"C{i}")
        axes[0, 1].plot(x, sub["step_rel_median"], "o", ms=3, color=f"C{i}")
        nominal = FORMATS[q]["nominal_step"]
        if nominal:
            axes[0, 1].hlines(nominal, i - 0.35, i + 0.35, color="k", lw=1)
    for ax in axes[0]:
        ax.set_xticks(range(len(types)), types)
    axes[0, 0].set_ylim(0, 1.05)
    axes[0, 1].set_yscale("log")
    label(
        axes[0, 0],
        "stored type",
        "distinct values per block / most possible",
        "How much of the grid a block uses",
    )
    label(axes[0, 1], "stored type", "step / block's largest |value| (log)", "Step of the grid")
    return fig


def tied_figure(report):
    """Left: per-row relative difference of the two copies, measured and predicted by the steps.
    Right: the measured difference against the row's norm (each row a point; density as colour)."""
    rows = report.rows.dropna(subset=["rel_diff"])
    s = report.summary
    fig, axes = figure(ncols=2, width=4.2, height=3.2)
    ax = axes[0, 0]
    lo = float(min(rows["rel_diff"].min(), rows["predicted_rel"].min()))
    hi = float(max(rows["rel_diff"].max(), rows["predicted_rel"].max()))
    edges = np.linspace(lo, hi, 120)
    ax.hist(rows["rel_diff"], bins=edges, histtype="stepfilled", alpha=0.6, label="measured ‖e−o‖/‖o‖")
    ax.hist(rows["predicted_rel"], bins=edges, histtype="step", color="k", label="predicted by the steps")
    ax.legend(fontsize=8)
    label(ax, "relative difference per row", "rows", f"{s['other_type']} vs {s['ref_type']}, per row")
    ax = axes[0, 1]
    hb = ax.hexbin(rows["ref_norm"], rows["rel_diff"], gridsize=60, bins="log", mincnt=1, cmap="viridis")
    fig.colorbar(hb, ax=ax, label="rows (log)")
    ax.grid(False)
    label(ax, f"row norm ‖o‖ ({s['ref_type']})", "relative difference", "Against the row's norm")
    return fig
