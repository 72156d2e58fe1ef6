"""Under-trained tokens (qwen_anatomy.weights.undertrained, `qwen-anatomy tokens`, chapter 12).

Categories on a tiny tokenizer with one planted token per category; the indicator's mathematics on a
constructed matrix (planted unused-like rows rank first once the first principal component is gone,
and not before); verification on the tiny random Qwen2 (probabilities, batching and the shared-prefix
cache against a plain forward); the command's bad input and its report files; one slow check on the
real Qwen2.5-Coder-0.5B.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from clicheck import one_line_error
from fixtures.tiny_tokenizer import write_tiny_tokenizer
from qwen_anatomy.cli import main
from qwen_anatomy.weights import undertrained as ut

BUILTIN = "qwen2.5-coder-0.5b"


# -- options ----------------------------------------------------------------------------------------
def test_parse_candidates_and_ranges():
    assert ut.parse_candidates("1500") == 1500 and ut.parse_candidates("0.02") == 0.02
    for bad in ("abc", "0", "-3", "2.5", "nan", "inf"):
        with pytest.raises(ut.UserInputError, match="--candidates"):
            ut.parse_candidates(bad)
    assert ut.parse_id_ranges("5-7, 9", 10) == [5, 6, 7, 9]
    for bad, why in (("5-70", "outside"), ("7-5", "backwards"), ("x", "not an id")):
        with pytest.raises(ut.UserInputError, match=why):
            ut.parse_id_ranges(bad, 10)
    assert ut.format_ranges([9, 1, 2, 3, 7]) == "1-3, 7, 9"


@pytest.mark.parametrize(
    "text, kind",
    [
        ("\ufffd", "byte piece"),
        ("  \n", "whitespace"),
        (" 2024", "digits"),
        (":-----</", "symbols"),
        ("useRalative", "code"),
        ("$PostalCodesNL", "code"),
        (".getElementById", "code"),
        (" przedsięb", "Latin"),
        ("法战组合", "CJK"),
        ("ניוזל", "Hebrew"),
        (" Москва", "Cyrillic"),
        ("칕", "Hangul"),
        ("カタ", "kana"),
        ("\u1a20", "Tai Tham"),  # TAI THAM LETTER HIGH KA
        ("\u212a", "symbols"),  # KELVIN SIGN is a letter to Unicode
        (None, "none"),
    ],
)
def test_token_kind(text, kind):
    assert ut.token_kind(text) == kind


# -- step 1: categories -----------------------------------------------------------------------------
def test_categories_on_the_tiny_tokenizer(tmp_path):
    from qwen_anatomy.tokenizer import Tokenizer

    ids = write_tiny_tokenizer(tmp_path)
    tok = Tokenizer(tmp_path)
    n_rows = tok.vocab_size + 3  # three rows beyond the tokenizer, as a padded embedding has
    unused, how = ut.known_unused(tok, n_rows)
    assert unused == [ids["placeholder"], *range(tok.vocab_size, n_rows)]
    assert "1 [PAD<id>] placeholder" in how and "3 rows beyond" in how
    df = ut.categorise(tok, n_rows).set_index("id")
    expected = {
        ids["he"]: "reachable",
        ids["hell"]: "reachable",
        ids["Ġwo"]: "reachable",
        ids["byte_A"]: "reachable",
        ids["ab"]: "unreachable",  # its merge is missing: "ab" encodes as two byte tokens
        ids["byte_0xC3"]: "partial_utf8",
        ids["special"]: "special",
        ids["placeholder"]: "unused",
        n_rows - 1: "unused",
    }
    assert {i: df.at[i, "category"] for i in expected} == expected
    assert df.at[ids["Ġwo"], "decoded"] == " wo" and df.at[ids["Ġwo"], "token"] == "Ġwo"
    # every byte >= 0x80 alone is partial UTF-8; every printable ASCII byte round-trips
    assert (df.loc[0x80:0xFF, "category"] == "partial_utf8").all()
    assert (df.loc[0x21:0x7E, "category"] == "reachable").all()
    # an explicit unused list replaces the detection
    df2 = ut.categorise(tok, n_rows, unused_ids=[ids["he"]]).set_index("id")
    assert (
        df2.at[ids["he"], "category"] == "unused" and df2.at[ids["placeholder"], "category"] == "unreachable"
    )


# -- step 2: the indicator --------------------------------------------------------------------------
def planted_matrix(seed: int = 0):
    """Rows sharing one high-variance direction d (the component the paper removes); 30 unused rows
    and 20 under-trained-like rows share a second direction v. Returns (matrix, d, unused, planted)."""
    rng = np.random.default_rng(seed)
    n, dim = 3000, 32
    basis = np.linalg.qr(rng.standard_normal((dim, dim)))[0]
    d, v = basis[:, 0], basis[:, 1]
    x = rng.normal(0, 10, (n, 1)) * d + rng.standard_normal((n, dim)) / np.sqrt(dim)
    unused = np.arange(n - 30, n)
    planted = np.sort(rng.choice(n - 30, 20, replace=False))
    x[unused] = 5 * d + v + 0.01 * rng.standard_normal((30, dim))
    x[planted] = (
        rng.normal(0, 10, (20, 1)) * d + 0.8 * v + 0.3 * rng.standard_normal((20, dim)) / np.sqrt(dim)
    )
    return x.astype(np.float32), d, unused, planted


def test_planted_rows_rank_first_after_first_pc_removal():
    x, d, unused, planted = planted_matrix()
    pc, share = ut.first_principal_component(x)
    assert abs(pc @ d) > 0.999 and share > 0.9  # the shared direction is found
    dist, details = ut.unused_distance(x, unused)
    others = np.setdiff1d(np.arange(len(x)), unused)
    lowest = others[np.argsort(dist[others])[: len(planted)]]
    assert set(lowest) == set(planted)
    assert dist[unused].max() < dist[planted].min() < dist[np.setdiff1d(others, planted)].min()
    # without the removal the shared direction swamps every cosine: the planted rows are lost
    raw, _ = ut.unused_distance(x, unused, remove_first_pc=False)
    lowest_raw = others[np.argsort(raw[others])[: len(planted)]]
    assert len(set(lowest_raw) & set(planted)) < len(planted) // 2
    assert details["unused_mean_cosine_to_first_pc"] > 0.9


def test_indicator_equals_the_direct_formula():
    """First PC from numpy's SVD of the centred rows, removed, cosine to the unused mean: the chunked
    float64 route gives the same numbers (exact arithmetic up to float64 rounding)."""
    from tolerance import FP64_EXACT

    rng = np.random.default_rng(1)
    x = (rng.standard_normal((500, 12)) * np.linspace(3, 0.5, 12)).astype(np.float32)
    unused = [3, 7, 11]
    x64 = x.astype(np.float64)
    pc = np.linalg.svd(x64 - x64.mean(0), full_matrices=False)[2][0]
    y = x64 - np.outer(x64 @ pc, pc)
    u = y[unused].mean(0)
    expected = 1 - (y @ u) / (np.linalg.norm(y, axis=1) * np.linalg.norm(u))
    got, _ = ut.unused_distance(x, unused, chunk=64)  # chunks smaller than the matrix
    assert np.max(np.abs(got - expected)) <= FP64_EXACT
    pc_ours, _ = ut.first_principal_component(x, chunk=64)
    assert abs(abs(pc_ours @ pc) - 1) < 1e-12


def test_candidates_and_control_come_from_reachable_tokens():
    import pandas as pd

    table = pd.DataFrame(
        {
            "id": range(8),
            "category": ["reachable", "special", "reachable", "reachable", "unused", "reachable", "reachable", "partial_utf8"],
            "indicator": [0.5, 0.0, 0.1, 0.9, 0.0, 0.3, 0.7, 0.0],
            "rank": [3, -1, 1, 5, -1, 2, 4, -1],
        }
    )  # fmt: skip
    assert ut.select_candidates(table, 2) == [2, 5]
    assert ut.select_candidates(table, 0.4) == [2, 5]  # 40 % of the 5 reachable tokens
    ctrl = ut.control_sample(table, 3, seed=0)
    assert len(ctrl) == 3 and set(ctrl) <= {0, 2, 3, 5, 6} and ctrl == ut.control_sample(table, 3, seed=0)


def test_wilson_interval():
    lo, hi = ut.wilson_interval(0, 100)
    assert lo == 0 and 0.03 < hi < 0.04  # the "rule of three" neighbourhood
    lo, hi = ut.wilson_interval(50, 100)
    assert lo < 0.5 < hi and abs((lo + hi) / 2 - 0.5) < 1e-12


# -- step 3: verification on the tiny random Qwen2 ------------------------------------------------------
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from test_model_forms import write_tiny_qwen2

    root = tmp_path_factory.mktemp("tokens")
    model_dir = write_tiny_qwen2(root / "tiny-qwen2")
    chat_dir = root / "tiny-chat"
    shutil.copytree(model_dir, chat_dir)
    cfg = json.loads((chat_dir / "tokenizer_config.json").read_text())
    from fixtures.tiny_tokenizer import CHAT_TEMPLATE

    cfg["chat_template"] = CHAT_TEMPLATE
    (chat_dir / "tokenizer_config.json").write_text(json.dumps(cfg))
    other = write_tiny_qwen2(root / "tiny-other", seed=1)
    return {"dir": model_dir, "chat": chat_dir, "other": other}


@pytest.fixture(scope="module")
def chat_model(tiny):
    from qwen_anatomy.loading import load_model

    return load_model(tiny["chat"])


def test_verify_gives_probabilities_for_every_template(chat_model):
    model, tok = chat_model
    ids = [5, 40, 41, 300, 7]
    v = ut.verify(model, tok, ids, batch_size=2, progress=False)
    assert v["id"].tolist() == ids
    pcols = [f"p_{t.name}" for t in ut.TEMPLATES]
    assert all(c in v for c in pcols) and all(f"out_{t.name}" in v for t in ut.TEMPLATES)
    p = v[pcols].to_numpy()
    assert p.shape == (5, 3) and np.all((p >= 0) & (p <= 1))
    assert np.array_equal(v["max_prob"].to_numpy(), p.max(axis=1))


def test_verify_batches_and_prefix_cache_equal_a_plain_forward(chat_model):
    """Step-one probability from the shared-prefix cache and batches of 3 equals a plain forward of
    the whole prompt, one token at a time."""
    import torch

    from tolerance import assert_close_scaled

    model, tok = chat_model
    ids = [5, 40, 41, 300]
    batched = ut.verify(model, tok, ids, batch_size=3, new_tokens=1, progress=False)
    for t in ut.TEMPLATES:
        prompt = ut.prompt_ids(tok, t)
        plain = []
        for i in ids:
            seq = [i if x == -1 else x for x in prompt.prefix + prompt.suffix]
            with torch.no_grad():
                logits = model(torch.tensor([seq])).logits[0, -1]
            plain.append(float(torch.softmax(logits.double(), -1)[i]))
        # float32, sums reordered between a cached and a plain forward (tests/tolerance.py)
        assert_close_scaled(
            torch.tensor(batched[f"p_{t.name}"].to_numpy()), torch.tensor(plain, dtype=torch.float64)
        )


def test_prompt_ids_put_the_token_in_by_id(chat_model):
    _, tok = chat_model
    for t in ut.TEMPLATES:
        p = ut.prompt_ids(tok, t)
        assert -1 not in p.prefix and p.suffix.count(-1) == t.pieces.count(None)
        text = tok.decode(
            [x if x != -1 else tok.token_to_id("<|endoftext|>") for x in p.prefix + p.suffix], False
        )
        assert text.count("<|endoftext|>") == t.pieces.count(None)


# -- the command --------------------------------------------------------------------------------------
def test_bad_input(capsys, tiny, tmp_path):
    m = str(tiny["dir"])
    out = tmp_path / "out"
    one_line_error(capsys, ["tokens", m, "--out", str(out), "--candidates", "abc"], "--candidates")
    one_line_error(capsys, ["tokens", m, "--out", str(out), "--candidates", "0"], "--candidates")
    one_line_error(capsys, ["tokens", m, "--out", str(out), "--unused", "999999"], "outside the model's rows")
    one_line_error(capsys, ["tokens", m, "--out", str(out), "--device", "cuda"], "--device")
    one_line_error(capsys, ["tokens", str(tmp_path / "nope"), "--out", str(out)], "does not exist")
    with pytest.raises(SystemExit) as exc:  # argparse's own refusal: one line, exit 2
        main(["tokens", m, "--out", str(out), "--control", "-1"])
    assert exc.value.code == 2 and "--control" in capsys.readouterr().err
    assert not out.exists()  # refused before anything was written
    out.mkdir()
    (out / "other.txt").write_text("x")
    one_line_error(capsys, ["tokens", m, "--out", str(out)], "already")


@pytest.fixture(scope="module")
def tiny_report(tiny, tmp_path_factory):
    """One `qwen-anatomy tokens` run on the tiny model (rows 500-516 declared unused)."""
    out = tmp_path_factory.mktemp("report") / "tiny-qwen2"
    argv = ["tokens", str(tiny["dir"]), "--out", str(out), "--unused", "500-516", "--candidates", "6",
            "--control", "5", "--batch-size", "4", "--no-progress", "--all-tokens"]  # fmt: skip
    assert main(argv) == 0
    return out


def test_report_files(tiny_report):
    out = tiny_report
    rep = ut.load_report(out)
    s, v = rep["summary"], rep["verified"]
    assert rep["run"]["status"] == "success" and (out / "tokens.csv.gz").is_file()
    assert s["unused_count"] == 17 and s["unused_ids"] == "500-516" and s["indicator"] == ut.INDICATOR_NAME
    assert s["candidates"] == 6 and s["control"] == 5
    both = (v["candidate"] & v["control"]).sum()
    assert len(v) == len(set(v["id"])) == v["candidate"].sum() + v["control"].sum() - both
    assert v.loc[v["candidate"], "rank"].sort_values().tolist() == list(range(1, 7))
    assert set(v["category"]) == {"reachable"}
    assert (v["under_trained"] == (v["max_prob"] < ut.PAPER_THRESHOLD)).all()
    md = (out / "report.md").read_text()
    assert (
        md.startswith("# Under-trained tokens of tiny-qwen2") and "## Verified under-trained candidates" in md
    )
    assert md.count("\n| ") - 1 == int(
        (v["candidate"] & v["under_trained"]).sum()
    )  # one row each, header apart
    assert rep["histogram"]["count"].sum() == s["rows"]
    every = __import__("pandas").read_csv(out / "tokens.csv.gz", keep_default_na=False, na_values=[""])
    assert len(every) == s["rows"] and set(every["category"]) <= set(ut.CATEGORIES)


def test_report_is_checked_against_the_live_checkpoint(tiny, tiny_report, tmp_path):
    live = ut.token_table(tiny["dir"], unused="500-516").table
    rep, why = ut.committed_report(tiny_report.parent, tiny["dir"], live)
    assert rep is not None and "equal the live ones" in why
    other = ut.token_table(tiny["other"], unused="500-516", alternatives=False).table
    ok, why = ut.report_matches(rep, other)
    assert not ok and "another checkpoint" in why
    with pytest.raises(ValueError, match="does not belong to"):
        ut.committed_report(tiny_report.parent, tiny["dir"], other)
    none, why = ut.committed_report(tmp_path, tiny["dir"], live)
    assert none is None and "qwen-anatomy tokens" in why


def test_chapter_tables(tiny, tiny_report):
    live = ut.token_table(tiny["dir"], unused="500-516").table
    rep = ut.load_report(tiny_report)
    v, s = rep["verified"], rep["summary"]
    rates = ut.rate_by_rank(v, bins=3)
    assert (
        rates["candidates"].sum() == s["candidates"]
        and rates["under-trained"].sum() == s["candidates_under_trained"]
    )
    kinds = ut.kind_table(v, live)
    assert kinds["under-trained"].sum() == s["candidates_under_trained"]
    alt = ut.alternatives_table(live, s, s["candidates"])
    # the tiny model is tied: the embedding is the output matrix, so no separate embedding indicator
    assert set(alt["column"]) == {"indicator", "indicator_no_pc", "embedding_norm"}
    assert alt["top_overlap"].between(0, 1).all()
    assert "embedding norm" in ut.alternatives_sentence(alt)
    text = ut.category_indicator_sentence(live, float(live["indicator"].max()))
    assert (
        "of the 17" not in text and "(100%)" in text
    )  # unused rows are not counted; every row is below the max
    ex = ut.category_examples(live)
    assert ex.set_index("category").loc["unused", "tokens"] == 17


def test_figures_have_labelled_axes(tiny, tiny_report):
    import matplotlib

    matplotlib.use("Agg")
    rep = ut.load_report(tiny_report)
    live = ut.token_table(tiny["dir"], unused="500-516", alternatives=False).table
    for fig in (
        ut.plot_indicator(table=live, candidate_cutoff=0.5),
        ut.plot_indicator(histogram=rep["histogram"]),
        ut.plot_verification(rep["verified"]),
    ):
        ax = fig.axes[0]
        assert ax.get_xlabel() and ax.get_ylabel() and ax.get_legend() is not None
        assert ax.get_yscale() == "log"


def test_indicator_auc():
    import pandas as pd

    v = pd.DataFrame(
        {
            "under_trained": [True, True, False, False, False],
            "indicator": [0.1, 0.2, 0.3, 0.4, 0.5],  # separates perfectly
            "embedding_norm": [0.5, 0.1, 0.2, 0.3, 0.4],  # one of two under-trained ranks last
        }
    )
    auc = ut.indicator_auc(v).set_index("column")["auc"]
    assert auc["indicator"] == 1.0 and auc["embedding_norm"] == 0.5
    assert "output matrix, first PC removed" in ut.auc_sentence(ut.indicator_auc(v))


def test_without_known_unused_rows_the_indicator_is_the_embedding_norm(tiny):
    tt = ut.token_table(tiny["dir"])  # the tiny tokenizer covers every row: nothing is known unused
    assert tt.summary["unused_count"] == 0 and "L2 norm" in tt.summary["indicator"]
    norms = np.linalg.norm(
        __import__("safetensors.numpy", fromlist=["load_file"])
        .load_file(str(tiny["dir"] / "model.safetensors"))["model.embed_tokens.weight"]
        .astype(np.float64),
        axis=1,
    )
    assert np.allclose(tt.table["indicator"].to_numpy(), norms, rtol=0, atol=1e-12)


def test_untied_model_uses_the_output_matrix(tmp_path):
    from safetensors.numpy import load_file

    from test_model_forms import write_tiny_qwen2

    d = write_tiny_qwen2(tmp_path / "untied", tie_word_embeddings=False)
    tt = ut.token_table(d, unused="500-516")
    assert tt.summary["indicator_matrix"] == "lm_head.weight" and not tt.summary["tied"]
    w = load_file(str(d / "model.safetensors"))
    head, emb = w["lm_head.weight"], w["model.embed_tokens.weight"]
    unused = list(range(500, 517))
    assert np.array_equal(tt.table["indicator"].to_numpy(), ut.unused_distance(head, unused)[0])
    assert np.array_equal(tt.table["indicator_embedding"].to_numpy(), ut.unused_distance(emb, unused)[0])


def test_extent_sentence():
    import pandas as pd

    s = {"control": 200, "control_under_trained": 5, "control_rate_interval": [0.01, 0.06],
         "categories": {"reachable": 100_000}, "candidates_under_trained": 2000,
         "control_under_trained_in_list": 5}  # fmt: skip
    tail = pd.DataFrame({"rate": [1.0, 0.9]})
    text = ut.extent_sentence(s, tail)
    assert "about 2,500 (95 % interval 1,000–6,000)" in text and "tail goes on" in text
    assert "5 of the 5 under-trained control tokens lie inside" in text
    assert "reaches the end" in ut.extent_sentence(s, pd.DataFrame({"rate": [1.0, 0.1]}))


def test_sentences_say_whether_the_indicator_beats_the_base_rate():
    base = {"candidates_rule": "the 100 lowest", "threshold": 0.01, "control_median_max_prob": 0.9}
    good = {
        **base,
        "candidates": 100,
        "candidates_under_trained": 60,
        "control": 100,
        "control_under_trained": 2,
    }
    bad = {
        **base,
        "candidates": 100,
        "candidates_under_trained": 5,
        "control": 100,
        "control_under_trained": 3,
    }
    for s in (good, bad):
        s["candidate_rate_interval"] = list(
            ut.wilson_interval(s["candidates_under_trained"], s["candidates"])
        )
        s["control_rate_interval"] = list(ut.wilson_interval(s["control_under_trained"], s["control"]))
    assert "beats the base rate" in ut.verification_sentence(good)
    assert "does not clearly beat" in ut.verification_sentence(bad)
    assert "60 of 100 candidates" in ut.verification_sentence(good)


# -- the real model ------------------------------------------------------------------------------------
@pytest.mark.slow
def test_real_qwen2_unused_rows_and_a_few_verifications():
    """Qwen2.5-Coder-0.5B: the 271 rows past the real vocabulary are found as unused; common code
    and English tokens are repeated with high probability, and the lowest-ranked candidates far less."""
    from qwen_anatomy.loading import load_model

    tt = ut.token_table(BUILTIN, alternatives=False)
    s = tt.summary
    assert s["unused_count"] == 271 and s["unused_ids"] == "151665-151935"
    assert s["categories"]["special"] == 22 and s["indicator_matrix"] == "lm_head.weight"
    assert s["indicator_matrix_dtype"] == "Q8_0"
    model, _ = load_model(BUILTIN)
    tok = tt.tokenizer
    ordinary = [tok.encode(w)[0] for w in (" the", " return", " function", " print")]
    assert all(len(tok.encode(w)) == 1 for w in (" the", " return", " function", " print"))
    lowest = ut.select_candidates(tt.table, 4)
    v = ut.verify(model, tok, ordinary + lowest, batch_size=8, progress=False).set_index("id")
    assert (v.loc[ordinary, "max_prob"] > 0.5).all(), v.loc[ordinary, "max_prob"]
    assert v.loc[lowest, "max_prob"].median() < v.loc[ordinary, "max_prob"].min()
