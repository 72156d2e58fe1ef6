"""Which loss term drives the scale of U down (chapter 50, issue 14): ``train.scale_drive`` against
finite differences, and its place in the training log."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from qwen_anatomy.causal.model import CausalConfig, CausalQwen, gated_loss
from qwen_anatomy.causal.train import scale_drive
from qwen_anatomy.config import tiny_config
from qwen_anatomy.model import Qwen2ForCausalLM

torch.set_num_threads(1)
NUM = 7


def _model(**cfg):
    base = Qwen2ForCausalLM(tiny_config(vocab_size=50)).init_weights(0).eval().double()
    return CausalQwen.from_base(base, NUM, CausalConfig(gamma0=2.0, **cfg)).double()


def _batch():
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(8, 50, (2, 9), generator=g)
    vals = torch.zeros(2, 9, dtype=torch.float64)
    ids[0, 3], vals[0, 3] = NUM, 12.5
    ids[1, 5], vals[1, 5] = NUM, -3.0
    return ids, vals, torch.ones(2, 9, dtype=torch.long)


class _Rescaled(nn.Module):
    """abduction_scale whose softplus comes out multiplied by exp(eps): softplus^-1(e^eps softplus(x))."""

    def __init__(self, inner, eps):
        super().__init__()
        self.inner, self.eps = inner, eps

    def forward(self, z):
        y = torch.nn.functional.softplus(self.inner(z)) * math.exp(self.eps)
        return torch.log(torch.expm1(y))


def _terms(model, batch, lam):
    # the features are float32 by design (model.features); the heads run in float64 on them
    out = model.heads(model.features(*batch).double())
    parts = gated_loss(out, batch[0], batch[1], batch[2], NUM, lam=lam)
    return out, parts


@pytest.mark.parametrize("lam", [1.0, 0.3])
def test_scale_drive_equals_the_finite_difference_of_each_term(lam):
    model = _model()
    batch = _batch()
    out, parts = _terms(model, batch, lam)
    drive = scale_drive(model, out, parts, lam)
    eps = 1e-5
    inner = model.abduction_scale
    fd_scale = {}
    for sign in (1, -1):
        model.abduction_scale = _Rescaled(inner, sign * eps)
        _, p = _terms(model, batch, lam)
        fd_scale[sign] = {"cls": float(p["cls"].detach()), "reg": lam * float(p["reg"].detach())}
    model.abduction_scale = inner
    noise = model.b_noise.detach().clone()
    fd_noise = {}
    for sign in (1, -1):
        with torch.no_grad():
            model.b_noise.copy_(noise * math.exp(sign * eps))
        _, p = _terms(model, batch, lam)
        fd_noise[sign] = {"cls": float(p["cls"].detach()), "reg": lam * float(p["reg"].detach())}
    for term in ("cls", "reg"):
        d_scale = (fd_scale[1][term] - fd_scale[-1][term]) / (2 * eps)
        d_noise = (fd_noise[1][term] - fd_noise[-1][term]) / (2 * eps)
        # float64 central differences with eps 1e-5: truncation ~eps^2, rounding ~1e-16/eps relative;
        # 1e-5 relative still catches a missing factor (scale or lam) or a wrong sign by orders of magnitude
        assert drive[f"{term}_dlogscale"] == pytest.approx(d_scale, rel=1e-5, abs=1e-9)
        assert drive[f"{term}_dlognoise"] == pytest.approx(d_noise, rel=1e-5, abs=1e-9)
    assert drive["median_noise"] == pytest.approx(0.1)
    # the OvR term at the step-0 head (most classes far below the threshold) gains from sharper scores
    assert drive["cls_dlogscale"] > 0


def test_scale_drive_is_empty_without_a_scale_of_u_and_logged_by_training():
    from qwen_anatomy.causal.model import BaselineQwen
    from qwen_anatomy.causal.train import _fit

    base = Qwen2ForCausalLM(tiny_config(vocab_size=50)).init_weights(0).eval()
    baseline = BaselineQwen(base, NUM, CausalConfig())
    batch = _batch()
    out = baseline(batch[0], batch[1].float(), batch[2])
    parts = gated_loss(out, batch[0], batch[1].float(), batch[2], NUM)
    assert scale_drive(baseline, out, parts, 1.0) == {}

    def two_steps(log_every):
        model = CausalQwen.from_base(base, NUM, CausalConfig(gamma0=2.0))
        ids, vals, mask = batch
        stream = iter([{"input_ids": ids, "numerical_values": vals.float(), "attention_mask": mask}] * 4)
        forward = lambda b: model(b["input_ids"], b["numerical_values"], b["attention_mask"])  # noqa: E731
        log = _fit(model, stream, forward, lambda first: None, steps=2, lr=1e-2, lr_pretrained=None,
                   seed=0, log_every=log_every, on_log=None, clip="per_parameter")  # fmt: skip
        return model, log

    model, log = two_steps(1)
    assert [r["step"] for r in log] == [0, 1, 2]
    drive_keys = {"cls_dlogscale", "reg_dlogscale", "cls_dlognoise", "reg_dlognoise", "median_noise"}
    for row in log:
        assert drive_keys <= set(row)
    # measuring the drive must not change training: the same steps without the log give the same heads
    again, _ = two_steps(100)
    for a, b in zip(model.parameters(), again.parameters(), strict=True):
        assert torch.equal(a, b)


# -- the collapse in words, from hand-made logs --------------------------------------------------------
from qwen_anatomy.causal import collapse  # noqa: E402
from qwen_anatomy.causal import study_report as sr  # noqa: E402
from qwen_anatomy.errors import UserInputError  # noqa: E402


def _row(step, scale, cls, reg, noise=0.1):
    return {
        "step": step,
        "median_scale_u": scale,
        "cls_dlogscale": cls,
        "reg_dlogscale": reg,
        "cls_dlognoise": 0.0,
        "reg_dlognoise": 0.0,
        "median_noise": noise,
    }


def _log_study(causal, scales_by_seed, drives, config=None):
    logs = {
        ("CausalQwen", seed): [_row(i, s, *drives[i]) for i, s in enumerate(scales)]
        for seed, scales in enumerate(scales_by_seed)
    }
    cfg = {"model": "m", "causal": causal, "log_every": 1, **(config or {})}
    return sr.Study(cfg, None, {k: {} for k in logs}, logs, {})


def test_collapse_step_is_the_first_step_below_one_percent_of_the_start():
    log = [_row(0, 10.0, 0, 0), _row(1, 0.2, 0, 0), _row(2, 0.099, 0, 0), _row(3, 0.0, 0, 0)]
    assert collapse.collapse_step(log) == 2  # 0.2 is 2 %, 0.099 is under 1 % of 10
    assert collapse.collapse_step(log[:2]) is None
    assert collapse.collapse_step(log, fraction=0.05) == 1
    assert collapse.collapse_step([]) is None


def test_collapse_sentences_name_the_driving_term_and_the_intervention():
    pulls = [(5.0, -1.0), (1.0, -0.5), (0.5, -0.1)]  # classification down, regression up
    default = _log_study({}, [[10.0, 1e-4, 0.0]] * 3, pulls)
    lam0 = _log_study({"lam": 0.0}, [[10.0, 1e-4, 0.0]] * 3, [(5.0, 0.0)] * 3)
    slow = _log_study(
        {"threshold_mode": "learnable"},
        [[10.0, 20.0, 5.0, 0.05]] * 3,
        [(-0.1, -1.0), (0.2, 1.0), (0.4, 0.5), (0.0, 0.0)],
    )
    studies = {"default": default, "lam0": lam0, "learnable": slow}
    table = collapse.collapse_table(studies)
    assert table.loc["default", "collapse steps"] == [1, 1, 1]
    assert table.loc["default", "cls sign"] == "down" and table.loc["default", "reg sign"] == "up"
    assert table.loc["learnable", "collapse steps"] == [3, 3, 3]
    # before step 3 the learnable head's terms average (-0.1+0.2+0.4)/3 and (-1+1+0.5)/3: both pull down
    assert table.loc["learnable", "cls drive before collapse"] == pytest.approx(0.5 / 3)
    assert table.loc["learnable", "reg sign before collapse"] == "down"
    text = collapse.collapse_sentences(studies)
    assert "at step 1 in every seed" in text
    assert "the first update follows the classification term" in text
    assert "the classification term alone collapses the scale" in text
    assert "threshold_mode = learnable: the scale falls below 1% at step 3 in every seed" in text
    # an intervention that does not collapse at the same step is not read as proof
    lam0_late = _log_study({"lam": 0.0}, [[10.0, 5.0, 0.0]] * 3, [(5.0, 0.0)] * 3)
    text = collapse.collapse_sentences({"default": default, "lam0": lam0_late})
    assert "alone collapses" not in text and "at step 2 in every seed" in text
    with pytest.raises(UserInputError, match="reference"):
        collapse.collapse_sentences({"learnable": slow})


def _noisy_study(arm_scales, config=None):
    """Ten noisy readings 0..9 with the prediction at the truth + 1; the scale per arm and seed sets
    how often the central intervals cover (|PIT - 1/2| = arctan(1/scale)/pi for a Cauchy law)."""
    runs, logs = {}, {}
    for arm, per_seed in arm_scales.items():
        for seed, scale in enumerate(per_seed):
            values = [float(v) for v in range(10)]
            runs[(arm, seed)] = {
                "numbers": {
                    "set": ["noisy"] * 10,
                    "family": ["noisy"] * 10,
                    "role": ["noisy"] * 10,
                    "value": values,
                    "mean": [5.0] * 10,
                    "copy_last": [0.0] * 10,
                    "oracle": values,
                    "oracle_sigma": [1.0] * 10,
                    "loc": [v + 1.0 for v in values],
                    "scale": [scale] * 10,
                    "dist": ["cauchy" if arm == "CausalQwen" else "normal"] * 10,
                    "detected": [True] * 10,
                }
            }
            logs[(arm, seed)] = [_row(0, 10.0, 1.0, -1.0), _row(25, 0.0, 0.1, 0.1)]
    cfg = {"model": "m", "steps": 100, "batch_size": 4, "log_every": 25, **(config or {})}
    return sr.Study(cfg, None, runs, logs, {})


def test_remedy_is_compared_on_calibration_at_the_same_budget():
    # CausalQwen's scale 0.01: the truth is 100 scales away, PIT ~ 0.003, covered only at the top level
    reference = _noisy_study({"CausalQwen": [0.01, 0.011, 0.012], "baseline": [0.5, 0.5, 0.5]})
    remedy = _noisy_study({"CausalQwen": [1.0, 1.1, 0.9]})  # |PIT - 1/2| = 0.25 near: covered from q = 0.5
    table = collapse.remedy_table(reference, remedy, "learnable thresholds")
    assert list(table.index) == ["CausalQwen", "baseline", "CausalQwen (learnable thresholds)", "oracle"]
    _, err_ref, mae_ref = collapse.calibration_by_seed(reference, "CausalQwen")
    _, err_rem, mae_rem = collapse.calibration_by_seed(remedy, "CausalQwen")
    assert mae_ref == mae_rem == [1.0, 1.0, 1.0]
    # by hand: 1/100 scale -> PIT 0.5 - arctan(100)/pi = 0.00318, |PIT - 1/2| = 0.4968 > 0.99/2: never
    # covered, so the calibration error is the mean of the levels
    curve = sr.coverage_curve(sr.pit([0.0], [1.0], [0.01], "cauchy"))
    assert curve == [0.0] * 11
    assert err_ref[0] == pytest.approx(float(np.mean(sr.LEVELS)))
    text = collapse.remedy_sentences(reference, remedy, "learnable thresholds")
    assert "CausalQwen with learnable thresholds is better" in text.split("\n")[1]
    assert "falls below 1% of its start at step 25 in every seed" in text
    other = _noisy_study({"CausalQwen": [1.0, 1.1, 0.9]}, {"steps": 200})
    with pytest.raises(UserInputError, match="steps"):
        collapse.remedy_sentences(reference, other, "learnable thresholds")


def test_calibration_plot_draws_the_remedy_beside_the_study():
    import matplotlib

    matplotlib.use("Agg")
    reference = _noisy_study({"CausalQwen": [0.01, 0.011, 0.012], "baseline": [0.5, 0.5, 0.5]})
    remedy = _noisy_study({"CausalQwen": [1.0, 1.1, 0.9]})
    fig = sr.calibration_plot(reference, extra={"learnable thresholds": remedy})
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert "CausalQwen (learnable thresholds, 3 seeds)" in labels
    assert "baseline (3 seeds)" in labels and any(lab.startswith("oracle") for lab in labels)


def test_fractions_get_intervals_inside_zero_and_one():
    ci = collapse._unit_interval([0.0, 0.01, 0.2])  # the unbounded t-interval reaches below 0
    assert ci.low == 0.0 and ci.high < 1.0 and ci.mean == pytest.approx(0.07)
