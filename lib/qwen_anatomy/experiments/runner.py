"""Executing runs: one kernel process per run, a run record each, resumable (chapter 90_experiments)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..paths import REPO_ROOT
from .metrics import RUN_DIR_ENV
from .params import RUN_FILE, _user_error, notebook_parameters, parameter_hash, plan_runs

# The environment every run's kernel gets by default, as the Makefile exports it for `make book`:
# offline (nothing may reach a model hub), and no progress bars (Hugging Face's or tqdm's, including
# the library's own through qwen_anatomy.progress), which in a notebook are widgets whose rendering
# would load JavaScript from a CDN (the browser check fails on that).
KERNEL_ENV = {
    "TQDM_DISABLE": "1",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "TRANSFORMERS_VERBOSITY": "error",
}


def worker_env(base, jobs: int = 1) -> dict[str, str]:
    """The environment of a run's worker (and its kernel): ``base`` with :data:`KERNEL_ENV` as
    defaults (a value the caller set wins), one BLAS pool per job when ``jobs`` kernels share the
    cores (again unless set), and this package's ``lib`` first on PYTHONPATH so the worker imports
    it even from a bare checkout."""
    env = dict(base)
    for var, value in KERNEL_ENV.items():
        env.setdefault(var, value)
    if jobs > 1:
        per_job = str(max(1, (os.cpu_count() or 1) // jobs))
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env.setdefault(var, per_job)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT / "lib"), env.get("PYTHONPATH")]))
    return env


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

    from ..runrecord import RunRecord, environment, utc_now

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
    from ..iochecks import check_output_root

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
    env = worker_env(os.environ, jobs)

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
    from ..runrecord import atomic_write_json, utc_now

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
