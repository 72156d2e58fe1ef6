"""CausalQwen model, loss, initialisation and ablation switches (chapter 50)."""

from __future__ import annotations

import math

import pytest
import torch

from qwen_anatomy.causal import cauchy
from qwen_anatomy.causal.model import (
    THRESHOLD_MIN_PROB,
    THRESHOLD_MODES,
    BaselineQwen,
    CausalConfig,
    CausalOutput,
    CausalQwen,
    gated_loss,
    phi,
)
from qwen_anatomy.config import tiny_config
from qwen_anatomy.errors import UserInputError
from qwen_anatomy.model import Qwen2ForCausalLM
from tolerance import assert_close_scaled

torch.set_num_threads(1)
NUM = 7  # a spare row of the tiny vocabulary plays <NUM>


def _base(vocab=50, tied=False, seed=0):
    return Qwen2ForCausalLM(tiny_config(vocab_size=vocab, tie_word_embeddings=tied)).init_weights(seed).eval()


def _batch(seed=0, numbers=True):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(8, 50, (2, 9), generator=g)  # ids 8.. never equal NUM
    vals = torch.zeros(2, 9)
    if numbers:
        ids[0, 3], vals[0, 3] = NUM, 12.5
        ids[1, 5], vals[1, 5] = NUM, -3.0
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, -2:] = 0
    return ids, vals, mask


# -- the gated loss by hand ------------------------------------------------------------------------
def _two_position_output(dist="cauchy"):
    # V = 3 with <NUM> = 2; positions: 0 -> label 2 (<NUM>, value 5), 1 -> label 1; position 2 is last
    probs = torch.tensor([[[0.2, 0.3, 0.6], [0.1, 0.7, 0.4], [0.5, 0.5, 0.5]]])
    loc_y = torch.tensor([[3.0, 0.0, 0.0]])
    scale_y = torch.tensor([[2.0, 1.0, 1.0]])
    out = CausalOutput(None, None, None, torch.zeros(1, 3, 3), None, probs, loc_y, scale_y, dist)
    ids = torch.tensor([[0, 2, 1]])
    vals = torch.tensor([[0.0, 5.0, 0.0]])
    return out, ids, vals


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_gated_loss_equals_hand_computed_value(alpha):
    out, ids, vals = _two_position_output()
    lam = 0.5
    cls0 = -math.log(1 - 0.2) - math.log(1 - 0.3) - math.log(0.6)
    cls1 = -math.log(1 - 0.1) - math.log(0.7) - math.log(1 - 0.4)
    nll0 = math.log(math.pi * 2.0) + math.log(1 + ((5.0 - 3.0) / 2.0) ** 2)
    gate0 = alpha + (1 - alpha) * 0.6
    expected = (cls0 + cls1) / 2 + lam * gate0 * nll0 / 1
    parts = gated_loss(out, ids, vals, None, num_token_id=2, alpha=alpha, lam=lam)
    assert float(parts["loss"]) == pytest.approx(expected, rel=1e-6)
    assert float(parts["cls"]) == pytest.approx((cls0 + cls1) / 2, rel=1e-6)
    assert float(parts["reg"]) == pytest.approx(gate0 * nll0, rel=1e-6)


def test_gated_loss_softmax_and_normal_paths_differ():
    out, ids, vals = _two_position_output()
    ovr = gated_loss(out, ids, vals, None, num_token_id=2)
    soft = gated_loss(out, ids, vals, None, num_token_id=2, classifier="softmax")
    assert float(soft["cls"]) == pytest.approx(math.log(3), rel=1e-6)  # loc_S = 0: uniform softmax
    assert float(soft["cls"]) != pytest.approx(float(ovr["cls"]))
    out_n, _, _ = _two_position_output("normal")
    normal = gated_loss(out_n, ids, vals, None, num_token_id=2)
    expected = math.log(math.sqrt(2 * math.pi) * 2.0) + 0.5
    assert float(normal["reg"]) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("dist", ["normal", "cauchy"])
def test_a_scale_of_zero_where_no_number_comes_keeps_every_gradient_finite(dist):
    """The regression NLL is masked to the number positions, and so is its gradient: a scale that
    underflowed to 0 at a position whose next token is not a number (the baseline's Normal sigma did,
    on Qwen2.5) must not send NaN back through torch.where. The loss is the one with a sane scale there."""
    out, ids, vals = _two_position_output(dist)
    loc = torch.tensor([[3.0, 7.0, 0.0]], requires_grad=True)
    scale = torch.tensor([[2.0, 0.0, 0.0]], requires_grad=True)  # 0 at positions 1 and 2: no number next
    broken = CausalOutput(None, None, None, out.loc_S, None, out.probs, loc, scale, dist)
    parts = gated_loss(broken, ids, vals, None, num_token_id=2)
    parts["loss"].backward()
    assert torch.isfinite(loc.grad).all() and torch.isfinite(scale.grad).all()
    assert loc.grad[0, 1] == 0 and scale.grad[0, 1] == 0  # no loss term reads position 1
    assert float(parts["loss"].detach()) == pytest.approx(
        float(gated_loss(out, ids, vals, None, 2)["loss"]), rel=1e-6
    )


def test_padding_and_last_position_are_ignored():
    out, ids, vals = _two_position_output()
    mask = torch.tensor([[1, 1, 0]])  # position 1's label is padding: only position 0 counts
    parts = gated_loss(out, ids, vals, mask, num_token_id=2)
    cls0 = -math.log(1 - 0.2) - math.log(1 - 0.3) - math.log(0.6)
    assert float(parts["cls"]) == pytest.approx(cls0, rel=1e-6)


# -- initialisation from the base model ----------------------------------------------------------------
def test_phi_of_zero_leaves_embeddings_unchanged():
    base = _base()
    model = CausalQwen.from_base(base, NUM)
    ids, vals, _ = _batch()
    plain = base.model.embed_tokens(ids)
    fused = model.embed(ids, vals)
    text = vals == 0
    assert torch.equal(fused[text], plain[text])
    assert not torch.allclose(fused[~text], plain[~text])  # a number really moves its position
    assert torch.equal(phi(torch.zeros(3), model.num_direction), torch.zeros(3, base.config.hidden_size))
    assert float(model.num_direction.detach().norm()) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("tied", [False, True])
def test_step0_compatible_mode_equals_base_exactly(tied):
    base = _base(tied=tied)
    model = CausalQwen.from_base(base, NUM).eval()
    ids, vals, mask = _batch(numbers=False)
    with torch.no_grad():
        ref = torch.softmax(base(ids, attention_mask=mask).logits, -1)
        out = model(ids, vals, mask)
        ours = torch.softmax(out.loc_S, -1)
    real = mask.bool()
    assert_close_scaled(ours[real], ref[real])  # fp32 copies of the same head: summation order only
    assert model.class_head.weight.data_ptr() != base.lm_head.weight.data_ptr()  # untied copy


def test_step0_without_spare_row_matches_base_logits():
    base = _base(vocab=50)
    model = CausalQwen.from_base(base, 50)  # <NUM> needs a new row (like SmolLM2)
    assert model.vocab_size == 51 and model.extra_rows is not None
    ids, vals, mask = _batch(numbers=False)
    with torch.no_grad():
        ref = base(ids, attention_mask=mask).logits
        out = model(ids, vals, mask)
    assert_close_scaled(out.loc_S[..., :50], ref)  # fp32, summation order only (tests/tolerance.py)
    # default fp32 tolerance (rtol 1.3e-6, atol 1e-5): a mean of O(1) entries computed two ways
    torch.testing.assert_close(model.extra_rows[0], base.model.embed_tokens.weight.mean(0))
    ids[0, 2], vals[0, 2] = 50, 4.0
    with torch.no_grad():
        model(ids, vals, mask)  # the new id embeds without an index error


def test_initial_scales_and_identity_abduction():
    base = _base()
    model = CausalQwen.from_base(base, NUM, CausalConfig(gamma0=10.0))
    ids, vals, mask = _batch()
    with torch.no_grad():
        out = model(ids, vals, mask)
    # default fp32 tolerance (rtol 1.3e-6, atol 1e-5): a constant and an identity map, no long sums
    torch.testing.assert_close(out.scale_U, torch.full_like(out.scale_U, 10.0))
    torch.testing.assert_close(out.loc_U, out.z)
    expected = model.class_head.weight.abs().sum(1) * 10.1  # ||W_k||_1 (gamma0 + b_noise)
    assert_close_scaled(out.scale_S[0, 0], expected)  # fp32 matmul vs hand formula: summation order


# -- ablations really change the model ------------------------------------------------------------------
@pytest.mark.parametrize(
    "switch",
    [
        {"classifier": "softmax"},
        {"distribution": "normal"},
        {"abduction_init": "random"},
        {"threshold": 50.0},
        {"gamma0": 1.0},
    ],
)
def test_each_switch_changes_the_forward_output(switch):
    base = _base()
    ids, vals, mask = _batch()
    with torch.no_grad():
        ref = CausalQwen.from_base(base, NUM)(ids, vals, mask)
        new = CausalQwen.from_base(base, NUM, CausalConfig(**switch))(ids, vals, mask)
    changed = [
        name
        for name in ("probs", "loc_S", "scale_S", "loc_Y", "scale_Y")
        if not torch.allclose(getattr(ref, name), getattr(new, name))
    ]
    assert changed, f"switch {switch} left every output unchanged: it is a no-op"
    if "classifier" in switch:
        # default fp32 tolerance (atol 1e-5): softmax probabilities sum to 1 up to rounding
        torch.testing.assert_close(new.probs.sum(-1), torch.ones_like(new.probs.sum(-1)))
        assert "probs" in changed
    if "distribution" in switch:
        assert "scale_S" in changed and "probs" in changed


def test_per_class_threshold_is_measured_per_class_and_differs_from_scalar():
    base = _base()
    ids, vals, mask = _batch()
    scalar = CausalQwen.from_base(base, NUM)
    per = CausalQwen.from_base(base, NUM, CausalConfig(threshold_mode="per_class"))
    with pytest.raises(UserInputError, match="call model.calibrate_threshold"):
        per(ids, vals, mask)  # never used unmeasured
    c = per.calibrate_threshold(ids, vals, mask)
    assert c.shape == (per.vocab_size,) and c.unique().numel() == per.vocab_size  # one value per class
    # the rule, from the scalar model's outputs (same seed: same heads): at class k's mean location and
    # mean scale over the real positions, P_k is the mean softmax probability of k (floored)
    with torch.no_grad():
        ref = scalar(ids, vals, mask)
    real = mask.bool()
    loc, scale = ref.loc_S[real].double(), ref.scale_S[real].double()
    target = torch.softmax(loc, -1).mean(0).clamp_min(THRESHOLD_MIN_PROB)
    p_at_mean = cauchy.ovr_probability(loc.mean(0), scale.mean(0), c.double())
    # C_k is stored in float32: its rounding moves P_k by a relative ~1e-7 here (measured 4e-8);
    # 1e-6 leaves room and still catches a wrong rule (a median, a missing mean: errors > 1e-2)
    torch.testing.assert_close(p_at_mean, target, rtol=1e-6, atol=0.0)
    floored = per.calibrate_threshold(ids, vals, mask, min_prob=0.25)  # above every mean probability
    p_floor = cauchy.ovr_probability(loc.mean(0), scale.mean(0), floored.double())
    torch.testing.assert_close(p_floor, torch.full_like(p_floor, 0.25), rtol=1e-6, atol=0.0)
    per.calibrate_threshold(ids, vals, mask)
    with torch.no_grad():
        out = per(ids, vals, mask)
    assert not torch.allclose(out.probs, ref.probs)
    assert not torch.equal(out.choice()[real], ref.choice()[real])  # different decisions
    loss_scalar = float(gated_loss(ref, ids, vals, mask, NUM)["loss"])
    loss_per = float(gated_loss(out, ids, vals, mask, NUM)["loss"])
    assert abs(loss_scalar - loss_per) > 1.0
    # at step 0 the measured thresholds make the P_k sum to about 1, the scalar default to about V/2
    assert float(out.probs.sum(-1)[real].median()) < 3.0 < float(ref.probs.sum(-1)[real].median())


def test_learnable_threshold_gets_gradients_and_frozen_ones_do_not():
    base = _base()
    ids, vals, mask = _batch()
    models = {
        mode: CausalQwen.from_base(base, NUM, CausalConfig(threshold_mode=mode)) for mode in THRESHOLD_MODES
    }
    for mode, model in models.items():
        if mode != "scalar":
            model.calibrate_threshold(ids, vals, mask)
        gated_loss(model(ids, vals, mask), ids, vals, mask, NUM)["loss"].backward()
    learn = models["learnable"]
    assert isinstance(learn.threshold, torch.nn.Parameter) and learn.threshold.grad is not None
    assert int((learn.threshold.grad != 0).sum()) == learn.vocab_size  # every class's C_k is pushed
    for mode in ("scalar", "per_class"):
        frozen = models[mode].threshold
        assert not frozen.requires_grad and frozen.grad is None
        assert all(p is not frozen for p in models[mode].parameters())  # no optimiser sees it
    with pytest.raises(UserInputError, match="only .*measure C_k"):
        models["scalar"].calibrate_threshold(ids, vals, mask)


def test_threshold_measured_on_cached_features_in_chunks_equals_the_batch():
    base = _base()
    ids, vals, mask = _batch()
    model = CausalQwen.from_base(base, NUM, CausalConfig(threshold_mode="per_class"))
    c = model.calibrate_threshold(ids, vals, mask)
    with torch.no_grad():
        z = model.features(ids, vals, mask)
    # the batch five times over: 80 real positions, two chunks of 64 and 16, the same means
    again = model.calibrate_threshold_on_features(z.repeat(5, 1, 1), mask.repeat(5, 1).bool())
    assert_close_scaled(again, c)  # fp32 C_k from float64 sums: rounding of the stored value only


def test_measured_threshold_is_saved_and_loaded():
    base = _base()
    ids, vals, mask = _batch()
    model = CausalQwen.from_base(base, NUM, CausalConfig(threshold_mode="per_class"))
    c = model.calibrate_threshold(ids, vals, mask)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("backbone.")}
    again = CausalQwen.from_base(base, NUM, CausalConfig(threshold_mode="per_class"))
    again.load_state_dict(state, strict=False)
    assert again.threshold_measured and torch.equal(again.threshold, c)
    with torch.no_grad():
        torch.testing.assert_close(again(ids, vals, mask).probs, model(ids, vals, mask).probs, rtol=0, atol=0)


@pytest.mark.parametrize("mode", ["perclass", "Scalar", "", "learned"])
def test_unknown_threshold_mode_is_refused(mode):
    with pytest.raises(UserInputError, match=f"threshold_mode={mode!r}: use one of"):
        CausalQwen.from_base(_base(), NUM, CausalConfig(threshold_mode=mode))


def test_frozen_backbone_still_passes_gradient_to_phi():
    base = _base()
    model = CausalQwen.from_base(base, NUM)
    ids, vals, mask = _batch()
    out = model(ids, vals, mask)
    gated_loss(out, ids, vals, mask, NUM)["loss"].backward()
    assert all(p.grad is None for p in base.parameters())
    assert model.num_direction.grad is not None and float(model.num_direction.grad.abs().sum()) > 0
    assert float(model.abduction_scale.bias.grad.abs().sum()) > 0


def test_baseline_is_softmax_plus_normal():
    base = _base()
    model = BaselineQwen(base, NUM)
    ids, vals, mask = _batch()
    with torch.no_grad():
        out = model(ids, vals, mask)
        ref = base(ids, attention_mask=mask).logits
    assert out.distribution == "normal" and out.scale_S is None
    torch.testing.assert_close(out.probs.sum(-1), torch.ones(2, 9))  # default fp32: sums to 1
    # text positions before the first number see exactly the base model
    assert_close_scaled(out.loc_S[0, :3], ref[0, :3])  # fp32 matmul vs hand formula: summation order


# -- bad configurations fail before any work ---------------------------------------------------------------
@pytest.mark.parametrize(
    "bad, words",
    [
        ({"alpha": 1.5}, "alpha=1.5"),
        ({"alpha": -0.1}, "alpha=-0.1"),
        ({"threshold": float("inf")}, "threshold=inf"),
        ({"threshold": float("nan")}, "threshold=nan"),
        ({"causal_dim": 16}, "causal_dim=16 differs from the hidden size 32"),
        ({"classifier": "sigmoid"}, "classifier='sigmoid'"),
        ({"gamma0": 0.0}, "gamma0=0.0"),
    ],
)
def test_bad_config_raises_clear_error(bad, words):
    with pytest.raises(UserInputError, match=words.replace("(", r"\(").replace("[", r"\[")):
        CausalQwen.from_base(_base(), NUM, CausalConfig(**bad))


def test_smaller_causal_dim_with_random_abduction_builds():
    model = CausalQwen.from_base(_base(), NUM, CausalConfig(causal_dim=16, abduction_init="random"))
    ids, vals, mask = _batch()
    with torch.no_grad():
        out = model(ids, vals, mask)
    assert out.loc_U.shape == (2, 9, 16) and out.loc_S.shape == (2, 9, 50)


@pytest.mark.slow
def test_smollm2_step0_compatible_equals_base():
    from qwen_anatomy.causal.numtok import NumberTokenizer
    from qwen_anatomy.loading import load_model

    base, tok = load_model("smollm2-135m")
    nt = NumberTokenizer(tok)
    model = CausalQwen.from_base(base, nt.num_token_id).eval()
    b = nt.batch(["The quick brown fox jumps over the lazy dog.", "Water boils when it is hot enough."])
    assert not (b["input_ids"] == nt.num_token_id).any()
    with torch.no_grad():
        ref = base(b["input_ids"], attention_mask=b["attention_mask"]).logits
        out = model(b["input_ids"], b["numerical_values"], b["attention_mask"])
    real = b["attention_mask"].bool()
    assert (out.loc_S[..., :49152] - ref)[real].abs().max().item() <= 1e-4  # logits ~ 20: fp32 rounding
    # next-token distribution over the base vocabulary equals the base model's
    p_ours = torch.softmax(out.loc_S[..., :49152], -1)
    assert (p_ours - torch.softmax(ref, -1))[real].abs().max().item() <= 1e-6


# -- the OvR loss and decision on saturated probabilities ------------------------------------------------
def test_margin_loss_equals_probability_loss_away_from_saturation():
    base = _base()
    model = CausalQwen.from_base(base, NUM, CausalConfig(gamma0=1.0, threshold=0.0))
    ids, vals, mask = _batch()
    with torch.no_grad():
        out = model(ids, vals, mask)
    assert out.margin is not None and float(out.probs.max()) < 1 - 1e-4
    from dataclasses import replace

    with_margin = gated_loss(out, ids, vals, mask, NUM)
    from_probs = gated_loss(replace(out, margin=None), ids, vals, mask, NUM)
    for key in ("loss", "cls", "reg"):
        assert float(with_margin[key]) == pytest.approx(float(from_probs[key]), rel=1e-5)


def test_a_saturated_negative_class_still_gets_a_gradient():
    # one position, V = 3, label 1; class 0 is a negative whose P rounds to 1 in float32
    margin = torch.tensor([[[1e9, 2.0, -3.0], [0.0, 0.0, 0.0]]], requires_grad=True)
    probs = 0.5 + torch.atan(margin) / math.pi
    assert float(probs.detach()[0, 0, 0]) == 1.0
    out = CausalOutput(None, None, None, torch.zeros(1, 2, 3), None, probs, torch.zeros(1, 2), torch.ones(1, 2),
                       "cauchy", margin)  # fmt: skip
    ids = torch.tensor([[0, 1]])
    gated_loss(out, ids, torch.zeros(1, 2), None, num_token_id=2)["loss"].backward()
    assert float(margin.grad[0, 0, 0]) > 0  # the loss pushes the wrong class down
    clamped = margin.detach().clone().requires_grad_(True)
    p = 0.5 + torch.atan(clamped) / math.pi
    old = CausalOutput(None, None, None, torch.zeros(1, 2, 3), None, p, torch.zeros(1, 2), torch.ones(1, 2))
    gated_loss(old, ids, torch.zeros(1, 2), None, num_token_id=2)["loss"].backward()
    assert float(clamped.grad[0, 0, 0]) == 0.0  # what the clamp on P did: no signal at all


def test_choice_ranks_by_margin_when_probabilities_tie_at_one():
    margin = torch.tensor([[[1e8, 1e9, -1.0]]])
    probs = 0.5 + torch.atan(margin) / math.pi
    assert float(probs[0, 0, 0]) == float(probs[0, 0, 1]) == 1.0  # a tie: probs.argmax says 0
    out = CausalOutput(None, None, None, torch.zeros(1, 1, 3), None, probs, torch.zeros(1, 1), torch.ones(1, 1),
                       "cauchy", margin)  # fmt: skip
    assert int(out.choice()[0, 0]) == 1
