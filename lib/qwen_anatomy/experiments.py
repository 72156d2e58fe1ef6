"""Reproducible experiments: run notebooks as parameterised experiments (chapter 90_experiments).

Notebooks call :func:`save_metrics` to record their headline numbers. Inside a run started by
``qwen-anatomy run`` (which sets ``QWEN_ANATOMY_RUN_DIR`` for the kernel process) the metrics go to
that run's directory; interactively they go to ``<repo>/scratch/metrics/`` (git-ignored), and one
line says where.

This module's import stays light (json, os, pathlib): notebooks import it first thing.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from pathlib import Path
from typing import Any

from .paths import REPO_ROOT

RUN_DIR_ENV = "QWEN_ANATOMY_RUN_DIR"


def _jsonable(obj: Any):
    if hasattr(obj, "item") and callable(obj.item):  # numpy / torch scalars
        try:
            return obj.item()
        except (TypeError, ValueError):
            pass
    if hasattr(obj, "tolist") and callable(obj.tolist):  # numpy arrays, torch tensors
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, set | tuple):
        return list(obj)
    raise TypeError(
        f"save_metrics: cannot store a {type(obj).__name__} as JSON; pass numbers, strings or lists"
    )


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def save_metrics(metrics: dict[str, Any], name: str = "metrics") -> Path:
    """Save a notebook's metrics as JSON and return the file written (chapter 90_experiments).

    Inside ``qwen-anatomy run``: ``<run dir>/<name>.json`` (several calls with the same name merge,
    later keys winning, so a notebook may save metrics as it goes). Interactively:
    ``<repo>/scratch/metrics/<UTC time>-<name>.json``, reported on one printed line.
    """
    if not isinstance(metrics, dict):
        raise TypeError(f"save_metrics expects a dict of name -> value, got {type(metrics).__name__}")
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"save_metrics: name {name!r} must be a plain file stem such as 'metrics'")
    run_dir = os.environ.get(RUN_DIR_ENV)
    if run_dir:
        path = Path(run_dir) / f"{name}.json"
        merged: dict[str, Any] = {}
        if path.exists():
            merged = json.loads(path.read_text())
        merged.update(metrics)
        _atomic_write(path, json.dumps(merged, indent=2, default=_jsonable, allow_nan=True) + "\n")
        return path
    stamp = _dt.datetime.now(_dt.UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    path = REPO_ROOT / "scratch" / "metrics" / f"{stamp}-{name}.json"
    _atomic_write(path, json.dumps(metrics, indent=2, default=_jsonable, allow_nan=True) + "\n")
    print(f"save_metrics: not inside `qwen-anatomy run`; metrics written to {path}")
    return path


# --------------------------------------------------------------------------------------------
# Notebooks and their parameters
# --------------------------------------------------------------------------------------------

NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
RUN_FILE = "run.json"
METRICS_FILE = "metrics.json"
_MISSING = object()


def _user_error(message: str):
    from .errors import UserInputError

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

    from .iochecks import read_text

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


def _new_run_dir(out: Path, stem: str, parameters: dict[str, Any]) -> Path:
    """Create (atomically, never reusing) ``out/<stem>/<UTC time>-<hash>[-k]``."""
    import datetime as dt

    base = out / stem
    base.mkdir(parents=True, exist_ok=True)
    name = f"{dt.datetime.now(dt.UTC).strftime('%Y%m%dT%H%M%SZ')}-{parameter_hash(parameters)}"
    for k in range(1000):
        candidate = base / (name if k == 0 else f"{name}-{k}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
    raise RuntimeError(f"could not create a fresh run directory under {base}")


# --------------------------------------------------------------------------------------------
# Executing runs
# --------------------------------------------------------------------------------------------


def _pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _execute_in_worker(spec: dict[str, Any]) -> int:
    """Worker process body: execute one notebook into its run directory and keep run.json current.

    papermill runs in a helper thread so that this (main) thread owns SIGINT/SIGTERM: on either
    signal the record is marked "incomplete" and the process exits; the kernel notices its parent
    is gone and stops by itself (ipykernel polls JPY_PARENT_PID).
    """
    import hashlib
    import resource
    import signal
    import threading
    import time

    from .runrecord import RunRecord, environment, utc_now

    run_dir = Path(spec["run_dir"])
    source = Path(spec["notebook_path"])
    stem = source.stem
    env = environment()
    record = RunRecord(
        run_dir / RUN_FILE,
        command=spec["command"],
        parameters=spec["parameters"],
        seed=spec["parameters"].get("seed"),
    )
    record.data.update(
        {
            "run_id": run_dir.name,
            "notebook": stem,
            "notebook_path": _display_path(source),
            "notebook_sha256": hashlib.sha256(source.read_bytes()).hexdigest(),
            "overrides": spec["overrides"],
            "defaults": spec["defaults"],
            "versions": {
                "python": env["python"],
                "torch": env["packages"].get("torch"),
                "transformers": env["packages"].get("transformers"),
            },
            "hostname": env["machine"]["hostname"],
            "executed_notebook": f"{stem}.ipynb",
            "metrics": {},
            "grid": spec.get("grid"),
        }
    )
    record.save()

    def finish(status: str, error: str | None = None) -> None:
        record.data["status"] = status
        record.data["end_time"] = utc_now()
        record.data["wall_seconds"] = round(time.perf_counter() - t0, 3)
        record.data["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        # the kernel is a child of this process: its peak memory shows once it has been reaped
        record.data["kernel_peak_rss_mb"] = round(
            resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1
        )
        metrics = {}
        for f in sorted(run_dir.glob("*.json")):
            if f.name != RUN_FILE:
                try:
                    metrics[f.stem] = json.loads(f.read_text())
                except (OSError, ValueError):
                    metrics[f.stem] = None
        record.data["metrics_files"] = [f"{k}.json" for k in metrics]
        record.data["metrics"] = metrics.get("metrics", {})
        if error:
            record.data["error"] = error
        record.save()

    t0 = time.perf_counter()

    finishing = threading.Event()

    def on_signal(signum, frame):
        if not finishing.is_set():  # a signal during the final write must not relabel the run
            finishing.set()
            finish("incomplete", f"interrupted by {signal.Signals(signum).name}")
        os._exit(130)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    outcome: dict[str, Any] = {}

    def execute() -> None:
        try:
            import jupytext
            import papermill

            nb = jupytext.read(source)
            nb.metadata.setdefault(
                "kernelspec", {"name": "python3", "display_name": "Python 3", "language": "python"}
            )
            staged = run_dir / f".{stem}.input.ipynb"
            jupytext.write(nb, staged, fmt="ipynb")
            try:
                papermill.execute_notebook(
                    str(staged),
                    str(run_dir / f"{stem}.ipynb"),
                    parameters=spec["overrides"],
                    kernel_name="python3",
                    cwd=str(source.parent),
                    progress_bar=False,
                    log_output=False,
                    execution_timeout=spec.get("timeout"),
                )
            finally:
                staged.unlink(missing_ok=True)
            outcome["status"] = "success"
        except BaseException as err:  # noqa: BLE001 - every failure is recorded, not raised
            outcome["status"] = "failed"
            outcome["error"] = _one_line_error(err)

    os.environ[RUN_DIR_ENV] = str(run_dir)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    worker = threading.Thread(target=execute, name="papermill", daemon=True)
    worker.start()
    while worker.is_alive():
        worker.join(0.2)
    finishing.set()
    finish(outcome.get("status", "failed"), outcome.get("error"))
    return 0 if outcome.get("status") == "success" else 1


def _one_line_error(err: BaseException) -> str:
    name = type(err).__name__
    if name == "PapermillExecutionError":  # the failing cell's exception, not papermill's banner
        return f"cell {getattr(err, 'exec_count', '?')}: {err.ename}: {err.evalue}"
    text = str(err).strip().splitlines()
    return f"{name}: {text[0] if text else ''}".strip()


def _display_path(path: Path) -> str:
    try:
        return path.resolve().relative_to(REPO_ROOT).as_posix()
    except ValueError:
        return str(path)


def run_experiments(
    notebook: str | os.PathLike,
    parameters: dict[str, Any] | None = None,
    *,
    cli_parameters: list[tuple[str, str]] | None = None,
    params_file: str | os.PathLike | None = None,
    grid: dict[str, Any] | str | os.PathLike | None = None,
    out: str | os.PathLike = "results",
    jobs: int = 1,
    shard: str | tuple[int, int] | None = None,
    timeout: float | None = None,
    dry_run: bool = False,
    command: str | None = None,
    log=print,
) -> list[dict[str, Any]]:
    """Run a notebook once per parameter combination, ``jobs`` at a time (chapter 90_experiments).

    Each run gets a fresh directory ``out/<notebook>/<UTC time>-<hash>/`` with the executed
    notebook, the metrics it saved and ``run.json``; a failed run is recorded and the others go on.
    Returns one dict per run: ``run_dir``, ``status`` (success, failed, incomplete, or not started
    after an interrupt), ``overrides``. All inputs are validated before any run starts.
    """
    import signal
    import subprocess
    import sys
    import time

    if jobs < 1:
        raise _user_error(f"jobs={jobs} must be a positive integer")
    path, runs = plan_runs(notebook, parameters, cli_parameters, params_file, grid, shard)
    defaults = notebook_parameters(path)
    from .iochecks import check_output_root

    check_output_root(Path(out).expanduser(), "--out")  # writable, not a file: before any run starts
    out = Path(out).expanduser().resolve()
    stem = path.stem
    if not runs:
        log(f"no runs: the shard {shard} of this grid is empty")
        return []
    if dry_run:
        for i, overrides in enumerate(runs, 1):
            log(f"[{i}/{len(runs)}] would run {stem} with {_describe(overrides)}")
        return [{"run_dir": None, "status": "planned", "overrides": o} for o in runs]

    if command is None:
        command = f"run_experiments({str(notebook)!r}, ...)"
    env = dict(os.environ)
    env.setdefault("HF_HUB_OFFLINE", "1")
    if jobs > 1:  # several kernels share the cores: one BLAS pool each unless the user chose
        per_job = str(max(1, (os.cpu_count() or 1) // jobs))
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env.setdefault(var, per_job)
    # the worker must import this package even when it is not installed (tests, a bare checkout)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT / "lib"), env.get("PYTHONPATH")]))

    results = [{"run_dir": None, "status": "not started", "overrides": o} for o in runs]
    pending = list(range(len(runs)))
    running: dict[int, tuple[subprocess.Popen, Any]] = {}
    stop = {"signal": None}

    def on_signal(signum, frame):
        stop["signal"] = signum

    previous = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            previous[sig] = signal.signal(sig, on_signal)
        except ValueError:  # not the main thread: no interrupt handling
            pass
    done = 0
    try:
        while running or (pending and stop["signal"] is None):
            while pending and len(running) < jobs and stop["signal"] is None:
                i = pending.pop(0)
                overrides = runs[i]
                effective = {**defaults, **overrides}
                run_dir = _new_run_dir(out, stem, effective)
                spec = {
                    "run_dir": str(run_dir),
                    "notebook_path": str(path),
                    "overrides": overrides,
                    "defaults": defaults,
                    "parameters": effective,
                    "command": command,
                    "timeout": timeout,
                    "grid": {"index": i + 1, "total": len(runs), "shard": _shard_text(shard)},
                }
                logfile = open(run_dir / "runner.log", "w")  # noqa: SIM115 - closed when the run ends
                proc = subprocess.Popen(
                    [sys.executable, "-m", "qwen_anatomy.experiments", json.dumps(spec)],
                    stdout=logfile,
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,  # a terminal Ctrl-C reaches the runner, which stops workers
                )
                running[i] = (proc, logfile)
                results[i]["run_dir"] = str(run_dir)
                results[i]["status"] = "running"
            if stop["signal"] is not None:
                stop_time = stop.setdefault("time", time.monotonic())
                # workers record "incomplete" on SIGTERM; one that hangs is killed after 30 s
                # (its record, still "running" with a dead pid, then reads as incomplete too)
                hard = time.monotonic() - stop_time > 30
                for proc, _ in running.values():
                    if proc.poll() is None:
                        proc.send_signal(signal.SIGKILL if hard else signal.SIGTERM)
            for i in list(running):
                proc, logfile = running[i]
                if proc.poll() is None:
                    continue
                logfile.close()
                del running[i]
                done += 1
                status = _finalise_record(Path(results[i]["run_dir"]), proc.returncode)
                results[i]["status"] = status
                wall = _read_json(Path(results[i]["run_dir"]) / RUN_FILE).get("wall_seconds")
                log(
                    f"[{done}/{len(runs)}] {status:<10} {_display_path(Path(results[i]['run_dir']))}  "
                    f"{_describe(runs[i])}" + (f"  ({wall:.1f} s)" if wall else "")
                )
            time.sleep(0.2)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for proc, logfile in running.values():  # only on an unexpected error: leave no worker behind
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
            logfile.close()
    if stop["signal"] is not None:
        skipped = sum(r["status"] == "not started" for r in results)
        log(f"interrupted: unfinished runs are marked incomplete; {skipped} run(s) not started")
        raise KeyboardInterrupt
    return results


def _shard_text(shard) -> str | None:
    if shard is None:
        return None
    return shard if isinstance(shard, str) else f"{shard[0]}/{shard[1]}"


def _describe(overrides: dict[str, Any]) -> str:
    return " ".join(f"{k}={v!r}" for k, v in overrides.items()) or "(defaults)"


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _finalise_record(run_dir: Path, returncode: int) -> str:
    """The status of a finished worker; repairs the record of a worker that died without writing it."""
    from .runrecord import atomic_write_json, utc_now

    data = _read_json(run_dir / RUN_FILE)
    status = data.get("status")
    if status in ("success", "failed", "incomplete"):
        return status
    # the worker died before writing a final status (killed, or crashed at start-up)
    log_tail = ""
    log = run_dir / "runner.log"
    if log.exists():
        log_tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-5:]).strip()
    status = "incomplete" if returncode < 0 or returncode == 130 else "failed"
    data.update(
        {
            "status": status,
            "end_time": data.get("end_time") or utc_now(),
            "error": f"worker exited with code {returncode}" + (f": {log_tail}" if log_tail else ""),
        }
    )
    data.setdefault("run_id", run_dir.name)
    atomic_write_json(run_dir / RUN_FILE, data)
    return status


# --------------------------------------------------------------------------------------------
# Reading results
# --------------------------------------------------------------------------------------------


def run_status(record: dict[str, Any]) -> str:
    """A record's status as readers should report it: "running" whose process is gone (on this
    machine) is "incomplete"; so is a record with no status at all."""
    import platform

    status = record.get("status") or "incomplete"
    if status == "running":
        same_host = record.get("hostname", (record.get("machine") or {}).get("hostname")) == platform.node()
        if same_host and not _pid_alive(record.get("pid")):
            return "incomplete"
    return status


def iter_runs(out: str | os.PathLike | list = "results", notebook: str | None = None):
    """Yield (run_dir, record) for every run directory under one or more result roots."""
    roots = out if isinstance(out, list | tuple) else [out]
    for root in roots:
        root = Path(root).expanduser()
        if root.exists() and not root.is_dir():
            raise _user_error(
                f"results directory {root} is a file, not a directory: point --out at the folder "
                "holding the runs (results/ by default)"
            )
        if not root.is_dir():
            raise _user_error(
                f"results directory {root} does not exist; run `qwen-anatomy run ...` first "
                "or point --out at the folder holding the runs"
            )
        stem = None
        if notebook is not None:
            stem = Path(str(notebook)).name.removesuffix(".py").removesuffix(".ipynb")
        for run_file in sorted(root.glob(f"{stem or '*'}/*/{RUN_FILE}")):
            yield run_file.parent, _read_record(run_file)


def _read_record(path: Path) -> dict[str, Any]:
    """A run.json for the results table; a damaged one is named (one line), never read as empty."""
    from .iochecks import read_run_record

    return read_run_record(path)


def load_results(
    notebook: str | None = None, out: str | os.PathLike | list = "results", status: str | None = None
):
    """All runs as a pandas DataFrame, one row per run (chapter 90_experiments).

    Columns: ``notebook``, ``run_id``, ``status`` (see :func:`run_status`), ``seed``, ``start_time``,
    ``end_time``, ``wall_seconds``, ``git_commit``, ``git_dirty``, ``hostname``, ``notebook_sha256``
    (which version of the notebook ran), ``path``; then
    ``param.<name>`` for every effective parameter and ``metric.<name>`` for every scalar saved in
    ``metrics.json`` (``metric.<file>.<name>`` for other files saved with ``save_metrics(..., name)``).
    ``out`` may be a list of result roots (e.g. one per machine) to merge.
    """
    import pandas as pd

    rows = []
    for run_dir, record in iter_runs(out, notebook):
        row: dict[str, Any] = {
            "notebook": record.get("notebook", run_dir.parent.name),
            "run_id": run_dir.name,
            "status": run_status(record),
            "seed": record.get("seed"),
            "start_time": record.get("start_time"),
            "end_time": record.get("end_time"),
            "wall_seconds": record.get("wall_seconds"),
            "git_commit": (record.get("git") or {}).get("commit"),
            "git_dirty": (record.get("git") or {}).get("dirty"),
            "hostname": record.get("hostname"),
            "notebook_sha256": record.get("notebook_sha256"),
            "path": str(run_dir),
        }
        for name, value in (record.get("parameters") or {}).items():
            row[f"param.{name}"] = value if _scalar(value) else json.dumps(value)
        for f in sorted(run_dir.glob("*.json")):
            if f.name == RUN_FILE:
                continue
            prefix = "metric." if f.stem == "metrics" else f"metric.{f.stem}."
            data = _read_json(f)
            for name, value in data.items() if isinstance(data, dict) else []:
                if _scalar(value):
                    row[prefix + name] = value
        rows.append(row)
    columns = [
        "notebook",
        "run_id",
        "status",
        "seed",
        "start_time",
        "end_time",
        "wall_seconds",
        "git_commit",
        "git_dirty",
        "hostname",
        "notebook_sha256",
        "path",
    ]
    frame = pd.DataFrame(rows, columns=None if rows else columns)
    if status is not None and len(frame):
        frame = frame[frame["status"] == status].reset_index(drop=True)
    return frame


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, bool | int | float | str)


def results_table(frame, metrics: list[str] | None = None) -> str:
    """Text table of runs: run id, status, the parameters that vary, then numeric metrics."""
    import pandas as pd

    if not len(frame):
        return "(no runs)"
    params = [c for c in frame.columns if c.startswith("param.")]
    varying = [c for c in params if frame[c].astype(str).nunique() > 1]
    metric_cols = [
        c for c in frame.columns if c.startswith("metric.") and pd.api.types.is_numeric_dtype(frame[c])
    ]
    if metrics:
        wanted = [m if m.startswith("metric.") else f"metric.{m}" for m in metrics]
        missing = [m for m in wanted if m not in frame.columns]
        if missing:
            raise _user_error(
                f"no metric named {', '.join(missing)}; saved metrics: "
                f"{', '.join(c[7:] for c in frame.columns if c.startswith('metric.')) or 'none'}"
            )
        metric_cols = wanted
    cols = ["notebook", "run_id", "status", *varying, *metric_cols, "wall_seconds"]
    table = frame[cols].rename(columns=lambda c: c.split(".", 1)[1] if "." in c else c)
    table = table.rename(columns={"wall_seconds": "wall_s"})
    lines = [table.to_string(index=False, float_format=lambda v: f"{v:.4g}", na_rep="-")]
    fixed = [c for c in params if c not in varying]
    if fixed:
        lines.append(
            "same in every run: " + ", ".join(f"{c[6:]}={_plain(frame[c].iloc[0])!r}" for c in fixed)
        )
    counts = frame["status"].value_counts()
    lines.append(f"{len(frame)} run(s): " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Aggregation across seeds
# --------------------------------------------------------------------------------------------


def aggregate(frame, by: str | list[str], metric: str, confidence: float = 0.95, log: bool = False):
    """Mean of ``metric`` over the successful runs of each group, with a Student-t interval.

    ``by`` names parameters (``"ngram_order"`` or ``"param.ngram_order"``), ``metric`` a metric
    (``"ngram_ppl"`` or ``"metric.ngram_ppl"``). Returns one row per group: ``n``, ``mean``, ``std``
    (ddof=1), ``sem`` and ``low``/``high``, the ``confidence`` interval ``mean +- t_{n-1} * sem``
    (NaN when n < 2). With ``log=True`` the statistics are taken of ``log(metric)`` (for positive,
    multiplicative quantities such as perplexity, whose log is a cross-entropy in nats): ``std`` and
    ``sem`` are then on the log scale and ``mean``/``low``/``high`` are mapped back by ``exp`` (a
    geometric mean and its interval, always positive). Chapter 90_experiments.
    """
    import numpy as np
    import pandas as pd
    from scipy import stats

    by = [by] if isinstance(by, str) else list(by)
    by = [b if b.startswith("param.") or b in frame.columns else f"param.{b}" for b in by]
    metric = metric if metric.startswith("metric.") or metric in frame.columns else f"metric.{metric}"
    for col in [*by, metric]:
        if col not in frame.columns:
            raise _user_error(f"no column {col!r} in the results; columns: {', '.join(frame.columns)}")
    ok = frame[frame["status"] == "success"] if "status" in frame.columns else frame
    rows = []
    for key, group in ok.groupby(by, sort=True):
        values = group[metric].astype(float).to_numpy()
        if log:
            if (values <= 0).any():
                raise _user_error(f"aggregate(log=True) needs positive values of {metric}")
            values = np.log(values)
        n = len(values)
        mean = float(np.mean(values))
        std = float(np.std(values, ddof=1)) if n > 1 else float("nan")
        sem = std / np.sqrt(n) if n > 1 else float("nan")
        half = float(stats.t.ppf(0.5 + confidence / 2, n - 1) * sem) if n > 1 else float("nan")
        key = key if isinstance(key, tuple) else (key,)
        back = np.exp if log else (lambda x: x)
        rows.append(
            {
                **{b.removeprefix("param."): k for b, k in zip(by, key, strict=True)},
                "n": n,
                "mean": float(back(mean)),
                "std": std,
                "sem": sem,
                "low": float(back(mean - half)),
                "high": float(back(mean + half)),
            }
        )
    return pd.DataFrame(rows)


def paired_differences(
    frame, by: str, metric: str, pair_on: str = "seed", confidence: float = 0.95, log: bool = False
):
    """For every level of ``by`` after the first: mean of ``metric(level) - metric(first level)``
    over runs that share ``pair_on`` (the same seed, hence the same data split), with a t-interval.
    With ``log=True`` the differences are of ``log(metric)`` and ``mean``/``low``/``high`` are the
    geometric-mean *ratio* ``metric(level) / metric(first level)`` and its interval.

    Pairing removes the variation the seed causes in both arms alike. Chapter 90_experiments.
    """
    import numpy as np
    import pandas as pd

    col = by if by.startswith("param.") else f"param.{by}"
    pair = pair_on if pair_on.startswith("param.") else f"param.{pair_on}"
    met = metric if metric.startswith("metric.") else f"metric.{metric}"
    ok = frame[frame["status"] == "success"]
    wide = ok.pivot_table(index=pair, columns=col, values=met, aggfunc="mean")
    if log:
        wide = np.log(wide)
    levels = list(wide.columns)
    rows = []
    for level in levels[1:]:
        diff = (wide[level] - wide[levels[0]]).dropna()
        part = pd.DataFrame({"status": "success", "param.pair": 0, "metric.diff": diff.to_numpy()})
        stats_row = aggregate(part, "pair", "diff", confidence).iloc[0].copy()
        if log:
            for k in ("mean", "low", "high"):
                stats_row[k] = float(np.exp(stats_row[k]))
        rows.append(
            {
                "baseline": levels[0],
                by.removeprefix("param."): level,
                **{k: stats_row[k] for k in ("n", "mean", "std", "sem", "low", "high")},
            }
        )
    return pd.DataFrame(rows)


def ratio_verdict(low: float, high: float, lower_is_better: bool = True) -> str:
    """What a paired interval of a ratio (``paired_differences(..., log=True)``) says: the second
    level is reliably better or worse only when the whole interval lies on one side of 1 (an interval
    touching 1 cannot tell them apart); NaN bounds (a single pair of seeds) give no interval.
    Chapter 90_experiments."""
    import math

    if any(x is None or (isinstance(x, float) and math.isnan(x)) for x in (low, high)):
        return "there is no interval (fewer than two paired seeds), so the data cannot tell the two apart"
    better, worse = ("better", "worse") if lower_is_better else ("worse", "better")
    if high < 1:
        return f"the higher order is reliably {better}: the whole interval lies below 1"
    if low > 1:
        return f"the higher order is reliably {worse}: the whole interval lies above 1"
    return "the interval contains 1: with these seeds the data cannot tell the two orders apart"


def plot_aggregate(
    ax,
    frame,
    by: str,
    metric: str,
    confidence: float = 0.95,
    label: str | None = None,
    color: str | None = None,
    offset: float = 0.0,
    log: bool = False,
):
    """Each successful run as a dot, and per group the mean with its t-interval as an error bar
    (``log=True``: the geometric mean and its interval, see :func:`aggregate`).

    Built on :mod:`qwen_anatomy.plotting`; the caller labels the axes. Returns the aggregate table.
    Chapter 90_experiments.
    """
    import numpy as np

    agg = aggregate(frame, by, metric, confidence, log=log)
    key = by.removeprefix("param.")
    col = by if by.startswith("param.") else f"param.{by}"
    met = metric if metric.startswith("metric.") else f"metric.{metric}"
    ok = frame[frame["status"] == "success"]
    positions = {level: i for i, level in enumerate(agg[key])}
    xs = np.array([positions[v] for v in ok[col]], dtype=float) + offset
    from matplotlib.colors import to_rgb

    points = ax.scatter(xs, ok[met], s=14, alpha=0.45, color=color, zorder=2)
    yerr = np.vstack([(agg["mean"] - agg["low"]).to_numpy(), (agg["high"] - agg["mean"]).to_numpy()])
    ax.errorbar(
        np.arange(len(agg)) + offset,
        agg["mean"],
        yerr=yerr,
        fmt="o",
        ms=6,
        capsize=5,
        color=to_rgb(points.get_facecolor()[0]),
        label=label,
        zorder=3,
    )
    ax.set_xticks(np.arange(len(agg)), [str(v) for v in agg[key]])
    return agg


def plot_paired(ax, frame, by: str, metric: str, pair_on: str = "seed"):
    """One line per ``pair_on`` value (a seed) joining its ``metric`` across the levels of ``by``:
    parallel lines mean the levels differ consistently even when the seeds are far apart.
    The caller labels the axes. Chapter 90_experiments."""
    import numpy as np

    col = by if by.startswith("param.") else f"param.{by}"
    pair = pair_on if pair_on.startswith("param.") else f"param.{pair_on}"
    met = metric if metric.startswith("metric.") else f"metric.{metric}"
    ok = frame[frame["status"] == "success"]
    wide = ok.pivot_table(index=pair, columns=col, values=met, aggfunc="mean")
    xs = np.arange(len(wide.columns))
    for key, values in wide.iterrows():
        ax.plot(
            xs,
            values.to_numpy(),
            marker="o",
            ms=4,
            alpha=0.8,
            label=f"{pair_on.removeprefix('param.')} {key}",
        )
    ax.set_xticks(xs, [str(v) for v in wide.columns])
    return wide


def _worker_main(argv: list[str]) -> int:
    return _execute_in_worker(json.loads(argv[0]))


if __name__ == "__main__":
    import sys

    raise SystemExit(_worker_main(sys.argv[1:]))
