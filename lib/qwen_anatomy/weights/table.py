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
TABLE_FORMATS = {".csv": "csv", ".parquet": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl"}
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
    "participation_ratio", "nuclear_norm", "alpha", "alpha_xmin", "alpha_ks", "alpha_tail",
    "alpha_weighted", "log_norm", "log_spectral_norm",
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


def analyse_tensor(ck: Checkpoint, entry, spectra: str = "gram", timings: dict | None = None) -> dict:
    """One table row (a dict with every column of :data:`COLUMNS`)."""
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
    row.update(stats.power_law_fit(sigma.astype(np.float64) ** 2))
    timings["spectra"] = timings.get("spectra", 0.0) + time.perf_counter() - t
    return row


# -- writing ----------------------------------------------------------------------------------------------
def table_format(out: str | os.PathLike) -> str:
    suffix = Path(out).suffix.lower()
    if suffix not in TABLE_FORMATS:
        raise UserInputError(f"--out {out}: unknown table format {suffix!r}; use .csv, .parquet or .jsonl")
    return TABLE_FORMATS[suffix]


def to_frame(rows: list[dict]):
    """A DataFrame with the table's columns and types (layer is a nullable integer: 0 stays 0)."""
    import pandas as pd

    df = pd.DataFrame(rows, columns=COLUMNS)
    for col in ("layer", "rows", "design_rank", "numerical_rank", "alpha_tail", "energy_rank_90",
                "energy_rank_95", "energy_rank_99"):  # fmt: skip
        df[col] = pd.array(df[col].astype("float64"), dtype="Float64").round().astype("Int64")
    for col in ("model_id", "revision", "tied_to", "spectra_method", "source_name", "note"):
        df[col] = df[col].astype("string")
    return df


def write_table(df, out: str | os.PathLike) -> Path:
    """Write atomically in the format the extension names."""
    fmt = table_format(out)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    if fmt == "csv":
        df.to_csv(tmp, index=False)
    elif fmt == "parquet":
        df.to_parquet(tmp, index=False)
    else:
        df.to_json(tmp, orient="records", lines=True)
    os.replace(tmp, out)
    return out


def read_table(path: str | os.PathLike):
    """Read a table written by :func:`write_table` back into the same DataFrame types."""
    import pandas as pd

    fmt = table_format(path)
    if fmt == "csv":
        df = pd.read_csv(path)
    elif fmt == "parquet":
        df = pd.read_parquet(path)
    else:
        df = pd.read_json(path, orient="records", lines=True)
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
):
    """The per-tensor table of a checkpoint as a DataFrame (chapters 10-11).

    With ``out``: rows are appended to ``out.partial.jsonl`` per tensor (a re-run with the same
    options resumes), the table is written in out's format, and ``out.run.json`` records the run.
    ``threads`` pins BLAS/LAPACK threads (threadpoolctl): on two shared cores one thread is fastest.
    """
    if spectra not in SPECTRA:
        raise UserInputError(f"--spectra {spectra!r}: choose one of {', '.join(SPECTRA)}")
    if threads < 1:
        raise UserInputError(f"--threads {threads}: must be >= 1")
    if out is not None:
        from ..iochecks import check_output_file

        table_format(out)
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
    }
    if out is None:
        return _run(ck, entries, spectra, threads, progress, None, {}, {"header": header_seconds})
    from ..iochecks import read_run_record, set_aside_failed_records
    from ..runrecord import RunRecord

    record_path, partial = _sidecars(out)
    done: dict[str, dict] = {}
    if partial.exists():
        if not partial.is_file():
            raise UserInputError(f"{partial} (the resume file of --out {out}) is not a file; remove it")
        old = read_run_record(record_path) if record_path.is_file() else {}
        old_params = old.get("parameters") if isinstance(old.get("parameters"), dict) else {}
        if any(old_params.get(k) != params[k] for k in ("model_path", "spectra", "include", "max_tensors")):
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

    with RunRecord(record_path, command or "qwen-anatomy params", params, seed=None) as record:
        record.data["tolerances"] = {
            "near_zero_abs": stats.NEAR_ZERO_ABS,
            "near_zero_rel_of_abs_max": stats.NEAR_ZERO_REL,
            "outlier_sigmas": stats.OUTLIER_SIGMAS,
            "rank_tol": "sigma_max * max(m, n) * eps(float32) (numpy.linalg.matrix_rank on float32 weights)",
            "effective_rank_p": "p = sigma / sum(sigma) (Roy & Vetterli)",
            "moments": "population (ddof=0), float64, finite values only",
            "gram_sigma_resolution": "about 1e-8 * sigma_max",
        }
        record.data["resumed_rows"] = len(done)
        record.data["tensors"] = len(entries)
        timings = {"header": header_seconds}
        with record.stage("analysis"):
            df = _run(ck, entries, spectra, threads, progress, partial, done, timings)
        with record.stage("write"):
            write_table(df, out)
            partial.unlink(missing_ok=True)
        for k, v in timings.items():
            record.data["stages"][k] = round(v, 4)
        record.data["rows"] = len(df)
        record.data["parameters_total"] = int(df["numel"].sum())
    return df


def _sidecars(out: Path) -> tuple[Path, Path]:
    """(run record, resumable partial rows) written beside the table ``out``."""
    return out.with_name(out.name + ".run.json"), out.with_name(out.name + ".partial.jsonl")


def _run(ck, entries, spectra, threads, progress, partial, done, timings):
    # threadpoolctl limits only the BLAS libraries already loaded: load scipy's OpenBLAS first
    import scipy.linalg  # noqa: F401
    from threadpoolctl import threadpool_limits
    from tqdm.auto import tqdm

    rows = []
    fh = open(partial, "a") if partial is not None else None  # noqa: SIM115 (closed below)
    try:
        with threadpool_limits(limits=threads):
            bar = tqdm(entries, unit="tensor", disable=not progress, desc="params")
            for entry in bar:
                if entry.name in done:
                    rows.append(done[entry.name])
                    continue
                bar.set_postfix_str(entry.name[-40:], refresh=False)
                row = analyse_tensor(ck, entry, spectra, timings)
                rows.append(row)
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
