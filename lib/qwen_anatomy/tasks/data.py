"""Token sequences and batches for training on task files (chapter 30_synthetic_tasks).

Decoder-only (the book's default, Qwen2): one sequence ``<bos> x # y <eos>``; the labels are -100
(ignored) on ``<bos> x #`` so the loss covers only the output part ``y <eos>``. The model predicts
token t+1 from tokens <= t (transformers shifts labels inside the model).

Encoder-decoder (``bart``, the original's setup): encoder ``<bos> x <eos>``, labels ``y <eos>``,
decoder started from ``<bos>``.
"""

from __future__ import annotations

from collections.abc import Sequence

from .vocab import BOS_ID, EOS_ID, PAD_ID, SEP_ID, check_range, encode_ints

IGNORE = -100


def decoder_prompt(x: Sequence[int]) -> list[int]:
    """``<bos> x #``: what the model sees before it writes the chain."""
    return [BOS_ID, *encode_ints(x), SEP_ID]


def decoder_example(x: Sequence[int], y: Sequence[int]) -> dict[str, list[int]]:
    """input_ids ``<bos> x # y <eos>`` and labels masked (-100) outside ``y <eos>``."""
    prompt = decoder_prompt(x)
    target = [*encode_ints(y), EOS_ID]
    return {"input_ids": prompt + target, "labels": [IGNORE] * len(prompt) + target}


def bart_example(x: Sequence[int], y: Sequence[int]) -> dict[str, list[int]]:
    return {"input_ids": [BOS_ID, *encode_ints(x), EOS_ID], "labels": [*encode_ints(y), EOS_ID]}


class TaskDataset:
    """A list of tokenised examples (a map-style dataset the Trainer's DataLoader can index)."""

    def __init__(self, xs, ys, model_type: str = "qwen2", where: str = "data") -> None:
        check_range(xs, where)
        check_range(ys, where)
        make = bart_example if model_type == "bart" else decoder_example
        self.examples = [make(x, y) for x, y in zip(xs, ys, strict=True)]
        self.xs, self.ys = xs, ys

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        return self.examples[i]


def _pad(rows: list[list[int]], value: int):
    import torch

    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width), value, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.as_tensor(r, dtype=torch.long)
    return out


def collate_decoder(batch: list[dict[str, list[int]]]) -> dict:
    """Right-padded input_ids [B, T], attention_mask [B, T], labels [B, T] (-100 on padding)."""
    ids = _pad([b["input_ids"] for b in batch], PAD_ID)
    mask = _pad([[1] * len(b["input_ids"]) for b in batch], 0)
    labels = _pad([b["labels"] for b in batch], IGNORE)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def collate_bart(batch: list[dict[str, list[int]]]) -> dict:
    """Encoder input_ids/attention_mask [B, S] and labels [B, T] (the model builds decoder inputs)."""
    ids = _pad([b["input_ids"] for b in batch], PAD_ID)
    mask = _pad([[1] * len(b["input_ids"]) for b in batch], 0)
    labels = _pad([b["labels"] for b in batch], IGNORE)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}
