"""Loading checkpoints (checked copy, shards, refusals) and the Part I command line (info/generate/verify)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from clicheck import one_line_error
from qwen_anatomy.cli import main
from qwen_anatomy.config import tiny_config
from qwen_anatomy.loading import CheckpointError, ModelNotFound, load_model, resolve_model, save_checkpoint
from qwen_anatomy.model import Qwen2ForCausalLM

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
QA = str(ROOT / ".venv" / "bin" / "qwen-anatomy")


def write_word_tokenizer(folder: Path, words: list[str]) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {w: i for i, w in enumerate(["<unk>", "<eos>", *words])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = None
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<eos>", "pad_token": "<eos>"}))


@pytest.fixture()
def tiny_dir(tmp_path) -> Path:
    model = Qwen2ForCausalLM(tiny_config(vocab_size=40, eos_token_id=1)).init_weights(5, std=0.3)
    out = save_checkpoint(model, tmp_path / "tiny")
    write_word_tokenizer(out, [f"w{i}" for i in range(38)])
    return out


def test_roundtrip_is_exact(tiny_dir):
    model, tok = load_model(tiny_dir)
    again = Qwen2ForCausalLM(tiny_config(vocab_size=40, eos_token_id=1)).init_weights(5, std=0.3)
    ids = torch.tensor([[3, 4, 5, 6]])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, again(ids).logits)
    assert tok is not None and tok.encode("w1 w2") == [3, 4]


def test_tied_checkpoint_has_one_tensor(tmp_path):
    model = Qwen2ForCausalLM(tiny_config(tie_word_embeddings=True)).init_weights(0)
    out = save_checkpoint(model, tmp_path / "tied")
    loaded, _ = load_model(out)
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), "pt") as fh:
        assert "lm_head.weight" not in fh.keys()


def test_sharded_checkpoint_follows_the_index(tiny_dir, tmp_path):
    from safetensors.torch import load_file

    state = load_file(str(tiny_dir / "model.safetensors"))
    shard_dir = tmp_path / "sharded"
    shard_dir.mkdir()
    (shard_dir / "config.json").write_text((tiny_dir / "config.json").read_text())
    keys = sorted(state)
    halves = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
    weight_map = {}
    for name, ks in halves.items():
        save_file({k: state[k] for k in ks}, str(shard_dir / name))
        weight_map.update(dict.fromkeys(ks, name))
    (shard_dir / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    a, _ = load_model(tiny_dir)
    b, _ = load_model(shard_dir)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb)


def test_shape_mismatch_names_key_and_both_shapes(tiny_dir):
    cfg = json.loads((tiny_dir / "config.json").read_text())
    cfg["intermediate_size"] = 48
    (tiny_dir / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(
        CheckpointError,
        match=r"model\.layers\.0\.mlp\.(gate|up|down)_proj\.weight.*\(64, 32\).*\(48, 32\)|\(32, 64\).*\(32, 48\)",
    ):
        load_model(tiny_dir)


def test_unexpected_and_missing_keys_are_named(tiny_dir):
    from safetensors.torch import load_file

    state = load_file(str(tiny_dir / "model.safetensors"))
    state["model.layers.9.extra.weight"] = torch.zeros(2)
    save_file(state, str(tiny_dir / "model.safetensors"))
    with pytest.raises(CheckpointError, match="unexpected key 'model.layers.9.extra.weight'"):
        load_model(tiny_dir)
    del state["model.layers.9.extra.weight"], state["model.norm.weight"]
    save_file(state, str(tiny_dir / "model.safetensors"))
    with pytest.raises(CheckpointError, match="model.norm.weight"):
        load_model(tiny_dir)


def test_pickle_weights_refused_unless_weights_only(tiny_dir):
    from safetensors.torch import load_file

    state = load_file(str(tiny_dir / "model.safetensors"))
    (tiny_dir / "model.safetensors").unlink()
    torch.save(state, tiny_dir / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="pickle"):
        load_model(tiny_dir)
    model, _ = load_model(tiny_dir, weights_only_pickle=True)
    assert torch.equal(model.model.norm.weight, state["model.norm.weight"])


def test_truncated_safetensors_is_a_clear_error(tiny_dir):
    f = tiny_dir / "model.safetensors"
    f.write_bytes(f.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="model.safetensors is truncated"):
        load_model(tiny_dir)


def test_resolve_errors(tmp_path):
    with pytest.raises(ModelNotFound, match="does not exist"):
        resolve_model(str(tmp_path / "nope"))
    with pytest.raises(ModelNotFound, match="no config.json"):
        resolve_model(tmp_path)
    with pytest.raises(ModelNotFound, match="unknown model 'not-a-model'.*smollm2-135m"):
        resolve_model("not-a-model")


# -- command line ---------------------------------------------------------------------------------


def exits_2(capsys, argv) -> str:
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_cli_bad_inputs(capsys, tmp_path, tiny_dir):
    assert "does not exist" in one_line_error(capsys, ["info", str(tmp_path / "missing")])
    assert "no config.json" in one_line_error(capsys, ["info", str(tmp_path)])
    assert "unknown model" in one_line_error(capsys, ["info", "gpt-17"])
    assert "unknown model" in one_line_error(capsys, ["generate", "--model", "gpt-17", "--prompt", "hi"])
    assert "-3 must be >= 0" in exits_2(
        capsys, ["generate", "--model", str(tiny_dir), "--prompt", "w1", "--max-new-tokens", "-3"]
    )
    assert "give 0 (greedy) or a temperature in [0.001, 1000]" in exits_2(
        capsys, ["generate", "--model", str(tiny_dir), "--prompt", "w1", "--temperature", "-0.5"]
    )
    assert "must lie in (0, 1]" in exits_2(
        capsys, ["generate", "--model", str(tiny_dir), "--prompt", "w1", "--top-p", "2"]
    )
    assert "does not exist" in one_line_error(
        capsys, ["verify", str(tiny_dir), "--prompts", str(tmp_path / "none.txt")]
    )


def test_cli_info_counts(capsys, tiny_dir):
    assert main(["info", str(tiny_dir), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    model, _ = load_model(tiny_dir)
    counts = info["parameters"]
    assert counts["total"] == sum(p.numel() for p in model.parameters())
    assert counts["embedding"] == 2 * 40 * 32  # untied: embedding + head
    assert counts["non_embedding"] == counts["total"] - counts["embedding"]
    assert sum(counts["by_block"].values()) == counts["total"]


def test_cli_generate_streams_the_model_output(capsys, tiny_dir):
    assert main(["generate", "--model", str(tiny_dir), "--prompt", "w3 w4", "--max-new-tokens", "5"]) == 0
    out = capsys.readouterr().out.strip()
    model, tok = load_model(tiny_dir)
    from qwen_anatomy.generation import generate

    expected = tok.decode(generate(model, [tok.encode("w3 w4")], 5, eos_token_id=1)[0])
    assert out == expected.strip() and out


def test_console_script_runs_without_traceback(tmp_path):
    proc = subprocess.run([QA, "info", str(tmp_path / "x")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


# -- the real model (slow tier: about 2 minutes) --------------------------------------------------
@pytest.mark.slow
def test_smollm2_info_and_parameter_count(capsys):
    assert main(["info", "smollm2-135m", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["parameters"]["total"] == 134_515_008
    assert info["config"]["num_hidden_layers"] == 30 and info["config"]["attention_bias"] is False


@pytest.mark.slow
def test_smollm2_verify_against_llama(capsys):
    assert main(["verify", "smollm2-135m"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["transformers_class"] == "LlamaForCausalLM"
    assert report["prompts"] >= 5
    assert report["greedy_tokens_equal"] is True
    assert report["max_abs_logit_diff"] < 1e-3
    assert report["first_divergent_layer"] is None
    assert len(report["per_layer_max_abs_diff"]) == 30 + 3


@pytest.mark.slow
def test_smollm2_chat_answers_paris():
    proc = subprocess.run(
        [QA, "generate", "--model", "smollm2-135m", "--chat", "--prompt", "What is the capital of France?"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Paris" in proc.stdout


if __name__ == "__main__":
    sys.exit(pytest.main([__file__]))
