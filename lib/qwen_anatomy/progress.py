"""Progress bars: ``tqdm.auto`` for a person watching, none on a page that will be static.

In a notebook kernel ``tqdm.auto`` draws an ipywidget; a built book page keeps that widget as a script
that loads JavaScript from a CDN, which breaks the offline promise (the browser check fails on it) and
shows a bar that can never move. Book builds (``make book``, ``qwen-anatomy book`` and every run's
kernel, :data:`qwen_anatomy.experiments.runner.KERNEL_ENV`) therefore set tqdm's own switch,
``TQDM_DISABLE=1``; it turns off the bars of other libraries too. tqdm obeys it only when a call does
not pass ``disable``, and the library's calls do (``--no-progress``), so they go through
:func:`progress_bar`, which obeys both.

tqdm's notebook bar (what ``tqdm.auto`` gives inside a kernel) ignores ``TQDM_DISABLE``, so another
library's ``tqdm.auto`` bar still becomes a widget on a page. The one such bar the book meets is
transformers' GGUF conversion (chapter 00 of a fresh build converts the real model); the converter
runs it under :func:`obedient_bars`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType

OFF_VALUES = ("", "0", "false", "no")


def bars_disabled() -> bool:
    """True when the environment turns progress bars off (``TQDM_DISABLE`` set to a true value)."""
    return os.environ.get("TQDM_DISABLE", "").strip().lower() not in OFF_VALUES


def progress_bar(iterable=None, *, enabled: bool = True, **kwargs):
    """``tqdm.auto.tqdm(iterable, **kwargs)``, disabled when ``enabled`` is False or the environment
    turns bars off (:func:`bars_disabled`)."""
    from tqdm.auto import tqdm

    return tqdm(iterable, disable=not enabled or bars_disabled(), **kwargs)


def _obedient_tqdm(iterable=None, *args, **kwargs):
    """A ``tqdm(...)`` call as another library makes it, turned off when the environment says so."""
    from tqdm.auto import tqdm

    kwargs["disable"] = bool(kwargs.get("disable", False)) or bars_disabled()
    return tqdm(iterable, *args, **kwargs)


@contextmanager
def obedient_bars(*modules: ModuleType) -> Iterator[None]:
    """Within the block, the ``tqdm`` each module imported obeys ``TQDM_DISABLE`` (restored after).

    A module without a ``tqdm`` attribute is an error: the patch would silently do nothing.
    """
    saved = []
    for module in modules:
        if not hasattr(module, "tqdm"):
            raise AttributeError(f"{module.__name__} has no tqdm to quieten")
        saved.append((module, module.tqdm))
    try:
        for module, _ in saved:
            module.tqdm = _obedient_tqdm
        yield
    finally:
        for module, original in saved:
            module.tqdm = original
