"""Statistics for head rankings, each with its chance level (chapter 40_heads_importance_vs_plasticity).

- Spearman ρ with a two-sided permutation p-value (shuffle one ranking) and a bootstrap interval
  over evaluation examples (resample examples, recompute every per-head quantity, recompute ρ);
- within-layer ρ: the per-layer Spearman averaged over layers, and the Spearman of layer-demeaned
  ranks (depth drives everything, so the within-layer numbers are the honest ones);
- top-K overlap at K = 10% of the heads (or a given K; the original used K = 20) against the
  independence expectation K²/N;
- counterexample sets: important-but-static (importance top 10%, or top K, and update bottom 30%) and
  plastic-but-unimportant (update top 10% or top K, importance bottom 30%), each against its chance
  level K·(0.3·N)/N (0.03·N at K = 10%);
- across-seed agreement: mean pairwise Spearman and top-K overlap between fine-tuning seeds.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from itertools import combinations

import numpy as np
from scipy.stats import rankdata

from ..errors import UserInputError


def ranks(x: np.ndarray) -> np.ndarray:
    return rankdata(np.asarray(x, dtype=np.float64), method="average")


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean()
    b = b - b.mean()
    den = math.sqrt(float((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / den) if den > 0 else float("nan")


def spearman(x, y) -> float:
    """Spearman ρ (Pearson correlation of average ranks); NaN when either side is constant."""
    return _corr(ranks(x), ranks(y))


def permutation_pvalue(x, y, n_perm: int = 2000, seed: int = 0) -> float:
    """Two-sided permutation p-value of Spearman ρ: (1 + #{|ρ_perm| ≥ |ρ|}) / (1 + n_perm)."""
    rx, ry = ranks(x), ranks(y)
    rho = _corr(rx, ry)
    if math.isnan(rho):
        return float("nan")
    rng = np.random.default_rng(seed)
    rx = rx - rx.mean()
    ry = ry - ry.mean()
    den = math.sqrt(float((rx * rx).sum() * (ry * ry).sum()))
    perms = np.argsort(rng.random((n_perm, len(ry))), axis=1)
    null = (ry[perms] @ rx) / den
    return float((1 + np.count_nonzero(np.abs(null) >= abs(rho) - 1e-12)) / (1 + n_perm))


def within_layer(x, y, layer: np.ndarray) -> dict[str, float]:
    """Per-layer Spearman averaged over layers, and Spearman of layer-demeaned ranks."""
    x, y, layer = np.asarray(x), np.asarray(y), np.asarray(layer)
    per_layer = []
    for li in np.unique(layer):
        sel = layer == li
        if sel.sum() >= 3:
            per_layer.append(spearman(x[sel], y[sel]))
    per_layer = [r for r in per_layer if not math.isnan(r)]
    rx, ry = ranks(x), ranks(y)
    for li in np.unique(layer):
        sel = layer == li
        rx[sel] -= rx[sel].mean()
        ry[sel] -= ry[sel].mean()
    return {
        "mean_per_layer": float(np.mean(per_layer)) if per_layer else float("nan"),
        "demeaned": _corr(rx, ry),
    }


def top_k(n: int, frac: float = 0.10, k: int | None = None) -> int:
    """K of a top-K set among ``n`` heads: ``k`` when given (checked 1 <= k <= n), else frac·N."""
    if k is not None:
        return check_top_k(k, n)
    return max(1, int(round(frac * n)))


def check_top_k(k, n: int, what: str = "--top-k", among: str = "heads") -> int:
    """``k`` as an int in 1..n, else UserInputError naming the accepted range."""
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or not 1 <= int(k) <= n:
        raise UserInputError(
            f"{what} {k!r}: a top-K set needs an integer K from 1 to {n} (the number of {among})"
        )
    return int(k)


def _top(x: np.ndarray, k: int) -> set[int]:
    # stable tie-break by index, so equal values do not make the result random
    order = np.lexsort((np.arange(len(x)), -np.asarray(x, dtype=np.float64)))
    return set(order[:k].tolist())


def _bottom(x: np.ndarray, k: int) -> set[int]:
    order = np.lexsort((np.arange(len(x)), np.asarray(x, dtype=np.float64)))
    return set(order[:k].tolist())


def topk_overlap(x, y, frac: float = 0.10, k: int | None = None) -> dict[str, float]:
    """|top-K(x) ∩ top-K(y)| at K = ``k`` (default frac·N), and the chance level K²/N."""
    n = len(x)
    k = top_k(n, frac, k)
    return {"k": k, "overlap": len(_top(x, k) & _top(y, k)), "chance": k * k / n}


def counterexamples(
    importance, update, top: float = 0.10, bottom: float = 0.30, k: int | None = None
) -> dict[str, object]:
    """Important-but-static and plastic-but-unimportant heads (indices into the vectors) against the
    independence expectation (0.03·N at the default fractions). ``k`` replaces the top fraction by a
    top-K set of that size."""
    n = len(importance)
    kt, kb = top_k(n, top, k), max(1, int(round(bottom * n)))
    static = sorted(_top(importance, kt) & _bottom(update, kb))
    plastic = sorted(_top(update, kt) & _bottom(importance, kb))
    return {
        "important_but_static": static,
        "plastic_but_unimportant": plastic,
        "n_important_but_static": len(static),
        "n_plastic_but_unimportant": len(plastic),
        "chance": kt * kb / n,  # = 0.03·N up to rounding of the two set sizes
        "k_top": kt,
        "k_bottom": kb,
    }


def bootstrap_spearman(
    quantities: Callable[[np.ndarray], dict[str, np.ndarray]],
    n_examples: int,
    pairs: Sequence[tuple[str, str]],
    n_boot: int = 500,
    seed: int = 0,
    level: float = 0.95,
) -> dict[tuple[str, str], tuple[float, float]]:
    """Percentile bootstrap interval of ρ for each pair, resampling evaluation examples.

    ``quantities(idx)`` recomputes every per-head vector from the examples ``idx`` (with
    repetition); quantities that do not depend on examples (U, Urel) simply ignore it.
    """
    rng = np.random.default_rng(seed)
    draws = {p: [] for p in pairs}
    for _ in range(n_boot):
        idx = rng.integers(0, n_examples, size=n_examples)
        q = quantities(idx)
        for a, b in pairs:
            ok = ~(np.isnan(q[a]) | np.isnan(q[b]))  # heads measured for both (e.g. a subset ablated)
            draws[(a, b)].append(_corr(ranks(q[a][ok]), ranks(q[b][ok])))
    lo, hi = (1 - level) / 2, 1 - (1 - level) / 2
    out = {}
    for p, values in draws.items():
        v = np.asarray(values)
        v = v[~np.isnan(v)]
        out[p] = (float(np.quantile(v, lo)), float(np.quantile(v, hi))) if len(v) else (math.nan, math.nan)
    return out


def across_seed_agreement(
    rankings: Sequence[np.ndarray], frac: float = 0.10, k: int | None = None
) -> dict[str, float]:
    """Mean pairwise Spearman and top-K overlap of one quantity measured under different seeds.

    Heads undefined (NaN) in any run, such as heads a run did not ablate, are left out of every pair,
    so each pair compares the same heads; K is ``k`` or frac·N over those N heads.
    """
    values = np.vstack([np.asarray(r, dtype=np.float64) for r in rankings]) if rankings else np.zeros((0, 0))
    values = values[:, ~np.isnan(values).any(0)]  # [runs, heads defined in every run]
    n = values.shape[1]
    if len(rankings) < 2 or n == 0:
        nan = math.nan
        return {"n_seeds": len(rankings), "mean_spearman": nan, "min_spearman": nan,
                "mean_topk_overlap": nan, "topk_chance": nan, "k": nan, "n_heads": n}  # fmt: skip
    k = top_k(n, frac, k)
    rhos, overlaps = [], []
    for a, b in combinations(values, 2):
        rhos.append(spearman(a, b))
        overlaps.append(topk_overlap(a, b, k=k)["overlap"])
    defined = [r for r in rhos if not math.isnan(r)]  # a constant ranking has no ρ
    return {
        "n_seeds": len(rankings),
        "mean_spearman": float(np.mean(defined)) if defined else math.nan,
        "min_spearman": float(np.min(defined)) if defined else math.nan,
        "mean_topk_overlap": float(np.mean(overlaps)),
        "topk_chance": k * k / n,
        "k": k,
        "n_heads": n,
    }
