"""Cauchy utilities (chapter 50): propagation by Monte-Carlo, closed forms against scipy."""

from __future__ import annotations

import math

import pytest
import torch

from qwen_anatomy.causal import cauchy

torch.set_num_threads(1)


def _setup():
    g = torch.Generator().manual_seed(0)
    loc = torch.tensor([2.0, -1.0, 0.5, 3.0, -2.5], dtype=torch.float64)
    scale = torch.tensor([0.5, 1.0, 2.0, 0.3, 1.5], dtype=torch.float64)
    weight = torch.tensor(
        [[1.0, 2.0, -0.5, 1.5, 0.2], [-1.0, 0.3, 0.8, 2.0, -1.2], [0.5, -2.0, 1.0, 0.4, 0.9]],
        dtype=torch.float64,
    )
    bias = torch.tensor([3.0, -4.0, 6.0], dtype=torch.float64)
    return g, loc, scale, weight, bias


def test_linear_propagation_matches_monte_carlo_1e6_draws():
    g, loc, scale, weight, bias = _setup()
    loc_y, scale_y = cauchy.linear_propagate(loc, scale, weight, bias)
    draws = cauchy.sample(loc, scale, n=1_000_000, generator=g)  # [N, 5]
    y = draws @ weight.T + bias  # [N, 3]
    # the mean/std of Cauchy draws do not converge: median and half the IQR estimate loc and scale
    mc_loc, mc_scale = cauchy.robust_location_scale(y)
    assert torch.all((mc_loc - loc_y).abs() <= 0.02 * loc_y.abs()), (mc_loc, loc_y)
    assert torch.all((mc_scale - scale_y).abs() <= 0.02 * scale_y), (mc_scale, scale_y)
    # and the rule is not the Normal one: sqrt(sum w^2 s^2) differs by far more than 2%
    _, normal_scale = cauchy.linear_propagate(loc, scale, weight, bias, dist="normal")
    assert torch.all((normal_scale - scale_y).abs() > 0.1 * scale_y)


def test_normal_propagation_matches_monte_carlo():
    g, loc, scale, weight, bias = _setup()
    loc_y, sd_y = cauchy.linear_propagate(loc, scale, weight, bias, dist="normal")
    y = cauchy.sample(loc, scale, n=200_000, generator=g, dist="normal") @ weight.T + bias
    torch.testing.assert_close(y.mean(0), loc_y, atol=0.02, rtol=0.0)
    torch.testing.assert_close(y.std(0), sd_y, rtol=0.01, atol=0.0)


def test_cdf_nll_against_scipy():
    stats = pytest.importorskip("scipy.stats")
    x = torch.linspace(-20, 20, 41, dtype=torch.float64)
    loc, scale = torch.tensor(1.5, dtype=torch.float64), torch.tensor(2.5, dtype=torch.float64)
    torch.testing.assert_close(
        cauchy.cdf(x, loc, scale),
        torch.from_numpy(stats.cauchy.cdf(x.numpy(), 1.5, 2.5)),
        rtol=1e-12,
        atol=1e-12,
    )
    torch.testing.assert_close(
        cauchy.nll(x, loc, scale),
        torch.from_numpy(-stats.cauchy.logpdf(x.numpy(), 1.5, 2.5)),
        rtol=1e-12,
        atol=1e-12,
    )
    torch.testing.assert_close(
        cauchy.nll(x, loc, scale, "normal"),
        torch.from_numpy(-stats.norm.logpdf(x.numpy(), 1.5, 2.5)),
        rtol=1e-12,
        atol=1e-12,
    )
    assert cauchy.HALF_WIDTH_95["cauchy"] == pytest.approx(12.706, abs=1e-3)
    half = cauchy.interval_half_width(torch.tensor(1.0), "cauchy")
    assert float(cauchy.cdf(half, torch.tensor(0.0), torch.tensor(1.0))) == pytest.approx(0.975, abs=1e-6)


def test_ovr_probability_equals_closed_form():
    loc = torch.tensor([[-3.0, 0.0, 2.0, 10.0]], dtype=torch.float64)
    scale = torch.tensor([[1.0, 2.0, 0.5, 4.0]], dtype=torch.float64)
    threshold = torch.tensor([1.0, 0.0, 2.0, -1.0], dtype=torch.float64)
    p = cauchy.ovr_probability(loc, scale, threshold)
    expected = [
        0.5 + math.atan((lo - c) / s) / math.pi for lo, s, c in zip(loc[0], scale[0], threshold, strict=True)
    ]
    torch.testing.assert_close(p[0], torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-15)
    assert float(p[0, 1]) == 0.5 and float(p[0, 2]) == 0.5  # loc == threshold
    # P_k is the probability that the score exceeds the threshold: 1 - CDF(threshold)
    torch.testing.assert_close(p, 1 - cauchy.cdf(threshold, loc, scale), rtol=0, atol=1e-15)


def test_shared_eps_gives_identical_draws():
    loc, scale = torch.zeros(4), torch.ones(4)
    eps = torch.tensor([0.1, 0.5, 0.75, 0.9])
    a = cauchy.sample(loc, scale, eps=eps)
    b = cauchy.sample(loc + 1, scale, eps=eps)
    torch.testing.assert_close(b - a, torch.ones(4))
    assert float(a[1]) == 0.0 and float(a[2]) == pytest.approx(1.0)  # tan(pi/4) = 1


# -- OvR log-probabilities from the margin ------------------------------------------------------------
@pytest.mark.parametrize("dist, reach", [("cauchy", 30.0), ("normal", 6.0)])
def test_ovr_log_probability_equals_log_of_probability_where_representable(dist, reach):
    t = torch.linspace(-reach, reach, 601, dtype=torch.float64)
    direct = torch.log(cauchy.ovr_probability(t, torch.ones_like(t), 0.0, dist))
    torch.testing.assert_close(cauchy.ovr_log_probability(t, dist), direct, rtol=1e-7, atol=1e-12)
    # log(1 - P) is the same function at -t (both laws are symmetric)
    upper = torch.log1p(-cauchy.ovr_probability(t, torch.ones_like(t), 0.0, dist))
    torch.testing.assert_close(cauchy.ovr_log_probability(-t, dist), upper, rtol=1e-6, atol=1e-12)


def test_ovr_log_probability_keeps_the_far_cauchy_tail_in_float32():
    t = torch.tensor([-1e4, -1e8, 1e8], dtype=torch.float32, requires_grad=True)
    naive_lower = torch.log(cauchy.ovr_probability(t, torch.ones(3), 0.0)[:2])
    naive_upper = torch.log1p(-cauchy.ovr_probability(t, torch.ones(3), 0.0)[2])
    assert torch.isinf(naive_upper)  # P rounds to exactly 1 at t = 1e8: log(1 - P) = -inf
    assert float(naive_lower.detach()[0]) == pytest.approx(math.log(1 / (math.pi * 1e4)), rel=1e-2)
    stable = cauchy.ovr_log_probability(t)
    # P(t) ~ 1/(pi |t|) far in the lower tail; 1 - P(1e8) = P(-1e8)
    assert float(stable.detach()[1]) == pytest.approx(math.log(1 / (math.pi * 1e8)), rel=1e-6)
    assert float(cauchy.ovr_log_probability(-t.detach())[2]) == pytest.approx(
        math.log(1 / (math.pi * 1e8)), rel=1e-6
    )
    stable.sum().backward()
    assert torch.isfinite(t.grad).all() and (t.grad != 0).all()
