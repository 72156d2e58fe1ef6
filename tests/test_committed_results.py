"""Every committed result loads through the library function its chapter reads it with.

CI executes the chapters at CI scale, but a chapter that read other files at that scale would let a
committed result that no longer loads break only `make book`. So the chapters read the committed
files in every build (tests/ci-params.yml must not point them elsewhere: checked below), and this
cheap test loads every file under data/results/ and data/models/ and checks what the chapters rely
on: the keys, finite metrics in range, and seed counts that agree with each run's own configuration.
(Whether each record names a clean commit is tests/test_provenance.py's job.)
"""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from qwen_anatomy.causal import report as causal_report
from qwen_anatomy.causal.experiments import SUITES
from qwen_anatomy.experiments import load_results as load_experiment_runs
from qwen_anatomy.heads.analysis import head_table
from qwen_anatomy.heads.experiment import load_results as load_heads
from qwen_anatomy.loading import load_model
from qwen_anatomy.tasks.experiment import load_committed, load_run
from toc import ROOT

DATA = ROOT / "data"
TASKS = DATA / "results" / "tasks"
HEADS = DATA / "results" / "heads" / "finetune-square"
CAUSAL = DATA / "results" / "causal"
RUNS_90 = DATA / "results" / "90_experiments"
MODELS = DATA / "models"


def finite(x) -> bool:
    return isinstance(x, int | float) and math.isfinite(x)


def files(*suffixes: str) -> list[Path]:
    return sorted(p for p in DATA.rglob("*") if p.is_file() and p.name.endswith(suffixes))


# -- every file parses ---------------------------------------------------------------------------------
def test_every_json_file_parses():
    paths = files(".json", ".ipynb")
    assert paths
    for path in paths:
        try:
            json.loads(path.read_text())
        except ValueError as err:
            raise AssertionError(f"{path.relative_to(ROOT)} is not valid JSON: {err}") from None


def test_every_yaml_csv_and_npz_file_loads():
    loaded = 0
    for path in files(".yaml", ".yml"):
        assert isinstance(yaml.safe_load(path.read_text()), dict), path
        loaded += 1
    for path in files(".csv"):
        rows = list(csv.DictReader(path.open()))
        assert rows and all(len(r) == len(rows[0]) for r in rows), path
        loaded += 1
    for path in files(".npz"):
        with np.load(path) as z:
            assert z.files, path
        loaded += 1
    assert loaded > 0


# -- chapter 30: the task sweep ------------------------------------------------------------------------
def test_task_sweep_loads_every_run_with_finite_metrics():
    results, curves = load_committed(TASKS)
    # both layouts: the first build's <config>/seed<k>/ and the length sweep's <config>/n<n>/seed<k>/
    on_disk = sorted(p.parent for g in ("*/seed*", "*/n*/seed*") for p in TASKS.glob(f"{g}/evaluation.json"))
    assert len(results) == len(on_disk) == len(curves), "a run on disk is not read by the chapter"
    for folder in on_disk:
        run = load_run(folder)  # evaluation, curves and a run record that says success
        ev = run["evaluation"]
        assert 0 <= ev["exact_match"] <= 1 and 0 <= ev["token_accuracy"] <= 1, folder
        assert len(ev["per_position_accuracy"]) == ev["n"], folder
        assert ev["num_examples"] > 0 and ev["steps"] == ev["planned_steps"], folder
        assert all(finite(r["loss"]) for r in run["curves"]["loss"]), folder
        assert run["curves"]["exact_match"], f"{folder}: no exact-match check during training"
    # every config has the same seeds, and every task both orders
    seeds = results.groupby(["config", "n"])["seed"].apply(lambda s: tuple(sorted(s)))
    assert seeds.nunique() == 1, seeds.to_dict()
    assert (results.groupby(["task", "n"])["order"].nunique() == 2).all(), "a length with one order only"
    summary = json.loads((TASKS / "summary.json").read_text())
    assert {(r["config"], r["n"], r["seed"]) for r in summary["all_runs"]} == set(
        zip(results["config"], results["n"], results["seed"], strict=True)
    )


# -- chapter 40: the heads experiment ------------------------------------------------------------------
def test_heads_experiment_loads_and_its_tables_match_the_raw_measurements():
    res = load_heads(HEADS)
    config_seeds = res["summary"]["config"]["seeds"]
    assert sorted(res["seeds"]) == sorted(config_seeds) and len(config_seeds) >= 1
    for seed, r in res["seeds"].items():
        n = r["m0"].layout.n_heads_total
        assert (
            r["stats"]["n_heads"] == n and np.isfinite(r["m0"].loss).all() and np.isfinite(r["m1"].loss).all()
        )
        main = next(p for p in r["stats"]["pairs"] if {p["x"], p["y"]} == {"I_pre", "Urel"})
        assert finite(main["rho"]) and 0 < main["p_perm"] <= 1
        # the committed per-head table is the one the raw measurements give
        table = head_table(r["m0"], r["m1"], r["update"])
        with (HEADS / f"seed-{seed}" / "heads.csv").open() as f:
            committed = list(csv.DictReader(f))
        assert len(committed) == n
        for column in ("I_pre", "I_post", "Urel"):
            saved = np.array([float(row[column]) for row in committed])
            np.testing.assert_allclose(saved, table[column].to_numpy(), rtol=1e-9, atol=1e-12)
        model_dir = HEADS / f"seed-{seed}" / "model"
        run = load_run(model_dir)
        model, _ = load_model(model_dir)
        assert sum(p.numel() for p in model.parameters()) == run["evaluation"]["parameters"]
    agreement = {k: v for k, v in res["agreement"].items() if "mean_spearman" in v}
    assert agreement and all(v["n_seeds"] == len(config_seeds) for v in agreement.values())
    assert all(-1 <= v["mean_spearman"] <= 1 for v in agreement.values() if len(config_seeds) > 1)


# -- chapter 50: the CausalQwen suites -----------------------------------------------------------------
def causal_runs() -> list[tuple[str, str]]:
    pairs = set()
    for results in CAUSAL.glob("*/*/results.json"):
        pairs.add((results.parent.parent.name, json.loads(results.read_text())["backbone"]["model"]))
    return sorted(pairs)


@pytest.mark.parametrize("suite, model", causal_runs(), ids=lambda x: str(x))
def test_causal_suite_loads_with_finite_metrics(suite, model):
    assert suite in SUITES
    runs = causal_report.load_runs(suite, model, CAUSAL)
    on_disk = [p for p in (CAUSAL / suite).glob(f"{Path(model).name}-*") if (p / "results.json").is_file()]
    assert len(runs) == len(on_disk), "a saved run is not read by the chapter (status not success?)"
    for saved in runs:
        cfg = saved.results["config"]
        assert saved.record["status"] == "success"
        for v in saved.results["variants"]:
            assert sorted(v["metrics"]) == sorted(cfg["eval_sets"]), v["name"]
            assert v["log"][-1]["step"] == cfg["steps"] and v["train_seconds"] > 0, v["name"]
            for set_name, m in v["metrics"].items():
                assert 0 <= m["num_f1"] <= 1 and 0 <= m["accuracy"] <= 1, (v["name"], set_name)
                for key in ("mae", "rmse", "coverage95"):
                    # regression metrics are undefined only where no number was predicted correctly
                    assert finite(m[key]) or m["num_f1"] == 0, (v["name"], set_name, key)
        if suite in ("basic", "comprehensive"):
            assert causal_report.winner_sentences(saved.results)  # the chapter's comparison works


def test_the_readme_quotes_the_measured_step_time():
    """data/results/causal/README.md's SmolLM2 step time is the range the saved runs give."""
    text = (CAUSAL / "README.md").read_text()
    quoted = re.search(r"SmolLM2 runs a training step took (\d+\.\d)-(\d+\.\d) s", text)
    assert quoted, "the README no longer quotes the step time"
    per_step = [
        x
        for suite, model in causal_runs()
        if model == "smollm2-135m"
        for saved in causal_report.load_runs(suite, model, CAUSAL)
        for x in causal_report.seconds_per_step(saved.results)
    ]
    assert (float(quoted[1]), float(quoted[2])) == (round(min(per_step), 1), round(max(per_step), 1))


# -- chapter 90: the committed grid --------------------------------------------------------------------
def test_chapter_90_grid_loads_every_combination_with_finite_metrics():
    runs = load_experiment_runs("01_language_models", RUNS_90)
    on_disk = list((RUNS_90 / "01_language_models").glob("*/run.json"))
    assert len(runs) == len(on_disk) and (runs["status"] == "success").all()
    grid = yaml.safe_load((ROOT / "configs" / "grids" / "01_ngram_seeds.yml").read_text())
    swept = {k: v for k, v in grid.items() if isinstance(v, list)}
    combos = {tuple(row) for row in runs[[f"param.{k}" for k in swept]].itertuples(index=False)}
    assert len(combos) == math.prod(len(v) for v in swept.values()), "a grid combination is missing"
    for metric in ("metric.ngram_ppl", "metric.transformer_ppl"):
        assert runs[metric].map(finite).all() and (runs[metric] > 1).all(), metric


# -- data/models ---------------------------------------------------------------------------------------
TASK_MODELS = sorted(p.parent.name for p in MODELS.glob("*/evaluation.json"))


@pytest.mark.parametrize("name", TASK_MODELS)
def test_shipped_task_model_loads_by_name_with_its_evaluation(name):
    run = load_run(MODELS / name)
    model, tok = load_model(name)  # how chapters 30 and 40 load it
    ev = run["evaluation"]
    assert tok is not None and sum(p.numel() for p in model.parameters()) == ev["parameters"]
    assert 0 <= ev["exact_match"] <= 1 and ev["num_examples"] > 0 and finite(ev["train_seconds"])


def test_causal_backbone_loads_by_name_with_its_provenance():
    from qwen_anatomy.causal.numtok import NumberTokenizer

    model, tok = load_model("causal-tiny-lm")  # chapter 50's live backbone
    numtok = NumberTokenizer(tok)
    assert not numtok.added_num_row  # <NUM> is reserved in its vocabulary
    provenance = json.loads((MODELS / "causal-tiny-lm" / "provenance.json").read_text())
    assert provenance["steps"] > 0 and finite(provenance["final_loss"]) and "command" in provenance
    assert model.config.vocab_size == numtok.vocab_size


def test_every_model_folder_is_checked():
    folders = sorted(p.name for p in MODELS.iterdir() if p.is_dir())
    assert folders == sorted([*TASK_MODELS, "causal-tiny-lm"]), "a new model folder needs a check here"


@pytest.mark.parametrize(
    "folder, model, arms",
    [
        ("study", "qwen2.5-coder-0.5b", ["CausalQwen", "baseline"]),
        ("study-smollm2", "smollm2-135m", ["CausalQwen", "baseline"]),
        ("remedies/learnable-threshold", "qwen2.5-coder-0.5b", ["CausalQwen"]),
    ],
)
def test_causal_studies_load_with_three_seeds_and_clean_verdicts(folder, model, arms):
    """Chapter 50's saved studies: 3 seeds per arm, the backbone the chapter names, and the tables and
    verdicts it prints compute from them."""
    from qwen_anatomy.causal import study_report

    study = study_report.load_study(CAUSAL / folder)
    assert study.config["model"] == model and study.arms == arms and study.seeds == [0, 1, 2]
    assert len(study.runs) == 3 * len(arms)
    assert not study_report.value_table(study).empty
    assert study_report.calibration_sentences(study)


def test_the_remedy_shares_the_study_budget():
    from qwen_anatomy.causal import collapse, study_report

    study = study_report.load_study(CAUSAL / "study")
    remedy = study_report.load_study(CAUSAL / "remedies" / "learnable-threshold")
    assert remedy.config["causal"] == {"threshold_mode": "learnable"}
    assert "falls below" in collapse.remedy_sentences(study, remedy, "learnable thresholds")  # same budget


def test_collapse_runs_load_and_log_the_drive_of_each_term():
    """data/results/causal/collapse: chapter 50's variants, every log row with the drive, the default and
    the no-regression intervention among them, each with 3 seeds."""
    from qwen_anatomy.causal import collapse

    variants = collapse.load_variants(CAUSAL / "collapse")
    assert {"default", "lam0"} <= set(variants)
    for name, study in variants.items():
        assert study.seeds == [0, 1, 2], name
        assert all(set(collapse.DRIVE_KEYS) <= set(r) for log in study.logs.values() for r in log), name
    assert collapse.collapse_sentences(variants)


def test_causal_variants_have_three_seeds_at_the_budget_of_their_reference():
    """data/results/causal/variants-smollm2: every saved variant is the plan's change of the default
    head, with the reference study's seeds and budget (the chapter refuses anything else)."""
    from qwen_anatomy.causal import variants as cv

    saved = cv.load(CAUSAL / "variants-smollm2")
    reference = cv.find_reference(CAUSAL / "variants-smollm2", saved)
    assert reference.path.name == "study-smollm2"
    plan = {v.name: v for v in cv.load_plan()}
    for name, (variant, study) in saved.studies.items():
        assert (variant.suite, variant.causal) == (plan[name].suite, cv.resolve(plan[name], 576)), name
        assert study.seeds == reference.seeds == [0, 1, 2], name
        assert study.arms == ["CausalQwen"] and study.config["causal"] == cv.resolve(variant, 576), name
        cv.check_same_budget(reference, study)
    text = cv.variants_sentences(reference, saved)
    assert all(
        f"**{variant.label}**" in text for variant, _ in [*saved.studies.values(), *saved.failed.values()]
    )
    assert set(saved.studies) | set(saved.failed) == set(plan)  # every variant of the plan has run


# -- CI reads what the book reads ----------------------------------------------------------------------
RESULT_PARAMETERS = {
    "30_synthetic_tasks": ("results_root",),
    "40_heads_importance_vs_plasticity": ("results_dir", "regenerate", "theta0"),
    "50_causal_heads": (
        "study_dir",
        "study_estimates_dir",
        "second_study_dir",
        "collapse_dir",
        "remedy_dir",
        "variants_dir",
    ),
    "90_experiments": ("results_dir", "results_notebook"),
}


def test_ci_parameters_leave_the_committed_results_in_place():
    params = yaml.safe_load((ROOT / "tests" / "ci-params.yml").read_text())
    for stem, names in RESULT_PARAMETERS.items():
        overridden = set(params.get(stem) or {}) & set(names)
        assert not overridden, f"ci-params.yml makes {stem} read other results than the book: {overridden}"
