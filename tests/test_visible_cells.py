"""Pages read like a book: no chapter shows a code cell longer than 25 lines unless it teaches.

A code cell is visible on the page unless a tag folds or removes it (Jupyter Book's hide-input,
hide-cell, remove-input, remove-cell); `teaching` cells are the code a chapter exists to show (each is
checked against lib/ by tests/test_teaching_cells.py) and may be long. The executed notebooks carry
the same cells and tags as these sources (papermill and Jupyter Book add outputs, never cells, except
papermill's injected-parameters cell, which is short), so the sources are what is checked.
"""

from __future__ import annotations

import jupytext
import pytest

from toc import ROOT, toc_files

MAX_VISIBLE_LINES = 25
FOLDED = {"hide-input", "hide-cell", "remove-input", "remove-cell"}
NOTEBOOKS = [f for f in toc_files() if f.startswith("notebooks/")]


def long_visible_cells(path, limit: int = MAX_VISIBLE_LINES) -> list[tuple[int, int, str]]:
    """(cell index, lines, first line) of every visible, non-teaching code cell longer than ``limit``."""
    out = []
    for i, cell in enumerate(jupytext.read(path).cells):
        tags = set(cell.metadata.get("tags", []))
        lines = cell.source.splitlines()
        if cell.cell_type == "code" and len(lines) > limit and not tags & (FOLDED | {"teaching"}):
            out.append((i, len(lines), lines[0]))
    return out


@pytest.mark.parametrize("notebook", NOTEBOOKS)
def test_no_long_visible_cell_that_does_not_teach(notebook):
    long = long_visible_cells(ROOT / f"{notebook}.py")
    assert not long, (
        f"{notebook}: fold (hide-input) or move to lib/ these cells (index, lines, start): {long}"
    )


def test_the_check_sees_a_long_visible_cell_and_accepts_folded_or_teaching_ones(tmp_path):
    body = "\n".join(f"x{i} = {i}" for i in range(MAX_VISIBLE_LINES + 1))
    text = (
        "# %%\n"
        + body
        + '\n\n# %% tags=["hide-input"]\n'
        + body
        + '\n\n# %% tags=["teaching"]\n'
        + body
        + "\n"
    )
    path = tmp_path / "nb.py"
    path.write_text(text)
    assert long_visible_cells(path) == [(0, MAX_VISIBLE_LINES + 1, "x0 = 0")]
