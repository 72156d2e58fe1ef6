"""The real pair of chapter 40 (issue 15 point 1) as one resumable command.

θ0 = a released checkpoint (default SmolLM2-135M-Instruct, 270 heads in 30 layers, 3 KV groups of
3); θ1 = θ0 fine-tuned on the Python standard-library documentation (:mod:`qwen_anatomy.heads.finetune`,
Hugging Face Trainer), once per seed; every head measured on held-out documentation of the same
split::

    .venv/bin/python -m qwen_anatomy.heads.realpair --model smollm2-135m --seeds 0 1 2 --steps 300 \\
        --out data/results/heads/smollm2-stdlib

Stages (each reused when finished, refused when its settings changed, see :mod:`qwen_anatomy.heads.pairs`):
``data`` (the held-out documents, split once by document with ``corpus_seed``), ``measure θ0``
(``qwen-anatomy heads MODEL --data OUT/data/heldout.txt``: gradient proxies and batched + prefix
ablation of every head, once for all seeds), per seed ``fine-tune`` and ``measure`` (``qwen-anatomy
heads --finetuned θ1 --theta0-from OUT/theta0-heads``), then ``agreement`` (``qwen-anatomy heads
agree``) and ``summary.json`` with the detectable |ρ| at N heads. ``--estimate`` times one fine-tuning
step and one θ measurement on a few examples and projects each stage's hours.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import UserInputError
from ..paths import REPO_ROOT
from .finetune import FinetuneConfig
from .pairs import add_cost_flags, pair_cli

COMMAND = "qwen_anatomy.heads.realpair"
DEFAULT_OUT = REPO_ROOT / "data" / "results" / "heads" / "smollm2-stdlib"
REGENERATE = (
    ".venv/bin/python -m qwen_anatomy.heads.realpair --model smollm2-135m --seeds 0 1 2 --steps 300 "
    "--out data/results/heads/smollm2-stdlib"
)
FINETUNE_STAGE = "finetune"


@dataclass
class RealPair:
    """Everything the real pair does; recorded in ``plan.json``."""

    model: str = "smollm2-135m"
    seeds: tuple[int, ...] = (0, 1, 2)
    steps: int = 300
    # held-out documents measured (the first --max-tokens tokens of each); ablating all 270 heads and
    # 90 groups costs about 80 s per document on this machine (see MEASURED), so 64 rather than all 152
    eval_examples: int = 64
    max_tokens: int = 64
    subset_seed: int | None = None  # None: the first eval_examples documents of the held-out split
    ablation: str = "zero"
    batch_size: int = 16
    replicas: int = 8
    n_perm: int = 2000
    n_boot: int = 300
    top_k: int | None = None
    threads: int = 2
    train_chars: int = FinetuneConfig.train_chars
    heldout_chars: int = FinetuneConfig.heldout_chars
    corpus_seed: int = FinetuneConfig.corpus_seed
    learning_rate: float = FinetuneConfig.learning_rate

    def validate(self) -> None:
        for name in ("steps", "eval_examples", "max_tokens", "batch_size", "replicas", "n_perm", "n_boot",
                     "threads", "train_chars", "heldout_chars"):  # fmt: skip
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UserInputError(f"--{name.replace('_', '-')} {value!r}: must be an integer >= 1")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds) or any(s < 0 for s in self.seeds):
            raise UserInputError(
                f"--seeds {list(self.seeds)}: give distinct integers >= 0 (three for agreement)"
            )
        if self.subset_seed is not None and not 0 <= self.subset_seed <= 2**32 - 1:
            raise UserInputError(f"--subset-seed {self.subset_seed}: a seed is an integer in 0..2**32-1")
        if self.ablation not in ("zero", "mean"):
            raise UserInputError(f"--ablation {self.ablation!r}: zero or mean")
        self.finetune_config(self.seeds[0]).validate()

    def finetune_config(self, seed: int) -> FinetuneConfig:
        return FinetuneConfig(
            model=self.model,
            seed=seed,
            steps=self.steps,
            learning_rate=self.learning_rate,
            train_chars=self.train_chars,
            heldout_chars=self.heldout_chars,
            corpus_seed=self.corpus_seed,
            eval_every=max(1, min(50, self.steps)),
            threads=self.threads,
        )


def _write_heldout(cfg: RealPair, folder: Path) -> None:
    from ..iochecks import make_output_dir
    from ..runrecord import RunRecord, atomic_write_json, atomic_write_text
    from .finetune import split_documents

    make_output_dir(folder, "data stage")
    params = {k: getattr(cfg, k) for k in ("train_chars", "heldout_chars", "corpus_seed")}
    with RunRecord(folder / "run_record.json", f"{COMMAND} data", params) as record:
        _, heldout, info = split_documents(cfg.train_chars, cfg.heldout_chars, cfg.corpus_seed)
        atomic_write_text(folder / "heldout.txt", "\n".join(heldout) + "\n")
        atomic_write_json(folder / "corpus.json", info)
        record.data["heldout_documents"] = len(heldout)


def _finetune(cfg: RealPair, seed: int, folder: Path, heldout: Path) -> None:
    from .finetune import finetune

    finetune(cfg.finetune_config(seed), folder, progress=False)
    if (folder / "heldout.txt").read_bytes() != heldout.read_bytes():
        raise RuntimeError(
            f"{folder}/heldout.txt differs from {heldout}: the corpus split is not reproducible"
        )


def _stages(cfg: RealPair, out: Path):
    from .pairs import HEADS_STAGE, THETA0_HEADS, Stage, agreement_dir, cli, heads_stage, recorded_parameters

    data_dir = out / "data"
    heldout = data_dir / "heldout.txt"
    common = ["--data", str(heldout), "--max-examples", str(cfg.eval_examples),
              "--max-tokens", str(cfg.max_tokens), "--ablation", cfg.ablation,
              "--batch-size", str(cfg.batch_size), "--replicas", str(cfg.replicas),
              "--bootstrap", str(cfg.n_boot), "--permutations", str(cfg.n_perm),
              "--threads", str(cfg.threads), "--no-figures"]  # fmt: skip
    if cfg.subset_seed is not None:
        common += ["--subset-seed", str(cfg.subset_seed)]
    if cfg.top_k is not None:
        common += ["--top-k", str(cfg.top_k)]
    data_params = {k: getattr(cfg, k) for k in ("train_chars", "heldout_chars", "corpus_seed")}
    stages = [
        Stage(
            "data",
            data_dir,
            lambda: _write_heldout(cfg, data_dir),
            wanted=data_params,
            recorded=lambda f: recorded_parameters(f),
        ),  # fmt: skip
        heads_stage(
            "measure θ0", out / THETA0_HEADS, ["heads", cfg.model, *common, "--out", str(out / THETA0_HEADS)]
        ),
    ]
    for seed in cfg.seeds:
        ft = out / f"seed-{seed}" / FINETUNE_STAGE
        wanted = asdict(cfg.finetune_config(seed))
        stages.append(
            Stage(
                f"fine-tune seed {seed}",
                ft,
                lambda seed=seed, ft=ft: _finetune(cfg, seed, ft, heldout),
                wanted=wanted,
                recorded=lambda f, keys=tuple(wanted): {
                    k: v for k, v in recorded_parameters(f).items() if k in keys
                },
            )
        )
        hd = out / f"seed-{seed}" / HEADS_STAGE
        stages.append(
            heads_stage(
                f"measure seed {seed}",
                hd,
                [
                    "heads",
                    cfg.model,
                    *common,
                    "--finetuned",
                    str(ft / "model"),
                    "--theta0-from",
                    str(out / THETA0_HEADS),
                    "--out",
                    str(hd),
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
    return stages


def run(cfg: RealPair, out: str | Path = DEFAULT_OUT, say=print) -> dict:
    """Run (or resume) the real pair into ``out``; returns the summary (also ``summary.json``)."""
    from ..loading import load_config, resolve_model
    from ..runrecord import atomic_write_json, utc_now
    from .analysis import Measurements
    from .core import config_layout
    from .pairs import HEADS_STAGE, PLAN_FILE, SUMMARY_FILE, check_plan, invocation_record, run_stages
    from .power import power_record

    cfg.validate()
    out = Path(out).resolve()
    path0 = resolve_model(cfg.model)  # a missing model is bad input before anything is written
    lay = config_layout(load_config(path0))
    if cfg.top_k is not None:
        from .stats import check_top_k

        check_top_k(cfg.top_k, lay.n_heads_total, "--top-k")
    plan = json.loads(json.dumps({"command": COMMAND, "kind": "real", "regenerate": REGENERATE,
                                  "resolved_model": str(path0), **asdict(cfg)}))  # fmt: skip
    resumed = check_plan(out, plan, COMMAND)
    stages = _stages(cfg, out)
    out.mkdir(parents=True, exist_ok=True)
    if not resumed:
        atomic_write_json(out / PLAN_FILE, {**plan, "created": utc_now()})
    else:
        old = json.loads((out / PLAN_FILE).read_text())
        if old["seeds"] != plan["seeds"]:
            atomic_write_json(out / PLAN_FILE, {**old, "seeds": plan["seeds"]})
    with invocation_record(out, COMMAND, plan) as record:
        report = run_stages(stages, say)
        record.data["stages_ran"], record.data["stages_reused"] = report.ran, report.reused
        record.data["stages"].update(report.seconds)
        seeds = {}
        for s in cfg.seeds:
            d = out / f"seed-{s}"
            ft = json.loads((d / FINETUNE_STAGE / "finetune.json").read_text())
            m1 = Measurements.from_npz(d / HEADS_STAGE / "theta1.npz")
            seeds[str(s)] = {
                "loss_theta1": float(m1.loss.mean()),
                "finetune_evaluation": {
                    k: ft[k]
                    for k in ("heldout_loss_before", "heldout_loss_after", "seconds_per_step", "epochs")
                },  # fmt: skip
            }
        m0 = Measurements.from_npz(out / "theta0-heads" / "theta0.npz")
        summary = {
            "kind": "real",
            "plan": plan,
            "model": cfg.model,
            "n_heads": lay.n_heads_total,
            "layout": {
                "layers": lay.num_layers,
                "heads": lay.num_heads,
                "kv_heads": lay.num_kv_heads,
                "head_dim": lay.head_dim,
            },  # fmt: skip
            "power": power_record(lay.n_heads_total, lay.num_layers),
            "theta0_loss": float(m0.loss.mean()),
            "n_eval_examples": len(m0.loss),
            "seeds": seeds,
        }
        if (out / SUMMARY_FILE).is_file() and json.loads((out / SUMMARY_FILE).read_text())["plan"] == plan:
            summary = json.loads((out / SUMMARY_FILE).read_text())
        else:
            atomic_write_json(out / SUMMARY_FILE, summary)
    return summary


# Measured on this two-core machine (2026-11-26). Fine-tuning SmolLM2-135M, batch 8 x 128 tokens, two
# threads: 10.6 s per step including a 32-block held-out evaluation every 4 steps (an earlier session,
# lighter load); 45 s per step over 3 steps with the machine shared by three other jobs (this
# session). One θ measurement, two threads, shared machine: gradient proxies 1.8 s per 64-token
# document; gradients + batched/prefix ablation 0.22 s per document per ablated unit with 16
# documents per pass (16 documents x 30 heads spread over all layers: 105 s), 0.33 s with 2.
MEASURED = {"finetune_seconds_per_step": 10.6, "seconds_per_example_unit": 0.22,
            "finetune_overhead_seconds": 180.0, "statistics_seconds": 120.0}  # fmt: skip


def stage_costs(
    cfg: RealPair, n_heads: int = 270, n_groups: int = 90, measured: dict = MEASURED
) -> list[dict]:
    """Projected seconds of each stage from :data:`MEASURED` (rows for ``pairs.estimate_table``);
    ``n_heads``/``n_groups``: the model's (SmolLM2-135M: 270 and 90)."""
    theta = cfg.eval_examples * (n_heads + n_groups) * measured["seconds_per_example_unit"]
    theta += measured["statistics_seconds"]
    return [
        {"stage": f"fine-tune one seed ({cfg.steps} steps)", "count": len(cfg.seeds),
         "seconds": cfg.steps * measured["finetune_seconds_per_step"] + measured["finetune_overhead_seconds"]},
        {"stage": f"measure θ0 once ({cfg.eval_examples} documents)", "count": 1, "seconds": theta},
        {"stage": "measure θ1 of one seed", "count": len(cfg.seeds), "seconds": theta},
    ]  # fmt: skip


def projected_hours(cfg: RealPair, measured: dict = MEASURED) -> float:
    """Hours the whole real pair is projected to take on this machine (SmolLM2-135M)."""
    return sum(r["count"] * r["seconds"] for r in stage_costs(cfg, measured=measured)) / 3600


def estimate(cfg: RealPair, finetune_steps: int = 3, examples: int = 4) -> list[dict]:
    """Measured seconds per stage unit: ``finetune_steps`` real fine-tuning steps (the first, warm-up
    step left out when there are more than one), and one θ measurement (gradient proxies for every
    head, batched + prefix ablation of every head and KV group) on ``examples`` held-out documents,
    scaled linearly to ``eval_examples``. Rows for :func:`qwen_anatomy.heads.pairs.estimate_table`."""
    import tempfile
    import time

    import torch

    from ..loading import load_model
    from .analysis import measure
    from .data import text_batch
    from .finetune import finetune, split_documents
    from .gradients import gate_gradients

    cfg.validate()
    with tempfile.TemporaryDirectory(prefix="realpair-cost-") as tmp:
        ft = cfg.finetune_config(0)
        ft.steps, ft.eval_every, ft.eval_blocks = finetune_steps, finetune_steps + 1, 2
        summary = finetune(ft, Path(tmp) / "ft", progress=False)
    step_s = summary["seconds_per_step"]
    torch.set_num_threads(cfg.threads)
    model, tok = load_model(cfg.model)
    _, heldout, _ = split_documents(cfg.train_chars, cfg.heldout_chars, cfg.corpus_seed)
    batch = text_batch(heldout[: examples * 2], tok, max_tokens=cfg.max_tokens).subset(list(range(examples)))
    t = time.perf_counter()
    gate_gradients(model, batch, cfg.batch_size)
    grad_s = (time.perf_counter() - t) / len(batch)
    t = time.perf_counter()
    measure(model, batch, cfg.ablation, batch_size=cfg.batch_size, replicas=cfg.replicas)
    measure_s = (time.perf_counter() - t) / len(batch)
    n, seeds = cfg.eval_examples, len(cfg.seeds)
    eval_every = max(1, min(50, cfg.steps))
    evals = cfg.steps // eval_every + 1
    return [
        {"stage": f"fine-tune one seed ({cfg.steps} steps, {step_s:.1f} s/step)", "count": seeds,
         "seconds": cfg.steps * step_s + evals * 64 / 8 * step_s / 3 + 60},
        {"stage": "  of which: gradient proxies alone", "count": 0, "seconds": grad_s * n},
        {"stage": f"measure θ0 once ({n} examples, all heads)", "count": 1, "seconds": measure_s * n},
        {"stage": "measure θ1 of one seed", "count": seeds, "seconds": measure_s * n},
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    d = RealPair()
    p = argparse.ArgumentParser(
        prog="python -m qwen_anatomy.heads.realpair",
        description="Chapter 40's real pair: θ0 a released checkpoint, θ1 per seed fine-tuned on the standard-library "
        "documentation, every head measured on held-out documentation, across-seed agreement. Resumable: rerun "
        "the same command; finished stages are reused, a changed configuration is refused.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results folder (created or resumed)")
    p.add_argument("--model", default=d.model)
    p.add_argument("--seeds", type=int, nargs="+", default=list(d.seeds))
    for name in ("steps", "eval_examples", "max_tokens", "batch_size", "replicas", "n_perm", "n_boot", "threads",
                 "train_chars", "heldout_chars", "corpus_seed"):  # fmt: skip
        p.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(d, name))
    p.add_argument("--subset-seed", type=int, default=None)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--learning-rate", type=float, default=d.learning_rate)
    p.add_argument("--ablation", default=d.ablation)
    add_cost_flags(p, "time one fine-tuning step and one measurement; project hours")
    p.add_argument("--estimate-examples", type=int, default=4, help="documents timed by --estimate")
    args = vars(p.parse_args(argv))
    n_est = args.pop("estimate_examples")

    def done(cfg, summary, out):
        return (
            f"{summary['n_heads']} heads of {cfg.model}; detectable |ρ| "
            f"{summary['power']['detectable_abs_rho']:.2f}; results in {out}"
        )

    return pair_cli(args, RealPair, stage_costs, estimate, run, done, {"examples": n_est})


if __name__ == "__main__":
    raise SystemExit(main())
