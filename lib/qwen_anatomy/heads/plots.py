"""The figures of chapter 40_heads_importance_vs_plasticity, on :mod:`qwen_anatomy.plotting`."""

from __future__ import annotations

import numpy as np
from matplotlib.ticker import MaxNLocator

from .. import plotting

LABELS = {
    "I_pre": "ablation importance at θ0 (Δloss, nats)",
    "I_post": "ablation importance at θ1 (Δloss, nats)",
    "U": "update ‖Δθ_h‖",
    "Urel": "relative update ‖Δθ_h‖/‖θ0_h‖",
    "G_pre": "G = E|g| at θ0",
    "F_pre": "F = E[g²] at θ0",
    "Ppred_pre": "Ppred = G²/F at θ0",
    "snr_pre": "(E g)²/E[g²] at θ0",
    "neg_Eg_pre": "−E[g] at θ0",
    "norm_pre": "head-output norm at θ0",
    "G_post": "G = E|g| at θ1",
    "neg_Eg_post": "−E[g] at θ1",
    "Uq": "update of Q rows ‖ΔQ_h‖",
    "Uk": "update of K rows (group share)",
    "Uv": "update of V rows (group share)",
    "Uo": "update of O columns ‖ΔO_h‖",
}


def label_of(name: str) -> str:
    return LABELS.get(name, name)


def importance_vs_update(
    table, importance: str = "I_pre", update: str = "Urel", cases: dict | None = None, ax=None
):
    """Scatter of one importance against one update measure, coloured by layer, counterexamples ringed."""
    if ax is None:
        fig, ax = plotting.figure(width=5.6, height=4.2)
    x, y = table[update].to_numpy(), table[importance].to_numpy()
    sc = ax.scatter(x, y, c=table["layer"], cmap="viridis", s=22, alpha=0.85)
    ax.figure.colorbar(sc, ax=ax, label="layer")
    if cases and (cases.get("important_but_static") or cases.get("plastic_but_unimportant")):
        for key, marker, colour in (
            ("important_but_static", "o", "crimson"),
            ("plastic_but_unimportant", "s", "darkorange"),
        ):
            idx = np.asarray(cases.get(key, []), dtype=int)
            if len(idx):
                ax.scatter(
                    x[idx],
                    y[idx],
                    s=110,
                    facecolors="none",
                    edgecolors=colour,
                    marker=marker,
                    linewidths=1.5,
                    label=key.replace("_", " "),
                )
        ax.legend(loc="best", fontsize=8)
    plotting.label(ax, label_of(update), label_of(importance), f"{importance} against {update}")
    return ax.figure


def importance_vs_gradient(
    table, importance: str = "I_pre", gradient: str = "G_pre", ax=None, title: str | None = None
):
    """Scatter of ablation importance (y) against a gradient quantity (x), one point per head where
    both are defined (a run that ablated a subset of heads has NaN importance elsewhere), coloured
    by layer. For −E[g], the first-order estimate of zero ablation in the same unit (nats), the
    line y = x marks where the estimate would be exact."""
    if ax is None:
        fig, ax = plotting.figure(width=5.2, height=4.0)
    rows = table[[importance, gradient, "layer"]].dropna()
    x, y = rows[gradient].to_numpy(), rows[importance].to_numpy()
    sc = ax.scatter(x, y, c=rows["layer"], cmap="viridis", s=22, alpha=0.85)
    ax.figure.colorbar(sc, ax=ax, label="layer")
    if gradient.startswith("neg_Eg") and len(rows):
        lim = [min(x.min(), y.min()), max(x.max(), y.max())]
        ax.plot(lim, lim, color="grey", lw=1, label="y = x (first order exact)")
        ax.legend(loc="best", fontsize=8)
    default = f"{importance} against {gradient} ({len(rows)} heads)"
    plotting.label(ax, label_of(gradient), label_of(importance), title or default)
    return ax.figure


def importance_vs_gradients(table, importance: str = "I_pre", gradients=("G_pre", "neg_Eg_pre")):
    """One :func:`importance_vs_gradient` panel per gradient quantity, side by side."""
    fig, axes = plotting.figure(ncols=len(gradients), width=5.0, height=4.0)
    for ax, gradient in zip(np.atleast_1d(axes).reshape(-1), gradients, strict=True):
        importance_vs_gradient(table, importance, gradient, ax=ax)
    return fig


def heatmaps(table, names, num_layers: int, num_heads: int, ncols: int = 3):
    """Layer × head maps of each quantity in ``names``."""
    nrows = -(-len(names) // ncols)
    fig, axes = plotting.figure(ncols=ncols, nrows=nrows, width=3.6, height=max(2.4, 0.11 * num_layers + 1.2))
    axes = np.atleast_1d(axes).reshape(-1)
    for ax, name in zip(axes, names, strict=False):
        mat = table[name].to_numpy().reshape(num_layers, num_heads)
        plotting.heatmap(ax, mat, "head", "layer", name, label_of(name))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in axes[len(names) :]:
        ax.set_visible(False)
    return fig


def statistics_bars(pairs: list[dict], ax=None, title: str = "Spearman ρ with 95% bootstrap intervals"):
    """Horizontal bars of ρ (raw and within-layer) per pair, with the chance level (ρ = 0) marked."""
    if ax is None:
        fig, ax = plotting.figure(width=6.4, height=0.32 * len(pairs) + 1.2)
    names = [f"{p['x']} ~ {p['y']}" for p in pairs]
    ypos = np.arange(len(pairs))
    rho = np.array([p["rho"] for p in pairs])
    lo = np.array([p.get("ci_low", np.nan) for p in pairs])
    hi = np.array([p.get("ci_high", np.nan) for p in pairs])
    err = np.vstack([np.clip(rho - lo, 0, None), np.clip(hi - rho, 0, None)])
    ax.barh(ypos - 0.18, rho, height=0.36, xerr=np.nan_to_num(err), label="ρ (all heads)", color="tab:blue")
    ax.barh(
        ypos + 0.18,
        [p["rho_within_layer_demeaned"] for p in pairs],
        height=0.36,
        label="ρ within layers (demeaned ranks)",
        color="tab:orange",
    )
    ax.axvline(0, color="black", lw=1, label="chance (ρ = 0)")
    ax.set_yticks(ypos, names, fontsize=8)
    ax.set_xlim(-1, 1)
    ax.legend(fontsize=8, loc="lower right")
    plotting.label(ax, "Spearman ρ", "pair of quantities", title)
    return ax.figure


def overlap_bars(pairs: list[dict], ax=None):
    """Top-K overlap of each pair against the chance level K²/N."""
    if ax is None:
        fig, ax = plotting.figure(width=6.4, height=0.32 * len(pairs) + 1.2)
    names = [f"{p['x']} ~ {p['y']}" for p in pairs]
    ypos = np.arange(len(pairs))
    ax.barh(ypos, [p["topk_overlap"] for p in pairs], color="tab:green", label="top-K overlap")
    ax.scatter(
        [p["topk_chance"] for p in pairs],
        ypos,
        color="black",
        marker="|",
        s=200,
        zorder=3,
        label="chance K²/N",
    )
    ax.set_yticks(ypos, names, fontsize=8)
    ax.legend(fontsize=8)
    plotting.label(
        ax,
        f"heads in both top-{pairs[0]['topk_k']} sets",
        "pair of quantities",
        f"Top-K overlap (K = {pairs[0]['topk_k']})",
    )
    return ax.figure


def seed_agreement_bars(agreement: dict[str, dict], ax=None):
    """Across-seed agreement (mean pairwise Spearman) of each ranking, with the top-K overlap."""
    if ax is None:
        fig, ax = plotting.figure(width=6.0, height=0.35 * len(agreement) + 1.2)
    names = list(agreement)
    ypos = np.arange(len(names))
    ax.barh(
        ypos,
        [agreement[n]["mean_spearman"] for n in names],
        color="tab:purple",
        label="mean pairwise Spearman across seeds",
    )
    ax.scatter(
        [agreement[n]["min_spearman"] for n in names], ypos, color="black", marker="x", label="lowest pair"
    )
    ax.axvline(0, color="grey", lw=1)
    ax.set_yticks(ypos, names, fontsize=8)
    ax.set_xlim(-1, 1.05)
    ax.legend(fontsize=8, loc="lower left")
    plotting.label(ax, "Spearman ρ between fine-tuning seeds", "head ranking", "Across-seed agreement")
    return ax.figure


def proxy_validity_bars(validity: list[dict], ax=None):
    """Spearman of each gradient proxy with true ablation, at θ0 and θ1."""
    if ax is None:
        fig, ax = plotting.figure(width=6.0, height=3.4)
    thetas = sorted({v["theta"] for v in validity})
    proxies = list(dict.fromkeys(v["proxy"] for v in validity))
    width = 0.8 / len(thetas)
    for i, theta in enumerate(thetas):
        rows = {v["proxy"]: v for v in validity if v["theta"] == theta}
        ax.bar(
            np.arange(len(proxies)) + i * width, [rows[p]["rho"] for p in proxies], width=width, label=theta
        )
    ax.axhline(0, color="black", lw=1)
    ax.set_xticks(np.arange(len(proxies)) + 0.4 - width / 2, proxies)
    ax.set_ylim(-1, 1)
    ax.legend(fontsize=8)
    plotting.label(ax, "gradient proxy", "Spearman ρ with ablation Δloss", "How well each proxy ranks heads")
    return ax.figure
