"""``qwen-anatomy tasks generate|train|evaluate|sweep`` and the top-level ``train``/``evaluate`` (Part III).

Imports nothing heavy at module level: the handlers import numpy/torch/transformers when they run.
"""

from __future__ import annotations

import argparse
import json
import sys

from ..cli import non_negative_int, positive_int
from ..devices import DEVICE_HELP, DEVICES, DTYPES, add_device_flags
from ..errors import UserInputError
from ..registry import MODEL_HELP
from .model import add_pickle_flag


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None


def register(subparsers) -> None:
    tasks = subparsers.add_parser(
        "tasks",
        help="synthetic step-by-step tasks: generate datasets, train and evaluate small models (Part III)",
        description="Synthetic step-by-step tasks (ReLU, Square, Index), chapter 30_synthetic_tasks.",
    )
    sub = tasks.add_subparsers(dest="tasks_command", metavar="COMMAND", parser_class=type(tasks))
    sub.required = True
    _add_generate(sub)
    _add_train(sub, "train")
    _add_evaluate(sub, "evaluate")
    _add_sweep(sub)
    _add_train(subparsers, "train")
    _add_evaluate(subparsers, "evaluate")


def _add_generate(sub) -> None:
    p = sub.add_parser(
        "generate",
        help="write a task's train/test files (byte-identical to the original generators by default)",
        description=(
            "Write OUTPUT_ROOT/<task>/n=<n>/data.train, data.test, data-inv.train, data-inv.test "
            "(index: n=<n>_m=<m>/). Each sequence length restarts the generator from its seed."
        ),
    )
    p.add_argument("task", choices=["relu", "square", "index"])
    p.add_argument("--sequence-lengths", type=positive_int, nargs="+", required=True, metavar="N")
    p.add_argument(
        "--m", type=positive_int, help="index task: how many previous outputs are summed (required)"
    )
    p.add_argument("--modulus", type=positive_int, default=19, help="square task modulus p (default 19)")
    p.add_argument("--value-min", type=_int, default=-9, help="relu/square: smallest input (default -9)")
    p.add_argument("--value-max", type=_int, default=9, help="relu/square: largest input (default 9)")
    p.add_argument("--train-samples", type=positive_int, default=100_000)
    p.add_argument("--test-samples", type=positive_int, default=1_000)
    p.add_argument("--train-seed", type=non_negative_int, help="default 42")
    p.add_argument("--test-seed", type=non_negative_int, help="default 123 (relu) or 43 (square, index)")
    p.add_argument("--no-inverse", action="store_true", help="skip the data-inv.* files")
    p.add_argument(
        "--permutation",
        help="p0,p1,...: output position j holds y[p_j]; written to data-perm-<p>.* instead of data.*",
    )
    p.add_argument("--output-root", required=True, help="folder under which <task>/n=<n>/ is created")
    p.add_argument("--overwrite", action="store_true", help="replace existing files")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_generate)


def _generate(args) -> int:
    from ..iochecks import check_output_root
    from ..tasks.generators import TaskSpec, check_targets, generate_task, parse_permutation, task_targets

    check_output_root(args.output_root, "--output-root")
    specs = []
    for n in dict.fromkeys(args.sequence_lengths):  # validate every length before writing anything
        spec = TaskSpec(
            args.task,
            n,
            m=args.m if args.task == "index" else _no_m(args),
            modulus=args.modulus,
            value_min=args.value_min,
            value_max=args.value_max,
        )
        perm = parse_permutation(args.permutation, n) if args.permutation is not None else None
        specs.append((spec, perm))
    targets = [
        path
        for spec, perm in specs
        for _, _, path in task_targets(spec, args.output_root, not args.no_inverse, perm)
    ]
    check_targets(targets, args.overwrite)  # every file of every length, before the first is written
    for spec, perm in specs:
        paths = generate_task(
            spec,
            args.output_root,
            train_samples=args.train_samples,
            test_samples=args.test_samples,
            train_seed=args.train_seed,
            test_seed=args.test_seed,
            inverse=not args.no_inverse,
            permutation=perm,
            progress=not args.quiet,
            overwrite=args.overwrite,
        )
        for path in paths:
            print(path)
    return 0


def _no_m(args):
    if args.m is not None:
        raise UserInputError(f"--m applies only to the index task, not {args.task}")
    return None


def _add_train(sub, name: str) -> None:
    p = sub.add_parser(
        name,
        help="train a small model on a synthetic task (Hugging Face Trainer, CPU-friendly)",
        description=(
            "Train from a YAML config (configs/*.yaml). Writes a Hugging Face checkpoint directory "
            "with the tokenizer, curves.json, evaluation.json and run_record.json."
        ),
    )
    p.add_argument("--config", required=True, help="YAML config, e.g. configs/relu.yaml")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. training.seed=1"
    )
    p.add_argument("--dryrun", action="store_true", help="1 epoch on 1,000 samples (a quick check)")
    p.add_argument("--out", help="output directory (default runs/<config>-<UTC time>)")
    p.add_argument("--init-from", help=f"checkpoint to fine-tune: {MODEL_HELP}")
    p.add_argument("--device", choices=DEVICES, default="cpu", help=DEVICE_HELP)
    p.add_argument(
        "--dtype",
        choices=DTYPES,
        default="float32",
        help="float32 (default), or bfloat16 / float16 mixed precision (autocast; weights and the "
        "saved checkpoint stay float32; float16 needs a GPU)",
    )
    add_pickle_flag(p)  # for an --init-from checkpoint of pickle weights
    p.set_defaults(func=_train)


def _train(args) -> int:
    import datetime as dt
    from pathlib import Path

    from ..tasks.train import load_config, train

    config = load_config(args.config, args.set)
    out = args.out or str(
        Path("runs") / f"{Path(args.config).stem}-{dt.datetime.now(dt.UTC).strftime('%Y%m%dT%H%M%SZ')}"
    )
    result = train(
        config,
        out,
        init_from=args.init_from,
        dryrun=args.dryrun,
        allow_pickle=args.allow_pickle_weights_only,
        device=args.device,
        dtype=args.dtype,
    )
    print(f"checkpoint: {out}")
    print(
        f"exact match {result['exact_match']:.3f}, token accuracy {result['token_accuracy']:.3f} "
        f"after {result['steps']} steps in {result['train_seconds']:.0f} s"
    )
    print("per-position accuracy: " + " ".join(f"{a:.2f}" for a in result["per_position_accuracy"]))
    return 0


def _add_evaluate(sub, name: str) -> None:
    p = sub.add_parser(
        name,
        help="re-score a task checkpoint: greedy exact match and per-position accuracy",
        description="Greedy decoding of n + 1 tokens after '#'; prints the metrics (JSON with --json).",
    )
    p.add_argument("checkpoint", help=f"{MODEL_HELP}; e.g. the shipped relu-n10-forward")
    p.add_argument("--data", required=True, help="a task file, e.g. .../relu/n=10/data.test")
    p.add_argument("--max-examples", type=positive_int, help="score only the first K lines")
    p.add_argument("--show", type=non_negative_int, default=5, help="sample generations to print")
    p.add_argument("--json", action="store_true", help="print the full result as JSON")
    add_device_flags(p)
    add_pickle_flag(p)
    p.set_defaults(func=_evaluate)


def _evaluate(args) -> int:
    from ..tasks.evaluate import evaluate

    # evaluate() reads and checks the whole data file (shape of every line, vocabulary) before it
    # resolves and loads the checkpoint
    result = evaluate(
        args.checkpoint,
        args.data,
        args.max_examples,
        show=args.show,
        allow_pickle=args.allow_pickle_weights_only,
        device=args.device,
        dtype=args.dtype,
    )
    if args.json:
        json.dump(result, sys.stdout, indent=2)
        print()
        return 0
    print(f"{result['num_examples']} examples, n={result['n']}")
    print(f"exact match {result['exact_match']:.4f}, token accuracy {result['token_accuracy']:.4f}")
    print("per-position accuracy: " + " ".join(f"{a:.3f}" for a in result["per_position_accuracy"]))
    for s in result["samples"]:
        mark = "ok " if s["exact"] else "BAD"
        print(f"{mark} {' '.join(map(str, s['input']))} # {' '.join(map(str, s['prediction']))}")
    return 0


def _add_sweep(sub) -> None:
    p = sub.add_parser(
        "sweep",
        help="train every config x seed (book-scale results; resumable) and write a summary table",
        description=(
            "Train each config with each seed into OUT_ROOT/<config>/seed<k>/ (skipping runs that "
            "already succeeded), keep curves, evaluation and run records, drop the weights unless "
            "--keep-checkpoints, and write OUT_ROOT/summary.json."
        ),
    )
    p.add_argument("--configs", nargs="+", required=True)
    p.add_argument("--seeds", type=non_negative_int, nargs="+", default=[0, 1, 2])
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--out-root", default="data/results/tasks")
    p.add_argument("--keep-checkpoints", action="store_true")
    p.set_defaults(func=_sweep)


def _sweep(args) -> int:
    from ..tasks.experiment import run

    summary = run(
        {
            "configs": args.configs,
            "seeds": args.seeds,
            "overrides": args.set,
            "out_root": args.out_root,
            "keep_checkpoints": args.keep_checkpoints,
        }
    )
    for row in summary["runs"]:
        print(
            f"{row['config']:<22} seed {row['seed']}: exact match {row['exact_match']:.3f} "
            f"({row['steps']} steps, {row['train_seconds']:.0f} s)"
        )
    return 0
