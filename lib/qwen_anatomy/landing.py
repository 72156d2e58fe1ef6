"""The landing page (``notebooks/index.py``): each part's headline result and build time, computed.

Every sentence the landing page states about a result is computed here when the page runs, from files
committed with the book, so it stays true when the results are regenerated: nothing loads a model, and
the whole page runs in seconds. Each part's findings reuse the verdict functions of the chapter that
presents them (:mod:`qwen_anatomy.tasks.report`, :mod:`qwen_anatomy.heads.report`,
:mod:`qwen_anatomy.causal.report`, :mod:`qwen_anatomy.experiments`) and read the same files with the
same loaders, at the chapter's own defaults (parsed from its ``parameters`` cell):

- Part I: ``bench/results/forward.json`` (our Qwen2 against transformers: logits, tokens, speed);
- Part II: ``bench/results/weights_<layout>.json`` (the weights table against the load-everything
  baseline) and, when present, ``data/results/tokens/<model>/`` (under-trained tokens);
- Part III: ``data/results/tasks/`` (forward against inverse order);
- Part IV: ``data/results/heads/`` (importance against plasticity);
- Part V: ``data/results/causal/`` (CausalQwen against its softmax baseline);
- Part VI: ``data/results/90_experiments/`` (the committed grid of chapter 1, paired over seeds).

Each :class:`Finding` names the files it read. A missing source gives a plain sentence saying so and
naming the command that writes it, never an exception. A finding whose run records break the provenance
rule (``data/README.md``; :func:`qwen_anatomy.provenance.check_record`) is marked provisional, with the
issue that regenerates it when ``qwen_anatomy.provenance.KNOWN_EXCEPTIONS`` (the one committed
list of such records) names one.

Build times come from ``data/results/book-timings/<model>.json``, written by :func:`collect_timings`
from the per-chapter run records of one ``qwen-anatomy book`` build (all at one clean commit)::

    .venv/bin/python -m qwen_anatomy.landing --timings mybook      # mybook: a `qwen-anatomy book --out`

Beside it, ``<model>.run_record.json`` holds the provenance (the build's ``book.json`` and each chapter's
run directory), which ``tests/test_provenance.py`` checks like every committed record.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import UserInputError
from .paths import REPO_ROOT
from .provenance import only_results_changed
from .words import count as _count

FORWARD_BENCH = "bench/results/forward.json"
WEIGHTS_BENCHES = ("bench/results/weights_qwen2.5-0.5b.json", "bench/results/weights_qwen2.5-7b.json")
TOKENS_RESULTS = "data/results/tokens"
TIMINGS_DIR = "data/results/book-timings"
REGENERATE = {
    FORWARD_BENCH: "python bench/forward.py",
    WEIGHTS_BENCHES[0]: "python bench/weights.py",
    WEIGHTS_BENCHES[1]: "python bench/weights.py --7b",
}
# A speed ratio within this distance of 1 is "about as fast": the benchmark's repeated runs on a shared
# two-core machine spread by more than that (bench/results/forward.json, all_seconds).
SAME_SPEED = 0.1
# Which rows of forward.json to report, in order of preference: the real Qwen2 once the benchmark has it,
# else the random model of Qwen2.5-0.5B's exact shape.
FORWARD_ROWS = {
    "qwen2.5-coder-0.5b/float32": "the real Qwen2.5-Coder-0.5B-Instruct (float32)",
    "qwen2.5-0.5b-shape": "a random-weight model of Qwen2.5-0.5B's exact shape (float32)",
}
BF16_ROW = "qwen2.5-coder-0.5b/bfloat16"
LAYOUT_LABELS = {"qwen2.5-0.5b": "Qwen2.5-0.5B", "qwen2.5-7b": "Qwen2.5-7B"}
TIMING_FIELDS = ("wall_seconds", "git", "start_time")


# -- what a headline is ---------------------------------------------------------------------------------
@dataclass
class Finding:
    """One computed statement and the files it comes from (paths relative to the repository).

    ``records`` are the run records checked for provenance (the sources themselves by default: a
    benchmark JSON carries its own); ``available`` is False when a source is missing and ``text`` then
    says so."""

    text: str
    sources: tuple[str, ...]
    records: tuple[str, ...] | None = None
    available: bool = True
    details: list[str] = field(default_factory=list)
    provisional: str | None = None

    def markdown(self) -> str:
        """One Markdown bullet: the statement, its sources and, if any, why it is provisional; then one
        nested bullet per detail."""
        if not self.available:
            return f"- {self.text}"
        where = ", ".join(f"`{s}`" for s in self.sources)
        tail = f" *Source: {where}" + (f"; {self.provisional}" if self.provisional else "") + ".*"
        return "\n".join([f"- {self.text}{tail}", *(f"  - {d}" for d in self.details)])


def missing(source: str, command: str | None = None, detail: str | None = None) -> Finding:
    """The finding for a source that is not there: says so, and what writes it."""
    text = f"No result yet: `{source}` is not in this checkout"
    if detail:
        text = f"No result yet: {detail.rstrip('.')}"
    elif command:
        text += f" (`{command}` writes it)"
    return Finding(text + ".", (source,), available=False)


def _rel(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path)


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def chapter_defaults(stem: str) -> dict[str, Any]:
    """The defaults of a chapter's ``parameters`` cell (parsed, not executed): the landing page reads
    each part's results where the chapter itself reads them."""
    from .experiments.params import notebook_parameters

    return notebook_parameters(REPO_ROOT / "notebooks" / f"{stem}.py")


def _ratio_word(ratio: float, tolerance: float = SAME_SPEED) -> str:
    """Our time over transformers' time, in words: faster, about as fast, slower."""
    if ratio < 1 - tolerance:
        return "faster than"
    if ratio > 1 + tolerance:
        return "slower than"
    return "about as fast as"


def _num(x) -> str:
    """A parameter value as printed: 2.0 -> "2" (pandas turns integer columns of a pivot into floats)."""
    return str(int(x)) if isinstance(x, float) and x.is_integer() else str(x)


def _index(order: list, item) -> int:
    return order.index(item) if item in order else len(order)


def duration(seconds: float) -> str:
    """A build time for a reader: seconds under 90 s, minutes under 90 min, else hours and minutes."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes = seconds / 60
    if minutes < 90:
        return f"{minutes:.0f} min"
    hours, rest = divmod(round(minutes), 60)
    return f"{hours} h {rest:02d} min"


# -- Part I: our Qwen2 against transformers ------------------------------------------------------------------
def forward_finding(root: Path = REPO_ROOT, source: str = FORWARD_BENCH) -> Finding:
    """Parity and speed of our Qwen2 against transformers, from ``bench/forward.py``'s JSON (both its
    layouts: with or without the real-Qwen2 rows ``qwen2.5-coder-0.5b/<dtype>``)."""
    path = root / source
    if not path.is_file():
        return missing(source, REGENERATE.get(source))
    data = _read_json(path)
    models = data["models"]
    key = next((k for k in FORWARD_ROWS if k in models), None)
    if key is None:
        return Finding(
            f"`{source}` holds none of the rows this page reports ({', '.join(FORWARD_ROWS)}); it has "
            f"{', '.join(models) or 'no rows'}.",
            (source,),
        )
    workloads = models[key]["workloads"]
    forward_key = (
        "forward_1x512"
        if "forward_1x512" in workloads
        else sorted(k for k in workloads if k.startswith("forward_"))[0]
    )
    fwd = workloads[forward_key]
    shape = forward_key.removeprefix("forward_").replace("x", "×")
    diff = fwd["max_abs_logit_diff"]
    scale = fwd.get("max_abs_logit")
    rel = f", {diff / scale:.1e} of the largest logit" if scale else ""
    text = (
        f"Our from-scratch Qwen2 computes what transformers computes: on {FORWARD_ROWS[key]}, the largest "
        f"logit difference over {shape} tokens is {diff:.1e}{rel}"
    )
    gen_key = next((k for k in workloads if k.startswith("generate_")), None)
    if gen_key is not None:
        gen = workloads[gen_key]
        n_tokens = gen_key.removeprefix("generate_")
        same = {k: v for k, v in gen.get("same_tokens_as_ours", {}).items() if k != "ours"}
        if same and all(same.values()):
            text += (
                f", and greedy generation of {n_tokens} tokens with a KV cache gives exactly transformers' "
                "tokens (eager and sdpa attention)"
            )
        elif same:
            differ = ", ".join(k.removeprefix("transformers_") for k, v in same.items() if not v)
            text += f"; greedy generation of {n_tokens} tokens differs from transformers ({differ})"
    text += "."
    machine = data.get("environment", {}).get("machine", {})
    cores = machine.get("cpu_count")
    speed = [(f"on the {shape} forward", fwd["ratio_ours_over_sdpa"])]
    if gen_key is not None:
        speed.append(("in cached generation", workloads[gen_key]["ratio_ours_over_sdpa"]))
    words = {_ratio_word(r) for _, r in speed}
    if len(words) == 1:
        text += f" It is {words.pop()} transformers with sdpa attention: " + " and ".join(
            f"{r:.2f}× its time {where}" for where, r in speed
        )
    else:
        text += " Against transformers with sdpa attention it is " + " and ".join(
            f"{_ratio_word(r).removesuffix(' than').removesuffix(' as')} {where} ({r:.2f}× its time)"
            for where, r in speed
        )
    reps = f"medians of {data['reps']} and {data['gen_reps']} runs" if "reps" in data else "medians"
    text += (
        f" ({reps}"
        + (f" on a {cores}-core CPU" if cores else "")
        + f"; within ±{SAME_SPEED:.0%} counts as equal)."
    )
    if BF16_ROW in models:
        bf16 = models[BF16_ROW]["workloads"].get("forward_1x512", {})
        by_impl = bf16.get("max_abs_logit_diff_by_implementation", {})
        if by_impl.get("transformers_sdpa") == 0:
            text += " In bfloat16 its logits equal transformers' (sdpa) bit for bit."
        elif "max_abs_logit_diff" in bf16:
            text += f" In bfloat16 the largest logit difference is {bf16['max_abs_logit_diff']:.2g}."
    return Finding(text, (source,))


# -- Part II: the weights table, and under-trained tokens -------------------------------------------------------
def weights_finding(root: Path = REPO_ROOT, source: str = WEIGHTS_BENCHES[0]) -> Finding:
    """Time and peak memory of ``qwen-anatomy params`` (statistics and spectra) on a random checkpoint
    of a real layout, against the seed-style baseline, from ``bench/weights.py``'s JSON."""
    path = root / source
    if not path.is_file():
        return missing(source, REGENERATE.get(source))
    data = _read_json(path)
    ours, base = data["stats_spectra"], data.get("baseline", {})
    layout = LAYOUT_LABELS.get(data["layout"], data["layout"])
    params = ours.get("parameters") or data.get("expected", {}).get("parameters")
    size = f"{params / 1e9:.2f} B parameters, " if params else ""
    text = (
        f"On a random checkpoint of {layout}'s layout ({size}{ours['rows']} tensors), `qwen-anatomy params` "
        f"builds the full table, statistics and every singular-value spectrum, in {duration(ours['wall_s'])} "
        f"at {ours['peak_rss_mb']:,.0f} MB peak memory"
    )
    if "skipped" in base:
        reason = base["skipped"]
        text += "; the load-everything baseline was not run: " + (
            f"it {reason}" if reason.startswith("needs ") else f"({reason})"
        )
    elif "wall_s" in base:
        wall = data.get("ratio_baseline_over_ours_wall", base["wall_s"] / ours["wall_s"])
        rss = data.get("ratio_baseline_over_ours_rss", base["peak_rss_mb"] / ours["peak_rss_mb"])
        text += (
            f"; the seed tool's approach (every tensor in float32 in memory, then the SVD) took "
            f"{duration(base['wall_s'])} and {base['peak_rss_mb']:,.0f} MB, {wall:.1f}× the time and "
            f"{rss:.0f}× the memory"
        )
    text += "."
    load = data.get("loadavg_start_end")
    cores = data.get("environment", {}).get("machine", {}).get("cpu_count")
    if load and cores and max(load[0][0], load[1][0]) > cores:
        text += (
            f" The machine was shared during the run (load average up to {max(load[0][0], load[1][0]):.0f} "
            f"on {cores} cores), so the times are upper bounds."
        )
    return Finding(text, (source,))


def tokens_findings(root: Path = REPO_ROOT, results: str = TOKENS_RESULTS) -> list[Finding]:
    """The under-trained-token verification of every model with a committed report (none: no finding;
    the report is optional)."""
    folder = root / results
    summaries = sorted(folder.glob("*/summary.json")) if folder.is_dir() else []
    if not summaries:
        return []
    from .modelnames import model_label
    from .weights import undertrained

    out = []
    for summary_path in summaries:
        summary = _read_json(summary_path)
        sentence = (
            undertrained.verification_sentence(summary)
            if "candidates" in summary
            else undertrained.category_sentence(summary)
        )
        run = summary_path.parent / "run.json"
        rel = _rel(summary_path, root)
        out.append(
            Finding(
                f"Under-trained tokens of {model_label(summary_path.parent.name)}: {sentence}",
                (rel,),
                records=(_rel(run, root),) if run.is_file() else (),
            )
        )
    return out


def part2_findings(root: Path = REPO_ROOT) -> list[Finding]:
    return [weights_finding(root, s) for s in WEIGHTS_BENCHES] + tokens_findings(
        root, chapter_defaults("12_embeddings_and_output").get("tokens_results", TOKENS_RESULTS)
    )


# -- Part III: forward against inverse order ---------------------------------------------------------------------
def _records_under(folder: Path, root: Path) -> tuple[str, ...]:
    from .provenance import RECORD_NAMES

    found = [
        p for p in folder.rglob("*.json") if p.name in RECORD_NAMES or p.name.endswith(".run_record.json")
    ]
    return tuple(sorted(_rel(p, root) for p in found))


def tasks_finding(root: Path = REPO_ROOT, results_root: str | None = None) -> Finding:
    """Forward against inverse order per task, with chapter 30's verdicts (``tasks.report``)."""
    from .tasks import report
    from .tasks.experiment import load_committed, seed_table

    results_root = results_root or chapter_defaults("30_synthetic_tasks")["results_root"]
    folder = root / results_root
    try:
        results, _ = load_committed(folder)
    except FileNotFoundError as err:
        return missing(results_root, detail=str(err))
    table = seed_table(results)
    clauses = []
    order = list(report.TASK_NAMES)
    groups = sorted(table.groupby(["task", "n"]), key=lambda g: (_index(order, g[0][0]), g[0][1]))
    for (task, n), group in groups:
        by_order = group.set_index("order")
        name = f"{report.TASK_NAMES.get(task, task)} (n = {n})"
        if not {"forward", "inverse"} <= set(by_order.index):
            clauses.append(f"{name}: one order only, no comparison yet.")
            continue
        f, i = by_order.loc["forward"], by_order.loc["inverse"]
        wins, paired = report.clear_wins(results, task, n)
        verdict = report.order_verdict(f, i, wins, paired)
        clauses.append(f"{name}: {f['mean']:.3f} forward against {i['mean']:.3f} inverse; {verdict}.")
    examples = int(results["num_examples"].min())
    text = (
        f"Mean exact match over seeds ({len(results)} runs, {examples:,} test samples each) with the chain of "
        "states written in its natural (forward) order against reversed, task by task below."
    )
    return Finding(text, (f"{results_root}/",), records=_records_under(folder, root), details=clauses)


# -- Part IV: importance against plasticity ------------------------------------------------------------------------
def heads_finding(root: Path = REPO_ROOT, results_dir: str | None = None) -> Finding:
    """Does ablation importance before fine-tuning predict how far a head moves? Chapter 40's verdict
    (``heads.report``) on the committed synthetic pair."""
    from .heads import report
    from .heads.experiment import load_results

    defaults = chapter_defaults("40_heads_importance_vs_plasticity")
    results_dir = results_dir or defaults["results_dir"]
    folder = root / results_dir
    try:
        res = load_results(folder)
    except FileNotFoundError as err:
        return missing(results_dir, detail=str(err))
    seeds = sorted(res["seeds"])
    pairs = report.pair_table([res["seeds"][s]["stats"] for s in seeds]).set_index("pair")
    main = pairs.loc["I_pre ~ Urel"]
    rho, p_max, within = main["ρ (mean over seeds)"], main["max p (permutation)"], main["ρ within layers"]
    n_heads = int(res["seeds"][seeds[0]]["stats"]["n_heads"])
    cfg = res["summary"]["config"]
    verdict = report.importance_update_verdict(rho, p_max)
    text = (
        f"On a small Qwen2 with {n_heads} attention heads (the shipped `{cfg['theta0']}`), fine-tuned on "
        f"{cfg['task']['name'].capitalize()} with {_count(len(seeds), 'seed')}: {verdict}. Within layers the "
        f"same pair gives ρ = {within:+.2f}: "
        f"{report.depth_clause(within, rho)}{report.small_n_clause(n_heads)}"
    )
    return Finding(text, (f"{results_dir}/",), records=_records_under(folder, root))


# -- Part V: CausalQwen against its baseline --------------------------------------------------------------------------
def _tally(rows: list[dict], n_sets: int) -> str:
    counts = {w: sum(r["winner"] == w for r in rows) for w in ("CausalQwen", "baseline", "tie", "undefined")}
    single = [key for key, c in counts.items() if c == n_sets]
    names = {"CausalQwen": "CausalQwen better", "baseline": "the baseline better", "tie": "tied"}
    if single and n_sets > 1:
        return f"{names.get(single[0], single[0])} on all {n_sets} sets"
    parts = [
        f"{what} on {counts[key]}"
        for key, what in (
            ("CausalQwen", "CausalQwen better"),
            ("baseline", "the baseline better"),
            ("tie", "tied"),
            ("undefined", "undefined"),
        )
        if counts[key]
    ]
    return ", ".join(parts) + f" of {n_sets} sets"


def causal_finding(root: Path = REPO_ROOT, study_dir: str | None = None) -> Finding:
    """CausalQwen against the softmax baseline in the committed study chapter 50 reads: on how many of
    the predictable roles each arm beats the better trivial reference (``study_report.value_summary``),
    and each arm's calibration error on the noisy readings (intervals over seeds)."""
    from .causal import study_report as sr
    from .modelnames import model_label

    study_dir = study_dir or chapter_defaults("50_causal_heads")["study_dir"]
    path = root / study_dir
    if not sr.study_exists(path):
        return missing(study_dir, command="qwen-anatomy causal study, see data/results/causal/README.md")
    study = sr.load_study(path)
    cfg = study.config
    calibration = ", ".join(
        f"{arm} {sr.interval_text(sr.seed_interval(sr.calibration_by_seed(study, arm)[1], sr.CONFIDENCE, (0.0, 1.0)))}"
        for arm in study.arms
    )
    text = (
        f"On {model_label(cfg['model'])} (frozen backbone, heads trained on cached features, "
        f"{cfg['steps']:,} steps of batch {cfg['batch_size']} per run), on texts whose numbers can be "
        f"predicted from the context: {sr.value_summary(study)} Mean calibration error of the predicted "
        f"laws on noisy readings with a known spread: {calibration}."
    )
    records = tuple(
        _rel(r.parent / "run_record.json", root) for r in sorted(path.glob("*/seed*/evaluation.json"))
    )
    return Finding(text, (study_dir,), records=records)


# -- Part VI: a committed grid, compared across seeds ----------------------------------------------------------------
def experiments_finding(root: Path = REPO_ROOT, results_dir: str | None = None) -> Finding:
    """Chapter 90's paired comparison of n-gram orders over seeds (``paired_differences``,
    ``ratio_verdict``), and the transformer against the best order, on the committed grid."""
    from .experiments import aggregate, load_results, paired_differences, ratio_verdict
    from .modelnames import model_label

    defaults = chapter_defaults("90_experiments")
    results_dir = results_dir or defaults["results_dir"]
    notebook, confidence = defaults["results_notebook"], defaults["confidence"]
    folder = root / results_dir
    runs = load_results(notebook, folder) if folder.is_dir() else []
    if not len(runs):
        return missing(results_dir, "make results-90")
    runs = runs[runs["status"] == "success"]
    paired = paired_differences(runs, "ngram_order", "ngram_ppl", "seed", confidence, log=True)
    clauses = [
        f"going from n-gram order {_num(row['baseline'])} to {_num(row['ngram_order'])} multiplies held-out perplexity "
        f"by {row['mean']:.3f} ({confidence:.0%} interval {row['low']:.3f}–{row['high']:.3f} over "
        f"{int(row['n'])} paired seeds); {ratio_verdict(row['low'], row['high'])}"
        for _, row in paired.iterrows()
    ]
    ngram = aggregate(runs, "ngram_order", "ngram_ppl", confidence, log=True)
    tf = aggregate(runs, "ngram_order", "transformer_ppl", confidence, log=True)
    models = sorted(set(runs["param.model"])) if "param.model" in runs else []
    who = model_label(models[0]) if len(models) == 1 else "The transformer"
    text = (
        f"In the committed grid of chapter 1 ({len(runs)} runs), "
        + "; ".join(clauses)
        + f". {who}'s perplexity on the same held-out text is {ngram['mean'].min() / tf['mean'].mean():.0f} "
        "times lower than the best order's (geometric means over seeds)."
    )
    return Finding(text, (f"{results_dir}/",), records=_records_under(folder, root))


# -- provenance ------------------------------------------------------------------------------------------------------
def known_exceptions() -> dict[str, str]:
    """:data:`qwen_anatomy.provenance.KNOWN_EXCEPTIONS` (glob -> reason naming the issue that
    regenerates the results)."""
    from .provenance import KNOWN_EXCEPTIONS

    return dict(KNOWN_EXCEPTIONS)


def regenerating_issue(path: str, exceptions: dict[str, str]) -> int | None:
    """The issue number an exception names for ``path`` (first matching glob), or None."""
    for pattern, reason in exceptions.items():
        if fnmatch.fnmatch(path, pattern):
            found = re.search(r"\bissue (\d+)", reason)
            return int(found.group(1)) if found else None
    return None


def _in_git(root: Path) -> bool:
    """Whether ``root`` is in a git checkout with its full history (a shallow clone cannot tell whether
    a recorded commit belongs to the history, so nothing is said about provenance there)."""
    try:
        done = subprocess.run(
            ["git", "rev-parse", "--is-inside-work-tree", "--is-shallow-repository"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0 and done.stdout.split() == ["true", "false"]


def provenance_note(
    records: tuple[str, ...] | list[str], root: Path = REPO_ROOT, exceptions: dict[str, str] | None = None
) -> str | None:
    """What the page says about a finding's provenance: None when every record meets the rule of
    ``data/README.md`` and no listed exception covers it (or there is no git history to check against).
    A record that breaks the rule makes the finding provisional (why, for the first one); an exception
    of ``qwen_anatomy.provenance`` matching a record adds the issue that regenerates it."""
    from .provenance import check_record, find_git_block

    if not records or not _in_git(root):
        return None
    exceptions = known_exceptions() if exceptions is None else exceptions
    bad: dict[str, tuple[str, dict]] = {}
    for rel in records:
        record = _read_json(root / rel)
        problems = check_record(rel, record, root)
        if problems:
            bad[rel] = (problems[0].reason, find_git_block(record) or {})
    issues = sorted({i for rel in records if (i := regenerating_issue(rel, exceptions)) is not None})
    regenerated = "being regenerated (" + ", ".join(f"issue {i}" for i in issues) + ")"
    if not bad:
        return regenerated if issues else None
    reason, git = next(iter(bad.values()))
    if git.get("dirty") is True:
        reason = f"made from uncommitted changes at commit {str(git.get('commit'))[:7]}"
    if len(records) == 1:
        what = "its run record breaks"
    elif len(bad) == len(records):
        what = f"all {len(records)} of its run records break"
    else:
        what = f"{len(bad)} of its {len(records)} run records break"
    text = f"provisional: {what} the provenance rule of `data/README.md` ({reason})"
    return text + (f"; {regenerated}" if issues else "")


# -- the parts ---------------------------------------------------------------------------------------------------------
FINDINGS = {
    "I": lambda root: [forward_finding(root)],
    "II": part2_findings,
    "III": lambda root: [tasks_finding(root)],
    "IV": lambda root: [heads_finding(root)],
    "V": lambda root: [causal_finding(root)],
    "VI": lambda root: [experiments_finding(root)],
}


def findings(part: str, root: Path = REPO_ROOT, exceptions: dict[str, str] | None = None) -> list[Finding]:
    """The computed findings of one part (``"I"`` ... ``"VI"``), each with its provenance clause."""
    if part not in FINDINGS:
        raise UserInputError(f"part {part!r}: the landing page knows parts {', '.join(FINDINGS)}")
    out = FINDINGS[part](root)
    for finding in out:
        if finding.available:
            records = finding.sources if finding.records is None else finding.records
            finding.provisional = provenance_note(records, root, exceptions)
    return out


@dataclass(frozen=True)
class Part:
    """A part of the book as ``_toc.yml`` lists it: ``key`` is its number (``"I"``), ``chapters`` the
    notebook stems in reading order."""

    key: str
    caption: str
    file: str
    chapters: tuple[str, ...]


def toc_parts(toc_file: Path | None = None) -> list[Part]:
    """The numbered parts of the table of contents (captions ``Part <roman>: ...``)."""
    from .bookbuild import TOC_FILE, _read_toc, _toc_files

    out = []
    for part in _read_toc(toc_file or TOC_FILE).get("parts", []):
        found = re.match(r"Part ([IVXLC]+)\b", part.get("caption", ""))
        if not found:
            continue
        files = _toc_files(part.get("chapters"))
        out.append(
            Part(
                key=found.group(1),
                caption=part["caption"],
                file=files[0] if files else "",
                chapters=tuple(f.removeprefix("notebooks/") for f in files if f.startswith("notebooks/")),
            )
        )
    return out


# -- build times ---------------------------------------------------------------------------------------------------------
def timings_name(model: str) -> str:
    """The file name (without ``.json``) of a model's build times: a built-in or shipped name as is, a
    checkpoint folder's name, a GGUF file's stem; characters other than letters, digits, ``._-`` become ``-``."""
    text = str(model).rstrip("/\\")
    path = Path(text)
    name = path.stem if path.suffix == ".gguf" else path.name
    return re.sub(r"[^A-Za-z0-9._-]", "-", name) or "model"


def timings_path(model: str, root: Path = REPO_ROOT) -> Path:
    return root / TIMINGS_DIR / f"{timings_name(model)}.json"


def load_timings(path: Path) -> dict | None:
    """A committed build-times file, or None when there is none yet."""
    path = Path(path)
    return _read_json(path) if path.is_file() else None


def part_time(timings: dict | None, chapters: tuple[str, ...] | list[str]) -> str:
    """How long the part's chapters took to build, from a build-times file, in one sentence."""
    if timings is None:
        return "**Build time:** not measured yet."
    from .modelnames import model_label

    measured = {c: timings["chapters"][c]["seconds"] for c in chapters if c in timings["chapters"]}
    if not measured:
        return "**Build time:** not measured yet (the measured build did not include these chapters)."
    each = ", ".join(f"{c.split('_')[0]} {duration(s)}" for c, s in measured.items())
    text = (
        f"**Build time:** {duration(sum(measured.values()))} at {timings['scale']} scale on "
        f"{model_label(timings['model'])} ({each})"
    )
    left = [c for c in chapters if c not in measured]
    if left:
        text += f"; not measured: {', '.join(left)}"
    return text + "."


def timings_sentence(timings: dict | None, source: str) -> str:
    """Where the build times come from: model, scale, machine, commit, total."""
    if timings is None:
        return (
            f"Build times: not measured yet (`{source}` is not in this checkout; `python -m "
            "qwen_anatomy.landing --timings DIR` writes it from a `qwen-anatomy book --out DIR` build)."
        )
    from .modelnames import model_label

    machine = timings.get("machine", {})
    cores = machine.get("cpu_count")
    text = (
        f"Build times were measured in one `qwen-anatomy book` build on {model_label(timings['model'])} at "
        f"{timings['scale']} scale, "
        + (f"on a {cores}-core {machine.get('processor') or 'CPU'} machine, " if cores else "")
        + f"at commit `{timings['git']['commit'][:7]}`: {duration(timings['total_seconds'])} for "
        f"{len(timings['chapters'])} pages, each chapter executed on its own (*Source: `{source}`*)."
    )
    load = [c["loadavg"][0] for c in timings["chapters"].values() if c.get("loadavg")]
    if load and cores and max(load) > cores:
        text += f" The machine was busy during part of it (load average up to {max(load):.1f})."
    return text


def timings_table(timings: dict | None, parts: list[Part]):
    """One row per part: its chapters and their summed build time (minutes); None without timings."""
    if timings is None:
        return None
    import pandas as pd

    rows = []
    for part in parts:
        seconds = [timings["chapters"][c]["seconds"] for c in part.chapters if c in timings["chapters"]]
        rows.append(
            {
                "part": part.caption,
                "chapters": ", ".join(c.split("_")[0] for c in part.chapters),
                "measured": f"{len(seconds)} of {len(part.chapters)}",
                "build time (min)": round(sum(seconds) / 60, 1) if seconds else float("nan"),
            }
        )
    return pd.DataFrame(rows).set_index("part")


def part_markdown(
    part: str,
    timings: dict | None = None,
    root: Path = REPO_ROOT,
    toc_file: Path | None = None,
    exceptions: dict[str, str] | None = None,
) -> str:
    """The computed block under a part's description: its findings, then its build time."""
    chapters = next((p.chapters for p in toc_parts(toc_file) if p.key == part), ())
    lines = [f.markdown() for f in findings(part, root, exceptions)]
    return "\n".join(lines) + "\n\n" + part_time(timings, chapters)


# -- collecting build times from a `qwen-anatomy book` folder --------------------------------------------------------
def _book_record(book: Path) -> dict:
    from .iochecks import read_json

    if not book.is_dir():
        raise UserInputError(
            f"--timings {book} is not a directory: give the folder `qwen-anatomy book --out` wrote"
        )
    record_file = book / "book.json"
    if not record_file.is_file():
        raise UserInputError(
            f"--timings {book} has no book.json: give the folder `qwen-anatomy book --out` wrote"
        )
    record = read_json(record_file, "book record")
    if record.get("status") != "success":
        raise UserInputError(
            f"{record_file} says status {record.get('status')!r}: time a build that finished (status success)"
        )
    return record


def read_book_timings(book_out_dir: str | os.PathLike) -> tuple[dict, dict]:
    """(timings, provenance) of one ``qwen-anatomy book`` build: per chapter its run record's wall time,
    start time and overrides. Every chapter must have succeeded and every record (the build's and each
    chapter's) must name the same commit with a clean tree; UserInputError (one line) otherwise."""
    from .iochecks import read_json
    from .runrecord import utc_now

    book = Path(book_out_dir).expanduser()
    record = _book_record(book)
    chapters, runs, commits = {}, {}, {}
    git = record.get("git") or {}
    commits["book.json"] = (git.get("commit"), git)
    for chapter in record.get("chapters", []):
        stem = chapter["chapter"]
        run_file = book / chapter["run_dir"] / "run.json"
        if not run_file.is_file():
            raise UserInputError(f"{run_file} is missing: the build's record names it for chapter {stem}")
        run = read_json(run_file, "run record")
        if run.get("status") != "success":
            raise UserInputError(f"{run_file} says status {run.get('status')!r}: every chapter must have run")
        absent = [k for k in TIMING_FIELDS if k not in run]
        if absent:
            raise UserInputError(
                f"{run_file} has no {', '.join(absent)}: not a run record of `qwen-anatomy run`"
            )
        run_git = run.get("git") or {}
        commits[stem] = (run_git.get("commit"), run_git)
        entry = {
            "seconds": run["wall_seconds"],
            "start_time": run["start_time"],
            "overrides": run.get("overrides", {}),
        }
        load = run.get("loadavg") or run.get("machine", {}).get("loadavg")
        if load is not None:
            entry["loadavg"] = load
        chapters[stem] = entry
        runs[stem] = {"run_dir": chapter["run_dir"], "machine": run.get("machine", {})}
    if not chapters:
        raise UserInputError(f"{book / 'book.json'} lists no chapter: nothing to time")
    # clean code: a clean tree, or one whose only changes are result files (provenance.only_results_changed)
    dirty = [
        name
        for name, (_, g) in commits.items()
        if g.get("dirty") is not False and not only_results_changed(g)
    ]
    if dirty:
        raise UserInputError(
            f"--timings {book}: {', '.join(dirty)} ran from a dirty tree (or an unknown one); time a build made "
            "from a clean commit"
        )
    distinct = sorted({c for c, _ in commits.values()}, key=str)
    if len(distinct) != 1 or not distinct[0]:
        raise UserInputError(
            f"--timings {book}: the records name {len(distinct)} commits ({', '.join(str(c)[:9] for c in distinct)}); "
            "time one build made from one clean commit"
        )
    machine = record.get("machine", {})
    timings = {
        "model": record["model"],
        "scale": record.get("parameters", {}).get("scale", "book"),
        "git": {k: git[k] for k in ("commit", "dirty", "dirty_files") if k in git},  # the build's own state
        "machine": {k: machine.get(k) for k in ("cpu_count", "processor", "platform")},
        "start_time": record.get("start_time"),
        "total_seconds": round(sum(c["seconds"] for c in chapters.values()), 3),
        "render_seconds": (record.get("render") or {}).get("seconds"),
        "build_wall_seconds": record.get("wall_seconds"),
        "chapters": chapters,
    }
    provenance = {
        "command": f"python -m qwen_anatomy.landing --timings {book}",
        "collected_time": utc_now(),
        "source": str(book.resolve()),
        "git": timings["git"],
        "book_record": record,
        "runs": runs,
    }
    return timings, provenance


def collect_timings(book_out_dir: str | os.PathLike, dest_json: str | os.PathLike | None = None) -> Path:
    """Write the build times of one ``qwen-anatomy book --out DIR`` build to ``dest_json`` (default
    ``data/results/book-timings/<model>.json``) and its provenance to ``<dest>.run_record.json`` beside it
    (the build's record and each chapter's run directory). Both are written atomically and neither may
    exist (an earlier measurement is never overwritten). Returns ``dest_json``."""
    from .iochecks import check_output_file
    from .runrecord import atomic_write_json

    timings, provenance = read_book_timings(book_out_dir)
    dest = Path(dest_json) if dest_json is not None else timings_path(timings["model"])
    if dest.suffix != ".json":
        raise UserInputError(f"--out {dest} must end with .json")
    sidecar = dest.with_name(dest.name.removesuffix(".json") + ".run_record.json")
    check_output_file(dest, "--out", derived=[sidecar])
    atomic_write_json(sidecar, provenance)
    atomic_write_json(dest, timings)
    return dest


def main(argv: list[str] | None = None) -> int:
    """``python -m qwen_anatomy.landing --timings DIR [--out FILE]``: one line per file written; bad input
    is one line and exit code 2."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(
        prog="python -m qwen_anatomy.landing",
        description="Write the build times of a `qwen-anatomy book --out DIR` build for the landing page.",
    )
    parser.add_argument(
        "--timings", required=True, metavar="DIR", help="the folder `qwen-anatomy book` wrote"
    )
    parser.add_argument(
        "--out",
        metavar="FILE",
        help=f"the JSON to write (default {TIMINGS_DIR}/<model>.json in the repository)",
    )
    args = parser.parse_args(argv)
    try:
        dest = collect_timings(args.timings, args.out)
    except UserInputError as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {dest} and {dest.name.removesuffix('.json')}.run_record.json beside it")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
