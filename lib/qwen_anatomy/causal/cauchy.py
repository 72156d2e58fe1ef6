"""Cauchy (and, for the ablation, Normal) distributions in closed form (chapter 50_causal_heads).

The one fact CausalQwen rests on: for independent X_j ~ Cauchy(mu_j, gamma_j),
sum_j w_j X_j + b ~ Cauchy(sum_j w_j mu_j + b, sum_j |w_j| gamma_j). A linear layer therefore maps a
Cauchy vector to a Cauchy vector with a matrix product for the locations and a product with |W| for
the scales, with no sampling. The Normal ablation replaces the scale rule by
sqrt(sum_j w_j^2 sigma_j^2).

Shapes: ``loc``/``scale`` [..., C]; ``weight`` [O, C] (nn.Linear layout); results [..., O].
"""

from __future__ import annotations

import math

import torch

DISTRIBUTIONS = ("cauchy", "normal")

# Two-sided 95% half-width in units of the scale: tan(0.475 pi) for Cauchy, 1.96 for Normal.
HALF_WIDTH_95 = {"cauchy": math.tan(math.pi * 0.475), "normal": 1.959963984540054}


def check_distribution(dist: str) -> str:
    if dist not in DISTRIBUTIONS:
        raise ValueError(f"distribution {dist!r}: use one of {DISTRIBUTIONS}")
    return dist


def linear_propagate(
    loc: torch.Tensor,
    scale: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    dist: str = "cauchy",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Location and scale of ``X @ weight.T + bias`` for independent components of X.

    Cauchy: scale_out = |W| scale. Normal: scale_out = sqrt(W^2 scale^2).
    """
    loc_out = torch.nn.functional.linear(loc, weight, bias)
    if check_distribution(dist) == "cauchy":
        scale_out = torch.nn.functional.linear(scale, weight.abs())
    else:
        scale_out = torch.nn.functional.linear(scale.square(), weight.square()).clamp_min(1e-30).sqrt()
    return loc_out, scale_out


def add_independent(scale: torch.Tensor, other: torch.Tensor, dist: str = "cauchy") -> torch.Tensor:
    """Scale of the sum of two independent variables: g1 + g2 (Cauchy), sqrt(s1^2 + s2^2) (Normal)."""
    if check_distribution(dist) == "cauchy":
        return scale + other
    return (scale.square() + other.square()).sqrt()


def cdf(x: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor, dist: str = "cauchy") -> torch.Tensor:
    """P(X <= x): 1/2 + arctan((x - loc)/scale)/pi (Cauchy) or Phi((x - loc)/scale) (Normal)."""
    t = (x - loc) / scale
    if check_distribution(dist) == "cauchy":
        return 0.5 + torch.atan(t) / math.pi
    return 0.5 * (1.0 + torch.erf(t / math.sqrt(2.0)))


def ovr_probability(
    loc: torch.Tensor, scale: torch.Tensor, threshold: torch.Tensor | float, dist: str = "cauchy"
) -> torch.Tensor:
    """One-vs-rest P(S_k > C_k) = 1/2 + arctan((loc_k - C_k)/scale_k)/pi for Cauchy scores."""
    t = (loc - threshold) / scale
    if check_distribution(dist) == "cauchy":
        return 0.5 + torch.atan(t) / math.pi
    return 0.5 * (1.0 + torch.erf(t / math.sqrt(2.0)))


def quantile(p: torch.Tensor, dist: str = "cauchy") -> torch.Tensor:
    """The standard quantile F^-1(p) (location 0, scale 1): tan(pi (p - 1/2)) for Cauchy,
    sqrt(2) erfinv(2p - 1) for Normal. Computed in float64, returned in p's dtype."""
    q = p.double()
    if check_distribution(dist) == "cauchy":
        out = torch.tan(math.pi * (q - 0.5))
    else:
        out = math.sqrt(2.0) * torch.erfinv(2.0 * q - 1.0)
    return out.to(p.dtype)


def ovr_margin(loc: torch.Tensor, scale: torch.Tensor, threshold: torch.Tensor | float) -> torch.Tensor:
    """The standardised margin t_k = (loc_k - C_k)/scale_k: P_k is an increasing function of it.

    Its argmax is the OvR argmax without float32 ties: once many P_k round to exactly 1.0 (tiny
    scales), ``probs.argmax`` picks the first of them, while t still ranks them.
    """
    return (loc - threshold) / scale


def ovr_log_probability(t: torch.Tensor, dist: str = "cauchy") -> torch.Tensor:
    """log P(S > C) from the margin t, accurate in both tails (log(1 - P) is this at -t).

    Cauchy: for t < 0, 1/2 + arctan(t)/pi = arctan(-1/t)/pi, which keeps its relative precision
    where the direct form rounds to 0 (or, at -t, to 1); Normal: log Phi(t). Gradients stay finite
    and non-zero wherever t is finite, unlike clamping P away from 0 and 1.
    """
    if check_distribution(dist) == "normal":
        return torch.special.log_ndtr(t)
    neg = t < 0
    t_neg = torch.where(neg, t, -torch.ones_like(t))  # safe inputs for both branches (no 1/0, no NaN grads)
    t_pos = torch.where(neg, torch.zeros_like(t), t)
    return torch.where(
        neg, torch.log(torch.atan(-1.0 / t_neg) / math.pi), torch.log(0.5 + torch.atan(t_pos) / math.pi)
    )


def nll(value: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor, dist: str = "cauchy") -> torch.Tensor:
    """Negative log-likelihood per element.

    Cauchy: log(pi scale) + log(1 + ((v - loc)/scale)^2). Normal: log(sqrt(2 pi) scale) + z^2/2.
    """
    z = (value - loc) / scale
    if check_distribution(dist) == "cauchy":
        return torch.log(math.pi * scale) + torch.log1p(z.square())
    return torch.log(math.sqrt(2 * math.pi) * scale) + 0.5 * z.square()


def sample(
    loc: torch.Tensor,
    scale: torch.Tensor,
    n: int | None = None,
    generator: torch.Generator | None = None,
    dist: str = "cauchy",
    eps: torch.Tensor | None = None,
) -> torch.Tensor:
    """Draws by inverse CDF: loc + scale * tan(pi (eps - 1/2)), eps ~ U(0, 1) (Cauchy).

    ``eps`` may be given (shared randomness: one eps for a whole generation). With ``n`` the result
    has a leading dimension of n draws.
    """
    shape = loc.shape if n is None else (n, *loc.shape)
    if eps is None:
        eps = torch.rand(
            shape, generator=generator, dtype=torch.float64 if loc.dtype == torch.float64 else torch.float32
        )
    eps = eps.to(loc.device)  # drawn on the CPU (seeded generators are CPU generators)
    if check_distribution(dist) == "cauchy":
        noise = torch.tan(math.pi * (eps - 0.5))
    else:
        noise = math.sqrt(2.0) * torch.erfinv(2.0 * eps - 1.0)
    return loc + scale * noise.to(loc.dtype)


def interval_half_width(scale: torch.Tensor, dist: str = "cauchy", level: float = 0.95) -> torch.Tensor:
    """Half-width of the central interval at ``level`` (12.706 scale for Cauchy at 95%)."""
    if check_distribution(dist) == "cauchy":
        return scale * math.tan(math.pi * level / 2)
    from statistics import NormalDist

    return scale * NormalDist().inv_cdf(0.5 + level / 2)


def robust_location_scale(draws: torch.Tensor, dim: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Median and half the inter-quartile range: the Cauchy location and scale, estimated from draws
    (the mean and standard deviation of Cauchy draws do not converge)."""
    q = torch.quantile(draws, torch.tensor([0.25, 0.5, 0.75], dtype=draws.dtype), dim=dim)
    return q[1], (q[2] - q[0]) / 2
