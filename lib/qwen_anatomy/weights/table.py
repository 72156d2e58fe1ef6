"""The per-tensor table behind ``qwen-anatomy params`` (chapters 10 and 11).

One row per stored tensor: identity, distribution (float64), and for 2-D tensors the spectrum of the
full matrix. Rows are appended to ``FILE.partial.jsonl`` as each tensor finishes, so an interrupted
run keeps its rows and a re-run with the same options resumes; at the end the table is written in
the format FILE's extension names (.csv, .parquet, .jsonl) and the partial file is removed. The run
record ``FILE.run.json`` holds versions, tolerances, seed, threads, per-stage wall time and peak RSS.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from pathlib import Path

from ..errors import UserInputError
from . import safetensors_io as sio
from .checkpoint import Checkpoint, open_checkpoint
from .naming import classify

SPECTRA = ("none", "gram", "exact")
TABLE_FORMATS = {".csv": "csv", ".parquet": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json"}
FORMATS = ("csv", "json", "jsonl", "parquet")  # json: one array of records (the seed tool's --format json)
CHUNK_ELEMENTS = 2_000_000  # rows per chunk chosen so a float64 chunk is about 16 MB
IN_MEMORY_ELEMENTS = 40_000_000  # tensors up to this size are read once and kept as float32

IDENTITY_COLUMNS = [
    "model_path", "model_id", "revision", "format", "shard", "name", "source_name", "layer",
    "block_type", "kind", "tied_to", "shape", "rows", "cols", "numel", "dtype", "bytes", "status", "note",
]  # fmt: skip
DISTRIBUTION_COLUMNS = [
    "mean", "std", "var", "min", "max", "abs_max", "abs_mean", "rms", "fro_norm", "skewness",
    "excess_kurtosis", "zero_frac", "near_zero_abs_frac", "near_zero_abs_tol", "near_zero_rel_frac",
    "near_zero_rel_tol", "beyond_6sigma_frac", "nan_count", "inf_count",
]  # fmt: skip
SPECTRAL_COLUMNS = [
    "spectra_method", "design_rank", "numerical_rank", "rank_tol", "sigma_max", "sigma_min",
    "condition_number", "stable_rank", "effective_rank", "energy_rank_90", "energy_rank_95",
    "energy_rank_99", "energy_rank_90_ratio", "energy_rank_95_ratio", "energy_rank_99_ratio",
    "participation_ratio", "nuclear_norm", "alpha_method", "alpha", "alpha_xmin", "alpha_ks", "alpha_tail",
    "alpha_weighted", "log_alpha_norm", "log_norm", "log_spectral_norm",
]  # fmt: skip
COLUMNS = IDENTITY_COLUMNS + DISTRIBUTION_COLUMNS + SPECTRAL_COLUMNS


def _order_key(entry) -> tuple:
    info = classify(entry.name)
    if info["layer"] is not None:
        return (1, info["layer"], entry.name)
    late = info["block_type"] in ("final_norm", "lm_head")
    return (2 if late else 0, 0, entry.name)


def select_entries(ck: Checkpoint, include: str | None = None, max_tensors: int | None = None) -> list:
    """Entries in table order (non-layer first, then by layer), filtered by a name regex, capped."""
    entries = sorted(ck.entries, key=_order_key)
    if ck.tied:
        entries = [e for e in entries if e.name != "lm_head.weight"]  # noted on the embedding row instead
    if include:
        try:
            pattern = re.compile(include)
        except re.error as err:
            raise UserInputError(f"--include {include!r} is not a valid regular expression ({err})") from None
        entries = [e for e in entries if pattern.search(e.name)]
    if max_tensors is not None:
        entries = entries[:max_tensors]
    return entries


# -- header-only summary --------------------------------------------------------------------------------
def describe(spec: str | os.PathLike) -> dict:
    """Shapes, counts, dtypes, bytes and tying from headers alone (no numpy, no torch, no data)."""
    ck = open_checkpoint(spec)
    by_dtype: dict[str, dict] = {}
    by_block: dict[str, dict] = {}
    layers = set()
    shapes: dict[tuple, int] = {}
    total = 0
    for e in ck.entries:
        info = classify(e.name)
        if ck.tied and e.name == "lm_head.weight":
            continue
        total += e.numel
        d = by_dtype.setdefault(e.dtype, {"tensors": 0, "parameters": 0, "bytes": 0})
        d["tensors"] += 1
        d["parameters"] += e.numel
        d["bytes"] += e.nbytes
        b = by_block.setdefault(info["block_type"], {"tensors": 0, "parameters": 0})
        b["tensors"] += 1
        b["parameters"] += e.numel
        if info["layer"] is not None:
            layers.add(info["layer"])
        key = (info["block_type"], info["kind"], "x".join(map(str, e.shape)))
        shapes[key] = shapes.get(key, 0) + 1
    names = {e.name for e in ck.entries}
    if ck.tied:
        tying = "tied: the LM head is the embedding (" + (
            "lm_head.weight also stored, not counted)" if "lm_head.weight" in names else "not stored)"
        )
    else:
        tying = "untied: separate lm_head.weight" if "lm_head.weight" in names else "no LM head stored"
    return {
        "model_path": str(ck.path),
        "format": ck.format,
        "model_id": ck.model_id,
        "revision": ck.revision,
        "files": sorted({Path(e.shard).name for e in ck.entries}),
        "tensors": sum(v["tensors"] for v in by_dtype.values()),
        "parameters": total,
        "bytes": sum(v["bytes"] for v in by_dtype.values()),
        "layers": sorted(layers),
        "tying": tying,
        "by_dtype": by_dtype,
        "by_block_type": by_block,
        "shapes": [{"block_type": k[0], "kind": k[1], "shape": k[2], "count": v} for k, v in shapes.items()],
        "notes": ck.notes,
    }


def format_describe(d: dict) -> str:
    layers = d["layers"]
    layer_text = f"{len(layers)} ({layers[0]}-{layers[-1]})" if layers else "0"
    lines = [
        f"model      {d['model_path']}  [{d['format']}]",
        f"model id   {d['model_id'] or '-'}   revision {d['revision'] or '-'}",
        f"files      {len(d['files'])}: {', '.join(d['files'][:4])}{' ...' if len(d['files']) > 4 else ''}",
        f"tensors    {d['tensors']}   parameters {d['parameters']:,}   bytes {d['bytes']:,}",
        f"layers     {layer_text}",
        f"tying      {d['tying']}",
        "dtypes     "
        + ", ".join(f"{k}: {v['tensors']} tensors, {v['bytes']:,} B" for k, v in d["by_dtype"].items()),
        "shapes:",
    ]
    for s in d["shapes"]:
        lines.append(f"  {s['count']:>4} x {s['block_type']:<11} {s['kind']:<6} {s['shape']}")
    lines += [f"note: {n}" for n in d["notes"]]
    return "\n".join(lines)


# -- one tensor -----------------------------------------------------------------------------------------
def identity_row(ck: Checkpoint, entry) -> dict:
    """A row with the identity columns filled from the header alone (statistics left empty)."""
    from . import stats

    info = classify(entry.name)
    rows, cols = sio.matrix_shape(entry.shape)
    row = {c: None for c in COLUMNS}
    row.update(
        model_path=str(ck.path),
        model_id=ck.model_id,
        revision=ck.revision,
        format=ck.format,
        shard=Path(entry.shard).name,
        name=entry.name,
        source_name=entry.source_name or entry.name,
        layer=info["layer"],
        block_type=info["block_type"],
        kind=info["kind"],
        tied_to="lm_head.weight (tied, not stored)"
        if ck.tied and info["block_type"] == "embedding"
        else None,
        shape="x".join(map(str, entry.shape)),
        rows=rows if len(entry.shape) >= 2 else None,
        cols=cols,
        numel=entry.numel,
        dtype=entry.dtype,
        bytes=entry.nbytes,
        status="ok",
        note="; ".join([n for n in [entry.note, *ck.notes] if n]),
        near_zero_abs_tol=stats.NEAR_ZERO_ABS,
    )
    return row


def analyse_tensor(
    ck: Checkpoint, entry, spectra: str = "gram", timings: dict | None = None, alpha_method: str = "ours"
) -> dict:
    """One table row (a dict with every column of :data:`COLUMNS`); ``alpha_method`` picks the
    power-law fit (:func:`qwen_anatomy.weights.stats.power_law_fit`: "ours" or WeightWatcher's "ww")."""
    import numpy as np

    from . import stats

    rows, cols = sio.matrix_shape(entry.shape)
    row = identity_row(ck, entry)
    if ck.format == "safetensors" and entry.dtype not in sio.NUMPY_DTYPES:
        row["status"] = f"skipped: dtype {entry.dtype} cannot be decoded without ml_dtypes"
        return row
    timings = timings if timings is not None else {}
    step = max(1, CHUNK_ELEMENTS // max(cols, 1))
    cached = None
    if entry.numel <= IN_MEMORY_ELEMENTS:
        t = time.perf_counter()
        cached = ck.read_rows(entry, 0, rows)
        timings["read"] = timings.get("read", 0.0) + time.perf_counter() - t

    def chunks():
        for start in range(0, rows, step):
            stop = min(rows, start + step)
            yield cached[start:stop] if cached is not None else ck.read_rows(entry, start, stop)

    t = time.perf_counter()
    acc = stats.Moments()
    for c in chunks():
        acc.update(c)
    dist = acc.result()
    dist.update(stats.tail_counts(chunks(), dist["mean"], dist["std"], dist["abs_max"]))
    row.update(dist)
    timings["statistics"] = timings.get("statistics", 0.0) + time.perf_counter() - t
    if dist["nan_count"] or dist["inf_count"]:
        row["status"] = (
            f"non-finite values ({dist['nan_count']} NaN, {dist['inf_count']} Inf): statistics over "
            "the finite values, spectra skipped"
        )
        return row
    if spectra == "none" or len(entry.shape) != 2:
        return row
    t = time.perf_counter()
    sigma = (stats.singular_values_gram if spectra == "gram" else stats.singular_values_exact)(
        chunks, (rows, cols)
    )
    row["spectra_method"] = spectra
    row.update(stats.spectral_metrics(sigma, (rows, cols)))
    row.update(stats.power_law_fit(sigma.astype(np.float64) ** 2, method=alpha_method))
    timings["spectra"] = timings.get("spectra", 0.0) + time.perf_counter() - t
    return row


# -- the seed tool's layout ---------------------------------------------------------------------------------
# The seed ("AI Block Research", github.com/chenfengMeng2021/transformer_parameter_analysis) wrote two
# per-tensor layouts: scripts/analyze.py's 16 columns (the list the spec names; that script wrote the
# embedding row only) and scripts/transformer_analysis.py's 22 (the CSV its run.py wrote for every
# tensor of a model). ``params --seed-schema [analyze|transformer]`` writes either; rows in the resume
# file stay in our columns, the view is applied when the table is written.
SEED_SCHEMAS = {
    "analyze": [
        "model_path", "model_id", "revision", "param_name", "layer_index", "block_type", "shape", "rows",
        "cols", "rank", "mean", "std", "var", "sparsity", "dtype", "created_at",
    ],
    "transformer": [
        "model_path", "model_id", "revision", "param_name", "layer_index", "block_type", "shape", "rows",
        "cols", "design_rank", "actual_rank", "rank_ratio", "svd_90_percent_rank", "svd_90_percent_ratio",
        "mean", "std", "var", "min", "max", "sparsity", "dtype", "created_at",
    ],
}  # fmt: skip
# Our block type -> the seed's name (its classify_matrix_type). The seed had no name for MLP matrices
# (it typed them "other", a bug not reproduced): they get their Hugging Face module names, the seed's
# own pattern (q_proj, k_proj, ...). It had no final-norm type: that row is "norm" with an empty
# layer_index, as in the seed. Biases take their matrix's name (the seed typed them "other" too).
SEED_BLOCK_TYPES = {
    "embedding": "embedding",
    "attn_q": "q_proj",
    "attn_k": "k_proj",
    "attn_v": "v_proj",
    "attn_o": "o_proj",
    "mlp_gate": "gate_proj",
    "mlp_up": "up_proj",
    "mlp_down": "down_proj",
    "norm": "norm",
    "final_norm": "norm",
    "lm_head": "output",
    "moe_router": "moe_gate",
    "moe_expert": "moe_expert",
    "other": "other",
}
# Stored dtype -> the numpy/torch name style of the seed's dtype column. The seed printed the float32
# it had converted every tensor to (a bug); here the column is the stored type. GGUF block types
# (Q4_K, Q8_0, ...) have no such name and pass through unchanged.
SEED_DTYPES = {
    "BF16": "bfloat16", "F16": "float16", "F32": "float32", "F64": "float64", "I8": "int8",
    "I16": "int16", "I32": "int32", "I64": "int64", "U8": "uint8", "BOOL": "bool",
    "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2",
}  # fmt: skip
_SEED_INTS = ("layer_index", "rows", "cols", "rank", "design_rank", "actual_rank", "svd_90_percent_rank")
_SEED_STRINGS = (
    "model_path",
    "model_id",
    "revision",
    "param_name",
    "block_type",
    "shape",
    "dtype",
    "created_at",
)


def seed_created_at() -> str:
    """A timestamp as the seed wrote ``created_at``: UTC, ISO 8601 without offset, microseconds."""
    import datetime as dt

    return dt.datetime.now(dt.UTC).replace(tzinfo=None).isoformat(timespec="microseconds")


def _dims(shape) -> tuple[int, ...]:
    """Our shape text (``"896x64"``, ``"64"``, ``""`` for a scalar) as a tuple."""
    import pandas as pd

    if shape is None or (not isinstance(shape, str) and pd.isna(shape)):
        return ()
    text = str(shape)
    return tuple(int(p) for p in text.split("x")) if text else ()


def to_seed_schema(df, schema: str = "analyze", created_at: str | None = None):
    """The table in the seed tool's column names, order, block-type and dtype names (chapter 10).

    Column by column (``schema`` "analyze": 16 columns; "transformer": 22):
    param_name = name; layer_index = layer (layer 0 stays 0: the seed's falsy-zero bug lost it; empty
    for tensors outside the layer stack); block_type through :data:`SEED_BLOCK_TYPES`; shape as the
    seed printed it (``"(896, 64)"``, ``"(64,)"``); rows, cols of the matrix analysed (a 1-D tensor is
    one row, as in the seed); rank = actual_rank = our numerical_rank (full matrix, tolerance
    σ_max·max(m, n)·eps, where the seed counted σ > 1e-6·σ_max on a top-left block of at most
    1000-2000 rows and capped it at 128), 1 for a non-zero 1-D tensor, empty where no spectrum was
    computed (``--spectra none``, N-D tensors, marked rows); design_rank = min(rows, cols);
    svd_90_percent_rank = energy_rank_90 (fewest σ holding 90 % of Σσ², the seed's definition, here on
    the full matrix); mean, std, var (population, float64), min, max as ours; sparsity = share of
    |x| <= 1e-8 (near_zero_abs_frac: the seed's definition and tolerance); dtype the stored type in
    numpy/torch spelling (:data:`SEED_DTYPES`); created_at one UTC timestamp for the whole table.
    """
    import numpy as np
    import pandas as pd

    if schema not in SEED_SCHEMAS:
        raise UserInputError(f"--seed-schema {schema!r}: choose one of {', '.join(SEED_SCHEMAS)}")
    df = df.reset_index(drop=True)
    dims = [_dims(s) for s in df["shape"]]
    shapes = [sio.matrix_shape(d) for d in dims]
    rows = np.array([r for r, _ in shapes], dtype=float)
    cols = np.array([c for _, c in shapes], dtype=float)
    ok = (df["status"].astype("string").fillna("") == "ok").to_numpy(bool)
    matrix = np.array([len(d) == 2 for d in dims], dtype=bool)
    vector = np.array([len(d) < 2 for d in dims], dtype=bool)

    def num(col):
        return pd.to_numeric(df[col], errors="coerce").to_numpy(float)

    fro = num("fro_norm")
    vector_rank = np.where(np.isnan(fro), np.nan, (fro > 0).astype(float))  # a 1 x n matrix: 1 unless zero
    rank = np.where(
        ok, np.where(matrix, num("numerical_rank"), np.where(vector, vector_rank, np.nan)), np.nan
    )
    e90 = np.where(ok, np.where(matrix, num("energy_rank_90"), np.where(vector, vector_rank, np.nan)), np.nan)
    design = np.minimum(rows, cols)
    with np.errstate(invalid="ignore", divide="ignore"):
        seed = pd.DataFrame(
            {
                "model_path": df["model_path"],
                "model_id": df["model_id"],
                "revision": df["revision"],
                "param_name": df["name"],
                "layer_index": df["layer"],
                "block_type": [SEED_BLOCK_TYPES[b] for b in df["block_type"]],
                "shape": [str(d) for d in dims],
                "rows": rows,
                "cols": cols,
                "rank": rank,
                "design_rank": design,
                "actual_rank": rank,
                "rank_ratio": rank / design,
                "svd_90_percent_rank": e90,
                "svd_90_percent_ratio": e90 / design,
                "mean": num("mean"),
                "std": num("std"),
                "var": num("var"),
                "min": num("min"),
                "max": num("max"),
                "sparsity": num("near_zero_abs_frac"),
                "dtype": [SEED_DTYPES.get(str(t), str(t)) for t in df["dtype"]],
                "created_at": created_at or seed_created_at(),
            }
        )
    return _seed_types(seed[SEED_SCHEMAS[schema]])


def _seed_types(df):
    """Integer columns as nullable Int64, text as string, the rest float64 (as read back from any format)."""
    import pandas as pd

    df = df.reset_index(drop=True).copy()
    for col in df.columns:
        if col in _SEED_INTS:
            df[col] = pd.array(pd.to_numeric(df[col], errors="coerce").astype("float64"), dtype="Float64")
            df[col] = df[col].round().astype("Int64")
        elif col in _SEED_STRINGS:
            df[col] = df[col].astype("string")
        else:
            df[col] = pd.to_numeric(df[col], errors="coerce").astype("float64")
    return df


# -- writing ----------------------------------------------------------------------------------------------
def table_format(out: str | os.PathLike, fmt: str | None = None) -> str:
    """The table's format: ``fmt`` (``--format``) when given, else the one out's extension names.

    A ``--format`` that disagrees with a known extension is refused (``t.csv`` holding Parquet would
    mislead every reader); with ``--format`` an unknown extension, or none, is accepted.
    """
    suffix = Path(out).suffix.lower()
    named = TABLE_FORMATS.get(suffix)
    if fmt is None:
        if named is None:
            raise UserInputError(
                f"--out {out}: unknown table format {suffix!r}; use .csv, .parquet, .jsonl or .json "
                "(or give --format)"
            )
        return named
    if fmt not in FORMATS:
        raise UserInputError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    if named is not None and named != fmt:
        raise UserInputError(
            f"--out {out} names {named} by its extension but --format is {fmt}; make them agree "
            "(or drop --format)"
        )
    return fmt


def to_frame(rows: list[dict]):
    """A DataFrame with the table's columns and types (layer is a nullable integer: 0 stays 0)."""
    import pandas as pd

    df = pd.DataFrame(rows, columns=COLUMNS)
    for col in ("layer", "rows", "design_rank", "numerical_rank", "alpha_tail", "energy_rank_90",
                "energy_rank_95", "energy_rank_99"):  # fmt: skip
        df[col] = pd.array(df[col].astype("float64"), dtype="Float64").round().astype("Int64")
    for col in ("model_id", "revision", "tied_to", "spectra_method", "alpha_method", "source_name", "note"):
        df[col] = df[col].astype("string")
    return df


def write_table(
    df,
    out: str | os.PathLike,
    fmt: str | None = None,
    seed_schema: str | None = None,
    created_at: str | None = None,
) -> Path:
    """Write atomically (a temporary file, then a rename) in ``fmt`` or the format the extension names.

    ``seed_schema`` ("analyze" or "transformer") writes :func:`to_seed_schema` of ``df`` instead.
    JSON is one array of records, JSON lines one record per line; both keep every float exactly
    (Python's shortest repr; pandas' writer keeps 10 decimals), missing values are null and an
    infinite condition number is ``Infinity`` (read by Python's json module and pandas).
    """
    fmt = table_format(out, fmt)
    if seed_schema is not None:
        df = to_seed_schema(df, seed_schema, created_at)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    if fmt == "csv":
        df.to_csv(tmp, index=False)
    elif fmt == "parquet":
        df.to_parquet(tmp, index=False)
    else:
        records = _records(df)
        with open(tmp, "w", encoding="utf-8") as fh:
            if fmt == "json":
                json.dump(records, fh)
                fh.write("\n")
            else:
                fh.writelines(json.dumps(r) + "\n" for r in records)
    os.replace(tmp, out)
    return out


def _records(df) -> list[dict]:
    """Rows as plain Python values: NaN and NA become None, numpy scalars Python numbers."""
    cols = list(df.columns)
    return [{c: _plain(v) for c, v in zip(cols, row, strict=True)} for row in df.itertuples(index=False)]


def _plain(value):
    import pandas as pd

    if value is None or value is pd.NA:
        return None
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def read_table(path: str | os.PathLike, fmt: str | None = None):
    """Read a table written by :func:`write_table` back into the same DataFrame types.

    Our columns come back through :func:`to_frame`, a seed-schema table (recognised by its exact
    columns) with :func:`to_seed_schema`'s types.
    """
    import pandas as pd

    fmt = table_format(path, fmt)
    if fmt == "csv":
        df = pd.read_csv(path)  # pandas 3 parses floats round-trip by default
    elif fmt == "parquet":
        df = pd.read_parquet(path)
    else:
        text = Path(path).read_text(encoding="utf-8")
        records = (
            json.loads(text) if fmt == "json" else [json.loads(x) for x in text.splitlines() if x.strip()]
        )
        df = pd.DataFrame(records)
    if list(df.columns) in SEED_SCHEMAS.values():
        return _seed_types(df)
    return to_frame(df.to_dict("records"))


def analyse(
    spec: str | os.PathLike,
    out: str | os.PathLike | None = None,
    spectra: str = "gram",
    threads: int = 1,
    include: str | None = None,
    max_tensors: int | None = None,
    progress: bool = False,
    command: str | None = None,
    table_fmt: str | None = None,
    seed_schema: str | None = None,
    verbose: bool = False,
    alpha_method: str = "ours",
):
    """The per-tensor table of a checkpoint as a DataFrame (chapters 10-11).

    With ``out``: rows are appended to ``out.partial.jsonl`` per tensor (a re-run with the same
    options resumes), the table is written in out's format, and ``out.run.json`` records the run.
    ``threads`` pins BLAS/LAPACK threads (threadpoolctl): on two shared cores one thread is fastest.
    ``table_fmt`` overrides the extension's format (see :func:`table_format`); ``seed_schema`` writes
    the seed tool's columns (:func:`to_seed_schema`; the returned frame and the resume file keep
    ours); ``verbose`` prints the run's decisions and one line per tensor (:func:`verbose_line`).
    ``alpha_method`` picks the power-law fit: "ours" (default) or "ww", WeightWatcher's own
    (:func:`qwen_anatomy.weights.stats.power_law_fit`); the ``alpha_method`` column records it.
    """
    if spectra not in SPECTRA:
        raise UserInputError(f"--spectra {spectra!r}: choose one of {', '.join(SPECTRA)}")
    from .stats import ALPHA_METHODS

    if alpha_method not in ALPHA_METHODS:
        raise UserInputError(f"--alpha-method {alpha_method!r}: choose one of {', '.join(ALPHA_METHODS)}")
    if threads < 1:
        raise UserInputError(f"--threads {threads}: must be >= 1")
    if out is not None:
        from ..iochecks import check_output_file

        fmt = table_format(out, table_fmt)
        if seed_schema is not None and seed_schema not in SEED_SCHEMAS:
            raise UserInputError(f"--seed-schema {seed_schema!r}: choose one of {', '.join(SEED_SCHEMAS)}")
        out = Path(out)
        # the table, its run record and its resumable partial file: checked before any tensor is read
        check_output_file(
            out, "--out", derived=_sidecars(out), allow=[_sidecars(out)[1]], records=[_sidecars(out)[0]]
        )
    t0 = time.perf_counter()
    ck = open_checkpoint(spec)
    entries = select_entries(ck, include, max_tensors)
    header_seconds = time.perf_counter() - t0
    params = {
        "model": str(spec),
        "model_path": str(ck.path),
        "spectra": spectra,
        "threads": threads,
        "include": include,
        "max_tensors": max_tensors,
        "alpha_method": alpha_method,
    }
    say = _say if verbose else None
    if say:
        say(
            f"params: {len(entries)} tensors of {ck.path} [{ck.format}]; spectra {spectra}, {threads} BLAS thread(s)"
        )
    if out is None:
        return _run(
            ck,
            entries,
            spectra,
            threads,
            progress,
            None,
            {},
            {"header": header_seconds},
            say=say,
            alpha_method=alpha_method,
        )
    params["table_format"] = fmt
    params["seed_schema"] = seed_schema
    from ..iochecks import read_run_record, set_aside_failed_records
    from ..runrecord import RunRecord

    record_path, partial = _sidecars(out)
    done: dict[str, dict] = {}
    if partial.exists():
        if not partial.is_file():
            raise UserInputError(f"{partial} (the resume file of --out {out}) is not a file; remove it")
        old = read_run_record(record_path) if record_path.is_file() else {}
        old_params = old.get("parameters") if isinstance(old.get("parameters"), dict) else {}
        # a record from before --alpha-method existed resumes as "ours", the only fit it had
        old_params = {"alpha_method": "ours", **old_params}
        if any(
            old_params.get(k) != params[k]
            for k in ("model_path", "spectra", "include", "max_tensors", "alpha_method")
        ):
            raise UserInputError(
                f"{partial} holds rows of a run with other options ({old_params}); rerun with the same "
                "options to resume, or remove it"
            )
        # damaged lines (cut by the interruption, or garbled) are skipped: those tensors run again
        for line in partial.read_bytes().decode("utf-8", errors="replace").splitlines():
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(r, dict) and isinstance(r.get("name"), str):
                done[r["name"]] = r
    set_aside_failed_records([record_path])  # the interrupted run's record is kept, renamed
    from . import stats

    created_at = seed_created_at() if seed_schema else None  # one time for the table, as the seed
    if say:
        if done:
            say(f"params: resuming: {len(done)} finished rows read from {partial}")
        source = "--format" if table_fmt else f"the extension {out.suffix}"
        layout = f"the seed tool's {seed_schema!r} columns" if seed_schema else "our columns"
        say(f"params: writing {fmt} (from {source}) with {layout} to {out}")

    with RunRecord(record_path, command or "qwen-anatomy params", params, seed=None) as record:
        record.data["tolerances"] = {
            "near_zero_abs": stats.NEAR_ZERO_ABS,
            "near_zero_rel_of_abs_max": stats.NEAR_ZERO_REL,
            "outlier_sigmas": stats.OUTLIER_SIGMAS,
            "rank_tol": "sigma_max * max(m, n) * eps(float32) (numpy.linalg.matrix_rank on float32 weights)",
            "effective_rank_p": "p = sigma / sum(sigma) (Roy & Vetterli)",
            "moments": "population (ddof=0), float64, finite values only",
            "gram_sigma_resolution": "about 1e-8 * sigma_max",
            "alpha": stats.ALPHA_RULES[alpha_method],
            "alpha_norms": "WeightWatcher's convention (normalize=False): raw lambda = sigma^2, no 1/N; "
            "log_alpha_norm = log10 sum(lambda^alpha) over all eigenvalues",
        }
        record.data["resumed_rows"] = len(done)
        record.data["tensors"] = len(entries)
        timings = {"header": header_seconds}
        if seed_schema:
            record.data["seed_schema"] = {"layout": seed_schema, "created_at": created_at}
        with record.stage("analysis"):
            df = _run(
                ck,
                entries,
                spectra,
                threads,
                progress,
                partial,
                done,
                timings,
                say=say,
                alpha_method=alpha_method,
            )
        with record.stage("write"):
            write_table(df, out, fmt, seed_schema, created_at)
            partial.unlink(missing_ok=True)
        for k, v in timings.items():
            record.data["stages"][k] = round(v, 4)
        record.data["rows"] = len(df)
        record.data["parameters_total"] = int(df["numel"].sum())
    return df


def _sidecars(out: Path) -> tuple[Path, Path]:
    """(run record, resumable partial rows) written beside the table ``out``."""
    return out.with_name(out.name + ".run.json"), out.with_name(out.name + ".partial.jsonl")


def _say(line: str) -> None:
    """Print above the progress bar (tqdm.write keeps the bar intact), to stdout."""
    from tqdm.auto import tqdm

    tqdm.write(line)


def verbose_line(row: dict, seconds: float | None, index: int, total: int) -> str:
    """``--verbose``'s line for one tensor: name, shape, mean, std, rank, seconds (as the seed logged).

    ``seconds`` None marks a row taken from the resume file.
    """

    def num(key, spec):
        v = row.get(key)
        try:
            return "-" if v is None or math.isnan(float(v)) else format(float(v), spec)
        except (TypeError, ValueError):
            return "-"

    rank = num("numerical_rank", ".0f")
    rank = f"{rank}/{num('design_rank', '.0f')}" if rank != "-" else "-"
    when = "resumed" if seconds is None else f"{seconds:.2f} s"
    status = "" if row.get("status") in (None, "ok") else f"  [{row['status']}]"
    width = len(str(total))
    return (
        f"[{index:>{width}}/{total}] {row['name']}  {row.get('shape') or '()'}  mean={num('mean', '.4g')} "
        f"std={num('std', '.4g')} rank={rank}  {when}{status}"
    )


def _run(ck, entries, spectra, threads, progress, partial, done, timings, say=None, alpha_method="ours"):
    # threadpoolctl limits only the BLAS libraries already loaded: load scipy's OpenBLAS first
    import scipy.linalg  # noqa: F401
    from threadpoolctl import threadpool_limits

    from ..progress import progress_bar

    rows = []
    fh = open(partial, "a") if partial is not None else None  # noqa: SIM115 (closed below)
    try:
        with threadpool_limits(limits=threads):
            bar = progress_bar(entries, unit="tensor", enabled=progress, desc="params")
            for i, entry in enumerate(bar, 1):
                if entry.name in done:
                    rows.append(done[entry.name])
                    if say:
                        say(verbose_line(done[entry.name], None, i, len(entries)))
                    continue
                bar.set_postfix_str(entry.name[-40:], refresh=False)
                t = time.perf_counter()
                row = analyse_tensor(ck, entry, spectra, timings, alpha_method)
                rows.append(row)
                if say:
                    say(verbose_line(row, time.perf_counter() - t, i, len(entries)))
                if fh is not None:
                    fh.write(json.dumps(row, default=_jsonable) + "\n")
                    fh.flush()
                    os.fsync(fh.fileno())
    finally:
        if fh is not None:
            fh.close()
    return to_frame(rows)


def _jsonable(obj):
    try:
        return obj.item()
    except AttributeError:
        if isinstance(obj, float) and math.isnan(obj):
            return None
        raise TypeError(type(obj)) from None
