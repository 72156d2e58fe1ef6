"""The experiment suites of chapter 50_causal_heads, each a parameterised ``run(config) -> results``.

Suites: ``basic`` (CausalQwen vs baseline, basic set), ``comprehensive`` (the same two models on all
four evaluation sets), ``comparison`` (threshold, causal dimension, lambda, alpha), ``ablation``
(OvR vs softmax cross-entropy x Cauchy vs Normal) and ``initialization`` (gamma0, identity vs random
abduction). Every variant starts from the same frozen backbone, sees the same training batches
(same seed) for the same number of steps, and is evaluated on the same fixed evaluation sets.

Saved results (one directory per run, never overwritten) live under
``data/results/causal/<suite>/<model>-<UTC timestamp>/`` as ``results.json`` beside a
``run_record.json``. Regenerate with ``qwen-anatomy causal suite --suite NAME [--model M --steps N]``.
"""

from __future__ import annotations

import copy
import json
import math
import time
from pathlib import Path

from ..errors import UserInputError
from ..runrecord import REPO_ROOT, RunRecord, atomic_write_json
from .data import EVAL_SETS, evaluation_sets, make_texts

RESULTS_ROOT = REPO_ROOT / "data" / "results" / "causal"
SUITES = ("basic", "comprehensive", "comparison", "ablation", "initialization")

DEFAULTS = {
    "model": "causal-tiny-lm",
    "steps": 300,
    "batch_size": 16,
    "max_length": 48,
    "lr": 1e-2,
    "lr_pretrained": None,  # the copied head matrices' learning rate (None: lr); see train()
    "clip": "per_parameter",  # gradient-norm clipping at 1: per parameter or "global"; see train()
    "n_train": 2000,
    "n_eval": 64,
    "seed": 0,
    "eval_batch": 16,
    "log_every": 10,
    "thresholds": [0.0, 10.0, 100.0, 1000.0],
    "lambdas": [0.1, 1.0, 10.0],
    "alphas": [0.0, 0.5, 1.0],
    "gamma0s": [1.0, 10.0, 100.0],
    "causal": {},  # CausalConfig overrides shared by every causal variant
}


def suite_variants(suite: str, cfg: dict, hidden_size: int) -> list[tuple[str, str, dict]]:
    """(name, kind, CausalConfig overrides) per variant; kind is "causal" or "baseline"."""
    if suite in ("basic", "comprehensive"):
        return [("CausalQwen", "causal", {}), ("baseline", "baseline", {})]
    if suite == "comparison":
        out = [(f"threshold={t:g}", "causal", {"threshold": t}) for t in cfg["thresholds"]]
        out += [
            (f"causal_dim={hidden_size}", "causal", {}),
            (
                f"causal_dim={hidden_size // 2}",
                "causal",
                {"causal_dim": hidden_size // 2, "abduction_init": "random"},
            ),
        ]
        out += [(f"lambda={v:g}", "causal", {"lam": v}) for v in cfg["lambdas"]]
        out += [(f"alpha={v:g}", "causal", {"alpha": v}) for v in cfg["alphas"]]
        return out
    if suite == "ablation":
        return [
            (f"{c}+{d}", "causal", {"classifier": c, "distribution": d})
            for c in ("ovr", "softmax")
            for d in ("cauchy", "normal")
        ]
    if suite == "initialization":
        out = [(f"gamma0={g:g}", "causal", {"gamma0": g}) for g in cfg["gamma0s"]]
        return out + [("random abduction", "causal", {"abduction_init": "random"})]
    raise UserInputError(f"suite {suite!r}: use one of {SUITES}")


def check_config(config: dict) -> dict:
    """Merge with DEFAULTS and validate everything before any model is loaded."""
    from .model import CausalConfig

    unknown = set(config) - set(DEFAULTS) - {"suite", "eval_sets"}
    if unknown:
        raise UserInputError(f"unknown suite setting(s) {sorted(unknown)}; known: {sorted(DEFAULTS)}")
    cfg = {**DEFAULTS, **config}
    if cfg.get("suite") not in SUITES:
        raise UserInputError(f"suite {cfg.get('suite')!r}: use one of {SUITES}")
    for key in ("steps", "batch_size", "max_length", "n_train", "n_eval", "eval_batch", "log_every"):
        if not isinstance(cfg[key], int) or cfg[key] <= 0:
            raise UserInputError(f"{key}={cfg[key]!r} must be a positive integer")
    if not (isinstance(cfg["lr"], int | float) and math.isfinite(cfg["lr"]) and cfg["lr"] > 0):
        raise UserInputError(f"lr={cfg['lr']!r} must be a finite number > 0")
    if cfg["clip"] not in ("per_parameter", "global"):
        raise UserInputError(f"clip={cfg['clip']!r}: use 'per_parameter' or 'global'")
    lrp = cfg["lr_pretrained"]
    if lrp is not None and not (isinstance(lrp, int | float) and math.isfinite(lrp) and lrp > 0):
        raise UserInputError(f"lr_pretrained={lrp!r} must be a finite number > 0 (or null: the same as lr)")
    for key in ("thresholds", "lambdas", "alphas", "gamma0s"):
        if not isinstance(cfg[key], list) or not cfg[key]:
            raise UserInputError(f"{key}={cfg[key]!r} must be a non-empty list of numbers")
    if not isinstance(cfg["causal"], dict):
        raise UserInputError(f"causal={cfg['causal']!r} must be a mapping of CausalConfig fields")
    if "seed" in cfg["causal"]:
        raise UserInputError(
            f"causal={cfg['causal']!r} sets a seed: the suite's seed (--seed, seed={cfg['seed']!r}) seeds "
            "the data order and every head's initialisation; drop 'seed' from causal"
        )
    if not isinstance(cfg["seed"], int) or isinstance(cfg["seed"], bool):
        raise UserInputError(f"seed={cfg['seed']!r} must be an integer")
    try:
        CausalConfig(**cfg["causal"])
    except TypeError:
        known = sorted(CausalConfig.__dataclass_fields__)
        raise UserInputError(f"causal={cfg['causal']!r}: the known CausalConfig fields are {known}") from None
    base = CausalConfig(**cfg["causal"]).validate()
    if cfg["suite"] == "comparison" and base.threshold_mode != "scalar":
        raise UserInputError(
            f"the comparison suite varies the scalar threshold, which threshold_mode="
            f"{base.threshold_mode!r} does not read (it measures C_k): drop threshold_mode from causal"
        )
    for t in cfg["thresholds"]:
        base.replace(threshold=t).validate()
    for v in cfg["lambdas"]:
        base.replace(lam=v).validate()
    for v in cfg["alphas"]:
        base.replace(alpha=v).validate()
    for v in cfg["gamma0s"]:
        base.replace(gamma0=v).validate()
    sets = cfg.get("eval_sets") or (list(EVAL_SETS) if cfg["suite"] != "basic" else ["basic"])
    bad = [s for s in sets if s not in EVAL_SETS]
    if bad:
        raise UserInputError(f"evaluation set(s) {bad}: use some of {EVAL_SETS}")
    cfg["eval_sets"] = list(sets)
    return cfg


def variant_config(cfg: dict, overrides: dict):
    """The CausalConfig of one variant: the suite's shared ``causal`` settings, the variant's overrides,
    and the suite's seed (which seeds the heads' initialisation as well as the data order)."""
    from .model import CausalConfig

    return CausalConfig(**{**cfg["causal"], **overrides, "seed": cfg["seed"]})


def build(kind: str, base, num_token_id: int, conf):
    """A CausalQwen (kind "causal") or BaselineQwen on ``base`` with the CausalConfig ``conf``."""
    from .model import BaselineQwen, CausalQwen

    if not conf.freeze_backbone:
        base = copy.deepcopy(base)  # fine-tuning must not leak into the next variant
    cls = CausalQwen if kind == "causal" else BaselineQwen
    return cls(base, num_token_id, conf)


def check_precision(cfg: dict, device=None, dtype=None):
    """(torch.device, torch.dtype) for a suite, checked before anything loads: a backbone that trains
    (``causal: {freeze_backbone: false}``) needs float32 weights."""
    import torch

    from ..devices import resolve

    device, dtype = resolve(device, dtype)
    if dtype != torch.float32 and cfg["causal"].get("freeze_backbone") is False:
        raise UserInputError(
            "freeze_backbone=False trains the backbone, which needs float32 weights: drop --dtype"
        )
    return device, dtype


def run(config: dict, log=print, device="cpu", dtype="float32") -> dict:
    """Train and evaluate every variant of one suite; returns a JSON-able results dict.

    ``device``, ``dtype``: where the backbone runs and its precision (the heads and losses are float32
    whatever it is; see :mod:`qwen_anatomy.causal.model`)."""
    import torch

    from ..loading import load_model
    from .numtok import NumberTokenizer
    from .train import batches, evaluate, on_device, step0_agreement, train

    cfg = check_config(config)
    device, dtype = check_precision(cfg, device, dtype)
    base, tok = load_model(cfg["model"], device=device, dtype=dtype)
    if tok is None:
        raise UserInputError(f"model {cfg['model']!r} has no tokenizer.json; CausalQwen needs its tokenizer")
    numtok = NumberTokenizer(tok)
    texts = make_texts("train", cfg["n_train"], cfg["seed"])
    evals = {k: v for k, v in evaluation_sets(cfg["n_eval"]).items() if k in cfg["eval_sets"]}
    results = {
        "suite": cfg["suite"],
        "config": cfg,
        "backbone": {
            "model": cfg["model"],
            "hidden_size": base.config.hidden_size,
            "layers": base.config.num_hidden_layers,
            "vocab_size": numtok.vocab_size,
            "num_token_id": numtok.num_token_id,
            "num_row_added": numtok.added_num_row,
        },
        "variants": [],
    }
    trained: dict[
        str, dict
    ] = {}  # identical variants (e.g. causal_dim=H and the default threshold) train once
    for name, kind, overrides in suite_variants(cfg["suite"], cfg, base.config.hidden_size):
        conf = variant_config(cfg, overrides)
        resolved = conf.to_dict()
        # 10 from a JSON grid and the default 10.0 are the same setting
        resolved = {k: float(v) if type(v) is int else v for k, v in resolved.items()}
        key = json.dumps([kind, resolved], sort_keys=True)
        if key in trained:
            first = trained[key]
            results["variants"].append(
                {**first, "name": name, "overrides": overrides, "same_as": first["name"]}
            )
            log(f"[{cfg['suite']}] {name}: the same model as {first['name']} (not trained again)")
            continue
        torch.manual_seed(cfg["seed"])
        model = build(kind, base, numtok.num_token_id, conf)
        row = {"name": name, "kind": kind, "overrides": overrides, "config": model.config.to_dict()}
        if not getattr(model, "threshold_measured", True):
            # the batch train() starts with (same texts, seed and length): C_k is measured before step 0
            first = on_device(
                next(batches(numtok, texts, cfg["batch_size"], cfg["max_length"], cfg["seed"])), model
            )
            model.calibrate_threshold(first["input_ids"], first["numerical_values"], first["attention_mask"])
        if kind == "causal":
            row["step0_ovr_agrees_with_base"] = step0_agreement(
                model, numtok, evals[cfg["eval_sets"][0]][:16]
            )
        t0 = time.perf_counter()
        row["log"] = train(
            model,
            numtok,
            texts,
            cfg["steps"],
            cfg["batch_size"],
            cfg["max_length"],
            cfg["lr"],
            cfg["seed"],
            cfg["log_every"],
            lr_pretrained=cfg["lr_pretrained"],
            clip=cfg["clip"],
            on_log=lambda r, name=name: log(
                f"  {name} step {r['step']}: loss {r['loss']:.4g}, median sum P {r['median_sum_p']:.4g} ({r['seconds']} s)"
            ),
        )
        row["train_seconds"] = round(time.perf_counter() - t0, 2)
        row["metrics"] = {
            k: evaluate(model, numtok, v, cfg["eval_batch"], cfg["max_length"]) for k, v in evals.items()
        }
        log(
            f"[{cfg['suite']}] {name}: {json.dumps({k: round(v['num_f1'], 3) for k, v in row['metrics'].items()})} "
            f"({row['train_seconds']} s)"
        )
        results["variants"].append(row)
        trained[key] = row
        del model
    return results


def run_and_save(
    config: dict, root: str | Path = RESULTS_ROOT, log=print, device="cpu", dtype="float32"
) -> Path:
    """``run`` with a run record, into a new directory ``root/<suite>/<model>-<timestamp>/``."""
    from ..devices import dtype_name
    from ..iochecks import check_output_dir, check_output_root, make_output_dir
    from ..loading import resolve_model

    cfg = check_config(config)
    device, dtype = check_precision(cfg, device, dtype)
    check_output_root(root, "results root")
    model_path = resolve_model(cfg["model"])  # a bad name fails before anything is written
    if not (model_path / "tokenizer.json").is_file():
        raise UserInputError(f"model {cfg['model']!r} has no tokenizer.json; CausalQwen needs its tokenizer")
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    model_tag = Path(str(cfg["model"])).name
    out = check_output_dir(Path(root) / cfg["suite"] / f"{model_tag}-{stamp}", "results directory")
    make_output_dir(out, "results directory")
    command = (
        f"qwen-anatomy causal suite --suite {cfg['suite']} --model {cfg['model']} --steps {cfg['steps']}"
        " (every setting in parameters)"
    )
    with RunRecord(out / "run_record.json", command, cfg, seed=cfg["seed"]) as record:
        record.data["device"], record.data["dtype"] = str(device), dtype_name(dtype)
        with record.stage("run"):
            results = run(cfg, log=log, device=device, dtype=dtype)
        atomic_write_json(out / "results.json", results)
    return out


def latest_results(
    suite: str, model: str | None = None, root: str | Path = RESULTS_ROOT
) -> tuple[dict, Path] | None:
    """The newest successful saved run of a suite (optionally for one model), or None."""
    folder = Path(root) / suite
    if not folder.is_dir():
        return None
    for run_dir in sorted(folder.iterdir(), reverse=True):
        rec, res = run_dir / "run_record.json", run_dir / "results.json"
        if not (rec.is_file() and res.is_file()):
            continue
        if json.loads(rec.read_text()).get("status") != "success":
            continue
        results = json.loads(res.read_text())
        if model is None or results["backbone"]["model"] == model:
            return results, run_dir
    return None


WINNER_RULES = (("num_f1", "higher"), ("mae", "lower"), ("coverage95", "nearer 0.95"))


def winners(results: dict, rules=WINNER_RULES) -> list[dict]:
    """CausalQwen against the baseline of one results dict: one row per (set, metric) with both values
    and the winner ("CausalQwen", "baseline", "tie", or "undefined" when a value is NaN)."""
    by_kind = {v["kind"]: v for v in results["variants"]}
    if "causal" not in by_kind or "baseline" not in by_kind:
        raise UserInputError(f"suite {results.get('suite')!r} has no CausalQwen/baseline pair to compare")
    causal, base = by_kind["causal"]["metrics"], by_kind["baseline"]["metrics"]
    rows = []
    for set_name in causal:
        for metric, rule in rules:
            x, y = causal[set_name][metric], base[set_name][metric]
            if x != x or y != y:
                win = "undefined"
            else:
                if rule == "higher":
                    a, b = x, y
                elif rule == "lower":
                    a, b = -x, -y
                else:
                    a, b = -abs(x - 0.95), -abs(y - 0.95)
                win = "CausalQwen" if a > b else "baseline" if b > a else "tie"
            rows.append({"set": set_name, "metric": metric, "CausalQwen": x, "baseline": y, "winner": win})
    return rows


def all_results(
    suite: str, model: str | None = None, root: str | Path = RESULTS_ROOT
) -> list[tuple[dict, Path]]:
    """Every successful saved run of a suite (optionally for one model), oldest first."""
    folder = Path(root) / suite
    found = []
    for run_dir in sorted(folder.iterdir()) if folder.is_dir() else []:
        rec, res = run_dir / "run_record.json", run_dir / "results.json"
        if rec.is_file() and res.is_file() and json.loads(rec.read_text()).get("status") == "success":
            results = json.loads(res.read_text())
            if model is None or results["backbone"]["model"] == model:
                found.append((results, run_dir))
    return found


def metrics_table(results: dict, metrics=("num_f1", "mae", "coverage95", "accuracy")):
    """A pandas table: one row per (variant, evaluation set), one column per metric."""
    import pandas as pd

    rows = []
    for v in results["variants"]:
        for set_name, m in v["metrics"].items():
            rows.append({"variant": v["name"], "set": set_name, **{k: m[k] for k in metrics}})
    return pd.DataFrame(rows)
