"""`qwen-anatomy book`: the reader's own book, and the one `model` parameter it relies on.

Fast tests check the planning (chapters, parameters, the note each page gets, the restricted table of
contents) and that bad input is one line with exit code 2 before anything is written; a slow test
builds a two-chapter book about a checkpoint directory and reads the HTML.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from qwen_anatomy import bookbuild
from qwen_anatomy.errors import UserInputError
from qwen_anatomy.experiments import notebook_parameters
from toc import ROOT, toc_notebooks

CLI = [sys.executable, "-m", "qwen_anatomy.cli"]
# Every chapter that runs a real pretrained model takes it as `model`, the book's real Qwen2 by default.
REAL_MODEL_CHAPTERS = [
    "00_setup",
    "01_language_models",
    "02_qwen2_from_scratch",
    "10_weights_summary",
    "11_weights_per_layer",
    "12_embeddings_and_output",
    "40_heads_importance_vs_plasticity",
    "50_causal_heads",
]
OLD_NAMES = {"model_name", "smol_model", "book_model", "suite_model", "prepare_builtin_model"}


def test_the_book_reads_the_same_chapters_as_the_tests():
    assert bookbuild.toc_chapters() == [p.stem for p in toc_notebooks()]


@pytest.mark.parametrize("stem", REAL_MODEL_CHAPTERS)
def test_every_real_model_chapter_takes_one_model_parameter(stem):
    params = notebook_parameters(ROOT / "notebooks" / f"{stem}.py")
    assert params.get("model") == "qwen2.5-coder-0.5b"
    assert not OLD_NAMES & set(params), f"{stem} still uses {OLD_NAMES & set(params)}"


def test_chapters_without_a_real_model_take_no_model_parameter():
    others = [p.stem for p in toc_notebooks() if p.stem not in REAL_MODEL_CHAPTERS]
    assert others  # 30 and 90 read committed results only
    for stem in others:
        assert "model" not in notebook_parameters(ROOT / "notebooks" / f"{stem}.py"), stem


def test_select_chapters_by_stem_or_prefix_in_toc_order():
    known = bookbuild.toc_chapters()
    assert bookbuild.select_chapters(["10", "00_setup.py"], known) == ["00_setup", "10_weights_summary"]
    assert bookbuild.select_chapters(None, known) == known
    with pytest.raises(UserInputError, match="'99' is not in _toc.yml"):
        bookbuild.select_chapters(["99"], known)
    with pytest.raises(UserInputError, match="ambiguous"):
        bookbuild.select_chapters(["1"], known)
    with pytest.raises(UserInputError, match="--chapters is empty"):
        bookbuild.select_chapters([], known)


def test_plan_lays_ci_values_under_the_model_and_leaves_other_chapters_at_defaults():
    ci = yaml.safe_load((ROOT / "tests" / "ci-params.yml").read_text())
    plans = {p.stem: p for p in bookbuild.plan_book("smollm2-135m", scale="ci")}
    assert list(plans) == bookbuild.toc_chapters()
    # the model given wins over the CI file's (chapter 50 trains on causal-tiny-lm in CI)
    assert plans["50_causal_heads"].overrides["model"] == "smollm2-135m"
    assert plans["50_causal_heads"].ci_overrides["live_steps"] == ci["50_causal_heads"]["live_steps"]
    assert plans["10_weights_summary"].overrides == {**ci["10_weights_summary"], "model": "smollm2-135m"}
    assert not plans["30_synthetic_tasks"].takes_model
    assert "model" not in plans["30_synthetic_tasks"].overrides
    book = {p.stem: p for p in bookbuild.plan_book("smollm2-135m", ["30", "12"])}
    assert book["12_embeddings_and_output"].overrides == {"model": "smollm2-135m"}
    assert book["30_synthetic_tasks"].overrides == {}


def test_plan_checks_ci_values_against_each_parameters_cell(tmp_path):
    bad = tmp_path / "ci.yml"
    bad.write_text("12_embeddings_and_output:\n  pca_dims: many\n")
    with pytest.raises(UserInputError, match="pca_dims='many' has the wrong type"):
        bookbuild.plan_book("smollm2-135m", ["12"], scale="ci", ci_params_file=bad)
    bad.write_text("10_weights_summary:\n  no_such_knob: 1\n")
    with pytest.raises(UserInputError, match="no parameter 'no_such_knob'"):
        bookbuild.plan_book("smollm2-135m", ["10"], scale="ci", ci_params_file=bad)


def test_each_page_says_what_it_ran_on():
    plans = {p.stem: p for p in bookbuild.plan_book("qwen2.5-coder-0.5b", ["00", "30", "90"], scale="ci")}
    with_model = bookbuild.chapter_note(plans["00_setup"], "qwen2.5-coder-0.5b", "ci")
    assert "ran on **Qwen2.5-Coder-0.5B-Instruct** (`model = 'qwen2.5-coder-0.5b'`)" in with_model
    assert with_model.startswith("```{note}") and with_model.endswith("```")
    without = bookbuild.chapter_note(plans["30_synthetic_tasks"], "qwen2.5-coder-0.5b", "ci")
    assert "it takes no model" in without and "stats_samples = 2000" in without
    book = bookbuild.plan_book("qwen2.5-coder-0.5b", ["30"])[0]
    assert "This chapter ran at its defaults; it takes no model." in bookbuild.chapter_note(book, "x", "book")


def test_restricted_toc_keeps_the_prose_pages_and_only_the_chapters_built():
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    kept = bookbuild._restrict_toc(toc, {"notebooks/10_weights_summary"})
    files = bookbuild._toc_files([c for part in kept["parts"] for c in part["chapters"]])
    assert [f for f in files if f.startswith("notebooks/")] == ["notebooks/10_weights_summary"]
    assert "book/part3" in files and "book/references" in files
    part3 = next(c for part in kept["parts"] for c in part["chapters"] if c["file"] == "book/part3")
    assert "sections" not in part3  # an empty list would be an invalid table of contents
    assert toc == yaml.safe_load((ROOT / "_toc.yml").read_text())  # the original is untouched


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=300, cwd=cwd)


def bad_cases(tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    full = tmp_path / "full"
    full.mkdir()
    (full / "index.html").write_text("an earlier book")
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    new = str(tmp_path / "new")
    return {
        "existing non-empty out": (
            ["--model", "smollm2-135m", "--out", str(full)],
            "already exists and is not empty",
        ),
        "out is a file": (["--model", "smollm2-135m", "--out", str(a_file)], "is a file, not a directory"),
        "unknown model": (["--model", "no-such-model", "--out", new], "unknown model 'no-such-model'"),
        "missing model dir": (["--model", str(tmp_path / "nope"), "--out", new], "does not exist"),
        "unknown chapter": (
            ["--model", "smollm2-135m", "--out", new, "--chapters", "00_setup,77_nothing"],
            "chapter '77_nothing' is not in _toc.yml",
        ),
        "empty chapters": (
            ["--model", "smollm2-135m", "--out", new, "--chapters", ","],
            "--chapters is empty",
        ),
        "bad scale": (["--model", "smollm2-135m", "--out", new, "--scale", "huge"], "invalid choice"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "existing non-empty out",
        "out is a file",
        "unknown model",
        "missing model dir",
        "unknown chapter",
        "empty chapters",
        "bad scale",
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, case):
    args, message = bad_cases(tmp_path)[case]
    before = sorted(p.name for p in tmp_path.iterdir())
    done = run_cli("book", *args)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("qwen-anatomy book: error:"), done.stderr
    assert message in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert (tmp_path / "full" / "index.html").read_text() == "an earlier book"


@pytest.mark.slow
def test_a_two_chapter_book_about_a_checkpoint_directory(tmp_path):
    # a checkpoint directory of the reader's own (here a copy of the project's small Qwen2)
    model = tmp_path / "my-tiny-qwen"
    shutil.copytree(ROOT / "data" / "models" / "causal-tiny-lm", model)
    out = tmp_path / "book"
    done = run_cli(
        "book", "--model", str(model), "--scale", "ci", "--chapters", "00_setup,10_weights_summary",
        "--out", str(out), "--no-progress",
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert (out / "index.html").is_file()
    for stem in ("00_setup", "10_weights_summary"):
        page = (out / "notebooks" / f"{stem}.html").read_text()
        assert "my-tiny-qwen" in page, stem
        assert "This chapter ran on <strong>my-tiny-qwen</strong>" in page, stem
    # chapter 10's own sentence names the model it analysed, not a fixed one
    assert (
        "This page analyses <strong>my-tiny-qwen</strong>"
        in (out / "notebooks" / "10_weights_summary.html").read_text()
    )
    assert not (out / "notebooks" / "40_heads_importance_vs_plasticity.html").exists()
    record = json.loads((out / "book.json").read_text())
    assert record["status"] == "success" and record["render"]["status"] == "success"
    # the landing page (the root of _toc.yml) is built with any --chapters: the book needs its first page
    assert [c["chapter"] for c in record["chapters"]] == ["index", "00_setup", "10_weights_summary"]
    assert "committed with the book" in (out / "notebooks" / "index.html").read_text()
    for chapter in record["chapters"][1:]:
        run = json.loads((out / chapter["run_dir"] / "run.json").read_text())
        assert run["status"] == "success"
        assert run["parameters"]["model"] == str(model)
        assert (out / chapter["run_dir"] / f"{chapter['chapter']}.ipynb").is_file()
    # a second build into the same folder is refused: a book is never written over
    again = run_cli("book", "--model", str(model), "--chapters", "00", "--out", str(out))
    assert again.returncode == 2 and "already exists and is not empty" in again.stderr


# -- the prose each chapter generates from the model it ran on ----------------------------------------------
def test_model_label_names_builtins_directories_and_gguf_files():
    from qwen_anatomy.modelnames import model_family, model_label

    assert model_label("qwen2.5-coder-0.5b") == "Qwen2.5-Coder-0.5B-Instruct"
    assert model_label("smollm2-135m") == "SmolLM2-135M-Instruct"
    assert model_label("/data/ckpt/Qwen2.5-0.5B/") == "Qwen2.5-0.5B"
    assert model_label("/models/tiny-q8.gguf") == "tiny-q8"
    assert model_label("causal-tiny-lm") == "causal-tiny-lm"
    assert model_family("smollm2-135m") == "Llama"
    assert model_family("x", {"architectures": ["Qwen2ForCausalLM"]}) == "Qwen2"
    assert model_family("x") is None


def test_four_bit_format_and_zero_grid_sentences():
    from qwen_anatomy.weights import quant

    assert quant.four_bit_type(["F32", "Q5_0", "Q4_K", "Q6_K"]) == "Q4_K"  # the built-in Qwen2's
    assert quant.four_bit_type(["Q8_0", "Q4_1"]) == "Q4_1"  # SmolLM2's
    assert quant.four_bit_type(["F32", "BF16"]) is None
    assert quant.format_rule("IQ4_NL") == "stored as IQ4_NL"  # a type chapter 10 does not decode
    assert "q in 0..15" in quant.format_rule("Q4_K")
    # Q5_0 and Q8_0 grids are symmetric (x = d·(q - offset)) and contain 0; Q4_1's starts at a minimum
    assert "Q5_0's symmetric grid contains 0" in quant.zero_change_reason("Q5_0", "Q4_1")
    assert "Q8_0's symmetric grid contains 0" in quant.zero_change_reason("Q8_0", "Q4_1")


def test_causal_sentences_follow_the_backbone():
    from qwen_anatomy.causal import report

    reserved = report.num_token_sentence("causal-tiny-lm", 5, False, 384)
    assert "already has `<NUM>` (id 5)" in reserved
    spare = report.num_token_sentence("M", 151_665, True, 151_936)
    assert "271 spare rows" in spare and "no new row" in spare
    new_row = report.num_token_sentence("SmolLM2-135M-Instruct", 49_152, True, 49_152)
    assert new_row.startswith("On SmolLM2-135M-Instruct") and "new row initialised to the mean" in new_row
