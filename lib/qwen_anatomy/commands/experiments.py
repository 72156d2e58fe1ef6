"""``qwen-anatomy run``, ``results`` and ``book``: notebooks as reproducible experiments.

Chapter 90_experiments explains them. Nothing heavy is imported here; the handlers import
``qwen_anatomy.experiments`` (papermill, pandas) only when called.
"""

from __future__ import annotations

import argparse
import shlex
import sys

from ..cli import positive_int


def _timeout(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{value} must be a positive number of seconds")
    return value


def register(subparsers) -> None:
    run = subparsers.add_parser(
        "run",
        help="execute a notebook with parameters (or a grid of them) as recorded experiments",
        description=(
            "Execute a notebook through papermill, once per parameter combination. Each run gets "
            "OUT/<notebook>/<UTC time>-<hash>/ with the executed notebook, its metrics and run.json. "
            "Parameters are checked against the notebook's `parameters` cell before anything runs."
        ),
    )
    run.add_argument(
        "notebook", help="a stem in notebooks/ (e.g. 01_language_models) or a path to .py/.ipynb"
    )
    run.add_argument(
        "-p",
        "--parameter",
        nargs=2,
        action="append",
        metavar=("NAME", "VALUE"),
        default=[],
        help="set one parameter (repeatable); the value is typed after the notebook's default",
    )
    run.add_argument("-f", "--parameters-file", metavar="PARAMS.yml", help="YAML mapping name -> value")
    run.add_argument(
        "--grid",
        metavar="GRID.yml",
        help="YAML mapping name -> list of values: one run per combination",
    )
    run.add_argument("--out", default="results", help="root folder of the results (default: results/)")
    run.add_argument("--jobs", type=positive_int, default=1, help="runs executed in parallel (default 1)")
    run.add_argument(
        "--shard",
        metavar="I/N",
        help="run only combinations I, I+N, I+2N, ... of the grid (machine I of N; 1-based)",
    )
    run.add_argument("--timeout", type=_timeout, help="fail a run when one cell takes longer (seconds)")
    run.add_argument("--dry-run", action="store_true", help="validate and list the runs, execute nothing")
    run.set_defaults(func=_run)

    res = subparsers.add_parser(
        "results",
        help="list recorded runs as a table (parameters, status, key metrics)",
        description="List the runs under OUT (merge several roots by repeating --out).",
    )
    res.add_argument("notebook", nargs="?", help="only this notebook's runs (stem)")
    res.add_argument(
        "--out", action="append", help="root folder(s) of the results (default: results/; repeatable)"
    )
    res.add_argument(
        "--status", choices=["success", "failed", "incomplete", "running"], help="only these runs"
    )
    res.add_argument("--metrics", help="comma-separated metric names to show (default: every numeric one)")
    res.set_defaults(func=_results)

    book = subparsers.add_parser(
        "book",
        help="build your own book: every chapter executed on MODEL, rendered as HTML into a new folder",
        description=(
            "Execute every chapter of _toc.yml through papermill (chapters with a `model` parameter on "
            "MODEL, the others at their defaults; a run record each under OUT/runs/), then render the "
            "executed notebooks as a Jupyter Book into OUT (OUT/index.html). MODEL, the chapters and every "
            "chapter's parameters are checked before anything runs; OUT must be new or empty."
        ),
    )
    book.add_argument(
        "--model", required=True, help="built-in name, checkpoint directory or .gguf file the book is about"
    )
    book.add_argument("--out", required=True, metavar="DIR", help="a new (or empty) folder for the HTML book")
    book.add_argument(
        "--scale",
        choices=["book", "ci"],
        default="book",
        help="book: every chapter's defaults (default); ci: tests/ci-params.yml laid over them (quick)",
    )
    book.add_argument(
        "--chapters",
        metavar="A,B,...",
        help="only these chapters (comma-separated stems or unique prefixes, e.g. 00_setup,10)",
    )
    book.add_argument("--timeout", type=_timeout, help="fail a chapter when one cell takes longer (seconds)")
    book.add_argument("--no-progress", action="store_true", help="no progress bar")
    book.set_defaults(func=_book)


def _run(args) -> int:
    from ..experiments import parse_shard, run_experiments

    if args.shard is not None:
        parse_shard(args.shard)
    results = run_experiments(
        args.notebook,
        cli_parameters=[tuple(p) for p in args.parameter],
        params_file=args.parameters_file,
        grid=args.grid,
        out=args.out,
        jobs=args.jobs,
        shard=args.shard,
        timeout=args.timeout,
        dry_run=args.dry_run,
        command=shlex.join(["qwen-anatomy", *sys.argv[1:]]),
    )
    if args.dry_run:
        return 0
    statuses = [r["status"] for r in results]
    counts = {s: statuses.count(s) for s in dict.fromkeys(statuses)}
    print("summary: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    return 0 if all(s == "success" for s in statuses) else 1


def _results(args) -> int:
    from ..experiments import load_results, results_table

    frame = load_results(args.notebook, args.out or ["results"], status=args.status)
    if not len(frame):
        where = ", ".join(args.out or ["results"])
        print(f"no runs{' of ' + args.notebook if args.notebook else ''} under {where}")
        return 0
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()] if args.metrics else None
    print(results_table(frame, metrics))
    return 0


def _book(args) -> int:
    from ..bookbuild import build_book

    chapters = None
    if args.chapters is not None:
        chapters = [c.strip() for c in args.chapters.split(",") if c.strip()]
    record = build_book(
        args.model,
        args.out,
        scale=args.scale,
        chapters=chapters,
        timeout=args.timeout,
        progress=not args.no_progress,
        command=shlex.join(["qwen-anatomy", *sys.argv[1:]]),
    )
    return 0 if record["status"] == "success" else 1
