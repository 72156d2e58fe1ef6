"""Outputs are written atomically (runrecord.atomic_write_*): a failed write leaves the old file whole."""

from __future__ import annotations

import json

import pytest

from qwen_anatomy.runrecord import atomic_write_bytes, atomic_write_json, atomic_write_text


def test_writes_and_replaces(tmp_path):
    path = tmp_path / "deep" / "out.txt"
    assert atomic_write_text(path, "one") == path and path.read_text() == "one"
    atomic_write_bytes(path, b"\x00two")
    assert path.read_bytes() == b"\x00two"
    atomic_write_json(tmp_path / "r.json", {"a": 1})
    assert json.loads((tmp_path / "r.json").read_text()) == {"a": 1}
    assert sorted(p.name for p in path.parent.iterdir()) == ["out.txt"]  # no temporary left


def test_a_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "out.bin"
    atomic_write_bytes(path, b"old")
    with pytest.raises(TypeError):
        atomic_write_bytes(path, "text is not bytes")  # fails inside the write
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]
