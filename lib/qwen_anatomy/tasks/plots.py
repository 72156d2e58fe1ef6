"""Figures of chapter 30_synthetic_tasks, built on qwen_anatomy.plotting (one look for the book)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ..plotting import figure, label

ORDER_STYLE = {"forward": {"color": "tab:blue", "ls": "-"}, "inverse": {"color": "tab:red", "ls": "--"}}


def plot_output_statistics(ys_by_task: Mapping[str, Sequence[Sequence[int]]]):
    """Mean and spread of y_i against position i, one panel per task (the targets' shape)."""
    import numpy as np

    fig, axes = figure(ncols=len(ys_by_task), width=3.6, height=3.0)
    axes = np.atleast_1d(axes).ravel()
    for ax, (name, ys) in zip(axes, ys_by_task.items(), strict=True):
        arr = np.asarray(ys, dtype=float)
        pos = np.arange(arr.shape[1])
        lo, hi = np.percentile(arr, [10, 90], axis=0)
        ax.fill_between(pos, lo, hi, alpha=0.25, label="10-90th percentile")
        ax.plot(pos, arr.mean(0), marker="o", ms=3, label="mean")
        label(ax, "output position i", "value of y_i", name)
    axes[0].legend(loc="best", fontsize=8)
    return fig


def plot_curves(curves: Mapping[str, dict], title: str = "training curves"):
    """Teacher-forced loss (left, log scale) and generated exact match (right) against step.

    ``curves``: {label: curves.json contents}; labels containing "inverse" are drawn dashed red.
    """
    fig, axes = figure(ncols=2, width=4.6, height=3.2)
    ax_loss, ax_em = axes.ravel()
    for name, c in curves.items():
        style = ORDER_STYLE["inverse" if "inverse" in name else "forward"]
        steps = [r["step"] for r in c["loss"]]
        ax_loss.plot(
            steps, [r["loss"] for r in c["loss"]], label=name, color=style["color"], ls=style["ls"], alpha=0.8
        )
        em = c["exact_match"]
        ax_em.plot(
            [r["step"] for r in em],
            [r["exact_match"] for r in em],
            marker="o",
            ms=3,
            label=name,
            color=style["color"],
            ls=style["ls"],
            alpha=0.8,
        )
    ax_loss.set_yscale("log")
    label(ax_loss, "training step", "loss on y <eos> (nats/token)", title)
    label(ax_em, "training step", "exact match (test subset)", "generated exact match")
    ax_em.set_ylim(-0.02, 1.02)
    ax_em.legend(fontsize=7, loc="best")
    return fig


def plot_exact_match_by_order(table):
    """Bars: mean exact match per task, forward beside inverse, error bars = min..max over seeds.

    ``table``: the output of :func:`qwen_anatomy.tasks.experiment.seed_table`.
    """
    import numpy as np

    tasks = list(dict.fromkeys(f"{r.task} n={r.n}" for r in table.itertuples()))
    fig, ax = figure(width=6.0, height=3.4)
    width = 0.38
    for k, order in enumerate(("forward", "inverse")):
        rows = {f"{r.task} n={r.n}": r for r in table.itertuples() if r.order == order}
        means = np.array([rows[t].mean if t in rows else np.nan for t in tasks])
        lo = np.array([rows[t].mean - rows[t].min if t in rows else 0 for t in tasks])
        hi = np.array([rows[t].max - rows[t].mean if t in rows else 0 for t in tasks])
        x = np.arange(len(tasks)) + (k - 0.5) * width
        ax.bar(
            x,
            means,
            width,
            yerr=[lo, hi],
            capsize=3,
            label=order,
            color=ORDER_STYLE[order]["color"],
            alpha=0.8,
        )
    ax.set_xticks(np.arange(len(tasks)), tasks)
    ax.set_ylim(0, 1.05)
    label(
        ax,
        "task",
        "exact match (greedy, 1,000 test samples)",
        "forward vs inverse order (whiskers: min..max over seeds)",
    )
    ax.legend()
    return fig


def plot_per_position(frame):
    """Per-position accuracy (mean over seeds) against output position, one panel per task.

    ``frame``: :func:`qwen_anatomy.tasks.experiment.load_results`. For the inverse order, position 0
    is the last state of the chain.
    """
    import numpy as np

    tasks = list(dict.fromkeys(zip(frame["task"], frame["n"], strict=True)))
    fig, axes = figure(ncols=len(tasks), width=3.4, height=3.0)
    axes = np.atleast_1d(axes).ravel()
    for ax, (task, n) in zip(axes, tasks, strict=True):
        for order, style in ORDER_STYLE.items():
            sel = frame[(frame["task"] == task) & (frame["n"] == n) & (frame["order"] == order)]
            if sel.empty:
                continue
            acc = np.array(sel["per_position_accuracy"].tolist())
            ax.plot(
                np.arange(acc.shape[1]),
                acc.mean(0),
                marker="o",
                ms=3,
                label=f"{order} ({len(sel)} seeds)",
                **style,
            )
        ax.set_ylim(0, 1.02)
        label(ax, "output position (as generated)", "accuracy", f"{task} n={n}")
        ax.legend(fontsize=7, loc="lower left")
    return fig
