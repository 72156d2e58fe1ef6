"""Book-scale experiment: every task, order and length, several seeds (chapter 30_synthetic_tasks).

``run(config) -> results`` trains each YAML config with each seed and writes ``out_root/summary.json``
(one row per run). Two layouts, both read by :func:`load_results`:

* ``out_root/<config stem>/n<k>/seed<s>/`` when the sweep sets the length (``--n 10 20 30``, or the
  ``n`` of a group in a ``--plan`` file): the length sweep of issue 16;
* ``out_root/<config stem>/seed<s>/`` when it does not (the config's own ``task.n``): the first build,
  at one length.

As soon as a config has a run in the first layout, its runs in the second are superseded (the
chapter reads a config's runs from one budget only; :func:`superseded_runs` lists them).

Forward and inverse of one task and length are compared arm against arm, so :func:`plan` refuses a
sweep where ``<stem>`` and ``<stem>_inverse`` at one length differ in anything but the order (model,
data, optimiser, budget), planned or already on disk, and one where a BART config and the Qwen2
config of the same task, order and length differ in budget or batch. It refuses a length whose
sequences do not fit the model's ``max_position_embeddings`` before anything is trained.

The sweep is resumable: a run whose record says "success" is read, not retrained; an interrupted or
failed run is moved aside (never overwritten) and retrained. The weights are dropped unless
``keep_checkpoints`` (the curves, evaluation, every generation and the run record stay). Regenerate
the results of the chapter with :data:`SWEEP_COMMAND`.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path
from typing import Any

# The length sweep of chapter 30 (issue 16): one plan file names every config, length and budget.
PLAN_FILE = "configs/sweeps/length.yaml"
SWEEP_COMMAND = f"qwen-anatomy tasks sweep --plan {PLAN_FILE}"
# The first build (one length per task, the flat layout), kept for the results it made.
FIRST_BUILD_COMMAND = (
    "qwen-anatomy tasks sweep --configs configs/relu.yaml configs/relu_inverse.yaml configs/square.yaml "
    "configs/square_inverse.yaml configs/index.yaml configs/index_inverse.yaml --seeds 0 1 2 "
    "--out-root data/results/tasks"
)
DEFAULT_SEEDS = (0, 1, 2)
INVERSE_SUFFIX = "_inverse"
# What may differ between the forward and the inverse config of one task and length.
ORDER_KEYS = ("task.order", "task.permutation")
# What a BART config must share with the Qwen2 config of the same task, order and length.
BUDGET_KEYS = (
    "training.max_steps",
    "training.epochs",
    "training.stop_after_steps",
    "training.batch_size",
    "task.train_samples",
    "task.test_samples",
)
_N_FOLDER = re.compile(r"n(\d+)")

SUMMARY_KEYS = (
    "task",
    "n",
    "order",
    "model_type",
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


# -- the plan ---------------------------------------------------------------------------------------
PLAN_KEYS = ("description", "out_root", "seeds", "groups")
GROUP_KEYS = ("name", "configs", "n", "set")


def read_plan(path: str | Path) -> dict[str, Any]:
    """A sweep plan file (YAML): ``groups`` (each: ``configs``, optional ``n`` lengths and ``set``
    overrides applied to every config of the group), optional ``seeds``, ``out_root`` and
    ``description``. Returns the ``config`` mapping :func:`run` takes; config paths are read
    relative to the current folder (the repository root), like ``--configs``."""
    import yaml

    from ..errors import UserInputError
    from ..iochecks import read_text

    path = Path(path)
    text = read_text(path, "--plan", f"see {PLAN_FILE}")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise UserInputError(f"--plan {path} is not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(data, dict) or not isinstance(data.get("groups"), list) or not data["groups"]:
        raise UserInputError(
            f"--plan {path} must be a mapping with a non-empty list 'groups' (see {PLAN_FILE})"
        )
    unknown = sorted(set(data) - set(PLAN_KEYS))
    if unknown:
        raise UserInputError(f"--plan {path}: unknown key(s) {unknown}; known: {list(PLAN_KEYS)}")
    groups = []
    for i, group in enumerate(data["groups"]):
        where = f"--plan {path}, group {i + 1}"
        if not isinstance(group, dict):
            raise UserInputError(f"{where} must be a mapping with 'configs' (and 'n', 'set')")
        unknown = sorted(set(group) - set(GROUP_KEYS))
        if unknown:
            raise UserInputError(f"{where}: unknown key(s) {unknown}; known: {list(GROUP_KEYS)}")
        configs = group.get("configs")
        if not isinstance(configs, list) or not configs or not all(isinstance(c, str) for c in configs):
            raise UserInputError(f"{where}: 'configs' must be a non-empty list of YAML paths")
        lengths = group.get("n")
        if lengths is not None and not (
            isinstance(lengths, list)
            and lengths
            and all(isinstance(k, int) and not isinstance(k, bool) and k > 0 for k in lengths)
        ):
            raise UserInputError(f"{where}: 'n' must be a list of positive integers, got {lengths!r}")
        overrides = group.get("set") or []
        if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
            raise UserInputError(f"{where}: 'set' must be a list of key=value strings")
        configs = [_config_path(c) for c in configs]
        groups.append({"name": group.get("name"), "configs": configs, "n": lengths, "set": overrides})
    out: dict[str, Any] = {"groups": groups}
    if "seeds" in data:
        seeds = data["seeds"]
        if not (
            isinstance(seeds, list)
            and seeds
            and all(isinstance(k, int) and not isinstance(k, bool) and k >= 0 for k in seeds)
        ):
            raise UserInputError(f"--plan {path}: 'seeds' must be a list of integers >= 0, got {seeds!r}")
        out["seeds"] = seeds
    if "out_root" in data:
        if not isinstance(data["out_root"], str):
            raise UserInputError(f"--plan {path}: 'out_root' must be a folder path")
        out["out_root"] = data["out_root"]
    return out


def _config_path(text: str) -> str:
    """A plan's config path: as given when it exists from the current folder, else under the
    repository root (so the book's plan works from any folder)."""
    from ..paths import REPO_ROOT

    path = Path(text)
    if path.is_absolute() or path.exists() or not (REPO_ROOT / path).exists():
        return text
    return str(REPO_ROOT / path)


def expected_runs(config: dict[str, Any]):
    """The runs a sweep names, as a DataFrame (config, n, seed): ``config`` as for :func:`plan`
    (e.g. ``read_plan(PLAN_FILE)``). A group without lengths reads each config's own ``task.n``."""
    import pandas as pd

    from .train import load_config

    seeds = list(dict.fromkeys(config.get("seeds") or DEFAULT_SEEDS))
    rows = []
    for group in _groups(config):
        for p in group["configs"]:
            lengths = group.get("n") or [load_config(p, group.get("set"))["task"]["n"]]
            rows += [{"config": Path(p).stem, "n": int(n), "seed": int(s)} for n in lengths for s in seeds]
    return pd.DataFrame(rows, columns=["config", "n", "seed"]).drop_duplicates(ignore_index=True)


def _groups(config: dict[str, Any]) -> list[dict[str, Any]]:
    """The sweep's groups: the plan's, or one group made of ``configs`` and ``lengths``."""
    if config.get("groups"):
        return config["groups"]
    return [{"name": None, "configs": list(config["configs"]), "n": config.get("lengths"), "set": []}]


def run_folder(out_root: Path, stem: str, seed: int, n: int | None) -> Path:
    """``out_root/<stem>/n<n>/seed<seed>`` (length set by the sweep) or ``out_root/<stem>/seed<seed>``."""
    return out_root / stem / f"seed{seed}" if n is None else out_root / stem / f"n{n}" / f"seed{seed}"


def _record_globs(out_root: Path) -> list[Path]:
    return sorted(out_root.glob("*/seed*/run_record.json")) + sorted(
        out_root.glob("*/n*/seed*/run_record.json")
    )


def _comparable(cfg: dict, drop: tuple[str, ...]) -> dict:
    return {k: v for k, v in _flat(cfg).items() if k not in drop}


def _differences(a: dict, b: dict) -> list[str]:
    return [
        f"{k} {a.get(k, '(unset)')!r} vs {b.get(k, '(unset)')!r}"
        for k in sorted(a.keys() | b.keys())
        if a.get(k) != b.get(k)
    ]


def partner_stem(stem: str) -> str:
    """``relu`` <-> ``relu_inverse``: the config of the other order of the same task."""
    return stem[: -len(INVERSE_SUFFIX)] if stem.endswith(INVERSE_SUFFIX) else stem + INVERSE_SUFFIX


def check_pairs(entries: list[dict[str, Any]], out_root: Path) -> None:
    """UserInputError when the forward and inverse runs of one task and length would differ in
    anything but the order: model, data, optimiser, budget (``training.seed`` aside, which differs
    only between seeds). The partner is the planned run, else a successful run on disk."""
    from ..errors import UserInputError
    from ..iochecks import record_status

    drop = (*ORDER_KEYS, "training.seed")
    planned = {(e["config"], e["length"]): e for e in entries}
    checked = set()
    for e in entries:
        other_stem = partner_stem(e["config"])
        key = frozenset({(e["config"], e["length"]), (other_stem, e["length"])})
        if key in checked:
            continue
        checked.add(key)
        other = planned.get((other_stem, e["length"]))
        if other is not None:
            other_cfg, where = other["run_config"], "planned"
        else:
            other_cfg = None
            for seed_folder in sorted(
                (out_root / other_stem / ("" if e["length"] is None else f"n{e['length']}")).glob("seed*")
            ):
                record = _record(seed_folder) if seed_folder.is_dir() else None
                if record is not None and record_status(record) == "success":
                    other_cfg = (record.get("parameters") or {}).get("config")
                    where = f"on disk in {seed_folder}"
                    break
            if not isinstance(other_cfg, dict):
                continue
        diff = _differences(_comparable(e["run_config"], drop), _comparable(other_cfg, drop))
        if diff:
            n = e["run_config"]["task"]["n"]
            raise UserInputError(
                f"{e['config']} and {other_stem} ({where}) at n={n} differ in {'; '.join(diff[:3])}"
                f"{'; ...' if len(diff) > 3 else ''}: forward and inverse of one task and length must share "
                "model, data and budget; make the configs equal but for task.order"
            )


def check_counterparts(entries: list[dict[str, Any]]) -> None:
    """UserInputError when a BART run and the Qwen2 run of the same task, order and length in this
    sweep differ in budget or batch (:data:`BUDGET_KEYS`): the architectures are compared at one budget."""
    from ..errors import UserInputError

    qwen = {}
    for e in entries:
        t = e["run_config"]["task"]
        key = (t["name"], t["n"], t["m"], t["order"])
        if e["run_config"]["model"]["type"] == "qwen2":
            qwen.setdefault(key, e)
    for e in entries:
        t = e["run_config"]["task"]
        other = qwen.get((t["name"], t["n"], t["m"], t["order"]))
        if e["run_config"]["model"]["type"] != "bart" or other is None:
            continue
        a, b = _flat(e["run_config"]), _flat(other["run_config"])
        diff = [f"{k} {a.get(k)!r} vs {b.get(k)!r}" for k in BUDGET_KEYS if a.get(k) != b.get(k)]
        if diff:
            raise UserInputError(
                f"{e['config']} (BART) and {other['config']} (Qwen2) at n={t['n']} differ in {'; '.join(diff)}: "
                "the two architectures must get the same step budget, batch and data; set them equal"
            )


def plan(config: dict[str, Any]) -> list[dict[str, Any]]:
    """Validate a sweep before anything is trained or written; one entry per (config, length, seed).

    ``config``: ``configs`` (YAML paths) and ``lengths`` (None: each config's own n), or ``groups``
    (from :func:`read_plan`); ``seeds``; ``overrides`` (``--set`` strings applied to every run after a
    group's own); ``out_root``; ``only_groups`` (1-based group numbers to train; every group is
    still validated, and a run in progress in another group is left to its process) and
    ``only_lengths`` (train only these of the chosen groups' lengths; likewise). Each entry:
    ``config`` (stem), ``length`` (the n the sweep set, or None), ``seed``, ``folder``,
    ``run_config``, ``reuse`` (True when the folder holds a successful run of exactly this config),
    ``group`` and ``selected``. Raises UserInputError for a bad config or length (the
    sequences must fit ``max_position_embeddings``), an output root that cannot be written, a
    damaged run record or evaluation, a run in progress, a finished run of *another* config in the
    folder this one needs (never silently reused), a forward/inverse pair that differs in model or
    budget (:func:`check_pairs`) or a BART run whose budget differs from its Qwen2 counterpart's
    (:func:`check_counterparts`).
    """
    from ..errors import UserInputError
    from ..iochecks import check_output_root, read_json, record_status
    from .train import load_config

    out_root = check_output_root(Path(config.get("out_root") or "data/results/tasks"), "--out-root")
    seeds = list(dict.fromkeys(config.get("seeds") or DEFAULT_SEEDS))
    stems: dict[str, str] = {}
    wanted: dict[tuple[str, int | None], tuple[str, list[str], int]] = {}
    groups = _groups(config)
    only = set(config.get("only_groups") or range(1, len(groups) + 1))
    if not only <= set(range(1, len(groups) + 1)):
        raise UserInputError(
            f"--group {sorted(only - set(range(1, len(groups) + 1)))}: the plan has groups 1 to {len(groups)}"
        )
    only_lengths = set(config.get("only_lengths") or [])
    planned_lengths = {n for i, g in enumerate(groups, start=1) if i in only for n in g.get("n") or []}
    if only_lengths - planned_lengths:
        raise UserInputError(
            f"--n {sorted(only_lengths - planned_lengths)}: the chosen groups of the plan have lengths "
            f"{sorted(planned_lengths) or 'none'}"
        )
    for index, group in enumerate(groups, start=1):
        for p in group["configs"]:
            stem = Path(p).stem
            if stem in stems and stems[stem] != str(p):
                raise UserInputError(
                    f"--configs {stems[stem]} and {p} share the name {stem!r}: their runs would share "
                    f"{out_root / stem}; rename one"
                )
            stems[stem] = str(p)
            for n in group.get("n") or [None]:
                overrides = [*group.get("set", []), *(config.get("overrides") or [])]
                overrides += [] if n is None else [f"task.n={n}"]
                if (stem, n) in wanted and wanted[(stem, n)][1] != overrides:
                    raise UserInputError(
                        f"{stem}{'' if n is None else f' at n={n}'} is planned twice with different "
                        "settings; keep one group per config and length"
                    )
                wanted[(stem, n)] = (str(p), overrides, wanted.get((stem, n), (0, 0, index))[2])
    loaded = [(stem, n, index, load_config(p, o)) for (stem, n), (p, o, index) in wanted.items()]
    for record in _record_globs(out_root):  # damage anywhere breaks the summary
        if record_status(_record(record.parent)) == "success":
            read_json(record.parent / "evaluation.json", "evaluation")
    entries = []
    for stem, n, index, cfg in loaded:
        selected = index in only and (not only_lengths or n in only_lengths)
        for seed in seeds:
            folder = run_folder(out_root, stem, seed, n)
            run_cfg = json.loads(json.dumps(cfg))
            run_cfg["training"]["seed"] = seed
            if folder.exists() and not folder.is_dir():
                raise UserInputError(
                    f"{folder} is a file where the run folder of {stem} seed {seed} goes; move it away"
                )
            record = _record(folder) if folder.is_dir() else None
            status = None if record is None else record_status(record)
            if status == "running" and selected:  # other groups or lengths may be running elsewhere
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
                    "length": n,
                    "seed": seed,
                    "folder": folder,
                    "run_config": run_cfg,
                    "reuse": reuse,
                    "status": status,
                    "group": index,
                    "selected": selected,
                }
            )
    check_pairs(entries, out_root)
    check_counterparts(entries)
    return entries


def _taken_meanwhile(entry: dict) -> str | None:
    """Re-read a run folder just before training it: "success" when another process finished the same
    config there since the plan was made (reused), "running" when one is training it now (left to it,
    with a line saying so); None otherwise. A finished run of another config is refused as in :func:`plan`."""
    from ..errors import UserInputError
    from ..iochecks import record_status

    folder = entry["folder"]
    record = _record(folder) if folder.is_dir() else None
    status = None if record is None else record_status(record)
    if status == "success":
        diff = config_differences((record.get("parameters") or {}).get("config"), entry["run_config"])
        if diff:
            raise UserInputError(
                f"{folder} now holds a finished run of another config ({'; '.join(diff[:3])}); "
                "choose another --out-root or move it away"
            )
        print(
            f"{folder}: finished meanwhile by another process (pid {record.get('pid')}); reused", flush=True
        )
        return "success"
    if status == "running":
        print(f"{folder}: being trained by another process (pid {record.get('pid')}); left to it", flush=True)
        return "running"
    return None


def run(config: dict[str, Any], progress: bool = True) -> dict[str, Any]:
    """Train configs x lengths x seeds; returns {"runs": [rows], "out_root": ...} (also written to
    summary.json).

    ``config`` keys: ``configs`` (YAML paths) and ``lengths`` (ints, optional), or ``groups`` (a plan,
    :func:`read_plan`); ``seeds`` (ints), ``overrides`` (``--set`` strings applied to every run),
    ``out_root``, ``keep_checkpoints`` (bool). Everything is validated by :func:`plan` first. A folder
    holding a successful run of the same config is read, not retrained; one of a different config is
    refused; a failed, interrupted or partial one is moved aside.
    """
    from ..progress import progress_bar
    from ..runrecord import atomic_write_json, utc_now
    from .train import train

    out_root = Path(config.get("out_root") or "data/results/tasks")
    entries = [e for e in plan(config) if e["selected"]]  # the whole plan is validated, the chosen groups run
    # Forward and inverse of one length and seed one after the other: a sweep cut short leaves pairs.
    entries.sort(key=lambda e: (e["group"], e["length"] or 0, e["seed"]))
    rows = []
    todo = sum(not e["reuse"] for e in entries)
    bar = progress_bar(total=todo, desc="task sweep runs", unit="run", enabled=progress and todo > 0)
    for entry in entries:
        folder = entry["folder"]
        if not entry["reuse"]:
            taken = _taken_meanwhile(entry)  # another process (a part of the same plan) got there first
            if taken == "running":
                bar.update(1)
                continue
            entry["reuse"] = taken == "success"
        if not entry["reuse"]:
            if folder.exists():
                stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
                folder.rename(folder.with_name(f"{folder.name}.{entry['status'] or 'partial'}-{stamp}"))
            bar.set_postfix_str(
                f"{entry['config']} n={entry['run_config']['task']['n']} seed {entry['seed']}"
            )
            train(entry["run_config"], folder)
            if not config.get("keep_checkpoints"):
                (folder / "model.safetensors").unlink(missing_ok=True)
            bar.update(1)
        result = json.loads((folder / "evaluation.json").read_text())
        rows.append({"config": entry["config"], **{k: result.get(k) for k in SUMMARY_KEYS}})
    bar.close()
    # The summary covers every successful run on disk (sweeps may run in parallel or in parts).
    every = load_results(out_root).to_dict("records")
    summary = {"created": utc_now(), "out_root": str(out_root), "runs": rows, "all_runs": every}
    atomic_write_json(out_root / "summary.json", summary)
    return summary


# -- reading the results ----------------------------------------------------------------------------
def _successful_runs(out_root: Path) -> tuple[list[dict], list[Path]]:
    """(runs, superseded folders): every run folder of either layout whose record says "success",
    as ``{"config", "layout", "folder", "evaluation"}``; a config's flat runs are superseded by its
    runs in ``n<k>/`` folders."""
    found = []
    for ev in sorted(out_root.glob("*/seed*/evaluation.json")):
        found.append((ev, "flat"))
    for ev in sorted(out_root.glob("*/n*/seed*/evaluation.json")):
        if _N_FOLDER.fullmatch(ev.parent.parent.name):
            found.append((ev, "by n"))
    runs = []
    for ev, layout in found:
        folder = ev.parent
        if not re.fullmatch(r"seed\d+", folder.name) or _status(folder) != "success":
            continue
        config = (folder.parent if layout == "flat" else folder.parent.parent).name
        runs.append(
            {"config": config, "layout": layout, "folder": folder, "evaluation": json.loads(ev.read_text())}
        )
    by_n = {r["config"] for r in runs if r["layout"] == "by n"}
    superseded = [r["folder"] for r in runs if r["layout"] == "flat" and r["config"] in by_n]
    kept = [r for r in runs if not (r["layout"] == "flat" and r["config"] in by_n)]
    return kept, superseded


def superseded_runs(out_root: str | Path = "data/results/tasks") -> list[Path]:
    """The successful flat-layout runs (``<config>/seed<k>/``) that a length sweep of the same
    config (``<config>/n<k>/seed<s>/``) supersedes; the loaders skip them."""
    return _successful_runs(Path(out_root))[1]


def _model_type(evaluation: dict) -> str:
    return evaluation.get("model_type") or "qwen2"


def load_results(out_root: str | Path = "data/results/tasks", model_type: str | None = None):
    """The per-run evaluations under ``out_root`` as a pandas DataFrame (one row per config x length x
    seed), both layouts, superseded flat runs left out (:func:`superseded_runs`).

    Reads every ``evaluation.json`` whose run record says "success", so a partly finished sweep is
    shown as far as it went. Columns: ``config``, :data:`SUMMARY_KEYS`, ``layout`` ("flat" or
    "by n") and ``folder``. ``model_type``: keep only "qwen2" or "bart" runs (None: all).
    """
    import pandas as pd

    rows = []
    for run in _successful_runs(Path(out_root))[0]:
        ev = run["evaluation"]
        if model_type is not None and _model_type(ev) != model_type:
            continue
        row = {"config": run["config"], **{k: ev.get(k) for k in SUMMARY_KEYS}}
        row.update(model_type=_model_type(ev), layout=run["layout"], folder=str(run["folder"]))
        rows.append(row)
    return pd.DataFrame(rows)


def load_curves(
    out_root: str | Path = "data/results/tasks", model_type: str | None = None
) -> dict[tuple[str, int, int], dict]:
    """{(config, n, seed): curves.json contents} for the runs :func:`load_results` reads."""
    curves = {}
    for run in _successful_runs(Path(out_root))[0]:
        ev = run["evaluation"]
        if model_type is not None and _model_type(ev) != model_type:
            continue
        path = run["folder"] / "curves.json"
        if path.is_file():
            seed = int(run["folder"].name.removeprefix("seed"))
            curves[(run["config"], int(ev["n"]), seed)] = json.loads(path.read_text())
    return curves


def seed_table(frame):
    """Mean, standard deviation, min and max of exact match per task and order, with the seed count
    (and per model type first, when the frame holds more than one)."""
    keys = ["task", "n", "order"]
    if "model_type" in frame and frame["model_type"].nunique() > 1:
        keys = ["model_type", *keys]
    grouped = frame.groupby(keys)["exact_match"]
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


def load_committed(out_root: str | Path = "data/results/tasks", model_type: str | None = "qwen2"):
    """(results, curves) of the committed sweep that chapter 30 reads, in every build (book and CI).

    ``model_type``: the Qwen2 runs by default (the book's model; BART runs are read with
    ``model_type="bart"`` or None for all). Both layouts are read (:func:`load_results`). Raises
    FileNotFoundError naming the regeneration command when ``out_root`` holds no successful run,
    rather than letting the chapter skip its book-scale sections.
    """
    results = load_results(out_root, model_type)
    if results.empty:
        raise FileNotFoundError(
            f"no committed results under {out_root}: regenerate them with `{SWEEP_COMMAND}` "
            "(see data/results/tasks/README.md)"
        )
    return results, load_curves(out_root, model_type)
