"""Notebooks and their parameters: reading a notebook's `parameters` cell, checking values, planning
the runs of a grid (chapter 90_experiments)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..paths import REPO_ROOT

NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
RUN_FILE = "run.json"
METRICS_FILE = "metrics.json"
_MISSING = object()


def _user_error(message: str):
    from ..errors import UserInputError

    return UserInputError(message)


def resolve_notebook(spec: str | os.PathLike) -> Path:
    """The notebook a user means: a path (.py in jupytext percent format, or .ipynb), or a stem found
    in ``notebooks/`` (``01_language_models``, ``01_language_models.py``, or a unique prefix ``01``)."""
    text = str(spec)
    path = Path(text).expanduser()
    if path.is_dir():
        raise _user_error(f"notebook {text!r} is a directory: give a .py (jupytext) or .ipynb notebook")
    if path.is_file():
        if path.suffix not in (".py", ".ipynb"):
            raise _user_error(f"notebook {text!r} is neither a jupytext .py nor an .ipynb file")
        return path.resolve()
    stem = Path(text).name
    for suffix in (".py", ".ipynb"):
        stem = stem.removesuffix(suffix)
    candidates = sorted(NOTEBOOKS_DIR.glob("*.py"))
    exact = [p for p in candidates if p.stem == stem]
    if exact:
        return exact[0].resolve()
    prefixed = [p for p in candidates if p.stem.startswith(stem)]
    if len(prefixed) == 1:
        return prefixed[0].resolve()
    known = ", ".join(p.stem for p in candidates) or "none"
    if prefixed:
        raise _user_error(f"notebook {text!r} is ambiguous: matches {', '.join(p.stem for p in prefixed)}")
    raise _user_error(f"notebook {text!r} not found: give a path or one of the stems in notebooks/ ({known})")


def _read_notebook(path: Path):
    import jupytext

    try:
        return jupytext.read(path)
    except Exception as err:  # noqa: BLE001 - any parse failure is the user's file
        raise _user_error(f"notebook {path} cannot be read as a notebook: {err}") from None


def notebook_parameters(path: str | os.PathLike) -> dict[str, Any]:
    """Accepted parameter names and their defaults, from the cell tagged ``parameters``.

    The cell is parsed with :mod:`ast`, never executed: each ``name = <literal>`` gives a name and a
    default whose type the runner enforces; a default that is not a literal (``name = some_call()``)
    accepts any value (its default is reported as ``None``).
    """
    import ast

    path = Path(path)
    nb = _read_notebook(path)
    cells = [c for c in nb.cells if c.cell_type == "code" and "parameters" in c.metadata.get("tags", [])]
    if len(cells) != 1:
        raise _user_error(
            f"notebook {path.name} must have exactly one code cell tagged 'parameters' (found {len(cells)})"
        )
    try:
        tree = ast.parse(cells[0].source)
    except SyntaxError as err:
        raise _user_error(f"the parameters cell of {path.name} is not valid Python: {err}") from None
    params: dict[str, Any] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, value = [node.target], node.value
        else:
            continue
        try:
            default = ast.literal_eval(value)
        except ValueError:
            default = None
        for target in targets:
            if isinstance(target, ast.Name):
                params[target.id] = default
    return params


def _type_name(default: Any) -> str:
    if isinstance(default, bool):
        return "a boolean (true/false)"
    if isinstance(default, int):
        return "an integer"
    if isinstance(default, float):
        return "a number"
    if isinstance(default, str):
        return "a string"
    if isinstance(default, list | tuple):
        return "a list"
    if isinstance(default, dict):
        return "a mapping"
    return "any value"


def check_parameter(notebook: str, name: str, value: Any, defaults: dict[str, Any]) -> Any:
    """Return ``value`` checked against the notebook's default for ``name`` (an int is accepted, and
    converted, where a float is expected); raise UserInputError for an unknown name or a wrong type."""
    if name not in defaults:
        known = ", ".join(defaults) or "none"
        raise _user_error(f"{notebook} has no parameter {name!r}; its parameters cell defines: {known}")
    default = defaults[name]
    ok = True
    if default is None:
        ok = True
    elif isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if ok:
            value = float(value)
    elif isinstance(default, str):
        ok = isinstance(value, str)
    elif isinstance(default, list | tuple):
        ok = isinstance(value, list | tuple)
        if ok:
            value = list(value)
    elif isinstance(default, dict):
        ok = isinstance(value, dict)
    if not ok:
        raise _user_error(
            f"parameter {name}={value!r} has the wrong type: {notebook} expects {_type_name(default)} "
            f"(default {default!r})"
        )
    try:
        json.dumps(value, allow_nan=True)
    except TypeError:
        raise _user_error(f"parameter {name}={value!r} cannot be stored as JSON") from None
    return value


def parse_cli_value(text: str, default: Any) -> Any:
    """Type a ``-p NAME VALUE`` string after the parameter's default: a string parameter takes the
    text as is; numbers accept ``1e-3``; anything else is read as YAML (``true``, ``[1, 2]``)."""
    import yaml

    if isinstance(default, str):
        return text
    if isinstance(default, int | float) and not isinstance(default, bool):
        for convert in (int, float):
            try:
                return convert(text)
            except ValueError:
                pass
        return text  # refused by check_parameter with the expected type in the message
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _coerce_file_value(value: Any, default: Any) -> Any:
    # YAML 1.1 reads "1e-3" as a string: accept numeric strings where a number is expected.
    if isinstance(value, str) and isinstance(default, int | float) and not isinstance(default, bool):
        for convert in (int, float):
            try:
                return convert(value)
            except ValueError:
                pass
    return value


def _load_yaml_mapping(path: str | os.PathLike, what: str, allow_empty: bool = True) -> dict[str, Any]:
    import yaml

    from ..iochecks import read_text

    path = Path(path)
    text = read_text(path, f"{what} file", "give a YAML mapping of parameter name -> value")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        first = str(err).splitlines()[0] if str(err) else "invalid YAML"
        raise _user_error(f"{what} file {path} is not valid YAML: {first}") from None
    if data is None:
        if not allow_empty:
            raise _user_error(
                f"{what} file {path} is empty: give a mapping of parameter name -> list of values"
            )
        return {}
    if not isinstance(data, dict) or not all(isinstance(k, str) for k in data):
        raise _user_error(f"{what} file {path} must be a mapping of parameter name -> value")
    return data


def parse_shard(text: str) -> tuple[int, int]:
    """``I/N`` (1 <= I <= N): this machine runs combinations I, I+N, I+2N, ... of the grid."""
    try:
        index, count = (int(x) for x in text.split("/"))
    except ValueError:
        raise _user_error(f"--shard {text!r} must look like I/N, e.g. 1/3 (machine 1 of 3)") from None
    if not (count >= 1 and 1 <= index <= count):
        raise _user_error(f"--shard {text!r} needs 1 <= I <= N, e.g. 1/3, 2/3, 3/3")
    return index, count


def plan_runs(
    notebook: str | os.PathLike,
    parameters: dict[str, Any] | None = None,
    cli_parameters: list[tuple[str, str]] | None = None,
    params_file: str | os.PathLike | None = None,
    grid: dict[str, Any] | str | os.PathLike | None = None,
    shard: str | tuple[int, int] | None = None,
) -> tuple[Path, list[dict[str, Any]]]:
    """Validate everything a run needs, before anything executes; return the notebook and the list of
    parameter overrides, one per run (a grid expands to every combination, in file order, the last
    name varying fastest; a shard keeps every N-th). Raises UserInputError on any bad input."""
    import itertools

    path = resolve_notebook(notebook)
    stem = path.stem
    defaults = notebook_parameters(path)
    fixed: dict[str, Any] = {}
    if params_file is not None:
        for name, value in _load_yaml_mapping(params_file, "parameters").items():
            fixed[name] = check_parameter(stem, name, _coerce_file_value(value, defaults.get(name)), defaults)
    for name, value in (parameters or {}).items():
        fixed[name] = check_parameter(stem, name, value, defaults)
    for name, text in cli_parameters or []:
        if name not in defaults:
            check_parameter(stem, name, text, defaults)  # raises: unknown name
        fixed[name] = check_parameter(stem, name, parse_cli_value(text, defaults[name]), defaults)

    axes: dict[str, list[Any]] = {}
    if grid is not None:
        grid_map = grid if isinstance(grid, dict) else _load_yaml_mapping(grid, "grid", allow_empty=False)
        for name, values in grid_map.items():
            if name in fixed:
                raise _user_error(f"parameter {name!r} is given both as a fixed value and in the grid")
            values = values if isinstance(values, list) else [values]
            if not values:
                raise _user_error(f"grid entry {name!r} is an empty list: give at least one value")
            axes[name] = [
                check_parameter(stem, name, _coerce_file_value(v, defaults.get(name)), defaults)
                for v in values
            ]
    runs = [{**fixed, **dict(zip(axes, combo, strict=True))} for combo in itertools.product(*axes.values())]
    if shard is not None:
        index, count = parse_shard(shard) if isinstance(shard, str) else shard
        runs = runs[index - 1 :: count]
    return path, runs


def parameter_hash(parameters: dict[str, Any]) -> str:
    """Short hash of a run's effective parameters (the suffix of its directory name)."""
    import hashlib

    text = json.dumps(parameters, sort_keys=True, default=str, allow_nan=True)
    return hashlib.sha256(text.encode()).hexdigest()[:8]
