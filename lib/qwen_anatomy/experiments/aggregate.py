"""Aggregation across seeds: intervals, paired differences, verdicts and their plots (chapter 90_experiments)."""

from __future__ import annotations

from .params import _user_error


def aggregate(frame, by: str | list[str], metric: str, confidence: float = 0.95, log: bool = False):
    """Mean of ``metric`` over the successful runs of each group, with a Student-t interval.

    ``by`` names parameters (``"ngram_order"`` or ``"param.ngram_order"``), ``metric`` a metric
    (``"ngram_ppl"`` or ``"metric.ngram_ppl"``). Returns one row per group: ``n``, ``mean``, ``std``
    (ddof=1), ``sem`` and ``low``/``high``, the ``confidence`` interval ``mean +- t_{n-1} * sem``
    (NaN when n < 2). With ``log=True`` the statistics are taken of ``log(metric)`` (for positive,
    multiplicative quantities such as perplexity, whose log is a cross-entropy in nats): ``std`` and
    ``sem`` are then on the log scale and ``mean``/``low``/``high`` are mapped back by ``exp`` (a
    geometric mean and its interval, always positive). Chapter 90_experiments.
    """
    import numpy as np
    import pandas as pd
    from scipy import stats

    by = [by] if isinstance(by, str) else list(by)
    by = [b if b.startswith("param.") or b in frame.columns else f"param.{b}" for b in by]
    metric = metric if metric.startswith("metric.") or metric in frame.columns else f"metric.{metric}"
    for col in [*by, metric]:
        if col not in frame.columns:
            raise _user_error(f"no column {col!r} in the results; columns: {', '.join(frame.columns)}")
    ok = frame[frame["status"] == "success"] if "status" in frame.columns else frame
    rows = []
    for key, group in ok.groupby(by, sort=True):
        values = group[metric].astype(float).to_numpy()
        if log:
            if (values <= 0).any():
                raise _user_error(f"aggregate(log=True) needs positive values of {metric}")
            values = np.log(values)
        n = len(values)
        mean = float(np.mean(values))
        std = float(np.std(values, ddof=1)) if n > 1 else float("nan")
        sem = std / np.sqrt(n) if n > 1 else float("nan")
        half = float(stats.t.ppf(0.5 + confidence / 2, n - 1) * sem) if n > 1 else float("nan")
        key = key if isinstance(key, tuple) else (key,)
        back = np.exp if log else (lambda x: x)
        rows.append(
            {
                **{b.removeprefix("param."): k for b, k in zip(by, key, strict=True)},
                "n": n,
                "mean": float(back(mean)),
                "std": std,
                "sem": sem,
                "low": float(back(mean - half)),
                "high": float(back(mean + half)),
            }
        )
    return pd.DataFrame(rows)


def paired_differences(
    frame, by: str, metric: str, pair_on: str = "seed", confidence: float = 0.95, log: bool = False
):
    """For every level of ``by`` after the first: mean of ``metric(level) - metric(first level)``
    over runs that share ``pair_on`` (the same seed, hence the same data split), with a t-interval.
    With ``log=True`` the differences are of ``log(metric)`` and ``mean``/``low``/``high`` are the
    geometric-mean *ratio* ``metric(level) / metric(first level)`` and its interval.

    Pairing removes the variation the seed causes in both arms alike. Chapter 90_experiments.
    """
    import numpy as np
    import pandas as pd

    col = by if by.startswith("param.") else f"param.{by}"
    pair = pair_on if pair_on.startswith("param.") else f"param.{pair_on}"
    met = metric if metric.startswith("metric.") else f"metric.{metric}"
    ok = frame[frame["status"] == "success"]
    wide = ok.pivot_table(index=pair, columns=col, values=met, aggfunc="mean")
    if log:
        wide = np.log(wide)
    levels = list(wide.columns)
    rows = []
    for level in levels[1:]:
        diff = (wide[level] - wide[levels[0]]).dropna()
        part = pd.DataFrame({"status": "success", "param.pair": 0, "metric.diff": diff.to_numpy()})
        stats_row = aggregate(part, "pair", "diff", confidence).iloc[0].copy()
        if log:
            for k in ("mean", "low", "high"):
                stats_row[k] = float(np.exp(stats_row[k]))
        rows.append(
            {
                "baseline": levels[0],
                by.removeprefix("param."): level,
                **{k: stats_row[k] for k in ("n", "mean", "std", "sem", "low", "high")},
            }
        )
    return pd.DataFrame(rows)


def ratio_verdict(low: float, high: float, lower_is_better: bool = True) -> str:
    """What a paired interval of a ratio (``paired_differences(..., log=True)``) says: the second
    level is reliably better or worse only when the whole interval lies on one side of 1 (an interval
    touching 1 cannot tell them apart); NaN bounds (a single pair of seeds) give no interval.
    Chapter 90_experiments."""
    import math

    if any(x is None or (isinstance(x, float) and math.isnan(x)) for x in (low, high)):
        return "there is no interval (fewer than two paired seeds), so the data cannot tell the two apart"
    better, worse = ("better", "worse") if lower_is_better else ("worse", "better")
    if high < 1:
        return f"the higher order is reliably {better}: the whole interval lies below 1"
    if low > 1:
        return f"the higher order is reliably {worse}: the whole interval lies above 1"
    return "the interval contains 1: with these seeds the data cannot tell the two orders apart"


def plot_aggregate(
    ax,
    frame,
    by: str,
    metric: str,
    confidence: float = 0.95,
    label: str | None = None,
    color: str | None = None,
    offset: float = 0.0,
    log: bool = False,
):
    """Each successful run as a dot, and per group the mean with its t-interval as an error bar
    (``log=True``: the geometric mean and its interval, see :func:`aggregate`).

    Built on :mod:`qwen_anatomy.plotting`; the caller labels the axes. Returns the aggregate table.
    Chapter 90_experiments.
    """
    import numpy as np

    agg = aggregate(frame, by, metric, confidence, log=log)
    key = by.removeprefix("param.")
    col = by if by.startswith("param.") else f"param.{by}"
    met = metric if metric.startswith("metric.") else f"metric.{metric}"
    ok = frame[frame["status"] == "success"]
    positions = {level: i for i, level in enumerate(agg[key])}
    xs = np.array([positions[v] for v in ok[col]], dtype=float) + offset
    from matplotlib.colors import to_rgb

    points = ax.scatter(xs, ok[met], s=14, alpha=0.45, color=color, zorder=2)
    yerr = np.vstack([(agg["mean"] - agg["low"]).to_numpy(), (agg["high"] - agg["mean"]).to_numpy()])
    ax.errorbar(
        np.arange(len(agg)) + offset,
        agg["mean"],
        yerr=yerr,
        fmt="o",
        ms=6,
        capsize=5,
        color=to_rgb(points.get_facecolor()[0]),
        label=label,
        zorder=3,
    )
    ax.set_xticks(np.arange(len(agg)), [str(v) for v in agg[key]])
    return agg


def plot_paired(ax, frame, by: str, metric: str, pair_on: str = "seed"):
    """One line per ``pair_on`` value (a seed) joining its ``metric`` across the levels of ``by``:
    parallel lines mean the levels differ consistently even when the seeds are far apart.
    The caller labels the axes. Chapter 90_experiments."""
    import numpy as np

    col = by if by.startswith("param.") else f"param.{by}"
    pair = pair_on if pair_on.startswith("param.") else f"param.{pair_on}"
    met = metric if metric.startswith("metric.") else f"metric.{metric}"
    ok = frame[frame["status"] == "success"]
    wide = ok.pivot_table(index=pair, columns=col, values=met, aggfunc="mean")
    xs = np.arange(len(wide.columns))
    for key, values in wide.iterrows():
        ax.plot(
            xs,
            values.to_numpy(),
            marker="o",
            ms=4,
            alpha=0.8,
            label=f"{pair_on.removeprefix('param.')} {key}",
        )
    ax.set_xticks(xs, [str(v) for v in wide.columns])
    return wide
