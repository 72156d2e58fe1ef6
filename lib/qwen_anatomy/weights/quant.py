"""What 4-bit block quantisation does to weights (chapter 10).

GGUF's Q4_1 stores each block of 32 consecutive values of a row as a scale d and a minimum m (fp16)
plus 32 four-bit codes q in 0..15: x ≈ d·q + m. Every block therefore holds at most 16 distinct
values on an evenly spaced grid; Q8_0 keeps 256 levels (x ≈ d·q, q in -128..127).
"""

from __future__ import annotations

import numpy as np

BLOCK = 32


def levels_per_block(values: np.ndarray, block: int = BLOCK) -> np.ndarray:
    """Number of distinct values in each block of ``block`` consecutive values of each row."""
    rows, cols = values.shape
    blocks = np.sort(values.reshape(rows * (cols // block), block), axis=1)
    return 1 + (np.diff(blocks, axis=1) != 0).sum(axis=1)


def requantise(values: np.ndarray, qtype: str = "Q4_1") -> np.ndarray:
    """Quantise float32 rows with ``gguf`` (as llama.cpp would) and dequantise them back."""
    from gguf.constants import GGMLQuantizationType
    from gguf.quants import dequantize, quantize

    t = GGMLQuantizationType[qtype]
    v = np.ascontiguousarray(values, dtype=np.float32)
    return np.asarray(dequantize(quantize(v, t), t), dtype=np.float32).reshape(v.shape)


def grid_step(block_values: np.ndarray) -> float:
    """The spacing of a block's value grid (smallest gap between its distinct values)."""
    u = np.unique(block_values)
    return float(np.diff(u).min()) if u.size > 1 else 0.0
