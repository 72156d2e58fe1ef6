"""Progress bars are off on static pages (qwen_anatomy.progress): a widget there loads a CDN script."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from qwen_anatomy.progress import bars_disabled, progress_bar

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("value", "off"),
    [(None, False), ("", False), ("0", False), ("false", False), ("1", True), ("True", True)],
)
def test_environment_switch(monkeypatch, value, off):
    if value is None:
        monkeypatch.delenv("TQDM_DISABLE", raising=False)
    else:
        monkeypatch.setenv("TQDM_DISABLE", value)
    assert bars_disabled() is off
    assert progress_bar(range(3), enabled=True).disable is off
    assert progress_bar(range(3), enabled=False).disable is True
    assert list(progress_bar(range(3), enabled=True)) == [0, 1, 2]


def test_book_builds_turn_bars_off():
    """`make book` and every run's kernel (the reader's book) set the switch."""
    from qwen_anatomy.experiments.runner import KERNEL_ENV

    assert KERNEL_ENV["TQDM_DISABLE"] == "1"
    assert re.search(r"^book: export TQDM_DISABLE = 1$", (ROOT / "Makefile").read_text(), re.M)


def test_library_bars_go_through_the_switch():
    """No library call builds a tqdm bar with its own ``disable=``: the environment could not turn it off.
    (Bars written to stderr by command-line tools, ``file=sys.stderr``, never reach a page.)"""
    offenders = []
    for path in (ROOT / "lib" / "qwen_anatomy").rglob("*.py"):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"\btqdm\(", line) and "file=sys.stderr" not in line and path.name != "progress.py":
                offenders.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def test_other_libraries_bars_obey_inside_the_block(monkeypatch):
    """tqdm's notebook bar ignores TQDM_DISABLE; obedient_bars makes a module's own tqdm obey it."""
    import types

    from tqdm.notebook import tqdm as notebook_tqdm

    from qwen_anatomy.progress import obedient_bars

    monkeypatch.setenv("TQDM_DISABLE", "1")
    module = types.ModuleType("fake_library")
    module.tqdm = notebook_tqdm
    assert notebook_tqdm(range(3)).disable is False  # the gap this closes
    with obedient_bars(module):
        bar = module.tqdm(range(3), desc="converting")
        assert bar.disable is True
        assert list(bar) == [0, 1, 2]
    assert module.tqdm is notebook_tqdm
    monkeypatch.setenv("TQDM_DISABLE", "0")
    with obedient_bars(module):
        assert module.tqdm(range(3), disable=True).disable is True  # the caller's own switch is kept
    with pytest.raises(AttributeError, match="no tqdm"), obedient_bars(types.ModuleType("bare")):
        pass


def test_the_gguf_converter_bar_is_reached():
    """The GGUF conversion (loading.py) quietens transformers' bar through this module attribute."""
    from transformers import modeling_gguf_pytorch_utils

    assert hasattr(modeling_gguf_pytorch_utils, "tqdm")
    assert "obedient_bars(gguf_utils)" in (ROOT / "lib" / "qwen_anatomy" / "loading.py").read_text()
