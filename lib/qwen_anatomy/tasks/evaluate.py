"""Scoring by greedy generation: exact match and per-position accuracy (chapter 30_synthetic_tasks).

Generation is capped at exactly n + 1 new tokens (the n outputs, then ``<eos>``): the original let an
untrained model generate up to 512 tokens, which took minutes. A sample counts as an exact match
when all n outputs are right and the next token is ``<eos>``. Compare output orders by this
generated exact match, never by teacher-forced loss (for the reversed order the loss falls while
exact match stays low).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..errors import UserInputError
from .data import decoder_prompt
from .vocab import BOS_ID, EOS_ID, PAD_ID, SEP_ID, encode_ints, id_to_int


def _group_by_length(xs: Sequence[Sequence[int]]) -> dict[int, list[int]]:
    groups: dict[int, list[int]] = {}
    for i, x in enumerate(xs):
        groups.setdefault(len(x), []).append(i)
    return groups


def greedy_outputs(model, xs: Sequence[Sequence[int]], batch_size: int = 500) -> list[list[int]]:
    """Greedy continuation of n + 1 token ids per input (n = len(x)); any model type of this strand.

    Our ``Qwen2ForCausalLM`` decodes with its KV cache (qwen_anatomy.generation.generate);
    transformers' Qwen2 with its own cache; BART from the encoder output. Equal-length inputs share
    one batch, so no padding is needed.
    """
    import torch

    from ..model import Qwen2ForCausalLM

    out: list[list[int] | None] = [None] * len(xs)
    with torch.no_grad():
        for n, idx in _group_by_length(xs).items():
            for start in range(0, len(idx), batch_size):
                chunk = idx[start : start + batch_size]
                if isinstance(model, Qwen2ForCausalLM):
                    from ..generation import generate

                    rows = generate(model, [decoder_prompt(xs[i]) for i in chunk], max_new_tokens=n + 1)
                elif getattr(model.config, "model_type", "") == "bart":
                    rows = _greedy_bart(model, [xs[i] for i in chunk], n + 1)
                else:
                    rows = _greedy_hf_decoder(model, [decoder_prompt(xs[i]) for i in chunk], n + 1)
                for i, row in zip(chunk, rows, strict=True):
                    out[i] = list(row)
    return out


def _greedy_hf_decoder(model, prompts: list[list[int]], steps: int) -> list[list[int]]:
    import torch

    ids = torch.tensor(prompts, dtype=torch.long, device=model.device)
    result = model(input_ids=ids, use_cache=True)
    past = result.past_key_values
    tokens = []
    for step in range(steps):
        tok = result.logits[:, -1].argmax(-1)
        tokens.append(tok)
        if step + 1 < steps:
            result = model(input_ids=tok[:, None], past_key_values=past, use_cache=True)
            past = result.past_key_values
    return torch.stack(tokens, 1).tolist()


def _greedy_bart(model, xs: list[Sequence[int]], steps: int) -> list[list[int]]:
    import torch

    enc = torch.tensor([[BOS_ID, *encode_ints(x), EOS_ID] for x in xs], dtype=torch.long, device=model.device)
    encoder_outputs = model.get_encoder()(input_ids=enc)
    dec = torch.full((len(xs), 1), BOS_ID, dtype=torch.long, device=model.device)
    for _ in range(steps):  # the decoder is short: recompute instead of caching
        logits = model(encoder_outputs=encoder_outputs, decoder_input_ids=dec).logits
        dec = torch.cat([dec, logits[:, -1].argmax(-1, keepdim=True)], 1)
    return dec[:, 1:].tolist()


def _prediction_matrix(predictions: Sequence[Sequence[int]], ys: Sequence[Sequence[int]]):
    """(target ids [N, n + 1], predicted ids [N, n + 1], n): ``y <eos>`` against the first n + 1
    generated ids (a shorter generation is padded with ``<pad>``, which is never right)."""
    import numpy as np

    n = len(ys[0])
    if any(len(y) != n for y in ys):
        raise UserInputError("per-position accuracy needs one output length; the file mixes lengths")
    target = np.array([encode_ints(y) + [EOS_ID] for y in ys])
    pred = np.full(target.shape, PAD_ID)
    for i, row in enumerate(predictions):
        row = list(row)[: n + 1]
        pred[i, : len(row)] = row
    return target, pred, n


def _decoded(ids) -> list:
    return [id_to_int(int(t)) if id_to_int(int(t)) is not None else _special(int(t)) for t in ids]


def score(
    predictions: Sequence[Sequence[int]],
    xs: Sequence[Sequence[int]],
    ys: Sequence[Sequence[int]],
    show: int = 5,
) -> dict:
    """Exact match, per-position accuracy [n] and a few sample generations (decoded integers)."""
    target, pred, n = _prediction_matrix(predictions, ys)
    correct = pred == target
    samples = []
    for i in range(min(show, len(xs))):
        samples.append(
            {
                "input": list(map(int, xs[i])),
                "target": list(map(int, ys[i])),
                "prediction": _decoded(pred[i]),
                "exact": bool(correct[i].all()),
            }
        )
    return {
        "num_examples": len(xs),
        "n": n,
        "exact_match": float(correct.all(1).mean()),
        "per_position_accuracy": correct[:, :n].mean(0).round(6).tolist(),
        "token_accuracy": float(correct[:, :n].mean()),
        "eos_accuracy": float(correct[:, n].mean()),
        "samples": samples,
    }


# -- every generation, kept -------------------------------------------------------------------------
GENERATIONS_FILE = "generations.jsonl.gz"


def generation_rows(
    predictions: Sequence[Sequence[int]], xs: Sequence[Sequence[int]], ys: Sequence[Sequence[int]]
) -> list[dict]:
    """One row per test sample: ``i``, ``input``, ``target`` (as written, in the file's order),
    ``prediction`` (n integers, then ``"<eos>"`` or whatever the model wrote there), ``correct``
    (0/1 per output position, n entries), ``eos`` (the token after them was ``<eos>``) and ``exact``."""
    target, pred, n = _prediction_matrix(predictions, ys)
    correct = pred == target
    return [
        {
            "i": i,
            "input": list(map(int, xs[i])),
            "target": list(map(int, ys[i])),
            "prediction": _decoded(pred[i]),
            "correct": correct[i, :n].astype(int).tolist(),
            "eos": bool(correct[i, n]),
            "exact": bool(correct[i].all()),
        }
        for i in range(len(xs))
    ]


def write_generations(path: str | Path, rows: Sequence[dict]) -> Path:
    """Write ``rows`` as gzip-compressed JSON lines, atomically; the gzip header carries no time, so
    the same generations give the same bytes."""
    import gzip
    import json

    from ..runrecord import atomic_write_bytes

    text = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in rows)
    return atomic_write_bytes(path, gzip.compress(text.encode(), compresslevel=9, mtime=0))


def load_generations(path: str | Path) -> list[dict]:
    """The rows of a ``generations.jsonl.gz`` (see :func:`generation_rows`); a run folder is accepted
    too. FileNotFoundError names the file when it is missing (runs made before it was kept)."""
    import gzip
    import json

    path = Path(path)
    if path.is_dir():
        path = path / GENERATIONS_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: this run kept no generations (older runs kept 8 samples)"
        )
    with gzip.open(path, "rt") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def first_error(row: dict) -> int | None:
    """The first wrong output position of a generation row; n when only the end token is wrong;
    None for an exact match."""
    if row["exact"]:
        return None
    wrong = [j for j, ok in enumerate(row["correct"]) if not ok]
    return wrong[0] if wrong else len(row["correct"])


def typical_failures(rows: Sequence[dict], k: int = 3) -> dict:
    """The most common first-error position among the wrong generations, and ``k`` of its examples.

    Returns ``{"total", "failures", "first_error_counts" ({position: count}, position n = only the
    end token wrong), "position" (the most common; the earliest on a tie; None when nothing
    failed), "share" (of the failures), "examples" (the first ``k`` rows failing there first, in
    file order)}``.
    """
    from collections import Counter

    firsts = [(first_error(r), r) for r in rows]
    failed = [(p, r) for p, r in firsts if p is not None]
    counts = Counter(p for p, _ in failed)
    if not counts:
        return {
            "total": len(rows),
            "failures": 0,
            "first_error_counts": {},
            "position": None,
            "share": 0.0,
            "examples": [],
        }
    top = max(counts.values())
    position = min(p for p, c in counts.items() if c == top)
    return {
        "total": len(rows),
        "failures": len(failed),
        "first_error_counts": dict(sorted(counts.items())),
        "position": position,
        "share": top / len(failed),
        "examples": [r for p, r in failed if p == position][:k],
    }


def _special(i: int) -> str:
    from .vocab import SPECIAL_TOKENS

    return SPECIAL_TOKENS[i] if 0 <= i < len(SPECIAL_TOKENS) else f"<id {i}>"


def check_task_checkpoint(checkpoint: str | Path, allow_pickle: bool = False, max_id: int | None = None):
    """(path, model_type, reads_pickles) of a checkpoint of this strand, validated before loading.

    Qwen2 checkpoints go through our loader's checks later; BART ones (read by transformers) are
    checked here by :func:`qwen_anatomy.validate.check_transformers_checkpoint`. Pickle weights are
    refused unless ``allow_pickle``. ``max_id``: the largest token id the data needs, which must
    have an embedding row.
    """
    from ..loading import resolve_model
    from ..validate import check_token_ids, check_transformers_checkpoint, read_config_json
    from .vocab import VOCAB_SIZE

    path = resolve_model(checkpoint)
    hf = read_config_json(path / "config.json")
    model_type = hf.get("model_type")
    pickled = check_transformers_checkpoint(path, allow_pickle) if model_type == "bart" else False
    if max_id is not None and isinstance(hf.get("vocab_size"), int):
        check_token_ids(
            max_id,
            hf["vocab_size"],
            f"the task data for {checkpoint}",
            f"use a checkpoint trained on the shared task vocabulary ({VOCAB_SIZE} ids)",
        )
    return path, model_type, pickled


def load_task_model(checkpoint: str | Path, allow_pickle: bool = False, device="cpu", dtype="float32"):
    """A checkpoint of this strand as a model ready for :func:`greedy_outputs`, on ``device`` in
    ``dtype`` (see :mod:`qwen_anatomy.devices`).

    Qwen2 checkpoints load with our own loader (qwen_anatomy.loading); BART ones with transformers.
    Both refuse pickle weights unless ``allow_pickle`` (then read with ``weights_only=True``).
    """
    from ..devices import resolve

    device, dtype = resolve(device, dtype)
    path, model_type, pickled = check_task_checkpoint(checkpoint, allow_pickle)
    if model_type == "bart":
        from transformers import BartForConditionalGeneration

        model = BartForConditionalGeneration.from_pretrained(path, use_safetensors=not pickled, dtype=dtype)
        return model.to(device).eval()
    from ..loading import load_model

    model, _ = load_model(
        path, with_tokenizer=False, weights_only_pickle=allow_pickle, device=device, dtype=dtype
    )
    return model


def evaluate(
    checkpoint: str | Path,
    data_file: str | Path,
    max_examples: int | None = None,
    batch_size: int = 500,
    show: int = 5,
    allow_pickle: bool = False,
    device="cpu",
    dtype="float32",
    generations_file: str | Path | None = None,
) -> dict:
    """Re-score a checkpoint on a task file: exact match, per-position accuracy, sample generations.

    ``checkpoint``: a directory, or a model name shipped in data/models/ (e.g. ``relu-n10-forward``).
    ``data_file``: a file written by ``qwen-anatomy tasks generate``; the first ``max_examples``
    lines are used when given. ``allow_pickle``: read pickle-only checkpoints with
    ``torch.load(weights_only=True)`` (refused otherwise). ``device``, ``dtype``: where and in what
    precision the model runs (checked first). ``generations_file``: also write every generation with
    its per-position correctness there (gzip JSON lines, :func:`write_generations`); checked before
    the model runs, never overwriting a file.
    """
    import torch

    from ..devices import resolve
    from .generators import read_task_file

    device, dtype = resolve(device, dtype)
    if max_examples is not None and max_examples < 1:
        raise UserInputError(f"max_examples {max_examples} must be a positive integer")
    xs, ys = read_task_file(data_file, max_examples, one_length=True)
    from .vocab import check_range

    check_range(xs, str(data_file))
    check_range(ys, str(data_file))
    max_id = max(encode_ints([max(max(r) for r in xs + ys)]) + [SEP_ID, EOS_ID])
    check_task_checkpoint(checkpoint, allow_pickle, max_id)  # before the model is loaded
    if generations_file is not None:
        from ..iochecks import check_output_file

        check_output_file(generations_file, "generations file")
    model = load_task_model(checkpoint, allow_pickle, device, dtype)
    with torch.inference_mode():
        predictions = greedy_outputs(model, xs, batch_size)
    result = score(predictions, xs, ys, show)
    result.update({"checkpoint": str(checkpoint), "data_file": str(data_file)})
    if generations_file is not None:
        write_generations(generations_file, generation_rows(predictions, xs, ys))
        result["generations_file"] = Path(generations_file).name
    return result
