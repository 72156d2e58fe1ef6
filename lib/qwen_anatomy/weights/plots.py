"""Figures of Part II (chapters 10-12), built on :mod:`qwen_anatomy.plotting` (one look, every axis
labelled). Each function takes the table DataFrame or a report and returns a matplotlib figure."""

from __future__ import annotations

import numpy as np

from ..plotting import figure, heatmap, label

MATRIX_TYPES = ("attn_q", "attn_k", "attn_v", "attn_o", "mlp_gate", "mlp_up", "mlp_down")


def parameter_share(df, title: str = "Where the parameters are"):
    """Bar chart: parameters per block type (share of the total in the label)."""
    fig, ax = figure(width=6.4, height=3.4)
    counts = df.groupby("block_type")["numel"].sum().sort_values(ascending=False)
    total = counts.sum()
    ax.bar(counts.index, counts.to_numpy() / 1e6)
    for i, v in enumerate(counts.to_numpy()):
        ax.text(i, v / 1e6, f"{100 * v / total:.1f}%", ha="center", va="bottom", fontsize=8)
    ax.tick_params(axis="x", rotation=45)
    label(ax, "block type", "parameters (millions)", title)
    return fig


def value_histograms(samples: dict, bins: int = 200, title: str = "Weight values"):
    """Overlaid density histograms of value samples ({label: 1-D array})."""
    fig, ax = figure(width=6.4, height=3.4)
    lo = min(float(np.quantile(v, 0.0005)) for v in samples.values())
    hi = max(float(np.quantile(v, 0.9995)) for v in samples.values())
    edges = np.linspace(lo, hi, bins + 1)
    for name, v in samples.items():
        ax.hist(v, bins=edges, density=True, histtype="step", label=name)
    ax.set_yscale("log")
    ax.legend()
    label(ax, "weight value", "density (log scale)", title)
    return fig


def quant_block(values_block: np.ndarray, title: str = "One quantisation block"):
    """The 32 dequantised values of one 4-bit block (Q4_0, Q4_1, Q4_K) against their index (they sit on a
    grid of at most 16 levels)."""
    fig, ax = figure(width=6.4, height=3.0)
    ax.plot(np.arange(values_block.size), values_block, "o")
    for level in np.unique(values_block):
        ax.axhline(level, color="0.8", lw=0.5, zorder=0)
    label(ax, "position in block", "dequantised value", title)
    return fig


def by_layer(df, column: str, ylabel: str, title: str | None = None, types=MATRIX_TYPES, logy: bool = False):
    """One line per block type: ``column`` against layer index."""
    fig, ax = figure(width=6.4, height=3.4)
    sub = df[df["layer"].notna() & df["block_type"].isin(types) & (df["kind"] == "weight")]
    for btype in types:
        s = sub[sub["block_type"] == btype].sort_values("layer")
        if len(s):
            ax.plot(s["layer"].astype(int), s[column].astype(float), marker=".", label=btype)
    if logy:
        ax.set_yscale("log")
    ax.legend(ncols=4, fontsize=8)
    label(ax, "layer", ylabel, title or f"{column} by layer")
    return fig


def layer_heatmap(df, column: str, cbar_label: str, title: str, types=MATRIX_TYPES):
    """Layer x block-type image of one column."""
    sub = df[df["layer"].notna() & df["block_type"].isin(types) & (df["kind"] == "weight")]
    table = sub.pivot_table(index="block_type", columns="layer", values=column).reindex(
        [t for t in types if t in set(sub["block_type"])]
    )
    fig, ax = figure(width=7.0, height=2.8)
    heatmap(ax, table.to_numpy(dtype=float), "layer", "block type", title, cbar_label)
    ax.set_yticks(range(len(table.index)), table.index)
    return fig


def compare_models(
    df_a, df_b, column: str, names=("trained", "random"), ylabel: str | None = None, title=None
):
    """``column`` of two tables side by side per block type (median over layers)."""
    fig, ax = figure(width=6.4, height=3.4)
    types = [t for t in MATRIX_TYPES if t in set(df_a["block_type"])]
    width = 0.4
    for j, (df, name) in enumerate(zip((df_a, df_b), names, strict=True)):
        med = [
            df.loc[(df["block_type"] == t) & (df["kind"] == "weight"), column].astype(float).median()
            for t in types
        ]
        ax.bar(np.arange(len(types)) + (j - 0.5) * width, med, width, label=name)
    ax.set_xticks(range(len(types)), types, rotation=30)
    ax.legend()
    label(ax, "block type", ylabel or f"median {column}", title or f"{column}: {names[0]} vs {names[1]}")
    return fig


def spectrum(sigmas: dict, title: str = "Singular values"):
    """Normalised singular values σ_i/σ_max against i/min(m,n), one line per matrix, log y."""
    fig, ax = figure(width=6.4, height=3.4)
    for name, s in sigmas.items():
        s = np.sort(np.asarray(s))[::-1]
        ax.plot(np.arange(1, s.size + 1) / s.size, s / s[0], label=name)
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    label(ax, "index / design rank", "σ / σ_max (log scale)", title)
    return fig


def embedding_norms(report):
    rows = report.rows
    fig, ax = figure(width=6.4, height=3.2)
    no_token = rows["no_token"].fillna(False).to_numpy(dtype=bool)  # unknown (no tokenizer): token rows
    ax.hist(rows.loc[~no_token, "norm"], bins=150, color="C0", label="token rows")
    if no_token.any():
        ax.hist(rows.loc[no_token, "norm"], bins=50, color="C3", label="no-token rows")
    ax.axvline(report.summary["low_norm_threshold"], color="k", ls="--", label="low-norm threshold")
    ax.set_yscale("log")
    ax.legend()
    label(ax, "row L2 norm", "rows (log scale)", "Embedding row norms")
    return fig


def pca_curve(report):
    fig, ax = figure(width=6.4, height=3.2)
    cum = np.cumsum(report.pca_explained)
    ax.plot(np.arange(1, cum.size + 1), cum)
    for level in (0.5, 0.9):
        ax.axhline(level, color="0.6", ls=":")
    label(ax, "principal components", "cumulative explained variance", "PCA of the embedding rows")
    return fig


def k_sweep(report):
    sw = report.k_sweep
    fig, axes = figure(ncols=2, width=3.6, height=3.0)
    axes[0, 0].plot(sw["k"], sw["inertia"], "o-")
    if report.summary.get("elbow_k") is not None:
        axes[0, 0].axvline(report.summary["elbow_k"], color="k", ls="--", label="elbow K")
        axes[0, 0].legend(fontsize=8)
    axes[0, 0].set_xscale("log", base=2)
    label(axes[0, 0], "K (clusters)", "inertia", "Elbow curve")
    ax = axes[0, 1]
    ax.plot(sw["k"], sw["silhouette"], "o-", label="silhouette")
    ax.plot(sw["k"], sw["davies_bouldin"] / sw["davies_bouldin"].max(), "s--", label="Davies-Bouldin / max")
    ax.axvline(report.summary["chosen_k"], color="k", ls=":", label="chosen K")
    ax.set_xscale("log", base=2)
    ax.legend(fontsize=8)
    label(ax, "K (clusters)", "score", "Cluster quality")
    return fig


def cluster_classes(report, top: int = 20):
    """Stacked bars: character-class make-up of the largest clusters of the chosen K."""
    from .tokenclass import CHAR_CLASSES

    cl = report.clusters.head(top)
    fig, ax = figure(width=7.0, height=3.4)
    bottom = np.zeros(len(cl))
    for cls in CHAR_CLASSES:
        v = cl[f"share_{cls}"].to_numpy()
        if v.sum() > 0:
            ax.bar(np.arange(len(cl)), v, bottom=bottom, label=cls)
            bottom += v
    ax.set_xticks(range(len(cl)), cl["cluster"].astype(str))
    ax.legend(fontsize=7, ncols=3)
    label(
        ax,
        "cluster (largest first)",
        "share of tokens",
        f"Character classes per cluster (K={report.summary['chosen_k']})",
    )
    return fig
