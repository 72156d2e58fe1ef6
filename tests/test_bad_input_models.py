"""The bad-input promise for checkpoints and the commands that take a model (README, "The command line").

Bad input gets ONE line on stderr, ``qwen-anatomy <command>: error: <message>``, naming the input;
exit code 2; no traceback; raised before long work; nothing written or overwritten. Each case below
builds one bad input in ``tmp_path`` (from a tiny random Qwen2 checkpoint, vocabulary 40, with a
word-level tokenizer) and returns the command line, the text the error line must name, and the
output whose bytes must not change. The CLI runs in-process (a subprocess costs seconds of imports);
two cases at the end go through the real console script.
"""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from qwen_anatomy.cli import main
from qwen_anatomy.config import tiny_config
from qwen_anatomy.loading import save_checkpoint
from qwen_anatomy.model import Qwen2ForCausalLM
from test_loading_cli import write_word_tokenizer

ROOT = Path(__file__).resolve().parents[1]
QA = str(ROOT / ".venv" / "bin" / "qwen-anatomy")
TASK_LINES = "1 2 3 # 1 3 6\n4 5 6 # 4 9 15\n"


@dataclass
class Expect:
    """What one case runs and what its one error line must show."""

    argv: list[str]
    names: str  # the bad input (a path or a flag value) as the error line must show it
    keep: Path | None = None  # an output (file or directory, existing or not) that must not change
    not_in: str | None = None  # text the line must not contain (a misleading old message)
    never_created: Path | None = None  # a file a malicious pickle would create if it ran


@dataclass
class Ctx:
    """A fresh copy of the tiny checkpoint (``ck``) in the case's own ``tmp``."""

    tmp: Path
    ck: Path
    extra: dict = field(default_factory=dict)

    def config(self, **changes) -> Path:
        cfg = json.loads((self.ck / "config.json").read_text())
        cfg.update(changes)
        (self.ck / "config.json").write_text(json.dumps(cfg))
        return self.ck / "config.json"

    def weights(self) -> Path:
        return self.ck / "model.safetensors"

    def to_pickle(self, state=None, name: str = "pytorch_model.bin") -> Path:
        """Replace model.safetensors by a torch pickle of ``state`` (default: the same tensors)."""
        state = load_file(str(self.weights())) if state is None else state
        self.weights().unlink()
        torch.save(state, self.ck / name)
        return self.ck / name

    def file(self, name: str, content: bytes | str) -> Path:
        path = self.tmp / name
        path.write_bytes(content.encode() if isinstance(content, str) else content)
        return path

    def task_data(self) -> Path:
        return self.file("data.test", TASK_LINES)

    def text_data(self) -> Path:
        return self.file("text.txt", "w1 w2 w3 w4 w5\nw6 w7 w8 w9\n")

    def bart(self, weights: str = "pickle") -> Path:
        """A BART directory of the task strand (config only, no transformers needed to write it)."""
        bart = self.tmp / "bart"
        bart.mkdir()
        cfg = {"model_type": "bart", "architectures": ["BartForConditionalGeneration"], "vocab_size": 517,
               "d_model": 16, "encoder_layers": 1, "decoder_layers": 1, "encoder_ffn_dim": 32,
               "decoder_ffn_dim": 32, "encoder_attention_heads": 1, "decoder_attention_heads": 1,
               "max_position_embeddings": 64}  # fmt: skip
        (bart / "config.json").write_text(json.dumps(cfg))
        if weights == "pickle":
            torch.save({"model.shared.weight": torch.zeros(517, 16)}, bart / "pytorch_model.bin")
        return bart


class Evil:
    """Unpickling this calls open(marker, "w"): a stand-in for code a hostile pickle would run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def raw_safetensors(path: Path, header: dict, data: bytes) -> Path:
    """A safetensors file with exactly this header (which may lie) and these data bytes."""
    blob = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + data)
    return path


def gguf_file(path: Path, arch: str = "qwen2", cut: int = 0) -> Path:
    """A one-tensor GGUF of ``arch`` written by the gguf package; ``cut`` bytes removed at the end."""
    import numpy as np
    from gguf import GGUFWriter

    writer = GGUFWriter(str(path), arch=arch)
    writer.add_block_count(1)
    writer.add_embedding_length(8)
    writer.add_head_count(2)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    if cut:
        path.write_bytes(path.read_bytes()[:-cut])
    return path


CASES: dict[str, Callable[[Ctx], Expect]] = {}


def case(fn: Callable[[Ctx], Expect]) -> Callable[[Ctx], Expect]:
    CASES[fn.__name__] = fn
    return fn


# -- config.json: wrong types and out-of-range values are refused with the file and field, never accepted
@case
def info_rope_theta_zero(t):
    return Expect(["info", str(t.ck)], str(t.config(rope_theta=0, rope_parameters=None)))


@case
def info_negative_rms_norm_eps(t):
    return Expect(["info", str(t.ck)], str(t.config(rms_norm_eps=-1)))


@case
def info_negative_max_position_embeddings(t):
    return Expect(["info", str(t.ck)], str(t.config(max_position_embeddings=-5)))


@case
def info_vocab_size_string(t):
    t.config(vocab_size="40")
    return Expect(["info", str(t.ck)], 'vocab_size="40"')


@case
def info_vocab_size_null(t):
    return Expect(["info", str(t.ck)], str(t.config(vocab_size=None)))


@case
def info_vocab_size_1e12(t):  # would allocate terabytes
    return Expect(["info", str(t.ck)], str(t.config(vocab_size=1e12)))


@case
def info_too_many_layers(t):
    return Expect(["info", str(t.ck)], str(t.config(num_hidden_layers=10**6)))


@case
def info_rope_theta_nan(t):
    (t.ck / "config.json").write_text((t.ck / "config.json").read_text().replace("10000.0", "NaN"))
    return Expect(["info", str(t.ck)], "rope_theta=nan")


@case
def info_tie_word_embeddings_string(t):
    return Expect(["info", str(t.ck)], str(t.config(tie_word_embeddings="false")))


@case
def info_eos_token_string(t):
    return Expect(["info", str(t.ck)], str(t.config(eos_token_id="</s>")))


@case
def info_architectures_not_a_list(t):
    return Expect(["info", str(t.ck)], str(t.config(architectures="Qwen2ForCausalLM")))


@case
def info_missing_required_field(t):
    cfg = json.loads((t.ck / "config.json").read_text())
    del cfg["hidden_size"]
    (t.ck / "config.json").write_text(json.dumps(cfg))
    return Expect(["info", str(t.ck)], "'hidden_size'")


@case
def info_config_is_a_json_list(t):
    (t.ck / "config.json").write_text("[1, 2]")
    return Expect(["info", str(t.ck)], str(t.ck / "config.json"))


@case
def info_config_not_utf8(t):
    (t.ck / "config.json").write_bytes(b'{"vocab_size": "\xff\xfe"}')
    return Expect(["info", str(t.ck)], str(t.ck / "config.json"))


@case
def info_config_empty(t):
    (t.ck / "config.json").write_text("")
    return Expect(["info", str(t.ck)], str(t.ck / "config.json"))


@case
def info_config_cut_json(t):
    (t.ck / "config.json").write_text('{"vocab_size": 40, "hidden_')
    return Expect(["info", str(t.ck)], str(t.ck / "config.json"))


@case
def generate_heads_not_multiple_of_kv(t):
    path = t.config(num_attention_heads=3, num_key_value_heads=2, head_dim=8)
    return Expect(["generate", "--model", str(t.ck), "--prompt", "w1"], str(path))


@case
def params_describe_vocab_string(t):
    t.config(vocab_size="40")
    return Expect(["params", str(t.ck), "--describe"], 'vocab_size="40"')


@case
def embeddings_config_list_writes_nothing(t):
    (t.ck / "config.json").write_text("[]")
    out = t.tmp / "emb"
    out.mkdir()  # an existing empty output directory is accepted, and must stay empty
    return Expect(
        ["embeddings", str(t.ck), "--out", str(out), "--k", "2"], str(t.ck / "config.json"), keep=out
    )


# -- weights: headers are checked (dtype, shape, byte ranges, names against the config) before allocating
@case
def params_describe_negative_shape(t):
    t.weights().unlink()
    entry = {"dtype": "F32", "shape": [-4, -16], "data_offsets": [0, 256]}
    raw_safetensors(t.weights(), {"model.embed_tokens.weight": entry}, bytes(256))
    return Expect(["params", str(t.ck), "--describe"], str(t.weights()))


@case
def info_negative_shape(t):
    t.weights().unlink()
    entry = {"dtype": "F32", "shape": [-4, -16], "data_offsets": [0, 256]}
    raw_safetensors(t.weights(), {"model.embed_tokens.weight": entry}, bytes(256))
    return Expect(["info", str(t.ck)], str(t.weights()))


@case
def params_negative_shape_writes_nothing(t):
    t.weights().unlink()
    entry = {"dtype": "F32", "shape": [-4, -16], "data_offsets": [0, 256]}
    raw_safetensors(t.weights(), {"model.embed_tokens.weight": entry}, bytes(256))
    out = t.tmp / "table.csv"
    return Expect(["params", str(t.ck), "--out", str(out), "--no-progress"], str(t.weights()), keep=out)


@case
def info_unknown_dtype(t):
    t.weights().unlink()
    entry = {"dtype": "F99", "shape": [4], "data_offsets": [0, 16]}
    raw_safetensors(t.weights(), {"model.norm.weight": entry}, bytes(16))
    return Expect(["info", str(t.ck)], "F99")


@case
def info_float_shape_in_header(t):
    t.weights().unlink()
    entry = {"dtype": "F32", "shape": [4.5], "data_offsets": [0, 16]}
    raw_safetensors(t.weights(), {"model.norm.weight": entry}, bytes(16))
    return Expect(["info", str(t.ck)], str(t.weights()))


@case
def info_overlapping_tensors(t):
    t.weights().unlink()
    header = {
        "a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
        "b": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]},
    }
    raw_safetensors(t.weights(), header, bytes(24))
    return Expect(["info", str(t.ck)], str(t.weights()))


@case
def info_config_shape_mismatch(t):
    path = t.config(intermediate_size=48)
    return Expect(["info", str(t.ck)], str(path))


@case
def info_huge_vocab_against_small_weights(t):  # refused from the headers: nothing allocated
    return Expect(["info", str(t.ck)], str(t.config(vocab_size=2_000_000)))


@case
def generate_more_layers_than_stored(t):
    t.config(num_hidden_layers=3)
    return Expect(["generate", "--model", str(t.ck), "--prompt", "w1"], str(t.ck))


@case
def info_missing_weights(t):
    t.weights().unlink()
    return Expect(["info", str(t.ck)], str(t.ck))


@case
def info_zero_byte_safetensors(t):
    t.weights().write_bytes(b"")
    return Expect(["info", str(t.ck)], str(t.weights()))


@case
def info_truncated_safetensors(t):
    t.weights().write_bytes(t.weights().read_bytes()[:1000])
    return Expect(["info", str(t.ck)], str(t.weights()))


@case
def info_random_bytes_safetensors(t):
    t.weights().write_bytes(bytes(range(256)) * 8)
    return Expect(["info", str(t.ck)], str(t.weights()))


@case
def info_integer_weights(t):
    state = load_file(str(t.weights()))
    state["model.norm.weight"] = state["model.norm.weight"].to(torch.int32)
    save_file(state, str(t.weights()))
    return Expect(["info", str(t.ck)], "model.norm.weight")


@case
def info_unexpected_key(t):
    state = load_file(str(t.weights()))
    state["model.layers.9.extra.weight"] = torch.zeros(2)
    save_file(state, str(t.weights()))
    return Expect(["info", str(t.ck)], "model.layers.9.extra.weight")


@case
def verify_shape_mismatch_before_transformers(t):
    path = t.config(hidden_size=48, head_dim=12)
    return Expect(["verify", str(t.ck)], str(path))


@case
def heads_truncated_weights_writes_nothing(t):
    t.weights().write_bytes(t.weights().read_bytes()[:1000])
    out = t.tmp / "heads-out"
    return Expect(
        ["heads", str(t.ck), "--data", str(t.text_data()), "--out", str(out)], str(t.weights()), keep=out
    )


@case
def info_safetensors_file_instead_of_directory(t):
    return Expect(["info", str(t.weights())], str(t.weights()))


@case
def generate_text_file_as_model(t):
    model = t.file("model.txt", "not a model")
    return Expect(["generate", "--model", str(model), "--prompt", "w1"], str(model))


@case
def info_config_json_is_a_directory(t):
    (t.ck / "config.json").unlink()
    (t.ck / "config.json").mkdir()
    return Expect(["info", str(t.ck)], str(t.ck))


@case
def info_corrupt_tokenizer(t):
    (t.ck / "tokenizer.json").write_text('{"version": "1.0", "model": ')
    return Expect(["info", str(t.ck)], str(t.ck / "tokenizer.json"))


# -- shard index: a malformed model.safetensors.index.json is one line in every command
def _sharded(t, index) -> Path:
    (t.ck / "model.safetensors.index.json").write_text(index if isinstance(index, str) else json.dumps(index))
    return t.ck / "model.safetensors.index.json"


@case
def info_index_is_a_list(t):
    return Expect(["info", str(t.ck)], str(_sharded(t, [1, 2])))


@case
def info_index_without_weight_map(t):
    return Expect(["info", str(t.ck)], str(_sharded(t, {"metadata": {}})))


@case
def info_index_names_missing_shard(t):
    _sharded(t, {"weight_map": {"model.norm.weight": "model-00002-of-00002.safetensors"}})
    return Expect(["info", str(t.ck)], "model-00002-of-00002.safetensors")


@case
def info_index_not_json(t):
    return Expect(["info", str(t.ck)], str(_sharded(t, "{weight_map: ")))


@case
def params_describe_index_path_traversal(t):
    _sharded(t, {"weight_map": {"model.norm.weight": "../../elsewhere.safetensors"}})
    return Expect(["params", str(t.ck), "--describe"], "../../elsewhere.safetensors")


@case
def generate_index_shard_is_a_number(t):
    return Expect(
        ["generate", "--model", str(t.ck), "--prompt", "w1"], str(_sharded(t, {"weight_map": {"x": 5}}))
    )


# -- GGUF: structure and architecture are checked in milliseconds, before any conversion
@case
def info_zero_byte_gguf(t):
    return Expect(["info", str(t.file("empty.gguf", b""))], "empty.gguf")


@case
def info_random_bytes_gguf(t):
    return Expect(["info", str(t.file("random.gguf", bytes(range(256)) * 10))], "random.gguf")


@case
def info_truncated_gguf_header(t):
    return Expect(["info", str(t.file("cut.gguf", b"GGUF\x03\x00\x00\x00" + b"\x05" * 20))], "cut.gguf")


@case
def info_gguf_tensor_data_cut(t):
    return Expect(["info", str(gguf_file(t.tmp / "short.gguf", cut=64))], "short.gguf")


@case
def info_gguf_of_another_architecture(t):
    return Expect(["info", str(gguf_file(t.tmp / "gpt2.gguf", arch="gpt2"))], "gpt2.gguf")


@case
def generate_random_bytes_gguf(t):
    path = t.file("random.gguf", bytes(range(256)) * 10)
    return Expect(["generate", "--model", str(path), "--prompt", "hi"], str(path))


@case
def heads_random_bytes_gguf(t):
    path = t.file("random.gguf", bytes(range(256)) * 10)
    out = t.tmp / "heads-out"
    return Expect(["heads", str(path), "--data", str(t.task_data()), "--out", str(out)], str(path), keep=out)


@case
def params_describe_truncated_gguf(t):
    return Expect(["params", str(t.file("cut.gguf", b"GGUF\x03\x00\x00")), "--describe"], "cut.gguf")


@case
def embeddings_zero_byte_gguf(t):
    path = t.file("empty.gguf", b"")
    return Expect(
        ["embeddings", str(path), "--out", str(t.tmp / "e"), "--k", "2"], str(path), keep=t.tmp / "e"
    )


# -- pickles: refused on every path unless --allow-pickle-weights-only; a hostile pickle never runs
@case
def info_pickle_refused(t):
    t.to_pickle()
    return Expect(["info", str(t.ck)], "--allow-pickle-weights-only")


@case
def generate_pickle_refused(t):
    t.to_pickle(name="model.pt")
    return Expect(["generate", "--model", str(t.ck), "--prompt", "w1"], str(t.ck))


@case
def verify_pickle_refused_before_transformers(t):
    t.to_pickle()
    return Expect(["verify", str(t.ck)], str(t.ck))


@case
def heads_pickle_refused(t):
    t.to_pickle()
    out = t.tmp / "heads-out"
    return Expect(["heads", str(t.ck), "--data", str(t.text_data()), "--out", str(out)], str(t.ck), keep=out)


@case
def params_pickle_refused_without_flag_advice(t):
    t.to_pickle()
    return Expect(["params", str(t.ck), "--describe"], "convert them to safetensors", not_in="--allow-pickle")


@case
def evaluate_bart_pickle_refused(t):  # transformers would have loaded it
    bart = t.bart()
    return Expect(["evaluate", str(bart), "--data", str(t.task_data())], str(bart))


@case
def train_init_from_pickle_refused(t):
    t.to_pickle()
    out = t.tmp / "run"
    argv = [
        "train",
        "--config",
        str(ROOT / "configs" / "relu.yaml"),
        "--out",
        str(out),
        "--init-from",
        str(t.ck),
    ]
    return Expect(argv, str(t.ck), keep=out)


@case
def info_hostile_pickle_with_flag(t):
    marker = t.tmp / "pwned"
    t.to_pickle({"model.norm.weight": Evil(marker)})
    argv = ["info", str(t.ck), "--allow-pickle-weights-only"]
    return Expect(argv, "pytorch_model.bin", not_in="weights_only=False", never_created=marker)


@case
def evaluate_hostile_bart_pickle_with_flag(t):
    marker = t.tmp / "pwned"
    bart = t.bart(weights="none")
    torch.save({"model.shared.weight": Evil(marker)}, bart / "pytorch_model.bin")
    argv = ["evaluate", str(bart), "--data", str(t.task_data()), "--allow-pickle-weights-only"]
    return Expect(argv, "pytorch_model.bin", not_in="weights_only=False", never_created=marker)


@case
def train_init_from_hostile_pickle_with_flag(t):
    marker = t.tmp / "pwned"
    t.to_pickle({"model.norm.weight": Evil(marker)})
    out = t.tmp / "run"
    argv = ["train", "--config", str(ROOT / "configs" / "relu.yaml"), "--out", str(out), "--init-from",
            str(t.ck), "--allow-pickle-weights-only"]  # fmt: skip
    return Expect(argv, "pytorch_model.bin", keep=out, never_created=marker)


@case
def info_zero_byte_pickle_with_flag(t):
    t.weights().unlink()
    (t.ck / "pytorch_model.bin").write_bytes(b"")
    return Expect(["info", str(t.ck), "--allow-pickle-weights-only"], "pytorch_model.bin")


@case
def info_pickle_of_a_list_with_flag(t):
    t.to_pickle([torch.zeros(2)])
    return Expect(["info", str(t.ck), "--allow-pickle-weights-only"], "pytorch_model.bin")


# -- numeric flags: out of range, NaN and inf are refused with the accepted range, before loading
@case
def generate_max_new_tokens_beyond_positions(t):  # would allocate a huge KV cache
    argv = ["generate", "--model", str(t.ck), "--prompt", "w1", "--max-new-tokens", "100000000"]
    return Expect(argv, "--max-new-tokens 100000000")


@case
def generate_seed_2_to_70(t):
    return Expect(["generate", "--model", str(t.ck), "--prompt", "w1", "--seed", str(2**70)], str(2**70))


@case
def generate_negative_seed(t):
    return Expect(["generate", "--model", str(t.ck), "--prompt", "w1", "--seed", "-1"], "--seed")


@case
def generate_temperature_underflow(t):
    return Expect(["generate", "--model", str(t.ck), "--prompt", "w1", "--temperature", "1e-45"], "1e-45")


@case
def generate_temperature_nan(t):
    return Expect(["generate", "--model", str(t.ck), "--prompt", "w1", "--temperature", "nan"], "nan")


@case
def generate_temperature_inf(t):
    return Expect(["generate", "--model", str(t.ck), "--prompt", "w1", "--temperature", "inf"], "inf")


@case
def generate_top_p_nan(t):
    return Expect(["generate", "--model", str(t.ck), "--prompt", "w1", "--top-p", "nan"], "--top-p")


@case
def generate_max_new_tokens_float(t):
    return Expect(["generate", "--model", str(t.ck), "--prompt", "w1", "--max-new-tokens", "1e8"], "1e8")


@case
def verify_max_new_tokens_beyond_positions(t):
    return Expect(["verify", str(t.ck), "--max-new-tokens", "1000"], "--max-new-tokens 1000")


@case
def embeddings_negative_seed(t):
    out = t.tmp / "e"
    return Expect(["embeddings", str(t.ck), "--out", str(out), "--seed", "-1"], "--seed", keep=out)


@case
def embeddings_one_row_two_clusters(t):
    argv = ["embeddings", str(t.ck), "--out", str(t.tmp / "e"), "--max-rows", "1", "--k", "2"]
    return Expect(argv, "--max-rows 1", keep=t.tmp / "e", not_in="K < 1")


@case
def embeddings_k_above_rows(t):
    return Expect(
        ["embeddings", str(t.ck), "--out", str(t.tmp / "e"), "--k", "2,64"], "--k 64", keep=t.tmp / "e"
    )


@case
def embeddings_negative_pca(t):
    return Expect(
        ["embeddings", str(t.ck), "--out", str(t.tmp / "e"), "--pca", "-3"], "--pca -3", keep=t.tmp / "e"
    )


@case
def heads_max_examples_nan(t):
    argv = [
        "heads",
        str(t.ck),
        "--data",
        str(t.task_data()),
        "--out",
        str(t.tmp / "o"),
        "--max-examples",
        "nan",
    ]
    return Expect(argv, "nan", keep=t.tmp / "o")


# -- files given by flags: a directory, a binary or an empty file is named as such (never "does not exist")
@case
def verify_prompts_is_a_directory(t):
    return Expect(["verify", str(t.ck), "--prompts", str(t.tmp)], "is a directory", not_in="does not exist")


@case
def verify_prompts_not_utf8(t):
    prompts = t.file("prompts.txt", b"caf\xe9 au lait\n")
    return Expect(["verify", str(t.ck), "--prompts", str(prompts)], str(prompts))


@case
def verify_prompts_empty(t):
    prompts = t.file("prompts.txt", "\n\n")
    return Expect(["verify", str(t.ck), "--prompts", str(prompts)], str(prompts))


@case
def verify_prompts_without_tokenizer(t):
    (t.ck / "tokenizer.json").unlink()
    prompts = t.file("prompts.txt", "w1 w2\n")
    return Expect(["verify", str(t.ck), "--prompts", str(prompts)], "--prompts")


@case
def evaluate_data_is_a_directory(t):
    return Expect(["evaluate", str(t.ck), "--data", str(t.tmp)], str(t.tmp), not_in="does not exist")


@case
def heads_data_is_a_directory_keeps_results(t):
    out = t.tmp / "out"
    out.mkdir()
    (out / "heads.csv").write_text("earlier results\n")
    return Expect(["heads", str(t.ck), "--data", str(t.ck), "--out", str(out)], str(t.ck), keep=out)


@case
def generate_prompt_not_utf8(t):  # undecodable argv bytes reach Python as lone surrogates
    return Expect(["generate", "--model", str(t.ck), "--prompt", "w1 \udcff"], "--prompt")


@case
def generate_chat_without_template(t):
    return Expect(["generate", "--model", str(t.ck), "--prompt", "w1", "--chat"], "--chat")


@case
def generate_without_tokenizer(t):
    (t.ck / "tokenizer.json").unlink()
    return Expect(["generate", "--model", str(t.ck), "--prompt", "w1"], str(t.ck))


# -- vocabulary: token ids past the embedding rows are refused before any forward pass
@case
def evaluate_task_data_on_small_vocab(t):
    return Expect(["evaluate", str(t.ck), "--data", str(t.task_data())], str(t.ck))


@case
def heads_task_data_on_small_vocab(t):
    out = t.tmp / "out"
    return Expect(
        ["heads", str(t.ck), "--data", str(t.task_data()), "--out", str(out)], str(t.task_data()), keep=out
    )


@case
def generate_tokenizer_larger_than_model(t):
    write_word_tokenizer(t.ck, [f"w{i}" for i in range(60)])  # ids up to 61; the model has 40 rows
    return Expect(["generate", "--model", str(t.ck), "--prompt", "w50"], "--prompt")


@case
def train_init_from_small_vocab(t):
    out = t.tmp / "run"
    argv = [
        "train",
        "--config",
        str(ROOT / "configs" / "relu.yaml"),
        "--out",
        str(out),
        "--init-from",
        str(t.ck),
    ]
    return Expect(argv, str(t.ck), keep=out)


# -- download: fails at once, offline or with a malformed id, and creates nothing
@case
def download_offline(t):
    out = t.tmp / "d"
    return Expect(["download", "Qwen/Qwen2.5-0.5B", "--out", str(out)], "Qwen/Qwen2.5-0.5B", keep=out)


@case
def download_not_a_hub_id(t):
    return Expect(["download", "not a hub id", "--out", str(t.tmp / "d")], "not a hub id", keep=t.tmp / "d")


@case
def download_too_many_slashes(t):
    return Expect(["download", "a/b/c", "--out", str(t.tmp / "d")], "a/b/c", keep=t.tmp / "d")


# -- the harness -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def base_checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(tiny_config(vocab_size=40, eos_token_id=1)).init_weights(5, std=0.3)
    out = save_checkpoint(model, tmp_path_factory.mktemp("base") / "tiny")
    write_word_tokenizer(out, [f"w{i}" for i in range(38)])
    return out


def snapshot(path: Path | None):
    """Every file under ``path`` with its bytes (None when absent): equal before and after a refusal."""
    if path is None or not path.exists():
        return None
    if path.is_file():
        return path.read_bytes()
    return {
        str(p.relative_to(path)): (p.read_bytes() if p.is_file() else "dir") for p in sorted(path.rglob("*"))
    }


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_line_exit_2(name, tmp_path, base_checkpoint, capsys, monkeypatch):
    monkeypatch.setenv("QWEN_ANATOMY_CACHE", str(tmp_path / "cache"))  # no conversion reaches ~/.cache
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)  # anything written by mistake lands here, not in the repository
    ctx = Ctx(tmp_path, shutil.copytree(base_checkpoint, tmp_path / "ck"))
    expect = CASES[name](ctx)
    before = snapshot(expect.keep)
    capsys.readouterr()
    try:
        code = main(expect.argv)
    except SystemExit as exit_:  # argparse refuses bad flags this way
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and err == lines[0] + "\n", err
    assert lines[0].startswith(f"qwen-anatomy {expect.argv[0]}: error: "), lines[0]
    assert expect.names in lines[0], (expect.names, lines[0])
    if expect.not_in is not None:
        assert expect.not_in not in lines[0], lines[0]
    assert snapshot(expect.keep) == before, f"{expect.keep} changed"
    if expect.never_created is not None:
        assert not expect.never_created.exists(), "the pickle ran code"


def test_every_group_has_cases():
    assert len(CASES) >= 50


# -- the accepted side of two refusals: the flag loads plain tensors; verify without a tokenizer
def test_allow_pickle_weights_only_loads_plain_tensors(tmp_path, base_checkpoint, capsys):
    ctx = Ctx(tmp_path, shutil.copytree(base_checkpoint, tmp_path / "ck"))
    assert main(["info", str(ctx.ck), "--json"]) == 0
    expected = json.loads(capsys.readouterr().out)["parameters"]
    ctx.to_pickle()
    assert main(["info", str(ctx.ck), "--json", "--allow-pickle-weights-only"]) == 0
    assert json.loads(capsys.readouterr().out)["parameters"] == expected


def test_verify_without_tokenizer_compares_seeded_random_ids(tmp_path, base_checkpoint, capsys):
    from qwen_anatomy.verify import RANDOM_INPUTS

    ctx = Ctx(tmp_path, shutil.copytree(base_checkpoint, tmp_path / "ck"))
    (ctx.ck / "tokenizer.json").unlink()
    assert main(["verify", str(ctx.ck), "--max-new-tokens", "3"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["inputs"].startswith("random token ids (no tokenizer.json)")
    assert report["prompts"] == RANDOM_INPUTS["sequences"]
    ids = [p["input_ids"] for p in report["per_prompt"]]
    assert all(len(row) == RANDOM_INPUTS["length"] and max(row) < 40 for row in ids)
    assert report["greedy_tokens_equal"] is True and report["first_divergent_layer"] is None


# -- the real console script: the same one line and exit code 2 (seconds each, so only two cases)
@pytest.mark.parametrize("name", ["params_describe_negative_shape", "generate_temperature_underflow"])
def test_console_script(name, tmp_path, base_checkpoint):
    ctx = Ctx(tmp_path, shutil.copytree(base_checkpoint, tmp_path / "ck"))
    expect = CASES[name](ctx)
    proc = subprocess.run([QA, *expect.argv], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith(f"qwen-anatomy {expect.argv[0]}: error: ") and expect.names in proc.stderr
