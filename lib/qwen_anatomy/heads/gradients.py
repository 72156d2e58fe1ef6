"""Per-example gate gradients from one backward pass, and the proxies built from them (chapter 40).

The gate is a leaf of shape [B, L, H] passed as per-example head gates (all ones). The per-example
losses are summed and differentiated once: example i's loss depends only on row i of the gate, so
row i of the gradient is ∂loss_i/∂gate_i, exactly what a backward pass on example i alone gives.
Means are then over examples, never over batches, so the batch size cannot change the numbers.

From g_i = ∂loss_i/∂gate (one number per head and example):
- G = E|g|, F = E[g²], Ppred = G² / (F + ε) ≤ 1 by Jensen: how evenly gradient size spreads over
  examples, not whether the examples agree in sign;
- signed ratio (E g)² / (E[g²] + ε) = GSNR / (1 + GSNR): do the examples push the gate the same way;
- −E[g]: the first-order estimate of zero ablation's Δloss (gate 1 → 0 moves the loss by ≈ −g);
- head-output norm E‖z_h‖ (mean over real positions), a naive baseline.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .core import EvalBatch, batches, final_hidden, head_layout, is_native, loss_from_hidden

EPS = 1e-12


def gate_gradients(
    model: nn.Module, batch: EvalBatch, batch_size: int = 16, use_hooks: bool = False
) -> dict[str, torch.Tensor]:
    """Per-example gate gradients g [E, L, H], head-output norms [E, L, H] and losses [E].

    One forward and one backward pass per batch of ``batch_size`` examples.
    """
    lay = head_layout(model)
    n = len(batch)
    grads = torch.empty(n, lay.num_layers, lay.num_heads)
    norms = torch.empty(n, lay.num_layers, lay.num_heads)
    losses = torch.empty(n)
    for sl in batches(n, batch_size):
        sub = batch.subset(range(sl.start, sl.stop))
        mask = sub.real_mask().float()  # [B, T]
        gate = torch.ones(
            len(sub), lay.num_layers, lay.num_heads, device=sub.input_ids.device, requires_grad=True
        )
        norm_rows = {}

        def record(layer, z, mask=mask, norm_rows=norm_rows):
            per_pos = z.detach().norm(dim=-1)  # [B, T, H]
            norm_rows[layer] = (per_pos * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)

        hooks = _norm_hooks(model, record, use_hooks)
        try:
            hidden = final_hidden(model, sub.input_ids, gates=gate, use_hooks=use_hooks)
        finally:
            for h in hooks:
                h.remove()
        loss = loss_from_hidden(model, hidden, sub.targets)
        (g,) = torch.autograd.grad(loss.sum(), gate)
        grads[sl] = g.cpu()
        norms[sl] = torch.stack([norm_rows[i] for i in range(lay.num_layers)], 1).float().cpu()
        losses[sl] = loss.detach().cpu()
    return {"grad": grads, "norm": norms, "loss": losses}


def _norm_hooks(model, record, use_hooks):
    """Hooks reading each layer's per-head output before the gate."""
    lay = head_layout(model)
    handles = []
    for i, layer in enumerate(model.model.layers):
        attn = layer.self_attn
        if is_native(model) and not use_hooks:
            handles.append(attn.hook_z.register_forward_hook(lambda _m, _i, z, i=i: record(i, z)))
        else:
            # registered before the gating pre-hook, so it sees the ungated z
            def pre(_m, args, i=i):
                x = args[0]
                record(i, x.view(x.shape[0], x.shape[1], lay.num_heads, lay.head_dim))

            handles.append(attn.o_proj.register_forward_pre_hook(pre, prepend=True))
    return handles


def gradient_proxies(grad: np.ndarray, eps: float = EPS) -> dict[str, np.ndarray]:
    """G, F, Ppred, signed ratio and −E[g] over axis 0 (examples) of per-example gradients."""
    g = np.asarray(grad, dtype=np.float64)
    G = np.abs(g).mean(0)
    Fm = (g**2).mean(0)
    Eg = g.mean(0)
    return {
        "G": G,
        "F": Fm,
        "Ppred": G**2 / (Fm + eps),
        "snr": Eg**2 / (Fm + eps),
        "neg_Eg": -Eg,
    }
