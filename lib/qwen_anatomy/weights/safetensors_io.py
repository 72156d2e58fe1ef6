"""Safetensors without torch: headers by ``json`` + ``struct``, data by numpy (chapter 10).

A safetensors file is an 8-byte little-endian header length N, N bytes of JSON
(``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}``), then the raw
data; offsets count from the end of the header. Reading the header touches no tensor data, so a
summary of a 15 GB checkpoint takes milliseconds. Every header is checked against the file size
before anything is analysed: a truncated file, or a header that lies about sizes, is a
:class:`~qwen_anatomy.loading.CheckpointError`-style one-line error, never a silent wrong number.

numpy has no bfloat16: a bf16 value is the top 16 bits of a float32, so ``uint16 << 16`` viewed as
float32 is the exact value (NaN payloads and infinities included). Module level imports nothing
heavy: :func:`read_header` and :func:`checkpoint_tensors` run without numpy.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

from ..validate import CheckpointError

# bytes per element of each safetensors dtype
DTYPE_BYTES = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U64": 8,
    "U32": 4,
    "U16": 2,
    "U8": 1,
    "BOOL": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
}
# dtypes this module decodes to float32 / float64 values (FP8 needs ml_dtypes: reported, not analysed)
NUMPY_DTYPES = {
    "F64": "<f8",
    "F32": "<f4",
    "F16": "<f2",
    "BF16": "<u2",
    "I64": "<i8",
    "I32": "<i4",
    "I16": "<i2",
    "I8": "i1",
    "U64": "<u8",
    "U32": "<u4",
    "U16": "<u2",
    "U8": "u1",
    "BOOL": "u1",
}
MAX_HEADER_BYTES = 100_000_000  # the format's own limit


class WeightsError(CheckpointError):
    """A checkpoint that cannot be analysed as given (the message names the file and the fix)."""


@dataclass
class TensorEntry:
    """One stored tensor: where it is and what it is, without its data.

    ``name`` is the Hugging Face key (for GGUF files, the mapped key; ``source_name`` keeps the
    stored name). ``offset`` is the absolute byte offset of the data in ``shard``.
    """

    name: str
    dtype: str
    shape: tuple[int, ...]
    shard: str
    offset: int = 0
    nbytes: int = 0
    source_name: str | None = None
    note: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n


def read_header(path: str | os.PathLike) -> tuple[dict, int]:
    """(header dict, data start offset) of one safetensors file, validated against the file size."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise WeightsError(f"{path} is truncated: {size} bytes, not even the 8-byte header length")
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER_BYTES or 8 + n > size:
                raise WeightsError(
                    f"{path} is truncated or not safetensors: header claims {n} bytes but the file has "
                    f"{size}; re-download or re-save the checkpoint"
                )
            raw = fh.read(n)
    except OSError as err:
        raise WeightsError(f"{path} cannot be read: {err.strerror}") from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise WeightsError(
            f"{path} has a corrupt header ({err}); re-download or re-save the checkpoint"
        ) from None
    if not isinstance(header, dict):
        raise WeightsError(f"{path} has a corrupt header (not a JSON object)")
    return header, 8 + n


def file_entries(path: str | os.PathLike) -> tuple[list[TensorEntry], dict]:
    """Tensor entries of one safetensors file (header order) and its ``__metadata__``.

    Raises a CheckpointError when an entry's dtype, shape or byte range is malformed or disagrees
    (:func:`qwen_anatomy.validate.tensor_header_entry`), when two tensors overlap, or when one
    reaches past the end of the file (a truncated download).
    """
    from ..validate import tensor_header_entry

    path = Path(path)
    header, start = read_header(path)
    size = path.stat().st_size
    meta = header.pop("__metadata__", {}) or {}
    if not isinstance(meta, dict):
        raise WeightsError(f"{path}: __metadata__ is not an object; the header is corrupt")
    entries = []
    for name, info in header.items():
        dtype, shape, begin, end = tensor_header_entry(path, name, info)
        if start + end > size:
            raise WeightsError(
                f"{path} is truncated: tensor {name!r} ends at byte {start + end} but the file has "
                f"{size} bytes (header offsets exceed the file); re-download it"
            )
        entries.append(
            TensorEntry(
                name=name, dtype=dtype, shape=shape, shard=str(path), offset=start + begin, nbytes=end - begin
            )
        )
    entries.sort(key=lambda e: e.offset)
    for before, after in zip(entries, entries[1:], strict=False):
        if after.offset < before.offset + before.nbytes:
            raise WeightsError(
                f"{path}: tensors {before.name!r} and {after.name!r} overlap in the data; the header is "
                "corrupt: re-save or re-download the checkpoint"
            )
    return entries, meta


def weight_files(directory: Path) -> list[Path]:
    """The safetensors files of a directory: the shards its index names, or every *.safetensors."""
    from ..validate import shard_files

    shards = shard_files(directory)  # the index checked: a weight_map of existing shard file names
    return shards if shards is not None else sorted(directory.glob("*.safetensors"))


def checkpoint_tensors(directory: str | os.PathLike) -> list[TensorEntry]:
    """Every tensor of a safetensors checkpoint directory (sharded or not), headers only.

    With ``model.safetensors.index.json`` the index is followed: each name must sit in the shard the
    index says (a mismatch is an error, not a guess).
    """
    directory = Path(directory)
    from ..validate import pickle_files, read_json, refuse_pickles

    files = weight_files(directory)
    if not files:
        pickles = pickle_files(directory)
        if pickles:  # header-only readers never unpickle, so there is no flag to allow them
            refuse_pickles(directory, pickles, flag=None)
        raise WeightsError(f"{directory} holds no *.safetensors weights")
    index = directory / "model.safetensors.index.json"
    weight_map = read_json(index)["weight_map"] if index.is_file() else None
    entries: list[TensorEntry] = []
    for f in files:
        found, _ = file_entries(f)
        for e in found:
            if weight_map is not None and weight_map.get(e.name) != f.name:
                raise WeightsError(
                    f"{index} puts {e.name!r} in {weight_map.get(e.name)!r} but it is stored in {f.name}"
                )
        entries += found
    if weight_map is not None:
        stored = {e.name for e in entries}
        absent = [k for k in weight_map if k not in stored]
        if absent:
            raise WeightsError(f"{index} lists {len(absent)} tensor(s) no shard holds, first {absent[0]!r}")
    return entries


# -- data -------------------------------------------------------------------------------------------
def bf16_to_float32(raw):
    """Exact float32 values of bf16 bit patterns (a numpy uint16 array): ``bits << 16``."""
    import numpy as np

    return (raw.astype(np.uint32) << 16).view(np.float32)


def float32_to_bf16_bits(values):
    """bf16 bit patterns (uint16) of float32 values, round-to-nearest-even as torch does (NaN kept)."""
    import numpy as np

    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    rounding = ((bits >> 16) & 1) + 0x7FFF
    out = ((bits + rounding) >> 16).astype(np.uint16)
    nan = np.isnan(values)
    out[nan] = ((bits[nan] >> 16) | 0x0040).astype(np.uint16)  # quiet NaN, sign kept
    return out


def decode(raw, dtype: str):
    """float32 (or float64 for F64/I64) values of raw little-endian data of a safetensors dtype."""
    import numpy as np

    if dtype == "BF16":
        return bf16_to_float32(raw)
    if dtype in ("F64", "I64", "U64", "I32", "U32"):
        return raw.astype(np.float64)
    return raw.astype(np.float32)


def read_rows(entry: TensorEntry, start: int, stop: int):
    """Rows [start, stop) of a stored tensor as a 2-D float array (1-D tensors are one row)."""
    import numpy as np

    if entry.dtype not in NUMPY_DTYPES:
        raise WeightsError(f"{entry.name}: dtype {entry.dtype} cannot be decoded without ml_dtypes")
    rows, cols = matrix_shape(entry.shape)
    itemsize = DTYPE_BYTES[entry.dtype]
    count = (stop - start) * cols
    with open(entry.shard, "rb") as fh:
        fh.seek(entry.offset + start * cols * itemsize)
        buf = fh.read(count * itemsize)
    if len(buf) != count * itemsize:
        raise WeightsError(f"{entry.shard} is truncated inside {entry.name!r}; re-download it")
    raw = np.frombuffer(buf, dtype=NUMPY_DTYPES[entry.dtype]).reshape(stop - start, cols)
    return decode(raw, entry.dtype)


def matrix_shape(shape: tuple[int, ...]) -> tuple[int, int]:
    """(rows, cols) a tensor is analysed as: 1-D is one row, N-D is (shape[0], prod(rest))."""
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return 1, shape[0]
    cols = 1
    for s in shape[1:]:
        cols *= s
    return shape[0], cols


# -- writing (synthetic checkpoints for tests, the null model and the benchmark) ---------------------
def write_safetensors(path: str | os.PathLike, tensors, metadata: dict | None = None) -> Path:
    """Write a safetensors file from ``[(name, dtype, shape, producer)]`` one tensor at a time.

    ``producer()`` returns the tensor's data as a numpy array of the stored dtype (bf16 as uint16
    bits), or an iterable of such row blocks: only one tensor (or block) is in memory at a time, so multi-GB stand-ins can be written on small machines.
    Written to a temporary name and renamed, so a crash never leaves a plausible-looking file.
    """
    path = Path(path)
    header: dict = {"__metadata__": metadata or {"format": "pt"}}
    offset = 0
    for name, dtype, shape, _ in tensors:
        numel = 1
        for s in shape:
            numel *= s
        nbytes = numel * DTYPE_BYTES[dtype]
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # align data to 8 bytes, as the reference writer does
    tmp = path.with_name(f".{path.name}.tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(tmp, "wb") as fh:
        fh.write(struct.pack("<Q", len(blob)))
        fh.write(blob)
        for name, _dtype, _shape, producer in tensors:
            data = producer()
            pieces = [data] if hasattr(data, "tobytes") else data  # an array, or an iterable of row blocks
            written = 0
            for piece in pieces:
                raw = piece.tobytes()
                fh.write(raw)
                written += len(raw)
            expected = header[name]["data_offsets"][1] - header[name]["data_offsets"][0]
            if written != expected:
                raise ValueError(f"{name}: producer gave {written} bytes, header says {expected}")
    os.replace(tmp, path)
    return path
