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
# `qwen_anatomy.causal` on a real backbone (the `model` parameter; by default the book's Qwen2,
# Qwen2.5-Coder-0.5B-Instruct), shows that at step 0 it reproduces the base model exactly, trains it on a
# frozen backbone beside an honest baseline, and reads the saved results of the book-scale study and of
# the head's design choices, which were run once on the backbone named where they are read (their
# commands are in `data/results/causal/README.md`) and are not re-run here. The design
# follows the project spec (one consistent version of the original CausalQwen); where the spec is silent,
# the choice made is named and explained.

# %% tags=["parameters"]
model = "qwen2.5-coder-0.5b"  # backbone of the step-by-step build and the step-0 checks
mc_draws = 1_000_000  # Monte-Carlo draws for the propagation check
threshold_grid = [0.0, 10.0, 100.0, 1000.0, 10000.0, 100000.0]
step0_texts = 16  # evaluation texts for the step-0 measurements
live_model = "causal-tiny-lm"  # small project backbone trained live in this chapter
live_steps = 300
live_batch = 16
study_dir = "data/results/causal/study"  # the study; when empty, it runs here on live_model with this budget:
study_seeds = [0, 1, 2]
study_steps = 300
study_n_train = 2000
study_n_eval = 64
study_estimates_dir = "data/results/causal/estimates"  # saved `causal study --estimate-out` measurements
second_study_dir = "data/results/causal/study-smollm2"  # the same study on SmolLM2-135M
collapse_dir = "data/results/causal/collapse"  # why the scale of U collapses: short runs of head variants
remedy_dir = "data/results/causal/remedies/learnable-threshold"  # one remedy at the study's budget
remedy_name = "learnable per-class thresholds"
variants_dir = "data/results/causal/variants-smollm2"  # the head's design choices, 3 seeds each
seed = 0

# %%
import math
import tempfile
from pathlib import Path

import pandas as pd
import torch
from IPython.display import Markdown, display

from qwen_anatomy.causal import cauchy, study_report
from qwen_anatomy.causal import collapse as causal_collapse
from qwen_anatomy.causal import plots as causal_plots
from qwen_anatomy.causal import report as causal_report
from qwen_anatomy.causal import study as causal_study
from qwen_anatomy.causal import variants as causal_variants
from qwen_anatomy.causal.data import evaluation_sets, make_texts
from qwen_anatomy.causal.model import BaselineQwen, CausalConfig, CausalQwen, phi
from qwen_anatomy.causal.numtok import NumberTokenizer
from qwen_anatomy.causal.train import evaluate, generate, step0_agreement, train
from qwen_anatomy.loading import REPO_ROOT, load_model
from qwen_anatomy.modelnames import model_label

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

# %% tags=["hide-input"]
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
# wrapped tokenizer does. A tokenizer without `<NUM>` gets it as a new id (its vocabulary size); the
# model then needs a new embedding row, initialised to the mean embedding, unless the embedding pads
# spare rows past the tokenizer. The small project tokenizer reserved `<NUM>` when it was trained.

# %%
base, tok = load_model(model)
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
display(
    Markdown(
        causal_report.num_token_sentence(
            model_label(model), numtok.num_token_id, numtok.added_num_row, base.config.vocab_size
        )
    )
)

# %% [markdown]
# ## The architecture, step by step
#
# **Numeric fusion.** $e_i = \mathrm{Embed}(x_i) + \varphi(v_i)$ with $\varphi(v) = \mathrm{sign}(v)\ln(1 +
# |v|)\,w$ and a learnable unit vector $w$. Since $\varphi(0) = 0$, every text position enters the backbone
# exactly as before.

# %%
causal_model = CausalQwen.from_base(base, numtok.num_token_id, CausalConfig(seed=seed)).eval()
batch = numtok.batch([example])
with torch.no_grad():
    plain = base.model.embed_tokens(batch["input_ids"].clamp(max=base.config.vocab_size - 1))
    fused = causal_model.embed(batch["input_ids"], batch["numerical_values"])
text_pos = batch["numerical_values"][0] == 0
print("text positions unchanged:", torch.equal(fused[0, text_pos], plain[0, text_pos]))
print(
    "phi(12.5) has norm ln(13.5) =",
    round(math.log(13.5), 4),
    "->",
    round(float(phi(torch.tensor([12.5]), causal_model.num_direction.detach()).norm()), 4),
)

# %% [markdown]
# **Features, abduction, action.** $z$ is the backbone's last hidden state after the final norm. Abduction
# gives $\mu_U = W_{loc} z + b_{loc}$ and $\gamma_U = \mathrm{softplus}(W_s z + b_s)$. Action adds
# exogenous noise ($\gamma_U + |b_{noise}|$) and propagates through the class head and the regression head
# with the Cauchy rule. The shapes, for this one sentence:

# %%
with torch.no_grad():
    out = causal_model(batch["input_ids"], batch["numerical_values"], batch["attention_mask"])
for name in ("z", "loc_U", "scale_U", "loc_S", "scale_S", "probs", "loc_Y", "scale_Y"):
    print(f"{name:8s} {tuple(getattr(out, name).shape)}")

# %% [markdown]
# At initialisation $W_{loc} = I$, $b_{loc} = 0$, $W_s = 0$ with $\mathrm{softplus}(b_s) = \gamma_0 = 10$, and
# the class head is an *independent copy* of the base LM head (a tied model such as SmolLM2 uses its
# embedding as the head; the copy is untied so that training the head leaves the embedding alone). So
# $\mu_S$ equals the base logits, and compatible mode (softmax of $\mu_S$) is the base model.

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
    out0 = causal_model(pb["input_ids"], pb["numerical_values"], pb["attention_mask"])
real = pb["attention_mask"].bool()
v_base = base_logits.shape[-1]
diff_logits = float((out0.loc_S[..., :v_base] - base_logits)[real].abs().max())
diff_probs = float(
    (torch.softmax(out0.loc_S[..., :v_base], -1) - torch.softmax(base_logits, -1))[real].abs().max()
)
display(
    Markdown(
        causal_report.step0_sentence(
            diff_logits, diff_probs, len(plain_texts), int(real.sum()), causal_model.extra_rows is not None
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
display(Markdown(causal_report.threshold_effect_sentence(threshold_grid, sums, agree, median_scale_s)))

# %% [markdown]
# The default threshold is checked against training further below: the head's design choices include
# thresholds of 0, 100 and 1000 beside the default 10, each trained with three seeds.
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
# The chapter trains live on the small project backbone (`causal-tiny-lm`: a small Qwen2, its size printed
# below, trained by `qwen-anatomy causal pretrain` on the same kinds of texts written in digits). The backbone's
# parameters are frozen; gradients still flow through its activations into the numeric direction $w$. The
# loop is plain PyTorch rather than the Hugging Face Trainer: the loss needs the values and the gate beside
# the ids, the health metrics come from the same forward pass, and the Trainer would add a slow import
# for AdamW, clipping and logging, which are five lines here.
#
# The baseline has the same backbone, numeric fusion, data and budget, with a softmax LM head (the same
# untied copy) and a Normal regression head.
#
# **Two learning rates.** Adam moves every entry of a parameter by about the learning rate per step,
# whatever its gradient. On a real backbone the copied head and the identity abduction are large matrices
# (896 × 896 and one row of 896 per class on Qwen2.5-0.5B): at the rate that suits the new parameters ($10^{-2}$), a handful of steps
# rewrites the base model's ranking of tokens, and the head must relearn it from scratch. `train(lr_pretrained=...)` gives
# the matrices copied from the base model (identity abduction, LM-head copy; `pretrained_parameters()`) their
# own, smaller rate. The `<NUM>` row is a new class, so it lives apart (`num_class_row`) and learns at the
# full rate. The baseline's head copy gets the same treatment, so the comparison stays fair. On the small
# backbone below the whole head trains at one rate; the study's rates are printed with it.
#
# **Clipping per parameter.** Gradient norms are clipped at 1 for each parameter on its own, not for all
# of them together. Under the OvR loss on a large vocabulary the scale of $U$ collapses towards 0 within
# a few steps (the health curves show it), and the gradient of the scale network grows like one over the
# scale. A global clip divides every gradient by that one norm, pushing the regression head's below Adam's
# $\epsilon$, and the regression head stops learning. `train(clip="global")` keeps the old behaviour.

# %%
live_base, live_tok = load_model(live_model)
live_numtok = NumberTokenizer(live_tok)
print(
    f"{live_model}: {live_base.config.num_hidden_layers} layers, hidden size {live_base.config.hidden_size}, "
    f"vocabulary {live_numtok.vocab_size}"
)
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

# %% tags=["remove-input"]
display(Markdown(causal_report.live_training_sentence(logs["CausalQwen"], live_steps)))

# %%
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
# ## The study: do the heads predict numbers that can be predicted?
#
# A number can only be predicted when the text says something about it. The study asks the question on
# texts where an answer exists (`qwen_anatomy.causal.templates`). Every number carries a *role* that says how
# the text before it predicts it: copied from an earlier sentence, a sum, a difference, a total
# (quantity times price), a unit conversion, the next term of an arithmetic sequence; or a *noisy*
# reading of a stated weight on a scale with a stated error, whose law is known exactly; or nothing at
# all (*random*, *given*). In the question/answer texts the answer is a number for one question in three
# and a word otherwise, so deciding that a number comes is a real task.
#
# Every model is set beside trivial references computed on the same targets: the training mean, and
# copy-the-last-number (the previous number in the text). For the noisy readings the oracle knows the
# true weight and the stated spread. An arm that cannot beat the better of the two trivial references on
# a role has not learned that role.
#
# Both arms (CausalQwen and the softmax + Normal baseline) run on one feature cache: the frozen backbone
# runs once over the training and evaluation texts, and each run trains its heads on the cached features,
# with the same batches, steps and learning rates, for each seed (the seed sets the heads' initialisation
# and the batch order). `causal_study.run(config, out)` writes one folder per arm and seed with its run
# record; a second call reuses finished runs and refuses a folder run with another configuration. The
# page reads the saved study when `study_dir` holds one; otherwise it runs the study here, on the small
# project backbone:

# %%
study_path = REPO_ROOT / study_dir
study_live = not study_report.study_exists(study_path)
if study_live:
    study_path = Path(tempfile.mkdtemp(prefix="causal-study-")) / "study"
    study_config = {
        "model": live_model,
        "seeds": study_seeds,
        "steps": study_steps,
        "n_train": study_n_train,
        "n_eval": study_n_eval,
        "cache_dir": str(study_path.parent / "cache"),
    }
    causal_study.run(study_config, study_path, progress=False, log=lambda message: None)
study = study_report.load_study(study_path)

# %% tags=["remove-input"]
display(
    Markdown(
        study_report.study_description(
            study,
            "run live on this page: no study is saved in `" + study_dir + "`"
            if study_live
            else "saved in `" + study_dir + "`",
        )
        + " "
        + study_report.classes_sentence(
            study, study_report.full_vocab_step_seconds(study, REPO_ROOT / study_estimates_dir)
        )
        + " "
        + study_report.rule_sentence()
    )
)

# %% [markdown]
# **The values against the trivial references.** One row per role: how many targets, each arm's mean
# absolute error with its interval over seeds, the references' errors, the better trivial reference and
# each arm's verdict against it. The value head is read at every number target, whether or not the model
# decided that a number comes there. The extreme and boundary sets are scored apart: their values live on
# other scales.

# %% tags=["hide-input"]
display(study_report.value_table(study))
display(Markdown(study_report.value_summary(study)))
display(Markdown(study_report.value_sentences(study)))

# %% [markdown]
# **Did the budget run out?** The regression loss of every run against the optimiser step: on the left
# every value, on the right the bulk. Look at whether the lines still slope down at the end: if they
# do, more steps would help; if they are flat, what the heads can learn from these features is learned.

# %% tags=["hide-input"]
fig = study_report.curves_plot(study)
top_layers_estimate = causal_study.read_estimate(
    REPO_ROOT / study_estimates_dir / f"{study.config.get('model')}-template-top1"
)
display(
    Markdown(
        study_report.curves_sentence(study)
        + " "
        + study_report.missed_roles_sentence(study, None if study_live else top_layers_estimate)
    )
)

# %% [markdown]
# **Calibration against the oracle.** For each noisy reading, each arm predicts a law (Cauchy for
# CausalQwen, Normal for the baseline); a calibrated law puts the truth inside its central $q$-interval
# a fraction $q$ of the time, for every $q$. The figure plots that observed fraction against $q$: the
# dotted diagonal is perfect calibration, the dashed line the oracle (the true weight with the stated
# spread, calibrated by construction up to sampling), and each arm's band its interval over seeds. A
# curve below the diagonal is overconfident (intervals too narrow), above it underconfident.

# %% tags=["hide-input"]
fig = study_report.calibration_plot(study)
display(Markdown(study_report.calibration_sentences(study)))

# %% [markdown]
# The shape of CausalQwen's curve has a reason. The readings are Normal around the true weight; the
# head predicts a Cauchy law, whose central intervals widen without bound as $q \to 1$ ($\tan(\pi q/2)$
# scales against the Normal's $\Phi^{-1}$). A Cauchy law whose inner intervals are right must be too
# wide at 90 % and beyond, so no single scale calibrates it at every level: the Cauchy head is
# miscalibrated against Normal noise by its shape, whatever it learns.
#
# **Why the scale of U collapses.** The health curves of every CausalQwen run show the median scale of
# U falling from $\gamma_0 = 10$ to 0. Which loss term does it? Each training log row carries, for each
# term, its derivative with respect to the log of a common factor on the scale of U
# (`causal.train.scale_drive`, checked against finite differences): positive means that gradient
# descent on that term shrinks the scale. Short runs on the study's cache (the same backbone, texts,
# batch and learning rates; 100 steps logged one by one, 3 seeds each) measure it for the default head,
# for the head without the regression term ($\lambda = 0$: an intervention), and for two remedies from
# the spec's design space: learnable per-class thresholds and a ten times larger exogenous noise.
# The left panel is the scale of U (log axis; an underflow to 0 is drawn at the bottom), the middle
# one the exogenous noise, the right one each term's drive in the default head.

# %% tags=["hide-input"]
collapse_runs = causal_collapse.load_variants(REPO_ROOT / collapse_dir)
fig = causal_collapse.collapse_plot(
    collapse_runs, f"the scale of U, {collapse_runs['default'].config['model']}"
)
display(Markdown(causal_collapse.collapse_sentences(collapse_runs)))

# %% [markdown]
# One Adam step moves every weight of the scale network by about the learning rate in the direction of
# its gradient's sign, and the scale network maps the backbone's 896 features, some of them large, to
# 896 scales: a step of $10^{-2}$ on every weight moves $W_s z$ by about $10^{-2}\sum_i |z_i|$, enough to
# take a softplus from 10 to nearly 0 in one update. A larger noise does not change that; thresholds
# measured per class start with the classification term at rest, so the scale survives a few steps
# more and then falls all the same.
#
# **A remedy at book scale.** The learnable per-class thresholds, the variant that changed the first
# steps, trained with the study's exact budget (3,000 steps, 3 seeds, the same cache and batches),
# against the study's CausalQwen, the baseline and the oracle on the noisy readings:

# %% tags=["hide-input"]
if study_live:
    display(Markdown("The remedy is compared with the saved study only; this page ran its study live."))
else:
    remedy = study_report.load_study(REPO_ROOT / remedy_dir)
    fig = study_report.calibration_plot(study, extra={remedy_name: remedy})
    display(causal_collapse.remedy_table(study, remedy, remedy_name))
    display(Markdown(causal_collapse.remedy_sentences(study, remedy, remedy_name)))
    display(Markdown("On the values, with the remedy: " + study_report.value_summary(remedy)))

# %% [markdown]
# **Where a number comes.** `<NUM>` F1 per evaluation set (is the next token a number?), with intervals
# over seeds. The question/answer set is where the decision depends on the question.

# %% tags=["hide-input"]
display(study_report.detection_table(study))
display(Markdown(study_report.detection_sentence(study)))

# %% [markdown]
# **The same study on a second backbone.** SmolLM2-135M (a Llama, hidden size 576, `<NUM>` a new row)
# with the same texts, classes rule, budget, learning rates and seeds: does the picture depend on the
# backbone? The table and verdicts are computed as above.

# %% tags=["hide-input"]
second_study = study_report.load_study(REPO_ROOT / second_study_dir)
display(Markdown(study_report.study_description(second_study, "saved in `" + second_study_dir + "`")))
display(study_report.value_table(second_study))
display(Markdown(study_report.value_summary(second_study)))
display(Markdown(study_report.value_sentences(second_study)))
display(Markdown(study_report.calibration_sentences(second_study)))
display(Markdown(study_report.detection_sentence(second_study)))

# %% [markdown]
# ## The head's design choices, with three seeds
#
# The spec's suites vary one choice of the head at a time: the OvR threshold $C$, the causal dimension
# (with $C = H/2$ the abduction cannot start as the identity, so it starts random), the weight $\lambda$
# of the regression term and the gate $\alpha$ (*comparison*); the classifier (OvR or softmax
# cross-entropy on $\mu_S$) crossed with the distribution (Cauchy, or Normal with scales
# $\sqrt{\sum w^2\sigma^2}$) (*ablation*); the prior scale $\gamma_0$ and a random (Xavier) abduction,
# which loses the step-0 equivalence with the base model (*initialization*). Each switch is read by the
# forward pass or the loss; the tests fail if one is a no-op.
#
# Each variant is a CausalQwen-only study (`qwen-anatomy causal variants`, the plan in
# `configs/causal/variants.yaml`) with the budget, texts, classes, feature cache and seeds of a reference
# study of the default head, which is not trained again; a variant of another budget is refused. Four
# numbers per seed compare them: the **relative MAE** (the geometric mean over the six predictable roles
# of the value error divided by the better trivial reference's: under 1 beats the references on
# average), the **calibration error** and the **95 % coverage** on the noisy readings, and the **token
# accuracy** (the mean over the evaluation sets). A variant is better or worse than the default on a
# number when their intervals over seeds do not overlap. The table also counts the roles on which each
# model beats its better trivial reference, and gives the median scale of U at the end of training
# (does the variant still collapse?).

# %% tags=["hide-input"]
variants_saved = causal_variants.load(REPO_ROOT / variants_dir)
variants_reference = causal_variants.find_reference(REPO_ROOT / variants_dir, variants_saved)
display(
    Markdown(
        causal_variants.description(variants_reference, variants_saved)
        + " "
        + causal_variants.plan_sentence(variants_saved)
    )
)
display(causal_variants.variants_table(variants_reference, variants_saved))

# %% [markdown]
# In the figure each black bar is a variant's interval over seeds; the blue band is the default head's,
# the dashed orange line the baseline's mean. Look for bars clear of the blue band: only those are
# differences.

# %% tags=["hide-input"]
fig = causal_variants.forest_plot(variants_reference, variants_saved)
display(Markdown(causal_variants.variants_sentences(variants_reference, variants_saved)))

# %% [markdown]
# ## What the numbers say, and what they do not
#
# What the study can say: on texts where an answer exists, whether each head beats the trivial
# references role by role, with intervals over seeds; how well each head's laws are calibrated against a
# known truth; and whether a design choice of the head changes either. What it cannot say:
#
# - Every head trained on cached features of a **frozen backbone**. A role that neither arm learns (the
#   verdicts above name them) may need the backbone to carry the value to where it is needed, which only
#   training its layers can show; the cost of that is quoted above.
# - The output classes are the **token ids of the templates**, not the whole vocabulary, so token
#   accuracy, `<NUM>` F1 and ECE are over those classes (said beside the study).
# - The texts are **synthetic**, and the extreme and boundary sets live on other scales, so their errors
#   are scored apart. The published reference points of the original project (RMSE 42.1 on basic, 48.1
#   on QA) come from other data and are not comparable with these.

# %% tags=["remove-input"]
display(Markdown(causal_variants.backbone_note(variants_reference, study)))
