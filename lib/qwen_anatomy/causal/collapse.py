"""Why the scale of U collapses, and what a remedy does to calibration (chapter 50, issue 14).

The runs are short studies (:mod:`qwen_anatomy.causal.study`, CausalQwen only, ``log_every`` 1), one
folder per variant of the head under one root (``data/results/causal/collapse/<variant>/``), and a
book-scale study of one remedy. Every CausalQwen training log row carries the *drive* of each loss
term (:func:`qwen_anatomy.causal.train.scale_drive`): the derivative of the term with respect to the
log of a common factor on the scale of U (``cls_dlogscale``, ``reg_dlogscale``) and on the exogenous
noise (``*_dlognoise``). Positive: gradient descent on that term shrinks the scale.

The rules behind the words (tested in ``tests/test_causal_collapse.py``):

* **Collapse step**: the first logged step at which the median scale of U over the batch's positions is
  below :data:`COLLAPSE_FRACTION` of its value at step 0 (``None`` when it never is).
* **The term that drives it**: the sign of each term's drive at step 0 (the update that starts the
  collapse is computed there); a term *pulls the scale down* when its drive is positive in every seed,
  *pushes it up* when negative in every seed. An intervention checks it: a variant without the
  regression term (``lam`` 0) that collapses at the same step shows that the classification term alone
  suffices.
* **A remedy against calibration**: one value per seed of the calibration error and of the 95 %
  coverage on the noisy readings; intervals and verdicts as in :mod:`.study_report`.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import UserInputError
from . import study_report
from .experiments import RESULTS_ROOT

COLLAPSE_ROOT = RESULTS_ROOT / "collapse"
REMEDY_ROOT = RESULTS_ROOT / "remedies"
COLLAPSE_FRACTION = 0.01
DRIVE_KEYS = ("cls_dlogscale", "reg_dlogscale", "cls_dlognoise", "reg_dlognoise", "median_noise")
ARM = "CausalQwen"


def variant_label(study: study_report.Study) -> str:
    """A variant in words, from its ``causal`` settings: "default" or "threshold_mode = learnable, ..."."""
    causal = study.config.get("causal") or {}
    if not causal:
        return "default"
    return ", ".join(f"{k} = {v}" for k, v in sorted(causal.items()))


def load_variants(root: str | Path = COLLAPSE_ROOT) -> dict[str, study_report.Study]:
    """{folder name: Study} for every subfolder of ``root`` holding finished runs, default first."""
    root = Path(root)
    found = (
        {
            p.name: study_report.load_study(p)
            for p in sorted(root.iterdir())
            if p.is_dir() and study_report.study_exists(p)
        }
        if root.is_dir()
        else {}
    )
    if not found:
        raise UserInputError(
            f"{root} holds no finished collapse run: run the commands in data/results/causal/README.md "
            "(section 'Why the scale of U collapses')"
        )
    order = sorted(found, key=lambda n: (variant_label(found[n]) != "default", n))
    return {n: found[n] for n in order}


def collapse_step(log: list[dict], fraction: float = COLLAPSE_FRACTION) -> int | None:
    """First logged step whose median scale of U is below ``fraction`` of its value at the first row."""
    if not log:
        return None
    start = float(log[0]["median_scale_u"])
    for row in log:
        if float(row["median_scale_u"]) < fraction * start:
            return int(row["step"])
    return None


def _runs(study: study_report.Study):
    for (arm, seed), log in sorted(study.logs.items()):
        if arm == ARM:
            yield seed, log


def drive_frame(studies: dict[str, study_report.Study]) -> pd.DataFrame:
    """One row per (variant, seed, logged step): the median scale of U, the median exogenous noise and
    every term's drive (runs whose logs predate the drive are left out)."""
    rows = []
    for name, study in studies.items():
        for seed, log in _runs(study):
            for r in log:
                if not set(DRIVE_KEYS) <= set(r):
                    continue
                rows.append(
                    {
                        "variant": name,
                        "seed": seed,
                        "step": int(r["step"]),
                        "median_scale_u": float(r["median_scale_u"]),
                        **{k: float(r[k]) for k in DRIVE_KEYS},
                    }
                )
    return pd.DataFrame(rows)


def collapse_table(studies: dict[str, study_report.Study]) -> pd.DataFrame:
    """Per variant: its settings, seeds, the collapse step of every seed, each term's drive on the scale
    of U at step 0 (mean over seeds, and whether every seed has the same sign), and the median scale of U
    and noise at the last logged step (medians over seeds)."""
    rows = []
    for name, study in studies.items():
        runs = list(_runs(study))
        if not runs:
            continue
        first = [log[0] for _, log in runs]
        last = [log[-1] for _, log in runs]
        row = {
            "variant": name,
            "settings": variant_label(study),
            "seeds": len(runs),
            "steps": int(max(log[-1]["step"] for _, log in runs)),
            "collapse steps": [collapse_step(log) for _, log in runs],
            "initial scale": float(np.median([r["median_scale_u"] for r in first])),
            "final scale": float(np.median([r["median_scale_u"] for r in last])),
        }
        for term in ("cls", "reg"):
            values = [r.get(f"{term}_dlogscale", math.nan) for r in first]
            row[f"{term} drive at step 0"] = float(np.mean(values))
            row[f"{term} sign"] = _sign_word(values)
            # the mean drive over the logged steps before the collapse (all steps when it never collapses)
            before = [_mean_before_collapse(log, f"{term}_dlogscale") for _, log in runs]
            row[f"{term} drive before collapse"] = float(np.mean(before))
            row[f"{term} sign before collapse"] = _sign_word(before)
        noise = [r.get("median_noise", math.nan) for r in last]
        row["final noise"] = float(np.median(noise))
        rows.append(row)
    return pd.DataFrame(rows).set_index("variant")


def _mean_before_collapse(log: list[dict], key: str) -> float:
    stop = collapse_step(log)
    values = [r.get(key, math.nan) for r in log if stop is None or r["step"] < stop]
    return float(np.mean(values)) if values else math.nan


def _sign_word(values) -> str:
    v = np.asarray(values, dtype=float)
    if v.size == 0 or not np.isfinite(v).all():
        return "not logged"
    if (v > 0).all():
        return "down"
    if (v < 0).all():
        return "up"
    return "mixed"


def _steps_text(steps: list[int | None]) -> str:
    done = [s for s in steps if s is not None]
    if not done:
        return "never (in any seed)"
    if len(done) < len(steps):
        return f"at step {min(done)}-{max(done)} in {len(done)} of {len(steps)} seeds, never in the others"
    if min(done) == max(done):
        return f"at step {done[0]} in every seed"
    return f"between steps {min(done)} and {max(done)}"


def collapse_sentences(
    studies: dict[str, study_report.Study], default: str = "default", without_regression: str = "lam0"
) -> str:
    """What drives the collapse, in words, from :func:`collapse_table`: the default head's collapse step
    and each term's pull at step 0, the intervention without the regression term, then every other
    variant."""
    table = collapse_table(studies)
    if default not in table.index:
        raise UserInputError(f"no {default!r} variant among {list(table.index)}: it is the reference")
    pct = f"{COLLAPSE_FRACTION:.0%}"
    d = table.loc[default]
    words = {"down": "pulls it down", "up": "pushes it up", "mixed": "pulls either way across seeds"}
    lines = [
        f"- With the default head ({d['seeds']} seeds, {d['steps']} steps logged one by one), the median scale "
        f"of U falls below {pct} of its initial {d['initial scale']:.3g} {_steps_text(d['collapse steps'])}; it "
        f"ends at {d['final scale']:.3g}. At step 0 the classification term {words.get(d['cls sign'], 'is not logged')} "
        f"(drive {d['cls drive at step 0']:+.3g}) and the regression term {words.get(d['reg sign'], 'is not logged')} "
        f"({d['reg drive at step 0']:+.3g})"
        + (
            ", so the first update follows the classification term."
            if d["cls sign"] == "down"
            and d["reg sign"] != "down"
            and d["collapse steps"]
            and all(s == 1 for s in d["collapse steps"])
            else "."
        )
    ]
    if without_regression in table.index:
        w = table.loc[without_regression]
        same = w["collapse steps"] == d["collapse steps"]
        lines.append(
            f"- Without the regression term ({w['settings']}) it collapses "
            f"{_steps_text(w['collapse steps'])}"
            + (
                ", the same step: the classification term alone collapses the scale."
                if same and all(s is not None for s in w["collapse steps"])
                else f" (default: {_steps_text(d['collapse steps'])})."
            )
        )
    for name, row in table.iterrows():
        if name in (default, without_regression):
            continue
        later = ""
        if any(s is not None and s > 1 for s in row["collapse steps"]):
            later = (
                f"; averaged over the steps before it falls, the classification term "
                f"{words.get(row['cls sign before collapse'], 'is not logged')} "
                f"({row['cls drive before collapse']:+.3g}) and the regression term "
                f"{words.get(row['reg sign before collapse'], 'is not logged')} "
                f"({row['reg drive before collapse']:+.3g})"
            )
        lines.append(
            f"- {row['settings']}: the scale falls below {pct} {_steps_text(row['collapse steps'])} and ends at "
            f"{row['final scale']:.3g}; at step 0 the classification term "
            f"{words.get(row['cls sign'], 'is not logged')} ({row['cls drive at step 0']:+.3g}), the regression "
            f"term {words.get(row['reg sign'], 'is not logged')} ({row['reg drive at step 0']:+.3g}){later}; the "
            f"exogenous noise ends at {row['final noise']:.3g}."
        )
    return "\n".join(lines)


def collapse_plot(studies: dict[str, study_report.Study], title: str | None = None):
    """Left: the median scale of U against step (log axis; one line per seed, a colour per variant).
    Middle: the median exogenous noise |b_noise|. Right: each term's drive on the scale of U for the first
    variant (symmetric log axis; above 0 the term pulls the scale down)."""
    from .. import plotting

    frame = drive_frame(studies)
    if frame.empty:
        raise UserInputError("no run logs the drive of the loss terms: rerun the collapse study")
    fig, axes = plotting.figure(ncols=3, width=3.6, height=3.2)
    ax_scale, ax_noise, ax_drive = axes[0]
    tiny = 1e-45  # the smallest positive float32: a scale that underflowed to 0 is drawn there
    colours = {}
    styles = dict(zip(studies, ("-", "--", ":", "-.") * len(studies), strict=False))
    for (name, _seed), g in frame.groupby(["variant", "seed"], sort=False):
        label = variant_label(studies[name]) if name not in colours else None
        line = ax_scale.plot(
            g["step"],
            g["median_scale_u"].clip(lower=tiny),
            color=colours.get(name),
            linestyle=styles[name],
            linewidth=1.1,
            label=label,
        )[0]
        colours.setdefault(name, line.get_color())
        ax_noise.plot(
            g["step"], g["median_noise"], color=colours[name], linestyle=styles[name], linewidth=1.1
        )
    ax_scale.set_yscale("log")
    ax_noise.set_yscale("log")
    plotting.label(ax_scale, "optimiser step", "median scale of U", title or "the scale of U")
    plotting.label(ax_noise, "optimiser step", "median |b_noise|", "the exogenous noise")
    ax_scale.legend(fontsize=6)
    first = next(iter(studies))
    g = frame[frame["variant"] == first]
    for term, style in (("cls", "-"), ("reg", "--")):
        mean = g.groupby("step")[f"{term}_dlogscale"].mean()
        ax_drive.plot(mean.index, mean.to_numpy(), linestyle=style, label=f"{term} (mean over seeds)")
    ax_drive.axhline(0, color="grey", linewidth=0.6)
    ax_drive.set_yscale("symlog", linthresh=1e-3)
    plotting.label(
        ax_drive, "optimiser step", "d term / d log scale of U", f"drive, {variant_label(studies[first])}"
    )
    ax_drive.legend(fontsize=6)
    return fig


# -- a remedy against calibration ------------------------------------------------------------------
calibration_by_seed = study_report.calibration_by_seed


def remedy_table(
    reference: study_report.Study, remedy: study_report.Study, remedy_name: str, role: str = "noisy"
) -> pd.DataFrame:
    """One row per arm of the reference study and one for the remedy's CausalQwen, then the oracle: 95 %
    coverage, calibration error and MAE on the ``role`` numbers (intervals over seeds), and the median
    scale of U at the end of training."""
    rows = []
    entries = [(arm, reference, arm) for arm in reference.arms] + [(f"{ARM} ({remedy_name})", remedy, ARM)]
    for label, study, arm in entries:
        cov, err, mae = calibration_by_seed(study, arm, role)
        scales = [log[-1].get("median_scale_u", math.nan) for (a, _), log in study.logs.items() if a == arm]
        rows.append(
            {
                "model": label,
                "coverage 95%": study_report.interval_text(_unit_interval(cov)),
                "calibration error": study_report.interval_text(_unit_interval(err)),
                "MAE": study_report.interval_text(study_report.interval(mae)),
                "final median scale of U": float(np.median(scales)) if arm == ARM else math.nan,
            }
        )
    frame = study_report.numbers_frame(reference)
    frame = frame[frame["role"] == role]
    one = frame[(frame["arm"] == frame["arm"].iloc[0]) & (frame["seed"] == frame["seed"].iloc[0])]
    if one["oracle"].notna().any():
        u = study_report.oracle_pit(one)
        rows.append(
            {
                "model": "oracle",
                "coverage 95%": f"{study_report.coverage_curve(u, (0.95,))[0]:.3g}",
                "calibration error": f"{study_report.calibration_error(study_report.coverage_curve(u)):.3g}",
                "MAE": f"{float((one['oracle'] - one['value']).abs().mean()):.3g}",
                "final median scale of U": math.nan,
            }
        )
    return pd.DataFrame(rows).set_index("model")


def _unit_interval(values):
    """The seed interval of a fraction (coverage, calibration error), cut to [0, 1]."""
    from ..tasks.verdicts import CONFIDENCE, seed_interval

    return seed_interval(values, CONFIDENCE, bounds=(0.0, 1.0))


def remedy_sentences(
    reference: study_report.Study, remedy: study_report.Study, remedy_name: str, role: str = "noisy"
) -> str:
    """The remedy against the default CausalQwen and the baseline of the same budget: calibration error,
    95 % coverage (its verdict), MAE on the ``role`` numbers, and whether the scale of U still collapsed."""
    from .variants import check_same_budget

    check_same_budget(reference, remedy, "remedy")
    cov_r, err_r, mae_r = calibration_by_seed(remedy, ARM, role)
    name = f"{ARM} with {remedy_name}"
    lines = [f"- {study_report.coverage_verdict(cov_r, name).sentence}."]
    for arm in reference.arms:
        _cov, err, mae = calibration_by_seed(reference, arm, role)
        other = "the default CausalQwen" if arm == ARM else f"the {arm}"
        e = study_report.compare_arms(err_r, err, (name, other), "calibration error")
        m = study_report.compare_arms(mae_r, mae, (name, other), f"MAE on the {role} numbers")
        lines.append(f"- Against {other}: {e.sentence}. {m.sentence}.")
    steps = [collapse_step(log) for (a, _), log in sorted(remedy.logs.items()) if a == ARM]
    final = [log[-1]["median_scale_u"] for (a, _), log in remedy.logs.items() if a == ARM]
    lines.append(
        f"- The scale of U with {remedy_name} falls below {COLLAPSE_FRACTION:.0%} of its start "
        f"{_steps_text(steps)} (logged every {remedy.config.get('log_every')} steps) and ends at a median of "
        f"{float(np.median(final)):.3g}."
    )
    return "\n".join(lines)
