"""The head's design choices with seeds (qwen_anatomy.causal.variants): the plan is checked before
anything trains, a CI-scale plan runs end to end through the command line (resumes, refuses another
configuration, reports), and the per-seed metrics, verdicts and sentences match hand-computed values."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from clicheck import one_line_error
from qwen_anatomy.causal import study
from qwen_anatomy.causal import study_report as sr
from qwen_anatomy.causal import variants as cv
from qwen_anatomy.errors import UserInputError

torch.set_num_threads(1)


# -- the plan -------------------------------------------------------------------------------------------
def test_the_shipped_plan_covers_the_three_suites():
    plan = cv.load_plan()
    assert {v.suite for v in plan} == set(cv.SUITES)
    assert len({v.name for v in plan}) == len(plan) == 14
    # every variant changes something, and no variant is the default head again
    assert all(v.causal for v in plan)
    half = next(v for v in plan if v.name == "causal-dim-half")
    assert cv.resolve(half, 576) == {"causal_dim": 288, "abduction_init": "random"}
    assert half.causal["causal_dim"] == "half"  # the plan itself is backbone-independent


@pytest.mark.parametrize(
    "entry, words",
    [
        ({"suite": "other", "name": "a", "causal": {"lam": 2}}, "suite 'other'"),
        ({"suite": "ablation", "name": "A b", "causal": {"lam": 2}}, "name 'A b'"),
        ({"suite": "ablation", "name": "a", "causal": {}}, "must change at least one setting"),
        ({"suite": "ablation", "name": "a", "causal": {"lamda": 2}}, "unknown setting(s) ['lamda']"),
        ({"suite": "ablation", "name": "a", "causal": {"seed": 2}}, "sets seed and freeze_backbone itself"),
        ({"suite": "ablation", "name": "a"}, "give exactly suite, name and causal"),
    ],
)
def test_a_bad_plan_entry_is_named(entry, words):
    with pytest.raises(UserInputError, match="variant 1") as err:
        cv.check_plan({"variants": [entry]}, "plan.yaml")
    assert words in str(err.value)


def test_a_plan_with_a_name_twice_or_no_variants_is_refused(tmp_path):
    entry = {"suite": "ablation", "name": "a", "causal": {"lam": 2}}
    with pytest.raises(UserInputError, match="used twice"):
        cv.check_plan({"variants": [entry, entry]}, "p")
    with pytest.raises(UserInputError, match="non-empty 'variants' list"):
        cv.check_plan({"variants": []}, "p")
    bad = tmp_path / "plan.yaml"
    bad.write_text("variants: [unclosed\n")
    with pytest.raises(UserInputError, match="not valid YAML"):
        cv.load_plan(bad)


# -- end to end, CI scale, through the command line -----------------------------------------------------
TINY = ["--steps", "3", "--n-train", "24", "--n-eval", "6", "--seeds", "0", "1", "--log-every", "1"]
TINY += ["--set", 'eval_sets=["copy", "noisy", "qa"]', "--no-progress"]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A reference study (both arms) and two variants beside it, at CI scale, through the CLI."""
    from qwen_anatomy.cli import main

    tmp = tmp_path_factory.mktemp("variants")
    plan = tmp / "plan.yaml"
    plan.write_text(
        "variants:\n"
        "  - {suite: comparison, name: lambda-10, causal: {lam: 10}}\n"
        "  - {suite: ablation, name: ovr-normal, causal: {distribution: normal}}\n"
        "  - {suite: initialization, name: gamma0-1, causal: {gamma0: 1}}\n"
    )
    common = [*TINY, "--cache-dir", str(tmp / "cache")]
    assert main(["causal", "study", "--out", str(tmp / "study"), *common]) == 0
    argv = ["causal", "variants", "--plan", str(plan), "--out", str(tmp / "variants"), *common]
    assert main([*argv, "--only", "lambda-10", "ovr-normal"]) == 0
    return tmp, plan, argv, common


def test_variants_train_causalqwen_only_with_the_reference_budget(saved, capsys):
    tmp, _plan, argv, _ = saved
    root = tmp / "variants"
    assert sorted(p.name for p in root.iterdir() if not p.name.endswith(".run_record.json")) == [
        "lambda-10",
        "ovr-normal",
        "plan.json",
    ]
    run = json.loads((root / "lambda-10" / "CausalQwen" / "seed1" / "run_record.json").read_text())
    config = run["parameters"]["config"]
    assert config["causal"] == {"lam": 10} and config["arm"] == "CausalQwen"
    assert config["model_config"]["lam"] == 10 and config["model_config"]["seed"] == 1
    assert not (root / "lambda-10" / "baseline").exists()
    reference = cv.find_reference(root)
    assert reference.path == tmp / "study" and reference.arms == ["CausalQwen", "baseline"]
    loaded = cv.load(root)
    for _v, s in loaded.studies.values():
        cv.check_same_budget(reference, s)
    # a second call reuses every run; the third variant trains only itself
    from qwen_anatomy.cli import main

    capsys.readouterr()
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "3 variant(s), trained 2 run(s), reused 4" in out
    plan = json.loads((root / "plan.json").read_text())
    assert [e["name"] for e in plan["variants"]] == ["lambda-10", "ovr-normal", "gamma0-1"]
    # every call leaves its own run record beside plan.json (nothing overwritten)
    records = sorted(root.glob("plan-*.run_record.json"))
    assert len(records) >= 1
    last = json.loads(records[-1].read_text())
    assert last["status"] == "success" and last["result"]["trained"] == ["gamma0-1/seed0", "gamma0-1/seed1"]


def test_another_configuration_is_refused_before_training(saved, capsys):
    tmp, plan, argv, _ = saved
    changed = [a if a != "3" else "4" for a in argv]  # --steps 4
    one_line_error(capsys, changed, "another configuration")
    one_line_error(capsys, [*argv, "--only", "nope"], "--only nope: not in the plan")
    one_line_error(capsys, [*argv, "--set", 'arms=["baseline"]'], "a variant trains CausalQwen only")
    missing = ["causal", "variants", "--plan", str(tmp / "none.yaml"), "--out", str(tmp / "x")]
    one_line_error(capsys, missing, "does not exist")
    assert not (tmp / "x").exists()


def test_report_of_the_ci_variants(saved, capsys):
    import matplotlib

    matplotlib.use("Agg")
    from qwen_anatomy.cli import main

    tmp, *_ = saved
    root = tmp / "variants"
    reference = cv.find_reference(root)
    loaded = cv.load(root)
    table = cv.variants_table(reference, loaded)
    assert list(table.index.get_level_values("variant"))[:2] == ["default head", "baseline"]
    assert ("comparison", "lam = 10") in table.index
    assert table.loc[("comparison", "lam = 10"), "differs from the default head"]
    text = cv.variants_sentences(reference, loaded)
    assert "*comparison* (1 variant)" in text and "*ablation* (1 variant)" in text
    assert "Seeds per model: 2; every model 3 steps of batch" in text
    assert main(["causal", "report", str(root)]) == 0
    assert "wrote" in capsys.readouterr().out
    summary = (root / "report" / "summary.md").read_text()
    assert "# Variants of the CausalQwen head on `causal-tiny-lm`" in summary
    assert (root / "report" / "forest.png").stat().st_size > 0
    one_line_error(capsys, ["causal", "report", str(root)], "already exists")
    # the reference can be given; a variant is not a reference (one line, exit 2)
    assert (
        main(["causal", "report", str(root), "--out", str(tmp / "r2"), "--reference", str(tmp / "study")])
        == 0
    )
    assert (tmp / "r2" / "summary.md").read_text() == summary
    argv = ["causal", "report", str(root), "--out", str(tmp / "r3"), "--reference", str(root / "lambda-10")]
    one_line_error(capsys, argv, "is not a study of the default head")
    assert not (tmp / "r3").exists()


# -- by hand ----------------------------------------------------------------------------------------------
def _hand(arm_locs, copy_sigma=1.0, accuracy=0.5, config=None):
    """Per arm and seed: two copy targets (10, 20; mean reference 15, copy-last 10: both MAE 5) with the
    given predictions, and ten noisy readings 0..9 predicted at the truth + 1 with scale ``copy_sigma``."""
    runs, logs = {}, {}
    for arm, per_seed in arm_locs.items():
        for seed, locs in enumerate(per_seed):
            noisy = [float(v) for v in range(10)]
            runs[(arm, seed)] = {
                "numbers": {
                    "set": ["copy", "copy"] + ["noisy"] * 10,
                    "family": ["copy_near", "copy_far"] + ["noisy"] * 10,
                    "role": ["copy", "copy"] + ["noisy"] * 10,
                    "value": [10.0, 20.0, *noisy],
                    "mean": [15.0] * 12,
                    "copy_last": [10.0, 10.0] + [0.0] * 10,
                    "oracle": [None, None, *noisy],
                    "oracle_sigma": [None, None] + [1.0] * 10,
                    "loc": [*locs, *(v + 1.0 for v in noisy)],
                    "scale": [1.0, 1.0] + [copy_sigma] * 10,
                    "dist": ["cauchy"] * 12,
                    "detected": [True] * 12,
                },
                "sets": {"copy": {"accuracy": accuracy + 0.01 * seed}, "noisy": {"accuracy": accuracy}},
            }
            logs[(arm, seed)] = [{"step": 0, "median_scale_u": 10.0}, {"step": 9, "median_scale_u": 0.5}]
    cfg = {"model": "hand", "steps": 10, "batch_size": 4, **(config or {})}
    return sr.Study(cfg, None, runs, logs, {})


def test_seed_metrics_by_hand():
    s = _hand({"CausalQwen": [[10.0, 20.0], [11.0, 20.0], [12.0, 22.0]]})
    m = cv.seed_metrics(s)
    # copy MAE 0, 0.5, 2 against the best trivial reference's 5 (the mean; a tie goes to the mean)
    assert m["relative MAE"].tolist() == pytest.approx([0.0, 0.1, 0.4])
    # several roles: the geometric mean of the ratios, so 2x better and 2x worse cancel
    assert cv._geometric_mean(np.array([0.5, 2.0])) == pytest.approx(1.0)
    assert cv._geometric_mean(np.array([0.0, 2.0])) == 0.0 and math.isnan(cv._geometric_mean(np.array([])))
    assert m["token accuracy"].tolist() == pytest.approx([0.5, 0.505, 0.51])
    assert m["final median scale of U"].tolist() == [0.5, 0.5, 0.5]
    cov, err, _ = sr.calibration_by_seed(s, "CausalQwen")
    assert m["coverage 95%"].tolist() == cov and m["calibration error"].tolist() == err


def test_verdicts_and_sentences_by_hand():
    reference = _hand(
        {"CausalQwen": [[15.0, 15.0], [14.0, 16.0], [16.0, 14.0]], "baseline": [[15.0, 15.0]] * 3}
    )
    good = _hand({"CausalQwen": [[10.0, 20.0], [10.5, 20.0], [10.0, 19.5]]})  # MAE 0, 0.25, 0.25
    same = _hand({"CausalQwen": [[15.0, 15.0], [16.0, 14.0], [14.0, 16.0]]})  # MAE 5 every seed
    worse_acc = _hand({"CausalQwen": [[15.0, 15.0], [14.0, 16.0], [16.0, 14.0]]}, accuracy=0.1)
    loaded = cv.Variants(
        None,
        {
            "lam": (cv.Variant("comparison", "lam", {"lam": 10}), good),
            "g": (cv.Variant("initialization", "g", {"gamma0": 1}), same),
            "n": (cv.Variant("ablation", "n", {"distribution": "normal"}), worse_acc),
        },
    )
    table = cv.variants_table(reference, loaded)
    differs = table["differs from the default head"]
    assert differs[("comparison", "lam = 10")] == "better: relative MAE"
    assert table.loc[("comparison", "lam = 10"), "roles beaten"] == "1 of 1"
    assert differs[("initialization", "gamma0 = 1")] == "none shown"
    assert differs[("ablation", "distribution = normal")] == "worse: token accuracy"
    assert differs[("reference", "default head")] == ""
    assert table.loc[("reference", "default head"), "roles beaten"] == "0 of 1"
    assert table.loc[("reference", "default head"), "final scale of U"] == "0.5"
    text = cv.variants_sentences(reference, loaded)
    # relative MAE: 0 (a perfect seed), 0.05 and 0.05: mean 0.0333
    assert "**lam = 10** is better on relative MAE (0.0333" in text
    assert "**distribution = normal** is worse on token accuracy" in text
    assert "No difference from the default is shown for **gamma0 = 1**" in text
    assert "Better than the default head: on relative MAE, lam = 10." in text
    assert "Seeds per model: 3; every model 10 steps of batch 4" in text
    # one seed gives no interval: no verdict, said so, never "no difference"
    single = _hand({"CausalQwen": [[10.0, 20.0]]})
    one = cv.Variants(None, {"s": (cv.Variant("comparison", "s", {"lam": 2}), single)})
    assert cv.variants_table(reference, one)["differs from the default head"].iloc[-1] == "too few seeds"
    text = cv.variants_sentences(reference, one)
    assert "No verdict yet for **lam = 2** (1 seed)" in text and "no difference" not in text.lower()
    assert "Seeds per model: 1 to 3" in text
    other = _hand({"CausalQwen": [[10.0, 20.0]] * 3}, config={"steps": 20})
    with pytest.raises(UserInputError, match="steps"):
        cv.variants_table(
            reference, cv.Variants(None, {"x": (cv.Variant("comparison", "x", {"lam": 2}), other)})
        )


def test_forest_plot_marks_the_default_and_the_baseline():
    import matplotlib

    matplotlib.use("Agg")
    reference = _hand(
        {"CausalQwen": [[15.0, 15.0], [14.0, 16.0], [16.0, 14.0]], "baseline": [[15.0, 15.0]] * 3}
    )
    good = _hand({"CausalQwen": [[10.0, 20.0], [10.5, 20.0], [10.0, 19.5]]})
    fig = cv.forest_plot(
        reference, cv.Variants(None, {"l": (cv.Variant("comparison", "l", {"lam": 10}), good)})
    )
    assert [ax.get_title() for ax in fig.axes] == [m for m, *_ in cv.METRICS]
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels[:2] == ["default head (interval)", "baseline (mean)"]
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["comparison: lam = 10"]


def test_study_defaults_are_what_the_variants_change():
    # a variant's setting that equals the default would train the default head again
    from qwen_anatomy.causal.model import CausalConfig

    default = CausalConfig().to_dict()
    for v in cv.load_plan():
        changed = cv.resolve(v, 576)
        assert any(default[k] != val for k, val in changed.items()), v.name
    assert study.DEFAULTS["causal"] == {}


def test_backbone_note_names_both_backbones_with_their_cost():
    small = _hand({"CausalQwen": [[10.0, 20.0]] * 3}, config={"model": "small"})
    big = _hand({"CausalQwen": [[10.0, 20.0]] * 3}, config={"model": "big"})
    for s, secs in ((small, 100.0), (big, 700.0)):
        for ev in s.runs.values():
            ev["train_seconds"] = secs
    note = cv.backbone_note(small, big)
    assert "compared on `small`, not on the study's `big`" in note
    assert "took 100 s there against 700 s on `big`" in note
    assert cv.backbone_note(small, small) == ""


def test_study_description_states_both_learning_rates():
    s = _hand({"CausalQwen": [[10.0, 20.0]] * 3}, config={"lr": 0.01, "lr_pretrained": 0.0001})
    for ev in s.runs.values():
        ev["seconds_per_step"] = 0.05
    assert (
        "at learning rate 0.01 (0.0001 for the matrices copied from the base model)"
        in sr.study_description(s)
    )
    s.config["lr_pretrained"] = None
    assert "at learning rate 0.01, on" in sr.study_description(s)


def test_plan_sentence_names_what_is_not_run_yet():
    plan = [
        cv.Variant("comparison", "a", {"lam": 10}),
        cv.Variant("ablation", "b", {"distribution": "normal"}),
    ]
    one = cv.Variants(None, {"a": (plan[0], None)})
    assert cv.plan_sentence(one, plan) == (
        "1 of the 2 variants of the plan has run; not run yet: ablation: distribution = normal "
        "(rerunning the command resumes the plan)."
    )
    both = cv.Variants(None, {"a": (plan[0], None), "b": (plan[1], None)})
    assert cv.plan_sentence(both, plan) == "All 2 variants of the plan have run."


def test_a_failed_run_is_reported_not_called_missing(saved, tmp_path):
    import shutil

    tmp, *_ = saved
    root = tmp_path / "variants"
    shutil.copytree(tmp / "variants", root)
    (tmp_path / "study").symlink_to(tmp / "study")
    error = (
        "TrainingDiverged: training diverged at step 7: loss nan (classification nan, regression nan); lower"
    )
    seed = root / "gamma0-1" / "CausalQwen" / "seed0"
    shutil.rmtree(root / "gamma0-1")
    seed.mkdir(parents=True)
    (seed / "run_record.json").write_text(json.dumps({"status": "failed", "error": error}))
    loaded = cv.load(root)
    assert "gamma0-1" not in loaded.studies
    assert loaded.failed["gamma0-1"][1] == [(0, error)]
    reference = cv.find_reference(root, loaded)
    text = cv.variants_sentences(reference, loaded)
    assert "**gamma0 = 1** failed to train (seed 0: training diverged at step 7: loss nan" in text
    table = cv.variants_table(reference, loaded)
    assert table.loc[("initialization", "gamma0 = 1"), "differs from the default head"].startswith(
        "failed: seed 0: training diverged at step 7"
    )
    plan = [v for v in cv.check_plan({"variants": [
        {"suite": "comparison", "name": "lambda-10", "causal": {"lam": 10}},
        {"suite": "initialization", "name": "gamma0-1", "causal": {"gamma0": 1}},
    ]}, "p")]  # fmt: skip
    assert cv.plan_sentence(loaded, plan) == "All 2 variants of the plan have run."


def test_a_diverged_seed_does_not_stop_the_plan_and_is_not_retried(tmp_path, monkeypatch):
    from qwen_anatomy.causal.train import TrainingDiverged

    real_run, calls = study.run, []

    def run(cfg, out, **kw):
        calls.append((out.name, cfg["seeds"]))
        if out.name == "lambda-10" and cfg["seeds"] == [0]:
            folder = study.run_folder(out, "CausalQwen", 0)
            folder.mkdir(parents=True)
            error = "TrainingDiverged: training diverged at step 2: loss nan"
            (folder / "run_record.json").write_text(json.dumps({"status": "failed", "error": error}))
            raise TrainingDiverged("training diverged at step 2: loss nan")
        return real_run(cfg, out, **kw)

    monkeypatch.setattr(cv.study_mod, "run", run)
    plan = [
        cv.Variant("comparison", "lambda-10", {"lam": 10}),
        cv.Variant("initialization", "g", {"gamma0": 1}),
    ]
    base = {"steps": 2, "n_train": 16, "n_eval": 3, "seeds": [0, 1], "eval_sets": ["qa"],
            "cache_dir": str(tmp_path / "cache")}  # fmt: skip
    messages = []
    result = cv.run(plan, base, tmp_path / "v", progress=False, log=messages.append)
    assert result["diverged"] == ["lambda-10/seed0"]
    assert result["trained"] == ["lambda-10/seed1", "g/seed0", "g/seed1"]
    assert len(calls) == 4
    again = cv.run(plan, base, tmp_path / "v", progress=False, log=messages.append)
    assert again["diverged"] == ["lambda-10/seed0"] and again["trained"] == [] and len(again["reused"]) == 3
    assert len(calls) == 7  # the diverged seed was not run again
    assert any("diverged in an earlier call; not retried" in m for m in messages)
