"""The design choices of CausalQwen with seeds and intervals (chapter 50, issue 14).

The spec's comparison, ablation and initialization suites, rebuilt on the study machinery
(:mod:`qwen_anatomy.causal.study`): every variant is one change from the default head, trained as a
CausalQwen-only study in its own folder (``<root>/<name>/CausalQwen/seed<s>/``) with the budget, data,
feature cache and seeds of a **reference study** (both arms, the default head), which is not trained
again. The plan (``configs/causal/variants.yaml``) names each variant, its suite and the CausalConfig
settings it changes; ``<root>/plan.json`` records the plan that filled the root.

The rules behind the words (tested in ``tests/test_causal_variants.py``):

* **Per seed**, each run gives: the *relative MAE*, the geometric mean over the predictable roles of
  the run's MAE divided by the better trivial reference's (under 1: better than the trivial references
  on average; a ratio, so a role twice as good weighs as much as one twice as bad); the *calibration error* and the *95 % coverage* on the noisy readings
  (:func:`qwen_anatomy.causal.study_report.calibration_by_seed`); the *token accuracy*, the mean over
  the evaluation sets; the final median scale of U.
* **Against the default**: a variant is better or worse on a metric when the 95 % t-intervals over
  seeds of the two do not overlap (:func:`qwen_anatomy.causal.study_report.compare_arms`); coverage is
  judged by its distance from 0.95. Otherwise "no difference shown".
* A variant is compared only at the reference's budget (:func:`check_same_budget`).
"""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from ..errors import UserInputError
from ..runrecord import REPO_ROOT, RunRecord, atomic_write_json
from ..words import count as _count
from . import study as study_mod
from . import study_report as sr
from .templates import PREDICTABLE_ROLES

PLAN = REPO_ROOT / "configs" / "causal" / "variants.yaml"
PLAN_FILE = "plan.json"
SUITES = ("comparison", "ablation", "initialization")
ARM = "CausalQwen"
NAME = re.compile(r"^[a-z0-9][a-z0-9.\-]*$")
BUDGET_KEYS = (
    "model",
    "steps",
    "batch_size",
    "lr",
    "lr_pretrained",
    "clip",
    "n_train",
    "n_eval",
    "data_seed",
    "eval_seed",
    "max_length",
    "vocab",
    "train_layers",
    "eval_sets",
)
# (column, lower is better, bounds of the interval); coverage is judged by its distance from NOMINAL
METRICS = (
    ("relative MAE", True, None),
    ("calibration error", True, (0.0, 1.0)),
    ("coverage 95%", None, (0.0, 1.0)),
    ("token accuracy", False, (0.0, 1.0)),
)
NOMINAL = 0.95


class Variant(NamedTuple):
    suite: str
    name: str
    causal: dict

    @property
    def label(self) -> str:
        return ", ".join(f"{k} = {v}" for k, v in self.causal.items())


# -- the plan ---------------------------------------------------------------------------------------
def check_plan(data, source: str) -> list[Variant]:
    """The variants of a plan (a mapping with a ``variants`` list), every entry checked: a suite of
    :data:`SUITES`, a unique folder-safe name, a non-empty mapping of CausalConfig settings."""
    from .model import CausalConfig

    if not isinstance(data, dict) or not isinstance(data.get("variants"), list) or not data["variants"]:
        raise UserInputError(f"{source}: a plan is a mapping with a non-empty 'variants' list")
    out, seen = [], set()
    known = sorted(CausalConfig().to_dict())
    for i, entry in enumerate(data["variants"]):
        where = f"{source}: variant {i + 1}"
        if not isinstance(entry, dict) or set(entry) != {"suite", "name", "causal"}:
            raise UserInputError(f"{where}: give exactly suite, name and causal, e.g. "
                                 "{suite: comparison, name: threshold-0, causal: {threshold: 0}}")  # fmt: skip
        suite, name, causal = entry["suite"], entry["name"], entry["causal"]
        if suite not in SUITES:
            raise UserInputError(f"{where}: suite {suite!r}: use one of {', '.join(SUITES)}")
        if not isinstance(name, str) or not NAME.match(name) or name == PLAN_FILE:
            raise UserInputError(f"{where}: name {name!r}: lower-case letters, digits, '.' and '-'")
        if name in seen:
            raise UserInputError(f"{where}: name {name!r} is used twice; each variant has its own folder")
        seen.add(name)
        if not isinstance(causal, dict) or not causal:
            raise UserInputError(
                f"{where} ({name}): causal must change at least one setting (the default head is the "
                "reference study's CausalQwen)"
            )
        bad = sorted(set(causal) - set(known))
        if bad:
            raise UserInputError(f"{where} ({name}): unknown setting(s) {bad}; known: {known}")
        if "seed" in causal or "freeze_backbone" in causal:
            raise UserInputError(f"{where} ({name}): the study sets seed and freeze_backbone itself")
        out.append(Variant(suite, name, dict(causal)))
    return out


def load_plan(path: str | Path = PLAN) -> list[Variant]:
    import yaml

    path = Path(path)
    if not path.is_file():
        raise UserInputError(
            f"--plan {path} does not exist: give a plan such as {PLAN.relative_to(REPO_ROOT)}"
        )
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise UserInputError(f"--plan {path} is not valid YAML ({str(err).splitlines()[0]})") from None
    return check_plan(data, f"--plan {path}")


def resolve(variant: Variant, hidden_size: int) -> dict:
    """The variant's CausalConfig settings with ``causal_dim: half`` made a number (hidden size // 2)."""
    causal = dict(variant.causal)
    if causal.get("causal_dim") == "half":
        causal["causal_dim"] = hidden_size // 2
    return causal


def variant_config(base: dict, variant: Variant, hidden_size: int) -> dict:
    """The study configuration of one variant: the base settings, CausalQwen only, the variant's head."""
    if "arms" in base:
        raise UserInputError(
            "arms is set: a variant trains CausalQwen only; the baseline is the reference study's"
        )
    causal = {**(base.get("causal") or {}), **resolve(variant, hidden_size)}
    return study_mod.check_config({**base, "arms": [ARM], "causal": causal})


def run(
    variants: list[Variant],
    base: dict,
    out: str | Path,
    only: list[str] | None = None,
    progress: bool = True,
    log=print,
    device="cpu",
    dtype="float32",
) -> dict:
    """Train every variant (or those named in ``only``) as a CausalQwen-only study under ``out/<name>``.
    Every configuration and every folder is checked before anything trains; finished runs are reused
    (a study's rule), so a plan can be run a few variants at a time across sessions. Writes
    ``out/plan.json`` (these variants added to any recorded there) before the first run trains. Each
    seed runs on its own, so a run whose training diverges (its record says failed) does not stop the
    rest, and is not retried by a later call. Each call leaves ``out/plan-<UTC>.run_record.json`` (the
    settings, the variants and what ran). Returns {"trained", "reused", "diverged": ["name/seedS"]}."""
    from ..loading import load_config

    out = Path(out)
    if only:
        names = {v.name for v in variants}
        unknown = [n for n in only if n not in names]
        if unknown:
            raise UserInputError(f"--only {' '.join(unknown)}: not in the plan ({', '.join(sorted(names))})")
        variants = [v for v in variants if v.name in only]
    model = study_mod.check_config(base)["model"]
    hidden = load_config(study_mod.check_model(model)).hidden_size
    configs = [(v, variant_config(base, v, hidden)) for v in variants]
    for v, cfg in configs:
        study_mod.plan(cfg, out / v.name)  # refuses a folder holding another configuration
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / PLAN_FILE, _merge_plan(out, variants, hidden))  # before training: resumable
    results = {"trained": [], "reused": [], "diverged": []}
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")  # two calls never share a record
    params = {"base": base, "variants": [v.name for v in variants], "plan": [v._asdict() for v in variants]}
    with RunRecord(out / f"plan-{stamp}.run_record.json", "qwen-anatomy causal variants", params) as record:
        _run_variants(configs, out, results, progress, log, device, dtype)
        record.data["result"] = results
    return results


def _run_variants(configs, out: Path, results: dict, progress, log, device, dtype) -> None:
    from .train import TrainingDiverged

    for i, (v, cfg) in enumerate(configs, 1):
        log(f"[variant {i}/{len(configs)}] {v.suite}: {v.name} ({v.label})")
        for seed in cfg["seeds"]:  # one seed at a time: a diverged seed does not stop the others
            run = f"{v.name}/seed{seed}"
            if _diverged_before(study_mod.run_folder(out / v.name, ARM, seed)):
                log(f"{run} diverged in an earlier call; not retried (training is deterministic; move its "
                    "folder away to retry)")  # fmt: skip
                results["diverged"].append(run)
                continue
            try:
                done = study_mod.run(
                    {**cfg, "seeds": [seed]},
                    out / v.name,
                    progress=progress,
                    log=log,
                    device=device,
                    dtype=dtype,
                )
            except TrainingDiverged as err:
                log(f"{run}: {err}")
                results["diverged"].append(run)
                continue
            results["trained" if done["trained"] else "reused"].append(run)


def _failure(run_folder: Path) -> str | None:
    """The error a run folder's record gives when the run failed (None otherwise, or when unreadable)."""
    try:
        data = json.loads((run_folder / "run_record.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return str(data.get("error") or "no error recorded") if data.get("status") == "failed" else None


def _diverged_before(folder: Path) -> bool:
    return (_failure(folder) or "").startswith("TrainingDiverged")


def _merge_plan(out: Path, variants: list[Variant], hidden: int) -> dict:
    """``plan.json`` of ``out`` with these variants added; a name recorded with other settings is refused."""
    path = out / PLAN_FILE
    old = json.loads(path.read_text()) if path.is_file() else {"variants": []}
    by_name = {e["name"]: e for e in old.get("variants", [])}
    for v in variants:
        entry = {"suite": v.suite, "name": v.name, "causal": resolve(v, hidden)}
        if v.name in by_name and by_name[v.name] != entry:
            raise UserInputError(
                f"{path} records variant {v.name!r} as {by_name[v.name]}, not {entry}: use another --out "
                "or another name"
            )
        by_name[v.name] = entry
    return {"variants": list(by_name.values())}


# -- reading the saved variants ---------------------------------------------------------------------
class Variants(NamedTuple):
    """The saved variants under ``path``: {name: (Variant, Study)} in plan order, and the runs that
    failed, {name: (Variant, [(seed, error)])} (a diverged training is a result, not a gap)."""

    path: Path
    studies: dict
    failed: dict = {}
    order: tuple = ()  # the plan's names (default: the studies', then the failed ones)

    def names(self) -> list[str]:
        return list(self.order or dict.fromkeys([*self.studies, *self.failed]))


def load(path: str | Path) -> Variants:
    """Every variant of ``path/plan.json`` whose folder holds finished runs (UserInputError when the
    root has no plan or no finished variant)."""
    path = Path(path)
    plan_path = path / PLAN_FILE
    if not plan_path.is_file():
        raise UserInputError(
            f"{path} has no {PLAN_FILE}: it is not a variants folder; run `qwen-anatomy causal variants "
            f"--out {path}` (see data/results/causal/README.md)"
        )
    variants = check_plan(json.loads(plan_path.read_text()), str(plan_path))
    studies = {v.name: (v, sr.load_study(path / v.name)) for v in variants if sr.study_exists(path / v.name)}
    failed = {v.name: (v, runs) for v in variants if (runs := failed_runs(path / v.name))}
    if not studies:
        raise UserInputError(f"{path} holds no finished variant run: run the command in its README section")
    return Variants(path, studies, failed, tuple(v.name for v in variants))


def failed_runs(folder: Path) -> list[tuple[int, str]]:
    """(seed, error) of every CausalQwen run under ``folder`` whose record says it failed."""
    runs = [(p.name[4:], _failure(p)) for p in sorted((folder / ARM).glob("seed*")) if p.is_dir()]
    return [(int(seed), error) for seed, error in runs if seed.isdigit() and error is not None]


def _failure_text(runs: list[tuple[int, str]]) -> str:
    return "; ".join(f"seed {seed}: {error.split(': ', 1)[-1].split('; ')[0]}" for seed, error in runs)


def check_same_budget(reference: sr.Study, other: sr.Study, what: str = "variant") -> None:
    """UserInputError unless ``other`` has the reference study's backbone, data and budget."""
    diff = [k for k in BUDGET_KEYS if reference.config.get(k) != other.config.get(k)]
    if diff:
        raise UserInputError(
            f"the {what} in {other.path} differs from the study in {reference.path} in {', '.join(diff)}: "
            f"a {what} is compared at the same backbone, data and budget; rerun it with the study's settings"
        )


def is_default_head(study: sr.Study) -> bool:
    """Does ``study`` hold CausalQwen runs of the default head (no ``causal`` setting changed)?"""
    return ARM in study.arms and not study.config.get("causal")


def find_reference(path: str | Path, variants: Variants | None = None) -> sr.Study:
    """The reference study of a variants folder: a sibling folder holding a study of the default head
    (``causal`` empty, a CausalQwen run) with the variants' budget; UserInputError when there is none."""
    path = Path(path)
    variants = variants or load(path)
    first = next(iter(variants.studies.values()))[1]
    for candidate in sorted(p for p in path.parent.iterdir() if p.is_dir() and p != path):
        if not sr.study_exists(candidate):
            continue
        try:
            study = sr.load_study(candidate)
        except UserInputError:
            continue
        if is_default_head(study) and all(study.config.get(k) == first.config.get(k) for k in BUDGET_KEYS):
            return study
    raise UserInputError(
        f"no study of the default head with the budget of {path} beside it: give --reference STUDY_DIR"
    )


# -- per-seed metrics, the table, the sentences, the figure -----------------------------------------
def seed_metrics(study: sr.Study, arm: str = ARM) -> pd.DataFrame:
    """One row per seed of ``arm``: relative MAE, calibration error, 95 % coverage, token accuracy and
    the final median scale of U (see the module docstring)."""
    frame = sr.numbers_frame(study)
    refs = sr.reference_errors(frame).set_index("group")
    errors = sr.seed_errors(frame)
    errors = errors[errors["arm"] == arm]
    roles = [r for r in PREDICTABLE_ROLES if r in refs.index]
    cov, err, _ = sr.calibration_by_seed(study, arm, "noisy", NOMINAL)
    rows = []
    for i, seed in enumerate(sorted(s for a, s in study.runs if a == arm)):
        ratios = []
        for role in roles:
            mae = errors[(errors["group"] == role) & (errors["seed"] == seed)]["mae"]
            ratios.append(float(mae.iloc[0]) / sr.best_trivial(refs.loc[role])[1])
        ratios = np.asarray(ratios)
        sets = study.runs[(arm, seed)].get("sets", {})
        acc = [m["accuracy"] for m in sets.values() if "accuracy" in m]
        log = study.logs.get((arm, seed)) or [{}]
        rows.append(
            {
                "seed": seed,
                "relative MAE": _geometric_mean(ratios),
                "calibration error": err[i] if i < len(err) else math.nan,
                "coverage 95%": cov[i] if i < len(cov) else math.nan,
                "token accuracy": float(np.mean(acc)) if acc else math.nan,
                "final median scale of U": float(log[-1].get("median_scale_u", math.nan)),
            }
        )
    return pd.DataFrame(rows).set_index("seed")


def _geometric_mean(ratios: np.ndarray) -> float:
    if not len(ratios):
        return math.nan
    return 0.0 if ratios.min() == 0 else float(np.exp(np.mean(np.log(ratios))))


def _interval(values, bounds):
    from ..tasks.verdicts import CONFIDENCE, seed_interval

    return seed_interval(values, CONFIDENCE, bounds=bounds)


def _metric_words(metric: str) -> str:
    return "the distance of the 95% coverage from 0.95" if metric == "coverage 95%" else metric


def compare(variant: pd.DataFrame, default: pd.DataFrame, metric: str, names=("variant", "default")):
    """The verdict of one metric (:func:`qwen_anatomy.causal.study_report.compare_arms`); coverage is
    compared by its distance from 0.95."""
    lower = dict((m, lo) for m, lo, _ in METRICS)[metric]
    a, b = variant[metric].tolist(), default[metric].tolist()
    if lower is None:
        a, b = [abs(x - NOMINAL) for x in a], [abs(x - NOMINAL) for x in b]
        return sr.compare_arms(a, b, names, _metric_words(metric))
    return sr.compare_arms(a, b, names, metric, lower_is_better=lower)


WORDS = {"a better": "better", "b better": "worse"}


def _differences(m: pd.DataFrame, default: pd.DataFrame, label: str) -> tuple[list, bool]:
    """([(word, metric, verdict)] where the intervals do not overlap, whether every verdict had its seeds)."""
    found, complete = [], True
    for metric, _lower, _b in METRICS:
        verdict = compare(m, default, metric, (label, "the default"))
        complete &= verdict.kind not in ("too few seeds", "missing")
        if verdict.kind in WORDS:
            found.append((WORDS[verdict.kind], metric, verdict))
    return found, complete


def _against_default(found: list, complete: bool) -> str:
    if not complete:
        return "too few seeds"
    if not found:
        return "none shown"
    return "; ".join(f"{word}: {metric}" for word, metric, _ in found)


def variants_table(reference: sr.Study, variants: Variants) -> pd.DataFrame:
    """One row for the default head and the baseline of the reference study, then one per variant:
    each metric's interval over seeds, the predictable roles whose better trivial reference it beats, the
    median final scale of U, and where it differs from the default head (intervals apart)."""
    default = seed_metrics(reference, ARM)

    def row(suite, label, study, arm, metrics):
        table = sr.value_table(study)
        roles = [r for r in PREDICTABLE_ROLES if r in table.index]
        out = {"suite": suite, "variant": label}
        for metric, _lower, bounds in METRICS:
            out[metric] = sr.interval_text(_interval(metrics[metric].tolist(), bounds))
        beaten = sum(table.loc[r, f"{arm} verdict"] == "beats" for r in roles)
        out["roles beaten"] = f"{beaten} of {len(roles)}"
        scale = metrics["final median scale of U"].median()
        out["final scale of U"] = "" if math.isnan(scale) else f"{scale:.2g}"
        out["differs from the default head"] = (
            "" if metrics is default else _against_default(*_differences(metrics, default, label))
        )
        return out

    rows = [row("reference", "default head", reference, ARM, default)]
    if "baseline" in reference.arms:
        rows.append(row("reference", "baseline", reference, "baseline", seed_metrics(reference, "baseline")))
    for name in variants.names():
        if name in variants.studies:
            v, study = variants.studies[name]
            check_same_budget(reference, study)
            rows.append(row(v.suite, v.label, study, ARM, seed_metrics(study, ARM)))
            if name in variants.failed:
                note = _failure_text(variants.failed[name][1])
                rows[-1]["differs from the default head"] += f" (failed: {note})"
        elif name in variants.failed:
            v, runs = variants.failed[name]
            failed = {"differs from the default head": "failed: " + _failure_text(runs)}
            rows.append({"suite": v.suite, "variant": v.label, **failed})
    return pd.DataFrame(rows).set_index(["suite", "variant"]).fillna("")


def variants_sentences(reference: sr.Study, variants: Variants) -> str:
    """Markdown bullets, one per suite: the variants that differ from the default head on some metric
    (with the intervals), those with no difference shown, those with too few seeds for a verdict; then
    whether any variant is better than the default head, and the shared budget."""
    default = seed_metrics(reference, ARM)
    lines, better = [], {}
    for suite in SUITES:
        members = [(v, s) for v, s in variants.studies.values() if v.suite == suite]
        failures = [(v, runs) for v, runs in variants.failed.values() if v.suite == suite]
        if not members and not failures:
            continue
        parts, same, unjudged = [], [], []
        for v, runs in failures:
            parts.append(f"**{v.label}** failed to train ({_failure_text(runs)})")
        for v, study in members:
            check_same_budget(reference, study)
            found, complete = _differences(seed_metrics(study, ARM), default, v.label)
            if not complete:
                unjudged.append(f"**{v.label}** ({_count(len(study.seeds), 'seed')})")
                continue
            if not found:
                same.append(f"**{v.label}**")
                continue
            texts = []
            for word, metric, verdict in found:
                a, b = verdict.details["a"], verdict.details["b"]
                texts.append(
                    f"{word} on {_metric_words(metric)} ({sr.interval_text(a)} against {sr.interval_text(b)})"
                )
                if word == "better":
                    better.setdefault(metric, []).append(v.label)
            parts.append(f"**{v.label}** is " + "; ".join(texts))
        if same:
            parts.append(
                "no difference from the default is shown for " + ", ".join(same) + " (the intervals overlap)"
            )
        if unjudged:
            parts.append(
                "no verdict yet for " + ", ".join(unjudged) + ": one interval needs two seeds or more"
            )
        n_variants = len({v.name for v, _ in members} | {v.name for v, _ in failures})
        text = ". ".join(p[0].upper() + p[1:] for p in parts)
        lines.append(f"- *{suite}* ({_count(n_variants, 'variant')}): {text}.")
    if better:
        lines.append(
            "- Better than the default head: "
            + "; ".join(f"on {_metric_words(metric)}, {', '.join(names)}" for metric, names in better.items())
            + "."
        )
    else:
        lines.append("- No variant is better than the default head on any of these metrics.")
    seeds = sorted({len(s.seeds) for _v, s in variants.studies.values()} | {len(reference.seeds)})
    lines.append(
        f"- Seeds per model: {' to '.join(map(str, (seeds[0], seeds[-1]))) if len(seeds) > 1 else seeds[0]}; "
        f"every model {reference.config.get('steps'):,} steps of batch {reference.config.get('batch_size')} "
        "on the same texts and feature cache (checked)."
    )
    return "\n".join(lines)


def forest_plot(reference: sr.Study, variants: Variants, title: str | None = None):
    """One panel per metric: each variant's mean and 95 % interval over seeds (grouped by suite), the
    default head's interval as a shaded band, the baseline's mean dashed; relative MAE 1 (the trivial
    references) and coverage 0.95 dotted."""
    import matplotlib.pyplot as plt

    default = seed_metrics(reference, ARM)
    base = seed_metrics(reference, "baseline") if "baseline" in reference.arms else None
    entries = [(f"{v.suite}: {v.label}", seed_metrics(s, ARM)) for v, s in variants.studies.values()]
    fig, axes = plt.subplots(
        1, len(METRICS), figsize=(4 * len(METRICS), 0.35 * len(entries) + 2), sharey=True
    )
    ys = np.arange(len(entries))[::-1]
    for ax, (metric, _lower, bounds) in zip(axes, METRICS, strict=True):
        d = _interval(default[metric].tolist(), bounds)
        ax.axvspan(d.low, d.high, color="C0", alpha=0.2, label="default head (interval)")
        ax.axvline(d.mean, color="C0", lw=1)
        if base is not None:
            ax.axvline(float(base[metric].mean()), color="C1", ls="--", lw=1, label="baseline (mean)")
        if metric == "relative MAE":
            ax.axvline(1.0, color="gray", ls=":", lw=1, label="trivial references")
        if metric == "coverage 95%":
            ax.axvline(NOMINAL, color="gray", ls=":", lw=1, label="nominal 0.95")
        for y, (_label, m) in zip(ys, entries, strict=True):
            ci = _interval(m[metric].tolist(), bounds)
            ax.errorbar(ci.mean, y, xerr=[[ci.mean - ci.low], [ci.high - ci.mean]], fmt="o", color="k", ms=4)
        ax.set_title(metric)
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(ys, [label for label, _ in entries])
    handles, labels = [], []
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), frameon=False)
    fig.suptitle(title or f"{reference.config.get('model')}: each variant against the default head, "
                 f"{len(reference.seeds)} seeds")  # fmt: skip
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return fig


# -- qwen-anatomy causal report VARIANTS_DIR ----------------------------------------------------------
FOREST_CAPTION = (
    "Each variant's mean and 95% interval over seeds (black) against the default head's interval (blue "
    "band) and the baseline's mean (orange, dashed). Relative MAE under the dotted 1 beats the trivial "
    "references on average; a calibration error near 0 and a coverage at the dotted 0.95 are calibrated. "
    "A black bar clear of the blue band is a difference from the default."
)


def description(reference: sr.Study, variants: Variants) -> str:
    """Which runs, their budget and where the reference comes from."""
    cfg = reference.config
    n_runs = sum(len(s.runs) for _v, s in variants.studies.values())
    hours = (
        sum(
            float(rec.get("wall_seconds") or 0.0)
            for _v, s in variants.studies.values()
            for rec in s.records.values()
        )
        / 3600
    )
    return (
        f"{_count(len(variants.studies), 'variant')} of the head in `{variants.path.name}` "
        f"({_count(n_runs, 'CausalQwen run')}, "
        f"{hours:.2f} h of training and evaluation in all, from their run records) on `{cfg.get('model')}`, "
        f"each {cfg.get('steps'):,} steps of batch {cfg.get('batch_size')} on {cfg.get('n_train'):,} training "
        f"texts with the seeds {', '.join(map(str, reference.seeds))}, compared with the default head and the "
        f"baseline of the study in `{reference.path.name}` (the same budget, texts, classes and feature cache)."
    )


def report_markdown(reference: sr.Study, variants: Variants, figure: str = "forest") -> str:
    from .report import markdown_safe, markdown_table

    table = variants_table(reference, variants).reset_index()
    table.index = table.pop("variant")
    table.index.name = "variant"
    parts = [
        f"# Variants of the CausalQwen head on `{reference.config.get('model')}`",
        description(reference, variants),
        "## What the numbers say",
        variants_sentences(reference, variants),
        "## Metrics",
        "Intervals over seeds (95 % t-intervals); relative MAE is the geometric mean over the predictable roles of "
        "the MAE divided by the better trivial reference's; calibration error and coverage are on the noisy "
        'readings; "roles beaten" counts the predictable roles whose better trivial reference the variant '
        "beats by a margin outside its interval.",
        markdown_table(table),
        "## Figure",
        FOREST_CAPTION,
        f"![{figure}]({figure}.png)",
    ]
    return markdown_safe("\n\n".join(parts)) + "\n"


def write_report(
    root: str | Path, out: str | Path | None = None, reference: str | Path | None = None
) -> Path:
    """``summary.md`` and ``forest.png`` for a variants folder, in ``out`` (default ``root/report``),
    which must not exist; written whole into a temporary sibling and renamed into place."""
    import os
    import shutil
    import tempfile

    import matplotlib.pyplot as plt

    from ..iochecks import check_output_dir
    from ..runrecord import atomic_write_text

    saved = load(root)
    if reference is None:
        ref = find_reference(root, saved)
    else:
        ref = sr.load_study(reference)
        if not is_default_head(ref):
            raise UserInputError(
                f"--reference {reference} is not a study of the default head (it has no CausalQwen run or "
                f"changes {ref.config.get('causal')}): give the study the variants are compared with"
            )
    out = Path(out) if out is not None else Path(root) / "report"
    if os.path.lexists(out):
        raise UserInputError(f"--out {out} already exists; a report never overwrites: choose another --out")
    check_output_dir(out, "--out")
    text = report_markdown(ref, saved)
    fig = forest_plot(ref, saved)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
        try:
            fig.savefig(tmp / "forest.png", bbox_inches="tight")
            atomic_write_text(tmp / "summary.md", text)
            os.rename(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    finally:
        plt.close(fig)
    return out


def is_variants_dir(path: str | Path) -> bool:
    return (Path(path) / PLAN_FILE).is_file()


def backbone_note(reference: sr.Study, study: sr.Study) -> str:
    """A sentence when the variants ran on another backbone than ``study`` (the chapter's main study):
    both backbones and the median seconds of one CausalQwen run on each, from the runs; "" otherwise."""
    a, b = reference.config.get("model"), study.config.get("model")
    if a == b:
        return ""

    def seconds(s: sr.Study) -> float:
        return float(
            np.median([ev.get("train_seconds", math.nan) for (arm, _), ev in s.runs.items() if arm == ARM])
        )

    return (
        f"The design choices were compared on `{a}`, not on the study's `{b}`: one CausalQwen run of the "
        f"reference budget took {seconds(reference):,.0f} s there against {seconds(study):,.0f} s on `{b}` "
        f"(medians from the runs), so the {len(reference.seeds)}-seed comparison of every variant fits the "
        "sessions of this machine on the smaller backbone. Whether each difference holds on the larger one "
        "is not measured."
    )


def plan_sentence(saved: Variants, plan: list[Variant] | None = None) -> str:
    """How many of the plan's variants have run (finished or failed), and which have not yet."""
    plan = load_plan() if plan is None else plan
    missing = [v for v in plan if v.name not in saved.studies and v.name not in saved.failed]
    if not missing:
        return f"All {len(plan)} variants of the plan have run."
    return (
        f"{len(plan) - len(missing)} of the {len(plan)} variants of the plan "
        f"{'has' if len(plan) - len(missing) == 1 else 'have'} run; not run yet: "
        + ", ".join(f"{v.suite}: {v.label}" for v in missing)
        + " (rerunning the command resumes the plan)."
    )
