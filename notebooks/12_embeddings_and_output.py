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
# Calinski–Harabasz and Davies–Bouldin shown beside it (`qwen-anatomy embeddings --k-rule elbow` picks
# the elbow instead; both Ks are reported). Tokens are decoded by the real tokenizer.
# Library: `qwen_anatomy.weights.embeddings.embedding_report`; command: `qwen-anatomy embeddings`.

# %% tags=["parameters"]
model = "qwen2.5-coder-0.5b"  # built-in name, checkpoint directory or .gguf file
k_grid = [8, 16, 32, 64, 128, 256]
pca_dims = 128
max_rows = None  # None: every row
seed = 0
silhouette_sample = 10_000
tokens_results = "data/results/tokens"  # saved `qwen-anatomy tokens` reports, one folder per model

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
        f"Rule: {s['k_rule_description']}. Chosen **K = {s['chosen_k']}** with silhouette "
        f"{s['chosen_silhouette']:.3f} (on {s['silhouette_sample']} fixed rows of {s['clustering_rows']} "
        f"clustered). "
        + (
            f"The elbow of the inertia curve (dashed, left) is at K = {s['elbow_k']}. "
            if s["elbow_k"]
            else ""
        )
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

# %% tags=["hide-input"]
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

# %% [markdown]
# ## Under-trained tokens
#
# A low norm is a weak sign. "Fishing for Magikarp" (Land & Bartolo, 2024) made the search systematic;
# its authors' published report for Qwen2.5-7B-Instruct, whose tokenizer this model shares, tested 2,979
# candidates and found 1,842 below the 1 % threshold used below (github.com/cohere-ai/magikarp,
# `results/reports`). Three steps (library `qwen_anatomy.weights.undertrained`; command
# `qwen-anatomy tokens MODEL --out DIR`):
#
# 1. **Categories from the tokenizer alone.** Each id is decoded and its text encoded again. A token that
#    comes back as itself is *reachable*: text can produce it, so a prompt can test it. The others are
#    counted apart: *unreachable* (its own text encodes as other tokens), *partial UTF-8* (its bytes are
#    part of a character), *special* (added control tokens) and *unused*: rows known never to be trained,
#    here the 271 rows past the real vocabulary that the GGUF fills with `[PAD151665]`-style placeholders.
# 2. **An indicator from the weights.** Never-trained rows all end up in about the same place. For an
#    untied model the paper reads the output (unembedding) matrix: it removes the first principal
#    component (one direction shared by every row that would dominate every cosine), averages the unused
#    rows, and scores each token by its cosine *distance* to that mean. Near 0: the row points where
#    never-trained rows point. The released Qwen2.5-Coder-0.5B ties output and embedding; the GGUF stores
#    that one matrix twice, as the output layer in Q8_0 and the embedding in Q5_0. The paper's rules for
#    untied (use the output matrix) and tied models (use the one matrix) agree, and the indicator uses
#    the Q8_0 copy: the unused rows are near-copies whose spread is mostly rounding, 0.28 % of their norm
#    in Q5_0 against 0.11 % in Q8_0 (`data/README.md`). The alternatives are computed beside it and
#    compared at the end.
# 3. **Verification by prompting.** The lowest-indicator reachable tokens are put, by id, into three
#    prompts asking for a repetition (two from the paper's code, with fewer repetitions, and one through
#    the model's chat template); the model continues greedily for three tokens, and a token counts as
#    under-trained when the largest probability it ever gives that token stays below 1 %, the paper's
#    threshold. A random sample of reachable tokens goes through the same prompts: the base rate the
#    candidate list has to beat.
#
# Steps 1-2 take seconds and run here on `model`. Step 3 takes minutes (10-13 for Qwen2.5-Coder-0.5B on
# two cores), so the chapter reads it from the report the command saved under `tokens_results`, after
# checking that the saved indicators equal the ones just computed: a report from another checkpoint
# stops the chapter. For a model without a saved report the chapter says how to write one and shows
# steps 1-2 only.

# %%
from qwen_anatomy.loading import REPO_ROOT
from qwen_anatomy.weights import undertrained as ut

t = time.perf_counter()
tt = ut.token_table(model)
tokens = tt.table
ts = tt.summary
print(f"categories and indicators for {len(tokens):,} rows in {time.perf_counter() - t:.1f} s")
display(Markdown(ut.category_sentence(ts) + " " + ut.indicator_sentence(ts)))
display(ut.category_examples(tokens))

# %% tags=["hide-input"]
saved, where = ut.committed_report(REPO_ROOT / tokens_results, model, tokens)
display(Markdown(where))
cutoff = saved["summary"]["candidate_indicator_cutoff"] if saved is not None else None

# %% [markdown]
# The indicator for every row, by category (log counts). Look at the far left: the unused rows pile up
# at 0, and so do the unreachable tokens; the bulk of reachable tokens sits far to the right, and a long,
# flat tail of reachable tokens reaches toward the unused ones. Left of the dashed line are the
# candidates (the saved report's cut-off, or the paper's 2 % of reachable tokens when there is none).

# %%
if cutoff is None:
    cutoff = ts["indicator_reachable_quantiles"]["0.02"]
fig = ut.plot_indicator(table=tokens, candidate_cutoff=cutoff, xlabel=f"indicator: {ts['indicator']}")
display(Markdown(ut.category_indicator_sentence(tokens, cutoff)))

# %% [markdown]
# ### Verification
#
# Each dot is one verified token: its indicator against the largest probability the model gave it where
# it should repeat it. Look for the candidates (blue, left) falling below the dashed 1 % line while the
# random control (green crosses) stays near 1, and for how far right the low dots reach.

# %%
if saved is not None:
    sv = saved["summary"]
    verified = saved["verified"]
    display(Markdown(ut.verification_sentence(sv)))
    fig = ut.plot_verification(verified, sv["threshold"])
    rates = ut.rate_by_rank(verified)
    display(rates)
    display(Markdown(ut.rank_sentence(rates) + " " + ut.extent_sentence(sv, rates)))

# %% [markdown]
# The verified under-trained tokens with the lowest probabilities, decoded (`␣` marks a leading or
# trailing space), with what the model wrote instead in the chat prompt:

# %%
if saved is not None:
    worst = verified[verified["candidate"] & verified["under_trained"]].sort_values(["max_prob", "rank"])
    out_col = "out_chat" if "out_chat" in worst else "out_input_output"
    shown_worst = worst.head(25).assign(
        token=worst["decoded"].map(ut.shown), model_wrote=worst[out_col].map(ut.shown)
    )[["rank", "id", "token", "kind", "indicator", "max_prob", "model_wrote"]]
    display(shown_worst)
    kinds = ut.kind_table(verified, tokens)
    display(kinds.head(12).round(3))
    display(Markdown(ut.kind_sentence(kinds)))

# %% [markdown]
# ### Which indicator
#
# How well each candidate indicator separates the tokens verified under-trained from those the model
# repeated, over every verified token (AUC: the chance that an under-trained token scores lower than a
# repeated one; 0.5 is chance), and how each ranks the reachable vocabulary against the indicator used
# (Spearman correlation, and the share of the candidate list it would also pick).

# %%
if saved is not None:
    aucs = ut.indicator_auc(verified)
    comp = ut.alternatives_table(tokens, ts, sv["candidates"])
    display(comp.merge(aucs, on=["indicator", "column"], how="left").drop(columns="column").round(3))
    display(Markdown(ut.auc_sentence(aucs) + " " + ut.alternatives_sentence(comp)))
