"""The landing page's computed headlines and build times (qwen_anatomy.landing, notebooks/index.py).

Each part's finding is checked on hand-made inputs (the verdict the chapter's own report function gives
must appear, with the numbers formatted from the input) and on the committed files (every part has a
finding that names existing sources and quotes their numbers). A missing source gives a sentence, never an
exception. Build times are collected from a hand-made `qwen-anatomy book` folder; records from a dirty
tree, from several commits or from a failed chapter are refused. No model is loaded anywhere.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from qwen_anatomy import bookbuild, landing, provenance
from qwen_anatomy.errors import UserInputError
from toc import ROOT, toc_notebooks


def write_json(path: Path, obj) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))
    return path


# -- Part I: forward.json, both layouts -------------------------------------------------------------------
def forward_bench(rows: dict) -> dict:
    return {"environment": {"machine": {"cpu_count": 2}}, "reps": 5, "gen_reps": 3, "models": rows}


def workloads(
    diff: float, forward_ratio: float, gen_ratio: float, same_sdpa: bool = True, scale=None
) -> dict:
    forward = {"max_abs_logit_diff": diff, "ratio_ours_over_sdpa": forward_ratio}
    if scale is not None:
        forward["max_abs_logit"] = scale
    return {
        "workloads": {
            "forward_1x512": forward,
            "generate_128": {
                "ratio_ours_over_sdpa": gen_ratio,
                "same_tokens_as_ours": {
                    "ours": True,
                    "transformers_eager": True,
                    "transformers_sdpa": same_sdpa,
                },
            },
        }
    }


def test_forward_finding_old_layout(tmp_path):
    write_json(
        tmp_path / landing.FORWARD_BENCH,
        forward_bench({"qwen2.5-0.5b-shape": workloads(2.5e-6, 0.8, 1.05, same_sdpa=False)}),
    )
    found = landing.forward_finding(tmp_path)
    assert found.available and found.sources == (landing.FORWARD_BENCH,)
    assert "random-weight model of Qwen2.5-0.5B's exact shape" in found.text
    assert "2.5e-06" in found.text
    assert "greedy generation of 128 tokens differs from transformers (sdpa)" in found.text
    # 0.80 is outside the ±10% band, 1.05 inside
    assert "faster on the 1×512 forward (0.80× its time)" in found.text
    assert "about as fast in cached generation (1.05× its time)" in found.text
    assert "medians of 5 and 3 runs on a 2-core CPU" in found.text


def test_forward_finding_prefers_the_real_qwen2_row_of_the_new_layout(tmp_path):
    rows = {
        "qwen2.5-0.5b-shape": workloads(9e-6, 1.0, 1.0),
        "qwen2.5-coder-0.5b/float32": workloads(4e-5, 1.3, 1.2, scale=20.0),
        "qwen2.5-coder-0.5b/bfloat16": {
            "workloads": {
                "forward_1x512": {
                    "max_abs_logit_diff": 0.5,
                    "max_abs_logit_diff_by_implementation": {
                        "transformers_eager": 0.5,
                        "transformers_sdpa": 0.0,
                    },
                }
            }
        },
    }
    write_json(tmp_path / landing.FORWARD_BENCH, forward_bench(rows))
    text = landing.forward_finding(tmp_path).text
    assert "the real Qwen2.5-Coder-0.5B-Instruct (float32)" in text and "9.0e-06" not in text
    assert "4.0e-05, 2.0e-06 of the largest logit" in text
    assert "gives exactly transformers' tokens" in text
    assert "slower than transformers with sdpa attention: 1.30× its time" in text
    assert "bit for bit" in text


def test_a_missing_source_is_said_plainly(tmp_path):
    found = landing.forward_finding(tmp_path)
    assert not found.available
    assert found.markdown() == (
        "- No result yet: `bench/results/forward.json` is not in this checkout (`python bench/forward.py` "
        "writes it)."
    )
    for part in landing.FINDINGS:  # every part, on an empty checkout: sentences, no exception
        for finding in landing.findings(part, tmp_path):
            assert not finding.available and finding.text.startswith("No result yet"), (part, finding.text)


# -- Part II: the weights benchmark --------------------------------------------------------------------------
def weights_bench(baseline: dict, load=None) -> dict:
    return {
        "layout": "qwen2.5-0.5b",
        "stats_spectra": {"wall_s": 100.0, "peak_rss_mb": 200.0, "rows": 10, "parameters": 1_500_000_000},
        "baseline": baseline,
        "loadavg_start_end": load or [[0.5, 0, 0], [0.7, 0, 0]],
        "environment": {"machine": {"cpu_count": 2}},
    }


def test_weights_finding_against_the_baseline(tmp_path):
    source = landing.WEIGHTS_BENCHES[0]
    write_json(tmp_path / source, weights_bench({"wall_s": 300.0, "peak_rss_mb": 2000.0}))
    text = landing.weights_finding(tmp_path, source).text
    assert "Qwen2.5-0.5B's layout (1.50 B parameters, 10 tensors)" in text
    assert "in 2 min at 200 MB peak memory" in text
    assert "took 5 min and 2,000 MB, 3.0× the time and 10× the memory" in text
    assert "shared" not in text  # load average below the core count


def test_weights_finding_with_a_skipped_baseline_on_a_busy_machine(tmp_path):
    source = landing.WEIGHTS_BENCHES[1]
    bench = weights_bench({"skipped": "needs 30 GB of float32 tensors"}, load=[[6.0, 0, 0], [1.0, 0, 0]])
    write_json(tmp_path / source, bench)
    text = landing.weights_finding(tmp_path, source).text
    assert "the load-everything baseline was not run: it needs 30 GB of float32 tensors." in text
    assert "load average up to 6 on 2 cores" in text


# -- Part III: forward against inverse order -------------------------------------------------------------------
def task_run(root: Path, config: str, task: str, order: str, seed: int, exact_match: float) -> None:
    folder = root / "data/results/tasks" / config / f"seed{seed}"
    evaluation = {"task": task, "n": 10, "order": order, "seed": seed, "exact_match": exact_match,
                  "num_examples": 100}  # fmt: skip
    write_json(folder / "evaluation.json", evaluation)
    write_json(folder / "run_record.json", {"status": "success"})


def test_tasks_finding_uses_chapter_30s_verdicts(tmp_path):
    for seed, (fwd, inv) in enumerate([(0.9, 0.3), (0.95, 0.2)]):
        task_run(tmp_path, "relu", "relu", "forward", seed, fwd)
        task_run(tmp_path, "relu_inverse", "relu", "inverse", seed, inv)
    for seed, (fwd, inv) in enumerate([(0.5, 0.45), (0.5, 0.5)]):
        task_run(tmp_path, "square", "square", "forward", seed, fwd)
        task_run(tmp_path, "square_inverse", "square", "inverse", seed, inv)
    found = landing.tasks_finding(tmp_path, "data/results/tasks")
    assert "(8 runs, 100 test samples each)" in found.text
    assert found.details == [
        "ReLU (n = 10): 0.925 forward against 0.250 inverse; the forward order is ahead in every seed, by "
        "more than 0.05.",
        "Square (n = 10): 0.500 forward against 0.475 inverse; the orders are about equally hard.",
    ]
    assert len(found.records) == 8  # every run's record is checked for provenance
    assert found.markdown().splitlines()[1] == "  - " + found.details[0]


# -- Part IV: importance against plasticity ----------------------------------------------------------------------
def test_heads_finding_follows_the_saved_statistics(tmp_path):
    source = ROOT / "data/results/heads/finetune-square"
    copy = tmp_path / "heads"
    shutil.copytree(source, copy, ignore=shutil.ignore_patterns("model"))
    for stats_file in copy.glob("seed-*/stats.json"):
        stats = json.loads(stats_file.read_text())
        pair = next(p for p in stats["pairs"] if (p["x"], p["y"]) == ("I_pre", "Urel"))
        pair.update(rho=0.9, p_perm=0.001, rho_within_layer_demeaned=0.8)
        stats["n_heads"] = 64
        stats_file.write_text(json.dumps(stats))
    text = landing.heads_finding(tmp_path, "heads").text
    assert "with 64 attention heads" in text
    assert "heads that matter more before fine-tuning moved more (ρ = +0.90, every seed's permutation" in text
    assert "Within layers the same pair gives ρ = +0.80: depth is not what carries it." in text
    assert "needs |ρ|" not in text  # 64 heads: no small-N warning


def test_heads_finding_warns_about_few_heads_on_the_committed_run():
    text = landing.heads_finding().text
    n_heads = json.loads((ROOT / "data/results/heads/finetune-square/seed-0/stats.json").read_text())[
        "n_heads"
    ]
    assert f"with {n_heads} attention heads" in text
    assert (f"With only N = {n_heads} heads a correlation needs" in text) == (n_heads < 40)


# -- Part V: CausalQwen against its baseline -------------------------------------------------------------------------
def _study_run(folder, arm: str, seed: int, locs: list[float]) -> None:
    """One finished study run: two copy targets (10, 20; both trivial references have MAE 5) predicted
    at ``locs``, and four noisy readings predicted exactly with scale 1."""
    config = {"model": "toy", "steps": 12, "batch_size": 4, "arm": arm, "seed": seed}
    numbers = {
        "set": ["copy", "copy", *["noisy"] * 4], "family": ["copy_near", "copy_far", *["noisy"] * 4],
        "role": ["copy", "copy", *["noisy"] * 4], "value": [10.0, 20.0, 1.0, 2.0, 3.0, 4.0],
        "mean": [15.0] * 6, "copy_last": [10.0, 10.0, 0.0, 0.0, 0.0, 0.0],
        "oracle": [None, None, 1.0, 2.0, 3.0, 4.0], "oracle_sigma": [None, None, 1.0, 1.0, 1.0, 1.0],
        "loc": [*locs, 1.0, 2.0, 3.0, 4.0], "scale": [1.0] * 6, "dist": ["cauchy"] * 6, "detected": [True] * 6,
    }  # fmt: skip
    write_json(folder / "run_record.json", {"status": "success", "parameters": {"config": config}})
    write_json(folder / "evaluation.json", {"numbers": numbers, "sets": {}})
    write_json(folder / "log.json", [])


def test_causal_finding_reads_the_study(tmp_path):
    study = tmp_path / "data/results/causal/study"
    for seed in range(3):
        _study_run(study / "CausalQwen" / f"seed{seed}", "CausalQwen", seed, [10.0 + seed, 20.0])
        _study_run(study / "baseline" / f"seed{seed}", "baseline", seed, [15.0, 15.0])
    found = landing.causal_finding(tmp_path, "data/results/causal/study")
    assert "12 steps of batch 4 per run" in found.text
    assert "CausalQwen beats the best trivial reference on 1 of 1 predictable roles (copy)" in found.text
    assert "baseline beats the best trivial reference on 0 of 1" in found.text
    # every noisy reading predicted exactly: the central intervals cover it at every level
    assert "Mean calibration error of the predicted laws on noisy readings" in found.text
    assert found.sources == ("data/results/causal/study",)
    assert len(found.records) == 6 and all(r.endswith("run_record.json") for r in found.records)
    assert not landing.causal_finding(tmp_path, "data/results/causal/none").available


# -- Part VI: the committed grid -----------------------------------------------------------------------------------------
def test_experiments_finding_pairs_over_seeds(tmp_path):
    ratios, order2, transformer = [0.5, 0.52, 0.48], [100.0, 120.0, 80.0], 10.0
    for seed in range(3):
        for order, ppl in ((2, order2[seed]), (3, order2[seed] * ratios[seed])):
            run = tmp_path / "data/results/90_experiments/01_language_models" / f"run-{seed}-{order}"
            params = {"ngram_order": order, "seed": seed, "model": "smollm2-135m"}
            write_json(
                run / "run.json",
                {"status": "success", "notebook": "01_language_models", "parameters": params},
            )
            write_json(run / "metrics.json", {"ngram_ppl": ppl, "transformer_ppl": transformer})
    text = landing.experiments_finding(tmp_path, "data/results/90_experiments").text
    ratio = math.exp(sum(map(math.log, ratios)) / 3)
    assert f"going from n-gram order 2 to 3 multiplies held-out perplexity by {ratio:.3f}" in text
    assert "over 3 paired seeds); the higher order is reliably better" in text
    best = math.exp(sum(math.log(p * r) for p, r in zip(order2, ratios, strict=True)) / 3)
    assert (
        f"SmolLM2-135M-Instruct's perplexity on the same held-out text is {best / transformer:.0f} times"
        in text
    )


# -- provenance: provisional results and the issue regenerating them ----------------------------------------------------
def git(repo: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-c", "user.email=t@example.org", "-c", "user.name=t", *args],
        cwd=repo, check=True, capture_output=True, text=True,
    )  # fmt: skip
    return done.stdout.strip()


@pytest.fixture
def repo(tmp_path):
    (tmp_path / "lib/qwen_anatomy/tasks").mkdir(parents=True)
    (tmp_path / "lib/qwen_anatomy/tasks/x.py").write_text("x = 1\n")
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", ".")
    git(tmp_path, "commit", "-q", "-m", "first")
    return tmp_path


def test_provenance_note(repo, tmp_path_factory):
    head = git(repo, "rev-parse", "HEAD")
    write_json(repo / "data/results/tasks/a/run_record.json", {"git": {"commit": head, "dirty": False}})
    write_json(repo / "data/results/tasks/b/run_record.json", {"git": {"commit": head, "dirty": True}})
    clean, dirty = "data/results/tasks/a/run_record.json", "data/results/tasks/b/run_record.json"
    assert landing.provenance_note([clean], repo, exceptions={}) is None
    listed = {"data/results/tasks/*": "issue 16 (length sweep) regenerates every task run"}
    assert landing.provenance_note([clean], repo, exceptions=listed) == "being regenerated (issue 16)"
    note = landing.provenance_note([clean, dirty], repo, exceptions={})
    assert note == (
        "provisional: 1 of its 2 run records break the provenance rule of `data/README.md` (made from "
        f"uncommitted changes at commit {head[:7]})"
    )
    assert landing.provenance_note([dirty], repo, exceptions=listed).endswith(
        "(made from uncommitted changes at commit " + head[:7] + "); being regenerated (issue 16)"
    )
    plain = tmp_path_factory.mktemp("no-git")  # no history to check against: nothing is said
    shutil.copytree(repo / "data", plain / "data")
    assert landing.provenance_note([dirty], plain, exceptions=listed) is None
    # a shallow clone cannot tell whether a commit is in the history: nothing is said either
    (repo / "lib/qwen_anatomy/tasks/x.py").write_text("x = 2\n")
    git(repo, "commit", "-q", "-am", "second")
    shallow = tmp_path_factory.mktemp("shallow") / "clone"
    git(repo, "clone", "-q", "--depth", "1", f"file://{repo}", str(shallow))
    assert git(shallow, "rev-parse", "--is-shallow-repository") == "true"
    shutil.copytree(repo / "data", shallow / "data")
    assert landing.provenance_note([dirty], shallow, exceptions=listed) is None
    assert landing.provenance_note([dirty], repo, exceptions=listed) is not None


def test_known_exceptions_are_the_provenance_list_and_name_their_issue():
    from qwen_anatomy.provenance import KNOWN_EXCEPTIONS

    assert landing.known_exceptions() == KNOWN_EXCEPTIONS
    assert (
        landing.regenerating_issue("data/results/heads/finetune-square/run_record.json", KNOWN_EXCEPTIONS)
        == 15
    )
    assert landing.regenerating_issue("bench/results/heads.json", KNOWN_EXCEPTIONS) is None
    assert landing.regenerating_issue("bench/results/weights_qwen2.5-0.5b.json", KNOWN_EXCEPTIONS) is None
    assert landing.regenerating_issue("bench/results/forward.json", KNOWN_EXCEPTIONS) is None
    hand = {"a/*": "issue 3 redoes it", "b": "no issue"}
    assert landing.regenerating_issue("a/x.json", hand) == 3
    assert landing.regenerating_issue("b", hand) is None


# -- the committed files --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def committed():
    return {part: landing.findings(part) for part in landing.FINDINGS}


def test_every_part_has_a_finding_from_existing_files(committed):
    for part, found in committed.items():
        assert found, part
        for finding in found:
            assert finding.available, (part, finding.text)
            for source in finding.sources:
                assert (ROOT / source.rstrip("/")).exists(), (part, source)
            assert "*Source: " in finding.markdown()


def test_committed_findings_quote_their_files(committed):
    forward = json.loads((ROOT / landing.FORWARD_BENCH).read_text())["models"]
    row = next(forward[k] for k in landing.FORWARD_ROWS if k in forward)["workloads"]["forward_1x512"]
    assert f"{row['max_abs_logit_diff']:.1e}" in committed["I"][0].text
    for finding, source in zip(committed["II"], landing.WEIGHTS_BENCHES, strict=False):
        bench = json.loads((ROOT / source).read_text())
        assert f"{bench['stats_spectra']['peak_rss_mb']:,.0f} MB peak memory" in finding.text
    runs = json.loads((ROOT / "data/results/tasks/summary.json").read_text())["runs"]
    forward_relu = [r["exact_match"] for r in runs if r["task"] == "relu" and r["order"] == "forward"]
    assert (
        f"ReLU (n = 10): {sum(forward_relu) / len(forward_relu):.3f} forward"
        in committed["III"][0].details[0]
    )


def test_provisional_exactly_when_a_record_breaks_the_rule(committed):
    for part, found in committed.items():
        for finding in found:
            records = finding.sources if finding.records is None else finding.records
            broken = any(provenance.check_record(r, json.loads((ROOT / r).read_text())) for r in records)
            assert (finding.provisional or "").startswith("provisional") == broken, (
                part,
                finding.provisional,
            )


def test_the_page_loads_no_model():
    code = (
        "import sys; from qwen_anatomy import landing\n"
        "[landing.part_markdown(k) for k in landing.FINDINGS]\n"
        "print(sorted(m for m in ('transformers', 'safetensors.torch') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


# -- build times ------------------------------------------------------------------------------------------------------------
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def book_folder(root: Path, seconds: dict[str, float], dirty: dict | None = None, commits: dict | None = None,
                status: dict | None = None) -> Path:  # fmt: skip
    book = root / "book"
    chapters = []
    for stem, wall in seconds.items():
        run_dir = f"runs/{stem}/20260101T000000Z-abc"
        git_block = {"commit": (commits or {}).get(stem, COMMIT), "dirty": (dirty or {}).get(stem, False)}
        write_json(book / run_dir / "run.json", {
            "status": (status or {}).get(stem, "success"), "wall_seconds": wall, "git": git_block,
            "start_time": "2026-01-01T00:00:00Z", "overrides": {"model": "qwen2.5-coder-0.5b"},
            "machine": {"cpu_count": 2},
        })  # fmt: skip
        chapters.append({"chapter": stem, "status": "success", "run_dir": run_dir})
    write_json(book / "book.json", {
        "status": "success", "model": "qwen2.5-coder-0.5b", "parameters": {"scale": "book"},
        "git": {"commit": COMMIT, "dirty": False}, "machine": {"cpu_count": 2, "processor": "x86_64"},
        "chapters": chapters, "render": {"seconds": 5.0}, "wall_seconds": 999.0,
    })  # fmt: skip
    return book


SECONDS = {"index": 4.0, "00_setup": 6.0, "01_language_models": 170.0, "10_weights_summary": 150.0}


def test_collect_timings_writes_the_times_and_their_provenance(tmp_path):
    book = book_folder(tmp_path, SECONDS)
    dest = landing.collect_timings(book, tmp_path / "out" / "m.json")
    timings = json.loads(dest.read_text())
    assert {c: v["seconds"] for c, v in timings["chapters"].items()} == SECONDS
    assert timings["total_seconds"] == pytest.approx(sum(SECONDS.values()))
    assert timings["git"] == {"commit": COMMIT, "dirty": False} and timings["scale"] == "book"
    assert timings["machine"]["cpu_count"] == 2 and timings["model"] == "qwen2.5-coder-0.5b"
    sidecar = json.loads((tmp_path / "out" / "m.run_record.json").read_text())
    assert provenance.find_git_block(sidecar) == {"commit": COMMIT, "dirty": False}
    assert sidecar["runs"]["00_setup"]["run_dir"] == "runs/00_setup/20260101T000000Z-abc"
    assert sidecar["book_record"]["wall_seconds"] == 999.0
    with pytest.raises(UserInputError, match="already exists"):  # never overwritten
        landing.collect_timings(book, dest)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"dirty": {"01_language_models": True}}, "01_language_models ran from a dirty tree"),
        ({"commits": {"10_weights_summary": "f" * 40}}, "the records name 2 commits"),
        ({"status": {"00_setup": "failed"}}, "says status 'failed'"),
    ],
)
def test_collect_timings_refuses_mixed_or_dirty_records(tmp_path, change, message):
    book = book_folder(tmp_path, SECONDS, **change)
    with pytest.raises(UserInputError, match=message):
        landing.collect_timings(book, tmp_path / "m.json")
    assert not (tmp_path / "m.json").exists() and not (tmp_path / "m.run_record.json").exists()


def test_timings_command_line(tmp_path, capsys):
    assert landing.main(["--timings", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not a directory" in err[0]
    (tmp_path / "empty").mkdir()
    assert landing.main(["--timings", str(tmp_path / "empty")]) == 2
    assert "has no book.json" in capsys.readouterr().err
    book = book_folder(tmp_path, SECONDS)
    assert landing.main(["--timings", str(book), "--out", str(tmp_path / "t.json")]) == 0
    assert "wrote" in capsys.readouterr().out and (tmp_path / "t.json").is_file()


def test_timings_file_names_and_the_provenance_walker():
    assert (
        landing.timings_path("qwen2.5-coder-0.5b")
        == ROOT / "data/results/book-timings/qwen2.5-coder-0.5b.json"
    )
    assert landing.timings_name("/models/my model.gguf") == "my-model"
    assert landing.timings_name("/ckpt/Qwen2.5-0.5B/") == "Qwen2.5-0.5B"
    sidecar = "data/results/book-timings/qwen2.5-coder-0.5b.run_record.json"
    assert provenance.is_record(sidecar)
    assert provenance.producer_paths(sidecar) == (
        "lib/qwen_anatomy/bookbuild.py",
        "lib/qwen_anatomy/landing.py",
    )


def test_build_time_sentences(tmp_path):
    book = book_folder(tmp_path, SECONDS)
    timings = json.loads(landing.collect_timings(book, tmp_path / "m.json").read_text())
    part1 = ("00_setup", "01_language_models", "02_qwen2_from_scratch")
    assert landing.part_time(timings, part1) == (
        "**Build time:** 3 min at book scale on Qwen2.5-Coder-0.5B-Instruct (00 6 s, 01 3 min); not measured: "
        "02_qwen2_from_scratch."
    )
    assert landing.part_time(None, part1) == "**Build time:** not measured yet."
    assert "did not include these chapters" in landing.part_time(timings, ("90_experiments",))
    sentence = landing.timings_sentence(timings, "data/results/book-timings/m.json")
    assert f"at commit `{COMMIT[:7]}`: 6 min for 4 pages" in sentence  # 330 s
    assert "not measured yet" in landing.timings_sentence(None, "x.json")
    table = landing.timings_table(timings, landing.toc_parts())
    assert table.loc["Part I: Qwen2 from scratch", "measured"] == "2 of 3"
    assert table.loc["Part II: Weights anatomy", "build time (min)"] == 2.5
    assert math.isnan(table.loc["Part III: Synthetic step-by-step tasks", "build time (min)"])
    assert landing.timings_table(None, landing.toc_parts()) is None
    block = landing.part_markdown("I", timings)
    assert block.endswith(landing.part_time(timings, part1)) and block.startswith("- ")


def test_duration():
    assert [landing.duration(s) for s in (45, 600, 6000)] == ["45 s", "10 min", "1 h 40 min"]


# -- the table of contents and the book command ------------------------------------------------------------------------------
def test_parts_follow_the_table_of_contents():
    parts = landing.toc_parts()
    assert [p.key for p in parts] == list(landing.FINDINGS)
    listed = [c for p in parts for c in p.chapters]
    assert ["index", *listed] == [p.stem for p in toc_notebooks()]


def test_the_landing_page_is_the_root_and_is_always_built():
    assert bookbuild.toc_root() == "index"
    assert bookbuild.toc_chapters()[0] == "index"
    assert bookbuild.with_root(["10_weights_summary"]) == ["index", "10_weights_summary"]
    assert bookbuild.with_root(["index", "30_synthetic_tasks"]) == ["index", "30_synthetic_tasks"]
    plan = bookbuild.plan_book("smollm2-135m", ["index"])[0]
    assert not plan.takes_model and plan.overrides == {}
    note = bookbuild.chapter_note(plan, "smollm2-135m", "book")
    assert "committed with the book" in note and "SmolLM2-135M-Instruct" in note
