"""GGUF grids decoded from the stored bytes (chapter 10): codes and scales read by quant.decode_blocks rebuild
gguf's own dequantisation bit for bit, for blocks gguf quantises and for K-type blocks packed here by hand
from llama.cpp's layout; the grid measurements, the tied-pair comparison and their sentences."""

from __future__ import annotations

import numpy as np
import pytest

from qwen_anatomy.errors import UserInputError
from qwen_anatomy.weights import quant

K_TYPES = ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")


def gguf_dequantize(raw: np.ndarray, qtype: str) -> np.ndarray:
    from gguf.constants import GGMLQuantizationType
    from gguf.quants import dequantize

    return np.asarray(dequantize(raw, GGMLQuantizationType[qtype]), dtype=np.float32).reshape(-1)


def bits(x: np.ndarray) -> np.ndarray:
    """float32 as its bit patterns: equality of these is bit-exactness (it tells -0.0 from 0.0)."""
    return np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)


def trained_like(rows: int, cols: int, seed: int) -> np.ndarray:
    """Rows with a heavy tail, a few outliers, exact zeros and one all-zero block: what real weights hold."""
    rng = np.random.default_rng(seed)
    x = rng.standard_t(4, size=(rows, cols)).astype(np.float32) * 0.02
    x[rng.random(x.shape) < 0.02] = 0.0
    x[0, :32] = 0.0
    x[1, 5] = 0.9  # a positive outlier: the signed extreme of its block
    x[2, 7] = -0.9
    return x


# -- types gguf quantises: its bytes, our decoding, its dequantisation ---------------------------------


@pytest.mark.parametrize("qtype", quant.REQUANTISABLE)
def test_decoding_gguf_quantised_blocks_rebuilds_gguf_dequantize_bit_for_bit(qtype):
    x = trained_like(16, 256, seed=1)
    raw = quant.quantise_raw(x, qtype)
    dec = quant.decode_blocks(raw, qtype)
    lo, hi = quant.FORMATS[qtype]["codes"]
    assert dec.codes.shape == (16 * 256 // 32, 32)
    assert dec.codes.min() >= lo and dec.codes.max() <= hi
    assert np.array_equal(bits(dec.values().reshape(-1)), bits(gguf_dequantize(raw, qtype)))
    # the grid of a block holds every value of that block
    for j in (0, 3, 17):
        assert np.isin(dec.values()[j], dec.grid(j)).all()
        assert dec.grid(j).size == hi - lo + 1


def test_each_simple_type_puts_the_extremes_where_its_rule_says():
    x = trained_like(32, 256, seed=2)
    absmax_at = np.abs(x.reshape(-1, 32)).argmax(axis=1)
    live = np.abs(x.reshape(-1, 32)).max(axis=1) > 0
    for qtype, end in (("Q5_0", -16), ("Q4_0", -8)):
        dec = quant.decode_blocks(quant.quantise_raw(x, qtype), qtype)
        # d = x_max/-(2^(b-1)): the signed extreme lands on the unmirrored end, whatever its sign
        assert (dec.codes[np.arange(len(dec.codes)), absmax_at][live] == end).all(), qtype
    dec = quant.decode_blocks(quant.quantise_raw(x, "Q8_0"), "Q8_0")
    assert (np.abs(dec.codes[np.arange(len(dec.codes)), absmax_at][live]) == 127).all()
    assert (dec.codes != -128).all()  # symmetric rounding never writes the lone negative code
    dec = quant.decode_blocks(quant.quantise_raw(x, "Q4_1"), "Q4_1")
    spread = x.reshape(-1, 32).max(axis=1) > x.reshape(-1, 32).min(axis=1)
    assert (dec.codes.min(axis=1)[spread] == 0).all() and (dec.codes.max(axis=1)[spread] == 15).all()
    assert (dec.offset == np.float16(x.reshape(-1, 32).min(axis=1)).astype(np.float32)).all()  # m = fp16(min)


# -- K types: gguf cannot write them, so blocks are packed here from llama.cpp's layout -----------------


def _f16_bytes(v: float) -> list[int]:
    return list(np.array([v], dtype=np.float16).view(np.uint8))


def pack_k(
    qtype: str, codes: np.ndarray, sub: np.ndarray, sub_min: np.ndarray, d: float, dmin: float
) -> bytes:
    """One super-block of ``qtype`` written element by element (codes as decode_blocks reports them)."""
    out = bytearray()
    flat = codes.reshape(-1)  # 256 codes in value order
    if qtype in ("Q4_K", "Q5_K"):
        scales = [0] * 12
        for j in range(4):
            scales[j] = (sub[j] & 63) | ((sub[j + 4] >> 4) << 6)
            scales[j + 4] = (sub_min[j] & 63) | ((sub_min[j + 4] >> 4) << 6)
            scales[j + 8] = (sub[j + 4] & 15) | ((sub_min[j + 4] & 15) << 4)
        out += bytes(_f16_bytes(d) + _f16_bytes(dmin) + scales)
        if qtype == "Q5_K":
            qh = [0] * 32
            for e, c in enumerate(flat):
                qh[e % 32] |= ((int(c) >> 4) & 1) << (e // 32)
            out += bytes(qh)
        qs = [0] * 128
        for e, c in enumerate(flat):  # sub-blocks 2k and 2k+1 share 32 bytes: low and high nibbles
            k, pos, high = e // 64, e % 32, (e // 32) % 2
            qs[k * 32 + pos] |= (int(c) & 15) << (4 * high)
        out += bytes(qs)
    elif qtype == "Q6_K":
        ql, qh = [0] * 128, [0] * 64
        for e, c in enumerate(flat):
            u = int(c) + 32
            g, i = e // 32, e % 32  # 32-value group g
            half, nib, part = g // 4, (g // 2) % 2, g % 2
            ql[half * 64 + part * 32 + i] |= (u & 15) << (4 * nib)
            qh[half * 32 + i] |= (u >> 4) << (2 * (g % 4))
        out += (
            bytes(ql) + bytes(qh) + bytes(np.array(sub, dtype=np.int8).view(np.uint8)) + bytes(_f16_bytes(d))
        )
    elif qtype in ("Q2_K", "Q3_K"):
        low = [0] * 64
        for e, c in enumerate(flat):
            u = int(c) if qtype == "Q2_K" else (int(c) if c >= 0 else int(c) + 4)
            low[(e // 128) * 32 + e % 32] |= (u & 3) << (2 * ((e % 128) // 32))
        if qtype == "Q2_K":
            out += bytes([(int(s) & 15) | ((int(m) & 15) << 4) for s, m in zip(sub, sub_min, strict=True)])
            out += bytes(low) + bytes(_f16_bytes(d) + _f16_bytes(dmin))
        else:
            hmask = [0] * 32
            for e, c in enumerate(flat):
                hmask[e % 32] |= int(c >= 0) << (e // 32)  # a set bit: no -4
            s6 = [int(s) + 32 for s in sub]
            scales = [0] * 12
            for b in range(16):
                scales[b % 8] |= (s6[b] & 15) << (4 * (b // 8))
                scales[8 + b % 4] |= (s6[b] >> 4) << (2 * (b // 4))
            out += bytes(hmask) + bytes(low) + bytes(scales) + bytes(_f16_bytes(d))
    return bytes(out)


def random_k_block(qtype: str, rng):
    info = quant.FORMATS[qtype]
    lo, hi = info["codes"]
    n_sub = 256 // info["block"]
    codes = rng.integers(lo, hi + 1, size=(n_sub, info["block"]))
    codes[0, 0], codes[0, 1] = lo, hi  # both ends present
    sub_range = {"Q4_K": (0, 64), "Q5_K": (0, 64), "Q6_K": (-128, 128), "Q2_K": (0, 16), "Q3_K": (-32, 32)}[
        qtype
    ]
    sub = rng.integers(*sub_range, size=n_sub)
    sub_min = rng.integers(0, 64 if qtype in ("Q4_K", "Q5_K") else 16, size=n_sub)
    return codes, sub, sub_min, float(rng.uniform(1e-4, 1e-2)), float(rng.uniform(1e-4, 1e-2))


@pytest.mark.parametrize("qtype", K_TYPES)
def test_hand_packed_k_blocks_decode_to_their_codes_and_rebuild_gguf_values(qtype):
    rng = np.random.default_rng(3)
    blocks = [random_k_block(qtype, rng) for _ in range(5)]
    raw = np.frombuffer(b"".join(pack_k(qtype, *b) for b in blocks), dtype=np.uint8).reshape(5, -1)
    ref = gguf_dequantize(raw, qtype)
    # the packing is right by gguf's own reading: value = d·s_j·q (− d_min·m_j) in float32
    codes, sub, sub_min, d, dmin = blocks[0]
    d32, dmin32 = np.float32(np.float16(d)), np.float32(np.float16(dmin))
    scale = (d32 * sub.astype(np.float32))[:, None]
    expect = scale * codes.astype(np.float32)
    if quant.FORMATS[qtype]["zero_on_grid"] is False:
        expect = expect - (dmin32 * sub_min.astype(np.float32))[:, None]
    assert np.array_equal(bits(expect.reshape(-1)), bits(ref[:256]))
    dec = quant.decode_blocks(raw, qtype)
    assert np.array_equal(dec.codes, np.concatenate([b[0] for b in blocks]))
    assert np.array_equal(dec.sub_scale, np.concatenate([b[1] for b in blocks]))
    if dec.sub_min is not None:
        assert np.array_equal(dec.sub_min, np.concatenate([b[2] for b in blocks]))
    assert np.array_equal(dec.super_scale, np.float16([b[3] for b in blocks]).astype(np.float32))
    assert np.array_equal(bits(dec.values().reshape(-1)), bits(ref))


def test_decode_refuses_types_without_an_even_grid_and_partial_blocks():
    with pytest.raises(UserInputError, match="IQ4_NL.*decodable types"):
        quant.decode_blocks(np.zeros(18, np.uint8), "IQ4_NL")
    with pytest.raises(ValueError, match="not whole Q8_0 blocks"):
        quant.decode_blocks(np.zeros(35, np.uint8), "Q8_0")
    with pytest.raises(UserInputError, match="cannot write Q4_K"):
        quant.quantise_raw(np.zeros((1, 256), np.float32), "Q4_K")


# -- measurements -------------------------------------------------------------------------------------


def test_grid_stats_count_what_the_codes_say():
    # Q8_0 blocks built from chosen codes: the measurements must read them back
    codes = np.zeros((3, 32), dtype=np.int8)
    codes[0, :4] = [127, -127, 5, 5]  # 4 distinct codes (0, 127, -127, 5); 28 zeros
    codes[1] = np.arange(-16, 16)  # 32 distinct, no zero entry ... except code 0 itself once
    codes[2] = -127  # one level, all on the extreme
    d = np.array([0.01, 0.02, 0.5], dtype=np.float16)
    raw = np.concatenate([d.view(np.uint8).reshape(3, 2), codes.view(np.uint8)], axis=1)
    stats = quant.GridStats("Q8_0")
    stats.add(quant.decode_blocks(raw, "Q8_0"))
    s = stats.summary()
    assert s["blocks"] == 3 and s["values"] == 96
    assert s["levels_mean"] == pytest.approx((4 + 32 + 1) / 3) and s["levels_max"] == 32
    assert s["full_share"] == pytest.approx(1 / 3)  # a block of 32 can use at most 32 distinct codes
    assert s["zero_frac"] == pytest.approx((28 + 1) / 96)
    assert s["zero_on_grid_share"] == 1.0 and s["low_end_share"] == 0.0
    assert s["high_end_share"] == pytest.approx(1 / 3)
    # extremes: block 0 has +127 first (argmax takes the first of a tie), block 1 −16, block 2 −127; ties
    # between codes go to the lower one
    assert (s["absmax_top_code"], s["absmax_second_code"]) == (-127, -16)
    assert s["absmax_top_share"] == s["absmax_second_share"] == pytest.approx(1 / 3)
    steps = sorted([1 / 127, 1 / 16, 1 / 127])
    assert s["step_rel_median"] == pytest.approx(steps[1], rel=1e-6)
    assert quant.distinct_codes(codes.astype(np.int16)).tolist() == [4, 32, 1]


def test_levels_from_codes_match_levels_from_values_and_a_grid_with_a_minimum_rarely_holds_zero():
    x = trained_like(8, 512, seed=4)
    raw = quant.quantise_raw(x, "Q4_1")
    dec = quant.decode_blocks(raw, "Q4_1")
    values = dec.values().reshape(8, 512)
    assert np.array_equal(quant.distinct_codes(dec.codes), quant.levels_per_block(values))
    stats = quant.GridStats("Q4_1")
    stats.add(dec)
    s = stats.summary()
    # the all-zero block is the one whose grid is exactly 0 (d = 0, m = 0)
    assert s["zero_on_grid_share"] < 0.1 and s["zero_frac"] < 0.05
    assert 0.1 < s["zero_gap_mean"] < 0.4  # nearest grid point to 0: about a quarter step on average
    sym = quant.GridStats("Q5_0")
    sym.add(quant.decode_blocks(quant.quantise_raw(x, "Q5_0"), "Q5_0"))
    assert sym.summary()["zero_frac"] > s["zero_frac"]  # a symmetric grid turns near-zeros into zeros


def test_merge_pools_two_halves_into_the_whole():
    x = trained_like(8, 256, seed=5)
    raw = quant.quantise_raw(x, "Q5_0")
    whole, a, b = quant.GridStats("Q5_0"), quant.GridStats("Q5_0"), quant.GridStats("Q5_0")
    whole.add(quant.decode_blocks(raw, "Q5_0"))
    a.add(quant.decode_blocks(raw[:3], "Q5_0"))
    b.add(quant.decode_blocks(raw[3:], "Q5_0"))
    a.merge(b)
    merged, direct = a.summary(), whole.summary()
    assert merged.keys() == direct.keys()
    for key, value in direct.items():  # NaN (no super-blocks in Q5_0) equals NaN here
        assert merged[key] == value or (value != value and merged[key] != merged[key]), key


def test_sample_rows_spreads_rows_and_checks_its_argument():
    assert quant.sample_rows(10, None) is None and quant.sample_rows(10, 10) is None
    picked = quant.sample_rows(1000, 5)
    assert picked.tolist() == [0, 250, 500, 749, 999]
    with pytest.raises(UserInputError, match="grid_rows=0"):
        quant.sample_rows(1000, 0)


# -- a small GGUF that stores one matrix twice ----------------------------------------------------------


def write_pair_gguf(path, emb: np.ndarray, out: np.ndarray, emb_type="Q5_0", out_type="Q8_0", extra=True):
    from gguf import GGUFWriter
    from gguf.constants import GGMLQuantizationType

    writer = GGUFWriter(str(path), arch="qwen2")
    writer.add_block_count(1)
    writer.add_embedding_length(emb.shape[1])
    writer.add_head_count(2)
    writer.add_tensor(
        "token_embd.weight", quant.quantise_raw(emb, emb_type), raw_dtype=GGMLQuantizationType[emb_type]
    )
    if out is not None:
        writer.add_tensor(
            "output.weight", quant.quantise_raw(out, out_type), raw_dtype=GGMLQuantizationType[out_type]
        )
    if extra:
        writer.add_tensor("blk.0.attn_norm.weight", np.ones(emb.shape[1], dtype=np.float32))
        w = trained_like(64, emb.shape[1], seed=9)
        writer.add_tensor(
            "blk.0.attn_q.weight", quant.quantise_raw(w, "Q4_1"), raw_dtype=GGMLQuantizationType.Q4_1
        )
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture()
def pair_file(tmp_path):
    m = trained_like(300, 128, seed=6)
    m[:20] *= 5  # rows of larger norm
    return write_pair_gguf(tmp_path / "pair.gguf", m, m)


def test_raw_rows_are_the_stored_bytes_gguf_dequantises(pair_file):
    from qwen_anatomy.weights.gguf_io import GGUFCheckpoint

    g = GGUFCheckpoint(pair_file)
    e = next(x for x in g.entries if x.source_name == "token_embd.weight")
    raw = g.read_raw(e, 10, 20)
    assert raw.shape == (10, e.extra["row_bytes"])
    assert np.array_equal(gguf_dequantize(raw, "Q5_0"), g.read_rows(e, 10, 20).reshape(-1))
    assert np.array_equal(
        g.read_raw_rows(e, [10, 15, 299]), np.stack([g.read_raw(e, r, r + 1)[0] for r in (10, 15, 299)])
    )
    with pytest.raises(ValueError, match="row indices"):
        g.read_raw_rows(e, [300])


def test_one_matrix_stored_twice_differs_by_what_the_steps_predict(pair_file):
    from qwen_anatomy.weights.checkpoint import open_checkpoint

    ck = open_checkpoint(pair_file)
    emb, out = quant.stored_pair(ck)
    assert (emb.dtype, out.dtype) == ("Q5_0", "Q8_0")
    report = quant.compare_tied(ck, chunk_rows=64, progress=False)
    s = report.summary
    assert (s["ref_type"], s["other_type"], s["rows"]) == ("Q8_0", "Q5_0", 300)
    assert 0.85 < s["ratio_median"] < 1.15 and s["cosine_median"] > 0.99
    assert s["both_zero"] == s["ref_zero"]  # a Q8_0 zero (|x| < d8/2) is a Q5_0 zero (d5 > d8)
    assert s["extreme_err_median"] < 0.05 < 0.2 < s["rest_err_mean"] < 0.3
    assert "one matrix stored twice" in quant.tied_sentence(s)
    # streaming in chunks changes nothing
    again = quant.compare_tied(ck, chunk_rows=300, progress=False)
    assert np.allclose(again.rows["rel_diff"], report.rows["rel_diff"], rtol=1e-12)
    # the row's own numbers: ‖e − o‖/‖o‖ recomputed from the dequantised tensors
    o = ck.read_rows(out, 0, 300).astype(np.float64)
    e = ck.read_rows(emb, 0, 300).astype(np.float64)
    expect = np.linalg.norm(e - o, axis=1) / np.linalg.norm(o, axis=1)
    assert np.allclose(report.rows["rel_diff"], expect, rtol=1e-10)  # both float64 sums of the same values
    first = quant.compare_tied(ck, max_rows=50, progress=False).summary
    assert first["rows"] == 50 and "the first 50 of 300 rows" in quant.tied_sentence(first)


def test_two_different_matrices_are_not_read_as_one(tmp_path):
    from qwen_anatomy.weights.checkpoint import open_checkpoint

    path = write_pair_gguf(
        tmp_path / "two.gguf", trained_like(100, 64, seed=7), trained_like(100, 64, seed=8)
    )
    s = quant.compare_tied(open_checkpoint(path), progress=False).summary
    assert s["ratio_median"] > 3
    assert "not one matrix quantised twice" in quant.tied_sentence(s)


def test_without_a_second_copy_the_chapter_says_why(tmp_path):
    from qwen_anatomy.weights.checkpoint import open_checkpoint

    ck = open_checkpoint(write_pair_gguf(tmp_path / "tied.gguf", trained_like(40, 64, seed=1), None))
    assert quant.stored_pair(ck) is None
    assert "stores its embedding once (`token_embd.weight`, Q5_0)" in quant.no_pair_sentence(ck, "Tiny")
    with pytest.raises(UserInputError, match="does not store token_embd.weight and output.weight apart"):
        quant.compare_tied(ck, progress=False)


def test_grid_table_on_a_small_gguf_rows_and_types(pair_file):
    from qwen_anatomy.weights.checkpoint import open_checkpoint

    ck = open_checkpoint(pair_file)
    full = quant.grid_table(ck, progress=False)
    assert sorted(full.table["qtype"]) == ["Q4_1", "Q5_0", "Q8_0"]  # the F32 norm has no grid
    assert full.table.set_index("source_name").loc["token_embd.weight", "rows_read"] == 300
    sample = quant.grid_table(ck, max_rows=7, progress=False)
    assert set(sample.table["rows_read"]) == {7}
    types = quant.by_type(full)
    assert (
        list(types.index) == ["Q8_0", "Q5_0", "Q4_1"]
        and (types["levels_mean"] <= types["levels_bound"]).all()
    )
    text = quant.grid_table_sentence(full, "Tiny")
    assert "Q5_0 (1 tensor)" in text and "every row" in text
    assert "Every symmetric grid holds more exact zeros" in text
    assert quant.other_types(full) == []
    inv = quant.type_inventory(ck)
    assert inv["tensor_share"].sum() == pytest.approx(1.0) and "F32" in set(inv["type"])
    # each chapter type gets a block: stored ones from the file, Q4_0-like ones re-quantised, K types none
    ex = quant.type_example(ck, "Q5_0", full, rows=8)
    assert ex.source == "stored" and ex.values.size == 32 and np.isin(ex.values, ex.grid).all()
    assert "stores 1 tensor as Q5_0" in quant.example_sentence(ex, "Q5_0", "Tiny")
    ex = quant.type_example(ck, "Q4_0", full, rows=8)
    assert ex.source == "re-quantised from Q8_0 with gguf" and ex.codes.min() >= -8
    assert quant.type_example(ck, "Q6_K", full) is None
    assert "nothing to measure" in quant.example_sentence(None, "Q6_K", "Tiny")


def test_type_sentence_reads_symmetric_and_offset_grids_differently():
    base = {"blocks": 1000, "block": 32, "tensors": 2, "levels_mean": 14.0, "full_share": 0.02,
            "step_rel_median": 0.0625, "absmax_top_code": -16, "absmax_top_share": 1.0,
            "absmax_second_code": -15, "absmax_second_share": 0.0, "zero_frac": 0.07,
            "zero_on_grid_share": 1.0, "zero_gap_mean": 0.0, "low_end_share": 1.0, "high_end_share": 0.2,
            "super_top_share": float("nan")}  # fmt: skip
    sym = quant.type_sentence({**base, "qtype": "Q5_0"})
    assert (
        "0 is a point of every block's grid" in sym and "the rule's 1/16" in sym and "super-block" not in sym
    )
    off = quant.type_sentence({**base, "qtype": "Q4_K", "zero_on_grid_share": 0.001, "super_top_share": 1.0})
    assert "0 is a grid point in only 0.10% of blocks" in off and "(|s_j| = 63)" in off
    q8 = quant.type_sentence({**base, "qtype": "Q8_0", "absmax_second_share": 0.4, "absmax_second_code": 127})
    assert "at most 32 of its 256 codes" in q8 and "and on +127 in 40.0%" in q8


def test_bits_per_weight_counts_the_scales():
    assert quant.bits_per_weight("Q8_0") == 8.5 and quant.bits_per_weight("Q4_K") == 4.5
    assert quant.bits_per_weight("Q6_K") == 6.5625 and quant.bits_per_weight("Q5_0") == 5.5
    with pytest.raises(UserInputError, match="unknown GGUF type 'Q9_9'"):
        quant.bits_per_weight("Q9_9")


# -- the real checkpoints -------------------------------------------------------------------------------


def _open(name):
    from qwen_anatomy.weights.checkpoint import open_checkpoint

    try:
        return open_checkpoint(name)
    except Exception as err:  # built-ins are installed by make test / make book
        pytest.skip(f"built-in {name} not available: {err}")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["qwen2.5-coder-0.5b", "smollm2-135m"])
def test_real_tensors_of_every_type_decode_bit_for_bit(name):
    ck = _open(name)
    seen = {}
    for e in quant.quantised_entries(ck):
        seen.setdefault(e.dtype, []).append(e)
    expected = {"qwen2.5-coder-0.5b": {"Q4_K", "Q5_0", "Q6_K", "Q8_0"}, "smollm2-135m": {"Q4_1", "Q8_0"}}[
        name
    ]
    assert set(seen) == expected
    g = ck._gguf
    for qtype, entries in seen.items():
        for e in (entries[0], entries[-1]):
            n = e.extra["rows"]
            raw = g.read_raw(e, n // 2, min(n, n // 2 + 64))
            dec = quant.decode_blocks(raw, qtype)
            assert np.array_equal(bits(dec.values().reshape(-1)), bits(gguf_dequantize(raw, qtype))), e.name
            lo, hi = quant.FORMATS[qtype]["codes"]
            assert lo <= dec.codes.min() and dec.codes.max() <= hi
            levels = quant.distinct_codes(dec.codes)
            assert levels.max() <= min(dec.block, hi - lo + 1)


@pytest.mark.slow
def test_real_qwen2_grids_follow_their_rules_and_the_tied_pair_is_one_matrix():
    ck = _open("qwen2.5-coder-0.5b")
    report = quant.grid_table(ck, max_rows=64, progress=False)
    types = quant.by_type(report)
    assert types.loc["Q5_0", "absmax_top_code"] == -16 and types.loc["Q5_0", "absmax_top_share"] == 1.0
    assert abs(types.loc["Q8_0", "absmax_top_code"]) == 127
    assert report.by_type["Q8_0"].code_counts[0] == 0  # code −128 never written
    for q in ("Q8_0", "Q5_0", "Q6_K"):
        assert types.loc[q, "step_rel_median"] == pytest.approx(quant.FORMATS[q]["nominal_step"], rel=1e-3)
        assert types.loc[q, "zero_on_grid_share"] == 1.0
    assert types.loc["Q4_K", "zero_on_grid_share"] < 0.01
    tied = quant.compare_tied(ck, max_rows=4096, progress=False).summary
    assert (tied["ref_type"], tied["other_type"]) == ("Q8_0", "Q5_0")
    assert 0.9 < tied["ratio_median"] < 1.1 and tied["both_zero"] == tied["ref_zero"]


def test_verify_decoding_reports_bit_identity_and_catches_a_wrong_decoder(pair_file, monkeypatch):
    from qwen_anatomy.weights.checkpoint import open_checkpoint

    ck = open_checkpoint(pair_file)
    table = quant.verify_decoding(ck, rows=16)
    assert sorted(table["qtype"]) == ["Q4_1", "Q5_0", "Q8_0"] and table["bit_identical"].all()
    assert (table["rows"] == 16).all()
    real = quant.DecodedBlocks.values

    def off_by_one_ulp(self):
        v = real(self)
        return np.nextafter(v, np.float32(np.inf)) if self.qtype == "Q5_0" else v

    monkeypatch.setattr(quant.DecodedBlocks, "values", off_by_one_ulp)
    broken = quant.verify_decoding(ck, rows=16).set_index("qtype")["bit_identical"]
    assert not broken["Q5_0"] and broken["Q8_0"] and broken["Q4_1"]


def test_no_pair_sentence_for_safetensors_checkpoints():
    from types import SimpleNamespace

    from qwen_anatomy.weights.safetensors_io import TensorEntry

    emb = TensorEntry("model.embed_tokens.weight", "BF16", (10, 4), "x")
    head = TensorEntry("lm_head.weight", "BF16", (10, 4), "x")
    untied = SimpleNamespace(entries=[emb, head], tied=False)
    assert "untied LM head" in quant.no_pair_sentence(untied, "M")
    assert "ties the LM head" in quant.no_pair_sentence(SimpleNamespace(entries=[emb], tied=True), "M")
    assert "no LM head matrix" in quant.no_pair_sentence(SimpleNamespace(entries=[emb], tied=False), "M")
    assert quant.stored_pair(untied) is None  # two safetensors matrices are not two stored copies


def test_grid_table_sentence_names_the_tensor_with_most_zeros(pair_file):
    from qwen_anatomy.weights.checkpoint import open_checkpoint

    report = quant.grid_table(open_checkpoint(pair_file), progress=False)
    worst = report.table.loc[report.table["zero_frac"].idxmax()]
    text = quant.grid_table_sentence(report, "Tiny")
    assert f"The most exact zeros are in `{worst['source_name']}` ({worst['qtype']}, " in text
    assert worst["qtype"] in ("Q5_0", "Q8_0")  # a symmetric grid, not Q4_1's


def test_near_copies_of_one_vector_are_found_as_one_group(tmp_path):
    from qwen_anatomy.weights.checkpoint import open_checkpoint

    rng = np.random.default_rng(11)
    m = trained_like(400, 128, seed=12)
    v = rng.standard_normal(128).astype(np.float32) * 0.06  # a norm no ordinary row has
    copies = np.sort(rng.choice(np.arange(3, 400), size=60, replace=False))
    m[copies] = v + rng.standard_normal((60, 128)).astype(np.float32) * 6e-6
    s = quant.compare_tied(
        open_checkpoint(write_pair_gguf(tmp_path / "g.gguf", m, m)), progress=False
    ).summary
    assert s["group_rows"] == 60 and s["group_cosine"] > 0.999
    assert s["group_norm"] == pytest.approx(float(np.linalg.norm(v)), rel=2e-3)
    assert "60 rows of one norm" in quant.tied_sentence(s)
    plain = write_pair_gguf(
        tmp_path / "p.gguf", trained_like(400, 128, seed=13), trained_like(400, 128, seed=13)
    )
    s = quant.compare_tied(open_checkpoint(plain), progress=False).summary
    assert s["group_rows"] == 0 and "narrow spike" not in quant.tied_sentence(s)


def test_show_type_displays_the_computed_sentence_and_draws_the_block_only_when_there_is_one(
    pair_file, monkeypatch
):
    import IPython.display
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from qwen_anatomy.weights import quant_plots
    from qwen_anatomy.weights.checkpoint import open_checkpoint

    ck = open_checkpoint(pair_file)
    grids = quant.grid_table(ck, progress=False)
    shown = []
    monkeypatch.setattr(IPython.display, "display", shown.append)
    fig = quant_plots.show_type(ck, "Q5_0", grids, "Tiny")
    expected = quant.example_sentence(quant.type_example(ck, "Q5_0", grids), "Q5_0", "Tiny")
    assert [m.data for m in shown] == [expected] and fig is not None
    assert quant_plots.show_type(ck, "Q6_K", grids, "Tiny", heading=True) is None  # not stored, a K type
    assert shown[-1].data == "**Q6_K.** " + quant.example_sentence(None, "Q6_K", "Tiny")
    plt.close("all")
