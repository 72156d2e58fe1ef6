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
    p.add_argument(
        "--save-generations",
        metavar="FILE",
        help="also write every generation with its per-position correctness (gzip JSON lines, e.g. "
        "generations.jsonl.gz); never overwrites",
    )
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
        generations_file=args.save_generations,
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
        help="train every config x length x seed (book-scale results; resumable) and write a summary table",
        description=(
            "Train each config with each seed into OUT_ROOT/<config>/seed<k>/, or with --n (or a --plan "
            "group's n) into OUT_ROOT/<config>/n<length>/seed<k>/, skipping runs that already "
            "succeeded; keep curves, evaluation, every generation and run records, drop the weights "
            "unless --keep-checkpoints, and write OUT_ROOT/summary.json. Forward and inverse configs "
            "(<name> and <name>_inverse) of one length must agree in everything but the order."
        ),
    )
    p.add_argument(
        "--configs", nargs="+", help="YAML configs, e.g. configs/relu.yaml configs/relu_inverse.yaml"
    )
    p.add_argument(
        "--n",
        type=positive_int,
        nargs="+",
        metavar="N",
        help="sequence lengths, each trained with every config; with --plan, train only these of the "
        "plan's lengths (e.g. --group 1 --n 10 in one process and --group 1 --n 20 in another)",
    )
    p.add_argument(
        "--plan",
        help="a sweep plan (YAML: groups of configs with their lengths and overrides), e.g. "
        "configs/sweeps/length.yaml; instead of --configs/--n",
    )
    p.add_argument("--seeds", type=non_negative_int, nargs="+", help="default: the plan's, else 0 1 2")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every run")
    p.add_argument("--out-root", help="default: the plan's, else data/results/tasks")
    p.add_argument(
        "--group",
        type=positive_int,
        nargs="+",
        metavar="K",
        help="train only these groups of the --plan (1-based; the whole plan is still checked): two "
        "processes on two cores can share a plan, e.g. --group 1 2 3 4 and --group 5",
    )
    p.add_argument("--keep-checkpoints", action="store_true")
    p.add_argument("--show-plan", action="store_true", help="list the runs (to train or done) and stop")
    p.add_argument(
        "--estimate",
        action="store_true",
        help="time a few steps of each model at its shortest and longest length, print the projected "
        "cost of every run still to train, and stop (nothing is written under OUT_ROOT)",
    )
    p.add_argument(
        "--estimate-steps", type=positive_int, default=50, help="steps timed per model (default 50)"
    )
    p.set_defaults(func=_sweep)


def sweep_config(args) -> dict:
    """The ``config`` of :func:`qwen_anatomy.tasks.experiment.run` from the sweep's flags."""
    from ..tasks.experiment import DEFAULT_SEEDS, read_plan

    if args.plan is not None:
        if args.configs:
            raise UserInputError("--plan names its configs: leave out --configs")
        config = read_plan(args.plan)
        if args.n:  # a part of the plan: only these of its lengths are trained (the whole plan is checked)
            config["only_lengths"] = list(dict.fromkeys(args.n))
    elif not args.configs:
        raise UserInputError(
            "give --configs (with --n for lengths) or --plan, e.g. --plan configs/sweeps/length.yaml"
        )
    else:
        config = {"configs": args.configs, "lengths": list(dict.fromkeys(args.n)) if args.n else None}
    config["seeds"] = args.seeds or config.get("seeds") or list(DEFAULT_SEEDS)
    config["out_root"] = args.out_root or config.get("out_root") or "data/results/tasks"
    config["overrides"] = args.set
    config["keep_checkpoints"] = args.keep_checkpoints
    if args.group:
        if args.plan is None:
            raise UserInputError("--group selects groups of a --plan; give --plan too")
        config["only_groups"] = args.group
    return config


def _sweep(args) -> int:
    from ..tasks.experiment import plan, run

    config = sweep_config(args)
    if args.show_plan or args.estimate:
        entries = [e for e in plan(config) if e["selected"]]
        if args.estimate:
            return _estimate(entries, args.estimate_steps)
        for e in entries:
            t = e["run_config"]["training"]
            budget = f"{t['max_steps']} steps" if t["max_steps"] else f"{t['epochs']} epochs"
            print(f"{'done ' if e['reuse'] else 'train'} {e['folder']}  ({budget})")
        print(f"{sum(not e['reuse'] for e in entries)} of {len(entries)} runs to train")
        return 0
    summary = run(config)
    for row in summary["runs"]:
        print(
            f"{row['config']:<22} n={str(row['n']):<3} seed {row['seed']}: exact match {row['exact_match']:.3f} "
            f"({row['steps']} steps, {row['train_seconds']:.0f} s)"
        )
    return 0


def _estimate(entries, steps: int) -> int:
    from ..tasks.cost import estimate

    measured, projection = estimate(entries, steps)
    for m in measured:
        print(
            f"{m['model']}, {m['task']} n={m['n']}: {m['seconds_per_step']:.3f} s/step (median of "
            f"{m['steps_timed']}), check {1000 * m['check_seconds_per_sample']:.2f} ms/sample, final "
            f"evaluation {1000 * m['eval_seconds_per_sample']:.2f} ms/sample, overhead {m['overhead_seconds']:.0f} s"
        )
    todo = projection[~projection["done"]]
    by_config = todo.groupby(["config", "n"])["projected seconds"].agg(["count", "sum"])
    for (config, n), row in by_config.iterrows():
        print(f"{config:<22} n={n:<3} {int(row['count'])} run(s): {row['sum'] / 3600:.2f} h")
    total = todo["projected seconds"].sum()
    print(
        f"{len(todo)} runs to train, projected {total / 3600:.1f} h on one thread ({len(projection) - len(todo)} done)"
    )
    return 0
