"""Writing a head analysis to disk, and the book-scale fine-tuning experiment (chapter 40).

:func:`write_analysis` is what ``qwen-anatomy heads`` writes: ``heads.csv`` (one row per head),
``groups.csv``, ``stats.json``, ``cases.json``, the figures, and the raw per-example measurements
(``theta0.npz``/``theta1.npz``) from which every number can be recomputed.

:func:`run` is the book's experiment: θ0 (a small Qwen2 trained on one synthetic task) fine-tuned on
another task with several seeds (θ1 per seed, through :func:`qwen_anatomy.tasks.train.train` with
``init_from``); every seed analysed on the fine-tuning task's test set; the across-seed agreement of
each ranking. Regenerate the committed results with::

    .venv/bin/python -m qwen_anatomy.heads.experiment --out data/results/heads/finetune-square

Its θ0 has 8 heads (detectable |ρ| 0.86) and cannot do the fine-tuning task; the two experiments with
power are :mod:`qwen_anatomy.heads.synthetic` (96 heads) and :mod:`qwen_anatomy.heads.realpair`
(SmolLM2, 270 heads), resumable commands built on :mod:`qwen_anatomy.heads.pairs`.
"""

from __future__ import annotations

import argparse
import copy
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..runrecord import REPO_ROOT, RunRecord, atomic_write_json, atomic_write_text, refuse_overwrite
from .analysis import Measurements, case_list, compute_stats, group_table, head_table

DEFAULT_OUT = REPO_ROOT / "data" / "results" / "heads" / "finetune-square"
REGENERATE_COMMAND = (
    ".venv/bin/python -m qwen_anatomy.heads.experiment --out data/results/heads/finetune-square"
)
SEED_FILES = ("theta0.npz", "theta1.npz", "update.npz", "stats.json")


def write_analysis(
    out_dir: Path,
    m0: Measurements,
    m1: Measurements | None = None,
    update: dict | None = None,
    stats: dict | None = None,
    figures: bool = True,
    n_perm: int = 2000,
    n_boot: int = 300,
    top_k: int | None = None,
) -> dict:
    """Write tables, statistics, cases, raw measurements and figures into ``out_dir``; return stats.

    ``top_k``: K of the top-K sets (None = 10% of the heads), see :func:`compute_stats`.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if stats is None:
        stats = compute_stats(m0, m1, update, n_perm=n_perm, n_boot=n_boot, top_k=top_k)
    heads = head_table(m0, m1, update)
    groups = group_table(m0, m1, update)
    atomic_write_text(out_dir / "heads.csv", heads.to_csv(index=False))
    atomic_write_text(out_dir / "groups.csv", groups.to_csv(index=False))
    atomic_write_json(out_dir / "stats.json", stats)
    atomic_write_json(out_dir / "cases.json", case_list(stats, m0.layout))
    m0.to_npz(out_dir / "theta0.npz")
    if m1 is not None:
        m1.to_npz(out_dir / "theta1.npz")
    if update is not None:
        np.savez_compressed(out_dir / "update.npz", **{k: np.asarray(v) for k, v in update.items()})
    if figures:
        _figures(out_dir, heads, stats, m0, update is not None)
    return stats


def _figures(out_dir: Path, heads, stats: dict, m0: Measurements, has_update: bool) -> None:
    import matplotlib.pyplot as plt

    from .. import plotting
    from . import plots

    lay = m0.layout
    if has_update:
        cases = stats["counterexamples"]["I_pre_vs_Urel"]
        fig = plots.importance_vs_update(heads, "I_pre", "Urel", cases)
        plotting.save(fig, out_dir / "importance_vs_update.png")
        plt.close(fig)
    names = [
        c
        for c in ("I_pre", "I_post", "G_pre", "Ppred_pre", "snr_pre", "neg_Eg_pre", "norm_pre", "U", "Urel")
        if c in heads
    ]
    fig = plots.importance_vs_gradients(heads, "I_pre", ("G_pre", "neg_Eg_pre"))
    plotting.save(fig, out_dir / "importance_vs_gradient.png")
    plt.close(fig)
    fig = plots.heatmaps(heads, names, lay.num_layers, lay.num_heads)
    plotting.save(fig, out_dir / "heatmaps.png")
    plt.close(fig)
    fig = plots.statistics_bars(stats["pairs"])
    plotting.save(fig, out_dir / "statistics.png")
    plt.close(fig)
    fig = plots.proxy_validity_bars(stats["proxy_validity"])
    plotting.save(fig, out_dir / "proxy_validity.png")
    plt.close(fig)


# -- the book-scale experiment ----------------------------------------------------------------------
@dataclass
class HeadsExperiment:
    """θ0 fine-tuned on ``task`` with each seed; every seed analysed on the task's test set."""

    theta0: str = "relu-n10-forward"
    task: dict = field(default_factory=lambda: {"name": "square", "n": 10, "order": "forward"})
    seeds: tuple[int, ...] = (0, 1, 2)
    finetune_steps: int = 300
    train_samples: int = 20_000
    learning_rate: float = 1e-3
    batch_size: int = 128
    eval_examples: int = 256
    ablation: str = "zero"
    n_perm: int = 2000
    n_boot: int = 300
    figures: bool = False  # committed results hold no plot images: the notebook draws them
    top_k: int | None = None  # K of every top-K set; None = 10% of the heads


AGREEMENT_QUANTITIES = ("I_post", "U", "Urel", "G_post", "neg_Eg_post", "Ppred_post")


def run(config: HeadsExperiment, out_dir: str | Path = DEFAULT_OUT, progress: bool = True) -> dict:
    """Fine-tune θ0 once per seed, analyse each (θ0, θ1) pair, and measure across-seed agreement.

    Writes ``out_dir/seed-<s>/`` (the fine-tuned checkpoint under ``model/`` and the analysis
    files), ``out_dir/agreement.json``, ``out_dir/summary.json`` and ``out_dir/run_record.json``.
    Returns the summary. Refuses to overwrite an existing ``out_dir``.
    """
    import torch

    from ..loading import load_model, resolve_model
    from ..tasks import train as task_train
    from .analysis import head_quantities, measure
    from .data import task_batch
    from .plasticity import update_magnitudes
    from .stats import across_seed_agreement

    out_dir = Path(out_dir)
    refuse_overwrite(out_dir, "results directory")
    path0 = resolve_model(config.theta0)
    if config.top_k is not None:  # before any fine-tuning
        from ..loading import load_config
        from .core import config_layout
        from .stats import check_top_k

        check_top_k(config.top_k, config_layout(load_config(path0)).n_heads_total, "top_k")
    out_dir.mkdir(parents=True)
    record = RunRecord(
        out_dir / "run_record.json",
        "qwen_anatomy.heads.experiment.run",
        parameters=asdict(config),
        seed=list(config.seeds),
    )
    with record:
        torch.set_num_threads(1)
        base = task_train.load_config(None)
        base["task"].update(config.task)
        base["task"]["train_samples"] = config.train_samples
        base["training"].update(
            max_steps=config.finetune_steps,
            epochs=None,
            seed=0,
            learning_rate=config.learning_rate,
            batch_size=config.batch_size,
            eval_every=max(config.finetune_steps, 1),
            eval_subset=100,
            threads=1,
        )
        base["evaluation"].update(max_examples=200, show=0)
        with record.stage("data"):
            _, test_file = task_train.data_files(base)
            batch = task_batch(test_file, config.eval_examples)
        model0, _ = load_model(config.theta0)
        with record.stage("measure_theta0"):
            m0 = measure(model0, batch, config.ablation)
        per_seed, quantities = {}, {q: [] for q in AGREEMENT_QUANTITIES}
        for seed in config.seeds:
            seed_dir = out_dir / f"seed-{seed}"
            cfg = copy.deepcopy(base)
            cfg["training"]["seed"] = seed
            with record.stage("finetune"):
                result = task_train.train(cfg, seed_dir / "model", init_from=config.theta0)
            model1, _ = load_model(seed_dir / "model")
            with record.stage("measure_theta1"):
                m1 = measure(model1, batch, config.ablation)
                update = update_magnitudes(model0, model1)
            with record.stage("statistics"):
                write_analysis(
                    seed_dir,
                    m0,
                    m1,
                    update,
                    figures=config.figures,
                    n_perm=config.n_perm,
                    n_boot=config.n_boot,
                    top_k=config.top_k,
                )
            q = head_quantities(m0, m1, update)
            for name in AGREEMENT_QUANTITIES:
                quantities[name].append(q[name])
            per_seed[seed] = {"finetune_evaluation": _small(result), "stats_file": f"seed-{seed}/stats.json"}
            if progress:
                print(f"seed {seed}: θ1 loss {m1.loss.mean():.4f} (θ0 {m0.loss.mean():.4f})", flush=True)
        agreement = {name: across_seed_agreement(v, k=config.top_k) for name, v in quantities.items()}
        q0 = head_quantities(m0)
        agreement["I_pre (θ0, for reference)"] = {"note": "one θ0, no seeds", "n_heads": len(q0["I_pre"])}
        atomic_write_json(out_dir / "agreement.json", agreement)
        summary = {
            "config": asdict(config),
            "seeds": per_seed,
            "eval_file": str(test_file),
            "n_eval_examples": len(batch),
        }
        atomic_write_json(out_dir / "summary.json", summary)
    return summary


def _small(result) -> dict:
    if not isinstance(result, dict):
        return {}
    return {k: v for k, v in result.items() if isinstance(v, int | float | str)}


def load_results(out_dir: str | Path = DEFAULT_OUT) -> dict:
    """Everything :func:`run` wrote: per-seed measurements, update sizes, stats; agreement; record.

    Chapter 40 reads the committed results through this function in every build (book and CI).
    A missing file, or a run record that does not say "success", raises FileNotFoundError naming
    the file and the regeneration command.
    """
    out_dir = Path(out_dir)

    def need(path: Path) -> Path:
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} is missing: {out_dir} holds no complete heads experiment; regenerate it with "
                f"`{REGENERATE_COMMAND}` (or `--out <dir>` for another folder; see data/results/heads/README.md)"
            )
        return path

    summary = json.loads(need(out_dir / "summary.json").read_text())
    record = json.loads(need(out_dir / "run_record.json").read_text())
    if record.get("status") != "success":
        raise FileNotFoundError(
            f"{out_dir / 'run_record.json'} says status {record.get('status')!r}: the run did not finish; "
            f"regenerate it with `{REGENERATE_COMMAND}`"
        )
    seeds = {}
    for seed in summary["seeds"]:
        d = out_dir / f"seed-{seed}"
        for name in SEED_FILES:
            need(d / name)
        seeds[int(seed)] = {
            "m0": Measurements.from_npz(d / "theta0.npz"),
            "m1": Measurements.from_npz(d / "theta1.npz"),
            "update": dict(np.load(d / "update.npz")),
            "stats": json.loads((d / "stats.json").read_text()),
        }
    if not seeds:
        raise FileNotFoundError(
            f"{out_dir / 'summary.json'} lists no seed; regenerate with `{REGENERATE_COMMAND}`"
        )
    return {
        "summary": summary,
        "seeds": seeds,
        "agreement": json.loads(need(out_dir / "agreement.json").read_text()),
        "run_record": record,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Regenerate the Part IV fine-tuning experiment results.")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--theta0", default=HeadsExperiment.theta0)
    parser.add_argument("--seeds", type=int, nargs="+", default=list(HeadsExperiment.seeds))
    parser.add_argument("--steps", type=int, default=HeadsExperiment.finetune_steps)
    parser.add_argument("--eval-examples", type=int, default=HeadsExperiment.eval_examples)
    parser.add_argument("--ablation", choices=("zero", "mean"), default="zero")
    parser.add_argument(
        "--top-k", type=int, default=None, help="K of every top-K set (default 10%% of heads)"
    )
    args = parser.parse_args(argv)
    cfg = HeadsExperiment(
        theta0=args.theta0,
        seeds=tuple(args.seeds),
        finetune_steps=args.steps,
        eval_examples=args.eval_examples,
        ablation=args.ablation,
        top_k=args.top_k,
    )
    run(cfg, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
