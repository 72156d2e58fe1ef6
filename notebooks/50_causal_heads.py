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
# # Causal heads: CausalQwen on a Qwen2 backbone
#
# A language model's head turns the last hidden state into one softmax over the vocabulary. CausalQwen
# replaces that head with two steps. **Abduction** infers, at every position, a distribution over an
# individual "causal representation" $U \sim \mathrm{Cauchy}(\mu_U, \gamma_U)$. **Action** maps $U$
# through linear laws to decisions: a score per token, judged one-vs-rest (OvR), and, where the next
# token is a number, its value. Because every distribution is Cauchy, each step stays analytic: training
# needs no sampling.
#
# This chapter checks the Cauchy facts numerically, builds the model piece by piece from
# `qwen_anatomy.causal`, shows that at step 0 it reproduces the base model exactly, trains it on a frozen
# backbone beside an honest baseline, and reads the saved results of the experiment suites. The design
# follows the project spec (one consistent version of the original CausalQwen); where the spec is silent,
# the choice made is named and explained.

# %% tags=["parameters"]
model_name = "smollm2-135m"  # backbone for the step-by-step build and the step-0 checks
mc_draws = 1_000_000  # Monte-Carlo draws for the propagation check
threshold_grid = [0.0, 10.0, 100.0, 1000.0, 10000.0, 100000.0]
step0_texts = 16  # evaluation texts for the step-0 measurements
live_model = "causal-tiny-lm"  # small project backbone trained live in this chapter
live_steps = 300
live_batch = 16
suite_model = "smollm2-135m"  # backbone of the saved basic / comparison / ablation / initialization suites
book_model = "smollm2-135m"  # backbone of the saved comprehensive suite
run_suites_inline = False  # CI: run tiny suites here instead of reading saved results
inline_steps = 2
seed = 0

# %%
import math
import tempfile
from pathlib import Path

import pandas as pd
import torch
from IPython.display import Markdown, display

from qwen_anatomy.causal import cauchy
from qwen_anatomy.causal import experiments as causal_experiments
from qwen_anatomy.causal import plots as causal_plots
from qwen_anatomy.causal.data import evaluation_sets, make_texts
from qwen_anatomy.causal.model import BaselineQwen, CausalConfig, CausalQwen, phi
from qwen_anatomy.causal.numtok import NumberTokenizer
from qwen_anatomy.causal.train import evaluate, generate, step0_agreement, train
from qwen_anatomy.loading import load_model

torch.set_num_threads(1)
torch.manual_seed(seed)
pd.set_option("display.precision", 3)

# %% [markdown]
# ## The Cauchy facts, checked
#
# For independent $X_j \sim \mathrm{Cauchy}(\mu_j, \gamma_j)$, the characteristic function is
# $\varphi_{X_j}(t) = e^{i\mu_j t - \gamma_j |t|}$, so $\sum_j w_j X_j + b$ has
# $e^{i(\sum_j w_j\mu_j + b)t - (\sum_j |w_j|\gamma_j)|t|}$: it is again Cauchy with location
# $\sum_j w_j \mu_j + b$ and scale $\sum_j |w_j| \gamma_j$. A linear layer maps a Cauchy vector with a
# matrix product for the locations and a product with $|W|$ for the scales. The Normal rule would be
# $\sqrt{\sum_j w_j^2\sigma_j^2}$ instead. Below, draws of $X$ pushed through a random $W$ are compared with
# the closed form. Cauchy draws have no mean or variance, so the check uses the median (the location) and
# half the inter-quartile range (the scale).

# %%
g = torch.Generator().manual_seed(seed)
loc_x = torch.randn(6, generator=g, dtype=torch.float64) * 3
scale_x = torch.rand(6, generator=g, dtype=torch.float64) + 0.2
w_demo = torch.randn(4, 6, generator=g, dtype=torch.float64)
b_demo = torch.randn(4, generator=g, dtype=torch.float64)
loc_y, scale_y = cauchy.linear_propagate(loc_x, scale_x, w_demo, b_demo)
_, normal_rule = cauchy.linear_propagate(loc_x, scale_x, w_demo, b_demo, dist="normal")
draws = cauchy.sample(loc_x, scale_x, n=mc_draws, generator=g) @ w_demo.T + b_demo
mc_loc, mc_scale = cauchy.robust_location_scale(draws)
propagation = pd.DataFrame(
    {
        "closed-form location": loc_y.numpy(),
        "Monte-Carlo median": mc_loc.numpy(),
        "closed-form scale": scale_y.numpy(),
        "Monte-Carlo half IQR": mc_scale.numpy(),
        "Normal rule (wrong here)": normal_rule.numpy(),
    }
)
display(propagation)
worst_scale = float(((mc_scale - scale_y).abs() / scale_y).max())
worst_normal = float(((normal_rule - scale_y).abs() / scale_y).min())
display(
    Markdown(
        f"With {mc_draws:,} draws the largest relative error of the propagated scale is {worst_scale:.2%}; the "
        f"Normal rule misses the Cauchy scale by at least {worst_normal:.0%} on every output."
    )
)

# %% [markdown]
# The one-vs-rest probability of token $k$ is $P(S_k > C_k) = \tfrac12 + \tfrac1\pi\arctan\frac{\mu_{S,k} -
# C_k}{\gamma_{S,k}}$, one minus the CDF at the threshold. The same draws give it empirically:

# %%
threshold_demo = 1.0
empirical = (draws > threshold_demo).double().mean(0)
closed = cauchy.ovr_probability(loc_y, scale_y, threshold_demo)
display(
    pd.DataFrame({"closed form P(S > C)": closed.numpy(), "fraction of draws above C": empirical.numpy()})
)
print(f"largest difference: {float((empirical - closed).abs().max()):.4f}")

# %% [markdown]
# ## Numbers in text
#
# The tokenizer wrapper replaces every number that is not glued to a letter, digit or underscore by one
# `<NUM>` token, and returns its value beside the ids. Text without numbers encodes exactly as the
# wrapped tokenizer does. SmolLM2 has no spare embedding row, so `<NUM>` gets a new id (the vocabulary
# size) and the model a new row initialised to the mean embedding; the small project tokenizer reserved
# `<NUM>` when it was trained, like Qwen2.5's unused reserved ids.

# %%
base, tok = load_model(model_name)
numtok = NumberTokenizer(tok)
example = "The price of the lamp is 12.5 dollars, a drop of -3 from mp3 prices."
enc = numtok.encode(example)
display(
    pd.DataFrame(
        {
            "token": [numtok._tok.id_to_token(i) for i in enc.input_ids],
            "id": enc.input_ids,
            "numerical value": enc.numerical_values,
        }
    ).T
)
print("round trip:", numtok.decode(enc.input_ids, enc.numerical_values) == example)
print(f"<NUM> id {numtok.num_token_id}; new embedding row needed: {numtok.added_num_row}")

# %% [markdown]
# ## The architecture, step by step
#
# **Numeric fusion.** $e_i = \mathrm{Embed}(x_i) + \varphi(v_i)$ with $\varphi(v) = \mathrm{sign}(v)\ln(1 +
# |v|)\,w$ and a learnable unit vector $w$. Since $\varphi(0) = 0$, every text position enters the backbone
# exactly as before.

# %%
model = CausalQwen.from_base(base, numtok.num_token_id, CausalConfig(seed=seed)).eval()
batch = numtok.batch([example])
with torch.no_grad():
    plain = base.model.embed_tokens(batch["input_ids"].clamp(max=base.config.vocab_size - 1))
    fused = model.embed(batch["input_ids"], batch["numerical_values"])
text_pos = batch["numerical_values"][0] == 0
print("text positions unchanged:", torch.equal(fused[0, text_pos], plain[0, text_pos]))
print(
    "phi(12.5) has norm ln(13.5) =",
    round(math.log(13.5), 4),
    "->",
    round(float(phi(torch.tensor([12.5]), model.num_direction.detach()).norm()), 4),
)

# %% [markdown]
# **Features, abduction, action.** $z$ is the backbone's last hidden state after the final norm. Abduction
# gives $\mu_U = W_{loc} z + b_{loc}$ and $\gamma_U = \mathrm{softplus}(W_s z + b_s)$. Action adds
# exogenous noise ($\gamma_U + |b_{noise}|$) and propagates through the class head and the regression head
# with the Cauchy rule. The shapes, for this one sentence:

# %%
with torch.no_grad():
    out = model(batch["input_ids"], batch["numerical_values"], batch["attention_mask"])
for name in ("z", "loc_U", "scale_U", "loc_S", "scale_S", "probs", "loc_Y", "scale_Y"):
    print(f"{name:8s} {tuple(getattr(out, name).shape)}")

# %% [markdown]
# At initialisation $W_{loc} = I$, $b_{loc} = 0$, $W_s = 0$ with $\mathrm{softplus}(b_s) = \gamma_0 = 10$, and
# the class head is an *independent copy* of the base LM head (SmolLM2 ties its head to the embedding; the
# copy is untied so that training the head leaves the embedding alone). So $\mu_S$ equals the base logits,
# and compatible mode (softmax of $\mu_S$) is the base model.

# %%
plain_texts = [
    "The quick brown fox jumps over the lazy dog.",
    "Water boils when it is hot enough, and ice melts in the sun.",
    "She opened the window and the room filled with fresh air.",
]
pb = numtok.batch(plain_texts)
assert not (pb["input_ids"] == numtok.num_token_id).any()
with torch.no_grad():
    base_logits = base(pb["input_ids"], attention_mask=pb["attention_mask"]).logits
    out0 = model(pb["input_ids"], pb["numerical_values"], pb["attention_mask"])
real = pb["attention_mask"].bool()
v_base = base_logits.shape[-1]
diff_logits = float((out0.loc_S[..., :v_base] - base_logits)[real].abs().max())
diff_probs = float(
    (torch.softmax(out0.loc_S[..., :v_base], -1) - torch.softmax(base_logits, -1))[real].abs().max()
)
display(
    Markdown(
        f"On {len(plain_texts)} sentences without numbers ({int(real.sum())} positions) the largest difference "
        f"between the step-0 locations and the base logits is {diff_logits:.1e}, and between the two next-token "
        f"distributions {diff_probs:.1e} ("
        + ("within" if diff_probs <= 1e-6 else "outside")
        + " the 1e-6 the tests require). "
        + (
            "The extra `<NUM>` column is the mean-embedding row the base model does not have; the comparison is "
            "over the base vocabulary."
            if model.extra_rows is not None
            else "`<NUM>` uses a row the base model already has, so the two distributions cover the same tokens."
        )
    )
)

# %% [markdown]
# ## The threshold, measured
#
# The OvR probabilities at step 0 depend on the threshold $C$ and on the scales: $\gamma_{S,k} \approx
# \lVert W_k \rVert_1 (\gamma_0 + 0.1)$. With $C = 0$ every $P_k$ is near one half, so $\sum_k P_k$ is about
# half the vocabulary; large $C$ makes them sparse. Neither changes $\mu_S$, so compatible mode is the base
# model whatever $C$ is; what changes is how often the OvR argmax agrees with the base argmax.

# %%
eval_step0 = evaluation_sets(step0_texts, seed=1234)["basic"]
sb = numtok.batch(eval_step0)
sums, agree = [], []
for c in threshold_grid:
    m_c = CausalQwen.from_base(base, numtok.num_token_id, CausalConfig(threshold=c, seed=seed)).eval()
    with torch.no_grad():
        o = m_c(sb["input_ids"], sb["numerical_values"], sb["attention_mask"])
    sums.append(float(o.probs.sum(-1)[sb["attention_mask"].bool()].median()))
    agree.append(step0_agreement(m_c, numtok, eval_step0))
    del m_c
median_scale_s = float(o.scale_S.median())
fig = causal_plots.threshold_effect(threshold_grid, sums, agree)
display(
    pd.DataFrame({"threshold C": threshold_grid, "median sum P_k": sums, "OvR argmax = base argmax": agree})
)
best_c = threshold_grid[max(range(len(agree)), key=agree.__getitem__)]
display(
    Markdown(
        f"Here the median class scale at step 0 is {median_scale_s:.0f}, so thresholds below it barely move the "
        f"probabilities. The OvR argmax agrees with the base argmax most often at C = {best_c:g} "
        f"({max(agree):.0%} of positions), and the median sum of probabilities falls from {sums[0]:.0f} "
        f"(C = {threshold_grid[0]:g}) to {sums[-1]:.3g} (C = {threshold_grid[-1]:g})."
    )
)

# %% [markdown]
# The default threshold is checked against the comparison suite below, which trains with several
# thresholds: if training reshapes the scales, the sum of the OvR probabilities should approach 1 whatever
# the starting threshold.
#
# ## The loss
#
# Labels are the inputs shifted left. Classification is binary cross-entropy summed over the vocabulary at
# every valid position. Where the next token is `<NUM>`, the regression term is the Cauchy negative
# log-likelihood $\log(\pi\gamma_Y) + \log(1 + ((v - \mu_Y)/\gamma_Y)^2)$, gated by
# $g_i = m_i(\alpha + (1 - \alpha)P_{\langle NUM\rangle, i})$. The total is the mean classification loss plus
# $\lambda\,\sum_i g_i\,\mathrm{NLL}_i / \sum_i m_i$.
#
# One choice the spec leaves open: the gate's $P_{\langle NUM\rangle}$ is **detached**. With gradients
# through the gate the model could lower the loss by believing less that a number comes (whenever the NLL
# is positive), fighting the classification term; detached, the gate only weights.
#
# **Numerics of the OvR loss.** The spec clamps $P_k$ away from 0 and 1 before the logarithms. A clamp has
# zero gradient where it acts, and on a large vocabulary it acts a lot: once the scales shrink, hundreds of
# wrong classes per position have $P_k$ that rounds to exactly 1 in float32, the clamp holds them at
# $1 - 10^{-7}$, and nothing pushes them back down. (An earlier version of this chapter trained that way and
# SmolLM2's CausalQwen never predicted a number.) The library therefore computes both logarithms from the
# standardised margin $t_k = (\mu_{S,k} - C_k)/\gamma_{S,k}$: $\log P_k = \log(\arctan(-1/t_k)/\pi)$ for
# $t_k < 0$, which keeps its relative precision far into the tail, and $\log(1 - P_k)$ is the same function at
# $-t_k$. For the same reason the OvR argmax is taken on $t_k$ (the same order as $P_k$, without ties at 1).
# A test checks that the two forms agree wherever $P$ is representable and that a saturated wrong class
# still receives a gradient.
#
# ## Training on a frozen backbone
#
# The chapter trains live on the small project backbone (`causal-tiny-lm`: a 2-layer Qwen2 with hidden size
# 64, trained by `qwen-anatomy causal pretrain` on the same kinds of texts written in digits). The backbone's
# parameters are frozen; gradients still flow through its activations into the numeric direction $w$. The
# loop is plain PyTorch rather than the Hugging Face Trainer: the loss needs the values and the gate beside
# the ids, the health metrics come from the same forward pass, and the Trainer would add a 15-second import
# for AdamW, clipping and logging, which are five lines here.
#
# The baseline has the same backbone, numeric fusion, data and budget, with a softmax LM head (the same
# untied copy) and a Normal regression head.
#
# **Two learning rates.** Adam moves every entry of a parameter by about the learning rate per step,
# whatever its gradient. On SmolLM2 the copied head has 49,153 rows of 576 entries and the identity
# abduction 576 × 576: at the rate that suits the new parameters ($10^{-2}$), a handful of steps rewrites the
# base model's ranking of tokens, and the head must relearn it from scratch. `train(lr_pretrained=...)` gives
# the matrices copied from the base model (identity abduction, LM-head copy; `pretrained_parameters()`) their
# own, smaller rate. The `<NUM>` row is a new class, so it lives apart (`num_class_row`) and learns at the
# full rate. The baseline's head copy gets the same treatment, so the comparison stays fair. On the small
# backbone below the whole head trains at one rate; the saved SmolLM2 runs use $10^{-4}$ for the copied
# matrices (each run record lists its rates).
#
# **Clipping per parameter.** Gradient norms are clipped at 1 for each parameter on its own, not for all
# of them together. Under the OvR loss on a large vocabulary the scale of $U$ collapses towards 0 within
# a few steps (the health curves show it), and the gradient of the scale network grows like one over the
# scale. A global clip divides every gradient by that one norm, pushing the regression head's below Adam's
# $\epsilon$, and the regression head stops learning. The saved SmolLM2 history below keeps a run trained
# with a global clip beside the per-parameter one. `train(clip="global")` keeps the old behaviour.

# %%
live_base, live_tok = load_model(live_model)
live_numtok = NumberTokenizer(live_tok)
train_texts = make_texts("train", 2000, seed)
live_eval = evaluation_sets(64)
causal_live = CausalQwen.from_base(live_base, live_numtok.num_token_id, CausalConfig(seed=seed))
baseline_live = BaselineQwen(live_base, live_numtok.num_token_id, CausalConfig(seed=seed))
logs = {
    "CausalQwen": train(causal_live, live_numtok, train_texts, live_steps, live_batch, lr=1e-2, seed=seed),
    "baseline": train(baseline_live, live_numtok, train_texts, live_steps, live_batch, lr=1e-2, seed=seed),
}
fig = causal_plots.training_curves(logs, f"{live_model}, {live_steps} steps")

# %% [markdown]
# The four panels: the loss parts (classification solid, regression dashed), the batch `<NUM>` accuracy,
# the median abduction scale, and the median $\sum_k P_k$ (dotted line at 1; the baseline's softmax sums to 1
# by construction).

# %%
final = logs["CausalQwen"][-1]
first = logs["CausalQwen"][0]
display(
    Markdown(
        f"After {live_steps} steps the median sum of OvR probabilities went from {first['median_sum_p']:.3g} to "
        f"{final['median_sum_p']:.3g} ("
        + (
            "close to 1, as a calibrated one-vs-rest head should be"
            if 0.5 < final["median_sum_p"] < 2
            else "not yet near 1: more steps are needed"
        )
        + f"), and the median scale of U from {first['median_scale_u']:.3g} to {final['median_scale_u']:.3g}."
    )
)
live_rows = []
for name, m in (("CausalQwen", causal_live), ("baseline", baseline_live)):
    for set_name, texts in live_eval.items():
        live_rows.append({"model": name, "set": set_name, **evaluate(m, live_numtok, texts)})
live_table = pd.DataFrame(live_rows).set_index(["set", "model"])
display(
    live_table[["accuracy", "compat_accuracy", "num_f1", "mae", "median_ae", "rmse", "coverage95", "ece"]]
)

# %% [markdown]
# ## The four inference modes
#
# *Standard*: the OvR argmax with the full scale, value $\mu_Y$ (the Cauchy median). *Causal sampling*:
# draw an individual $u = \mu_U + \gamma_U \tan(\pi(\epsilon - \tfrac12))$, then decide with only the
# exogenous noise. *Shared*: one $\epsilon$ for the whole generation, a consistent individual. *Compatible*:
# softmax of $\mu_S$, the base model's behaviour at step 0. A predicted `<NUM>` appends the `<NUM>` id with the
# predicted value, which the text prints.

# %%
prompts = ["Hugo paid 42.5 dollars for the lamp. Question: how much did Hugo pay? Answer:", "value:"]
rows = []
for prompt in prompts:
    for mode in ("standard", "causal", "shared", "compatible"):
        gen = generate(causal_live, live_numtok, prompt, max_new_tokens=8, mode=mode, seed=seed)
        rows.append(
            {"prompt": prompt[-30:], "mode": mode, "continuation": gen["text"], "numbers": gen["numbers"]}
        )
display(pd.DataFrame(rows))

# %% [markdown]
# ## The experiment suites
#
# Each suite is `qwen_anatomy.causal.experiments.run(config)`, saved with a run record under
# `data/results/causal/<suite>/` by `qwen-anatomy causal suite --suite NAME --model M --steps N` (the exact
# commands are in that folder's README). Every variant starts from the same frozen backbone and sees the same
# batches for the same number of steps. At book scale every suite was run on SmolLM2-135M. A SmolLM2 training
# step takes a few seconds on this project's two CPU cores, so the budgets are small: the comprehensive suite
# trains each model longer than the others, which train more than twenty models between them, and the
# comparison grid is smaller than the library default. Each table says how many steps its models had.

# %%
if run_suites_inline:
    results_root = Path(tempfile.mkdtemp(prefix="causal-suites-"))
    tiny = {
        "steps": inline_steps,
        "batch_size": 4,
        "n_train": 32,
        "n_eval": 8,
        "eval_batch": 8,
        "log_every": 1,
    }
    for suite in causal_experiments.SUITES:
        causal_experiments.run_and_save({"suite": suite, "model": suite_model, **tiny}, root=results_root)
    if book_model != suite_model:
        causal_experiments.run_and_save(
            {"suite": "comprehensive", "model": book_model, **tiny}, root=results_root
        )
else:
    results_root = causal_experiments.RESULTS_ROOT


def load_suite(suite, model):
    runs = causal_experiments.all_results(suite, model, results_root)
    found = runs[-1] if runs else None
    if found is None:
        display(
            Markdown(
                f"No saved `{suite}` results for `{model}` under `{results_root}`: run "
                f"`qwen-anatomy causal suite --suite {suite} --model {model}`."
            )
        )
        return None
    results, path = found
    cfg = results["config"]
    display(
        Markdown(
            f"`{suite}` on `{model}`: {cfg['steps']} steps of batch {cfg['batch_size']} at learning rate "
            f"{cfg['lr']:g} ({cfg.get('lr_pretrained') or cfg['lr']:g} for the copied head matrices), "
            f"{cfg['n_eval']} texts per evaluation set, from `{path.name}`."
        )
    )
    return results


def winner_sentences(results):
    """One line per evaluation set, from experiments.winners (computed from the saved numbers)."""
    labels = {"num_f1": "<NUM> F1", "mae": "MAE", "coverage95": "95% coverage"}
    lines = {}
    for row in causal_experiments.winners(results):
        if row["winner"] == "undefined":
            text = (
                f"{labels[row['metric']]}: undefined for at least one model (no number predicted correctly)"
            )
        else:
            text = (
                f"{labels[row['metric']]} {row['CausalQwen']:.3g} vs {row['baseline']:.3g} ({row['winner']})"
            )
        lines.setdefault(row["set"], []).append(text)
    return "\n".join(f"- **{s}**: " + "; ".join(parts) for s, parts in lines.items())


# %%
comprehensive_book = load_suite("comprehensive", book_model)
if comprehensive_book is not None:
    table = (
        causal_experiments.metrics_table(
            comprehensive_book,
            (
                "num_f1",
                "num_precision",
                "num_recall",
                "mae",
                "rmse",
                "coverage95",
                "accuracy",
                "compat_accuracy",
                "ece",
            ),
        )
        .set_index(["set", "variant"])
        .sort_index()
    )
    display(table)
    display(
        Markdown(
            "CausalQwen against the baseline (coverage judged by its distance from 95%):\n\n"
            + winner_sentences(comprehensive_book)
        )
    )
    causal_row = [v for v in comprehensive_book["variants"] if v["kind"] == "causal"][0]
    first_row, last_row = causal_row["log"][0], causal_row["log"][-1]
    settled = 0.5 < last_row["median_sum_p"] < 2
    display(
        Markdown(
            f"After {comprehensive_book['config']['steps']} steps the CausalQwen head's median sum of OvR "
            f"probabilities is {last_row['median_sum_p']:.3g} (it started at {first_row['median_sum_p']:.3g}), "
            f"and its batch token accuracy {last_row['token_accuracy']:.2f}. "
            + (
                "The head has reached the regime where the probabilities sum to about 1."
                if settled
                else "The head has not reached the regime where the probabilities sum to about 1: this "
                "comparison measures an unfinished CausalQwen against a baseline whose softmax needs no such "
                "reshaping, at a budget set by the CPU. The comparison suite below reports whether the sums "
                "reach 1 from other thresholds."
            )
        )
    )
    for metric in ("num_f1", "mae", "coverage95"):
        causal_plots.metric_bars(
            comprehensive_book, metric, log_scale=metric == "mae", title=f"comprehensive suite, {book_model}"
        )

# %% [markdown]
# Every saved run of this suite on the book model, oldest first (the tables above show the newest):

# %%
history = []
for res, path in causal_experiments.all_results("comprehensive", book_model, results_root):
    for v in res["variants"]:
        history.append(
            {
                "run": path.name,
                "steps": res["config"]["steps"],
                "lr": res["config"]["lr"],
                "lr_pretrained": res["config"].get("lr_pretrained") or res["config"]["lr"],
                "clip": res["config"].get("clip", "global"),
                "model": v["name"],
                "mean <NUM> F1": sum(m["num_f1"] for m in v["metrics"].values()) / len(v["metrics"]),
                "mean accuracy": sum(m["accuracy"] for m in v["metrics"].values()) / len(v["metrics"]),
                "final median sum P_k": v["log"][-1]["median_sum_p"],
                "MAE (basic set)": v["metrics"].get("basic", {}).get("mae", float("nan")),
                "MAE (qa set)": v["metrics"].get("qa", {}).get("mae", float("nan")),
                "train seconds": v["train_seconds"],
            }
        )
history = pd.DataFrame(history)
display(history)
if not history.empty:
    last_by_clip = {c: g.iloc[-1] for c, g in history[history["model"] == "CausalQwen"].groupby("clip")}
    if {"global", "per_parameter"} <= set(last_by_clip):
        g_run, p_run = last_by_clip["global"], last_by_clip["per_parameter"]
        display(
            Markdown(
                f"CausalQwen's mean absolute error on the basic and QA sets: {g_run['MAE (basic set)']:.3g} and "
                f"{g_run['MAE (qa set)']:.3g} with a global clip ({g_run['steps']} steps), "
                f"{p_run['MAE (basic set)']:.3g} and {p_run['MAE (qa set)']:.3g} clipped per parameter "
                f"({p_run['steps']} steps). (The batch regression losses in the training logs are too noisy "
                "to compare: each batch holds a handful of numbers.)"
            )
        )

# %%
basic = load_suite("basic", suite_model)
if basic is not None:
    display(causal_experiments.metrics_table(basic).set_index(["set", "variant"]).sort_index())
    display(Markdown(winner_sentences(basic)))
if suite_model == book_model:
    comprehensive_suite_model = comprehensive_book  # shown in full above
else:
    comprehensive_suite_model = load_suite("comprehensive", suite_model)
    if comprehensive_suite_model is not None:
        display(
            causal_experiments.metrics_table(comprehensive_suite_model)
            .set_index(["set", "variant"])
            .sort_index()
        )
        display(Markdown(winner_sentences(comprehensive_suite_model)))
reference = comprehensive_suite_model or basic

# %% [markdown]
# In the three suites below the dashed line marks the baseline of the same backbone (from its
# comprehensive suite).


# %%
def suite_report(suite):
    res = load_suite(suite, suite_model)
    if res is None:
        return
    table = causal_experiments.metrics_table(res, ("num_f1", "mae", "coverage95", "accuracy", "ece"))
    display(
        table.pivot_table(index="variant", columns="set", values=["num_f1", "mae", "coverage95"], sort=False)
    )
    causal_plots.metric_bars(res, "num_f1", baseline=reference, title=f"{suite} suite, {suite_model}")
    causal_plots.metric_bars(
        res, "mae", baseline=reference, log_scale=True, title=f"{suite} suite, {suite_model}"
    )
    mean_f1 = table.groupby("variant", sort=False)["num_f1"].mean()
    mae_set = "qa" if "qa" in set(table["set"]) else table["set"].iloc[0]
    # MAE on the question/answer set, where the answer can be copied from the context (the extreme set's
    # errors, in the thousands, would swamp a mean over sets)
    qa_mae = table[table["set"] == mae_set].set_index("variant")["mae"].dropna()
    text = (
        f"Best mean <NUM> F1 over the sets: **{mean_f1.idxmax()}** ({mean_f1.max():.3f}; worst "
        f"{mean_f1.idxmin()}, {mean_f1.min():.3f}). "
    )
    if len(qa_mae):
        text += f"Lowest MAE on the {mae_set} set: **{qa_mae.idxmin()}** ({qa_mae.min():.3g})."
    else:
        text += "No variant predicted a number correctly, so MAE is undefined for all of them."
    if reference is not None:
        ref_rows = [v for v in reference["variants"] if v["kind"] == "baseline"][0]["metrics"]
        ref_f1 = sum(ref_rows[s]["num_f1"] for s in table["set"].unique()) / table["set"].nunique()
        beat = [name for name, f1 in mean_f1.items() if f1 > ref_f1]
        text += f" The baseline's mean F1 on the same sets is {ref_f1:.3f}; " + (
            f"{len(beat)} of {len(mean_f1)} variants beat it." if beat else "no variant beats it."
        )
    display(Markdown(text))
    return res, table


comparison = suite_report("comparison")
if comparison is not None:
    res, table = comparison
    thr = table[table["variant"].str.startswith("threshold=")]
    thr_f1 = thr.groupby("variant", sort=False)["num_f1"].mean()
    final_sum = {
        v["name"]: v["log"][-1]["median_sum_p"] for v in res["variants"] if v["name"].startswith("thr")
    }
    start_sum = {
        v["name"]: v["log"][0]["median_sum_p"] for v in res["variants"] if v["name"].startswith("thr")
    }
    default_name = f"threshold={CausalConfig().threshold:g}"
    near_one = [n for n, x in final_sum.items() if 0.5 < x < 2]
    display(pd.DataFrame({"median sum P_k at step 0": start_sum, "after training": final_sum}))
    display(
        Markdown(
            f"The library default is {default_name}; among the thresholds tried, **{thr_f1.idxmax()}** gives the "
            f"best mean <NUM> F1 ({thr_f1.max():.3f})"
            + (
                ", which is the default."
                if thr_f1.idxmax() == default_name
                else f" (the default: {thr_f1.get(default_name, float('nan')):.3f})."
            )
            + f" After training, {len(near_one)} of {len(final_sum)} threshold runs have a median sum of OvR "
            "probabilities between 0.5 and 2."
        )
    )

# %% [markdown]
# The ablation suite crosses the classifier (OvR binary cross-entropy or softmax cross-entropy on
# $\mu_S$) with the distribution (Cauchy, or Normal with scales $\sqrt{\sum w^2\sigma^2}$). Each switch is
# read by the forward pass or the loss; the tests fail if one is a no-op.

# %%
_ = suite_report("ablation")

# %% [markdown]
# The initialization suite varies the prior scale $\gamma_0$ and replaces the identity abduction by a random
# (Xavier) one, which loses the step-0 equivalence with the base model.

# %%
_ = suite_report("initialization")

# %% [markdown]
# ## What the numbers say, and what they do not
#
# The values in these synthetic texts are drawn at random, except in the question/answer template, which
# repeats a number stated earlier. So most regression targets are unpredictable from the text, and MAE
# mostly measures how well a model finds the middle of the value range, not understanding; the QA set is
# where copying through the numeric channel can show. The extreme set lies far outside the training range
# (values up to 1e5 against training values below 100), so its absolute errors are not comparable with the
# other sets. The published reference points of the
# original project (RMSE 42.1 on basic, 48.1 on QA) come from an easier pooled variant and are not
# comparable one to one. The budgets here are small, set by a shared two-core machine: the saved run records
# say exactly how many steps each model had.
