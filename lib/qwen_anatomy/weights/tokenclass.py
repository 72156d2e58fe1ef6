"""The character class of a decoded token (chapter 12's cluster make-up and low-norm rows).

A module of its own so that the report (:mod:`.embeddings`) and the figures (:mod:`.plots`) both
import it without importing each other.
"""

from __future__ import annotations

import unicodedata

CHAR_CLASSES = ("special", "byte_fragment", "whitespace", "digits", "punctuation", "cjk", "cyrillic",
                "latin", "other")  # fmt: skip


def char_class(text: str, special: bool = False) -> str:
    """One of :data:`CHAR_CLASSES` for a decoded token (byte-level BPE fragments decode to U+FFFD)."""
    if special:
        return "special"
    if text == "" or "\ufffd" in text:
        return "byte_fragment"
    if text.strip() == "":
        return "whitespace"
    core = text.strip()
    if core.isdigit():
        return "digits"
    if all(unicodedata.category(c)[0] in "PS" for c in core):
        return "punctuation"
    for c in core:
        o = ord(c)
        if 0x3040 <= o <= 0x30FF or 0x3400 <= o <= 0x9FFF or 0xAC00 <= o <= 0xD7AF or 0xF900 <= o <= 0xFAFF:
            return "cjk"
    if any(0x0400 <= ord(c) <= 0x04FF for c in core):
        return "cyrillic"
    if any(c.isalpha() and "LATIN" in unicodedata.name(c, "") for c in core):
        return "latin"
    return "other"
