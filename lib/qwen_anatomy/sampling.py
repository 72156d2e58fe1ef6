"""Turning logits into a next token: temperature, top-k, top-p (chapter 01_language_models)."""

from __future__ import annotations

import torch


def check_sampling_args(
    temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None
) -> None:
    """Raise ValueError naming the bad argument (before any model work)."""
    from .validate import TEMPERATURE_RANGE

    low, high = TEMPERATURE_RANGE
    if not (temperature == 0 or low <= temperature <= high):  # NaN fails both
        raise ValueError(
            f"temperature={temperature} must be 0 (greedy) or lie in [{low:g}, {high:g}]: below, "
            "logits / temperature overflows float32"
        )
    if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k={top_k} must be a positive integer (or None for no limit)")
    if top_p is not None and not (0.0 < top_p <= 1.0):
        raise ValueError(f"top_p={top_p} must lie in (0, 1] (or None for no limit)")


def temperature_probs(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """softmax(logits / T), i.e. p^(1/T) renormalised; T = 0 is the one-hot argmax."""
    if temperature == 0:
        return torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).to(torch.float32)
    return torch.softmax(logits.float() / temperature, dim=-1)


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k largest logits per row (ties at the boundary kept), set the rest to -inf."""
    k = min(k, logits.shape[-1])
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose probability reaches p (nucleus)."""
    sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
    probs = torch.softmax(sorted_logits.float(), dim=-1)
    before = probs.cumsum(-1) - probs  # mass strictly above each token
    remove_sorted = before >= p
    remove_sorted[..., 0] = False  # always keep the most likely token
    remove = remove_sorted.scatter(-1, order, remove_sorted)
    return logits.masked_fill(remove, float("-inf"))


def next_token(
    logits: torch.Tensor,  # [B, V]
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Pick one token per row: argmax when temperature is 0, else sample after the filters."""
    if temperature == 0:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    if top_p is not None and top_p < 1.0:
        logits = top_p_filter(logits, top_p)
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
