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
# # 2. Qwen2 from scratch
#
# This chapter builds Qwen2 one module at a time and checks each against the Hugging Face
# transformers implementation with the same weights. The code is `qwen_anatomy/model.py`, one file
# of about 400 lines whose parameter names equal the checkpoint keys, so loading a checkpoint is a
# checked copy. We print the library's own source rather than a copy of it: what you read is what
# runs. The unit tests (`tests/test_model_parity.py`) repeat every comparison on a grid of configs.
# The last sections load the real Qwen2.5-Coder-0.5B-Instruct into it (and SmolLM2-135M, a Llama),
# and measure what sets a trained Qwen2 apart: its q/k/v biases, massive activations and attention
# sinks (`qwen_anatomy/anatomy.py`).
#
# Shapes use one vocabulary throughout: B batch, T positions, D hidden size, H query heads,
# K key/value heads, d head dimension, V vocabulary.

# %% tags=["parameters"]
model = "qwen2.5-coder-0.5b"  # the real Qwen2 of the last sections (built-in name, directory or .gguf)
llama_model = "smollm2-135m"  # a Llama-family checkpoint the same code loads (no q/k/v biases)
verify_prompts = 5  # prompts compared with transformers, token by token
generate_tokens = 40  # tokens generated in the cache and batching demonstrations
anatomy_sequences = 8  # sequences of real text for the bias, massive-activation and sink measurements
anatomy_tokens = 128  # tokens per sequence
n_boot = 2000  # bootstrap resamples for the loss intervals
seed = 0

# %%
import gc
import inspect
import time

import pandas as pd
import torch
import transformers
from IPython.display import Code, Markdown, display
from transformers.models.qwen2 import modeling_qwen2

from qwen_anatomy import model as qm
from qwen_anatomy import plotting
from qwen_anatomy.config import QWEN2_5_0_5B, tiny_config
from qwen_anatomy.generation import generate
from qwen_anatomy.loading import load_model
from qwen_anatomy.verify import layer_divergence, load_transformers_model

torch.manual_seed(seed)


def show(obj) -> None:
    """Display the library's source of a function or class."""
    display(Code(inspect.getsource(obj), language="python"))


# %% [markdown]
# ## The configuration
#
# One frozen dataclass holds every hyper-parameter, built from a checkpoint's `config.json`
# (`Qwen2Config.from_hf_dict`). Rope theta sits in `rope_parameters["rope_theta"]` in transformers 5
# files and at the top level in older ones; both are read. Here is Qwen2.5-0.5B's shape, and the
# parameter count computed from it on the `meta` device (no memory allocated):

# %%
with torch.device("meta"):
    ref_shape_model = qm.Qwen2ForCausalLM(QWEN2_5_0_5B)
n_params = qm.count_parameters(ref_shape_model)
pd.Series(QWEN2_5_0_5B.to_dict()).to_frame("Qwen2.5-0.5B")

# %%
emb = QWEN2_5_0_5B.vocab_size * QWEN2_5_0_5B.hidden_size
display(
    Markdown(
        f"Qwen2.5-0.5B has **{n_params:,}** parameters; {emb:,} of them ({emb / n_params:.0%}) are the "
        "embedding, which the tied LM head reuses as one tensor."
    )
)

# %% [markdown]
# ## RMSNorm
#
# $\mathrm{RMSNorm}(x) = w \odot x / \sqrt{\mathrm{mean}(x^2) + \epsilon}$: no mean subtraction and no
# bias, unlike LayerNorm. It is computed in float32 and cast back, so a bfloat16 model normalises
# with full precision.

# %%
show(qm.RMSNorm)

# %%
cfg = tiny_config(num_attention_heads=8, num_key_value_heads=2, hidden_size=64, tie_word_embeddings=False)
x = torch.randn(2, 5, cfg.hidden_size) * 3
ours_norm = qm.RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
ref_norm = modeling_qwen2.Qwen2RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
with torch.no_grad():
    ours_norm.weight.copy_(torch.randn(cfg.hidden_size))
    ref_norm.weight.copy_(ours_norm.weight)
rms_after = ours_norm(x).div(ours_norm.weight).pow(2).mean(-1).sqrt()
print(f"rms of each normalised vector (before the weight): {rms_after.flatten()[:4].tolist()}")
print(f"max |ours - transformers| = {(ours_norm(x) - ref_norm(x)).abs().max().item():.1e}")

# %% [markdown]
# A teaching version, three lines long. `tests/test_teaching_cells.py` runs every cell tagged
# `teaching` in this chapter and checks it against the library on seeded inputs.


# %% tags=["teaching"]
def rmsnorm_teaching(x, weight, eps):
    """RMSNorm written out: normalise by the root mean square over the last dimension."""
    x32 = x.float()
    return weight * (x32 / torch.sqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


# %%
print(
    f"teaching vs library: {(rmsnorm_teaching(x, ours_norm.weight, cfg.rms_norm_eps) - ours_norm(x)).abs().max().item():.1e}"
)

# %% [markdown]
# ## Rotary position embeddings
#
# RoPE rotates each pair of dimensions $(x_i, x_{i + d/2})$ of a query or key by the angle
# $m\,\theta_i$, where $m$ is the position and $\theta_i = \text{theta}^{-2i/d}$. The cos and sin
# tables hold the half-size angle table twice, so that with `rotate_half(x)` $= (-x_2, x_1)$ the
# rotation is `x * cos + rotate_half(x) * sin`.

# %%
show(qm.rope_inv_freq)
show(qm.rope_tables)
show(qm.apply_rope)

# %%
inv = qm.rope_inv_freq(64, QWEN2_5_0_5B.rope_theta)
pos = torch.arange(0, 64)[None]
cos, sin = qm.rope_tables(pos, inv)
fig, axes = plotting.figure(ncols=2, width=6.0, height=3.4)
ax = axes[0, 0]
ax.semilogy(inv.numpy(), marker=".")
plotting.label(
    ax,
    "pair index i (of d/2 = 32)",
    "rotation speed θ_i (radians per position)",
    "rotary frequencies, theta = 1e6",
)
ax = axes[0, 1]
vec = torch.tensor([1.0, 0.0])
for i, colour in [(0, "C0"), (4, "C1"), (12, "C2")]:
    angles = pos[0, :24].float() * inv[i]
    ax.plot(torch.cos(angles), torch.sin(angles), marker="o", ms=3, color=colour, label=f"pair {i}")
ax.set_aspect("equal")
plotting.label(ax, "rotated x_i", "rotated x_(i+d/2)", "one pair rotated at positions 0..23")
ax.legend()

# %% [markdown]
# Because both the query at position $m$ and the key at position $n$ are rotated, their dot
# product depends only on $m - n$. Checked numerically, with transformers' tables for comparison:


# %% tags=["teaching"]
def rotated_score(q, k, m: int, n: int, inv_freq) -> float:
    """q·k after rotating q ([1, 1, 1, d]) to position m and k to position n with the library's RoPE."""
    cq, sq = qm.rope_tables(torch.tensor([[m]]), inv_freq)
    ck, sk = qm.rope_tables(torch.tensor([[n]]), inv_freq)
    return float((qm.apply_rope(q, cq, sq) * qm.apply_rope(k, ck, sk)).sum())


# %%
q, k = torch.randn(1, 1, 1, 64), torch.randn(1, 1, 1, 64)
pairs = [(5, 2), (105, 102), (1005, 1002), (5, 4)]
print({f"q@{m}, k@{n}": round(rotated_score(q, k, m, n, inv), 5) for m, n in pairs})
ref_rope = modeling_qwen2.Qwen2RotaryEmbedding(transformers.Qwen2Config(**QWEN2_5_0_5B.to_hf_dict()))
ref_cos, ref_sin = ref_rope(torch.zeros(1), pos)
print("cos/sin tables identical to transformers':", torch.equal(ref_cos, cos) and torch.equal(ref_sin, sin))

# %% [markdown]
# ## Grouped-query attention
#
# Qwen2 has more query heads than key/value heads: each of the K key/value heads serves
# H / K query heads (Qwen2.5-0.5B: 14 query heads share 2 key/value heads, a group of 7), which
# shrinks the KV cache by that factor. To compute, each key/value head is repeated for its group.
# `expand` creates that view without copying and one `reshape` materialises it, once; PyTorch's
# `scaled_dot_product_attention` can even skip the copy (`enable_gqa=True`), which is what our
# default path uses. The score is scaled by $1/\sqrt{d}$, masked causally (and where there is
# padding), and the softmax runs in float32.

# %%
show(qm.repeat_kv)
show(qm.Qwen2Attention.forward)

# %% [markdown]
# The teaching version loops over query heads and picks each head's key/value group by integer
# division, the definition of GQA with nothing fused:


# %% tags=["teaching"]
def attention_teaching(attn, x, cos, sin):
    """GQA written head by head: query head h reads key/value head h // group_size."""
    b, t, _ = x.shape
    d, group = attn.head_dim, attn.num_heads // attn.num_kv_heads
    q = attn.q_proj(x).view(b, t, attn.num_heads, d).transpose(1, 2)
    k = attn.k_proj(x).view(b, t, attn.num_kv_heads, d).transpose(1, 2)
    v = attn.v_proj(x).view(b, t, attn.num_kv_heads, d).transpose(1, 2)
    q, k = qm.apply_rope(q, cos, sin), qm.apply_rope(k, cos, sin)
    causal = torch.ones(t, t, dtype=torch.bool).tril()
    heads = []
    for h in range(attn.num_heads):
        g = h // group
        scores = q[:, h] @ k[:, g].transpose(-1, -2) / d**0.5  # [B, T, T]
        scores = scores.masked_fill(~causal, float("-inf"))
        heads.append(torch.softmax(scores.float(), -1).to(x.dtype) @ v[:, g])  # [B, T, d]
    return attn.o_proj(torch.cat(heads, dim=-1))


# %%
tiny = qm.Qwen2ForCausalLM(cfg).init_weights(seed)
ref_tiny = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**cfg.to_hf_dict()))
ref_tiny.config._attn_implementation = "eager"
ref_tiny.load_state_dict(tiny.state_dict(), strict=False)
ref_tiny.eval()
x = torch.randn(2, 7, cfg.hidden_size)
pos7 = torch.arange(7)[None].expand(2, 7)
cos7, sin7 = qm.rope_tables(pos7, qm.rope_inv_freq(cfg.head_dim, cfg.rope_theta))
mask = torch.full((7, 7), torch.finfo(torch.float32).min).triu(1)[None, None]
attn = tiny.model.layers[0].self_attn
with torch.no_grad():
    a_lib = attn(x, cos7, sin7, None, None)
    a_teach = attention_teaching(attn, x, cos7, sin7)
    a_ref, _ = ref_tiny.model.layers[0].self_attn(x, (cos7, sin7), mask)
print(
    f"library vs transformers: {(a_lib - a_ref).abs().max().item():.1e}; teaching vs library: {(a_teach - a_lib).abs().max().item():.1e}"
)

# %% [markdown]
# ## The SwiGLU MLP and the decoder layer
#
# The MLP is $\mathrm{down}(\mathrm{silu}(\mathrm{gate}(x)) \odot \mathrm{up}(x))$, with no biases. A
# decoder layer is pre-norm: $h = x + \mathrm{Attn}(\mathrm{RMSNorm}(x))$, then
# $\mathrm{out} = h + \mathrm{MLP}(\mathrm{RMSNorm}(h))$. Each intermediate passes through a named
# hook point (`model.layers.{i}.self_attn.hook_z`, `...hook_resid_post` and so on) so later chapters
# can read or replace it.

# %%
show(qm.Qwen2MLP)
show(qm.Qwen2DecoderLayer)

# %% [markdown]
# ## The whole model against transformers, on a grid of tiny configs
#
# Random weights, float32, eager attention on the transformers side; our model in both its
# attention paths. Every config runs with a left-padded batch, and only real tokens are compared.
# Bias off is compared with `LlamaForCausalLM` (transformers' Qwen2 always has q/k/v biases).

# %% tags=["hide-input"]
grid = [(tied, h, kv, bias) for tied, h, kv, bias in [
    (False, 4, 4, True), (True, 4, 2, True), (False, 8, 2, True), (True, 8, 1, True), (False, 4, 2, False), (True, 8, 2, False),
]]  # fmt: skip
rows = []
ids = torch.randint(0, 101, (3, 13))
attention_mask = torch.ones_like(ids)
attention_mask[1, :4] = 0
attention_mask[2, :1] = 0
for tied, h, kv, bias in grid:
    c = tiny_config(
        tie_word_embeddings=tied, num_attention_heads=h, num_key_value_heads=kv, hidden_size=8 * h,
        attention_bias=bias, model_type="qwen2" if bias else "llama",
    )  # fmt: skip
    mine = qm.Qwen2ForCausalLM(c).init_weights(seed).eval()
    ref_cls, ref_cfg = (
        (transformers.Qwen2ForCausalLM, transformers.Qwen2Config)
        if bias
        else (transformers.LlamaForCausalLM, transformers.LlamaConfig)
    )
    ref = ref_cls(ref_cfg(**c.to_hf_dict()))
    ref.config._attn_implementation = "eager"
    ref.load_state_dict(mine.state_dict(), strict=False)
    ref.eval()
    keep = attention_mask.bool()
    with torch.no_grad():
        r = ref(ids, attention_mask=attention_mask).logits[keep]
        for impl in ("eager", "sdpa"):
            mine.set_attn_implementation(impl)
            diff = (mine(ids, attention_mask=attention_mask).logits[keep] - r).abs().max().item()
            rows.append(
                {
                    "tied": tied,
                    "heads": h,
                    "kv heads": kv,
                    "group": h // kv,
                    "bias": bias,
                    "ours": impl,
                    "max |Δlogit|": diff,
                }
            )
parity = pd.DataFrame(rows)
parity

# %%
worst = parity["max |Δlogit|"].max()
assert worst < 1e-5
display(
    Markdown(
        f"Across {len(parity)} comparisons the largest logit difference is {worst:.1e}, below the tests' 1e-5 tolerance."
    )
)

# %% [markdown]
# ## The real Qwen2, layer by layer
#
# The book's real model is Qwen2.5-Coder-0.5B-Instruct: 24 layers, hidden size 896, 14 query heads
# sharing 2 key/value heads, biases on q, k and v, and an LM head stored apart from the embedding.
# It loads into the same class as the tiny models above. We compare every stage (embedding, each
# layer, the final norm, the logits) with transformers' own `Qwen2ForCausalLM` on the same prompt,
# and then greedy generations on several prompts.

# %% tags=["hide-input"]
real_model, tok = load_model(model)
hf_model = load_transformers_model(real_model.source)
cfg_real = real_model.config
print(
    f"{model}: {cfg_real.num_hidden_layers} layers, hidden {cfg_real.hidden_size}, {cfg_real.num_attention_heads} "
    f"heads / {cfg_real.num_key_value_heads} KV heads, q/k/v bias {cfg_real.attention_bias}, "
    f"{qm.count_parameters(real_model):,} parameters; transformers class {type(hf_model).__name__}"
)

# %%
prompt_text = "Rotary embeddings encode the position of each token by rotating its query and key vectors."
prompt_ids = torch.tensor([tok.encode(prompt_text)])
div = pd.DataFrame(layer_divergence(real_model, hf_model, prompt_ids))
fig, ax = plotting.figure(width=7.0, height=3.2)
ax.semilogy(div["max_abs_diff"].clip(lower=1e-10).values, marker="o", label="max |ours − transformers|")
ax.semilogy(div["tolerance"].values, ls="--", color="grey", label="tolerance (atol + rtol·rms)")
ax.set_xticks(range(len(div)), div["stage"], rotation=90, fontsize=7)
plotting.label(ax, "stage", "absolute difference", f"{model} against transformers, per stage")
ax.legend()

# %% [markdown]
# Each dot is the largest difference at one stage; the dashed line is the tolerance, relative to the
# stage's typical size. Look at whether any dot crosses it.

# %%
from qwen_anatomy.verify import DEFAULT_PROMPTS, first_divergent

prompts = DEFAULT_PROMPTS[:verify_prompts]
agree = []
for text in prompts:
    ids_ = tok.encode(text)
    ours_tokens = generate(real_model, [ids_], max_new_tokens=20)[0]
    with torch.no_grad():
        ref_tokens = hf_model.generate(
            torch.tensor([ids_]), attention_mask=torch.ones(1, len(ids_), dtype=torch.long),
            max_new_tokens=20, do_sample=False, pad_token_id=tok.eos_token_id,
        )[0, len(ids_):].tolist()  # fmt: skip
    agree.append(
        {
            "prompt": text,
            "same greedy tokens": ours_tokens == ref_tokens,
            "continuation": tok.decode(ours_tokens),
        }
    )
agree = pd.DataFrame(agree)
agree

# %% tags=["hide-input"]
first = first_divergent(div.to_dict("records"))
display(
    Markdown(
        f"Largest logit difference on the prompt: {div['max_abs_diff'].iloc[-1]:.1e}; the largest of any stage is "
        f"{div['max_abs_diff'].max():.1e}, in `{div.loc[div['max_abs_diff'].idxmax(), 'stage']}`, where activations reach "
        f"{div['max_abs_value'].max():.0f} in magnitude (a *massive activation*, measured below). "
        + (
            "No stage exceeds its tolerance. "
            if first is None
            else f"The first stage over its tolerance is `{first}`. "
        )
        + f"Greedy tokens agree on {int(agree['same greedy tokens'].sum())} of {len(agree)} prompts. "
        "The same report is available for any checkpoint: `qwen-anatomy verify MODEL`."
    )
)
del hf_model  # 2.5 GB of float32 we no longer need
_ = gc.collect()

# %% [markdown]
# ## One implementation, two families
#
# SmolLM2-135M is a Llama-architecture checkpoint: Qwen2 without q/k/v biases, with a tied LM head.
# The same class loads it with `attention_bias=False`; nothing else changes. Side by side, and its
# logits against transformers' `LlamaForCausalLM` on the prompt above (its own tokens):

# %% tags=["hide-input"]
llama, llama_tok = load_model(llama_model)
hf_llama = load_transformers_model(llama.source)
llama_ids = torch.tensor([llama_tok.encode(prompt_text)])
llama_div = layer_divergence(llama, hf_llama, llama_ids)
llama_class = type(hf_llama).__name__
del hf_llama
chat_question = [{"role": "user", "content": "What is the capital of France?"}]
families = {}
for name, (net, net_tok) in {model: (real_model, tok), llama_model: (llama, llama_tok)}.items():
    c = net.config
    answer = generate(
        net, [net_tok.encode(net_tok.apply_chat_template(chat_question))], max_new_tokens=12,
        eos_token_id=net_tok.eos_token_id,
    )[0]  # fmt: skip
    families[name] = {
        "model_type": c.model_type,
        "layers": c.num_hidden_layers,
        "hidden": c.hidden_size,
        "heads / KV heads": f"{c.num_attention_heads} / {c.num_key_value_heads}",
        "q/k/v bias": c.attention_bias,
        "tied LM head": c.tie_word_embeddings,
        "vocabulary": c.vocab_size,
        "rope theta": c.rope_theta,
        "parameters": f"{qm.count_parameters(net):,}",
        "greedy chat answer": net_tok.decode(answer),
    }
display(pd.DataFrame(families))
display(
    Markdown(
        f"{llama_model} against transformers' `{llama_class}`: largest logit "
        f"difference {llama_div[-1]['max_abs_diff']:.1e}; first stage over its tolerance: "
        f"{first_divergent(llama_div) or 'none'}."
    )
)
del llama
_ = gc.collect()

# %% [markdown]
# ## What the model attends to
#
# The attention probabilities are a named activation (`hook_pattern`), computed on the eager path
# when something reads them. One head of one layer of the Qwen2, on the prompt above:

# %%
layer, head = 4, 2
_, acts = qm.run_with_cache(real_model, prompt_ids, [f"model.layers.{layer}.self_attn.hook_pattern"])
pattern = acts[f"model.layers.{layer}.self_attn.hook_pattern"][0, head]
labels = [tok.decode([i]) for i in prompt_ids[0].tolist()]
fig, ax = plotting.figure(width=6.5, height=5.5)
plotting.heatmap(
    ax,
    pattern.numpy(),
    "key position",
    "query position",
    f"layer {layer}, head {head}",
    "attention probability",
)
ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=7)
ax.set_yticks(range(len(labels)), labels, fontsize=7)
print(
    f"mean attention on the first token across heads of layer {layer}: {acts[f'model.layers.{layer}.self_attn.hook_pattern'][0, :, 1:, 0].mean():.2f}"
)

# %% [markdown]
# Each row is one query's distribution over the keys it may see (the upper triangle is the causal
# mask). Look at the first column: many queries put a large share of their attention on the first
# token, whatever it is. That is an *attention sink*, measured over real text at the end of this
# chapter.

# %% [markdown]
# ## Generation with a KV cache
#
# Generating token $t$ needs the keys and values of every earlier token. Recomputing them at each
# step costs a full forward pass of the growing prefix; a KV cache keeps them, so each step runs
# the model on one token. The cache must change nothing but the speed:

# %%
chat = tok.apply_chat_template(chat_question)
chat_ids = tok.encode(chat)
timings = {}
outputs = {}
for use_cache in (True, False):
    start = time.perf_counter()
    outputs[use_cache] = generate(
        real_model,
        [chat_ids],
        max_new_tokens=generate_tokens,
        eos_token_id=tok.eos_token_id,
        use_cache=use_cache,
    )[0]
    timings[use_cache] = time.perf_counter() - start
answer = tok.decode(outputs[True])
print(repr(answer))
display(
    Markdown(
        f"With the cache: {timings[True]:.2f} s; recomputing the prefix each step: {timings[False]:.2f} s "
        f"({timings[False] / timings[True]:.1f}× slower) for {len(outputs[True])} tokens. "
        f"Same tokens: {outputs[True] == outputs[False]}."
    )
)

# %% [markdown]
# ## Batches with left padding
#
# Prompts of different lengths are padded on the left so that all rows end at the same column and
# the next token of every row is predicted at the last position. Padding keys are masked out and
# each row's positions count only its own tokens, so a padded row computes what it would compute
# alone:

# %%
questions = [
    "What is the capital of France?",
    "Name a prime number.",
    "Write a Python expression that reverses a list xs.",
]
batch = [tok.encode(tok.apply_chat_template([{"role": "user", "content": q}])) for q in questions]
batched = generate(real_model, batch, max_new_tokens=generate_tokens, eos_token_id=tok.eos_token_id)
singles = [
    generate(real_model, [b], max_new_tokens=generate_tokens, eos_token_id=tok.eos_token_id)[0] for b in batch
]
pd.DataFrame(
    {
        "question": questions,
        "answer (batched)": [tok.decode(o) for o in batched],
        "same as alone": [a == b for a, b in zip(batched, singles, strict=True)],
    }
)

# %% tags=["hide-input"]
same = sum(a == b for a, b in zip(batched, singles, strict=True))
display(
    Markdown(
        f"{same} of {len(questions)} batched rows equal their one-by-one generation (prompt lengths {sorted({len(b) for b in batch})})."
    )
)

# %% [markdown]
# ## What a Qwen2 reader comes for: biases, massive activations, sinks
#
# Three features set trained Qwen2 models apart from the tiny random ones we verified above: the
# biases on q, k and v, a few residual-stream activations thousands of times larger than the rest
# (Sun et al., 2024), and heads that park their attention on the first token (Xiao et al., 2023).
# We measure each on real text the model has not been tuned on here: docstrings of Python's standard
# library, shuffled and cut into `anatomy_sequences` sequences of `anatomy_tokens` tokens
# (`anatomy.text_sequences`). The functions are in `qwen_anatomy.anatomy`. Losses are mean
# next-token cross-entropies in nats; their intervals come from resampling whole sequences
# (a bootstrap over sequences, since the tokens of one sequence are not independent).

# %% tags=["hide-input"]
from qwen_anatomy import anatomy

text_ids = anatomy.text_sequences(tok, anatomy_sequences, anatomy_tokens, seed=seed)
token_text = [[tok.decode([i]) for i in row] for row in text_ids.tolist()]
residual = anatomy.residual_stream(real_model, text_ids)  # [L + 1, N, T, D]
baseline_losses = anatomy.token_losses(real_model, text_ids)
print(
    f"{text_ids.shape[0]} sequences of {text_ids.shape[1]} tokens; baseline loss "
    f"{baseline_losses.mean():.3f} nats per token. First tokens: {[row[0] for row in token_text[:4]]}"
)

# %% [markdown]
# ### The q, k and v biases
#
# Qwen2 adds a bias to the query, key and value projections (Llama-family models have none). The
# bias sits *before* the rotation: the query of token $i$ is $q_i = R_i(W_q x_i + b_q)$ and the key
# of token $j$ is $k_j = R_j(W_k x_j + b_k)$, where $R_m$ rotates each pair of dimensions by the
# angles $m\theta$. Rotations are orthogonal and $R_i^\top R_j = R_{j-i}$, so the score splits into
# four terms:
#
# $$q_i^\top k_j = \underbrace{(W_q x_i)^\top R_{j-i}\, W_k x_j}_{\text{content, content}}
# + \underbrace{b_q^\top R_{j-i}\, W_k x_j}_{\text{q bias}}
# + \underbrace{(W_q x_i)^\top R_{j-i}\, b_k}_{\text{k bias}}
# + \underbrace{b_q^\top R_{j-i}\, b_k}_{\text{both}}.$$
#
# - **k bias.** Without rotation ($R = I$) the k-bias terms $(W_q x_i + b_q)^\top b_k$ are the same
#   for every key $j$ of a query, and a softmax ignores a constant added to all its inputs: a k bias
#   would do nothing at all. With RoPE they depend on the distance $j - i$: the k bias becomes a
#   query-dependent preference for keys at some distances. (Pairs that rotate slowly over the
#   context contribute a near-constant, and so nearly nothing.)
# - **q bias.** $b_q^\top R_{j-i} W_k x_j$ does not depend on the query token: every query of the
#   head prefers the same kinds of keys (by content, modulated by distance). It varies across keys,
#   so it matters with or without rotation.
# - **Both.** $b_q^\top R_{j-i} b_k$ depends on the distance alone: a learned relative-position bias
#   shared by every query of the head.
# - **v bias.** No rotation is involved: a query's attention weights sum to one, so
#   $\sum_j p_{ij}(W_v x_j + b_v) = \sum_j p_{ij} W_v x_j + b_v$. Every head output is shifted by
#   the same $b_v$ whatever the input, and `o_proj` turns that into one constant vector each layer
#   adds to the residual stream (`anatomy.v_bias_offsets`).
#
# The first claim, checked on the real model: give every token position 0 (no rotation anywhere),
# and zeroing the k biases changes nothing beyond float rounding; with RoPE it changes the logits.

# %%
# A Llama-family checkpoint (model = "smollm2-135m", say) has no q/k/v biases: the bias cells then
# say so and skip, and the massive-activation and sink sections below still run.
has_bias = bool(real_model.config.attention_bias)
rows = []
if has_bias:
    probe = text_ids[:1, :32]
    no_rotation = torch.zeros_like(probe)
    with torch.no_grad():
        for rotation, positions in (("RoPE off (every position 0)", no_rotation), ("RoPE on", None)):
            full = real_model(probe, position_ids=positions).logits
            for projection in ("k", "q"):
                with anatomy.zeroed_biases(real_model, (projection,)):
                    zeroed = real_model(probe, position_ids=positions).logits
                rows.append(
                    {
                        "rotation": rotation,
                        "bias zeroed": projection,
                        "max |Δ logit|": (zeroed - full).abs().max().item(),
                    }
                )
    display(pd.DataFrame(rows).pivot(index="rotation", columns="bias zeroed", values="max |Δ logit|"))
else:
    display(
        Markdown(f"{model} has no q/k/v biases (a Llama-family checkpoint): the bias sections are skipped.")
    )

# %% [markdown]
# How large are the biases? For every head we divide the norm of its bias by the median norm of
# its projected input $W_h x$ over the tokens of the text (a ratio above 1: the bias dominates the
# typical activation), and we zero the biases of every layer to see what the loss says.

# %%
if has_bias:
    biases = anatomy.bias_table(real_model, residual)
    bias_losses = anatomy.bias_ablation(real_model, text_ids, baseline=baseline_losses)
    bias_effects = anatomy.difference_table(bias_losses, n_boot=n_boot, seed=seed)
    fig = anatomy.plot_biases(biases, bias_effects)

# %% [markdown]
# Left: one marker per head and layer; look at the k heads (red squares) of the first layers, far
# above the dashed line where the bias equals the typical activation. Right: the loss change when
# the biases of every layer are zeroed, with its 95% bootstrap interval.

# %% tags=["hide-input"]
if has_bias:
    v_offsets = anatomy.v_bias_offsets(real_model).norm(dim=-1)  # [L]
    stream_norm = residual[1:, :, 1:].norm(dim=-1).flatten(1).median(1).values  # [L], first position left out
    v_share = v_offsets / stream_norm
    k_first = biases[(biases["projection"] == "k") & (biases["layer"] == 0)]
    display(Markdown(anatomy.bias_sentence(biases, bias_effects)))
    display(
        Markdown(
            f"In layer 0 the keys are almost pure bias (k-bias norms {k_first['ratio'].min():.0f} to "
            f"{k_first['ratio'].max():.0f} times the median $\\|W_k x\\|$): there, which key a query picks depends on "
            "the query and the distance, hardly on the key's content. The v biases add one constant vector per layer "
            f"to every position, of norm {v_offsets.min():.1f} to {v_offsets.max():.1f}; relative to the median norm of "
            f"the residual stream leaving the layer it is largest in layer {int(v_share.argmax())} "
            f"({v_share.max():.0%}). Zeroing them removes all these offsets at once, and the loss shows how much the "
            "later layers rely on them."
        )
    )

# %% [markdown]
# ### Massive activations
#
# Sun et al. (2024) found a handful of activations in the residual stream of large language models
# that are up to about 10,000 times larger than the median: in fixed dimensions, at the first token (and
# in some models at the first delimiter such as "." or "\n"), nearly constant from the layer where
# they appear to the last layers, and acting like biases the attention relies on. For each layer
# we take the residual stream after it over all sequences, positions and dimensions, and record the
# three largest magnitudes, where the largest sits, and the median magnitude.

# %%
delimiters = anatomy.delimiter_mask(tok, text_ids)
extremes = anatomy.extremes_table(residual[1:], delimiters)
top_layer = int(extremes.loc[extremes["top1"].idxmax(), "layer"])
fig = anatomy.plot_massive(extremes, residual[top_layer + 1], top_layer)

# %% [markdown]
# Left: the three largest $|h|$ and the median per layer, on a log scale; look at the jump of the
# top entries by two orders of magnitude from one layer to the next while the median stays put.
# Right: for the layer holding the largest entry, the largest $|h|$ in each of the 896 dimensions,
# at the first position (red) and anywhere else (blue); look for the few red spikes.

# %% tags=["hide-input"]
display(Markdown(anatomy.massive_sentence(extremes, token_text)))
massive_dims = anatomy.recurring_dimensions(anatomy.massive_dimensions(residual[1:]))
display(
    extremes[
        ["layer", "top1", "median", "ratio", "position", "dim", "second_max", "rest_max", "delimiter_max"]
    ]
    .round(2)
    .set_index("layer")
)
display(
    Markdown(
        "Dimensions holding a massive activation (some $|h|$ above 100 and above 1,000× the layer's median, "
        "Sun et al.'s working definition), with the number of layers in which they do:"
    )
)
massive_dims

# %% [markdown]
# ### Attention sinks
#
# Xiao et al. (2023) observed that language models put a large share of attention on the first
# tokens whatever they say, and that a sliding-window KV cache that evicts them breaks the model,
# while keeping just those few tokens repairs it (StreamingLLM). A softmax must give its mass to
# something; a head that has nothing useful to read parks it on a token whose value changes little,
# and the first token, seen by every query, is the one all queries share. We measure, per layer and
# head, the mean attention on the first position over queries at positions 4 and later.

# %%
shares = anatomy.first_position_share(real_model, text_ids)  # [L, H]

# %% [markdown]
# Then we hide a position from the queries and measure the loss, in two designs. Hiding the first
# position from *every* later query is the same as deleting the first token: attention scores
# depend only on relative positions, so the second token simply becomes the first (the tests check
# this equality). *Evicting* it instead, as a sliding-window cache does, hides it only from the
# queries from the middle of the sequence on: the tokens before them were computed with the first
# token in view. The control hides a random position from the middle half of each sequence in the
# same way. Each hidden key is masked before the softmax in every layer and head.

# %%
evict_from = anatomy_tokens // 2
sink_effects = {
    from_query: anatomy.difference_table(
        anatomy.sink_masking(
            real_model, text_ids, from_query=from_query, seed=seed, baseline=baseline_losses
        ),
        from_position=from_query,
        n_boot=n_boot,
        seed=seed,
    )
    for from_query in (1, evict_from)
}
fig = anatomy.plot_sinks(shares, sink_effects)

# %% [markdown]
# Left: the mean attention each head (rows) of each layer (columns) gives the first position; look
# at where the bright columns begin. Right: the loss change over the affected predictions when the
# first position (red) or a random middle position (grey) is hidden, with 95% bootstrap intervals.

# %% tags=["hide-input"]
display(Markdown(anatomy.sink_sentence(shares, sink_effects)))
display(Markdown(anatomy.onset_sentence(extremes, shares)))
hidden_residual = anatomy.residual_stream(
    real_model, text_ids[:2], blocked=anatomy.block_keys(2, anatomy_tokens, 0)
)
second_before = residual[top_layer + 1, :2, 1].abs().max()
second_after = hidden_residual[top_layer + 1, :, 1].abs().max()
hide_all, evict = (
    sink_effects[q].set_index("arm").loc["first position hidden", "difference"] for q in (1, evict_from)
)
display(
    Markdown(
        f"Hiding the first token from every later query costs {hide_all:+.3f} nats per token; evicting it from the "
        f"queries from position {evict_from} on costs {evict:+.3f}. In the first design the second token sees only "
        f"itself, as a first token does, and takes over: after layer {top_layer} its largest $|h|$ grows from "
        f"{second_before:.1f} to {second_after:.1f} (first two sequences), the massive activation has moved to it. "
        "The eviction leaves no token to take over."
    )
)
