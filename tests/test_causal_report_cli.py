"""`qwen-anatomy causal report RESULTS_DIR`: figures and summary.md for a saved suite, from the same
functions chapter 50 uses; never overwrites; bad directories refused with one line."""

from __future__ import annotations

import json
import shutil

import matplotlib
import pytest
import torch

from qwen_anatomy.causal import experiments, report
from qwen_anatomy.cli import main

matplotlib.use("Agg")
torch.set_num_threads(1)

RESULTS = experiments.RESULTS_ROOT
FIGURES = ("num_f1", "mae", "coverage95", "training_curves")
PNG = b"\x89PNG\r\n\x1a\n"


def _run(capsys, argv):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _copy(suite: str, model: str, root):
    """The newest committed run of ``suite`` on ``model``, copied into ``root/<suite>/``."""
    _, path = experiments.latest_results(suite, model)
    target = root / suite / path.name
    shutil.copytree(path, target)
    return target


def test_report_on_a_committed_suite_writes_figures_and_summary(capsys, tmp_path):
    run_dir = _copy("comparison", "causal-tiny-lm", tmp_path)
    ref_dir = _copy("comprehensive", "causal-tiny-lm", tmp_path)
    code, stdout, err = _run(capsys, ["causal", "report", str(run_dir)])
    assert code == 0, err
    out = run_dir / "report"
    assert stdout.strip() == f"wrote {out}"
    assert sorted(p.name for p in out.iterdir()) == sorted([*(f"{f}.png" for f in FIGURES), "summary.md"])
    assert all((out / f"{f}.png").read_bytes().startswith(PNG) for f in FIGURES)
    text = (out / "summary.md").read_text()
    # the chapter's functions, on the same inputs, give the same sentences
    saved = report.read_saved(run_dir)
    reference = report.read_saved(ref_dir)
    safe = report.markdown_safe  # a bare <NUM> would vanish as an HTML tag
    assert "<NUM>" not in text and "&lt;NUM&gt; F1" in text
    assert report.suite_description(saved) in text
    assert safe(report.suite_summary(saved.results, reference.results)[1]) in text
    assert safe(report.threshold_sentence(saved.results, 10.0)) in text
    assert f"The baseline marked in the figures and compared above is from `{ref_dir}`" in text
    for stem in FIGURES:
        assert safe(report.FIGURE_CAPTIONS[stem]) in text and f"![{stem}]({stem}.png)" in text
    assert "| variant |" in text and "threshold=100" in text
    # never overwrites: a second report into the same place is refused, the first left as it was
    before = (out / "summary.md").read_bytes()
    code, _, err = _run(capsys, ["causal", "report", str(run_dir)])
    assert code == 2 and err.count("\n") == 1 and "already exists" in err
    assert (out / "summary.md").read_bytes() == before
    assert [p.name for p in run_dir.iterdir() if p.name.startswith(".")] == []  # no temporary left


def test_report_of_a_suite_with_its_own_baseline_and_an_explicit_out(capsys, tmp_path):
    run_dir = _copy("basic", "smollm2-135m", tmp_path)
    out = tmp_path / "elsewhere" / "basic-report"
    code, _, err = _run(capsys, ["causal", "report", str(run_dir), "--out", str(out)])
    assert code == 0, err
    text = (out / "summary.md").read_text()
    saved = report.read_saved(run_dir)
    assert report.markdown_safe(report.winner_sentences(saved.results)) in text
    assert report.settled_sentence(saved.results) in text
    assert "The baseline marked" not in text  # its own baseline
    assert not (run_dir / "report").exists()


def test_report_without_a_baseline_says_so(tmp_path):
    # an ablation run alone in a folder: no comprehensive run beside it
    run_dir = _copy("ablation", "causal-tiny-lm", tmp_path)
    out = report.write_report(run_dir)
    text = (out / "summary.md").read_text()
    assert "No baseline of this backbone was found" in text and "--reference" in text
    ref = _copy("comprehensive", "causal-tiny-lm", tmp_path / "other-root")
    out2 = report.write_report(run_dir, tmp_path / "with-ref", reference=ref)
    assert f"is from `{ref}`" in (out2 / "summary.md").read_text()


def test_report_matches_the_chapter_figures(tmp_path):
    """The figures the command writes are the chapter's (suite_bars), drawn from the same results."""
    import matplotlib.pyplot as plt

    run_dir = _copy("initialization", "causal-tiny-lm", tmp_path)
    ref_dir = _copy("comprehensive", "causal-tiny-lm", tmp_path)
    saved, ref = report.read_saved(run_dir), report.read_saved(ref_dir)
    plt.close("all")
    rep = report.suite_report(saved, ref.results, "causal-tiny-lm")
    titles = [f.axes[0].get_title() for f in rep.figures]
    assert titles == ["initialization suite, causal-tiny-lm"] * 2
    assert [f.axes[0].get_ylabel() for f in rep.figures] == ["<NUM> F1", "MAE of predicted numbers"]
    plt.close("all")


@pytest.mark.parametrize("problem", ["missing", "file", "no-results", "failed", "damaged", "no-variants"])
def test_bad_results_dir_is_refused_with_one_line(capsys, tmp_path, problem):
    run_dir = tmp_path / "basic" / "m-1"
    if problem != "missing":
        shutil.copytree(experiments.latest_results("basic", "causal-tiny-lm")[1], run_dir)
    if problem == "file":
        shutil.rmtree(run_dir)
        run_dir.write_text("x")
    elif problem == "no-results":
        (run_dir / "results.json").unlink()
    elif problem == "failed":
        record = json.loads((run_dir / "run_record.json").read_text())
        (run_dir / "run_record.json").write_text(json.dumps({**record, "status": "failed"}))
    elif problem == "damaged":
        (run_dir / "results.json").write_text("{not json")
    elif problem == "no-variants":
        results = json.loads((run_dir / "results.json").read_text())
        (run_dir / "results.json").write_text(json.dumps({**results, "variants": []}))
    code, _, err = _run(capsys, ["causal", "report", str(run_dir)])
    assert code == 2 and err.count("\n") == 1 and err.startswith("qwen-anatomy causal: error:")
    words = {
        "missing": "does not exist",
        "file": "is a file",
        "no-results": "has no results.json",
        "failed": "says 'failed'",
        "damaged": "results file",
        "no-variants": "holds no variant",
    }[problem]
    assert words in err
    assert not (run_dir / "report").exists()


def test_report_refuses_an_existing_out_and_a_reference_without_baseline(capsys, tmp_path):
    run_dir = _copy("ablation", "causal-tiny-lm", tmp_path)
    (tmp_path / "taken").mkdir()
    code, _, err = _run(capsys, ["causal", "report", str(run_dir), "--out", str(tmp_path / "taken")])
    assert code == 2 and "already exists" in err
    code, _, err = _run(capsys, ["causal", "report", str(run_dir), "--reference", str(run_dir)])
    assert code == 2 and "has no baseline variant" in err
    assert not (run_dir / "report").exists()
