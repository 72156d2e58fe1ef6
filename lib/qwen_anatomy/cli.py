"""The ``qwen-anatomy`` command line.

Each strand of the book registers its sub-commands from a module in ``qwen_anatomy.commands``
(a ``register(subparsers)`` function). Those modules import nothing heavy at import time, so that
``qwen-anatomy --help`` and header-only commands answer in well under a second.

Errors a user can fix (:class:`qwen_anatomy.errors.UserInputError`, bad flags) print one line,
``qwen-anatomy <command>: error: <what and the fix>``, and exit with code 2, without a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .errors import UserInputError

COMMAND_MODULES = [
    "qwen_anatomy.commands.model",  # info, generate, verify (Part I)
    "qwen_anatomy.commands.experiments",  # run, results, book (Part VI: experiments)
    "qwen_anatomy.commands.heads",  # heads (Part IV: importance against plasticity)
    "qwen_anatomy.commands.tasks",  # tasks generate/train/evaluate/sweep, train, evaluate (Part III)
    "qwen_anatomy.commands.weights",  # params, embeddings, download (Part II)
    "qwen_anatomy.commands.causal",  # causal train/eval/generate/suite/pretrain (Part V)
    "qwen_anatomy.commands.book_check",  # browser-check (the built book, offline in Chromium)
]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2 (argparse prints usage + message by default)
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="qwen-anatomy", description="Qwen2 Anatomy: analyse Qwen2-family models.")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def _version() -> str:
    from . import __version__

    return f"qwen-anatomy {__version__}"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code = args.func(args)
    except UserInputError as err:
        sys.stderr.write(f"qwen-anatomy {args.command}: error: {err}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write(f"qwen-anatomy {args.command}: interrupted\n")
        return 130
    return int(code or 0)


def positive_int(text: str) -> int:
    """argparse type: an integer > 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{value} must be a positive integer")
    return value


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} must be >= 0")
    return value


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (value >= 0) or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{value} must be a finite number >= 0")
    return value


def seed(text: str) -> int:
    """argparse type: a random seed every consumer accepts (torch, numpy, scikit-learn): 0..2**32-1."""
    from .validate import SEED_MAX

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if not 0 <= value <= SEED_MAX:
        raise argparse.ArgumentTypeError(f"{value} is out of range; a seed is an integer in 0..{SEED_MAX}")
    return value


def temperature(text: str) -> float:
    """argparse type: 0 (greedy) or a sampling temperature in validate.TEMPERATURE_RANGE."""
    from .validate import TEMPERATURE_RANGE

    low, high = TEMPERATURE_RANGE
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (value == 0 or low <= value <= high):
        raise argparse.ArgumentTypeError(
            f"{text} is out of range; give 0 (greedy) or a temperature in [{low:g}, {high:g}]"
        )
    return value


def probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (0.0 < value <= 1.0):
        raise argparse.ArgumentTypeError(f"{value} must lie in (0, 1]")
    return value


if __name__ == "__main__":
    raise SystemExit(main())
