"""Provenance of committed results: every record names a clean commit that holds its producer.

A committed result (anything under ``data/results/``, ``data/models/<name>/`` or a
``bench/results/*.json``) must come from a clean tree at a commit in main's history, and that
commit must contain the code that produced it. :func:`check_repository` walks every committed
record and returns the problems; ``tests/test_provenance.py`` fails on any problem that is not a
listed exception. The rule and the regeneration commands are in ``data/README.md``.
"""

from __future__ import annotations

import fnmatch
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .paths import REPO_ROOT

# Where committed results live (git pathspecs).
RESULT_ROOTS = ("data/results", "data/models", "bench/results")

# File names that are run records (or carry one).
RECORD_NAMES = ("run.json", "run_record.json", "provenance.json")

# Which code produced the results under each folder: the recorded commit must contain every path
# listed (a file or a folder). First match wins; a result folder missing here is itself a problem,
# so a new kind of result has to say where it comes from.
PRODUCERS: list[tuple[str, tuple[str, ...]]] = [
    ("data/results/tasks/*", ("lib/qwen_anatomy/tasks",)),
    ("data/results/heads/*", ("lib/qwen_anatomy/heads",)),
    ("data/results/causal/*", ("lib/qwen_anatomy/causal",)),
    ("data/results/90_experiments/*", ("lib/qwen_anatomy/experiments", "notebooks/01_language_models.py")),
    # build times of one `qwen-anatomy book` build (the landing page's), collected by qwen_anatomy.landing
    ("data/results/book-timings/*", ("lib/qwen_anatomy/bookbuild.py", "lib/qwen_anatomy/landing.py")),
    ("data/results/tokens/*", ("lib/qwen_anatomy/weights/undertrained.py",)),
    ("data/models/relu-*", ("lib/qwen_anatomy/tasks",)),
    ("data/models/square-*", ("lib/qwen_anatomy/tasks",)),
    ("data/models/index-*", ("lib/qwen_anatomy/tasks",)),
    ("data/models/causal-*", ("lib/qwen_anatomy/causal",)),
    ("bench/results/forward*.json", ("bench/forward.py",)),
    ("bench/results/weights*.json", ("bench/weights.py",)),
    ("bench/results/heads*.json", ("bench/heads.py",)),
]

# The committed results that break the rule today: glob over the record's path -> why it is still
# here and which issue regenerates it. tests/test_provenance.py fails on anything else that breaks the
# rule and on an entry that no longer matches (stale entries go); the landing page marks these results
# as being regenerated.
KNOWN_EXCEPTIONS: dict[str, str] = {
    "data/results/tasks/*": "issue 16 (length sweep) regenerates every task run from a clean commit; ReLU n=20 "
    "seeds 0-1 ran at 8d71161 with only data/results/tasks/summary.json modified (recorded in dirty_files)",
    "data/models/relu-n10-forward/*": "issue 15 replaces the synthetic heads pair (θ0) and retrains it",
    "data/models/square-n10-forward/*": "issue 16 retrains the shipped task models with the sweep",
    "data/results/heads/*": "issue 15 regenerates the heads experiments (real pair, N >= 96)",
    "data/results/causal/*/causal-tiny-lm-20261122T*": "issue 14: single-seed suites of the first templates, "
    "superseded by the study and the variants with seeds, kept as the fixtures of `causal report`",
    "data/results/causal/comprehensive/smollm2-135m-20261122T133113Z/*": "issue 14: a single-seed suite of "
    "the first templates (global clipping), superseded by the study and the variants with seeds",
    "data/models/causal-tiny-lm/*": "issue 14 retrains the tiny CausalQwen backbone with the new data",
}


@dataclass(frozen=True)
class Problem:
    """One committed record that fails the rule (``path`` relative to the repository root)."""

    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


def _git(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=60)


def committed_files(root: Path = REPO_ROOT) -> list[str]:
    """Files git tracks under the result roots (as committed or staged, not as on disk)."""
    out = _git(root, "ls-files", "--", *RESULT_ROOTS)
    if out.returncode != 0:
        raise RuntimeError(f"git ls-files failed in {root}: {out.stderr.strip()}")
    return [line for line in out.stdout.splitlines() if line]


def find_git_block(obj: Any) -> dict | None:
    """The first mapping holding both ``commit`` and ``dirty`` (a record's git state), depth first."""
    if isinstance(obj, dict):
        if "commit" in obj and "dirty" in obj:
            return obj
        for value in obj.values():
            found = find_git_block(value)
            if found is not None:
                return found
    elif isinstance(obj, list):
        for value in obj:
            found = find_git_block(value)
            if found is not None:
                return found
    return None


def is_record(path: str) -> bool:
    name = path.rsplit("/", 1)[-1]
    if path.startswith("bench/results/"):
        return name.endswith(".json")
    return name in RECORD_NAMES or name.endswith(".run_record.json")


def producer_paths(path: str) -> tuple[str, ...] | None:
    for pattern, producers in PRODUCERS:
        if fnmatch.fnmatch(path, pattern):
            return producers
    return None


def _tree_has(root: Path, commit: str, path: str) -> bool:
    # A module may be a file (experiments.py) or a package (experiments/): accept either.
    candidates = [path] if path.endswith(".py") else [path, f"{path}.py"]
    return any(_git(root, "cat-file", "-e", f"{commit}:{c}").returncode == 0 for c in candidates)


# Result folders whose changed files leave the code as committed: a queue that writes one benchmark's
# JSON and then starts the next from the same checkout runs the next one from clean code.
RESULT_ONLY_PATHS = ("bench/results/", "data/results/")
MAX_LISTED = 20  # runrecord.git_state lists at most this many changed paths


def only_results_changed(git: dict) -> bool:
    """True when a dirty record's complete list of changed files holds results only (no code, no
    configuration, no model): the run's code is its commit's. A list at the cap may be truncated and
    is not trusted."""
    files = git.get("dirty_files") or []
    return (
        git.get("dirty") is True
        and 0 < len(files) < MAX_LISTED
        and all(str(f).startswith(RESULT_ONLY_PATHS) for f in files)
    )


def check_record(path: str, record: Any, root: Path = REPO_ROOT, head: str = "HEAD") -> list[Problem]:
    """Problems of one record: not clean, commit outside ``head``'s history, or producer missing."""
    git = find_git_block(record)
    if git is None:
        return [Problem(path, "names no git commit and dirty flag (not written by a RunRecord)")]
    commit, dirty = git.get("commit"), git.get("dirty")
    problems = []
    if dirty is not False and not only_results_changed(git):
        problems.append(Problem(path, f"made from a dirty tree (dirty={dirty!r}) at {str(commit)[:9]}"))
    if not commit or _git(root, "merge-base", "--is-ancestor", str(commit), head).returncode != 0:
        problems.append(Problem(path, f"commit {str(commit)[:9]} is not in the history of {head}"))
        return problems
    producers = producer_paths(path)
    if producers is None:
        problems.append(Problem(path, "no producer known for this folder: add it to provenance.PRODUCERS"))
        return problems
    for producer in producers:
        if not _tree_has(root, commit, producer):
            problems.append(Problem(path, f"commit {commit[:9]} does not contain its producer {producer}"))
    return problems


def record_folders(files: list[str]) -> dict[str, str]:
    """Map each result folder that must hold a record to the first file found in it."""
    folders: dict[str, str] = {}
    for f in files:
        parts = f.split("/")
        if f.startswith("bench/results/") or parts[-1] == "README.md":
            continue
        # data/results/<strand>/<run...>: every run folder needs a record in it or an ancestor
        # below data/results/<strand>; data/models/<name>/: the model folder.
        folders.setdefault(str(Path(f).parent), f)
    return folders


def check_repository(root: Path = REPO_ROOT, head: str = "HEAD") -> list[Problem]:
    """Every problem with the committed results of ``root``: records and folders without records."""
    files = committed_files(root)
    records = [f for f in files if is_record(f)]
    problems: list[Problem] = []
    for f in records:
        try:
            record = json.loads((root / f).read_text())
        except (OSError, ValueError) as err:
            problems.append(Problem(f, f"does not load as JSON ({err})"))
            continue
        problems.extend(check_record(f, record, root, head))
    record_dirs = {str(Path(f).parent) for f in records}
    for folder, example in sorted(record_folders(files).items()):
        ancestors = [str(p) for p in [Path(folder), *Path(folder).parents]]
        if not any(a in record_dirs for a in ancestors):
            problems.append(Problem(example, "no run record in its folder or any folder above it"))
    return problems
