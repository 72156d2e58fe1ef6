"""Part IV commands: ``heads`` (importance against plasticity) and ``heads agree`` (across-run
agreement of saved runs). Heavy imports happen inside the handlers."""

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


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None


def _route_agree(parser: argparse.ArgumentParser, agree: argparse.ArgumentParser) -> None:
    """``heads agree ...`` goes to the agree parser; ``heads MODEL ...`` stays as it always was.

    (argparse cannot give one command both a positional MODEL and sub-commands, so the ``heads``
    parser looks at its first word; a model directory named ``agree`` is reachable as ``./agree``.)
    """

    class HeadsParser(type(parser)):
        def parse_known_args(self, args=None, namespace=None):
            if args and args[0] == "agree":
                return agree.parse_known_args(args[1:], namespace)
            return super().parse_known_args(args, namespace)

    parser.__class__ = HeadsParser


def register(sub) -> None:
    p = sub.add_parser(
        "heads",
        help="per-head ablation importance, gradient proxies and (with --finetuned) update sizes; "
        "`heads agree DIR DIR ...` compares saved runs",
        description="Attention heads: importance against plasticity (book Part IV). Writes heads.csv, "
        "groups.csv, stats.json, cases.json, subset_indices.json, figures and a run record into --out. "
        "`qwen-anatomy heads agree DIR DIR ...` measures the across-run agreement of saved runs "
        "(see `qwen-anatomy heads agree -h`).",
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
    p.add_argument(
        "--max-examples",
        type=positive_int,
        default=256,
        help="evaluation examples used (N > 0): the data file's first N non-blank lines, or with "
        "--subset-seed N of them drawn at random (not consulted with --subset-file)",
    )
    subset = p.add_mutually_exclusive_group()
    subset.add_argument(
        "--subset-seed",
        type=_int,
        default=None,
        metavar="S",
        help="draw the --max-examples evaluation examples at random from the whole data file with seed "
        "S (0..2**32-1; the original used 1,024 examples and seed 999); the drawn indices are written "
        "to subset_indices.json in --out; None: the first --max-examples examples",
    )
    subset.add_argument(
        "--subset-file",
        type=Path,
        default=None,
        metavar="PATH",
        help="evaluate exactly the examples listed in a subset_indices.json of an earlier run (checked "
        "against --data: same number of examples and same bytes)",
    )
    p.add_argument(
        "--heads",
        default=None,
        metavar="L.H,L.H,...",
        help="ablate only these query heads (layer.head, counted from 0, e.g. 0.3,2.1); gradient "
        "proxies still cover every head; None: every head",
    )
    p.add_argument(
        "--top-k",
        type=_int,
        default=None,
        metavar="K",
        help="size of every top-K set (top-K overlaps and the 'top' side of the counterexample sets), "
        "1..number of ablated heads; None: 10%% of the heads (the original used 20)",
    )
    p.add_argument(
        "--theta0-from",
        type=Path,
        default=None,
        metavar="DIR",
        help="reuse θ0's measurements (theta0.npz) of an earlier run in DIR instead of measuring θ0 "
        "again; refused unless DIR measured the same model, data subset, ablation, heads and tokens "
        "(the real pair measures θ0 once for all fine-tuning seeds)",
    )
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

    agree = type(p)(
        prog=f"{p.prog} agree",
        description="Across-run agreement of saved head analyses (book Part IV): for every quantity "
        "column shared by the runs' heads.csv (importance, gradient proxies, update sizes), the "
        "pairwise Spearman ρ between runs and the overlap of their top-K sets against the chance "
        "level K²/N. Writes agreement.csv (one row per quantity), agreement_pairs.csv (one row per "
        "quantity and pair of runs), agreement.json and a run record into --out.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    agree.add_argument(
        "runs",
        nargs="+",
        type=Path,
        metavar="DIR",
        help="two or more output folders of `qwen-anatomy heads` (or seed-<s> folders of the book "
        "experiment) for the same model architecture",
    )
    agree.add_argument("--out", required=True, type=Path, help="new output directory (never overwritten)")
    agree.add_argument(
        "--top-k",
        type=_int,
        default=None,
        metavar="K",
        help="size of the top-K sets, 1..number of heads compared; None: 10%% of them",
    )
    agree.add_argument(
        "--quantities",
        default=None,
        metavar="Q,Q,...",
        help="columns to compare, e.g. I_post,Urel; None: every numeric column the runs share",
    )
    agree.set_defaults(func=cmd_agree, command="heads agree")
    _route_agree(p, agree)


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
    from ..heads.ablation import parse_heads
    from ..heads.core import config_layout
    from ..heads.data import draw_subset, pool_size, read_subset_file
    from ..heads.stats import check_top_k

    lay = config_layout(load_config(path0))
    chosen = parse_heads(args.heads, lay) if args.heads is not None else None
    n_ablated = lay.n_heads_total if chosen is None else len(chosen)
    if args.top_k is not None:
        among = "heads ablated" + (" (--heads)" if chosen is not None else "")
        check_top_k(args.top_k, n_ablated, among=among)
    pool = pool_size(args.data)
    indices, subset_seed = None, args.subset_seed  # indices None: the first --max-examples examples
    if args.subset_file is not None:
        earlier = read_subset_file(args.subset_file, args.data)
        indices, subset_seed = earlier["indices"], earlier.get("seed")
    elif args.subset_seed is not None:
        indices = draw_subset(pool, args.max_examples, args.subset_seed).tolist()
    early = None
    if is_task_file(args.data) or not (path0 / "tokenizer.json").is_file():
        # a task file is read and checked in full now; text without a tokenizer is refused now
        early = load_eval_data(args.data, None, args.max_examples, args.max_tokens, indices)
    if early is not None and early[1] == "task":
        from ..tasks.vocab import VOCAB_SIZE

        vocab = load_config(path0).vocab_size
        if vocab < VOCAB_SIZE:
            raise UserInputError(
                f"{args.data} is a task file (the shared task vocabulary, {VOCAB_SIZE} ids) but "
                f"{args.model} has only {vocab} token ids: use a model trained on the tasks, or text data"
            )
    earlier0 = check_theta0_from(args, path0) if args.theta0_from is not None else None
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

    from ..heads.analysis import ablation_passes, measure
    from ..heads.core import head_layout
    from ..heads.experiment import write_analysis
    from ..heads.plasticity import update_magnitudes
    from ..loading import load_model
    from ..progress import progress_bar
    from ..runrecord import RunRecord

    torch.set_num_threads(args.threads)
    model0, tok = load_model(
        path0, weights_only_pickle=args.allow_pickle_weights_only, device=device, dtype=dtype
    )
    batch, kind = early or load_eval_data(args.data, tok, args.max_examples, args.max_tokens, indices)
    from ..validate import check_token_ids

    check_token_ids(  # a tokenizer larger than the embedding table (an IndexError deep inside otherwise)
        int(batch.input_ids.max()), model0.config.vocab_size, f"data file {args.data}", f"{args.model}'s "
        "tokenizer.json does not belong to its weights"
    )  # fmt: skip
    from ..heads.data import SUBSET_FILE, subset_record
    from ..runrecord import atomic_write_json

    drawn = indices if indices is not None else list(range(min(pool, args.max_examples)))
    subset = subset_record(drawn, pool, subset_seed, args.data, evaluated=batch.source.tolist())
    if earlier0 is not None:
        check_theta0_subset(args.theta0_from, subset)
    make_output_dir(args.out, "--out")
    params = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "func"}
    record = RunRecord(args.out / "run_record.json", "qwen-anatomy heads", params)
    with record:
        atomic_write_json(args.out / SUBSET_FILE, subset)
        record.data["data_kind"] = kind
        record.data["n_examples"] = len(batch)
        record.data["subset"] = {k: v for k, v in subset.items() if k != "indices"} | {"file": SUBSET_FILE}
        record.data["heads_ablated"] = n_ablated
        if earlier0 is not None:
            record.data["theta0_from"] = str(args.theta0_from)
        models = [("θ0", model0)]
        if path1 is not None:
            model1, _ = load_model(
                path1, weights_only_pickle=args.allow_pickle_weights_only, device=device, dtype=dtype
            )
            models.append(("θ1", model1))
        lay_total = ablation_passes(head_layout(model0), len(batch), args.batch_size, n_ablated) * len(models)
        results = []
        with progress_bar(total=lay_total, desc="ablating heads", unit="pass") as bar:
            for name, model in models:
                if name == "θ0" and earlier0 is not None:
                    from ..heads.analysis import Measurements

                    results.append(Measurements.from_npz(args.theta0_from / "theta0.npz"))
                    bar.update(lay_total // len(models))
                    continue
                with record.stage(f"measure {name}"):
                    results.append(
                        measure(
                            model,
                            batch,
                            args.ablation,
                            heads=chosen,
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
                top_k=args.top_k,
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
    from ..heads.analysis import head_quantities
    from ..heads.report import most_important_line

    print(most_important_line(head_quantities(results[0])["I_pre"], lay.num_heads))
    return 0


# What must match for θ0's measurements of an earlier run to stand for this run's.
THETA0_KEYS = ("ablation", "max_examples", "subset_seed", "heads", "max_tokens", "dtype", "device")


def check_theta0_from(args, path0: Path) -> dict:
    """The run record of ``--theta0-from DIR``, checked to be a successful run of the same θ0 with
    the same measurement settings; UserInputError naming the first difference otherwise."""
    from ..iochecks import read_run_record, record_status
    from ..loading import resolve_model

    where = f"--theta0-from {args.theta0_from}"
    if (
        not (args.theta0_from / "theta0.npz").is_file()
        or not (args.theta0_from / "run_record.json").is_file()
    ):
        raise UserInputError(
            f"{where} holds no theta0.npz and run_record.json: give a `qwen-anatomy heads --out` folder"
        )
    record = read_run_record(args.theta0_from / "run_record.json")
    if record_status(record) != "success" or record.get("command") != "qwen-anatomy heads":
        raise UserInputError(
            f"{where} is not a finished `qwen-anatomy heads` run (status {record.get('status')!r})"
        )
    params = record.get("parameters", {})
    try:
        same_model = resolve_model(params.get("model", "")) == path0
    except UserInputError:
        same_model = False
    if not same_model:
        raise UserInputError(
            f"{where} measured model {params.get('model')!r}, not {args.model!r}: θ0 must be the same"
        )
    for key in THETA0_KEYS:
        if params.get(key) != getattr(args, key):
            raise UserInputError(
                f"{where} was measured with {key.replace('_', '-')} {params.get(key)!r}, this run asks for "
                f"{getattr(args, key)!r}: measure θ0 again (drop --theta0-from) or use the same settings"
            )
    return record


def check_theta0_subset(theta0_dir: Path, subset: dict) -> None:
    """The earlier run evaluated exactly the same examples of the same data bytes."""
    from ..heads.data import SUBSET_FILE
    from ..iochecks import read_json

    earlier = read_json(theta0_dir / SUBSET_FILE, "--theta0-from subset file")
    keys = ("data_sha256", "indices", "skipped", "pool_size")
    if not isinstance(earlier, dict) or any(earlier.get(k) != subset[k] for k in keys):
        raise UserInputError(
            f"--theta0-from {theta0_dir} evaluated other examples (its {SUBSET_FILE} differs in data bytes or "
            "indices): measure θ0 again or give the same --data and subset"
        )


def cmd_agree(args) -> int:
    from ..heads.agreement import agreement, format_summary, read_heads_table
    from ..iochecks import check_output_dir, make_output_dir
    from ..runrecord import RunRecord, atomic_write_json, atomic_write_text

    if len(args.runs) < 2:
        raise UserInputError(f"heads agree needs at least 2 run folders, got {len(args.runs)}")
    seen = {}
    for run in args.runs:
        key = run.resolve()
        if key in seen:
            raise UserInputError(f"run folder {run} is given twice (also as {seen[key]}); list each run once")
        seen[key] = run
    check_output_dir(args.out, "--out")
    tables = {str(run): read_heads_table(run) for run in args.runs}
    quantities = None
    if args.quantities is not None:
        quantities = [q.strip() for q in args.quantities.split(",") if q.strip()]
        if not quantities:
            raise UserInputError("--quantities is empty: give column names such as I_post,Urel")
    summary, pairs = agreement(tables, quantities, args.top_k)  # validates heads, quantities and K
    make_output_dir(args.out, "--out")
    params = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "func"}
    params["runs"] = [str(r) for r in args.runs]
    with RunRecord(args.out / "run_record.json", "qwen-anatomy heads agree", params):
        atomic_write_text(args.out / "agreement.csv", summary.to_csv(index=False))
        atomic_write_text(args.out / "agreement_pairs.csv", pairs.to_csv(index=False))
        atomic_write_json(
            args.out / "agreement.json",
            {
                "runs": [str(r) for r in args.runs],
                "top_k": args.top_k,
                "quantities": summary.to_dict(orient="records"),
                "pairs": pairs.to_dict(orient="records"),
            },
        )
    print(
        f"agreement of {len(args.runs)} runs ({len(summary)} quantities, pairwise Spearman and top-K overlap):"
    )
    print(format_summary(summary))
    print(f"results in {args.out}")
    return 0
