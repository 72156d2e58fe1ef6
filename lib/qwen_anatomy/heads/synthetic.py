"""The synthetic pair with power (chapter 40, issue 15 point 2): one resumable command.

θ0 is a project-trained Qwen2 with 96 query heads (8 layers x 12 heads, 4 KV groups of 3, hidden
96, head_dim 8) trained on ReLU cumulative sums (n = 10, inputs in [-9, 9]). θ1 is θ0 fine-tuned,
once per seed, on the *same recurrence over a wider input range* (inputs in [-12, 12]): the skill is
the same, the new inputs are not. θ0 can therefore do most of the fine-tuning task before it is
fine-tuned: the shipped 8-head ReLU model scores 1.08 nats per output token there against 3.12 for
predict-the-marginal (85 % of tokens right), while on Square, ReLU inverse or ReLU at n = 9, 11, 12
it scores 10.2-10.8 nats, far *above* chance; the 96-head shape after a 400-step run scores 1.34
nats there against 3.09 (measured 2026-11-26, see data/results/heads/README.md).
Every run writes θ0's own loss on the fine-tuning task and that chance level into ``summary.json``.

    .venv/bin/python -m qwen_anatomy.heads.synthetic --out data/results/heads/synthetic-relu-wide

Stages (each reused when finished, see :mod:`qwen_anatomy.heads.pairs`): train θ0
(:func:`qwen_anatomy.tasks.train.train`); measure θ0 on the fine-tuning task's test set (``qwen-anatomy
heads``, 256 examples drawn with seed 999); per seed, fine-tune (``train`` with ``init_from``) and
measure the pair (``qwen-anatomy heads --finetuned --theta0-from``); the across-seed agreement
(``qwen-anatomy heads agree``); the summary with the detectable |ρ| at N heads
(:func:`qwen_anatomy.heads.power.power_record`). ``--estimate`` measures the cost per stage instead.
"""

from __future__ import annotations

import argparse
import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import UserInputError
from ..paths import REPO_ROOT
from .pairs import add_cost_flags, pair_cli

COMMAND = "qwen_anatomy.heads.synthetic"
DEFAULT_OUT = REPO_ROOT / "data" / "results" / "heads" / "synthetic-relu-wide"
REGENERATE = ".venv/bin/python -m qwen_anatomy.heads.synthetic --out data/results/heads/synthetic-relu-wide"


@dataclass
class SyntheticPair:
    """Everything the synthetic pair does; recorded in ``plan.json``."""

    theta0_task: dict = field(default_factory=lambda: {"name": "relu", "n": 10, "order": "forward",
                                                         "value_min": -9, "value_max": 9})  # fmt: skip
    finetune_task: dict = field(default_factory=lambda: {"name": "relu", "n": 10, "order": "forward",
                                                           "value_min": -12, "value_max": 12})  # fmt: skip
    model: dict = field(default_factory=lambda: {"hidden_size": 96, "intermediate_size": 256,
                                                   "num_hidden_layers": 8, "num_attention_heads": 12,
                                                   "num_key_value_heads": 4})  # fmt: skip
    seeds: tuple[int, ...] = (0, 1, 2)
    theta0_steps: int = 1500
    theta0_learning_rate: float = 2e-3
    theta0_train_samples: int = 100_000
    finetune_steps: int = 300
    finetune_learning_rate: float = 1e-3
    finetune_train_samples: int = 20_000
    batch_size: int = 128
    eval_examples: int = 256
    subset_seed: int = 999  # the original drew its evaluation subset with seed 999
    ablation: str = "zero"
    n_perm: int = 2000
    n_boot: int = 300
    top_k: int | None = None
    threads: int = 1
    data_root: str | None = None  # task data folder (None: the cache, as Part III)

    def validate(self) -> None:
        for name in ("theta0_steps", "finetune_steps", "theta0_train_samples", "finetune_train_samples",
                     "batch_size", "eval_examples", "n_perm", "n_boot", "threads"):  # fmt: skip
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UserInputError(f"--{name.replace('_', '-')} {value!r}: must be an integer >= 1")
        if not self.seeds:
            raise UserInputError("--seeds: give at least one fine-tuning seed (three for agreement)")
        if len(set(self.seeds)) != len(self.seeds) or any(
            isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in self.seeds
        ):
            raise UserInputError(f"--seeds {list(self.seeds)}: distinct integers >= 0")
        if self.subset_seed is not None and not 0 <= self.subset_seed <= 2**32 - 1:
            raise UserInputError(f"--subset-seed {self.subset_seed}: a seed is an integer in 0..2**32-1")
        if self.ablation not in ("zero", "mean"):
            raise UserInputError(f"--ablation {self.ablation!r}: zero or mean")
        for name in ("theta0_learning_rate", "finetune_learning_rate"):
            if not 0 < getattr(self, name) < 1:
                raise UserInputError(f"--{name.replace('_', '-')} {getattr(self, name)}: must lie in (0, 1)")

    def train_config(self, which: str, seed: int = 0) -> dict:
        """The Part III training config of θ0 (``which="theta0"``) or of one fine-tuning seed."""
        from ..tasks import train as task_train

        cfg = task_train.load_config(None)
        theta0 = which == "theta0"
        cfg["task"].update(self.theta0_task if theta0 else self.finetune_task)
        cfg["task"]["data_root"] = self.data_root
        cfg["task"]["train_samples"] = self.theta0_train_samples if theta0 else self.finetune_train_samples
        cfg["model"].update(self.model)
        steps = self.theta0_steps if theta0 else self.finetune_steps
        cfg["training"].update(
            seed=seed,
            max_steps=steps,
            epochs=None,
            learning_rate=self.theta0_learning_rate if theta0 else self.finetune_learning_rate,
            warmup_ratio=0.05,
            batch_size=self.batch_size,
            eval_every=max(1, min(250, steps)),
            eval_subset=100,
            logging_steps=max(1, min(50, steps)),
            threads=self.threads,
        )
        cfg["evaluation"].update(max_examples=200, show=0)
        task_train.validate_config(cfg)
        return cfg


def marginal_chance_loss(train_file: Path, test_file: Path, indices=None, train_lines: int = 20_000) -> float:
    """Predict-the-marginal: mean cross-entropy (nats per scored token, ``y`` and ``<eos>``) of the test
    targets under the frequency of each output token in the first ``train_lines`` training targets
    (add-one smoothing over the tokens seen in either file). ``indices``: the test lines evaluated."""
    from ..tasks.generators import read_task_file

    _, train_ys = read_task_file(train_file, train_lines)
    _, test_ys = read_task_file(test_file, None)
    if indices is not None:
        test_ys = [test_ys[i] for i in indices]
    counts = Counter(t for y in train_ys for t in y)
    counts["<eos>"] += len(train_ys)
    vocab = set(counts) | {t for y in test_ys for t in y}
    total = sum(counts.values()) + len(vocab)
    nll, n = 0.0, 0
    for y in test_ys:
        for t in [*y, "<eos>"]:
            nll -= math.log((counts.get(t, 0) + 1) / total)
            n += 1
    return nll / n


def _stages(cfg: SyntheticPair, out: Path):
    from ..tasks import train as task_train
    from .pairs import HEADS_STAGE, THETA0_HEADS, Stage, agreement_dir, cli, heads_stage, recorded_parameters

    theta0_dir = out / "theta0"
    cfg0 = cfg.train_config("theta0")
    _, test_file = task_train.data_files(cfg.train_config("finetune"))
    common = ["--data", str(test_file), "--max-examples", str(cfg.eval_examples),
              "--subset-seed", str(cfg.subset_seed), "--ablation", cfg.ablation,
              "--bootstrap", str(cfg.n_boot), "--permutations", str(cfg.n_perm),
              "--threads", str(cfg.threads), "--no-figures"]  # fmt: skip
    if cfg.top_k is not None:
        common += ["--top-k", str(cfg.top_k)]

    def comparable(config: dict) -> dict:
        return {k: config[k] for k in ("task", "training")}

    stages = [
        Stage(
            "train θ0",
            theta0_dir,
            lambda: task_train.train(cfg0, theta0_dir, verbose=False),
            wanted=comparable(cfg0),
            recorded=lambda f: comparable(recorded_parameters(f, key="config")),
        ),
        heads_stage(
            "measure θ0",
            out / THETA0_HEADS,
            ["heads", str(theta0_dir), *common, "--out", str(out / THETA0_HEADS)],
        ),
    ]
    for seed in cfg.seeds:
        model_dir = out / f"seed-{seed}" / "model"
        cfg1 = cfg.train_config("finetune", seed)
        stages.append(
            Stage(
                f"fine-tune seed {seed}",
                model_dir,
                lambda cfg1=cfg1, model_dir=model_dir: task_train.train(
                    cfg1, model_dir, init_from=theta0_dir, verbose=False
                ),
                wanted=comparable(cfg1),
                recorded=lambda f: comparable(recorded_parameters(f, key="config")),
            )
        )
        heads_dir = out / f"seed-{seed}" / HEADS_STAGE
        stages.append(
            heads_stage(
                f"measure seed {seed}",
                heads_dir,
                [
                    "heads",
                    str(theta0_dir),
                    *common,
                    "--finetuned",
                    str(model_dir),
                    "--theta0-from",
                    str(out / THETA0_HEADS),
                    "--out",
                    str(heads_dir),
                ],  # fmt: skip
            )
        )
    if len(cfg.seeds) >= 2:
        agree = agreement_dir(out, cfg.seeds)
        runs = [str(out / f"seed-{s}" / HEADS_STAGE) for s in cfg.seeds]
        extra = ["--top-k", str(cfg.top_k)] if cfg.top_k is not None else []
        stages.append(
            Stage("agreement", agree, lambda: cli(["heads", "agree", *runs, "--out", str(agree), *extra]))
        )
    return stages, test_file


def run(cfg: SyntheticPair, out: str | Path = DEFAULT_OUT, say=print) -> dict:
    """Run (or resume) the synthetic pair into ``out``; returns the summary (also ``summary.json``)."""
    import json

    import numpy as np

    from ..runrecord import atomic_write_json, utc_now
    from .analysis import Measurements
    from .pairs import (
        HEADS_STAGE,
        PLAN_FILE,
        SUMMARY_FILE,
        THETA0_HEADS,
        check_plan,
        invocation_record,
        run_stages,
    )
    from .power import power_record

    cfg.validate()
    out = Path(out).resolve()
    plan = {"command": COMMAND, "kind": "synthetic", "regenerate": REGENERATE, **asdict(cfg)}
    plan = json.loads(json.dumps(plan))  # tuples as lists, as they come back from disk
    resumed = check_plan(out, plan, COMMAND)
    if cfg.top_k is not None:
        from .stats import check_top_k

        check_top_k(cfg.top_k, cfg.model["num_hidden_layers"] * cfg.model["num_attention_heads"], "--top-k")
    stages, test_file = _stages(cfg, out)  # validates both training configs, generates missing data
    out.mkdir(parents=True, exist_ok=True)
    if not resumed:
        atomic_write_json(out / PLAN_FILE, {**plan, "created": utc_now()})
    else:  # seeds may grow: the plan on disk lists every seed asked for so far
        old = json.loads((out / PLAN_FILE).read_text())
        if old["seeds"] != plan["seeds"]:
            atomic_write_json(out / PLAN_FILE, {**old, "seeds": plan["seeds"]})
    with invocation_record(out, COMMAND, plan) as record:
        report = run_stages(stages, say)
        record.data["stages_ran"], record.data["stages_reused"] = report.ran, report.reused
        record.data["stages"].update(report.seconds)
        m0 = Measurements.from_npz(out / THETA0_HEADS / "theta0.npz")
        subset = json.loads((out / THETA0_HEADS / "subset_indices.json").read_text())
        from ..tasks import train as task_train

        train_file, _ = task_train.data_files(cfg.train_config("finetune"))
        chance = marginal_chance_loss(train_file, test_file, subset["indices"])
        lay = m0.layout
        seeds = {}
        for s in cfg.seeds:
            d = out / f"seed-{s}"
            ev = json.loads((d / "model" / "evaluation.json").read_text())
            m1 = Measurements.from_npz(d / HEADS_STAGE / "theta1.npz")
            seeds[str(s)] = {
                "loss_theta1": float(m1.loss.mean()),
                "finetune_evaluation": {k: ev.get(k) for k in ("exact_match", "token_accuracy", "steps")},
            }
        theta0_eval = json.loads((out / "theta0" / "evaluation.json").read_text())
        summary = {
            "kind": "synthetic",
            "plan": plan,
            "n_heads": lay.n_heads_total,
            "layout": {
                "layers": lay.num_layers,
                "heads": lay.num_heads,
                "kv_heads": lay.num_kv_heads,
                "head_dim": lay.head_dim,
            },  # fmt: skip
            "power": power_record(lay.n_heads_total, lay.num_layers),
            "theta0_own_task": {k: theta0_eval.get(k) for k in ("exact_match", "token_accuracy", "steps")},
            "theta0_on_finetune_task": {
                "loss": float(m0.loss.mean()),
                "chance_loss": chance,
                "chance": "predict the marginal of the output tokens (training set)",
                "loss_over_chance": float(m0.loss.mean() / chance),
                "median_example_loss": float(np.median(m0.loss)),
            },
            "eval_file": str(test_file),
            "n_eval_examples": len(m0.loss),
            "seeds": seeds,
        }
        if (out / SUMMARY_FILE).is_file() and json.loads((out / SUMMARY_FILE).read_text())["plan"] == plan:
            summary = json.loads((out / SUMMARY_FILE).read_text())  # finished before: left as it was
        else:
            atomic_write_json(out / SUMMARY_FILE, summary)
    return summary


# -- cost ---------------------------------------------------------------------------------------------
# Measured on this two-core machine while a training sweep kept both cores busy (2026-11-26):
# tasks.cost.measure of the θ0 shape gave 0.54 s per step (median of 8 steps, one thread); a
# 400-step θ0 run with a check every 100 steps took 283 s (0.71 s per step all in, exact match 0.88);
# gradients + batched/prefix ablation of every head and group of the 96-head model took 0.153 s per
# evaluation example. Statistics (2,000 permutations, 300 bootstraps) are budgeted at 90 s per θ.
MEASURED = {"seconds_per_step": 0.71, "measure_seconds_per_example": 0.153, "statistics_seconds": 90.0,
            "train_overhead_seconds": 60.0}  # fmt: skip


def stage_costs(cfg: SyntheticPair, measured: dict = MEASURED) -> list[dict]:
    """Projected seconds of each stage from :data:`MEASURED` (rows for ``pairs.estimate_table``)."""
    step, per_ex = measured["seconds_per_step"], measured["measure_seconds_per_example"]
    theta = per_ex * cfg.eval_examples + measured["statistics_seconds"]
    return [
        {"stage": f"train θ0 ({cfg.theta0_steps} steps)", "count": 1,
         "seconds": cfg.theta0_steps * step + measured["train_overhead_seconds"]},
        {"stage": f"measure θ0 ({cfg.eval_examples} examples)", "count": 1, "seconds": theta},
        {"stage": f"fine-tune one seed ({cfg.finetune_steps} steps)", "count": len(cfg.seeds),
         "seconds": cfg.finetune_steps * step + measured["train_overhead_seconds"]},
        {"stage": "measure θ1 of one seed", "count": len(cfg.seeds), "seconds": theta},
    ]  # fmt: skip


def projected_hours(cfg: SyntheticPair, measured: dict = MEASURED) -> float:
    """Hours the whole synthetic pair is projected to take on this machine."""
    return sum(r["count"] * r["seconds"] for r in stage_costs(cfg, measured)) / 3600


def estimate(cfg: SyntheticPair, cost_steps: int = 12, ablation_examples: int = 32) -> list[dict]:
    """Measured seconds of each stage's unit on this machine: a θ0-shaped training step (Part III's
    :func:`qwen_anatomy.tasks.cost.measure`, through ``train``), and one θ measurement (gradients and
    batched + prefix ablation of every head and group) on ``ablation_examples`` examples, scaled to
    ``eval_examples``. Returns rows for :func:`qwen_anatomy.heads.pairs.estimate_table`."""
    import time

    import torch

    from ..tasks import train as task_train
    from ..tasks.cost import measure as measure_steps
    from .analysis import measure
    from .data import task_batch

    cfg.validate()
    cfg0 = cfg.train_config("theta0")
    cfg0["task"]["train_samples"] = min(cfg0["task"]["train_samples"], 5000)
    steps = measure_steps(cfg0, steps=cost_steps)
    torch.set_num_threads(cfg.threads)
    model = task_train.build_model(cfg0).eval()
    import tempfile

    from ..loading import load_model

    with tempfile.TemporaryDirectory() as tmp:  # through the project's loader, as the measurement runs
        model.save_pretrained(tmp)
        model, _ = load_model(tmp)
    _, test_file = task_train.data_files(cfg.train_config("finetune"))
    batch = task_batch(test_file, ablation_examples)
    t = time.perf_counter()
    measure(model, batch, cfg.ablation)
    per_example = (time.perf_counter() - t) / len(batch)
    s_step = steps["seconds_per_step"]
    checks0 = cfg.theta0_steps // 250 + 1
    return [
        {"stage": f"train θ0 ({cfg.theta0_steps} steps)", "count": 1,
         "seconds": cfg.theta0_steps * s_step + checks0 * 100 * steps["check_seconds_per_sample"] + 60},
        {"stage": "measure θ0 (all heads, gradients + ablation)", "count": 1,
         "seconds": per_example * cfg.eval_examples},
        {"stage": f"fine-tune one seed ({cfg.finetune_steps} steps)", "count": len(cfg.seeds),
         "seconds": cfg.finetune_steps * s_step + 60},
        {"stage": "measure θ1 of one seed", "count": len(cfg.seeds),
         "seconds": per_example * cfg.eval_examples + 10},
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    defaults = SyntheticPair()
    p = argparse.ArgumentParser(
        prog="python -m qwen_anatomy.heads.synthetic",
        description="Chapter 40's synthetic pair: θ0 (96 heads) trained on ReLU, fine-tuned per seed on ReLU "
        "over a wider input range, every head measured, across-seed agreement. Resumable: rerun the same "
        "command to continue; finished stages are reused, a changed configuration is refused.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results folder (created or resumed)")
    p.add_argument("--seeds", type=int, nargs="+", default=list(defaults.seeds))
    for name in ("theta0_steps", "finetune_steps", "eval_examples", "theta0_train_samples",
                 "finetune_train_samples", "batch_size", "n_perm", "n_boot", "threads", "subset_seed"):  # fmt: skip
        p.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(defaults, name))
    p.add_argument("--ablation", default=defaults.ablation)
    p.add_argument("--top-k", type=int, default=None)
    add_cost_flags(p, "measure the cost of each stage and project the total")

    def done(cfg, summary, out):
        base = summary["theta0_on_finetune_task"]
        return (
            f"{summary['n_heads']} heads; θ0 on the fine-tuning task {base['loss']:.3f} nats (chance "
            f"{base['chance_loss']:.3f}); detectable |ρ| {summary['power']['detectable_abs_rho']:.2f}; results in {out}"
        )

    return pair_cli(vars(p.parse_args(argv)), SyntheticPair, stage_costs, estimate, run, done)


if __name__ == "__main__":
    raise SystemExit(main())
