"""Part II commands: bad inputs give one line and exit code 2; embeddings report; download offline."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from clicheck import one_line_error
from qwen_anatomy.cli import main
from qwen_anatomy.config import tiny_config
from qwen_anatomy.weights import safetensors_io as sio
from qwen_anatomy.weights import synthetic

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def tiny(tmp_path):
    return synthetic.write_random_checkpoint(tmp_path / "tiny", tiny_config(), dtype="BF16", seed=0)


def test_missing_path(capsys, tmp_path):
    one_line_error(
        capsys, ["params", str(tmp_path / "nope"), "--out", str(tmp_path / "t.csv")], "does not exist"
    )


def test_directory_without_weights(capsys, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text("{}")
    one_line_error(capsys, ["params", str(tmp_path / "empty"), "--describe"], "holds no *.safetensors")


def test_truncated_safetensors(capsys, tiny, tmp_path):
    f = tiny / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) - 100])
    one_line_error(capsys, ["params", str(tiny), "--out", str(tmp_path / "t.csv")], "is truncated")
    f.write_bytes(data[:5])
    one_line_error(capsys, ["params", str(tiny), "--describe"], "is truncated")


def test_header_offsets_exceed_file(capsys, tiny, tmp_path):
    f = tiny / "model.safetensors"
    header, start = sio.read_header(f)
    name = next(k for k in header if k != "__metadata__")
    b, e = header[name]["data_offsets"]
    header[name]["data_offsets"] = [b + 10**9, e + 10**9]
    blob = json.dumps(header).encode()
    f.write_bytes(struct.pack("<Q", len(blob)) + blob + f.read_bytes()[start:])
    one_line_error(capsys, ["params", str(tiny), "--out", str(tmp_path / "t.csv")], "exceed the file")


def test_header_that_lies_about_sizes(capsys, tiny, tmp_path):
    f = tiny / "model.safetensors"
    header, start = sio.read_header(f)
    name = next(k for k in header if k != "__metadata__" and len(header[k]["shape"]) == 2)
    header[name]["shape"] = [header[name]["shape"][0] + 1, header[name]["shape"][1]]
    blob = json.dumps(header).encode()
    f.write_bytes(struct.pack("<Q", len(blob)) + blob + f.read_bytes()[start:])
    one_line_error(capsys, ["params", str(tiny), "--describe"], "header lies")


def test_unknown_architecture_is_analysed_generically(capsys, tmp_path):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((6, 4)).astype(np.float32)
    sio.write_safetensors(
        tmp_path / "m" / "model.safetensors",
        [
            ("transformer.h.0.attn.c_attn.weight", "F32", (6, 4), lambda: w),
            ("transformer.h.0.ln_1.weight", "F32", (4,), lambda: np.ones(4, np.float32)),
        ],  # fmt: skip
    )
    (tmp_path / "m" / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"]}))
    assert main(["params", str(tmp_path / "m"), "--out", str(tmp_path / "t.jsonl"), "--no-progress"]) == 0
    rows = [json.loads(x) for x in (tmp_path / "t.jsonl").read_text().splitlines()]
    by = {r["name"]: r for r in rows}
    attn = by["transformer.h.0.attn.c_attn.weight"]
    assert attn["block_type"] == "other" and attn["layer"] == 0
    assert "not recognised" in attn["note"]
    assert attn["sigma_max"] == pytest.approx(
        np.linalg.svd(w.astype(np.float64), compute_uv=False)[0], rel=1e-9
    )
    assert by["transformer.h.0.ln_1.weight"]["kind"] == "norm"


def test_bad_out_extension_and_existing_out(capsys, tiny, tmp_path):
    one_line_error(capsys, ["params", str(tiny), "--out", str(tmp_path / "t.xlsx")], "unknown table format")
    (tmp_path / "t.csv").write_text("x")
    one_line_error(capsys, ["params", str(tiny), "--out", str(tmp_path / "t.csv")], "already exists")


def test_bad_k_values(capsys, tiny, tmp_path):
    one_line_error(
        capsys, ["embeddings", str(tiny), "--out", str(tmp_path / "e1"), "--k", "8,x"], "not an integer"
    )
    one_line_error(
        capsys, ["embeddings", str(tiny), "--out", str(tmp_path / "e2"), "--k", "8,500"], "larger than"
    )
    one_line_error(capsys, ["embeddings", str(tiny), "--out", str(tmp_path / "e3"), "--k", "1"], ">= 2")


def test_download_offline_fails_fast(capsys, tmp_path, monkeypatch):
    import huggingface_hub

    def never(*a, **k):
        raise AssertionError("the hub must not be contacted when HF_HUB_OFFLINE=1")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", never)
    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", never)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    err = one_line_error(capsys, ["download", "Qwen/Qwen2.5-0.5B", "--out", str(tmp_path / "d")], "offline")
    assert "local checkpoint directory" in err
    assert not (tmp_path / "d").exists()


def test_download_without_network_is_one_line(capsys, tmp_path, monkeypatch):
    import huggingface_hub

    def no_network(*a, **k):
        raise ConnectionError("Failed to resolve 'huggingface.co'")

    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", no_network)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    err = one_line_error(
        capsys, ["download", "Qwen/Qwen2.5-0.5B", "--out", str(tmp_path / "d")], "cannot reach"
    )
    assert "local checkpoint directory" in err
    one_line_error(capsys, ["download", "not-a-hub-id", "--out", str(tmp_path / "d")], "not a hub id")


def test_describe_subprocess_is_fast_and_imports_no_torch(tiny):
    code = (
        "import sys, time; t = time.perf_counter(); from qwen_anatomy.cli import main; "
        f"rc = main(['params', {str(tiny)!r}, '--describe']); "
        "print('TORCH' if 'torch' in sys.modules else 'NOTORCH', 'NUMPY' if 'numpy' in sys.modules else 'NONUMPY')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "parameters 25,184" in out.stdout
    assert "NOTORCH" in out.stdout


def _word_tokenizer(directory: Path, vocab: int, n_tokens: int):
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = ["the", "a", "и", "на", "中", "文", "1", "23", ",", "!", " ", "\n"]
    toks = {f"{words[i % len(words)]}{'' if i < len(words) else i}": i for i in range(n_tokens)}
    tok = Tokenizer(models.WordLevel(toks, unk_token=next(iter(toks))))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(directory / "tokenizer.json"))


def test_embeddings_report_is_deterministic_and_complete(tmp_path):
    from qwen_anatomy.weights.embeddings import char_class, embedding_report

    cfg = tiny_config(vocab_size=300, hidden_size=16)
    ck = synthetic.write_random_checkpoint(tmp_path / "m", cfg, dtype="F32", seed=1)
    _word_tokenizer(ck, cfg.vocab_size, n_tokens=280)  # 20 rows belong to no token
    a = embedding_report(ck, k_grid=(4, 8), pca_dims=8, seed=3, silhouette_sample=200)
    b = embedding_report(ck, k_grid=(4, 8), pca_dims=8, seed=3, silhouette_sample=200)
    assert np.array_equal(a.rows["cluster"].to_numpy(), b.rows["cluster"].to_numpy())
    assert a.k_sweep[["inertia", "silhouette"]].equals(b.k_sweep[["inertia", "silhouette"]])
    s = a.summary
    assert s["no_token_rows"] == 20 and s["chosen_k"] in (4, 8)
    assert s["chosen_k"] == int(a.k_sweep.loc[a.k_sweep["silhouette"].idxmax(), "k"])
    assert (a.rows.loc[a.rows["no_token"], "cluster"] == -1).all()
    assert a.clusters["size"].sum() == 280
    assert a.clusters["share_word_initial"].between(0, 1).all()
    shares = a.clusters[
        [c for c in a.clusters.columns if c.startswith("share_") and c != "share_word_initial"]
    ]
    np.testing.assert_allclose(shares.sum(axis=1), 1.0)
    assert a.head_cosine is not None and a.head_cosine.shape == (300,)  # tiny_config is untied
    assert char_class("中文") == "cjk" and char_class("на") == "cyrillic" and char_class(" 23") == "digits"
    assert char_class("\ufffd") == "byte_fragment" and char_class("<s>", special=True) == "special"


def test_embeddings_command_writes_tables_and_figures(tmp_path):
    cfg = tiny_config(vocab_size=120, hidden_size=16)
    ck = synthetic.write_random_checkpoint(tmp_path / "m", cfg, dtype="F32", seed=1)
    _word_tokenizer(ck, cfg.vocab_size, n_tokens=120)
    out = tmp_path / "rep"
    assert main(["embeddings", str(ck), "--out", str(out), "--k", "3,5", "--pca", "4"]) == 0
    for name in ("summary.json", "tokens.csv", "k_sweep.csv", "clusters.csv", "pca.csv", "run.json",
                 "norms.png", "norms.svg", "k_sweep.png", "cluster_classes.svg"):  # fmt: skip
        assert (out / name).is_file(), name
    assert json.loads((out / "run.json").read_text())["status"] == "success"
