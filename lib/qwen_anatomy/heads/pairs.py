"""Resumable (θ0, θ1-per-seed) pipelines of chapter 40: stages, plan check, reading the results.

Both book-scale pairs (:mod:`qwen_anatomy.heads.synthetic`, :mod:`qwen_anatomy.heads.realpair`)
are one command that runs a fixed list of stages into one results folder::

    OUT/plan.json              what the command was asked to do (a rerun with another plan is refused)
    OUT/theta0/                (synthetic pair) θ0 trained by the project
    OUT/theta0-heads/          θ0 measured once: `qwen-anatomy heads θ0 --data D --out ...`
    OUT/seed-<s>/model/        θ1 of seed s (the fine-tuned checkpoint, with its own run record)
    OUT/seed-<s>/heads/        `qwen-anatomy heads θ0 --data D --finetuned θ1 --theta0-from OUT/theta0-heads`
    OUT/agreement-seeds-<...>/ `qwen-anatomy heads agree OUT/seed-*/heads`
    OUT/summary.json           written once every stage has succeeded (with the power record)
    OUT/records/<UTC>.json     one run record per invocation (which stages ran, which were reused)

A stage whose folder holds a run record saying "success" is reused, never recomputed; a folder of a
failed or interrupted stage is moved aside whole (``<name>.failed-<UTC>``) by the stage's own output
check and the stage runs again; a stage whose recorded settings differ from the plan is refused.
Seeds may be added later: the plan without its seeds must match, and the agreement folder is named
by the seeds it compares. :func:`load_pair_results` reads a finished folder into the dict that
chapter 40's report functions take (the same shape as :func:`qwen_anatomy.heads.experiment.load_results`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UserInputError

PLAN_FILE = "plan.json"
SUMMARY_FILE = "summary.json"
HEADS_STAGE = "heads"
THETA0_HEADS = "theta0-heads"


def agreement_dir(out: Path, seeds) -> Path:
    return Path(out) / ("agreement-seeds-" + "-".join(str(s) for s in sorted(seeds)))


def stage_status(folder: Path, record_name: str = "run_record.json") -> str | None:
    """None (nothing there), or the status of the folder's run record as readers report it
    ("success", "failed", "incomplete", "running"); "partial" for a folder without a record."""
    from ..iochecks import read_run_record, record_status

    folder = Path(folder)
    if not folder.exists():
        return None
    path = folder / record_name
    if not path.is_file():
        return "partial" if any(folder.iterdir()) else None
    return record_status(read_run_record(path))


def _flat(tree: Any, prefix: str = "") -> dict:
    if not isinstance(tree, dict):
        return {prefix.rstrip("."): tree}
    out = {}
    for key, value in tree.items():
        out.update(_flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return out


def differences(recorded: Any, wanted: Any) -> list[str]:
    """``key: recorded -> wanted`` for every (dotted) value that differs."""
    old, new = _flat(json.loads(json.dumps(recorded))), _flat(json.loads(json.dumps(wanted)))
    return [
        f"{k}: {old.get(k, '(unset)')!r} -> {new.get(k, '(unset)')!r}"
        for k in sorted(old.keys() | new.keys())
        if old.get(k) != new.get(k)
    ]


def check_plan(out: Path, plan: dict, command: str) -> bool:
    """True when ``out`` already holds this plan (resume); False for a new folder. UserInputError
    when it holds another plan (seeds aside), another kind of results, or is a file."""
    from ..iochecks import read_json

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserInputError(f"--out {out} is a file, not a directory; give a results folder")
    path = out / PLAN_FILE
    if not path.is_file():
        if out.is_dir() and any(out.iterdir()):
            raise UserInputError(
                f"--out {out} already holds other files and no {PLAN_FILE}: not a folder of this command; "
                "choose a new folder"
            )
        return False
    old = read_json(path, "plan file")
    if not isinstance(old, dict) or old.get("command") != command:
        raise UserInputError(f"--out {out} holds the plan of another command ({path}); choose another folder")
    drop = ("seeds", "created")
    diff = differences(
        {k: v for k, v in old.items() if k not in drop}, {k: v for k, v in plan.items() if k not in drop}
    )
    if diff:
        shown = "; ".join(diff[:4]) + (f"; and {len(diff) - 4} more" if len(diff) > 4 else "")
        raise UserInputError(
            f"--out {out} was started with another configuration ({shown}): finish it with the same "
            "settings or choose a new folder"
        )
    return True


@dataclass
class Stage:
    """One step of a pipeline: ``run()`` writes ``folder``; ``recorded()`` reads back from a finished
    folder the settings to compare with ``wanted`` (None: nothing to compare)."""

    name: str
    folder: Path
    run: Callable[[], None]
    wanted: Any = None
    recorded: Callable[[Path], Any] | None = None
    record_name: str = "run_record.json"


@dataclass
class PipelineReport:
    ran: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)


def run_stages(stages: list[Stage], say: Callable[[str], None] = print) -> PipelineReport:
    """Run each stage that has not succeeded yet, in order; reuse those that have (after checking
    their recorded settings); refuse a stage still running in another process."""
    report = PipelineReport()
    for stage in stages:
        status = stage_status(stage.folder, stage.record_name)
        if status == "success":
            if stage.recorded is not None and stage.wanted is not None:
                diff = differences(stage.recorded(stage.folder), stage.wanted)
                if diff:
                    raise UserInputError(
                        f"{stage.folder} holds a finished {stage.name} made with other settings "
                        f"({'; '.join(diff[:3])}): move it away or choose a new --out"
                    )
            report.reused.append(stage.name)
            say(f"[reuse] {stage.name}: {stage.folder}")
            continue
        if status == "running":
            raise UserInputError(f"{stage.folder} belongs to a stage still running; wait for it to finish")
        if status == "partial":  # no record at all: set aside whole, never overwritten
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
            stage.folder.rename(stage.folder.with_name(f"{stage.folder.name}.partial-{stamp}"))
        say(f"[run] {stage.name}: {stage.folder}")
        t = time.perf_counter()
        stage.run()
        report.seconds[stage.name] = round(time.perf_counter() - t, 2)
        if stage_status(stage.folder, stage.record_name) != "success":
            raise RuntimeError(f"stage {stage.name} did not finish: see {stage.folder}")
        report.ran.append(stage.name)
    return report


def cli(argv: list[str]) -> None:
    """``qwen-anatomy ARGV`` in-process; any non-zero exit becomes an error naming the command."""
    from ..cli import main

    code = main(argv)
    if code != 0:
        raise RuntimeError(f"`qwen-anatomy {' '.join(argv)}` exited with code {code}")


def heads_parameters(argv: list[str]) -> dict:
    """The parameters `qwen-anatomy heads ARGV` records (for comparing a finished stage)."""
    from ..cli import build_parser

    args = build_parser().parse_args(argv)
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "func"}


def recorded_parameters(folder: Path, name: str = "run_record.json", key: str | None = None) -> Any:
    record = json.loads((Path(folder) / name).read_text())
    params = record.get("parameters", {})
    return params.get(key) if key else params


def heads_stage(name: str, folder: Path, argv: list[str]) -> Stage:
    """A `qwen-anatomy heads` stage whose recorded parameters must equal those of ``argv``."""
    return Stage(
        name,
        folder,
        lambda: cli(argv),
        wanted=heads_parameters(argv),
        recorded=lambda f: recorded_parameters(f),
    )


def invocation_record(out: Path, command: str, plan: dict):
    from ..runrecord import RunRecord, utc_now

    stamp = utc_now().replace(":", "").replace("-", "")[:15] + "Z"
    path = Path(out) / "records" / f"{stamp}.json"
    k = 1
    while path.exists():
        path = path.with_name(f"{stamp}-{k}.json")
        k += 1
    return RunRecord(path, command, parameters=plan, seed=plan.get("seeds"))


# -- reading a finished folder ----------------------------------------------------------------------
def pair_status(out: str | Path) -> dict:
    """What a results folder holds: {"exists", "complete", "plan", "stages": {name: status}}."""
    out = Path(out)
    info: dict[str, Any] = {"folder": str(out), "exists": out.is_dir(), "complete": False, "stages": {}}
    if not (out / PLAN_FILE).is_file():
        return info
    plan = json.loads((out / PLAN_FILE).read_text())
    info["plan"] = plan
    synthetic = plan.get("kind") == "synthetic"
    names = ["theta0" if synthetic else "data", THETA0_HEADS]
    for s in plan.get("seeds", []):
        names += [f"seed-{s}/{'model' if synthetic else 'finetune'}", f"seed-{s}/{HEADS_STAGE}"]
    if len(plan.get("seeds", [])) >= 2:  # one seed has no agreement stage
        names.append(agreement_dir(out, plan["seeds"]).name)
    for name in names:
        info["stages"][name] = stage_status(out / name)
    info["complete"] = (out / SUMMARY_FILE).is_file() and all(v == "success" for v in info["stages"].values())
    return info


def _agreement_from_cli(agreement_json: dict) -> dict:
    """`heads agree`'s agreement.json as the {quantity: {...}} mapping chapter 40's report reads.
    Quantities identical in every run (θ0's, measured once for all seeds) are left out: their ρ = 1
    says nothing about seeds."""
    return {
        row["quantity"]: {
            "n_seeds": row["n_runs"],
            "n_heads": row["n_heads"],
            "mean_spearman": row["mean_spearman"],
            "min_spearman": row["min_spearman"],
            "k": row["k"],
            "mean_topk_overlap": row["mean_topk_overlap"],
            "topk_chance": row["topk_chance"],
        }
        for row in agreement_json["quantities"]
        if not row.get("identical")
    }


def load_pair_results(out: str | Path) -> dict:
    """A finished pipeline folder as {"summary", "seeds": {s: {m0, m1, update, stats}}, "agreement",
    "run_record", "plan"}; FileNotFoundError naming the command when it is not finished."""
    from .analysis import Measurements

    out = Path(out)
    status = pair_status(out)
    if not status["complete"]:
        missing = [k for k, v in status["stages"].items() if v != "success"] or [SUMMARY_FILE]
        command = status.get("plan", {}).get("regenerate", "the command in data/results/heads/README.md")
        raise FileNotFoundError(
            f"{out} holds no finished pair ({', '.join(missing[:3])} not done); run `{command}`"
        )
    summary = json.loads((out / SUMMARY_FILE).read_text())
    seeds = {}
    for s in status["plan"]["seeds"]:
        d = out / f"seed-{s}" / HEADS_STAGE
        seeds[int(s)] = {
            "m0": Measurements.from_npz(d / "theta0.npz"),
            "m1": Measurements.from_npz(d / "theta1.npz"),
            "update": dict(np.load(d / "update.npz")),
            "stats": json.loads((d / "stats.json").read_text()),
        }
    agree_file = agreement_dir(out, status["plan"]["seeds"]) / "agreement.json"
    agree = json.loads(agree_file.read_text()) if agree_file.is_file() else {"quantities": []}
    records = sorted((out / "records").glob("*.json"))
    return {
        "summary": summary,
        "seeds": seeds,
        "agreement": _agreement_from_cli(agree),
        "run_record": json.loads(records[-1].read_text()) if records else {},
        "plan": status["plan"],
    }


def estimate_table(rows: list[dict]) -> str:
    """A fixed-width table of stage costs: stage, count, seconds each, hours in total."""
    lines = [f"{'stage':<42} {'count':>5} {'s each':>9} {'hours':>7}"]
    total = 0.0
    for r in rows:
        hours = r["count"] * r["seconds"] / 3600
        total += hours
        lines.append(f"{r['stage']:<42} {r['count']:>5} {r['seconds']:>9.0f} {hours:>7.2f}")
    lines.append(f"{'total':<42} {'':>5} {'':>9} {total:>7.2f}")
    return "\n".join(lines)


def add_cost_flags(parser, estimate_help: str) -> None:
    """``--projection`` (projected hours from the recorded measurements) and ``--estimate`` (measure)."""
    parser.add_argument(
        "--projection",
        action="store_true",
        help="print the projected hours per stage from the recorded measurements",
    )
    parser.add_argument("--estimate", action="store_true", help=estimate_help)


def pair_cli(args: dict, make_config, stage_costs, estimate, run, done, estimate_kwargs=None) -> int:
    """The shared body of a pair command (``heads.synthetic``, ``heads.realpair``): build the
    configuration from the parsed ``args``, then print the projection, the estimate, or run and print
    ``done(cfg, summary, out)``. Bad input: one line on stderr, exit 2."""
    import sys

    projection, do_estimate, out = args.pop("projection"), args.pop("estimate"), args.pop("out")
    args["seeds"] = tuple(args["seeds"])
    try:
        cfg = make_config(**args)
        cfg.validate()  # bad input is refused before a projection, an estimate or a run
        if projection:
            print(estimate_table(stage_costs(cfg)))
            return 0
        if do_estimate:
            print(estimate_table(estimate(cfg, **(estimate_kwargs or {}))))
            return 0
        summary = run(cfg, out)
    except UserInputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(done(cfg, summary, out))
    return 0
