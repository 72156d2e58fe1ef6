"""Number-aware tokenizer wrapper (chapter 50)."""

from __future__ import annotations

from pathlib import Path

import pytest
from tokenizers import Tokenizer as HFTokenizer

from qwen_anatomy.causal.numtok import NumberTokenizer, find_numbers

ROOT = Path(__file__).resolve().parents[1]
TINY_TOKENIZER = ROOT / "data" / "models" / "causal-tiny-lm" / "tokenizer.json"

ROUND_TRIP = [
    "The price is 12 dollars.",
    "It was -3.25 degrees and then 0.5 more, a drop of -7.",
    "value: 99.99",
    "Answer: 0",
    "from 1000 to 20.75, then -0.01",
]
IN_WORDS = ["mp3 player", "x_2 and a1b", "the 2nd item", "version v1.2", "AB12 CD"]


def _tokenizers():
    yield "project", NumberTokenizer(HFTokenizer.from_file(str(TINY_TOKENIZER)))


@pytest.mark.parametrize("text", ROUND_TRIP)
def test_round_trip_numbers_project_tokenizer(text):
    nt = NumberTokenizer(HFTokenizer.from_file(str(TINY_TOKENIZER)))
    enc = nt.encode(text)
    assert enc.input_ids.count(nt.num_token_id) == len(find_numbers(text)) >= 1
    assert nt.decode(enc.input_ids, enc.numerical_values) == text
    numbers = [v for i, v in zip(enc.input_ids, enc.numerical_values, strict=True) if i == nt.num_token_id]
    assert numbers == [float(s) for s in enc.number_strings]
    assert all(
        v == 0.0 for i, v in zip(enc.input_ids, enc.numerical_values, strict=True) if i != nt.num_token_id
    )


def test_values_signs_and_decimals():
    nt = NumberTokenizer(HFTokenizer.from_file(str(TINY_TOKENIZER)))
    enc = nt.encode("a -3.25 b 42 c 0.5 d -7.")
    assert [v for v in enc.numerical_values if v != 0] == [-3.25, 42.0, 0.5, -7.0]


@pytest.mark.parametrize("text", IN_WORDS)
def test_numbers_inside_words_are_left_alone(text):
    base = HFTokenizer.from_file(str(TINY_TOKENIZER))
    nt = NumberTokenizer(base)
    enc = nt.encode(text)
    assert nt.num_token_id not in enc.input_ids
    assert enc.input_ids == base.encode(text, add_special_tokens=False).ids
    assert nt.decode(enc.input_ids) == text


def test_project_tokenizer_has_spare_num_row_and_base_is_not_mutated():
    base = HFTokenizer.from_file(str(TINY_TOKENIZER))
    size = base.get_vocab_size(with_added_tokens=True)
    nt = NumberTokenizer(base)
    assert not nt.added_num_row and nt.num_token_id < size  # reserved at training time
    base2 = HFTokenizer.from_file(str(TINY_TOKENIZER))
    base2.add_special_tokens(["<X>"])
    other = NumberTokenizer(base2, num_token="<VALUE>")
    assert other.added_num_row and other.num_token_id == size + 1
    assert base2.token_to_id("<VALUE>") is None  # the wrapper copied, never changed, its base


def test_batch_pads_and_carries_values():
    nt = NumberTokenizer(HFTokenizer.from_file(str(TINY_TOKENIZER)))
    b = nt.batch(["value: 5", "The price of the apple is 12.5 dollars."])
    assert b["input_ids"].shape == b["numerical_values"].shape == b["attention_mask"].shape
    assert int(b["attention_mask"][0].sum()) < int(b["attention_mask"][1].sum())
    assert sorted(v for v in b["numerical_values"].flatten().tolist() if v) == [5.0, 12.5]


@pytest.mark.slow
def test_smollm2_tokenizer_round_trip_and_new_row():
    from qwen_anatomy.loading import resolve_model
    from qwen_anatomy.tokenizer import Tokenizer

    tok = Tokenizer(resolve_model("smollm2-135m"))
    nt = NumberTokenizer(tok)
    assert nt.added_num_row and nt.num_token_id == tok.vocab_size == 49152
    for text in ROUND_TRIP:
        enc = nt.encode(text)
        assert nt.decode(enc.input_ids, enc.numerical_values) == text
    for text in IN_WORDS + ["Text with no numbers at all."]:
        assert nt.encode(text).input_ids == tok.encode(text)
    assert tok.token_to_id("<NUM>") is None


def _with_placeholders(*names):
    """A word-level tokenizer whose last ids are llama.cpp placeholders for unused rows."""
    from tokenizers import models, pre_tokenizers

    vocab = {w: i for i, w in enumerate(["<unk>", "price", "is", "dollars", ".", *names])}
    tok = HFTokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return tok


def test_first_unused_row_becomes_num():
    """The seed's design for Qwen2.5: <NUM> is the first [PAD<id>] row, no new row; a name that does
    not match its own id is not a placeholder."""
    nt = NumberTokenizer(_with_placeholders("[PAD9]", "[PAD6]", "[PAD7]"))  # ids 5, 6, 7
    assert (nt.num_token_id, nt.num_token, nt.added_num_row, nt.vocab_size) == (6, "[PAD6]", False, 8)
    enc = nt.encode("price is 12.5 dollars .")
    assert enc.input_ids == [1, 2, 6, 3, 4] and enc.numerical_values[2] == 12.5
    assert "12.5" in nt.decode(enc.input_ids, enc.numerical_values)  # the placeholder decodes as its value
    assert NumberTokenizer(_with_placeholders("[PAD5]")).num_token_id == 5
    kept = NumberTokenizer(_with_placeholders("[PAD5]"), use_reserved=False)
    assert kept.added_num_row and kept.num_token_id == 6
    none = NumberTokenizer(_with_placeholders("[PAD9]"))  # id 5 named 9: not an unused-row placeholder
    assert none.added_num_row and none.num_token_id == 6


@pytest.mark.slow
def test_qwen25_uses_reserved_row_151665():
    from qwen_anatomy.loading import resolve_model
    from qwen_anatomy.tokenizer import Tokenizer

    tok = Tokenizer(resolve_model("qwen2.5-coder-0.5b"))
    nt = NumberTokenizer(tok)
    assert (nt.num_token_id, nt.added_num_row, nt.vocab_size) == (151665, False, 151936)
    for text in ROUND_TRIP:
        enc = nt.encode(text)
        assert nt.decode(enc.input_ids, enc.numerical_values) == text
