"""Texts whose numbers can be predicted, and the trivial references every model must beat
(chapter 50_causal_heads, issue 14).

A value drawn uniformly with nothing in the context that predicts it teaches nothing but the mean (the
first build's MAE was about 25 on U(0, 100) for every model). Here every number in a text carries a
*role* saying how it can be predicted from the text before it:

============  =====================================================================================
role          what predicts it
============  =====================================================================================
given         nothing: a stated quantity (uniform on its range), the first terms of a sequence
copy          an earlier number, 1 to 4 sentences back, with other numbers in between (copy_far)
sum           the sum of two stated numbers
difference    the difference of two stated numbers
total         quantity x unit price
conversion    a stated quantity in another unit (m to cm, hours to minutes, dozens, weeks to days)
sequence      the next term of an arithmetic sequence (from its third term on)
noisy         a reading of a stated true value with stated Normal noise: the oracle knows its law
random        nothing (the old templates: a temperature, a price with no question)
============  =====================================================================================

The *family* of a text is its template; the evaluation sets are one family group each
(:data:`EVAL_FAMILIES`), plus ``extreme`` (copy and random texts with values log-uniform on 1e-5 to 1e5)
and ``boundary`` (values in [0, 1]). In ``qa`` texts the answer after "Answer:" is a number for one
question in three and a word otherwise, so "is the next token a number" must be read from the question.

Trivial references (:func:`reference_predictions`): the training mean, copy-the-last-number (the
last number earlier in the same text; the training mean when there is none) and, for ``noisy`` numbers,
the oracle: the true value as median with the stated Normal spread (a 95 % interval of +-1.96 sigma).

Every generator takes a seed; the same seed gives the same examples.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

from ..errors import UserInputError
from .numtok import format_number

ITEMS = ["apple", "book", "lamp", "chair", "coffee", "ticket", "shirt", "phone", "bread", "pencil"]
CITIES = ["Paris", "Tokyo", "Cairo", "Lima", "Oslo", "Delhi", "Rome", "Quito"]
OBJECTS = ["table", "rope", "board", "pipe", "cable", "wall", "track", "bridge"]
NAMES = ["Ana", "Ben", "Chen", "Dara", "Eli", "Femi", "Gia", "Hugo"]
UNITS = ["cm", "m", "kg", "g", "litres"]
PLURALS = ["apples", "books", "lamps", "chairs", "tickets", "shirts", "pencils"]
# (from unit, to unit, factor, largest stated value, decimals): the converted value is value * factor,
# at most about 1,000 so that no family dominates the scale of the targets
CONVERSIONS = [
    ("m", "cm", 100, 9.99, 2),
    ("hours", "minutes", 60, 12, 1),
    ("dozen eggs", "eggs", 12, 40, 0),
    ("weeks", "days", 7, 60, 0),
]
NOISE_SIGMAS = (0.5, 1.0, 2.0, 5.0)

ROLES = ("given", "copy", "sum", "difference", "total", "conversion", "sequence", "noisy", "random")
PREDICTABLE_ROLES = ("copy", "sum", "difference", "total", "conversion", "sequence")
FAMILIES = (
    "copy_near",
    "copy_far",
    "qa",
    "sum",
    "difference",
    "total",
    "conversion",
    "sequence",
    "noisy",
    "random",
)
# Training mixes every family; predictable families are weighted up so most targets are learnable.
TRAIN_WEIGHTS = {
    "copy_near": 2,
    "copy_far": 2,
    "qa": 2,
    "sum": 1,
    "difference": 1,
    "total": 1,
    "conversion": 1,
    "sequence": 2,
    "noisy": 2,
    "random": 1,
}
EVAL_FAMILIES = {
    "copy": ("copy_near", "copy_far"),
    "qa": ("qa",),
    "arithmetic": ("sum", "difference", "total"),
    "conversion": ("conversion",),
    "sequence": ("sequence",),
    "noisy": ("noisy",),
    "random": ("random",),
    "extreme": ("copy_near", "copy_far", "random"),
    "boundary": ("copy_near", "copy_far", "random"),
}
EVAL_SETS = tuple(EVAL_FAMILIES)


@dataclass(frozen=True)
class Number:
    """One number of a text, in order of appearance: its text, value, role and (for ``noisy``) the
    oracle's Normal law ``(median, sigma)``."""

    text: str
    value: float
    role: str
    oracle: tuple[float, float] | None = None


@dataclass
class Example:
    """A text with its numbers annotated (``numbers`` in the order :func:`numtok.find_numbers` finds them)."""

    text: str
    family: str
    numbers: list[Number] = field(default_factory=list)


class _Builder:
    """Assembles a text piece by piece, recording each number with its role."""

    def __init__(self, family: str) -> None:
        self.family = family
        self.parts: list[str] = []
        self.numbers: list[Number] = []

    def say(self, text: str) -> _Builder:
        self.parts.append(text)
        return self

    def num(self, value: float | str, role: str, oracle: tuple[float, float] | None = None) -> _Builder:
        text = value if isinstance(value, str) else format_number(round(value, 6))
        self.parts.append(text)
        self.numbers.append(Number(text, float(text), role, oracle))
        return self

    def build(self) -> Example:
        return Example("".join(self.parts), self.family, self.numbers)


def stated_value(rng: random.Random, scale: str) -> str:
    """A stated quantity's text: (0, 100) with 0-2 decimals, or the extreme / boundary ranges."""
    if scale == "extreme":
        v = 10 ** rng.uniform(-5, 5)
        digits = max(0, min(6, 2 - int(f"{v:e}".split("e")[1])))
        text = f"{v:.{digits}f}"
        return text if float(text) > 0 else "0.00001"
    if scale == "boundary":
        return f"{rng.uniform(0, 1):.{rng.choice([1, 2])}f}"
    decimals = rng.choice([0, 1, 2])
    text = f"{rng.uniform(0.01, 99.99):.{decimals}f}"
    return text if float(text) > 0 else "1"


def _copy(rng: random.Random, scale: str, far: bool) -> Example:
    b = _Builder("copy_far" if far else "copy_near")
    names = rng.sample(NAMES, 5)
    items = rng.sample(ITEMS, 5)
    v = stated_value(rng, scale)
    if rng.random() < 0.5:
        b.say(f"{names[0]} paid ").num(v, "given").say(f" dollars for the {items[0]}.")
    else:
        b.say("For ").num(v, "given").say(f" dollars, {names[0]} bought the {items[0]}.")
    for k in range(1, rng.randint(1, 4) if far else 1):
        b.say(f" {names[k]} paid ").num(stated_value(rng, scale), "given").say(
            f" dollars for the {items[k]}."
        )
    if rng.random() < 0.5:
        b.say(f" How much did {names[0]} pay? ").num(v, "copy").say(" dollars.")
    else:
        b.say(f" So the {items[0]} cost {names[0]} ").num(v, "copy").say(" dollars.")
    return b.build()


def _qa(rng: random.Random, scale: str) -> Example:
    b = _Builder("qa")
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    v = stated_value(rng, scale)
    b.say(f"{name} paid ").num(v, "given").say(f" dollars for the {item}. Question: ")
    kind = rng.choice(("number", "item", "name"))
    if kind == "number":
        return b.say(f"how much did {name} pay? Answer: ").num(v, "copy").build()
    if kind == "item":
        return b.say(f"what did {name} buy? Answer: the {item}").build()
    return b.say(f"who bought the {item}? Answer: {name}").build()


def _money(rng: random.Random) -> float:
    return round(rng.uniform(0.5, 60), rng.choice([0, 1, 2]))


def _arithmetic(rng: random.Random, family: str) -> Example:
    b = _Builder(family)
    n1, n2 = rng.sample(NAMES, 2)
    if family == "sum":
        a, c = _money(rng), _money(rng)
        i1, i2 = rng.sample(ITEMS, 2)
        b.say(f"The {i1} costs ").num(a, "given").say(f" dollars and the {i2} costs ").num(c, "given")
        return b.say(" dollars, so both cost ").num(a + c, "sum").say(" dollars together.").build()
    if family == "difference":
        a, c = sorted((_money(rng), _money(rng)), reverse=True)
        b.say(f"{n1} had ").num(a, "given").say(" dollars and spent ").num(c, "given")
        return b.say(f", so {n1} has ").num(a - c, "difference").say(" dollars left.").build()
    q, p = rng.randint(2, 9), _money(rng)
    b.say(f"{n2} bought ").num(q, "given").say(f" {rng.choice(PLURALS)} at ").num(p, "given")
    return b.say(" dollars each and paid ").num(q * p, "total").say(" dollars.").build()


def _conversion(rng: random.Random) -> Example:
    b = _Builder("conversion")
    src, dst, factor, top, decimals = rng.choice(CONVERSIONS)
    v = max(round(rng.uniform(0.1, top), decimals), 1 if decimals == 0 else 0.1)
    if src == "m":
        b.say(f"The {rng.choice(OBJECTS)} is ").num(v, "given").say(" m long, that is ")
    elif src == "hours":
        b.say("The trip took ").num(v, "given").say(" hours, that is ")
    else:
        unit = src[:-1] if v == 1 and src.endswith("s") else src  # "1 week", "1 dozen eggs"
        b.num(v, "given").say(f" {unit} make ")
    return b.num(v * factor, "conversion").say(f" {dst}.").build()


def _sequence(rng: random.Random) -> Example:
    b = _Builder("sequence")
    start, step = rng.randint(0, 60), rng.choice([-1, 1]) * rng.randint(1, 12)
    length = rng.randint(4, 7)
    b.say(rng.choice(("The numbers go ", "Count along: ", "Sequence: ")))
    for k in range(length):
        if k:
            b.say(", ")
        b.num(start + k * step, "given" if k < 2 else "sequence")
    return b.say(".").build()


def _noisy(rng: random.Random) -> Example:
    b = _Builder("noisy")
    true, sigma = rng.randint(10, 90), rng.choice(NOISE_SIGMAS)
    reading = round(rng.gauss(true, sigma), 2)
    b.say("A scale with an error of ").num(sigma, "given").say(" g weighs a ").num(true, "given")
    return b.say(" g weight and reads ").num(reading, "noisy", oracle=(float(true), sigma)).say(" g.").build()


def _random(rng: random.Random, scale: str) -> Example:
    b = _Builder("random")
    v = stated_value(rng, scale)
    form = rng.randrange(4)
    if form == 0:
        return (
            b.say(f"Today the temperature in {rng.choice(CITIES)} is ")
            .num(v, "random")
            .say(" degrees.")
            .build()
        )
    if form == 1:
        return (
            b.say(f"The {rng.choice(OBJECTS)} measures ")
            .num(v, "random")
            .say(f" {rng.choice(UNITS)}.")
            .build()
        )
    if form == 2:
        return b.say("value: ").num(v, "random").build()
    return b.num(v, "random").say(f" dollars is the price of the {rng.choice(ITEMS)}.").build()


def make_example(rng: random.Random, family: str, scale: str = "normal") -> Example:
    """One text of a family; ``scale`` ("normal", "extreme" or "boundary") sets the stated values'
    range for the copy, qa and random families."""
    if family in ("copy_near", "copy_far"):
        return _copy(rng, scale, far=family == "copy_far")
    if family == "qa":
        return _qa(rng, scale)
    if family in ("sum", "difference", "total"):
        return _arithmetic(rng, family)
    if family == "conversion":
        return _conversion(rng)
    if family == "sequence":
        return _sequence(rng)
    if family == "noisy":
        return _noisy(rng)
    if family == "random":
        return _random(rng, scale)
    raise UserInputError(f"template family {family!r}: use one of {', '.join(FAMILIES)}")


def make_examples(kind: str, n: int, seed: int) -> list[Example]:
    """``n`` annotated texts: ``kind`` "train" (every family, :data:`TRAIN_WEIGHTS`) or an evaluation
    set of :data:`EVAL_SETS` (its families in turn)."""
    if kind != "train" and kind not in EVAL_FAMILIES:
        raise UserInputError(f"text kind {kind!r}: use 'train' or one of {', '.join(EVAL_SETS)}")
    if not isinstance(n, int) or isinstance(n, bool) or n <= 0:
        raise UserInputError(f"n={n!r}: a dataset needs at least one text")
    rng = random.Random(f"causal-templates-{kind}-{seed}")
    scale = kind if kind in ("extreme", "boundary") else "normal"
    if kind == "train":
        families = rng.choices(list(TRAIN_WEIGHTS), weights=list(TRAIN_WEIGHTS.values()), k=n)
    else:
        group = EVAL_FAMILIES[kind]
        families = [group[i % len(group)] for i in range(n)]
    return [make_example(rng, f, scale) for f in families]


def make_texts(kind: str, n: int, seed: int) -> list[str]:
    return [e.text for e in make_examples(kind, n, seed)]


def evaluation_sets(n: int, seed: int = 1234) -> dict[str, list[Example]]:
    """The fixed evaluation sets (seeded independently of the training texts)."""
    return {name: make_examples(name, n, seed) for name in EVAL_SETS}


# -- trivial references -----------------------------------------------------------------------------------
def training_mean(examples: list[Example]) -> float:
    """The mean of every number in the training texts: the constant prediction a regression head
    reaches when nothing in the context helps."""
    values = [x.value for e in examples for x in e.numbers]
    if not values:
        raise UserInputError("training texts hold no numbers: the training mean is undefined")
    return float(sum(values) / len(values))


def reference_predictions(example: Example, train_mean: float) -> list[dict]:
    """For each number of ``example``: the true value, its role, and the references' predictions:
    ``mean`` (the training mean), ``copy_last`` (the previous number in the text, else the mean) and,
    for noisy numbers, ``oracle`` (the true value) with ``oracle_sigma``."""
    rows = []
    previous = None
    for x in example.numbers:
        row = {
            "family": example.family,
            "role": x.role,
            "value": x.value,
            "mean": train_mean,
            "copy_last": train_mean if previous is None else previous,
        }
        if x.oracle is not None:
            row["oracle"], row["oracle_sigma"] = x.oracle
        rows.append(row)
        previous = x.value
    return rows


def error_metrics(predicted: list[float], true: list[float]) -> dict[str, float]:
    """MAE, median absolute error and RMSE of predictions; NaN for each when there are none."""
    if len(predicted) != len(true):
        raise ValueError(f"{len(predicted)} predictions for {len(true)} values")
    if not true:
        return {"n": 0, "mae": math.nan, "median_ae": math.nan, "rmse": math.nan}
    errors = sorted(abs(p - t) for p, t in zip(predicted, true, strict=True))
    n, mid = len(errors), len(errors) // 2
    median = errors[mid] if n % 2 else (errors[mid - 1] + errors[mid]) / 2
    return {
        "n": n,
        "mae": sum(errors) / n,
        "median_ae": median,
        "rmse": math.sqrt(sum(e * e for e in errors) / n),
    }


NORMAL_95 = 1.959963984540054  # the 97.5 % quantile of the standard Normal


def reference_table(examples: list[Example], train_mean: float, by: str = "role") -> list[dict]:
    """The references' errors grouped by ``role`` or ``family``: one row per group and reference
    (``mean``, ``copy_last``; ``oracle`` where there are noisy numbers, with its 95 % coverage)."""
    if by not in ("role", "family"):
        raise UserInputError(f"by={by!r}: group by 'role' or 'family'")
    groups: dict[str, list[dict]] = {}
    for e in examples:
        for row in reference_predictions(e, train_mean):
            groups.setdefault(row[by], []).append(row)
    table = []
    for key in sorted(groups, key=lambda k: (ROLES + FAMILIES).index(k) if k in ROLES + FAMILIES else 99):
        rows = groups[key]
        true = [r["value"] for r in rows]
        for ref in ("mean", "copy_last"):
            table.append({by: key, "reference": ref, **error_metrics([r[ref] for r in rows], true)})
        noisy = [r for r in rows if "oracle" in r]
        if noisy:
            t = [r["value"] for r in noisy]
            m = error_metrics([r["oracle"] for r in noisy], t)
            inside = [abs(r["value"] - r["oracle"]) <= NORMAL_95 * r["oracle_sigma"] for r in noisy]
            m["coverage95"] = sum(inside) / len(inside)
            table.append({by: key, "reference": "oracle", **m})
    return table
