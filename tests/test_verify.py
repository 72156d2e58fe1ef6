"""The layer-by-layer divergence report names the first stage that disagrees, and only a real one."""

from __future__ import annotations

import torch

from qwen_anatomy.verify import first_divergent, layer_divergence
from test_model_parity import cfg_for, hf_pair


def test_identical_weights_diverge_nowhere():
    mine, ref = hf_pair(cfg_for(False, 8, 2, True, num_hidden_layers=3))
    ids = torch.randint(0, 101, (2, 9))
    rows = layer_divergence(mine, ref, ids)
    assert [r["stage"] for r in rows] == ["embed", "layer.0", "layer.1", "layer.2", "norm", "logits"]
    assert first_divergent(rows) is None
    assert rows[-1]["max_abs_diff"] < 1e-5


def test_a_perturbed_layer_is_named_first():
    mine, ref = hf_pair(cfg_for(False, 8, 2, True, num_hidden_layers=3))
    with torch.no_grad():  # a small bug: 1% noise on one projection of layer 1
        w = mine.model.layers[1].mlp.down_proj.weight
        w.add_(0.01 * w.abs().mean() * torch.randn_like(w))
    ids = torch.randint(0, 101, (2, 9))
    rows = layer_divergence(mine, ref, ids)
    assert first_divergent(rows) == "layer.1"
    assert rows[1]["max_abs_diff"] <= rows[1]["tolerance"]  # layer 0 still agrees
