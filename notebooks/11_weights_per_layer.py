# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Layer by layer: statistics, spectra and heavy tails
#
# The previous chapter summarised the whole model. Here every statistic and spectral metric of the
# per-tensor table is laid out by layer and block type, to see which matrices are effectively
# low-rank and where the eigenvalue spectra are heavy-tailed.
#
# **Spectra.** For a matrix $W$ ($m \times n$) the singular values $\sigma_1 \ge \dots \ge
# \sigma_{\min(m,n)}$ come from the full matrix, never a sub-block: by default from the eigenvalues of
# the float64 Gram matrix $W^\top W$ (or $W W^\top$, whichever is smaller), accumulated chunk by chunk.
# The Gram route resolves $\sigma$ down to about $10^{-8}\sigma_{\max}$ and is several times faster
# than an SVD; `spectra="exact"` uses a chunked QR then an SVD instead.
#
# **Ranks.** The *design rank* is $\min(m,n)$. The *numerical rank* counts $\sigma_i > \sigma_{\max}
# \max(m,n)\,\varepsilon_{\text{float32}}$, what `numpy.linalg.matrix_rank` reports on the float32
# weights; trained matrices are nearly always full rank by that test, so it says little. More
# informative are the *stable rank* $\sum\sigma_i^2/\sigma_{\max}^2$, the *effective rank*
# $\exp H(p)$ with $p_i = \sigma_i/\sum_j\sigma_j$ (Roy & Vetterli), and the *energy ranks*: how
# many $\sigma$ hold 90/95/99 % of $\sum \sigma_i^2$.
#
# **Heavy tails.** Following WeightWatcher, the eigenvalues $\lambda = \sigma^2$ are fitted with a
# power law $p(\lambda)\propto\lambda^{-\alpha}$ above a cut-off $x_{\min}$ chosen by the smallest
# Kolmogorov–Smirnov distance (maximum-likelihood $\alpha$, Clauset et al.). WeightWatcher reads
# $\alpha$ in 2–6 as well trained, $\alpha > 6$ as little structure (random-like), $\alpha < 2$ as
# very heavy-tailed. Our default rule and WeightWatcher's own choose $x_{\min}$ differently; the last
# section compares them.

# %% tags=["parameters"]
model = "qwen2.5-coder-0.5b"  # built-in name, checkpoint directory or .gguf file
spectra = "gram"  # gram or exact (this chapter needs spectra)
include = None  # regex on tensor names (None: every tensor)
low_rank_energy_ratio = (
    0.5  # "effectively low-rank": 90 % of the energy in under this share of the design rank
)

# %%
import time

import numpy as np
import pandas as pd
from IPython.display import Markdown, display

from qwen_anatomy.modelnames import model_label
from qwen_anatomy.weights import alpha as alpha_fits
from qwen_anatomy.weights import plots, stats
from qwen_anatomy.weights.checkpoint import open_checkpoint
from qwen_anatomy.weights.table import analyse

pd.set_option("display.width", 160)
pd.set_option("display.max_columns", 30)
assert spectra in ("gram", "exact"), "this chapter needs spectra"

# %%
t = time.perf_counter()
df = analyse(model, spectra=spectra, include=include)
seconds = time.perf_counter() - t
mats = df[(df["kind"] == "weight") & df["design_rank"].notna()].copy()
mats["stable_rank_ratio"] = mats["stable_rank"] / mats["design_rank"]
mats["effective_rank_ratio"] = mats["effective_rank"] / mats["design_rank"]
layers = sorted(int(x) for x in df["layer"].dropna().unique())
print(f"{len(df)} tensors ({len(mats)} matrices with spectra) over {len(layers)} layers in {seconds:.1f} s")

# %% tags=["hide-input"]
display(Markdown(f"This page analyses **{model_label(model)}** (`model = {model!r}`)."))

# %% [markdown]
# ## Distribution statistics by layer
#
# Standard deviation and excess kurtosis of each matrix type across depth.

# %%
fig = plots.by_layer(df, "std", "standard deviation", "Weight scale by layer")
fig = plots.by_layer(df, "excess_kurtosis", "excess kurtosis", "Tail weight by layer", logy=True)
trend = {}
for btype in plots.MATRIX_TYPES:
    s = mats[(mats["block_type"] == btype) & mats["layer"].notna()].sort_values("layer")
    if len(s) >= 3:
        trend[btype] = float(np.corrcoef(s["layer"].astype(float), s["excess_kurtosis"].astype(float))[0, 1])
if trend:
    rising = [b for b, r in trend.items() if r > 0.5]
    falling = [b for b, r in trend.items() if r < -0.5]
    display(
        Markdown(
            "Correlation of excess kurtosis with depth per type: "
            + ", ".join(f"{b} {r:+.2f}" for b, r in sorted(trend.items()))
            + ". "
            + (f"Tails grow with depth in {', '.join(rising)}. " if rising else "")
            + (f"Tails shrink with depth in {', '.join(falling)}. " if falling else "")
            + ("No type shows a clear trend with depth." if not rising and not falling else "")
        )
    )

# %% [markdown]
# ## Spectral metrics by layer
#
# Ratios to the design rank put matrices of different shapes on one scale.

# %% tags=["hide-input"]
shapes = mats.groupby("shape")["block_type"].agg(lambda b: ", ".join(sorted(set(b))))
display(
    Markdown(
        f"The {len(mats)} matrices come in {len(shapes)} shapes: "
        + "; ".join(f"{shape.replace('x', ' x ')} ({types})" for shape, types in shapes.items())
        + "."
    )
)
fig = plots.by_layer(mats, "stable_rank_ratio", "stable rank / design rank", "Stable rank by layer")
fig = plots.by_layer(mats, "energy_rank_90_ratio", "energy rank (90 %) / design rank", "Energy rank by layer")
fig = plots.layer_heatmap(mats, "effective_rank_ratio", "effective rank / design rank", "Effective rank")
full = (mats["numerical_rank"] == mats["design_rank"]).mean()
deficient = mats.loc[mats["numerical_rank"] < mats["design_rank"], "name"].str.replace(
    "model.", "", regex=False
)
display(
    Markdown(
        f"**{full:.0%}** of the matrices are full rank by the numpy tolerance"
        + (
            " (so that column, the seed tool's only rank, separates almost nothing)"
            if full > 0.9
            else f"; the {len(deficient)} that are not: {', '.join(deficient[:8])}"
            + (" ..." if len(deficient) > 8 else "")
        )
        + f". The median stable rank is only **{mats['stable_rank_ratio'].median():.1%}** of the design rank, "
        f"and the median energy rank (90 %) is **{mats['energy_rank_90_ratio'].median():.1%}**."
    )
)

# %% [markdown]
# ## Which matrices are effectively low-rank?
#
# We call a matrix effectively low-rank when 90 % of its energy $\sum\sigma^2$ lies in fewer than
# `low_rank_energy_ratio` of its design rank directions.

# %%
mats["low_rank"] = mats["energy_rank_90_ratio"] < low_rank_energy_ratio
share = mats.groupby("block_type")["low_rank"].mean().sort_values(ascending=False)
display(share.to_frame("share effectively low-rank"))
lowest = mats.sort_values("energy_rank_90_ratio").head(8)
display(lowest[["name", "shape", "energy_rank_90", "design_rank", "stable_rank", "effective_rank"]])
top = share.index[0]
display(
    Markdown(
        f"With the threshold at {low_rank_energy_ratio:.0%}, **{int(mats['low_rank'].sum())}** of "
        f"{len(mats)} matrices are effectively low-rank; the most affected type is **{top}** "
        f"({share.iloc[0]:.0%} of its matrices). "
        + (
            "These are the natural candidates for low-rank compression (e.g. LoRA-style factorisation)."
            if share.iloc[0] > 0
            else "None qualifies: every matrix spreads its energy widely."
        )
    )
)

# %% [markdown]
# Singular-value curves of the most and least concentrated matrices (normalised by $\sigma_{\max}$,
# index normalised by the design rank):

# %%
ck = open_checkpoint(model)
picks = [lowest.iloc[0]["name"], mats.sort_values("energy_rank_90_ratio").iloc[-1]["name"]]
sigmas = {}
for name in picks:
    entry = ck.entry(name)
    w = ck.read(entry)
    sigmas[name.replace("model.", "")] = stats.singular_values_gram(lambda w=w: [w], w.shape)
fig = plots.spectrum(sigmas, "Most and least concentrated spectra")

# %% [markdown]
# ## Heavy-tail exponent α by layer

# %%
fig = plots.by_layer(mats, "alpha", "power-law exponent α", "WeightWatcher-style α by layer")
fig = plots.layer_heatmap(mats, "alpha", "α", "α per layer and matrix type")
bands = pd.cut(mats["alpha"], [0, 2, 6, np.inf], labels=["α < 2", "2 ≤ α ≤ 6", "α > 6"]).value_counts(
    normalize=True
)
display(bands.to_frame("share of matrices"))
by_type = mats.groupby("block_type")["alpha"].median().sort_values()
display(
    Markdown(
        f"Median α is **{mats['alpha'].median():.2f}**; {bands.get('2 ≤ α ≤ 6', 0):.0%} of matrices fall in "
        f"WeightWatcher's 2–6 band, {bands.get('α > 6', 0):.0%} above it. The most heavy-tailed type is "
        f"**{by_type.index[0]}** (median α {by_type.iloc[0]:.2f}), the least **{by_type.index[-1]}** "
        f"({by_type.iloc[-1]:.2f})."
    )
)

# %% [markdown]
# ## Two rules for the cut-off: ours and WeightWatcher's
#
# Every α above comes from the same maximum-likelihood formula, $\hat\alpha = 1 + n / \sum_i
# \ln(\lambda_i / x_{\min})$ over the $n$ eigenvalues at or above $x_{\min}$; what differs between
# tools is which $x_{\min}$ they keep. Ours (the table's default) considers only tails of at least 10
# eigenvalues and measures the fit by the two-sided Kolmogorov–Smirnov distance, the largest gap
# between the fitted and the empirical CDF on either side of each step. WeightWatcher
# (`qwen-anatomy params --alpha-method ww` reproduces it to rounding, checked against WeightWatcher
# itself on SmolLM2) allows tails down to 2 eigenvalues and measures the gap only just below each
# step, a distance that is never larger. On a few closely spaced top eigenvalues it can then find a
# tiny "tail" with a steep α. The standard error of $\hat\alpha$, $(\alpha - 1)/\sqrt{n}$, says how
# much such an α can be trusted.
#
# Each point below is one matrix: on the diagonal both rules agree; the grey band is ±0.5. Look for
# the crosses far above the band: matrices where WeightWatcher's α rests on fewer than 10 eigenvalues.

# %%
eigenvalues = alpha_fits.matrix_spectra(model, include=include)
comparison = alpha_fits.compare_alpha_methods(eigenvalues)
fig = alpha_fits.scatter(comparison)
display(Markdown(alpha_fits.alpha_default_verdict(alpha_fits.alpha_method_summary(comparison))))

# %% [markdown]
# The largest disagreements, with each rule's tail size and two-sided KS distance (`ks_ww_own` is the
# one-sided distance WeightWatcher minimises):

# %% tags=["hide-input"]
widest = comparison.sort_values("abs_diff", ascending=False).head(8)
display(
    widest[["name", "alpha_ours", "tail_ours", "ks_ours", "alpha_ww", "tail_ww", "ks_ww", "ks_ww_own"]].round(
        3
    )
)
