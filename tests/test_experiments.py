"""`qwen-anatomy run` / `results` and the experiments API (issue 6), on a tiny fixture notebook.

The fixture tests/fixtures/exp_tiny.py has no model: each executed run costs a kernel start-up
(a few seconds). Validation tests execute nothing.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

from qwen_anatomy import experiments
from qwen_anatomy.cli import main
from qwen_anatomy.errors import UserInputError

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "exp_tiny.py"
RUN_FIELDS = {
    "parameters",
    "overrides",
    "seed",
    "status",
    "start_time",
    "end_time",
    "wall_seconds",
    "git",
    "versions",
    "machine",
    "hostname",
    "pid",
    "notebook",
    "notebook_sha256",
    "executed_notebook",
    "metrics",
    "command",
}


def _run_dirs(out: Path) -> list[Path]:
    return sorted(p.parent for p in out.glob("exp_tiny/*/run.json"))


def _err_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1, f"expected one line on stderr, got: {err!r}"
    return err


# ---------------------------------------------------------------- save_metrics


def test_save_metrics_inside_a_run_goes_to_the_run_dir_and_merges(tmp_path, monkeypatch):
    monkeypatch.setenv(experiments.RUN_DIR_ENV, str(tmp_path))
    first = experiments.save_metrics({"loss": 1.5, "steps": 3})
    second = experiments.save_metrics({"loss": 0.5})
    assert first == second == tmp_path / "metrics.json"
    assert json.loads(first.read_text()) == {"loss": 0.5, "steps": 3}
    other = experiments.save_metrics({"x": [1, 2]}, name="curves")
    assert json.loads(other.read_text()) == {"x": [1, 2]}


def test_save_metrics_interactively_goes_to_scratch_and_says_where(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv(experiments.RUN_DIR_ENV, raising=False)
    monkeypatch.setattr(experiments.metrics, "REPO_ROOT", tmp_path)
    path = experiments.save_metrics({"acc": 0.9})
    assert path.parent == tmp_path / "scratch" / "metrics"
    assert path.name.endswith("-metrics.json")
    assert json.loads(path.read_text()) == {"acc": 0.9}
    out = capsys.readouterr().out
    assert str(path) in out and out.count("\n") == 1


def test_save_metrics_refuses_a_non_dict(tmp_path, monkeypatch):
    monkeypatch.setenv(experiments.RUN_DIR_ENV, str(tmp_path))
    with pytest.raises(TypeError):
        experiments.save_metrics([1, 2])


# ---------------------------------------------------------------- validation (nothing executes)


def test_parameters_cell_is_parsed_with_ast():
    params = experiments.notebook_parameters(FIXTURE)
    assert params["n_samples"] == 100 and isinstance(params["n_samples"], int)
    assert params["scale"] == 1.0 and isinstance(params["scale"], float)
    assert params["label"] == "tiny" and params["fail"] is False and params["extra"] is None


def test_unknown_parameter_is_refused_before_any_cell_runs(tmp_path, capsys):
    marker = tmp_path / "marker"
    code = main(
        ["run", str(FIXTURE), "-p", "marker", str(marker), "-p", "n_sample", "5", "--out", str(tmp_path)]
    )
    assert code == 2
    err = _err_line(capsys)
    assert "n_sample" in err and "n_samples" in err  # names the bad input and what is accepted
    assert not marker.exists()
    assert _run_dirs(tmp_path) == []


@pytest.mark.parametrize(
    "name,value",
    [("n_samples", "many"), ("n_samples", "2.5"), ("fail", "3"), ("scale", "true"), ("label", None)],
)
def test_wrongly_typed_value_is_refused_before_any_cell_runs(tmp_path, capsys, name, value):
    marker = tmp_path / "marker"
    if value is None:  # a string parameter given a number through a parameters file
        params = tmp_path / "p.yml"
        params.write_text(f"{name}: 3\n")
        argv = ["run", str(FIXTURE), "-f", str(params)]
    else:
        argv = ["run", str(FIXTURE), "-p", name, value]
    code = main([*argv, "-p", "marker", str(marker), "--out", str(tmp_path)])
    assert code == 2
    err = _err_line(capsys)
    assert name in err and "wrong type" in err
    assert not marker.exists() and _run_dirs(tmp_path) == []


def test_grid_values_are_type_checked_too(tmp_path, capsys):
    grid = tmp_path / "grid.yml"
    grid.write_text("seed: [0, 1.5]\n")
    assert main(["run", str(FIXTURE), "--grid", str(grid), "--out", str(tmp_path)]) == 2
    assert "seed" in _err_line(capsys)


def test_values_are_typed_after_the_defaults():
    _, runs = experiments.plan_runs(
        FIXTURE, cli_parameters=[("scale", "2"), ("label", "123"), ("fail", "true"), ("extra", "[1, 2]")]
    )
    assert runs == [{"scale": 2.0, "label": "123", "fail": True, "extra": [1, 2]}]
    assert isinstance(runs[0]["scale"], float)  # an int is accepted where a float is expected


def test_grid_expands_every_combination_and_shards_partition_it(tmp_path):
    grid = {"seed": [0, 1, 2], "scale": [1.0, 2.0]}
    _, runs = experiments.plan_runs(FIXTURE, grid=grid)
    assert len(runs) == 6 and len({json.dumps(r, sort_keys=True) for r in runs}) == 6
    shards = [experiments.plan_runs(FIXTURE, grid=grid, shard=f"{i}/4")[1] for i in range(1, 5)]
    assert sum(len(s) for s in shards) == 6
    assert sorted(json.dumps(r, sort_keys=True) for s in shards for r in s) == sorted(
        json.dumps(r, sort_keys=True) for r in runs
    )
    assert shards[0] == [runs[0], runs[4]]


@pytest.mark.parametrize("shard", ["0/3", "4/3", "1", "a/b"])
def test_bad_shard_is_refused(tmp_path, capsys, shard):
    grid = tmp_path / "grid.yml"
    grid.write_text("seed: [0, 1]\n")
    assert main(["run", str(FIXTURE), "--grid", str(grid), "--shard", shard, "--out", str(tmp_path)]) == 2
    assert "--shard" in _err_line(capsys)


def test_a_parameter_given_twice_and_a_missing_notebook_are_refused(tmp_path, capsys):
    grid = tmp_path / "grid.yml"
    grid.write_text("seed: [0, 1]\n")
    assert main(["run", str(FIXTURE), "--grid", str(grid), "-p", "seed", "3", "--out", str(tmp_path)]) == 2
    assert "both" in _err_line(capsys)
    assert main(["run", "no_such_notebook", "--out", str(tmp_path)]) == 2
    assert "no_such_notebook" in _err_line(capsys)
    assert main(["run", str(FIXTURE), "--grid", str(tmp_path / "missing.yml")]) == 2
    assert "missing.yml" in _err_line(capsys)


def test_dry_run_executes_nothing(tmp_path, capsys):
    marker = tmp_path / "marker"
    grid = tmp_path / "grid.yml"
    grid.write_text("seed: [0, 1]\nscale: [1, 2]\n")
    assert main(["run", str(FIXTURE), "--grid", str(grid), "-p", "marker", str(marker), "--dry-run",
                 "--out", str(tmp_path)]) == 0  # fmt: skip
    assert capsys.readouterr().out.count("would run") == 4
    assert not marker.exists() and _run_dirs(tmp_path) == []


# ---------------------------------------------------------------- executed runs


def test_a_run_writes_notebook_metrics_and_record_and_never_overwrites(tmp_path, capsys):
    argv = ["run", str(FIXTURE), "-p", "seed", "7", "-p", "n_samples", "20", "--out", str(tmp_path)]
    assert main(argv) == 0
    assert main(argv) == 0  # the same parameters again: a second directory
    dirs = _run_dirs(tmp_path)
    assert len(dirs) == 2 and dirs[0] != dirs[1]
    # <UTC time>-<short hash of the parameters>: same parameters, same hash, distinct directories
    assert dirs[0].name.split("-")[1] == dirs[1].name.split("-")[1]
    for run_dir in dirs:
        assert (run_dir / "exp_tiny.ipynb").is_file()
        executed = nbformat.read(run_dir / "exp_tiny.ipynb", as_version=4)
        outputs = "".join(o.get("text", "") for c in executed.cells for o in c.get("outputs", []))
        assert "mean = " in outputs
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert metrics["n"] == 20 and 0 < metrics["mean"] < 1
        record = json.loads((run_dir / "run.json").read_text())
        assert RUN_FIELDS <= set(record), RUN_FIELDS - set(record)
        assert record["status"] == "success" and record["seed"] == 7
        assert record["overrides"] == {"seed": 7, "n_samples": 20}
        assert record["parameters"]["scale"] == 1.0 and record["parameters"]["n_samples"] == 20
        assert {"commit", "dirty"} <= set(record["git"])
        assert (
            record["versions"]["python"]
            and record["versions"]["torch"]
            and record["versions"]["transformers"]
        )
        assert record["machine"]["cpu_count"] >= 1
        assert record["start_time"] < record["end_time"]
        assert record["metrics"] == metrics
    first = json.loads((dirs[0] / "metrics.json").read_text())
    second = json.loads((dirs[1] / "metrics.json").read_text())
    assert first == second  # seeded: the repeat reproduces the numbers


def test_grid_of_four_with_one_failure_records_three_success_one_failed(tmp_path, capsys):
    grid = tmp_path / "grid.yml"
    grid.write_text("seed: [0, 1, 2, 3]\n")
    code = main(["run", str(FIXTURE), "--grid", str(grid), "-p", "fail_seed", "2", "-p", "n_samples", "10",
                 "--jobs", "2", "--out", str(tmp_path)])  # fmt: skip
    assert code == 1
    dirs = _run_dirs(tmp_path)
    records = [json.loads((d / "run.json").read_text()) for d in dirs]
    by_seed = {r["seed"]: r["status"] for r in records}
    assert by_seed == {0: "success", 1: "success", 2: "failed", 3: "success"}
    failed = next(r for r in records if r["status"] == "failed")
    assert "failing on purpose for seed=2" in failed["error"]
    failed_dir = dirs[records.index(failed)]
    assert (failed_dir / "exp_tiny.ipynb").is_file()  # the executed notebook shows where it failed
    assert not (failed_dir / "metrics.json").exists()

    frame = experiments.load_results("exp_tiny", tmp_path)
    assert len(frame) == 4
    assert sorted(frame["status"]) == ["failed", "success", "success", "success"]
    assert frame.loc[frame["param.seed"] == 2, "metric.mean"].isna().all()
    assert frame.loc[frame["param.seed"] == 0, "metric.n"].item() == 10

    capsys.readouterr()
    assert main(["results", "exp_tiny", "--out", str(tmp_path)]) == 0
    table = capsys.readouterr().out
    assert table.count("success") >= 3 and "failed" in table
    assert "4 run(s): 3 success, 1 failed" in table
    assert "mean" in table and "fail_seed=2" in table  # a varying column and a fixed parameter


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_run_is_marked_incomplete(tmp_path, sig):
    marker = tmp_path / "marker"
    grid = tmp_path / "grid.yml"
    grid.write_text("seed: [0, 1]\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "lib")}
    cmd = [sys.executable, "-m", "qwen_anatomy.cli", "run", str(FIXTURE), "--grid", str(grid),
           "-p", "sleep_seconds", "120", "-p", "marker", str(marker), "--out", str(tmp_path)]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 90
        while not marker.exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert marker.exists(), "the first cell never ran"
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, (out, err)
    dirs = _run_dirs(tmp_path)
    assert len(dirs) == 1  # the second combination never started
    record = json.loads((dirs[0] / "run.json").read_text())
    assert record["status"] == "incomplete" and record["end_time"]
    assert experiments.load_results(out=tmp_path)["status"].tolist() == ["incomplete"]


def test_a_record_left_running_by_a_dead_process_reads_as_incomplete(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    import platform

    for name, pid in (("dead", dead.pid), ("alive", os.getpid())):
        run_dir = tmp_path / "exp_tiny" / f"20260101T000000Z-{name}"
        run_dir.mkdir(parents=True)
        record = {"status": "running", "pid": pid, "hostname": platform.node(), "parameters": {"seed": 0}}
        (run_dir / "run.json").write_text(json.dumps(record))
    frame = experiments.load_results(out=tmp_path)
    assert dict(zip(frame["run_id"].str[-5:], frame["status"], strict=True)) == {
        "-dead": "incomplete",
        "alive": "running",
    }


def test_results_of_an_empty_or_missing_folder(tmp_path, capsys):
    assert main(["results", "--out", str(tmp_path)]) == 0
    assert "no runs" in capsys.readouterr().out
    assert main(["results", "--out", str(tmp_path / "nope")]) == 2
    assert "nope" in _err_line(capsys)


# ---------------------------------------------------------------- aggregation


def test_aggregate_matches_a_student_t_interval():
    import numpy as np
    import pandas as pd
    from scipy import stats

    values = {2: [10.0, 12.0, 11.0], 3: [8.0, 9.0, 8.5, 9.5]}
    rows = [
        {"status": "success", "param.order": k, "metric.ppl": v} for k, vs in values.items() for v in vs
    ] + [{"status": "failed", "param.order": 2, "metric.ppl": 1000.0}]
    agg = experiments.aggregate(pd.DataFrame(rows), "order", "ppl", confidence=0.9)
    assert agg["order"].tolist() == [2, 3] and agg["n"].tolist() == [3, 4]  # the failed run is left out
    for (_, row), vs in zip(agg.iterrows(), values.values(), strict=True):
        low, high = stats.t.interval(0.9, len(vs) - 1, loc=np.mean(vs), scale=stats.sem(vs))
        assert row["mean"] == pytest.approx(np.mean(vs))
        assert (row["low"], row["high"]) == pytest.approx((low, high))


def test_finalise_repairs_a_worker_that_died_without_a_record(tmp_path):
    run_dir = tmp_path / "exp_tiny" / "x"
    run_dir.mkdir(parents=True)
    (run_dir / "runner.log").write_text("ImportError: boom\n")
    assert experiments.runner._finalise_record(run_dir, 1) == "failed"
    assert "boom" in json.loads((run_dir / "run.json").read_text())["error"]
    with pytest.raises(UserInputError):
        experiments.parse_shard("2/1")


def test_results_from_several_machines_merge_by_directory(tmp_path, capsys):
    # two shards' result folders, as copied back from two machines
    for machine, seeds in (("m1", [0, 2]), ("m2", [1])):
        for seed in seeds:
            run_dir = tmp_path / machine / "exp_tiny" / f"20260101T00000{seed}Z-{seed:08d}"
            run_dir.mkdir(parents=True)
            record = {"status": "success", "seed": seed, "hostname": machine, "parameters": {"seed": seed}}
            (run_dir / "run.json").write_text(json.dumps(record))
            (run_dir / "metrics.json").write_text(json.dumps({"mean": 0.5 + seed}))
    frame = experiments.load_results("exp_tiny", [tmp_path / "m1", tmp_path / "m2"])
    assert sorted(frame["param.seed"]) == [0, 1, 2] and sorted(frame["hostname"]) == ["m1", "m1", "m2"]
    argv = ["results", "--out", str(tmp_path / "m1"), "--out", str(tmp_path / "m2"), "--metrics", "mean"]
    assert main(argv) == 0
    assert "3 run(s): 3 success" in capsys.readouterr().out
    assert main([*argv[:-1], "nope"]) == 2
    assert "nope" in _err_line(capsys)


def test_aggregate_on_the_log_scale_gives_a_geometric_mean_and_ratio():
    import numpy as np
    import pandas as pd
    from scipy import stats

    ppl = {(2, 0): 100.0, (2, 1): 400.0, (2, 2): 200.0, (3, 0): 90.0, (3, 1): 356.0, (3, 2): 182.0}
    rows = [
        {"status": "success", "param.order": o, "param.seed": s, "metric.ppl": v} for (o, s), v in ppl.items()
    ]
    frame = pd.DataFrame(rows)
    agg = experiments.aggregate(frame, "order", "ppl", log=True)
    logs = np.log([100.0, 400.0, 200.0])
    low, high = stats.t.interval(0.95, 2, loc=logs.mean(), scale=stats.sem(logs))
    assert agg["mean"].iloc[0] == pytest.approx(np.exp(logs.mean()))  # the geometric mean, 200
    assert (agg["low"].iloc[0], agg["high"].iloc[0]) == pytest.approx((np.exp(low), np.exp(high)))
    assert agg["low"].iloc[0] > 0
    paired = experiments.paired_differences(frame, "order", "ppl", "seed", log=True)
    ratios = np.log([90 / 100, 356 / 400, 182 / 200])
    assert paired["mean"].iloc[0] == pytest.approx(np.exp(ratios.mean()))
    assert paired["n"].iloc[0] == 3 and paired["high"].iloc[0] < 1  # consistently lower in every pair
    plain = experiments.paired_differences(frame, "order", "ppl", "seed")
    assert plain["mean"].iloc[0] == pytest.approx(np.mean([-10.0, -44.0, -18.0]))


def test_worker_env_is_offline_without_hub_progress_widgets_and_keeps_the_callers_choices():
    from qwen_anatomy.experiments.runner import KERNEL_ENV, worker_env

    env = worker_env({"TRANSFORMERS_VERBOSITY": "info", "PYTHONPATH": "/x"}, jobs=2)
    assert env["HF_HUB_OFFLINE"] == env["TRANSFORMERS_OFFLINE"] == "1"
    assert env["HF_HUB_DISABLE_PROGRESS_BARS"] == "1"  # a notebook widget would load JS from a CDN
    assert env["TRANSFORMERS_VERBOSITY"] == "info"  # set by the caller: kept
    assert env["OMP_NUM_THREADS"] == str(max(1, (os.cpu_count() or 1) // 2))
    assert env["PYTHONPATH"].split(os.pathsep) == [str(experiments.params.REPO_ROOT / "lib"), "/x"]
    assert "OMP_NUM_THREADS" not in worker_env({}, jobs=1)
    assert set(KERNEL_ENV) <= set(worker_env({}, jobs=1))
