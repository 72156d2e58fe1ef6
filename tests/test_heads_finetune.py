"""θ1 of chapter 40's real pair: fine-tuning a checkpoint on the standard-library documentation
(qwen_anatomy.heads.finetune), at tiny scale on the shipped tiny backbone."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from qwen_anatomy.errors import UserInputError
from qwen_anatomy.heads.finetune import FinetuneConfig, finetune, pack_blocks, split_documents
from qwen_anatomy.loading import load_model
from qwen_anatomy.paths import REPO_ROOT

TINY = str(REPO_ROOT / "data" / "models" / "causal-tiny-lm")
SMALL = dict(model=TINY, steps=4, batch_size=4, block_tokens=32, train_chars=20_000, heldout_chars=5_000)


def _run(tmp_path, name, **kw):
    cfg = FinetuneConfig(**{**SMALL, "eval_every": 2, "eval_blocks": 8, **kw})
    return finetune(cfg, tmp_path / name, progress=False), tmp_path / name


def test_finetune_writes_a_loadable_theta1_that_moved(tmp_path):
    summary, out = _run(tmp_path, "a", learning_rate=1e-3)
    for name in ("finetune.json", "curves.json", "heldout.txt", "run_record.json", "model/model.safetensors"):
        assert (out / name).is_file(), name
    assert not (out / ".trainer").exists()
    theta0, _ = load_model(TINY)
    theta1, tok = load_model(out / "model")
    assert tok is not None
    moved = [n for n, p in theta1.state_dict().items() if not torch.equal(p, theta0.state_dict()[n])]
    assert any("self_attn.o_proj" in n for n in moved)
    record = json.loads((out / "run_record.json").read_text())
    assert record["status"] == "success" and {"train", "heldout_before", "save"} <= set(record["stages"])
    curves = json.loads((out / "curves.json").read_text())
    held = [c for c in curves if "heldout_loss" in c]
    assert [c["step"] for c in held] == [0, 2, 4]
    assert held[0]["heldout_loss"] == pytest.approx(summary["heldout_loss_before"])
    assert held[-1]["heldout_loss"] == pytest.approx(summary["heldout_loss_after"])
    assert (
        summary["heldout_loss_after"] < summary["heldout_loss_before"]
    )  # 4 steps at lr 1e-3 on 1/4 of a nat-scale gap


def test_seed_changes_the_data_order_only(tmp_path):
    """Same seed: identical θ1 (CPU, one thread). Another seed: another θ1 from the same θ0 and data."""
    torch.set_num_threads(1)
    _, a = _run(tmp_path, "a")
    _, b = _run(tmp_path, "b")
    _, c = _run(tmp_path, "c", seed=1)
    wa, wb, wc = (load_file(str(d / "model" / "model.safetensors")) for d in (a, b, c))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert any(not torch.equal(wa[k], wc[k]) for k in wa)
    assert (a / "heldout.txt").read_text() == (c / "heldout.txt").read_text()


def test_heldout_documents_are_disjoint_from_training():
    train, heldout, info = split_documents(20_000, 5_000, corpus_seed=0)
    assert train and heldout and not set(train) & set(heldout)
    assert all("\n" not in d for d in train + heldout)
    assert info["heldout_documents"] == len(heldout)


def test_pack_blocks_by_hand():
    class Tok:
        def encode(self, text, add_special_tokens=False):
            return [len(w) for w in text.split()]

    blocks = pack_blocks(["a bb ccc", "dddd"], Tok(), block_tokens=2, eos_id=0)
    assert blocks == [[1, 2], [3, 0], [4, 0]]
    assert pack_blocks(["a"], Tok(), block_tokens=3, eos_id=0) == []  # 2 ids < one block


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"steps": 0}, "--steps"),
        ({"learning_rate": 2.0}, "--learning-rate"),
        ({"warmup_ratio": 1.0}, "--warmup-ratio"),
        ({"train_chars": 10**9}, "--train-chars"),
        ({"model": "/no/such/model"}, "/no/such/model"),
    ],
)
def test_bad_input_fails_before_work(tmp_path, change, match):
    with pytest.raises(UserInputError, match=match):
        _run(tmp_path, "x", **change)
    assert not (tmp_path / "x").exists()


def test_refuses_an_existing_result(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "finetune.json").write_text("{}")
    with pytest.raises(UserInputError, match="already exists"):
        _run(tmp_path, "x")


def test_module_command(tmp_path, capsys):
    from qwen_anatomy.heads.finetune import main

    argv = [
        "--model",
        TINY,
        "--steps",
        "2",
        "--batch-size",
        "4",
        "--block-tokens",
        "32",
        "--train-chars",
        "20000",
    ]
    argv += ["--heldout-chars", "5000", "--eval-every", "1", "--eval-blocks", "4", "--no-progress"]
    assert main([*argv, "--out", str(tmp_path / "a")]) == 0
    assert "held-out loss" in capsys.readouterr().out and (tmp_path / "a" / "model" / "config.json").is_file()
    assert main([*argv, "--out", str(tmp_path / "b"), "--steps", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--steps" in err[0] and not (tmp_path / "b").exists()
