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
# # Qwen2 Anatomy
#
# An executable book about Qwen2-family language models, and the small library it runs on
# (`qwen_anatomy`, in `lib/`). It takes one real model apart, Qwen2.5-Coder-0.5B-Instruct, and asks
# what each piece computes, what the weights store, which attention heads matter, and what a
# different output head would change. Every number is computed by the chapter that shows it, from
# library code that is tested; every chapter runs offline on a laptop CPU, and every chapter that
# runs a real model takes any Qwen2 checkpoint (or a Llama-family one) through its `model` parameter.
#
# **What you will learn.** How a decoder-only transformer turns tokens into next-token
# probabilities, written out module by module and checked number for number against Hugging Face
# transformers; how to read a checkpoint tensor by tensor (spectra, quantisation grids, tokens the
# model never learned); how much the order of a chain of reasoning steps matters when a small model
# learns it; how to measure the importance of attention heads honestly, next to what chance gives;
# how a closed-form Cauchy head differs from a softmax; and how to run each chapter as an
# experiment whose results carry their own provenance.
#
# Below, each part says what it shows, then states its main result. Those sentences are not typed
# in: this page computes them when the book is built, from the result files committed with the book
# (it loads no model and takes a few seconds), so they change when the results do. Each names the
# file it comes from, and says so when that result is provisional (its run record breaks the
# provenance rule of `data/README.md`) or is being regenerated. The build time under each part comes
# from the run records of one full `qwen-anatomy book` build.

# %% tags=["parameters", "remove-input"]
# The build whose per-chapter times this page shows: data/results/book-timings/<name>.json.
timings_model = "qwen2.5-coder-0.5b"

# %% tags=["remove-input"]
from IPython.display import Markdown, display

from qwen_anatomy import landing
from qwen_anatomy.paths import REPO_ROOT

timings_file = landing.timings_path(timings_model)
timings = landing.load_timings(timings_file)
timings_source = timings_file.relative_to(REPO_ROOT).as_posix()

# %% [markdown]
# ## Part I: Qwen2 from scratch
#
# A language model is a probability distribution over token sequences. Chapter 1 makes that concrete
# on the real model (the chain rule, sampling with temperature, entropy and perplexity, an n-gram
# baseline on the same tokens); chapter 2 writes Qwen2 module by module (RMSNorm, rotary embeddings,
# grouped-query attention, the SwiGLU MLP, the KV cache) and checks each against transformers, then
# shows what sets a trained Qwen2 apart: its q/k/v biases, massive activations and attention sinks.
# Chapter 0 records the environment the book was built in.

# %% tags=["remove-input"]
display(Markdown(landing.part_markdown("I", timings)))

# %% [markdown]
# ## Part II: Weights anatomy
#
# Before asking what a model computes, we read what it stores: one table with a row per tensor
# (the distribution of its values and, for every matrix, the full singular-value spectrum), what
# 4- to 8-bit block quantisation does to those values, which matrices are effectively low-rank or
# heavy-tailed layer by layer, and the embedding matrix row by row, including the tokens the model
# never learned. The tools stream one tensor at a time, so they also work on checkpoints larger than
# memory.

# %% tags=["remove-input"]
display(Markdown(landing.part_markdown("II", timings)))

# %% [markdown]
# ## Part III: Synthetic step-by-step tasks
#
# Small Qwen2 models trained from scratch on tasks whose answer is a chain of intermediate states (a
# running sum clipped at zero, a square-and-reduce recurrence, a pointer chase), once with the chain
# in its natural order and once reversed, over several seeds at equal step budgets.

# %% tags=["remove-input"]
display(Markdown(landing.part_markdown("III", timings)))

# %% [markdown]
# ## Part IV: Attention heads, importance against plasticity
#
# Are the heads that matter most for a task the ones whose weights move most when the model is
# fine-tuned for it? Every head is switched off to measure its importance, cheap gradient proxies
# are checked against that truth, and every comparison is reported beside its chance level, within
# layers as well as across them, and across fine-tuning seeds; a second section runs the proxies on
# the real model over real English text.

# %% tags=["remove-input"]
display(Markdown(landing.part_markdown("IV", timings)))

# %% [markdown]
# ## Part V: Causal heads
#
# CausalQwen replaces the softmax head with two closed-form steps: a Cauchy distribution over an
# individual causal representation, then one-vs-rest scores for every token and a value for numbers.
# The chapter checks the Cauchy algebra numerically, builds the model on a real backbone, shows that
# at step 0 it reproduces the base model exactly, and compares it with an honest softmax baseline on
# the same frozen backbone across five saved experiment suites.

# %% tags=["remove-input"]
display(Markdown(landing.part_markdown("V", timings)))

# %% [markdown]
# ## Part VI: Experiments
#
# Every chapter is an experiment: its expensive knobs sit in one cell tagged `parameters`. This part
# runs chapters with other values or over grids, records every run (parameters, git commit,
# versions, machine, times), and aggregates a committed grid across seeds, showing why a paired
# comparison is sharper than comparing independent intervals.

# %% tags=["remove-input"]
display(Markdown(landing.part_markdown("VI", timings)))

# %% [markdown]
# ## Three ways to run it
#
# All commands run from the repository root; the first use creates `.venv` (see the README).
#
# **Read.** `make book` executes every chapter at book scale and renders this book into
# `_build/html/index.html`; it fails on any failing cell. To read the book about your own checkpoint,
# `qwen-anatomy book --model /path/to/Qwen2.5-0.5B --out mybook` runs every chapter on it and renders
# `mybook/index.html` (`--scale ci` for a quick first look, `--chapters 00,10,11,12` for a subset).
# The model may be a built-in name (`qwen2.5-coder-0.5b`, `smollm2-135m`), a Hugging Face checkpoint
# folder or a `.gguf` file. This page always shows the results committed with the book.
#
# **Interact.** `make lab` starts JupyterLab in `notebooks/`: each chapter (a `.py` text file) opens
# as a notebook through jupytext, and saving writes your edits back to the `.py`.
#
# **Batch.** `qwen-anatomy run 01_language_models -p ngram_order 4` executes one chapter with other
# parameters (checked against its `parameters` cell first) and records the run under `results/`;
# `--grid configs/grids/01_ngram_seeds.yml --jobs 2` runs every combination of a grid, and `--shard
# 1/3` splits a grid over machines; `qwen-anatomy results` lists the runs. Papermill works directly
# too. `make test` runs the unit tests and every chapter at CI scale (`tests/ci-params.yml`) under
# nbval.
#
# ## How long it takes

# %% tags=["remove-input"]
display(Markdown(landing.timings_sentence(timings, timings_source)))
table = landing.timings_table(timings, landing.toc_parts())
if table is not None:
    display(table)
