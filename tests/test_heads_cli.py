"""Part IV command line: bad inputs give one line and exit 2; a tiny run writes every output."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from qwen_anatomy.cli import main
from qwen_anatomy.config import tiny_config
from qwen_anatomy.loading import save_checkpoint
from qwen_anatomy.model import Qwen2ForCausalLM
from qwen_anatomy.tasks.vocab import VOCAB_SIZE

torch.set_num_threads(1)

TASK_LINES = [
    "-8 5 3 -1 -1 7 -8 4 -6 -8 # 0 5 8 7 6 13 5 9 3 0",
    "1 2 3 4 5 -9 -9 0 0 1 # 1 3 6 10 15 6 0 0 0 1",
    "-1 -2 -3 4 4 4 -9 9 1 0 # 0 0 0 4 8 12 3 12 13 13",
    "9 9 9 -9 -9 -9 1 1 1 1 # 9 18 27 18 9 0 1 2 3 4",
]


@pytest.fixture
def checkpoints(tmp_path):
    cfg = tiny_config(
        vocab_size=VOCAB_SIZE, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2
    )
    m0 = Qwen2ForCausalLM(cfg).init_weights(0, std=0.2)
    m1 = Qwen2ForCausalLM(cfg).init_weights(0, std=0.2)
    with torch.no_grad():
        g = torch.Generator().manual_seed(1)
        for p in m1.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.02)
    other = Qwen2ForCausalLM(cfg.replace(hidden_size=48)).init_weights(0)
    data = tmp_path / "data.test"
    data.write_text("\n".join(TASK_LINES) + "\n")
    return {
        "theta0": str(save_checkpoint(m0, tmp_path / "theta0")),
        "theta1": str(save_checkpoint(m1, tmp_path / "theta1")),
        "other": str(save_checkpoint(other, tmp_path / "other")),
        "data": str(data),
        "tmp": tmp_path,
    }


def _one_line_error(capsys, must_contain: str) -> None:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "error" in lines[0] and must_contain in lines[0], lines[0]
    assert "Traceback" not in err


def test_missing_data_file(checkpoints, capsys):
    code = main(
        [
            "heads",
            checkpoints["theta0"],
            "--data",
            str(checkpoints["tmp"] / "nope.txt"),
            "--out",
            str(checkpoints["tmp"] / "out"),
        ]
    )
    assert code == 2
    _one_line_error(capsys, "nope.txt")
    assert not (checkpoints["tmp"] / "out").exists()


def test_checkpoints_of_different_shapes(checkpoints, capsys):
    code = main(
        [
            "heads",
            checkpoints["theta0"],
            "--data",
            checkpoints["data"],
            "--finetuned",
            checkpoints["other"],
            "--out",
            str(checkpoints["tmp"] / "out"),
        ]
    )
    assert code == 2
    _one_line_error(capsys, "different shapes")


@pytest.mark.parametrize("bad", ["0", "-3"])
def test_non_positive_max_examples(checkpoints, capsys, bad):
    with pytest.raises(SystemExit) as exc:
        main(
            [
                "heads",
                checkpoints["theta0"],
                "--data",
                checkpoints["data"],
                "--out",
                str(checkpoints["tmp"] / "out"),
                "--max-examples",
                bad,
            ]
        )
    assert exc.value.code == 2
    _one_line_error(capsys, "--max-examples")


def test_existing_output_is_not_overwritten(checkpoints, capsys):
    out = checkpoints["tmp"] / "out"
    out.mkdir()
    (out / "heads.csv").write_text("earlier results\n")
    code = main(["heads", checkpoints["theta0"], "--data", checkpoints["data"], "--out", str(out)])
    assert code == 2
    _one_line_error(capsys, "already exists")
    assert (out / "heads.csv").read_text() == "earlier results\n"


def test_text_data_without_tokenizer(checkpoints, capsys):
    text = checkpoints["tmp"] / "text.txt"
    text.write_text("Some plain English text.\n")
    code = main(["heads", checkpoints["theta0"], "--data", str(text), "--out", str(checkpoints["tmp"] / "o")])
    assert code == 2
    _one_line_error(capsys, "no tokenizer")


def test_full_run_writes_every_output(checkpoints, capsys):
    out = checkpoints["tmp"] / "run"
    code = main(
        [
            "heads",
            checkpoints["theta0"],
            "--data",
            checkpoints["data"],
            "--finetuned",
            checkpoints["theta1"],
            "--out",
            str(out),
            "--ablation",
            "mean",
            "--bootstrap",
            "20",
            "--permutations",
            "50",
            "--batch-size",
            "3",
            "--replicas",
            "3",
        ]
    )
    assert code == 0, capsys.readouterr().err
    heads = pd.read_csv(out / "heads.csv")
    assert len(heads) == 2 * 4
    for col in (
        "layer",
        "head",
        "kv_group",
        "I_pre",
        "I_post",
        "G_pre",
        "F_pre",
        "Ppred_pre",
        "snr_pre",
        "neg_Eg_pre",
        "norm_pre",
        "U",
        "Urel",
        "U_QO",
        "Urel_QO",
        "Uq",
        "Uk",
        "Uv",
        "Uo",
    ):
        assert col in heads, col
    # U² = Uq² + Uk² + Uv² + Uo² (K and V apportioned over each group's query heads); CSV round trip
    parts = heads["Uq"] ** 2 + heads["Uk"] ** 2 + heads["Uv"] ** 2 + heads["Uo"] ** 2
    assert ((parts - heads["U"] ** 2).abs() <= 1e-9 * heads["U"] ** 2).all()
    assert heads["I_pre"].abs().min() > 0 and heads["U"].min() > 0
    assert (heads["Ppred_pre"] <= 1 + 1e-9).all()
    groups = pd.read_csv(out / "groups.csv")
    assert len(groups) == 2 * 2 and {"I_group_pre", "U_KV", "U_K", "U_V"} <= set(groups)
    assert json.loads((out / "subset_indices.json").read_text())["indices"] == list(range(len(TASK_LINES)))
    stats = json.loads((out / "stats.json").read_text())
    assert stats["ablation"] == "mean" and stats["n_examples"] == len(TASK_LINES)
    assert {"pairs", "proxy_validity", "counterexamples", "split"} <= set(stats)
    assert json.loads((out / "cases.json").read_text())
    record = json.loads((out / "run_record.json").read_text())
    assert record["status"] == "success" and record["parameters"]["ablation"] == "mean"
    for fig in ("importance_vs_update", "importance_vs_gradient", "heatmaps", "statistics", "proxy_validity"):
        assert (out / f"{fig}.png").stat().st_size > 1000
