"""Where a model runs and in what precision: ``--device`` and ``--dtype`` (chapter 02).

Every command that runs a model takes ``--device {cpu,cuda,mps,auto}`` (default cpu: the book's
numbers are CPU numbers) and ``--dtype {float32,bfloat16,float16}`` (default float32), and
:func:`qwen_anatomy.loading.load_model` takes the same ``device=`` and ``dtype=`` keywords. Both are
checked before any weight is read: a device this machine lacks is one line and exit code 2.
``auto`` picks cuda, then mps, then cpu.

``--dtype`` sets the weights and activations of the transformer. Whatever it is, the pieces whose
precision matters stay float32, as in transformers: RMSNorm's mean of squares and rsqrt, the RoPE
angles and their cos/sin tables (cast to the dtype after), the attention softmax, and every loss
(logits are upcast before cross-entropy).

float16 on a CPU is allowed: it is numerically valid and lets a CPU reproduce what a float16 GPU
computes, but it buys nothing there (measured on this project's machine: a float16 matmul is about
1.2x slower than float32, bfloat16 about 3x faster), and float16's range (max 65504, against float32's
for bfloat16) is the one that can overflow. Prefer bfloat16 on CPUs.

Imports torch only inside functions, so command modules can import the flag helpers at start-up.
"""

from __future__ import annotations

from .errors import UserInputError

DEVICES = ("cpu", "cuda", "mps", "auto")
DTYPES = ("float32", "bfloat16", "float16")
DEVICE_HELP = "where the model runs: cpu (default), cuda, mps, or auto (cuda, else mps, else cpu)"
DTYPE_HELP = (
    "weights and activations: float32 (default), bfloat16 or float16; norms, softmax and losses stay float32"
)


def add_device_flags(parser) -> None:
    """``--device`` and ``--dtype`` with the project's choices, defaults and help."""
    parser.add_argument("--device", choices=DEVICES, default="cpu", help=DEVICE_HELP)
    parser.add_argument("--dtype", choices=DTYPES, default="float32", help=DTYPE_HELP)


def _cuda_reason(torch) -> str:
    if torch.version.cuda is None:
        return f"this torch ({torch.__version__}) is built without CUDA"
    return f"torch {torch.__version__} (CUDA {torch.version.cuda}) finds no GPU"


def _mps_available(torch) -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_device(device=None, flag: str = "--device"):
    """A ``torch.device`` for ``None`` (cpu), ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"``
    or a ``torch.device``; UserInputError naming the value when this machine lacks it."""
    import torch

    if device is None:
        return torch.device("cpu")
    if isinstance(device, torch.device):
        text = str(device)
    elif isinstance(device, str):
        text = device.strip().lower()
    else:
        raise UserInputError(f"{flag} {device!r}: give one of {', '.join(DEVICES)}")
    if text == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available(torch):
            return torch.device("mps")
        return torch.device("cpu")
    kind, _, index = text.partition(":")
    if kind not in ("cpu", "cuda", "mps") or (index and not index.isdigit()):
        raise UserInputError(f"{flag} {device!r}: give one of {', '.join(DEVICES)} (or cuda:N)")
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise UserInputError(f"{flag} {text}: no CUDA device ({_cuda_reason(torch)}); use cpu or auto")
        if index and int(index) >= torch.cuda.device_count():
            raise UserInputError(
                f"{flag} {text}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                f"cuda:0..cuda:{torch.cuda.device_count() - 1}"
            )
    if kind == "mps" and not _mps_available(torch):
        raise UserInputError(
            f"{flag} mps: Apple's Metal (MPS) backend is not available here; use cpu or auto"
        )
    if kind == "cpu" and index:
        raise UserInputError(f"{flag} {text}: the CPU has no index; use cpu")
    return torch.device(text)


_DTYPE_NAMES = {
    "float32": "float32",
    "fp32": "float32",
    "float": "float32",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
}


def resolve_dtype(dtype=None, flag: str = "--dtype"):
    """A floating ``torch.dtype`` (float32, bfloat16 or float16) for its name, an alias (bf16, fp16,
    fp32), a ``torch.dtype`` or None (float32); UserInputError for anything else."""
    import torch

    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        name = str(dtype).removeprefix("torch.")
    elif isinstance(dtype, str):
        name = _DTYPE_NAMES.get(dtype.strip().lower().removeprefix("torch."), "")
    else:
        name = ""
    if name not in DTYPES:
        raise UserInputError(f"{flag} {dtype!r}: give one of {', '.join(DTYPES)}")
    return getattr(torch, name)


def dtype_name(dtype) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"`` (for reports and run records)."""
    return str(dtype).removeprefix("torch.")


def resolve(device=None, dtype=None):
    """(torch.device, torch.dtype), both checked: what every command does before loading weights."""
    return resolve_device(device), resolve_dtype(dtype)
