"""Part II core maths and I/O on small synthetic inputs: bf16, ranks, spectra, alpha, streaming."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from interrupts import interrupt_tensor_analysis
from qwen_anatomy.config import QWEN2_5_0_5B, tiny_config
from qwen_anatomy.weights import safetensors_io as sio
from qwen_anatomy.weights import stats, synthetic, table
from qwen_anatomy.weights.checkpoint import open_checkpoint
from qwen_anatomy.weights.gguf_io import hf_name, unpermute_rows


@pytest.fixture(autouse=True)
def _one_thread():
    import scipy.linalg  # noqa: F401  (so threadpoolctl sees scipy's BLAS too)

    with threadpool_limits(1):
        yield


# -- bf16 ---------------------------------------------------------------------------------------------
def test_bf16_decoding_is_bit_exact_for_every_pattern():
    torch = pytest.importorskip("torch")
    bits = np.arange(65536, dtype=np.uint16)
    ours = sio.bf16_to_float32(bits).view(np.uint32)
    ref = torch.from_numpy(bits.view(np.int16).copy()).view(torch.bfloat16).float().numpy().view(np.uint32)
    assert np.array_equal(ours, ref)


def test_bf16_encoding_matches_torch_rounding():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    x = np.concatenate(
        [
            rng.standard_normal(20000).astype(np.float32) * 10.0 ** rng.integers(-40, 30, 20000),
            np.array([0.0, -0.0, np.inf, -np.inf, 1e-45, 3.0e38], np.float32),
        ]  # fmt: skip
    ).astype(np.float32)
    ours = sio.float32_to_bf16_bits(x)
    ref = torch.from_numpy(x).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    assert np.array_equal(ours, ref)


def test_bf16_file_read_equals_torch_values(tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(0)
    w = (torch.randn(37, 19, generator=g) * 3).to(torch.bfloat16)
    w[0, 0] = float("nan")
    save_file({"model.layers.0.mlp.up_proj.weight": w}, str(tmp_path / "model.safetensors"))
    (entry,) = sio.checkpoint_tensors(tmp_path)
    got = sio.read_rows(entry, 0, 37)
    assert np.array_equal(got.view(np.uint32), w.float().numpy().view(np.uint32))
    assert np.array_equal(sio.read_rows(entry, 5, 9), got[5:9], equal_nan=True)


# -- statistics ---------------------------------------------------------------------------------------
def test_streamed_moments_match_scipy_in_float64():
    from scipy import stats as sps

    rng = np.random.default_rng(1)
    x = (rng.standard_t(4, size=(503, 41)) + 3.0).astype(np.float32)
    got = stats.distribution(x, chunk_rows=17)
    flat = x.astype(np.float64).ravel()
    assert got["mean"] == pytest.approx(flat.mean(), rel=1e-12)
    assert got["var"] == pytest.approx(flat.var(), rel=1e-10)
    assert got["skewness"] == pytest.approx(sps.skew(flat), rel=1e-9)
    assert got["excess_kurtosis"] == pytest.approx(sps.kurtosis(flat), rel=1e-9)
    assert got["fro_norm"] == pytest.approx(np.linalg.norm(flat), rel=1e-12)
    assert got["beyond_6sigma_frac"] == np.mean(np.abs(flat - flat.mean()) > 6 * flat.std())


def test_nan_and_inf_are_counted_not_fatal():
    x = np.arange(20, dtype=np.float32).reshape(4, 5)
    x[1, 2] = np.nan
    x[3, 4] = np.inf
    got = stats.distribution(x, chunk_rows=3)
    assert (got["nan_count"], got["inf_count"]) == (1, 1)
    finite = x[np.isfinite(x)]
    assert got["mean"] == pytest.approx(finite.mean())


# -- spectra and ranks -----------------------------------------------------------------------------------
def _chunks(w, step=7):
    return lambda: (w[i : i + step] for i in range(0, w.shape[0], step))


@pytest.mark.parametrize("shape", [(300, 40), (40, 300), (64, 64)])
def test_gram_sigma_equal_svd_sigma(shape):
    rng = np.random.default_rng(2)
    w = rng.standard_normal(shape).astype(np.float32)
    ref = np.linalg.svd(w.astype(np.float64), compute_uv=False)
    gram = stats.singular_values_gram(_chunks(w), shape)
    exact = stats.singular_values_exact(_chunks(w), shape)
    np.testing.assert_allclose(gram, ref, rtol=1e-6)
    np.testing.assert_allclose(exact, ref, rtol=1e-10)


@pytest.mark.parametrize("rank", [1, 5, 17])
@pytest.mark.parametrize("method", ["gram", "exact"])
def test_numerical_rank_equals_numpy_matrix_rank(rank, method):
    rng = np.random.default_rng(rank)
    w = (rng.standard_normal((120, rank)) @ rng.standard_normal((rank, 45))).astype(np.float32)
    fn = stats.singular_values_gram if method == "gram" else stats.singular_values_exact
    got = stats.spectral_metrics(fn(_chunks(w), w.shape), w.shape)
    assert got["numerical_rank"] == np.linalg.matrix_rank(w) == rank
    assert got["rank_tol"] > 0


def test_known_spectra_give_exact_ranks():
    # diagonal: sigma are the entries
    d = np.array([4.0, 3.0, 2.0, 1.0])
    got = stats.spectral_metrics(stats.singular_values_exact(_chunks(np.diag(d)), (4, 4)), (4, 4))
    p = d / d.sum()
    assert got["stable_rank"] == pytest.approx((d**2).sum() / 16)
    assert got["effective_rank"] == pytest.approx(np.exp(-(p * np.log(p)).sum()))
    # energy shares 16/30, 25/30, 29/30, 1: 90% needs 3, 95% needs 3 (0.9667), 99% needs 4
    assert (got["energy_rank_90"], got["energy_rank_95"], got["energy_rank_99"]) == (3, 3, 4)
    assert got["condition_number"] == pytest.approx(4.0)
    # rank r with equal singular values: every rank is r
    rng = np.random.default_rng(3)
    q1, _ = np.linalg.qr(rng.standard_normal((50, 6)))
    q2, _ = np.linalg.qr(rng.standard_normal((30, 6)))
    w = q1 @ q2.T * 2.5
    got = stats.spectral_metrics(stats.singular_values_gram(_chunks(w), w.shape), w.shape)
    assert got["numerical_rank"] == 6
    assert got["stable_rank"] == pytest.approx(6, rel=1e-9)
    assert got["effective_rank"] == pytest.approx(6, rel=1e-6)
    assert got["participation_ratio"] == pytest.approx(6, rel=1e-9)
    assert got["energy_rank_90"] == 6  # ceil(0.9 * 6) = 6
    # orthogonal: full rank, condition 1
    q, _ = np.linalg.qr(rng.standard_normal((40, 40)))
    got = stats.spectral_metrics(stats.singular_values_gram(_chunks(q), q.shape), q.shape)
    assert got["numerical_rank"] == got["design_rank"] == 40
    assert got["stable_rank"] == pytest.approx(40, rel=1e-9)
    assert got["effective_rank"] == pytest.approx(40, rel=1e-9)
    assert got["condition_number"] == pytest.approx(1.0, rel=1e-7)
    assert got["energy_rank_90"] == 36


@pytest.mark.parametrize("alpha", [2.0, 2.5, 3.5])
def test_alpha_recovers_planted_power_law(alpha):
    rng = np.random.default_rng(int(alpha * 10))
    xmin = 0.7
    x = xmin * (1.0 - rng.random(4000)) ** (-1.0 / (alpha - 1.0))
    fit = stats.power_law_fit(x)
    assert abs(fit["alpha"] - alpha) <= 0.1, fit
    assert fit["alpha_weighted"] == pytest.approx(fit["alpha"] * np.log10(x.max()))
    assert fit["log_norm"] == pytest.approx(np.log10(x.sum()))


# -- checkpoints ---------------------------------------------------------------------------------------------
def test_sharded_index_is_followed(tmp_path):
    cfg = tiny_config()
    synthetic.write_random_checkpoint(tmp_path / "m", cfg, dtype="BF16", seed=0, shards=3)
    index = json.loads((tmp_path / "m" / "model.safetensors.index.json").read_text())
    entries = sio.checkpoint_tensors(tmp_path / "m")
    assert {e.name: e.shard.split("/")[-1] for e in entries} == index["weight_map"]
    assert len(set(index["weight_map"].values())) == 3
    # an index that lies about where a tensor is
    wrong = dict(index)
    name = next(iter(index["weight_map"]))
    other = next(s for s in set(index["weight_map"].values()) if s != index["weight_map"][name])
    wrong["weight_map"] = {**index["weight_map"], name: other}
    (tmp_path / "m" / "model.safetensors.index.json").write_text(json.dumps(wrong))
    with pytest.raises(sio.WeightsError, match="puts"):
        sio.checkpoint_tensors(tmp_path / "m")


def test_table_matches_direct_maths_and_keeps_layer_zero(tmp_path):
    cfg = tiny_config()
    synthetic.write_random_checkpoint(tmp_path / "m", cfg, dtype="F32", seed=4, shards=2)
    df = table.analyse(tmp_path / "m", out=tmp_path / "t.parquet", spectra="exact")
    back = table.read_table(tmp_path / "t.parquet")
    assert len(back) == len(df) == len(synthetic.layout(cfg))
    assert 0 in set(back["layer"].dropna().astype(int))
    from safetensors.numpy import load_file

    state = {}
    for f in sorted((tmp_path / "m").glob("*.safetensors")):
        state.update(load_file(f))
    row = back.set_index("name").loc["model.layers.0.mlp.down_proj.weight"]
    w = state["model.layers.0.mlp.down_proj.weight"].astype(np.float64)
    s = np.linalg.svd(w, compute_uv=False)
    assert row["layer"] == 0 and row["block_type"] == "mlp_down" and row["dtype"] == "F32"
    assert row["std"] == pytest.approx(w.std(), rel=1e-12)
    assert row["sigma_max"] == pytest.approx(s[0], rel=1e-10)
    assert row["numerical_rank"] == np.linalg.matrix_rank(w.astype(np.float32))
    record = json.loads((tmp_path / "t.parquet.run.json").read_text())
    assert record["status"] == "success" and record["parameters"]["threads"] == 1
    assert {"statistics", "spectra", "header"} <= set(record["stages"])
    assert not (tmp_path / "t.parquet.partial.jsonl").exists()


def test_interrupted_run_resumes(tmp_path, monkeypatch):
    cfg = tiny_config()
    synthetic.write_random_checkpoint(tmp_path / "m", cfg, dtype="BF16", seed=5)
    fresh = table.analyse(tmp_path / "m", spectra="gram")
    real = interrupt_tensor_analysis(monkeypatch, table, at_call=4)
    out = tmp_path / "t.csv"
    with pytest.raises(KeyboardInterrupt):
        table.analyse(tmp_path / "m", out=out, spectra="gram")
    assert not out.exists()
    assert len((tmp_path / "t.csv.partial.jsonl").read_text().splitlines()) == 3
    assert json.loads((tmp_path / "t.csv.run.json").read_text())["status"] == "incomplete"
    monkeypatch.setattr(table, "analyse_tensor", real)
    resumed = table.analyse(tmp_path / "m", out=out, spectra="gram")
    assert json.loads((tmp_path / "t.csv.run.json").read_text())["resumed_rows"] == 3
    back = table.read_table(out)
    np.testing.assert_allclose(back["std"].to_numpy(float), fresh["std"].to_numpy(float), rtol=1e-12)
    np.testing.assert_allclose(
        back["sigma_max"].to_numpy(float), fresh["sigma_max"].to_numpy(float), rtol=1e-12
    )
    assert list(resumed["name"]) == list(fresh["name"])
    with pytest.raises(Exception, match="already exists"):
        table.analyse(tmp_path / "m", out=out)


def test_nan_tensor_gives_a_marked_row(tmp_path):
    w = np.ones((8, 4), np.float32)
    w[2, 1] = np.nan
    sio.write_safetensors(
        tmp_path / "m" / "model.safetensors",
        [
            ("model.layers.0.mlp.up_proj.weight", "F32", (8, 4), lambda: w),
            ("model.layers.0.mlp.down_proj.weight", "F32", (4, 8), lambda: np.eye(4, 8, dtype=np.float32)),
        ],  # fmt: skip
    )
    df = table.analyse(tmp_path / "m").set_index("name")
    bad = df.loc["model.layers.0.mlp.up_proj.weight"]
    assert bad["nan_count"] == 1 and bad["status"].startswith("non-finite")
    assert np.isnan(bad["sigma_max"]) and bad["mean"] == 1.0
    assert df.loc["model.layers.0.mlp.down_proj.weight", "numerical_rank"] == 4


def _sparse_checkpoint(directory, cfg, dtype="BF16"):
    """The exact header of a checkpoint, data left as a sparse hole (no disk, no time)."""
    items = synthetic.layout(cfg)
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, shape in items:
        n = int(np.prod(shape)) * sio.DTYPE_BYTES[dtype]
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    blob = json.dumps(header).encode()
    directory.mkdir(parents=True)
    with open(directory / "model.safetensors", "wb") as fh:
        fh.write(struct.pack("<Q", len(blob)) + blob)
        fh.truncate(8 + len(blob) + offset)
    (directory / "config.json").write_text(json.dumps(cfg.to_hf_dict()))
    return directory


def test_qwen2_5_0_5b_layout_rows(tmp_path):
    ck = open_checkpoint(_sparse_checkpoint(tmp_path / "q", QWEN2_5_0_5B))
    rows = [table.identity_row(ck, e) for e in table.select_entries(ck)]
    df = table.to_frame(rows)
    assert len(df) == 290
    assert int(df["numel"].sum()) == 494_032_768
    per_layer = df["layer"].value_counts().sort_index()
    assert list(per_layer.index) == list(range(24)) and set(per_layer) == {12}
    assert set(df.loc[df["name"].str.endswith(".bias"), "kind"]) == {"bias"}
    assert set(df.loc[df["name"].str.contains("mlp"), "block_type"]) == {"mlp_gate", "mlp_up", "mlp_down"}
    assert "lm_head" not in set(df["block_type"]) and (df["dtype"] == "BF16").all()
    assert df.loc[df["block_type"] == "embedding", "tied_to"].iloc[0].startswith("lm_head")
    d = table.describe(tmp_path / "q")
    assert (d["tensors"], d["parameters"]) == (290, 494_032_768)


def test_gguf_names_and_unpermute():
    assert hf_name("blk.0.attn_q.weight") == "model.layers.0.self_attn.q_proj.weight"
    assert hf_name("blk.11.ffn_down.weight") == "model.layers.11.mlp.down_proj.weight"
    assert hf_name("token_embd.weight") == "model.embed_tokens.weight"
    assert hf_name("rope_freqs.weight") is None
    # llama.cpp's permutation (convert_hf_to_gguf.LlamaModel.permute), then ours undoes it
    n_head, rows = 3, 24
    w = np.arange(rows * 5, dtype=np.float32).reshape(rows, 5)
    permuted = w.reshape(n_head, 2, rows // n_head // 2, 5).swapaxes(1, 2).reshape(rows, 5)
    assert not np.array_equal(permuted, w)
    assert np.array_equal(unpermute_rows(permuted, n_head), w)
