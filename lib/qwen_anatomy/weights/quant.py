"""GGUF block quantisation, decoded from the stored bytes and measured (chapter 10).

A quantised GGUF tensor is a list of blocks. Each block holds a small integer *code* q per value and
one or two numbers that place the codes on the real line, so every value of a block lies on an evenly
spaced grid: x = d·q (a *symmetric* grid, which contains 0) or x = d·q + m (a grid with an offset,
which rarely does). The "K" types group blocks into super-blocks of 256 values whose block scales are
themselves small integers times one fp16 super-block scale.

:func:`decode_blocks` reads codes, block scales and offsets, and super-block scales straight from the
bytes (never through the dequantised floats), for every type with an evenly spaced grid: Q4_0, Q4_1,
Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K and Q6_K. ``DecodedBlocks.values()`` rebuilds the floats
bit for bit as ``gguf.quants.dequantize`` does (tests check it per type). The I-quants (IQ*) use
lattice codebooks, not evenly spaced grids, and are not decoded here.

Measured per tensor (:func:`tensor_grid`, :func:`grid_table`): block size, distinct values per block
(at most 2^bits), the step relative to the block's largest magnitude, exact zeros and whether 0 is a
grid point, and where the block's extreme entry lands on the grid. :func:`compare_tied` compares two
stored copies of one matrix (the real Qwen2's GGUF keeps ``output.weight`` in Q8_0 apart from the
Q5_0 ``token_embd.weight``, although the model ties them), which isolates quantisation error.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import UserInputError
from ..words import count as _count

BLOCK = 32
QK_K = 256

# GGUF storage types. bits: bits per code; block: values sharing one step (the grid's unit);
# super: values per stored block (256 for the K types); codes: (lowest, highest) code as the rule
# uses it; zero_on_grid: whether every block's grid contains 0 (symmetric grids); nominal_step: the
# step relative to the block's largest magnitude that the reference quantiser aims at (None where it
# searches for the scale and the result varies); rule: how a value is rebuilt, and how the reference
# quantiser (llama.cpp's ggml-quants.c) picks scales and treats a block's extremes.
FORMATS = {
    "Q4_0": {
        "bits": 4,
        "block": 32,
        "super": 32,
        "codes": (-8, 7),
        "zero_on_grid": True,
        "nominal_step": 1 / 8,
        "rule": "x ≈ d·(q − 8), q in 0..15, one scale d per block of 32",
        "extremes": "d = x_max/−8 for the entry x_max of largest magnitude, which lands on code −8 exactly",
    },
    "Q4_1": {
        "bits": 4,
        "block": 32,
        "super": 32,
        "codes": (0, 15),
        "zero_on_grid": False,
        "nominal_step": None,
        "rule": "x ≈ d·q + m, q in 0..15, a scale d and a minimum m per block of 32",
        "extremes": "m = the block minimum (code 0) and d = (max − min)/15, so the maximum lands on code 15",
    },
    "Q4_K": {
        "bits": 4,
        "block": 32,
        "super": 256,
        "codes": (0, 15),
        "zero_on_grid": False,
        "nominal_step": None,
        "rule": "x ≈ d·s_j·q − d_min·m_j, q in 0..15: blocks of 32 (index j) with 6-bit scales s_j and minima m_j, "
        "themselves scaled by two fp16 numbers per super-block of 256",
        "extremes": "scale and minimum come from a search that may clip a block's tails to lower the "
        "weighted error; the minimum is never above 0",
    },
    "Q5_0": {
        "bits": 5,
        "block": 32,
        "super": 32,
        "codes": (-16, 15),
        "zero_on_grid": True,
        "nominal_step": 1 / 16,
        "rule": "x ≈ d·(q − 16), q in 0..31, one scale d per block of 32",
        "extremes": "d = x_max/−16 for the entry x_max of largest magnitude, which lands on code −16 exactly",
    },
    "Q5_1": {
        "bits": 5,
        "block": 32,
        "super": 32,
        "codes": (0, 31),
        "zero_on_grid": False,
        "nominal_step": None,
        "rule": "x ≈ d·q + m, q in 0..31, per block of 32",
        "extremes": "m = the block minimum (code 0) and d = (max − min)/31",
    },
    "Q5_K": {
        "bits": 5,
        "block": 32,
        "super": 256,
        "codes": (0, 31),
        "zero_on_grid": False,
        "nominal_step": None,
        "rule": "x ≈ d·s_j·q − d_min·m_j, q in 0..31, blocks of 32",
        "extremes": "searched scale and minimum, as Q4_K",
    },
    "Q6_K": {
        "bits": 6,
        "block": 16,
        "super": 256,
        "codes": (-32, 31),
        "zero_on_grid": True,
        "nominal_step": 1 / 32,
        "rule": "x ≈ d·s_j·(q − 32), q in 0..63, blocks of 16 with 8-bit scales",
        "extremes": "the scale starts from x_max/−32 (the largest-magnitude entry on code −32) and a short "
        "search around it may move it",
    },
    "Q2_K": {
        "bits": 2,
        "block": 16,
        "super": 256,
        "codes": (0, 3),
        "zero_on_grid": False,
        "nominal_step": None,
        "rule": "x ≈ d·s_j·q − d_min·m_j, q in 0..3, blocks of 16 with 4-bit scales and minima",
        "extremes": "searched scale and minimum",
    },
    "Q3_K": {
        "bits": 3,
        "block": 16,
        "super": 256,
        "codes": (-4, 3),
        "zero_on_grid": True,
        "nominal_step": 1 / 4,
        "rule": "x ≈ d·s_j·q, q in −4..3, blocks of 16 with 6-bit signed scales",
        "extremes": "the scale starts from x_max/−4 and a search may move it",
    },
    "Q8_0": {
        "bits": 8,
        "block": 32,
        "super": 32,
        "codes": (-128, 127),
        "zero_on_grid": True,
        "nominal_step": 1 / 127,
        "rule": "x ≈ d·q, q in −128..127, one scale d per block of 32",
        "extremes": "d = |x|_max/127, so the largest magnitude lands on ±127; code −128 is never written",
    },
    "F16": {"bits": 16, "zero_on_grid": True, "rule": "half-precision floats"},
    "BF16": {"bits": 16, "zero_on_grid": True, "rule": "bfloat16 floats"},
    "F32": {"bits": 32, "zero_on_grid": True, "rule": "single-precision floats"},
}
# Types decode_blocks reads (evenly spaced grids), in the order chapter 10 explains them.
DECODABLE = ("Q8_0", "Q5_0", "Q4_0", "Q4_1", "Q5_1", "Q4_K", "Q5_K", "Q6_K", "Q3_K", "Q2_K")
# Types gguf's Python quantiser writes (the K types it only reads).
REQUANTISABLE = ("Q8_0", "Q5_0", "Q5_1", "Q4_0", "Q4_1")
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


def bits_per_weight(qtype: str) -> float:
    """Stored bits per value, scales included (Q4_K: 144 bytes per 256 values = 4.5)."""
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    try:
        block, size = GGML_QUANT_SIZES[GGMLQuantizationType[qtype]]
    except KeyError:
        raise UserInputError(f"unknown GGUF type {qtype!r}") from None
    return 8 * size / block


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
    from gguf.quants import dequantize

    t = GGMLQuantizationType[qtype]
    v = np.ascontiguousarray(values, dtype=np.float32)
    return np.asarray(dequantize(quantise_raw(v, qtype), t), dtype=np.float32).reshape(v.shape)


def quantise_raw(values: np.ndarray, qtype: str) -> np.ndarray:
    """The bytes ``gguf`` writes for float32 rows (rows, cols) in ``qtype``: (rows, row_bytes) uint8."""
    from gguf.constants import GGMLQuantizationType
    from gguf.quants import quantize

    if qtype not in REQUANTISABLE:
        raise UserInputError(
            f"gguf's Python quantiser cannot write {qtype}; choose one of {', '.join(REQUANTISABLE)}"
        )
    v = np.ascontiguousarray(np.atleast_2d(values), dtype=np.float32)
    return quantize(v, GGMLQuantizationType[qtype])


def grid_step(block_values: np.ndarray) -> float:
    """The spacing of a block's value grid (smallest gap between its distinct values)."""
    u = np.unique(block_values)
    return float(np.diff(u).min()) if u.size > 1 else 0.0


# ---------------------------------------------------------------------------------------------------
# Decoding the stored bytes


@dataclass
class DecodedBlocks:
    """Codes and scales of ``n`` blocks (the units that share one step), read from the stored bytes.

    codes: (n, block) int16, the integer each value sits on, signed as the rule uses it (Q5_0: q − 16).
    scale: (n,) float32 step of each block (d for Q8_0/Q5_0/Q4_1; d·s_j for the K types; may be < 0).
    offset: (n,) float32 added to scale·code (Q4_1: m; Q4_K: −d_min·m_j), or None for symmetric grids.
    super_scale, super_min: (n_super,) the fp16 super-block scales d and d_min of the K types.
    sub_scale, sub_min: (n,) the integer block scales s_j and minima m_j of the K types.
    """

    qtype: str
    codes: np.ndarray
    scale: np.ndarray
    offset: np.ndarray | None = None
    super_scale: np.ndarray | None = None
    super_min: np.ndarray | None = None
    sub_scale: np.ndarray | None = None
    sub_min: np.ndarray | None = None

    @property
    def block(self) -> int:
        return self.codes.shape[1]

    @property
    def code_range(self) -> tuple[int, int]:
        return FORMATS[self.qtype]["codes"]

    def values(self) -> np.ndarray:
        """(n, block) float32, computed in the same float32 operations as ``gguf.quants.dequantize``."""
        v = self.scale[:, None] * self.codes.astype(np.float32)
        return v if self.offset is None else v + self.offset[:, None]

    def grid(self, j: int) -> np.ndarray:
        """Every value block ``j`` can represent (one per code, lowest code first)."""
        lo, hi = self.code_range
        q = np.arange(lo, hi + 1, dtype=np.float32)
        g = self.scale[j] * q
        return g if self.offset is None else g + self.offset[j]


def _f16(b: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(b).view(np.float16).astype(np.float32).reshape(-1)


def _nibbles(qs: np.ndarray, n: int, width: int) -> np.ndarray:
    """Low nibbles of ``width`` bytes then their high nibbles, as ggml packs 4-bit codes."""
    q = qs.reshape(n, -1, 1, width) >> np.array([0, 4], dtype=np.uint8).reshape(1, 1, 2, 1)
    return q & np.uint8(0x0F)


def _fifth_bit(qh: np.ndarray, n: int) -> np.ndarray:
    """The 32 high bits of Q5_0/Q5_1 (a little-endian uint32 per block, bit i for value i)."""
    return np.unpackbits(np.ascontiguousarray(qh).reshape(n, 4), axis=1, bitorder="little")


def _k_scale_min(scales: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The eight 6-bit scales and minima packed in 12 bytes (Q4_K, Q5_K)."""
    s = scales.reshape(n, 3, 4)
    d, m, m_d = s[:, 0], s[:, 1], s[:, 2]
    sc = np.concatenate([d & 0x3F, (m_d & 0x0F) | ((d >> 2) & 0x30)], axis=-1)
    mn = np.concatenate([m & 0x3F, (m_d >> 4) | ((m >> 2) & 0x30)], axis=-1)
    return sc.reshape(n, 8), mn.reshape(n, 8)


def _decode(raw: np.ndarray, qtype: str) -> DecodedBlocks:
    n = raw.shape[0]
    if qtype in ("Q4_0", "Q8_0", "Q5_0"):
        d = _f16(raw[:, :2])
        if qtype == "Q8_0":
            codes = raw[:, 2:].view(np.int8).astype(np.int16)
        elif qtype == "Q4_0":
            codes = _nibbles(raw[:, 2:], n, 16).reshape(n, 32).astype(np.int16) - 8
        else:
            low = _nibbles(raw[:, 6:], n, 16).reshape(n, 32)
            codes = (low | (_fifth_bit(raw[:, 2:6], n) << np.uint8(4))).astype(np.int16) - 16
        return DecodedBlocks(qtype, codes, d)
    if qtype in ("Q4_1", "Q5_1"):
        d, m = _f16(raw[:, :2]), _f16(raw[:, 2:4])
        if qtype == "Q4_1":
            codes = _nibbles(raw[:, 4:], n, 16).reshape(n, 32).astype(np.int16)
        else:
            low = _nibbles(raw[:, 8:], n, 16).reshape(n, 32)
            codes = (low | (_fifth_bit(raw[:, 4:8], n) << np.uint8(4))).astype(np.int16)
        return DecodedBlocks(qtype, codes, d, m)
    if qtype in ("Q4_K", "Q5_K"):
        d, dmin = _f16(raw[:, :2]), _f16(raw[:, 2:4])
        sc, mn = _k_scale_min(raw[:, 4:16], n)
        if qtype == "Q4_K":
            codes = _nibbles(raw[:, 16:], n, 32).reshape(n * 8, 32).astype(np.int16)
        else:
            low = _nibbles(raw[:, 48:], n, 32).reshape(n, 8, 32)
            qh = raw[:, 16:48].reshape(n, -1, 1, 32) >> np.arange(8, dtype=np.uint8).reshape(1, 1, 8, 1)
            high = (qh & np.uint8(1)).reshape(n, 8, 32)
            codes = (low | (high << np.uint8(4))).reshape(n * 8, 32).astype(np.int16)
        scale = (d[:, None] * sc.astype(np.float32)).reshape(-1)
        offset = -(dmin[:, None] * mn.astype(np.float32)).reshape(-1)
        return DecodedBlocks(qtype, codes, scale, offset, d, dmin, sc.reshape(-1), mn.reshape(-1))
    if qtype == "Q6_K":
        ql, qh, scales, d = raw[:, :128], raw[:, 128:192], raw[:, 192:208], _f16(raw[:, 208:210])
        low = _nibbles(ql, n, 64).reshape(n, 8, 32)
        high = (qh.reshape(n, -1, 1, 32) >> np.array([0, 2, 4, 6], dtype=np.uint8).reshape(1, 1, 4, 1)) & 3
        q = (low | (high.reshape(n, 8, 32) << np.uint8(4))).astype(np.int16) - 32
        sc = np.ascontiguousarray(scales).view(np.int8)
        scale = (d[:, None] * sc.astype(np.float32)).reshape(-1)
        return DecodedBlocks(
            qtype, q.reshape(n * 16, 16), scale, None, d, None, sc.reshape(-1).astype(np.int16)
        )
    if qtype == "Q3_K":
        hmask, qs, scales, d = raw[:, :32], raw[:, 32:96], raw[:, 96:108], _f16(raw[:, 108:110])
        lsc = (scales[:, :8].reshape(n, 1, 8) >> np.array([0, 4], dtype=np.uint8).reshape(1, 2, 1)).reshape(
            n, 16
        )
        hsc = scales[:, 8:].reshape(n, 1, 4) >> np.array([0, 2, 4, 6], dtype=np.uint8).reshape(1, 4, 1)
        sc = ((lsc & 0x0F) | ((hsc.reshape(n, 16) & 0x03) << 4)).astype(np.int16) - 32
        ql = (qs.reshape(n, -1, 1, 32) >> np.array([0, 2, 4, 6], dtype=np.uint8).reshape(1, 1, 4, 1)) & 3
        qh = (hmask.reshape(n, -1, 1, 32) >> np.arange(8, dtype=np.uint8).reshape(1, 1, 8, 1)) & 1
        # a clear high bit means "subtract 4"
        q = ql.reshape(n, 16, 16).astype(np.int16) - ((qh.reshape(n, 16, 16) ^ 1).astype(np.int16) << 2)
        scale = (d[:, None] * sc.astype(np.float32)).reshape(-1)
        return DecodedBlocks(qtype, q.reshape(n * 16, 16), scale, None, d, None, sc.reshape(-1))
    if qtype == "Q2_K":
        scales, qs = raw[:, :16], raw[:, 16:80]
        d, dmin = _f16(raw[:, 80:82]), _f16(raw[:, 82:84])
        q = (qs.reshape(n, -1, 1, 32) >> np.array([0, 2, 4, 6], dtype=np.uint8).reshape(1, 1, 4, 1)) & 3
        sc, mn = scales & 0x0F, scales >> 4
        scale = (d[:, None] * sc.astype(np.float32)).reshape(-1)
        offset = -(dmin[:, None] * mn.astype(np.float32)).reshape(-1)
        codes = q.reshape(n * 16, 16).astype(np.int16)
        return DecodedBlocks(qtype, codes, scale, offset, d, dmin, sc.reshape(-1), mn.reshape(-1))
    raise AssertionError(qtype)  # pragma: no cover - decode_blocks checks the type first


def decode_blocks(raw: np.ndarray, qtype: str) -> DecodedBlocks:
    """Codes, scales and offsets of every block in ``raw`` (stored bytes, any shape whose last axis
    holds whole blocks, e.g. the (rows, row_bytes) of :meth:`GGUFCheckpoint.read_raw`)."""
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    if qtype not in DECODABLE:
        raise UserInputError(
            f"GGUF type {qtype!r} has no evenly spaced grid to decode; decodable types: {', '.join(DECODABLE)}"
        )
    _, type_size = GGML_QUANT_SIZES[GGMLQuantizationType[qtype]]
    raw = np.ascontiguousarray(raw, dtype=np.uint8)
    if raw.size % type_size:
        raise ValueError(f"{raw.size} bytes are not whole {qtype} blocks of {type_size} bytes")
    return _decode(raw.reshape(-1, type_size), qtype)


# ---------------------------------------------------------------------------------------------------
# Measuring the grid


def distinct_codes(codes: np.ndarray) -> np.ndarray:
    """Number of distinct codes in each row of ``codes`` (n, block): sort each row, count the changes."""
    s = np.sort(codes.astype(np.int16, copy=False), axis=1)
    return 1 + (s[:, 1:] != s[:, :-1]).sum(axis=1)


def _zero_point(dec: DecodedBlocks) -> tuple[np.ndarray, np.ndarray]:
    """(0 on the grid, distance from 0 to the nearest grid point in steps) per block."""
    n = dec.scale.shape[0]
    if dec.offset is None:
        return np.ones(n, dtype=bool), np.zeros(n)
    lo, hi = dec.code_range
    with np.errstate(divide="ignore", invalid="ignore"):
        q0 = np.clip(np.rint(-dec.offset / dec.scale), lo, hi)
    q0 = np.where(dec.scale == 0, lo, q0).astype(np.float32)
    nearest = dec.scale * q0 + dec.offset  # the same float32 operations as values()
    with np.errstate(divide="ignore", invalid="ignore"):
        gap = np.abs(nearest.astype(np.float64)) / np.abs(dec.scale.astype(np.float64))
    return nearest == 0, np.where(dec.scale == 0, np.nan, gap)


@dataclass
class GridStats:
    """Running measurements of one tensor's blocks (or of several tensors of one type)."""

    qtype: str
    blocks: int = 0
    values: int = 0
    levels_sum: int = 0
    levels_max: int = 0
    full_blocks: int = 0
    zeros: int = 0
    zero_on_grid: int = 0
    zero_gap_sum: float = 0.0
    zero_gap_n: int = 0
    low_end: int = 0
    high_end: int = 0
    end_values: int = 0
    super_blocks: int = 0
    super_top: int = 0
    step_rel: list = field(default_factory=list)
    code_counts: np.ndarray | None = None
    absmax_code_counts: np.ndarray | None = None

    def add(self, dec: DecodedBlocks) -> None:
        info = FORMATS[self.qtype]
        lo, hi = info["codes"]
        n_codes = hi - lo + 1
        if self.code_counts is None:
            self.code_counts = np.zeros(n_codes, dtype=np.int64)
            self.absmax_code_counts = np.zeros(n_codes, dtype=np.int64)
        codes = dec.codes
        n, block = codes.shape
        rows = np.arange(n)
        ordered = np.sort(codes, axis=1)  # distinct codes, and the lowest and highest used, per block
        levels = 1 + np.count_nonzero(ordered[:, 1:] != ordered[:, :-1], axis=1)
        levels[dec.scale == 0] = 1
        self.blocks += n
        self.values += codes.size
        self.levels_sum += int(levels.sum())
        self.levels_max = max(self.levels_max, int(levels.max(initial=0)))
        self.full_blocks += int((levels == min(block, n_codes)).sum())
        if dec.offset is None:
            # symmetric grid: |x| = |d|·|q|, so the codes alone give zeros and each block's extreme
            magnitude = np.abs(codes)
            at = magnitude.argmax(axis=1)
            absmax = np.abs(dec.scale) * magnitude[rows, at].astype(np.float32)
            dead = dec.scale == 0
            self.zeros += int(np.count_nonzero(codes == 0) + np.count_nonzero(codes[dead]))
        else:
            values = dec.values()
            absval = np.abs(values)
            at = absval.argmax(axis=1)
            absmax = absval[rows, at]
            self.zeros += int(values.size - np.count_nonzero(values))
        on_grid, gap = _zero_point(dec)
        self.zero_on_grid += int(on_grid.sum())
        if dec.offset is not None:
            ok = np.isfinite(gap)
            self.zero_gap_sum += float(gap[ok].sum())
            self.zero_gap_n += int(ok.sum())
        self.low_end += int((ordered[:, 0] == lo).sum())
        self.high_end += int((ordered[:, -1] == hi).sum())
        counts = np.bincount((codes - lo).ravel(), minlength=n_codes)
        self.code_counts += counts
        self.end_values += int(counts[0] + counts[-1])
        live = absmax > 0
        self.absmax_code_counts += np.bincount(codes[rows, at][live] - lo, minlength=n_codes)
        self.step_rel.append((np.abs(dec.scale[live]) / absmax[live]).astype(np.float32))
        if dec.sub_scale is not None:
            per_super = dec.sub_scale.reshape(-1, info["super"] // info["block"])
            self.super_blocks += per_super.shape[0]
            self.super_top += int((np.abs(per_super).max(axis=1) == _top_sub_scale(self.qtype)).sum())

    def summary(self) -> dict:
        """One table row: the measurements of every block added so far."""
        info = FORMATS[self.qtype]
        lo, hi = info["codes"]
        step = np.concatenate(self.step_rel) if self.step_rel else np.zeros(0, np.float32)
        blocks = max(self.blocks, 1)
        counts = self.absmax_code_counts if self.absmax_code_counts is not None else np.zeros(1)
        top, second = (int(i) for i in np.argsort(-counts, kind="stable")[:2]) if counts.size > 1 else (0, 0)
        total = max(int(counts.sum()), 1)
        return {
            "qtype": self.qtype,
            "bits": info["bits"],
            "block": info["block"],
            "super_block": info["super"],
            "bits_per_weight": bits_per_weight(self.qtype),
            "blocks": self.blocks,
            "values": self.values,
            "levels_mean": self.levels_sum / blocks,
            "levels_max": self.levels_max,
            "levels_bound": min(info["block"], hi - lo + 1),
            "full_share": self.full_blocks / blocks,
            "step_rel_median": float(np.median(step)) if step.size else float("nan"),
            "step_rel_p90": float(np.quantile(step, 0.9)) if step.size else float("nan"),
            "nominal_step_rel": info["nominal_step"],
            "zero_frac": self.zeros / max(self.values, 1),
            "zero_on_grid_share": self.zero_on_grid / blocks,
            "zero_gap_mean": self.zero_gap_sum / self.zero_gap_n if self.zero_gap_n else 0.0,
            "low_end_share": self.low_end / blocks,
            "high_end_share": self.high_end / blocks,
            "end_value_frac": self.end_values / max(self.values, 1),
            "absmax_top_code": top + lo,
            "absmax_top_share": float(counts[top] / total),
            "absmax_second_code": second + lo,
            "absmax_second_share": float(counts[second] / total),
            "super_top_share": self.super_top / self.super_blocks if self.super_blocks else float("nan"),
        }

    def merge(self, other: GridStats) -> None:
        for name in ("blocks", "values", "levels_sum", "full_blocks", "zeros", "zero_on_grid", "zero_gap_n",
                     "low_end", "high_end", "end_values", "super_blocks", "super_top"):  # fmt: skip
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.zero_gap_sum += other.zero_gap_sum
        self.levels_max = max(self.levels_max, other.levels_max)
        self.step_rel += other.step_rel
        for name in ("code_counts", "absmax_code_counts"):
            mine, theirs = getattr(self, name), getattr(other, name)
            if theirs is not None:
                setattr(self, name, theirs.copy() if mine is None else mine + theirs)


def _top_sub_scale(qtype: str) -> int:
    """The largest magnitude a K type's integer block scale can take (Q6_K: |−128|)."""
    return {"Q4_K": 63, "Q5_K": 63, "Q6_K": 128, "Q3_K": 32, "Q2_K": 15}[qtype]


def _reader(ck):
    """The GGUF reader behind a Checkpoint (or the reader itself); None for safetensors."""
    from .gguf_io import GGUFCheckpoint

    if isinstance(ck, GGUFCheckpoint):
        return ck
    return getattr(ck, "_gguf", None)


def sample_rows(n_rows: int, max_rows: int | None) -> np.ndarray | None:
    """Evenly spread row indices (first and last included), or None for every row."""
    if max_rows is None or max_rows >= n_rows:
        return None
    if max_rows < 1:
        raise UserInputError(f"grid_rows={max_rows} must be a positive number of rows (or None for all)")
    return np.unique(np.linspace(0, n_rows - 1, max_rows).round().astype(np.int64))


def iter_raw(ck, entry, max_rows: int | None = None, chunk_values: int = 1 << 22):
    """Stored bytes of a GGUF tensor in row chunks ((rows, row_bytes) uint8, file row order): every
    row, or ``max_rows`` evenly spread rows."""
    g = _reader(ck)
    if g is None:
        raise UserInputError(f"{entry.name} is not stored in a GGUF file: there are no blocks to decode")
    n_rows = entry.extra["rows"]
    cols = entry.numel // max(n_rows, 1)
    step = max(1, chunk_values // max(cols, 1))
    picked = sample_rows(n_rows, max_rows)
    if picked is None:
        for start in range(0, n_rows, step):
            yield g.read_raw(entry, start, min(n_rows, start + step))
    else:
        for i in range(0, picked.size, step):
            yield g.read_raw_rows(entry, picked[i : i + step])


def tensor_grid(ck, entry, max_rows: int | None = None) -> GridStats:
    """The grid measurements of one stored GGUF tensor (all rows, or ``max_rows`` spread rows)."""
    stats = GridStats(entry.dtype)
    for raw in iter_raw(ck, entry, max_rows):
        stats.add(decode_blocks(raw, entry.dtype))
    return stats


def quantised_entries(ck) -> list:
    """The stored tensors of a checkpoint whose type :func:`decode_blocks` reads (empty for safetensors)."""
    if _reader(ck) is None:
        return []
    return [e for e in ck.entries if e.dtype in DECODABLE]


# The columns chapter 10 shows of the per-tensor table and of the per-type summary.
TABLE_COLUMNS = ["source_name", "qtype", "block", "rows_read", "levels_mean", "step_rel_median", "zero_frac",
                 "zero_on_grid_share", "absmax_top_code", "absmax_top_share"]  # fmt: skip
TYPE_COLUMNS = ["tensors", "blocks", "bits_per_weight", "block", "levels_mean", "levels_bound", "step_rel_median",
                "nominal_step_rel", "zero_frac", "zero_on_grid_share", "absmax_top_code", "absmax_top_share"]  # fmt: skip


def verify_decoding(ck, rows: int = 64):
    """For the first and last stored tensor of each decodable type: ``rows`` rows from the middle rebuilt
    from :func:`decode_blocks` against ``gguf.quants.dequantize``, compared as float32 bit patterns."""
    import pandas as pd
    from gguf.constants import GGMLQuantizationType
    from gguf.quants import dequantize

    by_type: dict[str, list] = {}
    for e in quantised_entries(ck):
        by_type.setdefault(e.dtype, []).append(e)
    out = []
    g = _reader(ck)
    for qtype, entries in by_type.items():
        for e in entries[:1] + entries[1:][-1:]:  # the first and the last (one when the type has one)
            n = e.extra["rows"]
            start = max(0, n // 2 - rows // 2)
            raw = g.read_raw(e, start, min(n, start + rows))
            ours = np.ascontiguousarray(decode_blocks(raw, qtype).values(), dtype=np.float32).reshape(-1)
            ref = np.ascontiguousarray(
                dequantize(raw, GGMLQuantizationType[qtype]), dtype=np.float32
            ).reshape(-1)
            out.append(
                {
                    "qtype": qtype,
                    "tensor": e.source_name,
                    "rows": raw.shape[0],
                    "values": ref.size,
                    "bit_identical": bool(np.array_equal(ours.view(np.uint32), ref.view(np.uint32))),
                }
            )
    return pd.DataFrame(out, columns=["qtype", "tensor", "rows", "values", "bit_identical"])


@dataclass
class GridReport:
    """Per-tensor grid table plus the pooled measurements of each type."""

    table: object  # pandas DataFrame, one row per quantised tensor
    by_type: dict  # qtype -> GridStats pooled over its tensors
    max_rows: int | None
    seconds: float


def grid_table(ck, max_rows: int | None = None, progress: bool = True) -> GridReport:
    """Decode every quantised tensor of a GGUF checkpoint and measure its grid (chapter 10).

    ``max_rows`` reads that many evenly spread rows per tensor instead of all (CI scale). Columns:
    name, source_name, qtype, rows_read, and :meth:`GridStats.summary`'s measurements.
    """
    import time

    import pandas as pd

    from ..progress import progress_bar

    t0 = time.perf_counter()
    entries = quantised_entries(ck)
    rows, pooled = [], {}
    for entry in progress_bar(entries, unit="tensor", desc="grids", enabled=progress):
        stats = tensor_grid(ck, entry, max_rows)
        picked = sample_rows(entry.extra["rows"], max_rows)
        rows.append(
            {
                "name": entry.name,
                "source_name": entry.source_name,
                "rows_read": entry.extra["rows"] if picked is None else int(picked.size),
                **stats.summary(),
            }
        )
        pooled.setdefault(entry.dtype, GridStats(entry.dtype)).merge(stats)
    return GridReport(pd.DataFrame(rows), pooled, max_rows, time.perf_counter() - t0)


def by_type(report: GridReport):
    """One row per type: tensors, and the pooled measurements over all its blocks."""
    import pandas as pd

    if not report.by_type:
        return pd.DataFrame()
    counts = report.table.groupby("qtype")["name"].size()
    out = pd.DataFrame([{**s.summary(), "tensors": int(counts[q])} for q, s in report.by_type.items()])
    order = {q: i for i, q in enumerate(DECODABLE)}
    return out.sort_values("qtype", key=lambda s: s.map(order)).set_index("qtype")


def type_inventory(ck):
    """Stored types of a checkpoint from its header: tensors, parameters, their share, bits per value."""
    import pandas as pd

    rows = {}
    for e in ck.entries:
        r = rows.setdefault(e.dtype, {"type": e.dtype, "tensors": 0, "parameters": 0})
        r["tensors"] += 1
        r["parameters"] += e.numel
    df = pd.DataFrame(list(rows.values()))
    df["tensor_share"] = df["tensors"] / df["tensors"].sum()
    df["parameter_share"] = df["parameters"] / df["parameters"].sum()
    df["bits_per_weight"] = [_bits_or_float(t) for t in df["type"]]
    df["rule"] = [FORMATS.get(t, {}).get("rule", "") for t in df["type"]]
    return df.sort_values("parameters", ascending=False).reset_index(drop=True)


def _bits_or_float(qtype: str) -> float:
    if qtype in DECODABLE:
        return bits_per_weight(qtype)
    return float(FORMATS.get(qtype, {}).get("bits", np.nan))


def type_sentence(row: dict) -> str:
    """What the measured grid of one type says, from a :func:`by_type` row (or a tensor's summary)."""
    import math

    q = row["qtype"]
    info = FORMATS[q]
    lo, hi = info["codes"]
    n_codes, block = hi - lo + 1, row["block"]
    where = f"Over {row['blocks']:,} blocks of {block} values" + (
        f" in {_count(row['tensors'], 'tensor')}" if row.get("tensors") else ""
    )
    if block < n_codes:
        levels = (
            f"{where}, a block can use at most {block} of its {n_codes} codes (one per value) and uses "
            f"{row['levels_mean']:.1f} distinct ones on average ({row['full_share']:.1%} use {block})."
        )
    else:
        levels = (
            f"{where}, a block uses on average {row['levels_mean']:.1f} of its {n_codes} codes "
            f"({row['full_share']:.1%} use all {n_codes})."
        )
    parts = [levels]
    step = f"The step is a median {row['step_rel_median']:.4f} of the block's largest magnitude"
    nominal = info["nominal_step"]
    if nominal:
        step += f" (the rule's 1/{round(1 / nominal)} = {nominal:.4f})"
    elif q in (
        "Q4_1",
        "Q5_1",
    ):  # (max − min)/(n − 1): 1/(n − 1) of |x|max for a one-sided block, 2/(n − 1) for a balanced one
        step += f" (the rule gives between 1/{n_codes - 1} = {1 / (n_codes - 1):.4f} and 2/{n_codes - 1} = {2 / (n_codes - 1):.4f})"
    parts.append(step + ".")
    ext = f"The entry of largest magnitude sits on code {row['absmax_top_code']:+d} in {row['absmax_top_share']:.1%}"
    if row.get("absmax_second_share", 0) >= 0.05:
        ext += f" of blocks and on {row['absmax_second_code']:+d} in {row['absmax_second_share']:.1%}"
    parts.append(ext + " of blocks.")
    if info["zero_on_grid"]:
        parts.append(
            f"0 is a point of every block's grid (code 0), and {row['zero_frac']:.2%} of the values are "
            "exactly 0: the entries that were within half a step of 0."
        )
    else:
        parts.append(
            f"0 is a grid point in only {row['zero_on_grid_share']:.2%} of blocks (the grid point nearest to 0 "
            f"lies a mean {row['zero_gap_mean']:.2f} steps from it; an offset spread evenly over a step gives "
            "0.25), so only "
            f"{row['zero_frac']:.3%} of the values are exactly 0."
        )
        parts.append(
            f"The lowest code ({lo}) is used in {row['low_end_share']:.1%} of blocks, the highest ({hi}) "
            f"in {row['high_end_share']:.1%}."
        )
    top = row.get("super_top_share")
    if top is not None and not math.isnan(top):
        parts.append(
            f"In {top:.1%} of super-blocks the block scale of largest magnitude takes the largest integer "
            f"(|s_j| = {_top_sub_scale(q)}): the fp16 super-block scale is set from it."
        )
    return " ".join(parts)


# ---------------------------------------------------------------------------------------------------
# One block to draw


@dataclass
class TypeExample:
    """One real block of a type, on its grid, and the measurements it comes with."""

    qtype: str
    tensor: str
    source: str  # "stored" or "re-quantised from <type> with gguf"
    row: int
    block_index: int
    values: np.ndarray  # (block,) float32
    codes: np.ndarray  # (block,)
    grid: np.ndarray  # every grid point of the block
    stats: dict  # GridStats.summary() of the type (stored) or of the re-quantised rows
    code_counts: np.ndarray


def precise_matrix(ck):
    """The 2-D weight matrix stored with the most bits per code (largest first on ties): the copy
    closest to the trained values, which chapter 10 re-quantises into types the file does not use."""
    best = None
    for e in ck.entries:
        if len(e.shape) != 2:
            continue
        key = (FORMATS.get(e.dtype, {}).get("bits", 0), e.numel)
        if best is None or key > best[0]:
            best = (key, e)
    return None if best is None else best[1]


def _typical_block(dec: DecodedBlocks) -> int:
    """The block whose largest magnitude is the median one (a typical block, not an outlier)."""
    absmax = np.abs(dec.values()).max(axis=1)
    order = np.argsort(absmax, kind="stable")
    return int(order[order.size // 2])


def type_example(ck, qtype: str, report: GridReport | None = None, rows: int = 64) -> TypeExample | None:
    """A typical block of ``qtype``: from the first tensor stored in it, or else ``rows`` rows of the
    most precise stored matrix re-quantised with gguf (Q8_0, Q5_0, Q5_1, Q4_0, Q4_1 only); None when
    neither is possible (a K type the file does not use)."""
    stored = [e for e in quantised_entries(ck) if e.dtype == qtype]
    if stored:
        entry = stored[0]
        n = entry.extra["rows"]
        start = max(0, n // 2 - rows // 2)
        raw = _reader(ck).read_raw(entry, start, min(n, start + rows))
        source = "stored"
        if report is not None and qtype in report.by_type:
            pooled = report.by_type[qtype]
        else:
            pooled = tensor_grid(ck, entry, max_rows=rows)
    else:
        entry = precise_matrix(ck)
        if qtype not in REQUANTISABLE or entry is None:
            return None
        n = entry.shape[0]
        start = max(0, n // 2 - rows // 2)
        raw = quantise_raw(ck.read_rows(entry, start, min(n, start + rows)), qtype)
        source = f"re-quantised from {entry.dtype} with gguf"
        pooled = GridStats(qtype)
        pooled.add(decode_blocks(raw, qtype))
    dec = decode_blocks(raw, qtype)
    j = _typical_block(dec)
    per_row = dec.codes.shape[0] // raw.shape[0]
    stats = pooled.summary()
    if report is not None and qtype in report.by_type:
        stats["tensors"] = int((report.table["qtype"] == qtype).sum())
    return TypeExample(
        qtype=qtype,
        tensor=entry.name,
        source=source,
        row=start + j // per_row,
        block_index=j % per_row,
        values=dec.values()[j],
        codes=dec.codes[j],
        grid=dec.grid(j),
        stats=stats,
        code_counts=pooled.code_counts,
    )


def example_sentence(ex: TypeExample | None, qtype: str, model: str = "this model") -> str:
    """The lines chapter 10 prints above a type's figure."""
    info = FORMATS[qtype]
    if ex is None:
        return (
            f"{model} stores no {qtype} tensor, and gguf's Python quantiser cannot write {qtype}, so there "
            f"is nothing to measure here. The rule: {info['rule']}."
        )
    where = (
        f"{model} stores {_count(ex.stats.get('tensors', 0), 'tensor')} as {qtype}"
        if ex.source == "stored"
        else f"{model} stores no {qtype} tensor; the rows below are its `{ex.tensor}` {ex.source}"
    )
    lo, hi = info["codes"]
    drawn = (
        f"The figure draws block {ex.block_index} of row {ex.row} of `{ex.tensor}` (a block of median "
        f"largest magnitude): its {ex.values.size} values on its {hi - lo + 1}-point grid, codes "
        f"{int(ex.codes.min()):+d} to {int(ex.codes.max()):+d}; on the right, how often each code is used."
    )
    return (
        f"{where}. Rule: {info['rule']}; {info['extremes']}. Stored cost: {bits_per_weight(qtype):.4g} bits "
        f"per value, scales included. {drawn} {type_sentence(ex.stats)}"
    )


# ---------------------------------------------------------------------------------------------------
# One matrix stored twice


def stored_pair(ck) -> tuple | None:
    """(embedding entry, output entry) when a GGUF stores both as separate quantised matrices of the same
    shape (as the real Qwen2's does although the model ties them); None otherwise."""
    if _reader(ck) is None:
        return None
    by_source = {e.source_name: e for e in ck.entries}
    emb, out = by_source.get("token_embd.weight"), by_source.get("output.weight")
    if emb is None or out is None or emb.shape != out.shape:
        return None
    if emb.dtype not in DECODABLE or out.dtype not in DECODABLE:
        return None
    return emb, out


@dataclass
class TiedReport:
    """Per-row comparison of two stored copies of one matrix and its summary."""

    rows: object  # DataFrame: row, ref_norm, other_norm, rel_diff, cosine, predicted_rel
    summary: dict


def compare_tied(
    ck, max_rows: int | None = None, chunk_rows: int = 4096, progress: bool = True
) -> TiedReport:
    """Compare ``token_embd.weight`` with ``output.weight`` row by row (chapter 10).

    The copy with more bits per value is the reference o, the other e. Per row: ‖e − o‖/‖o‖, the
    cosine, and what uniform rounding predicts, √(Σ_blocks n·(s_e² + s_o²)/12)/‖o‖ with s the blocks'
    steps (each copy's rounding error spread evenly over ±s/2, the two independent). Also: exact zeros
    of each copy and how they overlap, and the error on each block's extreme entry against the rest,
    in steps of e. Streams ``chunk_rows`` rows at a time; ``max_rows`` keeps the first rows only.
    """
    import time

    import pandas as pd

    from ..progress import progress_bar

    pair = stored_pair(ck)
    if pair is None:
        raise UserInputError("this checkpoint does not store token_embd.weight and output.weight apart")
    if chunk_rows < 1:
        raise UserInputError(f"chunk_rows={chunk_rows} must be a positive number of rows")
    a, b = pair
    ref, other = (b, a) if bits_per_weight(b.dtype) >= bits_per_weight(a.dtype) else (a, b)
    g = _reader(ck)
    n = ref.extra["rows"] if max_rows is None else min(max_rows, ref.extra["rows"])
    t0 = time.perf_counter()
    parts = []
    z = dict.fromkeys(("ref_zero", "other_zero", "both_zero", "other_only_zero"), 0)
    ext_err, rest_err = [], []
    for start in progress_bar(range(0, n, chunk_rows), unit="chunk", desc="tied pair", enabled=progress):
        stop = min(n, start + chunk_rows)
        dr = decode_blocks(g.read_raw(ref, start, stop), ref.dtype)
        do = decode_blocks(g.read_raw(other, start, stop), other.dtype)
        o = dr.values().reshape(stop - start, -1)
        e = do.values().reshape(stop - start, -1)
        o64, e64 = o.astype(np.float64), e.astype(np.float64)
        diff2 = ((e64 - o64) ** 2).sum(axis=1)
        no, ne = np.sqrt((o64**2).sum(axis=1)), np.sqrt((e64**2).sum(axis=1))
        var = (dr.block * dr.scale.astype(np.float64) ** 2 / 12).reshape(stop - start, -1).sum(axis=1) + (
            do.block * do.scale.astype(np.float64) ** 2 / 12
        ).reshape(stop - start, -1).sum(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            parts.append(
                pd.DataFrame(
                    {
                        "row": np.arange(start, stop),
                        "ref_norm": no,
                        "other_norm": ne,
                        "rel_diff": np.where(no > 0, np.sqrt(diff2) / no, np.nan),
                        "cosine": np.where((no > 0) & (ne > 0), (o64 * e64).sum(axis=1) / (no * ne), np.nan),
                        "predicted_rel": np.where(no > 0, np.sqrt(var) / no, np.nan),
                    }
                )
            )
        z["ref_zero"] += int((o == 0).sum())
        z["other_zero"] += int((e == 0).sum())
        z["both_zero"] += int(((o == 0) & (e == 0)).sum())
        z["other_only_zero"] += int(((e == 0) & (o != 0)).sum())
        # the extreme entry of each block of e, against the block's other entries, in steps of e
        eb, ob = e.reshape(-1, do.block), o.reshape(-1, do.block)
        step = np.abs(do.scale.astype(np.float64))
        live = step > 0
        at = np.abs(eb).argmax(axis=1)
        err = np.abs(eb.astype(np.float64) - ob) / np.where(live, step, 1)[:, None]
        ext = err[np.arange(err.shape[0]), at]
        ext_err.append(ext[live].astype(np.float32))
        rest_err.append(((err.sum(axis=1) - ext) / (do.block - 1))[live].astype(np.float32))
    rows = pd.concat(parts, ignore_index=True)
    ok = rows["rel_diff"].notna()
    ratio = rows.loc[ok, "rel_diff"] / rows.loc[ok, "predicted_rel"]
    ext_all, rest_all = np.concatenate(ext_err), np.concatenate(rest_err)
    summary = {
        "ref": ref.source_name,
        "ref_type": ref.dtype,
        "other": other.source_name,
        "other_type": other.dtype,
        "rows": int(n),
        "rows_total": int(ref.extra["rows"]),
        "cols": int(ref.numel // ref.extra["rows"]),
        "zero_rows": int((~ok).sum()),
        "rel_diff_median": float(rows.loc[ok, "rel_diff"].median()),
        "rel_diff_p99": float(rows.loc[ok, "rel_diff"].quantile(0.99)),
        "rel_diff_max": float(rows.loc[ok, "rel_diff"].max()),
        "predicted_median": float(rows.loc[ok, "predicted_rel"].median()),
        "ratio_median": float(ratio.median()),
        "ratio_p01": float(ratio.quantile(0.01)),
        "ratio_p99": float(ratio.quantile(0.99)),
        "cosine_median": float(rows.loc[ok, "cosine"].median()),
        "cosine_min": float(rows.loc[ok, "cosine"].min()),
        "norm_spearman": float(rows.loc[ok, ["ref_norm", "rel_diff"]].rank().corr().iloc[0, 1]),
        "extreme_err_median": float(np.median(ext_all)),
        "rest_err_mean": float(rest_all.mean()),
        **{k: v for k, v in z.items()},
        "values": int(n * (ref.numel // ref.extra["rows"])),
        **near_copy_group(g, ref, rows[ok]),
        "seconds": time.perf_counter() - t0,
    }
    return TiedReport(rows, summary)


def near_copy_group(
    g, entry, rows, band: float = 1e-3, min_share: float = 0.005, min_cosine: float = 0.9
) -> dict:
    """The largest group of rows of nearly one norm (within ``band``, relative) that also point one way
    (mean cosine to their mean row ≥ ``min_cosine``) and hold at least ``min_share`` of the rows: near-copies
    of one vector, which share one predicted error and make a spike in chapter 10's histogram. Keys
    ``group_rows`` (0 when there is none), ``group_norm``, ``group_cosine``, ``group_rel_diff``."""
    none = {
        "group_rows": 0,
        "group_norm": float("nan"),
        "group_cosine": float("nan"),
        "group_rel_diff": float("nan"),
    }
    norms = rows["ref_norm"].to_numpy()
    if norms.size < 2 or not (norms > 0).all():
        return none
    logn = np.log(norms)
    edges = np.arange(logn.min(), logn.max() + band, band)
    if edges.size < 2:
        return none
    counts, edges = np.histogram(logn, edges)
    k = int(counts.argmax())
    centre = float(np.median(logn[(logn >= edges[k]) & (logn <= edges[k + 1])]))
    member = np.abs(logn - centre) <= band
    if member.sum() < max(2, min_share * norms.size):
        return none
    picked = np.sort(rows["row"].to_numpy()[member])
    values = decode_blocks(g.read_raw_rows(entry, picked), entry.dtype).values().reshape(picked.size, -1)
    unit = values.astype(np.float64) / np.linalg.norm(values, axis=1, keepdims=True)
    mean = unit.mean(axis=0)
    cosine = float((unit @ (mean / np.linalg.norm(mean))).mean())
    if cosine < min_cosine:
        return none
    return {
        "group_rows": int(picked.size),
        "group_norm": float(np.exp(centre)),
        "group_cosine": cosine,
        "group_rel_diff": float(rows.loc[member, "rel_diff"].median()),
    }


def tied_sentence(s: dict) -> str:
    """Chapter 10's reading of :func:`compare_tied`: one matrix stored twice, or two matrices."""
    same = 0.7 <= s["ratio_median"] <= 1.3 and s["cosine_median"] > 0.99
    scope = (
        f"all {s['rows']:,} rows"
        if s["rows"] == s["rows_total"]
        else f"the first {s['rows']:,} of {s['rows_total']:,} rows"
    )
    head = (
        f"Over {scope}, `{s['other']}` ({s['other_type']}) differs from `{s['ref']}` ({s['ref_type']}) by a "
        f"median relative error ‖e−o‖/‖o‖ of **{s['rel_diff_median']:.2%}** per row (99th percentile "
        f"{s['rel_diff_p99']:.2%}), median cosine {s['cosine_median']:.5f}. Uniform rounding onto the two "
        f"grids predicts a median {s['predicted_median']:.2%}: measured/predicted is {s['ratio_median']:.2f} "
        f"(1st-99th percentile {s['ratio_p01']:.2f}-{s['ratio_p99']:.2f})."
    )
    verdict = (
        " This is what one matrix stored twice looks like: the whole difference is quantisation error, of "
        "the size the two grids' steps predict."
        if same
        else " The difference is not what rounding predicts: the two copies are not one matrix quantised twice."
    )
    zeros = (
        f" {s['other_zero'] / s['values']:.2%} of the {s['other_type']} values are exactly 0 against "
        f"{s['ref_zero'] / s['values']:.2%} of the {s['ref_type']} ones; "
        f"{s['both_zero'] / max(s['ref_zero'], 1):.1%} of the {s['ref_type']} zeros are {s['other_type']} zeros "
        f"too, and {s['other_only_zero'] / max(s['other_zero'], 1):.0%} of the {s['other_type']} zeros are "
        f"small values that the finer grid keeps nonzero."
    )
    kept = s["extreme_err_median"] < 0.5 * s["rest_err_mean"]
    tails = (
        f" The entry of largest magnitude in each {s['other_type']} block is off by a median "
        f"{s['extreme_err_median']:.3f} steps of that block, the other entries by a mean "
        f"{s['rest_err_mean']:.3f} (uniform rounding gives 0.25): "
        + (
            "the rule puts a grid point on each block's extreme."
            if kept
            else "extremes are rounded like the rest."
        )
    )
    rho = s["norm_spearman"]
    norm = (
        f" Rows of smaller norm have the larger relative differences (Spearman ρ = {rho:.2f} between ‖o‖ and "
        "the relative difference)."
        if rho < -0.3
        else f" The relative difference hardly depends on the row's norm (Spearman ρ = {rho:.2f})."
        if abs(rho) <= 0.3
        else f" Rows of larger norm have the larger relative differences (Spearman ρ = {rho:.2f})."
    )
    group = (
        f" The narrow spike in the histogram is {s['group_rows']:,} rows of one norm (≈{s['group_norm']:.3f}) and "
        f"one direction (mean cosine {s['group_cosine']:.3f} to their mean row): near-copies of one vector, "
        f"so they share one step pattern and one error, a relative {s['group_rel_diff']:.2%} (chapter 12 looks "
        "at such rows)."
        if s.get("group_rows", 0)
        else ""
    )
    skipped = (
        f" {s['zero_rows']} rows are all zero in {s['ref_type']} and left out." if s["zero_rows"] else ""
    )
    return head + verdict + zeros + tails + norm + group + skipped


def no_pair_sentence(ck, model: str = "This model") -> str:
    """Why chapter 10 has no second copy of the tied matrix to compare for this checkpoint."""
    names = {e.source_name or e.name: e for e in ck.entries}
    if _reader(ck) is not None:
        emb = names.get("token_embd.weight")
        if emb is not None and "output.weight" not in names:
            return (
                f"{model} stores its embedding once (`token_embd.weight`, {emb.dtype}) and uses it as the LM "
                "head too: there is no second copy whose difference would isolate quantisation error."
            )
        if emb is not None:
            return (
                f"{model} stores `token_embd.weight` ({emb.dtype}) and `output.weight` "
                f"({names['output.weight'].dtype}), but not as two decodable copies of one shape."
            )
        return f"{model} has no `token_embd.weight`: nothing to compare."
    if "lm_head.weight" in names:
        return (
            f"{model} stores an untied LM head, a matrix trained on its own (chapter 12 compares it with the "
            "embedding); no stored copy isolates quantisation error here."
        )
    if getattr(ck, "tied", False):
        return f"{model} stores its embedding once and ties the LM head to it: there is no second copy to compare."
    return f"{model} stores no LM head matrix beside its embedding: there is nothing to compare."


# The types chapter 10 explains one section each (the real Qwen2's four and SmolLM2's Q4_1).
CHAPTER_TYPES = ("Q8_0", "Q5_0", "Q4_1", "Q4_K", "Q6_K")


def other_types(report: GridReport) -> list[str]:
    """Decodable types a checkpoint stores beyond :data:`CHAPTER_TYPES` (shown in a catch-all section)."""
    return [q for q in DECODABLE if q in report.by_type and q not in CHAPTER_TYPES]


def grid_table_sentence(report: GridReport, model: str = "this model") -> str:
    """Chapter 10's summary of :func:`grid_table`: per type, codes used, step and exact zeros."""
    table = by_type(report)
    if table.empty:
        return f"{model} stores no block-quantised tensor."
    scope = (
        "every row" if report.max_rows is None else f"up to {report.max_rows} evenly spread rows per tensor"
    )
    clauses = []
    for q, r in table.iterrows():
        clauses.append(
            f"{q} ({_count(int(r['tensors']), 'tensor')}): {r['levels_mean']:.1f} distinct values per block of "
            f"{int(r['block'])} (at most {int(r['levels_bound'])}), a step of 1/{1 / r['step_rel_median']:.1f} "
            f"of the block's largest magnitude, {r['zero_frac']:.2%} exact zeros"
        )
    text = (
        f"Decoded {int(table['tensors'].sum())} tensors of {model} ({int(table['blocks'].sum()):,} blocks, "
        f"{scope}) in {report.seconds:.1f} s. " + "; ".join(clauses) + "."
    )
    sym = table[[FORMATS[q]["zero_on_grid"] for q in table.index]]
    offset = table[[not FORMATS[q]["zero_on_grid"] for q in table.index]]
    if len(sym) and len(offset):
        if sym["zero_frac"].min() > offset["zero_frac"].max():
            text += (
                " Every symmetric grid holds more exact zeros than any grid with a minimum: it turns the values "
                "within half a step of 0 into 0, while a grid with a minimum rarely has 0 among its points."
            )
        else:
            text += " Here a grid with a minimum holds as many exact zeros as a symmetric one."
    top = report.table.loc[report.table["zero_frac"].idxmax()]
    if top["zero_frac"] > 0:
        text += (
            f" The most exact zeros are in `{top['source_name']}` ({top['qtype']}, {top['zero_frac']:.1%} of its "
            f"values), whose blocks use {top['levels_mean']:.1f} of their {int(top['levels_bound'])} possible "
            f"values on average, against {table.loc[top['qtype'], 'levels_mean']:.1f} over all {top['qtype']} blocks."
        )
    return text
