"""Part IV command: ``heads`` (importance against plasticity). Heavy imports happen inside the handler."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..cli import positive_int
from ..devices import add_device_flags
from ..errors import UserInputError
from ..registry import MODEL_HELP
from .model import add_pickle_flag

DATA_HELP = (
    "evaluation data: a synthetic task's data file (lines 'x1 x2 ... # y1 y2 ...', e.g. "
    "relu/n=10/data.test; scored on the output part) or a .txt file of text, one example per line "
    "(tokenised with the model's tokenizer, scored on every next token, first --max-tokens tokens)"
)

SHAPE_FIELDS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "attention_bias",
    "tie_word_embeddings",
)


def register(sub) -> None:
    p = sub.add_parser(
        "heads",
        help="per-head ablation importance, gradient proxies and (with --finetuned) update sizes",
        description="Attention heads: importance against plasticity (book Part IV). Writes heads.csv, "
        "groups.csv, stats.json, cases.json, figures and a run record into --out.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("model", help=f"θ0: {MODEL_HELP}")
    p.add_argument("--data", required=True, type=Path, help=DATA_HELP)
    p.add_argument(
        "--finetuned", default=None, help="θ1: the same architecture after fine-tuning (any model form)"
    )
    p.add_argument("--out", required=True, type=Path, help="new output directory (never overwritten)")
    p.add_argument(
        "--ablation",
        choices=("zero", "mean"),
        default="zero",
        help="zero: gate the head to 0; mean: replace its output by its mean over the data",
    )
    p.add_argument("--max-examples", type=positive_int, default=256, help="evaluation examples used (N > 0)")
    p.add_argument("--max-tokens", type=positive_int, default=64, help="tokens per text example")
    p.add_argument("--batch-size", type=positive_int, default=16, help="examples per forward pass")
    p.add_argument("--replicas", type=positive_int, default=8, help="heads ablated per batched pass")
    p.add_argument("--bootstrap", type=positive_int, default=300, help="bootstrap resamples of examples")
    p.add_argument("--permutations", type=positive_int, default=2000, help="permutations per p-value")
    p.add_argument(
        "--threads",
        type=positive_int,
        default=1,
        help="torch threads (one is fastest on a shared machine; more on an idle one)",
    )
    p.add_argument("--no-figures", action="store_true", help="skip the PNG figures")
    add_device_flags(p)
    add_pickle_flag(p)
    p.set_defaults(func=cmd_heads)


def cmd_heads(args) -> int:
    from ..devices import resolve
    from ..heads.data import DATA_HINT, is_task_file, load_eval_data
    from ..iochecks import check_output_dir, make_output_dir, read_text

    # validate everything cheap before loading models or computing anything
    device, dtype = resolve(args.device, args.dtype)
    if not read_text(args.data, "data file", DATA_HINT).strip():
        raise UserInputError(f"data file {args.data} is empty: {DATA_HINT}")
    check_output_dir(args.out, "--out")
    from ..loading import load_config, resolve_model

    path0 = resolve_model(args.model)
    early = None
    if is_task_file(args.data) or not (path0 / "tokenizer.json").is_file():
        # a task file is read and checked in full now; text without a tokenizer is refused now
        early = load_eval_data(args.data, None, args.max_examples, args.max_tokens)
    if early is not None and early[1] == "task":
        from ..tasks.vocab import VOCAB_SIZE

        vocab = load_config(path0).vocab_size
        if vocab < VOCAB_SIZE:
            raise UserInputError(
                f"{args.data} is a task file (the shared task vocabulary, {VOCAB_SIZE} ids) but "
                f"{args.model} has only {vocab} token ids: use a model trained on the tasks, or text data"
            )
    path1 = resolve_model(args.finetuned) if args.finetuned else None
    if path1 is not None:
        c0, c1 = load_config(path0).to_dict(), load_config(path1).to_dict()
        diff = [k for k in SHAPE_FIELDS if c0[k] != c1[k]]
        if diff:
            raise UserInputError(
                f"checkpoints of different shapes: {args.model} and {args.finetuned} differ in "
                f"{', '.join(diff)}; give θ0 and θ1 of the same architecture"
            )

    import torch
    from tqdm.auto import tqdm

    from ..heads.analysis import ablation_passes, measure
    from ..heads.core import head_layout
    from ..heads.experiment import write_analysis
    from ..heads.plasticity import update_magnitudes
    from ..loading import load_model
    from ..runrecord import RunRecord

    torch.set_num_threads(args.threads)
    model0, tok = load_model(
        path0, weights_only_pickle=args.allow_pickle_weights_only, device=device, dtype=dtype
    )
    batch, kind = early or load_eval_data(args.data, tok, args.max_examples, args.max_tokens)
    from ..validate import check_token_ids

    check_token_ids(  # a tokenizer larger than the embedding table (an IndexError deep inside otherwise)
        int(batch.input_ids.max()), model0.config.vocab_size, f"data file {args.data}", f"{args.model}'s "
        "tokenizer.json does not belong to its weights"
    )  # fmt: skip
    make_output_dir(args.out, "--out")
    params = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "func"}
    record = RunRecord(args.out / "run_record.json", "qwen-anatomy heads", params)
    with record:
        record.data["data_kind"] = kind
        record.data["n_examples"] = len(batch)
        models = [("θ0", model0)]
        if path1 is not None:
            model1, _ = load_model(
                path1, weights_only_pickle=args.allow_pickle_weights_only, device=device, dtype=dtype
            )
            models.append(("θ1", model1))
        lay_total = ablation_passes(head_layout(model0), len(batch), args.batch_size) * len(models)
        results = []
        with tqdm(total=lay_total, desc="ablating heads", unit="pass") as bar:
            for name, model in models:
                with record.stage(f"measure {name}"):
                    results.append(
                        measure(
                            model,
                            batch,
                            args.ablation,
                            batch_size=args.batch_size,
                            replicas=args.replicas,
                            progress=bar.update,
                        )
                    )
        update = update_magnitudes(model0, models[1][1]) if path1 is not None else None
        with record.stage("statistics and figures"):
            stats = write_analysis(
                args.out,
                results[0],
                results[1] if path1 is not None else None,
                update,
                figures=not args.no_figures,
                n_perm=args.permutations,
                n_boot=args.bootstrap,
            )
    print(
        f"{stats['n_heads']} heads, {len(batch)} {kind} examples, {args.ablation} ablation: "
        f"results in {args.out}"
    )
    best = max(stats["proxy_validity"], key=lambda r: r["rho"] if r["rho"] == r["rho"] else -2)
    print(
        f"best gradient proxy of ablation importance: {best['proxy']} at {best['theta']} "
        f"(Spearman {best['rho']:.3f})"
    )
    return 0
