"""The embedding and output layer: norms, dead rows, anisotropy, PCA and clusters (chapter 12).

The seed tool standardised raw embedding rows and picked K by Calinski-Harabasz: silhouette came out
about -0.02 and its "representative tokens" were never-trained CJK/Hangul rows. Here:

- rows that belong to no token (ids at or above the tokenizer's size) are reported and excluded;
  exact duplicate rows are collapsed to one before clustering;
- rows are L2-normalised and mean-removed (direction, not norm, carries meaning; the common mean
  direction is the anisotropy, reported separately), optionally projected on the top PCA axes;
- MiniBatchKMeans runs over a grid of K with a fixed seed; per K: inertia (the elbow curve),
  silhouette on one fixed sample (10k rows), Calinski-Harabasz and Davies-Bouldin. K is picked by the
  highest silhouette (default) or by the elbow of the inertia curve (:func:`elbow_k`); the rule is
  stated in the report, with the other scores beside it;
- each cluster is described by its size, the tokens nearest its centroid decoded by the real
  tokenizer, and its make-up by character class. Without a tokenizer the report still runs: tokens
  are not decoded, and rows without a token cannot be told apart (the summary says so).

Memory is bounded for any embedding: the matrix is streamed in row chunks (``CHUNK_BYTES`` of float64
at a time), three times. Pass 1: row norms, a digest of each row's bytes (duplicates), the mean row,
the sum of unit rows (mean cosine to the mean = mean unit row . mean direction), the float64 scatter
matrix of the token rows (their PCA, exact: ``eigh`` of a d x d matrix) and, for an untied model, the
cosine of each row with its LM-head row. Pass 2: mean and scatter of the unit rows kept for clustering
(duplicates are only known after pass 1). Pass 3: those rows, centred and projected on the top
``pca_dims`` axes, the only rows x dims matrix held (152,064 x 128 float32 = 78 MB for Qwen2.5-7B).
Without PCA (``pca_dims=None``) that matrix is the full width: 2.2 GB of float32 for Qwen2.5-7B.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import UserInputError
from .checkpoint import open_checkpoint, tokenizer_dir_for
from .tokenclass import CHAR_CLASSES, char_class  # noqa: F401 - CHAR_CLASSES re-exported for readers

K_RULES = ("silhouette", "elbow")
K_RULE_DESCRIPTIONS = {
    "silhouette": "the K with the highest silhouette (fixed sample); the elbow K, Calinski-Harabasz and "
    "Davies-Bouldin shown beside it",
    "elbow": "the elbow of the inertia curve: the K farthest below the chord from the first to the last K, "
    "with log2 K and inertia both scaled to [0, 1] (kneedle); silhouette, Calinski-Harabasz and "
    "Davies-Bouldin shown beside it",
}
K_RULE = K_RULE_DESCRIPTIONS["silhouette"]  # the default rule's description
LOW_NORM_RULE = "norm < median - z * 1.4826 * MAD of the token rows' norms"
DUPLICATE_RULE = (
    "rows with identical float32 bytes, found by a 128-bit BLAKE2b digest of each row (the chance of "
    "one collision among 152k rows is below 1e-28)"
)
NO_STRUCTURE_SILHOUETTE = 0.05
CHUNK_BYTES = 64 * 2**20  # float64 bytes of one chunk of embedding rows
PAIR_SAMPLE = 2000  # rows whose pairwise cosines estimate the mean pairwise cosine
ELBOW_ROUNDING = 1e-9  # gaps below the chord this small (on the [0, 1] scales) are float64 rounding


def parse_k_grid(text: str) -> list[int]:
    """``"8,16,32"`` -> [8, 16, 32]; a clear error for anything else."""
    ks = []
    for part in str(text).split(","):
        part = part.strip()
        try:
            k = int(part)
        except ValueError:
            raise UserInputError(f"--k {text!r}: {part!r} is not an integer; give e.g. --k 8,16,32") from None
        if k < 2:
            raise UserInputError(f"--k {text!r}: K={k} is too small; each K must be >= 2")
        ks.append(k)
    return sorted(set(ks))


def elbow_k(ks, inertia) -> tuple[int, float]:
    """The elbow of an inertia curve, by the kneedle construction (Satopää et al. 2011): put the points
    on the axes of the elbow plot (x = log2 K, y = inertia), scale both to [0, 1], draw the chord from
    the first to the last point and return (K, gap) for the point farthest below it (the largest
    vertical gap, which is also the largest perpendicular distance, the chord's slope being fixed).

    A curve with no point below its chord (straight, or bending the wrong way; gaps up to
    ``ELBOW_ROUNDING`` count as rounding) has no elbow: the smallest K is returned with gap 0. Needs at
    least 3 values of K (with 2, the chord is the curve).
    """
    k = np.asarray(ks, dtype=float)
    y = np.asarray(inertia, dtype=float)
    if k.shape != y.shape or k.ndim != 1 or k.size < 3:
        raise ValueError(f"elbow_k needs >= 3 (K, inertia) pairs, got {k.size} K and {y.size} inertia values")
    order = np.argsort(k, kind="stable")
    k, y = k[order], y[order]
    x = np.log2(k)
    xs = (x - x[0]) / (x[-1] - x[0])
    span = y.max() - y.min()
    ys = (y - y.min()) / span if span > 0 else np.zeros_like(y)
    gap = ys[0] + (ys[-1] - ys[0]) * xs - ys
    i = int(np.argmax(gap))  # ties: the smallest K
    if not gap[i] > ELBOW_ROUNDING:
        return int(k[0]), 0.0
    return int(k[i]), float(gap[i])


@dataclass
class EmbeddingReport:
    """Everything chapter 12 shows; ``rows`` has one row per embedding row (token id)."""

    summary: dict
    rows: object  # DataFrame: id, token, char_class, norm, no_token, duplicate_group, low_norm, cluster
    pca_explained: np.ndarray
    k_sweep: object  # DataFrame: k, inertia, silhouette, calinski_harabasz, davies_bouldin, seconds
    clusters: object  # DataFrame: cluster, size, nearest_tokens, class shares
    head_cosine: np.ndarray | None = None
    timings: dict = field(default_factory=dict)


def _decode_all(tok, n_rows: int):
    """(decoded text, is_special) for ids 0..n_rows-1 (ids without a token give None)."""
    raw = tok._tok
    size = tok.vocab_size
    ids = list(range(min(n_rows, size)))
    texts = raw.decode_batch([[i] for i in ids], skip_special_tokens=False)
    special_ids = {i for i, t in raw.get_added_tokens_decoder().items() if getattr(t, "special", False)}
    out_text = [None] * n_rows
    out_special = [False] * n_rows
    for i, t in zip(ids, texts, strict=True):
        if raw.id_to_token(i) is None:
            continue
        out_text[i] = t
        out_special[i] = i in special_ids
    return out_text, out_special


class _Moments:
    """Running count, mean and (optionally) scatter matrix of float64 rows, accumulated chunk by chunk.

    Sums are taken around a fixed shift c (the first chunk's mean): the centred scatter is
    Σ(x - c)(x - c)ᵀ - n (m - c)(m - c)ᵀ with m the mean, and m - c is small, so nothing is lost to
    cancellation when the mean is large against the spread (the shifted-data algorithm).
    """

    def __init__(self, width: int, scatter: bool):
        self.n = 0
        self.shift = None
        self.sum = np.zeros(width)
        self.scatter = np.zeros((width, width)) if scatter else None

    def add(self, x: np.ndarray) -> None:
        if x.shape[0] == 0:
            return
        if self.shift is None:
            self.shift = x.mean(axis=0)
        y = x - self.shift
        self.n += y.shape[0]
        self.sum += y.sum(axis=0)
        if self.scatter is not None:
            self.scatter += y.T @ y  # numpy sends A.T @ A to BLAS syrk

    def mean(self) -> np.ndarray:
        return self.shift + self.sum / self.n

    def centred_scatter(self) -> np.ndarray:
        """Σ (x - mean)(x - mean)ᵀ over every row added (d x d)."""
        m = self.sum / self.n
        return self.scatter - self.n * np.outer(m, m)


def _chunks(ck, entry, n_rows: int, step: int, desc: str, progress: bool):
    """(start, stop, float32 rows) for consecutive row chunks of ``entry``, with a progress bar."""
    from ..progress import progress_bar

    with progress_bar(total=n_rows, unit="row", unit_scale=True, desc=desc, enabled=progress) as bar:
        for start in range(0, n_rows, step):
            stop = min(n_rows, start + step)
            block = np.ascontiguousarray(ck.read_rows(entry, start, stop), dtype=np.float32)
            yield start, stop, block
            bar.update(stop - start)


def _unit(x: np.ndarray, norms: np.ndarray | None = None) -> np.ndarray:
    """Rows divided by their L2 norms (zero rows stay zero)."""
    if norms is None:
        norms = np.linalg.norm(x, axis=1)
    return x / np.maximum(norms, 1e-30)[:, None]


def embedding_report(
    spec: str | os.PathLike,
    k_grid=(8, 16, 32, 64, 128, 256),
    pca_dims: int | None = 128,
    seed: int = 0,
    silhouette_sample: int = 10_000,
    nearest: int = 10,
    low_norm_z: float = 3.0,
    max_rows: int | None = None,
    threads: int = 1,
    k_rule: str = "silhouette",
    decode_tokens: bool = True,
    chunk_rows: int | None = None,
    progress: bool = False,
) -> EmbeddingReport:
    """The embedding / output-layer report of a checkpoint (chapter 12).

    ``max_rows`` caps the rows used (the first ids) for quick runs; everything else uses the full
    matrix, streamed in chunks of ``chunk_rows`` rows (default: ``CHUNK_BYTES`` of float64), so peak
    memory does not grow with the vocabulary beyond a few per-row numbers and the projected
    clustering matrix. ``k_rule`` is ``"silhouette"`` or ``"elbow"`` (:data:`K_RULE_DESCRIPTIONS`).
    ``decode_tokens=False`` (or a checkpoint without a tokenizer) skips decoding: token columns stay
    empty and every row counts as a token row.
    """
    import pandas as pd
    import scipy.linalg  # noqa: F401  (threadpoolctl limits only BLAS libraries already loaded)
    import sklearn.cluster  # noqa: F401
    from threadpoolctl import threadpool_limits

    from ..tokenizer import Tokenizer

    if k_rule not in K_RULES:
        raise UserInputError(f"--k-rule {k_rule!r}: use one of {', '.join(K_RULES)}")
    if chunk_rows is not None and chunk_rows < 1:
        raise UserInputError(f"chunk_rows={chunk_rows}: must be >= 1 (or None for the default)")
    timings = {}
    t = time.perf_counter()
    ck = open_checkpoint(spec)
    emb_entry = ck.embedding()
    n_total = emb_entry.shape[0] if max_rows is None else min(max_rows, emb_entry.shape[0])
    width = int(emb_entry.shape[1])
    k_grid = sorted(set(int(k) for k in k_grid))
    if not k_grid or k_grid[0] < 2:
        raise UserInputError("--k: give at least one K >= 2")
    if k_rule == "elbow" and len(k_grid) < 3:
        raise UserInputError(
            f"--k-rule elbow needs at least 3 values in --k (got {','.join(map(str, k_grid))}): an elbow "
            "is a bend between two neighbours; e.g. --k 8,16,32,64"
        )
    if n_total < 3:  # K >= 2 clusters need more rows than clusters
        source = f"--max-rows {max_rows} leaves" if max_rows is not None else f"{ck.path} has"
        raise UserInputError(
            f"{source} {n_total} embedding row(s); clustering needs at least 3 (each K in 2..rows-1)"
            + (": raise --max-rows" if max_rows is not None else "")
        )
    if k_grid[-1] >= n_total:
        source = f" --max-rows {max_rows} leaves" if max_rows is not None else ""
        raise UserInputError(
            f"--k {k_grid[-1]} is larger than the {n_total} embedding rows{source} allow: each K must "
            f"lie in 2..{n_total - 1}" + (" (or raise --max-rows)" if max_rows is not None else "")
        )
    if pca_dims is not None and not (0 < pca_dims <= width):
        raise UserInputError(f"--pca {pca_dims}: must lie in 1..{width} (the embedding width), or 0 for none")
    tok, tdir, tokenizer_note = None, None, None
    if decode_tokens:
        tdir = tokenizer_dir_for(spec, ck)
        if tdir is None:
            tokenizer_note = f"no tokenizer: tokens not decoded ({ck.path} has no tokenizer.json)"
        else:
            tok = Tokenizer(tdir)
    else:
        tokenizer_note = "no tokenizer: tokens not decoded (decoding switched off: --no-tokenizer)"
    if tokenizer_note:
        tokenizer_note += (
            "; rows that belong to no token cannot be told without the tokenizer's size (a config's "
            "vocab_size is the padded row count), so every row is counted as a token row"
        )
    head_entry = None if ck.tied else ck.find("lm_head")
    step = chunk_rows or max(1, CHUNK_BYTES // (8 * width))
    timings["open"] = time.perf_counter() - t

    t = time.perf_counter()
    if tok is not None:
        texts, special = _decode_all(tok, n_total)
        no_token = np.array([x is None for x in texts])
    else:
        texts, special = [None] * n_total, [False] * n_total
        no_token = np.zeros(n_total, dtype=bool)
    token_rows = ~no_token
    token_ids = np.flatnonzero(token_rows)
    if token_ids.size < 3:
        raise UserInputError(
            f"only {token_ids.size} of the {n_total} embedding rows belong to a token of {tdir}: the "
            "tokenizer does not match this checkpoint (or run with --no-tokenizer)"
        )
    timings["decode"] = time.perf_counter() - t

    with threadpool_limits(limits=threads):
        # pass 1: norms, row digests, moments of the token rows, pair sample, LM-head cosines
        t = time.perf_counter()
        rng = np.random.default_rng(seed)
        sample_ids = token_ids[
            rng.choice(token_ids.size, size=min(PAIR_SAMPLE, token_ids.size), replace=False)
        ]
        sample_sum, sample_sq = np.zeros(width), 0.0  # Σ u and Σ |u|² over the pair sample
        norms = np.empty(n_total)
        digests = []
        x_moments = _Moments(width, scatter=True)
        unit_sum = np.zeros(width)
        head_cos = np.empty(n_total) if head_entry is not None else None
        for start, stop, block in _chunks(ck, emb_entry, n_total, step, "embedding pass 1/3", progress):
            digests.extend(hashlib.blake2b(row, digest_size=16).digest() for row in block)
            b64 = block.astype(np.float64)
            nrm = np.linalg.norm(b64, axis=1)
            norms[start:stop] = nrm
            local = token_rows[start:stop]
            x = b64[local]
            x_moments.add(x)
            unit_sum += _unit(x, nrm[local]).sum(axis=0)
            in_chunk = (sample_ids >= start) & (sample_ids < stop)
            if in_chunk.any():
                rel = sample_ids[in_chunk] - start
                u = _unit(b64[rel], nrm[rel])
                sample_sum += u.sum(axis=0)
                sample_sq += float((u * u).sum())
            if head_entry is not None:
                head = ck.read_rows(head_entry, start, stop).astype(np.float64)
                head_cos[start:stop] = (b64 * head).sum(1) / np.maximum(
                    nrm * np.linalg.norm(head, axis=1), 1e-30
                )
        # exact duplicates: identical bytes (np.unique gives each group's first id)
        view = np.frombuffer(b"".join(digests), dtype=np.dtype((np.void, 16)))
        del digests
        _, first, inverse, counts = np.unique(
            view, return_index=True, return_inverse=True, return_counts=True
        )
        inverse = inverse.reshape(-1)
        dup_size = counts[inverse]
        dup_group = np.where(dup_size > 1, first[inverse], -1)
        tn = norms[token_rows]
        med = float(np.median(tn))
        mad = float(np.median(np.abs(tn - med))) * 1.4826
        low_thr = med - low_norm_z * mad
        low = token_rows & (norms < low_thr)
        mu = x_moments.mean()
        mu_dir = mu / max(np.linalg.norm(mu), 1e-30)
        # mean cosine over the sample's pairs i < j: Σ_{i<j} u_i·u_j = (|Σ u|² - Σ |u|²) / 2, no pair matrix
        m = sample_ids.size
        pair_mean = float((sample_sum @ sample_sum - sample_sq) / (m * (m - 1))) if m > 1 else float("nan")
        cov = x_moments.centred_scatter() / max(1, x_moments.n - 1)
        del x_moments
        ev = np.clip(np.linalg.eigvalsh(cov)[::-1], 0, None)
        del cov
        explained = ev / ev.sum()
        cum = np.cumsum(explained)
        timings["pass_statistics"] = time.perf_counter() - t

        # clustering data: token rows, duplicates collapsed, unit rows, mean removed, PCA
        keep = token_rows & ((dup_group == -1) | (dup_group == np.arange(n_total)))
        ids = np.flatnonzero(keep)
        if k_grid[-1] >= ids.size:
            fix = (
                f"each K must lie in 2..{ids.size - 1}"
                if ids.size >= 3
                else "too few to cluster: use more rows (--max-rows) or a checkpoint with a tokenizer covering them"
            )
            raise UserInputError(
                f"--k {k_grid[-1]} is too large: only {ids.size} embedding rows are distinct tokens; {fix}"
            )
        project = bool(pca_dims and pca_dims < width)
        # pass 2: mean (and scatter, for the PCA) of the kept unit rows
        t = time.perf_counter()
        u_moments = _Moments(width, scatter=project)
        for start, stop, block in _chunks(ck, emb_entry, n_total, step, "embedding pass 2/3", progress):
            local = keep[start:stop]
            if local.any():
                u_moments.add(_unit(block[local].astype(np.float64)))
        u_mean = u_moments.mean()
        axes = None
        if project:
            _, vecs = np.linalg.eigh(u_moments.centred_scatter())
            axes = np.ascontiguousarray(vecs[:, ::-1][:, :pca_dims])
            del vecs
            # an eigenvector's sign is arbitrary: fix it (largest component positive) so the
            # projection does not flip with the BLAS build or the chunking
            signs = np.sign(axes[np.argmax(np.abs(axes), axis=0), np.arange(axes.shape[1])])
            axes *= np.where(signs == 0, 1.0, signs)
        del u_moments
        timings["pass_scatter"] = time.perf_counter() - t
        # pass 3: the kept rows, centred (and projected): the only rows x dims matrix held
        t = time.perf_counter()
        z = np.empty((ids.size, axes.shape[1] if project else width), dtype=np.float32)
        filled = 0
        for start, stop, block in _chunks(ck, emb_entry, n_total, step, "embedding pass 3/3", progress):
            local = keep[start:stop]
            if not local.any():
                continue
            u = _unit(block[local].astype(np.float64))
            u -= u_mean
            z[filled : filled + u.shape[0]] = u @ axes if project else u
            filled += u.shape[0]
        assert filled == ids.size
        timings["pass_project"] = time.perf_counter() - t
        sweep, models = _sweep(z, k_grid, seed, silhouette_sample)
        timings["clustering"] = float(sweep["seconds"].sum())
    best_sil = sweep.loc[sweep["silhouette"].idxmax()]
    elbow, elbow_gap = elbow_k(sweep["k"], sweep["inertia"]) if len(sweep) >= 3 else (None, None)
    chosen_k = int(best_sil["k"]) if k_rule == "silhouette" else elbow
    chosen = sweep.loc[sweep["k"] == chosen_k].iloc[0]
    model = models[chosen_k]
    labels_kept = model.labels_
    labels = np.full(n_total, -1)
    labels[ids] = labels_kept
    # rows collapsed as duplicates take their group's label
    dup_rows = token_rows & (dup_group >= 0)
    labels[dup_rows] = labels[dup_group[dup_rows]]
    decoded = tok is not None
    if decoded:
        classes = [
            char_class(t, s) if t is not None else "no_token" for t, s in zip(texts, special, strict=True)
        ]
        no_token_col = no_token
    else:  # unknown, not False: the CSV leaves them empty
        classes = [None] * n_total
        no_token_col = pd.array([pd.NA] * n_total, dtype="boolean")
    rows = pd.DataFrame(
        {
            "id": np.arange(n_total),
            "token": texts,
            "char_class": classes,
            "norm": norms,
            "no_token": no_token_col,
            "duplicate_group": dup_group,
            "duplicate_group_size": np.where(dup_group >= 0, dup_size, 1),
            "low_norm": low,
            "cluster": labels,
        }
    )
    if head_cos is not None:
        rows["head_cosine"] = head_cos
    clusters = _describe_clusters(z, ids, labels_kept, model.cluster_centers_, rows, nearest, decoded)
    groups = rows[rows["duplicate_group"] >= 0].groupby("duplicate_group")["id"].apply(list)
    summary = {
        "model_path": str(ck.path),
        "format": ck.format,
        "embedding": emb_entry.name,
        "embedding_dtype": emb_entry.dtype,
        "shape": list(emb_entry.shape),
        "rows_analysed": int(n_total),
        "tokens_decoded": decoded,
        "tokenizer_note": tokenizer_note,
        "tokenizer_size": tok.vocab_size if decoded else None,
        "tokenizer_dir": str(tdir) if decoded else None,
        "tied": ck.tied,
        "no_token_rows": int(no_token.sum()) if decoded else None,
        "duplicate_rule": DUPLICATE_RULE,
        "duplicate_groups": int(len(groups)),
        "duplicate_rows": int(sum(len(g) for g in groups)),
        "largest_duplicate_groups": [
            {"size": len(g), "ids": [int(i) for i in g[:8]], "tokens": [texts[i] for i in g[:8]]}
            for g in sorted(groups, key=len, reverse=True)[:5]
        ],
        "norm_median": med,
        "norm_mad_scaled": mad,
        "norm_min": float(tn.min()),
        "norm_max": float(tn.max()),
        "low_norm_rule": LOW_NORM_RULE,
        "low_norm_z": low_norm_z,
        "low_norm_threshold": low_thr,
        "low_norm_rows": int(low.sum()),
        "mean_vector_norm": float(np.linalg.norm(mu)),
        "mean_vector_norm_over_mean_row_norm": float(np.linalg.norm(mu) / tn.mean()),
        "mean_cosine_to_mean": float(unit_sum @ mu_dir / token_ids.size),
        "mean_pairwise_cosine_sample": pair_mean,
        "pca_dims_for_50pct": int(np.searchsorted(cum, 0.5) + 1),
        "pca_dims_for_90pct": int(np.searchsorted(cum, 0.9) + 1),
        "pca_dims_for_95pct": int(np.searchsorted(cum, 0.95) + 1),
        "clustering_rows": int(len(ids)),
        "clustering_space": f"L2-normalised, mean-removed rows, PCA to {pca_dims} dims"
        if project
        else "L2-normalised, mean-removed rows",
        "k_grid": k_grid,
        "k_rule": k_rule,
        "k_rule_description": K_RULE_DESCRIPTIONS[k_rule],
        "chosen_k": chosen_k,
        "chosen_silhouette": float(chosen["silhouette"]),
        "silhouette_best_k": int(best_sil["k"]),
        "elbow_k": elbow,
        "elbow_gap": elbow_gap,
        "clear_structure": bool(chosen["silhouette"] >= NO_STRUCTURE_SILHOUETTE),
        "seed": seed,
        "silhouette_sample": int(min(silhouette_sample, len(ids))),
        "chunk_rows": int(step),
    }
    if head_cos is not None:
        summary["head_cosine_mean"] = float(head_cos[token_rows].mean())
        summary["head_cosine_quantiles"] = {
            q: float(np.quantile(head_cos[token_rows], q)) for q in (0.05, 0.5, 0.95)
        }
    return EmbeddingReport(summary, rows, explained, sweep, clusters, head_cos, timings)


def _sweep(z, k_grid, seed, silhouette_sample):
    import pandas as pd
    from sklearn.cluster import MiniBatchKMeans
    from sklearn.metrics import calinski_harabasz_score, davies_bouldin_score, silhouette_score

    records, models = [], {}
    for k in k_grid:
        t = time.perf_counter()
        km = MiniBatchKMeans(n_clusters=k, random_state=seed, batch_size=4096, n_init=3, max_iter=100)
        km.fit(z)
        labels = km.labels_
        sil = silhouette_score(z, labels, sample_size=min(silhouette_sample, z.shape[0]), random_state=seed)
        records.append(
            {
                "k": k,
                "inertia": float(km.inertia_),
                "silhouette": float(sil),
                "calinski_harabasz": float(calinski_harabasz_score(z, labels)),
                "davies_bouldin": float(davies_bouldin_score(z, labels)),
                "seconds": time.perf_counter() - t,
            }
        )
        models[k] = km
    return pd.DataFrame(records), models


def _describe_clusters(z, ids, labels, centers, rows, nearest, decoded=True):
    """One row per cluster; without decoded tokens the token columns are empty (NaN shares)."""
    import pandas as pd

    out = []
    for c in range(centers.shape[0]):
        members = np.flatnonzero(labels == c)
        d = np.linalg.norm(z[members] - centers[c], axis=1)
        near = ids[members[np.argsort(d)[:nearest]]]
        member_ids = rows["cluster"].to_numpy() == c
        shares = rows.loc[member_ids, "char_class"].value_counts(normalize=True)
        rec = {
            "cluster": c,
            "size": int(member_ids.sum()),
            "nearest_tokens": " | ".join(repr(rows.at[int(i), "token"]) for i in near) if decoded else "",
            "nearest_ids": " ".join(str(int(i)) for i in near),
            "mean_norm": float(rows.loc[member_ids, "norm"].mean()),
            "main_class": shares.index[0] if len(shares) else None,
            # byte-level BPE marks a word start by a leading space: word-initial vs word-internal pieces
            "share_word_initial": float(
                rows.loc[member_ids, "token"].map(lambda t: isinstance(t, str) and t[:1].isspace()).mean()
            )
            if decoded
            else float("nan"),
        }
        for cls in CHAR_CLASSES:
            rec[f"share_{cls}"] = float(shares.get(cls, 0.0)) if decoded else float("nan")
        out.append(rec)
    return pd.DataFrame(out).sort_values("size", ascending=False).reset_index(drop=True)


def write_report(report: EmbeddingReport, out_dir: str | os.PathLike, formats=("png", "svg")) -> list[Path]:
    """Tables as CSV/JSON and figures as PNG/SVG into ``out_dir``; returns the written files."""
    from ..runrecord import atomic_write_json, atomic_write_text
    from . import plots

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [atomic_write_json(out_dir / "summary.json", report.summary)]
    for name, df in (("tokens", report.rows), ("k_sweep", report.k_sweep), ("clusters", report.clusters)):
        written.append(atomic_write_text(out_dir / f"{name}.csv", df.to_csv(index=False)))
    pca = "component,explained_variance_ratio,cumulative\n" + "".join(
        f"{i + 1},{v:.9g},{c:.9g}\n"
        for i, (v, c) in enumerate(zip(report.pca_explained, np.cumsum(report.pca_explained), strict=True))
    )
    written.append(atomic_write_text(out_dir / "pca.csv", pca))
    import matplotlib.pyplot as plt

    from ..plotting import save

    figures = [("norms", plots.embedding_norms), ("pca", plots.pca_curve), ("k_sweep", plots.k_sweep)]
    if report.summary.get("tokens_decoded", True):  # character classes need decoded tokens
        figures.append(("cluster_classes", plots.cluster_classes))
    for name, make in figures:
        fig = make(report)
        written += save(fig, out_dir / name, formats)
        plt.close(fig)
    return written
