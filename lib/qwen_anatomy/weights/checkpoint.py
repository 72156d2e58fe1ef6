"""One view over every checkpoint Part II reads: safetensors directories (sharded or not), .gguf files
and built-in names (chapter 10).

The model argument is read by :func:`qwen_anatomy.registry.parse_model_arg`, as for every other
command, so ``params`` and ``embeddings`` accept the same forms (and the same built-in names) as
``info`` or ``generate``. Nothing here builds a model or imports torch: tensors are listed from headers
and read one at a time in row chunks. A built-in model (``qwen2.5-coder-0.5b``, ``smollm2-135m``) and
any ``.gguf`` file are analysed as *stored*: the quantised GGUF tensors (Q4_K, Q6_K, Q4_1, Q8_0, ...),
dequantised by ``gguf`` (the converted safetensors in the cache hold exactly the same float32
values; chapter 10 checks it), so the dtype column says what is really on disk. A GGUF's tokenizer
is the one inside it: the cached conversion's (made once, through transformers, when first needed).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserInputError
from ..registry import BUILTIN_MODELS, ModelRef, builtin_revision, cached_conversion, parse_model_arg
from ..validate import read_config_json
from . import safetensors_io as sio
from .naming import classify
from .safetensors_io import TensorEntry

KNOWN_ARCHITECTURES = {
    "Qwen2ForCausalLM",
    "LlamaForCausalLM",
    "MistralForCausalLM",
    "Qwen2MoeForCausalLM",
    "Qwen3ForCausalLM",
    "Qwen3MoeForCausalLM",
}


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
    ref: ModelRef | None = None  # how the model argument was read (kind, built-in name)
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

    def embedding(self) -> TensorEntry:
        """The 2-D token embedding; a checkpoint without one is bad input."""
        entry = self.find("embedding")
        if entry is None or len(entry.shape) != 2:
            raise UserInputError(
                f"{self.path} has no 2-D embedding tensor (looked for model.embed_tokens.weight)"
            )
        return entry


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
    """A :class:`Checkpoint` for a built-in or shipped name, a local directory or a .gguf file.

    Raises a UserInputError (one line, exit code 2 in the CLI) for a missing path or unknown name
    (:class:`~qwen_anatomy.registry.ModelNotFound`), a directory without weights, a truncated file
    or a header that lies about sizes (:class:`~qwen_anatomy.weights.safetensors_io.WeightsError`).
    """
    ref = parse_model_arg(spec)
    if ref.is_gguf:
        ck = _open_gguf(ref.path)
        if ref.kind == "builtin":
            ck.revision = builtin_revision(ref.name)
    else:
        ck = _open_dir(ref.path)
    ck.ref = ref
    if ck.format == "gguf":  # a directory holding only a GGUF is read as that file
        conversion = cached_conversion(ref if ref.is_gguf else ModelRef("gguf", ck.path, str(ck.path)))
        if conversion is not None and (conversion / "tokenizer.json").is_file():
            ck.tokenizer_dir = conversion
    return ck


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
    return Checkpoint(
        path=path,
        format="gguf",
        entries=g.entries,
        config=config,
        model_id=g.model_id(),
        revision=None,
        tied=config["tie_word_embeddings"],
        notes=notes,
        tokenizer_dir=None,  # the GGUF's own tokenizer: see tokenizer_dir_for
        _gguf=g,
    )


def tokenizer_dir_for(spec: str | os.PathLike, ck: Checkpoint) -> Path | None:
    """A directory with tokenizer.json for decoding tokens. For a GGUF that is the tokenizer stored
    inside it (never a tokenizer.json that happens to sit beside the file): the cached conversion,
    made once now if needed (imports transformers and torch; about a minute for a 0.5B model)."""
    if ck.tokenizer_dir is not None:
        return ck.tokenizer_dir
    if ck.format != "gguf":
        return None
    from ..loading import resolve_model

    ref = ck.ref
    if ref is not None and ref.kind == "builtin" and ref.name in BUILTIN_MODELS:
        return resolve_model(ref.name)
    return resolve_model(ck.path)
