"""The offline browser check of the built book (``qwen-anatomy browser-check``, lib/qwen_anatomy/browsercheck.py).

The pure parts (links, raw TeX, figure counts, finding pages and notebooks) are checked without a
browser. The browser tests open a tiny hand-made site in headless Chromium: one good page, and one page
per fault the check promises to catch (broken image, broken link and anchor, raw formula, MathJax
error, console error, network access, missing figures, broken redirect). Each bad page must fail for
its own reason and the good page must pass, so the check can tell the difference. The slow test builds
a one-chapter Jupyter Book with the project's own settings and checks it the same way.
"""

from __future__ import annotations

import base64
import json
import shutil
import sysconfig
from pathlib import Path

import pytest

from clicheck import one_line_error
from qwen_anatomy import browsercheck as bc
from qwen_anatomy.errors import UserInputError

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="needs Debian's chromium (apt-get install -y chromium; see the Makefile)"
)
MATHJAX = Path(sysconfig.get_paths()["purelib"]) / "sphinx-mathjax-offline" / "static" / "mathjax"
needs_mathjax = pytest.mark.skipif(
    not (MATHJAX / "tex-chtml.js").is_file(), reason="needs sphinx-mathjax-offline (requirements.txt)"
)
# A 2x2 red PNG.
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAIAAAACCAIAAAD91JpzAAAAFklEQVR4nGP8z8DAwMDAxMDAwMDAAAANHQEDasKb6QAAAABJRU5ErkJggg=="
)


# -- pure checks ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text",
    [
        r"the energy \(E = mc^2\) of",
        r"\[ \int_0^1 f \]",
        "display $$x^2$$ here",
        r"the grammatical order is $2^{77}$ times more probable",
        r"each factor $-\log_2 p(x_i \mid x_{<i})$ counts",
        "the median $|W_k x|$ of",
    ],
)
def test_raw_tex_finds_formulas_left_as_text(text):
    assert len(bc.raw_tex([text])) == 1, text  # one snippet per formula, not one per delimiter


@pytest.mark.parametrize(
    "text",
    ["it costs $5 and $6 more", "a plain sentence", "cost: $ 10_000 $ (spaces)", "path C:\\Users\\me"],
)
def test_raw_tex_leaves_ordinary_prose_alone(text):
    assert bc.raw_tex([text]) == []


def _page(path: Path, body: str, head: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f"<!doctype html><html><head><meta charset='utf-8'>{head}</head><body>{body}</body></html>"
    )
    return path


def test_link_problem_checks_files_anchors_and_the_book_boundary(tmp_path):
    root = tmp_path / "html"
    page = _page(root / "a.html", "<h1 id='top'>A</h1>")
    _page(root / "sub" / "index.html", "<p id='here'>x</p>")
    (root / "file.txt").write_text("x")
    _page(tmp_path / "outside.html", "")
    anchors = bc.Anchors()
    uri = lambda p: Path(p).resolve().as_uri()  # noqa: E731

    assert bc.link_problem(uri(root / "a.html") + "#top", page, root, anchors) is None
    assert bc.link_problem(uri(root / "sub") + "#here", page, root, anchors) is None  # a folder: its index
    assert bc.link_problem(uri(root / "file.txt"), page, root, anchors) is None
    assert "broken link" in bc.link_problem(uri(root / "missing.html"), page, root, anchors)
    assert "broken anchor" in bc.link_problem(uri(root / "a.html") + "#nope", page, root, anchors)
    assert "leaves the book" in bc.link_problem(uri(tmp_path / "outside.html"), page, root, anchors)
    # anchors made by scripts count on the live page itself
    live = uri(root / "a.html") + "#made-by-js"
    assert "broken anchor" in bc.link_problem(live, page, root, anchors)
    assert bc.link_problem(live, page, root, anchors, page_ids={"made-by-js"}) is None
    assert bc.link_kind("https://example.com/x") == "external"
    assert bc.link_kind("mailto:a@b.c") == "skipped"
    assert bc.link_problem("https://example.com/missing", page, root, anchors) is None


def _output(*mimes: str, kind: str = "display_data") -> dict:
    return {"output_type": kind, "data": {mime: "x" for mime in mimes}, "metadata": {}}


def _cell(outputs, tags=(), cell_type="code") -> dict:
    return {
        "cell_type": cell_type,
        "metadata": {"tags": list(tags)},
        "outputs": outputs,
        "execution_count": 1,
    }


def test_notebook_figure_count_follows_what_jupyter_book_renders():
    notebook = {
        "cells": [
            _cell([_output("image/png", "text/plain")]),  # a matplotlib figure
            _cell([_output("image/png", "text/plain", kind="execute_result"), _output("image/svg+xml")]),
            _cell([_output("text/html", "image/png")]),  # rendered as HTML, not as an image
            _cell([{"output_type": "stream", "name": "stdout", "text": "hi"}]),
            _cell([_output("image/png")], tags=["remove-output"]),
            _cell([_output("image/png")], tags=["remove_cell"]),
            _cell([_output("image/png")], tags=["hide-output"]),  # on the page, behind a toggle
            {"cell_type": "markdown", "metadata": {}, "source": "![x](y.png)"},
        ]
    }
    assert bc.notebook_figure_count(notebook) == 4
    removed = {
        "cells": [{**_cell([_output("image/png")]), "metadata": {"mystnb": {"remove_code_outputs": True}}}]
    }
    assert bc.notebook_figure_count(removed) == 0


def _notebook(path: Path, images: int, executed: bool = True) -> Path:
    cells = [_cell([_output("image/png", "text/plain")]) for _ in range(images)]
    for cell in cells:
        cell["execution_count"] = 1 if executed else None
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    return path


def test_find_executed_notebook_looks_beside_the_build_then_in_sources(tmp_path):
    root = tmp_path / "_build" / "html"
    _page(root / "notebooks" / "ch.html", "")
    assert bc.find_executed_notebook(root, "notebooks/ch.html") is None
    source = _notebook(root / "_sources" / "notebooks" / "ch.ipynb", 1)
    assert bc.find_executed_notebook(root, "notebooks/ch.html") == source  # qwen-anatomy book
    executed = _notebook(tmp_path / "_build" / "jupyter_execute" / "notebooks" / "ch.ipynb", 2)
    assert bc.find_executed_notebook(root, "notebooks/ch.html") == executed  # make book
    elsewhere = _notebook(tmp_path / "runs" / "ch" / "x" / "ch.ipynb", 3)
    assert bc.find_executed_notebook(root, "notebooks/ch.html", tmp_path / "runs") == elsewhere
    _notebook(source, 1, executed=False)  # a source that was never run does not count
    shutil.rmtree(tmp_path / "_build" / "jupyter_execute")
    assert bc.find_executed_notebook(root, "notebooks/ch.html") is None


def test_pages_and_html_root(tmp_path):
    root = tmp_path / "_build" / "html"
    for name in (
        "index.html",
        "a.html",
        "notebooks/b.html",
        "_static/webpack-macros.html",
        "_sources/c.html",
    ):
        _page(root / name, "")
    assert bc.find_html_root(tmp_path) == root.resolve()
    assert bc.find_html_root(root) == root.resolve()
    assert bc.list_pages(root) == ["a.html", "index.html", "notebooks/b.html"]
    assert bc.list_pages(root, ["notebooks/*"]) == ["notebooks/b.html"]
    with pytest.raises(UserInputError, match="no index.html"):
        bc.find_html_root(root / "notebooks")
    with pytest.raises(UserInputError, match="does not exist"):
        bc.find_html_root(tmp_path / "nowhere")


def test_summary_line_and_verdict_say_what_failed():
    good = bc.PageResult(page="a.html", math_elements=3, math_rendered=3, figures=2, figures_expected=2)
    bad = bc.PageResult(page="b.html", problems=["broken image: x.png", "console error: boom"])
    assert bc.summary_line(good).startswith("ok   a.html") and "math 3/3" in bc.summary_line(good)
    assert "figures 2/2" in bc.summary_line(good)
    line = bc.summary_line(bad)
    assert line.startswith("FAIL b.html") and "broken image: x.png (+1 more)" in line
    assert bc.verdict([good]) == "all 1 page(s) passed in the offline browser"
    assert bc.verdict([good, bad]) == "1 of 2 page(s) failed: b.html"


def test_cli_refuses_a_missing_book_in_one_line(capsys, tmp_path):
    one_line_error(capsys, ["browser-check", str(tmp_path / "nowhere")], match="does not exist")
    _page(tmp_path / "html" / "index.html", "")
    one_line_error(
        capsys,
        ["browser-check", str(tmp_path / "html"), "--browser", str(tmp_path / "no-chromium")],
        match="apt-get install -y chromium",
    )
    one_line_error(
        capsys, ["browser-check", str(tmp_path / "html"), "--pages", "zzz*.html"], match="matches no page"
    )


# -- in the browser -------------------------------------------------------------------------------------
MATHJAX_HEAD = (
    "<script>window.MathJax = {options: {processHtmlClass: 'math'}}</script>"
    "<script defer src='_static/mathjax/tex-chtml.js'></script>"
)
FAULTS = {
    "bad_image.html": "broken image",
    "bad_link.html": "broken link",
    "bad_anchor.html": "broken anchor",
    "raw_tex.html": "raw TeX",
    "unrendered.html": "unrendered formula",
    "math_error.html": "MathJax error",
    "console.html": "console error",
    "exception.html": "console error: uncaught",
    "network.html": "network access attempted",
    "loopback.html": "network access attempted",
    "notebooks/missing_figure.html": "missing figures",
    "notebooks/no_notebook.html": "figures not checked",
    "redirect_broken.html": "redirect: broken link",
}


@pytest.fixture(scope="module")
def loopback_server():
    """An HTTP server on 127.0.0.1 that records every request it receives (there should be none)."""
    import http.server
    import threading

    seen: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (the standard library's name)
            seen.append(self.path)
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", seen
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def site(tmp_path_factory, loopback_server):
    """A tiny book: ``_build/html`` with one good page and one page per fault, ``_build/jupyter_execute``."""
    base = tmp_path_factory.mktemp("site")
    root = base / "_build" / "html"
    (root / "_images").mkdir(parents=True)
    (root / "_images" / "fig.png").write_bytes(PNG)
    (root / "_static").mkdir()
    if (MATHJAX / "tex-chtml.js").is_file():
        (root / "_static" / "mathjax").symlink_to(MATHJAX, target_is_directory=True)
    _page(root / "index.html", "", head="<meta http-equiv='refresh' content='0; url=good.html'>")
    _page(
        root / "good.html",
        "<h1 id='top'>Good</h1><p>Inline <span class='math'>\\(x^2 + y^2\\)</span> and</p>"
        "<div class='math'>\\[\\int_0^1 f(x)\\,dx\\]</div><img src='_images/fig.png' alt='a figure'>"
        "<p>Prices are $5 and $6.</p><pre>raw \\(kept\\) in code $$</pre>"
        "<a href='#top'>top</a> <a href='bad_link.html#real'>next</a> <a href='https://example.com'>out</a>"
        "<a href='#'>js button</a>",
        head=MATHJAX_HEAD,
    )
    _page(root / "bad_image.html", "<img src='_images/missing.png'>")
    _page(root / "bad_link.html", "<p id='real'>x</p><a href='nowhere.html'>gone</a>")
    _page(root / "bad_anchor.html", "<a href='good.html#no-such-section'>gone</a>")
    _page(root / "raw_tex.html", "<p>Energy \\(E = mc^2\\) as text: no MathJax here.</p>")
    _page(root / "unrendered.html", "<p><span class='math'>\\(a+b\\)</span></p>")  # math, no MathJax
    _page(root / "math_error.html", "<p><span class='math'>\\(\\frac{1}\\)</span></p>", head=MATHJAX_HEAD)
    _page(root / "console.html", "<p>x</p><script>console.error('boom')</script>")
    _page(root / "exception.html", "<p>x</p><script>undefinedFunction()</script>")
    _page(
        root / "network.html",
        "<p>x</p><script>fetch('https://example.com/data.json').catch(() => null)</script>",
        head="<link rel='stylesheet' href='https://cdn.example.com/theme.css'>",
    )
    local = loopback_server[0]
    _page(
        root / "loopback.html",
        f"<img src='{local}/img.png'><script>fetch('{local}/data.json').catch(() => null)</script>",
        head=f"<script src='{local}/script.js'></script>",
    )
    _page(root / "redirect_broken.html", "", head="<meta http-equiv='refresh' content='0; url=gone.html'>")
    cell = "<div class='cell'><div class='cell_output'><img src='../_images/fig.png'></div></div>"
    _page(root / "notebooks" / "good_chapter.html", cell * 2)
    _page(root / "notebooks" / "missing_figure.html", cell)
    _page(root / "notebooks" / "no_notebook.html", cell)
    executed = base / "_build" / "jupyter_execute" / "notebooks"
    _notebook(executed / "good_chapter.ipynb", 2)
    _notebook(executed / "missing_figure.ipynb", 2)
    return root


@pytest.fixture(scope="module")
def report(site, tmp_path_factory):
    out = tmp_path_factory.mktemp("check") / "out"
    return bc.check_book(
        site, out, browser=CHROMIUM, progress=False, load_timeout=30, math_timeout=30, log=print
    )


def _by_page(report) -> dict[str, dict]:
    return {page["page"]: page for page in report["pages"]}


@needs_chromium
@needs_mathjax
def test_good_pages_pass_with_math_typeset_offline(report):
    pages = _by_page(report)
    good = pages["good.html"]
    assert good["ok"], good["problems"]
    assert good["mathjax"] == "done" and good["math_elements"] == 2 and good["math_rendered"] >= 2
    assert good["images_loaded"] == 1 and good["figures"] == 1 and good["links_external"] == 1
    assert good["links_internal"] == 2  # '#top' and the other page's anchor ('#' is a script button)
    chapter = pages["notebooks/good_chapter.html"]
    assert chapter["ok"], chapter["problems"]
    assert chapter["figures"] == chapter["figures_expected"] == 2
    assert pages["index.html"]["ok"] and pages["index.html"]["redirect"] == "good.html"


@needs_chromium
@needs_mathjax
@pytest.mark.parametrize("page, reason", sorted(FAULTS.items()))
def test_each_fault_is_caught_for_its_own_reason(report, page, reason):
    result = _by_page(report)[page]
    assert not result["ok"]
    assert any(reason in problem for problem in result["problems"]), result["problems"]


@needs_chromium
@needs_mathjax
def test_network_is_blocked_and_named(report):
    network = _by_page(report)["network.html"]
    attempts = [p for p in network["problems"] if p.startswith("network access attempted")]
    assert any("cdn.example.com/theme.css" in p for p in attempts), attempts
    assert any("example.com/data.json" in p for p in attempts), attempts


@needs_chromium
@needs_mathjax
def test_nothing_reaches_even_a_server_on_loopback(report, loopback_server):
    url, seen = loopback_server
    loopback = _by_page(report)["loopback.html"]
    assert sum(p.startswith(f"network access attempted: {url}") for p in loopback["problems"]) == 3
    assert seen == [], f"the browser reached {url}: {seen}"


@needs_chromium
@needs_mathjax
def test_report_and_screenshots_are_written(report, site):
    assert report["status"] == "failed"
    assert sorted(report["failed"]) == sorted(FAULTS)
    out = Path(report["pages"][0]["screenshot"] or report["pages"][1]["screenshot"]).parents[0]
    saved = json.loads((out.parent / bc.REPORT_FILE).read_text())
    assert saved["failed"] == report["failed"] and saved["html_root"] == str(site.resolve())
    for page in report["pages"]:
        if page["redirect"] is None:
            assert Path(page["screenshot"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", page["page"]


@needs_chromium
@needs_mathjax
def test_cli_exit_code_follows_the_verdict(site, tmp_path, capsys):
    from qwen_anatomy.cli import main

    args = ["browser-check", str(site), "--browser", CHROMIUM, "--no-progress", "--no-screenshots"]
    assert main([*args, "--out", str(tmp_path / "a"), "--pages", "good.html", "index.html"]) == 0
    assert main([*args, "--out", str(tmp_path / "b"), "--pages", "console.html"]) == 1
    out = capsys.readouterr().out
    assert "ok   good.html" in out and "FAIL console.html" in out
    # the output folder is never written over
    one_line_error(capsys, [*args, "--out", str(tmp_path / "a")], match="already exists")


# -- a real Jupyter Book --------------------------------------------------------------------------------
@pytest.mark.slow
@needs_chromium
def test_a_built_jupyter_book_passes_offline(tmp_path):
    """One chapter built with the project's _config.yml: its formula typeset by the offline MathJax,
    its figure shown, no console error and no network access, on every page."""
    from test_book_build import JB, build, make_book

    if not JB.exists():
        pytest.skip("jupyter-book is installed by make")
    cell = (
        "import matplotlib.pyplot as plt\n"
        "fig, ax = plt.subplots(figsize=(3, 2))\n"
        "ax.plot([0, 1], [0, 1])\n"
        "ax.set_xlabel('x')\n"
        "ax.set_ylabel('y')"
    )
    book = make_book(tmp_path / "book", cell)
    (book / "intro.md").write_text("# Intro\n\nInline $x^2$ and displayed:\n\n$$\\int_0^1 f$$\n")
    result = build(book)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    report = bc.check_book(book, tmp_path / "check", browser=CHROMIUM, progress=False)
    pages = _by_page(report)
    assert pages["intro.html"]["math_rendered"] >= 2, pages["intro.html"]
    assert pages["chapter.html"]["figures_expected"] == 1 and pages["chapter.html"]["figures"] >= 1
    assert report["status"] == "passed", [(p["page"], p["problems"]) for p in report["pages"] if not p["ok"]]
