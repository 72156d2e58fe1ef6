"""One validation layer for every checkpoint a command reads (chapter 02_qwen2_from_scratch).

Every command that takes a model goes through here before any heavy work, whichever loader it ends
in (ours, transformers', or the header-only readers of Part II):

- ``config.json``: a UTF-8 JSON object whose known fields have the right types and sane ranges
  (:func:`read_config_json`, :func:`check_config_fields`); sizes have upper bounds far above every
  released checkpoint, so a typo such as ``vocab_size: 1e12`` is refused instead of allocating;
- ``model.safetensors.index.json``: a ``weight_map`` of plain shard file names that exist
  (:func:`shard_files`);
- safetensors headers: known dtypes, non-negative integer dimensions, byte ranges that agree with
  dtype and shape (:func:`tensor_header_entry`), and names and shapes that match the model the config
  describes (:func:`check_weights`), all read from headers before a tensor is allocated;
- GGUF files: magic, header, tensor extents and architecture (:func:`check_gguf`);
- pickle weights (``.bin``, ``.pt``): refused unless the user allows ``torch.load(weights_only=True)``
  (:func:`refuse_pickles`, :func:`load_pickle_weights_only`), on every path;
- tokenizer files (:func:`open_tokenizer`) and token ids against the embedding rows
  (:func:`check_token_ids`).

Input files given by flags (prompts, data) are checked by :mod:`qwen_anatomy.iochecks`.

Every failure is a :class:`CheckpointError` or :class:`~qwen_anatomy.errors.UserInputError` whose
message names the file or value and the fix; the command line prints it as one line (exit code 2).
Module level imports only the standard library: ``params --describe`` must stay under a second.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from .errors import UserInputError


class CheckpointError(UserInputError):
    """A checkpoint whose files, keys or shapes cannot be used (the message names the file and key)."""


class ConfigError(CheckpointError):
    """A config.json this project cannot turn into a Qwen2Config (the message says why)."""


# -- limits -----------------------------------------------------------------------------------------
# Upper bounds on config sizes. Released checkpoints stay far below them (vocabularies up to 262,144,
# hidden sizes up to 16,384, 126 layers, contexts up to 10M positions); beyond them a config asks for
# terabytes of memory, which is a typo, not a model.
INT_LIMITS = {
    "vocab_size": 1 << 21,
    "hidden_size": 1 << 16,
    "intermediate_size": 1 << 18,
    "num_hidden_layers": 1 << 10,
    "num_attention_heads": 1 << 10,
    "num_key_value_heads": 1 << 10,
    "head_dim": 1 << 11,
    "max_position_embeddings": 1 << 24,
    # BART (the synthetic-task strand's encoder-decoder)
    "d_model": 1 << 16,
    "encoder_layers": 1 << 10,
    "decoder_layers": 1 << 10,
    "encoder_ffn_dim": 1 << 18,
    "decoder_ffn_dim": 1 << 18,
    "encoder_attention_heads": 1 << 10,
    "decoder_attention_heads": 1 << 10,
}
# (low, high]: rope theta is a base (> 0); an epsilon must be positive and small
FLOAT_RANGES = {
    "rope_theta": (0.0, 1e12),
    "rms_norm_eps": (0.0, 0.1),
    "layer_norm_eps": (0.0, 0.1),
}
BOOL_FIELDS = ("tie_word_embeddings", "attention_bias", "mlp_bias")
TOKEN_ID_FIELDS = ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id")
MAX_JSON_BYTES = 200_000_000  # a config or shard index is kilobytes to a few megabytes
# Sampling temperatures accepted besides 0 (greedy): below 1e-3 sampling equals greedy decoding and
# logits / T overflows float32 (1e-45 turns every logit into inf); above 1e3 it is uniform noise.
TEMPERATURE_RANGE = (1e-3, 1e3)
SEED_MAX = 2**32 - 1  # the widest range every consumer accepts (torch, numpy, scikit-learn)
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
PICKLE_FLAG = "--allow-pickle-weights-only"
FLOAT_DTYPES = {"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"}


# -- JSON files of a checkpoint ---------------------------------------------------------------------
def read_json(path: str | os.PathLike) -> Any:
    """A checkpoint's JSON file, parsed; CheckpointError naming the file for every way it can be bad."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory; expected a JSON file")
    try:
        size = path.stat().st_size
        if size > MAX_JSON_BYTES:
            raise CheckpointError(f"{path} has {size:,} bytes, too large for a JSON file of a checkpoint")
        raw = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{path} does not exist") from None
    except OSError as err:
        raise CheckpointError(f"{path} cannot be read ({err.strerror})") from None
    if not raw.strip():
        raise CheckpointError(f"{path} is empty; expected a JSON object")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise CheckpointError(
            f"{path} is not UTF-8 (byte 0x{raw[err.start]:02x} at offset {err.start}); JSON files "
            "must be UTF-8: re-save it"
        ) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise CheckpointError(
            f"{path} is not valid JSON (line {err.lineno}, column {err.colno}: {err.msg})"
        ) from None
    except (ValueError, RecursionError) as err:  # a 5,000-digit integer, nesting 100,000 deep
        raise CheckpointError(f"{path} is not usable JSON ({type(err).__name__})") from None


def read_config_json(path: str | os.PathLike) -> dict:
    """``config.json`` as a dict whose known fields passed :func:`check_config_fields`."""
    path = Path(path)
    hf = read_json(path)
    if not isinstance(hf, dict):
        raise ConfigError(f"{path} holds a JSON {_json_kind(hf)}, not an object of configuration fields")
    check_config_fields(hf, str(path))
    return hf


def _json_kind(value: Any) -> str:
    return {list: "array", str: "string", int: "number", float: "number", bool: "boolean"}.get(
        type(value), "null" if value is None else type(value).__name__
    )


def _show(value: Any) -> str:
    """A config value as JSON would show it (null, true, "40"), cut to 40 characters."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def config_int(value: Any, name: str, where: str, low: int = 1, high: int | None = None) -> int:
    """An integer config field in [low, high] (an integral float such as 4096.0 counts), else ConfigError."""
    high = INT_LIMITS.get(name) if high is None else high
    bound = f"in {low}..{high:,}" if high is not None else f">= {low}"
    ok = isinstance(value, int) and not isinstance(value, bool)
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value, ok = int(value), True
    if not ok:
        raise ConfigError(
            f"{where}: {name}={_show(value)} must be an integer {bound} "
            f"({'null' if value is None else 'a ' + _json_kind(value)} here)"
        )
    if value < low or (high is not None and value > high):
        raise ConfigError(f"{where}: {name}={value:,} is out of range; it must be an integer {bound}")
    return value


def config_float(value: Any, name: str, where: str) -> float:
    """A real-valued config field inside :data:`FLOAT_RANGES`, else ConfigError."""
    low, high = FLOAT_RANGES[name]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{where}: {name}={_show(value)} must be a number, not a {_json_kind(value)}")
    value = float(value)
    if not (math.isfinite(value) and low < value <= high):
        raise ConfigError(
            f"{where}: {name}={value:g} is out of range; it must be a finite number in ({low:g}, {high:g}]"
        )
    return value


def check_config_fields(hf: dict, where: str = "config.json") -> None:
    """Types and ranges of every known field present in a Hugging Face config (any architecture).

    Fields absent are not required here (Part II reads configs of other architectures); the Qwen2
    loader requires its own on top (:meth:`qwen_anatomy.config.Qwen2Config.from_hf_dict`).
    """
    for name in INT_LIMITS:
        if name in hf and not (hf[name] is None and name in ("head_dim", "num_key_value_heads")):
            config_int(hf[name], name, where)
    for name in FLOAT_RANGES:
        if name in hf:
            config_float(hf[name], name, where)
    for key in ("rope_parameters", "rope_scaling"):
        rope = hf.get(key)
        if rope is None:
            continue
        if not isinstance(rope, dict):
            raise ConfigError(f"{where}: {key}={_show(rope)} must be an object or null")
        if "rope_theta" in rope:
            config_float(rope["rope_theta"], "rope_theta", f"{where} ({key})")
    for name in BOOL_FIELDS:
        if name in hf and not isinstance(hf[name], bool):
            raise ConfigError(f"{where}: {name}={_show(hf[name])} must be true or false")
    for name in TOKEN_ID_FIELDS:
        value = hf.get(name)
        values = value if isinstance(value, list) and name == "eos_token_id" else [value]
        if not all(v is None or (isinstance(v, int) and not isinstance(v, bool)) for v in values):
            raise ConfigError(f"{where}: {name}={_show(value)} must be an integer token id or null")
    archs = hf.get("architectures")
    if archs is not None and not (isinstance(archs, list) and all(isinstance(a, str) for a in archs)):
        raise ConfigError(f"{where}: architectures={_show(archs)} must be a list of class names")
    if "model_type" in hf and not isinstance(hf["model_type"], str):
        raise ConfigError(f'{where}: model_type={_show(hf["model_type"])} must be a string such as "qwen2"')


# -- shards and safetensors headers -----------------------------------------------------------------
def shard_files(directory: str | os.PathLike) -> list[Path] | None:
    """The shards ``model.safetensors.index.json`` names (in index order), None without an index."""
    directory = Path(directory)
    index = directory / "model.safetensors.index.json"
    if not index.exists():
        return None
    data = read_json(index)
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(
            f"{index} is not a valid shard index: it needs a non-empty 'weight_map' object mapping "
            "tensor names to shard files; re-download it or remove it"
        )
    for key, shard in weight_map.items():
        if not (isinstance(shard, str) and shard.endswith(".safetensors") and Path(shard).name == shard):
            raise CheckpointError(
                f"{index}: weight_map[{key!r}] = {_show(shard)} is not a shard file name in this "
                "directory (e.g. model-00001-of-00002.safetensors); re-download the index"
            )
    shards = list(dict.fromkeys(weight_map.values()))
    missing = [s for s in shards if not (directory / s).is_file()]
    if missing:
        raise CheckpointError(f"{index} names shard(s) that are missing: {missing}; re-download them")
    return [directory / s for s in shards]


def tensor_header_entry(path: Path, name: str, info: Any) -> tuple[str, tuple[int, ...], int, int]:
    """(dtype, shape, begin, end) of one safetensors header entry, checked; CheckpointError otherwise."""
    from .weights.safetensors_io import DTYPE_BYTES

    def is_count(x) -> bool:
        return isinstance(x, int) and not isinstance(x, bool) and x >= 0

    if not isinstance(info, dict):
        raise CheckpointError(f"{path}: header entry {name!r} is not an object; the file is corrupt")
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if dtype is None or shape is None or offsets is None:
        raise CheckpointError(f"{path}: header entry {name!r} lacks dtype/shape/data_offsets")
    if dtype not in DTYPE_BYTES:
        raise CheckpointError(f"{path}: tensor {name!r} has unknown dtype {_show(dtype)}")
    if not isinstance(shape, list) or not all(is_count(s) for s in shape):
        raise CheckpointError(
            f"{path}: tensor {name!r} has shape {_show(shape)}; dimensions must be non-negative "
            "integers (the header is corrupt): re-save or re-download the checkpoint"
        )
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(is_count(x) for x in offsets)):
        raise CheckpointError(
            f"{path}: tensor {name!r} has data_offsets {_show(offsets)}; expected [begin, end]"
        )
    begin, end = offsets
    numel = math.prod(shape)
    if end - begin != numel * DTYPE_BYTES[dtype]:
        raise CheckpointError(
            f"{path}: header lies about {name!r}: {dtype}{list(shape)} needs "
            f"{numel * DTYPE_BYTES[dtype]} bytes but data_offsets span {end - begin}"
        )
    return dtype, tuple(shape), begin, end


# -- pickles ----------------------------------------------------------------------------------------
def pickle_files(directory: str | os.PathLike) -> list[Path]:
    """Pickle weight files of a directory (``*.bin``, ``*.pt``, ``*.pth``, ``*.ckpt``)."""
    directory = Path(directory)
    return sorted(p for p in directory.iterdir() if p.suffix in PICKLE_SUFFIXES and p.is_file())


def refuse_pickles(directory: str | os.PathLike, pickles: list[Path], flag: str | None = PICKLE_FLAG) -> None:
    """Raise the one refusal message for a directory whose only weights are pickles.

    ``flag`` is the option of the command that allows weights-only loading (None where the command
    has none: Part II reads headers and never unpickles).
    """
    allow = (
        f", or pass {flag} (info, generate, verify, heads, evaluate, train; in Python "
        "weights_only_pickle=True) to load plain tensors without running code"
        if flag
        else ""
    )
    raise CheckpointError(
        f"{directory} holds only pickle weights ({pickles[0].name}); pickles can run code when "
        f"loaded, so they are refused: convert them to safetensors{allow}"
    )


def load_pickle_weights_only(file: str | os.PathLike) -> dict:
    """``torch.load(file, weights_only=True)`` as a {name: tensor} dict, or one CheckpointError.

    weights_only loading cannot run code; a file it refuses holds other objects and is never loaded
    another way here (torch's own message suggests ``weights_only=False``: not an option for us).
    """
    import pickle

    import torch

    file = Path(file)
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "weights only" in str(err).lower():
            raise CheckpointError(
                f"{file} holds objects other than tensors (torch.load(weights_only=True) refused it); "
                "it could run code, so it is not loaded: use a safetensors checkpoint"
            ) from None
        raise CheckpointError(f"{file} is not a readable torch pickle ({type(err).__name__})") from None
    except Exception as err:  # truncated or empty file, not a pickle at all
        first = (str(err).strip().splitlines() or [""])[0][:120]
        reason = f"{type(err).__name__}: {first}" if first else f"{type(err).__name__}, an empty or cut file"
        raise CheckpointError(f"{file} could not be read as a torch pickle ({reason}); re-save it") from None
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise CheckpointError(
            f"{file} holds a {type(state).__name__}, not a dict of named tensors (a state_dict)"
        )
    return state


# -- whole checkpoints ------------------------------------------------------------------------------
def safetensors_entries(directory: str | os.PathLike, files: list[Path] | None = None) -> list:
    """Header entries (TensorEntry) of a directory's safetensors files, every header checked."""
    from .weights import safetensors_io as sio

    directory = Path(directory)
    if files is None:
        files = shard_files(directory) or sorted(directory.glob("*.safetensors"))
    entries = []
    for f in files:
        entries += sio.file_entries(f)[0]
    return entries


def check_weights(
    directory: str | os.PathLike,
    expected: dict[str, tuple[int, ...]],
    files: list[Path],
    tied: bool = False,
    allow_pickle: bool = False,
    flag: str | None = PICKLE_FLAG,
) -> None:
    """Before any tensor is allocated: the stored names and shapes are those ``expected``.

    ``expected`` maps every parameter of the model the config describes to its shape; ``files`` are
    the safetensors files the loader will read. With no safetensors, pickles are refused unless
    ``allow_pickle`` (their shapes are checked while copying). Messages name the key and both shapes.
    """
    directory = Path(directory)
    if not files:
        pickles = pickle_files(directory)
        if not pickles:
            raise CheckpointError(f"{directory} holds no weights (*.safetensors or *.bin)")
        if not allow_pickle:
            refuse_pickles(directory, pickles, flag)
        return
    seen = set()
    for e in safetensors_entries(directory, files):
        if e.name.endswith("rotary_emb.inv_freq") or (tied and e.name == "lm_head.weight"):
            continue  # a buffer older checkpoints saved; a tied head stored anyway
        if e.name not in expected:
            raise CheckpointError(
                f"unexpected key {e.name!r} with shape {e.shape} in {directory}: the checkpoint does "
                "not match the architecture its config.json describes"
            )
        if tuple(expected[e.name]) != e.shape:
            raise CheckpointError(
                f"shape mismatch for {e.name}: checkpoint {e.shape} vs model {tuple(expected[e.name])} "
                f"(from {directory / 'config.json'}): the config does not describe these weights"
            )
        if e.dtype not in FLOAT_DTYPES:
            raise CheckpointError(
                f"{e.shard}: tensor {e.name!r} has dtype {e.dtype}; model weights must be floating point"
            )
        seen.add(e.name)
    missing = sorted(set(expected) - seen)
    if missing:
        raise CheckpointError(f"{directory} lacks {len(missing)} key(s), first {missing[0]!r}")


def check_transformers_checkpoint(directory: str | os.PathLike, allow_pickle: bool = False) -> bool:
    """Validate a directory transformers' ``from_pretrained`` will read; True when it reads pickles.

    Config fields and every safetensors header are checked; a directory with only pickle weights is
    refused unless ``allow_pickle``, and then each pickle is opened with ``weights_only=True`` first,
    so a file holding code fails here with one line (transformers loads with weights_only too).
    """
    directory = Path(directory)
    read_config_json(directory / "config.json")
    files = shard_files(directory) or sorted(directory.glob("*.safetensors"))
    if files:
        safetensors_entries(directory, files)
        return False
    pickles = pickle_files(directory)
    if not pickles:
        raise CheckpointError(f"{directory} holds no weights (*.safetensors or *.bin)")
    if not allow_pickle:
        refuse_pickles(directory, pickles)
    for f in pickles:
        load_pickle_weights_only(f)
    return True


def check_gguf(
    path: str | os.PathLike, architectures: tuple[str, ...] = ("qwen2", "llama", "mistral")
) -> dict:
    """Structure of a .gguf file (magic, header, tensor extents) and its architecture; returns the
    hyper-parameters its metadata holds. Milliseconds: nothing is dequantised."""
    from .weights.gguf_io import GGUFCheckpoint

    path = Path(path)
    g = GGUFCheckpoint(path)
    if not g.entries:
        raise CheckpointError(f"{path} holds no tensors; re-download it")
    if g.arch not in architectures:
        raise CheckpointError(
            f"{path} is a GGUF of architecture {g.arch or '(none)'!r}; only {', '.join(architectures)} "
            "models are supported"
        )
    summary = g.config_summary()
    for name in ("num_hidden_layers", "hidden_size", "num_attention_heads"):
        config_int(summary.get(name), name, f"{path} (GGUF metadata)")
    return summary


def check_token_ids(max_id: int, vocab_size: int, what: str, fix: str) -> None:
    """UserInputError when token ids reach past the model's embedding rows (an IndexError otherwise)."""
    if max_id >= vocab_size:
        raise UserInputError(
            f"{what} holds token id {max_id} but the model has only {vocab_size} embedding rows "
            f"(ids 0..{vocab_size - 1}): {fix}"
        )


def check_prompt_fits(ids: list[int], config, max_new_tokens: int, what: str) -> None:
    """Token ids inside the embedding table, prompt + new tokens inside max_position_embeddings.

    Checked before the weights are loaded: a too-large ``--max-new-tokens`` would otherwise allocate
    a KV cache for all of them (1e8 tokens of Qwen2.5-0.5B: 25.6 GB).
    """
    if not ids:
        raise UserInputError(f"{what} encodes to no tokens: give some text")
    check_token_ids(max(ids), config.vocab_size, what, "its tokenizer.json does not belong to these weights")
    limit = config.max_position_embeddings
    if len(ids) >= limit:
        raise UserInputError(
            f"{what} has {len(ids)} tokens, not fewer than the model's max_position_embeddings "
            f"({limit}): shorten it"
        )
    if max_new_tokens > limit - len(ids):
        raise UserInputError(
            f"--max-new-tokens {max_new_tokens} is too large: the prompt takes {len(ids)} of the model's "
            f"{limit} positions (max_position_embeddings), so at most {limit - len(ids)} new tokens fit"
        )


def open_tokenizer(directory: str | os.PathLike):
    """:class:`qwen_anatomy.tokenizer.Tokenizer` of a checkpoint directory, None without tokenizer.json;
    a file the tokenizers library cannot read is one CheckpointError naming it."""
    from .tokenizer import Tokenizer

    directory = Path(directory)
    if not (directory / "tokenizer.json").is_file():
        return None
    for name in ("tokenizer.json", "tokenizer_config.json"):
        if (directory / name).exists():
            read_json(directory / name)
    try:
        return Tokenizer(directory)
    except Exception as err:  # the tokenizers library raises bare Exceptions with its own text
        first = (str(err).strip().splitlines() or [""])[0][:160]
        raise CheckpointError(
            f"{directory / 'tokenizer.json'} could not be loaded ({type(err).__name__}: {first})"
        ) from None
