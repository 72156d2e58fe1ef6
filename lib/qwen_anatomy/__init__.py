"""Qwen2 Anatomy: the library behind the executable book.

Importing the package is cheap (no torch, no transformers); submodules import what they need.
"""

__version__ = "0.1.0"
