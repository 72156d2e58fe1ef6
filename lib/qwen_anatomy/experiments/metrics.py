"""Notebook metrics: :func:`save_metrics` (chapter 90_experiments).

Notebooks call :func:`save_metrics` to record their headline numbers. Inside a run started by
``qwen-anatomy run`` (which sets ``QWEN_ANATOMY_RUN_DIR`` for the kernel process) the metrics go to
that run's directory; interactively they go to ``<repo>/scratch/metrics/`` (git-ignored), and one
line says where.

This module's import stays light (json, os, pathlib): notebooks import it first thing.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from pathlib import Path
from typing import Any

from ..paths import REPO_ROOT
from ..runrecord import atomic_write_text, json_default

RUN_DIR_ENV = "QWEN_ANATOMY_RUN_DIR"


def save_metrics(metrics: dict[str, Any], name: str = "metrics") -> Path:
    """Save a notebook's metrics as JSON and return the file written (chapter 90_experiments).

    Inside ``qwen-anatomy run``: ``<run dir>/<name>.json`` (several calls with the same name merge,
    later keys winning, so a notebook may save metrics as it goes). Interactively:
    ``<repo>/scratch/metrics/<UTC time>-<name>.json``, reported on one printed line.
    """
    if not isinstance(metrics, dict):
        raise TypeError(f"save_metrics expects a dict of name -> value, got {type(metrics).__name__}")
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"save_metrics: name {name!r} must be a plain file stem such as 'metrics'")
    run_dir = os.environ.get(RUN_DIR_ENV)
    if run_dir:
        path = Path(run_dir) / f"{name}.json"
        merged: dict[str, Any] = {}
        if path.exists():
            merged = json.loads(path.read_text())
        merged.update(metrics)
        _write_json(path, merged)
        return path
    stamp = _dt.datetime.now(_dt.UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    path = REPO_ROOT / "scratch" / "metrics" / f"{stamp}-{name}.json"
    _write_json(path, metrics)
    print(f"save_metrics: not inside `qwen-anatomy run`; metrics written to {path}")
    return path


def _write_json(path: Path, metrics: dict[str, Any]) -> None:
    try:
        text = json.dumps(metrics, indent=2, default=json_default, allow_nan=True) + "\n"
    except TypeError as err:
        raise TypeError(f"save_metrics: {err}") from None
    atomic_write_text(path, text)
