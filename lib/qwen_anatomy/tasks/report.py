"""Verdicts and sentences of chapter 30_synthetic_tasks, computed from saved results.

The chapter prints every comparison of the forward and inverse orders through these functions, so
that the wording (who is ahead, by how much, on how many seeds) follows the numbers and is tested
(``tests/test_tasks_report.py``) on hand-made inputs: ties, missing values and a single seed.

Inputs are the frames of :mod:`qwen_anatomy.tasks.experiment`: ``results`` (one row per config x
seed, from ``load_results``), ``table`` (``seed_table(results)``: task, n, order, seeds, mean, std,
min, max of exact match) and ``curves`` (``load_curves``: ``{(config, seed): curves.json}``).
"""

from __future__ import annotations

import math

import pandas as pd

# Forward beats inverse "clearly" on a seed when its exact match is higher by more than this.
CLEAR_MARGIN = 0.05
# Orders whose mean exact match differ by at most this are "about equally hard".
EQUAL_GAP = 0.1
# Below this mean exact match (both orders) a task is "not learned".
NOT_LEARNED = 0.1
TASK_NAMES = {"relu": "ReLU", "square": "Square", "index": "Index"}


def _missing(x) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def clear_wins(results: pd.DataFrame, task: str, n: int, margin: float = CLEAR_MARGIN) -> tuple[int, int]:
    """(seeds where forward beats inverse by more than ``margin`` exact match, seeds with both orders).

    A seed missing either order, or whose exact match is missing (NaN/None), is not paired.
    """
    runs = results[(results["task"] == task) & (results["n"] == n)]
    if runs.empty:
        return 0, 0
    runs = runs.assign(exact_match=pd.to_numeric(runs["exact_match"], errors="coerce"))
    pairs = runs.pivot_table(index="seed", columns="order", values="exact_match").dropna()
    if not {"forward", "inverse"} <= set(pairs.columns):
        return 0, 0
    return int((pairs["forward"] - pairs["inverse"] > margin).sum()), len(pairs)


def order_verdict(forward: pd.Series, inverse: pd.Series, wins: int, paired: int) -> str:
    """The verdict clause for one task: ``forward``/``inverse`` are rows of ``seed_table``."""
    f_mean, i_mean = forward["mean"], inverse["mean"]
    if _missing(f_mean) or _missing(i_mean):
        which = "forward" if _missing(f_mean) else "inverse"
        return f"no exact match was recorded for the {which} order, so the orders cannot be compared"
    one_seed = min(forward["seeds"], inverse["seeds"]) < 2
    gap = f_mean - i_mean
    if max(f_mean, i_mean) < NOT_LEARNED:
        return "neither order is learned at this budget"
    if abs(gap) <= EQUAL_GAP:
        return "the orders are about equally hard"
    if gap > 0:
        if one_seed:
            return "the forward order is ahead (a single seed)"
        if paired and wins == paired:
            return f"the forward order is ahead in every seed, by more than {CLEAR_MARGIN:g}"
        return (
            f"the forward order is ahead on average, but by more than {CLEAR_MARGIN:g} in only "
            f"{wins} of {paired} seeds"
        )
    return "the inverse order scores higher" + (" (a single seed)" if one_seed else "")


def _range(row: pd.Series) -> str:
    return f"{row['mean']:.3f} (seeds: {int(row['seeds'])}, range {row['min']:.3f}–{row['max']:.3f})"


def summarise(table: pd.DataFrame, results: pd.DataFrame) -> str:
    """One Markdown bullet per task and n: both orders' mean and range over seeds, and the verdict."""
    lines = []
    for (task, n), group in table.groupby(["task", "n"]):
        by_order = group.set_index("order")
        if {"forward", "inverse"} <= set(by_order.index):
            f, i = by_order.loc["forward"], by_order.loc["inverse"]
            wins, paired = clear_wins(results, task, n)
            verdict = order_verdict(f, i, wins, paired)
            lines.append(f"* **{task} n={n}**: forward {_range(f)}, inverse {_range(i)}: {verdict}.")
        else:
            for order, row in by_order.iterrows():
                lines.append(
                    f"* **{task} n={n}** {order}: {row['mean']:.3f} over {int(row['seeds'])} seed(s); "
                    "the other order has no run yet."
                )
    return "\n".join(lines)


def equal_step_comparison(curves: dict) -> pd.DataFrame:
    """Forward against inverse at the largest step both runs of a seed were checked at.

    One row per (forward config, seed) whose ``<config>_inverse`` run exists: task, seed, step,
    forward and inverse exact match (on the test subset checked during training).
    """
    rows = []
    for (cfg, seed), c in curves.items():
        if cfg.endswith("_inverse") or (cfg + "_inverse", seed) not in curves:
            continue
        fwd = {r["step"]: r["exact_match"] for r in c["exact_match"]}
        inv = {r["step"]: r["exact_match"] for r in curves[(cfg + "_inverse", seed)]["exact_match"]}
        common = sorted(set(fwd) & set(inv))
        if common:
            step = common[-1]
            rows.append({"task": cfg, "seed": seed, "step": step, "forward": fwd[step], "inverse": inv[step]})
    return pd.DataFrame(rows, columns=["task", "seed", "step", "forward", "inverse"])


def equal_step_sentence(same_steps: pd.DataFrame) -> str:
    """How many task-and-seed pairs have forward ahead at equal steps (ties and NaN are not ahead)."""
    if same_steps.empty:
        return "No forward and inverse run of the same seed were checked at a common step."
    ahead = int((same_steps["forward"] > same_steps["inverse"]).sum())
    ties = int((same_steps["forward"] == same_steps["inverse"]).sum())
    return (
        "At equal training steps (exact match on the test subset checked during training), the "
        f"forward order is ahead in {ahead} of {len(same_steps)} task-and-seed pairs"
        + (f" ({ties} tied)" if ties else "")
        + "."
    )


def live_sentence(forward_em: float, inverse_em: float, steps: int, examples: int) -> str:
    """The live demonstration's two exact matches, and whether forward is ahead at that budget."""
    return (
        f"After {steps} steps the small model reaches exact match {forward_em:.3f} in the forward "
        f"order and {inverse_em:.3f} in the inverse order on {examples} test samples. "
        + (
            "Forward is ahead at this budget."
            if forward_em > inverse_em
            else "At this budget the forward order is not ahead; the book-scale runs below decide."
        )
    )


def overlap_sentence(overlap_total: int, train_samples: int) -> str:
    """How many test inputs also occur among the training inputs drawn."""
    return (
        f"Across the three tasks, {overlap_total} test inputs also occur among the first "
        f"{train_samples:,} training inputs"
        + (" — train and test do not overlap." if overlap_total == 0 else ".")
    )


def curve_trends(curves: dict, rise: float = 0.01) -> pd.DataFrame:
    """The last two exact-match checks of every run, and whether the curve was still rising (> ``rise``)."""
    rows = []
    for (cfg, seed), c in sorted(curves.items()):
        em = c["exact_match"]
        if not em:
            continue
        last, before = em[-1], (em[-2] if len(em) > 1 else em[-1])
        change = last["exact_match"] - before["exact_match"]
        rows.append(
            {
                "config": cfg,
                "seed": seed,
                "step": last["step"],
                "exact match": last["exact_match"],
                "previous check (step)": before["step"],
                "change since then": round(change, 3),
                "still rising": bool(change > rise),
            }
        )
    return pd.DataFrame(rows)


def rising_sentence(trend: pd.DataFrame) -> str:
    """Which configs were still rising at the end of their budget."""
    rising = sorted(set(trend.loc[trend["still rising"], "config"])) if len(trend) else []
    return (
        "Still rising at the end of the budget: "
        + (", ".join(f"`{r}`" for r in rising) if rising else "none")
        + ". A rising curve means the budget, not the model's capacity, set that number."
    )


def target_sentence(
    results: pd.DataFrame, curves: dict, task: str = "relu", target: float = 0.95, minutes: float = 15
) -> str | None:
    """The part's acceptance target: every forward seed of ``task`` at exact match >= ``target``
    within ``minutes`` of training (measured ``train_seconds``), with the first check that reached it.
    None when the task has no forward run."""
    fwd = results[(results["task"] == task) & (results["order"] == "forward")]
    if fwd.empty:
        return None
    em = pd.to_numeric(fwd["exact_match"], errors="coerce")
    reached = bool(em.notna().all() and em.min() >= target)
    within = bool(fwd["train_seconds"].max() <= minutes * 60)
    first = []
    for cfg, seed in zip(fwd["config"], fwd["seed"], strict=True):
        hits = [r for r in curves.get((cfg, seed), {}).get("exact_match", []) if r["exact_match"] >= target]
        if hits:
            first.append(hits[0])
    text = (
        f"{TASK_NAMES.get(task, task)} $n={int(fwd['n'].iloc[0])}$ forward with the default model: exact "
        f"match {em.min():.3f} "
        f"to {em.max():.3f} over {len(fwd)} seed(s) after {int(fwd['steps'].max())} steps, which took at "
        f"most {fwd['train_seconds'].max() / 60:.1f} minutes of training. "
        + (
            f"Every seed reaches the {target:g} target within {minutes:g} minutes."
            if reached and within
            else f"Not every seed reaches the {target:g} target within {minutes:g} minutes on this machine."
        )
    )
    if first and len(first) == len(fwd):
        text += (
            f" During training, the seeds first scored {target:g} or more at step "
            f"{min(r['step'] for r in first)}–{max(r['step'] for r in first)}, after "
            f"{min(r['seconds'] for r in first):.0f}–{max(r['seconds'] for r in first):.0f} s."
        )
    return text


def seed_count_note(table: pd.DataFrame, minimum: int = 3) -> str | None:
    """A warning when some task has fewer than ``minimum`` seeds in either order (None otherwise)."""
    counts = table.groupby(["task", "n"])["seeds"].min()
    if not (counts < minimum).any():
        return None
    return (
        "Seeds run so far: "
        + ", ".join(f"{t} n={n}: {c}" for (t, n), c in counts.items())
        + f". Fewer than {minimum} seeds give no real spread; read those rows as single observations."
    )


def sweep_sentence(results: pd.DataFrame) -> str:
    """How the committed sweep was run: runs, configs, seeds per config, test samples, step budgets."""
    seeds = results.groupby("config")["seed"].nunique()
    seeds_txt = f"{seeds.min()}" if seeds.min() == seeds.max() else f"{seeds.min()}–{seeds.max()}"
    budgets = results.groupby("task")["planned_steps"].max()
    return (
        f"{len(results)} runs ({results['config'].nunique()} configs, {seeds_txt} seed(s) each), scored on "
        f"{int(results['num_examples'].min()):,} test samples by greedy decoding; step budgets: "
        + ", ".join(f"{t} {int(s):,}" for t, s in budgets.items())
        + "."
    )


def config_sentence(cfg: dict, name: str) -> str:
    """The model, optimiser and budget of a resolved training config (``train.load_config``)."""
    m, t = cfg["model"], cfg["training"]
    budget = f"{t['max_steps']:,} optimiser steps" if t.get("max_steps") else f"{t.get('epochs')} epoch(s)"
    return (
        f"`{name}`: a {m['num_hidden_layers']}-layer Qwen2, hidden size {m['hidden_size']}, "
        f"{m['num_attention_heads']} query heads sharing {m['num_key_value_heads']} key/value heads; batch "
        f"{t['batch_size']}, learning rate {t['learning_rate']:g}, gradient clipping at {t['max_grad_norm']:g}, "
        f"{budget}; exact match checked on {t['eval_subset']} test samples every {t['eval_every']} steps."
    )
