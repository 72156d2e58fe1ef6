"""The reader's own book: every chapter executed on one model, rendered as HTML (``qwen-anatomy book``).

:func:`build_book` validates everything first (the output folder, the chapters, the model, and every
chapter's parameters, parsed from its ``parameters`` cell as ``qwen-anatomy run`` does), then executes
every chapter of ``_toc.yml`` through the experiment runner (:func:`qwen_anatomy.experiments.run_experiments`:
papermill, one worker process per chapter, a run record each). A chapter whose ``parameters`` cell has a
``model`` parameter runs with ``model=MODEL``; the others run at their defaults. At ``scale="ci"`` the
values of ``tests/ci-params.yml`` are laid over the defaults first (quick tries, tests). The landing page
(``_toc.yml``'s root, ``notebooks/index``) is built every time, ``--chapters`` or not: it is the book's
first page, takes no model and reads only committed results (:mod:`qwen_anatomy.landing`).

Each executed notebook gets one note under its title saying what it ran on (the model, or "it takes no
model"), the scale and the overridden parameters. The notebooks are then rendered by Jupyter Book 1
from a staging folder (``book/``, ``_toc.yml`` restricted to the chapters built, ``_config.yml`` with
execution off, the executed ``.ipynb`` in place of the ``.py``), with the same strictness as
``make book`` (``-W -n --keep-going``), and the HTML is moved into the output folder beside ``runs/``
(one run directory per chapter) and ``book.json`` (the record of the whole build).

Chapter 90_experiments explains the runner this builds on; the README's "Your own book" section shows the
command.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import UserInputError
from .paths import REPO_ROOT

TOC_FILE = REPO_ROOT / "_toc.yml"
CONFIG_FILE = REPO_ROOT / "_config.yml"
BOOK_DIR = REPO_ROOT / "book"
CI_PARAMS_FILE = REPO_ROOT / "tests" / "ci-params.yml"
SCALES = ("book", "ci")
MODEL_PARAMETER = "model"
RECORD_FILE = "book.json"
RUNS_DIR = "runs"
BUILD_LOG = "jupyter-book.log"


@dataclass
class ChapterPlan:
    """One chapter of the book to build: its source, the parameters it runs with, whether it takes a model."""

    stem: str
    path: Path
    overrides: dict[str, Any]
    takes_model: bool
    ci_overrides: dict[str, Any] = field(default_factory=dict)


# -- the table of contents ----------------------------------------------------------------------------
def _toc_files(entries) -> list[str]:
    out: list[str] = []
    for entry in entries or []:
        if "file" in entry:
            out.append(entry["file"])
        for key in ("sections", "chapters"):
            out += _toc_files(entry.get(key))
    return out


def _read_toc(toc_file: Path = TOC_FILE) -> dict:
    import yaml

    return yaml.safe_load(toc_file.read_text())


def toc_root(toc_file: Path = TOC_FILE) -> str | None:
    """The stem of the book's first page when it is a notebook (the landing page, ``notebooks/index``),
    else None. Every build includes it: Jupyter Book needs its root page."""
    root = str(_read_toc(toc_file).get("root", ""))
    return root.removeprefix("notebooks/") if root.startswith("notebooks/") else None


def toc_chapters(toc_file: Path = TOC_FILE) -> list[str]:
    """The stems of the notebooks ``_toc.yml`` lists (``notebooks/<stem>``), in reading order: the root
    page first when it is a notebook."""
    toc = _read_toc(toc_file)
    files = [str(toc.get("root", ""))] + _toc_files(toc.get("chapters"))
    files += [f for part in toc.get("parts", []) for f in _toc_files(part.get("chapters"))]
    return list(dict.fromkeys(f.removeprefix("notebooks/") for f in files if f.startswith("notebooks/")))


def with_root(stems: list[str], toc_file: Path = TOC_FILE) -> list[str]:
    """``stems`` with the root notebook first (a book cannot be rendered without its first page; the
    landing page reads committed files only and runs in seconds)."""
    root = toc_root(toc_file)
    return stems if root is None or root in stems else [root, *stems]


def select_chapters(requested: list[str] | None, known: list[str]) -> list[str]:
    """The chapters to build, in table-of-contents order. ``requested`` holds stems or unique prefixes
    (``10`` for ``10_weights_summary``); None means every chapter. UserInputError for an unknown or
    ambiguous name."""
    if requested is None:
        return list(known)
    if not requested:
        raise UserInputError("--chapters is empty: give chapter stems such as 00_setup,10_weights_summary")
    chosen: set[str] = set()
    for name in requested:
        stem = Path(name).name.removesuffix(".py").removesuffix(".ipynb")
        matches = [k for k in known if k == stem] or [k for k in known if k.startswith(stem)]
        if len(matches) != 1:
            what = "is ambiguous (matches " + ", ".join(matches) + ")" if matches else "is not in _toc.yml"
            raise UserInputError(f"chapter {name!r} {what}; the book's chapters: {', '.join(known)}")
        chosen.add(matches[0])
    return [k for k in known if k in chosen]


# -- validation before anything runs --------------------------------------------------------------------
def check_out(out: str | os.PathLike) -> Path:
    """The output folder: new, or an empty directory; never an existing file or a non-empty folder."""
    from .iochecks import check_output_root

    path = Path(out).expanduser()
    if os.path.lexists(path) and not path.is_dir():
        raise UserInputError(f"--out {path} is a file, not a directory; give a new directory for the book")
    if path.is_dir() and any(path.iterdir()):
        raise UserInputError(
            f"--out {path} already exists and is not empty; the book is never written over an earlier "
            "one: give a new directory"
        )
    check_output_root(path, "--out")  # its nearest existing parent accepts a new folder
    return path


def model_argument(model: str) -> str:
    """The model as the chapters receive it: a path made absolute (chapters run in notebooks/), a
    built-in or shipped name unchanged."""
    from .loading import SHIPPED_MODELS, builtin_names

    text = str(model)
    if text in builtin_names() or (SHIPPED_MODELS / text / "config.json").is_file():
        return text
    path = Path(text).expanduser()
    return str(path.resolve()) if os.path.lexists(path) else text


def check_model(model: str) -> Path:
    """Resolve the model (a built-in name, a checkpoint directory or a .gguf file, converted once) and
    validate its config and weight headers; the checkpoint directory. UserInputError: one line."""
    from .loading import load_config, resolve_model
    from .validate import check_transformers_checkpoint

    if not str(model).strip():
        raise UserInputError("--model is empty: give a built-in name, a checkpoint directory or a .gguf file")
    path = resolve_model(model)
    load_config(path)
    check_transformers_checkpoint(path)
    return path


def _ci_parameters(ci_params_file: Path) -> dict[str, dict[str, Any]]:
    from .experiments.params import _load_yaml_mapping

    data = _load_yaml_mapping(ci_params_file, "CI parameters")
    for stem, values in data.items():
        if values is not None and not isinstance(values, dict):
            raise UserInputError(f"{ci_params_file}: the entry of {stem} must be a mapping of name -> value")
    return {stem: dict(values or {}) for stem, values in data.items()}


def plan_book(
    model: str,
    chapters: list[str] | None = None,
    scale: str = "book",
    ci_params_file: Path = CI_PARAMS_FILE,
    toc_file: Path = TOC_FILE,
) -> list[ChapterPlan]:
    """Every chapter to build with the parameters it will run with, each checked against its
    ``parameters`` cell (names and types) as ``qwen-anatomy run`` checks them. Nothing runs."""
    from .experiments.params import NOTEBOOKS_DIR, _coerce_file_value, check_parameter, notebook_parameters

    if scale not in SCALES:
        raise UserInputError(f"--scale {scale!r} is not one of {', '.join(SCALES)}")
    stems = select_chapters(chapters, toc_chapters(toc_file))
    ci = _ci_parameters(ci_params_file) if scale == "ci" else {}
    plans = []
    for stem in stems:
        path = NOTEBOOKS_DIR / f"{stem}.py"
        if not path.is_file():
            raise UserInputError(f"_toc.yml lists notebooks/{stem} but {path} does not exist")
        defaults = notebook_parameters(path)
        takes_model = MODEL_PARAMETER in defaults
        ci_values = {
            name: check_parameter(stem, name, _coerce_file_value(value, defaults.get(name)), defaults)
            for name, value in ci.get(stem, {}).items()
        }
        overrides = dict(ci_values)
        if takes_model:
            overrides[MODEL_PARAMETER] = check_parameter(stem, MODEL_PARAMETER, model, defaults)
        plans.append(
            ChapterPlan(
                stem=stem,
                path=path,
                overrides=overrides,
                takes_model=takes_model,
                ci_overrides={k: v for k, v in ci_values.items() if k != MODEL_PARAMETER},
            )
        )
    return plans


# -- what each page says about its run ------------------------------------------------------------------
def _values(overrides: dict[str, Any]) -> str:
    return ", ".join(f"`{name} = {value!r}`" for name, value in overrides.items())


def chapter_note(plan: ChapterPlan, model: str, scale: str) -> str:
    """The note under a chapter's title: what it ran on, at which scale, with which values."""
    from .modelnames import model_label

    if scale == "ci":
        how = (
            f"at CI scale (the smaller values of `tests/ci-params.yml`: {_values(plan.ci_overrides)})"
            if plan.ci_overrides
            else "at its defaults (`tests/ci-params.yml` changes nothing here)"
        )
    else:
        how = "at its book-scale defaults"
    if plan.stem == toc_root():
        text = (
            "This page ran at its defaults: its headlines come from the results committed with the book "
            f"(`bench/results/`, `data/results/`), not from {model_label(model)}."
        )
    elif plan.takes_model:
        text = f"This chapter ran on **{model_label(model)}** (`model = {model!r}`), {how}."
    elif scale == "ci" and plan.ci_overrides:
        text = f"This chapter ran {how}, otherwise at its defaults; it takes no model."
    else:
        text = "This chapter ran at its defaults; it takes no model."
    return f"```{{note}}\n{text} Built by `qwen-anatomy book`.\n```"


def add_note(executed: Path, target: Path, note: str) -> None:
    """Copy an executed notebook to ``target`` with ``note`` as a markdown cell under its title (after
    its first markdown cell, or first when it has none)."""
    import nbformat

    nb = nbformat.read(executed, as_version=4)
    cell = nbformat.v4.new_markdown_cell(note)
    cell.metadata["tags"] = ["qwen-anatomy-book-note"]
    first_md = next((i for i, c in enumerate(nb.cells) if c.cell_type == "markdown"), None)
    nb.cells.insert(0 if first_md is None else first_md + 1, cell)
    nbformat.write(nb, target)


# -- staging and rendering ------------------------------------------------------------------------------
def _restrict_toc(toc: dict, keep: set[str]) -> dict:
    """``toc`` with only the notebooks in ``keep`` (``notebooks/<stem>``); other pages stay."""
    toc = copy.deepcopy(toc)

    def prune(entries):
        out = []
        for entry in entries or []:
            file = entry.get("file", "")
            if file.startswith("notebooks/") and file not in keep:
                continue
            for key in ("sections", "chapters"):
                if key in entry:
                    entry[key] = prune(entry[key])
                    if not entry[key]:
                        del entry[key]
            out.append(entry)
        return out

    if "chapters" in toc:
        toc["chapters"] = prune(toc["chapters"])
    for part in toc.get("parts", []):
        part["chapters"] = prune(part.get("chapters"))
    return toc


def stage_book(staging: Path, notebooks: dict[str, Path], title_suffix: str) -> Path:
    """Write a Jupyter Book source folder: ``book/``, a ``_toc.yml`` listing the chapters in ``notebooks``
    (stem -> executed .ipynb), a ``_config.yml`` with execution off, the notebooks under notebooks/."""
    import yaml

    staging.mkdir(parents=True, exist_ok=True)
    shutil.copytree(BOOK_DIR, staging / "book")
    (staging / "notebooks").mkdir()
    for stem, nb in notebooks.items():
        shutil.copy2(nb, staging / "notebooks" / f"{stem}.ipynb")
    toc = _restrict_toc(_read_toc(), {f"notebooks/{stem}" for stem in notebooks})
    (staging / "_toc.yml").write_text(yaml.safe_dump(toc, sort_keys=False, allow_unicode=True))
    config = yaml.safe_load(CONFIG_FILE.read_text())
    config.setdefault("execute", {})["execute_notebooks"] = "off"  # executed by the runner already
    config["title"] = f"{config.get('title', 'Qwen2 Anatomy')}: {title_suffix}"
    (staging / "_config.yml").write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
    return staging


def jupyter_book_executable() -> str:
    here = Path(sys.executable).parent / "jupyter-book"
    found = str(here) if here.exists() else shutil.which("jupyter-book")
    if not found:
        raise UserInputError("jupyter-book is not installed in this environment: run `make install` first")
    return found


def render(staging: Path, build_root: Path, log_file: Path) -> subprocess.CompletedProcess:
    """``jupyter-book build STAGING --path-output BUILD_ROOT`` as strict as ``make book``."""
    command = [jupyter_book_executable(), "build", str(staging), "--path-output", str(build_root)]
    command += ["--all", "-W", "-n", "--keep-going"]
    with log_file.open("w") as log:
        return subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, text=True, check=False)


# -- the whole build --------------------------------------------------------------------------------------
def build_book(
    model: str,
    out: str | os.PathLike,
    scale: str = "book",
    chapters: list[str] | None = None,
    timeout: float | None = None,
    progress: bool = True,
    command: str | None = None,
    log=print,
) -> dict[str, Any]:
    """Build the book about ``model`` into ``out`` (see the module docstring). Returns the build record
    (also saved as ``out/book.json``): ``status`` is ``success`` only when every chapter ran and the
    HTML was rendered. UserInputError (before anything runs or is written) for a bad input."""
    from .modelnames import model_label
    from .runrecord import RunRecord

    out = check_out(out)
    if scale not in SCALES:
        raise UserInputError(f"--scale {scale!r} is not one of {', '.join(SCALES)}")
    stems = with_root(select_chapters(chapters, toc_chapters()))
    model_arg = model_argument(model)
    plans = plan_book(model_arg, stems, scale)  # every chapter's parameters, parsed and checked
    model_path = check_model(model_arg)
    label = model_label(model_arg)
    command = command or f"build_book({model!r}, {str(out)!r}, scale={scale!r})"

    out.mkdir(parents=True, exist_ok=True)
    record = RunRecord(
        out / RECORD_FILE,
        command=command,
        parameters={"model": model_arg, "scale": scale, "chapters": [p.stem for p in plans]},
    )
    record.data.update(
        {"model": model_arg, "model_label": label, "model_path": str(model_path), "chapters": []}
    )
    record.save()
    log(f"book about {label} ({model_path}): {len(plans)} chapter(s) at {scale} scale -> {out}")
    t0 = time.perf_counter()
    try:
        status = _execute_and_render(
            plans, model_arg, label, scale, out, timeout, progress, command, record, log
        )
    except KeyboardInterrupt:
        _finish(record, "incomplete", t0, "interrupted")
        raise
    except BaseException as err:
        _finish(record, "failed", t0, f"{type(err).__name__}: {err}")
        raise
    _finish(record, status, t0)
    if status == "success":
        log(f"book written: {out / 'index.html'} ({record.data['wall_seconds']:.0f} s)")
    return record.data


def _finish(record, status: str, t0: float, error: str | None = None) -> None:
    from .runrecord import peak_rss_mb, utc_now

    record.data.update(
        {
            "status": status,
            "end_time": utc_now(),
            "wall_seconds": round(time.perf_counter() - t0, 3),
            "peak_rss_mb": round(peak_rss_mb(), 1),
        }
    )
    if error:
        record.data["error"] = error
    record.save()


def _execute_and_render(plans, model_arg, label, scale, out, timeout, progress, command, record, log) -> str:
    """Run every chapter (a run record each, under out/runs), then render; the build's status."""
    from .experiments import run_experiments

    t0 = time.perf_counter()
    executed: dict[str, Path] = {}
    bar = _progress(plans, progress)
    for plan in bar:
        if hasattr(bar, "set_postfix_str"):
            bar.set_postfix_str(plan.stem)
        results = run_experiments(
            plan.path,
            parameters=plan.overrides,
            out=out / RUNS_DIR,
            timeout=timeout,
            command=command,
            log=bar.write if hasattr(bar, "write") else log,
        )
        run_dir = Path(results[0]["run_dir"])
        run = json.loads((run_dir / "run.json").read_text())
        chapter = {
            "chapter": plan.stem,
            "takes_model": plan.takes_model,
            "overrides": plan.overrides,
            "status": results[0]["status"],
            "wall_seconds": run.get("wall_seconds"),
            "run_dir": run_dir.relative_to(out).as_posix(),
        }
        if chapter["status"] != "success":
            chapter["error"] = run.get("error")
        record.data["chapters"].append(chapter)
        record.save()
        if chapter["status"] == "success":
            executed[plan.stem] = run_dir / f"{plan.stem}.ipynb"
    if hasattr(bar, "close"):
        bar.close()
    record.data["execute_seconds"] = round(time.perf_counter() - t0, 1)
    failed = [c for c in record.data["chapters"] if c["status"] != "success"]
    if failed:
        for c in failed:
            log(f"chapter {c['chapter']} {c['status']}: {c.get('error')} (see {out / c['run_dir']})")
        record.data["render"] = {"status": "not started", "reason": "a chapter did not run"}
        return "failed"

    t1 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="qwen-anatomy-book-") as tmp:
        tmp = Path(tmp)
        (tmp / "executed").mkdir()
        pages = {}
        for plan in plans:
            pages[plan.stem] = tmp / "executed" / f"{plan.stem}.ipynb"
            add_note(executed[plan.stem], pages[plan.stem], chapter_note(plan, model_arg, scale))
        staging = stage_book(tmp / "source", pages, label)
        log(f"rendering {len(pages)} executed chapter(s) with jupyter-book (log: {out / BUILD_LOG})")
        done = render(staging, tmp / "output", out / BUILD_LOG)
        html = tmp / "output" / "_build" / "html"
        seconds = round(time.perf_counter() - t1, 1)
        if done.returncode != 0 or not (html / "index.html").is_file():
            tail = (out / BUILD_LOG).read_text(errors="replace").strip().splitlines()[-3:]
            log(f"jupyter-book failed (exit {done.returncode}): " + " | ".join(tail))
            record.data["render"] = {"status": "failed", "seconds": seconds, "exit_code": done.returncode}
            return "failed"
        for item in html.iterdir():
            shutil.move(str(item), str(out / item.name))
    record.data["render"] = {"status": "success", "seconds": seconds}
    return "success"


def _progress(plans: list[ChapterPlan], enabled: bool):
    """A tqdm bar over the chapters (one step per chapter, the current one named), or the bare list."""
    if not enabled:
        return plans
    from tqdm import tqdm

    return tqdm(plans, desc="chapters", unit="chapter", file=sys.stderr, dynamic_ncols=True)
