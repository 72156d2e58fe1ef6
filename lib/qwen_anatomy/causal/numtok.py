"""A number-aware tokenizer wrapper: every number becomes one ``<NUM>`` token (chapter 50_causal_heads).

A number is a signed integer or decimal not glued to letters, digits or underscores ("12", "-3.5",
"0.25"; not the "2" of "mp3" or "x_2"). Each is replaced by the ``<NUM>`` token and its value is
returned beside the ids in ``numerical_values`` (0 at every other position). The text between
numbers is encoded by the wrapped tokenizer, piece by piece, so text without numbers encodes exactly
as before.

Works over :class:`qwen_anatomy.tokenizer.Tokenizer` (e.g. SmolLM2's) or any ``tokenizers.Tokenizer``.
The wrapped tokenizer is copied, never changed. When it lacks ``<NUM>``: a tokenizer with unused rows
(Qwen2.5's GGUF names ids 151665 .. 151935 ``[PAD<id>]``) gives the first of them to ``<NUM>``, as the
seed's design does (id 151665, no new row); otherwise the copy gains ``<NUM>`` as a new id
(``num_token_id == base vocabulary size``; the model then needs one new embedding row, as SmolLM2 does).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from tokenizers import AddedToken
from tokenizers import Tokenizer as HFTokenizer

NUM_TOKEN = "<NUM>"
# sign only when the minus is not itself glued to a word ("a-5" keeps "-" as text and reads 5)
NUMBER_RE = re.compile(r"(?<![A-Za-z0-9_.\-])-?\d+(?:\.\d+)?(?![A-Za-z0-9_]|\.\d)")


@dataclass
class Encoding:
    """One encoded text: ids, mask, values (0 except at ``<NUM>``) and the numbers' source strings."""

    input_ids: list[int]
    attention_mask: list[int]
    numerical_values: list[float]
    number_strings: list[str] = field(default_factory=list)


def find_numbers(text: str) -> list[re.Match]:
    """The numbers the wrapper replaces (see the module docstring for the rule)."""
    return list(NUMBER_RE.finditer(text))


def format_number(value: float) -> str:
    """Shortest decimal text for a value (integers without a point; at most 6 decimals)."""
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


# llama.cpp names the embedding rows that have no token "[PAD<id>]" (Qwen2.5: ids 151665 .. 151935)
RESERVED_RE = re.compile(r"^\[PAD(\d+)\]$")


def first_reserved_id(tok: HFTokenizer) -> int | None:
    """The smallest id whose token is an unused-row placeholder ``[PAD<id>]``, or None."""
    ids = [
        i
        for token, i in tok.get_vocab(with_added_tokens=True).items()
        if (m := RESERVED_RE.match(token)) and int(m.group(1)) == i
    ]
    return min(ids) if ids else None


class NumberTokenizer:
    """``encode(text) -> Encoding``, ``decode(ids, values) -> text``, batching with padding."""

    def __init__(self, base, num_token: str = NUM_TOKEN, use_reserved: bool = True) -> None:
        inner = getattr(base, "_tok", base)  # qwen_anatomy Tokenizer wraps a tokenizers.Tokenizer
        if not isinstance(inner, HFTokenizer):
            raise TypeError(
                f"NumberTokenizer wraps a qwen_anatomy Tokenizer or a tokenizers.Tokenizer, not {type(base).__name__}"
            )
        self._tok = HFTokenizer.from_str(inner.to_str())  # a private copy: the base stays untouched
        self.base_vocab_size = inner.get_vocab_size(with_added_tokens=True)
        self.num_token = num_token
        existing = self._tok.token_to_id(num_token)
        reserved = first_reserved_id(self._tok) if existing is None and use_reserved else None
        if reserved is not None:  # Qwen2.5: the first unused row is <NUM> (the seed's design)
            existing = reserved
            self.num_token = self._tok.id_to_token(reserved)
        elif existing is None:
            self._tok.add_special_tokens([AddedToken(num_token, special=True, normalized=False)])
        self.num_token_id: int = existing if existing is not None else self._tok.token_to_id(num_token)
        self.added_num_row = existing is None
        eos = getattr(base, "eos_token_id", None)
        self.eos_token_id = eos
        pad = getattr(base, "pad_token_id", None)
        self.pad_token_id = pad if pad is not None else (eos if eos is not None else 0)

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def _encode_text(self, text: str) -> list[int]:
        if not text:
            return []
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode(self, text: str) -> Encoding:
        ids: list[int] = []
        values: list[float] = []
        strings: list[str] = []
        pos = 0
        for match in find_numbers(text):
            piece = self._encode_text(text[pos : match.start()])
            ids += piece
            values += [0.0] * len(piece)
            ids.append(self.num_token_id)
            values.append(float(match.group()))
            strings.append(match.group())
            pos = match.end()
        piece = self._encode_text(text[pos:])
        ids += piece
        values += [0.0] * len(piece)
        return Encoding(ids, [1] * len(ids), values, strings)

    def decode(self, ids, values=None, number_strings=None) -> str:
        """Text for ids; each ``<NUM>`` is written as its value (or its original string if given)."""
        ids = [int(i) for i in ids]
        values = [0.0] * len(ids) if values is None else [float(v) for v in values]
        out: list[str] = []
        run: list[int] = []
        n_num = 0
        for i, v in zip(ids, values, strict=True):
            if i == self.num_token_id:
                if run:
                    out.append(self._tok.decode(run, skip_special_tokens=False))
                    run = []
                if number_strings is not None and n_num < len(number_strings):
                    out.append(number_strings[n_num])
                else:
                    out.append(format_number(v))
                n_num += 1
            else:
                run.append(i)
        if run:
            out.append(self._tok.decode(run, skip_special_tokens=False))
        return "".join(out)

    def batch(self, texts: list[str], max_length: int | None = None, pad_side: str = "right"):
        """Tensors ``input_ids``, ``attention_mask`` [B, T] (long) and ``numerical_values`` [B, T]."""
        import torch

        encs = [self.encode(t) for t in texts]
        if max_length is not None:
            encs = [
                Encoding(
                    e.input_ids[:max_length], e.attention_mask[:max_length], e.numerical_values[:max_length]
                )
                for e in encs
            ]
        width = max(len(e.input_ids) for e in encs)
        ids = torch.full((len(encs), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(encs), width), dtype=torch.long)
        vals = torch.zeros((len(encs), width), dtype=torch.float32)
        for row, e in enumerate(encs):
            n = len(e.input_ids)
            sl = slice(0, n) if pad_side == "right" else slice(width - n, width)
            ids[row, sl] = torch.tensor(e.input_ids, dtype=torch.long)
            mask[row, sl] = 1
            vals[row, sl] = torch.tensor(e.numerical_values, dtype=torch.float32)
        return {"input_ids": ids, "attention_mask": mask, "numerical_values": vals}
