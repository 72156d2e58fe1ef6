"""The streamed embedding report (chapter 12) against a plain in-memory numpy computation, the K rules,
the report without a tokenizer, and bounded memory."""

from __future__ import annotations

import json
import tracemalloc

import numpy as np
import pytest

from clicheck import one_line_error
from qwen_anatomy.cli import main
from qwen_anatomy.config import tiny_config
from qwen_anatomy.weights import safetensors_io as sio
from qwen_anatomy.weights.embeddings import CHUNK_BYTES, _sweep, elbow_k, embedding_report
from test_weights_cli import _word_tokenizer
from tolerance import assert_close_scaled

VOCAB, WIDTH, N_TOKENS = 300, 16, 280  # rows 280..299 belong to no token
# float64 quantities accumulated chunk by chunk (and around a shift) instead of in one sum: the same
# formula summed in another order, so they agree to rounding of float64 (1e-16), far inside 1e-10.
FP64_ORDER = 1e-10


def _matrix(seed: int = 0) -> np.ndarray:
    """Rows with structure the report must find: a common mean direction (anisotropy), four clumps,
    exact duplicates (3 = 77 = 150 = 290, 200 = 201), a zero row and a few small rows."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((4, WIDTH))
    x = centres[rng.integers(0, 4, VOCAB)] + 0.4 * rng.standard_normal((VOCAB, WIDTH)) + 1.5
    x[[77, 150, 290]] = x[3]
    x[201] = x[200]
    x[42] = 0.0
    x[[10, 11, 12]] *= 0.01
    return (0.02 * x).astype(np.float32)


def _checkpoint(directory, dtype: str, tokenizer: bool = True, head: bool = True):
    """An embedding (+ LM head) only checkpoint: enough for the report, nothing else stored."""
    directory.mkdir(parents=True)
    emb = _matrix(0)
    tensors = {"model.embed_tokens.weight": emb}
    if head:
        tensors["lm_head.weight"] = _matrix(1)
    encode = sio.float32_to_bf16_bits if dtype == "BF16" else (lambda a: a)
    sio.write_safetensors(
        directory / "model.safetensors",
        [(name, dtype, a.shape, (lambda a=a: encode(a))) for name, a in tensors.items()],
    )
    cfg = tiny_config(vocab_size=VOCAB, hidden_size=WIDTH).to_hf_dict()
    cfg["tie_word_embeddings"] = not head
    (directory / "config.json").write_text(json.dumps(cfg))
    if tokenizer:
        _word_tokenizer(directory, VOCAB, N_TOKENS)
    stored = {e.name: sio.read_rows(e, 0, e.shape[0]) for e in sio.checkpoint_tensors(directory)}
    return directory, stored


def _reference(emb, head, token_rows, pca_dims, seed):
    """The report's numbers computed the plain way, the whole matrix in memory (as the report did
    before it streamed): float64 copies of every row."""
    x64 = emb.astype(np.float64)
    norms = np.linalg.norm(x64, axis=1)
    view = np.ascontiguousarray(emb).view(np.dtype((np.void, 4 * emb.shape[1]))).ravel()
    _, first, inverse, counts = np.unique(view, return_index=True, return_inverse=True, return_counts=True)
    dup_group = np.where(counts[inverse] > 1, first[inverse], -1)
    tn = norms[token_rows]
    med = np.median(tn)
    low_thr = med - 3.0 * 1.4826 * np.median(np.abs(tn - med))
    x = x64[token_rows]
    mu = x.mean(axis=0)
    unit = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-30)
    sample = np.random.default_rng(seed).choice(unit.shape[0], size=min(2000, unit.shape[0]), replace=False)
    pair = unit[sample] @ unit[sample].T
    centred = x - mu
    ev = np.clip(np.linalg.eigvalsh(centred.T @ centred / (x.shape[0] - 1))[::-1], 0, None)
    keep = token_rows & ((dup_group == -1) | (dup_group == np.arange(len(emb))))
    z = x64[keep] / np.maximum(np.linalg.norm(x64[keep], axis=1, keepdims=True), 1e-30)
    z -= z.mean(axis=0)
    _, v = np.linalg.eigh(z.T @ z)
    axes = v[:, ::-1][:, :pca_dims]
    # eigenvector signs are arbitrary; the report fixes them (largest component positive): so does this
    axes = axes * np.sign(axes[np.argmax(np.abs(axes), axis=0), np.arange(pca_dims)])
    h64 = head.astype(np.float64)
    head_cos = (x64 * h64).sum(1) / np.maximum(norms * np.linalg.norm(h64, axis=1), 1e-30)
    return {
        "norms": norms,
        "dup_group": dup_group,
        "low": token_rows & (norms < low_thr),
        "low_thr": low_thr,
        "mean_vector_norm": np.linalg.norm(mu),
        "mean_cosine_to_mean": (unit @ (mu / np.linalg.norm(mu))).mean(),
        "pair": pair[np.triu_indices(len(sample), k=1)].mean(),
        "explained": ev / ev.sum(),
        "z": np.ascontiguousarray(z @ axes, dtype=np.float32),
        "keep": keep,
        "head_cos": head_cos,
    }


@pytest.mark.parametrize("dtype,chunk_rows", [("F32", 37), ("BF16", 37), ("BF16", None)])
def test_streamed_report_equals_in_memory_reference(tmp_path, dtype, chunk_rows):
    ck, stored = _checkpoint(tmp_path / "m", dtype)
    k_grid, pca, seed = (3, 4, 6, 8), 6, 5
    rep = embedding_report(
        ck, k_grid=k_grid, pca_dims=pca, seed=seed, silhouette_sample=200, chunk_rows=chunk_rows
    )
    emb, head = stored["model.embed_tokens.weight"], stored["lm_head.weight"]
    token_rows = np.arange(VOCAB) < N_TOKENS
    ref = _reference(emb, head, token_rows, pca, seed)
    rows, s = rep.rows, rep.summary
    assert s["chunk_rows"] == (chunk_rows or CHUNK_BYTES // (8 * WIDTH))
    np.testing.assert_array_equal(rows["norm"].to_numpy(), ref["norms"])  # row by row: bit for bit
    np.testing.assert_array_equal(rows["duplicate_group"].to_numpy(), ref["dup_group"])
    assert s["duplicate_groups"] == 2 and s["duplicate_rows"] == 6
    np.testing.assert_array_equal(rows["low_norm"].to_numpy(), ref["low"])
    assert rows.loc[[10, 11, 12, 42], "low_norm"].all()
    assert s["low_norm_threshold"] == pytest.approx(ref["low_thr"], rel=FP64_ORDER)
    for key in ("mean_vector_norm", "mean_cosine_to_mean"):
        assert s[key] == pytest.approx(ref[key], rel=FP64_ORDER), key
    assert s["mean_cosine_to_mean"] > 0.5  # the planted common direction is found
    assert s["mean_pairwise_cosine_sample"] == pytest.approx(ref["pair"], rel=FP64_ORDER)
    np.testing.assert_allclose(rep.pca_explained, ref["explained"], rtol=0, atol=FP64_ORDER)
    np.testing.assert_allclose(rep.head_cosine, ref["head_cos"], rtol=0, atol=FP64_ORDER)
    assert s["clustering_rows"] == int(ref["keep"].sum()) == N_TOKENS - 3  # copies 77, 150 (of 3), 201
    # clustering: the same sweep on the reference matrix gives the same scores and labels; the two
    # matrices differ only by float32 rounding of float64 values summed in another order, so the scores
    # agree within tolerance.FP32_REORDER (the default of assert_close_scaled)
    sweep, models = _sweep(ref["z"], list(k_grid), seed, 200)
    for col in ("inertia", "silhouette", "calinski_harabasz", "davies_bouldin"):
        assert_close_scaled(rep.k_sweep[col].to_numpy(copy=True), sweep[col].to_numpy(copy=True), msg=col)
    labels = np.full(VOCAB, -1)
    labels[np.flatnonzero(ref["keep"])] = models[s["chosen_k"]].labels_
    dup = token_rows & (ref["dup_group"] >= 0)
    labels[dup] = labels[ref["dup_group"][dup]]
    np.testing.assert_array_equal(rows["cluster"].to_numpy(), labels)
    assert rows.loc[[3, 77, 150], "cluster"].nunique() == 1 and rows.at[290, "cluster"] == -1


def test_chunking_changes_nothing_but_rounding(tmp_path):
    ck, _ = _checkpoint(tmp_path / "m", "BF16")
    a = embedding_report(ck, k_grid=(3, 5), pca_dims=4, seed=1, silhouette_sample=200, chunk_rows=1)
    b = embedding_report(ck, k_grid=(3, 5), pca_dims=4, seed=1, silhouette_sample=200, chunk_rows=10_000)
    assert a.summary["chunk_rows"] == 1 and b.summary["chunk_rows"] == 10_000
    np.testing.assert_array_equal(a.rows["cluster"].to_numpy(), b.rows["cluster"].to_numpy())
    for key in (
        "mean_vector_norm",
        "mean_cosine_to_mean",
        "mean_pairwise_cosine_sample",
        "low_norm_threshold",
    ):
        assert a.summary[key] == pytest.approx(b.summary[key], rel=FP64_ORDER), key
    assert_close_scaled(a.k_sweep["inertia"].to_numpy(copy=True), b.k_sweep["inertia"].to_numpy(copy=True))


def test_elbow_on_synthetic_curves():
    ks = [2, 4, 8, 16, 32, 64, 128]
    knee = [100.0, 70.0, 40.0, 10.0, 8.0, 6.0, 4.0]  # steep down to K=16, flat after it
    assert elbow_k(ks, knee)[0] == 16
    k, gap = elbow_k(ks[::-1], [1000 * v for v in knee[::-1]])  # order and units do not matter
    assert k == 16 and gap == pytest.approx(elbow_k(ks, knee)[1])
    assert elbow_k([8, 16, 32, 64], [1.0, 0.9, 0.2, 0.1])[0] == 32
    assert elbow_k(ks, [70.0 - 10 * np.log2(k) for k in ks]) == (2, 0.0)  # straight on log2 K: no elbow
    assert elbow_k(ks, [-v for v in knee]) == (2, 0.0)  # bending the wrong way: no elbow
    with pytest.raises(ValueError, match=">= 3"):
        elbow_k([8, 16], [2.0, 1.0])


def test_elbow_rule_is_used_and_recorded(tmp_path):
    ck, _ = _checkpoint(tmp_path / "m", "F32")
    rep = embedding_report(ck, k_grid=(2, 3, 4, 6, 8, 12), pca_dims=6, seed=0, silhouette_sample=200,
                           k_rule="elbow")  # fmt: skip
    s, sw = rep.summary, rep.k_sweep
    assert s["k_rule"] == "elbow" and "kneedle" in s["k_rule_description"]
    assert s["chosen_k"] == s["elbow_k"] == elbow_k(sw["k"], sw["inertia"])[0]
    assert s["chosen_silhouette"] == float(sw.loc[sw["k"] == s["chosen_k"], "silhouette"].iloc[0])
    assert s["silhouette_best_k"] == int(sw.loc[sw["silhouette"].idxmax(), "k"])
    assert rep.clusters.shape[0] == s["chosen_k"]
    sil = embedding_report(ck, k_grid=(2, 3, 4, 6, 8, 12), pca_dims=6, seed=0, silhouette_sample=200)
    assert sil.summary["k_rule"] == "silhouette" and sil.summary["chosen_k"] == s["silhouette_best_k"]
    assert sil.summary["elbow_k"] == s["elbow_k"]


def test_report_without_tokenizer(tmp_path):
    ck, _ = _checkpoint(tmp_path / "m", "BF16", tokenizer=False)
    rep = embedding_report(ck, k_grid=(3, 4), pca_dims=4, seed=0, silhouette_sample=200)
    s, rows = rep.summary, rep.rows
    assert not s["tokens_decoded"] and s["tokenizer_size"] is None and s["no_token_rows"] is None
    assert s["tokenizer_note"].startswith("no tokenizer: tokens not decoded")
    assert "every row is counted as a token row" in s["tokenizer_note"]
    assert rows["token"].isna().all() and rows["no_token"].isna().all() and rows["char_class"].isna().all()
    assert (
        s["clustering_rows"] == VOCAB - 4
    )  # every row clustered (290 too), copies 77, 150, 290, 201 collapsed
    assert (rows["cluster"] >= 0).all()
    assert (rep.clusters["nearest_tokens"] == "").all() and rep.clusters["share_latin"].isna().all()
    assert rep.clusters["nearest_ids"].str.len().gt(0).all()


def test_embeddings_command_without_tokenizer_and_elbow(tmp_path, capsys):
    ck, _ = _checkpoint(tmp_path / "m", "BF16", tokenizer=False, head=False)
    out = tmp_path / "rep"
    argv = ["embeddings", str(ck), "--out", str(out), "--k", "3,5,8", "--pca", "4", "--k-rule", "elbow"]
    assert main([*argv, "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "by elbow" in printed and "no tokenizer: tokens not decoded" in printed
    summary = json.loads((out / "summary.json").read_text())
    record = json.loads((out / "run.json").read_text())
    assert summary["k_rule"] == "elbow" and record["parameters"]["k_rule"] == "elbow"
    assert record["k_rule"]["chosen_k"] == summary["chosen_k"] == summary["elbow_k"]
    assert record["tokens_decoded"] is False
    assert (out / "k_sweep.png").is_file() and not (out / "cluster_classes.png").exists()
    tokens_csv = (out / "tokens.csv").read_text().splitlines()
    assert tokens_csv[0].startswith("id,token,char_class,norm,no_token,")
    assert tokens_csv[1].startswith("0,,,")  # token, class unknown: empty, not invented


def test_skip_representatives_is_no_tokenizer(tmp_path, capsys):
    ck, _ = _checkpoint(tmp_path / "m", "F32")
    out = tmp_path / "rep"
    assert main(["embeddings", str(ck), "--out", str(out), "--k", "3", "--pca", "4",
                 "--skip-representatives", "--no-progress"]) == 0  # fmt: skip
    summary = json.loads((out / "summary.json").read_text())
    assert summary["tokens_decoded"] is False and "--no-tokenizer" in summary["tokenizer_note"]


def test_elbow_with_two_k_is_refused_early(tmp_path, capsys):
    ck, _ = _checkpoint(tmp_path / "m", "F32")
    out = tmp_path / "rep"
    err = one_line_error(
        capsys, ["embeddings", str(ck), "--out", str(out), "--k", "3,5", "--k-rule", "elbow"]
    )
    assert "--k-rule elbow" in err and "3 values" in err
    assert not out.exists()


def test_peak_memory_stays_below_one_copy_of_the_matrix(tmp_path):
    """Streamed: the report's numpy allocations peak well below the float32 matrix itself (the
    in-memory way held it plus several float64 copies, ~9 times its size)."""
    rows, width = 20_000, 512
    directory = tmp_path / "big"
    directory.mkdir()
    rng = np.random.default_rng(0)

    def blocks():
        for _ in range(rows // 2000):
            yield sio.float32_to_bf16_bits(rng.standard_normal((2000, width), dtype=np.float32))

    sio.write_safetensors(directory / "model.safetensors",
                          [("model.embed_tokens.weight", "BF16", (rows, width), lambda: blocks())])  # fmt: skip
    matrix_bytes = rows * width * 4
    embedding_report(
        directory, k_grid=(2, 3), pca_dims=8, silhouette_sample=500, chunk_rows=500
    )  # warm imports
    tracemalloc.start()
    try:
        embedding_report(directory, k_grid=(2, 3), pca_dims=8, silhouette_sample=500, chunk_rows=500)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 0.5 * matrix_bytes, f"peak {peak / 2**20:.1f} MB vs matrix {matrix_bytes / 2**20:.1f} MB"
