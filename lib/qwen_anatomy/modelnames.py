"""How the book names a model in its prose (chapters 00, 10-12, 40, 50).

A chapter that takes a ``model`` parameter writes sentences about the model it actually ran on, never a
fixed name: :func:`model_label` turns the parameter (a built-in name, a checkpoint directory or a
``.gguf`` file) into the name a reader recognises. No heavy imports: chapters call it first thing.
"""

from __future__ import annotations

import os
from pathlib import Path

from .registry import BUILTIN_MODELS

# The built-in real models (one list, qwen_anatomy.registry): the release each one is, and its
# architecture family (Qwen2: q/k/v biases; Llama: none).
BUILTIN_LABELS = {name: spec["label"] for name, spec in BUILTIN_MODELS.items()}
BUILTIN_FAMILIES = {name: spec["family"] for name, spec in BUILTIN_MODELS.items()}


def model_label(spec: str | os.PathLike) -> str:
    """The name to print for a model argument.

    A built-in name gives its release (``qwen2.5-coder-0.5b`` -> ``Qwen2.5-Coder-0.5B-Instruct``); a
    model shipped in ``data/models`` or a checkpoint directory gives its folder name; a ``.gguf`` file
    its file name without the suffix. Nothing is read from disk.
    """
    text = str(spec)
    if text in BUILTIN_LABELS:
        return BUILTIN_LABELS[text]
    path = Path(text.rstrip("/\\") or text)
    if path.suffix == ".gguf":
        return path.stem
    return path.name or text


def model_family(spec: str | os.PathLike, config: dict | None = None) -> str | None:
    """``"Qwen2"``, ``"Llama"``, ... for a built-in name, else from a config's ``architectures`` or
    ``model_type`` (or a GGUF ``architecture``) when given; None when unknown."""
    text = str(spec)
    if text in BUILTIN_FAMILIES:
        return BUILTIN_FAMILIES[text]
    if not config:
        return None
    archs = config.get("architectures") or []
    name = archs[0] if archs else config.get("model_type") or config.get("architecture")
    if not name:
        return None
    name = str(name).removesuffix("ForCausalLM")
    return {"qwen2": "Qwen2", "llama": "Llama", "mistral": "Mistral"}.get(name, name)
