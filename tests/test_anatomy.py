"""q/k/v biases, massive activations and attention sinks (qwen_anatomy.anatomy, chapter 02).

Fast tier: tiny random models with planted cases (zero biases change nothing, a planted value is found
where it was put, a planted sink head, hidden keys equal a hand-written masked attention). Slow tier:
the real Qwen2.5-Coder-0.5B on a few sequences, asserting the qualitative facts of the literature with
margins set from measured values (written next to each assertion).
"""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from qwen_anatomy import anatomy
from qwen_anatomy import model as qm
from qwen_anatomy.config import tiny_config

torch.set_num_threads(1)


def tiny(seed: int = 0, layers: int = 2, bias_scale: float = 0.5, **overrides) -> qm.Qwen2ForCausalLM:
    """A tiny Qwen2 with random (non-zero) q/k/v biases, in eval mode."""
    cfg = tiny_config(num_hidden_layers=layers, **overrides)
    model = qm.Qwen2ForCausalLM(cfg).init_weights(seed, std=0.2).eval()
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.copy_(torch.randn(p.shape, generator=g) * bias_scale)
    return model


def random_ids(n: int = 3, t: int = 12, vocab: int = 101, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, (n, t), generator=torch.Generator().manual_seed(seed))


# -- text ------------------------------------------------------------------------------------------
class ByteTokenizer:
    def encode(self, text: str) -> list[int]:
        return list(text.encode())

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return bytes(ids).decode(errors="replace")


def test_text_sequences_are_deterministic_equal_chunks_of_the_corpus():
    tok = ByteTokenizer()
    ids = anatomy.text_sequences(tok, 3, 50, seed=1)
    assert ids.shape == (3, 50) and ids.dtype == torch.long
    assert torch.equal(ids, anatomy.text_sequences(tok, 3, 50, seed=1))
    assert not torch.equal(ids, anatomy.text_sequences(tok, 3, 50, seed=2))
    # consecutive chunks of one stream
    assert torch.equal(anatomy.text_sequences(tok, 6, 25, seed=1).view(3, 50), ids)
    with pytest.raises(ValueError, match="seq_len >= 2"):
        anatomy.text_sequences(tok, 2, 1)
    with pytest.raises(ValueError, match="asked for"):
        anatomy.text_sequences(tok, 10**6, 10**4)


def test_delimiter_mask_marks_tokens_without_letters_or_digits():
    tok = ByteTokenizer()
    ids = torch.tensor([list(b"a.\n 9,")])
    assert anatomy.delimiter_mask(tok, ids).tolist() == [[False, True, True, True, False, True]]


# -- blocked keys ----------------------------------------------------------------------------------
def test_block_keys_hides_each_key_from_the_right_queries():
    blocked = anatomy.block_keys(2, 6, [0, 3], from_query=2)
    assert blocked.shape == (2, 6, 6)
    assert torch.nonzero(blocked[0]).tolist() == [[q, 0] for q in range(2, 6)]
    assert torch.nonzero(blocked[1]).tolist() == [[4, 3], [5, 3]]  # max(p + 1, from_query) = 4
    assert torch.equal(anatomy.block_keys(2, 6, 0), anatomy.block_keys(2, 6, [0, 0]))
    with pytest.raises(ValueError, match="0..5"):
        anatomy.block_keys(1, 6, [6])
    with pytest.raises(ValueError, match="from_query"):
        anatomy.block_keys(1, 6, [0], from_query=0)
    with pytest.raises(ValueError, match="2 sequences"):
        anatomy.block_keys(2, 6, [0, 1, 2])


def manual_losses(model: qm.Qwen2ForCausalLM, ids: torch.Tensor, blocked: torch.Tensor) -> torch.Tensor:
    """The whole forward written out, with hidden keys masked to -inf *before* the softmax."""
    cfg, m = model.config, model.model
    b, t = ids.shape
    h, kv, d = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    cos, sin = qm.rope_tables(torch.arange(t)[None].expand(b, t), m.inv_freq)
    allowed = torch.ones(t, t, dtype=torch.bool).tril()[None, None] & ~blocked[:, None]
    x = m.embed_tokens(ids)
    for layer in m.layers:
        a, hx = layer.self_attn, layer.input_layernorm(x)
        q = qm.apply_rope(a.q_proj(hx).view(b, t, h, d).transpose(1, 2), cos, sin)
        k = qm.apply_rope(a.k_proj(hx).view(b, t, kv, d).transpose(1, 2), cos, sin)
        v = a.v_proj(hx).view(b, t, kv, d).transpose(1, 2)
        k, v = k.repeat_interleave(h // kv, dim=1), v.repeat_interleave(h // kv, dim=1)
        scores = (q @ k.transpose(-1, -2) / math.sqrt(d)).masked_fill(~allowed, float("-inf"))
        z = torch.softmax(scores, -1) @ v  # [B, H, T, d]
        x = x + a.o_proj(z.transpose(1, 2).reshape(b, t, h * d))
        x = x + layer.mlp(layer.post_attention_layernorm(x))
    logits = model.lm_head(m.norm(x))[:, :-1]
    return F.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")


@pytest.mark.parametrize("from_query", [1, 5])
def test_hidden_keys_equal_a_hand_written_masked_attention(from_query):
    model = tiny(1, layers=3, num_attention_heads=4, num_key_value_heads=2)
    ids = random_ids(3, 10)
    blocked = anatomy.block_keys(3, 10, [0, 4, 2], from_query=from_query)
    with torch.no_grad():
        expected = manual_losses(model, ids, blocked)
        unblocked = manual_losses(model, ids, torch.zeros_like(blocked))
    got = anatomy.token_losses(model, ids, batch_size=2, blocked=blocked)
    # float32, the same operations in another order: 1e-5 on losses of order 5 nats
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(anatomy.token_losses(model, ids), unblocked, atol=1e-5, rtol=1e-5)
    assert (got - anatomy.token_losses(model, ids)).abs().max() > 1e-3  # hiding a key changes something


def test_hiding_the_first_position_equals_the_padding_mask_and_dropping_the_token():
    """Key 0 hidden from every later query: the same as a padding mask on position 0, and, RoPE being
    relative, the same as deleting the first token (the second token becomes the first)."""
    model = tiny(2, layers=2)
    ids = random_ids(2, 9, seed=3)
    hidden = anatomy.token_losses(model, ids, blocked=anatomy.block_keys(2, 9, 0))
    mask = torch.ones_like(ids)
    mask[:, 0] = 0
    with torch.no_grad():
        logits = model(ids, attention_mask=mask).logits[:, :-1]
    padded = F.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
    torch.testing.assert_close(hidden[:, 1:], padded[:, 1:], atol=1e-5, rtol=1e-5)  # float32 order
    torch.testing.assert_close(hidden[:, 1:], anatomy.token_losses(model, ids[:, 1:]), atol=1e-5, rtol=1e-5)


def test_a_query_cannot_be_blocked_from_itself():
    model = tiny()
    blocked = torch.zeros(1, 5, 5, dtype=torch.bool)
    blocked[0, 2, 2] = True
    with pytest.raises(ValueError, match="itself"):
        anatomy.token_losses(model, random_ids(1, 5), blocked=blocked)


# -- paired differences ----------------------------------------------------------------------------
def test_paired_difference_of_identical_and_shifted_losses():
    base = torch.rand(5, 7, generator=torch.Generator().manual_seed(0)) * 4
    same = anatomy.paired_difference(base, base.clone())
    assert same["difference"] == same["low"] == same["high"] == 0.0
    shifted = anatomy.paired_difference(base, base + 0.5)
    assert shifted["difference"] == pytest.approx(0.5) and shifted["low"] == pytest.approx(0.5)
    assert shifted["high"] == pytest.approx(0.5) and shifted["tokens"] == 35 and shifted["sequences"] == 5


def test_paired_difference_interval_covers_the_true_shift_and_shrinks_with_sequences():
    g = torch.Generator().manual_seed(1)
    widths = []
    for n in (8, 128):
        base = torch.rand(n, 20, generator=g) * 4
        other = base + 0.3 + torch.randn(n, 1, generator=g) * 0.5  # per-sequence noise
        row = anatomy.paired_difference(base, other, n_boot=4000, seed=0)
        assert row["low"] < 0.3 < row["high"]
        widths.append(row["high"] - row["low"])
    assert widths[1] < widths[0] / 2  # about sqrt(16) = 4 times narrower
    with pytest.raises(ValueError, match="one shape"):
        anatomy.paired_difference(torch.zeros(2, 3), torch.zeros(2, 4))


def test_difference_table_compares_only_the_chosen_positions():
    base = torch.zeros(4, 6)
    arm = base.clone()
    arm[:, 3:] = 1.0
    table = anatomy.difference_table({"baseline": base, "arm": arm}, from_position=3)
    assert table["arm"].tolist() == ["arm"] and table["difference"].iloc[0] == pytest.approx(1.0)
    table = anatomy.difference_table({"baseline": base, "arm": arm})
    assert table["difference"].iloc[0] == pytest.approx(0.5)


# -- biases ----------------------------------------------------------------------------------------
def test_zeroing_biases_that_are_zero_changes_nothing_and_biases_are_restored():
    model = tiny(bias_scale=0.0)  # transformers' initialisation: zero biases
    ids = random_ids()
    losses = anatomy.bias_ablation(model, ids, batch_size=2)
    assert set(losses) == {"baseline", *anatomy.BIAS_VARIANTS}
    table = anatomy.difference_table(losses)
    assert (table["difference"] == 0).all() and (table["low"] == 0).all() and (table["high"] == 0).all()

    model = tiny(bias_scale=0.5)
    before = {n: p.clone() for n, p in model.named_parameters() if n.endswith(".bias")}
    table = anatomy.difference_table(anatomy.bias_ablation(model, ids))
    assert (table["difference"].abs() > 1e-4).all()  # non-zero biases matter
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters() if n.endswith(".bias"))


def test_zeroed_biases_restores_even_after_an_error_and_checks_its_input():
    model = tiny()
    before = model.model.layers[0].self_attn.k_proj.bias.clone()
    with pytest.raises(RuntimeError, match="inside"), anatomy.zeroed_biases(model, ("k",)):
        assert model.model.layers[0].self_attn.k_proj.bias.abs().max() == 0
        raise RuntimeError("inside")
    assert torch.equal(model.model.layers[0].self_attn.k_proj.bias, before)
    with pytest.raises(ValueError, match="subset"), anatomy.zeroed_biases(model, ("o",)):
        pass
    llama = qm.Qwen2ForCausalLM(tiny_config(attention_bias=False, model_type="llama")).init_weights(0)
    with pytest.raises(ValueError, match="no q/k/v biases"):
        anatomy.bias_norms(llama)


def test_k_bias_matters_only_through_rope():
    """Without rotation q·(k + b_k) = q·k + q·b_k: the same for every key, so the softmax ignores it.
    With RoPE the added term q·R(j-i) b_k depends on the distance, and the k bias changes the output."""
    model = tiny(4, layers=2)
    ids = random_ids(2, 8)
    no_rotation = torch.zeros(2, 8, dtype=torch.long)  # every position 0: cos = 1, sin = 0
    with torch.no_grad():
        flat = model(ids, position_ids=no_rotation).logits
        rotated = model(ids).logits
        with anatomy.zeroed_biases(model, ("k",)):
            flat_no_k = model(ids, position_ids=no_rotation).logits
            rotated_no_k = model(ids).logits
        with anatomy.zeroed_biases(model, ("q",)):
            flat_no_q = model(ids, position_ids=no_rotation).logits
    torch.testing.assert_close(flat_no_k, flat, atol=1e-5, rtol=1e-5)  # float32 rounding only
    assert (rotated_no_k - rotated).abs().max() > 1e-3
    assert (flat_no_q - flat).abs().max() > 1e-3  # q·b_k cancels, b_q·W_k x_j does not


def test_v_bias_is_a_constant_offset_of_the_attention_output():
    model = tiny(5, layers=3, num_attention_heads=4, num_key_value_heads=2)
    ids = random_ids(2, 7)
    offsets = anatomy.v_bias_offsets(model)
    assert offsets.shape == (3, model.config.hidden_size)
    add = {f"model.layers.{i}.hook_attn_out": (lambda x, o=offsets[i]: x + o) for i in range(3)}
    with torch.no_grad():
        base = model(ids).logits
        with anatomy.zeroed_biases(model, ("v",)):
            without = model(ids).logits
            with qm.hooks(model, add):
                folded = model(ids).logits
    torch.testing.assert_close(folded, base, atol=1e-5, rtol=1e-5)  # float32 order of additions
    assert (without - base).abs().max() > 1e-3


def test_bias_table_finds_a_planted_key_bias_and_its_ratio():
    model = tiny(6, layers=2, bias_scale=0.01)
    cfg = model.config
    d = cfg.head_dim
    with torch.no_grad():
        model.model.layers[1].self_attn.k_proj.bias[d : 2 * d] = 100.0 / math.sqrt(d)  # kv head 1, norm 100
    ids = random_ids(2, 9)
    residual = anatomy.residual_stream(model, ids)
    assert residual.shape == (cfg.num_hidden_layers + 1, 2, 9, cfg.hidden_size)
    table = anatomy.bias_table(model, residual)
    assert len(table) == cfg.num_hidden_layers * (cfg.num_attention_heads + 2 * cfg.num_key_value_heads)
    top = table.loc[table["ratio"].idxmax()]
    assert (top["layer"], top["projection"], top["head"]) == (1, "k", 1)
    assert top["bias_norm"] == pytest.approx(100.0, rel=1e-5)
    layer = model.model.layers[1]
    with torch.no_grad():
        x = layer.input_layernorm(residual[1])
        wx = (x @ layer.self_attn.k_proj.weight[d : 2 * d].T).norm(dim=-1).flatten().median()
    assert top["activation_norm"] == pytest.approx(float(wx), rel=1e-5)
    text = anatomy.bias_sentence(table, anatomy.difference_table(anatomy.bias_ablation(model, ids)))
    assert text.startswith("The largest bias relative to its activation is the k bias of layer 1, head 1")
    assert "With the q and k biases zeroed, the loss" in text


# -- massive activations ---------------------------------------------------------------------------
def test_a_planted_value_is_found_at_its_layer_position_and_dimension():
    model = tiny(7, layers=3)
    ids = random_ids(2, 10)

    def plant(x):
        x = x.clone()
        x[1, 3, 5] += 1000.0  # sequence 1, position 3, dimension 5
        return x

    with qm.hooks(model, {"model.layers.1.hook_resid_post": plant}):
        residual = anatomy.residual_stream(model, ids)
    table = anatomy.extremes_table(residual[1:])
    assert table["layer"].tolist() == [0, 1, 2]
    assert table.loc[0, "ratio"] < 50  # a random tiny model has no massive activation
    for layer in (1, 2):  # the residual stream carries it on
        row = table.loc[layer]
        assert (row["sequence"], row["position"], row["dim"]) == (1, 3, 5)
        assert row["ratio"] > 500 and row["first_max"] < 50
        assert (row["rest_position"], row["rest_dim"], row["rest_max"]) == (3, 5, row["top1"])
        assert row["second_max"] < 50
    dims = anatomy.massive_dimensions(residual[1:], factor=100)
    assert dims[["layer", "dim", "position"]].values.tolist() == [[1, 5, 3], [2, 5, 3]]
    assert (dims["share_first"] == 0).all()
    recurring = anatomy.recurring_dimensions(dims)
    assert recurring.iloc[0][["dim", "layers", "first_layer", "last_layer"]].tolist() == [5, 2, 1, 2]


def test_extremes_table_on_a_hand_made_stream():
    residual = torch.ones(2, 2, 4, 3) * 0.1  # [L, N, T, D]
    residual[0, 0, 0, 2] = -50.0  # first position, negative: magnitudes count
    residual[0, 1, 1, 0] = 8.0  # second position
    residual[0, 1, 2, 1] = 7.0  # a delimiter
    residual[1, 1, 3, 0] = 9.0
    delimiters = torch.zeros(2, 4, dtype=torch.bool)
    delimiters[1, 2] = True
    delimiters[0, 1] = True  # the second position does not count as a delimiter
    table = anatomy.extremes_table(residual, delimiters, top=2, layers=[5, 6])
    r0, r1 = table.iloc[0], table.iloc[1]
    assert (r0["layer"], r0["top1"], r0["top2"], r0["sequence"], r0["position"], r0["dim"]) == (
        5,
        50,
        8,
        0,
        0,
        2,
    )
    assert r0["ratio"] == pytest.approx(500.0) and r0["first_max"] == 50.0
    assert (r0["second_max"], r0["second_dim"]) == (8.0, 0)
    assert (r0["rest_max"], r0["rest_position"], r0["rest_dim"]) == (pytest.approx(7.0), 2, 1)
    assert r0["delimiter_max"] == pytest.approx(7.0) and r1["delimiter_max"] == pytest.approx(0.1)
    assert (r1["position"], r1["dim"], r1["first_max"]) == (3, 0, pytest.approx(0.1))
    assert (r1["rest_position"], r1["rest_dim"]) == (3, 0)
    text = anatomy.massive_sentence(table, tokens=[["a", "b", "c", "d"], ["e", "f", "g", "h"]])
    assert text.startswith(
        "Layer 5 holds the largest activation, 50 in dimension 2 at position 0 (the token 'a'), 500× the median"
    )
    assert "The largest entry sits at the first position in layers 5 (1 of 2)" in text
    assert "The second position reaches 8.0 (layer 5, dimension 0, 80× the median)" in text
    assert (
        "the largest entry relative to its layer's median is 9.0 (layer 6, dimension 0, 90× the median)"
        in text
    )
    assert "on delimiter tokens (punctuation, spaces, newlines) at most 7.0 (layer 5)" in text
    with pytest.raises(ValueError, match="T >= 3"):
        anatomy.extremes_table(residual[:, :, :2])


def test_massive_needs_both_the_absolute_and_the_relative_threshold():
    residual = torch.full((1, 1, 4, 3), 0.01)  # median 0.01
    residual[0, 0, 1, 0] = 50.0  # 5,000x the median, but below 100
    residual[0, 0, 2, 2] = 150.0
    dims = anatomy.massive_dimensions(residual)
    assert dims[["dim", "position"]].values.tolist() == [[2, 2]]
    assert dims["ratio"].iloc[0] == pytest.approx(15_000.0) and dims["share_first"].iloc[0] == 0.0
    assert anatomy.massive_dimensions(residual, min_abs=10)["dim"].tolist() == [0, 2]
    assert anatomy.recurring_dimensions(anatomy.massive_dimensions(residual * 0)).empty


def test_runs_of_layers_read_as_ranges():
    assert anatomy._runs([2, 3, 4, 7]) == "2–4 and 7"
    assert anatomy._runs([3]) == "3"
    assert anatomy._runs([1, 3, 5, 6]) == "1, 3 and 5–6"


# -- attention sinks -------------------------------------------------------------------------------
def planted_sink_model() -> qm.Qwen2ForCausalLM:
    """Layer 0, head 0 attends to the token SINK: its q bias points along the slowest rotary pair
    (hardly rotated over a few positions) and W_k maps a residual dimension that only SINK's embedding
    uses onto that pair, so the score of SINK's key is about 200 and every other is about 0."""
    model = tiny(8, layers=2, bias_scale=0.0, num_attention_heads=4, num_key_value_heads=2)
    cfg = model.config
    slow, sink_dim = cfg.head_dim // 2 - 1, 7
    with torch.no_grad():
        model.model.embed_tokens.weight[:, sink_dim] = 0.0
        model.model.embed_tokens.weight[SINK] = 0.0
        model.model.embed_tokens.weight[SINK, sink_dim] = 1.0
        attn = model.model.layers[0].self_attn
        attn.q_proj.bias[slow] = 10.0  # query head 0, which reads kv head 0
        attn.k_proj.weight[slow] = 0.0
        attn.k_proj.weight[slow, sink_dim] = 10.0
    return model


SINK = 0


def test_a_planted_sink_head_puts_its_attention_on_the_first_position():
    model = planted_sink_model()
    ids = random_ids(3, 12, seed=4).clamp_min(1)
    ids[:, 0] = SINK
    shares = anatomy.first_position_share(model, ids, min_query=2, batch_size=2)
    assert shares.shape == (2, 4)
    assert shares[0, 0] > 0.99
    assert shares[0, 1:].max() < 0.5 and shares[1].max() < 0.5
    # the share is the hook_pattern average, computed by hand
    _, cache = qm.run_with_cache(model, ids, ["model.layers.1.self_attn.hook_pattern"])
    by_hand = cache["model.layers.1.self_attn.hook_pattern"][:, :, 2:, 0].mean((0, 2))
    torch.testing.assert_close(shares[1], by_hand, atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="min_query"):
        anatomy.first_position_share(model, ids, min_query=0)


def test_sink_masking_arms_and_controls():
    model = planted_sink_model()
    ids = random_ids(4, 16, seed=5).clamp_min(1)
    ids[:, 0] = SINK
    out = anatomy.sink_masking(model, ids, from_query=8, seed=3)
    assert list(out) == ["baseline", "first position hidden", "random middle position hidden"]
    control = anatomy.control_positions(4, 16, seed=3)
    assert ((control >= 4) & (control < 12)).all() and control.unique().numel() > 1
    # predictions made before from_query are untouched in both arms (eager against sdpa: float32 order)
    for arm in ("first position hidden", "random middle position hidden"):
        torch.testing.assert_close(out[arm][:, :8], out["baseline"][:, :8], atol=1e-5, rtol=1e-5)
    # the planted sink holds all its head's mass: hiding it is still a finite softmax over the rest
    assert torch.isfinite(out["first position hidden"]).all()
    assert (out["first position hidden"][:, 8:] - out["baseline"][:, 8:]).abs().max() > 1e-3
    expected = anatomy.token_losses(model, ids, blocked=anatomy.block_keys(4, 16, control, from_query=8))
    torch.testing.assert_close(out["random middle position hidden"], expected)
    with pytest.raises(ValueError, match="from_query"):
        anatomy.sink_masking(model, ids, from_query=16)


def test_sink_sentence_reads_the_numbers():
    shares = torch.tensor([[0.1, 0.2], [0.9, 0.7], [0.6, 0.5]])
    row = {"baseline": 2.0, "sequences": 4, "tokens": 40}
    table = pd.DataFrame(
        [
            {"arm": "first position hidden", **row, "loss": 3.0, "difference": 1.0, "low": 0.8, "high": 1.2},
            {
                "arm": "random middle position hidden",
                **row,
                "loss": 2.0,
                "difference": 0.0,
                "low": -0.1,
                "high": 0.1,
            },
        ]
    )
    text = anatomy.sink_sentence(shares, {1: table, 32: table})
    assert text.startswith("Averaged over heads, the first position receives 0.15 to 0.80 of the attention")
    assert "(most in layer 1: 0.80); 2 of 3 layers give it more than half" in text
    assert "layer 1, head 0, with 0.90" in text
    assert "Hiding the first position from every later query: the loss rises from 2.000 to 3.000" in text
    assert "from the queries from position 32 on" in text
    assert "random middle position instead: the loss does not change measurably" in text


def test_onset_sentence_links_the_first_massive_layer_and_the_first_sink_layer():
    extremes = pd.DataFrame({"layer": [0, 1, 2, 3], "ratio": [10.0, 5000.0, 4000.0, 50.0]})
    shares = torch.tensor([[0.0, 0.1], [0.1, 0.2], [0.5, 0.4], [0.3, 0.3]])
    text = anatomy.onset_sentence(extremes, shares)
    assert text.startswith("The top entry exceeds 1,000× the median in the outputs of layers 1–2; ")
    assert "more than 20% of their attention on average in layers 2–3." in text
    assert "The first sink layer, 2, is the first layer whose input already holds" in text
    text = anatomy.onset_sentence(extremes, shares, share=0.35)
    assert "in layers 2. The first sink layer, 2" in text
    assert "no layer." in anatomy.onset_sentence(extremes, shares, share=0.9)
    assert "The first sink layer is 2; the massive" in anatomy.onset_sentence(
        extremes.iloc[[0, 1]].assign(layer=[0, 0]), shares
    )


def test_loss_change_wording():
    row = {"baseline": 2.0, "loss": 1.5, "difference": -0.5, "low": -0.6, "high": -0.4}
    assert anatomy._loss_change(row).startswith("the loss falls from 2.000 to 1.500 nats per token (-0.500")


def test_figures_are_labelled():
    import matplotlib

    matplotlib.use("Agg")
    model = tiny(9, layers=2)
    ids = random_ids(2, 10)
    residual = anatomy.residual_stream(model, ids)
    biases = anatomy.bias_table(model, residual)
    ablation = anatomy.difference_table(anatomy.bias_ablation(model, ids))
    masking = {1: anatomy.difference_table(anatomy.sink_masking(model, ids))}
    shares = anatomy.first_position_share(model, ids)
    extremes = anatomy.extremes_table(residual[1:])
    for fig in (
        anatomy.plot_biases(biases, ablation),
        anatomy.plot_massive(extremes, residual[1], layer=0),
        anatomy.plot_sinks(shares, masking),
    ):
        for ax in fig.axes:
            if ax.get_label() == "<colorbar>":
                continue
            assert ax.get_xlabel() and ax.get_title(), ax
    import matplotlib.pyplot as plt

    plt.close("all")


# -- slow tier: the real Qwen2 ---------------------------------------------------------------------
@pytest.mark.slow
def test_real_qwen2_biases_massive_activations_and_sinks():
    """3 sequences of 96 tokens (seed 0); thresholds set from the values measured on them (comments)."""
    from qwen_anatomy.loading import load_model

    model, tok = load_model("qwen2.5-coder-0.5b")
    ids = anatomy.text_sequences(tok, 3, 96, seed=0)
    residual = anatomy.residual_stream(model, ids)
    # q/k/v biases
    biases = anatomy.bias_table(model, residual)
    k0 = biases[(biases["layer"] == 0) & (biases["projection"] == "k")]
    assert k0["ratio"].min() > 10  # measured 43 and 96: layer-0 keys are almost pure bias
    baseline = anatomy.token_losses(model, ids)
    ablation = anatomy.difference_table(
        anatomy.bias_ablation(model, ids, {"q and k": ("q", "k")}, baseline=baseline)
    )
    assert ablation["low"].iloc[0] > 1.0  # measured +6.52 nats (interval +5.97 to +7.37)
    # massive activations
    extremes = anatomy.extremes_table(residual[1:])
    middle = extremes[extremes["layer"].between(3, 20)]
    assert (middle["position"] == 0).all() and (middle["dim"] == 62).all()  # measured: all 18 layers
    assert middle["ratio"].min() > 1000  # measured 2,250 (layer 20) to 11,505 (layer 3)
    assert (middle["second_max"] < 0.2 * middle["top1"]).all()  # measured at most 0.039 (76 against 1,940)
    assert (middle["rest_max"] < 0.1 * middle["top1"]).all()  # measured at most 0.029
    # attention sinks
    shares = anatomy.first_position_share(model, ids)
    assert shares[3:23].mean() > 0.2  # measured 0.37 (layers 0-2 and 23: 0.01-0.02)
    masking = anatomy.sink_masking(model, ids, from_query=48, baseline=baseline)
    table = anatomy.difference_table(masking, from_position=48).set_index("arm")
    assert table.loc["first position hidden", "difference"] > 0.5  # measured +2.07 nats
    assert table.loc["first position hidden", "low"] > 0  # measured +0.30 (3 sequences: a wide interval)
    assert table.loc["random middle position hidden", "difference"] < 0.1  # measured +0.004
