"""Per-tensor statistics and spectra in float64 (chapters 10 and 11).

Statistics are accumulated over row chunks (so the float64 temporaries of a 151936 x 896 embedding
stay small) and merged with the pairwise formulas of Chan et al. / Pébay for the central moments,
which stay accurate where raw power sums would cancel. Spectra of a 2-D tensor W (m x n) always use
the full matrix:

- ``gram`` (default): eigenvalues of the float64 Gram matrix WᵀW (or WWᵀ, whichever is smaller),
  accumulated chunk by chunk; σ = sqrt(λ). Absolute error in λ is about eps64·λ_max, so σ is
  resolved down to about 1e-8·σ_max, far below the rank tolerance used here.
- ``exact``: a chunked QR (TSQR: stack R with the next rows, re-factor) then the SVD of the final
  n x n triangle; σ(W) = σ(R), with the accuracy of an SVD of W and the memory of one chunk.

Everything here takes numpy arrays and returns plain dicts, so tests can check it on tiny inputs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import numpy as np

NEAR_ZERO_ABS = 1e-8  # the seed tool's absolute tolerance
NEAR_ZERO_REL = 1e-3  # relative to the tensor's abs max
OUTLIER_SIGMAS = 6.0
ENERGY_LEVELS = (0.90, 0.95, 0.99)
RANK_EPS_DTYPE = "float32"  # numerical rank as numpy.linalg.matrix_rank gives it on float32 weights


class Moments:
    """Streaming count / mean / M2 / M3 / M4 of the finite values, plus extremes and counts."""

    def __init__(self) -> None:
        self.n = 0
        self.mean = 0.0
        self.m2 = 0.0
        self.m3 = 0.0
        self.m4 = 0.0
        self.abs_sum = 0.0
        self.min = math.inf
        self.max = -math.inf
        self.abs_max = 0.0
        self.zeros = 0
        self.near_zero_abs = 0
        self.nan = 0
        self.inf = 0
        self.total = 0

    def update(self, chunk: np.ndarray) -> None:
        x = np.asarray(chunk).reshape(-1)
        self.total += x.size
        finite = np.isfinite(x)
        if not finite.all():
            self.nan += int(np.isnan(x).sum())
            self.inf += int(np.isinf(x).sum())
            x = x[finite]
        if x.size == 0:
            return
        # extremes, zeros and |x| are exact in the stored precision; sums accumulate in float64
        nb = x.size
        absx = np.abs(x)
        self.abs_sum += float(np.sum(absx, dtype=np.float64))
        self.min = min(self.min, float(x.min()))
        self.max = max(self.max, float(x.max()))
        self.abs_max = max(self.abs_max, float(absx.max()))
        self.zeros += int(np.count_nonzero(x == 0))
        self.near_zero_abs += int(np.count_nonzero(absx <= np.float64(NEAR_ZERO_ABS)))
        mb = float(np.sum(x, dtype=np.float64)) / nb
        d = x.astype(np.float64)
        d -= mb
        d2 = d * d
        m2b = float(d2.sum())
        m3b = float(np.dot(d2, d))
        m4b = float(np.dot(d2, d2))
        self._merge(nb, mb, m2b, m3b, m4b)

    def _merge(self, nb: int, mb: float, m2b: float, m3b: float, m4b: float) -> None:
        na = self.n
        if na == 0:
            self.n, self.mean, self.m2, self.m3, self.m4 = nb, mb, m2b, m3b, m4b
            return
        n = na + nb
        delta = mb - self.mean
        d_n = delta / n
        m4 = (
            self.m4
            + m4b
            + delta * d_n**3 * na * nb * (na * na - na * nb + nb * nb)
            + 6.0 * d_n * d_n * (na * na * m2b + nb * nb * self.m2)
            + 4.0 * d_n * (na * m3b - nb * self.m3)
        )
        m3 = self.m3 + m3b + delta * d_n * d_n * na * nb * (na - nb) + 3.0 * d_n * (na * m2b - nb * self.m2)
        m2 = self.m2 + m2b + delta * d_n * na * nb
        self.n, self.mean, self.m2, self.m3, self.m4 = n, self.mean + d_n * nb, m2, m3, m4

    def result(self) -> dict:
        """Population statistics (ddof=0) of the finite values."""
        n = self.n
        var = self.m2 / n if n else math.nan
        std = math.sqrt(var) if n else math.nan
        skew = (self.m3 / n) / var**1.5 if n and var > 0 else math.nan
        kurt = (self.m4 / n) / var**2 - 3.0 if n and var > 0 else math.nan
        sum_sq = self.m2 + n * self.mean * self.mean if n else math.nan
        return {
            "mean": self.mean if n else math.nan,
            "std": std,
            "var": var,
            "min": self.min if n else math.nan,
            "max": self.max if n else math.nan,
            "abs_max": self.abs_max if n else math.nan,
            "abs_mean": self.abs_sum / n if n else math.nan,
            "rms": math.sqrt(sum_sq / n) if n else math.nan,
            "fro_norm": math.sqrt(sum_sq) if n else math.nan,
            "skewness": skew,
            "excess_kurtosis": kurt,
            "zero_frac": self.zeros / self.total if self.total else math.nan,
            "near_zero_abs_frac": self.near_zero_abs / self.total if self.total else math.nan,
            "nan_count": self.nan,
            "inf_count": self.inf,
        }


def tail_counts(chunks: Iterable[np.ndarray], mean: float, std: float, abs_max: float) -> dict:
    """Second pass: share beyond ``OUTLIER_SIGMAS`` σ from the mean and share with |x| <= rel·abs max."""
    total = beyond = near = 0
    rel_tol = NEAR_ZERO_REL * abs_max if np.isfinite(abs_max) else math.nan
    for chunk in chunks:
        x = np.asarray(chunk).reshape(-1)
        total += x.size
        if not (np.isfinite(mean) and np.isfinite(std)):
            continue
        # compared against float64 thresholds (numpy casts the values, no float64 copy is kept)
        lo, hi = np.float64(mean - OUTLIER_SIGMAS * std), np.float64(mean + OUTLIER_SIGMAS * std)
        beyond += int(np.count_nonzero(x > hi)) + int(np.count_nonzero(x < lo))
        near += int(np.count_nonzero(np.abs(x) <= np.float64(rel_tol)))
    ok = total and np.isfinite(mean) and np.isfinite(std)
    return {
        "near_zero_rel_frac": near / total if ok else math.nan,
        "near_zero_rel_tol": rel_tol,
        "beyond_6sigma_frac": beyond / total if ok else math.nan,
    }


def distribution(values: np.ndarray, chunk_rows: int = 4096) -> dict:
    """All distribution columns of one in-memory array (the table streams instead; same maths)."""
    x = np.atleast_2d(values)
    chunks = [x[i : i + chunk_rows] for i in range(0, x.shape[0], chunk_rows)]
    acc = Moments()
    for c in chunks:
        acc.update(c)
    out = acc.result()
    out.update(tail_counts(chunks, out["mean"], out["std"], out["abs_max"]))
    return out


# -- singular values ----------------------------------------------------------------------------------
def singular_values_gram(
    row_chunks: Callable[[], Iterable[np.ndarray]], shape: tuple[int, int]
) -> np.ndarray:
    """σ of an m x n matrix given as row chunks, descending, via the float64 Gram matrix.

    m >= n: WᵀW (n x n) accumulated chunk by chunk. m < n: the chunks are gathered (m is the small
    side) and WWᵀ is accumulated over column blocks in float64.
    """
    from scipy.linalg import eigh

    m, n = shape
    if m >= n:
        gram = np.zeros((n, n), dtype=np.float64)
        for chunk in row_chunks():
            c = np.asarray(chunk, dtype=np.float64)
            gram += c.T @ c
    else:
        w = np.concatenate([np.asarray(c, dtype=np.float32) for c in row_chunks()], axis=0)
        gram = np.zeros((m, m), dtype=np.float64)
        step = max(1, 4_000_000 // max(m, 1))
        for j in range(0, n, step):
            b = w[:, j : j + step].astype(np.float64)
            gram += b @ b.T
        del w
    lam = eigh(gram, eigvals_only=True, overwrite_a=True, check_finite=False)
    lam = np.clip(lam[::-1], 0.0, None)
    return np.sqrt(lam)


def singular_values_exact(
    row_chunks: Callable[[], Iterable[np.ndarray]], shape: tuple[int, int]
) -> np.ndarray:
    """σ of an m x n matrix given as row chunks, descending: chunked QR (TSQR), then SVD of R."""
    from scipy.linalg import qr, svdvals

    m, n = shape
    if m < n:  # σ(W) = σ(Wᵀ): factor the transpose, whose rows are W's columns
        w = np.concatenate([np.asarray(c, dtype=np.float32) for c in row_chunks()], axis=0)
        step = max(n // 8, 1)
        chunks = (w[:, j : j + step].T for j in range(0, n, step))
        m, n = n, m
    else:
        chunks = row_chunks()
    r = None
    for chunk in chunks:
        c = np.asarray(chunk, dtype=np.float64)
        stacked = c if r is None else np.vstack([r, c])
        if stacked.shape[0] > n:
            r = qr(stacked, mode="r", overwrite_a=True, check_finite=False)[0][:n]
        else:
            r = stacked
    return np.sort(svdvals(r, check_finite=False))[::-1]


# -- spectral metrics ---------------------------------------------------------------------------------
def spectral_metrics(sigma: np.ndarray, shape: tuple[int, int], rank_eps: float | None = None) -> dict:
    """Every spectral column of the table from σ (any order) of an m x n matrix.

    - numerical rank: #σ > tol with tol = σ_max·max(m, n)·eps, eps of float32 by default (what
      ``numpy.linalg.matrix_rank`` gives on the float32 weights); the tolerance is returned.
    - stable rank Σσ²/σ_max²; effective rank exp(H(p)) with p = σ/Σσ (Roy & Vetterli 2007);
      energy ranks: fewest σ holding 90/95/99 % of Σσ²; participation ratio (Σλ)²/Σλ², λ = σ².
    """
    m, n = shape
    s = np.sort(np.asarray(sigma, dtype=np.float64))[::-1]
    design = min(m, n)
    eps = float(np.finfo(np.float32).eps) if rank_eps is None else rank_eps
    smax = float(s[0]) if s.size else 0.0
    tol = smax * max(m, n) * eps
    out = {
        "design_rank": design,
        "numerical_rank": int(np.count_nonzero(s > tol)),
        "rank_tol": tol,
        "sigma_max": smax,
        "sigma_min": float(s[-1]) if s.size else math.nan,
        "condition_number": smax / float(s[-1]) if s.size and s[-1] > 0 else math.inf,
        "nuclear_norm": float(s.sum()),
    }
    lam = s * s
    total = float(lam.sum())
    if total <= 0:
        out.update({"stable_rank": 0.0, "effective_rank": 0.0, "participation_ratio": 0.0})
        for level in ENERGY_LEVELS:
            out[f"energy_rank_{int(level * 100)}"] = 0
            out[f"energy_rank_{int(level * 100)}_ratio"] = 0.0
        return out
    out["stable_rank"] = total / (smax * smax)
    p = s / s.sum()
    p = p[p > 0]
    out["effective_rank"] = float(np.exp(-(p * np.log(p)).sum()))
    out["participation_ratio"] = total * total / float((lam * lam).sum())
    cum = np.cumsum(lam) / total
    for level in ENERGY_LEVELS:
        # fewest σ whose energy reaches the level (a tiny slack absorbs rounding in the cumsum)
        k = int(np.searchsorted(cum, level - 1e-12) + 1)
        k = min(k, s.size)
        out[f"energy_rank_{int(level * 100)}"] = k
        out[f"energy_rank_{int(level * 100)}_ratio"] = k / design
    return out


ALPHA_METHODS = ("ours", "ww")
# WeightWatcher 0.7.7's constants, copied so the "ww" method needs neither weightwatcher nor powerlaw:
WW_EVALS_THRESH = 1e-5  # constants.EVALS_THRESH: eigenvalues at or below it are left out of the fit (CPU)
WW_SMALL_N = 20  # WW_powerlaw.SMALL_N_CUTOFF: fewer eigenvalues than this use the small-N rule
WW_SMALL_N_KMIN = 8  # WW_powerlaw.WWFit.fit_powerlaw_smallN(k_min=8): its smallest tail


def ks_distance(tail: np.ndarray, xmin: float, alpha: float, sided: str = "two") -> float:
    """Kolmogorov-Smirnov distance between a sorted tail (all values >= ``xmin``) and the continuous
    power law F(x) = 1 - (x/x_min)^(1-α).

    ``sided="two"``: the sup distance, checked on both sides of each step of the empirical CDF
    (i/n and (i+1)/n), the default method's rule. ``sided="one"``: WeightWatcher's (and Clauset's
    ``plfit.m``) rule, max |F(x_i) - i/n| with i = 0..n-1: only the value just below each step,
    so it never exceeds the two-sided distance.
    """
    x = np.asarray(tail, dtype=np.float64)
    n = x.size
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        cdf_fit = 1.0 - (x / xmin) ** (1.0 - alpha)
    ranks = np.arange(n, dtype=np.float64)
    below = float(np.max(np.abs(ranks / n - cdf_fit)))
    if sided == "one":
        return below
    if sided != "two":
        raise ValueError(f"sided={sided!r}: use 'two' or 'one'")
    return max(below, float(np.max(np.abs((ranks + 1) / n - cdf_fit))))


def log_alpha_norm(eigenvalues: np.ndarray, alpha: float) -> float:
    """WeightWatcher's ``log_alpha_norm``: log10 Σ λ^α over every eigenvalue (not only the tail),
    summed in log space so large α cannot overflow (WeightWatcher sums λ**α directly)."""
    from scipy.special import logsumexp

    lam = np.asarray(eigenvalues, dtype=np.float64)
    lam = lam[lam > 0]  # λ = 0 adds 0^α = 0 for α > 0
    if lam.size == 0 or not math.isfinite(alpha):
        return math.nan
    return float(logsumexp(alpha * np.log(lam)) / math.log(10.0))


def ww_power_law_fit(eigenvalues: np.ndarray) -> dict:
    """WeightWatcher 0.7.7's own power-law fit (``analyze()`` defaults: fit='PL', xmin and xmax
    unset, fix_fingers off, pl_package 'ww'), reproduced step by step in numpy.

    - The fit sees only λ > ``WW_EVALS_THRESH`` (1e-5, absolute), sorted ascending (N of them).
    - N >= 20 (``WWFit.fit_power_law_standard``): every value but the largest is a candidate x_min,
      so tails go down to 2 values; α = 1 + n / Σ ln(λ_i/x_min) (the MLE, no bias correction);
      D = max |F(λ_i) - i/n|, i = 0..n-1 (one-sided, see :func:`ks_distance`), left at 1 where
      α <= 1; the first smallest D wins.
    - N < 20 (``fit_powerlaw_smallN``): tails of at least 8 values and the bias-corrected
      α = 1 + (n-1) / Σ ln(λ_i/x_min); the smallest D still picks x_min (``WWFit.__init__``
      overrides that function's own objective); with no such tail, all N values.
    - ``tail`` is WeightWatcher's ``num_pl_spikes``: how many eigenvalues (of all) are >= x_min.

    Returns alpha, xmin, D and tail (NaN, NaN, NaN, 0 when the fit fails, where WeightWatcher
    writes -1). The arithmetic follows WeightWatcher's expression by expression, so α agrees to
    rounding on the same eigenvalues.
    """
    evals = np.sort(np.asarray(eigenvalues, dtype=np.float64))
    data = evals[evals > WW_EVALS_THRESH]
    failed = {"alpha": math.nan, "xmin": math.nan, "D": math.nan, "tail": 0}
    big_n = data.size
    if big_n < 2:  # WeightWatcher fails here too (no candidate x_min)
        return failed
    log_data = np.log(data, dtype=np.float64)
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        if big_n < WW_SMALL_N:
            alphas, ds = _ww_fit_small_n(data, log_data)
        else:
            alphas = np.zeros(big_n - 1, dtype=np.float64)
            ds = np.ones(big_n - 1, dtype=np.float64)
            for i in range(big_n - 1):
                xmin = data[i]
                n = float(big_n - i)
                alpha = 1 + n / (np.sum(log_data[i:]) - n * log_data[i])
                alphas[i] = alpha
                if alpha > 1:
                    ds[i] = np.max(np.abs(1 - (data[i:] / xmin) ** (-alpha + 1) - np.arange(n) / n))
    best = int(np.argmin(ds))  # WWFit.__init__: the first smallest D, for both rules
    alpha, xmin, d = alphas[best], data[best], ds[best]
    if np.isnan(alpha):
        return failed
    return {
        "alpha": float(alpha),
        "xmin": float(xmin),
        "D": float(d),
        "tail": int(np.count_nonzero(evals >= xmin)),
    }


def _ww_fit_small_n(data: np.ndarray, log_data: np.ndarray, k_min: int = WW_SMALL_N_KMIN):
    """``WWFit.fit_powerlaw_smallN`` (lambda_prior = 0) as ``WWFit.__init__`` uses it: (alphas, Ds).

    Its own choice (smallest D - 0.868/√n) is overwritten by ``__init__``, which then takes the
    first smallest D like the standard fit; only its α (bias-corrected), its tails (>= k_min) and
    its fallback (no such tail: all N values at index 0) remain.
    """
    big_n = data.size
    alphas = np.zeros(big_n - 1, dtype=np.float64)
    ds = np.ones(big_n - 1, dtype=np.float64)
    found = False
    for i in range(big_n - 1):
        n_int = big_n - i
        if n_int < k_min:
            continue
        n = float(n_int)
        s = np.sum(log_data[i:]) - n * log_data[i]
        if s <= 1e-12:
            continue
        alpha_bc = 1.0 + (n - 1.0) / s
        alphas[i] = alpha_bc
        if alpha_bc <= 1.0:
            continue
        f_fit = 1.0 - (data[i:] / data[i]) ** (1.0 - alpha_bc)
        ds[i] = float(np.max(np.abs(np.arange(n_int, dtype=np.float64) / n - f_fit)))
        found = True
    if not found:  # no tail of k_min values: WeightWatcher fits all N values at index 0
        n = float(big_n)
        s = np.sum(log_data) - n * log_data[0]
        if s > 1e-12:
            alphas[0] = 1.0 + (n - 1.0) / s
            f_fit = 1.0 - (data / data[0]) ** (1.0 - alphas[0])
            ds[0] = float(np.max(np.abs(np.arange(big_n, dtype=np.float64) / n - f_fit)))
    return alphas, ds


def power_law_fit(eigenvalues: np.ndarray, min_tail: int = 10, method: str = "ours") -> dict:
    """Heavy-tail fit of an eigenvalue spectrum λ = σ² (chapter 11), by one of two x_min rules.

    Both fit a continuous power law p(λ) ∝ λ^-α for λ >= x_min with the maximum-likelihood
    α = 1 + n / Σ ln(λ_i / x_min) (Clauset, Shalizi & Newman 2009) and keep the candidate x_min
    whose fit has the smallest Kolmogorov-Smirnov distance D. They differ in the rule:

    - ``"ours"`` (default): candidates are eigenvalues with at least ``min_tail`` values at or above
      them, and D is the two-sided sup distance (:func:`ks_distance`).
    - ``"ww"``: WeightWatcher 0.7.7's own fit (:func:`ww_power_law_fit`): tails down to 2 values,
      its one-sided D, λ <= 1e-5 left out, a small-N rule below 20 eigenvalues.

    Columns: alpha, alpha_xmin, alpha_tail (eigenvalues >= x_min), alpha_ks (the D the method
    minimised, so one-sided for "ww"), alpha_method. The norms follow WeightWatcher's convention
    (``normalize=False``: raw λ = σ², no 1/N): alpha_weighted = α·log10 λ_max, log_alpha_norm =
    log10 Σ λ^α (all eigenvalues), log_norm = log10 Σλ, log_spectral_norm = log10 λ_max.
    """
    if method not in ALPHA_METHODS:
        raise ValueError(f"method={method!r}: use one of {', '.join(ALPHA_METHODS)}")
    lam = np.sort(np.asarray(eigenvalues, dtype=np.float64))
    lam = lam[lam > 0]
    out = {
        "alpha_method": method,
        "alpha": math.nan,
        "alpha_xmin": math.nan,
        "alpha_ks": math.nan,
        "alpha_tail": 0,
        "alpha_weighted": math.nan,
        "log_alpha_norm": math.nan,
        "log_norm": math.nan,
        "log_spectral_norm": math.nan,
    }
    if lam.size == 0:
        return out
    out["log_norm"] = math.log10(lam.sum())
    out["log_spectral_norm"] = math.log10(lam[-1])
    if method == "ww":
        fit = ww_power_law_fit(lam)
        best = (fit["D"], fit["alpha"], fit["xmin"], fit["tail"])
    else:
        best = _ours_fit(lam, min_tail)
    if math.isfinite(best[0]) and math.isfinite(best[1]):
        out.update({"alpha": best[1], "alpha_xmin": best[2], "alpha_ks": best[0], "alpha_tail": best[3]})
        out["alpha_weighted"] = best[1] * math.log10(lam[-1])
        out["log_alpha_norm"] = log_alpha_norm(lam, best[1])
    return out


def _ours_fit(lam: np.ndarray, min_tail: int) -> tuple[float, float, float, int]:
    """(D, α, x_min, tail) of the default rule on sorted positive λ: tails >= ``min_tail``,
    two-sided KS; (inf, nan, nan, 0) when no candidate fits."""
    n = lam.size
    best = (math.inf, math.nan, math.nan, 0)
    if n < min_tail + 1:
        return best
    logs = np.log(lam)
    suffix = np.cumsum(logs[::-1])[::-1]  # suffix[i] = Σ_{j>=i} ln λ_j
    for i in range(n - min_tail + 1):
        tail = n - i
        denom = suffix[i] - tail * logs[i]
        if denom <= 0:
            continue
        alpha = 1.0 + tail / denom
        d = ks_distance(lam[i:], lam[i], alpha, "two")
        if d < best[0]:
            best = (float(d), float(alpha), float(lam[i]), tail)
    return best


# one line per method for the run record (``qwen-anatomy params``)
ALPHA_RULES = {
    "ours": "continuous power-law MLE over candidate x_min with at least 10 eigenvalues in the tail, "
    "the x_min of smallest two-sided KS distance kept",
    "ww": "WeightWatcher 0.7.7's own fit (analyze() defaults): eigenvalues > 1e-5, tails down to 2 "
    "values, its one-sided KS distance max|F - i/n|; below 20 eigenvalues its small-N rule",
}
