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
