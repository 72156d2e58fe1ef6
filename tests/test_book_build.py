"""`make book` must fail when a cell fails: build a one-chapter book with the project's own settings.

A passing twin proves the check can tell the difference (the failing build is not failing for
another reason).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from toc import ROOT

JB = Path(sys.executable).parent / "jupyter-book"
HEADER = """# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---
"""


def make_book(folder: Path, cell: str) -> Path:
    folder.mkdir()
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    config["exclude_patterns"] = ["_build"]
    (folder / "_config.yml").write_text(yaml.safe_dump(config))
    (folder / "_toc.yml").write_text(
        yaml.safe_dump({"format": "jb-book", "root": "intro", "chapters": [{"file": "chapter"}]})
    )
    (folder / "intro.md").write_text("# Intro\n\nA test book.\n")
    (folder / "chapter.py").write_text(HEADER + f"\n# %% [markdown]\n# # Chapter\n\n# %%\n{cell}\n")
    return folder


def build(folder: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(JB), "build", str(folder), "--all", "-W", "-n", "--keep-going"],
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.skipif(not JB.exists(), reason="jupyter-book is installed by make")
def test_failing_cell_fails_the_build_and_passing_twin_succeeds(tmp_path):
    good = build(make_book(tmp_path / "good", "print(1 + 1)"))
    assert good.returncode == 0, good.stdout[-2000:] + good.stderr[-2000:]
    assert (tmp_path / "good" / "_build" / "html" / "chapter.html").is_file()
    bad = build(make_book(tmp_path / "bad", 'raise RuntimeError("deliberate failure")'))
    assert bad.returncode != 0
    assert "deliberate failure" in bad.stdout + bad.stderr
    shutil.rmtree(tmp_path, ignore_errors=True)
