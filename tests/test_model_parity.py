"""Our Qwen2 against transformers' own modules, on tiny random configs (fp32, eager attention).

Tolerance 3e-5 of the output's scale (tests/tolerance.py): both sides run the same float32
operations, in another order in places (matmul blocking, attention), whose rounding differences
are ~1e-7 relative on these sizes. The float64 rule,
this project's test for telling rounding from bugs: run the same comparison in float64; a rounding
difference shrinks by orders of magnitude, and a mismatch that does not shrink is a bug
(test_float64_rule).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
import transformers
from transformers.models.llama import modeling_llama
from transformers.models.qwen2 import modeling_qwen2

from qwen_anatomy import model as ours
from qwen_anatomy.config import Qwen2Config, tiny_config
from tolerance import assert_close_scaled

# Parity with transformers in fp32: both sides compute the same formulas, in a different order in
# places (attention, GQA repeat, matmul shapes): rounding relative to the scale of the output
# (tests/tolerance.py: 3e-5 x max|expected|; a real bug moves outputs by 1e-3 of the scale or more).
torch.set_num_threads(1)

# (tied, heads, kv_heads, bias): GQA ratios 1, 2 and 4, tied and untied, q/k/v bias on and off.
GRID = [
    (False, 4, 4, True),
    (True, 4, 2, True),
    (False, 8, 2, True),
    (True, 8, 1, True),
    (False, 4, 2, False),
    (True, 8, 2, False),
]


def hf_pair(cfg: Qwen2Config, seed: int = 0):
    """Our model with random weights, and transformers' class for the same config with the same weights."""
    mine = ours.Qwen2ForCausalLM(cfg).init_weights(seed)
    if cfg.attention_bias:  # random biases too, so the bias path is exercised
        g = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for name, p in mine.named_parameters():
                if name.endswith(".bias"):
                    p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    hf_cfg = cfg.to_hf_dict()
    if cfg.model_type == "qwen2":
        ref = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**hf_cfg))
    else:
        ref = transformers.LlamaForCausalLM(transformers.LlamaConfig(**hf_cfg))
    ref.config._attn_implementation = "eager"
    result = ref.load_state_dict(mine.state_dict(), strict=False)
    assert not result.unexpected_keys and not [k for k in result.missing_keys if "lm_head" not in k]
    return mine.eval(), ref.eval()


def cfg_for(tied, heads, kv, bias, **kw) -> Qwen2Config:
    return tiny_config(
        tie_word_embeddings=tied,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        hidden_size=8 * heads,
        attention_bias=bias,
        model_type="qwen2" if bias else "llama",
        **kw,
    )


def test_rmsnorm_matches():
    x = torch.randn(3, 5, 32) * 4
    a = ours.RMSNorm(32, 1e-6)
    b = modeling_qwen2.Qwen2RMSNorm(32, 1e-6)
    with torch.no_grad():
        a.weight.copy_(torch.randn(32))
        b.weight.copy_(a.weight)
    torch.testing.assert_close(a(x), b(x), atol=0, rtol=0)  # same ops, same order: exact
    # bf16 input: computed in fp32, cast back, as transformers does
    torch.testing.assert_close(a(x.bfloat16()), b(x.bfloat16()), atol=0, rtol=0)


@pytest.mark.parametrize("theta", [10000.0, 1_000_000.0])
def test_rotary_tables_exact(theta):
    cfg = tiny_config(rope_theta=theta)
    ref = modeling_qwen2.Qwen2RotaryEmbedding(transformers.Qwen2Config(**cfg.to_hf_dict()))
    pos = torch.arange(0, 97)[None].repeat(2, 1)
    pos[1] = pos[1] + 13
    x = torch.zeros(1, dtype=torch.float32)
    cos_ref, sin_ref = ref(x, pos)
    cos, sin = ours.rope_tables(pos, ours.rope_inv_freq(cfg.head_dim, theta))
    assert torch.equal(cos, cos_ref) and torch.equal(sin, sin_ref)
    assert torch.equal(ours.rope_inv_freq(cfg.head_dim, theta), ref.inv_freq)
    q, k = torch.randn(2, 4, 97, cfg.head_dim), torch.randn(2, 2, 97, cfg.head_dim)
    q_ref, k_ref = modeling_qwen2.apply_rotary_pos_emb(q, k, cos_ref, sin_ref)
    assert torch.equal(ours.apply_rope(q, cos, sin), q_ref)
    assert torch.equal(ours.apply_rope(k, cos, sin), k_ref)


def test_rope_scores_depend_only_on_relative_position():
    d = 16
    inv = ours.rope_inv_freq(d, 10000.0)
    q, k = torch.randn(1, 1, 1, d), torch.randn(1, 1, 1, d)

    def score(m, n):
        cq, sq = ours.rope_tables(torch.tensor([[m]]), inv)
        ck, sk = ours.rope_tables(torch.tensor([[n]]), inv)
        return (ours.apply_rope(q, cq, sq) * ours.apply_rope(k, ck, sk)).sum()

    # the same rotation angles reached from other absolute positions: fp32 rounding of cos/sin only
    assert_close_scaled(score(7, 3), score(104, 100))
    assert not torch.allclose(score(7, 3), score(7, 5), atol=1e-3)


def test_repeat_kv_matches_transformers():
    x = torch.randn(2, 3, 5, 4)
    assert torch.equal(ours.repeat_kv(x, 4), modeling_qwen2.repeat_kv(x, 4))


def _causal_additive(b, t):
    mask = torch.full((t, t), torch.finfo(torch.float32).min).triu(1)
    return mask[None, None].expand(b, 1, t, t)


@pytest.mark.parametrize("tied,heads,kv,bias", GRID)
def test_modules_match(tied, heads, kv, bias):
    cfg = cfg_for(tied, heads, kv, bias)
    mine, ref = hf_pair(cfg)
    b, t = 2, 11
    x = torch.randn(b, t, cfg.hidden_size)
    pos = torch.arange(t)[None].expand(b, t)
    cos, sin = ours.rope_tables(pos, ours.rope_inv_freq(cfg.head_dim, cfg.rope_theta))
    my_layer, ref_layer = mine.model.layers[1], ref.model.layers[1]
    with torch.no_grad():
        assert_close_scaled(my_layer.mlp(x), ref_layer.mlp(x))
        for impl in ("eager", "sdpa"):
            my_layer.self_attn.implementation = impl
            a = my_layer.self_attn(x, cos, sin, None, None)
            r, _ = ref_layer.self_attn(x, (cos, sin), _causal_additive(b, t))
            assert_close_scaled(a, r)
            out = my_layer(x, cos, sin, None)
            ref_out = ref_layer(x, attention_mask=_causal_additive(b, t), position_embeddings=(cos, sin))
            assert_close_scaled(out, ref_out)


@pytest.mark.parametrize("tied,heads,kv,bias", GRID)
@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_full_model_matches_with_padding(tied, heads, kv, bias, impl):
    cfg = cfg_for(tied, heads, kv, bias)
    mine, ref = hf_pair(cfg)
    mine.set_attn_implementation(impl)
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, cfg.vocab_size, (3, 13), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :4] = 0  # left padding
    mask[2, :1] = 0
    with torch.no_grad():
        a = mine(ids, attention_mask=mask).logits
        r = ref(ids, attention_mask=mask).logits
    keep = mask.bool()
    assert_close_scaled(a[keep], r[keep])
    with torch.no_grad():  # without a mask too
        assert_close_scaled(mine(ids).logits, ref(ids).logits)
    if tied:
        assert mine.lm_head.weight is mine.model.embed_tokens.weight


def test_float64_rule():
    """In float64 the difference must shrink by orders of magnitude (else it is a bug, not rounding)."""
    cfg = cfg_for(False, 8, 2, True)
    mine, ref = hf_pair(cfg)
    ids = torch.randint(0, cfg.vocab_size, (2, 9))
    with torch.no_grad():
        d32 = (mine(ids).logits - ref(ids).logits).abs().max().item()  # sdpa vs eager kernels
        mine64, ref64 = mine.double(), ref.double()
        # eager keeps transformers' float32 softmax: the only float32 stages left are shared ones
        mine64.set_attn_implementation("eager")
        d64 = (mine64(ids).logits - ref64(ids).logits).abs().max().item()
    assert d32 < 1e-5
    assert d64 < 1e-12 and d64 < d32 / 1e4


def test_llama_checkpoint_loads_unchanged_apart_from_bias_flag():
    cfg = cfg_for(True, 4, 2, False)
    mine, ref = hf_pair(cfg)
    assert not any(name.endswith(".bias") for name, _ in mine.named_parameters())
    assert isinstance(ref, modeling_llama.LlamaForCausalLM)
    ids = torch.randint(0, cfg.vocab_size, (1, 12))
    with torch.no_grad():
        assert_close_scaled(mine(ids).logits, ref(ids).logits)


def test_config_reads_both_rope_theta_forms():
    base = cfg_for(False, 4, 2, True).to_hf_dict()
    old = {k: v for k, v in base.items() if k != "rope_parameters"} | {"rope_theta": 12345.0}
    new = {k: v for k, v in base.items() if k != "rope_theta"} | {
        "rope_parameters": {"rope_type": "default", "rope_theta": 54321.0}
    }
    assert Qwen2Config.from_hf_dict(old).rope_theta == 12345.0
    assert Qwen2Config.from_hf_dict(new).rope_theta == 54321.0
    cfg = Qwen2Config.from_hf_dict(base)
    assert cfg == cfg_for(False, 4, 2, True)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.hidden_size = 3  # type: ignore[misc]


def test_named_activations_have_documented_shapes():
    cfg = cfg_for(False, 8, 2, True)
    mine, _ = hf_pair(cfg)
    ids = torch.randint(0, cfg.vocab_size, (2, 6))
    _, cache = ours.run_with_cache(mine, ids)
    h, k, d = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    assert cache["model.layers.0.self_attn.hook_z"].shape == (2, 6, h, d)
    assert cache["model.layers.0.self_attn.hook_q"].shape == (2, h, 6, d)
    assert cache["model.layers.1.self_attn.hook_k"].shape == (2, k, 6, d)
    assert cache["model.layers.1.self_attn.hook_pattern"].shape == (2, h, 6, 6)
    assert cache["model.layers.1.mlp.hook_act"].shape == (2, 6, cfg.intermediate_size)
    pattern = cache["model.layers.1.self_attn.hook_pattern"]
    torch.testing.assert_close(pattern.sum(-1), torch.ones(2, h, 6))  # default fp32 (atol 1e-5): softmax sums
    assert torch.all(pattern.triu(1) == 0)  # causal
    # residual bookkeeping: post = mid + mlp_out, mid = pre + attn_out (default fp32 tolerance: the
    # model adds the very same tensors, so only the default's rounding allowance is needed)
    torch.testing.assert_close(
        cache["model.layers.1.hook_resid_post"],
        cache["model.layers.1.hook_resid_mid"] + cache["model.layers.1.hook_mlp_out"],
    )


def test_head_gate_of_ones_is_exact_and_zero_gate_equals_zeroed_columns():
    cfg = cfg_for(False, 8, 2, True)
    mine, _ = hf_pair(cfg)
    ids = torch.randint(0, cfg.vocab_size, (2, 7))
    with torch.no_grad():
        base = mine(ids).logits
        assert torch.equal(mine(ids, head_gates=torch.ones(2, 8)).logits, base)
        gates = torch.ones(2, 8)
        gates[1, 3] = 0
        gated = mine(ids, head_gates=gates).logits
        d = cfg.head_dim
        mine.model.layers[1].self_attn.o_proj.weight[:, 3 * d : 4 * d] = 0
        assert_close_scaled(gated, mine(ids).logits)  # gate 0 vs zeroed columns: fp32 order only
    assert (gated - base).abs().max() > 1e-4  # the gate is not a no-op


def test_prefix_reuse_equals_full_forward():
    cfg = cfg_for(False, 4, 2, True, num_hidden_layers=3)
    mine, _ = hf_pair(cfg)
    ids = torch.randint(0, cfg.vocab_size, (2, 7))
    with torch.no_grad():
        full = mine(ids, output_hidden_states=True)
        again = mine(inputs_embeds=full.hidden_states[2], start_layer=2)
    torch.testing.assert_close(again.logits, full.logits, atol=0, rtol=0)
