"""Statistical power of a correlation over heads: which |ρ| can N heads detect? (chapter 40)

A correlation over N heads is only worth running when the effect one hopes to see is larger than
what N can detect. :func:`detectable_rho` answers that analytically: the smallest true |ρ| that a
two-sided test at level ``alpha`` rejects with probability ``power``, from Fisher's z-transform,
atanh(ρ̂) ≈ Normal(atanh(ρ), σ²) with σ² = 1/(N − 3) for Pearson and 1.06/(N − 3) for Spearman
(Fieller, Hartley and Pearson 1957), so that

    |ρ|_detectable = tanh((z_{1−α/2} + z_{power}) · σ).

For Pearson at α = 0.05 and power 0.8 this gives N = 85 for ρ = 0.30, the value of Cohen's power
table (1988, table 3.4.1); :func:`simulated_power` checks the Spearman version by Monte Carlo with the
permutation test's own critical value (``tests/test_heads_pairs.py`` does both). Eight heads detect
only |ρ| ≥ 0.86; 96 heads detect |ρ| ≥ 0.29; 270 heads |ρ| ≥ 0.17.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import UserInputError

ALPHA = 0.05
POWER = 0.8
SPEARMAN_VARIANCE = 1.06  # Fieller, Hartley & Pearson (1957): var(atanh ρ̂_s) ≈ 1.06/(N − 3)


def _check(n: int, alpha: float, power: float) -> None:
    if isinstance(n, bool) or not isinstance(n, int | np.integer):
        raise UserInputError(f"number of heads {n!r} must be an integer")
    if not 0 < alpha < 1:
        raise UserInputError(f"alpha {alpha!r} must lie in (0, 1)")
    if not 0 < power < 1:
        raise UserInputError(f"power {power!r} must lie in (0, 1)")


def detectable_rho(n: int, alpha: float = ALPHA, power: float = POWER, spearman: bool = True) -> float:
    """Smallest true |ρ| that a two-sided test over ``n`` units detects with probability ``power``
    at level ``alpha`` (Fisher z; Spearman variance 1.06/(n − 3) unless ``spearman`` is False).
    NaN for n ≤ 3, where the approximation has no variance."""
    from scipy.stats import norm

    _check(n, alpha, power)
    if n <= 3:
        return float("nan")
    sigma = math.sqrt((SPEARMAN_VARIANCE if spearman else 1.0) / (n - 3))
    z = float(norm.ppf(1 - alpha / 2) + norm.ppf(power))
    return min(1.0, math.tanh(z * sigma))


def significant_rho(n: int, alpha: float = ALPHA) -> float:
    """|ρ| that reaches a two-sided p < ``alpha`` at all (t approximation of Spearman's null):
    the detection threshold at power 0.5. NaN for n < 3."""
    if n < 3:
        return float("nan")
    from scipy.stats import t as student_t

    t_crit = float(student_t.ppf(1 - alpha / 2, n - 2))
    return t_crit / math.sqrt(n - 2 + t_crit**2)


def simulated_power(rho: float, n: int, alpha: float = ALPHA, n_sim: int = 2000, seed: int = 0) -> float:
    """Monte Carlo power of the two-sided Spearman permutation test: the share of ``n_sim`` samples
    of ``n`` bivariate-normal pairs with Pearson correlation ``rho`` whose |ρ_s| exceeds the
    permutation null's (1 − alpha) quantile of |ρ_s| (estimated from ``n_sim`` shuffles).

    Bivariate-normal Pearson ρ is converted to the matching Spearman ρ_s = (6/π)·asin(ρ/2)."""
    from scipy.stats import rankdata

    rng = np.random.default_rng(seed)
    r = math.sin(math.pi * rho / 6) * 2  # Pearson ρ of the normals whose Spearman ρ is `rho`
    x = rng.standard_normal((n_sim, n))
    y = r * x + math.sqrt(max(0.0, 1 - r * r)) * rng.standard_normal((n_sim, n))
    rx, ry = rankdata(x, axis=1), rankdata(y, axis=1)
    base = np.arange(1, n + 1, dtype=np.float64)
    null_y = np.argsort(rng.random((n_sim, n)), axis=1) + 1.0

    def rho_s(a, b):
        a = a - a.mean(1, keepdims=True)
        b = b - b.mean(1, keepdims=True)
        return (a * b).sum(1) / np.sqrt((a * a).sum(1) * (b * b).sum(1))

    crit = np.quantile(np.abs(rho_s(np.broadcast_to(base, null_y.shape), null_y)), 1 - alpha)
    return float((np.abs(rho_s(rx, ry)) > crit).mean())


def power_record(
    n_heads: int, n_layers: int | None = None, alpha: float = ALPHA, power: float = POWER
) -> dict:
    """What N heads can detect, written into the results (``summary.json``): the detectable |ρ| over
    all heads and, with ``n_layers``, within layers (layer-demeaned ranks lose one degree of freedom
    per layer), and the |ρ| that reaches p < alpha at all."""
    out = {
        "n_heads": int(n_heads),
        "alpha": alpha,
        "power": power,
        "detectable_abs_rho": detectable_rho(n_heads, alpha, power),
        "significant_abs_rho": significant_rho(n_heads, alpha),
        "method": "Fisher z, var(atanh ρ_s) = 1.06/(N - 3), two-sided",
    }
    if n_layers is not None:
        out["n_layers"] = int(n_layers)
        out["detectable_abs_rho_within_layer"] = detectable_rho(max(n_heads - n_layers + 1, 1), alpha, power)
    return out


def power_sentence(record: dict) -> str:
    """The chapter's sentence for :func:`power_record`."""
    n, rho = record["n_heads"], record["detectable_abs_rho"]
    if rho != rho:
        return f"With N = {n} heads no correlation can be tested."
    text = (
        f"With N = {n} heads a Spearman correlation is detected with probability {record['power']:.0%} at "
        f"α = {record['alpha']:g} only when |ρ| ≥ {rho:.2f} (and reaches p < {record['alpha']:g} at all "
        f"only when |ρ| ≥ {record['significant_abs_rho']:.2f})"
    )
    within = record.get("detectable_abs_rho_within_layer")
    if within is not None and within == within:
        text += f"; within layers the detectable |ρ| is {within:.2f}"
    return text + "."
