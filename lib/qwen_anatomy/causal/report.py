"""Loading, verdicts and sentences of chapter 50_causal_heads, computed from the saved suites.

The chapter reads the committed suites under ``data/results/causal/`` through :func:`load_suite` in
every build (book and CI): a missing suite fails with the command that regenerates it instead of
leaving a section out. Every comparison it prints (who wins on which set, which threshold is best,
whether the OvR probabilities have settled, how many models the budget bought) comes from the
functions here, tested on hand-made inputs in ``tests/test_causal_report.py`` (ties, NaN metrics,
missing variants, a single run).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import NamedTuple

import pandas as pd

from .experiments import RESULTS_ROOT, SUITES, all_results, metrics_table, winners

METRIC_LABELS = {"num_f1": "<NUM> F1", "mae": "MAE", "coverage95": "95% coverage"}
# A one-vs-rest head is calibrated when its probabilities sum to about 1 at a position: this band.
SUM_P_BAND = (0.5, 2.0)
# The step-0 model must reproduce the base next-token distribution to this tolerance (tests require it).
STEP0_TOL = 1e-6


class SavedSuite(NamedTuple):
    """One saved run of a suite: its ``results.json``, its folder and its ``run_record.json``."""

    results: dict
    path: Path
    record: dict


def _nan(x) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def regenerate_command(suite: str, model: str) -> str:
    return f"qwen-anatomy causal suite --suite {suite} --model {model}"


def _check(results: dict, path: Path) -> None:
    variants = results.get("variants")
    if not variants:
        raise ValueError(f"{path / 'results.json'} holds no variant")
    for v in variants:
        for key in ("name", "kind", "log", "metrics", "train_seconds"):
            if key not in v:
                raise ValueError(f"{path / 'results.json'}: variant {v.get('name')!r} has no {key!r}")
        if not v["log"] or not v["metrics"]:
            raise ValueError(f"{path / 'results.json'}: variant {v['name']!r} has an empty log or no metrics")


def load_runs(suite: str, model: str, root: str | Path = RESULTS_ROOT) -> list[SavedSuite]:
    """Every successful saved run of ``suite`` on ``model``, oldest first, each checked for the keys
    the chapter reads; FileNotFoundError naming the regeneration command when there is none."""
    if suite not in SUITES:
        raise ValueError(f"suite {suite!r}: use one of {SUITES}")
    found = []
    for results, path in all_results(suite, model, root):
        _check(results, path)
        found.append(SavedSuite(results, path, json.loads((path / "run_record.json").read_text())))
    if not found:
        raise FileNotFoundError(
            f"no saved `{suite}` results for `{model}` under {root}: regenerate them with "
            f"`{regenerate_command(suite, model)}` plus the settings listed in data/results/causal/README.md"
        )
    return found


def load_suite(suite: str, model: str, root: str | Path = RESULTS_ROOT) -> SavedSuite:
    """The newest successful saved run of ``suite`` on ``model`` (see :func:`load_runs`)."""
    return load_runs(suite, model, root)[-1]


def suite_description(saved: SavedSuite) -> str:
    """Which run the tables come from, and its budget."""
    cfg = saved.results["config"]
    return (
        f"`{saved.results['suite']}` on `{cfg['model']}`: {cfg['steps']} steps of batch {cfg['batch_size']} at "
        f"learning rate {cfg['lr']:g} ({cfg.get('lr_pretrained') or cfg['lr']:g} for the copied head matrices), "
        f"{cfg['n_eval']} texts per evaluation set, from `{saved.path.name}`."
    )


def winner_sentences(results: dict) -> str:
    """One Markdown bullet per evaluation set: CausalQwen against the baseline on each metric
    (from :func:`qwen_anatomy.causal.experiments.winners`: ties and undefined values are said so)."""
    lines: dict[str, list[str]] = {}
    for row in winners(results):
        label = METRIC_LABELS[row["metric"]]
        if row["winner"] == "undefined":
            text = f"{label}: undefined for at least one model (no number predicted correctly)"
        else:
            text = f"{label} {row['CausalQwen']:.3g} vs {row['baseline']:.3g} ({row['winner']})"
        lines.setdefault(row["set"], []).append(text)
    return "\n".join(f"- **{s}**: " + "; ".join(parts) for s, parts in lines.items())


def near_one(sum_p: float, band: tuple[float, float] = SUM_P_BAND) -> bool:
    """Is a median sum of OvR probabilities in the calibrated band (open interval)? NaN is not."""
    return not _nan(sum_p) and band[0] < sum_p < band[1]


def live_training_sentence(log: list[dict], steps: int) -> str:
    """How the median sum of OvR probabilities and the scale of U moved over a training log."""
    first, final = log[0], log[-1]
    return (
        f"After {steps} steps the median sum of OvR probabilities went from {first['median_sum_p']:.3g} to "
        f"{final['median_sum_p']:.3g} ("
        + (
            "close to 1, as a calibrated one-vs-rest head should be"
            if near_one(final["median_sum_p"])
            else "not yet near 1: more steps are needed"
        )
        + f"), and the median scale of U from {first['median_scale_u']:.3g} to {final['median_scale_u']:.3g}."
    )


def settled_sentence(results: dict) -> str:
    """Has the (first) CausalQwen variant of a suite reached the regime where the sums are about 1?"""
    causal = next(v for v in results["variants"] if v["kind"] == "causal")
    first, last = causal["log"][0], causal["log"][-1]
    return (
        f"After {results['config']['steps']} steps the CausalQwen head's median sum of OvR "
        f"probabilities is {last['median_sum_p']:.3g} (it started at {first['median_sum_p']:.3g}), "
        f"and its batch token accuracy {last['token_accuracy']:.2f}. "
        + (
            "The head has reached the regime where the probabilities sum to about 1."
            if near_one(last["median_sum_p"])
            else "The head has not reached the regime where the probabilities sum to about 1: this "
            "comparison measures an unfinished CausalQwen against a baseline whose softmax needs no such "
            "reshaping, at a budget set by the CPU. The comparison suite below reports whether the sums "
            "reach 1 from other thresholds."
        )
    )


def step0_sentence(
    diff_logits: float, diff_probs: float, n_texts: int, n_positions: int, extra_rows: bool
) -> str:
    """Step 0 against the base model: the largest logit and probability differences, against the tolerance."""
    return (
        f"On {n_texts} sentences without numbers ({n_positions} positions) the largest difference "
        f"between the step-0 locations and the base logits is {diff_logits:.1e}, and between the two next-token "
        f"distributions {diff_probs:.1e} ("
        + ("within" if diff_probs <= STEP0_TOL else "outside")
        + f" the {STEP0_TOL:g} the tests require). "
        + (
            "The extra `<NUM>` column is the mean-embedding row the base model does not have; the comparison is "
            "over the base vocabulary."
            if extra_rows
            else "`<NUM>` uses a row the base model already has, so the two distributions cover the same tokens."
        )
    )


def num_token_sentence(model: str, num_token_id: int, added_to_tokenizer: bool, embedding_rows: int) -> str:
    """Where ``<NUM>`` lives on a backbone: a token its tokenizer already had, a new id that falls on a
    spare (padding) row of the embedding, or a new id that needs a new row (chapter 50_causal_heads)."""
    if not added_to_tokenizer:
        where = f"the tokenizer already has `<NUM>` (id {num_token_id}), reserved when it was trained"
    elif num_token_id < embedding_rows:
        where = (
            f"the tokenizer lacks `<NUM>`, so it gets the next id, {num_token_id}, which falls on one of the "
            f"{embedding_rows - num_token_id} spare rows the embedding has past the tokenizer: no new row is needed"
        )
    else:
        where = (
            f"the tokenizer lacks `<NUM>` and the embedding ({embedding_rows:,} rows) has no spare row, so `<NUM>` "
            f"gets a new id ({num_token_id}) and the model a new row initialised to the mean embedding"
        )
    return f"On {model}, {where}."


def threshold_effect_sentence(
    thresholds: list[float], sums: list[float], agree: list[float], median_scale: float
) -> str:
    """At step 0: the threshold whose OvR argmax agrees most often with the base argmax (the first
    on ties), and how the median sum of probabilities falls across the grid."""
    best = max(range(len(agree)), key=agree.__getitem__)
    return (
        f"Here the median class scale at step 0 is {median_scale:.0f}, so thresholds below it barely move the "
        f"probabilities. The OvR argmax agrees with the base argmax most often at C = {thresholds[best]:g} "
        f"({agree[best]:.0%} of positions), and the median sum of probabilities falls from {sums[0]:.0f} "
        f"(C = {thresholds[0]:g}) to {sums[-1]:.3g} (C = {thresholds[-1]:g})."
    )


def baseline_mean_f1(reference: dict, sets) -> float:
    """The baseline's <NUM> F1 of ``reference`` (a basic/comprehensive results dict) averaged over ``sets``;
    NaN when the reference lacks one of the sets."""
    base = next(v for v in reference["variants"] if v["kind"] == "baseline")["metrics"]
    sets = list(dict.fromkeys(sets))
    if not sets or any(s not in base for s in sets):
        return float("nan")
    return sum(base[s]["num_f1"] for s in sets) / len(sets)


def suite_summary(results: dict, reference: dict | None = None) -> tuple[pd.DataFrame, str]:
    """The metrics table of a variant suite and its sentence: best and worst mean <NUM> F1 over the
    sets, the lowest MAE on the QA set (the first set if there is no QA set), and how many variants
    beat the baseline of ``reference`` (its mean F1 over the same sets)."""
    table = metrics_table(results, ("num_f1", "mae", "coverage95", "accuracy", "ece"))
    mean_f1 = table.groupby("variant", sort=False)["num_f1"].mean().dropna()
    sets = list(dict.fromkeys(table["set"]))
    mae_set = "qa" if "qa" in sets else sets[0]
    # MAE on the question/answer set, where the answer can be copied from the context (the extreme set's
    # errors, in the thousands, would swamp a mean over sets)
    qa_mae = table[table["set"] == mae_set].set_index("variant")["mae"].dropna()
    if mean_f1.empty:
        text = "No variant has a defined <NUM> F1. "
    elif mean_f1.max() == mean_f1.min():
        text = f"Every variant has the same mean <NUM> F1 over the sets ({mean_f1.max():.3f}). "
    else:
        text = (
            f"Best mean <NUM> F1 over the sets: **{mean_f1.idxmax()}** ({mean_f1.max():.3f}; worst "
            f"{mean_f1.idxmin()}, {mean_f1.min():.3f}). "
        )
    if len(qa_mae):
        text += f"Lowest MAE on the {mae_set} set: **{qa_mae.idxmin()}** ({qa_mae.min():.3g})."
    else:
        text += "No variant predicted a number correctly, so MAE is undefined for all of them."
    if reference is not None:
        ref_f1 = baseline_mean_f1(reference, sets)
        if _nan(ref_f1):
            text += " The baseline was not evaluated on the same sets, so no variant is compared with it."
        else:
            beat = [name for name, f1 in mean_f1.items() if f1 > ref_f1]
            text += f" The baseline's mean F1 on the same sets is {ref_f1:.3f}; " + (
                f"{len(beat)} of {len(mean_f1)} variants beat it." if beat else "no variant beats it."
            )
    return table, text


def variant_pivot(table: pd.DataFrame) -> pd.DataFrame:
    """<NUM> F1, MAE and coverage of a :func:`suite_summary` table: one row per variant, one column per
    (metric, set), variants in suite order."""
    return table.pivot_table(
        index="variant", columns="set", values=["num_f1", "mae", "coverage95"], sort=False
    )


def threshold_sums(results: dict) -> pd.DataFrame:
    """Median sum of OvR probabilities at step 0 and after training, per threshold variant."""
    rows = {
        v["name"]: {
            "median sum P_k at step 0": v["log"][0]["median_sum_p"],
            "after training": v["log"][-1]["median_sum_p"],
        }
        for v in results["variants"]
        if v["name"].startswith("threshold=")
    }
    return pd.DataFrame.from_dict(rows, orient="index")


def threshold_sentence(results: dict, default_threshold: float) -> str:
    """Which threshold of the comparison suite gives the best mean <NUM> F1 (the first on ties),
    whether that is the library default, and how many threshold runs end with sums near 1."""
    table = metrics_table(results, ("num_f1",))
    thr = table[table["variant"].str.startswith("threshold=")]
    f1 = thr.groupby("variant", sort=False)["num_f1"].mean().dropna()
    default = f"threshold={default_threshold:g}"
    if f1.empty:
        return f"The library default is {default}; no threshold run has a defined <NUM> F1."
    best = f1.idxmax()
    ties = [name for name, x in f1.items() if x == f1.max()]
    sums = threshold_sums(results)["after training"]
    near = sum(near_one(x) for x in sums)
    if default in ties:
        verdict = (
            ", which is the default." if len(ties) == 1 else f", tied with the default ({', '.join(ties)})."
        )
    else:
        verdict = f" (the default: {f1.get(default, float('nan')):.3f})."
    return (
        f"The library default is {default}; among the thresholds tried, **{best}** gives the best mean <NUM> "
        f"F1 ({f1.max():.3f}){verdict} After training, {near} of {len(sums)} threshold runs have a median sum "
        f"of OvR probabilities between {SUM_P_BAND[0]:g} and {SUM_P_BAND[1]:g}."
    )


def trained_models(results: dict) -> int:
    """Models a saved run actually trained: variants not marked ``same_as`` another."""
    return sum("same_as" not in v for v in results["variants"])


def seconds_per_step(results: dict) -> list[float]:
    """Each trained variant's training wall time per step (the run record's machine, its load included)."""
    steps = results["config"]["steps"]
    return [v["train_seconds"] / steps for v in results["variants"] if "same_as" not in v]


class SuiteReport(NamedTuple):
    """What ``qwen-anatomy causal report`` shows of one saved suite (:func:`suite_report`)."""

    description: str  # which run, its budget
    table: pd.DataFrame  # the variant pivot (:func:`variant_pivot`)
    summary: str  # the computed sentence (:func:`suite_summary`)
    figures: list  # the two bar charts of :func:`qwen_anatomy.causal.plots.suite_bars` (F1, MAE)


def suite_report(saved: SavedSuite, reference: dict | None, model: str) -> SuiteReport:
    """One suite against the baseline ``reference`` (a results dict with a baseline variant, such as the
    comprehensive suite of the same backbone; None marks no baseline): the parts both the chapter
    and the report command (:func:`write_report`) show."""
    from .plots import suite_bars

    table, text = suite_summary(saved.results, reference)
    return SuiteReport(
        suite_description(saved), variant_pivot(table), text, suite_bars(saved.results, reference, model)
    )


# -- qwen-anatomy causal report RESULTS_DIR ----------------------------------------------------------
RESULTS_HINT = (
    "give a directory written by `qwen-anatomy causal suite` (data/results/causal/<suite>/<model>-<time>/)"
)

# What to look at in each figure of a report (written under the figure in summary.md).
FIGURE_CAPTIONS = {
    "num_f1": "<NUM> F1 per evaluation set, one bar per variant (the baseline's hatched), the dashed line "
    "the baseline of the same backbone: bars above the line detect numbers better than the baseline; an "
    "F1 of 1 on every set means detection is easy on these templates.",
    "mae": "Mean absolute error of the numbers predicted correctly (log scale): lower is better; an empty "
    "bar means the model predicted no number correctly there (MAE undefined).",
    "coverage95": "How often the true value lies inside the model's central 95% interval; the dotted line "
    "is the nominal 0.95: far below it the intervals are too narrow (overconfident), at 1 too wide.",
    "training_curves": "Training health of every trained variant: the loss parts, the <NUM> accuracy of "
    "the batch, the median scale of U and the median sum of the OvR probabilities, which should approach "
    "1 (dotted line) as the head learns; a scale of U falling towards 0 is the collapse chapter 50 discusses.",
}


def markdown_safe(text: str) -> str:
    """``<NUM>`` written so that Markdown shows it (a bare ``<NUM>`` is read as an HTML tag and vanishes)."""
    return text.replace("<NUM>", "&lt;NUM&gt;")


def _cell(x) -> str:
    if isinstance(x, bool) or x is None:
        return str(x)
    if isinstance(x, int):
        return str(x)
    if isinstance(x, float):
        return "undefined" if math.isnan(x) else f"{x:.3g}"
    return str(x).replace("|", "\\|")


def markdown_table(table: pd.DataFrame) -> str:
    """A pandas table as a Markdown (pipe) table: the index as the first column, multi-level column
    names joined with spaces, floats to 3 significant digits, NaN written "undefined"."""

    def name(col) -> str:
        parts = col if isinstance(col, tuple) else (col,)
        return " ".join(METRIC_LABELS.get(str(p), str(p)) for p in parts)

    header = [table.index.name or "", *map(name, table.columns)]
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    for idx, row in table.iterrows():
        lines.append("| " + " | ".join(_cell(x) for x in (idx, *row.tolist())) + " |")
    return "\n".join(lines)


def read_saved(path: str | Path, what: str = "RESULTS_DIR") -> SavedSuite:
    """One saved suite directory (``results.json`` + a successful ``run_record.json``), checked for what
    the reports read; UserInputError naming the directory and the problem otherwise."""
    from ..errors import UserInputError
    from ..iochecks import read_json, read_run_record

    path = Path(path)
    if not path.is_dir():
        state = "is a file, not a directory" if path.exists() else "does not exist"
        raise UserInputError(f"{what} {path} {state}: {RESULTS_HINT}")
    for name in ("results.json", "run_record.json"):
        if not (path / name).is_file():
            raise UserInputError(f"{what} {path} has no {name}: {RESULTS_HINT}")
    record = read_run_record(path / "run_record.json")
    if record.get("status") != "success":
        raise UserInputError(
            f"{what} {path} holds a run whose record says {record.get('status')!r}, not 'success': report a "
            "finished run, or rerun the suite"
        )
    results = read_json(path / "results.json", "results file")
    if not isinstance(results, dict) or results.get("suite") not in SUITES:
        raise UserInputError(
            f"{path / 'results.json'} is not a suite's results (no known 'suite'): {RESULTS_HINT}"
        )
    try:
        _check(results, path)
        for key in ("config", "backbone"):
            if not isinstance(results.get(key), dict):
                raise ValueError(f"{path / 'results.json'} has no {key!r} mapping")
    except ValueError as err:
        raise UserInputError(f"{err}; rerun the suite") from None
    return SavedSuite(results, path, record)


def _has_baseline(results: dict) -> bool:
    return any(v.get("kind") == "baseline" for v in results["variants"])


def find_reference(saved: SavedSuite, reference: str | Path | None = None) -> SavedSuite | None:
    """The run whose baseline a report marks: ``reference`` when given (it must hold a baseline), else
    the suite itself when it has one (basic, comprehensive), else the newest successful comprehensive run
    of the same backbone in the same results root (``<root>/<suite>/<run>``), else None."""
    from ..errors import UserInputError

    if reference is not None:
        ref = read_saved(reference, "--reference")
        if not _has_baseline(ref.results):
            raise UserInputError(
                f"--reference {reference} has no baseline variant: give a basic or comprehensive suite directory"
            )
        return ref
    if _has_baseline(saved.results):
        return saved
    if saved.path.parent.name != saved.results["suite"]:
        return None  # not in the <root>/<suite>/<run> layout: no root to search
    try:
        runs = load_runs("comprehensive", saved.results["backbone"]["model"], saved.path.parent.parent)
    except FileNotFoundError:
        return None
    return next((r for r in reversed(runs) if _has_baseline(r.results)), None)


def report_markdown(saved: SavedSuite, rep: SuiteReport, reference: SavedSuite | None, figures) -> str:
    """The text of a report's ``summary.md``: description, provenance, computed sentences, tables and
    the figures with what to look at in each (``figures``: file stems, in order); ``<NUM>`` escaped
    (:func:`markdown_safe`)."""
    from .model import CausalConfig

    res = saved.results
    git = saved.record.get("git") or {}
    commit = git.get("commit")
    provenance = (
        f"From `{saved.path / 'results.json'}` (run record: status {saved.record.get('status')}, finished "
        f"{saved.record.get('end_time', 'at an unrecorded time')}"
        + (
            f", code at commit {commit[:12]}" + (" with uncommitted changes" if git.get("dirty") else "")
            if commit
            else ""
        )
        + ")."
    )
    parts = [f"# The `{res['suite']}` suite on `{res['backbone']['model']}`", rep.description, provenance]
    parts += ["## What the numbers say", rep.summary]
    if reference is None:
        parts.append(
            "No baseline of this backbone was found beside this run, so the figures mark none and no variant "
            "is compared with it: pass `--reference` with a comprehensive suite directory."
        )
    elif reference.path != saved.path:
        parts.append(f"The baseline marked in the figures and compared above is from `{reference.path}`.")
    kinds = {v["kind"] for v in res["variants"]}
    if {"causal", "baseline"} <= kinds:
        parts += [
            "CausalQwen against the baseline (coverage judged by its distance from 95%):",
            winner_sentences(res),
        ]
    if "causal" in kinds:
        parts.append(settled_sentence(res))
    if any(v["name"].startswith("threshold=") for v in res["variants"]):
        parts.append(threshold_sentence(res, CausalConfig().threshold))
    parts += [
        "## Metrics",
        "Per variant and evaluation set (the table chapter 50 shows):",
        markdown_table(rep.table),
    ]
    names = [
        k
        for k in (
            "accuracy",
            "compat_accuracy",
            "num_precision",
            "num_recall",
            "num_f1",
            "mae",
            "median_ae",
            "rmse",
            "coverage95",
            "ece",
            "n_numbers",
            "n_numbers_predicted",
        )  # fmt: skip
        if all(k in m for v in res["variants"] for m in v["metrics"].values())
    ]
    full = metrics_table(res, names).set_index("variant")
    full.index.name = "variant"
    parts += ["Every metric:", markdown_table(full)]
    parts.append("## Figures")
    for stem in figures:
        parts += [FIGURE_CAPTIONS[stem], f"![{stem}]({stem}.png)"]
    return markdown_safe("\n\n".join(parts)) + "\n"


def write_report(
    results_dir: str | Path, out: str | Path | None = None, reference: str | Path | None = None
) -> Path:
    """Figures (PNG) and ``summary.md`` for one saved suite directory, written to ``out`` (default
    ``RESULTS_DIR/report``), which must not exist: the report never overwrites. Everything is written
    into a temporary sibling directory that is renamed into place at the end, so ``out`` appears whole
    or not at all. The figures and sentences come from the same functions as chapter 50
    (:func:`suite_report`). Returns ``out``."""
    import os
    import shutil
    import tempfile

    import matplotlib.pyplot as plt

    from ..errors import UserInputError
    from ..iochecks import check_output_dir
    from ..runrecord import atomic_write_text
    from .plots import metric_bars, training_curves

    saved = read_saved(results_dir)
    out = Path(out) if out is not None else saved.path / "report"
    if os.path.lexists(out):
        raise UserInputError(
            f"--out {out} already exists; a report never overwrites: choose another --out or remove it"
        )
    check_output_dir(out, "--out")
    ref = find_reference(saved, reference)
    res, model = saved.results, saved.results["backbone"]["model"]
    baseline = ref.results if ref is not None else None
    figures = {}
    try:
        rep = suite_report(saved, baseline, model)
        figures = dict(zip(("num_f1", "mae"), rep.figures, strict=True))
        figures["coverage95"] = metric_bars(
            res, "coverage95", baseline=baseline, title=f"{res['suite']} suite, {model}"
        )
        logs = {v["name"]: v["log"] for v in res["variants"] if "same_as" not in v}
        figures["training_curves"] = training_curves(logs, f"{res['suite']} suite, {model}: training health")
        text = report_markdown(saved, rep, ref, list(figures))
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
        try:
            for stem, fig in figures.items():
                fig.savefig(tmp / f"{stem}.png", bbox_inches="tight")
            atomic_write_text(tmp / "summary.md", text)
            os.rename(tmp, out)  # fails rather than replace anything that appeared meanwhile
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    finally:
        for fig in figures.values():
            plt.close(fig)
    return out
