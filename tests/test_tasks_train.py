"""Part III training: tiny runs through the Trainer, checkpoints both loaders read, tokenizer, collation."""

from __future__ import annotations

import json

import pytest
import torch

from qwen_anatomy.tasks import vocab
from qwen_anatomy.tasks.data import IGNORE, collate_decoder, decoder_example
from qwen_anatomy.tasks.train import load_config, train
from tolerance import assert_close_scaled

torch.set_num_threads(1)

TINY = [
    "task.n=5",
    "task.train_samples=512",
    "task.test_samples=40",
    "model.hidden_size=32",
    "model.intermediate_size=64",
    "model.num_hidden_layers=2",
    "model.num_attention_heads=4",
    "model.num_key_value_heads=2",
    "training.batch_size=64",
    "training.max_steps=6",
    "training.eval_every=3",
    "training.eval_subset=20",
    "training.logging_steps=2",
    "evaluation.show=3",
]


def test_tokenizer_one_token_per_integer(tmp_path):
    from qwen_anatomy.tokenizer import Tokenizer

    vocab.save_tokenizer(tmp_path)
    tok = Tokenizer(tmp_path)
    assert tok.vocab_size == vocab.VOCAB_SIZE
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (
        vocab.BOS_ID,
        vocab.EOS_ID,
        vocab.PAD_ID,
    )
    ids = tok.encode("<bos> -8 5 300 # 0 13 <eos>")
    assert ids == [
        vocab.BOS_ID,
        *vocab.encode_ints([-8, 5, 300]),
        vocab.SEP_ID,
        *vocab.encode_ints([0, 13]),
        vocab.EOS_ID,
    ]
    assert tok.decode(ids) == "-8 5 300 # 0 13"
    assert [vocab.id_to_int(vocab.int_to_id(k)) for k in (vocab.INT_MIN, 0, vocab.INT_MAX)] == [
        vocab.INT_MIN,
        0,
        vocab.INT_MAX,
    ]
    assert tok.tokens("999")[0] == vocab.UNK  # outside the vocabulary


def test_decoder_example_masks_the_input_part():
    ex = decoder_example([-8, 5, 3], [0, 5, 8])
    assert len(ex["input_ids"]) == len(ex["labels"]) == 3 + 3 + 3  # <bos> x # y <eos>
    assert ex["labels"][:5] == [IGNORE] * 5
    assert ex["labels"][5:] == ex["input_ids"][5:]
    assert ex["input_ids"][-1] == vocab.EOS_ID
    batch = collate_decoder([ex, decoder_example([1], [1])])
    assert batch["input_ids"].shape == (2, 9)
    assert batch["attention_mask"][1].tolist() == [1] * 5 + [0] * 4
    assert (batch["labels"][1, 5:] == IGNORE).all()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("tasks-train")
    config = load_config("configs/relu.yaml", [*TINY, f"task.data_root={root / 'data'}"])
    result = train(config, root / "ckpt")
    return root, result


def test_tiny_training_writes_checkpoint_and_metrics(tiny_run):
    root, result = tiny_run
    ckpt = root / "ckpt"
    for name in (
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "curves.json",
        "evaluation.json",
        "run_record.json",
        "train_config.yaml",
    ):
        assert (ckpt / name).is_file(), name
    assert not (ckpt / ".trainer").exists()
    record = json.loads((ckpt / "run_record.json").read_text())
    assert record["status"] == "success"
    assert result["steps"] == 6
    assert len(result["per_position_accuracy"]) == 5
    assert 0.0 <= result["exact_match"] <= 1.0
    assert result["train_test_overlap"] == 0
    curves = json.loads((ckpt / "curves.json").read_text())
    assert [c["step"] for c in curves["exact_match"]] == [3, 6]
    assert len(curves["loss"]) == 3 and curves["loss"][0]["loss"] > 0
    assert len(result["samples"]) == 3 and len(result["samples"][0]["prediction"]) == 6


def test_refuses_to_overwrite(tiny_run):
    from qwen_anatomy.errors import UserInputError

    root, _ = tiny_run
    config = load_config("configs/relu.yaml", TINY)
    with pytest.raises(UserInputError, match="already exists"):
        train(config, root / "ckpt")


def test_checkpoint_same_greedy_outputs_with_both_loaders(tiny_run):
    from transformers import Qwen2ForCausalLM as HFQwen2

    from qwen_anatomy.loading import load_model
    from qwen_anatomy.tasks.evaluate import greedy_outputs
    from qwen_anatomy.tasks.generators import read_task_file

    root, result = tiny_run
    ours, tok = load_model(root / "ckpt")
    assert tok is not None and tok.eos_token_id == vocab.EOS_ID
    theirs = HFQwen2.from_pretrained(root / "ckpt", attn_implementation="eager").eval()
    xs, _ = read_task_file(root / "data" / "relu" / "n=5" / "data.test", 40)
    ids = torch.tensor([[vocab.BOS_ID, *vocab.encode_ints(x), vocab.SEP_ID] for x in xs])
    with torch.no_grad():
        # fp32, same weights, same maths: differences are float rounding only
        # fp32, the same model in two implementations: summation order differs (tests/tolerance.py)
        assert_close_scaled(ours(ids).logits, theirs(input_ids=ids).logits)
        assert greedy_outputs(ours, xs) == greedy_outputs(theirs, xs)


def test_evaluate_cli_rescores(tiny_run, capsys):
    from qwen_anatomy.cli import main

    root, result = tiny_run
    data = root / "data" / "relu" / "n=5" / "data.test"
    assert main(["evaluate", str(root / "ckpt"), "--data", str(data), "--max-examples", "40", "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["num_examples"] == result["num_examples"] == 40
    assert again["exact_match"] == result["exact_match"]
    assert again["per_position_accuracy"] == result["per_position_accuracy"]


def test_training_keeps_every_generation_and_evaluate_can_save_them(tiny_run, capsys):
    from clicheck import one_line_error
    from qwen_anatomy.cli import main
    from qwen_anatomy.tasks.evaluate import load_generations

    root, result = tiny_run
    rows = load_generations(root / "ckpt")  # written by train() beside evaluation.json
    assert len(rows) == result["num_examples"] == 40
    assert [r["prediction"] for r in rows[:3]] == [s["prediction"] for s in result["samples"]]
    assert sum(r["exact"] for r in rows) / 40 == result["exact_match"]
    data = root / "data" / "relu" / "n=5" / "data.test"
    out = root / "again.jsonl.gz"
    argv = [
        "evaluate",
        str(root / "ckpt"),
        "--data",
        str(data),
        "--max-examples",
        "40",
        "--save-generations",
        str(out),
    ]
    assert main(argv) == 0
    assert load_generations(out) == rows
    capsys.readouterr()
    one_line_error(capsys, argv, "already exists")  # never overwritten
    with pytest.raises(FileNotFoundError, match="kept no generations"):
        load_generations(root / "missing-run")


def test_fine_tune_from_checkpoint_on_inverse(tiny_run):
    root, _ = tiny_run
    config = load_config(
        "configs/relu_inverse.yaml",
        [*TINY, "training.max_steps=3", f"task.data_root={root / 'data'}", "model.hidden_size=64"],
    )
    result = train(config, root / "ft", init_from=root / "ckpt")
    assert result["order"] == "inverse" and result["steps"] == 3
    saved = json.loads((root / "ft" / "config.json").read_text())
    assert saved["hidden_size"] == 32  # the architecture of init_from wins over the config's
    assert (root / "data" / "relu" / "n=5" / "data-inv.test").is_file()


def test_score_counts_exact_and_positions():
    from qwen_anatomy.tasks.evaluate import score

    ys = [[1, 2, 3], [4, 5, 6]]
    xs = [[0, 0, 0], [0, 0, 0]]
    right = vocab.encode_ints([1, 2, 3]) + [vocab.EOS_ID]
    wrong_last = vocab.encode_ints([4, 5, 7]) + [vocab.EOS_ID]
    s = score([right, wrong_last], xs, ys, show=2)
    assert s["exact_match"] == 0.5
    assert s["per_position_accuracy"] == [1.0, 1.0, 0.5]
    assert s["eos_accuracy"] == 1.0
    assert s["samples"][1]["prediction"] == [4, 5, 7, "<eos>"]


def test_bart_model_type_trains_and_scores(tiny_run):
    root, _ = tiny_run
    config = load_config(
        "configs/bart_relu.yaml",
        [
            "task.n=5",
            f"task.data_root={root / 'data'}",
            "task.test_samples=20",
            "model.d_model=32",
            "model.encoder_ffn_dim=64",
            "model.decoder_ffn_dim=64",
            "training.eval_subset=10",
            "training.logging_steps=4",
        ],
    )
    result = train(config, root / "bart", dryrun=True)
    saved = json.loads((root / "bart" / "config.json").read_text())
    assert saved["model_type"] == "bart"
    assert saved["forced_eos_token_id"] is None  # the original's trap: a forced wrong last token
    assert result["steps"] == 8  # dryrun: 1 epoch of 1,000 samples in batches of 128
    assert result["num_examples"] == 20
    assert len(result["samples"][0]["prediction"]) == 6  # capped at n + 1 tokens


def test_same_config_same_weights_and_stop_after_steps(tiny_run):
    from safetensors.torch import load_file

    root, result = tiny_run
    # the fixture's run again (one thread, fixed seed): identical weights
    config = load_config("configs/relu.yaml", [*TINY, f"task.data_root={root / 'data'}"])
    again = train(config, root / "again", verbose=False)
    first, second = (
        load_file(root / "ckpt" / "model.safetensors"),
        load_file(root / "again" / "model.safetensors"),
    )
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert again["exact_match"] == result["exact_match"]
    # stop_after_steps stops early but keeps the schedule planned for max_steps (linear decay to 0 at 6)
    config = load_config(
        "configs/relu.yaml", [*TINY, f"task.data_root={root / 'data'}", "training.stop_after_steps=4"]
    )
    stopped = train(config, root / "stopped", verbose=False)
    assert stopped["steps"] == 4 and stopped["planned_steps"] == 6
    curves = json.loads((root / "stopped" / "curves.json").read_text())
    full = json.loads((root / "ckpt" / "curves.json").read_text())
    assert curves["loss"] == full["loss"][: len(curves["loss"])]


@pytest.mark.parametrize("name, task", [("relu-n10-forward", "relu"), ("square-n10-forward", "square")])
def test_shipped_checkpoints_agree_with_transformers(tmp_path, name, task):
    from transformers import Qwen2ForCausalLM as HFQwen2

    from qwen_anatomy.loading import SHIPPED_MODELS, load_model
    from qwen_anatomy.tasks.evaluate import evaluate, greedy_outputs
    from qwen_anatomy.tasks.generators import TaskSpec, generate_task, read_task_file

    generate_task(
        TaskSpec(task, 10), tmp_path, train_samples=1, test_samples=100, progress=False, inverse=False
    )
    test_file = tmp_path / task / "n=10" / "data.test"
    xs, _ = read_task_file(test_file)
    ours, tok = load_model(name)
    assert tok.vocab_size == vocab.VOCAB_SIZE
    theirs = HFQwen2.from_pretrained(SHIPPED_MODELS / name).eval()
    with torch.no_grad():
        assert greedy_outputs(ours, xs) == greedy_outputs(theirs, xs)
    # the README's metrics: re-scoring reproduces the recorded evaluation on the same samples
    recorded = json.loads((SHIPPED_MODELS / name / "evaluation.json").read_text())
    again = evaluate(name, test_file)
    first = [s["prediction"] for s in recorded["samples"]]
    assert [s["prediction"] for s in again["samples"]] == first[: len(again["samples"])]
    if recorded["exact_match"] == 1.0:
        assert again["exact_match"] == 1.0
