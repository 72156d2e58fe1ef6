"""Run records and atomic writes: every result this project saves carries how it was made.

A run record is a JSON object: what ran (command, parameters, seed), with what (python, torch,
transformers, numpy versions; git commit and dirty flag; machine), when (UTC start/end), how long
(per-stage wall time), peak resident memory, and the status (running, success, failed, incomplete).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

from .paths import REPO_ROOT


def utc_now() -> str:
    return _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write through a temporary file in the same folder, then rename: never a half-written file."""
    return _atomic_write(path, text, "w")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """:func:`atomic_write_text` for bytes."""
    return _atomic_write(path, data, "wb")


def _atomic_write(path: str | os.PathLike, content: str | bytes, mode: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as fh:
            fh.write(content)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def json_default(obj: Any):
    """``json.dumps(default=...)`` for what results hold besides plain types: numpy and torch scalars
    and arrays (duck-typed through ``item``/``tolist``, so torch is never imported), paths, sets and
    tuples. Anything else is a TypeError naming its type."""
    if hasattr(obj, "item") and callable(obj.item):  # numpy / torch scalars
        try:
            return obj.item()
        except (TypeError, ValueError):  # an array of several values: fall through to tolist
            pass
    if hasattr(obj, "tolist") and callable(obj.tolist):  # numpy arrays, torch tensors
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, set | tuple):
        return list(obj)
    raise TypeError(f"cannot store a {type(obj).__name__} as JSON; pass numbers, strings or lists")


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, default=json_default, allow_nan=True) + "\n")


def refuse_overwrite(path: str | os.PathLike, what: str = "output") -> Path:
    """Raise when ``path`` already holds results (a run never silently overwrites earlier ones)."""
    from .errors import UserInputError

    path = Path(path)
    if path.exists() and (path.is_file() or any(path.iterdir())):
        raise UserInputError(f"{what} {path} already exists; choose another path or remove it first")
    return path


def package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


# Paths whose untracked files count as code: a new module or notebook that is not committed yet
# makes the tree dirty. Results (data/, bench/results/, results/, scratch/) do not: a grid writes its
# earlier runs' outputs there while later runs start.
SOURCE_PATHS = ("lib/", "notebooks/", "tests/", "bench/", "configs/", "book/", ".ci/")
SOURCE_FILES = (
    "Makefile",
    "pyproject.toml",
    "requirements.txt",
    "environment.yml",
    "_toc.yml",
    "_config.yml",
)
NOT_SOURCE = ("bench/results/",)


def _is_source(path: str) -> bool:
    if path.startswith(NOT_SOURCE):
        return False
    return path.startswith(SOURCE_PATHS) or path in SOURCE_FILES


def git_state(root: Path = REPO_ROOT) -> dict[str, Any]:
    """The exact code a run starts from: commit, dirty flag and, when dirty, a hash of the change.

    ``dirty`` is true when any tracked file differs from HEAD or an untracked (not ignored) file
    lies under the project's source folders (:data:`SOURCE_PATHS`). ``diff_sha256`` hashes the
    tracked diff against HEAD and the untracked source files (path and bytes), so two dirty runs
    from the same change carry the same hash. ``dirty_files`` names up to 20 of the changed paths.
    Call it when a run starts: a record written at the end could name a later commit. All values
    are None outside a git checkout.
    """
    none = {"commit": None, "dirty": None, "diff_sha256": None, "dirty_files": []}

    def git(*args: str) -> bytes:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, timeout=30, check=True).stdout

    try:
        commit = git("rev-parse", "HEAD").decode().strip()
        status = git("status", "--porcelain=v1", "-z", "--untracked-files=all").split(b"\0")
    except (OSError, subprocess.SubprocessError):
        return none
    changed: list[str] = []
    untracked: list[str] = []
    entries = iter(status)
    for entry in entries:
        if not entry:
            continue
        code, path = entry[:2].decode(), entry[3:].decode(errors="replace")
        if code[0] in "RC":  # a rename or copy is followed by its source path
            next(entries, None)
        if code == "??":
            if _is_source(path):
                untracked.append(path)
        else:
            changed.append(path)
    dirty = bool(changed or untracked)
    digest = None
    if dirty:
        h = hashlib.sha256()
        try:
            h.update(git("diff", "HEAD", "--binary"))
        except (OSError, subprocess.SubprocessError):
            return {**none, "commit": commit, "dirty": True}
        for path in sorted(untracked):
            h.update(b"\0untracked\0" + path.encode() + b"\0")
            with contextlib.suppress(OSError):
                h.update((root / path).read_bytes())
        digest = h.hexdigest()
    return {
        "commit": commit,
        "dirty": dirty,
        "diff_sha256": digest,
        "dirty_files": sorted(changed + untracked)[:20],
    }


def environment() -> dict[str, Any]:
    """Versions and machine; cheap (reads package metadata, imports nothing heavy)."""
    threads = None
    if "torch" in sys.modules:
        threads = sys.modules["torch"].get_num_threads()
    return {
        "python": platform.python_version(),
        "packages": {
            name: package_version(name)
            for name in (
                "qwen-anatomy",
                "torch",
                "transformers",
                "numpy",
                "scipy",
                "safetensors",
                "tokenizers",
            )
        },
        "machine": {
            "platform": platform.platform(),
            "processor": platform.machine(),
            "cpu_count": os.cpu_count(),
            "torch_threads": threads,
            "hostname": platform.node(),
        },
        "git": git_state(),
    }


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB (Linux reports kB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class RunRecord:
    """Collects a run's record; ``with record.stage("name"):`` times a stage.

    Written atomically to ``path`` at start (status "running"), and at the end with "success" or
    "failed" (with the error). A record still saying "running" after its process ended marks an
    interrupted run: readers report it as incomplete.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        command: str,
        parameters: dict[str, Any] | None = None,
        seed: int | None = None,
    ) -> None:
        self.path = Path(path)
        self.data: dict[str, Any] = {
            "command": command,
            "parameters": parameters or {},
            "seed": seed,
            "status": "running",
            "pid": os.getpid(),
            "start_time": utc_now(),
            "end_time": None,
            "stages": {},
            **environment(),
        }
        self._t0 = time.perf_counter()

    def save(self) -> Path:
        return atomic_write_json(self.path, self.data)

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        t = time.perf_counter()
        try:
            yield
        finally:
            self.data["stages"][name] = round(self.data["stages"].get(name, 0.0) + time.perf_counter() - t, 4)

    def __enter__(self) -> RunRecord:
        self.save()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.data["end_time"] = utc_now()
        self.data["wall_seconds"] = round(time.perf_counter() - self._t0, 3)
        self.data["peak_rss_mb"] = round(peak_rss_mb(), 1)
        if exc_type is None:
            self.data["status"] = "success"
        elif issubclass(exc_type, KeyboardInterrupt):
            self.data["status"] = "incomplete"
        else:
            self.data["status"] = "failed"
            self.data["error"] = f"{exc_type.__name__}: {exc}"
        self.save()
