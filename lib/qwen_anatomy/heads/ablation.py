"""Ablation importance of query heads and key/value groups (chapter 40_heads_importance_vs_plasticity).

Importance of a unit (one query head, or all query heads of one KV group) on example i is
Δloss_i = loss_i(unit ablated) − loss_i(baseline). Zero ablation sets the unit's gate to 0; mean
ablation replaces its output z (hook_z, [B, T, H, d]) by the head's mean over the evaluation set.

Three exact ways to compute the same numbers:
- ``method="loop"``: one forward pass per unit;
- ``method="batched"``: the batch replicated R times, replica r with its own one-unit-off gate
  vector (per-example gates [R·B, L, H]);
- ``method="prefix"``: batched, and starting at the ablated unit's layer from the baseline
  residual stream entering it (layers before it cannot change).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..errors import UserInputError
from .core import (
    EvalBatch,
    HeadLayout,
    batches,
    capture_head_outputs,
    final_hidden,
    head_layout,
    is_native,
    loss_from_hidden,
)

METHODS = ("loop", "batched", "prefix")
ABLATIONS = ("zero", "mean")


@dataclass(frozen=True)
class Unit:
    """A set of query heads in one layer that are ablated together."""

    kind: str  # "head" or "group"
    layer: int
    index: int  # head index (kind head) or KV group index (kind group)
    heads: tuple[int, ...]


def head_units(lay: HeadLayout) -> list[Unit]:
    """Every query head, in flat order layer·H + head."""
    return [Unit("head", li, h, (h,)) for li in range(lay.num_layers) for h in range(lay.num_heads)]


def group_units(lay: HeadLayout) -> list[Unit]:
    """Every KV group (its query heads together), in flat order layer·K + group."""
    gs = lay.group_size
    return [
        Unit("group", li, g, tuple(range(g * gs, (g + 1) * gs)))
        for li in range(lay.num_layers)
        for g in range(lay.num_kv_heads)
    ]


def parse_heads(text: str, lay: HeadLayout, what: str = "--heads") -> list[int]:
    """``"L.H,L.H,..."`` (layer and query head, both counted from 0) as sorted flat head indices
    l·H + h, repeats removed. UserInputError naming the bad item and the model's ranges otherwise."""
    ranges = f"layers 0..{lay.num_layers - 1}, heads 0..{lay.num_heads - 1}"
    items = [item.strip() for item in str(text).split(",")]
    if not any(items):
        raise UserInputError(f"{what} is empty: list heads as LAYER.HEAD separated by commas, e.g. 0.3,2.1")
    flat = set()
    for item in items:
        layer, dot, head = item.partition(".")
        if not dot or not layer.strip().isdigit() or not head.strip().isdigit():
            raise UserInputError(
                f"{what}: {item!r} is not LAYER.HEAD; list heads as e.g. 0.3,2.1 (this model has {ranges})"
            )
        layer, head = int(layer), int(head)
        if layer >= lay.num_layers or head >= lay.num_heads:
            raise UserInputError(
                f"{what}: head {item} does not exist; this model has {lay.num_layers} layers x "
                f"{lay.num_heads} query heads ({ranges})"
            )
        flat.add(layer * lay.num_heads + head)
    return sorted(flat)


def stratified_heads(lay: HeadLayout, n: int, seed: int = 0) -> list[int]:
    """``n`` query heads spread over the layers (flat indices l·H + h, sorted): every layer gets
    ⌊n/L⌋ heads and the first ``n mod L`` layers of a seeded random order one more, each layer's heads
    drawn at random without repetition. UserInputError unless 1 ≤ n ≤ the number of heads."""
    total = lay.n_heads_total
    if not isinstance(n, int | np.integer) or isinstance(n, bool) or not 1 <= n <= total:
        raise UserInputError(
            f"{n!r} heads to ablate: give a whole number from 1 to {total} (this model's heads)"
        )
    rng = np.random.default_rng(seed)
    per_layer = np.full(lay.num_layers, n // lay.num_layers)
    per_layer[rng.permutation(lay.num_layers)[: n % lay.num_layers]] += 1
    chosen = []
    for layer, k in enumerate(per_layer):
        chosen += [
            layer * lay.num_heads + int(h) for h in rng.choice(lay.num_heads, size=int(k), replace=False)
        ]
    return sorted(chosen)


def head_name(flat: int, lay: HeadLayout) -> str:
    """Flat head index l·H + h as ``"l.h"`` (the form ``--heads`` takes)."""
    return f"{flat // lay.num_heads}.{flat % lay.num_heads}"


@torch.no_grad()
def head_means(model: nn.Module, batch: EvalBatch, batch_size: int = 32) -> torch.Tensor:
    """Mean per-head output z over every real position of the evaluation set: [L, H, d]."""
    lay = head_layout(model)
    total = torch.zeros(lay.num_layers, lay.num_heads, lay.head_dim, dtype=torch.float64)
    count = 0
    for sl in batches(len(batch), batch_size):
        sub = batch.subset(range(sl.start, sl.stop))
        mask = sub.real_mask()

        def add(layer, z, mask=mask):
            total[layer] += z[mask].double().sum(0).cpu()

        capture_head_outputs(model, sub.input_ids, add)
        count += int(mask.sum())
    return (total / count).to(torch.float32)


def _ablation_gates(lay: HeadLayout, units: list[Unit], batch: int, device=None) -> torch.Tensor:
    """[R·B, L, H] ones, replica r (rows r·B .. r·B+B-1) with unit r's heads at 0."""
    gates = torch.ones(len(units) * batch, lay.num_layers, lay.num_heads, device=device)
    for r, unit in enumerate(units):
        gates[r * batch : (r + 1) * batch, unit.layer, list(unit.heads)] = 0.0
    return gates


@torch.no_grad()
def ablation_deltas(
    model: nn.Module,
    batch: EvalBatch,
    units: list[Unit],
    ablation: str = "zero",
    method: str = "prefix",
    batch_size: int = 16,
    replicas: int = 8,
    mean_z: torch.Tensor | None = None,
    progress=None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(baseline loss [E], Δloss [E, U]) for each unit, per example.

    ``batch_size`` examples per forward pass, ``replicas`` units per batched pass. ``progress`` is
    an optional callable(k) told of k more unit passes, out of ``len(units) · ceil(E / batch_size)``. Transformers models support "loop" and
    "batched" (prefix reuse needs our model's ``start_layer``).
    """
    if ablation not in ABLATIONS:
        raise UserInputError(f"ablation {ablation!r}: use one of {ABLATIONS}")
    if method not in METHODS:
        raise ValueError(f"method {method!r}: use one of {METHODS}")
    if method == "prefix" and not is_native(model):
        method = "batched"
    lay = head_layout(model)
    if ablation == "mean" and mean_z is None:
        mean_z = head_means(model, batch, batch_size)
    n = len(batch)
    base = torch.empty(n)
    delta = torch.empty(n, len(units))
    for sl in batches(n, batch_size):
        sub = batch.subset(range(sl.start, sl.stop))
        b = len(sub)
        if method == "prefix":
            out = model(sub.input_ids, output_hidden_states=True, logits_to_keep=1)
            resid = out.hidden_states  # resid[l] = residual stream entering layer l
            base_hidden = out.last_hidden_state
        else:
            base_hidden = final_hidden(model, sub.input_ids)
        base_loss = loss_from_hidden(model, base_hidden, sub.targets)
        base[sl] = base_loss.cpu()
        device = base_loss.device
        if method == "loop":
            for u, unit in enumerate(units):
                gates = _ablation_gates(lay, [unit], 1, device)[0]  # [L, H]
                h = final_hidden(model, sub.input_ids, gates=gates, mean_z=mean_z)
                delta[sl, u] = (loss_from_hidden(model, h, sub.targets) - base_loss).cpu()
                if progress:
                    progress(1)
            continue
        # batched: chunks of units; with prefix reuse every chunk shares one layer
        order = list(range(len(units)))
        if method == "prefix":
            chunks = []
            for layer in range(lay.num_layers):
                in_layer = [u for u in order if units[u].layer == layer]
                chunks += [in_layer[i : i + replicas] for i in range(0, len(in_layer), replicas)]
        else:
            chunks = [order[i : i + replicas] for i in range(0, len(order), replicas)]
        for chunk in chunks:
            r = len(chunk)
            gates = _ablation_gates(lay, [units[u] for u in chunk], b, device)
            targets = sub.targets.repeat(r, 1)
            if method == "prefix":
                layer = units[chunk[0]].layer
                x = resid[layer].repeat(r, 1, 1)  # [R·B, T, D], replica-major like the gates
                h = final_hidden(model, gates=gates, mean_z=mean_z, inputs_embeds=x, start_layer=layer)
            else:
                h = final_hidden(model, sub.input_ids.repeat(r, 1), gates=gates, mean_z=mean_z)
            losses = loss_from_hidden(model, h, targets).view(r, b)
            delta[sl, chunk] = (losses - base_loss[None]).T.cpu()
            if progress:
                progress(r)
    return base, delta
