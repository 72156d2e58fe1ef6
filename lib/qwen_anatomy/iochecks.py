"""Checked paths: outputs that can be written and never overwrite, inputs that can be read.

The bad-input promise (README, "The command line"): a command refuses bad input with one line naming
the input and the fix, before any heavy work and before anything is written. Every command that
writes calls one of the ``check_output_*`` functions first, with every file it will write (run
records and other sidecar files included), and creates its directory with :func:`make_output_dir`
only when all its inputs have been checked.

* :func:`check_output_dir`: a new directory (``heads --out``, ``train --out`` ...). It may exist
  empty. A directory left by a *failed or interrupted* run (its ``run_record.json``/``run.json``
  says so) does not block a corrected re-run: :func:`make_output_dir` moves it aside, whole, to
  ``<out>.failed-<UTC time>`` and says so on stderr. Anything else there is refused.
* :func:`check_output_file`: a new file and its derived files (``--out m.json`` and
  ``m.run_record.json``); none may exist.
* :func:`check_output_root`: a folder under which new files or directories are created
  (``run --out``, ``tasks generate --output-root``); it may exist and hold other results.

Each check walks up to the nearest existing ancestor, which must be a directory, and proves it
writable with a real probe (create and remove a temporary file): ``os.access`` says yes to root
even on a read-only mount.

Readers: :func:`read_text` (UTF-8 text file) and :func:`read_json` name the file and the problem
instead of raising ``UnicodeDecodeError`` or ``JSONDecodeError``.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from .errors import UserInputError

RUN_RECORD_NAMES = ("run_record.json", "run.json")
FAILED_STATUSES = ("failed", "incomplete")


# -- the parts every check shares --------------------------------------------------------------------
def _nearest_existing(path: Path) -> Path:
    """``path`` itself or its closest ancestor that exists (``.`` at worst for a relative path)."""
    current = path
    while not os.path.lexists(current):
        parent = current.parent
        if parent == current:
            break
        current = parent
    return current


def _probe_writable(folder: Path, what: str, path: Path) -> None:
    """Create and remove a temporary file in ``folder``; UserInputError when that fails."""
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".qwen-anatomy-probe-")
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise UserInputError(
            f"{what} {path}: cannot write in {folder} ({reason}); choose a writable location"
        ) from None
    os.close(fd)
    os.unlink(tmp)


def _check_creatable(path: Path, what: str) -> None:
    """``path`` (which need not exist) can be created: its nearest existing ancestor is a writable
    directory, never a regular file."""
    start = path if path.exists() and path.is_dir() else path.parent
    base = _nearest_existing(start)
    if not base.is_dir():
        raise UserInputError(
            f"{what} {path}: {base} is a file, not a directory; choose a path whose parent folders "
            "are directories"
        )
    _probe_writable(base, what, path)


def _stamp() -> str:
    return _dt.datetime.now(_dt.UTC).strftime("%Y%m%dT%H%M%SZ")


# -- run records -------------------------------------------------------------------------------------
def read_run_record(path: str | os.PathLike) -> dict[str, Any]:
    """A run record (JSON object) read back; UserInputError naming the file when it is damaged."""
    path = Path(path)
    data = read_json(path, "run record")
    if not isinstance(data, dict):
        raise UserInputError(
            f"run record {path} is damaged (not a JSON object); move its folder away or repair it"
        )
    return data


def record_status(record: dict[str, Any]) -> str:
    """A record's status as readers report it ("running" whose process is gone: "incomplete")."""
    from .experiments import run_status

    return run_status(record)


def failed_run_record(folder: Path) -> Path | None:
    """The run record in ``folder`` when it says the run failed or was interrupted, else None.

    Raises UserInputError for a damaged record or a run still in progress (another process is
    writing there).
    """
    for name in RUN_RECORD_NAMES:
        record_path = folder / name
        if not record_path.is_file():
            continue
        record = read_run_record(record_path)
        if "status" not in record:  # not a record this project wrote: refused as results
            return None
        status = record_status(record)
        if status in FAILED_STATUSES:
            return record_path
        if status == "running":
            raise UserInputError(
                f"{folder} belongs to a run still in progress (pid {record.get('pid')}, "
                f"{record_path}); wait for it or choose another output"
            )
        return None
    return None


# -- outputs -----------------------------------------------------------------------------------------
def check_output_dir(path: str | os.PathLike, what: str = "--out") -> Path:
    """Raise unless ``path`` can become a new output directory (see the module docstring).

    Accepted: a path that does not exist (its parents are created), an empty directory, or the
    directory of a failed/interrupted run (moved aside by :func:`make_output_dir`).
    """
    path = Path(path)
    if os.path.lexists(path) and not path.is_dir():
        raise UserInputError(f"{what} {path} is a file, not a directory; give a new directory")
    if path.is_dir() and any(path.iterdir()) and failed_run_record(path) is None:
        raise UserInputError(
            f"{what} {path} already exists and holds results; choose another path or remove it first"
        )
    _check_creatable(path, what)
    return path


def make_output_dir(path: str | os.PathLike, what: str = "--out") -> Path:
    """Create the directory :func:`check_output_dir` accepted.

    The directory of a failed or interrupted run is first renamed, whole, to
    ``<path>.failed-<UTC time>`` (nothing is deleted), with one line on stderr saying where.
    """
    path = check_output_dir(path, what)
    if path.is_dir() and any(path.iterdir()):
        record = failed_run_record(path)
        aside = path.with_name(f"{path.name}.failed-{_stamp()}")
        k = 1
        while os.path.lexists(aside):
            aside = path.with_name(f"{path.name}.failed-{_stamp()}-{k}")
            k += 1
        path.rename(aside)
        sys.stderr.write(
            f"qwen-anatomy: {path} held a {record_status(read_run_record(aside / record.name))} run "
            f"({record.name}); moved it to {aside} and starting afresh\n"
        )
    path.mkdir(parents=True, exist_ok=True)
    return path


def check_output_file(
    path: str | os.PathLike,
    what: str = "--out",
    derived: tuple | list = (),
    allow: tuple | list = (),
    records: tuple | list = (),
) -> Path:
    """Raise unless ``path`` and every derived file (run record, sidecar) can be written as new files.

    ``derived``: other files the command writes beside ``path``; none may exist, except those in
    ``allow`` (e.g. a resumable partial file the caller checks) and run records in ``records`` that
    say their run failed or was interrupted (a failed run must not block the corrected re-run;
    :func:`set_aside_failed_records` renames them before the new run writes).
    """
    path = Path(path)
    if path.is_dir():
        raise UserInputError(f"{what} {path} is a directory; give a file name such as {path / 'out.json'}")
    if os.path.lexists(path):
        raise UserInputError(f"{what} {path} already exists; choose another file name or remove it first")
    allowed = {Path(p) for p in allow}
    failed_ok = {Path(p) for p in records}
    for other in map(Path, derived):
        if not os.path.lexists(other) or other in allowed:
            continue
        if other in failed_ok and _records_a_failed_run(other):
            continue
        raise UserInputError(
            f"{what} {path}: {other}, which this run would write beside it, already exists "
            "(an earlier run's file); choose another file name"
        )
    _check_creatable(path, what)
    return path


def _records_a_failed_run(path: Path) -> bool:
    """True for a run record (a JSON object with a status) of a failed or interrupted run; False for
    anything else, such as another run's metrics file that carries the record's name. A file that is
    not JSON at all is refused as damaged."""
    record = read_run_record(path)
    return "status" in record and record_status(record) in FAILED_STATUSES


def set_aside_failed_records(records: tuple | list) -> None:
    """Rename each existing run record (of a failed run, as :func:`check_output_file` accepted) to
    ``<name>.failed-<UTC time>``, saying so on stderr: the new run's record never overwrites it."""
    for record in map(Path, records):
        if record.is_file():
            aside = record.with_name(f"{record.name}.failed-{_stamp()}")
            record.rename(aside)
            sys.stderr.write(f"qwen-anatomy: moved the earlier failed run's record {record} to {aside}\n")


def check_output_root(path: str | os.PathLike, what: str = "--out") -> Path:
    """Raise unless ``path`` is (or can become) a writable folder; existing contents are fine."""
    path = Path(path)
    if os.path.lexists(path) and not path.is_dir():
        raise UserInputError(f"{what} {path} is a file, not a directory; give a folder")
    _check_creatable(path, what)
    return path


# -- inputs ------------------------------------------------------------------------------------------
def check_input_file(path: str | os.PathLike, what: str, hint: str = "") -> Path:
    """``path`` is an existing regular file (not a directory); the message adds ``hint``."""
    path = Path(path)
    suffix = f": {hint}" if hint else ""
    if path.is_dir():
        raise UserInputError(f"{what} {path} is a directory, not a file{suffix}")
    if not path.is_file():
        raise UserInputError(f"{what} {path} does not exist{suffix}")
    return path


def read_text(path: str | os.PathLike, what: str, hint: str = "") -> str:
    """The UTF-8 text of an input file; UserInputError for a missing, unreadable or non-UTF-8 file."""
    path = check_input_file(path, what, hint)
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise UserInputError(
            f"{what} {path} is not UTF-8 text (byte {err.start}); give a UTF-8 text file"
        ) from None
    except OSError as err:
        raise UserInputError(f"{what} {path} cannot be read ({err.strerror})") from None


def read_json(path: str | os.PathLike, what: str) -> Any:
    """A JSON file's value; UserInputError naming the file and the first problem."""
    text = read_text(path, what)
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise UserInputError(
            f"{what} {path} is damaged: not valid JSON ({err.msg} at line {err.lineno}); "
            "repair it or move it away"
        ) from None
