"""The three recurrences and their dataset files (chapter 30_synthetic_tasks).

Each task maps an input list x (n integers) to the whole chain of intermediate states y (n
integers): the target is the "chain of thought". Files hold one sample per line,
``x_0 ... x_{n-1} # y_0 ... y_{n-1}``. The random-draw order reproduces the original generators
byte for byte: ReLU and Square draw with ``numpy.random.default_rng(seed)``, one
``integers(value_min, value_max + 1, size=n)`` call per sample; Index draws with
``random.Random(seed)``, one ``randint(1, n - 1)`` per element. Every sequence length restarts the
generator from its seed.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserInputError

TASKS = ("relu", "square", "index")
# The original generators' seeds: (train, test).
DEFAULT_SEEDS = {"relu": (42, 123), "square": (42, 43), "index": (42, 43)}
DEFAULT_VALUE_RANGE = (-9, 9)
DEFAULT_MODULUS = 19
DEFAULT_TRAIN_SAMPLES = 100_000
DEFAULT_TEST_SAMPLES = 1_000


# -- the recurrences --------------------------------------------------------------------------------
def relu_forward(x: Sequence[int]) -> list[int]:
    """Running sum clipped at zero: y_0 = max(0, x_0); y_i = max(0, y_{i-1} + x_i)."""
    y: list[int] = []
    acc = 0
    for value in x:
        acc = max(0, acc + int(value))
        y.append(acc)
    return y


def square_forward(x: Sequence[int], modulus: int = DEFAULT_MODULUS) -> list[int]:
    """y_0 = x_0 (copied, not reduced); y_i = ((x_i^2 + y_{i-1}^2) mod p) - floor(p/2).

    Python's ``%`` is already non-negative for a positive modulus, so for p = 19 each y_i (i >= 1)
    lies in [-9, 9].
    """
    if not x:
        return []
    y = [int(x[0])]
    half = modulus // 2
    for value in x[1:]:
        y.append(((int(value) ** 2 + y[-1] ** 2) % modulus) - half)
    return y


def index_forward(x: Sequence[int], m: int) -> list[int]:
    """Self-referential pointer chase; n = len(x) is also the pointer modulus.

    y_0 = x[x_0 mod n]; y_i = x[(sum_{j=max(0, i-m)}^{i-1} y_j) mod n].
    """
    n = len(x)
    y: list[int] = []
    for i in range(n):
        pointer = int(x[0]) % n if i == 0 else sum(y[max(0, i - m) : i]) % n
        y.append(int(x[pointer]))
    return y


# -- options ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TaskSpec:
    """Everything that determines one task's samples (except the sample count and seed)."""

    task: str
    n: int
    m: int | None = None
    modulus: int = DEFAULT_MODULUS
    value_min: int = DEFAULT_VALUE_RANGE[0]
    value_max: int = DEFAULT_VALUE_RANGE[1]

    def __post_init__(self) -> None:
        validate_spec(self)

    def forward(self, x: Sequence[int]) -> list[int]:
        if self.task == "relu":
            return relu_forward(x)
        if self.task == "square":
            return square_forward(x, self.modulus)
        return index_forward(x, self.m)

    @property
    def dirname(self) -> str:
        """Folder of this task under an output root, e.g. ``relu/n=10`` or ``index/n=13_m=2``."""
        name = f"n={self.n}"
        if self.task == "index":
            name += f"_m={self.m}"
        else:
            if (self.value_min, self.value_max) != DEFAULT_VALUE_RANGE:
                name += f"_v={self.value_min}..{self.value_max}"
            if self.task == "square" and self.modulus != DEFAULT_MODULUS:
                name += f"_p={self.modulus}"
        return f"{self.task}/{name}"


def validate_spec(spec: TaskSpec) -> None:
    """Raise UserInputError naming the bad option and what is accepted."""
    if spec.task not in TASKS:
        raise UserInputError(f"unknown task {spec.task!r}: choose one of {', '.join(TASKS)}")
    if not isinstance(spec.n, int) or isinstance(spec.n, bool) or spec.n < 1:
        raise UserInputError(f"sequence length {spec.n!r} must be a positive integer")
    for name in ("m", "modulus", "value_min", "value_max"):
        value = getattr(spec, name)
        if (value is not None or name != "m") and (not isinstance(value, int) or isinstance(value, bool)):
            raise UserInputError(f"--{name.replace('_', '-')} {value!r} must be an integer")
    if spec.task == "index":
        if spec.m is None:
            raise UserInputError(
                "the index task needs --m (how many previous outputs are summed), e.g. --m 2"
            )
        if not isinstance(spec.m, int) or spec.m < 1:
            raise UserInputError(f"--m {spec.m!r} must be a positive integer")
        if spec.n < 2:
            raise UserInputError(
                f"the index task needs sequence length >= 2 (inputs lie in [1, n-1]); got {spec.n}"
            )
        if spec.m > spec.n - 1:
            raise UserInputError(
                f"--m {spec.m} is larger than n - 1 = {spec.n - 1} for sequence length {spec.n}: each "
                f"output sums at most the n - 1 previous ones; give 1 <= m <= {spec.n - 1}"
            )
    else:
        if spec.m is not None:
            raise UserInputError(f"--m applies only to the index task, not {spec.task}")
        if spec.value_min > spec.value_max:
            raise UserInputError(
                f"--value-min {spec.value_min} is greater than --value-max {spec.value_max}: "
                "give value-min <= value-max"
            )
    if spec.task == "square" and (not isinstance(spec.modulus, int) or spec.modulus < 1):
        raise UserInputError(f"--modulus {spec.modulus!r} must be a positive integer")
    _check_vocabulary(spec)


def value_bounds(spec: TaskSpec) -> tuple[int, int]:
    """The smallest and largest integer a task's lines can hold (inputs and outputs)."""
    if spec.task == "index":
        return 1, spec.n - 1
    lo, hi = spec.value_min, spec.value_max
    if spec.task == "relu":  # outputs: running sums clipped at 0, at most n * value_max
        return min(lo, 0), max(hi, spec.n * max(hi, 0))
    half = spec.modulus // 2  # square: y_i in [-floor(p/2), p - 1 - floor(p/2)]
    return min(lo, -half), max(hi, spec.modulus - 1 - half)


def _check_vocabulary(spec: TaskSpec) -> None:
    """Every integer of the task's lines must be a token of the shared task vocabulary."""
    from .vocab import INT_MAX, INT_MIN

    lo, hi = value_bounds(spec)
    if lo >= INT_MIN and hi <= INT_MAX:
        return
    if spec.task == "index":
        raise UserInputError(
            f"sequence length {spec.n} gives index inputs up to {hi}, outside the task vocabulary "
            f"[{INT_MIN}, {INT_MAX}]: use n <= {INT_MAX + 1}"
        )
    what = "values" if spec.value_min < INT_MIN or spec.value_max > INT_MAX else "outputs"
    raise UserInputError(
        f"--value-min {spec.value_min} --value-max {spec.value_max} with n = {spec.n}"
        + (f", modulus {spec.modulus}" if spec.task == "square" else "")
        + f" give {what} in [{lo}, {hi}], outside the task vocabulary [{INT_MIN}, {INT_MAX}]: "
        "use a smaller value range or sequence length"
    )


def parse_permutation(text: str | Sequence[int], n: int) -> tuple[int, ...]:
    """A permutation of 0..n-1 from ``"p0,p1,..."`` (or a sequence); UserInputError when invalid."""
    if isinstance(text, str):
        try:
            perm = tuple(int(p) for p in text.replace(" ", "").split(",") if p != "")
        except ValueError:
            raise UserInputError(
                f"--permutation {text!r} is not a comma-separated list of integers such as 2,0,1"
            ) from None
    else:
        perm = tuple(int(p) for p in text)
    if len(perm) != n:
        raise UserInputError(
            f"--permutation has {len(perm)} entries but the sequence length is {n}: "
            f"give each index 0..{n - 1} exactly once"
        )
    repeated = sorted({p for p in perm if perm.count(p) > 1})
    if repeated:
        raise UserInputError(
            f"--permutation repeats index {repeated[0]}: give each index 0..{n - 1} exactly once"
        )
    bad = [p for p in perm if not 0 <= p < n]
    if bad:
        raise UserInputError(f"--permutation index {bad[0]} is outside 0..{n - 1}")
    return perm


# -- sampling ---------------------------------------------------------------------------------------
def draw_inputs(spec: TaskSpec, num_samples: int, seed: int) -> Iterator[list[int]]:
    """The input lists in the original generators' draw order (a fresh generator per call)."""
    if spec.task == "index":
        rng = random.Random(seed)
        for _ in range(num_samples):
            yield [rng.randint(1, spec.n - 1) for _ in range(spec.n)]
    else:
        import numpy as np

        rng = np.random.default_rng(seed)
        for _ in range(num_samples):
            yield rng.integers(spec.value_min, spec.value_max + 1, size=spec.n).tolist()


def samples(
    spec: TaskSpec,
    num_samples: int,
    seed: int,
    order: str = "forward",
    permutation: Sequence[int] | None = None,
) -> Iterator[tuple[list[int], list[int]]]:
    """(x, target) pairs; ``order`` is forward, inverse (reversed chain) or permutation."""
    for x in draw_inputs(spec, num_samples, seed):
        y = spec.forward(x)
        if order == "inverse":
            y = y[::-1]
        elif order == "permutation":
            y = [y[p] for p in permutation]
        elif order != "forward":
            raise UserInputError(f"order {order!r} must be forward, inverse or permutation")
        yield x, y


def format_line(x: Sequence[int], y: Sequence[int]) -> str:
    """``x_0 ... x_{n-1} # y_0 ... y_{n-1}`` plus a newline (the original files' format)."""
    return " ".join(map(str, x)) + " # " + " ".join(map(str, y)) + "\n"


def parse_line(line: str) -> tuple[list[int], list[int]]:
    """Inverse of :func:`format_line`."""
    left, sep, right = line.strip().partition(" # ")
    if not sep:
        raise ValueError(f"line {line.strip()!r} has no ' # ' separator")
    return [int(v) for v in left.split()], [int(v) for v in right.split()]


def file_names(order: str, permutation: Sequence[int] | None = None) -> tuple[str, str]:
    """(train, test) file names: data.*, data-inv.* or data-perm-<p0_p1_...>.*"""
    if order == "forward":
        stem = "data"
    elif order == "inverse":
        stem = "data-inv"
    else:
        stem = "data-perm-" + "_".join(map(str, permutation))
    return f"{stem}.train", f"{stem}.test"


def write_samples(path: Path, lines: Iterator[str], total: int, progress: bool) -> Path:
    """Write lines through a temporary file and rename (never a half-written data file)."""
    import os
    import tempfile

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", newline="\n") as fh:
            if progress and total >= 20_000:
                from ..progress import progress_bar

                lines = progress_bar(lines, total=total, desc=str(path), unit="samples", leave=False)
            fh.writelines(lines)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def task_targets(
    spec: TaskSpec,
    output_root: str | Path,
    inverse: bool = True,
    permutation: Sequence[int] | None = None,
) -> list[tuple[str, str, Path]]:
    """(order, split, path) of every file :func:`generate_task` writes for these options."""
    if permutation is not None:
        permutation = parse_permutation(permutation, spec.n)
        orders = ["permutation"]
    else:
        orders = ["forward", "inverse"] if inverse else ["forward"]
    folder = Path(output_root) / spec.dirname
    return [
        (order, split, folder / name)
        for order in orders
        for split, name in zip(("train", "test"), file_names(order, permutation), strict=True)
    ]


def check_targets(paths: Sequence[Path], overwrite: bool = False, what: str = "--output-root") -> None:
    """Refuse (UserInputError) before anything is written: an existing file unless ``overwrite``, a
    directory where a file goes, a folder that cannot be created or written."""
    from ..iochecks import check_output_root

    for path in paths:
        if path.is_dir():
            raise UserInputError(
                f"{path} is a directory where a data file goes: remove it or choose another {what}"
            )
        if path.exists() and not overwrite:
            raise UserInputError(f"{path} already exists: choose another {what} or pass --overwrite")
    for folder in dict.fromkeys(Path(p).parent for p in paths):
        check_output_root(folder, what)


def generate_task(
    spec: TaskSpec,
    output_root: str | Path,
    train_samples: int = DEFAULT_TRAIN_SAMPLES,
    test_samples: int = DEFAULT_TEST_SAMPLES,
    train_seed: int | None = None,
    test_seed: int | None = None,
    inverse: bool = True,
    permutation: Sequence[int] | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> list[Path]:
    """Write one task's files under ``output_root/<task>/n=<n>[...]/``; returns the paths written.

    Forward files are ``data.train``/``data.test``; inverse ``data-inv.*`` (unless ``inverse`` is
    False). With a ``permutation`` only ``data-perm-<p>.*`` are written (the original overwrote the
    forward files with them). Existing files are refused unless ``overwrite`` (same options, same
    bytes: regenerating is safe, but a different seed would silently replace data).
    """
    for name, count in (("--train-samples", train_samples), ("--test-samples", test_samples)):
        if not isinstance(count, int) or isinstance(count, bool) or count < 1:
            raise UserInputError(f"{name} {count!r} must be a positive integer")
    default_train, default_test = DEFAULT_SEEDS[spec.task]
    seeds = {
        "train": default_train if train_seed is None else train_seed,
        "test": default_test if test_seed is None else test_seed,
    }
    counts = {"train": train_samples, "test": test_samples}
    if permutation is not None:
        permutation = parse_permutation(permutation, spec.n)
    targets = task_targets(spec, output_root, inverse, permutation)
    check_targets([path for _, _, path in targets], overwrite)
    written = []
    for order, split, path in targets:
        lines = (format_line(x, y) for x, y in samples(spec, counts[split], seeds[split], order, permutation))
        written.append(write_samples(path, lines, counts[split], progress))
    return written


def read_task_file(
    path: str | Path, max_examples: int | None = None, one_length: bool = False
) -> tuple[list[list[int]], list[list[int]]]:
    """(inputs, targets) of a task file, the first ``max_examples`` lines when given.

    Every line must hold n inputs and n outputs (``x_0 ... x_{n-1} # y_0 ... y_{n-1}``): a line of
    another shape would be scored as a different task. ``one_length``: the same n on every line
    (exact match and per-position accuracy need it; head ablation pads mixed lengths).
    """
    from ..iochecks import check_input_file

    hint = "create it with `qwen-anatomy tasks generate`"
    path = check_input_file(path, "data file", hint)
    xs, ys = [], []
    try:
        with path.open(encoding="utf-8") as fh:
            for number, line in enumerate(fh, 1):
                if max_examples is not None and len(xs) >= max_examples:
                    break
                if not line.strip():
                    continue
                try:
                    x, y = parse_line(line)
                except ValueError as err:
                    raise UserInputError(
                        f"{path}:{number}: {err} (a task line reads 'x1 ... xn # y1 ... yn')"
                    ) from None
                if not x or len(x) != len(y):
                    raise UserInputError(
                        f"{path}:{number}: {len(x)} inputs but {len(y)} outputs; a task line holds n "
                        "inputs and n outputs ('x1 ... xn # y1 ... yn', n >= 1)"
                    )
                if one_length and xs and len(x) != len(xs[0]):
                    raise UserInputError(
                        f"{path}:{number}: sequence length {len(x)}, but the first line has "
                        f"{len(xs[0])}; one task file holds one sequence length"
                    )
                xs.append(x)
                ys.append(y)
    except UnicodeDecodeError:
        raise UserInputError(f"data file {path} is not UTF-8 text: {hint}") from None
    if not xs:
        raise UserInputError(f"data file {path} holds no samples: {hint}")
    return xs, ys
