"""Evaluation sets for head importance: synthetic-task files and plain text (chapter 40).

Two formats for ``--data``:
- a synthetic task's own data file (``data.test`` ...): lines ``x1 x2 ... # y1 y2 ...``; each becomes
  ``<bos> x # y <eos>`` in the shared task vocabulary, scored on ``y <eos>`` only (as in training);
- a ``.txt`` file of plain text, one example per non-empty line, tokenised with the model's own
  tokenizer and scored on every next-token prediction (truncated to ``max_tokens``).
"""

from __future__ import annotations

from pathlib import Path

from ..errors import UserInputError
from .core import EvalBatch, make_batch

DATA_HINT = "give a synthetic-task file (lines 'x ... # y ...') or a UTF-8 .txt file of text lines"


def is_task_file(path: Path) -> bool:
    """True when the first non-empty line looks like ``ints # ints`` (UserInputError when the file
    is not UTF-8 text)."""
    from ..iochecks import read_text

    for line in read_text(path, "data file", DATA_HINT).splitlines():
        if line.strip():
            left, sep, right = line.partition(" # ")
            return bool(sep) and all(_is_int(t) for t in (left + " " + right).split())
    return False


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


def task_batch(path: str | Path, max_examples: int | None = None) -> EvalBatch:
    """The first ``max_examples`` lines of a task file as ``<bos> x # y <eos>`` scored on the output."""
    from ..tasks.data import decoder_example
    from ..tasks.generators import read_task_file
    from ..tasks.vocab import PAD_ID

    xs, ys = read_task_file(path, max_examples)
    seqs, starts = [], []
    for x, y in zip(xs, ys, strict=True):
        ex = decoder_example(x, y)
        seqs.append(ex["input_ids"])
        starts.append(next(i for i, lab in enumerate(ex["labels"]) if lab != -100))
    return make_batch(seqs, starts, pad_id=PAD_ID)


def text_batch(texts: list[str], tokenizer, max_tokens: int = 64, min_tokens: int = 8) -> EvalBatch:
    """Texts tokenised (with the tokenizer's BOS when it adds one), truncated to ``max_tokens``;
    texts shorter than ``min_tokens`` are skipped. Scored on every next-token prediction."""
    seqs = []
    for text in texts:
        ids = tokenizer.encode(text, add_special_tokens=True)[:max_tokens]
        if len(ids) >= min_tokens:
            seqs.append(ids)
    if not seqs:
        raise UserInputError(f"no text example has at least {min_tokens} tokens")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return make_batch(seqs, [1] * len(seqs), pad_id=pad)


def load_eval_data(
    path: str | Path, tokenizer=None, max_examples: int | None = None, max_tokens: int = 64
) -> tuple[EvalBatch, str]:
    """(batch, kind) for a task file (kind "task") or a text file (kind "text")."""
    from ..iochecks import read_text

    path = Path(path)
    text = read_text(path, "data file", DATA_HINT)
    if not text.strip():
        raise UserInputError(f"data file {path} is empty: {DATA_HINT}")
    if is_task_file(path):
        return task_batch(path, max_examples), "task"
    if tokenizer is None:
        raise UserInputError(
            f"{path} is text, but the model has no tokenizer.json to tokenise it: use a task file "
            "('x ... # y ...' lines) or a model directory with a tokenizer"
        )
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if max_examples is not None:
        lines = lines[:max_examples]
    return text_batch(lines, tokenizer, max_tokens, min_tokens=2), "text"


def stdlib_texts(n: int, seed: int = 0, min_chars: int = 400) -> list[str]:
    """``n`` docstrings of Python standard-library modules (real English installed offline),
    in a fixed shuffled order."""
    import random

    from ..corpus import stdlib_docstrings

    docs = [d for _, d in stdlib_docstrings(min_chars)]
    random.Random(seed).shuffle(docs)
    return [" ".join(d.split()) for d in docs[:n]]
