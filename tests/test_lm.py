"""Language-model basics (qwen_anatomy.lm, chapter 01): losses per token and per byte on the same text."""

from __future__ import annotations

import math

import pytest

from qwen_anatomy import lm


class CharTokenizer:
    """One token per character (ids are code points), or per pair of characters with ``pairs=True``."""

    def __init__(self, pairs: bool = False) -> None:
        self.pairs = pairs

    def encode(self, text: str) -> list[int]:
        if not self.pairs:
            return [ord(c) for c in text]
        return [
            ord(text[i]) * 0x110000 + (ord(text[i + 1]) if i + 1 < len(text) else 0)
            for i in range(0, len(text), 2)
        ]

    def decode(self, ids) -> str:
        if not self.pairs:
            return "".join(map(chr, ids))
        return "".join(chr(i // 0x110000) + (chr(i % 0x110000) if i % 0x110000 else "") for i in ids)


def test_predicted_bytes_counts_all_but_the_first_token_of_each_window():
    tok = CharTokenizer()
    ids = tok.encode("abcdefg")
    assert lm.predicted_bytes(tok, ids, window=3) == 7 - 3  # windows abc, def, g: a, d, g unpredicted
    assert lm.predicted_bytes(tok, ids, window=100) == 6
    assert lm.predicted_bytes(tok, tok.encode("é€x"), window=100) == 3 + 1  # UTF-8 bytes, not characters


def test_bits_per_byte_agrees_across_tokenizers_where_bits_per_token_does_not():
    """Two tokenizers of one text, a model spending the same bits per character: the per-token losses
    differ by the token length, the per-byte losses agree."""
    text = "abcdefghijklmnop"  # ASCII: one byte per character
    results = {}
    for name, tok in {"chars": CharTokenizer(), "pairs": CharTokenizer(pairs=True)}.items():
        ids = tok.encode(text)
        n_bytes = lm.predicted_bytes(tok, ids, window=len(ids))
        nll = 2.0 * math.log(2) * n_bytes  # 2 bits per predicted byte
        results[name] = (nll / (len(ids) - 1) / math.log(2), lm.bits_per_byte(nll, n_bytes))
    assert results["chars"][1] == pytest.approx(2.0) and results["pairs"][1] == pytest.approx(2.0)
    assert results["pairs"][0] == pytest.approx(2 * results["chars"][0])
    with pytest.raises(ValueError, match="positive"):
        lm.bits_per_byte(1.0, 0)
