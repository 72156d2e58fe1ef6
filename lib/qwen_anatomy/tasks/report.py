"""Verdicts and sentences of chapter 30_synthetic_tasks, computed from saved results.

The chapter prints every comparison of the forward and inverse orders through these functions, so
that the wording (who is ahead, by how much, on how many seeds) follows the numbers and is tested
(``tests/test_tasks_report.py``) on hand-made inputs: ties, missing values and a single seed.

Inputs are the frames of :mod:`qwen_anatomy.tasks.experiment`: ``results`` (one row per config x
seed, from ``load_results``), ``table`` (``seed_table(results)``: task, n, order, seeds, mean, std,
min, max of exact match) and ``curves`` (``load_curves``: ``{(config, n, seed): curves.json}``; the
functions also accept the older ``(config, seed)`` keys). The verdicts "learned", "plateaued",
"still rising" and "harder" of the length sweep live in :mod:`qwen_anatomy.tasks.verdicts`.
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

    ``curves`` keyed by (config, n, seed) (:func:`qwen_anatomy.tasks.experiment.load_curves`) or by
    (config, seed). One row per forward run whose ``<config>_inverse`` run of the same length and seed
    exists: task, (n,) seed, step, forward and inverse exact match (on the test subset checked
    during training).
    """
    rows = []
    for key, c in curves.items():
        cfg, rest = key[0], tuple(key[1:])
        partner = (cfg + "_inverse", *rest)
        if cfg.endswith("_inverse") or partner not in curves:
            continue
        fwd = {r["step"]: r["exact_match"] for r in c["exact_match"]}
        inv = {r["step"]: r["exact_match"] for r in curves[partner]["exact_match"]}
        common = sorted(set(fwd) & set(inv))
        if common:
            step = common[-1]
            row = {"task": cfg, **({"n": rest[0]} if len(rest) == 2 else {}), "seed": rest[-1]}
            rows.append({**row, "step": step, "forward": fwd[step], "inverse": inv[step]})
    return pd.DataFrame(
        rows,
        columns=["task", *(["n"] if rows and "n" in rows[0] else []), "seed", "step", "forward", "inverse"],
    )


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
    """The last two exact-match checks of every run, and whether the curve was still rising (> ``rise``).

    ``curves`` keyed by (config, n, seed) or (config, seed)."""
    rows = []
    for key, c in sorted(curves.items()):
        em = c["exact_match"]
        if not em:
            continue
        last, before = em[-1], (em[-2] if len(em) > 1 else em[-1])
        change = last["exact_match"] - before["exact_match"]
        rows.append(
            {
                "config": key[0],
                **({"n": key[1]} if len(key) == 3 else {}),
                "seed": key[-1],
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
    for cfg, n, seed in zip(fwd["config"], fwd["n"], fwd["seed"], strict=True):
        run = curves.get((cfg, int(n), int(seed)), curves.get((cfg, seed), {}))  # keys with or without n
        hits = [r for r in run.get("exact_match", []) if r["exact_match"] >= target]
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


# -- the length sweep, the original's architecture and the failures (issue 16) -----------------------
MODEL_NAMES = {"qwen2": "Qwen2", "bart": "BART"}


def coverage_sentence(results: pd.DataFrame, expected: pd.DataFrame) -> str:
    """How much of the planned sweep is in ``results``, naming what is missing (config, n, seeds).

    ``expected``: :func:`qwen_anatomy.tasks.experiment.expected_runs` (columns config, n, seed).
    """
    have = set(zip(results["config"], results["n"].astype(int), results["seed"].astype(int), strict=True))
    missing: dict[tuple[str, int], list[int]] = {}
    for config, n, seed in zip(expected["config"], expected["n"], expected["seed"], strict=True):
        if (config, int(n), int(seed)) not in have:
            missing.setdefault((config, int(n)), []).append(int(seed))
    total = len(expected)
    done = total - sum(len(s) for s in missing.values())
    text = f"Of the {total} runs the sweep plan names, {done} have finished results here."
    if missing:
        text += " Missing: " + "; ".join(
            f"`{c}` n={n} (seed{'s' if len(s) > 1 else ''} {', '.join(map(str, s))})"
            for (c, n), s in sorted(missing.items())
        )
        text += "."
    return text


def _architecture_rows(results: pd.DataFrame, task: str, lengths) -> tuple[pd.DataFrame, list]:
    """The task's runs (model type Qwen2 when the column is absent) and the lengths to compare: the
    given ones, else every length with a BART run, else every length of the task."""
    sel = results[results["task"] == task]
    if "model_type" not in sel:
        sel = sel.assign(model_type="qwen2")
    if lengths is None:
        bart = sel.loc[sel["model_type"] == "bart", "n"]
        lengths = sorted(set(bart if len(bart) else sel["n"]))
    return sel, lengths


def model_comparison(results: pd.DataFrame, task: str = "relu", lengths=None) -> pd.DataFrame:
    """Qwen2 beside BART on one task: one row per length and order with each model's mean exact match
    and 95% interval over seeds, and the comparison (:func:`qwen_anatomy.tasks.verdicts.compare`).

    ``results``: both model types (``load_results(..., model_type=None)``). ``lengths``: the lengths
    to show (default: every length with a BART run, else every length of the task); a model without
    runs there says "no run".
    """
    from .verdicts import compare, seed_interval

    sel, lengths = _architecture_rows(results, task, lengths)
    rows = []
    words = {
        "a higher": "Qwen2 higher",
        "b higher": "BART higher",
        "no difference shown": "no difference shown",
        "too few seeds": "too few seeds",
        "missing": "missing runs",
    }
    for n in lengths:
        for order in ("forward", "inverse"):
            arms = {
                m: sel.loc[
                    (sel["model_type"] == m) & (sel["n"] == n) & (sel["order"] == order), "exact_match"
                ]
                for m in ("qwen2", "bart")
            }
            v = compare(arms["qwen2"], arms["bart"], ("Qwen2", "BART"))
            row = {"n": int(n), "order": order}
            for m, values in arms.items():
                ci = seed_interval(values)
                row[MODEL_NAMES[m]] = ci.text() if ci.count else "no run"
            row["comparison"] = words[v.kind]
            rows.append(row)
    return pd.DataFrame(rows, columns=["n", "order", "Qwen2", "BART", "comparison"])


def architecture_sentence(results: pd.DataFrame, task: str = "relu", lengths=None) -> str:
    """Markdown: at each length, the harder verdict of each model type, and whether the order effect
    seen with Qwen2 is also seen with BART (the original's architecture)."""
    from .verdicts import harder

    sel, lengths = _architecture_rows(results, task, lengths)
    lines = []
    for n in lengths:
        verdicts = {}
        for m in ("qwen2", "bart"):
            runs = sel[(sel["model_type"] == m) & (sel["n"] == n)]
            verdicts[m] = harder(
                runs.loc[runs["order"] == "forward", "exact_match"],
                runs.loc[runs["order"] == "inverse", "exact_match"],
            )
        q, b = verdicts["qwen2"], verdicts["bart"]
        if "missing" in (q.kind, b.kind) or "too few seeds" in (q.kind, b.kind):
            agree = "the two architectures cannot be compared yet"
        elif q.kind == b.kind:
            agree = "both architectures give the same verdict"
        else:
            agree = "the architectures disagree"
        lines.append(f"* $n={n}$: Qwen2: {q.sentence}. BART: {b.sentence}. So {agree}.")
    return "\n".join(lines)


def pick_failure_run(results: pd.DataFrame, task: str, order: str = "inverse"):
    """The run whose generations the chapter shows: of ``task`` in ``order`` with a kept
    ``generations.jsonl.gz``, the longest length, then the lowest seed; None when no run kept them."""
    from pathlib import Path

    from .evaluate import GENERATIONS_FILE

    sel = results[(results["task"] == task) & (results["order"] == order)]
    if "folder" not in sel:
        return None
    sel = sel[[(Path(f) / GENERATIONS_FILE).is_file() for f in sel["folder"]]]
    if sel.empty:
        return None
    return sel.sort_values(["n", "seed"], ascending=[False, True]).iloc[0]


def failure_sentence(summary: dict, order: str, where: str) -> str:
    """What :func:`qwen_anatomy.tasks.evaluate.typical_failures` found, in words; ``where`` names the
    run (e.g. "ReLU n=30, inverse order, seed 0")."""
    total, failures = summary["total"], summary["failures"]
    if not failures:
        return f"All {total:,} test generations of {where} are exact: no failure to show."
    p = summary["position"]
    n = len(summary["examples"][0]["correct"])
    if p == n:
        at = "only the end token is wrong (all n outputs right)"
    elif order == "inverse":
        at = f"output position {p}, which in the inverse order is the chain's state $y_{{{n - 1 - p}}}$"
    else:
        at = f"output position {p} (the chain's state $y_{{{p}}}$)"
    return (
        f"Of the {total:,} test generations of {where}, {failures:,} are wrong. The most common first "
        f"error is at {at}: {summary['share']:.0%} of the wrong generations go wrong there first. "
        f"Below, the first {len(summary['examples'])} of them, wrong outputs in brackets."
    )


def failure_table(examples: list[dict]) -> pd.DataFrame:
    """Input, target and generated chain of each example, wrong outputs in [brackets], and the first
    wrong position."""
    from .evaluate import first_error

    rows = []
    for r in examples:
        shown = [
            str(v) if ok else f"[{v}]"
            for v, ok in zip(r["prediction"][: len(r["correct"])], r["correct"], strict=True)
        ]
        rows.append(
            {
                "input x": " ".join(map(str, r["input"])),
                "target": " ".join(map(str, r["target"])),
                "generated": " ".join(shown) + ("" if r["eos"] else f" [{r['prediction'][-1]}]"),
                "first error at": first_error(r),
            }
        )
    return pd.DataFrame(rows)


def layout_sentence(results: pd.DataFrame, superseded: list) -> str:
    """Which build the chapter's runs come from: the length sweep (``<config>/n<k>/seed<s>/``), the
    first build (``<config>/seed<k>/``, one length per task), or both."""
    by_n = int((results["layout"] == "by n").sum()) if "layout" in results else 0
    flat = len(results) - by_n
    if not by_n:
        return (
            f"All {flat} runs shown come from the first build (one length per task); the length sweep "
            "has not run yet, so every length figure below has one point per task."
        )
    text = f"{by_n} runs come from the length sweep"
    if flat:
        configs = ", ".join(f"`{c}`" for c in sorted(set(results.loc[results["layout"] == "flat", "config"])))
        text += f" and {flat} from the first build, for configs the sweep has not reached yet ({configs})"
    text += "."
    if superseded:
        text += f" {len(superseded)} first-build runs of configs the sweep has reached are left out."
    return text


def select_curves(curves: dict, task: str, n: int | None = None) -> dict:
    """``{label: curves}`` of one task's runs (both orders, Qwen2 configs ``<task>`` and
    ``<task>_inverse``) at length ``n`` (default: the longest), for :func:`plots.plot_curves`."""
    keys = [k for k in curves if k[0] in (task, task + "_inverse")]
    if not keys:
        return {}
    n = max(k[1] for k in keys) if n is None else n
    return {f"{k[0]} n={k[1]} seed {k[2]}": curves[k] for k in sorted(keys) if k[1] == n}


def failure_source(results: pd.DataFrame, task: str, fallback, fallback_label: str, order: str = "inverse"):
    """(folder, label) of the generations the chapter shows: the committed run of
    :func:`pick_failure_run`, else ``fallback`` (e.g. the chapter's live run) named by
    ``fallback_label``."""
    run = pick_failure_run(results, task, order)
    if run is None:
        return fallback, f"{fallback_label} (the committed runs kept no generations)"
    return run[
        "folder"
    ], f"{TASK_NAMES.get(task, task)} $n={int(run['n'])}$, {order} order, seed {int(run['seed'])}"
