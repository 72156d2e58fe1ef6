"""GGUF checkpoints, tensor by tensor, through the ``gguf`` package (chapters 10 and 12).

llama.cpp stores its own names (``blk.3.attn_q.weight``, ``token_embd.weight``) and, for the Llama
architecture (SmolLM2 is one), permutes the rows of the q and k projections into the rotary layout
its kernels use (pairs (x_i, x_{i+d/2}) become neighbours). Here every name is mapped to the Hugging
Face key and the permutation is undone, exactly as transformers' GGUF loader does, so a dequantised
tensor equals the corresponding tensor of the converted safetensors checkpoint. A row permutation
changes neither the value distribution nor the singular values; undoing it only keeps the layout
comparable across formats. The table's ``note`` column says what was done to each tensor.

Quantised tensors (Q4_1, Q8_0, ...) are dequantised to float32 in row chunks: every row of a
quantised GGUF tensor is a whole number of quantisation blocks (32 values share a scale and, for
Q4_1, a minimum), so a chunk of rows never splits a block.
"""

from __future__ import annotations

import re
from pathlib import Path

from .safetensors_io import TensorEntry, WeightsError

_GGUF_TO_HF = [
    (re.compile(r"^token_embd\.weight$"), "model.embed_tokens.weight"),
    (re.compile(r"^output_norm\.weight$"), "model.norm.weight"),
    (re.compile(r"^output\.weight$"), "lm_head.weight"),
    (re.compile(r"^blk\.(\d+)\.attn_norm\.weight$"), "model.layers.{}.input_layernorm.weight"),
    (re.compile(r"^blk\.(\d+)\.ffn_norm\.weight$"), "model.layers.{}.post_attention_layernorm.weight"),
    (re.compile(r"^blk\.(\d+)\.attn_q\.(weight|bias)$"), "model.layers.{}.self_attn.q_proj.{}"),
    (re.compile(r"^blk\.(\d+)\.attn_k\.(weight|bias)$"), "model.layers.{}.self_attn.k_proj.{}"),
    (re.compile(r"^blk\.(\d+)\.attn_v\.(weight|bias)$"), "model.layers.{}.self_attn.v_proj.{}"),
    (re.compile(r"^blk\.(\d+)\.attn_output\.(weight|bias)$"), "model.layers.{}.self_attn.o_proj.{}"),
    (re.compile(r"^blk\.(\d+)\.ffn_gate\.weight$"), "model.layers.{}.mlp.gate_proj.weight"),
    (re.compile(r"^blk\.(\d+)\.ffn_up\.weight$"), "model.layers.{}.mlp.up_proj.weight"),
    (re.compile(r"^blk\.(\d+)\.ffn_down\.weight$"), "model.layers.{}.mlp.down_proj.weight"),
]
# architectures whose converter permutes q/k rows (llama.cpp's LlamaModel.modify_tensors)
PERMUTED_ARCHS = {"llama", "mistral"}


def hf_name(gguf_name: str) -> str | None:
    """The Hugging Face key of a llama.cpp tensor name, or None when there is no known mapping."""
    for pattern, template in _GGUF_TO_HF:
        m = pattern.match(gguf_name)
        if m:
            return template.format(*m.groups())
    return None


def unpermute_rows(w, n_head: int):
    """Undo llama.cpp's q/k row permutation (rows: n_head blocks of [2, d/2] become [d/2, 2])."""
    rows = w.shape[0]
    half = rows // n_head // 2
    return w.reshape(n_head, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


_SCALARS = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}


def read_gguf_header(path: str | Path, keep_arrays: bool = False) -> tuple[dict, list[dict], int]:
    """(metadata, tensor infos, data start) of a GGUF file, parsed with ``struct`` alone.

    Large arrays (the vocabulary, merges) are skipped unless ``keep_arrays``: the ``gguf`` package's
    reader materialises them and takes 6-17 s on this machine; this takes milliseconds. Tensor infos
    hold name, dims (ne0 first, as stored), ggml type number and offset from the data start.
    """
    import mmap
    import struct

    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as err:
        raise WeightsError(f"{path} cannot be read ({err.strerror})") from None
    if size < 24:  # magic, version, tensor count, key-value count
        raise WeightsError(
            f"{path} is {'empty' if not size else 'truncated'} ({size} bytes), not a GGUF file; "
            "re-download it"
        )
    try:
        with open(path, "rb") as fh:
            mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError) as err:
        raise WeightsError(f"{path} cannot be read: {err}") from None
    try:
        pos = 0

        def take(fmt):
            nonlocal pos
            values = struct.unpack_from(fmt, mm, pos)
            pos += struct.calcsize(fmt)
            return values[0]

        def string():
            nonlocal pos
            n = take("<Q")
            text = bytes(mm[pos : pos + n]).decode("utf-8", errors="replace")
            pos += n
            return text

        def value(vtype, keep=True):
            nonlocal pos
            if vtype in _SCALARS:
                return take(_SCALARS[vtype])
            if vtype == 8:
                return string()
            if vtype == 9:
                etype, count = take("<I"), take("<Q")
                if etype in _SCALARS and not keep:
                    pos += count * struct.calcsize(_SCALARS[etype])
                    return f"<array of {count}>"
                items = [value(etype, keep) for _ in range(count)]
                return items if keep else f"<array of {count}>"
            raise WeightsError(f"{path}: unknown GGUF value type {vtype}; the file may be corrupt")

        if bytes(mm[:4]) != b"GGUF":
            raise WeightsError(f"{path} is not a GGUF file (bad magic); re-download it")
        pos = 4
        version = take("<I")
        n_tensors, n_kv = take("<Q"), take("<Q")
        meta = {"GGUF.version": version}
        for _ in range(n_kv):
            key = string()
            vtype = take("<I")
            meta[key] = value(vtype, keep_arrays or vtype != 9)
        infos = []
        for _ in range(n_tensors):
            name = string()
            n_dims = take("<I")
            dims = [take("<Q") for _ in range(n_dims)]
            infos.append({"name": name, "dims": dims, "type": take("<I"), "offset": take("<Q")})
        align = meta.get("general.alignment", 32)
        if not (isinstance(align, int) and 0 < align <= 1 << 20):
            raise WeightsError(f"{path}: general.alignment={align!r} is not a positive integer; corrupt file")
        data_start = pos + (-pos % align)
    except struct.error:
        raise WeightsError(f"{path} is truncated inside its GGUF header; re-download it") from None
    except (RecursionError, MemoryError, OverflowError):
        raise WeightsError(f"{path} has a corrupt GGUF header (nonsense sizes); re-download it") from None
    finally:
        mm.close()
    return meta, infos, data_start


class GGUFCheckpoint:
    """Tensor entries and row-chunk dequantisation of one .gguf file."""

    def __init__(self, path: str | Path) -> None:
        from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

        self.path = Path(path)
        self.meta, infos, data_start = read_gguf_header(self.path)
        size = self.path.stat().st_size
        arch = self.meta.get("general.architecture") or ""
        self.arch = arch
        self.n_head = self.meta.get(f"{arch}.attention.head_count")
        self.n_head_kv = self.meta.get(f"{arch}.attention.head_count_kv") or self.n_head
        self.entries: list[TensorEntry] = []
        for info in infos:
            try:
                qtype = GGMLQuantizationType(info["type"])
            except ValueError:
                raise WeightsError(
                    f"{self.path}: tensor {info['name']} has unknown ggml type {info['type']}"
                ) from None
            if qtype not in GGML_QUANT_SIZES or not info["dims"]:
                raise WeightsError(
                    f"{self.path}: tensor {info['name']} has no dimensions or no known block size"
                )
            block, type_size = GGML_QUANT_SIZES[qtype]
            dims = [int(d) for d in info["dims"]]
            shape = tuple(reversed(dims))  # GGUF lists ne0 (the contiguous, column axis) first
            if dims[0] % block:
                raise WeightsError(f"{self.path}: {info['name']} rows are not whole {qtype.name} blocks")
            row_bytes = dims[0] // block * type_size
            rows = 1
            for d in dims[1:]:
                rows *= d
            nbytes = rows * row_bytes
            offset = data_start + int(info["offset"])
            if offset + nbytes > size:
                raise WeightsError(
                    f"{self.path} is truncated: tensor {info['name']!r} ends at byte {offset + nbytes} "
                    f"but the file has {size} bytes; re-download it"
                )
            gname = info["name"]
            name = hf_name(gname)
            notes = []
            if name is None:
                name = gname
                notes.append("no Hugging Face mapping for this llama.cpp name")
            if qtype.name not in ("F32", "F16", "F64"):
                notes.append(f"dequantised from {qtype.name} by gguf")
            permute = None
            if arch in PERMUTED_ARCHS and re.match(r"^blk\.\d+\.attn_[qk]\.(weight|bias)$", gname):
                permute = self.n_head if ".attn_q." in gname else self.n_head_kv
                notes.append("llama.cpp q/k row permutation undone")
            self.entries.append(
                TensorEntry(
                    name=name,
                    dtype=qtype.name,
                    shape=shape,
                    shard=str(self.path),
                    offset=offset,
                    nbytes=nbytes,
                    source_name=gname,
                    note="; ".join(notes),
                    extra={
                        "permute_heads": permute,
                        "qtype": int(qtype),
                        "row_bytes": row_bytes,
                        "rows": rows,
                    },
                )
            )

    def read_raw(self, entry: TensorEntry, start: int, stop: int):
        """The stored bytes of rows [start, stop): a (stop - start, row_bytes) uint8 array, in the file's
        own row order (q/k rows of a Llama-family file stay permuted; a row holds whole blocks, so a
        permutation only moves blocks around). :func:`qwen_anatomy.weights.quant.decode_blocks` reads
        codes and scales from these bytes (chapter 10)."""
        import numpy as np

        row_bytes = entry.extra["row_bytes"]
        with open(entry.shard, "rb") as fh:
            fh.seek(entry.offset + start * row_bytes)
            buf = fh.read((stop - start) * row_bytes)
        if len(buf) != (stop - start) * row_bytes:
            raise WeightsError(f"{entry.shard} is truncated inside {entry.source_name!r}; re-download it")
        return np.frombuffer(buf, dtype=np.uint8).reshape(stop - start, row_bytes)

    def read_raw_rows(self, entry: TensorEntry, rows):
        """The stored bytes of the rows ``rows`` (row indices in file order), through a memory map, so
        only their pages are read: a sample of rows spread over a large tensor costs little."""
        import numpy as np

        rows = np.asarray(rows, dtype=np.int64)
        n, row_bytes = entry.extra["rows"], entry.extra["row_bytes"]
        if rows.size and (rows.min() < 0 or rows.max() >= n):
            raise ValueError(f"row indices must lie in [0, {n}) for {entry.source_name!r}")
        mm = np.memmap(entry.shard, dtype=np.uint8, mode="r", offset=entry.offset, shape=(n, row_bytes))
        try:
            return np.array(mm[rows])
        finally:
            del mm

    def read_rows(self, entry: TensorEntry, start: int, stop: int):
        """Rows [start, stop) dequantised to float32 (a permuted q/k tensor is read whole)."""
        import numpy as np
        from gguf.constants import GGMLQuantizationType
        from gguf.quants import dequantize

        qtype = GGMLQuantizationType(entry.extra["qtype"])
        rows = entry.extra["rows"]
        permute = entry.extra.get("permute_heads")
        lo, hi = (0, rows) if permute else (start, stop)
        raw = self.read_raw(entry, lo, hi)
        values = np.asarray(dequantize(raw, qtype), dtype=np.float32).reshape(hi - lo, -1)
        if permute:
            values = unpermute_rows(values, permute)[start:stop]
        return values

    def model_id(self) -> str | None:
        org, base, size = (
            self.meta.get(k) for k in ("general.organization", "general.basename", "general.size_label")
        )
        if org and base:
            return f"{org}/{base}" + (f"-{size}" if size else "")
        return self.meta.get("general.name")

    def config_summary(self) -> dict:
        """Hyper-parameters from the GGUF metadata (what config.json would hold)."""
        a = self.arch
        keys = {
            "num_hidden_layers": f"{a}.block_count",
            "hidden_size": f"{a}.embedding_length",
            "intermediate_size": f"{a}.feed_forward_length",
            "num_attention_heads": f"{a}.attention.head_count",
            "num_key_value_heads": f"{a}.attention.head_count_kv",
            "vocab_size": f"{a}.vocab_size",
        }
        out = {k: self.meta.get(v) for k, v in keys.items()}
        out["architecture"] = a
        out["tie_word_embeddings"] = not any(e.name == "lm_head.weight" for e in self.entries)
        return out
