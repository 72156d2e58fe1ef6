"""Part III command line: generate writes the spec's files; bad inputs give one line and exit 2."""

from __future__ import annotations

import pytest

from clicheck import one_line_error
from qwen_anatomy.cli import main


def _exit_code(capsys, argv):
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err
    return info.value.code, err


def test_generate_writes_files(tmp_path, capsys):
    code = main(
        [
            "tasks",
            "generate",
            "relu",
            "--sequence-lengths",
            "10",
            "5",
            "--train-samples",
            "30",
            "--test-samples",
            "10",
            "--output-root",
            str(tmp_path),
            "--quiet",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out.split()
    assert len(out) == 8  # 2 lengths x (forward, inverse) x (train, test)
    line = (tmp_path / "relu" / "n=10" / "data.train").read_text().splitlines()[0]
    assert line == "-8 5 3 -1 -1 7 -8 4 -6 -8 # 0 5 8 7 6 13 5 9 3 0"
    assert (tmp_path / "relu" / "n=5" / "data-inv.test").is_file()


def test_generate_index_and_no_inverse(tmp_path, capsys):
    code = main(
        [
            "tasks",
            "generate",
            "index",
            "--sequence-lengths",
            "13",
            "--m",
            "2",
            "--train-samples",
            "5",
            "--test-samples",
            "5",
            "--no-inverse",
            "--output-root",
            str(tmp_path),
            "--quiet",
        ]
    )
    assert code == 0
    assert sorted(p.name for p in (tmp_path / "index" / "n=13_m=2").iterdir()) == ["data.test", "data.train"]


@pytest.mark.parametrize(
    "extra, match",
    [
        (["index", "--sequence-lengths", "13"], "needs --m"),
        (
            ["relu", "--sequence-lengths", "10", "--value-min", "5", "--value-max", "1"],
            "greater than --value-max",
        ),
        (["relu", "--sequence-lengths", "3", "--permutation", "0,1"], "has 2 entries"),
        (["relu", "--sequence-lengths", "3", "--permutation", "0,1,1"], "repeats index 1"),
        (["relu", "--sequence-lengths", "3", "--permutation", "0,x,1"], "comma-separated"),
        (["relu", "--sequence-lengths", "3", "--m", "2"], "only to the index task"),
    ],
)
def test_generate_bad_inputs(tmp_path, capsys, extra, match):
    one_line_error(capsys, ["tasks", "generate", *extra, "--output-root", str(tmp_path)], match)
    assert not any(tmp_path.iterdir())  # validated before anything was written


@pytest.mark.parametrize(
    "flag, value", [("--train-samples", "0"), ("--test-samples", "-3"), ("--sequence-lengths", "0")]
)
def test_generate_non_positive_counts(tmp_path, capsys, flag, value):
    argv = ["tasks", "generate", "relu", "--output-root", str(tmp_path)]
    if flag != "--sequence-lengths":
        argv += ["--sequence-lengths", "3"]
    code, err = _exit_code(capsys, [*argv, flag, value])
    assert code == 2
    assert len(err.strip().splitlines()) == 1
    assert "must be a positive integer" in err


def test_generate_refuses_to_overwrite(tmp_path, capsys):
    argv = [
        "tasks",
        "generate",
        "relu",
        "--sequence-lengths",
        "3",
        "--train-samples",
        "5",
        "--test-samples",
        "5",
        "--output-root",
        str(tmp_path),
        "--quiet",
    ]
    assert main(argv) == 0
    capsys.readouterr()
    one_line_error(capsys, argv, "already exists")
    assert main([*argv, "--overwrite"]) == 0


def test_train_bad_inputs(tmp_path, capsys):
    one_line_error(capsys, ["train", "--config", str(tmp_path / "missing.yaml")], "does not exist")
    cfg = tmp_path / "c.yaml"
    cfg.write_text("task:\n  name: relu\n  n: 10\ntraining:\n  batch_size: 0\n")
    one_line_error(
        capsys, ["train", "--config", str(cfg)], "training.batch_size 0 must be a positive integer"
    )
    cfg.write_text("task:\n  name: index\n  n: 13\n")
    one_line_error(capsys, ["tasks", "train", "--config", str(cfg)], "needs --m")
    cfg.write_text("task:\n  nme: relu\n")
    one_line_error(capsys, ["train", "--config", str(cfg)], "unknown config key")
    cfg.write_text("task:\n  name: relu\n")
    one_line_error(
        capsys, ["train", "--config", str(cfg), "--set", "training.sed=1"], "unknown key 'training.sed'"
    )
    one_line_error(capsys, ["train", "--config", str(cfg), "--set", "task.order=sideways"], "task.order")


def test_evaluate_bad_inputs(tmp_path, capsys):
    data = tmp_path / "d.test"
    one_line_error(capsys, ["evaluate", "relu-n10-forward", "--data", str(data)], "does not exist")
    data.write_text("1 2 # 1 3\n")
    one_line_error(capsys, ["evaluate", str(tmp_path / "nope"), "--data", str(data)], "does not exist")
