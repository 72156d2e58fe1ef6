"""Which loss term drives the scale of U down (chapter 50, issue 14): ``train.scale_drive`` against
finite differences, and its place in the training log."""

from __future__ import annotations

import math

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

    model = CausalQwen.from_base(base, NUM, CausalConfig(gamma0=2.0))
    ids, vals, mask = batch
    stream = iter([{"input_ids": ids, "numerical_values": vals.float(), "attention_mask": mask}] * 4)
    log = _fit(
        model,
        stream,
        lambda b: model(b["input_ids"], b["numerical_values"], b["attention_mask"]),
        lambda first: None,
        steps=2,
        lr=1e-2,
        lr_pretrained=None,
        seed=0,
        log_every=1,
        on_log=None,
        clip="per_parameter",
    )
    assert [r["step"] for r in log] == [0, 1, 2]
    drive_keys = {"cls_dlogscale", "reg_dlogscale", "cls_dlognoise", "reg_dlognoise", "median_noise"}
    for row in log:
        assert drive_keys <= set(row)
    # measuring the drive must not change training: the same steps without the log give the same heads
    again = CausalQwen.from_base(base, NUM, CausalConfig(gamma0=2.0))
    stream = iter([{"input_ids": ids, "numerical_values": vals.float(), "attention_mask": mask}] * 4)
    _fit(
        again,
        stream,
        lambda b: again(b["input_ids"], b["numerical_values"], b["attention_mask"]),
        lambda first: None,
        steps=2,
        lr=1e-2,
        lr_pretrained=None,
        seed=0,
        log_every=100,
        on_log=None,
        clip="per_parameter",
    )
    for a, b in zip(model.parameters(), again.parameters(), strict=True):
        assert torch.equal(a, b)
