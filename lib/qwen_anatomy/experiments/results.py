"""Reading results: run directories, their records and metrics as one table (chapter 90_experiments)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .params import RUN_FILE, _user_error
from .runner import _read_json, run_status


def iter_runs(out: str | os.PathLike | list = "results", notebook: str | None = None):
    """Yield (run_dir, record) for every run directory under one or more result roots."""
    roots = out if isinstance(out, list | tuple) else [out]
    for root in roots:
        root = Path(root).expanduser()
        if root.exists() and not root.is_dir():
            raise _user_error(
                f"results directory {root} is a file, not a directory: point --out at the folder "
                "holding the runs (results/ by default)"
            )
        if not root.is_dir():
            raise _user_error(
                f"results directory {root} does not exist; run `qwen-anatomy run ...` first "
                "or point --out at the folder holding the runs"
            )
        stem = None
        if notebook is not None:
            stem = Path(str(notebook)).name.removesuffix(".py").removesuffix(".ipynb")
        for run_file in sorted(root.glob(f"{stem or '*'}/*/{RUN_FILE}")):
            yield run_file.parent, _read_record(run_file)


def _read_record(path: Path) -> dict[str, Any]:
    """A run.json for the results table; a damaged one is named (one line), never read as empty."""
    from ..iochecks import read_run_record

    return read_run_record(path)


def load_results(
    notebook: str | None = None, out: str | os.PathLike | list = "results", status: str | None = None
):
    """All runs as a pandas DataFrame, one row per run (chapter 90_experiments).

    Columns: ``notebook``, ``run_id``, ``status`` (see :func:`run_status`), ``seed``, ``start_time``,
    ``end_time``, ``wall_seconds``, ``git_commit``, ``git_dirty``, ``hostname``, ``notebook_sha256``
    (which version of the notebook ran), ``path``; then
    ``param.<name>`` for every effective parameter and ``metric.<name>`` for every scalar saved in
    ``metrics.json`` (``metric.<file>.<name>`` for other files saved with ``save_metrics(..., name)``).
    ``out`` may be a list of result roots (e.g. one per machine) to merge.
    """
    import pandas as pd

    rows = []
    for run_dir, record in iter_runs(out, notebook):
        row: dict[str, Any] = {
            "notebook": record.get("notebook", run_dir.parent.name),
            "run_id": run_dir.name,
            "status": run_status(record),
            "seed": record.get("seed"),
            "start_time": record.get("start_time"),
            "end_time": record.get("end_time"),
            "wall_seconds": record.get("wall_seconds"),
            "git_commit": (record.get("git") or {}).get("commit"),
            "git_dirty": (record.get("git") or {}).get("dirty"),
            "hostname": record.get("hostname"),
            "notebook_sha256": record.get("notebook_sha256"),
            "path": str(run_dir),
        }
        for name, value in (record.get("parameters") or {}).items():
            row[f"param.{name}"] = value if _scalar(value) else json.dumps(value)
        for f in sorted(run_dir.glob("*.json")):
            if f.name == RUN_FILE:
                continue
            prefix = "metric." if f.stem == "metrics" else f"metric.{f.stem}."
            data = _read_json(f)
            for name, value in data.items() if isinstance(data, dict) else []:
                if _scalar(value):
                    row[prefix + name] = value
        rows.append(row)
    columns = [
        "notebook",
        "run_id",
        "status",
        "seed",
        "start_time",
        "end_time",
        "wall_seconds",
        "git_commit",
        "git_dirty",
        "hostname",
        "notebook_sha256",
        "path",
    ]
    frame = pd.DataFrame(rows, columns=None if rows else columns)
    if status is not None and len(frame):
        frame = frame[frame["status"] == status].reset_index(drop=True)
    return frame


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, bool | int | float | str)


def results_table(frame, metrics: list[str] | None = None) -> str:
    """Text table of runs: run id, status, the parameters that vary, then numeric metrics."""
    import pandas as pd

    if not len(frame):
        return "(no runs)"
    params = [c for c in frame.columns if c.startswith("param.")]
    varying = [c for c in params if frame[c].astype(str).nunique() > 1]
    metric_cols = [
        c for c in frame.columns if c.startswith("metric.") and pd.api.types.is_numeric_dtype(frame[c])
    ]
    if metrics:
        wanted = [m if m.startswith("metric.") else f"metric.{m}" for m in metrics]
        missing = [m for m in wanted if m not in frame.columns]
        if missing:
            raise _user_error(
                f"no metric named {', '.join(missing)}; saved metrics: "
                f"{', '.join(c[7:] for c in frame.columns if c.startswith('metric.')) or 'none'}"
            )
        metric_cols = wanted
    cols = ["notebook", "run_id", "status", *varying, *metric_cols, "wall_seconds"]
    table = frame[cols].rename(columns=lambda c: c.split(".", 1)[1] if "." in c else c)
    table = table.rename(columns={"wall_seconds": "wall_s"})
    lines = [table.to_string(index=False, float_format=lambda v: f"{v:.4g}", na_rep="-")]
    fixed = [c for c in params if c not in varying]
    if fixed:
        lines.append(
            "same in every run: " + ", ".join(f"{c[6:]}={_plain(frame[c].iloc[0])!r}" for c in fixed)
        )
    counts = frame["status"].value_counts()
    lines.append(f"{len(frame)} run(s): " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
