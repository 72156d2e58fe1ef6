"""Write CI-scale copies of every notebook in _toc.yml: jupytext -> ipynb, parameters injected.

Used by `make test` before pytest's nbval run:
    python tests/prepare_notebooks.py --params tests/ci-params.yml --out _build/ci-notebooks
The parameters of notebook NN_name are the mapping under its stem in the params file; papermill
injects them after the cell tagged `parameters` (prepare_only: nothing is executed here).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jupytext
import papermill
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from toc import toc_notebooks  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    params = yaml.safe_load(args.params.read_text()) or {}
    notebooks = toc_notebooks()
    unknown = set(params) - {p.stem for p in notebooks}
    if unknown:
        raise SystemExit(f"{args.params}: no notebook in _toc.yml named {sorted(unknown)}")
    args.out.mkdir(parents=True, exist_ok=True)
    for path in notebooks:
        nb = jupytext.read(path)
        raw = args.out / f"{path.stem}.raw.ipynb"
        jupytext.write(nb, raw)
        papermill.execute_notebook(
            str(raw),
            str(args.out / f"{path.stem}.ipynb"),
            parameters=params.get(path.stem, {}),
            prepare_only=True,
            kernel_name="python3",
            cwd=str(ROOT / "notebooks"),
            progress_bar=False,
        )
        raw.unlink()
        print(f"prepared {path.stem} with {params.get(path.stem, {})}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
