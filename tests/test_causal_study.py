"""The CausalQwen study (qwen_anatomy.causal.study, .study_report): a CI-scale study end to end on the
small project backbone, resuming and refusing, bad input with exit 2, and the statistics, verdicts and
calibration measures against hand-computed values and a case with a known answer."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from clicheck import one_line_error
from qwen_anatomy.causal import study
from qwen_anatomy.causal import study_report as sr
from qwen_anatomy.errors import UserInputError
from tolerance import assert_close_scaled

torch.set_num_threads(1)

TINY = {
    "steps": 3,
    "n_train": 24,
    "n_eval": 6,
    "seeds": [0, 1],
    "log_every": 1,
    "eval_sets": ["copy", "noisy", "qa", "extreme"],
}


def _config(tmp_path, **changes):
    return {**TINY, "cache_dir": str(tmp_path / "cache"), **changes}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """One CI-scale study (2 arms x 2 seeds), run once for the module."""
    tmp = tmp_path_factory.mktemp("study")
    out = tmp / "study"
    result = study.run(_config(tmp), out, progress=False, log=lambda m: None)
    return tmp, out, result


def test_study_trains_both_arms_for_every_seed(saved):
    _, out, result = saved
    assert sorted(result["trained"]) == [
        "CausalQwen/seed0",
        "CausalQwen/seed1",
        "baseline/seed0",
        "baseline/seed1",
    ]
    for arm in study.ARMS:
        for seed in (0, 1):
            folder = out / arm / f"seed{seed}"
            record = json.loads((folder / "run_record.json").read_text())
            assert record["status"] == "success" and record["seed"] == seed
            assert record["parameters"]["config"]["arm"] == arm
            evaluation = json.loads((folder / "evaluation.json").read_text())
            assert set(evaluation["sets"]) == set(TINY["eval_sets"])
            assert len(json.loads((folder / "log.json").read_text())) == TINY["steps"] + 1
            numbers = evaluation["numbers"]
            assert len(numbers["value"]) > 0 and len(numbers["loc"]) == len(numbers["value"])
    # both arms scored the same targets, with the same references
    a = json.loads((out / "CausalQwen/seed0/evaluation.json").read_text())["numbers"]
    b = json.loads((out / "baseline/seed1/evaluation.json").read_text())["numbers"]
    for key in ("set", "text", "k", "value", "mean", "copy_last"):
        assert a[key] == b[key]
    assert set(a["dist"]) == {"cauchy"} and set(b["dist"]) == {"normal"}


def test_a_second_call_reuses_and_a_new_seed_trains_only_itself(saved):
    tmp, out, _ = saved
    before = (out / "CausalQwen/seed0/evaluation.json").stat().st_mtime_ns
    again = study.run(_config(tmp), out, progress=False, log=lambda m: None)
    assert again["trained"] == [] and len(again["reused"]) == 4 and again["cache"] is None
    assert (out / "CausalQwen/seed0/evaluation.json").stat().st_mtime_ns == before
    more = study.run(_config(tmp, seeds=[0, 1, 2]), out, progress=False, log=lambda m: None)
    assert sorted(more["trained"]) == ["CausalQwen/seed2", "baseline/seed2"]
    assert len(list((tmp / "cache").glob("*.pt"))) == 1  # the feature cache was built once


def test_a_changed_config_is_refused_before_anything_loads(saved):
    tmp, out, _ = saved
    before = (out / "baseline/seed0/evaluation.json").read_text()
    with pytest.raises(UserInputError, match=r"another configuration \(steps 3 -> 4\)"):
        study.run(_config(tmp, steps=4), out, progress=False)
    assert (out / "baseline/seed0/evaluation.json").read_text() == before


def test_a_failed_run_is_moved_aside_and_rerun(tmp_path):
    out = tmp_path / "study"
    folder = out / "baseline" / "seed0"
    folder.mkdir(parents=True)
    (folder / "run_record.json").write_text(json.dumps({"status": "failed", "pid": 1}))
    result = study.run(
        _config(tmp_path, seeds=[0], arms=["baseline"], eval_sets=["qa"]),
        out,
        progress=False,
        log=lambda m: None,
    )
    assert result["trained"] == ["baseline/seed0"]
    assert len(list((out / "baseline").glob("seed0.failed-*"))) == 1


def test_a_template_vocab_study_runs_resumes_and_never_mixes_with_full(saved, tmp_path):
    """--vocab template: both arms judge the token ids of the study's texts (recorded in every run), a
    second call reuses the runs, and a full-vocabulary study's folder refuses it (and the reverse)."""
    from qwen_anatomy.causal.numtok import NumberTokenizer
    from qwen_anatomy.loading import load_model

    tmp, full_out, _ = saved
    out = tmp_path / "template"
    config = _config(tmp, seeds=[0], vocab="template")
    result = study.run(config, out, progress=False, log=lambda m: None)
    assert sorted(result["trained"]) == ["CausalQwen/seed0", "baseline/seed0"]
    cfg = study.check_config(config)
    train, evals = study.datasets(cfg)
    texts = {"train": [e.text for e in train], **{k: [e.text for e in v] for k, v in evals.items()}}
    numtok = NumberTokenizer(load_model("causal-tiny-lm")[1])
    expected = study.class_set(numtok, texts, cfg["max_length"])
    assert numtok.num_token_id in expected and expected == sorted(set(expected))
    for arm in study.ARMS:
        ev = json.loads((out / arm / "seed0" / "evaluation.json").read_text())
        assert ev["classes"] == {"vocab": "template", "count": len(expected), "of": 384, "ids": expected}
        assert 0 < len(expected) < 384
        for metrics in ev["sets"].values():  # over the restricted classes, every metric defined
            assert (
                0 <= metrics["accuracy"] <= 1 and 0 <= metrics["num_f1"] <= 1 and metrics["n_positions"] > 0
            )
    full_ev = json.loads((full_out / "baseline" / "seed0" / "evaluation.json").read_text())
    assert full_ev["classes"] == {"vocab": "full", "count": 384, "of": 384}
    s = sr.load_study(out)
    assert "restricted to the" in sr.classes_sentence(
        s, 68.6
    ) and "68.6 s per CausalQwen step" in sr.classes_sentence(s, 68.6)
    assert (
        sr.classes_sentence(sr.load_study(full_out))
        == "Every token id of the backbone is a class (384 ids): the spec's design."
    )
    again = study.run(config, out, progress=False, log=lambda m: None)
    assert again["trained"] == [] and again["cache"] is None
    with pytest.raises(UserInputError, match=r"another configuration \(vocab 'full' -> 'template'\)"):
        study.run(_config(tmp, seeds=[0], vocab="template"), full_out, progress=False)
    with pytest.raises(UserInputError, match=r"another configuration \(vocab 'template' -> 'full'\)"):
        study.run(_config(tmp, seeds=[0]), out, progress=False)


def test_report_of_the_ci_study(saved):
    _, out, _ = saved
    s = sr.load_study(out)
    assert s.arms == list(study.ARMS) and s.seeds == [0, 1, 2]
    table = sr.value_table(s)
    assert {"copy", "noisy", "extreme: copy"} <= set(table.index)
    assert table.loc["copy", "best trivial"] == "copy_last"
    assert set(table["CausalQwen verdict"]) <= {"beats", "worse", "no difference shown"}
    cal = sr.calibration_table(s)
    assert list(cal.index) == list(sr.LEVELS) and "oracle" in cal
    assert "against" in sr.value_sentences(s) and "oracle covers" in sr.calibration_sentences(s)
    assert "F1" in sr.detection_sentence(s)
    fig = sr.calibration_plot(s)
    ax = fig.axes[0]
    assert ax.get_xlabel() and ax.get_ylabel() and len(ax.lines) == 4  # diagonal, oracle, two arms
    assert sr.study_exists(out) and not sr.study_exists(out / "nothing")


def test_a_study_of_mixed_configurations_is_refused(saved, tmp_path):
    _, out, _ = saved
    mixed = tmp_path / "mixed"
    for arm in study.ARMS:
        (mixed / arm).mkdir(parents=True)
        (mixed / arm / "seed0").symlink_to(out / arm / "seed0")
    other = json.loads((out / "baseline/seed1/run_record.json").read_text())
    other["parameters"]["config"]["steps"] = 99
    (mixed / "baseline" / "seed1").mkdir()
    (mixed / "baseline" / "seed1" / "run_record.json").write_text(json.dumps(other))
    with pytest.raises(UserInputError, match="other settings"):
        sr.load_study(mixed)
    with pytest.raises(UserInputError, match="no finished study run"):
        sr.load_study(tmp_path / "empty")


def test_numbers_must_match_the_cache(tmp_path):
    """The evaluation refuses examples that are not the cached texts (a wrong alignment would score
    the model against another text's numbers)."""
    from qwen_anatomy.causal.cache import build_cache
    from qwen_anatomy.causal.model import BaselineQwen
    from qwen_anatomy.causal.numtok import NumberTokenizer
    from qwen_anatomy.causal.templates import make_examples
    from qwen_anatomy.loading import load_model

    base, tok = load_model("causal-tiny-lm")
    numtok = NumberTokenizer(tok)
    model = BaselineQwen(base, numtok.num_token_id)
    examples = make_examples("copy", 4, 0)
    cache = build_cache(model, numtok, [e.text for e in examples], 64, progress=False)
    rows = study.number_rows(examples, cache, 50.0, numtok.num_token_id)
    # copy texts never start with their number, so every number has a position that predicts it
    assert [r["value"] for r in rows] == [x.value for e in examples for x in e.numbers]
    assert all(r["role"] in ("given", "copy") for r in rows)
    with pytest.raises(ValueError, match="the cache holds"):
        study.number_rows(make_examples("copy", 4, 1), cache, 50.0, numtok.num_token_id)


def test_trimmed_batches_equal_full_width(tmp_path):
    """Cutting a cached batch to its longest text changes nothing at the real positions."""
    from qwen_anatomy.causal.cache import build_cache, cached_forward
    from qwen_anatomy.causal.model import CausalQwen
    from qwen_anatomy.causal.numtok import NumberTokenizer
    from qwen_anatomy.causal.templates import make_texts
    from qwen_anatomy.loading import load_model

    base, tok = load_model("causal-tiny-lm")
    numtok = NumberTokenizer(tok)
    model = CausalQwen.from_base(base, numtok.num_token_id)
    texts = make_texts("random", 4, 0) + make_texts("copy", 4, 0)
    cache = build_cache(model, numtok, texts, 64, progress=False)
    rows = torch.tensor([0, 1, 2])  # short texts: the batch is narrower than the cache
    width = cache.width(rows)
    assert width < cache.input_ids.shape[1]
    with torch.no_grad():
        full, cut = cached_forward(model, cache, rows), cached_forward(model, cache, rows, width)
    real = cache.batch(rows, width)["attention_mask"].bool()
    # float32, relative 1e-5 of the tensor's scale: the two shapes may make BLAS sum in another order
    assert_close_scaled(cut.loc_Y[real], full.loc_Y[:, :width][real], rtol=1e-5)
    assert_close_scaled(cut.loc_S[real], full.loc_S[:, :width][real], rtol=1e-5)


# -- the command line --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "extra, words",
    [
        (["--set", "bogus=1"], "unknown study setting(s) ['bogus']"),
        (["--set", 'eval_sets=["nope"]'], "eval_sets=['nope']"),
        (["--set", 'causal={"alpha": 2}'], "alpha=2 must lie in [0, 1]"),
        (["--set", 'causal={"seed": 3}'], "the study seeds each run itself"),
        (["--seeds", "0", "0"], "repeats a seed"),
        (["--set", "steps=0"], "steps=0 must be an integer >= 1"),
        (["--model", "no-such-model"], "no-such-model"),
        (["--set", "steps=5", "--steps", "4"], "already given"),
        (["--set", "n_eval=oops"], "is not JSON"),
        (["--vocab", "tiny"], "vocab='tiny': use 'full'"),
        (["--set", 'vocab="some"'], "vocab='some': use 'full'"),
    ],
)
def test_bad_input_exits_2_with_one_line(capsys, tmp_path, extra, words):
    out = tmp_path / "study"
    one_line_error(capsys, ["causal", "study", "--out", str(out), "--no-progress", *extra], words)
    assert not out.exists()


def test_cli_study_runs_then_refuses_another_config(capsys, tmp_path):
    from qwen_anatomy.cli import main

    out = tmp_path / "study"
    argv = ["causal", "study", "--out", str(out), "--no-progress", "--cache-dir", str(tmp_path / "c")]
    argv += ["--steps", "2", "--n-train", "16", "--n-eval", "3", "--seeds", "0", "--set", 'eval_sets=["qa"]']
    assert main(argv) == 0
    assert "trained 2 run(s), reused 0" in capsys.readouterr().out
    assert main(argv) == 0
    assert "trained 0 run(s), reused 2" in capsys.readouterr().out
    one_line_error(capsys, [*argv[:-6], "--steps", "3", *argv[-6 + 2 :]], "another configuration")


@pytest.mark.parametrize("vocab", ["full", "template"])
def test_estimate_times_both_arms(capsys, vocab):
    measured = study.estimate(
        {"steps": 100, "seeds": [0, 1, 2], "batch_size": 4, "n_train": 50, "n_eval": 4, "vocab": vocab},
        steps=2,
        log=lambda m: None,
    )
    for arm in study.ARMS:
        m = measured["arms"][arm]
        assert m["seconds_per_step"] > 0 and m["cache_seconds_per_text"] > 0 and m["tokens_per_batch"] > 0
        assert (m["classes"] == 384) == (vocab == "full") and m["classes"] > 1
    assert measured["projection"]["total_seconds"] > 0


def test_estimate_out_saves_a_quotable_measurement_and_never_overwrites_it(capsys, tmp_path):
    """--estimate-out writes estimate.json beside a run record; the chapter reads the CausalQwen step
    time from it only for the study's backbone, batch size and the full vocabulary."""
    from qwen_anatomy.cli import main

    root = tmp_path / "estimates"
    out = sr.full_vocab_estimate_dir("causal-tiny-lm", root)
    argv = ["causal", "study", "--estimate", "--estimate-steps", "2", "--batch-size", "4", "--n-train", "8"]
    argv += ["--n-eval", "2", "--estimate-out", str(out)]
    assert main(argv) == 0
    assert f"estimate saved in {out / study.ESTIMATE_FILE}" in capsys.readouterr().out
    record = json.loads((out / "run_record.json").read_text())
    saved = study.read_estimate(out)
    assert record["status"] == "success" and saved["config"]["vocab"] == "full"
    seconds = saved["measured"]["arms"]["CausalQwen"]["seconds_per_step"]
    assert study.estimate_step_seconds(out) == seconds > 0
    same = sr.Study({"model": "causal-tiny-lm", "batch_size": 4}, tmp_path, {}, {}, {})
    assert sr.full_vocab_step_seconds(same, root) == seconds
    other_batch = sr.Study({"model": "causal-tiny-lm", "batch_size": 16}, tmp_path, {}, {}, {})
    other_model = sr.Study({"model": "smollm2-135m", "batch_size": 4}, tmp_path, {}, {}, {})
    assert sr.full_vocab_step_seconds(other_batch, root) is None
    assert sr.full_vocab_step_seconds(other_model, root) is None
    before = (out / study.ESTIMATE_FILE).read_bytes()
    one_line_error(capsys, argv, "already holds estimate.json")
    assert (out / study.ESTIMATE_FILE).read_bytes() == before
    one_line_error(capsys, [a for a in argv if a != "--estimate"], "give it together with --estimate")


# -- hand-computed statistics ------------------------------------------------------------------------
T975_2 = 4.302652729911275  # scipy.stats.t.ppf(0.975, 2)


def test_interval_is_the_t_interval():
    ci = sr.interval([1.0, 2.0, 3.0])
    half = T975_2 * 1.0 / math.sqrt(3)
    assert ci.mean == 2.0 and ci.low == pytest.approx(2 - half) and ci.high == pytest.approx(2 + half)
    assert sr.interval_text(ci) == "2 [-0.484, 4.48] (3 seeds)"


@pytest.mark.parametrize(
    "values, reference, kind",
    [
        ([1.0, 2.0, 3.0], 10.0, "beats"),  # interval [-0.48, 4.48], all below 10
        ([1.0, 2.0, 3.0], 4.0, "no difference shown"),  # 4 is inside the interval
        ([5.0, 6.0, 7.0], 2.0, "worse"),  # interval [3.52, 8.48], all above 2
        ([1.0], 10.0, "too few seeds"),
        ([], 10.0, "missing"),
    ],
)
def test_beats_reference(values, reference, kind):
    v = sr.beats_reference(values, reference, "the training mean", "CausalQwen")
    assert v.kind == kind
    if kind == "beats":
        assert v.details["margin"] == 8.0
        assert v.sentence == (
            "CausalQwen MAE 2 [-0.484, 4.48] (3 seeds) against 10 for the training mean: it beats the trivial "
            "reference by 8, a margin outside the interval"
        )
    if kind in ("worse", "no difference shown"):
        assert "does not beat" in v.sentence


def test_compare_arms():
    assert sr.compare_arms([1, 2, 3], [10, 11, 12]).kind == "a better"  # lower MAE wins
    assert sr.compare_arms([1, 2, 3], [10, 11, 12], lower_is_better=False).kind == "b better"
    v = sr.compare_arms([1, 2, 3], [2, 3, 4])
    assert v.kind == "no difference shown" and "overlap" in v.sentence
    assert sr.compare_arms([1], [2]).kind == "too few seeds"


def test_coverage_verdict():
    assert sr.coverage_verdict([0.5, 0.55, 0.6], "A").kind == "too narrow"
    assert sr.coverage_verdict([0.99, 1.0, 0.995], "A").kind == "too wide"
    assert sr.coverage_verdict([0.9, 0.95, 1.0], "A").kind == "calibrated"


def _hand_study(locs_by_arm):
    """Two copy targets (10 after 10; 20 after 10): mean reference 15 -> MAE 5; copy-last 10, 10 -> MAE 5."""
    runs = {}
    for arm, per_seed in locs_by_arm.items():
        for seed, locs in enumerate(per_seed):
            numbers = {
                "set": ["copy", "copy"],
                "family": ["copy_near", "copy_far"],
                "role": ["copy", "copy"],
                "value": [10.0, 20.0],
                "mean": [15.0, 15.0],
                "copy_last": [10.0, 10.0],
                "loc": locs,
                "scale": [1.0, 1.0],
                "dist": ["cauchy", "cauchy"],
                "detected": [True, True],
            }
            runs[(arm, seed)] = {"numbers": numbers, "sets": {"copy": {"num_f1": 0.5 + 0.1 * seed}}}
    return sr.Study({"model": "hand"}, None, runs, {}, {})


def test_value_table_by_hand():
    s = _hand_study(
        {
            "CausalQwen": [[10.0, 20.0], [11.0, 20.0], [10.0, 21.0]],  # MAE 0, 0.5, 0.5
            "baseline": [[15.0, 15.0], [14.0, 16.0], [16.0, 14.0]],  # MAE 5, 5, 5
        }
    )
    refs = sr.reference_errors(sr.numbers_frame(s)).set_index("group")
    assert refs.loc["copy", "mean"] == 5.0 and refs.loc["copy", "copy_last"] == 5.0
    table = sr.value_table(s)
    assert table.loc["copy", "best trivial"] == "mean"  # a tie goes to the mean
    assert table.loc["copy", "CausalQwen verdict"] == "beats"  # 1/3 +- 0.72 < 5
    assert table.loc["copy", "baseline verdict"] == "no difference shown"  # exactly 5 every seed
    assert "CausalQwen beats the best trivial reference on 1 of 1" in sr.value_summary(s)
    assert sr.detection_table(s).loc["copy", "verdict"] == "no difference shown"  # the same F1 per seed
    assert (
        sr.detection_table(s).loc["copy", "CausalQwen F1"] == "0.6 [0.352, 0.848] (3 seeds)"
    )  # sd 0.1, half 4.303 x 0.1 / sqrt 3


# -- calibration against a known answer --------------------------------------------------------------
def test_pit_and_coverage_by_hand():
    assert sr.pit(1.0, 0.0, 1.0, "cauchy") == pytest.approx(0.75)
    assert sr.pit(0.0, 0.0, 1.0, "normal") == pytest.approx(0.5)
    assert sr.pit(2.0, 2.0, 0.0, "cauchy") == 0.5 and sr.pit(3.0, 2.0, 0.0, "normal") == 1.0
    # |u - 1/2| = 0, 0.25, 0.4, 0.49
    assert sr.coverage_curve([0.5, 0.75, 0.9, 0.99], (0.5, 0.9, 0.99)) == [0.5, 0.75, 1.0]
    # a broken prediction (NaN location or scale) is never counted as covered
    assert np.isnan(sr.pit(1.0, float("nan"), 1.0, "normal")) and np.isnan(
        sr.pit(1.0, 0.0, float("nan"), "cauchy")
    )
    assert sr.coverage_curve([0.5, float("nan")], (0.5,)) == [0.5]
    assert sr.calibration_error([0.5, 0.75], (0.5, 0.9)) == pytest.approx(0.075)


def test_the_oracle_is_calibrated():
    """The noisy template's readings are Normal around the stated weight with the stated sigma, so the
    oracle's central intervals cover their nominal share (4,000 readings: binomial SE <= 0.008)."""
    import pandas as pd

    from qwen_anatomy.causal.templates import make_examples, reference_predictions

    rows = [
        r for e in make_examples("noisy", 4000, 7) for r in reference_predictions(e, 50.0) if "oracle" in r
    ]
    curve = sr.coverage_curve(sr.oracle_pit(pd.DataFrame(rows)))
    assert max(abs(c - q) for c, q in zip(curve, sr.LEVELS, strict=True)) < 0.03
    assert sr.calibration_error(curve) < 0.015


def test_a_true_cauchy_law_is_calibrated_and_a_narrow_one_is_not():
    rng = np.random.default_rng(0)
    loc, scale = rng.normal(size=20000) * 10, rng.uniform(0.5, 3, size=20000)
    v = loc + scale * rng.standard_cauchy(20000)
    assert sr.calibration_error(sr.coverage_curve(sr.pit(v, loc, scale, "cauchy"))) < 0.01
    narrow = sr.coverage_curve(sr.pit(v, loc, scale / 10, "cauchy"))
    assert sr.coverage_verdict([narrow[-2]] * 3, "narrow").kind == "too narrow"


def test_project_by_hand():
    cfg = {"steps": 10, "seeds": [0, 1, 2], "n_train": 100, "n_eval": 10, "eval_sets": ["qa", "copy"]}
    measured = {
        "load_seconds": 5.0,
        "arms": {
            "CausalQwen": {
                "seconds_per_step": 2.0,
                "eval_seconds_per_text": 0.05,
                "cache_seconds_per_text": 0.1,
            },
            "baseline": {
                "seconds_per_step": 1.0,
                "eval_seconds_per_text": 0.01,
                "cache_seconds_per_text": 0.1,
            },
        },
    }
    p = study.project(cfg, measured)
    # cache (100 + 2 x 10) x 0.1 = 12; CausalQwen 3 x (10 x 2 + 20 x 0.05) = 63; baseline 3 x 10.2 = 30.6
    assert p["cache_seconds"] == 12.0 and p["arms"]["CausalQwen"]["seconds"] == 63.0
    assert p["arms"]["baseline"]["seconds"] == pytest.approx(30.6)
    assert p["total_seconds"] == pytest.approx(110.6)
    assert "1 session(s) of 3 h" in study.project_sentence(study.check_config(cfg), p)


def _study_with_f1(values):
    runs = {
        ("CausalQwen", i): {"sets": {"qa": {"num_f1": f}, "copy": {"num_f1": 1.0}}}
        for i, f in enumerate(values)
    }
    return sr.Study({"model": "m"}, None, runs, {}, {})


def test_saturated_detection_is_said_and_unsaturated_is_not():
    text = sr.saturation_clause(_study_with_f1([1.0, 0.995, 1.0]))
    assert "saturated" in text and "lowest 0.995" in text
    assert sr.saturation_clause(_study_with_f1([1.0, 0.98, 1.0])) == ""
    assert sr.saturation_clause(_study_with_f1([1.0, float("nan")])) == ""


def _study_with_logs(per_arm):
    """Logs of 11 rows (steps 0..1000); per arm a list of per-seed (early, late) values of "reg"
    in the last two fifths (steps 700-800 and 900-1000)."""
    logs = {}
    for arm, seeds in per_arm.items():
        for seed, (early, late) in enumerate(seeds):
            rows = [{"step": s, "reg": 9.0} for s in range(0, 700, 100)]
            rows += [{"step": s, "reg": early} for s in (700, 800)] + [
                {"step": s, "reg": late} for s in (900, 1000)
            ]
            logs[(arm, seed)] = rows
    return sr.Study({"model": "m"}, None, {k: {} for k in logs}, logs, {})


def test_settling_by_hand():
    """Windows are the last two fifths: steps (600, 800] and (800, 1000]; the change is late - early."""
    st = _study_with_logs({"CausalQwen": [(5.0, 4.5), (5.0, 4.6), (5.0, 4.4)], "baseline": [(4.0, 4.0)] * 3})
    table = sr.settling(st)
    assert table.loc["CausalQwen", "change"].mean == pytest.approx(-0.5)
    assert (
        table.loc["CausalQwen", "verdict"] == "still falling" and table.loc["baseline", "verdict"] == "flat"
    )
    assert (table.loc["CausalQwen", "from_step"], table.loc["CausalQwen", "to_step"]) == (600, 800)
    text = sr.curves_sentence(st)
    assert (
        "CausalQwen's median regression loss changed by -0.5" in text
        and "baseline's median" in text
        and ": flat" in text
    )
    fig = sr.curves_plot(st)
    assert len(fig.axes) == 2 and len(fig.axes[0].lines) == len(fig.axes[1].lines) == 6


def test_missed_roles_sentence_names_the_roles_and_quotes_the_saved_cost(monkeypatch):
    """Roles where neither arm's verdict is "beats" are named with their best reference; a saved
    top-layer estimate is quoted with its projected hours against the study's own recorded stages."""
    import pandas as pd

    table = pd.DataFrame(
        {
            "copy-last MAE": [8.606, 33.3],
            "mean MAE": [24.8, 24.5],
            "best trivial": ["copy_last", "mean"],
            "CausalQwen verdict": ["no difference shown", "beats"],
            "baseline verdict": ["worse", "worse"],
        },
        index=["copy", "sum"],
    )
    monkeypatch.setattr(sr, "value_table", lambda study: table)
    records = {
        ("CausalQwen", 0): {"stages": {"train": 3000.0, "evaluate": 600.0}},
        ("baseline", 0): {"stages": {"train": 3600.0}},
    }
    st = sr.Study({"model": "m", "train_layers": 0}, None, {k: {} for k in records}, {}, records)
    estimate = {
        "config": {"train_layers": 1, "seeds": [0, 1, 2], "steps": 3000},
        "measured": {"arms": {"CausalQwen": {"seconds_per_step": 2.71}, "baseline": {"seconds_per_step": 2.9}},
                     "projection": {"total_hours": 14.77}},
    }  # fmt: skip
    text = sr.missed_roles_sentence(st, estimate, groups=("copy", "sum"))
    assert text.startswith(
        "Neither arm beats the best trivial reference on 1 of 2 predictable roles: copy (copy-last MAE 8.61)."
    )
    assert "With the backbone frozen" in text
    assert (
        "CausalQwen 2.7 s per step; baseline 2.9 s per step" in text
        and "projected at 14.8 hours, against 2.0" in text
    )
    table["baseline verdict"] = ["beats", "beats"]
    assert sr.missed_roles_sentence(st, estimate, groups=("copy", "sum")) == ""
