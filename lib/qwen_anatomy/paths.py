"""Where things live: the repository and the cache of converted models (no heavy imports here)."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def cache_root() -> Path:
    """Where converted checkpoints live (outside git): $QWEN_ANATOMY_CACHE or ~/.cache/qwen-anatomy."""
    env = os.environ.get("QWEN_ANATOMY_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "qwen-anatomy"
