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

SWEEP_COMMAND = (
    "qwen-anatomy tasks sweep --configs configs/relu.yaml configs/relu_inverse.yaml configs/square.yaml "
    "configs/square_inverse.yaml configs/index.yaml configs/index_inverse.yaml --seeds 0 1 2 "
    "--out-root data/results/tasks"
)

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


def _record(folder: Path) -> dict | None:
    """The run record of one run folder (None when there is none); damaged: UserInputError."""
    from ..iochecks import read_run_record

    path = folder / "run_record.json"
    return read_run_record(path) if path.exists() else None


def _status(folder: Path) -> str | None:
    from ..iochecks import record_status

    record = _record(folder)
    return None if record is None else record_status(record)


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def config_differences(recorded: Any, wanted: dict) -> list[str]:
    """``key: recorded -> wanted`` for every config value that differs (dotted keys)."""
    if not isinstance(recorded, dict):
        return [f"(no config recorded) -> {len(_flat(wanted))} settings"]
    old, new = _flat(recorded), _flat(wanted)
    return [
        f"{k} {old.get(k, '(unset)')!r} -> {new.get(k, '(unset)')!r}"
        for k in sorted(old.keys() | new.keys())
        if old.get(k) != new.get(k)
    ]


def plan(config: dict[str, Any]) -> list[dict[str, Any]]:
    """Validate a sweep before anything is trained or written; one entry per (config, seed).

    Each entry: ``config`` (stem), ``seed``, ``folder``, ``run_config`` and ``reuse`` (True when the
    folder holds a successful run of exactly this config). Raises UserInputError for a bad config,
    an output root that cannot be written, a damaged run record or evaluation, a run in progress,
    or a finished run of *another* config in the folder this one needs (never silently reused).
    """
    from ..errors import UserInputError
    from ..iochecks import check_output_root, read_json, record_status
    from .train import load_config

    out_root = check_output_root(Path(config.get("out_root", "data/results/tasks")), "--out-root")
    seeds = list(dict.fromkeys(config.get("seeds", [0])))
    stems: dict[str, str] = {}
    for p in config["configs"]:
        stem = Path(p).stem
        if stem in stems and stems[stem] != str(p):
            raise UserInputError(
                f"--configs {stems[stem]} and {p} share the name {stem!r}: their runs would share "
                f"{out_root / stem}; rename one"
            )
        stems[stem] = str(p)
    loaded = [(stem, load_config(p, config.get("overrides"))) for stem, p in stems.items()]
    for record in sorted(out_root.glob("*/seed*/run_record.json")):  # damage anywhere breaks the summary
        if record_status(_record(record.parent)) == "success":
            read_json(record.parent / "evaluation.json", "evaluation")
    entries = []
    for stem, cfg in loaded:
        for seed in seeds:
            folder = out_root / stem / f"seed{seed}"
            run_cfg = json.loads(json.dumps(cfg))
            run_cfg["training"]["seed"] = seed
            if folder.exists() and not folder.is_dir():
                raise UserInputError(
                    f"{folder} is a file where the run folder of {stem} seed {seed} goes; move it away"
                )
            record = _record(folder) if folder.is_dir() else None
            status = None if record is None else record_status(record)
            if status == "running":
                raise UserInputError(
                    f"{folder} holds a run still in progress (pid {record.get('pid')}); wait for it "
                    "or choose another --out-root"
                )
            reuse = status == "success"
            if reuse:
                diff = config_differences((record.get("parameters") or {}).get("config"), run_cfg)
                if diff:
                    raise UserInputError(
                        f"{folder} holds a finished run of another config ({'; '.join(diff[:3])}"
                        f"{'; ...' if len(diff) > 3 else ''}); choose another --out-root or move it away"
                    )
            entries.append(
                {
                    "config": stem,
                    "seed": seed,
                    "folder": folder,
                    "run_config": run_cfg,
                    "reuse": reuse,
                    "status": status,
                }
            )
    return entries


def run(config: dict[str, Any]) -> dict[str, Any]:
    """Train configs x seeds; returns {"runs": [rows], "out_root": ...} (also written to summary.json).

    ``config`` keys: ``configs`` (YAML paths), ``seeds`` (ints), ``overrides`` (``--set`` strings
    applied to every run), ``out_root``, ``keep_checkpoints`` (bool). Everything is validated by
    :func:`plan` first. A folder holding a successful run of the same config is read, not retrained;
    one of a different config is refused; a failed, interrupted or partial one is moved aside.
    """
    from ..runrecord import atomic_write_json, utc_now
    from .train import train

    out_root = Path(config.get("out_root", "data/results/tasks"))
    entries = plan(config)
    rows = []
    for entry in entries:
        folder = entry["folder"]
        if not entry["reuse"]:
            if folder.exists():
                stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
                folder.rename(folder.with_name(f"{folder.name}.{entry['status'] or 'partial'}-{stamp}"))
            train(entry["run_config"], folder)
            if not config.get("keep_checkpoints"):
                (folder / "model.safetensors").unlink(missing_ok=True)
        result = json.loads((folder / "evaluation.json").read_text())
        rows.append({"config": entry["config"], **{k: result.get(k) for k in SUMMARY_KEYS}})
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


def load_run(folder: str | Path) -> dict:
    """One saved training run (a ``seed<k>/`` folder of the sweep, or a model in ``data/models/``).

    Returns ``{"evaluation", "curves", "run_record"}``; raises FileNotFoundError naming the missing
    file and ValueError when the run record does not say "success".
    """
    folder = Path(folder)
    out = {}
    for key, name in (
        ("evaluation", "evaluation.json"),
        ("curves", "curves.json"),
        ("run_record", "run_record.json"),
    ):
        path = folder / name
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: {folder} is not a complete saved training run")
        out[key] = json.loads(path.read_text())
    status = out["run_record"].get("status")
    if status != "success":
        raise ValueError(f"{folder / 'run_record.json'} says status {status!r}, not 'success'")
    return out


def load_committed(out_root: str | Path = "data/results/tasks"):
    """(results, curves) of the committed sweep that chapter 30 reads, in every build (book and CI).

    Raises FileNotFoundError naming the regeneration command when ``out_root`` holds no successful
    run, rather than letting the chapter skip its book-scale sections.
    """
    results = load_results(out_root)
    if results.empty:
        raise FileNotFoundError(
            f"no committed results under {out_root}: regenerate them with `{SWEEP_COMMAND}` "
            "(see data/results/tasks/README.md)"
        )
    return results, load_curves(out_root)
