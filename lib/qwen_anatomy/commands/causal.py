"""``qwen-anatomy causal train|eval|generate|suite|study|variants|report|pretrain``: CausalQwen from the command line (Part V).

Nothing heavy is imported at module level; every input is validated before a model is loaded.
``train`` writes a heads directory (the trained heads only: the frozen backbone is named, not copied):
heads.safetensors, causal_config.json, training_log.json and run_record.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
from pathlib import Path

from ..cli import positive_int
from ..devices import DEVICE_HELP, DEVICES, DTYPES
from ..errors import UserInputError
from ..registry import MODEL_HELP


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None


def _precision_flags(p) -> None:
    """``--device`` and ``--dtype`` of the backbone (the heads and losses stay float32)."""
    p.add_argument("--device", choices=DEVICES, default="cpu", help=DEVICE_HELP)
    p.add_argument(
        "--dtype",
        choices=DTYPES,
        default="float32",
        help="the backbone's weights and activations: float32 (default), bfloat16 or float16; the "
        "causal heads, their parameters and the losses stay float32",
    )


def _training_flags(p) -> None:
    """The flags `train` and `suite` share: backbone, budget, learning rates, seed, device, dtype."""
    p.add_argument(
        "--model", default="causal-tiny-lm", help=f"backbone (default causal-tiny-lm): {MODEL_HELP}"
    )
    p.add_argument("--n-train", type=positive_int, default=2000, help="synthetic training texts")
    p.add_argument("--steps", type=positive_int, default=300)
    p.add_argument("--batch-size", type=positive_int, default=16)
    p.add_argument("--lr", type=_float, default=1e-2)
    p.add_argument(
        "--lr-pretrained",
        type=_float,
        default=None,
        help="learning rate of the head matrices copied from the base model (default: --lr)",
    )
    p.add_argument("--seed", type=int, default=0)
    _precision_flags(p)


def register(subparsers) -> None:
    p = subparsers.add_parser("causal", help="CausalQwen: Cauchy abduction/action heads (Part V)")
    sub = p.add_subparsers(dest="causal_command", metavar="ACTION", parser_class=type(p))
    sub.required = True

    t = sub.add_parser("train", help="train CausalQwen (or the baseline) heads on a frozen backbone")
    _training_flags(t)
    t.add_argument("--out", required=True, type=Path, help="new directory for the trained heads")
    t.add_argument("--train-file", type=Path, help="training texts, one per line (default: synthetic texts)")
    t.add_argument("--max-length", type=positive_int, default=48)
    t.add_argument(
        "--baseline",
        action="store_true",
        help="train the softmax + Normal baseline instead (it reads --gamma0 and --lam; the flags marked "
        "'CausalQwen only' are refused with it)",
    )
    # Every model setting defaults to None ("not given": the CausalConfig default), so that a flag the
    # chosen model does not read can be refused instead of silently ignored.
    t.add_argument(
        "--causal-dim", type=positive_int, default=None, help="C (default: hidden size); CausalQwen only"
    )
    t.add_argument(
        "--gamma0", type=_float, default=None, help="initial scale of U / sigma of the baseline (10)"
    )
    t.add_argument(
        "--threshold",
        type=_float,
        default=None,
        help="OvR threshold C of --threshold-mode scalar (10); CausalQwen only",
    )
    t.add_argument(
        "--threshold-mode",
        default=None,
        help="scalar (one fixed C, default), per_class (C_k measured on the first training batch, frozen) "
        "or learnable (measured, then trained); CausalQwen only",
    )
    t.add_argument(
        "--alpha",
        type=_float,
        default=None,
        help="gate: 1 hard mask (default), 0 weight by P_<NUM>; CausalQwen only",
    )
    t.add_argument("--lam", type=_float, default=None, help="weight of the regression loss (1)")
    t.add_argument("--classifier", default=None, help="ovr (default) or softmax (ablation); CausalQwen only")
    t.add_argument(
        "--distribution", default=None, help="cauchy (default) or normal (ablation); CausalQwen only"
    )
    t.add_argument(
        "--abduction-init", default=None, help="identity (default) or random (ablation); CausalQwen only"
    )
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="evaluate trained heads on the evaluation sets")
    e.add_argument("--heads", required=True, type=Path, help="directory written by `causal train`")
    e.add_argument("--sets", default="basic,qa,extreme,boundary", help="comma-separated evaluation sets")
    e.add_argument("--eval-file", type=Path, help="evaluate on these texts (one per line) instead")
    e.add_argument("--n-eval", type=positive_int, default=64)
    e.add_argument("--out", type=Path, help="write the metrics (JSON) and a run record here (a new file)")
    _precision_flags(e)
    e.set_defaults(func=cmd_eval)

    g = sub.add_parser("generate", help="generate text; predicted <NUM> tokens print their values")
    g.add_argument("--heads", required=True, type=Path)
    g.add_argument("--prompt", required=True)
    g.add_argument("--mode", default="standard", help="standard, causal, shared or compatible")
    g.add_argument("--max-new-tokens", type=positive_int, default=20)
    g.add_argument("--temperature", type=_float, default=0.0, help="compatible mode only")
    g.add_argument("--seed", type=int, default=0)
    _precision_flags(g)
    g.set_defaults(func=cmd_generate)

    s = sub.add_parser("suite", help="run one experiment suite and save results with a run record")
    s.add_argument(
        "--suite", required=True, help="basic, comprehensive, comparison, ablation, initialization"
    )
    _training_flags(s)
    s.add_argument("--n-eval", type=positive_int, default=64)
    s.add_argument("--eval-batch", type=positive_int, default=16)
    s.add_argument("--log-every", type=positive_int, default=10)
    s.add_argument(
        "--set",
        dest="settings",
        action="append",
        default=[],
        metavar="KEY=JSON",
        help="any other suite setting, e.g. --set 'thresholds=[0, 100]' --set 'causal={\"gamma0\": 1}'",
    )
    s.add_argument("--out-root", type=Path, default=None, help="default: data/results/causal")
    s.set_defaults(func=cmd_suite)

    _study_parser(sub)

    rp = sub.add_parser(
        "report",
        help="figures (PNG) and summary.md for a saved suite or variants directory (as chapter 50 shows it)",
    )
    rp.add_argument(
        "results_dir",
        type=Path,
        metavar="RESULTS_DIR",
        help="a directory written by `causal suite` or `causal variants`",
    )
    rp.add_argument("--out", type=Path, default=None, help="a new directory (default: RESULTS_DIR/report)")
    rp.add_argument(
        "--reference",
        type=Path,
        default=None,
        help="a basic or comprehensive suite directory whose baseline the figures mark (default: the suite's "
        "own baseline, else the newest comprehensive run of the same backbone beside it); for a variants "
        "folder (written by `causal variants`), the study of the default head they are compared with "
        "(default: the one beside it with their budget)",
    )
    rp.set_defaults(func=cmd_report)

    r = sub.add_parser("pretrain", help="(re)train the small project backbone shipped as causal-tiny-lm")
    r.add_argument("--out", required=True, type=Path)
    r.add_argument("--steps", type=positive_int, default=600)
    r.add_argument("--seed", type=int, default=0)
    r.set_defaults(func=cmd_pretrain)


def _study_parser(sub) -> None:
    """``causal study``: both arms x seeds on one feature cache (qwen_anatomy.causal.study)."""

    st = sub.add_parser(
        "study",
        help="CausalQwen and the baseline, several seeds, on one feature cache, against the trivial references",
        description="Train and evaluate both arms for every seed on a cached frozen backbone; one folder per "
        "(arm, seed) under --out, finished runs reused, a run of another configuration refused. Settings not "
        "given take the library defaults (qwen_anatomy.causal.study.DEFAULTS).",
    )
    st.add_argument("--out", type=Path, default=None, help="study folder (default data/results/causal/study)")
    _study_flags(st)
    st.add_argument(
        "--estimate",
        action="store_true",
        help="time a few cached steps of each arm and print the study's projected cost; trains nothing, "
        "writes nothing",
    )
    st.add_argument(
        "--estimate-steps", type=positive_int, default=3, help="steps timed per arm (the first is warm-up)"
    )
    st.add_argument(
        "--estimate-out",
        type=Path,
        default=None,
        help="with --estimate: also save the measurement as DIR/estimate.json with its run record (a new "
        "folder; an existing estimate is never overwritten), so a chapter can quote it",
    )
    st.set_defaults(func=cmd_study)

    va = sub.add_parser(
        "variants",
        help="the head's design choices (comparison, ablation, initialization), each a CausalQwen study",
        description="Train every variant of a plan (configs/causal/variants.yaml) as a CausalQwen-only study "
        "under --out/<name>, with the study settings given here (those of the reference study the variants "
        "are compared with). Everything is checked before anything trains; finished runs are reused.",
    )
    va.add_argument(
        "--plan", type=Path, default=None, help="the variants (default configs/causal/variants.yaml)"
    )
    va.add_argument("--out", type=Path, required=True, help="the variants folder (created or resumed)")
    va.add_argument("--only", nargs="+", default=None, metavar="NAME", help="train only these variants")
    _study_flags(va)
    va.set_defaults(func=cmd_variants)


def _study_flags(st) -> None:
    """The study settings shared by ``causal study`` and ``causal variants``."""
    from ..cli import non_negative_int

    st.add_argument("--model", default=None, help=f"backbone (default causal-tiny-lm): {MODEL_HELP}")
    st.add_argument("--seeds", type=non_negative_int, nargs="+", default=None, help="default 0 1 2")
    st.add_argument("--steps", type=positive_int, default=None, help="optimiser steps per run (300)")
    st.add_argument("--batch-size", type=positive_int, default=None, help="texts per step (16)")
    st.add_argument("--lr", type=_float, default=None, help="learning rate (0.01)")
    st.add_argument(
        "--lr-pretrained", type=_float, default=None, help="rate of the copied head matrices (default: --lr)"
    )
    st.add_argument("--n-train", type=positive_int, default=None, help="training texts (2000)")
    st.add_argument("--n-eval", type=positive_int, default=None, help="texts per evaluation set (64)")
    st.add_argument("--max-length", type=positive_int, default=None, help="tokens per text (64)")
    st.add_argument(
        "--train-layers",
        type=non_negative_int,
        default=None,
        help="top backbone layers fine-tuned on the cache (0: heads only, the default)",
    )
    st.add_argument("--data-seed", type=non_negative_int, default=None, help="seed of the training texts (0)")
    st.add_argument(
        "--vocab",
        default=None,
        metavar="{full,template}",  # checked by causal.study.check_config (one line, exit 2)
        help="output classes of both arms: every token id (full, the default: the spec's design) or only "
        "the ids of the study's texts, <NUM> included (template: a step costs a fraction, and every metric "
        "is over those classes)",
    )
    st.add_argument("--log-every", type=positive_int, default=None)
    st.add_argument("--eval-batch", type=positive_int, default=None)
    st.add_argument(
        "--set",
        dest="settings",
        action="append",
        default=[],
        metavar="KEY=JSON",
        help='any other study setting, e.g. --set \'causal={"threshold_mode": "per_class"}\' '
        "--set 'arms=[\"baseline\"]'",
    )
    st.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="where feature caches live (default scratch/causal-cache)",
    )
    st.add_argument("--no-progress", action="store_true", help="no progress bars")
    _precision_flags(st)


STUDY_FLAGS = {
    "model": "model",
    "seeds": "seeds",
    "steps": "steps",
    "batch_size": "batch_size",
    "lr": "lr",
    "lr_pretrained": "lr_pretrained",
    "n_train": "n_train",
    "n_eval": "n_eval",
    "max_length": "max_length",
    "train_layers": "train_layers",
    "data_seed": "data_seed",
    "vocab": "vocab",
    "log_every": "log_every",
    "eval_batch": "eval_batch",
}


def _study_config(args) -> dict:
    """The study settings given on the command line (flags, then --set KEY=JSON)."""
    config = {
        key: getattr(args, attr) for attr, key in STUDY_FLAGS.items() if getattr(args, attr) is not None
    }
    for item in args.settings:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UserInputError(
                f"--set {item!r}: write KEY=VALUE with a JSON value, e.g. --set 'n_eval=100'"
            )
        if key in config:
            raise UserInputError(
                f"--set {item!r}: {key} is already given (by its flag or an earlier --set); give it once"
            )
        try:
            config[key] = json.loads(text)
        except json.JSONDecodeError:
            raise UserInputError(
                f"--set {item!r}: the value {text!r} is not JSON (quote strings: --set 'model=\"name\"')"
            ) from None
    if args.cache_dir is not None:
        config["cache_dir"] = str(args.cache_dir)
    return config


def cmd_study(args) -> int:
    from ..causal import study
    from ..devices import resolve

    config = _study_config(args)
    cfg = study.check_config(config)
    resolve(args.device, args.dtype)
    if args.estimate_out is not None and not args.estimate:
        raise UserInputError("--estimate-out saves an estimate: give it together with --estimate")
    if args.estimate:
        study.check_model(cfg["model"])
        if args.estimate_out is not None:
            study.check_estimate_out(args.estimate_out)
        measured = study.estimate(
            cfg,
            args.estimate_steps,
            device=args.device,
            dtype=args.dtype,
            log=lambda m: print(m, flush=True),
            out=args.estimate_out,
        )
        print(json.dumps(measured, indent=2))
        print(study.project_sentence(cfg, measured["projection"]))
        if args.estimate_out is not None:
            print(f"estimate saved in {args.estimate_out / study.ESTIMATE_FILE}")
        return 0
    out = args.out or study.STUDY_ROOT
    study.plan(cfg, out)  # refuses a finished run of another configuration before anything loads
    result = study.run(
        cfg,
        out,
        progress=not args.no_progress,
        log=lambda m: print(m, flush=True),
        device=args.device,
        dtype=args.dtype,
    )
    print(
        f"study in {out}: trained {len(result['trained'])} run(s), reused {len(result['reused'])}"
        + (f"; feature cache {result['cache']}" if result["cache"] else "")
    )
    return 0


def cmd_variants(args) -> int:
    from ..causal import variants
    from ..devices import resolve

    plan = variants.load_plan(args.plan or variants.PLAN)
    config = _study_config(args)
    resolve(args.device, args.dtype)
    result = variants.run(
        plan,
        config,
        args.out,
        only=args.only,
        progress=not args.no_progress,
        log=lambda m: print(m, flush=True),
        device=args.device,
        dtype=args.dtype,
    )
    names = {r.split("/")[0] for runs in result.values() for r in runs}
    print(
        f"variants in {args.out}: {len(names)} variant(s), trained {len(result['trained'])} run(s), reused "
        f"{len(result['reused'])}"
        + (f"; diverged (recorded as failed): {', '.join(result['diverged'])}" if result["diverged"] else "")
    )
    return 0


def _read_texts(path: Path | None, what: str) -> list[str] | None:
    if path is None:
        return None
    from ..iochecks import read_text

    texts = [
        line.strip()
        for line in read_text(path, what, "give a UTF-8 text file, one text per line").splitlines()
        if line.strip()
    ]
    if not texts:
        raise UserInputError(f"{what} {path} is empty: it needs at least one non-blank line of text")
    return texts


# `causal train` flags that set a CausalConfig field (flag -> field); each defaults to None = not given
CONFIG_FLAGS = {
    "--causal-dim": "causal_dim",
    "--gamma0": "gamma0",
    "--threshold": "threshold",
    "--threshold-mode": "threshold_mode",
    "--alpha": "alpha",
    "--lam": "lam",
    "--classifier": "classifier",
    "--distribution": "distribution",
    "--abduction-init": "abduction_init",
}


def _given_config(args) -> dict:
    """The CausalConfig fields the user passed explicitly (flags left at None are not given)."""
    return {
        field: getattr(args, field) for field in CONFIG_FLAGS.values() if getattr(args, field) is not None
    }


def _config_from_args(args):
    """The CausalConfig of `causal train`: the given flags over the defaults, seeded by --seed; refuses
    (before anything loads) flags the chosen model would not read."""
    from ..causal.model import MEASURED_THRESHOLD_MODES, BaselineQwen, CausalConfig, baseline_conflicts

    given = _given_config(args)
    config = CausalConfig(**given, seed=args.seed)
    config.validate()  # bad values (an unknown --threshold-mode, alpha outside [0, 1] ...) first
    flag = {field: name for name, field in CONFIG_FLAGS.items()}
    if args.baseline:
        bad = baseline_conflicts(given)
        if bad:
            fixed = ", ".join(f"{k}={v}" for k, v in BaselineQwen.FIXED.items())
            raise UserInputError(
                f"{', '.join(f'{flag[f]} {given[f]}' for f in bad)}: "
                f"{'does' if len(bad) == 1 else 'do'} not apply to --baseline (a softmax "
                f"head with a Normal regression head: {fixed}; it reads --gamma0 and --lam only); drop "
                f"{' and '.join(flag[f] for f in bad)}, or drop --baseline to train CausalQwen"
            )
    elif config.threshold_mode in MEASURED_THRESHOLD_MODES and "threshold" in given:
        raise UserInputError(
            f"--threshold {given['threshold']:g} does not apply to --threshold-mode {config.threshold_mode} "
            "(it measures C_k on the first training batch); drop --threshold, or use --threshold-mode scalar"
        )
    return config


def cmd_train(args) -> int:
    from ..devices import resolve
    from ..iochecks import check_output_dir, make_output_dir
    from ..loading import load_config, resolve_model

    config = _config_from_args(args)  # refuses flags the model would not read, before anything else
    device, dtype = resolve(args.device, args.dtype)
    check_output_dir(args.out, "--out")
    model_path = resolve_model(args.model)
    hidden = load_config(model_path).hidden_size
    config.validate(None if args.baseline else hidden)
    for flag, value in (("--lr", args.lr), ("--lr-pretrained", args.lr_pretrained)):
        if value is not None and not (value > 0 and value < float("inf")):
            raise UserInputError(f"{flag} {value} must be a finite number > 0")
    texts = _read_texts(args.train_file, "--train-file")
    if not (model_path / "tokenizer.json").is_file():
        raise UserInputError(f"model {args.model!r} has no tokenizer.json; CausalQwen needs one")

    import torch
    from safetensors.torch import save_file

    from ..causal.data import make_texts
    from ..causal.model import BaselineQwen, CausalQwen
    from ..causal.numtok import NumberTokenizer
    from ..causal.train import train
    from ..loading import load_model
    from ..runrecord import RunRecord, atomic_write_json

    torch.manual_seed(args.seed)
    # the flags as given (model settings only when passed) and, once built, what the model actually used
    params = {
        k: (str(v) if isinstance(v, Path) else v)
        for k, v in vars(args).items()
        if k != "func" and not (k in CONFIG_FLAGS.values() and v is None)
    }
    make_output_dir(args.out, "--out")
    with RunRecord(
        args.out / "run_record.json", "qwen-anatomy causal train", params, seed=args.seed
    ) as record:
        with record.stage("load"):
            base, tok = load_model(args.model, device=device, dtype=dtype)
            if tok is None:
                raise UserInputError(f"model {args.model!r} has no tokenizer.json; CausalQwen needs one")
            numtok = NumberTokenizer(tok)
            cls = BaselineQwen if args.baseline else CausalQwen
            model = cls(base, numtok.num_token_id, config)
            record.data["parameters"]["model_config"] = model.used_config()
        if texts is None:
            texts = make_texts("train", args.n_train, args.seed)
        with record.stage("train"):
            log = train(
                model,
                numtok,
                texts,
                args.steps,
                args.batch_size,
                args.max_length,
                args.lr,
                args.seed,
                on_log=lambda row: print(json.dumps({k: round(v, 4) for k, v in row.items()})),
                lr_pretrained=args.lr_pretrained,
            )
        state = {
            k: v.detach().contiguous() for k, v in model.state_dict().items() if not k.startswith("backbone.")
        }
        save_file(state, str(args.out / "heads.safetensors"))
        atomic_write_json(
            args.out / "causal_config.json",
            {
                "kind": "baseline" if args.baseline else "causal",
                "model": str(args.model),
                "num_token_id": numtok.num_token_id,
                "config": model.config.to_dict(),
            },
        )
        atomic_write_json(args.out / "training_log.json", log)
    print(f"wrote {args.out}")
    return 0


HEADS_HINT = "point --heads at a directory written by `causal train --out`"


def _heads_meta(path: Path) -> dict:
    """The checked causal_config.json of a heads directory (before any model is loaded)."""
    from ..causal.model import CausalConfig
    from ..iochecks import read_json

    if path.is_file():
        raise UserInputError(f"--heads {path} is a file, not a directory: {HEADS_HINT}")
    if not path.is_dir():
        raise UserInputError(f"--heads {path} does not exist: {HEADS_HINT}")
    meta_file = path / "causal_config.json"
    if not meta_file.is_file():
        raise UserInputError(f"{path} has no causal_config.json: {HEADS_HINT}")
    meta = read_json(meta_file, "heads config")
    problem = None
    if not isinstance(meta, dict):
        problem = "not a JSON object"
    elif meta.get("kind") not in ("causal", "baseline"):
        problem = f"kind {meta.get('kind')!r} is neither 'causal' nor 'baseline'"
    elif not isinstance(meta.get("model"), str) or not meta["model"]:
        problem = "no backbone 'model' name"
    elif not isinstance(meta.get("num_token_id"), int) or isinstance(meta["num_token_id"], bool):
        problem = f"num_token_id {meta.get('num_token_id')!r} is not an integer"
    elif not isinstance(meta.get("config"), dict):
        problem = "no 'config' mapping"
    else:
        try:
            CausalConfig(**meta["config"]).validate()
        except TypeError:
            known = sorted(CausalConfig.__dataclass_fields__)
            problem = f"its config has fields other than {known}"
        except UserInputError as err:
            problem = f"its config is invalid ({err})"
    if problem:
        raise UserInputError(f"{meta_file} is damaged: {problem}; retrain with `causal train` or repair it")
    return meta


def load_heads(path: Path, device="cpu", dtype="float32"):
    """(model, NumberTokenizer) from a directory written by ``causal train``; every file is checked
    (and the heads' tensors read) before the backbone is loaded, on ``device`` in ``dtype`` (the heads
    stay float32)."""
    from ..devices import resolve

    device, dtype = resolve(device, dtype)
    path = Path(path)
    meta = _heads_meta(path)
    from ..iochecks import check_input_file

    weights = check_input_file(path / "heads.safetensors", "heads file", HEADS_HINT)
    from safetensors.torch import load_file

    try:
        state = load_file(str(weights))
    except Exception as err:  # noqa: BLE001 - any failure to parse is a damaged file
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UserInputError(
            f"{weights} is damaged ({reason}); retrain with `causal train` or restore it"
        ) from None

    from ..causal.model import BaselineQwen, CausalConfig, CausalQwen
    from ..causal.numtok import NumberTokenizer
    from ..loading import load_model

    base, tok = load_model(meta["model"], device=device, dtype=dtype)
    if tok is None:
        raise UserInputError(f"the backbone {meta['model']!r} named in {path} has no tokenizer.json")
    numtok = NumberTokenizer(tok)
    cls = BaselineQwen if meta["kind"] == "baseline" else CausalQwen
    try:
        model = cls(base, meta["num_token_id"], CausalConfig(**meta["config"]))
        missing, unexpected = model.load_state_dict(state, strict=False)
    except (RuntimeError, ValueError, IndexError, UserInputError) as err:
        # torch lists the problems below a header line: name the first problem, not the header
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        reason = next(
            (line for line in lines if "mismatch" in line), lines[0] if lines else type(err).__name__
        )
        raise UserInputError(
            f"{weights} does not fit the backbone {meta['model']!r} ({reason}); retrain with `causal train`"
        ) from None
    if unexpected or any(not k.startswith("backbone.") for k in missing):
        keys = unexpected or [k for k in missing if not k.startswith("backbone.")]
        raise UserInputError(f"{weights} does not fit the model: {', '.join(keys[:3])}; retrain it")
    return model.eval(), numtok


def _eval_record_path(out: Path) -> Path:
    return out.with_name(out.stem + ".run_record.json")


def cmd_eval(args) -> int:
    from ..causal.data import EVAL_SETS

    sets = [s.strip() for s in args.sets.split(",") if s.strip()]
    bad = [s for s in sets if s not in EVAL_SETS]
    if bad or not sets:
        raise UserInputError(f"--sets {args.sets!r}: use some of {','.join(EVAL_SETS)}")
    from ..iochecks import check_output_file, set_aside_failed_records

    record_path = _eval_record_path(args.out) if args.out is not None else None
    if args.out is not None:
        check_output_file(args.out, "--out", derived=[record_path], records=[record_path])
    custom = _read_texts(args.eval_file, "--eval-file")
    model, numtok = load_heads(args.heads, args.device, args.dtype)
    from ..causal.data import evaluation_sets
    from ..causal.train import evaluate
    from ..runrecord import RunRecord, atomic_write_json

    data = (
        {"file": custom} if custom else {k: v for k, v in evaluation_sets(args.n_eval).items() if k in sets}
    )
    params = {
        "heads": str(args.heads),
        "sets": list(data),
        "n_eval": args.n_eval,
        "device": args.device,
        "dtype": args.dtype,
    }
    if args.out is not None:
        set_aside_failed_records([record_path])
    record = (
        RunRecord(record_path, "qwen-anatomy causal eval", params) if args.out else contextlib.nullcontext()
    )
    results = {}
    with record:
        for name, texts in data.items():
            results[name] = m = evaluate(model, numtok, texts)
            print(
                f"{name:9s} acc {m['accuracy']:.3f} (compat {m['compat_accuracy']:.3f})  <NUM> F1 {m['num_f1']:.3f}  "
                f"MAE {_metric(m['mae'], '.3g')}  RMSE {_metric(m['rmse'], '.3g')}  "
                f"coverage95 {_metric(m['coverage95'], '.3f')}  ECE {m['ece']:.3f}"
                + (
                    "  (no number predicted correctly: MAE, RMSE undefined)"
                    if not m["n_numbers_predicted"]
                    else ""
                )
            )
        if args.out:
            atomic_write_json(args.out, results)
    return 0


def _metric(value: float, spec: str) -> str:
    """A metric for the terminal; an undefined one (NaN, see causal.train.position_metrics) as such."""
    return "undefined" if value != value else format(value, spec)


def cmd_generate(args) -> int:
    from ..causal.train import MODES

    if args.mode not in MODES:
        raise UserInputError(f"--mode {args.mode!r}: use one of {', '.join(MODES)}")
    if not args.prompt.strip():
        raise UserInputError("--prompt is empty: give some text")
    if not (0 <= args.temperature < float("inf")):
        raise UserInputError(f"--temperature {args.temperature} must be a finite number >= 0")
    if args.temperature > 0 and args.mode != "compatible":
        raise UserInputError(
            f"--temperature {args.temperature:g} applies to --mode compatible only (--mode {args.mode} takes "
            "the OvR argmax); drop --temperature or use --mode compatible"
        )
    model, numtok = load_heads(args.heads, args.device, args.dtype)
    if args.mode in ("causal", "shared") and not hasattr(model, "causal_dim"):
        raise UserInputError(f"--mode {args.mode} needs CausalQwen heads; {args.heads} holds the baseline")
    from ..causal.train import generate

    out = generate(model, numtok, args.prompt, args.max_new_tokens, args.mode, args.temperature, args.seed)
    print(args.prompt + out["text"])
    if out["numbers"]:
        print(f"predicted numbers: {out['numbers']}")
    return 0


def cmd_suite(args) -> int:
    from ..causal.experiments import RESULTS_ROOT, check_config, run_and_save

    config = {
        "suite": args.suite,
        "model": args.model,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "n_train": args.n_train,
        "n_eval": args.n_eval,
        "lr": args.lr,
        "lr_pretrained": args.lr_pretrained,
        "seed": args.seed,
        "eval_batch": args.eval_batch,
        "log_every": args.log_every,
    }
    for item in args.settings:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise UserInputError(
                f"--set {item!r}: write KEY=VALUE with a JSON value, e.g. --set 'lambdas=[1, 10]'"
            )
        try:
            config[key.strip()] = json.loads(text)
        except json.JSONDecodeError:
            raise UserInputError(
                f"--set {item!r}: the value {text!r} is not JSON (quote strings: --set 'model=\"name\"')"
            ) from None
    from ..iochecks import check_output_root

    check_output_root(args.out_root or RESULTS_ROOT, "--out-root")
    check_config(config)
    out = run_and_save(config, args.out_root or RESULTS_ROOT, device=args.device, dtype=args.dtype)
    print(f"wrote {out}")
    return 0


def cmd_report(args) -> int:
    import matplotlib

    matplotlib.use("Agg")  # files only, no window
    from ..causal import variants
    from ..causal.report import write_report

    if variants.is_variants_dir(args.results_dir):
        out = variants.write_report(args.results_dir, args.out, args.reference)
    else:
        out = write_report(args.results_dir, args.out, args.reference)
    print(f"wrote {out}")
    return 0


def cmd_pretrain(args) -> int:
    from ..iochecks import check_output_dir, make_output_dir

    check_output_dir(args.out, "--out")
    from ..causal.data import pretrain_project_lm

    make_output_dir(args.out, "--out")

    print(f"wrote {pretrain_project_lm(args.out, steps=args.steps, seed=args.seed)}")
    return 0
