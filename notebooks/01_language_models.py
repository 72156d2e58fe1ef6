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
# # 1. Language models: probabilities over token sequences
#
# A language model assigns a probability to every sequence of tokens. By the chain rule of
# probability that is a product of next-token predictions,
#
# $$p(x_1, \dots, x_L) = \prod_{i=1}^{L} p(x_i \mid x_{<i}),$$
#
# so a model that predicts the next token well is a model of the whole sequence. This chapter measures
# each idea on a real Qwen2, Qwen2.5-Coder-0.5B-Instruct (the model of chapter 2), and compares it
# with an n-gram model trained here, on the same tokens. The functions used live in `qwen_anatomy.lm`
# and `qwen_anatomy.sampling`.

# %% tags=["parameters"]
model = "qwen2.5-coder-0.5b"  # a built-in name, a checkpoint directory or a .gguf file
llama_model = "smollm2-135m"  # a model with another tokenizer, scored on the same text per byte
ngram_order = 3  # highest n-gram order trained (1 = unigram)
add_k = 0.05  # add-k smoothing of the n-gram model
seed = 0  # which documents are held out
ngram_corpus_chars = 400_000  # training text for the n-gram model (characters)
heldout_chars = 20_000  # held-out text both models are scored on
max_eval_tokens = 4096  # cap on held-out tokens scored
window = 512  # transformer context per scoring window

# %%
import math

import numpy as np
import torch
from IPython.display import Markdown, display

from qwen_anatomy import lm, plotting, sampling
from qwen_anatomy.corpus import train_heldout_split
from qwen_anatomy.experiments import save_metrics
from qwen_anatomy.loading import load_model

torch.manual_seed(seed)
transformer, tok = load_model(model)
print(f"{model}: {transformer.config.num_hidden_layers} layers, vocabulary {tok.vocab_size:,} tokens")

# %% [markdown]
# ## The chain rule: scoring a sentence
#
# The log-probability of a text is the sum of its tokens' conditional log-probabilities. A
# grammatical sentence and the same words in a scrambled order contain the same tokens, but the
# model should find the second far less likely.

# %%
sentence = "The cat sat on the mat because it was warm and quiet."
words = sentence.rstrip(".").split()
rng = np.random.default_rng(seed)
scrambled = " ".join(rng.permutation(words)) + "."
scores = {
    label: lm.score_text(transformer, tok, text)
    for label, text in [("grammatical", sentence), ("scrambled", scrambled)]
}
for label, s in scores.items():
    print(
        f"{label:>11}: {s['text']!r}\n             log p = {s['total_nats']:.1f} nats = {s['total_bits']:.1f} bits over {len(s['tokens'])} tokens"
    )

fig, axes = plotting.figure(ncols=2, width=6.0, height=3.2)
for ax, (label, s) in zip(axes[0], scores.items(), strict=True):
    ax.bar(range(len(s["logprobs"])), -np.array(s["logprobs"]) / math.log(2))
    ax.set_xticks(range(len(s["tokens"])), s["tokens"], rotation=70, fontsize=8)
    plotting.label(ax, "token", "surprisal (bits)", f"{label}: {-s['total_bits']:.0f} bits in total")

# %%
ratio_bits = scores["grammatical"]["total_bits"] - scores["scrambled"]["total_bits"]
display(
    Markdown(
        f"The grammatical order is $2^{{{ratio_bits:.0f}}}$ times more probable than the scrambled one "
        f"({ratio_bits:.1f} bits). Each bar is one factor of the chain rule, $-\\log_2 p(x_i \\mid x_{{<i}})$: "
        "the scrambled sentence pays for almost every token, the grammatical one mostly for the first "
        "content words."
    )
)

# %% [markdown]
# ## Temperature, top-k and top-p
#
# Generation draws the next token from $p$. Dividing the logits by a temperature $T$ gives
# $p_T(x) \propto p(x)^{1/T}$: $T \to 0$ is the greedy argmax, $T = 1$ is the model's own
# distribution, large $T$ flattens towards uniform. Top-k keeps the $k$ most likely tokens; top-p
# (nucleus) keeps the smallest set whose mass reaches $p$. (Token labels are printed with Python's
# `ascii`: Qwen2's vocabulary holds many Chinese tokens, shown as `\u` escapes.)

# %%
prompt = "The capital of France is"
with torch.no_grad():
    logits = transformer(torch.tensor([tok.encode(prompt)])).logits[0, -1]
temperatures = [0.25, 0.5, 1.0, 2.0, 5.0]
top = torch.topk(logits, 12).indices
fig, axes = plotting.figure(ncols=2, width=6.0, height=3.4)
ax = axes[0, 0]
for t in temperatures:
    p = sampling.temperature_probs(logits, t)
    ax.plot(range(len(top)), p[top].numpy(), marker="o", label=f"T = {t}")
ax.set_xticks(range(len(top)), [ascii(tok.decode([int(i)])) for i in top], rotation=70, fontsize=8)
plotting.label(ax, "next token (most likely first)", "probability", f"next token after {prompt!r}")
ax.legend()
grid = np.geomspace(0.05, 50, 40)
ent = [lm.entropy(sampling.temperature_probs(logits, float(t)), base=2).item() for t in grid]
ax = axes[0, 1]
ax.semilogx(grid, ent)
ax.axhline(math.log2(logits.numel()), ls="--", color="grey", label="uniform: log2 V")
plotting.label(ax, "temperature T", "entropy of p_T (bits)", "temperature spreads the distribution")
ax.legend()

# %%
p1 = sampling.temperature_probs(logits, 1.0)
greedy = tok.decode([int(logits.argmax())])
kept_k = int((~torch.isinf(sampling.top_k_filter(logits, 10))).sum())
kept_p = int((~torch.isinf(sampling.top_p_filter(logits, 0.9))).sum())
h_small, h_large = ent[0], ent[-1]
display(
    Markdown(
        f"At $T = 1$ the most likely continuation is {greedy!r} with probability {p1.max():.2f}. "
        f"At $T = {grid[0]:.2f}$ the entropy is {h_small:.3f} bits (nearly one-hot: greedy decoding); at "
        f"$T = {grid[-1]:.0f}$ it is {h_large:.1f} bits, close to the uniform {math.log2(logits.numel()):.1f} bits. "
        f"Top-k with k = 10 keeps {kept_k} tokens; top-p with p = 0.9 keeps {kept_p}: the nucleus adapts "
        "to how peaked the distribution is, top-k does not."
    )
)

# %% [markdown]
# ## Entropy, cross-entropy, KL
#
# For distributions $p$ and $q$ over the vocabulary: entropy $H(p) = -\sum p \log p$ is the average
# surprise of samples from $p$; cross-entropy $H(p, q) = -\sum p \log q$ is the average surprise
# when we *predict* with $q$; $\mathrm{KL}(p\,\|\,q) = H(p, q) - H(p) \ge 0$ (Gibbs' inequality), so
# cross-entropy bounds entropy from above. Divide nats by $\ln 2$ for bits. Take $p$ = the model at
# $T = 1$ and $q$ = the same model at $T = 2$:

# %%
q2 = sampling.temperature_probs(logits, 2.0)
rows = []
for base, unit in [(math.e, "nats"), (2.0, "bits")]:
    rows.append(
        {
            "unit": unit,
            "H(p)": lm.entropy(p1, base).item(),
            "H(p, q)": lm.cross_entropy(p1, q2, base).item(),
            "KL(p||q)": lm.kl_divergence(p1, q2, base).item(),
            "KL(q||p)": lm.kl_divergence(q2, p1, base).item(),
        }
    )
import pandas as pd

info_table = pd.DataFrame(rows).set_index("unit")
info_table

# %%
row = info_table.loc["bits"]
assert row["H(p, q)"] >= row["H(p)"] and row["KL(p||q)"] >= 0
display(
    Markdown(
        f"Here $H(p) = {row['H(p)']:.2f}$ bits and $H(p, q) = {row['H(p, q)']:.2f}$ bits: predicting with "
        f"the flattened $q$ costs {row['KL(p||q)']:.2f} extra bits per token. KL is not symmetric: "
        f"$\\mathrm{{KL}}(q\\|p) = {row['KL(q||p)']:.2f}$ bits."
    )
)

# %% [markdown]
# ## Perplexity: the transformer against an n-gram baseline
#
# A model's cross-entropy on held-out text, $\frac{1}{N}\sum_i -\ln p(x_i \mid x_{<i})$, exponentiated,
# is its **perplexity**: the number of equally likely choices that would be as surprising. We score
# held-out text from an offline corpus (docstrings of Python's standard library, split by document)
# with the transformer and with n-gram models of orders 1 to `ngram_order` trained on the rest of
# the corpus, tokenised by the same tokenizer so that both predict exactly the same tokens.

# %% tags=["hide-input"]
train_text, heldout_text, corpus_info = train_heldout_split(ngram_corpus_chars, heldout_chars, seed=seed)
train_ids = tok.encode(train_text)
heldout_ids = tok.encode(heldout_text)[:max_eval_tokens]
print(corpus_info)
print(f"n-gram training tokens: {len(train_ids):,}; held-out tokens scored: {len(heldout_ids):,}")

tf_nll, tf_count = lm.corpus_nll(transformer, heldout_ids, window=window)
results = [
    {
        "model": f"{model} (transformer)",
        "order": None,
        "tokens": tf_count,
        "ppl": math.exp(tf_nll / tf_count),
    }
]
for order in range(1, ngram_order + 1):
    ngram = lm.NGramModel(order, tok.vocab_size, add_k).fit([train_ids])
    nll, count = ngram.nll(heldout_ids, window=window)
    assert count == tf_count  # the same tokens are predicted
    results.append(
        {
            "model": f"{order}-gram, add-k {add_k}",
            "order": order,
            "tokens": count,
            "ppl": math.exp(nll / count),
        }
    )
ppl = pd.DataFrame(results)
ppl["bits per token"] = np.log2(ppl["ppl"])
ppl

# %%
fig, ax = plotting.figure(width=6.4, height=3.2)
ax.barh(ppl["model"], ppl["ppl"])
ax.set_xscale("log")
plotting.label(ax, "perplexity on held-out text (log scale)", "", "same tokens, same held-out documents")

# %%
transformer_ppl = float(ppl["ppl"].iloc[0])
best = ppl.iloc[1:].sort_values("ppl").iloc[0]
factor = best["ppl"] / transformer_ppl
orders_help = bool(ppl.iloc[1:]["ppl"].is_monotonic_decreasing)
display(
    Markdown(
        f"The transformer's perplexity is {transformer_ppl:.1f} ({np.log2(transformer_ppl):.2f} bits per token); "
        f"the best n-gram model (order {int(best['order'])}) reaches {best['ppl']:.1f}, "
        f"{factor:.1f} times higher. "
        + (
            "Each added order of context lowers the n-gram perplexity, "
            if orders_help
            else "More n-gram context does not help monotonically here (the counts get sparse), "
        )
        + f"but {len(train_ids):,} training tokens cannot compete with a model pretrained on trillions."
    )
)

# %% [markdown]
# ## Per token or per byte: the tokenizer sets the unit
#
# Perplexity is counted per *token*, and tokenizers cut the same text differently. Qwen2's tokenizer
# is a byte-level BPE with 151,936 entries, trained on much code and many languages; SmolLM2's, also
# byte-level BPE, has 49,152. A larger vocabulary has longer tokens on average, so the same text
# becomes fewer, individually harder predictions: the per-token perplexities of two models with
# different tokenizers are not comparable, even on the same text. (The n-gram models above share the
# transformer's tokenizer, so that comparison is fair.) Dividing the summed loss by the bytes of
# text instead gives **bits per byte**, which does not depend on how the text was cut. We score the
# held-out text above with both models, each with its own tokenizer and a context of `window` of its
# own tokens.

# %%
scored_text = tok.decode(heldout_ids)
llama, llama_tok = load_model(llama_model)
llama_ids = llama_tok.encode(scored_text)
llama_nll, llama_count = lm.corpus_nll(llama, llama_ids, window=window)
per_byte = pd.DataFrame(
    [
        {
            "model": name,
            "vocabulary": t.vocab_size,
            "tokens": len(ids_),
            "characters per token": len(scored_text) / len(ids_),
            "perplexity per token": math.exp(nll / count),
            "bits per token": nll / count / math.log(2),
            "bits per byte": lm.bits_per_byte(nll, lm.predicted_bytes(t, ids_, window)),
        }
        for name, t, ids_, nll, count in [
            (model, tok, heldout_ids, tf_nll, tf_count),
            (llama_model, llama_tok, llama_ids, llama_nll, llama_count),
        ]
    ]
).set_index("model")
per_byte = per_byte[~per_byte.index.duplicated()]  # one row when model and llama_model are the same
per_byte

# %% tags=["hide-input"]
ours, other = per_byte.loc[model], per_byte.loc[llama_model]
better_per_token = model if ours["perplexity per token"] < other["perplexity per token"] else llama_model
better_per_byte = model if ours["bits per byte"] < other["bits per byte"] else llama_model
display(
    Markdown(
        f"On these {len(scored_text):,} characters {model}'s tokenizer makes {int(ours['tokens']):,} tokens "
        f"({ours['characters per token']:.2f} characters each) and {llama_model}'s {int(other['tokens']):,} "
        f"({other['characters per token']:.2f}). Per token, the perplexities are {ours['perplexity per token']:.1f} "
        f"and {other['perplexity per token']:.1f}; per byte, {ours['bits per byte']:.3f} and "
        f"{other['bits per byte']:.3f} bits. "
        + (
            f"Both units rank {better_per_byte} first, "
            if better_per_token == better_per_byte
            else f"The units disagree: per token {better_per_token} looks better, per byte {better_per_byte} is, "
        )
        + "and only the per-byte numbers measure the two models on the same footing."
        if llama_model != model
        else f"({model} is also `llama_model` here: choose another `llama_model` to compare two tokenizers.)"
    )
)
metrics_file = save_metrics(
    {
        "transformer_ppl": transformer_ppl,
        "ngram_ppl": float(ppl[ppl["order"] == ngram_order]["ppl"].iloc[0]),
        "best_ngram_ppl": float(best["ppl"]),
        "unigram_ppl": float(ppl[ppl["order"] == 1]["ppl"].iloc[0]),
        "heldout_tokens": int(tf_count),
        "grammatical_minus_scrambled_bits": float(ratio_bits),
        "transformer_bits_per_byte": float(ours["bits per byte"]),
        "llama_bits_per_byte": float(other["bits per byte"]),
        "llama_ppl": float(other["perplexity per token"]),
    }
)
