"""``qwen-anatomy download``: fetch a checkpoint's config, tokenizer and safetensors (chapter 10).

For readers with network access. Only ``config.json``, generation config, tokenizer files and
``*.safetensors`` (+ index) are fetched: never pickle ``.bin`` files, which can run code when
loaded. ``huggingface_hub.snapshot_download`` resumes interrupted files. The resolved commit is
written to ``DIR/download.json``, which ``qwen-anatomy params`` reads for its model id and revision
columns. Offline (``HF_HUB_OFFLINE=1`` or no network) it fails at once with one line naming the
local-path alternative.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import UserInputError

ALLOW_PATTERNS = [
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "*.safetensors",
    "model.safetensors.index.json",
]
LOCAL_ALTERNATIVE = (
    "pass a local checkpoint directory (config.json + *.safetensors) or a .gguf file to "
    "`qwen-anatomy params`/`embeddings` instead, or run this command on a machine with network access"
)


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def download(
    repo_id: str, out: str | os.PathLike, revision: str | None = None, timeout: float = 10.0
) -> Path:
    """Snapshot-download ``repo_id`` into ``out`` (safetensors only) and record the resolved revision."""
    import re

    # the hub's own rule: owner/name, letters, digits, '-', '_', '.', at most 96 characters
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", repo_id) or len(repo_id) > 96 or Path(repo_id).exists():
        raise UserInputError(
            f"MODEL_ID {repo_id!r} is not a hub id like Qwen/Qwen2.5-0.5B; {LOCAL_ALTERNATIVE}"
        )
    if _offline():
        raise UserInputError(f"offline (HF_HUB_OFFLINE=1): cannot download {repo_id}; {LOCAL_ALTERNATIVE}")
    out = Path(out)
    from huggingface_hub import HfApi, snapshot_download

    from ..runrecord import atomic_write_json, utc_now

    try:
        info = HfApi().model_info(repo_id, revision=revision, timeout=timeout)
    except Exception as err:  # no network, unknown repo, gated repo: all one line
        kind = type(err).__name__
        raise UserInputError(
            f"cannot reach the Hugging Face Hub for {repo_id} ({kind}); {LOCAL_ALTERNATIVE}"
        ) from None
    files = [s.rfilename for s in (info.siblings or [])]
    if files and not any(f.endswith(".safetensors") for f in files):
        raise UserInputError(
            f"{repo_id} has no *.safetensors files (pickle weights are not fetched); {LOCAL_ALTERNATIVE}"
        )
    try:
        path = snapshot_download(
            repo_id, revision=info.sha, local_dir=str(out), allow_patterns=ALLOW_PATTERNS
        )
    except Exception as err:
        raise UserInputError(
            f"download of {repo_id} failed ({type(err).__name__}: {err}); rerun to resume"
        ) from None
    atomic_write_json(
        Path(path) / "download.json",
        {
            "repo_id": repo_id,
            "revision": revision,
            "resolved_revision": info.sha,
            "allow_patterns": ALLOW_PATTERNS,
            "downloaded_at": utc_now(),
        },  # fmt: skip
    )
    return Path(path)
