"""Logic lives in lib/: no chapter defines a function or class, except in cells tagged `teaching`.

A function defined in a notebook is untested and drifts from the library (the house style's first
practice). Cells tagged `teaching` show a readable version of a library piece on purpose; each name
they define must be checked against lib/ by tests/test_teaching_cells.py. The allow-list below holds
display-only helpers, each with its reason; it is kept short, and an entry that no longer matches a
definition fails too.
"""

from __future__ import annotations

import ast

import jupytext
import pytest

from toc import ROOT, toc_notebooks

# (notebook stem, name): why a definition may stay in the notebook.
ALLOWED = {
    ("02_qwen2_from_scratch", "show"): "display only: renders a library object's source with inspect",
}


def definitions(source: str) -> list[str]:
    """Names of every function and class defined anywhere in a code cell's source."""
    tree = ast.parse(source)
    kinds = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
    return [node.name for node in ast.walk(tree) if isinstance(node, kinds)]


def notebook_definitions(text: str, fmt: str = "py:percent") -> list[tuple[int, str, bool]]:
    """(cell index, name, tagged teaching) for every definition in the code cells of a notebook text."""
    nb = jupytext.reads(text, fmt=fmt)
    out = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        # jupytext comments out magics; a cell that still does not parse is reported with its index
        try:
            names = definitions(cell.source)
        except SyntaxError as err:
            raise AssertionError(f"cell {i} does not parse: {err}") from None
        teaching = "teaching" in cell.metadata.get("tags", [])
        out += [(i, name, teaching) for name in names]
    return out


def violations(stem: str, text: str, allowed=ALLOWED) -> list[str]:
    """Definitions outside `teaching` cells that the allow-list does not cover."""
    return [
        f"{stem}: cell {i} defines {name!r}: move it to lib/ (with a test), tag the cell `teaching`, "
        "or allow-list it in tests/test_notebook_defs.py with a reason"
        for i, name, teaching in notebook_definitions(text)
        if not teaching and (stem, name) not in allowed
    ]


NOTEBOOKS = toc_notebooks()


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_no_untagged_definitions(path):
    assert violations(path.stem, path.read_text()) == []


def test_allow_list_is_short_current_and_explained():
    assert len(ALLOWED) <= 5
    found = {(p.stem, name) for p in NOTEBOOKS for _, name, _ in notebook_definitions(p.read_text())}
    stale = set(ALLOWED) - found
    assert not stale, f"allow-listed definitions no longer in any notebook: {sorted(stale)}"
    for key, reason in ALLOWED.items():
        assert reason.strip() and "\n" not in reason, key


def test_every_teaching_definition_is_checked_against_the_library():
    checks = (ROOT / "tests" / "test_teaching_cells.py").read_text()
    unchecked = [
        f"{p.stem}: {name}"
        for p in NOTEBOOKS
        for _, name, teaching in notebook_definitions(p.read_text())
        if teaching and f'"{name}"' not in checks
    ]
    assert unchecked == [], f"teaching definitions no test compares with lib/: {unchecked}"


SYNTHETIC = """# %% [markdown]
# # A chapter

# %%
import math


def verdict(x):
    return "wins" if x > 0 else "loses"


# %% tags=["teaching"]
def rms_teaching(x):
    return math.sqrt(sum(v * v for v in x) / len(x))


# %%
class Helper:
    def method(self):
        return 1


rows = [verdict(v) for v in (1, -1)]
squares = list(map(lambda v: v * v, (1, 2)))
"""


def test_self_check_fails_on_untagged_definitions():
    found = violations("synthetic", SYNTHETIC, allowed={})
    assert [v.split(" defines ")[1].split(":")[0] for v in found] == ["'verdict'", "'Helper'", "'method'"]
    assert all("cell " in v for v in found)
    # the teaching cell is accepted, lambdas are not definitions, and the allow-list works per name
    allowed = {("synthetic", "Helper"): "x", ("synthetic", "method"): "x"}
    assert [v.split("'")[1] for v in violations("synthetic", SYNTHETIC, allowed=allowed)] == ["verdict"]
    assert violations("synthetic", SYNTHETIC.replace("# %%\nimport math", '# %% tags=["teaching"]\nimport math'),
                      allowed=allowed) == []  # fmt: skip


def test_self_check_reports_a_cell_that_does_not_parse():
    with pytest.raises(AssertionError, match="cell 0 does not parse"):
        violations("broken", "# %%\ndef broken(:\n    pass\n")
