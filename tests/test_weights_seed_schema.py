"""`params --seed-schema`, `--format`, `--verbose`: the seed tool's table for its old readers (chapter 10).

The expected column lists and block-type names below are the seed's, copied from its source
(github.com/chenfengMeng2021/transformer_parameter_analysis: scripts/analyze.py's CSV header and
scripts/transformer_analysis.py's row dict and classify_matrix_type), not from our code.
"""

from __future__ import annotations

import csv
import datetime as dt
import json

import numpy as np
import pandas as pd
import pytest

from clicheck import one_line_error
from interrupts import interrupt_tensor_analysis
from qwen_anatomy.cli import main
from qwen_anatomy.config import tiny_config
from qwen_anatomy.weights import safetensors_io as sio
from qwen_anatomy.weights import synthetic, table
from qwen_anatomy.weights.naming import BLOCK_TYPES, classify

SEED_ANALYZE = [
    "model_path", "model_id", "revision", "param_name", "layer_index", "block_type", "shape", "rows",
    "cols", "rank", "mean", "std", "var", "sparsity", "dtype", "created_at",
]  # fmt: skip
SEED_TRANSFORMER = [
    "model_path", "model_id", "revision", "param_name", "layer_index", "block_type", "shape", "rows",
    "cols", "design_rank", "actual_rank", "rank_ratio", "svd_90_percent_rank", "svd_90_percent_ratio",
    "mean", "std", "var", "min", "max", "sparsity", "dtype", "created_at",
]  # fmt: skip

D = 8
RNG = np.random.default_rng(7)
K_PROJ = RNG.standard_normal((D, D)).astype(np.float32)
K_PROJ.flat[:10] = 0.0  # exact zeros
K_PROJ.flat[10:15] = 5e-9  # near zero at the seed's absolute 1e-8
K_PROJ.flat[15:18] = 2e-8  # not near zero
LOW_RANK_Q = (RNG.standard_normal((D, 3)) @ RNG.standard_normal((3, D))).astype(np.float32)

# name -> (array, the seed's block_type, layer_index): every one of our block types appears once at least
TENSORS = {
    "model.embed_tokens.weight": (RNG.standard_normal((20, D)).astype(np.float32), "embedding", None),
    "model.layers.0.input_layernorm.weight": (np.ones(D, np.float32), "norm", 0),
    "model.layers.0.self_attn.q_proj.weight": (LOW_RANK_Q, "q_proj", 0),
    "model.layers.0.self_attn.q_proj.bias": (np.zeros(D, np.float32), "q_proj", 0),
    "model.layers.0.self_attn.k_proj.weight": (K_PROJ, "k_proj", 0),
    "model.layers.0.self_attn.v_proj.weight": (RNG.standard_normal((4, D)).astype(np.float32), "v_proj", 0),
    "model.layers.0.self_attn.o_proj.weight": (RNG.standard_normal((D, D)).astype(np.float32), "o_proj", 0),
    "model.layers.0.mlp.gate_proj.weight": (RNG.standard_normal((16, D)).astype(np.float32), "gate_proj", 0),
    "model.layers.0.mlp.up_proj.weight": (RNG.standard_normal((16, D)).astype(np.float32), "up_proj", 0),
    "model.layers.0.mlp.down_proj.weight": (RNG.standard_normal((D, 16)).astype(np.float32), "down_proj", 0),
    "model.layers.1.mlp.gate.weight": (RNG.standard_normal((4, D)).astype(np.float32), "moe_gate", 1),
    "model.layers.1.mlp.experts.0.up_proj.weight": (
        RNG.standard_normal((16, D)).astype(np.float32), "moe_expert", 1),
    "model.layers.1.mystery.weight": (RNG.standard_normal((3, D)).astype(np.float32), "other", 1),
    "model.norm.weight": (np.full(D, 0.5, np.float32), "norm", None),
    "lm_head.weight": (RNG.standard_normal((20, D)).astype(np.float32), "output", None),
}  # fmt: skip


@pytest.fixture
def every_block(tmp_path):
    """An F32 checkpoint holding each of our block types, a planted rank-3 matrix and planted zeros."""
    sio.write_safetensors(
        tmp_path / "m" / "model.safetensors",
        [(n, "F32", a.shape, (lambda a=a: a)) for n, (a, _, _) in TENSORS.items()],
    )
    (tmp_path / "m" / "config.json").write_text(
        json.dumps({"architectures": ["Qwen2MoeForCausalLM"], "tie_word_embeddings": False})
    )
    return tmp_path / "m"


@pytest.fixture
def tiny(tmp_path):
    return synthetic.write_random_checkpoint(tmp_path / "tiny", tiny_config(), dtype="BF16", seed=0)


def _params(argv, capsys) -> str:
    assert main(["params", *argv, "--no-progress"]) == 0
    return capsys.readouterr().out


def test_columns_are_the_seeds_in_its_order(every_block, tmp_path, capsys):
    _params([str(every_block), "--out", str(tmp_path / "a.csv"), "--seed-schema"], capsys)
    _params([str(every_block), "--out", str(tmp_path / "t.csv"), "--seed-schema", "transformer"], capsys)
    with open(tmp_path / "a.csv", newline="") as fh:
        assert next(csv.reader(fh)) == SEED_ANALYZE
    with open(tmp_path / "t.csv", newline="") as fh:
        assert next(csv.reader(fh)) == SEED_TRANSFORMER
    assert table.SEED_SCHEMAS == {"analyze": SEED_ANALYZE, "transformer": SEED_TRANSFORMER}


def test_block_types_layers_and_values_follow_the_seeds_definitions(every_block, tmp_path, capsys):
    out = tmp_path / "t.csv"
    _params(
        [str(every_block), "--out", str(out), "--seed-schema", "transformer", "--spectra", "exact"], capsys
    )
    rows = {r["param_name"]: r for r in csv.DictReader(open(out, newline=""))}
    assert set(rows) == set(TENSORS)
    assert set(table.SEED_BLOCK_TYPES) == set(BLOCK_TYPES)  # every block type has a seed name
    covered = {classify(n)["block_type"] for n in TENSORS}
    assert covered == set(BLOCK_TYPES)  # and this checkpoint exercises each of them
    for name, (w, seed_type, layer) in TENSORS.items():
        r = rows[name]
        assert r["block_type"] == seed_type, name
        # layer 0 is "0" (the seed wrote "" for it), non-layer tensors are empty
        assert r["layer_index"] == ("" if layer is None else str(layer)), name
        assert r["dtype"] == "float32"  # the stored type
        w64 = w.astype(np.float64)
        assert float(r["mean"]) == pytest.approx(w64.mean(), rel=1e-12, abs=1e-15)
        assert float(r["std"]) == pytest.approx(w64.std(), rel=1e-12, abs=1e-15)
        assert float(r["sparsity"]) == np.count_nonzero(np.abs(w) <= 1e-8) / w.size
        rows_, cols_ = (1, w.shape[0]) if w.ndim == 1 else w.shape
        assert r["shape"] == str(tuple(w.shape)) and (int(r["rows"]), int(r["cols"])) == (rows_, cols_)
        assert int(r["design_rank"]) == min(rows_, cols_)
        if w.ndim == 2:
            assert int(r["actual_rank"]) == np.linalg.matrix_rank(w), name
            s = np.linalg.svd(w64, compute_uv=False)
            energy = np.cumsum(s**2) / np.sum(s**2)
            assert int(r["svd_90_percent_rank"]) == int(np.argmax(energy >= 0.9)) + 1, name
        else:
            assert int(r["actual_rank"]) == int(np.any(w != 0)), name
    assert rows["model.layers.0.self_attn.q_proj.weight"]["actual_rank"] == "3"  # the planted rank
    assert float(rows["model.layers.0.self_attn.k_proj.weight"]["sparsity"]) == 15 / 64


def test_created_at_is_one_utc_iso_timestamp(every_block, tmp_path, capsys):
    before = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    _params([str(every_block), "--out", str(tmp_path / "a.csv"), "--seed-schema"], capsys)
    after = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    stamps = {r["created_at"] for r in csv.DictReader(open(tmp_path / "a.csv", newline=""))}
    assert len(stamps) == 1
    stamp = stamps.pop()
    assert before <= dt.datetime.fromisoformat(stamp) <= after
    record = json.loads((tmp_path / "a.csv.run.json").read_text())
    assert record["seed_schema"] == {"layout": "analyze", "created_at": stamp}


@pytest.mark.parametrize("layout", ["analyze", "transformer"])
def test_every_format_round_trips(tiny, tmp_path, capsys, layout):
    reference = table.analyse(tiny)  # our columns, no file
    backs = {}
    for fmt in table.FORMATS:
        out = tmp_path / f"{layout}.{fmt}"
        _params([str(tiny), "--out", str(out), "--seed-schema", layout], capsys)
        back = table.read_table(out)
        assert list(back.columns) == table.SEED_SCHEMAS[layout]
        expected = table.to_seed_schema(reference, layout, created_at=back["created_at"].iloc[0])
        pd.testing.assert_frame_equal(back, expected, check_exact=True)
        backs[fmt] = back.drop(columns="created_at")
    for fmt in table.FORMATS:
        pd.testing.assert_frame_equal(backs[fmt], backs["csv"], check_exact=True)
    assert (
        json.loads((tmp_path / f"{layout}.json").read_text())[0]["param_name"] == "model.embed_tokens.weight"
    )
    assert back["dtype"].eq("bfloat16").all()


def test_json_keeps_every_float_in_our_columns(tiny, tmp_path):
    """pandas' JSON writer kept 10 decimals (a std of 2.6e-06 came back as 0.0000026): ours keeps all."""
    df = table.analyse(tiny)
    for fmt in ("json", "jsonl"):
        out = table.write_table(df, tmp_path / f"t.{fmt}")
        back = table.read_table(out)
        for col in ("mean", "std", "rank_tol", "sigma_max", "near_zero_rel_tol"):
            a, b = df[col].to_numpy(float), back[col].to_numpy(float)
            assert np.array_equal(a, b, equal_nan=True), (fmt, col)
        assert back["layer"].tolist() == df["layer"].tolist()


def test_format_flag_and_extension(tiny, tmp_path, capsys):
    _params([str(tiny), "--out", str(tmp_path / "t.csv"), "--format", "csv"], capsys)
    assert table.read_table(tmp_path / "t.csv")["name"].iloc[0] == "model.embed_tokens.weight"
    # with --format, an extension that names no format is accepted
    _params([str(tiny), "--out", str(tmp_path / "table"), "--format", "parquet", "--seed-schema"], capsys)
    assert (tmp_path / "table").read_bytes()[:4] == b"PAR1"
    assert list(table.read_table(tmp_path / "table", "parquet").columns) == SEED_ANALYZE


def test_bad_combinations_are_one_line(tiny, tmp_path, capsys):
    one_line_error(
        capsys, ["params", str(tiny), "--out", str(tmp_path / "t.csv"), "--format", "parquet"], "--format"
    )
    one_line_error(capsys, ["params", str(tiny), "--out", str(tmp_path / "t.txt")], "give --format")
    one_line_error(capsys, ["params", str(tiny), "--describe", "--seed-schema"], "--describe")
    one_line_error(capsys, ["params", str(tiny), "--describe", "--format", "json"], "--describe")
    assert not list(tmp_path.glob("t.*"))  # refused before anything was written
    for argv in (["--seed-schema", "bogus"], ["--format", "xml"], ["--seed-schema", str(tiny)]):
        with pytest.raises(SystemExit) as exc:
            main(["params", "--out", str(tmp_path / "u.csv"), *argv, str(tiny)])
        assert exc.value.code == 2
        err = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
        assert len(err) == 1 and ("--seed-schema" in err[0] or "--format" in err[0]), err


def test_verbose_prints_one_line_per_tensor(tiny, tmp_path, capsys):
    quiet = _params([str(tiny), "--out", str(tmp_path / "q.csv")], capsys)
    assert "mean=" not in quiet
    out = _params([str(tiny), "--out", str(tmp_path / "v.csv"), "--seed-schema", "--verbose"], capsys)
    names = list(table.read_table(tmp_path / "v.csv")["param_name"])
    lines = [x for x in out.splitlines() if x.startswith("[")]
    assert len(lines) == len(names) == 27
    for name, line in zip(names, lines, strict=True):
        assert f" {name} " in line and "mean=" in line and "std=" in line and "rank=" in line
        assert line.endswith(" s")  # seconds
    assert "model.layers.0.self_attn.q_proj.weight  32x32 " in out and "rank=32/32" in out
    assert any(x.startswith("params: writing csv") and "'analyze'" in x for x in out.splitlines())


def test_resume_file_keeps_our_columns_and_the_view_applies_at_write(tiny, tmp_path, capsys, monkeypatch):
    fresh = tmp_path / "fresh.csv"
    _params([str(tiny), "--out", str(fresh), "--seed-schema"], capsys)
    real = interrupt_tensor_analysis(monkeypatch, table, at_call=4)
    out = tmp_path / "t.csv"
    assert main(["params", str(tiny), "--out", str(out), "--seed-schema", "--no-progress"]) == 130
    partial = [json.loads(x) for x in (tmp_path / "t.csv.partial.jsonl").read_text().splitlines()]
    assert len(partial) == 3 and {"name", "layer", "near_zero_abs_frac"} <= set(partial[0])
    assert "param_name" not in partial[0]
    monkeypatch.setattr(table, "analyse_tensor", real)
    text = _params([str(tiny), "--out", str(out), "--seed-schema", "--verbose"], capsys)
    assert sum("resumed" in x for x in text.splitlines() if x.startswith("[")) == 3
    a = table.read_table(out).drop(columns="created_at")
    b = table.read_table(fresh).drop(columns="created_at")
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    assert not (tmp_path / "t.csv.partial.jsonl").exists()


def test_dtype_names_and_quantised_types_pass_through(every_block):
    df = table.analyse(every_block, spectra="none")
    df["dtype"] = ["BF16", "Q4_K", *["F16"] * (len(df) - 2)]
    seed = table.to_seed_schema(df, created_at="2025-01-01T00:00:00.000000")
    assert list(seed["dtype"][:3]) == ["bfloat16", "Q4_K", "float16"]
    # no spectrum computed: 2-D ranks are empty, 1-D ranks still 1 (a non-zero vector)
    ranks = dict(zip(seed["param_name"], seed["rank"], strict=True))
    assert pd.isna(ranks["model.layers.0.self_attn.q_proj.weight"])
    assert ranks["model.norm.weight"] == 1 and ranks["model.layers.0.self_attn.q_proj.bias"] == 0
