"""Tensor names to (layer index, block type, kind) (chapter 10).

The seed tool lost layer 0 (``if layer:`` on a falsy zero) and typed MLP matrices as "other". Here
the layer is an ``int`` whenever the name carries one (0 stays 0) and ``None`` only for tensors
outside the layer stack. Names of families we do not know are still analysed: their block type is
"other", never a guess.
"""

from __future__ import annotations

import re

BLOCK_TYPES = (
    "embedding",
    "attn_q",
    "attn_k",
    "attn_v",
    "attn_o",
    "mlp_gate",
    "mlp_up",
    "mlp_down",
    "norm",
    "final_norm",
    "lm_head",
    "moe_router",
    "moe_expert",
    "other",
)

_LAYER = re.compile(r"(?:^|\.)(?:layers|h|blocks|blk|block|layer)\.(\d+)\.")
_RULES: list[tuple[re.Pattern, str]] = [
    (re.compile(r"(^|\.)(embed_tokens|wte|tok_embeddings|word_embeddings)\.weight$"), "embedding"),
    (re.compile(r"(^|\.)(lm_head|output|embed_out)\.weight$"), "lm_head"),
    (re.compile(r"\.(experts)\.\d+\."), "moe_expert"),
    (re.compile(r"\.(shared_expert)\."), "moe_expert"),
    (re.compile(r"\.mlp\.gate\.weight$|\.router\.|\.shared_expert_gate\."), "moe_router"),
    (re.compile(r"\.(q_proj|wq|query)\.(weight|bias)$"), "attn_q"),
    (re.compile(r"\.(k_proj|wk|key)\.(weight|bias)$"), "attn_k"),
    (re.compile(r"\.(v_proj|wv|value)\.(weight|bias)$"), "attn_v"),
    (re.compile(r"\.(o_proj|wo|dense|out_proj)\.(weight|bias)$"), "attn_o"),
    (re.compile(r"\.(gate_proj|w1)\.(weight|bias)$"), "mlp_gate"),
    (re.compile(r"\.(up_proj|w3)\.(weight|bias)$"), "mlp_up"),
    (re.compile(r"\.(down_proj|w2)\.(weight|bias)$"), "mlp_down"),
]


def _module(name: str) -> str:
    """The module a parameter belongs to (``model.norm.weight`` -> ``norm``)."""
    parts = name.split(".")
    return parts[-2] if len(parts) >= 2 else name


def _is_norm(name: str) -> bool:
    module = _module(name)
    return "norm" in module or re.fullmatch(r"ln(_\w+)?", module) is not None


def layer_index(name: str) -> int | None:
    """The layer number in a name (``model.layers.0.mlp.up_proj.weight`` -> 0), or None."""
    m = _LAYER.search(name)
    return int(m.group(1)) if m else None


def kind(name: str) -> str:
    """weight, bias or norm (a normalisation scale)."""
    if _is_norm(name):
        return "norm"
    return "bias" if name.endswith(".bias") else "weight"


def block_type(name: str) -> str:
    """One of :data:`BLOCK_TYPES` for a Hugging Face key."""
    layer = layer_index(name)
    if _is_norm(name):
        return "norm" if layer is not None else "final_norm"
    for pattern, btype in _RULES:
        if pattern.search(name):
            return btype
    return "other"


def classify(name: str) -> dict:
    """{layer, block_type, kind} of a tensor name."""
    return {"layer": layer_index(name), "block_type": block_type(name), "kind": kind(name)}
