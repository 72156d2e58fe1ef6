"""One integer vocabulary shared by every task (chapter 30_synthetic_tasks).

One token per integer, no digit splitting. Ids 0-4 are the special tokens ``<pad> <bos> <eos>
<unk> #``; integer k has id ``k - INT_MIN + 5`` for INT_MIN <= k <= INT_MAX. The range covers the
inputs and outputs of every task at every supported length with the default value range (ReLU
outputs reach at most 9n, so n <= 42), so a model trained on one task can be fine-tuned on another
without changing its vocabulary. The tokenizer is built with the ``tokenizers`` library (WordLevel
over whitespace-split words) and saved beside every checkpoint.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from ..errors import UserInputError

PAD, BOS, EOS, UNK, SEP = "<pad>", "<bos>", "<eos>", "<unk>", "#"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK, SEP)
PAD_ID, BOS_ID, EOS_ID, UNK_ID, SEP_ID = range(5)
INT_MIN, INT_MAX = -128, 383
VOCAB_SIZE = len(SPECIAL_TOKENS) + INT_MAX - INT_MIN + 1  # 517


def int_to_id(k: int) -> int:
    """Token id of integer ``k`` (UserInputError outside [INT_MIN, INT_MAX])."""
    if not INT_MIN <= k <= INT_MAX:
        raise UserInputError(
            f"integer {k} is outside the shared task vocabulary [{INT_MIN}, {INT_MAX}]: "
            "use a smaller value range or sequence length"
        )
    return k - INT_MIN + len(SPECIAL_TOKENS)


def id_to_int(i: int) -> int | None:
    """Integer of a token id, None for a special token."""
    if i < len(SPECIAL_TOKENS) or i >= VOCAB_SIZE:
        return None
    return i - len(SPECIAL_TOKENS) + INT_MIN


def vocabulary() -> dict[str, int]:
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for k in range(INT_MIN, INT_MAX + 1):
        vocab[str(k)] = int_to_id(k)
    return vocab


def build_tokenizer():
    """The ``tokenizers.Tokenizer`` (WordLevel, whitespace split; one token per integer)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel(vocab=vocabulary(), unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with single spaces
    tok.add_special_tokens([PAD, BOS, EOS, UNK])
    return tok


TOKENIZER_CONFIG = {
    "tokenizer_class": "PreTrainedTokenizerFast",
    "bos_token": BOS,
    "eos_token": EOS,
    "pad_token": PAD,
    "unk_token": UNK,
    "sep_token": SEP,
    "add_bos_token": False,
    "model_max_length": 1024,
    "padding_side": "left",
}


def save_tokenizer(out_dir: str | Path) -> Path:
    """Write ``tokenizer.json`` and ``tokenizer_config.json`` into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    build_tokenizer().save(str(out_dir / "tokenizer.json"))
    (out_dir / "tokenizer_config.json").write_text(json.dumps(TOKENIZER_CONFIG, indent=2) + "\n")
    (out_dir / "special_tokens_map.json").write_text(
        json.dumps(
            {k: TOKENIZER_CONFIG[k] for k in ("bos_token", "eos_token", "pad_token", "unk_token")}, indent=2
        )
        + "\n"
    )
    return out_dir


def encode_ints(values: Sequence[int]) -> list[int]:
    return [int_to_id(int(v)) for v in values]


def check_range(rows: Sequence[Sequence[int]], where: str) -> None:
    """UserInputError naming the first integer the vocabulary cannot represent."""
    lo = min(min(r) for r in rows)
    hi = max(max(r) for r in rows)
    for k in (lo, hi):
        if not INT_MIN <= k <= INT_MAX:
            raise UserInputError(
                f"{where} holds the integer {k}, outside the shared task vocabulary "
                f"[{INT_MIN}, {INT_MAX}]: use a smaller value range or sequence length"
            )
