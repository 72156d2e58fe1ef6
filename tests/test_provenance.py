"""Committed results name a clean commit in main's history that holds the code that produced them.

The rule is in data/README.md. KNOWN_EXCEPTIONS (in qwen_anatomy.provenance) is the one visible list of committed results
that break it today, each with the open issue that regenerates it; it must be empty once those
issues are closed, and a test fails when an exception no longer matches anything (stale entries go).
"""

from __future__ import annotations

import fnmatch
import subprocess
from pathlib import Path

import pytest

from qwen_anatomy.paths import REPO_ROOT
from qwen_anatomy.provenance import KNOWN_EXCEPTIONS, check_record, check_repository
from qwen_anatomy.runrecord import git_state


def _excepted(problem_path: str) -> str | None:
    for pattern in KNOWN_EXCEPTIONS:
        if fnmatch.fnmatch(problem_path, pattern):
            return pattern
    return None


@pytest.fixture(scope="module")
def problems():
    shallow = subprocess.run(
        ["git", "rev-parse", "--is-shallow-repository"], cwd=REPO_ROOT, capture_output=True, text=True
    ).stdout.strip()
    assert shallow != "true", "provenance needs the full history: run the tests on a full clone"
    return check_repository(REPO_ROOT)


def test_every_committed_record_is_clean_and_in_history(problems):
    unexplained = [str(p) for p in problems if _excepted(p.path) is None]
    assert not unexplained, "committed results without clean provenance:\n" + "\n".join(unexplained)


def test_every_exception_is_still_needed(problems):
    used = {_excepted(p.path) for p in problems}
    stale = sorted(set(KNOWN_EXCEPTIONS) - used)
    assert not stale, f"these exceptions match no problem any more, remove them: {stale}"


def _head() -> str:
    return subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()


def _root_commit() -> str:
    out = subprocess.run(
        ["git", "rev-list", "--max-parents=0", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True
    )
    return out.stdout.split()[-1]


def test_checker_accepts_a_clean_record_at_head():
    record = {"status": "success", "git": {"commit": _head(), "dirty": False}}
    assert check_record("data/results/tasks/relu/seed9/run_record.json", record) == []


@pytest.mark.parametrize(
    "edit, reason",
    [
        ({"dirty": True}, "dirty tree"),
        ({"dirty": None}, "dirty tree"),
        ({"commit": "0123456789abcdef0123456789abcdef01234567"}, "not in the history"),
        ({"commit": None}, "not in the history"),
    ],
)
def test_checker_flags_an_edited_record(edit, reason):
    record = {"git": {"commit": _head(), "dirty": False, **edit}}
    found = check_record("data/results/tasks/relu/seed9/run_record.json", record)
    assert any(reason in p.reason for p in found), found


@pytest.mark.parametrize(
    "files, accepted",
    [
        (["bench/results/weights_qwen2.5-0.5b.json"], True),  # the previous benchmark of the same queue
        (["data/results/tokens/x/report.json", "bench/results/forward.json"], True),
        (["bench/results/forward.json", "lib/qwen_anatomy/model.py"], False),  # code changed
        (["data/models/causal-tiny-lm/model.safetensors"], False),  # a model is an input, not a result
        (["configs/relu.yaml"], False),
        ([], False),  # dirty without a list: unknown change
        ([f"bench/results/b{i}.json" for i in range(20)], False),  # at the cap: the list may be cut
    ],
)
def test_checker_accepts_a_tree_dirty_only_in_results(files, accepted):
    record = {"git": {"commit": _head(), "dirty": True, "dirty_files": files}}
    found = check_record("bench/results/forward.json", record)
    assert (not any("dirty tree" in p.reason for p in found)) is accepted, found


def test_checker_flags_a_commit_without_its_producer():
    # The project's first commit predates lib/qwen_anatomy/tasks: a task result cannot come from it.
    record = {"git": {"commit": _root_commit(), "dirty": False}}
    found = check_record("data/results/tasks/relu/seed9/run_record.json", record)
    assert [p.reason for p in found] == [
        f"commit {_root_commit()[:9]} does not contain its producer lib/qwen_anatomy/tasks"
    ]


def test_checker_flags_records_without_git_and_unknown_folders():
    assert "names no git commit" in check_record("data/models/x/provenance.json", {"seed": 0})[0].reason
    record = {"git": {"commit": _head(), "dirty": False}}
    assert "no producer known" in check_record("data/results/new-strand/run.json", record)[0].reason


# -- git_state on a scratch repository -------------------------------------------------------------
def _git(repo: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.email=t@example.org", "-c", "user.name=t", *args],
        cwd=repo,
        check=True,
        capture_output=True,
    )


@pytest.fixture
def repo(tmp_path):
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "a.py").write_text("x = 1\n")
    (tmp_path / ".gitignore").write_text("*.pyc\n")
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "commit", "-q", "-m", "first")
    return tmp_path


def test_git_state_clean(repo):
    state = git_state(repo)
    assert len(state["commit"]) == 40 and state["dirty"] is False and state["diff_sha256"] is None


def test_git_state_untracked_source_file_is_dirty(repo):
    (repo / "lib" / "new_module.py").write_text("y = 2\n")
    state = git_state(repo)
    assert state["dirty"] is True and state["dirty_files"] == ["lib/new_module.py"]
    first = state["diff_sha256"]
    (repo / "lib" / "new_module.py").write_text("y = 3\n")
    assert git_state(repo)["diff_sha256"] != first  # the hash identifies the untracked content


def test_git_state_results_and_ignored_files_do_not_count(repo):
    (repo / "data" / "results").mkdir(parents=True)
    (repo / "data" / "results" / "run.json").write_text("{}")
    (repo / "lib" / "a.pyc").write_bytes(b"\0")
    assert git_state(repo)["dirty"] is False


def test_git_state_tracked_change_is_dirty_with_a_stable_hash(repo):
    (repo / "lib" / "a.py").write_text("x = 2\n")
    one, two = git_state(repo), git_state(repo)
    assert one["dirty"] is True and one["dirty_files"] == ["lib/a.py"]
    assert one["diff_sha256"] == two["diff_sha256"] and len(one["diff_sha256"]) == 64


def test_git_state_outside_git(tmp_path):
    assert git_state(tmp_path) == {"commit": None, "dirty": None, "diff_sha256": None, "dirty_files": []}
