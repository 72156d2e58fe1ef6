"""Part II commands: ``params``, ``embeddings``, ``download`` (chapters 10-12).

Module level imports only argparse helpers: ``params --describe`` must answer in well under a second,
so it never imports numpy or torch.
"""

from __future__ import annotations

import sys

from ..cli import positive_int, seed
from ..registry import MODEL_HELP


def register(sub) -> None:
    p = sub.add_parser(
        "params",
        help="per-tensor statistics and spectra of a checkpoint (CSV/Parquet/JSONL)",
        description="One row per stored tensor, streamed one tensor at a time; resumable.",
    )
    p.add_argument("model", metavar="MODEL", help=f"{MODEL_HELP}; a GGUF is read as stored (quantised)")
    p.add_argument("--out", metavar="FILE", help="table path; .csv, .parquet or .jsonl picks the format")
    p.add_argument(
        "--spectra",
        choices=("none", "gram", "exact"),
        default="gram",
        help="singular values via the float64 Gram matrix (default), exact SVD route, or none",
    )
    p.add_argument("--threads", type=positive_int, default=1, help="BLAS/LAPACK threads (default 1)")
    p.add_argument("--include", metavar="REGEX", help="only tensors whose name matches")
    p.add_argument("--max-tensors", type=positive_int, help="stop after N tensors (quick looks)")
    p.add_argument(
        "--describe", action="store_true", help="header-only summary: shapes, counts, tying, bytes"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
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
    e.set_defaults(func=_embeddings)

    d = sub.add_parser(
        "download",
        help="download config, tokenizer and safetensors from the Hugging Face Hub (needs network)",
    )
    d.add_argument("model_id", metavar="MODEL_ID", help="hub id, e.g. Qwen/Qwen2.5-0.5B")
    d.add_argument("--out", metavar="DIR", required=True)
    d.add_argument("--revision", metavar="R", help="branch, tag or commit (default: main)")
    d.set_defaults(func=_download)


def _params(args) -> int:
    if args.describe:
        from ..weights.table import describe, format_describe

        print(format_describe(describe(args.model)))
        return 0
    from ..errors import UserInputError

    if not args.out:
        raise UserInputError("--out FILE is required (unless --describe); e.g. --out params.csv")
    from ..weights.table import analyse, table_format

    table_format(args.out)
    df = analyse(
        args.model,
        out=args.out,
        spectra=args.spectra,
        threads=args.threads,
        include=args.include,
        max_tensors=args.max_tensors,
        progress=not args.no_progress,
        command="qwen-anatomy " + " ".join(sys.argv[1:]),
    )
    bad = df[df["status"] != "ok"]
    print(
        f"wrote {len(df)} rows ({int(df['numel'].sum()):,} parameters) to {args.out}; run record {args.out}.run.json"
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

    params = {"model": args.model, "k": ks, "pca": args.pca, "seed": args.seed, "max_rows": args.max_rows}
    report = embedding_report(args.model, k_grid=ks, pca_dims=args.pca or None, seed=args.seed,
                              max_rows=args.max_rows, threads=args.threads)  # fmt: skip
    make_output_dir(args.out, "--out")
    with RunRecord(
        Path(args.out) / "run.json", "qwen-anatomy " + " ".join(sys.argv[1:]), params, seed=args.seed
    ) as rec:
        rec.data["threads"] = args.threads
        rec.data["stages"].update({k: round(v, 4) for k, v in report.timings.items()})
        with rec.stage("write"):
            files = write_report(report, args.out)
    s = report.summary
    print(
        f"K={s['chosen_k']} (silhouette {s['chosen_silhouette']:.3f}; rule: {s['k_rule']}); "
        f"{s['no_token_rows']} no-token rows, {s['duplicate_rows']} duplicate rows, {s['low_norm_rows']} low-norm rows; "
        f"{len(files)} files in {args.out}"
    )
    return 0


def _download(args) -> int:
    from ..iochecks import check_output_root
    from ..weights.download import download

    check_output_root(args.out, "--out")  # an existing folder is fine: the download resumes into it

    path = download(args.model_id, args.out, args.revision)
    print(f"downloaded {args.model_id} to {path} (revision recorded in {path}/download.json)")
    return 0
