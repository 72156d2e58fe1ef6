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
    code, _, err = _run(
        capsys, ["causal", "generate", "--heads", str(tmp_path), "--prompt", "x", "--temperature", "0.7"]
    )
    assert code == 2 and "--temperature 0.7 applies to --mode compatible only" in err  # not ignored
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


# -- no silent flags (issue 14, point 5) ---------------------------------------------------------------
def _no_loading(monkeypatch):
    """Make any model loading fail loudly: the refusals below must come before it."""
    import qwen_anatomy.loading

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the flags were checked")

    monkeypatch.setattr(qwen_anatomy.loading, "load_model", refuse)
    monkeypatch.setattr(qwen_anatomy.loading, "resolve_model", refuse)


@pytest.mark.parametrize(
    "extra, flag",
    [
        (["--alpha", "0.5"], "--alpha 0.5"),
        (["--classifier", "ovr"], "--classifier ovr"),
        (["--distribution", "cauchy"], "--distribution cauchy"),
        (["--threshold", "10"], "--threshold 10"),  # the default value, but the baseline never reads it
        (["--threshold-mode", "per_class"], "--threshold-mode per_class"),
        (["--causal-dim", "32"], "--causal-dim 32"),
        (["--abduction-init", "random"], "--abduction-init random"),
    ],
)
def test_baseline_refuses_flags_it_does_not_read(capsys, tmp_path, monkeypatch, extra, flag):
    _no_loading(monkeypatch)
    out = tmp_path / "heads"
    code, _, err = _run(capsys, ["causal", "train", "--baseline", "--out", str(out), "--steps", "1", *extra])
    assert code == 2 and err.count("\n") == 1
    assert flag in err and "does not apply to --baseline" in err
    assert f"drop {extra[0]}" in err  # the fix
    assert not out.exists()


def test_baseline_names_every_refused_flag_at_once(capsys, tmp_path, monkeypatch):
    _no_loading(monkeypatch)
    argv = ["causal", "train", "--baseline", "--out", str(tmp_path / "h"), "--alpha", "0", "--threshold", "3"]
    code, _, err = _run(capsys, argv)
    assert (
        code == 2
        and err.count("\n") == 1
        and "do not apply to --baseline" in err
        and "drop --threshold and --alpha" in err
    )


@pytest.mark.parametrize(
    "extra, words",
    [
        (
            ["--threshold-mode", "perclass"],
            "threshold_mode='perclass': use one of ('scalar', 'per_class', 'learnable')",
        ),
        (
            ["--threshold-mode", "per_class", "--threshold", "5"],
            "--threshold 5 does not apply to --threshold-mode per_class",
        ),
        (["--baseline", "--threshold-mode", "nonsense"], "threshold_mode='nonsense': use one of"),
    ],
)
def test_threshold_flags_that_would_be_ignored_are_refused(capsys, tmp_path, monkeypatch, extra, words):
    _no_loading(monkeypatch)
    code, _, err = _run(capsys, ["causal", "train", "--out", str(tmp_path / "h"), *extra])
    assert code == 2 and err.count("\n") == 1 and words in err


def test_baseline_applies_the_flags_it_reads_and_records_what_it_used(capsys, tmp_path):
    out = tmp_path / "heads"
    argv = [
        "causal",
        "train",
        "--baseline",
        "--out",
        str(out),
        "--steps",
        "1",
        "--batch-size",
        "4",
        "--n-train",
        "8",
    ]
    # values the baseline always uses are accepted (they change nothing), as are --gamma0 and --lam
    argv += ["--gamma0", "3", "--lam", "2", "--alpha", "1", "--classifier", "softmax"]
    code, _, err = _run(capsys, argv)
    assert code == 0, err
    params = json.loads((out / "run_record.json").read_text())["parameters"]
    used = params["model_config"]
    assert used["gamma0"] == 3.0 and used["lam"] == 2.0 and used["classifier"] == "softmax"
    assert used["distribution"] == "normal" and used["alpha"] == 1.0
    assert not {"threshold", "threshold_mode", "causal_dim", "abduction_init", "b_noise"} & set(used)
    assert "threshold" not in params and "causal_dim" not in params  # not given: not recorded as given
    from safetensors.torch import load_file

    # the regression head's sigma starts at softplus(bias) = gamma0 (the flag reached the model)
    bias = load_file(str(out / "heads.safetensors"))["reg_head.bias"]
    assert float(torch.nn.functional.softplus(bias[1])) == pytest.approx(3.0, abs=0.05)  # one step of 1e-2


def test_per_class_heads_train_save_and_evaluate(capsys, tmp_path):
    out = tmp_path / "heads"
    argv = ["causal", "train", "--out", str(out), "--steps", "1", "--batch-size", "4", "--n-train", "8"]
    code, _, err = _run(capsys, [*argv, "--threshold-mode", "per_class"])
    assert code == 0, err
    from safetensors.torch import load_file

    c = load_file(str(out / "heads.safetensors"))["threshold"]
    assert c.ndim == 1 and c.unique().numel() > 10 and torch.isfinite(c).all()
    used = json.loads((out / "run_record.json").read_text())["parameters"]["model_config"]
    assert used["threshold_mode"] == "per_class" and "threshold" not in used
    from qwen_anatomy.commands.causal import load_heads

    model, _ = load_heads(out)
    assert model.threshold_measured and torch.equal(model.threshold, c)
    code, stdout, err = _run(capsys, ["causal", "eval", "--heads", str(out), "--sets", "qa", "--n-eval", "4"])
    assert code == 0, err
    assert "<NUM> F1" in stdout


def test_train_seed_sets_data_order_and_head_initialisation(capsys, tmp_path, monkeypatch):
    import qwen_anatomy.causal.model as causal_model

    initial = []

    class Recording(causal_model.CausalQwen):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            initial.append(
                {k: v.detach().clone() for k, v in self.state_dict().items() if "backbone" not in k}
            )

    monkeypatch.setattr(causal_model, "CausalQwen", Recording)
    runs = []
    for i, seed in enumerate((1, 2, 1)):
        out = tmp_path / f"heads{i}"
        argv = ["causal", "train", "--out", str(out), "--steps", "1", "--batch-size", "4", "--n-train", "8"]
        code, _, err = _run(capsys, [*argv, "--seed", str(seed)])
        assert code == 0, err
        runs.append(json.loads((out / "training_log.json").read_text()))
    a, b, again = initial
    for name in ("num_direction", "reg_head.weight"):
        assert not torch.equal(a[name], b[name]), name  # another seed, another initialisation
    assert a.keys() == again.keys() and all(torch.equal(a[k], again[k]) for k in a)
    assert runs[0][0]["loss"] != runs[1][0]["loss"]  # other batches (and heads) at step 0
    assert [r["loss"] for r in runs[0]] == [r["loss"] for r in runs[2]]  # same seed, same losses
    assert (tmp_path / "heads0" / "heads.safetensors").read_bytes() == (
        tmp_path / "heads2" / "heads.safetensors"
    ).read_bytes()
