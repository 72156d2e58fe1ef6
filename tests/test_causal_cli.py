"""`qwen-anatomy causal ...`: bad input fails before training with one clear line; a tiny round trip."""

from __future__ import annotations

import json

import pytest
import torch

from qwen_anatomy.cli import main

torch.set_num_threads(1)


def _run(capsys, argv):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--alpha", "1.5"], "alpha=1.5 must lie in [0, 1]"),
        (["--alpha", "-0.5"], "alpha=-0.5 must lie in [0, 1]"),
        (["--threshold", "inf"], "threshold=inf must be a finite number"),
        (["--threshold", "nan"], "threshold=nan must be a finite number"),
        (["--causal-dim", "32"], "causal_dim=32 differs from the hidden size 64"),
    ],
)
def test_bad_train_input_exits_2_with_one_line(capsys, tmp_path, extra, words):
    out = tmp_path / "heads"
    code, _, err = _run(capsys, ["causal", "train", "--out", str(out), "--steps", "1", *extra])
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("qwen-anatomy causal: error:")
    assert words in err
    assert not out.exists()  # nothing was written: the check ran before any training


def test_empty_dataset_is_refused_before_training(capsys, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    out = tmp_path / "heads"
    code, _, err = _run(capsys, ["causal", "train", "--out", str(out), "--train-file", str(empty)])
    assert code == 2 and err.count("\n") == 1
    assert "is empty" in err and str(empty) in err
    assert not out.exists()


def test_empty_dataset_in_library_call():
    from qwen_anatomy.causal.data import make_texts
    from qwen_anatomy.causal.train import evaluate, train
    from qwen_anatomy.errors import UserInputError

    with pytest.raises(UserInputError, match="training set is empty"):
        train(None, None, [], steps=1)
    with pytest.raises(UserInputError, match="evaluation set is empty"):
        evaluate(None, None, [])
    with pytest.raises(UserInputError, match="at least one text"):
        make_texts("train", 0, 0)


def test_bad_suite_and_mode(capsys, tmp_path):
    code, _, err = _run(capsys, ["causal", "suite", "--suite", "everything", "--out-root", str(tmp_path)])
    assert code == 2 and "suite 'everything'" in err and err.count("\n") == 1
    code, _, err = _run(
        capsys, ["causal", "generate", "--heads", str(tmp_path), "--prompt", "x", "--mode", "dream"]
    )
    assert code == 2 and "--mode 'dream'" in err
    code, _, err = _run(capsys, ["causal", "eval", "--heads", str(tmp_path), "--sets", "basic,nope"])
    assert code == 2 and "--sets 'basic,nope'" in err
    code, _, err = _run(capsys, ["causal", "eval", "--heads", str(tmp_path)])
    assert code == 2 and "no causal_config.json" in err


def test_train_eval_generate_round_trip(capsys, tmp_path):
    out = tmp_path / "heads"
    code, stdout, err = _run(
        capsys,
        ["causal", "train", "--out", str(out), "--steps", "3", "--batch-size", "4", "--n-train", "20"],
    )
    assert code == 0, err
    record = json.loads((out / "run_record.json").read_text())
    assert record["status"] == "success" and "train" in record["stages"]
    log = json.loads((out / "training_log.json").read_text())
    assert [row["step"] for row in log] == [0, 3]
    code, _, err = _run(capsys, ["causal", "train", "--out", str(out), "--steps", "1"])
    assert code == 2 and "already exists" in err  # never overwrites
    metrics = tmp_path / "metrics.json"
    code, stdout, err = _run(
        capsys,
        ["causal", "eval", "--heads", str(out), "--sets", "qa", "--n-eval", "4", "--out", str(metrics)],
    )
    assert code == 0, err
    assert "<NUM> F1" in stdout
    saved = json.loads(metrics.read_text())
    assert set(saved) == {"qa"} and 0.0 <= saved["qa"]["num_f1"] <= 1.0
    code, stdout, err = _run(
        capsys,
        [
            "causal",
            "generate",
            "--heads",
            str(out),
            "--prompt",
            "The price of the apple is",
            "--max-new-tokens",
            "3",
            "--mode",
            "shared",
        ],
    )
    assert code == 0, err
    assert stdout.startswith("The price of the apple is")


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--set", "lambdas"], "write KEY=VALUE"),
        (["--set", "lambdas=[1, oops]"], "is not JSON"),
        (["--set", "lambdas=[]"], "lambdas=[] must be a non-empty list"),
        (["--lr-pretrained", "0"], "lr_pretrained=0"),
    ],
)
def test_bad_suite_settings_exit_2_before_any_model_loads(capsys, tmp_path, extra, words):
    code, _, err = _run(
        capsys, ["causal", "suite", "--suite", "basic", "--out-root", str(tmp_path), "--steps", "1", *extra]
    )
    assert code == 2 and err.count("\n") == 1
    assert words in err
    assert not any(tmp_path.iterdir())


def test_pretrained_head_matrices_learn_at_their_own_rate():
    """lr_pretrained moves the identity abduction and the copied head slowly; <NUM>'s row at lr."""
    from qwen_anatomy.causal.data import make_texts
    from qwen_anatomy.causal.model import CausalQwen
    from qwen_anatomy.causal.numtok import NumberTokenizer
    from qwen_anatomy.causal.train import train
    from qwen_anatomy.loading import load_model

    base, tok = load_model("causal-tiny-lm")
    nt = NumberTokenizer(tok)
    texts = make_texts("train", 16, 0)
    moved = {}
    for lrp in (1e-2, 1e-5):
        model = CausalQwen.from_base(base, nt.num_token_id)
        before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        train(model, nt, texts, steps=1, batch_size=8, lr=1e-2, lr_pretrained=lrp, log_every=1)
        after = dict(model.named_parameters())
        moved[lrp] = {n: float((after[n].detach() - b).abs().max()) for n, b in before.items()}
    # Adam's first step moves every entry with a gradient by about the learning rate
    for name in ("abduction_loc.weight", "class_head.weight"):
        assert moved[1e-2][name] == pytest.approx(1e-2, rel=0.05)
        assert moved[1e-5][name] == pytest.approx(1e-5, rel=0.05)
    for name in ("num_class_row", "abduction_scale.bias", "class_head.bias", "reg_head.weight"):
        assert moved[1e-5][name] == pytest.approx(1e-2, rel=0.05), name


def test_per_parameter_clipping_keeps_small_gradients_alive():
    """One exploding gradient (the OvR scale as it collapses) must not silence the others."""
    from qwen_anatomy.causal.train import clip_gradients

    def params():
        big, small = torch.nn.Parameter(torch.zeros(100)), torch.nn.Parameter(torch.zeros(10))
        big.grad, small.grad = torch.full((100,), 1e8), torch.full((10,), 1e-3)
        return big, small

    big, small = params()
    clip_gradients([big, small], "global")
    assert float(small.grad.abs().max()) < 1e-8 * 1e-3 * 10  # far below Adam's epsilon (1e-8)
    big, small = params()
    clip_gradients([big, small], "per_parameter")
    assert torch.equal(small.grad, torch.full((10,), 1e-3))  # under the limit: untouched
    assert float(big.grad.norm()) == pytest.approx(1.0, rel=1e-5)
