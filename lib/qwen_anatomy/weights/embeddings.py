"""The embedding and output layer: norms, dead rows, anisotropy, PCA and clusters (chapter 12).

The seed tool standardised raw embedding rows and picked K by Calinski-Harabasz: silhouette came out
about -0.02 and its "representative tokens" were never-trained CJK/Hangul rows. Here:

- rows that belong to no token (ids at or above the tokenizer's size) are reported and excluded;
  exact duplicate rows are collapsed to one before clustering;
- rows are L2-normalised and mean-removed (direction, not norm, carries meaning; the common mean
  direction is the anisotropy, reported separately), optionally projected on the top PCA axes;
- MiniBatchKMeans runs over a grid of K with a fixed seed; per K: inertia (the elbow curve),
  silhouette on one fixed sample (10k rows), Calinski-Harabasz and Davies-Bouldin. K is picked by the
  highest silhouette (stated in the report, with the other scores beside it);
- each cluster is described by its size, the tokens nearest its centroid decoded by the real
  tokenizer, and its make-up by character class.
"""

from __future__ import annotations

import os
import time
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import UserInputError
from .checkpoint import open_checkpoint, tokenizer_dir_for

CHAR_CLASSES = ("special", "byte_fragment", "whitespace", "digits", "punctuation", "cjk", "cyrillic",
                "latin", "other")  # fmt: skip
K_RULE = "the K with the highest silhouette (fixed sample); elbow, Calinski-Harabasz and Davies-Bouldin shown beside it"
LOW_NORM_RULE = "norm < median - z * 1.4826 * MAD of the token rows' norms"
NO_STRUCTURE_SILHOUETTE = 0.05


def char_class(text: str, special: bool = False) -> str:
    """One of :data:`CHAR_CLASSES` for a decoded token (byte-level BPE fragments decode to U+FFFD)."""
    if special:
        return "special"
    if text == "" or "\ufffd" in text:
        return "byte_fragment"
    if text.strip() == "":
        return "whitespace"
    core = text.strip()
    if core.isdigit():
        return "digits"
    if all(unicodedata.category(c)[0] in "PS" for c in core):
        return "punctuation"
    for c in core:
        o = ord(c)
        if 0x3040 <= o <= 0x30FF or 0x3400 <= o <= 0x9FFF or 0xAC00 <= o <= 0xD7AF or 0xF900 <= o <= 0xFAFF:
            return "cjk"
    if any(0x0400 <= ord(c) <= 0x04FF for c in core):
        return "cyrillic"
    if any(c.isalpha() and "LATIN" in unicodedata.name(c, "") for c in core):
        return "latin"
    return "other"


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
) -> EmbeddingReport:
    """The embedding / output-layer report of a checkpoint (chapter 12). ``max_rows`` caps the rows
    used (the first ids) for quick runs; everything else uses the full matrix."""
    import pandas as pd
    import scipy.linalg  # noqa: F401  (threadpoolctl limits only BLAS libraries already loaded)
    import sklearn.cluster  # noqa: F401
    from threadpoolctl import threadpool_limits

    from ..tokenizer import Tokenizer

    timings = {}
    t = time.perf_counter()
    ck = open_checkpoint(spec)
    emb_entry = ck.find("embedding")
    if emb_entry is None or len(emb_entry.shape) != 2:
        raise UserInputError(f"{ck.path} has no 2-D embedding tensor (looked for model.embed_tokens.weight)")
    n_total = emb_entry.shape[0] if max_rows is None else min(max_rows, emb_entry.shape[0])
    k_grid = sorted(set(int(k) for k in k_grid))
    if not k_grid or k_grid[0] < 2:
        raise UserInputError("--k: give at least one K >= 2")
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
    if pca_dims is not None and not (0 < pca_dims <= emb_entry.shape[1]):
        raise UserInputError(
            f"--pca {pca_dims}: must lie in 1..{emb_entry.shape[1]} (the embedding width), or 0 for none"
        )
    tdir = tokenizer_dir_for(spec, ck)
    if tdir is None:
        raise UserInputError(f"{ck.path} has no tokenizer.json: the report decodes tokens, so it needs one")
    tok = Tokenizer(tdir)
    emb = ck.read_rows(emb_entry, 0, n_total).astype(np.float32)
    head_entry = None if ck.tied else ck.find("lm_head")
    timings["load"] = time.perf_counter() - t

    with threadpool_limits(limits=threads):
        t = time.perf_counter()
        texts, special = _decode_all(tok, n_total)
        no_token = np.array([x is None for x in texts])
        norms = np.linalg.norm(emb.astype(np.float64), axis=1)
        token_rows = ~no_token
        tn = norms[token_rows]
        med = float(np.median(tn))
        mad = float(np.median(np.abs(tn - med))) * 1.4826
        low_thr = med - low_norm_z * mad
        low = token_rows & (norms < low_thr)
        # exact duplicates: identical bytes
        view = np.ascontiguousarray(emb).view(np.dtype((np.void, emb.dtype.itemsize * emb.shape[1]))).ravel()
        _, first, inverse, counts = np.unique(
            view, return_index=True, return_inverse=True, return_counts=True
        )
        dup_size = counts[inverse]
        dup_group = np.where(dup_size > 1, first[inverse], -1)
        # anisotropy on token rows
        x = emb[token_rows].astype(np.float64)
        mu = x.mean(axis=0)
        unit = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-30)
        mu_dir = mu / max(np.linalg.norm(mu), 1e-30)
        rng = np.random.default_rng(seed)
        sample = rng.choice(unit.shape[0], size=min(2000, unit.shape[0]), replace=False)
        pair = unit[sample] @ unit[sample].T
        iu = np.triu_indices(len(sample), k=1)
        centred = x - mu
        cov = centred.T @ centred / max(1, centred.shape[0] - 1)
        ev = np.clip(np.linalg.eigvalsh(cov)[::-1], 0, None)
        explained = ev / ev.sum()
        cum = np.cumsum(explained)
        timings["report"] = time.perf_counter() - t

        head_cos = None
        if head_entry is not None:
            head = ck.read_rows(head_entry, 0, n_total).astype(np.float64)
            e64 = emb.astype(np.float64)
            head_cos = (e64 * head).sum(1) / np.maximum(
                np.linalg.norm(e64, axis=1) * np.linalg.norm(head, axis=1), 1e-30
            )

        # clustering data: token rows, duplicates collapsed, unit rows, mean removed, PCA
        t = time.perf_counter()
        keep = token_rows & ((dup_group == -1) | (dup_group == np.arange(n_total)))
        ids = np.flatnonzero(keep)
        z = emb[ids].astype(np.float64)
        z /= np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-30)
        z -= z.mean(axis=0)
        if pca_dims and pca_dims < z.shape[1]:
            w, v = np.linalg.eigh(z.T @ z)
            z = z @ v[:, ::-1][:, :pca_dims]
        z = np.ascontiguousarray(z, dtype=np.float32)
        if k_grid[-1] >= z.shape[0]:
            fix = (
                f"each K must lie in 2..{z.shape[0] - 1}"
                if z.shape[0] >= 3
                else "too few to cluster: use more rows (--max-rows) or a checkpoint with a tokenizer covering them"
            )
            raise UserInputError(
                f"--k {k_grid[-1]} is too large: only {z.shape[0]} embedding rows are distinct tokens; {fix}"
            )
        timings["prepare"] = time.perf_counter() - t
        sweep, models = _sweep(z, k_grid, seed, silhouette_sample)
        timings["clustering"] = float(sweep["seconds"].sum())
    best = sweep.loc[sweep["silhouette"].idxmax()]
    chosen_k = int(best["k"])
    model = models[chosen_k]
    labels_kept = model.labels_
    labels = np.full(n_total, -1)
    labels[ids] = labels_kept
    # rows collapsed as duplicates take their group's label
    dup_rows = token_rows & (dup_group >= 0)
    labels[dup_rows] = labels[dup_group[dup_rows]]
    classes = [char_class(t, s) if t is not None else "no_token" for t, s in zip(texts, special, strict=True)]
    rows = pd.DataFrame(
        {
            "id": np.arange(n_total),
            "token": texts,
            "char_class": classes,
            "norm": norms,
            "no_token": no_token,
            "duplicate_group": dup_group,
            "duplicate_group_size": np.where(dup_group >= 0, dup_size, 1),
            "low_norm": low,
            "cluster": labels,
        }
    )
    if head_cos is not None:
        rows["head_cosine"] = head_cos
    clusters = _describe_clusters(z, ids, labels_kept, model.cluster_centers_, rows, nearest)
    groups = rows[rows["duplicate_group"] >= 0].groupby("duplicate_group")["id"].apply(list)
    summary = {
        "model_path": str(ck.path),
        "format": ck.format,
        "embedding": emb_entry.name,
        "embedding_dtype": emb_entry.dtype,
        "shape": list(emb_entry.shape),
        "rows_analysed": int(n_total),
        "tokenizer_size": tok.vocab_size,
        "tokenizer_dir": str(tdir),
        "tied": ck.tied,
        "no_token_rows": int(no_token.sum()),
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
        "mean_cosine_to_mean": float((unit @ mu_dir).mean()),
        "mean_pairwise_cosine_sample": float(pair[iu].mean()),
        "pca_dims_for_50pct": int(np.searchsorted(cum, 0.5) + 1),
        "pca_dims_for_90pct": int(np.searchsorted(cum, 0.9) + 1),
        "pca_dims_for_95pct": int(np.searchsorted(cum, 0.95) + 1),
        "clustering_rows": int(len(ids)),
        "clustering_space": f"L2-normalised, mean-removed rows, PCA to {pca_dims} dims"
        if pca_dims
        else "L2-normalised, mean-removed rows",
        "k_grid": k_grid,
        "k_rule": K_RULE,
        "chosen_k": chosen_k,
        "chosen_silhouette": float(best["silhouette"]),
        "clear_structure": bool(best["silhouette"] >= NO_STRUCTURE_SILHOUETTE),
        "seed": seed,
        "silhouette_sample": int(min(silhouette_sample, len(ids))),
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


def _describe_clusters(z, ids, labels, centers, rows, nearest):
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
            "nearest_tokens": " | ".join(repr(rows.at[int(i), "token"]) for i in near),
            "nearest_ids": " ".join(str(int(i)) for i in near),
            "mean_norm": float(rows.loc[member_ids, "norm"].mean()),
            "main_class": shares.index[0] if len(shares) else None,
            # byte-level BPE marks a word start by a leading space: word-initial vs word-internal pieces
            "share_word_initial": float(
                rows.loc[member_ids, "token"].map(lambda t: isinstance(t, str) and t[:1].isspace()).mean()
            ),
        }
        for cls in CHAR_CLASSES:
            rec[f"share_{cls}"] = float(shares.get(cls, 0.0))
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

    for name, fig in (
        ("norms", plots.embedding_norms(report)),
        ("pca", plots.pca_curve(report)),
        ("k_sweep", plots.k_sweep(report)),
        ("cluster_classes", plots.cluster_classes(report)),
    ):
        from ..plotting import save

        written += save(fig, out_dir / name, formats)
        plt.close(fig)
    return written
