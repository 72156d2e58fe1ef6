"""Book-scale experiment: every task and order, several seeds (chapter 30_synthetic_tasks).

``run(config) -> results`` trains each YAML config with each seed into
``out_root/<config stem>/seed<k>/`` and writes ``out_root/summary.json`` (one row per run). It is
resumable: a run whose record says "success" is read, not retrained; an interrupted or failed run
is moved aside (never overwritten) and retrained. The weights are dropped unless
``keep_checkpoints`` (the curves, evaluation and run record stay). Regenerate the committed
results with::

    qwen-anatomy tasks sweep --configs configs/relu.yaml configs/relu_inverse.yaml \\
        configs/square.yaml configs/square_inverse.yaml configs/index.yaml configs/index_inverse.yaml \\
        --seeds 0 1 2 --out-root data/results/tasks
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

SUMMARY_KEYS = (
    "task",
    "n",
    "order",
    "seed",
    "parameters",
    "planned_steps",
    "steps",
    "train_seconds",
    "stopped_by_time_budget",
    "final_train_loss",
    "exact_match",
    "token_accuracy",
    "eos_accuracy",
    "per_position_accuracy",
    "num_examples",
    "train_test_overlap",
)


def _status(folder: Path) -> str | None:
    record = folder / "run_record.json"
    if not record.is_file():
        return None
    return json.loads(record.read_text()).get("status")


def run(config: dict[str, Any]) -> dict[str, Any]:
    """Train configs x seeds; returns {"runs": [rows], "out_root": ...} (also written to summary.json).

    ``config`` keys: ``configs`` (YAML paths), ``seeds`` (ints), ``overrides`` (``--set`` strings
    applied to every run), ``out_root``, ``keep_checkpoints`` (bool).
    """
    from ..runrecord import atomic_write_json, utc_now
    from .train import load_config, train

    out_root = Path(config.get("out_root", "data/results/tasks"))
    seeds = list(config.get("seeds", [0]))
    loaded = [
        (Path(p).stem, load_config(p, config.get("overrides"))) for p in config["configs"]
    ]  # validate all first
    rows = []
    for stem, cfg in loaded:
        for seed in seeds:
            folder = out_root / stem / f"seed{seed}"
            status = _status(folder)
            if status != "success":
                if folder.exists():
                    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
                    folder.rename(folder.with_name(f"{folder.name}.{status or 'partial'}-{stamp}"))
                run_cfg = json.loads(json.dumps(cfg))
                run_cfg["training"]["seed"] = seed
                train(run_cfg, folder)
                if not config.get("keep_checkpoints"):
                    (folder / "model.safetensors").unlink(missing_ok=True)
            result = json.loads((folder / "evaluation.json").read_text())
            rows.append({"config": stem, **{k: result.get(k) for k in SUMMARY_KEYS}})
    # The summary covers every successful run on disk (sweeps may run in parallel or in parts).
    every = load_results(out_root).to_dict("records")
    summary = {"created": utc_now(), "out_root": str(out_root), "runs": rows, "all_runs": every}
    atomic_write_json(out_root / "summary.json", summary)
    return summary


def load_results(out_root: str | Path = "data/results/tasks"):
    """The per-run evaluations under ``out_root`` as a pandas DataFrame (one row per config x seed).

    Reads every ``<config>/seed<k>/evaluation.json`` whose run record says "success", so a
    partly finished sweep is shown as far as it went.
    """
    import pandas as pd

    rows = []
    for ev in sorted(Path(out_root).glob("*/seed*/evaluation.json")):
        if _status(ev.parent) != "success":
            continue
        result = json.loads(ev.read_text())
        rows.append({"config": ev.parent.parent.name, **{k: result.get(k) for k in SUMMARY_KEYS}})
    return pd.DataFrame(rows)


def load_curves(out_root: str | Path = "data/results/tasks") -> dict[tuple[str, int], dict]:
    """{(config, seed): curves.json contents} for the successful runs under ``out_root``."""
    curves = {}
    for f in sorted(Path(out_root).glob("*/seed*/curves.json")):
        if _status(f.parent) == "success":
            curves[(f.parent.parent.name, int(f.parent.name.removeprefix("seed")))] = json.loads(
                f.read_text()
            )
    return curves


def seed_table(frame):
    """Mean, standard deviation, min and max of exact match per task and order, with the seed count."""
    grouped = frame.groupby(["task", "n", "order"])["exact_match"]
    table = grouped.agg(["count", "mean", "std", "min", "max"]).reset_index()
    return table.rename(columns={"count": "seeds"})
