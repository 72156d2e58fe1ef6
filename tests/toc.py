"""The book's one list of chapters: _toc.yml (read by tests and the CI notebook preparation)."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _files(entries) -> list[str]:
    out = []
    for entry in entries or []:
        if "file" in entry:
            out.append(entry["file"])
        for key in ("sections", "chapters"):
            out += _files(entry.get(key))
        for part in entry.get("parts", []):
            out += _files(part.get("chapters"))
    return out


def toc_files() -> list[str]:
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]] + _files(toc.get("chapters")) + _files(toc.get("parts"))
    for part in toc.get("parts", []):
        files += _files(part.get("chapters"))
    return list(dict.fromkeys(files))


def toc_notebooks() -> list[Path]:
    """Notebook sources (notebooks/NN_name.py) in table-of-contents order."""
    return [ROOT / f"{f}.py" for f in toc_files() if f.startswith("notebooks/")]
