"""Small helpers for the sentences the library writes."""

from __future__ import annotations


def count(n: int, noun: str) -> str:
    """``n`` and ``noun``, plural unless ``n`` is 1: ``count(1, "seed")`` is "1 seed", ``count(1200, "run")``
    "1,200 runs"."""
    return f"{n:,} {noun}" + ("" if n == 1 else "s")
