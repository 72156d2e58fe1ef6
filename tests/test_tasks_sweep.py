"""The length sweep of chapter 30 at CI scale, through the book's code path (qwen-anatomy tasks sweep):
layouts, the pair and counterpart checks, max positions, every generation kept, figures, costs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import yaml

from clicheck import one_line_error
from qwen_anatomy.cli import main
from qwen_anatomy.errors import UserInputError
from qwen_anatomy.tasks import cost, experiment, report, verdicts
from qwen_anatomy.tasks.evaluate import GENERATIONS_FILE, load_generations, typical_failures
from toc import ROOT

torch.set_num_threads(1)

RELU = str(ROOT / "configs" / "relu.yaml")
RELU_INV = str(ROOT / "configs" / "relu_inverse.yaml")
BART = str(ROOT / "configs" / "bart_relu.yaml")
BART_INV = str(ROOT / "configs" / "bart_relu_inverse.yaml")
TINY = [
    "task.train_samples=256",
    "task.test_samples=24",
    "model.hidden_size=32",
    "model.intermediate_size=64",
    "model.d_model=32",
    "model.encoder_ffn_dim=64",
    "model.decoder_ffn_dim=64",
    "training.batch_size=32",
    "training.max_steps=4",
    "training.eval_every=2",
    "training.eval_subset=12",
    "training.logging_steps=2",
    "evaluation.show=2",
]


def sets(extra=()):
    return [w for s in [*TINY, *extra] for w in ("--set", s)]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """ReLU forward and inverse at n = 4 and 6, seeds 0 and 1, by `tasks sweep --n` (8 tiny runs)."""
    root = tmp_path_factory.mktemp("sweep")
    argv = ["tasks", "sweep", "--configs", RELU, RELU_INV, "--n", "4", "6", "--seeds", "0", "1"]
    argv += sets([f"task.data_root={root / 'data'}"]) + ["--out-root", str(root / "out")]
    assert main(argv) == 0
    return root, argv


def test_the_sweep_writes_one_folder_per_config_length_and_seed(sweep, capsys):
    root, argv = sweep
    out = root / "out"
    folders = sorted(p.relative_to(out).as_posix() for p in out.glob("*/n*/seed*"))
    assert folders == [f"{c}/n{n}/seed{s}" for c in ("relu", "relu_inverse") for n in (4, 6) for s in (0, 1)]
    for folder in out.glob("*/n*/seed*"):
        assert not (folder / "model.safetensors").exists()  # weights dropped
        for name in ("evaluation.json", "curves.json", "run_record.json", GENERATIONS_FILE):
            assert (folder / name).is_file(), folder / name
    ev = json.loads((out / "relu_inverse" / "n6" / "seed1" / "evaluation.json").read_text())
    assert (ev["n"], ev["order"], ev["seed"], ev["steps"]) == (6, "inverse", 1, 4)
    assert len(ev["samples"]) == 2  # the samples of evaluation.json stay, for compatibility
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["runs"]) == len(summary["all_runs"]) == 8
    # resumable: the same command trains nothing and leaves the folders as they are
    before = {p: p.stat().st_mtime_ns for p in out.rglob("evaluation.json")}
    capsys.readouterr()
    assert main(argv) == 0
    assert "n=6   seed 1: exact match" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in out.rglob("evaluation.json")} == before


def test_results_and_curves_read_the_length_layout(sweep):
    root, _ = sweep
    results, curves = experiment.load_committed(root / "out")
    assert len(results) == len(curves) == 8
    assert set(results["layout"]) == {"by n"} and set(results["model_type"]) == {"qwen2"}
    assert sorted(set(results["n"])) == [4, 6]
    assert set(curves) == {(c, n, s) for c in ("relu", "relu_inverse") for n in (4, 6) for s in (0, 1)}
    assert [r["step"] for r in curves[("relu", 4, 0)]["exact_match"]] == [2, 4]
    table = experiment.seed_table(results)
    assert len(table) == 4 and set(table["seeds"]) == {2}
    # the chapter's verdicts and figures run on these results
    vt = verdicts.verdict_table(results, curves)
    assert len(vt) == 4 and all(vt["curve"].str.contains("fewer than 3 times"))  # 2 checks per run
    assert verdicts.length_sentences(results, curves).startswith("**ReLU**")
    same = report.equal_step_comparison(curves)
    assert len(same) == 4 and list(same.columns) == ["task", "n", "seed", "step", "forward", "inverse"]


def test_the_length_figures(sweep):
    from qwen_anatomy.tasks.plots import plot_length_sweep, plot_per_position_by_n

    root, _ = sweep
    results = experiment.load_results(root / "out")
    fig = plot_length_sweep(results)
    ax = fig.axes[0]
    assert ax.get_xlabel() == "sequence length n" and ax.get_title() == "ReLU"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["forward", "inverse"]
    fig = plot_per_position_by_n(results)
    assert len(fig.axes) == 2 and fig.axes[1].get_title() == "ReLU, inverse"
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels == ["n=4 (2 seeds)", "n=6 (2 seeds)"]
    assert len(fig.axes[0].lines[1].get_xdata()) == 6  # one point per output position


def test_every_generation_is_kept_and_failures_are_picked(sweep):
    root, _ = sweep
    results = experiment.load_results(root / "out")
    run = report.pick_failure_run(results, "relu", "inverse")
    assert (run["n"], run["seed"]) == (6, 0)  # the longest length, then the lowest seed
    rows = load_generations(run["folder"])
    ev = json.loads((root / "out" / "relu_inverse" / "n6" / "seed0" / "evaluation.json").read_text())
    assert len(rows) == ev["num_examples"] == 24
    assert all(len(r["correct"]) == 6 and len(r["prediction"]) == 7 for r in rows)
    assert sum(r["exact"] for r in rows) / len(rows) == ev["exact_match"]
    per_position = [sum(r["correct"][j] for r in rows) / len(rows) for j in range(6)]
    assert per_position == pytest.approx(ev["per_position_accuracy"], abs=1e-6)
    from qwen_anatomy.tasks.generators import relu_forward

    assert all(r["target"] == relu_forward(r["input"])[::-1] for r in rows)  # as written: inverse order
    summary = typical_failures(rows, k=2)
    assert summary["failures"] == len(rows) - sum(r["exact"] for r in rows) > 0  # 4 steps: mostly wrong
    assert report.failure_sentence(summary, "inverse", "ReLU n=6").startswith("Of the 24 test generations")
    assert len(report.failure_table(summary["examples"])) == len(summary["examples"]) == 2
    # the same rows give the same bytes (the gzip header carries no time)
    from qwen_anatomy.tasks.evaluate import write_generations

    a, b = root / "a.jsonl.gz", root / "b.jsonl.gz"
    write_generations(a, rows)
    write_generations(b, rows)
    assert a.read_bytes() == b.read_bytes()


def test_old_flat_runs_are_superseded_by_the_length_layout(sweep, tmp_path):
    import shutil

    root, _ = sweep
    out = tmp_path / "out"
    shutil.copytree(
        root / "out" / "relu" / "n4" / "seed0", out / "relu" / "seed0"
    )  # the first build's layout
    shutil.copytree(root / "out" / "relu_inverse" / "n4" / "seed0", out / "relu_inverse" / "seed0")
    flat = experiment.load_results(out)
    assert set(flat["layout"]) == {"flat"} and len(flat) == 2
    assert set(experiment.load_curves(out)) == {("relu", 4, 0), ("relu_inverse", 4, 0)}
    shutil.copytree(root / "out" / "relu" / "n6" / "seed1", out / "relu" / "n6" / "seed1")
    mixed = experiment.load_results(out)
    assert sorted(zip(mixed["config"], mixed["layout"], strict=True)) == [
        ("relu", "by n"),
        ("relu_inverse", "flat"),
    ]
    assert experiment.superseded_runs(out) == [out / "relu" / "seed0"]


def test_forward_and_inverse_must_share_model_and_budget(tmp_path):
    inverse = tmp_path / "relu_inverse.yaml"
    inverse.write_text(
        (ROOT / "configs" / "relu_inverse.yaml").read_text().replace("max_steps: 1000", "max_steps: 999")
    )
    config = {
        "configs": [RELU, str(inverse)],
        "lengths": [4],
        "seeds": [0],
        "out_root": str(tmp_path / "out"),
    }
    with pytest.raises(
        UserInputError, match=r"relu and relu_inverse \(planned\) at n=4 differ in training.max_steps"
    ):
        experiment.plan(config)
    assert not (tmp_path / "out").exists()  # refused before anything was written
    # the same configs with the budget set for both by the sweep agree
    entries = experiment.plan({**config, "overrides": ["training.max_steps=5"]})
    assert {e["run_config"]["training"]["max_steps"] for e in entries} == {5}


def test_a_pair_is_checked_against_the_partner_run_on_disk(tmp_path):
    from qwen_anatomy.tasks.train import load_config

    recorded = load_config(RELU, ["task.n=4", "training.max_steps=3"])
    folder = tmp_path / "out" / "relu" / "n4" / "seed0"
    folder.mkdir(parents=True)
    (folder / "run_record.json").write_text(
        json.dumps({"status": "success", "parameters": {"config": recorded}})
    )
    (folder / "evaluation.json").write_text(json.dumps({"exact_match": 0.5}))
    config = {"configs": [RELU_INV], "lengths": [4], "seeds": [1], "out_root": str(tmp_path / "out")}
    with pytest.raises(
        UserInputError, match=r"relu_inverse and relu \(on disk in .*n4/seed0\) at n=4 differ"
    ):
        experiment.plan(config)
    assert len(experiment.plan({**config, "overrides": ["training.max_steps=3"]})) == 1


def test_bart_budget_must_match_its_qwen2_counterpart(tmp_path):
    other = tmp_path / "bart_relu.yaml"
    other.write_text(
        (ROOT / "configs" / "bart_relu.yaml").read_text().replace("max_steps: 1000", "max_steps: 999")
    )
    config = {"configs": [RELU, str(other)], "lengths": [4], "seeds": [0], "out_root": str(tmp_path / "out")}
    with pytest.raises(
        UserInputError, match="bart_relu .BART. and relu .Qwen2. at n=4 differ in training.max_steps"
    ):
        experiment.plan(config)
    # bart_relu.yaml carries relu.yaml's budget: the pair and the counterparts agree
    same = experiment.plan({**config, "configs": [RELU, RELU_INV, BART, BART_INV]})
    assert len(same) == 4


def test_sequences_must_fit_the_positions(tmp_path, capsys):
    argv = [
        "tasks",
        "sweep",
        "--configs",
        RELU,
        RELU_INV,
        "--n",
        "4",
        "10",
        "--set",
        "model.max_position_embeddings=20",
    ]
    one_line_error(
        capsys,
        [*argv, "--out-root", str(tmp_path / "out")],
        "task.n 10 gives sequences of 23 tokens, more than model.max_position_embeddings 20",
    )
    assert not (tmp_path / "out").exists()
    # BART: the longer of <bos> x <eos> and <bos> y <eos> (n + 2)
    from qwen_anatomy.tasks.train import load_config

    with pytest.raises(UserInputError, match="12 tokens, more than model.max_position_embeddings 11"):
        load_config(BART, ["task.n=10", "model.max_position_embeddings=11"])
    assert load_config(BART, ["task.n=10", "model.max_position_embeddings=12"])["task"]["n"] == 10


def test_sweep_flags_refuse_bad_combinations(tmp_path, capsys):
    one_line_error(capsys, ["tasks", "sweep", "--n", "4"], "give --configs")
    plan = tmp_path / "p.yaml"
    plan.write_text(yaml.safe_dump({"groups": [{"configs": [RELU], "n": [4]}]}))
    one_line_error(capsys, ["tasks", "sweep", "--plan", str(plan), "--configs", RELU], "leave out --configs")
    one_line_error(capsys, ["tasks", "sweep", "--configs", RELU, "--group", "1"], "give --plan too")
    for text, words in [
        ({"groups": []}, "non-empty list 'groups'"),
        ({"groups": [{"configs": [RELU], "lengths": [4]}]}, "unknown key(s) ['lengths']"),
        ({"groups": [{"configs": [RELU], "n": [0]}]}, "'n' must be a list of positive integers"),
        ({"groups": [{"configs": [RELU]}], "seeds": [-1]}, "'seeds' must be a list"),
        ({"groups": [{"configs": [RELU]}], "budget": 3}, "unknown key(s) ['budget']"),
    ]:
        plan.write_text(yaml.safe_dump(text))
        one_line_error(capsys, ["tasks", "sweep", "--plan", str(plan)], words)
    plan.write_text(
        yaml.safe_dump(
            {
                "groups": [
                    {"configs": [RELU], "n": [4], "set": ["training.max_steps=3"]},
                    {"configs": [RELU], "n": [4]},
                ]
            }
        )
    )
    one_line_error(
        capsys, ["tasks", "sweep", "--plan", str(plan), "--out-root", str(tmp_path / "o")], "planned twice"
    )


def test_a_plan_with_bart_beside_qwen2_runs_and_is_compared(tmp_path, capsys):
    """A plan file (the book's mechanism) with the ReLU pair and the BART pair at one length."""
    plan = tmp_path / "plan.yaml"
    plan.write_text(
        yaml.safe_dump(
            {
                "out_root": str(tmp_path / "out"),
                "seeds": [0],
                "groups": [
                    {"configs": [RELU, RELU_INV], "n": [4], "set": ["training.max_steps=4"]},
                    {"configs": [BART, BART_INV], "n": [4], "set": ["training.max_steps=4"]},
                ],
            }
        )
    )
    base = ["tasks", "sweep", "--plan", str(plan), *sets([f"task.data_root={tmp_path / 'data'}"])]
    assert main([*base, "--show-plan"]) == 0
    shown = capsys.readouterr().out
    assert "4 of 4 runs to train" in shown and "bart_relu_inverse/n4/seed0" in shown
    assert main(base) == 0
    every = experiment.load_results(tmp_path / "out")
    assert sorted(set(every["model_type"])) == ["bart", "qwen2"] and len(every) == 4
    results, _ = experiment.load_committed(tmp_path / "out")  # the book's model only, by default
    assert set(results["model_type"]) == {"qwen2"} and len(results) == 2
    table = report.model_comparison(every, "relu")
    assert list(table["n"]) == [4, 4] and list(table["comparison"]) == ["too few seeds"] * 2
    assert table["BART"].str.endswith("(1 seed)").all()
    text = report.architecture_sentence(every, "relu")
    assert text.startswith("* $n=4$: Qwen2: forward") and "cannot be compared yet" in text
    # the coverage sentence names what the plan still misses
    expected = experiment.expected_runs({**experiment.read_plan(plan), "seeds": [0, 1]})
    assert len(expected) == 8
    sentence = report.coverage_sentence(every, expected)
    assert sentence.startswith("Of the 8 runs the sweep plan names, 4 have finished results here. Missing:")
    assert "`bart_relu` n=4 (seed 1)" in sentence


def test_the_book_plan_validates_and_names_the_issue_runs(tmp_path):
    """configs/sweeps/length.yaml: every config, length and budget checked (nothing trained)."""
    config = experiment.read_plan(ROOT / experiment.PLAN_FILE)
    entries = experiment.plan({**config, "out_root": str(tmp_path / "out")})
    cells = {(e["config"], e["run_config"]["task"]["n"]) for e in entries}
    for task in ("relu", "square"):
        for n in (10, 20, 30):
            assert {(task, n), (f"{task}_inverse", n)} <= cells
    assert {("index", 13), ("index_inverse", 13), ("index", 31), ("index_inverse", 31)} <= cells
    assert {("bart_relu", 10), ("bart_relu_inverse", 10)} <= cells
    assert any(c == "bart_relu" and n > 10 for c, n in cells)
    assert len({e["seed"] for e in entries}) >= 3
    index31 = next(e for e in entries if e["config"] == "index" and e["run_config"]["task"]["n"] == 31)
    assert index31["run_config"]["task"]["m"] == 2
    assert len(experiment.expected_runs(config)) == len(entries)
    assert experiment.SWEEP_COMMAND.endswith(experiment.PLAN_FILE)
    # --group: one process per group set; the whole plan is still checked
    last = len(config["groups"])
    chosen = [
        e
        for e in experiment.plan({**config, "out_root": str(tmp_path / "out"), "only_groups": [last]})
        if e["selected"]
    ]
    assert {(e["config"], e["run_config"]["task"]["n"]) for e in chosen} == {
        ("bart_relu", 30),
        ("bart_relu_inverse", 30),
    }
    with pytest.raises(UserInputError, match=f"the plan has groups 1 to {last}"):
        experiment.plan({**config, "out_root": str(tmp_path / "out"), "only_groups": [last + 1]})
    # --n with --plan: a part of a group (two processes on one group, one length each)
    part = {**config, "out_root": str(tmp_path / "out"), "only_groups": [1], "only_lengths": [20]}
    chosen = [e for e in experiment.plan(part) if e["selected"]]
    assert {(e["config"], e["run_config"]["task"]["n"]) for e in chosen} == {
        ("relu", 20),
        ("relu_inverse", 20),
    }
    assert len(chosen) == 2 * len(config["seeds"])
    with pytest.raises(
        UserInputError, match=r"--n \[13\]: the chosen groups of the plan have lengths \[10, 20, 30\]"
    ):
        experiment.plan({**part, "only_lengths": [13]})


def test_a_plan_part_runs_in_pairs_beside_a_run_in_progress(tmp_path, capsys, monkeypatch):
    """--plan with --n trains only those lengths, forward and inverse of one seed back to back (a sweep
    cut short leaves pairs), and a run in progress at another length does not stop it."""
    plan = tmp_path / "p.yaml"
    plan.write_text(yaml.safe_dump({"groups": [{"configs": [RELU, RELU_INV], "n": [4, 5], "set": TINY}]}))
    out = tmp_path / "out"
    busy = experiment.run_folder(out, "relu", 0, 5)
    busy.mkdir(parents=True)
    (busy / "run_record.json").write_text(json.dumps({"status": "running", "pid": 1}))
    order = []

    def fake_train(cfg, folder, **kwargs):  # records the order; writes what run() reads back
        order.append((Path(folder).parts[-3], cfg["task"]["n"], cfg["training"]["seed"]))
        Path(folder).mkdir(parents=True)
        (Path(folder) / "evaluation.json").write_text("{}")

    monkeypatch.setattr("qwen_anatomy.tasks.train.train", fake_train)
    config = {**experiment.read_plan(plan), "seeds": [0, 1], "out_root": str(out), "only_lengths": [4]}
    experiment.run(config, progress=False)
    assert order == [("relu", 4, 0), ("relu_inverse", 4, 0), ("relu", 4, 1), ("relu_inverse", 4, 1)]
    with pytest.raises(UserInputError, match="still in progress"):
        experiment.plan({**config, "only_lengths": [5]})


def test_a_run_taken_by_another_process_after_planning_is_not_trained_twice(tmp_path, capsys, monkeypatch):
    """Two processes on one plan part (e.g. one given --seeds 2): a run another process started or
    finished after this one planned is left to it or reused, never moved aside and retrained."""
    plan = tmp_path / "p.yaml"
    plan.write_text(yaml.safe_dump({"groups": [{"configs": [RELU, RELU_INV], "n": [4], "set": TINY}]}))
    out = tmp_path / "out"
    config = {**experiment.read_plan(plan), "seeds": [0, 1], "out_root": str(out)}
    entries = {(e["config"], e["seed"]): e for e in experiment.plan(config)}
    trained = []

    def fake_train(cfg, folder, **kwargs):
        folder = Path(folder)
        key = (folder.parts[-3], cfg["training"]["seed"])
        trained.append(key)
        if key == ("relu", 0):  # meanwhile, another process starts seed 1 forward and finishes seed 1 inverse
            busy = experiment.run_folder(out, "relu", 1, 4)
            busy.mkdir(parents=True)
            (busy / "run_record.json").write_text(json.dumps({"status": "running", "pid": os.getpid()}))
            done = experiment.run_folder(out, "relu_inverse", 1, 4)
            done.mkdir(parents=True)
            record = {
                "status": "success",
                "pid": 1,
                "parameters": {"config": entries[("relu_inverse", 1)]["run_config"]},
            }
            (done / "run_record.json").write_text(json.dumps(record))
            (done / "evaluation.json").write_text("{}")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "evaluation.json").write_text("{}")

    monkeypatch.setattr("qwen_anatomy.tasks.train.train", fake_train)
    experiment.run(config, progress=False)
    assert trained == [("relu", 0), ("relu_inverse", 0)]
    said = capsys.readouterr().out
    assert "being trained by another process" in said and "finished meanwhile by another process" in said
    assert not list(out.glob("*/n4/seed1.*"))  # nothing moved aside


def test_cost_projection_arithmetic_and_interpolation(tmp_path):
    config = {
        "configs": [RELU, RELU_INV],
        "lengths": [10, 20, 30],
        "seeds": [0],
        "out_root": str(tmp_path / "o"),
    }
    entries = experiment.plan({**config, "overrides": ["training.max_steps=1000", "training.eval_every=250"]})
    sig = cost.model_signature(entries[0]["run_config"])
    measured = [
        {"signature": sig, "n": 10, "seconds_per_step": 0.2, "check_seconds_per_sample": 0.001,
         "eval_seconds_per_sample": 0.002, "overhead_seconds": 10.0},
        {"signature": sig, "n": 30, "seconds_per_step": 0.6, "check_seconds_per_sample": 0.003,
         "eval_seconds_per_sample": 0.004, "overhead_seconds": 10.0},
    ]  # fmt: skip
    table = cost.project(entries, measured).set_index(["config", "n"])
    # n=10: 1000 x 0.2 + 4 checks x 200 samples x 0.001 + 1000 x 0.002 + 10
    assert table.loc[("relu", 10), "projected seconds"] == pytest.approx(200 + 0.8 + 2 + 10)
    assert table.loc[("relu", 10), "per-step cost"] == "measured"
    # n=20 lies halfway in sequence length (43 tokens between 23 and 63): 0.4 s per step
    assert table.loc[("relu_inverse", 20), "seconds per step"] == pytest.approx(0.4)
    assert table.loc[("relu_inverse", 20), "per-step cost"] == "from n=10 and n=30"
    only = cost.project(entries, measured[:1]).set_index(["config", "n"])
    assert only.loc[("relu", 30), "seconds per step"] == pytest.approx(0.2 * 63 / 23, abs=1e-4)
    assert only.loc[("relu", 30), "per-step cost"] == "scaled from n=10"
    with pytest.raises(KeyError, match="no measurement"):
        cost.project(entries, [{**measured[0], "signature": ("bart",)}])


def test_cost_is_measured_through_the_training_path(tmp_path, capsys):
    from qwen_anatomy.tasks.train import load_config

    cfg = load_config(RELU, [*TINY, "task.n=4", f"task.data_root={tmp_path / 'data'}"])
    m = cost.measure(cfg, steps=8, workdir=tmp_path)
    assert m["steps_timed"] == 8 - cost.WARMUP_STEPS and m["seconds_per_step"] > 0
    assert m["check_seconds_per_sample"] > 0 and m["eval_seconds_per_sample"] > 0
    assert m["model"] == "Qwen2 2 layers, hidden 32, FFN 64, 4/2 heads, batch 32"
    assert not any(p.name.startswith("task-cost-") for p in tmp_path.iterdir())  # cleaned up
    with pytest.raises(UserInputError, match="must exceed"):
        cost.measure(cfg, steps=3)
    argv = ["tasks", "sweep", "--configs", RELU, RELU_INV, "--n", "4", "--seeds", "0", "1"]
    argv += sets([f"task.data_root={tmp_path / 'data'}"]) + ["--out-root", str(tmp_path / "out")]
    assert main([*argv, "--estimate", "--estimate-steps", "7"]) == 0
    printed = capsys.readouterr().out
    assert "4 runs to train, projected" in printed and "relu_inverse" in printed
    assert not (tmp_path / "out").exists()  # an estimate writes nothing under the output root
