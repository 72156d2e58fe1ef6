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
grid_rows = None  # rows per quantised tensor whose blocks are decoded (None: every row)
tied_rows = None  # rows of the two stored copies of the tied matrix compared (None: every row)
seed = 0

# %%
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from IPython.display import Markdown, display

from qwen_anatomy.modelnames import model_label
from qwen_anatomy.weights import plots, quant, quant_plots, synthetic
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
                else "and this checkpoint stores its LM head as a second matrix of the same size (a GGUF "
                "may store a matrix the original model ties twice, in two types: see the last section)."
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
# ## Quantised storage: values on a grid
#
# GGUF stores most matrices in *blocks* of consecutive values of a row. A block keeps one small
# integer **code** q per value and one or two numbers that place the codes on the real line: a step d
# (x ≈ d·q, a *symmetric* grid that contains 0) or a step and an offset (x ≈ d·q + m, a grid that
# starts at the block's minimum and rarely contains 0). Every value of a block therefore sits on an
# evenly spaced grid of 2^bits points, and a block of 32 values can use at most 32 of them. The "K"
# types add a second level: 256 values form a *super-block* whose block steps are themselves small
# integers times one fp16 super-block scale, which costs fewer bits than an fp16 step per block.
#
# We read the codes and scales straight from the stored bytes (`quant.decode_blocks`), not from the
# dequantised floats, and check that rebuilding the values from them gives, bit for bit, what the
# `gguf` package's own dequantiser gives. First, which types this checkpoint uses (from the header):

# %%
ck = open_checkpoint(model)
quant.type_inventory(ck).drop(columns="rule")

# %% [markdown]
# The decoding is checked before anything is measured: for the first and last tensor of each type, 64
# rows rebuilt from our codes and scales against `gguf.quants.dequantize`, compared as bit patterns.

# %%
decoding = quant.verify_decoding(ck)
assert decoding["bit_identical"].all(), decoding
decoding if len(decoding) else Markdown(f"{model_label(model)} stores no block-quantised tensor to decode.")

# %% [markdown]
# ### Every quantised tensor, measured
#
# One row per quantised tensor: block size, mean distinct values per block (`levels_mean`, at most
# `levels_bound`), the step relative to the block's largest magnitude (median over blocks), the share
# of values that are exactly 0 and the share of blocks whose grid contains 0, and the code the block's
# largest-magnitude entry lands on. Then the same, pooled by type.

# %%
grids = quant.grid_table(ck, max_rows=grid_rows)
grid_types = quant.by_type(grids)

# %% tags=["hide-input"]
if len(grids.table):
    display(grids.table[quant.TABLE_COLUMNS].head(8))
    display(grid_types[quant.TYPE_COLUMNS])
    display(Markdown(quant.grid_table_sentence(grids, model_label(model))))
else:
    print(f"{model_label(model)} stores no block-quantised tensor: the type sections below re-quantise one")

# %% [markdown]
# In the figure, each dot is a tensor. On the left, how many distinct values its blocks use against
# the most they could; on the right, the grid's step relative to the block's largest magnitude, with a
# short black line where the type's rule fixes it (the K types with a minimum search for theirs).

# %%
if len(grids.table):
    fig = quant_plots.grid_overview(grids.table)

# %% [markdown]
# ### Q8_0: 8 bits, one scale per 32 values
#
# The simplest grid: d = |x|max/127 for the block, q = round(x/d). Each of the 32 values is rounded to
# the nearest of 255 evenly spaced points around 0, so an error is at most half a step, d/2, and 0 is
# always a grid point. Look at how fine the grid is against the spread of the block.

# %%
fig = quant_plots.show_type(ck, "Q8_0", grids, model_label(model))

# %% [markdown]
# ### Q5_0: 5 bits, symmetric, and the extreme kept exactly
#
# Q5_0 takes the entry of largest magnitude *with its sign*, x_max, sets d = x_max/−16 and stores
# q = round(x/d) + 16 in 0..31. The extreme lands exactly on code −16, the one end of the grid without
# a mirror (the other side stops at +15), so d may be negative. The fifth bit of each code is kept
# apart in one 32-bit word per block. Look for the spike at code −16 in the code usage.

# %%
fig = quant_plots.show_type(ck, "Q5_0", grids, model_label(model))

# %% [markdown]
# ### Q4_1: 4 bits with a minimum
#
# Q4_1 spends its 16 codes between the block's minimum and maximum: m = min, d = (max − min)/15. No
# range is wasted on a side the block does not reach, but 0 is a grid point only by accident, so the
# small weights around 0 move by up to half a step instead of becoming exactly 0. Both ends of the
# grid are always used (the minimum and the maximum): look for the two raised bars at codes 0 and 15.

# %%
fig = quant_plots.show_type(ck, "Q4_1", grids, model_label(model))

# %% [markdown]
# ### Q4_K: 4 bits, super-blocks of 256
#
# Q4_K has Q4_1's form, x ≈ a_j·q − b_j for block j, but the eight blocks of a super-block store
# a_j = d·s_j and b_j = d_min·m_j as 6-bit integers s_j and m_j and two fp16 numbers d and d_min for
# all eight: 4.5 bits per value instead of Q4_1's 5. llama.cpp chooses each block's scale and minimum
# by a small search that minimises a weighted squared error, so a block's tails may be clipped, and
# the minimum is never above 0. Look at the dashed line at 0: it falls between two grid points.

# %%
fig = quant_plots.show_type(ck, "Q4_K", grids, model_label(model))

# %% [markdown]
# ### Q6_K: 6 bits, symmetric, blocks of 16
#
# Q6_K is symmetric like Q5_0 (codes −32..31, 0 on the grid), with blocks of 16 values whose scales
# are signed 8-bit integers times one fp16 number per super-block of 256: 6.5625 bits per value. The
# quantiser starts from x_max/−32, as Q5_0 does from x_max/−16, then tries a few nearby scales and
# keeps the one with the smallest error, so the extreme does not always land on −32: compare the bars
# at −32 and −31 in the code usage.

# %%
fig = quant_plots.show_type(ck, "Q6_K", grids, model_label(model))

# %% tags=["hide-input"]
for other_type in quant.other_types(grids):
    fig = quant_plots.show_type(ck, other_type, grids, model_label(model), heading=True)

# %% [markdown]
# ## One matrix stored twice
#
# Qwen2.5-0.5B ties its LM head to its embedding: one matrix, used at both ends. Its GGUF nevertheless
# stores two copies, `token_embd.weight` and `output.weight`, in two types. Comparing them row by row
# isolates quantisation error on the same matrix: if they are one matrix, their difference is the sum of
# two rounding errors, each spread evenly over ±step/2 (a variance of step²/12 per value), and the steps
# of every block predict its size. Rows are streamed a few thousand at a time.

# %%
if quant.stored_pair(ck) is not None:
    tied = quant.compare_tied(ck, max_rows=tied_rows)
    display(Markdown(quant.tied_sentence(tied.summary)))
else:
    tied = None
    display(Markdown(quant.no_pair_sentence(ck, model_label(model))))

# %% [markdown]
# On the left, the measured per-row difference (filled) over what the steps predict (black outline): if
# the difference is quantisation error and nothing else, the two histograms coincide. On the right, the
# same difference against the row's norm, to see whether some rows (rare tokens, say) are stored worse.

# %%
if tied is not None:
    fig = quant_plots.tied_figure(tied)

# %% [markdown]
# ## What 4 bits do to a trained distribution
#
# Finally, we re-quantise the embedding to Q4_1 with `gguf`'s own quantiser to see what 4 bits do to
# the statistics of a trained distribution whose higher-precision version we have.

# %% tags=["hide-input"]
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
