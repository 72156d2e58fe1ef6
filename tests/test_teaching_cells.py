"""Cells tagged `teaching` show a readable version of a library module; each must equal lib/ on seeded input."""

from __future__ import annotations

import jupytext
import torch

from qwen_anatomy import model as qm
from qwen_anatomy.config import tiny_config
from toc import ROOT


def teaching_namespace(stem: str) -> dict:
    nb = jupytext.read(ROOT / "notebooks" / f"{stem}.py")
    cells = [c.source for c in nb.cells if "teaching" in c.metadata.get("tags", [])]
    assert cells, f"{stem} has no cell tagged teaching"
    namespace = {"torch": torch, "qm": qm}
    for source in cells:
        exec(compile(source, f"{stem}:teaching", "exec"), namespace)
    return namespace


def test_chapter2_teaching_rmsnorm_equals_library():
    ns = teaching_namespace("02_qwen2_from_scratch")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 16, generator=g) * 5
    norm = qm.RMSNorm(16, 1e-6)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(16, generator=g))
    torch.testing.assert_close(ns["rmsnorm_teaching"](x, norm.weight, 1e-6), norm(x), atol=1e-6, rtol=1e-6)


def test_chapter2_teaching_attention_equals_library():
    ns = teaching_namespace("02_qwen2_from_scratch")
    cfg = tiny_config(num_attention_heads=8, num_key_value_heads=2, hidden_size=64)
    model = qm.Qwen2ForCausalLM(cfg).init_weights(3, std=0.2)
    attn = model.model.layers[1].self_attn
    x = torch.randn(2, 9, 64, generator=torch.Generator().manual_seed(1))
    cos, sin = qm.rope_tables(
        torch.arange(9)[None].expand(2, 9), qm.rope_inv_freq(cfg.head_dim, cfg.rope_theta)
    )
    with torch.no_grad():
        torch.testing.assert_close(
            ns["attention_teaching"](attn, x, cos, sin), attn(x, cos, sin, None, None), atol=1e-5, rtol=1e-5
        )


def test_chapter2_teaching_rotated_score_equals_transformers_rope():
    """The teaching RoPE score equals q·k rotated by transformers' own tables and apply_rotary_pos_emb,
    and depends only on m - n (the property the chapter shows)."""
    import transformers
    from transformers.models.qwen2 import modeling_qwen2

    from qwen_anatomy.config import QWEN2_5_0_5B

    ns = teaching_namespace("02_qwen2_from_scratch")
    g = torch.Generator().manual_seed(2)
    d = QWEN2_5_0_5B.head_dim
    q, k = torch.randn(1, 1, 1, d, generator=g), torch.randn(1, 1, 1, d, generator=g)
    inv = qm.rope_inv_freq(d, QWEN2_5_0_5B.rope_theta)
    ref_rope = modeling_qwen2.Qwen2RotaryEmbedding(transformers.Qwen2Config(**QWEN2_5_0_5B.to_hf_dict()))
    for m, n in [(5, 2), (105, 102), (7, 30)]:
        cos_m, sin_m = ref_rope(torch.zeros(1), torch.tensor([[m]]))
        cos_n, sin_n = ref_rope(torch.zeros(1), torch.tensor([[n]]))
        q_ref, _ = modeling_qwen2.apply_rotary_pos_emb(q, q, cos_m, sin_m)
        k_ref, _ = modeling_qwen2.apply_rotary_pos_emb(k, k, cos_n, sin_n)
        expected = float((q_ref * k_ref).sum())
        assert abs(ns["rotated_score"](q, k, m, n, inv) - expected) <= 1e-4 * max(1.0, abs(expected))
    same_offset = [ns["rotated_score"](q, k, m, m - 3, inv) for m in (3, 50, 900)]
    assert max(same_offset) - min(same_offset) < 1e-3
    assert abs(ns["rotated_score"](q, k, 5, 4, inv) - same_offset[0]) > 1e-3  # another offset differs
