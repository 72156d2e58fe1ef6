"""The table of contents and the notebooks on disk must agree, both ways."""

from toc import ROOT, toc_files, toc_notebooks


def test_every_notebook_on_disk_is_in_the_toc():
    on_disk = {p.relative_to(ROOT).with_suffix("").as_posix() for p in (ROOT / "notebooks").glob("*.py")}
    listed = {f for f in toc_files() if f.startswith("notebooks/")}
    assert on_disk - listed == set(), f"notebooks missing from _toc.yml: {sorted(on_disk - listed)}"
    assert listed - on_disk == set(), f"_toc.yml lists missing notebooks: {sorted(listed - on_disk)}"


def test_every_toc_entry_exists():
    for f in toc_files():
        candidates = [ROOT / f"{f}{ext}" for ext in (".md", ".py", ".ipynb")]
        assert any(c.is_file() for c in candidates), f"_toc.yml entry {f} has no file"


def test_notebooks_are_text_with_one_parameters_cell():
    import jupytext

    for path in toc_notebooks():
        nb = jupytext.read(path)
        tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1, f"{path.name} needs exactly one cell tagged 'parameters', has {len(tagged)}"
        assert nb.metadata.get("kernelspec", {}).get("name") == "python3", f"{path.name} lacks a kernelspec"
    assert not list((ROOT / "notebooks").glob("*.ipynb")), "generated .ipynb must not sit beside the sources"
