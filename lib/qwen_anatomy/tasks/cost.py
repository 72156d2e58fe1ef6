"""What a task sweep costs on this machine, measured through the real training path (chapter 30).

:func:`measure` trains one config for a few dozen steps with :func:`qwen_anatomy.tasks.train.train`
(the sweep's own code) and times every optimiser step, one exact-match check on the config's test
subset and the final evaluation. :func:`project` turns such measurements into the projected cost of
each run of a plan (:func:`qwen_anatomy.tasks.experiment.plan`): steps x seconds per step, plus the
checks, the final evaluation and the fixed overhead. A run whose model and length were not measured
is projected from the measurements of the same model at other lengths (linear in the sequence
length, which is what sets the cost of these small models), and says so.

``qwen-anatomy tasks sweep --plan FILE --estimate`` runs both and prints the table.
"""

from __future__ import annotations

import copy
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

# Steps timed before these are left out (allocator and first-call warm-up).
WARMUP_STEPS = 5


def model_signature(config: dict) -> tuple:
    """What sets the cost of one training step besides the length: the model section and the batch."""
    from .train import SHAPE_KEYS

    m = config["model"]
    return (m["type"], *(m[k] for k in SHAPE_KEYS[m["type"]]), config["training"]["batch_size"])


def describe_signature(signature: tuple) -> str:
    kind, *dims, batch = signature
    if kind == "qwen2":
        hidden, ffn, layers, heads, kv = dims
        return f"Qwen2 {layers} layers, hidden {hidden}, FFN {ffn}, {heads}/{kv} heads, batch {batch}"
    d, enc, dec, ffn, _, heads = dims
    return f"BART {enc}+{dec} layers, d_model {d}, FFN {ffn}, {heads} head(s), batch {batch}"


def _step_timer(times: list[float]):
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        """Wall time at the end of every optimiser step."""

        def on_train_begin(self, args, state, control, **kw):
            times.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kw):
            times.append(time.perf_counter())

    return StepTimer()


def measure(config: dict, steps: int = 50, workdir: str | Path | None = None) -> dict[str, Any]:
    """Seconds per optimiser step of ``config`` (median of steps after :data:`WARMUP_STEPS`), per
    test sample of an exact-match check and of the final evaluation, and the fixed overhead.

    Trains ``steps`` steps in a temporary folder (or ``workdir``) with no check during training (so
    the step times are steps only), then times one check on ``training.eval_subset`` test samples
    with the trained model, as the sweep's checks do. ``threads`` is the config's (1 in the sweep).
    """
    import torch

    from ..errors import UserInputError
    from .evaluate import greedy_outputs
    from .generators import read_task_file
    from .train import data_files, train, validate_config

    if steps <= WARMUP_STEPS + 1:
        raise UserInputError(
            f"--estimate-steps {steps} must exceed {WARMUP_STEPS + 1} (the warm-up is left out)"
        )
    cfg = copy.deepcopy(config)
    cfg["training"].update(max_steps=steps, epochs=None, stop_after_steps=None, eval_every=steps + 1)
    cfg["training"]["logging_steps"] = steps
    validate_config(cfg)
    times: list[float] = []
    with tempfile.TemporaryDirectory(dir=workdir, prefix="task-cost-") as tmp:
        result = train(cfg, Path(tmp) / "run", verbose=False, callbacks=[_step_timer(times)])
        record = json.loads((Path(tmp) / "run" / "run_record.json").read_text())
        model = _load_trained(Path(tmp) / "run", cfg["model"]["type"])
        _, test_file = data_files(cfg)
        sub = cfg["training"]["eval_subset"]
        xs, _ = read_task_file(test_file, sub, one_length=True)
        torch.set_num_threads(cfg["training"]["threads"])
        t0 = time.perf_counter()
        with torch.no_grad():
            greedy_outputs(model, xs)
        check = time.perf_counter() - t0
    per_step = [b - a for a, b in zip(times[:-1], times[1:], strict=True)][WARMUP_STEPS:]
    stages = record.get("stages", {})
    return {
        "signature": model_signature(cfg),
        "model": describe_signature(model_signature(cfg)),
        "task": cfg["task"]["name"],
        "n": cfg["task"]["n"],
        "parameters": result["parameters"],
        "steps_timed": len(per_step),
        "seconds_per_step": statistics.median(per_step),
        "mean_seconds_per_step": statistics.fmean(per_step),
        "check_seconds_per_sample": check / max(len(xs), 1),
        "eval_seconds_per_sample": stages.get("evaluate", 0.0) / max(result["num_examples"], 1),
        "overhead_seconds": sum(stages.get(k, 0.0) for k in ("data", "import", "save")),
    }


def _load_trained(folder: Path, model_type: str):
    """The model the sweep's checks run on: the transformers class the Trainer trained."""
    if model_type == "bart":
        from transformers import BartForConditionalGeneration

        return BartForConditionalGeneration.from_pretrained(folder).eval()
    from transformers import Qwen2ForCausalLM

    return Qwen2ForCausalLM.from_pretrained(folder).eval()


def _at_length(measured: list[dict], signature: tuple, n: int, key: str) -> tuple[float, str]:
    """``key`` of the measurements of ``signature`` at length ``n``: measured, interpolated or
    extrapolated linearly in the sequence length between the two nearest measured lengths, or scaled
    from a single one in proportion to the sequence length."""
    from .train import longest_sequence

    same = sorted((m for m in measured if tuple(m["signature"]) == tuple(signature)), key=lambda m: m["n"])
    if not same:
        raise KeyError(f"no measurement of {describe_signature(signature)}")
    for m in same:
        if m["n"] == n:
            return m[key], "measured"
    length = longest_sequence(signature[0], n)
    if len(same) == 1:
        m = same[0]
        return m[key] * length / longest_sequence(signature[0], m["n"]), f"scaled from n={m['n']}"
    nearest = sorted(same, key=lambda m: abs(m["n"] - n))[:2]
    a, b = sorted(nearest, key=lambda m: m["n"])
    la, lb = longest_sequence(signature[0], a["n"]), longest_sequence(signature[0], b["n"])
    value = a[key] + (b[key] - a[key]) * (length - la) / (lb - la)
    return max(value, 0.0), f"from n={a['n']} and n={b['n']}"


def project(entries: list[dict], measured: list[dict]):
    """Projected seconds of every run of a plan that is still to train (one row per run).

    ``entries``: :func:`qwen_anatomy.tasks.experiment.plan`; ``measured``: :func:`measure` results.
    A run costs steps x seconds per step + its exact-match checks (every ``eval_every`` steps and
    one at the end) x ``eval_subset`` x seconds per sample + the final evaluation of
    ``test_samples`` + the fixed overhead. Runs already done (``reuse``) cost nothing.
    """
    import math

    import pandas as pd

    rows = []
    for e in entries:
        cfg = e["run_config"]
        tr, n = cfg["training"], cfg["task"]["n"]
        sig = model_signature(cfg)
        steps = tr["max_steps"]
        if steps is None:
            steps = math.ceil(tr["epochs"] * math.ceil(cfg["task"]["train_samples"] / tr["batch_size"]))
        steps = min(steps, tr["stop_after_steps"] or steps)
        checks = steps // tr["eval_every"] + (steps % tr["eval_every"] != 0)
        step_s, source = _at_length(measured, sig, n, "seconds_per_step")
        check_s, _ = _at_length(measured, sig, n, "check_seconds_per_sample")
        eval_s, _ = _at_length(measured, sig, n, "eval_seconds_per_sample")
        overhead, _ = _at_length(measured, sig, n, "overhead_seconds")
        examples = cfg["evaluation"]["max_examples"] or cfg["task"]["test_samples"]
        seconds = steps * step_s + checks * min(tr["eval_subset"], cfg["task"]["test_samples"]) * check_s
        seconds += examples * eval_s + overhead
        rows.append(
            {
                "config": e["config"],
                "n": n,
                "seed": e["seed"],
                "model": describe_signature(sig),
                "steps": steps,
                "seconds per step": round(step_s, 4),
                "per-step cost": source,
                "projected seconds": 0.0 if e["reuse"] else round(seconds, 1),
                "done": bool(e["reuse"]),
            }
        )
    return pd.DataFrame(rows)


def estimate(entries: list[dict], steps: int = 50, workdir: str | Path | None = None, progress: bool = True):
    """(measurements, projection): measure each model signature of a plan at its shortest and longest
    length (one config each, the first planned), then :func:`project` every run."""
    from ..progress import progress_bar

    chosen: dict[tuple, dict] = {}
    for e in entries:
        cfg = e["run_config"]
        sig = model_signature(cfg)
        lengths = [x["run_config"]["task"]["n"] for x in entries if model_signature(x["run_config"]) == sig]
        n = cfg["task"]["n"]
        if n in (min(lengths), max(lengths)) and (sig, n) not in chosen:
            chosen[(sig, n)] = cfg
    measured = [
        measure(cfg, steps, workdir)
        for cfg in progress_bar(list(chosen.values()), desc="timing steps", unit="config", enabled=progress)
    ]
    return measured, project(entries, measured)
