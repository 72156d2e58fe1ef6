"""The sentences of chapter 30_synthetic_tasks, computed from curves and seeds.

Three questions, each with its stated rule, so that every "learned", "plateaued", "still rising"
and "harder" in the chapter follows from the numbers (tested on hand-made curves in
``tests/test_tasks_verdicts.py``):

* **Learned.** A run learned its task when its final exact match (greedy, on the whole test set)
  is at least :data:`LEARNED`; a task, order and length is "learned" when every seed did,
  "learned by k of m seeds" when some did.
* **Plateaued or still rising.** Over the last :data:`WINDOW` exact-match checks of a run (the test
  subset checked during training) the change is the last value minus the first. The curves
  *plateaued* when every seed's change is within ±:data:`PLATEAU_TOL` or the :data:`CONFIDENCE`
  t-interval of the changes across seeds is; they are *still rising at step S* (S: the last step
  checked) when every seed rose by more than PLATEAU_TOL or the interval lies above it, and
  *falling* in the mirror case. Otherwise the seeds disagree and the sentence names the seeds that
  are still rising. A run at the ceiling (last check at least
  1 − PLATEAU_TOL) counts as flat. Caveat: with a learning rate that decays linearly to zero, the
  last checks are taken at a small learning rate, so "plateaued" means "settled under this
  schedule", not "cannot improve"; a rise at the end is the stronger statement.
* **Harder.** The inverse order is harder when the :data:`CONFIDENCE` t-intervals over seeds of
  the final exact match do not overlap, forward above inverse, and the means differ by more than
  :data:`MIN_MARGIN`; "no difference shown" otherwise. One seed gives no interval and no verdict.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

# exact match at or above which a run "learned" its task
LEARNED = 0.9
# the checks a plateau is judged on, and the change below which a curve is flat: two binomial
# standard errors of an exact match near 0.5 checked on 1,000 test samples (the length sweep checks
# the whole test set; a 200-sample subset is noisier, and a flat curve can then look "mixed")
WINDOW = 3
PLATEAU_TOL = 0.03
# the t-intervals over seeds
CONFIDENCE = 0.95
# the smallest difference of means called a difference: about two binomial standard errors of an
# exact match near 0.5 on 1,000 test samples (sqrt(0.25 / 1000) = 0.016)
MIN_MARGIN = 0.03


@dataclass(frozen=True)
class Interval:
    """Mean and :data:`CONFIDENCE` t-interval over seeds (``low == high == mean`` for one seed)."""

    mean: float
    low: float
    high: float
    count: int

    def text(self, digits: int = 3) -> str:
        if self.count == 0:
            return "no runs"
        if self.count == 1:
            return f"{self.mean:.{digits}f} (1 seed)"
        return f"{self.mean:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}] ({self.count} seeds)"


@dataclass(frozen=True)
class Verdict:
    """``kind`` (a fixed word per branch, for tests and tables), ``sentence`` (for the page) and the
    numbers behind it."""

    kind: str
    sentence: str
    details: dict = field(default_factory=dict)


def _finite(values: Iterable) -> list[float]:
    out = []
    for v in values:
        try:
            v = float(v)
        except (TypeError, ValueError):
            continue
        if math.isfinite(v):
            out.append(v)
    return out


def seed_interval(
    values: Iterable, confidence: float = CONFIDENCE, bounds: tuple[float, float] | None = (0.0, 1.0)
) -> Interval:
    """Mean and t-interval of the finite ``values`` (one per seed), clipped to ``bounds``."""
    from scipy import stats

    vals = _finite(values)
    if not vals:
        return Interval(math.nan, math.nan, math.nan, 0)
    mean = sum(vals) / len(vals)
    if len(vals) == 1:
        return Interval(mean, mean, mean, 1)
    sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1))
    half = float(stats.t.ppf(0.5 + confidence / 2, len(vals) - 1)) * sd / math.sqrt(len(vals))
    low, high = mean - half, mean + half
    if bounds is not None:
        low, high = max(low, bounds[0]), min(high, bounds[1])
    return Interval(mean, low, high, len(vals))


# -- learned ----------------------------------------------------------------------------------------
def learned(values: Iterable, threshold: float = LEARNED) -> Verdict:
    """Did the runs (one final exact match per seed) learn the task? Kinds: ``no runs``,
    ``learned``, ``partly learned``, ``not learned``."""
    vals = _finite(values)
    if not vals:
        return Verdict("no runs", "no finished run")
    hits = sum(v >= threshold for v in vals)
    spread = f"{min(vals):.3f}" if min(vals) == max(vals) else f"{min(vals):.3f}–{max(vals):.3f}"
    details = {"learned_seeds": hits, "seeds": len(vals), "threshold": threshold}
    if hits == len(vals):
        who = "the single seed" if len(vals) == 1 else f"all {len(vals)} seeds"
        return Verdict(
            "learned", f"learned by {who} (exact match {spread}, threshold {threshold:g})", details
        )
    if hits:
        return Verdict(
            "partly learned",
            f"learned by {hits} of {len(vals)} seeds (exact match {spread}, threshold {threshold:g})",
            details,
        )
    return Verdict("not learned", f"not learned (exact match {spread}, below {threshold:g})", details)


# -- plateau ----------------------------------------------------------------------------------------
def curve_change(points: Sequence[Mapping], window: int = WINDOW) -> dict | None:
    """Change of exact match over the last ``window`` checks of one run's curve (``curves.json``'s
    ``exact_match`` list): ``{"change", "from_step", "to_step", "last"}``; None with fewer checks."""
    pts = sorted((p for p in points if _finite([p.get("exact_match")])), key=lambda p: p["step"])
    if len(pts) < max(window, 2):
        return None
    first, last = pts[-window], pts[-1]
    return {
        "change": float(last["exact_match"]) - float(first["exact_match"]),
        "from_step": int(first["step"]),
        "to_step": int(last["step"]),
        "last": float(last["exact_match"]),
    }


def _seeds(seeds: Sequence) -> str:
    return ("seed " if len(seeds) == 1 else "seeds ") + ", ".join(map(str, seeds))


def trend(
    curves: Mapping[int, Sequence[Mapping]],
    window: int = WINDOW,
    tolerance: float = PLATEAU_TOL,
    confidence: float = CONFIDENCE,
) -> Verdict:
    """Plateaued, still rising or falling at the end of training, over seeds: ``curves`` maps a seed
    to its exact-match checks. Kinds: ``no curves``, ``too few checks``, ``plateaued``,
    ``still rising``, ``falling``, ``mixed`` (the seeds disagree; the rising ones are named)."""
    if not curves:
        return Verdict("no curves", "no training curve")
    changes = {seed: curve_change(points, window) for seed, points in sorted(curves.items())}
    short = [seed for seed, c in changes.items() if c is None]
    if short:
        return Verdict(
            "too few checks",
            f"{_seeds(short)} checked fewer than {window} times: no plateau verdict",
            {"seeds": short},
        )
    ceiling = [seed for seed, c in changes.items() if c["last"] >= 1 - tolerance]
    effective = {seed: (0.0 if seed in ceiling else c["change"]) for seed, c in changes.items()}
    ci = seed_interval(effective.values(), confidence, bounds=None)
    step = max(c["to_step"] for c in changes.values())
    start = min(c["from_step"] for c in changes.values())
    details = {"step": step, "from_step": start, "interval": ci, "changes": effective, "at_ceiling": ceiling}
    span = f"over the last {window} checks (steps {start}–{step})"
    change = (
        f"{ci.mean:+.3f}"
        if ci.count == 1
        else f"{ci.mean:+.3f} on average (interval [{ci.low:+.3f}, {ci.high:+.3f}] across {ci.count} seeds)"
    )
    rising = [seed for seed, c in effective.items() if c > tolerance]
    flat = [seed for seed, c in effective.items() if abs(c) <= tolerance]
    falling = [seed for seed, c in effective.items() if c < -tolerance]
    if len(flat) == len(effective) or (-tolerance <= ci.low and ci.high <= tolerance):
        note = f" ({_seeds(ceiling)} at the ceiling)" if ceiling else ""
        return Verdict(
            "plateaued",
            f"plateaued by step {step}: exact match changed by {change} {span}, within ±{tolerance:g}{note}",
            details,
        )
    if len(rising) == len(effective) or ci.low > tolerance:
        return Verdict(
            "still rising",
            f"still rising at step {step}: exact match rose by {change} {span}, more than {tolerance:g}",
            details,
        )
    if len(falling) == len(effective) or ci.high < -tolerance:
        return Verdict(
            "falling",
            f"falling at step {step}: exact match changed by {change} {span}, less than −{tolerance:g}",
            details,
        )
    parts = []
    if rising:
        gains = ", ".join(f"{effective[s]:+.3f}" for s in rising)
        parts.append(f"{_seeds(rising)} still rising at step {step} ({gains} {span})")
    if flat:
        parts.append(f"{_seeds(flat)} flat")
    if falling:
        parts.append(f"{_seeds(falling)} falling")
    return Verdict("mixed", "not settled: " + "; ".join(parts), {**details, "rising": rising})


# -- harder ---------------------------------------------------------------------------------------
def compare(
    a: Iterable,
    b: Iterable,
    names: tuple[str, str],
    confidence: float = CONFIDENCE,
    min_margin: float = MIN_MARGIN,
) -> Verdict:
    """Is arm ``a`` above arm ``b`` (final exact match per seed)? Kinds: ``missing``, ``too few
    seeds``, ``a higher``, ``b higher``, ``no difference shown``; the sentence names the arms."""
    x, y = seed_interval(a, confidence), seed_interval(b, confidence)
    details = {"a": x, "b": y, "margin": x.mean - y.mean}
    if x.count == 0 or y.count == 0:
        which = names[0] if x.count == 0 else names[1]
        return Verdict("missing", f"no finished {which} run: no comparison", details)
    both = f"{names[0]} {x.text()}, {names[1]} {y.text()}"
    if min(x.count, y.count) < 2:
        return Verdict("too few seeds", f"{both}: a single seed gives no interval, so no verdict", details)
    margin = x.mean - y.mean
    level = f"{confidence:.0%} intervals over seeds"
    if x.low > y.high and margin > min_margin:
        return Verdict("a higher", f"{both}; the {level} do not overlap", details)
    if y.low > x.high and -margin > min_margin:
        return Verdict("b higher", f"{both}; the {level} do not overlap", details)
    why = (
        f"the {level} overlap"
        if x.low <= y.high and y.low <= x.high
        else f"the means differ by less than {min_margin:g}"
    )
    return Verdict("no difference shown", f"{both}; {why}", details)


def harder(
    forward: Iterable, inverse: Iterable, confidence: float = CONFIDENCE, min_margin: float = MIN_MARGIN
) -> Verdict:
    """Is the inverse order harder than the forward one? ``forward``/``inverse``: final exact match
    per seed. Kinds: ``missing``, ``too few seeds``, ``inverse harder``, ``forward harder``,
    ``no difference shown``."""
    v = compare(forward, inverse, ("forward", "inverse"), confidence, min_margin)
    margin = abs(v.details["margin"])
    if v.kind == "a higher":
        return Verdict(
            "inverse harder",
            f"the inverse order is harder, exact match {margin:.3f} lower ({v.sentence})",
            v.details,
        )
    if v.kind == "b higher":
        return Verdict(
            "forward harder",
            f"the forward order is harder, exact match {margin:.3f} lower ({v.sentence})",
            v.details,
        )
    if v.kind == "no difference shown":
        return Verdict(v.kind, f"no difference shown ({v.sentence})", v.details)
    return v


# -- does the gap grow with the length? -------------------------------------------------------------
def gap_with_length(
    by_length: Mapping[int, tuple[Iterable, Iterable]],
    confidence: float = CONFIDENCE,
    min_margin: float = MIN_MARGIN,
    threshold: float = LEARNED,
) -> Verdict:
    """Does the forward-minus-inverse gap of exact match change from the shortest to the longest
    length? ``by_length``: n -> (forward values, inverse values), one per seed. The gap's half-width
    at each n combines the two orders' (root of the sum of squares); the change is shown when it
    exceeds the combined half-width of both lengths and :data:`MIN_MARGIN`. Kinds: ``too few
    lengths``, ``grows``, ``shrinks``, ``no change shown``."""
    gaps = {}
    for n, (fwd, inv) in sorted(by_length.items()):
        f, i = seed_interval(fwd, confidence), seed_interval(inv, confidence)
        if min(f.count, i.count) < 2:
            continue
        half = math.hypot(max(f.high - f.mean, f.mean - f.low), max(i.high - i.mean, i.mean - i.low))
        gaps[n] = {"gap": f.mean - i.mean, "half": half, "forward": f.mean}
    if len(gaps) < 2:
        return Verdict(
            "too few lengths",
            "fewer than two lengths with both orders on at least 2 seeds: no trend with length",
            {"gaps": gaps},
        )
    short, long = min(gaps), max(gaps)
    change = gaps[long]["gap"] - gaps[short]["gap"]
    half = math.hypot(gaps[short]["half"], gaps[long]["half"])
    text = (
        f"the gap (forward minus inverse exact match) goes from {gaps[short]['gap']:.3f} at n={short} to "
        f"{gaps[long]['gap']:.3f} at n={long} (change {change:+.3f} ± {half:.3f})"
    )
    unlearned = [n for n in (short, long) if gaps[n]["forward"] < threshold]
    note = (
        f"; the forward order itself is not learned at n={', '.join(map(str, unlearned))}, which bounds the gap"
        if unlearned
        else ""
    )
    details = {"gaps": gaps, "change": change, "half": half}
    if change > half and change > min_margin:
        return Verdict("grows", f"{text}: it grows with the length{note}", details)
    if -change > half and -change > min_margin:
        return Verdict("shrinks", f"{text}: it shrinks with the length{note}", details)
    return Verdict("no change shown", f"{text}: no change with the length is shown{note}", details)


# -- the chapter's tables ---------------------------------------------------------------------------
def _curves_of(group, curves: Mapping) -> dict[int, list]:
    out = {}
    for config, n, seed in zip(group["config"], group["n"], group["seed"], strict=True):
        c = curves.get((config, int(n), int(seed)))
        if c is not None:
            out[int(seed)] = c.get("exact_match", [])
    return out


def _model_key(results) -> list[str]:
    return ["model_type"] if "model_type" in results else []


def verdict_table(results, curves: Mapping):
    """One row per (model type,) task, length and order: seeds, mean exact match and interval, the
    learned verdict and the curve verdict (``results``/``curves`` from
    :func:`qwen_anatomy.tasks.experiment.load_committed`; curves keyed by (config, n, seed))."""
    import pandas as pd

    rows = []
    keys = [*_model_key(results), "task", "n", "order"]
    for key, group in results.groupby(keys, sort=True):
        key = dict(zip(keys, key if isinstance(key, tuple) else (key,), strict=True))
        ci = seed_interval(group["exact_match"])
        rows.append(
            {
                **key,
                "seeds": ci.count,
                "exact match": round(ci.mean, 3),
                "interval": f"[{ci.low:.3f}, {ci.high:.3f}]" if ci.count > 1 else "",
                "steps": int(group["steps"].max()),
                "learned": learned(group["exact_match"]).sentence,
                "curve": trend(_curves_of(group, curves)).sentence,
            }
        )
    return pd.DataFrame(rows)


def order_table(results):
    """One row per (model type,) task and length: the harder verdict (``kind`` and ``sentence``)."""
    import pandas as pd

    rows = []
    keys = [*_model_key(results), "task", "n"]
    for key, group in results.groupby(keys, sort=True):
        key = dict(zip(keys, key if isinstance(key, tuple) else (key,), strict=True))
        v = harder(
            group.loc[group["order"] == "forward", "exact_match"],
            group.loc[group["order"] == "inverse", "exact_match"],
        )
        rows.append({**key, "verdict": v.kind, "sentence": v.sentence})
    return pd.DataFrame(rows)


TASK_NAMES = {"relu": "ReLU", "square": "Square", "index": "Index"}


def length_sentences(results, curves: Mapping) -> str:
    """Markdown: per task, per length, both orders' learned and curve verdicts and the harder verdict,
    then whether the gap changes with the length. ``results`` of one model type."""
    table = verdict_table(results, curves).set_index(["task", "n", "order"])
    orders = order_table(results).set_index(["task", "n"])
    lines = []
    for task in sorted(
        set(results["task"]), key=lambda t: list(TASK_NAMES).index(t) if t in TASK_NAMES else 9
    ):
        lines.append(f"**{TASK_NAMES.get(task, task)}**")
        by_length = {}
        for n in sorted(set(results.loc[results["task"] == task, "n"])):
            sel = results[(results["task"] == task) & (results["n"] == n)]
            by_length[int(n)] = (
                sel.loc[sel["order"] == "forward", "exact_match"],
                sel.loc[sel["order"] == "inverse", "exact_match"],
            )
            parts = []
            for order in ("forward", "inverse"):
                if (task, n, order) in table.index:
                    row = table.loc[(task, n, order)]
                    parts.append(f"{order} {row['learned']}; {row['curve']}")
                else:
                    parts.append(f"{order}: no run")
            lines.append(
                f"* $n={n}$: " + ". ".join(parts) + f". Orders: {orders.loc[(task, n), 'sentence']}."
            )
        lines.append(f"* Length: {gap_with_length(by_length).sentence}.")
        lines.append("")
    return "\n".join(lines).strip()


def rule_sentence() -> str:
    """The rules behind the words, for the page."""
    return (
        f'"Learned": final exact match at least {LEARNED:g} on the whole test set. "Plateaued" / "still '
        f'rising": the change of exact match over the last {WINDOW} checks during training, with its '
        f"{CONFIDENCE:.0%} interval over seeds, within ±{PLATEAU_TOL:g} / above {PLATEAU_TOL:g}. "
        f'"Harder": the {CONFIDENCE:.0%} intervals over seeds of the two orders do not overlap and the means '
        f"differ by more than {MIN_MARGIN:g}."
    )
