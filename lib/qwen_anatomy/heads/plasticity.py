"""How far fine-tuning moved each head: update magnitudes between two checkpoints (chapter 40).

Query head h of layer l owns rows h·d..(h+1)·d of ``q_proj`` (weight and bias) and the same columns of
``o_proj``; key/value group g owns its rows of ``k_proj`` and ``v_proj`` (weights and biases), shared
by the group's H/K query heads. With the shared part apportioned equally,

    U_h² = ‖ΔQ_h‖² + ‖ΔO_h‖² + (‖ΔK_g‖² + ‖ΔV_g‖²) / group_size,

so Σ_h U_h² is exactly the layer's whole attention ‖Δθ‖². Urel = U / ‖θ0_h‖ over the same slices with
the same apportioning (an L2 ratio, unlike the original's L2-over-plain-sum). The split view:
U^QO_h = sqrt(‖ΔQ_h‖² + ‖ΔO_h‖²) per query head and U^KV_g = sqrt(‖ΔK_g‖² + ‖ΔV_g‖²) per group.

Per projection, with the same apportioning, so that U_h² = Uq² + Uk² + Uv² + Uo² exactly:
Uq_h = ‖ΔQ_h‖, Uo_h = ‖ΔO_h‖, Uk_h = ‖ΔK_g‖ / sqrt(group_size), Uv_h = ‖ΔV_g‖ / sqrt(group_size).
A KV group's update is thus shared equally (in squared norm) by its query heads: Σ_h Uk_h² over a
group is ‖ΔK_g‖², and the undivided group norms are U_K and U_V per group.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..errors import UserInputError
from .core import head_layout

ATTN_PARAMS = (
    "q_proj.weight",
    "q_proj.bias",
    "k_proj.weight",
    "k_proj.bias",
    "v_proj.weight",
    "v_proj.bias",
    "o_proj.weight",
)


def check_same_architecture(model0: nn.Module, model1: nn.Module, names=("θ0", "θ1")) -> None:
    """Raise UserInputError naming the first parameter whose presence or shape differs."""
    p0 = {k: tuple(v.shape) for k, v in model0.named_parameters()}
    p1 = {k: tuple(v.shape) for k, v in model1.named_parameters()}
    for key in sorted(set(p0) | set(p1)):
        if p0.get(key) != p1.get(key):
            raise UserInputError(
                f"checkpoints of different shapes: {key} is {p0.get(key)} in {names[0]} and "
                f"{p1.get(key)} in {names[1]}; give two checkpoints of the same architecture"
            )


def _sq(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sum of squares over every axis but ``dim`` (float64)."""
    t = t.detach().double()
    return (t**2).sum(dim=[a for a in range(t.dim()) if a != dim])


def _split_squares(model: nn.Module, other: nn.Module | None, layer: int) -> dict[str, torch.Tensor]:
    """Per-head / per-group squared norms of (other − model) or of model itself (other None)."""
    lay = head_layout(model)
    h, k, d = lay.num_heads, lay.num_kv_heads, lay.head_dim
    params = dict(model.named_parameters())
    others = dict(other.named_parameters()) if other is not None else None
    prefix = f"model.layers.{layer}.self_attn."

    def get(name):
        key = prefix + name
        if key not in params:
            return None
        t = params[key].detach().double()
        return others[key].detach().double() - t if others is not None else t

    out = {}
    for proj, n_units in (("q", h), ("k", k), ("v", k)):
        w = get(f"{proj}_proj.weight").view(n_units, d, -1)  # rows of unit u: u·d .. u·d + d
        sq = _sq(w, 0)
        b = get(f"{proj}_proj.bias")
        if b is not None:
            sq = sq + _sq(b.view(n_units, d), 0)
        out[proj] = sq
    o = get("o_proj.weight")  # [D, H·d]: columns of head h
    out["o"] = _sq(o.view(o.shape[0], h, d), 1)
    return out


HEAD_UPDATES = ("U", "Urel", "U_QO", "Urel_QO", "Uq", "Uk", "Uv", "Uo")
GROUP_UPDATES = ("U_KV", "Urel_KV", "U_K", "U_V")


def update_magnitudes(model0: nn.Module, model1: nn.Module) -> dict[str, np.ndarray]:
    """Per query head [L, H]: U, Urel, U_QO, Urel_QO and the per-projection Uq, Uk, Uv, Uo
    (K and V apportioned over the group's query heads); per KV group [L, K]: U_KV, Urel_KV, U_K, U_V."""
    check_same_architecture(model0, model1)
    lay = head_layout(model0)
    group = np.arange(lay.num_heads) // lay.group_size
    out = {name: np.zeros((lay.num_layers, lay.num_heads)) for name in HEAD_UPDATES}
    out |= {name: np.zeros((lay.num_layers, lay.num_kv_heads)) for name in GROUP_UPDATES}
    for layer in range(lay.num_layers):
        delta = {k: v.cpu().numpy() for k, v in _split_squares(model0, model1, layer).items()}
        out["Uq"][layer], out["Uo"][layer] = np.sqrt(delta["q"]), np.sqrt(delta["o"])
        out["Uk"][layer] = np.sqrt(delta["k"][group] / lay.group_size)
        out["Uv"][layer] = np.sqrt(delta["v"][group] / lay.group_size)
        out["U_K"][layer], out["U_V"][layer] = np.sqrt(delta["k"]), np.sqrt(delta["v"])
        init = {k: v.cpu().numpy() for k, v in _split_squares(model0, None, layer).items()}
        for src, tag in ((delta, "U"), (init, "N")):
            qo = src["q"] + src["o"]
            kv = src["k"] + src["v"]
            full = qo + kv[group] / lay.group_size
            if tag == "U":
                u_full, u_qo, u_kv = np.sqrt(full), np.sqrt(qo), np.sqrt(kv)
            else:
                n_full, n_qo, n_kv = np.sqrt(full), np.sqrt(qo), np.sqrt(kv)
        out["U"][layer], out["U_QO"][layer], out["U_KV"][layer] = u_full, u_qo, u_kv
        out["Urel"][layer] = u_full / np.maximum(n_full, 1e-30)
        out["Urel_QO"][layer] = u_qo / np.maximum(n_qo, 1e-30)
        out["Urel_KV"][layer] = u_kv / np.maximum(n_kv, 1e-30)
    return out


def layer_attention_delta_sq(model0: nn.Module, model1: nn.Module, layer: int) -> float:
    """‖Δθ‖² over every attention parameter of one layer (the total Σ_h U_h² must equal)."""
    p0, p1 = dict(model0.named_parameters()), dict(model1.named_parameters())
    total = 0.0
    for name in ATTN_PARAMS:
        key = f"model.layers.{layer}.self_attn.{name}"
        if key in p0:
            total += float(((p1[key].detach().double() - p0[key].detach().double()) ** 2).sum())
    return total
