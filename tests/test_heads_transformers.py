"""Part IV on a transformers model: gates through o_proj pre-hooks equal our native gates.

Marked slow: importing transformers costs 15-20 s on two cores.
"""

from __future__ import annotations

import pytest
import torch

from qwen_anatomy.heads.ablation import ablation_deltas, group_units, head_units
from qwen_anatomy.heads.core import head_layout
from qwen_anatomy.heads.gradients import gate_gradients
from test_heads_core import tiny_batch, tiny_model
from tolerance import assert_close_scaled

torch.set_num_threads(1)


@pytest.mark.slow
@pytest.mark.parametrize("bias", [True, False])
def test_transformers_model_through_o_proj_hooks_equals_ours(bias):
    transformers = pytest.importorskip("transformers")
    mine = tiny_model(attention_bias=bias, model_type="qwen2" if bias else "llama")
    if bias:
        with torch.no_grad():
            for name, p in mine.named_parameters():
                if name.endswith(".bias"):
                    p.normal_(0, 0.1)
    hf_cfg = mine.config.to_hf_dict()
    if bias:
        ref = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**hf_cfg))
    else:
        ref = transformers.LlamaForCausalLM(transformers.LlamaConfig(**hf_cfg))
    result = ref.load_state_dict(mine.state_dict(), strict=False)
    assert not result.unexpected_keys
    ref.eval()
    batch = tiny_batch()
    lay = head_layout(mine)
    assert head_layout(ref) == lay
    for units in (head_units(lay), group_units(lay)):
        for ablation in ("zero", "mean"):
            base_m, d_m = ablation_deltas(mine, batch, units, ablation, "prefix", batch_size=3, replicas=4)
            base_r, d_r = ablation_deltas(ref, batch, units, ablation, "batched", batch_size=3, replicas=4)
            # transformers computes attention in another order: agreement to fp32 rounding, relative
            # to the loss's size (a loss change rounds where the loss does; tests/tolerance.py)
            assert_close_scaled(base_r, base_m)
            assert_close_scaled(d_r, d_m, scale=base_m)
            assert d_r.abs().mean(0).min() > 1e-4  # the hooks really ablate
    g_m = gate_gradients(mine, batch)
    g_r = gate_gradients(ref, batch)
    assert_close_scaled(g_r["grad"], g_m["grad"])  # fp32, another summation order
    assert_close_scaled(g_r["norm"], g_m["norm"])
