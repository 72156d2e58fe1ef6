"""Loading checkpoints: local directories, .gguf files and built-in names (chapter 02).

What a model argument names is decided in one place, :mod:`qwen_anatomy.registry` (re-exported
here: ``BUILTIN_MODELS``, ``builtin_names``, ``ModelNotFound``); a GGUF is converted once into a
cached directory. :func:`load_model` places the model on a device in a dtype
(:mod:`qwen_anatomy.devices`). Parameter names equal checkpoint keys, so loading is a checked copy: every expected key present, no
unexpected key, every shape equal. Every file is checked by :mod:`qwen_anatomy.validate` first
(config types and ranges, shard index, safetensors headers against the config, GGUF structure) before
any tensor is allocated. Pickle ``.bin`` files are refused unless loaded with ``weights_only=True``
(which cannot run code). Nothing here downloads anything.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from . import validate
from .config import Qwen2Config
from .devices import resolve_device, resolve_dtype
from .errors import UserInputError
from .model import Qwen2ForCausalLM, rope_inv_freq
from .paths import REPO_ROOT, cache_root  # noqa: F401  (re-exported: notebooks import them from here)
from .registry import (  # noqa: F401  (re-exported: the names every loader caller knows)
    BUILTIN_MODELS,
    SHIPPED_MODELS,
    ModelNotFound,
    builtin_names,
    conversion_dir,
    parse_model_arg,
)
from .validate import CheckpointError


def resolve_model(spec: str | os.PathLike) -> Path:
    """Turn a model argument into a checkpoint directory (config.json + weights).

    Accepts everything :func:`qwen_anatomy.registry.parse_model_arg` does: a built-in name
    (``qwen2.5-coder-0.5b``, ``smollm2-135m``) or the name of a model shipped in ``data/models/``, a
    local checkpoint directory, or a ``.gguf`` file (converted once into the cache, tokenizer and chat
    template included). Raises ModelNotFound with the fix in the message. Never contacts a hub.
    """
    ref = parse_model_arg(spec)
    if ref.kind == "builtin":
        return convert_gguf(ref.path, name=ref.name)
    if ref.kind == "gguf":
        path = ref.path
        validate.check_gguf(path)  # structure and architecture, in milliseconds, before converting
        try:
            return convert_gguf(path)
        except UserInputError:
            raise
        except Exception as err:  # transformers' GGUF reader raises bare errors on files it cannot map
            first = (str(err).strip().splitlines() or [""])[0][:160]
            raise CheckpointError(
                f"{path} could not be converted by transformers' GGUF loader ({type(err).__name__}: {first})"
            ) from None
    if not (ref.path / "config.json").is_file():
        ggufs = sorted(ref.path.glob("*.gguf"))
        hint = f"; to read its GGUF, pass the file ({ggufs[0]})" if ggufs else ""
        raise ModelNotFound(
            f"{ref.path} has no config.json: point at a Hugging Face checkpoint directory "
            f"(config.json + *.safetensors){hint}"
        )
    return ref.path


def convert_gguf(gguf_path: Path, name: str | None = None) -> Path:
    """Dequantise a GGUF file once (through transformers) into a cached safetensors directory.

    The directory holds config.json, model.safetensors (float32), the tokenizer and chat template
    read from inside the GGUF (transformers sees the GGUF alone, never files that happen to sit
    beside it) and ``provenance.json``: the file's size and SHA-256, its GGUF metadata and
    per-tensor quantisation types and, for a file assembled from packages
    (:mod:`qwen_anatomy.realmodels`), the packages and versions it came from. A file with such a
    verification sidecar is cached under its hash, so re-assembling the same bytes reuses the
    conversion; any other file under its path, size and modification time.
    """
    from .realmodels import file_sha256, gguf_provenance, read_sidecar

    gguf_path = Path(gguf_path).resolve()
    st = gguf_path.stat()
    assembly = read_sidecar(gguf_path)
    target = conversion_dir(gguf_path, name)
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    from .progress import obedient_bars, progress_bar

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".converting-"))
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".gguf-only-"))
    try:
        start = time.time()
        sha256 = file_sha256(gguf_path)
        if assembly is not None and sha256 != assembly["sha256"]:
            raise UserInputError(
                f"{gguf_path} has sha256 {sha256} but was verified as {assembly['sha256']}: it changed "
                "since; delete it (and its .json) to have it assembled again"
            )
        try:  # a folder holding only the GGUF: config and tokenizer can come from nowhere else
            (staging / gguf_path.name).symlink_to(gguf_path)
            source_dir = staging
        except OSError:
            source_dir = gguf_path.parent
        with progress_bar(total=3, desc=f"converting {gguf_path.name} once (about a minute)") as bar:
            from transformers import AutoModelForCausalLM, AutoTokenizer
            from transformers import modeling_gguf_pytorch_utils as gguf_utils

            bar.update(1)
            with obedient_bars(gguf_utils):  # its per-tensor bar would be a widget on chapter 00's page
                model = AutoModelForCausalLM.from_pretrained(
                    source_dir, gguf_file=gguf_path.name, dtype=torch.float32
                )
            if getattr(model, "hf_quantizer", None) is not None:
                model.hf_quantizer.remove_quantization_config(model)
            bar.update(1)
            with obedient_bars(gguf_utils):
                tok = AutoTokenizer.from_pretrained(source_dir, gguf_file=gguf_path.name)
            model.save_pretrained(tmp, safe_serialization=True)
            tok.save_pretrained(tmp)
            provenance = {
                "source": str(gguf_path),
                "bytes": st.st_size,
                "sha256": sha256,
                "note": "dequantised to float32 by transformers' GGUF loader; tokenizer and chat "
                "template from the GGUF",
            }
            if assembly is not None:
                provenance["assembled_from"] = assembly["sources"]
                provenance["description"] = assembly.get("description")
            provenance["gguf"] = gguf_provenance(gguf_path)
            provenance["converted_seconds"] = round(time.time() - start, 1)
            (tmp / "provenance.json").write_text(json.dumps(provenance, indent=2))
            bar.update(1)
        if target.exists():  # another process finished first
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


# -- weights ----------------------------------------------------------------------------------------
def weight_files(path: Path) -> list[Path]:
    """The safetensors files of a checkpoint directory, following a shard index when present."""
    shards = validate.shard_files(path)  # the index checked: a weight_map of existing shard files
    if shards is not None:
        return shards
    single = path / "model.safetensors"
    if single.is_file():
        return [single]
    others = sorted(path.glob("*.safetensors"))
    if others:
        return others
    return []


def iter_state_dict(path: Path, weights_only_pickle: bool = False) -> Iterator[tuple[str, torch.Tensor]]:
    """(key, tensor) pairs of a checkpoint directory, one shard at a time."""
    files = weight_files(path)
    if files:
        from safetensors import safe_open

        for f in files:
            try:
                with safe_open(str(f), framework="pt") as handle:
                    for key in handle.keys():
                        yield key, handle.get_tensor(key)
            except Exception as err:  # safetensors raises its own error types for corrupt files
                raise CheckpointError(f"{f} could not be read as safetensors: {err}") from None
        return
    pickles = validate.pickle_files(path)
    if pickles:
        if not weights_only_pickle:
            validate.refuse_pickles(path, pickles)
        for f in pickles:
            yield from validate.load_pickle_weights_only(f).items()
        return
    raise CheckpointError(f"{path} holds no weights (*.safetensors or *.bin)")


def load_weights(model: Qwen2ForCausalLM, path: Path, weights_only_pickle: bool = False) -> None:
    """Checked copy of a checkpoint into ``model`` (names, then shapes; nothing silently skipped)."""
    params = dict(model.named_parameters(remove_duplicate=False))
    tied = model.config.tie_word_embeddings
    expected = {k for k in params if not (tied and k == "lm_head.weight")}
    seen: set[str] = set()
    with torch.no_grad():
        for key, tensor in iter_state_dict(path, weights_only_pickle):
            if tied and key == "lm_head.weight":
                continue  # some tied checkpoints store the head anyway; it is the embedding
            if key not in params:
                if key.endswith("rotary_emb.inv_freq"):
                    continue  # a buffer older checkpoints saved; we recompute it
                raise CheckpointError(
                    f"unexpected key {key!r} with shape {tuple(tensor.shape)} in {path}: "
                    "the checkpoint does not match this architecture"
                )
            target = params[key]
            if tuple(target.shape) != tuple(tensor.shape):
                raise CheckpointError(
                    f"shape mismatch for {key}: checkpoint {tuple(tensor.shape)} vs model "
                    f"{tuple(target.shape)}"
                )
            target.copy_(tensor.to(target.dtype))
            seen.add(key)
    missing = sorted(expected - seen)
    if missing:
        raise CheckpointError(f"{path} lacks {len(missing)} key(s), first {missing[0]!r}")


def load_config(path: Path) -> Qwen2Config:
    """The Qwen2Config of a checkpoint directory (ConfigError naming config.json and the field)."""
    return Qwen2Config.from_json(Path(path) / "config.json")


def load_model(
    spec: str | os.PathLike,
    dtype: torch.dtype | str | None = torch.float32,
    weights_only_pickle: bool = False,
    with_tokenizer: bool = True,
    device: torch.device | str | None = "cpu",
):
    """(model, tokenizer) for any model argument :func:`resolve_model` accepts.

    ``device``: "cpu" (default), "cuda", "cuda:N", "mps" or "auto" (cuda, else mps, else cpu);
    ``dtype``: float32 (default), bfloat16 or float16, as a ``torch.dtype`` or its name. Both are
    checked first (:mod:`qwen_anatomy.devices`: a device this machine lacks is a UserInputError);
    RMSNorm, RoPE tables and softmax compute in float32 whatever the dtype. The tokenizer is None
    when the directory has no ``tokenizer.json``. Stored names and shapes are checked against the
    config from the headers before anything is allocated.
    """
    device, dtype = resolve_device(device, "device"), resolve_dtype(dtype, "dtype")
    path = resolve_model(spec)
    config = load_config(path)
    with torch.device("meta"):
        model = Qwen2ForCausalLM(config)
    expected = {k: tuple(p.shape) for k, p in model.named_parameters(remove_duplicate=False)}
    if config.tie_word_embeddings:
        expected.pop("lm_head.weight", None)
    validate.check_weights(
        path, expected, weight_files(path), config.tie_word_embeddings, weights_only_pickle
    )
    model = model.to_empty(device="cpu")
    model.model.inv_freq = rope_inv_freq(config.head_dim, config.rope_theta)  # built on meta above
    model.head_gates.fill_(1.0)
    if config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    load_weights(model, path, weights_only_pickle)
    model = model.to(device=device, dtype=dtype).eval()
    model.model.inv_freq = model.model.inv_freq.to(device)  # a plain attribute: float32, moved by hand
    model.source = str(path)
    tokenizer = validate.open_tokenizer(path) if with_tokenizer else None
    return model, tokenizer


def save_checkpoint(
    model: Qwen2ForCausalLM, out: str | os.PathLike, tokenizer_dir: Path | None = None
) -> Path:
    """Write a standard Hugging Face directory (config.json + model.safetensors), atomically."""
    from safetensors.torch import save_file

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty; choose a new directory")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}-"))
    state = {
        k: v.detach().contiguous()
        for k, v in model.state_dict().items()
        if not (model.config.tie_word_embeddings and k == "lm_head.weight")
    }
    save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    (tmp / "config.json").write_text(json.dumps(model.config.to_hf_dict(), indent=2))
    if tokenizer_dir is not None:
        for name in (
            "tokenizer.json",
            "tokenizer_config.json",
            "special_tokens_map.json",
            "chat_template.jinja",
        ):
            if (Path(tokenizer_dir) / name).is_file():
                shutil.copy2(Path(tokenizer_dir) / name, tmp / name)
    if out.exists():
        out.rmdir()
    os.replace(tmp, out)
    return out
