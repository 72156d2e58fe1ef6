"""θ1 for the real pair of chapter 40: a real checkpoint fine-tuned on a real text domain (issue 15).

The domain is the documentation of Python's standard library (:mod:`qwen_anatomy.corpus`): English
prose about code that SmolLM2-135M-Instruct already models sensibly, installed with Python, so
nothing is downloaded. The corpus is split once, by document, into a training part and a held-out
part (``corpus_seed``, the same for every fine-tuning seed); the fine-tuning ``seed`` changes the
order of the training blocks and nothing else (the model starts from the same θ0).

Training uses the Hugging Face ``Trainer`` on the project's own Qwen2 implementation (which loads
Llama-family checkpoints such as SmolLM2 as well): documents are tokenised, joined with the
end-of-text id and cut into blocks of ``block_tokens``; the loss is the next-token cross-entropy.
The held-out loss is measured on ``eval_blocks`` held-out blocks before training, every
``eval_every`` steps and at the end.

Writes a new directory::

    model/            θ1 as a standard checkpoint (config.json, model.safetensors, tokenizer files)
    heldout.txt       the held-out documents, one per line (the data ``qwen-anatomy heads`` measures on)
    curves.json       training loss, learning rate and held-out loss against step and seconds
    finetune.json     the configuration, held-out loss before and after, steps, seconds per step
    run_record.json   versions, git commit, machine, stages, wall time, peak memory
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import UserInputError


@dataclass
class FinetuneConfig:
    """What one fine-tuning run does; every field is recorded in ``finetune.json``."""

    model: str = "smollm2-135m"
    seed: int = 0
    steps: int = 300
    batch_size: int = 8
    block_tokens: int = 128
    learning_rate: float = 5e-5
    weight_decay: float = 0.0
    warmup_ratio: float = 0.05
    lr_scheduler_type: str = "cosine"
    max_grad_norm: float = 1.0
    # the whole standard-library corpus holds about 389,000 characters (533 documents) on Python 3.11
    train_chars: int = 285_000
    heldout_chars: int = 100_000
    corpus_seed: int = 0
    eval_every: int = 50
    eval_blocks: int = 64
    threads: int | None = None

    def validate(self) -> None:
        for name in (
            "steps",
            "batch_size",
            "block_tokens",
            "train_chars",
            "heldout_chars",
            "eval_every",
            "eval_blocks",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise UserInputError(f"--{name.replace('_', '-')} {value!r}: must be an integer >= 1")
        if not 0 < self.learning_rate < 1:
            raise UserInputError(f"--learning-rate {self.learning_rate}: must lie in (0, 1)")
        if not 0 <= self.warmup_ratio < 1:
            raise UserInputError(f"--warmup-ratio {self.warmup_ratio}: must lie in [0, 1)")
        if self.threads is not None and self.threads < 1:
            raise UserInputError(f"--threads {self.threads}: must be >= 1")


def pack_blocks(documents: list[str], tokenizer, block_tokens: int, eos_id: int) -> list[list[int]]:
    """Token ids of the documents, each followed by ``eos_id``, cut into full blocks of
    ``block_tokens`` (the remainder is dropped)."""
    stream: list[int] = []
    for doc in documents:
        stream += tokenizer.encode(doc, add_special_tokens=False) + [eos_id]
    n = len(stream) // block_tokens
    return [stream[i * block_tokens : (i + 1) * block_tokens] for i in range(n)]


def split_documents(
    train_chars: int, heldout_chars: int, corpus_seed: int
) -> tuple[list[str], list[str], dict]:
    """(training documents, held-out documents, provenance) from the standard-library corpus; each
    document with its whitespace collapsed to single spaces (one line each)."""
    import warnings

    from ..corpus import train_heldout_documents

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a corpus too small for the request is bad input here
        try:
            train, heldout, info = train_heldout_documents(train_chars, heldout_chars, seed=corpus_seed)
        except UserWarning as w:
            raise UserInputError(f"--train-chars/--heldout-chars: {w}") from None
    return [" ".join(d.split()) for d in train], [" ".join(d.split()) for d in heldout], info


def lm_with_loss(model):
    """The project's Qwen2 wrapped so the Trainer gets ``{"loss": ...}`` from ``input_ids`` and
    ``labels`` (next-token cross-entropy, computed in float32)."""
    from torch import nn

    class LMWithLoss(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, labels=None, **_):
            logits = self.inner(input_ids).logits
            if labels is None:
                return {"logits": logits}
            loss = nn.functional.cross_entropy(
                logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100
            )
            return {"loss": loss, "logits": logits}

    return LMWithLoss(model)


def heldout_loss(model, blocks: list[list[int]], batch_size: int = 8) -> float:
    """Mean next-token cross-entropy (nats per token) of ``model`` on ``blocks``."""
    import torch

    total, count = 0.0, 0
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for i in range(0, len(blocks), batch_size):
            ids = torch.tensor(blocks[i : i + batch_size])
            logits = model(ids).logits[:, :-1].float()
            loss = torch.nn.functional.cross_entropy(
                logits.flatten(0, 1), ids[:, 1:].flatten(), reduction="sum"
            )
            total += loss.item()
            count += ids[:, 1:].numel()
    model.train(was_training)
    return total / count


def finetune(config: FinetuneConfig, out_dir: str | Path, progress: bool = True) -> dict:
    """Fine-tune ``config.model`` on the standard-library documentation; returns ``finetune.json``."""
    import torch
    from transformers import Trainer, TrainerCallback, TrainingArguments, set_seed

    from ..iochecks import check_output_dir, make_output_dir
    from ..loading import load_model, resolve_model, save_checkpoint
    from ..runrecord import RunRecord, atomic_write_json, atomic_write_text

    config.validate()
    out_dir = Path(out_dir)
    check_output_dir(out_dir, "--out")
    source = resolve_model(config.model)  # a missing model is bad input before any work
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    train_docs, heldout_docs, corpus_info = split_documents(
        config.train_chars, config.heldout_chars, config.corpus_seed
    )
    model, tokenizer = load_model(source)
    if tokenizer is None:
        raise UserInputError(
            f"{config.model}: the model has no tokenizer.json; fine-tuning on text needs one"
        )
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    train_blocks = pack_blocks(train_docs, tokenizer, config.block_tokens, eos)
    eval_blocks = pack_blocks(heldout_docs, tokenizer, config.block_tokens, eos)[: config.eval_blocks]
    if len(train_blocks) < config.batch_size or not eval_blocks:
        raise UserInputError(
            f"--train-chars {config.train_chars} / --heldout-chars {config.heldout_chars}: too little text "
            f"for one batch of {config.batch_size} blocks of {config.block_tokens} tokens; give more characters"
        )

    make_output_dir(out_dir, "--out")
    params = {**asdict(config), "resolved_model": str(source)}
    curves: list[dict] = []
    t_start = [time.perf_counter()]
    with RunRecord(
        out_dir / "run_record.json", "qwen_anatomy.heads.finetune.finetune", params, config.seed
    ) as record:
        with record.stage("heldout_before"):
            before = heldout_loss(model, eval_blocks)
        curves.append({"step": 0, "seconds": 0.0, "heldout_loss": before})
        set_seed(config.seed)
        model.train()
        wrapped = lm_with_loss(model)

        class Curves(TrainerCallback):
            def on_step_begin(self, args, state, control, **kw):
                if state.global_step == 0:
                    t_start[0] = time.perf_counter()

            def on_log(self, args, state, control, logs=None, **kw):
                if logs and "loss" in logs:
                    curves.append(
                        {
                            "step": state.global_step,
                            "seconds": round(time.perf_counter() - t_start[0], 3),
                            "train_loss": float(logs["loss"]),
                            "learning_rate": float(logs.get("learning_rate", math.nan)),
                        }
                    )

            def on_step_end(self, args, state, control, **kw):
                if state.global_step % config.eval_every == 0 or state.global_step == state.max_steps:
                    curves.append(
                        {
                            "step": state.global_step,
                            "seconds": round(time.perf_counter() - t_start[0], 3),
                            "heldout_loss": heldout_loss(model, eval_blocks),
                        }
                    )

        dataset = [{"input_ids": torch.tensor(b), "labels": torch.tensor(b)} for b in train_blocks]
        args = TrainingArguments(
            output_dir=str(out_dir / ".trainer"),
            per_device_train_batch_size=config.batch_size,
            learning_rate=config.learning_rate,
            weight_decay=config.weight_decay,
            warmup_steps=int(round(config.warmup_ratio * config.steps)),
            lr_scheduler_type=config.lr_scheduler_type,
            max_grad_norm=config.max_grad_norm,
            max_steps=config.steps,
            logging_steps=max(1, min(10, config.eval_every)),
            save_strategy="no",
            eval_strategy="no",
            report_to=[],
            seed=config.seed,
            data_seed=config.seed,
            use_cpu=True,
            dataloader_num_workers=0,
            remove_unused_columns=False,
            disable_tqdm=not progress,
        )
        trainer = Trainer(model=wrapped, args=args, train_dataset=dataset, callbacks=[Curves()])
        with record.stage("train"):
            trainer.train()
        train_seconds = time.perf_counter() - t_start[0]
        model.eval()
        after = (
            curves[-1]["heldout_loss"] if "heldout_loss" in curves[-1] else heldout_loss(model, eval_blocks)
        )
        with record.stage("save"):
            save_checkpoint(model, out_dir / "model", tokenizer_dir=source)
            atomic_write_text(out_dir / "heldout.txt", "\n".join(heldout_docs) + "\n")
            atomic_write_json(out_dir / "curves.json", curves)
            summary = {
                "config": asdict(config),
                "theta0": str(source),
                "corpus": corpus_info,
                "train_documents": len(train_docs),
                "heldout_documents": len(heldout_docs),
                "train_blocks": len(train_blocks),
                "epochs": config.steps * config.batch_size / len(train_blocks),
                "heldout_loss_before": before,
                "heldout_loss_after": after,
                "steps": config.steps,
                "train_seconds": round(train_seconds, 2),
                "seconds_per_step": round(train_seconds / config.steps, 4),
            }
            atomic_write_json(out_dir / "finetune.json", summary)
        import shutil

        shutil.rmtree(out_dir / ".trainer", ignore_errors=True)
        record.data["result"] = {
            k: summary[k] for k in ("heldout_loss_before", "heldout_loss_after", "seconds_per_step")
        }
    return summary


def main(argv: list[str] | None = None) -> int:
    """``python -m qwen_anatomy.heads.finetune --out DIR [--model M] [--seed S] ...``: one θ1.

    Then measure the pair with ``qwen-anatomy heads M --data DIR/heldout.txt --finetuned DIR/model``."""
    import argparse
    import sys

    defaults = FinetuneConfig()
    parser = argparse.ArgumentParser(
        prog="python -m qwen_anatomy.heads.finetune",
        description="Fine-tune a checkpoint on the standard-library documentation (θ1 of chapter 40's real pair).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--out", required=True, type=Path, help="new output directory (never overwritten)")
    for name, value in asdict(defaults).items():
        kind = type(value) if value is not None else int
        parser.add_argument(f"--{name.replace('_', '-')}", type=kind, default=value)
    parser.add_argument("--no-progress", action="store_true")
    args = vars(parser.parse_args(argv))
    out, progress = args.pop("out"), not args.pop("no_progress")
    try:
        summary = finetune(FinetuneConfig(**args), out, progress=progress)
    except UserInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(
        f"held-out loss {summary['heldout_loss_before']:.4f} -> {summary['heldout_loss_after']:.4f} nats/token "
        f"after {summary['steps']} steps ({summary['seconds_per_step']:.2f} s/step); θ1 in {Path(out) / 'model'}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
