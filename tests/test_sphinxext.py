"""The book's Sphinx extension: duplicate scripts dropped, first order kept (qwen_anatomy.sphinxext)."""

from types import SimpleNamespace

from qwen_anatomy.sphinxext import dedupe_scripts


def script(filename, **attributes):
    return SimpleNamespace(filename=filename, attributes=attributes)


def test_exact_duplicates_go_and_everything_else_stays_in_order():
    thebe = script(None, body="const THEBE_JS_URL = 'x'")  # inline: filename None, body in attributes
    scripts = [
        script("a.js"),
        thebe,
        script("b.js", defer="defer"),
        script(None, body="const THEBE_JS_URL = 'x'"),
    ]
    scripts += [script("a.js"), script("b.js"), "plain.js", "plain.js", script("", body="other")]
    kept = dedupe_scripts(scripts)
    assert kept == [scripts[0], thebe, scripts[2], scripts[5], "plain.js", scripts[8]]


def test_a_none_filename_counts_as_empty():
    assert len(dedupe_scripts([script(None, body="x"), script("", body="x")])) == 1
