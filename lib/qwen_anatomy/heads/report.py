"""Tables, verdicts and sentences of chapter 40_heads_importance_vs_plasticity, from saved results.

The chapter's findings ("heads that matter more moved more", "depth carries it", "the ranking is
stable across seeds", which proxy ranks ablation best) are computed here from the statistics that
:func:`qwen_anatomy.heads.experiment.run` saved, and tested on hand-made inputs
(``tests/test_heads_report.py``): missing values (a constant ranking gives ρ = NaN), ties at the
thresholds, and a single seed.

``res`` below is the dict of :func:`qwen_anatomy.heads.experiment.load_results`.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from .analysis import PROXY_LABELS, head_quantities

# The pairs the chapter reports, importance against update first.
KEY_PAIRS = (
    ("I_pre", "Urel"),
    ("I_pre", "U"),
    ("I_post", "Urel"),
    ("Ppred_pre", "Urel"),
    ("snr_pre", "Urel"),
    ("neg_Eg_pre", "Urel"),
    ("G_pre", "Urel"),
    ("norm_pre", "Urel"),
    ("I_pre", "I_post"),
)
ALPHA = 0.05
# Mean pairwise Spearman between seeds: at least STABLE is "stable", at least PARTLY "only partly stable".
STABLE, PARTLY = 0.7, 0.3
# A proxy is a usable stand-in for ablation when ρ >= USABLE_RHO at p < ALPHA.
USABLE_RHO = 0.5


def _nan(x) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def pair_row(stats: dict, a: str, b: str) -> dict:
    """The saved statistics of the pair (a, b) in either order; KeyError when it was not computed."""
    for p in stats["pairs"]:
        if (p["x"], p["y"]) in ((a, b), (b, a)):
            return p
    raise KeyError((a, b))


def max_p(values) -> float:
    """The largest p-value over seeds; NaN when any seed's p is undefined (a constant ranking)."""
    values = [float(v) for v in values]
    return float("nan") if not values or any(math.isnan(v) for v in values) else max(values)


def pair_table(stats_per_seed: list[dict], pairs=KEY_PAIRS) -> pd.DataFrame:
    """One row per pair: ρ averaged over seeds, per seed, the largest permutation p, the first seed's
    bootstrap interval, the within-layer ρ, the top-K overlap and its chance level K²/N."""
    rows = []
    for a, b in pairs:
        per = [pair_row(stats, a, b) for stats in stats_per_seed]
        rows.append(
            {
                "pair": f"{a} ~ {b}",
                "ρ (mean over seeds)": float(np.mean([p["rho"] for p in per])),
                "ρ per seed": " ".join(f"{p['rho']:+.2f}" for p in per),
                "max p (permutation)": max_p(p["p_perm"] for p in per),
                "95% CI (seed 0)": f"[{per[0]['ci_low']:+.2f}, {per[0]['ci_high']:+.2f}]",
                "ρ within layers": float(np.mean([p["rho_within_layer_demeaned"] for p in per])),
                "top-K overlap": float(np.mean([p["topk_overlap"] for p in per])),
                "chance K²/N": per[0]["topk_chance"],
            }
        )
    return pd.DataFrame(rows)


def rho_crit(n: int, alpha: float = ALPHA) -> float:
    """|ρ| needed for a two-sided p < ``alpha`` with ``n`` heads (t approximation of Spearman's null);
    NaN for n < 3, where no correlation can be tested."""
    if n < 3:
        return float("nan")
    from scipy.stats import t as student_t

    t_crit = float(student_t.ppf(1 - alpha / 2, n - 2))
    return t_crit / math.sqrt(n - 2 + t_crit**2)


def importance_update_verdict(rho: float, p_max: float, alpha: float = ALPHA) -> str:
    """Is importance before fine-tuning linked to the relative update, in every seed?"""
    if _nan(rho) or _nan(p_max):
        return (
            "the link between importance before fine-tuning and relative update is undefined: a ranking "
            "is constant in at least one seed"
        )
    if p_max < alpha and rho > 0:
        return (
            f"heads that matter more before fine-tuning moved more (ρ = {rho:+.2f}, every seed's "
            f"permutation p ≤ {p_max:.3f})"
        )
    if p_max < alpha and rho < 0:
        return (
            f"heads that matter more before fine-tuning moved *less* (ρ = {rho:+.2f}, every seed's "
            f"p ≤ {p_max:.3f})"
        )
    return (
        f"no reliable link between importance before fine-tuning and relative update was found "
        f"(ρ = {rho:+.2f}; the largest permutation p over seeds is {p_max:.3f}, not below {alpha:g})"
    )


def depth_clause(rho_within: float, rho_all: float) -> str:
    """What the within-layer ρ says about the raw ρ: a depth effect, or not."""
    if _nan(rho_within) or _nan(rho_all):
        return "the within-layer correlation is undefined, so depth cannot be separated out."
    if abs(rho_within) > 0.1 and np.sign(rho_within) != np.sign(rho_all):
        return "the sign reverses within layers, so the raw correlation is a between-layer (depth) effect."
    if abs(rho_within) >= abs(rho_all) / 2:
        return "depth is not what carries it."
    return "much of the raw correlation is a depth effect."


def stability(mean_spearman: float) -> str:
    """A word for the across-seed agreement of a ranking."""
    if _nan(mean_spearman):
        return "not measured"
    if mean_spearman >= STABLE:
        return "stable"
    return "only partly stable" if mean_spearman >= PARTLY else "unstable"


def seeds_clause(agreement: dict, n_seeds: int) -> str:
    """The across-seed agreement of the Urel and I_post rankings (nothing to say with one seed)."""
    if n_seeds < 2:
        return "(One seed only: no agreement measured.)"
    u = agreement.get("Urel", {}).get("mean_spearman", float("nan"))
    i = agreement.get("I_post", {}).get("mean_spearman", float("nan"))
    return (
        f"Across {n_seeds} seeds the Urel ranking is {stability(u)} (mean pairwise ρ = {u:.2f}); "
        f"I_post agrees at ρ = {i:.2f}."
    )


def proxy_validity_table(res: dict) -> pd.DataFrame:
    """One row per (seed, θ, proxy): the proxy's Spearman ρ with true ablation and its p-value."""
    return pd.DataFrame(
        [
            {
                "seed": s,
                "θ": v["theta"],
                "proxy": PROXY_LABELS[v["proxy"]],
                "ρ with ablation": v["rho"],
                "p": v["p_perm"],
            }
            for s in sorted(res["seeds"])
            for v in res["seeds"][s]["stats"]["proxy_validity"]
        ]
    )


def proxy_validity_means(validity: pd.DataFrame) -> pd.DataFrame:
    """ρ with ablation averaged over seeds: one row per proxy, one column per θ."""
    return validity.groupby(["θ", "proxy"], sort=False)["ρ with ablation"].mean().unstack(0)


def proxy_clause(validity_mean: pd.DataFrame) -> str:
    """−E[g] against G²/F as rankings of true ablation at θ0."""
    neg = validity_mean.loc[PROXY_LABELS["neg_Eg"], "θ0"]
    ppred = validity_mean.loc[PROXY_LABELS["Ppred"], "θ0"]
    return (
        f"As a ranking of true ablation at θ0, −E[g] reaches ρ = {neg:+.2f} while G²/F reaches {ppred:+.2f}."
    )


def small_n_clause(n_heads: int, alpha: float = ALPHA, below: int = 40) -> str:
    """With few heads only a strong correlation can reach significance: say how strong."""
    if n_heads >= below:
        return ""
    crit = rho_crit(n_heads, alpha)
    if _nan(crit):
        return f" With only N = {n_heads} heads no correlation can be tested."
    return (
        f" With only N = {n_heads} heads a correlation needs |ρ| ≥ {crit:.2f} to reach p < {alpha:g}, so "
        "this model can only reveal a strong effect."
    )


def synthetic_finding(res: dict, pairs: pd.DataFrame, validity_mean: pd.DataFrame, n_heads: int) -> str:
    """The chapter's finding on the synthetic task, assembled from the saved results.

    ``pairs`` is :func:`pair_table` over the seeds, ``validity_mean`` :func:`proxy_validity_means`.
    """
    main = pairs.set_index("pair").loc["I_pre ~ Urel"]
    rho, p, within = main["ρ (mean over seeds)"], main["max p (permutation)"], main["ρ within layers"]
    seeds = sorted(res["seeds"])
    r0 = res["seeds"][seeds[0]]
    helps = float((head_quantities(r0["m0"])["I_pre"] < 0).mean())
    theta0 = (
        f" At θ0 the model has never seen this task (loss {r0['m0'].loss.mean():.2f} nats against "
        f"{r0['m1'].loss.mean():.4f} at θ1), and ablating {helps:.0%} of its heads *lowers* that loss: "
        "importance before fine-tuning measures what a head does to a task the model cannot do yet."
    )
    return (
        importance_update_verdict(rho, p)
        + f". Within layers the same pair gives ρ = {within:+.2f}: {depth_clause(within, rho)} "
        + seeds_clause(res["agreement"], len(seeds))
        + " "
        + proxy_clause(validity_mean)
        + theta0
        + small_n_clause(n_heads)
    )


def best_proxy(proxy_validity: list[dict]) -> dict:
    """The proxy with the highest ρ with true ablation; an undefined ρ (NaN) never wins."""
    defined = [v for v in proxy_validity if not _nan(v["rho"])]
    if not defined:
        raise ValueError("no proxy has a defined ρ with ablation (every ranking is constant)")
    return max(defined, key=lambda v: v["rho"])


def proxy_finding(proxy_validity: list[dict], model: str = "SmolLM2") -> str:
    """Which gradient proxy ranks the truly ablated heads best, and whether it is usable."""
    best = best_proxy(proxy_validity)
    by_name = {v["proxy"]: v for v in proxy_validity}
    good = best["rho"] >= USABLE_RHO and best["p_perm"] < ALPHA
    return (
        f"On {model} the proxy that best ranks the {best['n']} truly ablated heads is "
        f"{PROXY_LABELS[best['proxy']]} (ρ = {best['rho']:+.2f}"
        + (
            f", 95% bootstrap interval over texts [{best['ci_low']:+.2f}, {best['ci_high']:+.2f}]"
            if np.isfinite(best.get("ci_low", np.nan))
            else ""
        )
        + f", permutation p = {best['p_perm']:.2g}); "
        + (
            "it is a usable stand-in for ablation at this sample size. "
            if good
            else "even the best is a weak stand-in for ablation at this sample size. "
        )
        + f"−E[g] gives ρ = {by_name['neg_Eg']['rho']:+.2f}, G²/F gives {by_name['Ppred']['rho']:+.2f}, "
        f"and the naive head-output norm gives {by_name['norm']['rho']:+.2f}." + _depth_clause(best)
    )


def _depth_clause(best: dict) -> str:
    """Whether the best proxy's ranking survives removing depth (ρ of layer-demeaned ranks)."""
    within = best.get("rho_within_layer_demeaned", np.nan)
    if _nan(within):
        return ""
    kept = "so depth is not what carries it" if within >= USABLE_RHO else "so much of it is depth"
    return f" Within layers (ranks demeaned per layer) it gives ρ = {within:+.2f}, {kept}."


def seed_losses(res: dict) -> pd.DataFrame:
    """Per fine-tuning seed: mean loss at θ0 and θ1 on the evaluation set, and θ1's exact match."""
    seeds = sorted(res["seeds"])
    return pd.DataFrame(
        {
            "seed": seeds,
            "loss θ0 (nats)": [res["seeds"][s]["m0"].loss.mean() for s in seeds],
            "loss θ1 (nats)": [res["seeds"][s]["m1"].loss.mean() for s in seeds],
            "exact match θ1": [
                res["summary"]["seeds"][str(s)]["finetune_evaluation"].get("exact_match", np.nan)
                for s in seeds
            ],
        }
    )


def counterexample_table(res: dict, pair: str = "I_pre_vs_Urel") -> pd.DataFrame:
    """Per seed: the sizes of the two counterexample sets against their chance level."""
    rows = []
    for s in sorted(res["seeds"]):
        stats = res["seeds"][s]["stats"]
        c = stats["counterexamples"][pair]
        rows.append(
            {
                "seed": s,
                "important but static": c["n_important_but_static"],
                "plastic but unimportant": c["n_plastic_but_unimportant"],
                "chance (0.03·N)": stats["counterexample_chance"],
            }
        )
    return pd.DataFrame(rows)


def split_table(res: dict) -> pd.DataFrame:
    """Per seed: U^QO against head ablation and U^KV against group ablation."""
    return pd.DataFrame(
        [
            {"seed": s, "pair": f"{row['x']} ~ {row['y']}", "unit": row["unit"], "n": row["n"],
             "ρ": row["rho"], "p": row["p_perm"]}
            for s in sorted(res["seeds"])
            for row in res["seeds"][s]["stats"]["split"]
        ]
    )  # fmt: skip


def ppred_max(res: dict) -> float:
    """The largest Ppred = G²/F over all heads, seeds and both checkpoints (≤ 1 by Jensen)."""
    return max(
        float(head_quantities(r["m0"], r["m1"])[f"Ppred_{t}"].max())
        for r in res["seeds"].values()
        for t in ("pre", "post")
    )


def most_important(importance, num_heads: int, n: int = 3) -> list[tuple[str, float]]:
    """The ``n`` heads of highest importance as ("layer.head", value), highest first; heads whose
    importance is undefined (NaN: not ablated) are left out, ties broken by head order."""
    values = np.asarray(importance, dtype=np.float64)
    flat = np.flatnonzero(~np.isnan(values))
    order = flat[np.lexsort((flat, -values[flat]))][:n]
    return [(f"{i // num_heads}.{i % num_heads}", float(values[i])) for i in order]


def most_important_line(importance, num_heads: int, n: int = 3, theta: str = "θ0") -> str:
    """One line naming the most important of the ablated heads, e.g. for the command's output."""
    values = np.asarray(importance, dtype=np.float64)
    n_ablated = int((~np.isnan(values)).sum())
    top = most_important(values, num_heads, n)
    if not top:
        return "no head was ablated"
    listed = ", ".join(f"{name} (Δloss {value:+.4f} nats)" for name, value in top)
    return f"most important of the {n_ablated} ablated heads at {theta} (layer.head): {listed}"


# -- the book-scale pairs (qwen_anatomy.heads.synthetic, qwen_anatomy.heads.realpair) ----------------
def theta0_skill_clause(summary: dict) -> str:
    """Could θ0 already do part of the fine-tuning task? (the synthetic pair's precondition)"""
    base = summary.get("theta0_on_finetune_task")
    if base is None:
        return ""
    ratio = base["loss_over_chance"]
    verdict = (
        "far below chance, so importance before fine-tuning measures a skill θ0 has"
        if ratio < 0.5
        else "below chance, but not far below"
        if ratio < 1
        else "no better than chance: importance before fine-tuning measures a task θ0 cannot do"
    )
    return (
        f" Before fine-tuning θ0 scores {base['loss']:.2f} nats per output token on the fine-tuning task "
        f"against {base['chance_loss']:.2f} for predicting the marginal ({ratio:.0%} of chance): {verdict}."
    )


def real_pair_clause(summary: dict) -> str:
    """How far fine-tuning moved the real model on held-out text, over the seeds."""
    seeds = summary.get("seeds", {})
    evals = [
        v["finetune_evaluation"]
        for v in seeds.values()
        if "heldout_loss_after" in v.get("finetune_evaluation", {})
    ]
    if not evals:
        return ""
    before = evals[0]["heldout_loss_before"]
    after = [e["heldout_loss_after"] for e in evals]
    return (
        f" Fine-tuning moved the held-out loss from {before:.3f} to {min(after):.3f}-{max(after):.3f} nats per "
        f"token over {len(after)} seed(s)."
    )


def pair_finding(res: dict, pairs: pd.DataFrame, model: str) -> str:
    """The finding of one book-scale pair (:func:`qwen_anatomy.heads.pairs.load_pair_results`),
    naming the model it was computed on, with the detectable |ρ| at its N."""
    from .power import power_record, power_sentence

    main = pairs.set_index("pair").loc["I_pre ~ Urel"]
    rho, p, within = main["ρ (mean over seeds)"], main["max p (permutation)"], main["ρ within layers"]
    summary = res["summary"]
    rec = summary.get("power") or power_record(summary["n_heads"], summary.get("layout", {}).get("layers"))
    return (
        f"On {model}, "
        + importance_update_verdict(rho, p)
        + f". Within layers the same pair gives ρ = {within:+.2f}: {depth_clause(within, rho)} "
        + seeds_clause(res["agreement"], len(res["seeds"]))
        + theta0_skill_clause(summary)
        + real_pair_clause(summary)
        + " "
        + power_sentence(rec)
    )


def pair_not_run(status: dict, what: str, command: str, hours: float) -> str:
    """The chapter's statement for a pair whose results folder is not complete (computed from
    :func:`qwen_anatomy.heads.pairs.pair_status`)."""
    stages = status.get("stages", {})
    done = [k for k, v in stages.items() if v == "success"]
    folder = _shown_path(status["folder"])
    if not status.get("exists") or not stages:
        state = f"`{folder}` does not exist yet"
    else:
        state = f"`{folder}` holds {len(done)} of {len(stages)} finished stages"
    return (
        f"**{what[0].upper() + what[1:]} has not been run yet**: {state}. One resumable command produces it "
        f"(about {hours:.1f} hours on this two-core machine):\n\n```\n{command}\n```"
    )


def pair_section(
    folder, what: str, command: str, hours: float, model_name, figures: bool = True
) -> tuple[list, dict | None]:
    """What chapter 40 shows for one pair folder: (items, results). Items are tables (DataFrames),
    Markdown strings and (with ``figures``) a matplotlib figure: the pair table, counterexamples,
    across-seed agreement, the finding and the importance-versus-update scatter of the first seed when
    the folder is complete, else the computed statement that it has not been run (``results`` None).
    ``model_name(results)`` names the model the numbers come from."""
    from .agreement import agreement_table
    from .pairs import load_pair_results, pair_status

    status = pair_status(folder)
    if not status["complete"]:
        return [pair_not_run(status, what, command, hours)], None
    res = load_pair_results(folder)
    seeds = sorted(res["seeds"])
    table = pair_table([res["seeds"][s]["stats"] for s in seeds])
    items = [table, counterexample_table(res), agreement_table(res["agreement"]),
             "**Finding.** " + pair_finding(res, table, model_name(res))]  # fmt: skip
    if figures:
        from . import plots
        from .analysis import head_table

        r = res["seeds"][seeds[0]]
        heads = head_table(r["m0"], r["m1"], r["update"])
        cases = r["stats"]["counterexamples"]["I_pre_vs_Urel"]
        items.append(
            f"The scatter puts each head of seed {seeds[0]} at its relative update (x) and its importance "
            "before fine-tuning (y), coloured by layer; rings mark the counterexamples. A link would show "
            "as a cloud rising to the right within each colour, not only between colours."
        )
        items.append(plots.importance_vs_update(heads, "I_pre", "Urel", cases))
    return items, res


def _shown_path(folder) -> str:
    """A results folder as the reader would type it: relative to the repository when inside it."""
    from pathlib import Path

    from ..paths import REPO_ROOT

    path = Path(folder)
    try:
        return str(path.resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


def pair_model_name(res: dict) -> str:
    """The model a pair's numbers come from, for the chapter's sentences: the released checkpoint's
    label (real pair) or the project-trained θ0's shape (synthetic pair)."""
    summary = res["summary"]
    if summary.get("kind") == "real":
        from ..modelnames import model_label

        return model_label(res["plan"]["model"])
    lay = summary["layout"]
    return f"the project-trained θ0 ({lay['layers']} layers x {lay['heads']} query heads, {lay['kv_heads']} KV groups)"
