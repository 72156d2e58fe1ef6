"""Formulas render without network: the built book serves MathJax itself, not from a CDN.

Builds a one-chapter book with the project's own `_config.yml` (as `tests/test_book_build.py` does),
with math in a markdown page (the prose in `book/`) and in a notebook's markdown cell (the chapters),
then reads the HTML the way a browser would: every script it loads must be a local file.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import pytest

from test_book_build import JB, build, make_book

INLINE = r"x^2"
DISPLAY = r"\int_0^1 f"
SCRIPT_SRC = re.compile(r"<script\b[^>]*\bsrc=\"([^\"]+)\"", re.IGNORECASE)


def script_sources(html: str) -> list[str]:
    return SCRIPT_SRC.findall(html)


def is_remote(src: str) -> bool:
    return bool(urlsplit(src).scheme) or src.startswith("//")


@pytest.mark.skipif(not JB.exists(), reason="jupyter-book is installed by make")
def test_built_pages_load_a_local_mathjax_and_keep_the_formulas(tmp_path):
    book = make_book(tmp_path / "book", "print(1 + 1)")
    (book / "intro.md").write_text(f"# Intro\n\nInline ${INLINE}$ and displayed:\n\n$${DISPLAY}$$\n")
    with (book / "chapter.py").open("a") as chapter:
        chapter.write(f"\n# %% [markdown]\n# Also in a notebook: ${INLINE}$\n#\n# $${DISPLAY}$$\n")
    result = build(book)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]

    html_root = book / "_build" / "html"
    for page in ("intro.html", "chapter.html"):
        html = (html_root / page).read_text()
        sources = script_sources(html)
        remote = [src for src in sources if is_remote(src)]
        assert not remote, f"{page} loads scripts from the network: {remote}"
        assert "cdn.jsdelivr" not in html and "mathjax@" not in html, f"{page} still names a MathJax CDN"

        mathjax = [src for src in sources if "mathjax" in src.lower()]
        assert len(mathjax) == 1, f"{page}: expected one MathJax script, found {mathjax}"
        script = (html_root / page).parent / urlsplit(mathjax[0]).path
        assert script.is_file() and script.stat().st_size > 100_000, f"{script} missing or truncated"
        # MathJax's CommonHTML output fetches its fonts next to the script: they must be there too.
        fonts = script.parent / "output" / "chtml" / "fonts" / "woff-v2"
        assert any(fonts.glob("*.woff")), f"no MathJax fonts under {fonts}"

        # Sphinx writes the TeX between MathJax delimiters; the script typesets it in the browser.
        assert rf"\({INLINE}\)" in html, f"inline math missing from {page}"
        assert rf"\[{DISPLAY}\]" in html, f"display math missing from {page}"
