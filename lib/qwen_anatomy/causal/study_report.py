"""Tables, intervals, verdicts and the calibration figure of a saved CausalQwen study
(chapter 50_causal_heads, issue 14; the runs come from :mod:`qwen_anatomy.causal.study`).

The rules behind the words (tested on hand-made inputs in ``tests/test_causal_study.py``):

* **Intervals** are over seeds: mean and the :data:`CONFIDENCE` t-interval of one value per seed
  (:func:`qwen_anatomy.tasks.verdicts.seed_interval`). Every seed is scored on the same fixed evaluation
  texts, so an interval measures the training's randomness (initialisation, batch order), not the
  sampling error of the evaluation set. One seed gives no interval and no verdict.
* **Against a trivial reference.** The references (the training mean; copy-the-last-number) are the
  same numbers for every seed (one set of training texts, one evaluation set), so they carry no
  interval. An arm *beats* the best trivial reference of a group when its whole MAE interval lies below
  the reference's MAE (the margin, reference minus mean, is outside the interval); it is *worse* when
  the whole interval lies above; otherwise *no difference is shown*.
* **Arm against arm** (:func:`compare_arms`): a difference is shown when the two intervals do not
  overlap.
* **Calibration.** The probability integral transform (PIT) of a true value v under a predicted law
  F is F(v); v lies inside the central q-interval exactly when |PIT - 1/2| <= q/2. A calibrated
  predictor covers a fraction q of the truths at every level q; the oracle of the noisy template (the
  true weight and the scale's stated sigma) is calibrated by construction. The calibration error is
  the mean |observed - nominal| over :data:`LEVELS`. The 95 % coverage is *calibrated* when its interval
  over seeds contains 0.95, *too narrow* (overconfident) when it lies below, *too wide* above.

Values are read at every number target, whether or not the model decided ``<NUM>`` there (the value
head answers "which number, if one comes"); the references are scored on the same targets. The
extreme and boundary sets are grouped apart (their values live on other scales).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from ..errors import UserInputError
from ..tasks.verdicts import CONFIDENCE, Interval, Verdict, seed_interval
from .study import ARMS, OPERATIONAL, STUDY_ROOT
from .templates import PREDICTABLE_ROLES

LEVELS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)
# groups that get a verdict against the trivial references, in the order the page lists them
VERDICT_ROLES = (*PREDICTABLE_ROLES, "noisy", "random")
SCALED_SETS = ("extreme", "boundary")
REFERENCE_NAMES = {"mean": "the training mean", "copy_last": "copy the last number", "oracle": "the oracle"}


class Study(NamedTuple):
    """A saved study: its shared configuration (without arm and seed), folder and runs
    ``{(arm, seed): evaluation}`` with their logs and records."""

    config: dict
    path: Path
    runs: dict
    logs: dict
    records: dict

    @property
    def seeds(self) -> list[int]:
        return sorted({s for _, s in self.runs})

    @property
    def arms(self) -> list[str]:
        return [a for a in ARMS if any(arm == a for arm, _ in self.runs)]


def study_exists(path: str | Path = STUDY_ROOT) -> bool:
    """Does ``path`` hold at least one finished run of a study?"""
    path = Path(path)
    for rec in path.glob("*/seed*/run_record.json"):
        try:
            if json.loads(rec.read_text()).get("status") == "success":
                return True
        except (OSError, json.JSONDecodeError):
            continue
    return False


def load_study(path: str | Path = STUDY_ROOT) -> Study:
    """Every finished run under ``path`` (``<arm>/seed<s>/``); UserInputError when there is none or
    when the runs do not share one configuration (apart from arm and seed)."""
    from ..iochecks import read_json, read_run_record

    path = Path(path)
    runs, logs, records, shared = {}, {}, {}, None
    for arm in ARMS:
        for folder in sorted((path / arm).glob("seed*")):
            rec_path = folder / "run_record.json"
            if not folder.is_dir() or not rec_path.is_file() or not folder.name[4:].isdigit():
                continue
            record = read_run_record(rec_path)
            if record.get("status") != "success":
                continue
            config = dict((record.get("parameters") or {}).get("config") or {})
            seed = int(config.get("seed", folder.name[4:]))
            common = {
                k: v for k, v in config.items() if k not in ("arm", "seed", "model_config", *OPERATIONAL)
            }
            if shared is None:
                shared = common
            elif common != shared:
                diff = sorted(k for k in common.keys() | shared.keys() if common.get(k) != shared.get(k))
                raise UserInputError(
                    f"{folder} was run with other settings than the rest of {path} ({', '.join(diff)}); "
                    "a study compares runs of one configuration: move it away"
                )
            runs[(arm, seed)] = read_json(folder / "evaluation.json", "evaluation")
            logs[(arm, seed)] = read_json(folder / "log.json", "training log")
            records[(arm, seed)] = record
    if not runs:
        raise UserInputError(
            f"{path} holds no finished study run: run `qwen-anatomy causal study --out {path}` first"
        )
    return Study(shared, path, runs, logs, records)


def numbers_frame(study: Study) -> pd.DataFrame:
    """One row per (arm, seed, number target): set, family, role, value, the references' predictions
    (mean, copy_last, oracle, oracle_sigma), the model's loc, scale, distribution and decision."""
    frames = []
    for (arm, seed), ev in sorted(study.runs.items()):
        frame = pd.DataFrame(ev["numbers"])
        frame.insert(0, "seed", seed)
        frame.insert(0, "arm", arm)
        frames.append(frame)
    frame = pd.concat(frames, ignore_index=True)
    for col in ("oracle", "oracle_sigma"):
        if col not in frame:
            frame[col] = np.nan
        frame[col] = pd.to_numeric(frame[col])
    frame["group"] = [group_of(s, r) for s, r in zip(frame["set"], frame["role"], strict=True)]
    return frame


def group_of(set_name: str, role: str) -> str:
    """The group a number is scored in: its role, or "<set>: <role>" on the extreme and boundary sets."""
    return f"{set_name}: {role}" if set_name in SCALED_SETS else role


# -- intervals and verdicts -------------------------------------------------------------------------
def interval(values) -> Interval:
    """Mean and t-interval over seeds, unbounded (:func:`qwen_anatomy.tasks.verdicts.seed_interval`)."""
    return seed_interval(values, CONFIDENCE, bounds=None)


def _fmt(x: float) -> str:
    return f"{x:.3g}" if abs(x) < 1000 else f"{x:,.0f}"


def interval_text(ci: Interval) -> str:
    if ci.count == 0:
        return "no runs"
    if ci.count == 1:
        return f"{_fmt(ci.mean)} (1 seed)"
    return f"{_fmt(ci.mean)} [{_fmt(ci.low)}, {_fmt(ci.high)}] ({ci.count} seeds)"


def beats_reference(values, reference: float, reference_name: str, arm: str, metric: str = "MAE") -> Verdict:
    """Does ``arm`` (one ``metric`` per seed, lower is better) beat a reference that has no seed
    variance? Kinds: ``missing``, ``too few seeds``, ``beats``, ``worse``, ``no difference shown``."""
    ci = interval(values)
    details = {
        "interval": ci,
        "reference": reference,
        "margin": reference - ci.mean if ci.count else math.nan,
    }
    if ci.count == 0 or not math.isfinite(reference):
        return Verdict("missing", f"{arm}: nothing to compare", details)
    both = f"{arm} {metric} {interval_text(ci)} against {_fmt(reference)} for {reference_name}"
    if ci.count < 2:
        return Verdict("too few seeds", f"{both}: one seed gives no interval, so no verdict", details)
    if ci.high < reference:
        return Verdict(
            "beats",
            f"{both}: it beats the trivial reference by {_fmt(reference - ci.mean)}, a margin outside the "
            "interval",
            details,
        )
    if ci.low > reference:
        return Verdict(
            "worse",
            f"{both}: it does not beat the reference; it is worse by {_fmt(ci.mean - reference)}",
            details,
        )
    return Verdict(
        "no difference shown", f"{both}: it does not beat the reference (the interval reaches it)", details
    )


def compare_arms(
    a, b, names=("CausalQwen", "baseline"), metric: str = "MAE", lower_is_better: bool = True
) -> Verdict:
    """One value per seed for each arm. Kinds: ``missing``, ``too few seeds``, ``a better``,
    ``b better``, ``no difference shown`` (the intervals overlap)."""
    x, y = interval(a), interval(b)
    details = {"a": x, "b": y, "difference": x.mean - y.mean if x.count and y.count else math.nan}
    if x.count == 0 or y.count == 0:
        return Verdict(
            "missing", f"no finished {names[0] if x.count == 0 else names[1]} run: no comparison", details
        )
    both = f"{metric}: {names[0]} {interval_text(x)}, {names[1]} {interval_text(y)}"
    if min(x.count, y.count) < 2:
        return Verdict("too few seeds", f"{both}; one seed gives no interval, so no verdict", details)
    sign = -1 if lower_is_better else 1
    if x.low > y.high or y.low > x.high:
        a_better = (x.mean - y.mean) * sign > 0
        winner = names[0] if a_better else names[1]
        return Verdict(
            "a better" if a_better else "b better",
            f"{both}; {winner} is better, the intervals do not overlap",
            details,
        )
    return Verdict("no difference shown", f"{both}; the intervals overlap: no difference shown", details)


# -- value errors against the references -----------------------------------------------------------
def seed_errors(frame: pd.DataFrame) -> pd.DataFrame:
    """MAE per (group, arm, seed) of the value head's location, and the number of targets."""
    err = (frame["loc"] - frame["value"]).abs()
    out = frame.assign(error=err).groupby(["group", "arm", "seed"], sort=False)
    return out.agg(mae=("error", "mean"), n=("error", "size")).reset_index()


def reference_errors(frame: pd.DataFrame) -> pd.DataFrame:
    """MAE per group of each reference (mean, copy_last, and oracle where there are noisy numbers),
    from one run's targets (every run scores the same targets)."""
    first = frame[(frame["arm"] == frame["arm"].iloc[0]) & (frame["seed"] == frame["seed"].iloc[0])]
    rows = []
    for group, g in first.groupby("group", sort=False):
        row = {"group": group, "n": len(g)}
        for ref in ("mean", "copy_last", "oracle"):
            sel = g[ref].notna()
            row[ref] = (
                float((g.loc[sel, ref] - g.loc[sel, "value"]).abs().mean())
                if sel.all() and len(g)
                else math.nan
            )
        rows.append(row)
    return pd.DataFrame(rows)


def best_trivial(row) -> tuple[str, float]:
    """The better of the trivial references (mean, copy_last) of a :func:`reference_errors` row."""
    name = "mean" if row["mean"] <= row["copy_last"] else "copy_last"
    return name, float(row[name])


def _group_order(group: str) -> tuple:
    set_part, _, role = group.rpartition(": ")
    roles = ("given", *VERDICT_ROLES)
    return (SCALED_SETS.index(set_part) + 1 if set_part else 0, roles.index(role) if role in roles else 99)


def value_table(study: Study) -> pd.DataFrame:
    """One row per group: the targets, each arm's MAE interval over seeds, the references' MAE, the best
    trivial reference and each arm's verdict against it."""
    frame = numbers_frame(study)
    errors = seed_errors(frame)
    refs = reference_errors(frame).set_index("group")
    rows = []
    for group in sorted(refs.index, key=_group_order):
        ref = refs.loc[group]
        best, best_value = best_trivial(ref)
        row = {"group": group, "targets": int(ref["n"])}
        for arm in study.arms:
            ci = interval(errors[(errors["group"] == group) & (errors["arm"] == arm)]["mae"])
            row[f"{arm} MAE"] = interval_text(ci)
        row["mean MAE"] = ref["mean"]
        row["copy-last MAE"] = ref["copy_last"]
        row["oracle MAE"] = ref["oracle"]
        row["best trivial"] = best
        for arm in study.arms:
            vals = errors[(errors["group"] == group) & (errors["arm"] == arm)]["mae"]
            row[f"{arm} verdict"] = beats_reference(vals, best_value, REFERENCE_NAMES[best], arm).kind
        rows.append(row)
    return pd.DataFrame(rows).set_index("group")


def value_sentences(study: Study, groups=VERDICT_ROLES) -> str:
    """Markdown bullets: for each group with targets, each arm against the best trivial reference, and
    the arms against each other."""
    frame = numbers_frame(study)
    errors = seed_errors(frame)
    refs = reference_errors(frame).set_index("group")
    lines = []
    for group in groups:
        if group not in refs.index:
            continue
        best, value = best_trivial(refs.loc[group])
        parts = []
        per_arm = {}
        for arm in study.arms:
            per_arm[arm] = errors[(errors["group"] == group) & (errors["arm"] == arm)]["mae"].tolist()
            parts.append(beats_reference(per_arm[arm], value, REFERENCE_NAMES[best], arm).sentence)
        if len(per_arm) == 2:
            parts.append(compare_arms(*per_arm.values(), names=tuple(per_arm)).sentence)
        lines.append(f"- **{group}** ({int(refs.loc[group, 'n'])} targets): " + "; ".join(parts) + ".")
    return "\n".join(lines)


def value_summary(study: Study, groups=PREDICTABLE_ROLES) -> str:
    """One sentence: how many of the predictable groups each arm beats its best trivial reference on."""
    table = value_table(study)
    present = [g for g in groups if g in table.index]
    parts = []
    for arm in study.arms:
        won = [g for g in present if table.loc[g, f"{arm} verdict"] == "beats"]
        parts.append(
            f"{arm} beats the best trivial reference on {len(won)} of {len(present)} predictable roles"
            + (f" ({', '.join(won)})" if won else "")
        )
    return (
        "; ".join(parts) + f" (margins outside the {CONFIDENCE:.0%} intervals over {len(study.seeds)} seeds)."
    )


def missed_roles_sentence(
    study: Study, top_layers_estimate: dict | None = None, groups=PREDICTABLE_ROLES
) -> str:
    """Which predictable roles neither arm beats its best trivial reference on, and what it would cost
    to let the backbone carry the values there: ``top_layers_estimate`` is a saved ``causal study
    --estimate`` (:func:`qwen_anatomy.causal.study.read_estimate`) of the same study with top layers
    trained (``train_layers`` > 0); its projected hours are quoted. "" when every role is beaten."""
    table = value_table(study)
    present = [g for g in groups if g in table.index]
    missed = [g for g in present if all(table.loc[g, f"{arm} verdict"] != "beats" for arm in study.arms)]
    if not missed:
        return ""

    def ref(g):
        name = table.loc[g, "best trivial"].replace("_", "-")
        return f"{g} ({name} MAE {_fmt(table.loc[g, f'{name} MAE'])})"

    refs = ", ".join(ref(g) for g in missed)
    text = (
        f"Neither arm beats the best trivial reference on {len(missed)} of {len(present)} predictable roles: {refs}. "
        "Each of these numbers depends on the exact values of numbers stated earlier in the text. "
        + (
            "With the backbone frozen, both heads are linear in features the backbone already computes, "
            "and these features do not carry an earlier number's exact value to the position that needs it."
            if not study.config.get("train_layers")
            else f"With the top {study.config['train_layers']} layer(s) trained, the budget did not get there."
        )
    )
    if top_layers_estimate:
        cfg, proj = top_layers_estimate["config"], top_layers_estimate["measured"]["projection"]
        steps = {a: m["seconds_per_step"] for a, m in top_layers_estimate["measured"]["arms"].items()}
        text += (
            f" Training the top {cfg['train_layers']} layer(s) as well could let attention learn to fetch it; "
            f"measured here ({'; '.join(f'{a} {v:.2g} s per step' for a, v in steps.items())}), the same study "
            f"({len(cfg['seeds'])} seeds x {cfg['steps']:,} steps, both arms) is projected at "
            f"{proj['total_hours']:.1f} hours, against {_study_hours(study):.1f} for this one's training and "
            "evaluation: more than a 3-hour session on this machine."
        )
    return text


def _study_hours(study: Study) -> float:
    """Wall hours of the study's training and evaluation, from its run records' stages."""
    seconds = sum(sum((r.get("stages") or {}).values()) for r in study.records.values())
    return seconds / 3600


# -- <NUM> detection --------------------------------------------------------------------------------
def detection_table(study: Study) -> pd.DataFrame:
    """<NUM> F1 per evaluation set: each arm's interval over seeds and the comparison's verdict."""
    sets = list(next(iter(study.runs.values()))["sets"])
    rows = []
    for s in sets:
        vals = {
            arm: [ev["sets"][s]["num_f1"] for (a, _), ev in sorted(study.runs.items()) if a == arm]
            for arm in study.arms
        }
        row = {"set": s}
        for arm in study.arms:
            row[f"{arm} F1"] = interval_text(interval(vals[arm]))
        if len(vals) == 2:
            row["verdict"] = verdict_words(
                compare_arms(*vals.values(), names=tuple(vals), metric="F1", lower_is_better=False),
                tuple(vals),
                "higher",
            )
        rows.append(row)
    return pd.DataFrame(rows).set_index("set")


def verdict_words(verdict: Verdict, names: tuple[str, str], better: str = "better") -> str:
    """A :func:`compare_arms` verdict for a table cell: "<arm> <better>" or the kind itself."""
    if verdict.kind == "a better":
        return f"{names[0]} {better}"
    if verdict.kind == "b better":
        return f"{names[1]} {better}"
    return verdict.kind


def detection_sentence(study: Study, set_name: str = "qa") -> str:
    """The arms' <NUM> F1 on one set (the qa set by default: a number answers one question in three)."""
    vals = {
        arm: [ev["sets"][set_name]["num_f1"] for (a, _), ev in sorted(study.runs.items()) if a == arm]
        for arm in study.arms
    }
    if len(vals) < 2:
        arm = next(iter(vals))
        return f"`<NUM>` F1 on the {set_name} set: {arm} {interval_text(interval(vals[arm]))}."
    v = compare_arms(
        *vals.values(), names=tuple(vals), metric=f"`<NUM>` F1 on the {set_name} set", lower_is_better=False
    )
    return v.sentence + "." + saturation_clause(study)


SATURATED_F1 = 0.99  # at or above this on every set and seed, detection separates nothing


def saturation_clause(study: Study, level: float = SATURATED_F1) -> str:
    """ " ... saturated ..." when every run of every arm scores ``<NUM>`` F1 ≥ ``level`` on every set
    (then the F1 cannot rank arms or settings); "" otherwise."""
    f1 = [m["num_f1"] for ev in study.runs.values() for m in ev["sets"].values()]
    if not f1 or not all(np.isfinite(f1)) or min(f1) < level:
        return ""
    return (
        f" On these texts `<NUM>` detection is saturated: every run of both arms scores F1 ≥ {level:g} on every"
        f" set (lowest {min(f1):.3f}), although numbers move within the templates and some answers are words;"
        " the frozen backbone already tells where a number comes, so F1 ranks nothing here and the comparison"
        " rests on the values."
    )


# -- calibration ------------------------------------------------------------------------------------
def pit(value, loc, scale, dist) -> np.ndarray:
    """F(v) under Cauchy(loc, scale) or Normal(loc, scale) (``dist`` per row or one string); a zero
    scale gives 0 or 1 (1/2 when v equals loc). A NaN location or scale (a broken prediction) gives NaN,
    which :func:`coverage_curve` counts as not covered."""
    from scipy.special import ndtr

    v, m, s = (np.asarray(x, dtype=np.float64) for x in (value, loc, scale))
    dist = np.broadcast_to(np.asarray(dist, dtype=object), v.shape)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (v - m) / s
    z = np.where((v == m) & (s == 0), 0.0, z)  # 0/0: the truth sits on a point prediction
    cauchy = 0.5 + np.arctan(z) / np.pi
    normal = ndtr(z)
    return np.where(dist == "cauchy", cauchy, normal)


def coverage_curve(pit_values, levels=LEVELS) -> list[float]:
    """Fraction of PIT values inside the central interval of each level: |PIT - 1/2| <= level/2."""
    u = np.asarray(pit_values, dtype=np.float64)
    if u.size == 0:
        return [math.nan for _ in levels]
    dev = np.abs(u - 0.5)
    return [float(np.mean(dev <= q / 2 + 1e-12)) for q in levels]


def calibration_error(curve, levels=LEVELS) -> float:
    """Mean |observed - nominal| coverage over the levels."""
    return float(np.mean([abs(c - q) for c, q in zip(curve, levels, strict=True)]))


def oracle_pit(frame: pd.DataFrame) -> np.ndarray:
    """PIT of the truths under the oracle's Normal(true weight, sigma), for the rows that have one."""
    rows = frame[frame["oracle"].notna()]
    return pit(rows["value"], rows["oracle"], rows["oracle_sigma"], "normal")


def calibration_table(study: Study, role: str = "noisy", levels=LEVELS) -> pd.DataFrame:
    """Observed coverage at each nominal level on the numbers of ``role``: the oracle, and each arm's
    mean with its interval over seeds (columns ``<arm>``, ``<arm> low``, ``<arm> high``)."""
    frame = numbers_frame(study)
    frame = frame[frame["role"] == role]
    if frame.empty:
        raise UserInputError(f"the study has no {role!r} number target: add the noisy evaluation set")
    one = frame[(frame["arm"] == frame["arm"].iloc[0]) & (frame["seed"] == frame["seed"].iloc[0])]
    table = {"nominal": list(levels)}
    if one["oracle"].notna().any():
        table["oracle"] = coverage_curve(oracle_pit(one), levels)
    for arm in study.arms:
        curves = []
        for seed in study.seeds:
            g = frame[(frame["arm"] == arm) & (frame["seed"] == seed)]
            if len(g):
                curves.append(coverage_curve(pit(g["value"], g["loc"], g["scale"], g["dist"]), levels))
        cis = [
            seed_interval([c[i] for c in curves], CONFIDENCE, bounds=(0.0, 1.0)) for i in range(len(levels))
        ]
        table[arm] = [ci.mean for ci in cis]
        table[f"{arm} low"] = [ci.low for ci in cis]
        table[f"{arm} high"] = [ci.high for ci in cis]
    return pd.DataFrame(table).set_index("nominal")


def coverage_verdict(values, arm: str, nominal: float = 0.95, oracle: float | None = None) -> Verdict:
    """Is an arm's coverage at ``nominal`` (one value per seed) calibrated? Kinds: ``missing``, ``too
    few seeds``, ``calibrated``, ``too narrow``, ``too wide``."""
    ci = seed_interval(values, CONFIDENCE, bounds=(0.0, 1.0))
    ref = "" if oracle is None else f" (the oracle covers {oracle:.3f})"
    head = f"{arm} covers {interval_text(ci)} of the truths with its {nominal:.0%} intervals{ref}"
    if ci.count == 0:
        return Verdict("missing", f"{arm}: no run", {"interval": ci})
    if ci.count < 2:
        return Verdict(
            "too few seeds", f"{head}: one seed gives no interval, so no verdict", {"interval": ci}
        )
    if ci.high < nominal:
        return Verdict(
            "too narrow",
            f"{head}: too narrow (overconfident), the whole interval below {nominal:g}",
            {"interval": ci},
        )
    if ci.low > nominal:
        return Verdict(
            "too wide",
            f"{head}: too wide (underconfident), the whole interval above {nominal:g}",
            {"interval": ci},
        )
    return Verdict(
        "calibrated", f"{head}: calibrated at this level, the interval contains {nominal:g}", {"interval": ci}
    )


def calibration_by_seed(study: Study, arm: str, role: str = "noisy", nominal: float = 0.95):
    """([coverage at ``nominal``], [calibration error], [MAE]) of one arm on the ``role`` numbers, one
    value per seed (seeds in order)."""
    frame = numbers_frame(study)
    frame = frame[(frame["role"] == role) & (frame["arm"] == arm)]
    cov, err, mae = [], [], []
    for _seed, g in frame.groupby("seed"):
        u = pit(g["value"], g["loc"], g["scale"], g["dist"])
        cov.append(coverage_curve(u, (nominal,))[0])
        err.append(calibration_error(coverage_curve(u)))
        mae.append(float((g["loc"] - g["value"]).abs().mean()))
    return cov, err, mae


def calibration_sentences(study: Study, role: str = "noisy", nominal: float = 0.95) -> str:
    """Coverage at ``nominal`` and the calibration error over every level, per arm, beside the oracle."""
    frame = numbers_frame(study)
    frame = frame[frame["role"] == role]
    one = frame[(frame["arm"] == frame["arm"].iloc[0]) & (frame["seed"] == frame["seed"].iloc[0])]
    oracle_curve = (
        coverage_curve(oracle_pit(one), (nominal, *LEVELS)) if one["oracle"].notna().any() else None
    )
    lines = []
    for arm in study.arms:
        cov, err, _ = calibration_by_seed(study, arm, role, nominal)
        v = coverage_verdict(cov, arm, nominal, None if oracle_curve is None else oracle_curve[0])
        oracle_err = "" if oracle_curve is None else f" (oracle {calibration_error(oracle_curve[1:]):.3f})"
        lines.append(
            f"- {v.sentence}. Mean calibration error over the levels "
            f"{interval_text(seed_interval(err, CONFIDENCE, bounds=(0.0, 1.0)))}{oracle_err}."
        )
    return "\n".join(lines)


def calibration_plot(
    study: Study, role: str = "noisy", title: str | None = None, extra: dict[str, Study] | None = None
):
    """Observed against nominal coverage of the central intervals on the ``role`` numbers: each arm's
    mean over seeds with its interval shaded, the oracle dashed, the diagonal (perfect calibration) dotted.
    ``extra`` ({label: study}) adds the arms of other studies (a remedy), labelled "<arm> (<label>)"."""
    from .. import plotting

    table = calibration_table(study, role)
    fig, ax = plotting.figure(width=5.0, height=4.0)
    x = table.index.to_numpy()
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="calibrated (observed = nominal)")
    if "oracle" in table:
        ax.plot(
            x,
            table["oracle"],
            color="black",
            linestyle="--",
            marker=".",
            label="oracle (true weight, stated sigma)",
        )
    curves = [(arm, table, f"{arm} ({len(study.seeds)} seeds)") for arm in study.arms]
    for label, other in (extra or {}).items():
        other_table = calibration_table(other, role)
        curves += [(arm, other_table, f"{arm} ({label}, {len(other.seeds)} seeds)") for arm in other.arms]
    for arm, t, label in curves:
        line = ax.plot(x, t[arm], marker="o", markersize=3, label=label)[0]
        ax.fill_between(x, t[f"{arm} low"], t[f"{arm} high"], color=line.get_color(), alpha=0.2)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    plotting.label(
        ax,
        "nominal coverage of the central interval",
        "observed coverage",
        title or f"calibration on the {role} numbers, {study.config.get('model')}",
    )
    ax.legend(fontsize=7, loc="upper left")
    return fig


# -- the training curves ---------------------------------------------------------------------------
SETTLED_NATS = 0.02  # a change of the median regression loss within ±this between the last two fifths: flat


def _window_means(log: list[dict], key: str, frac: float = 0.2) -> tuple[float, float, int, int]:
    """Median of ``key`` over the last ``frac`` of the logged steps and over the ``frac`` before it, with
    the first step of each window. Medians, because a Normal head's NLL spikes by orders of magnitude on
    the odd batch where a small sigma meets a far value (the baseline's log shows such spikes)."""
    steps = np.array([r["step"] for r in log], dtype=float)
    vals = np.array([r[key] for r in log], dtype=float)
    last = steps.max()
    span = frac * last
    late = steps > last - span
    early = (steps > last - 2 * span) & ~late
    return float(np.median(vals[early])), float(np.median(vals[late])), int(last - 2 * span), int(last - span)


def settling(study: Study, key: str = "reg") -> pd.DataFrame:
    """Per arm: the change of the median training loss ``key`` (default the regression NLL) from the second
    last fifth of training to the last fifth, each seed and its interval over seeds, and the verdict:
    "still falling" (the whole interval below -SETTLED_NATS), "flat" (inside ±SETTLED_NATS), or "unclear"."""
    rows = []
    for arm in study.arms:
        changes, bounds = [], None
        for (a, _), log in sorted(study.logs.items()):
            if a != arm:
                continue
            early, late, b0, b1 = _window_means(log, key)
            changes.append(late - early)
            bounds = (b0, b1)
        ci = interval(changes)
        if ci.high < -SETTLED_NATS:
            verdict = "still falling"
        elif ci.low >= -SETTLED_NATS and ci.high <= SETTLED_NATS:
            verdict = "flat"
        else:
            verdict = "unclear"
        rows.append(
            {"arm": arm, "change": ci, "from_step": bounds[0], "to_step": bounds[1], "verdict": verdict}
        )
    return pd.DataFrame(rows).set_index("arm")


def curves_sentence(study: Study, key: str = "reg") -> str:
    """The training curves in words: how much the regression loss still moved at the end, per arm."""
    table = settling(study, key)
    parts = []
    for arm, row in table.iterrows():
        ci = row["change"]
        parts.append(
            f"{arm}'s median regression loss changed by {interval_text(ci)} nats from the window starting at step "
            f"{row['from_step']:,} to the last one (from step {row['to_step']:,}): {row['verdict']}"
        )
    return (
        "; ".join(parts)
        + f" (flat means inside ±{SETTLED_NATS:g} nats over seeds; windows are fifths of training)."
    )


def curves_plot(study: Study, key: str = "reg", title: str | None = None):
    """Training curves of every run: ``key`` (default the regression NLL, the term that learns the values)
    against step, one line per seed, one colour per arm. Left: every value (a log axis when all are
    positive, since the Normal head's spikes span orders of magnitude); right: the bulk, the axis cut
    at the 1st and 95th percentiles, where the slow trend shows."""
    from .. import plotting

    fig, axes = plotting.figure(ncols=2, width=4.2, height=3.4)
    finite = np.array([r[key] for log in study.logs.values() for r in log if np.isfinite(r[key])])
    colours = {}
    for ax in axes[0]:
        for (arm, _seed), log in sorted(study.logs.items()):
            line = ax.plot(
                [r["step"] for r in log],
                [r[key] for r in log],
                color=colours.get(arm),
                linewidth=0.9,
                alpha=0.8,
                label=arm if ax is axes[0][0] and arm not in colours else None,
            )[0]
            colours.setdefault(arm, line.get_color())
    ylabel = "regression NLL (nats)" if key == "reg" else key
    name = f"{study.config.get('model')}, {len(study.seeds)} seeds per arm"
    if len(finite) and finite.min() > 0:
        axes[0][0].set_yscale("log")
    plotting.label(axes[0][0], "optimiser step", ylabel, title or f"training curves ({name})")
    if len(finite):
        lo, hi = np.quantile(finite, [0.01, 0.95])
        axes[0][1].set_ylim(lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo))
    plotting.label(axes[0][1], "optimiser step", ylabel, "the bulk (1st-95th percentile)")
    axes[0][0].legend(fontsize=7)
    return fig


# -- the study in words -----------------------------------------------------------------------------
def study_description(study: Study, source: str | None = None) -> str:
    """Which study the tables come from (``source``: where, in words; default its folder), its backbone,
    budget, data and seeds, and the measured time per step."""
    c = study.config
    per_step = {
        arm: [ev["seconds_per_step"] for (a, _), ev in study.runs.items() if a == arm] for arm in study.arms
    }
    times = "; ".join(f"{arm} {min(v):.3g}–{max(v):.3g} s" for arm, v in per_step.items())
    layers = (
        "the heads only" if not c.get("train_layers") else f"the heads and the top {c['train_layers']} layers"
    )
    return (
        f"The study below ({source or f'from `{study.path}`'}) ran on `{c.get('model')}`: {len(study.seeds)} "
        f"seeds ({', '.join(map(str, study.seeds))}) per arm, each training {layers} on cached features for "
        f"{c.get('steps')} steps of batch {c.get('batch_size')} at learning rate {c.get('lr'):g}"
        + (
            f" ({c['lr_pretrained']:g} for the matrices copied from the base model)"
            if c.get("lr_pretrained") not in (None, c.get("lr"))
            else ""
        )
        + f", on "
        f"{c.get('n_train')} training texts (data seed {c.get('data_seed')}), scored on {c.get('n_eval')} texts per "
        f"evaluation set. A training step took {times} (measured in the runs)."
    )


def classes_of(study: Study) -> dict:
    """The output classes the runs judged (``vocab``, ``count``, ``of``, and ``ids`` when restricted),
    from their evaluations; UserInputError if the runs disagree (they cannot when their configurations
    agree: the class set follows from the texts)."""
    seen = {json.dumps(ev.get("classes"), sort_keys=True) for ev in study.runs.values()}
    if len(seen) > 1:
        raise UserInputError(f"the runs of {study.path} judged different class sets: move the odd ones away")
    found = json.loads(seen.pop()) if seen else None
    return found or {"vocab": study.config.get("vocab", "full")}


def full_vocab_estimate_dir(model: str, root: str | Path | None = None) -> Path:
    """Where the saved full-vocabulary estimate of ``model`` lives: ``ROOT/<model>-full`` (ROOT default
    ``data/results/causal/estimates``; written by ``causal study --vocab full --estimate --estimate-out``)."""
    from .study import ESTIMATE_ROOT

    return Path(root or ESTIMATE_ROOT) / f"{model}-full"


def full_vocab_step_seconds(study: Study, root: str | Path | None = None) -> float | None:
    """Measured seconds of one CausalQwen step with every token id a class, on the study's backbone and
    batch size, from a saved estimate; None when none is saved or it measured another setting."""
    from .study import read_estimate

    model = study.config.get("model")
    if not model:
        return None
    saved = read_estimate(full_vocab_estimate_dir(model, root))
    if saved is None:
        return None
    cfg = saved["config"]
    same = (cfg.get("model"), cfg.get("vocab"), cfg.get("batch_size")) == (
        model,
        "full",
        study.config.get("batch_size"),
    )
    arm = saved["measured"]["arms"].get("CausalQwen")
    return float(arm["seconds_per_step"]) if same and arm else None


def classes_sentence(study: Study, full_vocab_seconds: float | None = None) -> str:
    """What the runs' output classes were, in words. With a restricted (template) class set it says
    what that changes; ``full_vocab_seconds``, when given, is the measured seconds of one CausalQwen step
    with every token id a class, on the same backbone and batch."""
    c = classes_of(study)
    if c.get("vocab") != "template":
        of = f" ({c['count']:,} ids)" if c.get("count") else ""
        return f"Every token id of the backbone is a class{of}: the spec's design."
    cost = (
        f" The full-vocabulary design costs {full_vocab_seconds:.3g} s per CausalQwen step of batch "
        f"{study.config.get('batch_size')} here, which is why the study restricts the classes."
        if full_vocab_seconds is not None
        else ""
    )
    return (
        f"The output classes of both arms are restricted to the {c['count']} token ids the templates use "
        f"(of {c['of']:,}; `<NUM>` among them), taken from the training and evaluation texts. The heads keep "
        "those rows of the full model, so at step 0 their scores are the full model's at those ids; but token "
        "accuracy, `<NUM>` F1, the sum of the P_k and the calibration error are over these classes only, and "
        "the softmax of the baseline (and CausalQwen's compatible mode) is renormalised over them." + cost
    )


def rule_sentence() -> str:
    return (
        f"Intervals are {CONFIDENCE:.0%} t-intervals over seeds on fixed evaluation texts. An arm beats a trivial "
        "reference when its whole MAE interval lies below the reference's MAE; the arms differ when their intervals "
        "do not overlap; a coverage is calibrated when its interval contains the nominal level."
    )
