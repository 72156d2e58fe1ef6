"""Across-run agreement of head rankings: ``qwen-anatomy heads agree DIR DIR ...`` (chapter 40).

A ranking of heads that changes from one fine-tuning seed (or one evaluation subset) to the next
cannot be a property of the heads. Given the ``heads.csv`` of several saved runs of the same model
(``qwen-anatomy heads --out DIR`` folders, or the ``seed-<s>/`` folders of the book experiment), this
module compares every quantity column they share: for each pair of runs the Spearman ρ and the
overlap of the two top-K sets, against the chance level K²/N of two unrelated rankings.

Heads where a quantity is undefined in a run (NaN: a head that run did not ablate) are left out of
that quantity, in every pair, so that each pair compares the same N heads.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import UserInputError
from .stats import across_seed_agreement, check_top_k, spearman, top_k, topk_overlap

HEAD_COLUMNS = ("layer", "head", "kv_group")
SUMMARY_COLUMNS = ["quantity", "n_runs", "n_heads", "mean_spearman", "min_spearman", "k",
                   "mean_topk_overlap", "topk_chance", "identical"]  # fmt: skip


def read_heads_table(run_dir: str | Path) -> pd.DataFrame:
    """A saved run's ``heads.csv``, checked to have the head columns; UserInputError otherwise."""
    run_dir = Path(run_dir)
    path = run_dir / "heads.csv"
    if not path.is_file():
        hint = (
            f"; it holds seed folders: pass {run_dir}/seed-*"
            if any(run_dir.glob("seed-*/heads.csv"))
            else ": give folders written by `qwen-anatomy heads --out` (or the seed-<s> folders of "
            "the book experiment)"
        )
        raise UserInputError(f"{run_dir} has no heads.csv{hint}")
    try:
        table = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise UserInputError(
            f"{path} is not a readable CSV table ({err}); repair or remove that run"
        ) from None
    missing = [c for c in HEAD_COLUMNS if c not in table]
    if missing:
        raise UserInputError(f"{path} lacks the column(s) {', '.join(missing)}: not a heads table")
    return table


def _describe(table: pd.DataFrame) -> str:
    layers = table["layer"].nunique()
    return f"{len(table)} heads ({layers} layers x {table['head'].nunique()} heads)"


def check_same_heads(tables: dict[str, pd.DataFrame]) -> None:
    """Every run lists the same heads (layer, head, kv_group) in the same order, or UserInputError."""
    names = list(tables)
    first = tables[names[0]][list(HEAD_COLUMNS)].reset_index(drop=True)
    for name in names[1:]:
        other = tables[name][list(HEAD_COLUMNS)].reset_index(drop=True)
        if not first.equals(other):
            raise UserInputError(
                f"mismatched head sets: {name} has {_describe(tables[name])} but {names[0]} has "
                f"{_describe(tables[names[0]])}; agreement compares runs of the same model architecture"
            )


def shared_quantities(tables: dict[str, pd.DataFrame]) -> list[str]:
    """Numeric quantity columns present in every run, in the first run's column order."""
    first = next(iter(tables.values()))
    return [
        c
        for c in first.columns
        if c not in HEAD_COLUMNS
        and all(c in t and pd.api.types.is_numeric_dtype(t[c]) for t in tables.values())
    ]


def _defined(values: list[np.ndarray]) -> np.ndarray:
    """Mask of heads defined (not NaN) in every run."""
    return ~np.isnan(np.vstack(values)).any(0)


def agreement(
    tables: dict[str, pd.DataFrame], quantities: Sequence[str] | None = None, k: int | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(summary, pairs) of the across-run agreement of each quantity.

    ``summary``: one row per quantity: runs, heads compared N, mean and lowest pairwise Spearman ρ,
    K, mean top-K overlap, its chance level K²/N, and whether every run holds identical values (then
    ρ = 1 says nothing about seeds: e.g. I_pre of one θ0 evaluated on the same examples).
    ``pairs``: one row per quantity and pair of runs. ``k`` None = 10% of the N heads compared.
    UserInputError for mismatched head sets, an unknown quantity or K outside 1..N.
    """
    if len(tables) < 2:
        raise UserInputError(f"agreement needs at least 2 runs, got {len(tables)}")
    check_same_heads(tables)
    available = shared_quantities(tables)
    if quantities is None:
        quantities = available
    unknown = [q for q in quantities if q not in available]
    if unknown:
        raise UserInputError(
            f"quantity {unknown[0]!r} is not a numeric column of every run; shared: {', '.join(available)}"
        )
    names = list(tables)
    defined = {}
    for q in quantities:
        values = [tables[n][q].to_numpy(dtype=np.float64) for n in names]
        n = int(_defined(values).sum())
        if n == 0:
            raise UserInputError(f"{q} is undefined (NaN) for every head in some run: leave it out")
        if k is not None:
            check_top_k(k, n, "--top-k", among=f"heads where {q} is defined in every run")
        defined[q] = values
    summary, pairs = [], []
    for q, values in defined.items():
        stats = across_seed_agreement(values, k=k)
        ok = _defined(values)
        identical = all(np.array_equal(values[0][ok], v[ok]) for v in values[1:])
        summary.append({"quantity": q, "n_runs": len(names), **_pick(stats), "identical": identical})
        kq = top_k(int(ok.sum()), k=k)
        for (na, a), (nb, b) in combinations(zip(names, values, strict=True), 2):
            pairs.append(
                {
                    "quantity": q,
                    "run_a": na,
                    "run_b": nb,
                    "n_heads": int(ok.sum()),
                    "spearman": spearman(a[ok], b[ok]),
                    "k": kq,
                    "topk_overlap": topk_overlap(a[ok], b[ok], k=kq)["overlap"],
                    "topk_chance": kq * kq / ok.sum(),
                }
            )
    return pd.DataFrame(summary, columns=SUMMARY_COLUMNS), pd.DataFrame(pairs)


def _pick(stats: dict) -> dict:
    return {
        "n_heads": stats["n_heads"],
        "mean_spearman": stats["mean_spearman"],
        "min_spearman": stats["min_spearman"],
        "k": stats["k"],
        "mean_topk_overlap": stats["mean_topk_overlap"],
        "topk_chance": stats["topk_chance"],
    }


def agreement_table(agreement_json: dict) -> pd.DataFrame:
    """The book experiment's ``agreement.json`` as a table (one row per ranking with a measured
    agreement; entries without one, such as the single-θ0 I_pre note, are left out)."""
    rows = measured_agreement(agreement_json)
    cols = ["n_seeds", "mean_spearman", "min_spearman", "mean_topk_overlap", "topk_chance"]
    table = pd.DataFrame(rows).T.reindex(columns=cols)
    return table.astype({"n_seeds": int}) if len(table) else table


def measured_agreement(agreement_json: dict) -> dict[str, dict]:
    """The entries of ``agreement.json`` that hold a measured agreement (for the figure)."""
    return {k: v for k, v in agreement_json.items() if isinstance(v, dict) and "mean_spearman" in v}


def format_summary(summary: pd.DataFrame) -> str:
    """A short fixed-width table of the summary for the terminal."""
    lines = [f"{'quantity':<14} {'N':>5} {'mean ρ':>7} {'min ρ':>7} {'K':>4} {'overlap':>8} {'chance':>7}"]
    for row in summary.itertuples(index=False):
        note = "  (identical in every run)" if row.identical else ""
        lines.append(
            f"{row.quantity:<14} {row.n_heads:>5} {_f(row.mean_spearman):>7} {_f(row.min_spearman):>7} "
            f"{row.k:>4} {row.mean_topk_overlap:>8.2f} {row.topk_chance:>7.2f}{note}"
        )
    return "\n".join(lines)


def _f(x: float) -> str:
    return "nan" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:+.3f}"
