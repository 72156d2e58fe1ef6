"""Part II commands: ``params``, ``embeddings``, ``tokens``, ``download`` (chapters 10-12).

Module level imports only argparse helpers: ``params --describe`` must answer in well under a second,
so it never imports numpy or torch.
"""

from __future__ import annotations

import sys

from ..cli import non_negative_int, positive_int, seed
from ..registry import MODEL_HELP


def register(sub) -> None:
    p = sub.add_parser(
        "params",
        help="per-tensor statistics and spectra of a checkpoint (CSV/Parquet/JSON/JSONL)",
        description="One row per stored tensor, streamed one tensor at a time; resumable.",
    )
    p.add_argument("model", metavar="MODEL", help=f"{MODEL_HELP}; a GGUF is read as stored (quantised)")
    p.add_argument(
        "--out", metavar="FILE", help="table path; .csv, .parquet, .jsonl or .json picks the format"
    )
    p.add_argument(
        "--spectra",
        choices=("none", "gram", "exact"),
        default="gram",
        help="singular values via the float64 Gram matrix (default), exact SVD route, or none",
    )
    p.add_argument(
        "--alpha-method",
        choices=("ours", "ww"),
        default="ours",
        help="power-law fit of the eigenvalues: ours (default: tails of 10+ values, two-sided KS) or "
        "ww (WeightWatcher's own: tails down to 2 values, its one-sided KS); see chapter 11",
    )
    p.add_argument("--threads", type=positive_int, default=1, help="BLAS/LAPACK threads (default 1)")
    p.add_argument("--include", metavar="REGEX", help="only tensors whose name matches")
    p.add_argument("--max-tensors", type=positive_int, help="stop after N tensors (quick looks)")
    p.add_argument(
        "--describe", action="store_true", help="header-only summary: shapes, counts, tying, bytes"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--format",
        choices=("csv", "json", "jsonl", "parquet"),
        help="table format (default: from --out's extension; must agree with a known extension); "
        "json is one array of records",
    )
    p.add_argument(
        "--seed-schema",
        nargs="?",
        const="analyze",
        type=_seed_schema_name,
        metavar="{analyze,transformer}",
        help="write the seed tool's columns and block-type names: analyze (default; its 16 columns, "
        "rank and sparsity, created_at) or transformer (its 22-column per-tensor CSV)",
    )
    p.add_argument("--verbose", action="store_true", help="print the run's decisions and one line per tensor")
    p.set_defaults(func=_params)

    e = sub.add_parser(
        "embeddings",
        help="embedding / output-layer report and clustering sweep",
        description="Norms, no-token and duplicate rows, anisotropy, PCA, MiniBatchKMeans over a K grid.",
    )
    e.add_argument("model", metavar="MODEL", help=f"{MODEL_HELP}; a GGUF is read as stored (quantised)")
    e.add_argument("--out", metavar="DIR", required=True, help="new directory for tables and figures")
    e.add_argument("--k", default="8,16,32,64,128,256", help="comma-separated K grid (default 8,...,256)")
    e.add_argument("--pca", type=int, default=128, help="PCA dimensions before clustering (0: none)")
    e.add_argument("--seed", type=seed, default=0, help="clustering and sampling seed, 0..2**32-1")
    e.add_argument("--threads", type=positive_int, default=1)
    e.add_argument("--max-rows", type=positive_int, help="use only the first N rows (quick looks)")
    e.add_argument(
        "--k-rule",
        choices=("silhouette", "elbow"),
        default="silhouette",
        help="how K is chosen: highest silhouette (default) or the elbow of the inertia curve "
        "(kneedle on log2 K; needs 3+ values in --k); both are reported, the rule is recorded",
    )
    e.add_argument(
        "--no-tokenizer",
        "--skip-representatives",
        dest="no_tokenizer",
        action="store_true",
        help="do not decode tokens (no token text, character classes or representatives; what happens "
        "anyway without a tokenizer); --skip-representatives is the seed tool's name for it",
    )
    e.add_argument("--no-progress", action="store_true", help="no progress bars")
    e.set_defaults(func=_embeddings)

    _register_tokens(sub)

    d = sub.add_parser(
        "download",
        help="download config, tokenizer and safetensors from the Hugging Face Hub (needs network)",
    )
    d.add_argument("model_id", metavar="MODEL_ID", help="hub id, e.g. Qwen/Qwen2.5-0.5B")
    d.add_argument("--out", metavar="DIR", required=True)
    d.add_argument("--revision", metavar="R", help="branch, tag or commit (default: main)")
    d.set_defaults(func=_download)


def _seed_schema_name(text: str) -> str:
    """argparse type of --seed-schema (a bare --seed-schema means analyze)."""
    import argparse

    if text not in ("analyze", "transformer"):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a seed layout; give analyze or transformer, or put MODEL before a bare "
            "--seed-schema"
        )
    return text


def _params(args) -> int:
    if args.describe:
        from ..errors import UserInputError
        from ..weights.table import describe, format_describe

        table_only = [f for f, v in (("--format", args.format), ("--seed-schema", args.seed_schema)) if v]
        if table_only:
            raise UserInputError(
                f"{' and '.join(table_only)}: only for the table, which --describe does not write; "
                "drop one or the other"
            )

        print(format_describe(describe(args.model)))
        return 0
    from ..errors import UserInputError

    if not args.out:
        raise UserInputError("--out FILE is required (unless --describe); e.g. --out params.csv")
    from ..weights.table import analyse, table_format

    table_format(args.out, args.format)
    df = analyse(
        args.model,
        out=args.out,
        spectra=args.spectra,
        threads=args.threads,
        include=args.include,
        max_tensors=args.max_tensors,
        progress=not args.no_progress,
        command="qwen-anatomy " + " ".join(sys.argv[1:]),
        table_fmt=args.format,
        seed_schema=args.seed_schema,
        verbose=args.verbose,
        alpha_method=args.alpha_method,
    )
    bad = df[df["status"] != "ok"]
    layout = f" in the seed tool's {args.seed_schema} columns" if args.seed_schema else ""
    print(
        f"wrote {len(df)} rows ({int(df['numel'].sum()):,} parameters){layout} to {args.out}; "
        f"run record {args.out}.run.json"
    )
    if len(bad):
        print(
            f"{len(bad)} row(s) marked: see the status column (first: {bad.iloc[0]['name']}: {bad.iloc[0]['status']})"
        )
    return 0


def _embeddings(args) -> int:
    from ..errors import UserInputError
    from ..iochecks import check_output_dir, make_output_dir
    from ..runrecord import RunRecord
    from ..weights.embeddings import parse_k_grid

    ks = parse_k_grid(args.k)
    if args.pca < 0:
        raise UserInputError(f"--pca {args.pca}: must be >= 0 (0 disables PCA)")
    check_output_dir(args.out, "--out")  # before the report's heavy work, not after it
    from pathlib import Path

    from ..weights.embeddings import embedding_report, write_report

    if args.k_rule == "elbow" and len(ks) < 3:  # before the report's passes over the matrix
        raise UserInputError(
            f"--k-rule elbow needs at least 3 values in --k (got {args.k}); e.g. --k 8,16,32,64"
        )
    params = {"model": args.model, "k": ks, "pca": args.pca, "seed": args.seed, "max_rows": args.max_rows,
              "k_rule": args.k_rule, "no_tokenizer": args.no_tokenizer}  # fmt: skip
    report = embedding_report(args.model, k_grid=ks, pca_dims=args.pca or None, seed=args.seed,
                              max_rows=args.max_rows, threads=args.threads, k_rule=args.k_rule,
                              decode_tokens=not args.no_tokenizer, progress=not args.no_progress)  # fmt: skip
    make_output_dir(args.out, "--out")
    s = report.summary
    with RunRecord(
        Path(args.out) / "run.json", "qwen-anatomy " + " ".join(sys.argv[1:]), params, seed=args.seed
    ) as rec:
        rec.data["threads"] = args.threads
        rec.data["k_rule"] = {"rule": s["k_rule"], "description": s["k_rule_description"],
                              "chosen_k": s["chosen_k"], "silhouette_best_k": s["silhouette_best_k"],
                              "elbow_k": s["elbow_k"]}  # fmt: skip
        rec.data["tokens_decoded"] = s["tokens_decoded"]
        rec.data["stages"].update({k: round(v, 4) for k, v in report.timings.items()})
        with rec.stage("write"):
            files = write_report(report, args.out)
    no_token = f"{s['no_token_rows']} no-token rows" if s["tokens_decoded"] else "no-token rows unknown"
    print(
        f"K={s['chosen_k']} by {s['k_rule']} (silhouette {s['chosen_silhouette']:.3f}; silhouette-best K="
        f"{s['silhouette_best_k']}, elbow K={s['elbow_k']}); {no_token}, {s['duplicate_rows']} duplicate rows, "
        f"{s['low_norm_rows']} low-norm rows; {len(files)} files in {args.out}"
    )
    if not s["tokens_decoded"]:
        print(s["tokenizer_note"])
    return 0


def _register_tokens(sub) -> None:
    """``tokens``: under-trained tokens ("Fishing for Magikarp"), chapter 12."""
    from ..devices import add_device_flags

    t = sub.add_parser(
        "tokens",
        help="under-trained tokens: categories, weight indicator, verification by prompting (report)",
        description="Categorise every token by its tokenizer round trip, rank the reachable ones by the "
        "cosine distance of their output row to the mean never-trained row (first principal component "
        "removed), prompt the model to repeat the lowest-ranked candidates and a random control, and "
        "write a ranked report (Land & Bartolo, 2024). With the defaults, qwen2.5-coder-0.5b takes "
        "10-13 minutes on two CPU cores.",
    )
    t.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    t.add_argument("--out", metavar="DIR", required=True, help="new directory for the report")
    t.add_argument(
        "--candidates",
        default=None,
        metavar="N|FRACTION",
        help="tokens to verify: a count (the N lowest-indicator reachable tokens) or a fraction of the "
        "reachable tokens; default 0.02, the paper's",
    )
    t.add_argument(
        "--control",
        type=non_negative_int,
        default=200,
        help="random reachable tokens verified as the base rate (default 200)",
    )
    t.add_argument(
        "--unused",
        metavar="IDS",
        help="ids known never to be trained, e.g. 151665-151935 (default: rows without a tokenizer entry "
        "and [PAD<id>] placeholders)",
    )
    t.add_argument(
        "--batch-size", type=positive_int, default=32, help="prompts per forward pass (default 32)"
    )
    t.add_argument(
        "--max-tokens", type=positive_int, help="quick look: verify at most N candidates and N control tokens"
    )
    t.add_argument("--seed", type=seed, default=0, help="control-sample seed, 0..2**32-1")
    t.add_argument(
        "--threads",
        type=positive_int,
        help="torch and BLAS threads (default: torch's own count, every core unless OMP_NUM_THREADS says "
        "otherwise; the 10-13 minutes above are with both cores)",
    )
    t.add_argument(
        "--all-tokens",
        action="store_true",
        help="also write tokens.csv.gz: every id with its category and indicators",
    )
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_device_flags(t)
    t.set_defaults(func=_tokens)


def _tokens(args) -> int:
    from pathlib import Path

    from ..devices import resolve
    from ..iochecks import check_output_dir, make_output_dir
    from ..runrecord import RunRecord
    from ..weights import undertrained as ut

    candidates = ut.parse_candidates(args.candidates) if args.candidates is not None else ut.PAPER_CANDIDATES
    device, dtype = resolve(args.device, args.dtype)  # before any weight is read
    check_output_dir(args.out, "--out")
    table = ut.token_table(args.model, unused=args.unused, threads=args.threads)
    params = {"model": args.model, "candidates": candidates, "control": args.control, "unused": args.unused,
              "batch_size": args.batch_size, "max_tokens": args.max_tokens, "seed": args.seed,
              "device": args.device, "dtype": args.dtype, "threads": args.threads}  # fmt: skip
    make_output_dir(args.out, "--out")
    with RunRecord(
        Path(args.out) / "run.json", "qwen-anatomy " + " ".join(sys.argv[1:]), params, seed=args.seed
    ) as rec:
        report = ut.run(args.model, candidates=candidates, control=args.control, batch_size=args.batch_size,
                        max_tokens=args.max_tokens, seed=args.seed, device=device, dtype=dtype,
                        threads=args.threads, progress=not args.no_progress, table=table)  # fmt: skip
        rec.data["stages"].update({k: round(v, 4) for k, v in report.timings.items()})
        rec.data["threads"] = report.summary["threads"]
        with rec.stage("write"):
            files = ut.write_report(report, args.out, all_tokens=args.all_tokens)
    s = report.summary
    print(
        f"{s['candidates_under_trained']} of {s['candidates']} candidates verified under-trained (max probability "
        f"< {s['threshold']:.0%}); control {s['control_under_trained']} of {s['control']}; "
        f"{len(files) + 1} files in {args.out} (report.md: the ranked list)"
    )
    return 0


def _download(args) -> int:
    from ..iochecks import check_output_root
    from ..weights.download import download

    check_output_root(args.out, "--out")  # an existing folder is fine: the download resumes into it

    path = download(args.model_id, args.out, args.revision)
    print(f"downloaded {args.model_id} to {path} (revision recorded in {path}/download.json)")
    return 0
