"""Measure everything about every head for a (θ0, θ1) pair, and turn it into tables (chapter 40).

:func:`measure` gives the per-example raw numbers of one checkpoint on one evaluation set;
:func:`head_quantities` reduces them (for any resampling of the examples) to one number per head;
:func:`compute_stats` computes every statistic with its chance level; :func:`head_table` and
:func:`group_table` are the rows of ``heads.csv`` and ``groups.csv``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import combinations

import numpy as np
from torch import nn

from .ablation import ablation_deltas, group_units, head_means, head_units
from .core import EvalBatch, HeadLayout, head_layout, model_device
from .gradients import gate_gradients, gradient_proxies
from .plasticity import GROUP_UPDATES, HEAD_UPDATES
from .stats import (
    bootstrap_spearman,
    check_top_k,
    counterexamples,
    permutation_pvalue,
    spearman,
    topk_overlap,
    within_layer,
)
from .stats import top_k as top_k_of

PROXIES = ("G", "F", "Ppred", "snr", "neg_Eg", "norm")
PROXY_LABELS = {
    "G": "G = E|g|",
    "F": "F = E[g²]",
    "Ppred": "Ppred = G²/F",
    "snr": "(E g)²/E[g²]",
    "neg_Eg": "−E[g]",
    "norm": "E‖z_h‖",
}


@dataclass
class Measurements:
    """Per-example raw numbers of one checkpoint on one evaluation set (flat head index l·H + h)."""

    layout: HeadLayout
    ablation: str
    loss: np.ndarray  # [E] baseline loss (nats)
    grad: np.ndarray  # [E, L·H] ∂loss/∂gate
    norm: np.ndarray  # [E, L·H] mean ‖z_h‖ over positions
    dloss_head: np.ndarray  # [E, L·H] Δloss of query-head ablation (NaN where not ablated)
    dloss_group: np.ndarray | None = None  # [E, L·K] Δloss of KV-group ablation
    ablated_heads: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=int))

    def to_npz(self, path) -> None:
        np.savez_compressed(
            path,
            loss=self.loss,
            grad=self.grad,
            norm=self.norm,
            dloss_head=self.dloss_head,
            dloss_group=self.dloss_group if self.dloss_group is not None else np.zeros((0, 0)),
            ablated_heads=self.ablated_heads,
            layout=np.array(
                [
                    self.layout.num_layers,
                    self.layout.num_heads,
                    self.layout.num_kv_heads,
                    self.layout.head_dim,
                ]
            ),
            ablation=np.array(self.ablation),
        )

    @classmethod
    def from_npz(cls, path) -> Measurements:
        z = np.load(path)
        groups = z["dloss_group"]
        return cls(
            layout=HeadLayout(*map(int, z["layout"])),
            ablation=str(z["ablation"]),
            loss=z["loss"],
            grad=z["grad"],
            norm=z["norm"],
            dloss_head=z["dloss_head"],
            dloss_group=groups if groups.size else None,
            ablated_heads=z["ablated_heads"],
        )


def measure(
    model: nn.Module,
    batch: EvalBatch,
    ablation: str = "zero",
    heads: list[int] | None = None,
    groups: bool = True,
    method: str = "prefix",
    batch_size: int = 16,
    replicas: int = 8,
    progress=None,
) -> Measurements:
    """Gate gradients for every head; ablation Δloss for ``heads`` (flat indices; None = all) and,
    with ``groups``, for every KV group. ``progress(k)`` is told of k more ablation passes."""
    lay = head_layout(model)
    batch = batch.to(model_device(model))  # inputs where the model is; results come back to the CPU
    g = gate_gradients(model, batch, batch_size)
    n = len(batch)
    all_units = head_units(lay)
    chosen = list(range(lay.n_heads_total)) if heads is None else sorted(set(heads))
    mean_z = head_means(model, batch, batch_size) if ablation == "mean" else None
    dloss_head = np.full((n, lay.n_heads_total), np.nan)
    if chosen:
        _, d = ablation_deltas(
            model,
            batch,
            [all_units[i] for i in chosen],
            ablation,
            method,
            batch_size,
            replicas,
            mean_z,
            progress,
        )
        dloss_head[:, chosen] = d.numpy()
    dloss_group = None
    if groups:
        _, d = ablation_deltas(
            model, batch, group_units(lay), ablation, method, batch_size, replicas, mean_z, progress
        )
        dloss_group = d.numpy().astype(np.float64)
    return Measurements(
        layout=lay,
        ablation=ablation,
        loss=g["loss"].numpy().astype(np.float64),
        grad=g["grad"].reshape(n, -1).numpy().astype(np.float64),
        norm=g["norm"].reshape(n, -1).numpy().astype(np.float64),
        dloss_head=dloss_head,
        dloss_group=dloss_group,
        ablated_heads=np.asarray(chosen, dtype=int),
    )


def ablation_passes(
    lay: HeadLayout, n_examples: int, batch_size: int, n_heads: int | None = None, groups: bool = True
) -> int:
    """How many unit passes :func:`measure` reports to ``progress`` (for a progress bar's total)."""
    slices = -(-n_examples // batch_size)
    units = (lay.n_heads_total if n_heads is None else n_heads) + (lay.n_groups_total if groups else 0)
    return units * slices


def head_quantities(
    m0: Measurements, m1: Measurements | None = None, update: dict | None = None, idx=None
) -> dict[str, np.ndarray]:
    """One number per query head (flat l·H + h) from the examples ``idx`` (None = all).

    Suffix _pre for θ0 and _post for θ1: I (mean Δloss), G, F, Ppred, snr, neg_Eg, norm;
    from ``update``: U, Urel, U_QO, Urel_QO and per projection Uq, Uk, Uv, Uo (those it holds:
    update files written before the per-projection split lack them).
    """
    sel = slice(None) if idx is None else idx
    out = {}
    for tag, m in (("pre", m0), ("post", m1)):
        if m is None:
            continue
        out[f"I_{tag}"] = m.dloss_head[sel].mean(0)
        for name, value in gradient_proxies(m.grad[sel]).items():
            out[f"{name}_{tag}"] = value
        out[f"norm_{tag}"] = m.norm[sel].mean(0)
    if update is not None:
        for name in HEAD_UPDATES:
            if name in update:
                out[name] = np.asarray(update[name]).reshape(-1)
    return out


def group_quantities(
    m0: Measurements, m1: Measurements | None = None, update: dict | None = None, idx=None
) -> dict[str, np.ndarray]:
    """One number per KV group (flat l·K + g): I_group_pre/post, U_KV, Urel_KV, U_K, U_V."""
    sel = slice(None) if idx is None else idx
    out = {}
    for tag, m in (("pre", m0), ("post", m1)):
        if m is not None and m.dloss_group is not None:
            out[f"I_group_{tag}"] = m.dloss_group[sel].mean(0)
    if update is not None:
        for name in GROUP_UPDATES:
            if name in update:
                out[name] = np.asarray(update[name]).reshape(-1)
    return out


def head_table(m0: Measurements, m1: Measurements | None = None, update: dict | None = None):
    """pandas DataFrame, one row per query head: layer, head, kv_group and every quantity."""
    import pandas as pd

    lay = m0.layout
    flat = np.arange(lay.n_heads_total)
    table = pd.DataFrame(
        {
            "layer": flat // lay.num_heads,
            "head": flat % lay.num_heads,
            "kv_group": (flat % lay.num_heads) // lay.group_size,
        }
    )
    for name, value in head_quantities(m0, m1, update).items():
        table[name] = value
    return table


def group_table(m0: Measurements, m1: Measurements | None = None, update: dict | None = None):
    """pandas DataFrame, one row per KV group: layer, kv_group, query heads and every quantity."""
    import pandas as pd

    lay = m0.layout
    flat = np.arange(lay.n_groups_total)
    g = flat % lay.num_kv_heads
    table = pd.DataFrame(
        {
            "layer": flat // lay.num_kv_heads,
            "kv_group": g,
            "query_heads": [
                " ".join(str(h) for h in range(k * lay.group_size, (k + 1) * lay.group_size)) for k in g
            ],
        }
    )
    for name, value in group_quantities(m0, m1, update).items():
        table[name] = value
    return table


def _pair_stats(x, y, layer, n_perm, seed, k: int | None = None) -> dict:
    ok = ~(np.isnan(x) | np.isnan(y))
    x, y, layer = x[ok], y[ok], layer[ok]
    within = within_layer(x, y, layer)
    top = topk_overlap(x, y, k=None if k is None else min(k, len(x)))
    return {
        "n": int(ok.sum()),
        "rho": spearman(x, y),
        "p_perm": permutation_pvalue(x, y, n_perm, seed),
        "rho_within_layer_mean": within["mean_per_layer"],
        "rho_within_layer_demeaned": within["demeaned"],
        "topk_k": top["k"],
        "topk_overlap": top["overlap"],
        "topk_chance": top["chance"],
    }


def compute_stats(
    m0: Measurements,
    m1: Measurements | None = None,
    update: dict | None = None,
    n_perm: int = 2000,
    n_boot: int = 300,
    seed: int = 0,
    top_k: int | None = None,
) -> dict:
    """Every statistic of the chapter, each with its chance level (a JSON-ready dict).

    ``pairs``: Spearman ρ, permutation p, bootstrap interval over examples, within-layer ρ and
    top-K overlap for each pair among the main quantities; ``proxy_validity``: each gradient proxy
    against true ablation, at θ0 (and θ1); ``split``: U^QO vs head ablation and U^KV vs group
    ablation; ``counterexamples``: the two sets against their chance level (0.03·N by default).

    ``top_k``: the size K of every top-K set (overlaps, and the "top" side of the counterexample
    sets); None = 10% of the heads compared. It must lie in 1..number of ablated heads (UserInputError
    otherwise); a pair compared over fewer heads (the KV groups) uses min(K, its N).
    """
    lay = m0.layout
    n_ablated = len(set(np.asarray(m0.ablated_heads).tolist()))
    if top_k is not None:
        top_k = check_top_k(top_k, n_ablated, among="heads ablated")
    layer = np.arange(lay.n_heads_total) // lay.num_heads
    q = head_quantities(m0, m1, update)
    main = ["I_pre", "G_pre", "F_pre", "Ppred_pre", "snr_pre", "neg_Eg_pre", "norm_pre"]
    if m1 is not None:
        main.insert(1, "I_post")
    if update is not None:
        main += ["U", "Urel"]
    pairs = list(combinations(main, 2))
    tags = [tag for tag, m in (("pre", m0), ("post", m1)) if m is not None]
    validity_pairs = [(f"{proxy}_{tag}", f"I_{tag}") for tag in tags for proxy in PROXIES]
    ablated = np.zeros(lay.n_heads_total, dtype=bool)
    ablated[m0.ablated_heads] = True
    boot = bootstrap_spearman(
        lambda idx: head_quantities(m0, m1, update, idx),
        len(m0.loss),
        pairs + [p for p in validity_pairs if p not in pairs],
        n_boot,
        seed,
    )
    out_pairs = []
    for a, b in pairs:
        row = {"x": a, "y": b, **_pair_stats(q[a], q[b], layer, n_perm, seed, top_k)}
        row["ci_low"], row["ci_high"] = boot[(a, b)]
        out_pairs.append(row)
    validity = []
    for tag, m in (("pre", m0), ("post", m1)):
        if m is None:
            continue
        imp = q[f"I_{tag}"]
        for proxy in PROXIES:
            stat = _pair_stats(q[f"{proxy}_{tag}"], imp, layer, n_perm, seed, top_k)
            ci_low, ci_high = boot[(f"{proxy}_{tag}", f"I_{tag}")]
            validity.append(
                {
                    "theta": "θ0" if tag == "pre" else "θ1",
                    "proxy": proxy,
                    **stat,
                    "ci_low": ci_low,
                    "ci_high": ci_high,
                }
            )
    n_sets = int(ablated.sum())
    k_sets = top_k if top_k is not None else top_k_of(n_sets)
    result = {
        "n_heads": lay.n_heads_total,
        "n_heads_ablated": int(ablated.sum()),
        "n_groups": lay.n_groups_total,
        "n_examples": len(m0.loss),
        "ablation": m0.ablation,
        "baseline_loss_pre": float(m0.loss.mean()),
        "top_k": k_sets,
        "top_k_given": top_k is not None,
        "topk_chance": k_sets**2 / max(1, n_sets),
        # 0.03·N at the default fractions (10% top, 30% bottom); K·(0.3·N)/N with a given K
        "counterexample_chance": (
            0.03 * n_sets if top_k is None else k_sets * max(1, int(round(0.30 * n_sets))) / max(1, n_sets)
        ),
        "pairs": out_pairs,
        "proxy_validity": validity,
    }
    if m1 is not None:
        result["baseline_loss_post"] = float(m1.loss.mean())
    if update is not None:
        cases = {}
        for imp in ("I_pre", "I_post") if m1 is not None else ("I_pre",):
            for upd in ("Urel", "U"):
                c = counterexamples(q[imp][ablated], q[upd][ablated], k=top_k)
                names = np.flatnonzero(ablated)
                for key in ("important_but_static", "plastic_but_unimportant"):
                    c[key] = [int(names[i]) for i in c[key]]
                cases[f"{imp}_vs_{upd}"] = c
        result["counterexamples"] = cases
        g = group_quantities(m0, m1, update)
        glayer = np.arange(lay.n_groups_total) // lay.num_kv_heads
        split = [
            {
                "x": "U_QO",
                "y": "I_pre",
                "unit": "query head",
                **_pair_stats(q["U_QO"], q["I_pre"], layer, n_perm, seed, top_k),
            }
        ]
        if "I_group_pre" in g:
            split.append(
                {
                    "x": "U_KV",
                    "y": "I_group_pre",
                    "unit": "KV group",
                    **_pair_stats(g["U_KV"], g["I_group_pre"], glayer, n_perm, seed, top_k),
                }
            )
        result["split"] = split
    return result


def case_list(stats: dict, layout: HeadLayout) -> dict:
    """cases.json: the counterexample heads named by (layer, head, kv_group)."""
    out = {}
    for name, c in stats.get("counterexamples", {}).items():
        out[name] = {
            key: [
                {
                    "layer": i // layout.num_heads,
                    "head": i % layout.num_heads,
                    "kv_group": (i % layout.num_heads) // layout.group_size,
                }
                for i in c[key]
            ]
            for key in ("important_but_static", "plastic_but_unimportant")
        } | {"chance": c["chance"]}
    return out
