"""The shared tolerance helper accepts rounding and rejects what a bug would do."""

from __future__ import annotations

import pytest
import torch

from tolerance import FP32_REORDER, assert_close_scaled


def test_accepts_float32_reordering_of_a_long_sum():
    x = torch.randn(64, 512, generator=torch.Generator().manual_seed(0))
    forward = x.sum(1)
    backward = x.flip(1).cumsum(1)[:, -1]  # the same sum in another order
    assert not torch.equal(forward, backward)  # the orders really round differently
    assert_close_scaled(backward, forward)


def test_rejects_a_change_of_one_thousandth_of_the_scale():
    expected = torch.linspace(-2, 2, 100)
    wrong = expected.clone()
    wrong[3] += 2e-3
    with pytest.raises(AssertionError, match="exceeds"):
        assert_close_scaled(wrong, expected)


def test_scale_argument_and_shape_and_nan_checks():
    delta = torch.tensor([1e-4, -2e-4])
    # a loss change of 1e-5 is rounding for losses of size 5, not for the change's own size
    assert_close_scaled(delta + 1e-5 * torch.tensor([1.0, -1.0]), delta, scale=5.0)
    with pytest.raises(AssertionError):
        assert_close_scaled(delta + 1e-5, delta)
    with pytest.raises(AssertionError, match="shapes"):
        assert_close_scaled(delta[:1], delta)
    with pytest.raises(AssertionError, match="non-finite"):
        assert_close_scaled(torch.tensor([float("nan"), 0.0]), delta)
    assert FP32_REORDER < 1e-3
