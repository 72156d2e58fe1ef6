"""Real English text that is installed offline: docstrings of Python's standard library.

Used for scoring and perplexity (chapters 01, 40): no data hub, no download, deterministic order.
"""

from __future__ import annotations

import importlib
import inspect
import random
import warnings

# Pure-Python standard-library modules with long, prose-like documentation (no GUI, no network at import).
STDLIB_MODULES = [
    "argparse", "ast", "asyncio", "base64", "bisect", "calendar", "cmd", "codecs", "collections",
    "concurrent.futures", "configparser", "contextlib", "copy", "csv", "dataclasses", "datetime",
    "decimal", "difflib", "doctest", "email.message", "enum", "filecmp", "fileinput", "fnmatch",
    "fractions", "ftplib", "functools", "getopt", "gettext", "glob", "gzip", "hashlib", "heapq", "hmac",
    "html.parser", "http.client", "http.cookiejar", "http.server", "imaplib", "inspect", "ipaddress",
    "json", "linecache", "locale", "logging", "logging.handlers", "lzma", "mailbox", "mimetypes",
    "netrc", "numbers", "operator", "optparse", "os", "pathlib", "pdb", "pickle", "pickletools",
    "platform", "plistlib", "poplib", "pprint", "profile", "pstats", "queue", "quopri", "random", "re",
    "reprlib", "sched", "secrets", "selectors", "shelve", "shlex", "shutil", "smtplib", "socket",
    "socketserver", "sqlite3", "ssl", "statistics", "string", "subprocess", "tarfile", "tempfile",
    "textwrap", "threading", "timeit", "trace", "traceback", "tracemalloc", "typing", "unittest",
    "urllib.parse", "urllib.request", "uuid", "warnings", "wave", "weakref", "xml.dom.minidom",
    "xml.etree.ElementTree", "xmlrpc.client", "zipfile",
]  # fmt: skip


def stdlib_docstrings(min_chars: int = 200) -> list[tuple[str, str]]:
    """(qualified name, docstring) for modules and their public classes and functions, in a fixed order.

    Short docstrings (< ``min_chars``) are dropped; whitespace is normalised by ``inspect.cleandoc``.
    """
    docs: list[tuple[str, str]] = []
    seen: set[str] = set()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for mod_name in STDLIB_MODULES:
            try:
                module = importlib.import_module(mod_name)
            except ImportError:
                continue
            members = [(mod_name, module)] + [
                (f"{mod_name}.{name}", obj)
                for name, obj in sorted(vars(module).items())
                if not name.startswith("_")
                and (inspect.isclass(obj) or inspect.isfunction(obj))
                and getattr(obj, "__module__", None) == module.__name__
            ]
            for qual, obj in members:
                doc = inspect.getdoc(obj)
                if not doc or len(doc) < min_chars or doc in seen:
                    continue
                seen.add(doc)
                docs.append((qual, doc))
    return docs


def train_heldout_split(
    train_chars: int, heldout_chars: int, seed: int = 0, min_chars: int = 200
) -> tuple[str, str, dict]:
    """Shuffle the documents with ``seed``; the first fill ``heldout_chars``, the next ``train_chars``.

    Returns (train text, held-out text, provenance). Documents are never split between the two.
    """
    train, heldout, info = train_heldout_documents(train_chars, heldout_chars, seed, min_chars)
    return "\n\n".join(train), "\n\n".join(heldout), info


def train_heldout_documents(
    train_chars: int, heldout_chars: int, seed: int = 0, min_chars: int = 200
) -> tuple[list[str], list[str], dict]:
    """:func:`train_heldout_split` as lists of documents (train, held-out, provenance)."""
    docs = stdlib_docstrings(min_chars)
    order = list(range(len(docs)))
    random.Random(seed).shuffle(order)
    heldout, train, used_h, used_t = [], [], 0, 0
    for i in order:
        text = docs[i][1]
        if used_h < heldout_chars:
            heldout.append(text)
            used_h += len(text)
        elif used_t < train_chars:
            train.append(text)
            used_t += len(text)
        else:
            break
    if used_t < train_chars:
        warnings.warn(
            f"the standard-library corpus holds only {used_t + used_h} characters; "
            f"asked for {train_chars + heldout_chars}",
            stacklevel=2,
        )
    info = {
        "source": "docstrings of Python standard-library modules (inspect.getdoc)",
        "documents_total": len(docs),
        "heldout_documents": len(heldout),
        "train_documents": len(train),
        "seed": seed,
    }
    return train, heldout, info
