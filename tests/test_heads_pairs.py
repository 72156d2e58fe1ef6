"""Chapter 40's book-scale pairs at CI scale: the detectable |ρ| at N heads, the synthetic pair and the
real pair end to end through their own commands with tiny budgets, resumability, refusals, and
`qwen-anatomy heads --theta0-from` (issue 15)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from clicheck import one_line_error
from qwen_anatomy.errors import UserInputError
from qwen_anatomy.heads import power, report
from qwen_anatomy.heads.analysis import Measurements
from qwen_anatomy.heads.pairs import load_pair_results, pair_status
from qwen_anatomy.paths import REPO_ROOT

TINY_LM = str(REPO_ROOT / "data" / "models" / "causal-tiny-lm")
TINY_SHAPE = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
              "num_key_value_heads": 2}  # fmt: skip


# -- power ------------------------------------------------------------------------------------------
def test_detectable_rho_matches_cohens_table_and_the_spearman_variance():
    # Cohen (1988), table 3.4.1: N = 85 detects ρ = 0.30 at α = 0.05 two-sided, power 0.8 (Pearson)
    assert power.detectable_rho(85, spearman=False) == pytest.approx(0.30, abs=0.003)
    # Spearman: σ² = 1.06/(N − 3); at N = 96, tanh(2.8016·sqrt(1.06/93)) = 0.2905
    assert power.detectable_rho(96) == pytest.approx(0.2905, abs=5e-4)
    assert power.detectable_rho(8) > 0.85 > power.detectable_rho(96) > power.detectable_rho(270)
    assert math.isnan(power.detectable_rho(3))
    assert power.significant_rho(8) == pytest.approx(0.7067, abs=1e-3)  # the chapter's old "0.71"
    with pytest.raises(UserInputError, match="alpha"):
        power.detectable_rho(96, alpha=0)


def test_detectable_rho_has_the_stated_power_under_the_permutation_test():
    """Monte Carlo with the permutation null's own critical value: power 0.8 at the detectable ρ,
    the level α at ρ = 0."""
    rho = power.detectable_rho(96)
    assert power.simulated_power(rho, 96, n_sim=3000, seed=1) == pytest.approx(0.80, abs=0.04)
    assert power.simulated_power(0.0, 96, n_sim=3000, seed=2) == pytest.approx(0.05, abs=0.015)


def test_power_record_and_its_sentence():
    rec = power.power_record(96, n_layers=8)
    assert rec["detectable_abs_rho"] == pytest.approx(0.2905, abs=5e-4)
    assert rec["detectable_abs_rho_within_layer"] > rec["detectable_abs_rho"]
    text = power.power_sentence(rec)
    assert "N = 96 heads" in text and "|ρ| ≥ 0.29" in text and "within layers" in text
    assert "no correlation" in power.power_sentence(power.power_record(3))


# -- the synthetic pair -----------------------------------------------------------------------------
def _synthetic_cfg(**kw):
    from qwen_anatomy.heads.synthetic import SyntheticPair

    base = dict(model=dict(TINY_SHAPE), seeds=(0, 1), theta0_steps=2, finetune_steps=2, theta0_train_samples=256,
                finetune_train_samples=256, batch_size=16, eval_examples=8, n_perm=20, n_boot=5)  # fmt: skip
    return SyntheticPair(**{**base, **kw})


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    from qwen_anatomy.heads.synthetic import run

    out = tmp_path_factory.mktemp("pairs") / "synthetic"
    said: list[str] = []
    summary = run(_synthetic_cfg(), out, say=said.append)
    return {"out": out, "summary": summary, "said": said}


def test_synthetic_pair_end_to_end(synthetic):
    out, summary = synthetic["out"], synthetic["summary"]
    assert [s.split(":")[0] for s in synthetic["said"]] == [
        "[run] train θ0", "[run] measure θ0", "[run] fine-tune seed 0", "[run] measure seed 0",
        "[run] fine-tune seed 1", "[run] measure seed 1", "[run] agreement",
    ]  # fmt: skip
    assert summary["n_heads"] == 8 and summary["power"]["detectable_abs_rho"] == pytest.approx(
        power.detectable_rho(8)
    )
    base = summary["theta0_on_finetune_task"]
    assert base["chance_loss"] > 0 and base["loss_over_chance"] == pytest.approx(
        base["loss"] / base["chance_loss"]
    )
    status = pair_status(out)
    assert status["complete"] and set(status["stages"].values()) == {"success"}
    res = load_pair_results(out)
    assert sorted(res["seeds"]) == [0, 1]
    # θ0 measured once: every seed's θ0 numbers are the same file's
    np.testing.assert_array_equal(res["seeds"][0]["m0"].dloss_head, res["seeds"][1]["m0"].dloss_head)
    # θ0's quantities are measured once, identical in every seed: no agreement to report for them
    assert "I_pre" not in res["agreement"] and "Urel" in res["agreement"]
    pairs = report.pair_table([res["seeds"][s]["stats"] for s in (0, 1)])
    text = report.pair_finding(res, pairs, "the tiny synthetic θ0")
    assert "N = 8 heads" in text and "the tiny synthetic θ0" in text and "Across 2 seeds" in text


def test_synthetic_pair_resumes_and_redoes_only_an_interrupted_stage(synthetic):
    from qwen_anatomy.heads.synthetic import run

    out = synthetic["out"]
    said: list[str] = []
    run(_synthetic_cfg(), out, say=said.append)
    assert all(s.startswith("[reuse]") for s in said) and len(said) == 7
    # an interrupted measurement (a record still "running" whose process is gone) and no agreement yet
    rec_path = out / "seed-1" / "heads" / "run_record.json"
    rec = json.loads(rec_path.read_text())
    rec.update(status="running", pid=2**22 + 12345)
    rec_path.write_text(json.dumps(rec))
    agree = next(out.glob("agreement-seeds-*"))
    agree.rename(agree.with_name("moved-away"))
    said.clear()
    run(_synthetic_cfg(), out, say=said.append)
    assert [s.split(":")[0] for s in said if s.startswith("[run]")] == [
        "[run] measure seed 1",
        "[run] agreement",
    ]
    assert list((out / "seed-1").glob("heads.failed-*"))  # the interrupted folder kept, set aside
    assert len(list((out / "records").glob("*.json"))) == 3  # one record per invocation


def test_synthetic_pair_refuses_a_changed_configuration(synthetic):
    from qwen_anatomy.heads.synthetic import run

    out = synthetic["out"]
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(UserInputError, match="finetune_steps: 2 -> 3"):
        run(_synthetic_cfg(finetune_steps=3), out)
    assert sorted(p.name for p in out.iterdir()) == before


def test_synthetic_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    from qwen_anatomy.heads.synthetic import main

    for argv, match in (
        (["--theta0-steps", "0"], "--theta0-steps 0"),
        (["--seeds", "1", "1"], "--seeds"),
        (["--ablation", "half"], "--ablation"),
        (["--subset-seed", "-1"], "--subset-seed"),
    ):
        assert main(["--out", str(tmp_path / "x"), *argv]) == 2
        err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert len(err) == 1 and match in err[0], err
    (tmp_path / "file").write_text("x")
    assert main(["--out", str(tmp_path / "file")]) == 2
    assert "is a file" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_theta0_from_reuses_exactly_and_refuses_other_settings(synthetic, tmp_path, capsys):
    from qwen_anatomy.cli import main

    out = synthetic["out"]
    plan = json.loads((out / "plan.json").read_text())
    data = json.loads((out / "theta0-heads" / "run_record.json").read_text())["parameters"]["data"]
    argv = ["heads", str(out / "theta0"), "--data", data, "--max-examples", "8", "--subset-seed",
            str(plan["subset_seed"]), "--bootstrap", "5", "--permutations", "20", "--no-figures"]  # fmt: skip
    assert main([*argv, "--finetuned", str(out / "seed-0" / "model"), "--out", str(tmp_path / "fresh")]) == 0
    fresh = Measurements.from_npz(tmp_path / "fresh" / "theta0.npz")
    reused = Measurements.from_npz(out / "seed-0" / "heads" / "theta0.npz")
    np.testing.assert_array_equal(fresh.dloss_head, reused.dloss_head)
    np.testing.assert_array_equal(fresh.grad, reused.grad)
    capsys.readouterr()
    bad = [*argv[:5], "4", *argv[6:]]  # --max-examples 4: another subset than the earlier run's
    one_line_error(capsys, [*bad, "--theta0-from", str(out / "theta0-heads"), "--out", str(tmp_path / "b")],
                   "--theta0-from")  # fmt: skip
    one_line_error(
        capsys, [*argv, "--theta0-from", str(tmp_path), "--out", str(tmp_path / "c")], "theta0.npz"
    )
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()


# -- the real pair ----------------------------------------------------------------------------------
def _real_cfg(**kw):
    from qwen_anatomy.heads.realpair import RealPair

    base = dict(model=TINY_LM, seeds=(0, 1), steps=2, eval_examples=6, max_tokens=16, n_perm=20, n_boot=5,
                train_chars=20_000, heldout_chars=5_000, threads=1, batch_size=4, learning_rate=1e-3)  # fmt: skip
    return RealPair(**{**base, **kw})


def test_real_pair_end_to_end_resumable_and_refusing_changes(tmp_path):
    from qwen_anatomy.heads.realpair import run

    out = tmp_path / "real"
    said: list[str] = []
    summary = run(_real_cfg(), out, say=said.append)
    assert len(said) == 7 and all(s.startswith("[run]") for s in said)
    assert summary["kind"] == "real" and set(summary["seeds"]) == {"0", "1"}
    ft = summary["seeds"]["0"]["finetune_evaluation"]
    assert ft["heldout_loss_after"] < ft["heldout_loss_before"]
    res = load_pair_results(out)
    assert res["plan"]["model"] == TINY_LM and sorted(res["seeds"]) == [0, 1]
    said.clear()
    run(_real_cfg(), out, say=said.append)
    assert all(s.startswith("[reuse]") for s in said)
    with pytest.raises(UserInputError, match="steps: 2 -> 5"):
        run(_real_cfg(steps=5), out)
    # a seed added later runs only its own stages and a new agreement folder
    said.clear()
    run(_real_cfg(seeds=(0, 1, 2)), out, say=said.append)
    assert [s.split(":")[0] for s in said if s.startswith("[run]")] == [
        "[run] fine-tune seed 2", "[run] measure seed 2", "[run] agreement"
    ]  # fmt: skip
    assert (out / "agreement-seeds-0-1").is_dir() and (out / "agreement-seeds-0-1-2").is_dir()


def test_real_pair_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    from qwen_anatomy.heads.realpair import main

    for argv, match in ((["--model", "/no/such/model"], "/no/such/model"), (["--steps", "0"], "--steps")):
        assert main(["--out", str(tmp_path / "x"), *argv]) == 2
        err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert len(err) == 1 and match in err[0], err
    assert not (tmp_path / "x").exists()


def test_pair_status_of_a_folder_never_run(tmp_path):
    status = pair_status(tmp_path / "nothing")
    assert not status["exists"] and not status["complete"]
    with pytest.raises(FileNotFoundError, match="no finished pair"):
        load_pair_results(tmp_path / "nothing")
    text = report.pair_not_run(status, "the synthetic pair", "python -m qwen_anatomy.heads.synthetic", 2.5)
    assert "has not been run" in text and "2.5 hours" in text and "qwen_anatomy.heads.synthetic" in text


def test_pair_section_shows_a_finished_pair_or_says_it_is_missing(synthetic, tmp_path):
    items, res = report.pair_section(
        synthetic["out"], "the synthetic pair", "CMD", 0.7, lambda r: "tiny θ0", figures=False
    )
    assert res is not None and len(items) == 4
    assert items[-1].startswith("**Finding.** On tiny θ0, ") and "nats per output token" in items[-1]
    items, _ = report.pair_section(synthetic["out"], "the synthetic pair", "CMD", 0.7, lambda r: "tiny θ0")
    assert len(items) == 6 and "scatter" in items[4] and hasattr(items[5], "savefig")
    items, res = report.pair_section(tmp_path / "none", "the synthetic pair", "CMD", 0.7, lambda r: "x")
    assert res is None and len(items) == 1 and "The synthetic pair has not been run yet" in items[0]
    assert "about 0.7 hours" in items[0] and "CMD" in items[0]
    res = load_pair_results(synthetic["out"])
    assert report.pair_model_name(res) == "the project-trained θ0 (2 layers x 4 query heads, 2 KV groups)"


def test_the_real_pair_is_named_after_the_model_it_ran_on():
    res = {"summary": {"kind": "real"}, "plan": {"model": "qwen2.5-coder-0.5b"}}
    name = report.pair_model_name(res)
    assert "SmolLM2" not in name and "Qwen2.5" in name


def test_theta0_skill_clause_thresholds():
    def clause(loss, chance):
        base = {"loss": loss, "chance_loss": chance, "loss_over_chance": loss / chance}
        return report.theta0_skill_clause({"theta0_on_finetune_task": base})

    assert "far below chance" in clause(1.08, 3.12)
    assert "not far below" in clause(2.5, 3.12)
    assert "cannot do" in clause(10.2, 2.96)
    assert report.theta0_skill_clause({}) == ""


def test_projected_cost_adds_up_and_the_projection_command(capsys):
    from qwen_anatomy.heads import realpair, synthetic

    cfg = synthetic.SyntheticPair()
    rows = synthetic.stage_costs(cfg)
    assert synthetic.projected_hours(cfg) == pytest.approx(
        sum(r["count"] * r["seconds"] for r in rows) / 3600
    )
    assert synthetic.projected_hours(synthetic.SyntheticPair(seeds=(0, 1, 2, 3))) > synthetic.projected_hours(
        cfg
    )
    # the real pair's measurement: every head and group, per document
    real = realpair.RealPair()
    theta = next(r for r in realpair.stage_costs(real) if r["stage"].startswith("measure θ0"))
    assert theta["seconds"] == pytest.approx(
        real.eval_examples * 360 * realpair.MEASURED["seconds_per_example_unit"]
        + realpair.MEASURED["statistics_seconds"]
    )
    assert realpair.main(["--projection"]) == 0 and "total" in capsys.readouterr().out


def test_a_single_seed_pair_completes_without_an_agreement_stage(tmp_path):
    from qwen_anatomy.heads.synthetic import run

    said: list[str] = []
    summary = run(_synthetic_cfg(seeds=(3,)), tmp_path / "one", say=said.append)
    assert len(said) == 4 and set(summary["seeds"]) == {"3"}
    res = load_pair_results(tmp_path / "one")
    assert sorted(res["seeds"]) == [3] and res["agreement"] == {}
    assert "(One seed only" in report.seeds_clause(res["agreement"], 1)


def test_the_estimates_run_through_the_real_code_at_tiny_scale():
    """--estimate of both commands: real training steps and a real measurement, timed."""
    from qwen_anatomy.heads import realpair, synthetic

    rows = synthetic.estimate(_synthetic_cfg(), cost_steps=7, ablation_examples=4)
    assert [r["count"] for r in rows] == [1, 1, 2, 2] and all(r["seconds"] > 0 for r in rows)
    rows = realpair.estimate(_real_cfg(), finetune_steps=2, examples=2)
    assert rows[0]["count"] == 2 and all(r["seconds"] > 0 for r in rows)


# -- the real Qwen2 section: a stratified subset, and proxy validity with bootstrap intervals ---------
@pytest.mark.parametrize("n, seed", [(48, 0), (48, 1), (30, 0), (7, 3), (336, 0)])
def test_stratified_heads_share_the_layers_evenly(n, seed):
    """Qwen2.5-0.5B's layout (24 layers x 14 heads): every layer gets ⌊n/24⌋ or one more, no head
    twice, reproducible from the seed."""
    from qwen_anatomy.heads.ablation import stratified_heads
    from qwen_anatomy.heads.core import HeadLayout

    lay = HeadLayout(num_layers=24, num_heads=14, num_kv_heads=2, head_dim=64)
    chosen = stratified_heads(lay, n, seed)
    assert len(chosen) == len(set(chosen)) == n and chosen == sorted(chosen)
    per_layer = np.bincount(np.asarray(chosen) // 14, minlength=24)
    assert set(per_layer.tolist()) <= {n // 24, n // 24 + 1}
    assert stratified_heads(lay, n, seed) == chosen


def test_stratified_heads_refuses_impossible_counts():
    from qwen_anatomy.heads.ablation import stratified_heads
    from qwen_anatomy.heads.core import HeadLayout

    lay = HeadLayout(num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8)
    for bad in (0, 9, 2.5):
        with pytest.raises(UserInputError, match="heads to ablate"):
            stratified_heads(lay, bad)


@pytest.mark.parametrize("module", ["synthetic", "realpair"])
@pytest.mark.parametrize("mode", ["--projection", "--estimate"])
def test_pair_commands_refuse_bad_input_before_projecting_or_estimating(module, mode, capsys):
    import importlib

    main = importlib.import_module(f"qwen_anatomy.heads.{module}").main
    steps = "--finetune-steps" if module == "synthetic" else "--steps"
    assert main([steps, "-3", mode]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{steps} -3: must be an integer >= 1" in err[0]
