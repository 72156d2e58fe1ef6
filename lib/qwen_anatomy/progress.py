"""Progress bars: ``tqdm.auto`` for a person watching, none on a page that will be static.

In a notebook kernel ``tqdm.auto`` draws an ipywidget; a built book page keeps that widget as a script
that loads JavaScript from a CDN, which breaks the offline promise (the browser check fails on it) and
shows a bar that can never move. Book builds (``make book``, ``qwen-anatomy book`` and every run's
kernel, :data:`qwen_anatomy.experiments.runner.KERNEL_ENV`) therefore set tqdm's own switch,
``TQDM_DISABLE=1``; it turns off the bars of other libraries too. tqdm obeys it only when a call does
not pass ``disable``, and the library's calls do (``--no-progress``), so they go through
:func:`progress_bar`, which obeys both.
"""

from __future__ import annotations

import os

OFF_VALUES = ("", "0", "false", "no")


def bars_disabled() -> bool:
    """True when the environment turns progress bars off (``TQDM_DISABLE`` set to a true value)."""
    return os.environ.get("TQDM_DISABLE", "").strip().lower() not in OFF_VALUES


def progress_bar(iterable=None, *, enabled: bool = True, **kwargs):
    """``tqdm.auto.tqdm(iterable, **kwargs)``, disabled when ``enabled`` is False or the environment
    turns bars off (:func:`bars_disabled`)."""
    from tqdm.auto import tqdm

    return tqdm(iterable, disable=not enabled or bars_disabled(), **kwargs)
