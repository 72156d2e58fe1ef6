"""Suites, metrics, inference modes and generation on the small project backbone (chapter 50)."""

from __future__ import annotations

import json

import pytest
import torch

from qwen_anatomy.causal import experiments
from qwen_anatomy.causal.data import evaluation_sets, make_texts
from qwen_anatomy.errors import UserInputError
from tolerance import assert_close_scaled

torch.set_num_threads(1)
TINY = {"steps": 2, "batch_size": 4, "n_train": 16, "n_eval": 4, "log_every": 1, "eval_batch": 4}


def test_data_is_seeded_and_in_range():
    assert make_texts("train", 5, 3) == make_texts("train", 5, 3)
    assert make_texts("train", 5, 3) != make_texts("train", 5, 4)
    sets = evaluation_sets(40)
    from qwen_anatomy.causal.numtok import find_numbers

    def values(name):
        return [float(m.group()) for t in sets[name] for m in find_numbers(t)]

    assert all(0 <= v <= 1 for v in values("boundary"))
    assert all(0 < v < 100 for v in values("basic"))
    extreme = values("extreme")
    assert min(extreme) < 1e-2 and max(extreme) > 1e3 and all(1e-5 <= v <= 1e5 for v in extreme)
    assert all("Question:" in t for t in sets["qa"])


def test_ablation_suite_runs_every_corner(tmp_path):
    out = experiments.run_and_save(
        {"suite": "ablation", **TINY, "eval_sets": ["basic"]}, root=tmp_path, log=lambda s: None
    )
    record = json.loads((out / "run_record.json").read_text())
    results = json.loads((out / "results.json").read_text())
    assert record["status"] == "success"
    names = [v["name"] for v in results["variants"]]
    assert names == ["ovr+cauchy", "ovr+normal", "softmax+cauchy", "softmax+normal"]
    losses = {v["name"]: v["log"][0]["loss"] for v in results["variants"]}
    assert len({round(x, 4) for x in losses.values()}) == 4  # four different models, not one
    # softmax heads normalise: their median sum of probabilities is 1 exactly
    for v in results["variants"]:
        if v["name"].startswith("softmax"):
            assert v["log"][0]["median_sum_p"] == pytest.approx(1.0, abs=1e-5)
        else:
            assert v["log"][0]["median_sum_p"] > 1.5
    found, path = experiments.latest_results("ablation", root=tmp_path)
    assert path == out and found["suite"] == "ablation"
    table = experiments.metrics_table(found)
    assert len(table) == 4 and set(table.columns) >= {"num_f1", "mae", "coverage95"}


def test_comprehensive_suite_has_baseline_and_four_sets(tmp_path):
    results = experiments.run({"suite": "comprehensive", **TINY}, log=lambda s: None)
    kinds = [v["kind"] for v in results["variants"]]
    assert kinds == ["causal", "baseline"]
    for v in results["variants"]:
        assert set(v["metrics"]) == {"basic", "qa", "extreme", "boundary"}
        for m in v["metrics"].values():
            assert 0 <= m["num_f1"] <= 1 and 0 <= m["ece"] <= 1


@pytest.mark.parametrize(
    "bad, words",
    [
        ({"suite": "basic", "alphas": [1.2]}, "alpha=1.2"),
        ({"suite": "basic", "thresholds": [float("inf")]}, "threshold=inf"),
        ({"suite": "basic", "steps": 0}, "steps=0"),
        ({"suite": "basic", "eval_sets": ["hard"]}, "evaluation set"),
        ({"suite": "basic", "colour": 1}, "unknown suite setting"),
        ({"suite": "basic", "lr_pretrained": 0}, "lr_pretrained=0"),
        ({"suite": "basic", "lambdas": []}, "lambdas"),
        ({"suite": "basic", "causal": {"gamma": 1}}, "known CausalConfig fields"),
    ],
)
def test_bad_suite_config(bad, words):
    with pytest.raises(UserInputError, match=words):
        experiments.check_config(bad)


def test_suite_never_overwrites(tmp_path):
    (tmp_path / "basic").mkdir()
    results_dir = experiments.run_and_save(
        {"suite": "basic", **TINY, "steps": 1}, root=tmp_path, log=lambda s: None
    )
    from qwen_anatomy.iochecks import check_output_dir

    with pytest.raises(UserInputError, match="already exists"):
        check_output_dir(results_dir)


def test_inference_modes_and_generation():
    from qwen_anatomy.causal.model import CausalQwen
    from qwen_anatomy.causal.numtok import NumberTokenizer
    from qwen_anatomy.causal.train import generate, predict
    from qwen_anatomy.loading import load_model

    base, tok = load_model("causal-tiny-lm")
    nt = NumberTokenizer(tok)
    model = CausalQwen.from_base(base, nt.num_token_id).eval()
    batch = nt.batch(["The price of the apple is 12 dollars.", "value: 3"])
    std_tok, std_val, _ = predict(model, batch, "standard")
    with torch.no_grad():
        out = model(batch["input_ids"], batch["numerical_values"], batch["attention_mask"])
    assert torch.equal(std_tok, out.probs.argmax(-1)) and torch.equal(std_val, out.loc_Y)
    comp_tok, _, _ = predict(model, batch, "compatible")
    with torch.no_grad():
        base_tok = base(batch["input_ids"][:, :5]).logits.argmax(-1)
    assert torch.equal(comp_tok[0, :5], base_tok[0])  # compatible = base model before the first number
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    a, av, _ = predict(model, batch, "causal", generator=g1)
    b, bv, _ = predict(model, batch, "causal", generator=g2)
    assert torch.equal(a, b) and torch.equal(av, bv)  # seeded
    eps = torch.full((model.causal_dim,), 0.5)  # eps = 1/2 draws u = loc_U exactly
    _, shared_val, _ = predict(model, batch, "shared", eps=eps)
    assert_close_scaled(shared_val, std_val)  # fp32, shared vs separate forward: summation order
    gen = generate(model, nt, "value:", max_new_tokens=4, mode="standard")
    assert len(gen["token_ids"]) <= 4
    assert all(v == 0.0 for i, v in zip(gen["token_ids"], gen["values"], strict=True) if i != nt.num_token_id)
    with pytest.raises(UserInputError, match="mode='dream'"):
        predict(model, batch, "dream")


def test_plots_label_every_axis():
    import matplotlib

    matplotlib.use("Agg")
    from qwen_anatomy.causal import plots

    results = experiments.run({"suite": "basic", **TINY}, log=lambda s: None)
    fig = plots.metric_bars(results, "coverage95", baseline=results)
    curves = plots.training_curves({v["name"]: v["log"] for v in results["variants"]})
    for f in (fig, curves):
        for ax in f.axes:
            assert ax.get_xlabel() and ax.get_ylabel()
    assert len(fig.axes[0].patches) == 2  # one bar per variant on the one set


def test_pretrain_writes_a_loadable_backbone_with_reserved_num(tmp_path):
    from qwen_anatomy.causal.data import pretrain_project_lm
    from qwen_anatomy.causal.numtok import NumberTokenizer
    from qwen_anatomy.loading import load_model

    out = pretrain_project_lm(tmp_path / "lm", steps=2, n_texts=64, log=lambda s: None)
    model, tok = load_model(out)
    nt = NumberTokenizer(tok)
    assert not nt.added_num_row and nt.num_token_id < model.config.vocab_size
    assert json.loads((out / "provenance.json").read_text())["steps"] == 2
    with pytest.raises(FileExistsError):
        pretrain_project_lm(tmp_path / "lm", steps=1, n_texts=64, log=lambda s: None)


def test_winners_are_computed_from_the_numbers():
    def variant(kind, f1, mae, cov):
        return {
            "kind": kind,
            "name": kind,
            "metrics": {"basic": {"num_f1": f1, "mae": mae, "coverage95": cov}},
        }

    results = {
        "suite": "basic",
        "variants": [variant("causal", 0.9, 10.0, 0.97), variant("baseline", 0.8, 12.0, 0.90)],
    }
    rows = {r["metric"]: r["winner"] for r in experiments.winners(results)}
    assert rows == {"num_f1": "CausalQwen", "mae": "CausalQwen", "coverage95": "CausalQwen"}
    results["variants"][0]["metrics"]["basic"].update(num_f1=0.5, mae=float("nan"), coverage95=0.5)
    rows = {r["metric"]: r["winner"] for r in experiments.winners(results)}
    assert rows == {"num_f1": "baseline", "mae": "undefined", "coverage95": "baseline"}
    with pytest.raises(UserInputError, match="no CausalQwen/baseline pair"):
        experiments.winners({"suite": "ablation", "variants": [variant("causal", 1, 1, 1)]})


def test_identical_variants_train_once():
    # integers, as a JSON grid from the command line gives them, against the float defaults
    cfg = {"suite": "comparison", **TINY, "thresholds": [10], "lambdas": [1], "alphas": [1, 0.5]}
    results = experiments.run(cfg, log=lambda s: None)
    by_name = {v["name"]: v for v in results["variants"]}
    # the default threshold, causal_dim = H, lambda = 1 and alpha = 1 are one and the same model
    for name in ("causal_dim=64", "lambda=1", "alpha=1"):
        assert by_name[name]["same_as"] == "threshold=10"
        assert by_name[name]["metrics"] == by_name["threshold=10"]["metrics"]
    for name in ("threshold=10", "causal_dim=32", "alpha=0.5"):
        assert "same_as" not in by_name[name]
    assert by_name["alpha=0.5"]["config"]["alpha"] == 0.5


def test_suite_seed_sets_data_order_and_every_head_initialisation(monkeypatch):
    initial = []
    build = experiments.build

    def recording_build(kind, base, num_token_id, conf):
        model = build(kind, base, num_token_id, conf)
        initial.append({k: v.detach().clone() for k, v in model.state_dict().items() if "backbone" not in k})
        return model

    monkeypatch.setattr(experiments, "build", recording_build)
    runs = [
        experiments.run({"suite": "basic", **TINY, "steps": 1, "seed": seed}, log=lambda s: None)
        for seed in (1, 2, 1)
    ]
    (ca, ba), (cb, bb), (ca2, ba2) = initial[0:2], initial[2:4], initial[4:6]  # causal, baseline per run
    for a, b in ((ca, cb), (ba, bb)):
        assert not torch.equal(a["num_direction"], b["num_direction"])
        assert not torch.equal(a["reg_head.weight"], b["reg_head.weight"])
    for a, again in ((ca, ca2), (ba, ba2)):
        assert a.keys() == again.keys() and all(torch.equal(a[k], again[k]) for k in a)
    first = [[v["log"][0]["loss"] for v in r["variants"]] for r in runs]
    assert first[0] == first[2] and first[0][0] != first[1][0] and first[0][1] != first[1][1]
    assert [v["config"]["seed"] for v in runs[1]["variants"]] == [2, 2]  # recorded as used


def test_suite_refuses_a_second_seed_and_thresholds_it_would_not_read():
    with pytest.raises(UserInputError, match="drop 'seed' from causal"):
        experiments.check_config({"suite": "basic", "causal": {"seed": 3}})
    with pytest.raises(UserInputError, match="comparison suite varies the scalar threshold"):
        experiments.check_config({"suite": "comparison", "causal": {"threshold_mode": "per_class"}})


def test_suite_measures_per_class_thresholds_before_step_0():
    cfg = {
        "suite": "basic",
        **TINY,
        "steps": 1,
        "eval_sets": ["basic"],
        "causal": {"threshold_mode": "per_class"},
    }
    results = experiments.run(cfg, log=lambda s: None)
    causal = next(v for v in results["variants"] if v["kind"] == "causal")
    assert causal["config"]["threshold_mode"] == "per_class"
    assert 0.0 <= causal["step0_ovr_agrees_with_base"] <= 1.0  # measured before this step-0 check
    assert causal["log"][0]["median_sum_p"] < 5.0  # measured C_k: sums near 1, not ~V/2 as with C = 10
