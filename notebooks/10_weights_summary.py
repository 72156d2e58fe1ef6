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
# # Weights at a glance: the per-tensor table
#
# A checkpoint is a list of named tensors. Before looking at what a model *does*, we look at what it
# *is*: how many parameters sit where, how their values are distributed, and how those numbers differ
# from a model of the same shape that was never trained. Everything comes from one table with a row
# per stored tensor, made by `qwen-anatomy params` (library: `qwen_anatomy.weights.table.analyse`).
#
# The table streams: it reads the safetensors header (8 bytes of length, then JSON) without touching
# any data, then reads one tensor at a time, in row chunks, accumulating statistics in float64. It
# never builds the model, so it runs on checkpoints far larger than memory.
#
# The default model is the book's real Qwen2, the built-in Qwen2.5-Coder-0.5B-Instruct; `model` takes
# any other built-in name, checkpoint directory or `.gguf` file. A built-in model ships as a GGUF file,
# and we analyse **the tensors as stored there** (4- to 8-bit block formats, float32 norms and biases),
# dequantised one by one through the `gguf` package; the `dtype` column says which format each tensor
# is stored in. llama.cpp renames tensors (`blk.0.attn_q.weight`) and, for Llama-family models, permutes
# the rows of the q and k projections for its rotary layout; the table maps names back to Hugging Face
# keys and undoes the permutation (a row permutation changes neither the value distribution nor the
# singular values).

# %% tags=["parameters"]
model = "qwen2.5-coder-0.5b"  # built-in name, checkpoint directory or .gguf file
spectra = "gram"  # none, gram or exact
include = None  # regex on tensor names (None: every tensor)
null_layers = None  # layers of the random null model (None: as many as the trained model)
seed = 0

# %%
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from IPython.display import Markdown, display

from qwen_anatomy.modelnames import model_label
from qwen_anatomy.weights import plots, quant, synthetic
from qwen_anatomy.weights.checkpoint import open_checkpoint
from qwen_anatomy.weights.table import analyse, describe, format_describe

pd.set_option("display.width", 160)
pd.set_option("display.max_columns", 30)

# %% [markdown]
# ## The header alone
#
# Shapes, counts, dtypes, bytes and tying come from the header: no tensor data is read.

# %%
t = time.perf_counter()
summary = describe(model)
header_seconds = time.perf_counter() - t
print(format_describe(summary))
print(f"\nheader-only summary in {header_seconds:.2f} s")

# %% tags=["hide-input"]
display(Markdown(f"This page analyses **{model_label(model)}** (`model = {model!r}`)."))

# %% [markdown]
# ## The table
#
# One row per stored tensor. A tied LM head is not a second row: the embedding row says
# `tied_to = lm_head.weight`. Layer 0 is 0 (the seed tool's falsy-zero bug lost it), MLP matrices
# are typed `mlp_gate`/`mlp_up`/`mlp_down`, and `dtype` is the stored type.

# %%
t = time.perf_counter()
df = analyse(model, spectra=spectra, include=include)
table_seconds = time.perf_counter() - t
print(f"{len(df)} rows, {int(df['numel'].sum()):,} parameters, {table_seconds:.1f} s (spectra={spectra})")
df[
    ["name", "source_name", "layer", "block_type", "kind", "shape", "dtype", "mean", "std", "excess_kurtosis"]
].head(12)

# %% [markdown]
# ## Where the parameters are

# %%
by_block = df.groupby("block_type").agg(tensors=("name", "size"), parameters=("numel", "sum"))
by_block["share"] = by_block["parameters"] / by_block["parameters"].sum()
by_block = by_block.sort_values("parameters", ascending=False)
display(by_block)
emb_share = float(by_block["share"].get("embedding", 0.0))
mlp_share = float(by_block["share"].reindex(["mlp_gate", "mlp_up", "mlp_down"]).fillna(0).sum())
attn_share = float(by_block["share"].reindex(["attn_q", "attn_k", "attn_v", "attn_o"]).fillna(0).sum())
display(
    Markdown(
        f"The embedding holds **{emb_share:.1%}** of the analysed parameters, the MLP matrices "
        f"**{mlp_share:.1%}** and attention **{attn_share:.1%}**. "
        + (
            "In a model this small the vocabulary table is a large slice of the whole, "
            + (
                "which is why tying the LM head to it (one matrix, two uses) matters."
                if summary["tying"].startswith("tied")
                else "and this model stores its LM head as a second matrix of the same size (untied)."
            )
            if emb_share > 0.15
            else "The layer stack, not the vocabulary table, dominates."
        )
    )
)
fig = plots.parameter_share(df)

# %% [markdown]
# ## How the values are distributed
#
# Per block type, the medians over layers of the distribution columns. Excess kurtosis is 0 for a
# Gaussian; large values mean a few weights far out in the tails.

# %%
cols = ["std", "abs_max", "excess_kurtosis", "skewness", "beyond_6sigma_frac", "zero_frac"]
dist = (
    df[df["kind"] != "norm"]
    .groupby("block_type")[cols]
    .median()
    .sort_values("excess_kurtosis", ascending=False)
)
display(dist)
heaviest = dist.index[0]
from scipy.stats import norm as gaussian

gaussian_6sigma = 2 * gaussian.sf(6.0)
display(
    Markdown(
        f"The heaviest tails are in **{heaviest}** (median excess kurtosis "
        f"{dist.loc[heaviest, 'excess_kurtosis']:.1f}; median share beyond 6σ "
        f"{dist.loc[heaviest, 'beyond_6sigma_frac']:.2e}, against {gaussian_6sigma:.1e} for a Gaussian)."
    )
)

# %% [markdown]
# ## What 4-bit quantisation does to the values
#
# GGUF stores a matrix in blocks of consecutive values of a row, each block with its own scale (and,
# in some formats, its own minimum) and one small integer code per value. In the 4-bit formats a block
# of 32 values has 16 codes to choose from, so it holds at most 16 distinct values on an evenly spaced
# grid. We check that on the stored tensors of the model's 4-bit format, if it has one, then re-quantise
# the embedding to Q4_1 with `gguf`'s own quantiser to see what 4 bits do to a trained distribution
# whose higher-precision version we have.

# %%
ck = open_checkpoint(model)
q4_type = quant.four_bit_type(e.dtype for e in ck.entries)
if q4_type is not None:
    q4 = [e for e in ck.entries if e.dtype == q4_type]
    entry = next((e for e in q4 if "mlp.up_proj" in e.name), q4[0])
    w = ck.read(entry)
    levels = quant.levels_per_block(w)
    block0 = w[0, :32]
    display(Markdown(f"{model_label(model)} stores {len(q4)} tensors as {quant.format_rule(q4_type)}."))
    print(f"{entry.name} ({entry.dtype}): {levels.size:,} blocks; distinct values per block: max {levels.max()}, "
          f"median {np.median(levels):.0f}; {np.mean(levels == 16):.1%} of blocks use all 16 levels")  # fmt: skip
    print(f"first block: {np.unique(block0).size} levels, grid step {quant.grid_step(block0):.3g}")
    fig = plots.quant_block(block0, f"{entry.name}: first 32 values of row 0 ({q4_type})")
    assert levels.max() <= 16
else:
    print(f"{model} stores no 4-bit tensors ({sorted(set(df['dtype']))}): nothing quantised to inspect")

# %%
emb_entry = ck.find("embedding")
if emb_entry is not None and ck.format == "gguf":
    rows = min(4096, emb_entry.shape[0])
    e8 = ck.read_rows(emb_entry, 0, rows)
    e4 = quant.requantise(e8, "Q4_1")
    from qwen_anatomy.weights.stats import distribution

    compare = pd.DataFrame(
        {f"{emb_entry.dtype} (stored)": distribution(e8), "Q4_1 (re-quantised)": distribution(e4)}
    ).loc[["std", "abs_max", "excess_kurtosis", "zero_frac", "near_zero_rel_frac", "beyond_6sigma_frac"]]
    display(compare)
    rel_err = np.linalg.norm(e4 - e8) / np.linalg.norm(e8)
    kurt_change = compare.iloc[2, 1] - compare.iloc[2, 0]
    display(
        Markdown(
            f"The embedding of {model_label(model)} is stored as {quant.format_rule(emb_entry.dtype)}. "
            f"On its first {rows} rows, 4-bit re-quantisation leaves a relative Frobenius error "
            f"of **{rel_err:.1%}**; excess kurtosis moves by {kurt_change:+.2f} and the exact-zero share "
            f"goes from {compare.iloc[3, 0]:.2%} to {compare.iloc[3, 1]:.2%}. "
            + (
                "Values pile onto a few grid points per block, so exact zeros (and near-zeros) multiply."
                if compare.iloc[3, 1] > compare.iloc[3, 0]
                else f"Exact zeros become rarer: {quant.zero_change_reason(emb_entry.dtype, 'Q4_1')}."
                if compare.iloc[3, 1] < compare.iloc[3, 0]
                else "The exact-zero share does not change."
            )
        )
    )
    fig = plots.value_histograms(
        {"stored": e8.ravel(), "Q4_1": e4.ravel()}, title=f"Embedding values, {emb_entry.dtype} vs Q4_1"
    )
else:
    print("the 4-bit comparison needs a GGUF checkpoint with an embedding; skipped for this model")

# %% [markdown]
# ## A null model: same shapes, never trained
#
# A statistic means little without a baseline. The null model has exactly the trained model's
# shapes, filled as transformers initialises them (matrices i.i.d. Normal(0, 0.02), norms 1), and
# goes through the same table.

# %%
tmp = Path(tempfile.mkdtemp(prefix="null-model-"))
null_dir = synthetic.null_model_like(ck, tmp / "null", seed=seed, layers=null_layers)
null = analyse(null_dir, spectra=spectra, include=include)
metrics = ["std", "excess_kurtosis", "stable_rank", "effective_rank", "alpha"]
present = [m for m in metrics if df[m].notna().any()]
side = pd.concat(
    {
        "trained": df[df["kind"] == "weight"].groupby("block_type")[present].median(),
        "random": null[null["kind"] == "weight"].groupby("block_type")[present].median(),
    },
    axis=1,
)
display(side)

# %%
kt = float(df.loc[df["kind"] == "weight", "excess_kurtosis"].median())
kr = float(null.loc[null["kind"] == "weight", "excess_kurtosis"].median())
lines = [f"Median excess kurtosis of weight matrices: trained {kt:.2f}, random {kr:.2f}."]
lines.append(
    "Training moves the weights far from Gaussian: heavy tails appear."
    if kt > kr + 0.5
    else "The trained weights are about as Gaussian as the random ones by this measure."
)
if "stable_rank" in present:
    sr = df.loc[df["kind"] == "weight", "stable_rank"] / df.loc[df["kind"] == "weight", "design_rank"]
    srn = (
        null.loc[null["kind"] == "weight", "stable_rank"] / null.loc[null["kind"] == "weight", "design_rank"]
    )
    lines.append(
        f"Median stable rank / design rank: trained {sr.median():.3f}, random {srn.median():.3f} "
        + (
            "(training concentrates energy in fewer directions)."
            if sr.median() < srn.median()
            else "(no concentration)."
        )
    )
display(Markdown(" ".join(lines)))
fig = plots.compare_models(df, null, "excess_kurtosis", ylabel="median excess kurtosis")
if "stable_rank" in present:
    fig = plots.compare_models(df, null, "stable_rank", ylabel="median stable rank")

# %%
import shutil

shutil.rmtree(tmp, ignore_errors=True)
display(Markdown(f"Table built in {table_seconds:.1f} s; header summary in {header_seconds:.2f} s."))
