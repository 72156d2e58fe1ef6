"""Benchmark: per-head ablation loop vs batched replicas vs batched + prefix reuse (book Part IV).

Same model, same data, one run: every method computes the same per-example Δloss for every query
head (checked here to 1e-5), and the ratios are against the loop measured in this run. Times are
CPU seconds of this process with one torch thread ("seconds": the work done, robust to other jobs on
a shared machine); wall-clock seconds are recorded beside them ("wall_seconds").

    .venv/bin/python bench/heads.py            # writes bench/results/heads.json

Models (``--models``, default all three): ``small``, the shipped θ0 of chapter 40 (relu-n10-forward,
8 heads); ``slice``, a 4-layer slice of the Qwen2.5-0.5B shape (random weights, all layer shapes
exact; the vocabulary is reduced to 8,192 rows, which only shrinks the LM head and the embedding: the
ablated layers are unchanged); ``smollm2``, the real SmolLM2-135M-Instruct (30 layers x 9 query heads:
ablation of all 270 heads, the real pair's θ0).
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "lib"))

from qwen_anatomy.config import QWEN2_5_0_5B  # noqa: E402
from qwen_anatomy.heads.ablation import ablation_deltas, head_units  # noqa: E402
from qwen_anatomy.heads.core import head_layout, make_batch  # noqa: E402
from qwen_anatomy.heads.gradients import gate_gradients  # noqa: E402
from qwen_anatomy.model import Qwen2ForCausalLM  # noqa: E402
from qwen_anatomy.runrecord import atomic_write_json, environment, utc_now  # noqa: E402


def small_model():
    """The shipped θ0 of chapter 40 (data/models/relu-n10-forward)."""
    from qwen_anatomy.loading import load_model

    model, _ = load_model("relu-n10-forward")
    return "relu-n10-forward (shipped θ0)", model


def slice_model():
    cfg = QWEN2_5_0_5B.replace(num_hidden_layers=4, vocab_size=8192)
    return "Qwen2.5-0.5B shape, 4 layers, vocab 8192, random", Qwen2ForCausalLM(cfg).init_weights(0).eval()


def smollm2_model():
    """SmolLM2-135M-Instruct, the real pair's θ0 (installed by `make`; a clear error names the fix)."""
    from qwen_anatomy.loading import load_model

    model, _ = load_model("smollm2-135m")
    return "SmolLM2-135M-Instruct (real weights, all 270 heads)", model.eval()


MODELS = {"small": (small_model, 16, 8), "slice": (slice_model, 8, 7), "smollm2": (smollm2_model, 8, 9)}


def data(vocab: int, n: int, length: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    seqs = [torch.randint(5, vocab, (length,), generator=g).tolist() for _ in range(n)]
    return make_batch(seqs, [length // 2] * n)


def timed(fn, repeats: int):
    """(best wall seconds, best CPU seconds of this process, result).

    On a shared machine wall time includes waiting for other processes; with one torch thread the
    process CPU time is the work done, so the ratios are taken from CPU time.
    """
    best_wall, best_cpu, out = float("inf"), float("inf"), None
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        out = fn()
        best_wall = min(best_wall, time.perf_counter() - w)
        best_cpu = min(best_cpu, time.process_time() - c)
    return best_wall, best_cpu, out


def bench_one(name, model, n, length, batch_size, replicas, repeats):
    batch = data(model.config.vocab_size, n, length)
    units = head_units(head_layout(model))
    res = {
        "model": name,
        "n_heads": len(units),
        "examples": n,
        "tokens_per_example": length,
        "batch_size": batch_size,
        "replicas": replicas,
        "seconds": {},
        "wall_seconds": {},
    }
    outs = {}
    for method in ("loop", "batched", "prefix"):
        wall, cpu, (_, delta) = timed(
            lambda m=method: ablation_deltas(model, batch, units, "zero", m, batch_size, replicas), repeats
        )
        res["seconds"][method] = round(cpu, 4)
        res["wall_seconds"][method] = round(wall, 4)
        outs[method] = delta
    for method in ("batched", "prefix"):
        diff = float((outs[method] - outs["loop"]).abs().max())
        assert diff < 1e-5, f"{method} differs from the loop by {diff}"
        res[f"max_abs_diff_{method}_vs_loop"] = diff
    wall, cpu, _ = timed(lambda: gate_gradients(model, batch, batch_size), repeats)
    res["seconds"]["gradients_all_heads"] = round(cpu, 4)
    res["wall_seconds"]["gradients_all_heads"] = round(wall, 4)
    s = res["seconds"]
    res["speedup_vs_loop"] = {
        "batched": round(s["loop"] / s["batched"], 3),
        "prefix": round(s["loop"] / s["prefix"], 3),
        "gradients": round(s["loop"] / s["gradients_all_heads"], 3),
    }
    return res


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "heads.json")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--examples", type=int, default=8)
    parser.add_argument("--length", type=int, default=32)
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    args = parser.parse_args(argv)
    env = environment()  # at the start: the record names the code this run starts from
    torch.set_num_threads(args.threads)
    results = []
    for make, batch_size, replicas in (MODELS[m] for m in args.models):
        name, model = make()
        r = bench_one(name, model, args.examples, args.length, batch_size, replicas, args.repeats)
        results.append(r)
        print(
            f"{name} (CPU time): loop {r['seconds']['loop']:.2f} s, batched {r['seconds']['batched']:.2f} s "
            f"({r['speedup_vs_loop']['batched']:.2f}x), batched+prefix {r['seconds']['prefix']:.2f} s "
            f"({r['speedup_vs_loop']['prefix']:.2f}x), gradients for all heads "
            f"{r['seconds']['gradients_all_heads']:.2f} s ({r['speedup_vs_loop']['gradients']:.1f}x)"
        )
    atomic_write_json(
        args.out,
        {
            "benchmark": "heads ablation: loop vs batched vs batched+prefix (seconds = process CPU time)",
            "time": utc_now(),
            "threads": args.threads,
            "python": platform.python_version(),
            "environment": env,
            "results": results,
        },
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
