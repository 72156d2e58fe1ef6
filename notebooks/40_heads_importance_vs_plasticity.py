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
# # Attention heads: importance against plasticity
#
# Are the heads that matter most for a task the ones whose weights move most when the model is
# fine-tuned for it? This chapter measures both for every head of a Qwen2, before (θ0) and
# after (θ1) fine-tuning on a new task, with several fine-tuning seeds, and reports every statistic
# next to its chance level and next to the smallest correlation its number of heads can detect. A
# last section asks a narrower question of a released pretrained model (the `model` parameter): can
# cheap gradient quantities rank all its heads the way true ablation does?
#
# The original experiment (DeBERTa-v3-base fine-tuned on MNLI) had six problems, each fixed here:
#
# 1. Its "predicted plasticity" G²/F is at most 1 for every head by Jensen's inequality; it measures
#    how evenly gradient *size* spreads over examples, not whether examples agree in *sign*. We report
#    it beside the signed ratio (E g)²/E[g²] and −E[g], the first-order estimate of ablation.
# 2. Its means were over batches; here per-example gate gradients come from one backward pass.
# 3. Its relative update mixed an L2 norm with a plain sum; here Urel = ‖Δθ_h‖ / ‖θ0_h‖.
# 4. Its importance before fine-tuning went through a randomly initialised classifier; here every task
#    is language modelling, so the LM head is meaningful at θ0.
# 5. Depth drives everything; within-layer correlations are reported beside the raw ones.
# 6. Head rankings are unstable across seeds; three or more fine-tuning seeds, with their agreement.

# %% tags=["parameters"]
theta0 = "relu-n10-forward"  # θ0: a small Qwen2 trained on ReLU (forward order), shipped in data/models
results_dir = (
    "data/results/heads/finetune-square"  # committed book-scale results, relative to the repository root
)
regenerate = False  # True: rerun the fine-tuning experiment here, into a temporary directory, and read that
live_seeds = [0, 1, 2]  # fine-tuning seeds when regenerating
live_steps = 300  # fine-tuning steps per seed when regenerating
live_train_samples = 20000
live_eval_examples = 256
n_boot = 300  # bootstrap resamples of evaluation examples
n_perm = 2000  # permutations per p-value
synthetic_dir = "data/results/heads/synthetic-relu-wide"  # the synthetic pair with power (96 heads, 3 seeds)
real_pair_dir = "data/results/heads/smollm2-stdlib"  # the real pair (SmolLM2 fine-tuned on stdlib docs)
model = "qwen2.5-coder-0.5b"  # the real model of the last section: built-in name, directory or .gguf
real_examples = 12  # standard-library docstrings used as real English text
real_tokens = 40  # tokens per text
real_ablate_heads = (
    48  # heads truly ablated (stratified: an equal share per layer); gradients cover every head
)
seed = 0

# %%
import tempfile
from pathlib import Path

import pandas as pd
import torch
from IPython.display import Markdown, display

from qwen_anatomy.heads import plots, realpair, report, synthetic
from qwen_anatomy.heads.ablation import stratified_heads
from qwen_anatomy.heads.agreement import agreement_table, measured_agreement
from qwen_anatomy.heads.analysis import PROXY_LABELS, compute_stats, head_table, measure
from qwen_anatomy.heads.core import head_layout
from qwen_anatomy.heads.data import stdlib_texts, text_batch
from qwen_anatomy.heads.experiment import HeadsExperiment, load_results, run
from qwen_anatomy.heads.power import detectable_rho, power_record, power_sentence
from qwen_anatomy.loading import REPO_ROOT, load_model
from qwen_anatomy.modelnames import model_label

results_dir = REPO_ROOT / results_dir  # an absolute parameter stays as given
synthetic_dir, real_pair_dir = REPO_ROOT / synthetic_dir, REPO_ROOT / real_pair_dir

torch.set_num_threads(min(2, torch.get_num_threads()))
torch.manual_seed(seed)
pd.set_option("display.precision", 4)

# %% [markdown]
# ## The gate
#
# Each head's output passes through a multiplier (a gate, 1 by default) at the input of `o_proj`,
# which has no bias. Zero ablation sets a gate to 0; the gradient of the loss with respect to the
# gate, at 1, is the sensitivity used by the gradient proxies. Two exact checks on θ0 before anything
# else: a gate of ones changes nothing, and a zero gate equals deleting the head's `head_dim` input
# columns of `o_proj`.

# %%
model0, _ = load_model(theta0)
lay = head_layout(model0)
ids = torch.randint(5, model0.config.vocab_size, (4, 12), generator=torch.Generator().manual_seed(seed))
with torch.no_grad():
    ref = model0(ids).logits
    ones_equal = torch.equal(model0(ids, head_gates=torch.ones(lay.num_layers, lay.num_heads)).logits, ref)
    gates = torch.ones(lay.num_layers, lay.num_heads)
    gates[0, 0] = 0
    edited, _ = load_model(theta0)
    edited.model.layers[0].self_attn.o_proj.weight[:, : lay.head_dim] = 0
    column_diff = float((edited(ids).logits - model0(ids, head_gates=gates).logits).abs().max())
assert ones_equal and column_diff < 1e-5
print(
    f"θ0: {lay.num_layers} layers x {lay.num_heads} query heads ({lay.num_kv_heads} KV groups of "
    f"{lay.group_size}), head_dim {lay.head_dim}: N = {lay.n_heads_total} heads"
)
print(f"gate of ones leaves the logits bit-identical: {ones_equal}")
print(f"gate 0 on head (0, 0) vs zeroed o_proj columns: max |Δlogit| = {column_diff:.2e}")

# %% [markdown]
# ## θ0, θ1 and the evaluation set
#
# θ0 was trained by the project on ReLU cumulative sums (Part III). θ1 is θ0 fine-tuned on the
# Square-mod task with the Part III training function (`init_from` θ0), once per seed. Importance is
# measured on the Square test set: the task θ1 is fine-tuned for, at θ0 (I_pre) and θ1 (I_post).
# The book reads results regenerated by one command,
#
# ```
# .venv/bin/python -m qwen_anatomy.heads.experiment --out data/results/heads/finetune-square
# ```
#
# which writes run records beside the numbers. Every build of the book, CI's included, reads these
# committed files through `load_results`, which stops with that command if any file is missing. With
# `regenerate = True` the notebook runs the same function itself into a temporary folder and reads that.

# %% tags=["hide-input"]
if regenerate:
    out = Path(tempfile.mkdtemp(prefix="heads-")) / "finetune-square"
    cfg = HeadsExperiment(
        theta0=theta0,
        seeds=tuple(live_seeds),
        finetune_steps=live_steps,
        train_samples=live_train_samples,
        eval_examples=live_eval_examples,
        n_perm=n_perm,
        n_boot=n_boot,
        figures=False,
    )
    run(cfg, out, progress=True)
else:
    out = Path(results_dir)
res = load_results(out)
rec = res["run_record"]
seeds = sorted(res["seeds"])
print(f"results: {out} (status {rec['status']}, finished {rec['end_time']}, {rec['wall_seconds']:.0f} s)")
print(f"git commit {rec['git']['commit']} (dirty: {rec['git']['dirty']}), torch {rec['packages']['torch']}")
print(f"fine-tuning seeds: {seeds}; evaluation examples: {res['summary']['n_eval_examples']}")
display(report.seed_losses(res))

# %% [markdown]
# ## Every quantity, every head
#
# One row per head of the first seed: ablation importance at θ0 and θ1 (mean Δloss over examples),
# the gradient quantities at θ0 (G, F, Ppred = G²/F, the signed ratio, −E[g]), the head-output norm,
# and the update sizes U (with the shared K/V apportioned to the group's query heads) and Urel.

# %%
s0 = seeds[0]
r0 = res["seeds"][s0]
table = head_table(r0["m0"], r0["m1"], r0["update"])
cols = ["layer", "head", "kv_group", "I_pre", "I_post", "G_pre", "F_pre", "Ppred_pre", "snr_pre",
        "neg_Eg_pre", "norm_pre", "U", "Urel"]  # fmt: skip
display(table[cols])
fig = plots.heatmaps(table, ["I_pre", "I_post", "neg_Eg_pre", "Ppred_pre", "U", "Urel"], lay.num_layers,
                     lay.num_heads)  # fmt: skip

# %% [markdown]
# The maps show where in depth each quantity is large; look for whether the bright cells of the
# importance maps (top row) sit where the update maps (U, Urel) are bright.
#
# ## Statistics, each with its chance level
#
# For each pair: Spearman ρ over heads with a permutation p-value, a 95% bootstrap interval over
# evaluation examples, the within-layer ρ (layer-demeaned ranks), and the overlap of the two top-10%
# sets against its chance level K²/N. Rows are the mean over seeds (ρ) and the largest p-value.

# %% tags=["hide-input"]
pair_table = report.pair_table([res["seeds"][s]["stats"] for s in seeds])
display(pair_table)
st0 = r0["stats"]
ce = st0["counterexamples"]["I_pre_vs_Urel"]
display(report.counterexample_table(res))

# %% [markdown]
# The split view keeps shared and unshared weights apart: U^QO (a query head's own Q rows and O
# columns) against query-head ablation, and U^KV (a group's shared K and V rows) against ablating the
# whole group.

# %% tags=["hide-input"]
display(report.split_table(res))

# %%
fig = plots.importance_vs_update(table, "I_pre", "Urel", ce)
fig = plots.statistics_bars([report.pair_row(st0, a, b) for a, b in report.KEY_PAIRS])

# %% [markdown]
# The scatter puts each head at its relative update (x) and its importance before fine-tuning (y),
# coloured by layer; rings mark the counterexamples. The bars show ρ over all heads (blue, with its
# bootstrap interval) and within layers (orange) against chance (ρ = 0).
#
# ## The proxies: what G²/F does and does not measure
#
# Ppred = G²/F cannot exceed 1, whatever the model: it is high when every example's gradient has the
# same *size*, even if their signs cancel. The signed ratio (E g)²/E[g²] is high only when examples
# push the gate the same way, and −E[g] estimates the ablation effect to first order. How well each
# ranks heads against true ablation, at θ0 and θ1:

# %% tags=["hide-input"]
validity_mean = report.proxy_validity_means(report.proxy_validity_table(res))
display(validity_mean)
print(f"largest Ppred over all heads and seeds: {report.ppred_max(res):.4f} (≤ 1 by Jensen)")
fig = plots.proxy_validity_bars(st0["proxy_validity"])

# %% [markdown]
# ## Across seeds
#
# Each fine-tuning seed gives its own θ1, hence its own update sizes and post-fine-tuning importance.
# A ranking that changes from seed to seed cannot be a property of the head.

# %%
agreement = measured_agreement(res["agreement"])
display(agreement_table(res["agreement"]))
if len(seeds) > 1:
    fig = plots.seed_agreement_bars(agreement)

# %% [markdown]
# ## What the numbers say (the 8-head experiment)

# %% tags=["remove-input"]
finding = report.synthetic_finding(res, pair_table, validity_mean, lay.n_heads_total)
display(Markdown("**Finding.** On this model, " + finding))
display(Markdown(power_sentence(power_record(lay.n_heads_total, lay.num_layers))))

# %% [markdown]
# ## How many heads a question needs
#
# A correlation over N heads is a sample of N points. Fisher's z-transform gives the smallest true
# |ρ| that a two-sided test at α = 0.05 detects with probability 0.8: with the Spearman variance
# 1.06/(N − 3) of atanh ρ̂,
# $|\rho|_{\text{det}} = \tanh\big((z_{0.975} + z_{0.8})\sqrt{1.06/(N-3)}\big)$.

# %%
for n_heads in (8, 96, 270, 336):
    print(f"N = {n_heads:3d} heads: detectable |ρ| = {detectable_rho(n_heads):.2f}")

# %% [markdown]
# Eight heads can only see an effect that is nearly a straight line. The two experiments below are
# built for the power of the larger N printed above: a
# project-trained θ0 with 96 query heads fine-tuned on a task it can already partly do, and a released
# model fine-tuned on real text. Each is one resumable command
# (`python -m qwen_anatomy.heads.synthetic`, `python -m qwen_anatomy.heads.realpair`) that writes
# one folder; the chapter reads the folder when it is complete and says so when it is not.
#
# ## The synthetic pair with power
#
# θ0 (8 layers x 12 query heads, 4 KV groups of 3) is trained on ReLU cumulative sums of inputs in
# [−9, 9]; θ1 is θ0 fine-tuned on the same recurrence over inputs in [−12, 12], once per seed. The
# skill is the same and the new inputs are not, so θ0 already does most of the fine-tuning task: the
# precondition for importance before fine-tuning to mean anything, checked below in numbers.


# %% tags=["hide-input"]
hours = synthetic.projected_hours(synthetic.SyntheticPair())
items, syn = report.pair_section(
    synthetic_dir, "the synthetic pair", synthetic.REGENERATE, hours, report.pair_model_name
)
for item in items:  # a figure shows itself at the end of the cell, after its sentence
    if not hasattr(item, "savefig"):
        display(Markdown(item) if isinstance(item, str) else item)

# %% [markdown]
# ## The real pair
#
# θ0 is a released checkpoint and θ1 the same checkpoint fine-tuned with the Hugging Face Trainer on
# the documentation of Python's standard library, once per seed (the corpus split is fixed, the seed
# changes the data order); importance, gradient proxies and updates are measured on held-out
# documentation. θ0 is measured once and its numbers reused for every seed.

# %% tags=["hide-input"]
hours = realpair.projected_hours(realpair.RealPair())
items, real_pair = report.pair_section(
    real_pair_dir, "the real pair", realpair.REGENERATE, hours, report.pair_model_name
)
for item in items:  # a figure shows itself at the end of the cell, after its sentence
    if not hasattr(item, "savefig"):
        display(Markdown(item) if isinstance(item, str) else item)

# %% [markdown]
# ## A real pretrained model on real text
#
# Here the model is a released checkpoint (`model`) rather than θ0, and there is no θ1, so the question is narrower: do the gradient proxies, which cost one forward
# and one backward pass for *all* heads, rank heads the way true ablation does? The text is real
# English installed offline: the docstrings of Python standard-library modules. True zero ablation is
# run for a stratified subset of heads (`ablation.stratified_heads`: an equal share of every layer,
# drawn at random with the notebook's seed); each ρ carries a bootstrap interval over the texts.

# %% tags=["hide-input"]
real, real_tok = load_model(model)
rlay = head_layout(real)
texts = stdlib_texts(real_examples, seed=seed)
rbatch = text_batch(texts, real_tok, max_tokens=real_tokens)
display(
    Markdown(
        f"This section runs on **{model_label(model)}** (`model = {model!r}`): {rlay.num_layers} layers x "
        f"{rlay.num_heads} query heads ({rlay.num_kv_heads} KV groups of {rlay.group_size}), "
        f"N = {rlay.n_heads_total} heads."
    )
)
chosen = stratified_heads(rlay, min(real_ablate_heads, rlay.n_heads_total), seed=seed)
rm = measure(real, rbatch, "zero", heads=chosen, groups=False, batch_size=8, replicas=9)
rstats = compute_stats(rm, n_perm=n_perm, n_boot=n_boot, seed=seed)
print(f"{len(rbatch)} texts x ≤ {real_tokens} tokens; baseline loss {rm.loss.mean():.3f} nats/token")
print(f"gradient proxies for all {rlay.n_heads_total} heads; true ablation for {len(chosen)} heads")
rvalid = pd.DataFrame(rstats["proxy_validity"])[
    [
        "proxy",
        "n",
        "rho",
        "ci_low",
        "ci_high",
        "p_perm",
        "rho_within_layer_demeaned",
        "topk_overlap",
        "topk_chance",
    ]
]
rvalid["proxy"] = rvalid["proxy"].map(PROXY_LABELS)
display(rvalid)

# %%
real_table = head_table(rm)
fig = plots.heatmaps(real_table, ["G_pre", "neg_Eg_pre", "snr_pre", "norm_pre"], rlay.num_layers, rlay.num_heads,
                     ncols=4)  # fmt: skip
fig2 = plots.importance_vs_gradient(real_table, "I_pre", "neg_Eg_pre",
                                    title=f"{model_label(model)}: first-order estimate against true ablation")  # fmt: skip

# %% [markdown]
# The heat maps cover all heads (layers down, heads across); the scatter puts each ablated
# head's first-order estimate against its true ablation effect, and points on the grey line would
# mean the linear estimate is exact.

# %% tags=["remove-input"]
display(Markdown("**Finding.** " + report.proxy_finding(rstats["proxy_validity"], model=model_label(model))))
