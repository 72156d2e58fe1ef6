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


MODEL_MARKERS = {"qwen2": "o", "bart": "s"}
MODEL_NAMES = {"qwen2": "Qwen2", "bart": "BART"}
TASK_LABELS = {"relu": "ReLU", "square": "Square", "index": "Index"}


def _task_order(frame) -> list[str]:
    """The tasks of a results frame in the book's order (ReLU, Square, Index, then any other)."""
    known = list(TASK_LABELS)
    return sorted(
        dict.fromkeys(frame["task"]), key=lambda t: (known.index(t) if t in known else len(known), t)
    )


def plot_length_sweep(frame, tasks: Sequence[str] | None = None, models: Sequence[str] | None = None):
    """Exact match against the length n, one panel per task: mean over seeds with its 95% t-interval
    (error bars, :func:`qwen_anatomy.tasks.verdicts.seed_interval`) and every seed as a faint dot;
    forward solid blue, inverse dashed red; one marker per model type when ``models`` holds several.

    ``frame``: :func:`qwen_anatomy.tasks.experiment.load_results` (columns task, n, order, seed,
    exact_match and model_type).
    """
    import numpy as np

    from .verdicts import seed_interval

    if "model_type" not in frame:
        frame = frame.assign(model_type="qwen2")
    tasks = list(tasks or _task_order(frame))
    models = list(models or dict.fromkeys(frame["model_type"]))
    fig, axes = figure(ncols=len(tasks), width=3.6, height=3.2)
    axes = np.atleast_1d(axes).ravel()
    for ax, task in zip(axes, tasks, strict=True):
        sel = frame[frame["task"] == task]
        lengths = sorted(set(sel["n"]))
        for k, model in enumerate(models):
            for order, style in ORDER_STYLE.items():
                rows = sel[(sel["model_type"] == model) & (sel["order"] == order)]
                if rows.empty:
                    continue
                ns, means, lo, hi = [], [], [], []
                for n in lengths:
                    ci = seed_interval(rows.loc[rows["n"] == n, "exact_match"])
                    if ci.count:
                        ns.append(n)
                        means.append(ci.mean)
                        lo.append(ci.mean - ci.low)
                        hi.append(ci.high - ci.mean)
                shift = (k - (len(models) - 1) / 2) * 0.4  # models side by side at one n
                name = f"{order}" if len(models) == 1 else f"{MODEL_NAMES.get(model, model)} {order}"
                ax.errorbar(
                    np.array(ns) + shift,
                    means,
                    yerr=[lo, hi],
                    marker=MODEL_MARKERS.get(model, "^"),
                    ms=5,
                    capsize=3,
                    label=name,
                    **style,
                )
                ax.scatter(
                    rows["n"] + shift, rows["exact_match"], s=10, alpha=0.35, color=style["color"], zorder=1
                )
        ax.set_xticks(lengths)
        ax.set_ylim(-0.03, 1.03)
        label(ax, "sequence length n", "exact match (greedy, test set)", TASK_LABELS.get(task, task))
        ax.legend(fontsize=7, loc="best")
    return fig


def plot_per_position_by_n(frame, tasks: Sequence[str] | None = None):
    """Per-position accuracy (mean over seeds) against output position, one line per length n
    (darker = longer): one row of panels per task, forward left, inverse right.

    In the inverse order, output position 0 is the last state of the chain (y_{n-1}).
    """
    import matplotlib as mpl
    import numpy as np

    tasks = list(tasks or _task_order(frame))
    fig, axes = figure(ncols=2, nrows=len(tasks), width=3.6, height=2.7)
    axes = np.asarray(axes).reshape(len(tasks), 2)
    for row, task in zip(axes, tasks, strict=True):
        sel = frame[frame["task"] == task]
        lengths = sorted(set(sel["n"]))
        colours = mpl.colormaps["viridis"](np.linspace(0.85, 0.1, max(len(lengths), 1)))
        for ax, order in zip(row, ("forward", "inverse"), strict=True):
            for colour, n in zip(colours, lengths, strict=True):
                runs = sel[(sel["n"] == n) & (sel["order"] == order)]
                if runs.empty:
                    continue
                acc = np.array(runs["per_position_accuracy"].tolist(), dtype=float)
                ax.plot(
                    np.arange(acc.shape[1]),
                    acc.mean(0),
                    color=colour,
                    marker=".",
                    label=f"n={n} ({len(runs)} seeds)",
                )
            ax.set_ylim(-0.02, 1.02)
            label(ax, "output position (as generated)", "accuracy", f"{TASK_LABELS.get(task, task)}, {order}")
            ax.legend(fontsize=7, loc="lower left")
    return fig


def plot_first_errors(summary: dict, title: str):
    """Bars: how many wrong generations go wrong first at each output position (the last bar, at
    position n, counts those whose n outputs are right but not the end token).

    ``summary``: :func:`qwen_anatomy.tasks.evaluate.typical_failures`.
    """
    counts = summary["first_error_counts"]
    fig, ax = figure(width=5.0, height=2.8)
    positions = sorted(counts)
    ax.bar(positions, [counts[p] for p in positions], color=ORDER_STYLE["inverse"]["color"], alpha=0.8)
    label(ax, "output position of the first error (as generated)", "wrong generations", title)
    if positions:
        ax.set_xticks(range(0, max(positions) + 1, max(1, (max(positions) + 1) // 10)))
    return fig
