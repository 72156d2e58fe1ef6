"""The bad-input promise for output paths and the tasks / train / causal / run / results commands.

Bad input gets one line on stderr, ``qwen-anatomy <command>: error: <message>`` naming the input and
the fix, exit code 2, no traceback; it is refused before any heavy work and before anything is
written, and an earlier output is never overwritten. Each case of the table below builds its inputs
in a fresh folder, snapshots that folder (every path and every file's bytes), runs the command in
process and checks the promise, then checks that the folder is byte for byte unchanged.

Read-only locations: the tests run as root, for whom ``os.access`` and chmod mean little. The
cases use a parent that is a regular file, and ``/sys`` (sysfs refuses new files even to root;
those cases are skipped where it does not).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from qwen_anatomy.cli import main
from qwen_anatomy.config import tiny_config
from qwen_anatomy.loading import save_checkpoint
from qwen_anatomy.model import Qwen2ForCausalLM
from qwen_anatomy.tasks.vocab import VOCAB_SIZE
from qwen_anatomy.weights import synthetic

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = str(ROOT / "tests" / "fixtures" / "exp_tiny.py")
RELU_YAML = str(ROOT / "configs" / "relu.yaml")
INDEX_YAML = str(ROOT / "configs" / "index.yaml")
TASK_LINES = "-8 5 3 -1 # 0 5 8 7\n1 2 3 4 # 1 3 6 10\n"
NOT_UTF8 = b"1 2 \xff\xfe 3 # 1 2 3\n"
# overrides small enough that a mistaken training run would finish, not hang, the test
TINY = ["task.n=4", "task.train_samples=32", "task.test_samples=8", "training.max_steps=3"]


def _sys_refuses_files() -> bool:
    try:
        fd, tmp = tempfile.mkstemp(dir="/sys")
    except OSError:
        return True
    os.close(fd)
    os.unlink(tmp)
    return False


READ_ONLY = Path("/sys/qwen-anatomy-test")  # does not exist, and cannot be created
read_only = pytest.mark.skipif(not _sys_refuses_files(), reason="/sys accepts new files here")


@pytest.fixture(scope="module")
def fx(tmp_path_factory):
    """Shared, read-only inputs: a tiny task checkpoint, a tiny safetensors checkpoint, task data."""
    root = tmp_path_factory.mktemp("shared")
    cfg = tiny_config(
        vocab_size=VOCAB_SIZE, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2
    )
    task_model = save_checkpoint(Qwen2ForCausalLM(cfg).init_weights(0, std=0.2), root / "task-model")
    weights = synthetic.write_random_checkpoint(root / "weights", tiny_config(), dtype="F32", seed=0)
    data = root / "data.test"
    data.write_text(TASK_LINES)
    return {"model": str(task_model), "weights": str(weights), "data": str(data)}


def _write(path: Path, content: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)


def at(*entries):
    """A setup: ``at(("a/b.txt", "text"), ("dir/", None))`` writes files and makes folders."""

    def setup(tmp: Path) -> None:
        for rel, content in entries:
            if rel.endswith("/"):
                (tmp / rel).mkdir(parents=True)
            else:
                _write(tmp / rel, content)

    return setup


def _record(status: str, **extra) -> str:
    return json.dumps({"status": status, "pid": 1, "machine": {"hostname": "elsewhere"}, **extra})


def _heads(meta, weights: bytes | None = b"x"):
    """A setup: a heads directory ``heads/`` with this causal_config.json (and heads.safetensors)."""
    entries = [("heads/causal_config.json", meta if isinstance(meta, str) else json.dumps(meta))]
    if weights is not None:
        entries.append(("heads/heads.safetensors", weights))
    return at(*entries)


HEADS_META = {"kind": "causal", "model": "causal-tiny-lm", "num_token_id": 5, "config": {}}


def _misfit_heads(tmp: Path) -> None:
    """Heads whose tensor has the wrong shape for causal-tiny-lm."""
    from safetensors.torch import save_file

    _heads(HEADS_META, None)(tmp)
    save_file({"abduction_loc.weight": torch.zeros(3, 3)}, str(tmp / "heads" / "heads.safetensors"))


def _live_run(tmp: Path) -> None:
    record = {"status": "running", "pid": os.getpid(), "machine": {"hostname": os.uname().nodename}}
    _write(tmp / "o" / "run_record.json", json.dumps(record))


def _sweep_with_a_3_step_run(tmp: Path) -> None:
    """out/relu/seed0 holding a finished run trained with training.max_steps=3."""
    from qwen_anatomy.tasks.train import load_config

    config = load_config(RELU_YAML, [*TINY, "training.max_steps=3"])
    config["training"]["seed"] = 0
    folder = tmp / "out" / "relu" / "seed0"
    _write(folder / "run_record.json", _record("success", parameters={"config": config}))
    _write(folder / "evaluation.json", json.dumps({"exact_match": 0.5, "steps": 3, "train_seconds": 1.0}))


AFILE = at(("afile", "a regular file, used below as if it were a folder\n"))
SETS = " ".join(f"--set {s}" for s in TINY)
TRAIN = f"train --config {{relu}} {SETS} --set task.data_root={{t}}/data"
TRAIN_C = f"train --config {{t}}/c.yaml {SETS} --set task.data_root={{t}}/data"
SHAPE_BAD = "1 2 3 # 1 3\n2 2 2 # 2 4\n"  # 3 inputs, 2 outputs: once scored as n = 2


@dataclass
class Case:
    argv: str  # split on whitespace, then each word formatted with {t}, {model}, {weights}, ...
    words: list  # must appear on the error line (formatted the same way)
    setup: Callable | None = None


def case(name, argv, words, setup=None, marks=()):
    return pytest.param(Case(argv, words, setup), id=name, marks=marks)


CASES = [
    # ---- output under a regular file, in a read-only place, or of the wrong kind -----------------
    case(
        "params-out-under-file", "params {weights} --out {t}/afile/t.csv", ["{t}/afile", "is a file"], AFILE
    ),
    case(
        "params-out-read-only", "params {weights} --out {ro}/t.csv", ["{ro}", "cannot write"], marks=read_only
    ),
    case(
        "params-out-is-directory",
        "params {weights} --out {t}/d.csv",
        ["d.csv is a directory"],
        at(("d.csv/", None)),
    ),
    case("params-out-bad-extension", "params {weights} --out {t}/t.xlsx", ["t.xlsx", "'.xlsx'"]),
    case(
        "params-record-exists",
        "params {weights} --out {t}/t.csv",
        ["t.csv.run.json", "already exists"],
        at(("t.csv.run.json", _record("success"))),
    ),
    case(
        "params-resume-record-damaged",
        "params {weights} --out {t}/t.csv",
        ["t.csv.run.json", "damaged"],
        at(("t.csv.partial.jsonl", '{"name": "x"}\n'), ("t.csv.run.json", "{oops")),
    ),
    case(
        "heads-out-under-file",
        "heads {model} --data {data} --out {t}/afile/o",
        ["{t}/afile", "is a file"],
        AFILE,
    ),
    case(
        "heads-out-read-only",
        "heads {model} --data {data} --out {ro}/o",
        ["{ro}", "cannot write"],
        marks=read_only,
    ),
    case("heads-out-is-file", "heads {model} --data {data} --out {t}/afile", ["afile is a file"], AFILE),
    case(
        "heads-out-run-in-progress",
        "heads {model} --data {data} --out {t}/o",
        ["{t}/o", "still in progress"],
        _live_run,
    ),
    case(
        "embeddings-out-under-file",
        "embeddings {weights} --out {t}/afile/rep",
        ["{t}/afile", "is a file"],
        AFILE,
    ),
    case(
        "embeddings-out-read-only",
        "embeddings {weights} --out {ro}/rep",
        ["{ro}", "cannot write"],
        marks=read_only,
    ),
    case("embeddings-seed-negative", "embeddings {weights} --out {t}/rep --seed -1", ["--seed", "-1"]),
    case("embeddings-k-too-small", "embeddings {weights} --out {t}/rep --k 1,4", ["--k '1,4'", "K=1"]),
    case(
        "download-out-under-file",
        "download Qwen/Qwen2.5-0.5B --out {t}/afile/q",
        ["{t}/afile", "is a file"],
        AFILE,
    ),
    case(
        "sweep-root-read-only",
        "tasks sweep --configs {relu} --seeds 0 --out-root {ro}",
        ["{ro}", "cannot write"],
        marks=read_only,
    ),
    case(
        "generate-root-under-file",
        "tasks generate relu --sequence-lengths 3 --output-root {t}/afile/r",
        ["{t}/afile", "is a file"],
        AFILE,
    ),
    case(
        "generate-root-read-only",
        "tasks generate relu --sequence-lengths 3 --output-root {ro}",
        ["{ro}", "cannot write"],
        marks=read_only,
    ),
    case(
        "generate-root-is-file",
        "tasks generate relu --sequence-lengths 3 --output-root {t}/afile",
        ["afile is a file"],
        AFILE,
    ),
    case(
        "generate-target-is-directory",
        "tasks generate relu --sequence-lengths 3 --output-root {t}/r --overwrite",
        ["data.train is a directory"],
        at(("r/relu/n=3/data.train/", None)),
    ),
    case("train-out-under-file", TRAIN + " --out {t}/afile/run", ["{t}/afile", "is a file"], AFILE),
    case("train-out-read-only", TRAIN + " --out {ro}/run", ["{ro}", "cannot write"], marks=read_only),
    case(
        "train-out-record-damaged",
        TRAIN + " --out {t}/run",
        ["run_record.json", "damaged"],
        at(("run/run_record.json", "not json at all")),
    ),
    case(
        "train-data-root-under-file",
        f"train --config {{relu}} {SETS} --set task.data_root={{t}}/afile/data --out {{t}}/run",
        ["{t}/afile", "is a file"],
        AFILE,
    ),
    case(
        "suite-root-under-file",
        "causal suite --suite basic --steps 1 --out-root {t}/afile/res",
        ["{t}/afile", "is a file"],
        AFILE,
    ),
    case(
        "suite-root-read-only",
        "causal suite --suite basic --steps 1 --out-root {ro}",
        ["{ro}", "cannot write"],
        marks=read_only,
    ),
    case(
        "suite-unknown-model",
        "causal suite --suite basic --steps 1 --model no-such-model --out-root {t}/res",
        ["no-such-model"],
    ),
    case("suite-unknown-setting", "causal suite --suite basic --set wobble=1 --out-root {t}/res", ["wobble"]),
    case(
        "sweep-root-under-file",
        "tasks sweep --configs {relu} --seeds 0 --out-root {t}/afile/out",
        ["{t}/afile", "is a file"],
        AFILE,
    ),
    case("run-out-under-file", "run {nb} --out {t}/afile/results", ["{t}/afile", "is a file"], AFILE),
    case("run-out-read-only", "run {nb} --out {ro}", ["{ro}", "cannot write"], marks=read_only),
    case("causal-train-out-is-file", "causal train --steps 1 --out {t}/afile", ["afile is a file"], AFILE),
    case(
        "causal-train-out-under-file",
        "causal train --steps 1 --out {t}/afile/heads",
        ["{t}/afile", "is a file"],
        AFILE,
    ),
    case(
        "causal-train-finished-run",
        "causal train --steps 1 --out {t}/heads",
        ["{t}/heads", "already exists"],
        at(("heads/run_record.json", _record("success")), ("heads/heads.safetensors", b"w")),
    ),
    case(
        "pretrain-out-under-file",
        "causal pretrain --steps 1 --out {t}/afile/lm",
        ["{t}/afile", "is a file"],
        AFILE,
    ),
    case(
        "eval-out-is-directory",
        "causal eval --heads {t} --out {t}/ev",
        ["ev is a directory"],
        at(("ev/", None)),
    ),
    # ---- derived file names: an earlier run's record or metrics are never overwritten ------------
    case(
        "eval-record-of-earlier-json",
        "causal eval --heads {t} --out {t}/ev/m.txt",
        ["m.run_record.json", "already exists"],
        at(("ev/m.json", "{}\n"), ("ev/m.run_record.json", _record("success"))),
    ),
    case(
        "eval-metrics-named-like-record",
        "causal eval --heads {t} --out {t}/ev/x.json",
        ["x.run_record.json", "already exists"],
        at(("ev/x.run_record.json", '{"qa": {}}\n'), ("ev/x.run_record.run_record.json", _record("success"))),
    ),
    # ---- task data: a line of another shape is refused, never scored as another n -----------------
    case(
        "evaluate-3-inputs-2-outputs",
        "evaluate {model} --data {t}/d.test",
        ["d.test:1", "3 inputs but 2 outputs"],
        at(("d.test", SHAPE_BAD)),
    ),
    case(
        "heads-3-inputs-2-outputs",
        "heads {model} --data {t}/d.test --out {t}/o",
        ["d.test:1", "3 inputs but 2 outputs"],
        at(("d.test", SHAPE_BAD)),
    ),
    case(
        "evaluate-mixed-lengths",
        "evaluate {model} --data {t}/d.test",
        ["d.test:2", "sequence length 3"],
        at(("d.test", "1 2 # 1 3\n1 2 3 # 1 3 6\n")),
    ),
    case(
        "evaluate-no-separator",
        "tasks evaluate {model} --data {t}/d.test",
        ["d.test:1", "separator"],
        at(("d.test", "1 2 3 1 3\n")),
    ),
    case(
        "train-data-wrong-shape",
        TRAIN + " --out {t}/run",
        ["data.train:1", "4 inputs but 2 outputs"],
        at(("data/relu/n=4/data.train", "1 2 3 4 # 1 3\n"), ("data/relu/n=4/data.test", TASK_LINES)),
    ),
    # ---- settings the recurrence or the task vocabulary cannot hold ---------------------------------
    case(
        "generate-index-m-too-large",
        "tasks generate index --sequence-lengths 5 --m 9 --output-root {t}/r",
        ["--m 9", "n - 1 = 4"],
    ),
    case(
        "generate-values-outside-vocabulary",
        "tasks generate relu --sequence-lengths 5 --value-min -1000 --value-max 1000 --output-root {t}/r",
        ["-1000", "vocabulary"],
    ),
    case(
        "generate-outputs-outside-vocabulary",
        "tasks generate relu --sequence-lengths 50 --output-root {t}/r",
        ["n = 50", "vocabulary"],
    ),
    case(
        "generate-every-length-checked-first",
        "tasks generate relu --sequence-lengths 5 10 --train-samples 4 --test-samples 2 --output-root {t}/r --quiet",
        ["n=10", "data.train already exists"],
        at(("r/relu/n=10/data.train", "earlier\n")),
    ),
    case(
        "generate-zero-samples",
        "tasks generate relu --sequence-lengths 3 --train-samples 0 --output-root {t}/r",
        ["--train-samples", "0"],
    ),
    case(
        "train-index-m-too-large",
        f"train --config {{index}} {SETS} --set task.n=13 --set task.m=20 --set task.data_root={{t}}/data --out {{t}}/run",
        ["--m 20", "sequence length 13"],
    ),
    case(
        "train-warmup-not-a-number",
        TRAIN + " --set training.warmup_ratio=abc --out {t}/run",
        ["training.warmup_ratio 'abc'"],
    ),
    case("train-negative-seed", TRAIN + " --set training.seed=-1 --out {t}/run", ["training.seed -1"]),
    case(
        "train-unknown-scheduler",
        TRAIN + " --set training.lr_scheduler_type=wobbly --out {t}/run",
        ["'wobbly'"],
    ),
    case(
        "train-value-min-not-an-integer",
        TRAIN + " --set task.value_min=low --out {t}/run",
        ["'low'", "integer"],
    ),
    # ---- tasks sweep: reuse only a run of the very same config -------------------------------------
    case(
        "sweep-other-config-not-reused",
        f"tasks sweep --configs {{relu}} --seeds 0 {SETS} --set training.max_steps=7 --out-root {{t}}/out",
        ["seed0", "training.max_steps 3 -> 7"],
        _sweep_with_a_3_step_run,
    ),
    case(
        "sweep-record-damaged",
        "tasks sweep --configs {relu} --seeds 0 --out-root {t}/out",
        ["seed0/run_record.json", "damaged"],
        at(("out/relu/seed0/run_record.json", "{")),
    ),
    case(
        "sweep-config-is-directory",
        "tasks sweep --configs {t}/relu.yaml --out-root {t}/out",
        ["relu.yaml is a directory"],
        at(("relu.yaml/", None)),
    ),
    case(
        "sweep-two-configs-one-name",
        "tasks sweep --configs {relu} {t}/a/relu.yaml --out-root {t}/out",
        ["share the name 'relu'"],
        at(("a/relu.yaml", "task:\n  n: 4\n")),
    ),
    # ---- files that are not UTF-8, are empty, or are directories ----------------------------------
    case(
        "evaluate-data-not-utf8",
        "evaluate {model} --data {t}/d.test",
        ["d.test", "not UTF-8"],
        at(("d.test", NOT_UTF8)),
    ),
    case(
        "evaluate-data-empty",
        "evaluate {model} --data {t}/d.test",
        ["d.test", "holds no samples"],
        at(("d.test", "\n\n")),
    ),
    case(
        "evaluate-data-is-directory",
        "evaluate {model} --data {t}/d.test",
        ["d.test is a directory"],
        at(("d.test/", None)),
    ),
    case(
        "heads-data-not-utf8",
        "heads {model} --data {t}/d.txt --out {t}/o",
        ["d.txt", "not UTF-8"],
        at(("d.txt", NOT_UTF8)),
    ),
    case(
        "heads-data-empty",
        "heads {model} --data {t}/d.txt --out {t}/o",
        ["d.txt", "is empty"],
        at(("d.txt", " \n")),
    ),
    case(
        "heads-data-is-directory",
        "heads {model} --data {t}/d.txt --out {t}/o",
        ["d.txt is a directory"],
        at(("d.txt/", None)),
    ),
    case(
        "train-data-not-utf8",
        TRAIN + " --out {t}/run",
        ["data.train", "not UTF-8"],
        at(("data/relu/n=4/data.train", NOT_UTF8), ("data/relu/n=4/data.test", TASK_LINES)),
    ),
    case(
        "train-config-not-utf8",
        TRAIN_C + " --out {t}/run",
        ["c.yaml", "not UTF-8"],
        at(("c.yaml", b"task:\n  name: \xffrelu\n")),
    ),
    case(
        "train-config-empty",
        TRAIN_C + " --out {t}/run",
        ["c.yaml", "is empty"],
        at(("c.yaml", "# nothing\n")),
    ),
    case(
        "train-config-bad-yaml",
        TRAIN_C + " --out {t}/run",
        ["c.yaml", "not valid YAML"],
        at(("c.yaml", "task: [relu\n")),
    ),
    case(
        "train-config-is-directory",
        "tasks " + TRAIN_C + " --out {t}/run",
        ["c.yaml is a directory"],
        at(("c.yaml/", None)),
    ),
    case(
        "causal-train-file-not-utf8",
        "causal train --steps 1 --train-file {t}/t.txt --out {t}/heads",
        ["t.txt", "not UTF-8"],
        at(("t.txt", NOT_UTF8)),
    ),
    case(
        "causal-train-file-is-directory",
        "causal train --steps 1 --train-file {t}/t.txt --out {t}/heads",
        ["t.txt is a directory"],
        at(("t.txt/", None)),
    ),
    case(
        "causal-eval-file-not-utf8",
        "causal eval --heads {t} --eval-file {t}/e.txt",
        ["e.txt", "not UTF-8"],
        at(("e.txt", NOT_UTF8)),
    ),
    # ---- damaged heads directories ----------------------------------------------------------------
    case(
        "eval-heads-config-not-json",
        "causal eval --heads {t}/heads",
        ["causal_config.json", "damaged"],
        _heads("{garbled"),
    ),
    case(
        "eval-heads-config-missing-keys",
        "causal eval --heads {t}/heads",
        ["causal_config.json", "damaged"],
        _heads({"kind": "causal"}),
    ),
    case(
        "eval-heads-config-unknown-field",
        "causal eval --heads {t}/heads",
        ["causal_config.json", "fields"],
        _heads({**HEADS_META, "config": {"wings": 2}}),
    ),
    case(
        "eval-heads-weights-missing",
        "causal eval --heads {t}/heads",
        ["heads.safetensors", "does not exist"],
        _heads(HEADS_META, None),
    ),
    case(
        "eval-heads-weights-garbled",
        "causal eval --heads {t}/heads",
        ["heads.safetensors", "damaged"],
        _heads(HEADS_META, b"\x08\x00\x00\x00\x00\x00\x00\x00{garbled"),
    ),
    case(
        "eval-heads-weights-misfit",
        "causal eval --heads {t}/heads --sets qa --n-eval 2",
        ["heads.safetensors", "does not fit"],
        _misfit_heads,
    ),
    case("eval-heads-is-file", "causal eval --heads {t}/afile", ["afile is a file"], AFILE),
    case(
        "generate-heads-config-not-json",
        "causal generate --heads {t}/heads --prompt hi",
        ["causal_config.json", "damaged"],
        _heads("[1,"),
    ),
    # ---- run and results ----------------------------------------------------------------------------
    case(
        "run-params-file-not-utf8",
        "run {nb} -f {t}/p.yml --out {t}/res",
        ["p.yml", "not UTF-8"],
        at(("p.yml", b"seed: \xff\n")),
    ),
    case(
        "run-grid-unknown-key",
        "run {nb} --grid {t}/g.yml --out {t}/res",
        ["'wobble'"],
        at(("g.yml", "wobble: [1, 2]\n")),
    ),
    case(
        "run-grid-empty", "run {nb} --grid {t}/g.yml --out {t}/res", ["g.yml", "is empty"], at(("g.yml", ""))
    ),
    case(
        "run-grid-bad-yaml",
        "run {nb} --grid {t}/g.yml --out {t}/res",
        ["g.yml", "not valid YAML"],
        at(("g.yml", "seed: [1, 2\n")),
    ),
    case(
        "run-grid-is-directory",
        "run {nb} --grid {t}/g.yml --out {t}/res",
        ["g.yml is a directory"],
        at(("g.yml/", None)),
    ),
    case(
        "run-shard-zero",
        "run {nb} --grid {t}/g.yml --shard 0/3 --out {t}/res",
        ["--shard '0/3'"],
        at(("g.yml", "seed: [1, 2]\n")),
    ),
    case("run-shard-not-a-fraction", "run {nb} --shard half --out {t}/res", ["--shard 'half'"]),
    case(
        "run-p-wrong-type", "run {nb} -p n_samples three --out {t}/res", ["n_samples='three'", "an integer"]
    ),
    case("run-p-float-for-int", "run {nb} -p seed 1.5 --out {t}/res", ["seed=1.5"]),
    case(
        "run-notebook-is-directory", "run {t}/nb --out {t}/res", ["nb", "is a directory"], at(("nb/", None))
    ),
    case("results-out-is-file", "results --out {t}/afile", ["afile is a file"], AFILE),
    case(
        "results-record-damaged",
        "results --out {t}/res",
        ["run.json", "damaged"],
        at(("res/exp_tiny/20240101T000000Z-abcd1234/run.json", "{not json")),
    ),
]


def _tree(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` with its bytes (None for a folder)."""
    return {
        str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))
    }


@pytest.mark.parametrize("case", CASES)
def test_bad_input_one_line_exit_2_nothing_written(case, fx, tmp_path, capfd):
    names = {**fx, "t": tmp_path, "ro": READ_ONLY, "nb": NOTEBOOK, "relu": RELU_YAML, "index": INDEX_YAML}
    if case.setup is not None:
        case.setup(tmp_path)
    argv = [word.format(**names) for word in case.argv.split()]
    words = [word.format(**names) for word in case.words]
    before = _tree(tmp_path)
    capfd.readouterr()
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    err = capfd.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].strip(), err
    assert lines[0].startswith(f"qwen-anatomy {argv[0]}") and ": error: " in lines[0], lines[0]
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert _tree(tmp_path) == before  # nothing written, nothing overwritten, nothing moved


def test_table_is_large_enough():
    assert len(CASES) >= 45


def test_a_failed_causal_train_does_not_block_the_corrected_rerun(tmp_path, capfd, monkeypatch):
    """The failed run's directory is moved aside whole (never deleted), and the re-run says so."""
    import qwen_anatomy.causal.train as causal_train

    out = tmp_path / "heads"
    argv = ["causal", "train", "--out", str(out), "--steps", "1", "--batch-size", "2", "--n-train", "4"]

    def broken(*args, **kwargs):
        raise RuntimeError("out of memory (simulated)")

    monkeypatch.setattr(causal_train, "train", broken)
    with pytest.raises(RuntimeError):
        main(argv)
    failed = json.loads((out / "run_record.json").read_text())
    assert failed["status"] == "failed"
    failed_bytes = (out / "run_record.json").read_bytes()
    monkeypatch.undo()
    capfd.readouterr()
    assert main(argv) == 0
    err = capfd.readouterr().err
    assert "moved it to" in err and str(out) in err
    assert json.loads((out / "run_record.json").read_text())["status"] == "success"
    aside = sorted(tmp_path.glob("heads.failed-*"))
    assert len(aside) == 1 and (aside[0] / "run_record.json").read_bytes() == failed_bytes


def test_a_failed_causal_eval_record_does_not_block_the_rerun(tmp_path, capfd):
    """A failed eval left m.run_record.json (status failed) and no metrics: the re-run may write."""
    from qwen_anatomy.iochecks import check_output_file, set_aside_failed_records

    record = tmp_path / "m.run_record.json"
    record.write_text(_record("failed"))
    check_output_file(tmp_path / "m.json", derived=[record], records=[record])
    set_aside_failed_records([record])
    assert not record.exists() and len(list(tmp_path.glob("m.run_record.json.failed-*"))) == 1
    record.write_text(_record("success"))
    with pytest.raises(Exception, match="already exists"):
        check_output_file(tmp_path / "m.json", derived=[record], records=[record])


def test_sweep_reuses_a_run_of_the_same_config(tmp_path, capfd):
    """The full-config comparison is not over-strict: the same config is read back, not retrained."""
    _sweep_with_a_3_step_run(tmp_path)
    folder = tmp_path / "out" / "relu" / "seed0"
    before = _tree(folder)
    argv = ["tasks", "sweep", "--configs", RELU_YAML, "--seeds", "0", *sum((["--set", s] for s in TINY), [])]
    assert main([*argv, "--out-root", str(tmp_path / "out")]) == 0
    assert "exact match 0.500" in capfd.readouterr().out
    assert _tree(folder) == before
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["runs"][0]["steps"] == 3


def test_results_out_file_in_a_subprocess(tmp_path):
    """The real command line: one line on stderr, exit 2, the path named (not "does not exist")."""
    afile = tmp_path / "results.txt"
    afile.write_text("a file, not the results folder\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "lib")}
    proc = subprocess.run(
        [sys.executable, "-m", "qwen_anatomy.cli", "results", "--out", str(afile)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("qwen-anatomy results: error:") and str(afile) in proc.stderr
    assert "is a file" in proc.stderr and "does not exist" not in proc.stderr


def test_params_resumes_past_a_damaged_partial_file(fx, tmp_path, capfd):
    """A resume file with garbled lines (not even UTF-8) is read as far as it is readable; the
    interrupted run's record is kept beside the new one, renamed."""
    from qwen_anatomy.weights.checkpoint import open_checkpoint
    from qwen_anatomy.weights.table import read_table

    out = tmp_path / "t.csv"
    options = {"spectra": "none", "include": None, "max_tensors": 2}
    params = {"model_path": str(open_checkpoint(fx["weights"]).path), **options}
    Path(f"{out}.run.json").write_text(_record("incomplete", parameters=params))
    Path(f"{out}.partial.jsonl").write_bytes(b'\xff\xfe garbage\n{"not": "a row"}\n[1, 2]\n')
    argv = ["params", fx["weights"], "--out", str(out), "--spectra", "none", "--max-tensors", "2"]
    assert main([*argv, "--no-progress"]) == 0, capfd.readouterr().err
    assert len(read_table(out)) == 2
    assert json.loads(Path(f"{out}.run.json").read_text())["status"] == "success"
    assert len(list(tmp_path.glob("t.csv.run.json.failed-*"))) == 1
    assert not Path(f"{out}.partial.jsonl").exists()
