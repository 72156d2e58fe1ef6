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
# # The embedding and the output layer
#
# The embedding matrix has one row per vocabulary id; in a tied model (SmolLM2, Qwen2.5-0.5B as
# released) the same matrix also scores every token at the output, while an untied one (the built-in
# Qwen2.5-Coder GGUF stores its output layer apart) has a second matrix, compared with the first at the
# end. This chapter reads it row by row: norms, rows
# that belong to no token, exact duplicates, rows whose small norm marks them as candidates for
# under-trained tokens, how anisotropic the cloud of rows is, how many principal directions carry
# its variance, and which groups of tokens it clusters into.
#
# The seed tool clustered standardised raw rows and picked K by Calinski–Harabasz; its silhouette
# was about −0.02 and its "representative tokens" were rare, never-trained CJK and Hangul rows. Here
# the rows are L2-normalised and mean-removed (a direction carries meaning; the common mean
# direction is reported as anisotropy instead), projected on the top principal axes, rows without a
# token are excluded and duplicates collapsed, and MiniBatchKMeans runs over a grid of K with a fixed
# seed. K is picked by the highest silhouette on one fixed sample of rows, with inertia (the elbow),
# Calinski–Harabasz and Davies–Bouldin shown beside it. Tokens are decoded by the real tokenizer.
# Library: `qwen_anatomy.weights.embeddings.embedding_report`; command: `qwen-anatomy embeddings`.

# %% tags=["parameters"]
model = "qwen2.5-coder-0.5b"  # built-in name, checkpoint directory or .gguf file
k_grid = [8, 16, 32, 64, 128, 256]
pca_dims = 128
max_rows = None  # None: every row
seed = 0
silhouette_sample = 10_000

# %%
import time

import pandas as pd
from IPython.display import Markdown, display

from qwen_anatomy.modelnames import model_label
from qwen_anatomy.weights import plots
from qwen_anatomy.weights.embeddings import embedding_report

pd.set_option("display.width", 160)
pd.set_option("display.max_colwidth", 120)

t = time.perf_counter()
report = embedding_report(
    model, k_grid=k_grid, pca_dims=pca_dims, seed=seed, silhouette_sample=silhouette_sample, max_rows=max_rows
)
seconds = time.perf_counter() - t
s = report.summary
rows = report.rows
print(f"{s['embedding']} ({s['embedding_dtype']}, {s['shape'][0]} x {s['shape'][1]}), {s['rows_analysed']} rows analysed "
      f"in {seconds:.1f} s; tokenizer size {s['tokenizer_size']}; tied: {s['tied']}")  # fmt: skip

# %% tags=["hide-input"]
display(Markdown(f"This page reads the embedding of **{model_label(model)}** (`model = {model!r}`)."))

# %% [markdown]
# ## Row norms, rows without a token, duplicates

# %%
fig = plots.embedding_norms(report)
display(
    Markdown(
        f"Token-row norms have median **{s['norm_median']:.3f}** (range {s['norm_min']:.3f}–{s['norm_max']:.3f}). "
        + (
            f"**{s['no_token_rows']}** rows sit at ids the tokenizer never produces (padding of the vocabulary "
            "to a round size): they receive no gradient as inputs and are excluded below."
            if s["no_token_rows"]
            else "Every row belongs to a token: the vocabulary is not padded."
        )
        + (
            f" **{s['duplicate_rows']}** rows fall into {s['duplicate_groups']} groups of exact duplicates."
            if s["duplicate_groups"]
            else " No two rows are exactly equal."
        )
    )
)
for g in s["largest_duplicate_groups"]:
    print(f"duplicate group of {g['size']}: ids {g['ids']} tokens {g['tokens']}")

# %% [markdown]
# ## Low-norm rows: candidates for under-trained tokens
#
# A row that was rarely or never updated keeps a small norm (its share of weight decay and its
# initial scale). The threshold is robust: median minus `low_norm_z` scaled MADs of the token rows.

# %%
low = rows[rows["low_norm"]].sort_values("norm")
display(
    Markdown(
        f"Rule: {s['low_norm_rule']} with z = {s['low_norm_z']}: threshold **{s['low_norm_threshold']:.3f}**, "
        f"**{s['low_norm_rows']}** rows below it."
    )
)
display(low[["id", "token", "char_class", "norm"]].head(20))
if len(low):
    mix = low["char_class"].value_counts(normalize=True)
    display(Markdown(f"Most low-norm rows are **{mix.index[0]}** tokens ({mix.iloc[0]:.0%} of them)."))

# %% [markdown]
# ## Anisotropy and principal directions

# %%
fig = plots.pca_curve(report)
display(
    Markdown(
        f"The mean row has norm {s['mean_vector_norm']:.3f}, **{s['mean_vector_norm_over_mean_row_norm']:.1%}** "
        f"of the mean row norm; the mean cosine between a row and the mean direction is "
        f"{s['mean_cosine_to_mean']:.3f} and between two random rows {s['mean_pairwise_cosine_sample']:.3f}. "
        + (
            "The rows share a common direction (anisotropy), which is why it is removed before clustering."
            if s["mean_cosine_to_mean"] > 0.1
            else "The cloud is close to isotropic around the origin."
        )
        + f" Half of the variance lies in {s['pca_dims_for_50pct']} principal directions, 90 % in "
        f"{s['pca_dims_for_90pct']} of {s['shape'][1]}."
    )
)

# %% [markdown]
# ## Clusters

# %%
display(report.k_sweep.round(4))
fig = plots.k_sweep(report)
display(
    Markdown(
        f"Rule: {s['k_rule']}. Chosen **K = {s['chosen_k']}** with silhouette {s['chosen_silhouette']:.3f} "
        f"(on {s['silhouette_sample']} fixed rows of {s['clustering_rows']} clustered). "
        + (
            "That is a clear cluster structure."
            if s["chosen_silhouette"] > 0.25
            else "The structure is weak but not random: most rows sit near a cluster boundary."
            if s["clear_structure"]
            else "Silhouettes this low mean no clear cluster structure: the groups below are a partition, not natural kinds."
        )
    )
)

# %% [markdown]
# Each cluster by size, with the tokens nearest its centroid (decoded; `repr` shows spaces and
# newlines) and its make-up by character class:

# %%
cl = report.clusters
share_cols = [c for c in cl.columns if c.startswith("share_") and cl[c].max() > 0]
display(cl[["cluster", "size", "main_class", "nearest_tokens"]].head(16))
fig = plots.cluster_classes(report)
purity = cl[share_cols].max(axis=1)
overall = rows.loc[rows["cluster"] >= 0, "char_class"].value_counts(normalize=True)
display(
    Markdown(
        f"Median cluster purity (share of its largest character class) is **{purity.median():.0%}**; "
        f"{(purity > 0.9).sum()} of {len(cl)} clusters are over 90 % one class. But {overall.iloc[0]:.0%} of "
        f"all clustered tokens are **{overall.index[0]}**, so purity alone says little. "
        + (
            "Clusters are purer than the vocabulary's own make-up: character class is part of what the "
            "geometry encodes."
            if purity.median() > overall.iloc[0] + 0.05
            else "Clusters are no purer than the vocabulary as a whole: within the dominant script they "
            "separate by something else."
        )
    )
)
wi = cl.set_index("cluster")["share_word_initial"]
display(
    Markdown(
        f"The share of word-initial pieces (decoded with a leading space) ranges from **{wi.min():.0%}** "
        f"(cluster {wi.idxmin()}) to **{wi.max():.0%}** (cluster {wi.idxmax()}). "
        + (
            "Whether a piece starts a word is one of the axes the clusters follow."
            if wi.max() - wi.min() > 0.5
            else "Word-initial and word-internal pieces are mixed across clusters."
        )
    )
)

# %% [markdown]
# ## Output layer

# %%
if report.head_cosine is not None:
    q = s["head_cosine_quantiles"]
    display(
        Markdown(
            f"Untied model: the per-token cosine between embedding row and LM-head row has mean "
            f"{s['head_cosine_mean']:.3f} (5/50/95 %: {q[0.05]:.3f} / {q[0.5]:.3f} / {q[0.95]:.3f})."
        )
    )
else:
    display(
        Markdown(
            "This model ties its output layer to the embedding: each token's logit is the dot product of "
            "the final hidden state with the row above. A low-norm row therefore also gets systematically "
            "small logits (for positive alignments), one more reason under-trained tokens are rarely produced."
        )
    )
