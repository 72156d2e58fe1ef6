"""What 4-bit block quantisation does to weights (chapter 10).

GGUF's Q4_1 stores each block of 32 consecutive values of a row as a scale d and a minimum m (fp16)
plus 32 four-bit codes q in 0..15: x ≈ d·q + m. Every block therefore holds at most 16 distinct
values on an evenly spaced grid; Q8_0 keeps 256 levels (x ≈ d·q, q in -128..127). Q4_K (the 4-bit
type of the Q4_K_M files) groups eight such 32-value blocks into a super-block whose block scales and
minima are themselves quantised to 6 bits: still at most 16 values per block of 32.
:data:`FORMATS` describes the types chapter 10 meets; :func:`four_bit_type` picks the one to inspect.
"""

from __future__ import annotations

import numpy as np

BLOCK = 32

# GGUF storage types: bits per code, whether the value grid contains 0 exactly (a symmetric grid
# x = d·(q - offset); a grid with a minimum, x = d·q + m, rarely does), and how a value is rebuilt.
FORMATS = {
    "Q4_0": {
        "bits": 4,
        "zero_on_grid": True,
        "rule": "x ≈ d·(q − 8), q in 0..15, one scale d per block of 32",
    },
    "Q4_1": {
        "bits": 4,
        "zero_on_grid": False,
        "rule": "x ≈ d·q + m, q in 0..15, a scale d and a minimum m per block of 32",
    },
    "Q4_K": {
        "bits": 4,
        "zero_on_grid": False,
        "rule": "x ≈ d·s_j·q − d_min·m_j, q in 0..15: blocks of 32 (index j) with 6-bit scales s_j and minima m_j, "
        "themselves scaled by two fp16 numbers per super-block of 256",
    },
    "Q5_0": {
        "bits": 5,
        "zero_on_grid": True,
        "rule": "x ≈ d·(q − 16), q in 0..31, one scale d per block of 32",
    },
    "Q5_1": {"bits": 5, "zero_on_grid": False, "rule": "x ≈ d·q + m, q in 0..31, per block of 32"},
    "Q5_K": {"bits": 5, "zero_on_grid": False, "rule": "x ≈ d·s_j·q − d_min·m_j, q in 0..31, blocks of 32"},
    "Q6_K": {
        "bits": 6,
        "zero_on_grid": True,
        "rule": "x ≈ d·s_j·(q − 32), q in 0..63, blocks of 16 with 8-bit scales",
    },
    "Q8_0": {"bits": 8, "zero_on_grid": True, "rule": "x ≈ d·q, q in −128..127, one scale d per block of 32"},
    "F16": {"bits": 16, "zero_on_grid": True, "rule": "half-precision floats"},
    "BF16": {"bits": 16, "zero_on_grid": True, "rule": "bfloat16 floats"},
    "F32": {"bits": 32, "zero_on_grid": True, "rule": "single-precision floats"},
}
# The 4-bit types whose blocks of 32 hold at most 16 distinct values (checked by chapter 10).
FOUR_BIT_BLOCK32 = ("Q4_0", "Q4_1", "Q4_K")


def four_bit_type(dtypes) -> str | None:
    """The 4-bit, 32-value-block type among ``dtypes`` (the stored types of a checkpoint's tensors)
    to inspect: Q4_1 first (the simplest rule), then Q4_0, then Q4_K; None when there is none."""
    present = set(dtypes)
    for qtype in ("Q4_1", "Q4_0", "Q4_K"):
        if qtype in present:
            return qtype
    return None


def format_rule(qtype: str) -> str:
    """One line saying how a stored type rebuilds a value (``"stored as Q3_K"`` for an unknown type)."""
    info = FORMATS.get(qtype)
    return f"{qtype}: {info['rule']}" if info else f"stored as {qtype}"


def zero_change_reason(stored: str, target: str = "Q4_1") -> str:
    """Why exact zeros become rarer or commoner when ``stored`` values are re-quantised to ``target``:
    a grid that contains 0 (symmetric) against one that starts at each block's minimum."""
    has = FORMATS.get(stored, {}).get("zero_on_grid")
    target_has = FORMATS.get(target, {}).get("zero_on_grid")
    if has and not target_has:
        return (
            f"{target}'s grid starts at each block's minimum, so 0 is rarely one of its points, while "
            f"{stored}'s symmetric grid contains 0"
        )
    if target_has and not has:
        return f"{target}'s symmetric grid contains 0 while {stored}'s starts at each block's minimum"
    return f"both grids {'contain' if has else 'rarely contain'} 0; the change comes from the coarser spacing"


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
