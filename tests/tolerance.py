"""Tolerances shared by the numerical tests, each with its reason.

Two computations that are equal in exact arithmetic but sum in a different order (a batched path
against a loop, a padded batch against single examples, our model against transformers, one BLAS
build or thread count against another) differ in float32 by rounding that grows with the size of
the values summed, not with the size of each result element. An elementwise ``atol`` breaks on
machines whose kernels sum differently (a fixed 1e-6 failed at 1.79e-6 on a fresh machine); an
elementwise ``rtol`` breaks on elements that happen to be near zero. So float32 comparisons here
are relative to the scale of the expected tensor: ``max|a - b| <= rtol * max|b|``.

``FP32_REORDER`` = 3e-5: float32's epsilon is 1.2e-7; sums of a few hundred terms of mixed sign
lose up to a few hundred ulps of the largest term on any BLAS, i.e. ~1e-5 of the scale. A real bug
(a wrong head, a missing bias, a mask off by one) changes results by 1e-3 of the scale or more.
Where a claim is exact, tests compare in float64 (``FP64_EXACT``) or bit for bit.

``BF16_ROUNDING`` = 4 x 2^-8 = 1.6e-2: bfloat16 keeps 8 significant bits (7 stored), so one rounding
moves a value by up to its unit roundoff 2^-8 = 3.9e-3 (``torch.finfo(torch.bfloat16).eps`` is the
spacing at 1, 2^-7). Two bfloat16 computations that round in different places (our sdpa attention
keeps the probabilities in float32, transformers' eager rounds them) differ by a few roundings of
the largest value: measured 1.7 on the tiny test model, 4.1 (0.375 of 23.5) on Qwen2.5-Coder-0.5B's
logits. A lost bias or a wrong head moves logits by several times more.
"""

from __future__ import annotations

import torch

FP32_REORDER = 3e-5  # float32, summation order differs (see module docstring)
FP64_EXACT = 1e-10  # float64, the same formula evaluated along different paths
BF16_ROUNDING = 4 * 2.0**-8  # bfloat16, rounded in different places (see module docstring)


def assert_close_scaled(actual, expected, rtol: float = FP32_REORDER, scale=None, msg: str = "") -> None:
    """Assert ``max|actual - expected| <= rtol * scale`` (shapes equal, both finite).

    ``scale`` defaults to ``max|expected|``. Give it explicitly when the compared values are
    differences of larger quantities (a loss change is rounded at the size of the loss itself).
    """
    actual, expected = torch.as_tensor(actual).detach(), torch.as_tensor(expected).detach()
    assert actual.shape == expected.shape, (
        f"{msg} shapes differ: {tuple(actual.shape)} vs {tuple(expected.shape)}"
    )
    assert torch.isfinite(actual).all() and torch.isfinite(expected).all(), f"{msg} non-finite values"
    a, b = actual.double(), expected.double()
    if scale is None:
        scale = float(b.abs().max()) if b.numel() else 0.0
    scale = float(torch.as_tensor(scale).detach().abs().max())
    diff = float((a - b).abs().max()) if b.numel() else 0.0
    assert diff <= rtol * max(scale, 1e-30), (
        f"{msg} largest difference {diff:.3g} exceeds {rtol:g} x scale {scale:.3g} (= {rtol * scale:.3g})"
    )
