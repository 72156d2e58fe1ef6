"""A Sphinx extension for the book's HTML (listed in ``_config.yml``'s ``extra_extensions``).

Sphinx 7.4 adds some inline scripts to every page twice (fixed upstream in sphinx-doc/sphinx#13402);
the second copy of ``const THEBE_JS_URL = ...`` is a console error ("Identifier 'THEBE_JS_URL' has
already been declared") on every page, which the browser check (:mod:`qwen_anatomy.browsercheck`)
rightly fails. This drops exact duplicates from each page's ``script_files`` (same file, or same
inline body, and same attributes), keeping the first.
"""

from __future__ import annotations


def _script_key(script) -> tuple:
    attributes = getattr(script, "attributes", {}) or {}
    return (
        getattr(script, "filename", script) or "",
        tuple(sorted((k, str(v)) for k, v in attributes.items())),
    )


def dedupe_scripts(scripts) -> list:
    """``scripts`` without repeats, in their first order (a ``None`` filename counts as ``''``)."""
    seen, kept = set(), []
    for script in scripts:
        key = _script_key(script)
        if key not in seen:
            seen.add(key)
            kept.append(script)
    return kept


def _on_page(app, pagename, templatename, context, doctree) -> None:
    if "script_files" in context:
        context["script_files"] = dedupe_scripts(context["script_files"])


def setup(app) -> dict:
    app.connect("html-page-context", _on_page, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
