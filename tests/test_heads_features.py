"""Part IV seed features (issue 15, point 4), each on tiny models or hand-made tables:

- ``--subset-seed`` / ``--subset-file``: a seeded random evaluation subset, written and reused exactly;
- Uq, Uk, Uv, Uo per head (K/V of a group apportioned over its query heads) in ``heads.csv``;
- ``--top-k``: the size of every top-K set, validated before any work;
- the importance-versus-gradient figure;
- ``--heads L.H,...``: ablate a chosen subset (a planted head is found as the most important);
- ``heads agree DIR DIR ...``: across-run agreement of saved runs.
"""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import spearmanr

from qwen_anatomy.cli import main
from qwen_anatomy.config import tiny_config
from qwen_anatomy.errors import UserInputError
from qwen_anatomy.heads import plots
from qwen_anatomy.heads.ablation import head_name, parse_heads
from qwen_anatomy.heads.agreement import agreement, agreement_table
from qwen_anatomy.heads.analysis import Measurements, compute_stats, head_table
from qwen_anatomy.heads.core import HeadLayout, head_layout
from qwen_anatomy.heads.data import (
    draw_subset,
    load_eval_data,
    pool_size,
    read_subset_file,
    subset_record,
    task_batch,
)
from qwen_anatomy.heads.plasticity import layer_attention_delta_sq, update_magnitudes
from qwen_anatomy.heads.report import most_important, most_important_line
from qwen_anatomy.heads.stats import across_seed_agreement, counterexamples, topk_overlap
from qwen_anatomy.loading import save_checkpoint
from qwen_anatomy.model import Qwen2ForCausalLM
from qwen_anatomy.tasks.vocab import VOCAB_SIZE, int_to_id

torch.set_num_threads(1)

LAY = HeadLayout(num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8)
FAST = ["--bootstrap", "5", "--permutations", "20", "--batch-size", "4", "--replicas", "4"]


def _task_lines(n: int, seed: int = 0, target: int | None = None) -> list[str]:
    """n task lines of 4 inputs and 4 outputs (outputs all ``target`` when given)."""
    rng = np.random.default_rng(seed)
    lines = []
    for _ in range(n):
        x = rng.integers(-9, 10, 4)
        y = np.full(4, target) if target is not None else rng.integers(0, 19, 4)
        lines.append(" ".join(map(str, x)) + " # " + " ".join(map(str, y)))
    return lines


def _one_line_error(capsys, must_contain: str) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "error" in lines[0] and must_contain in lines[0], lines[0]
    assert "Traceback" not in err
    return lines[0]


def _tiny_task_model(seed: int = 0) -> Qwen2ForCausalLM:
    cfg = tiny_config(
        vocab_size=VOCAB_SIZE, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2
    )
    return Qwen2ForCausalLM(cfg).init_weights(seed, std=0.2).eval()


@pytest.fixture
def pair(tmp_path):
    """θ0, a θ1 nudged from it, and a task file of 10 examples."""
    m0 = _tiny_task_model()
    m1 = copy.deepcopy(m0)
    with torch.no_grad():
        g = torch.Generator().manual_seed(1)
        for p in m1.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.02)
    data = tmp_path / "data.test"
    data.write_text("\n".join(_task_lines(10)) + "\n")
    return {
        "theta0": str(save_checkpoint(m0, tmp_path / "theta0")),
        "theta1": str(save_checkpoint(m1, tmp_path / "theta1")),
        "data": data,
        "tmp": tmp_path,
    }


def _heads(pair, out, *extra) -> int:
    return main(["heads", pair["theta0"], "--data", str(pair["data"]), "--out", str(out), *FAST, *extra])


# -- 1. seeded evaluation subsets ---------------------------------------------------------------------
def test_draw_subset_is_seeded_sorted_and_distinct():
    a = draw_subset(1000, 64, 999)
    assert np.array_equal(a, draw_subset(1000, 64, 999))
    assert len(set(a.tolist())) == 64 and (np.diff(a) > 0).all() and 0 <= a.min() and a.max() < 1000
    assert not np.array_equal(a, draw_subset(1000, 64, 998))
    assert np.array_equal(draw_subset(5, 5, 3), np.arange(5))  # the whole pool is every example


@pytest.mark.parametrize(
    "pool, size, seed, words",
    [
        (10, 3, -1, "--subset-seed -1"),
        (10, 3, 2**32, "0..4294967295"),
        (10, 3, "7", "--subset-seed '7'"),
        (10, 3, True, "--subset-seed True"),
        (10, 0, 1, "ask for 1..10"),
        (10, 11, 1, "--max-examples 11"),
    ],
)
def test_draw_subset_refuses_bad_seeds_and_sizes(pool, size, seed, words):
    with pytest.raises(UserInputError) as err:
        draw_subset(pool, size, seed)
    assert words in str(err.value)


def test_load_eval_data_takes_exactly_the_listed_lines(tmp_path):
    lines = _task_lines(6)
    f = tmp_path / "data.test"
    f.write_text("\n\n".join(lines) + "\n")  # blank lines between examples are not counted
    assert pool_size(f) == 6
    batch, kind = load_eval_data(f, indices=[4, 1])
    assert kind == "task" and batch.source.tolist() == [4, 1]
    for row, line in enumerate([4, 1]):
        one = task_batch_of(tmp_path, lines[line])
        n = int(one.lengths[0])
        assert batch.input_ids[row, :n].tolist() == one.input_ids[0, :n].tolist()
    first, _ = load_eval_data(f, max_examples=3)
    assert first.source.tolist() == [0, 1, 2]


def task_batch_of(tmp_path, line: str):
    g = tmp_path / "one.test"
    g.write_text(line + "\n")
    return task_batch(g)


def test_subset_file_is_checked_against_its_data(tmp_path):
    f = tmp_path / "data.test"
    f.write_text("\n".join(_task_lines(8)) + "\n")
    rec = subset_record(draw_subset(8, 3, 5), 8, 5, f)
    path = tmp_path / "subset.json"
    path.write_text(json.dumps(rec))
    assert read_subset_file(path, f)["indices"] == rec["indices"]
    other = tmp_path / "other.test"
    other.write_text("\n".join(_task_lines(8, seed=1)) + "\n")  # same size, other bytes
    with pytest.raises(UserInputError, match="SHA-256 differs"):
        read_subset_file(path, other)
    other.write_text("\n".join(_task_lines(9)) + "\n")
    with pytest.raises(UserInputError, match="drawn from 8 examples but .* holds 9"):
        read_subset_file(path, other)
    for bad, words in (
        ({**rec, "indices": [1, 1]}, "repeats an index"),
        ({**rec, "indices": [8]}, "outside 0..7"),
        ({**rec, "indices": []}, "not a subset file"),
        ([1, 2], "not a subset file"),
    ):
        path.write_text(json.dumps(bad))
        with pytest.raises(UserInputError, match=words):
            read_subset_file(path, f)


def test_subset_seed_writes_its_indices_and_the_file_reproduces_the_subset(pair, capsys):
    out_a, out_b, out_c = (pair["tmp"] / name for name in ("a", "b", "c"))
    assert _heads(pair, out_a, "--subset-seed", "999", "--max-examples", "4", "--no-figures") == 0
    rec = json.loads((out_a / "subset_indices.json").read_text())
    assert rec["seed"] == 999 and rec["pool_size"] == 10 and rec["size"] == 4 and rec["skipped"] == []
    assert rec["indices"] == draw_subset(10, 4, 999).tolist()
    # the same examples, read back from the file: same indices, bit-identical per-example losses
    sub = out_a / "subset_indices.json"
    assert _heads(pair, out_b, "--subset-file", str(sub), "--no-figures") == 0
    assert json.loads((out_b / "subset_indices.json").read_text())["indices"] == rec["indices"]
    la, lb = (np.load(d / "theta0.npz")["loss"] for d in (out_a, out_b))
    assert np.array_equal(la, lb)
    # another seed, another subset (and other losses)
    assert _heads(pair, out_c, "--subset-seed", "1", "--max-examples", "4", "--no-figures") == 0
    rec_c = json.loads((out_c / "subset_indices.json").read_text())
    assert rec_c["indices"] != rec["indices"]
    assert not np.array_equal(la, np.load(out_c / "theta0.npz")["loss"])
    record = json.loads((out_a / "run_record.json").read_text())
    assert record["parameters"]["subset_seed"] == 999 and record["n_examples"] == 4


def test_without_a_seed_the_first_examples_are_recorded(pair):
    out = pair["tmp"] / "first"
    assert _heads(pair, out, "--max-examples", "3", "--no-figures") == 0
    rec = json.loads((out / "subset_indices.json").read_text())
    assert rec["seed"] is None and rec["indices"] == [0, 1, 2] and rec["pool_size"] == 10


def test_proxy_validity_carries_the_bootstrap_interval_of_its_own_pair():
    """Each proxy-validity row's interval is the percentile bootstrap over examples of ρ(proxy, I),
    the same resamples as the pair intervals (one seeded draw of example indices per resample)."""
    from qwen_anatomy.heads.analysis import head_quantities
    from qwen_anatomy.heads.stats import bootstrap_spearman

    rng = np.random.default_rng(1)
    m = _measurements(rng.normal(size=(12, 8)), ablated=[0, 2, 3, 5, 6, 7])
    st = compute_stats(m, None, None, n_perm=10, n_boot=40, seed=3)
    direct = bootstrap_spearman(
        lambda idx: head_quantities(m, None, None, idx),
        12,
        [("neg_Eg_pre", "I_pre"), ("G_pre", "I_pre")],
        40,
        3,
    )
    rows = {v["proxy"]: v for v in st["proxy_validity"]}
    assert (rows["neg_Eg"]["ci_low"], rows["neg_Eg"]["ci_high"]) == direct[("neg_Eg_pre", "I_pre")]
    assert (rows["G"]["ci_low"], rows["G"]["ci_high"]) == direct[("G_pre", "I_pre")]
    finite = [v for v in st["proxy_validity"] if np.isfinite(v["ci_low"])]  # the norm is constant here
    assert {"G", "neg_Eg"} <= {v["proxy"] for v in finite}
    assert all(-1 <= v["ci_low"] <= v["ci_high"] <= 1 for v in finite)


@pytest.mark.parametrize(
    "flags, words",
    [
        (["--subset-seed", "3", "--max-examples", "11"], "--max-examples 11"),
        (["--subset-seed", "-1"], "--subset-seed -1"),
        (["--subset-file", "missing.json"], "missing.json"),
    ],
)
def test_bad_subset_requests_fail_before_work(pair, capsys, flags, words):
    out = pair["tmp"] / "out"
    flags = [str(pair["tmp"] / f) if f.endswith(".json") else f for f in flags]
    assert _heads(pair, out, *flags) == 2
    _one_line_error(capsys, words)
    assert not out.exists()


def test_subset_seed_and_file_are_exclusive(pair, capsys):
    with pytest.raises(SystemExit) as exc:
        _heads(pair, pair["tmp"] / "o", "--subset-seed", "1", "--subset-file", "x.json")
    assert exc.value.code == 2
    _one_line_error(capsys, "not allowed with argument")


# -- 2. per-projection updates ------------------------------------------------------------------------
PROJ_SLICES = {  # projection -> (parameter, unit the rows/columns belong to)
    "q": ("q_proj", "head"),
    "k": ("k_proj", "group"),
    "v": ("v_proj", "group"),
    "o": ("o_proj", "head"),
}


@pytest.mark.parametrize("proj", ["q", "k", "v", "o"])
def test_only_one_projection_of_one_unit_changed(proj):
    m0 = _tiny_task_model()
    lay = head_layout(m0)
    m1 = copy.deepcopy(m0)
    layer, head = 1, 2
    group = lay.group_of(head)
    unit = head if PROJ_SLICES[proj][1] == "head" else group
    d = lay.head_dim
    mod = getattr(m1.model.layers[layer].self_attn, PROJ_SLICES[proj][0])
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        if proj == "o":  # a head's columns of o_proj
            delta_w = torch.randn(mod.weight.shape[0], d, generator=g)
            mod.weight[:, unit * d : (unit + 1) * d] += delta_w
            sq = float((delta_w.double() ** 2).sum())
        else:  # a head's (or group's) rows of the projection, and its bias
            delta_w = torch.randn(d, mod.weight.shape[1], generator=g)
            delta_b = torch.randn(d, generator=g)
            mod.weight[unit * d : (unit + 1) * d] += delta_w
            mod.bias[unit * d : (unit + 1) * d] += delta_b
            sq = float((delta_w.double() ** 2).sum() + (delta_b.double() ** 2).sum())
    up = update_magnitudes(m0, m1)
    cols = {"q": "Uq", "k": "Uk", "v": "Uv", "o": "Uo"}
    # where the change must show: the head itself, or every query head of the changed KV group
    heads = (
        [head]
        if PROJ_SLICES[proj][1] == "head"
        else [h for h in range(lay.num_heads) if lay.group_of(h) == group]
    )
    share = 1 if PROJ_SLICES[proj][1] == "head" else lay.group_size
    expected = np.zeros((lay.num_layers, lay.num_heads))
    expected[layer, heads] = math.sqrt(sq / share)
    # float32 parameters subtracted in float64: the difference is the float32 rounding of the sum,
    # so the norms agree to a few float32 ulps relative to the change
    np.testing.assert_allclose(up[cols[proj]], expected, rtol=1e-5, atol=0)
    for other in set(cols.values()) - {cols[proj]}:
        assert (up[other] == 0).all(), other  # bit-exact zero: those parameters did not change
    np.testing.assert_allclose(up["U"], expected, rtol=1e-5, atol=0)
    if share > 1:  # the group's undivided norm is in U_K / U_V, and the shares add up to it
        group_col = {"k": "U_K", "v": "U_V"}[proj]
        assert up[group_col][layer, group] == pytest.approx(math.sqrt(sq), rel=1e-5)
        assert (up[cols[proj]][layer] ** 2).sum() == pytest.approx(sq, rel=1e-5)


def test_projection_updates_add_up_to_the_total_and_land_in_heads_csv():
    m0 = _tiny_task_model()
    m1 = _tiny_task_model(seed=1)
    up = update_magnitudes(m0, m1)
    total = up["Uq"] ** 2 + up["Uk"] ** 2 + up["Uv"] ** 2 + up["Uo"] ** 2
    np.testing.assert_allclose(total, up["U"] ** 2, rtol=1e-12)  # the same float64 sums, regrouped
    for layer in range(2):
        assert total[layer].sum() == pytest.approx(layer_attention_delta_sq(m0, m1, layer), rel=1e-9)
    m = _measurements(np.zeros((3, 8)))
    table = head_table(m, m, up)
    for col in ("Uq", "Uk", "Uv", "Uo"):
        np.testing.assert_array_equal(table[col].to_numpy(), up[col].reshape(-1))


# -- 3. --top-k ---------------------------------------------------------------------------------------
def _measurements(dloss, ablated=None, seed=0) -> Measurements:
    e, n = dloss.shape
    rng = np.random.default_rng(seed)
    abl = np.arange(n) if ablated is None else np.asarray(ablated)
    return Measurements(LAY, "zero", np.ones(e), rng.normal(size=(e, n)), np.ones((e, n)), dloss, None, abl)


def test_topk_overlap_and_counterexamples_take_a_given_k():
    x = np.arange(100.0)
    assert topk_overlap(x, x, k=20) == {"k": 20, "overlap": 20, "chance": 4.0}
    assert topk_overlap(x, -x, k=50)["overlap"] == 0
    c = counterexamples(x, -x, k=20)  # the 20 most important moved least: all 20 are in the bottom 30
    assert c["n_important_but_static"] == 20 and c["k_top"] == 20 and c["chance"] == pytest.approx(6.0)
    assert across_seed_agreement([x, x], k=7)["k"] == 7
    for bad in (0, 101, 2.5, True):
        with pytest.raises(UserInputError, match="1 to 100"):
            topk_overlap(x, x, k=bad)


def test_compute_stats_uses_the_given_k_everywhere():
    rng = np.random.default_rng(0)
    m = _measurements(rng.normal(size=(5, 8)))
    up = {"U": rng.random((2, 4)), "Urel": rng.random((2, 4)), "U_QO": rng.random((2, 4)),
          "Urel_QO": rng.random((2, 4)), "U_KV": rng.random((2, 2)), "Urel_KV": rng.random((2, 2))}  # fmt: skip
    st = compute_stats(m, None, up, n_perm=10, n_boot=3, top_k=3)
    assert st["top_k"] == 3 and st["topk_chance"] == pytest.approx(9 / 8)
    assert {p["topk_k"] for p in st["pairs"]} == {3}
    assert {v["topk_k"] for v in st["proxy_validity"]} == {3}
    assert st["counterexamples"]["I_pre_vs_Urel"]["k_top"] == 3
    default = compute_stats(m, None, up, n_perm=10, n_boot=3)
    assert default["top_k"] == 1 and not default["top_k_given"]  # 10% of 8 heads
    with pytest.raises(UserInputError, match="1 to 8"):
        compute_stats(m, None, up, n_perm=10, n_boot=3, top_k=9)


@pytest.mark.parametrize(
    "flags, words",
    [
        (["--top-k", "0"], "1 to 8"),
        (["--top-k", "9"], "--top-k 9"),
        (["--top-k", "4", "--heads", "0.1,1.2,1.3"], "1 to 3 (the number of heads ablated (--heads))"),
        (["--top-k", "two"], "'two' is not an integer"),
    ],
)
def test_bad_top_k_fails_before_work(pair, capsys, flags, words):
    out = pair["tmp"] / "out"
    try:
        code = _heads(pair, out, *flags)
    except SystemExit as exc:  # argparse refuses a non-integer itself
        code = exc.code
    assert code == 2
    _one_line_error(capsys, words)
    assert not out.exists()


# -- 4. the importance-versus-gradient figure ---------------------------------------------------------
def test_importance_vs_gradient_has_one_point_per_ablated_head():
    import matplotlib.pyplot as plt
    from matplotlib.collections import PathCollection

    dloss = np.random.default_rng(0).normal(size=(4, 8))
    dloss[:, [1, 5, 6]] = np.nan  # three heads not ablated
    table = head_table(_measurements(dloss, ablated=[0, 2, 3, 4, 7]))
    fig = plots.importance_vs_gradient(table, "I_pre", "G_pre")
    points = fig.axes[0].collections[0].get_offsets()
    assert len(points) == 5
    np.testing.assert_allclose(np.sort(points[:, 1]), np.sort(table["I_pre"].dropna()))
    assert "5 heads" in fig.axes[0].get_title()
    plt.close(fig)
    fig = plots.importance_vs_gradients(table, "I_pre", ("G_pre", "neg_Eg_pre"))
    scatters = [c for ax in fig.axes for c in ax.collections if isinstance(c, PathCollection)]
    assert [len(c.get_offsets()) for c in scatters] == [5, 5]  # (colour bars hold no scatter)
    panels = [c.axes for c in scatters]
    assert panels[1].get_legend() is not None  # y = x drawn for −E[g], the first-order estimate
    plt.close(fig)


# -- 5. --heads and a planted head ---------------------------------------------------------------------
def test_parse_heads():
    assert parse_heads("1.2, 0.0,1.2", LAY) == [0, 6]
    assert [head_name(i, LAY) for i in parse_heads("1.3,0.1", LAY)] == ["0.1", "1.3"]
    for bad, words in (
        ("2.0", "does not exist; this model has 2 layers x 4 query heads"),
        ("0.4", "does not exist"),
        ("1-2", "'1-2' is not LAYER.HEAD"),
        ("a.b", "is not LAYER.HEAD"),
        ("1.2,", "'' is not LAYER.HEAD"),
        ("-1.0", "is not LAYER.HEAD"),
        ("", "--heads is empty"),
    ):
        with pytest.raises(UserInputError) as err:
            parse_heads(bad, LAY)
        assert words in str(err.value), (bad, str(err.value))


def test_most_important_ignores_unablated_heads():
    values = np.array([0.1, np.nan, 2.0, -1.0, np.nan, 0.1, 0.0, 0.3])
    assert most_important(values, 4, 3) == [("0.2", 2.0), ("1.3", 0.3), ("0.0", 0.1)]
    line = most_important_line(values, 4, 1)
    assert line.startswith("most important of the 6 ablated heads at θ0 (layer.head): 0.2 (Δloss +2.0000")


PLANTED = (1, 2)  # layer, head


def _planted_model() -> Qwen2ForCausalLM:
    """A tiny model whose head 1.2 alone writes a large vector that makes the lm head predict the
    token "3": its KV group's V rows are zero and its V bias a unit vector, so the head outputs that
    vector whatever it attends to, and its o_proj column maps it to 40·(lm_head row of "3").
    Every other head's o_proj is scaled by 0.05, so removing any of them barely changes the loss."""
    model = _tiny_task_model()
    lay = head_layout(model)
    layer, head = PLANTED
    d, group = lay.head_dim, lay.group_of(head)
    target = model.lm_head.weight[int_to_id(3)].detach()
    with torch.no_grad():
        for blk in model.model.layers:
            blk.self_attn.o_proj.weight.mul_(0.05)
        attn = model.model.layers[layer].self_attn
        attn.v_proj.weight[group * d : (group + 1) * d] = 0
        attn.v_proj.bias[group * d : (group + 1) * d] = 0
        attn.v_proj.bias[group * d] = 1.0
        attn.o_proj.weight[:, head * d : (head + 1) * d] = 0
        attn.o_proj.weight[:, head * d] = 40 * target / target.norm()
    return model


def test_heads_flag_finds_the_planted_head(tmp_path, capsys):
    ckpt = save_checkpoint(_planted_model(), tmp_path / "planted")
    data = tmp_path / "threes.test"
    data.write_text("\n".join(_task_lines(6, target=3)) + "\n")  # every answer token is "3"
    out = tmp_path / "out"
    chosen = "0.0,0.3,1.1,1.2,1.3"
    code = main(["heads", str(ckpt), "--data", str(data), "--out", str(out), "--heads", chosen, "--top-k",
                 "2", "--no-figures", *FAST])  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0
    assert "most important of the 5 ablated heads at θ0 (layer.head): 1.2 (" in printed
    heads = pd.read_csv(out / "heads.csv")
    ablated = heads.dropna(subset=["I_pre"])
    assert sorted(f"{r.layer}.{r.head}" for r in ablated.itertuples()) == chosen.split(",")
    assert heads["G_pre"].notna().all()  # gradient proxies still cover every head
    best = ablated.loc[ablated["I_pre"].idxmax()]
    assert (best["layer"], best["head"]) == PLANTED
    others = ablated.drop(index=best.name)["I_pre"].abs().max()
    assert best["I_pre"] > 1.0 and best["I_pre"] > 20 * others  # it matters, the others barely do
    stats = json.loads((out / "stats.json").read_text())
    assert stats["n_heads_ablated"] == 5 and stats["top_k"] == 2
    assert json.loads((out / "run_record.json").read_text())["heads_ablated"] == 5


def test_heads_flag_outside_the_model_is_one_line(pair, capsys):
    out = pair["tmp"] / "out"
    assert _heads(pair, out, "--heads", "0.1,2.0") == 2
    _one_line_error(capsys, "--heads: head 2.0 does not exist; this model has 2 layers x 4 query heads")
    assert not out.exists()


# -- 6. heads agree -------------------------------------------------------------------------------------
def _write_run(folder, columns: dict[str, np.ndarray], lay: HeadLayout = LAY):
    flat = np.arange(lay.n_heads_total)
    table = pd.DataFrame(
        {"layer": flat // lay.num_heads, "head": flat % lay.num_heads,
         "kv_group": (flat % lay.num_heads) // lay.group_size, **columns}
    )  # fmt: skip
    folder.mkdir(parents=True)
    table.to_csv(folder / "heads.csv", index=False)
    return folder


def test_agreement_matches_scipy_and_counts_overlaps(tmp_path):
    rng = np.random.default_rng(0)
    base = rng.normal(size=8)
    i_pre = np.r_[base[:5], np.nan, np.nan, np.nan]  # a run that ablated 5 heads
    runs = {
        "a": {"I_post": base, "Urel": base, "I_pre": i_pre},
        "b": {"I_post": base + 0.01 * rng.normal(size=8), "Urel": -base, "I_pre": i_pre},
        "c": {"I_post": rng.normal(size=8), "Urel": base[::-1].copy(), "I_pre": i_pre},
    }
    tables = {k: pd.read_csv(_write_run(tmp_path / k, v) / "heads.csv") for k, v in runs.items()}
    summary, pairs = agreement(tables, k=2)
    assert list(summary["quantity"]) == ["I_post", "Urel", "I_pre"]
    row = pairs[(pairs.quantity == "I_post") & (pairs.run_a == "a") & (pairs.run_b == "c")].iloc[0]
    assert row["spearman"] == pytest.approx(spearmanr(runs["a"]["I_post"], runs["c"]["I_post"]).statistic)
    urel = summary.set_index("quantity").loc["Urel"]
    rhos = [
        spearmanr(runs[a]["Urel"], runs[b]["Urel"]).statistic for a, b in (("a", "b"), ("a", "c"), ("b", "c"))
    ]
    assert urel["mean_spearman"] == pytest.approx(np.mean(rhos)) and urel["min_spearman"] == pytest.approx(-1)
    assert urel["k"] == 2 and urel["topk_chance"] == pytest.approx(4 / 8)
    ab = pairs[(pairs.quantity == "Urel") & (pairs.run_a == "a") & (pairs.run_b == "b")].iloc[0]
    assert ab["topk_overlap"] == 0  # a ranking and its reverse share no top-2 head
    ipre = summary.set_index("quantity").loc["I_pre"]
    assert ipre["n_heads"] == 5 and ipre["identical"] and ipre["mean_spearman"] == pytest.approx(1.0)
    assert not summary.set_index("quantity").loc["I_post", "identical"]
    with pytest.raises(UserInputError, match="1 to 5 .*I_pre"):
        agreement(tables, k=6)
    with pytest.raises(UserInputError, match="'nope' is not a numeric column"):
        agreement(tables, ["nope"])


def test_agree_command_writes_tables_and_refuses_mismatched_heads(tmp_path, capsys):
    rng = np.random.default_rng(1)
    a = _write_run(tmp_path / "a", {"I_post": rng.normal(size=8), "Urel": rng.random(8)})
    b = _write_run(tmp_path / "b", {"I_post": rng.normal(size=8), "Urel": rng.random(8)})
    out = tmp_path / "agree"
    assert main(["heads", "agree", str(a), str(b), "--out", str(out), "--top-k", "2"]) == 0
    printed = capsys.readouterr().out
    assert "agreement of 2 runs" in printed and "I_post" in printed and "Urel" in printed
    summary = pd.read_csv(out / "agreement.csv")
    assert list(summary["quantity"]) == ["I_post", "Urel"] and (summary["k"] == 2).all()
    assert len(pd.read_csv(out / "agreement_pairs.csv")) == 2
    saved = json.loads((out / "agreement.json").read_text())
    assert saved["runs"] == [str(a), str(b)] and saved["top_k"] == 2
    assert json.loads((out / "run_record.json").read_text())["status"] == "success"

    big = HeadLayout(num_layers=3, num_heads=4, num_kv_heads=2, head_dim=8)
    c = _write_run(tmp_path / "c", {"I_post": rng.normal(size=12), "Urel": rng.random(12)}, big)
    assert main(["heads", "agree", str(a), str(c), "--out", str(tmp_path / "x")]) == 2
    _one_line_error(capsys, "mismatched head sets: " + f"{c} has 12 heads (3 layers x 4 heads) but {a} has 8")
    assert not (tmp_path / "x").exists()
    for argv, words in (
        ([str(a)], "at least 2 run folders"),
        ([str(a), str(a)], "given twice"),
        ([str(a), str(tmp_path)], "has no heads.csv"),
        ([str(a), str(b), "--top-k", "9"], "1 to 8"),
        ([str(a), str(b), "--quantities", "Urel,U"], "'U' is not a numeric column"),
    ):
        assert main(["heads", "agree", *argv, "--out", str(tmp_path / "y")]) == 2
        _one_line_error(capsys, words)


def test_agree_on_runs_written_by_the_heads_command(pair, capsys):
    """Two real runs of the command (two evaluation subsets of one θ0/θ1 pair) compared end to end."""
    runs = []
    for seed in (1, 2):
        out = pair["tmp"] / f"run-{seed}"
        flags = (
            "--finetuned",
            pair["theta1"],
            "--subset-seed",
            str(seed),
            "--max-examples",
            "5",
            "--no-figures",
        )
        assert _heads(pair, out, *flags) == 0
        runs.append(str(out))
    capsys.readouterr()
    out = pair["tmp"] / "agree"
    assert main(["heads", "agree", *runs, "--out", str(out), "--quantities", "I_pre,G_pre,U,Uq"]) == 0
    summary = pd.read_csv(out / "agreement.csv").set_index("quantity")
    # updates do not depend on the evaluation examples: identical in both runs, ρ = 1
    assert summary.loc["U", "identical"] and summary.loc["U", "mean_spearman"] == pytest.approx(1.0)
    assert summary.loc["Uq", "identical"]
    assert not summary.loc["I_pre", "identical"]  # other examples, other importances
    assert "(identical in every run)" in capsys.readouterr().out


def test_agreement_table_reads_the_experiment_json():
    saved = {
        "Urel": {"n_seeds": 3, "mean_spearman": 0.4, "min_spearman": 0.1, "mean_topk_overlap": 1.0,
                 "topk_chance": 0.5, "k": 1},
        "I_pre (θ0, for reference)": {"note": "one θ0, no seeds", "n_heads": 8},
    }  # fmt: skip
    table = agreement_table(saved)
    assert list(table.index) == ["Urel"] and table.loc["Urel", "mean_spearman"] == 0.4
    assert list(table.columns) == [
        "n_seeds",
        "mean_spearman",
        "min_spearman",
        "mean_topk_overlap",
        "topk_chance",
    ]


def test_experiment_top_k_is_checked_before_fine_tuning(tmp_path):
    from qwen_anatomy.heads.experiment import HeadsExperiment, run

    with pytest.raises(UserInputError, match="top_k 999: .* from 1 to 8"):
        run(HeadsExperiment(top_k=999), tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
