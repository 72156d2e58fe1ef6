"""``qwen-anatomy browser-check``: every page of the built book in an offline headless Chromium.

The logic is :mod:`qwen_anatomy.browsercheck`; ``make browser-check`` runs this after ``make book``.
Nothing heavy is imported here.
"""

from __future__ import annotations

from ..cli import non_negative_float


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "browser-check",
        help="open every page of the built book in headless Chromium, offline; fail on any fault",
        description=(
            "Load every page of the HTML book from disk in headless Chromium with the network blocked, "
            "and fail on a console error, a failed load or network access, a broken image or internal "
            "link, an unrendered formula, or a chapter page showing fewer figures than its executed "
            "notebook made. Writes a full-page screenshot per page and OUT/report.json; prints one line "
            "per page. Exit code 0 when every page passes, 1 otherwise, 2 for bad input."
        ),
    )
    p.add_argument(
        "html",
        nargs="?",
        default="_build/html",
        help="the folder holding index.html, or the book's folder (default: _build/html)",
    )
    p.add_argument(
        "--out",
        default="_build/browser-check",
        metavar="DIR",
        help="a new (or empty) folder for screenshots/ and report.json (default: _build/browser-check)",
    )
    p.add_argument(
        "--pages", nargs="+", metavar="GLOB", help="only pages matching these globs (e.g. 'notebooks/*')"
    )
    p.add_argument(
        "--notebooks",
        metavar="DIR",
        help="folder of the executed .ipynb files to count figures against (default: found beside the book)",
    )
    p.add_argument("--browser", metavar="PATH", help="the Chromium executable (default: chromium on PATH)")
    p.add_argument("--no-screenshots", action="store_true", help="check only, write no screenshots")
    p.add_argument(
        "--timeout",
        type=_seconds,
        default=60.0,
        help="seconds a page may take to load, and MathJax to typeset it (default 60)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_browser_check)


def _seconds(text: str) -> float:
    import argparse

    value = non_negative_float(text)
    if value == 0:
        raise argparse.ArgumentTypeError("0 must be a positive number of seconds")
    return value


def _browser_check(args) -> int:
    from ..browsercheck import check_book

    report = check_book(
        args.html,
        args.out,
        pages=args.pages,
        notebooks_dir=args.notebooks,
        browser=args.browser,
        screenshots=not args.no_screenshots,
        load_timeout=args.timeout,
        math_timeout=args.timeout,
        progress=not args.no_progress,
    )
    return 0 if report["status"] == "passed" else 1
