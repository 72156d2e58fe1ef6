"""Evaluation sets for head importance: synthetic-task files and plain text (chapter 40).

Two formats for ``--data``:
- a synthetic task's own data file (``data.test`` ...): lines ``x1 x2 ... # y1 y2 ...``; each becomes
  ``<bos> x # y <eos>`` in the shared task vocabulary, scored on ``y <eos>`` only (as in training);
- a ``.txt`` file of plain text, one example per non-empty line, tokenised with the model's own
  tokenizer and scored on every next-token prediction (truncated to ``max_tokens``).

Either way the examples are the file's non-blank lines, numbered 0, 1, ... (the *pool*). The
evaluation set is the first N of them, or a seeded random subset (the original experiment drew 1,024
examples with seed 999): :func:`draw_subset` draws it, :func:`subset_record` describes it (seed, pool
size, the data file's SHA-256 and the sorted indices) for ``subset_indices.json``, and
:func:`read_subset_file` reads such a file back, so the same subset can be evaluated again exactly.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..errors import UserInputError
from .core import EvalBatch, make_batch

SUBSET_FILE = "subset_indices.json"

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


def task_batch(
    path: str | Path, max_examples: int | None = None, indices: Sequence[int] | None = None
) -> EvalBatch:
    """The first ``max_examples`` lines of a task file (or the lines ``indices``, counted among its
    non-blank lines) as ``<bos> x # y <eos>`` scored on the output."""
    from ..tasks.data import decoder_example
    from ..tasks.generators import read_task_file
    from ..tasks.vocab import PAD_ID

    xs, ys = read_task_file(path, None if indices is not None else max_examples)
    source = list(range(len(xs))) if indices is None else [int(i) for i in indices]
    seqs, starts = [], []
    for i in source:
        ex = decoder_example(xs[i], ys[i])
        seqs.append(ex["input_ids"])
        starts.append(next(i for i, lab in enumerate(ex["labels"]) if lab != -100))
    batch = make_batch(seqs, starts, pad_id=PAD_ID)
    batch.source = torch.as_tensor(source, dtype=torch.long)
    return batch


def text_batch(texts: list[str], tokenizer, max_tokens: int = 64, min_tokens: int = 8) -> EvalBatch:
    """Texts tokenised (with the tokenizer's BOS when it adds one), truncated to ``max_tokens``;
    texts shorter than ``min_tokens`` are skipped (``source`` says which were kept). Scored on every
    next-token prediction."""
    seqs, kept = [], []
    for i, text in enumerate(texts):
        ids = tokenizer.encode(text, add_special_tokens=True)[:max_tokens]
        if len(ids) >= min_tokens:
            seqs.append(ids)
            kept.append(i)
    if not seqs:
        raise UserInputError(f"no text example has at least {min_tokens} tokens")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    batch = make_batch(seqs, [1] * len(seqs), pad_id=pad)
    batch.source = torch.as_tensor(kept, dtype=torch.long)
    return batch


def example_lines(path: str | Path) -> list[str]:
    """The non-blank lines of a data file (stripped): the pool examples are numbered in."""
    from ..iochecks import read_text

    return [line.strip() for line in read_text(path, "data file", DATA_HINT).splitlines() if line.strip()]


def load_eval_data(
    path: str | Path,
    tokenizer=None,
    max_examples: int | None = None,
    max_tokens: int = 64,
    indices: Sequence[int] | None = None,
) -> tuple[EvalBatch, str]:
    """(batch, kind) for a task file (kind "task") or a text file (kind "text").

    The examples are the first ``max_examples`` non-blank lines, or, given ``indices`` (from
    :func:`draw_subset` or :func:`read_subset_file`), exactly those lines. ``batch.source`` holds
    each row's line index (a text line of fewer than 2 tokens is skipped, so it can be shorter).
    """
    from ..iochecks import read_text

    path = Path(path)
    text = read_text(path, "data file", DATA_HINT)
    if not text.strip():
        raise UserInputError(f"data file {path} is empty: {DATA_HINT}")
    if is_task_file(path):
        return task_batch(path, max_examples, indices), "task"
    if tokenizer is None:
        raise UserInputError(
            f"{path} is text, but the model has no tokenizer.json to tokenise it: use a task file "
            "('x ... # y ...' lines) or a model directory with a tokenizer"
        )
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if indices is not None:
        source = [int(i) for i in indices]
    else:
        source = list(range(len(lines) if max_examples is None else min(len(lines), max_examples)))
    batch = text_batch([lines[i] for i in source], tokenizer, max_tokens, min_tokens=2)
    batch.source = torch.as_tensor(source, dtype=torch.long)[batch.source]
    return batch, "text"


# -- seeded evaluation subsets ------------------------------------------------------------------------
def pool_size(path: str | Path) -> int:
    """How many examples a data file holds (its non-blank lines)."""
    return len(example_lines(path))


def data_sha256(path: str | Path) -> str:
    """SHA-256 of a data file's bytes (a subset file names the exact data it was drawn from)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def draw_subset(pool: int, size: int, seed: int) -> np.ndarray:
    """``size`` distinct example indices out of ``pool``, drawn with ``seed``, sorted ascending.

    numpy's PCG64 generator (``np.random.default_rng(seed).choice(pool, size, replace=False)``): the
    same (pool, size, seed) always gives the same subset. UserInputError for a seed outside
    0..2**32-1 or a size outside 1..pool, before any work.
    """
    from ..validate import SEED_MAX

    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or not 0 <= seed <= SEED_MAX:
        raise UserInputError(f"--subset-seed {seed!r}: a seed is an integer in 0..{SEED_MAX}")
    if isinstance(size, bool) or not isinstance(size, int | np.integer) or not 1 <= size <= pool:
        raise UserInputError(
            f"--max-examples {size!r}: a subset is drawn without repetition from the data file's "
            f"{pool} examples (non-blank lines); ask for 1..{pool}"
        )
    rng = np.random.default_rng(int(seed))
    return np.sort(rng.choice(pool, size=int(size), replace=False))


def subset_record(
    indices, pool: int, seed: int | None, data_path: str | Path, evaluated: Sequence[int] | None = None
) -> dict:
    """The content of ``subset_indices.json``: which examples of which file were evaluated.

    ``seed`` None means the first ``len(indices)`` examples (no random draw). ``evaluated`` (the
    batch's ``source``) lists the examples actually scored: a text line of fewer than 2 tokens is
    skipped, and ``skipped`` names it (the same lines are skipped when the file is used again).
    """
    kept = set(int(i) for i in (indices if evaluated is None else evaluated))
    return {
        "seed": None if seed is None else int(seed),
        "method": "first examples"
        if seed is None
        else "numpy default_rng(seed).choice(pool, size, replace=False)",
        "pool_size": int(pool),
        "size": len(indices),
        "data": str(data_path),
        "data_sha256": data_sha256(data_path),
        "indices": [int(i) for i in indices],
        "skipped": [int(i) for i in indices if int(i) not in kept],
    }


def read_subset_file(path: str | Path, data_path: str | Path) -> dict:
    """A ``subset_indices.json`` checked against the data file it is used with.

    UserInputError (one line, naming the file and the fix) when it is not such a file, when the
    data file holds a different number of examples or different bytes than the one it was drawn
    from, or when an index is repeated or out of range.
    """
    from ..iochecks import read_json

    where = f"--subset-file {path}"
    rec = read_json(path, "--subset-file")
    indices = rec.get("indices") if isinstance(rec, dict) else None
    recorded_pool = rec.get("pool_size") if isinstance(rec, dict) else None
    if (
        not isinstance(indices, list)
        or not indices
        or not all(isinstance(i, int) and not isinstance(i, bool) for i in indices)
        or not isinstance(recorded_pool, int)
    ):
        raise UserInputError(
            f"{where} is not a subset file (it needs 'indices', a non-empty list of integers, and "
            f"'pool_size'); give a {SUBSET_FILE} written by `qwen-anatomy heads`"
        )
    pool = pool_size(data_path)
    if recorded_pool != pool:
        raise UserInputError(
            f"{where} was drawn from {recorded_pool} examples but {data_path} holds {pool}: use it with the "
            f"data file it names ({rec.get('data')})"
        )
    sha = rec.get("data_sha256")
    if sha is not None and sha != data_sha256(data_path):
        raise UserInputError(
            f"{where} was drawn from a data file with other contents than {data_path} (SHA-256 differs): "
            f"use it with the data file it names ({rec.get('data')})"
        )
    bad = [i for i in indices if not 0 <= i < pool]
    if bad:
        raise UserInputError(f"{where}: index {bad[0]} is outside 0..{pool - 1} (the data file's examples)")
    if len(set(indices)) != len(indices):
        raise UserInputError(f"{where} repeats an index; a subset lists each example once")
    return rec


def stdlib_texts(n: int, seed: int = 0, min_chars: int = 400) -> list[str]:
    """``n`` docstrings of Python standard-library modules (real English installed offline),
    in a fixed shuffled order."""
    import random

    from ..corpus import stdlib_docstrings

    docs = [d for _, d in stdlib_docstrings(min_chars)]
    random.Random(seed).shuffle(docs)
    return [" ".join(d.split()) for d in docs[:n]]
