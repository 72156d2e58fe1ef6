"""Benchmark of `qwen-anatomy params` against a seed-style baseline on exact-shape stand-ins (Part II).

    .venv/bin/python bench/weights.py            # Qwen2.5-0.5B layout (bf16, 290 tensors)
    .venv/bin/python bench/weights.py --7b       # Qwen2.5-7B layout in 4 shards (up to 90 min)

Builds once, outside git (``$QWEN_ANATOMY_CACHE/bench`` or ``~/.cache/qwen-anatomy/bench``), a
random-weight bf16 safetensors checkpoint with the exact layout, then measures in this one run, each
in its own process: the header-only summary (``--describe``), the statistics pass (``--spectra
none``), statistics + spectra (``--spectra gram``) and the seed-style baseline (load every tensor as
float32 into memory, then per-tensor mean/std and the full SVD). Writes JSON with wall times, peak
RSS, the ratios baseline / ours, the targets, and the machine (``bench/results/weights_<layout>.json``).
Sizes are computed from the layout's parameter count and printed in GB of 2**30 bytes, the unit of the
result files.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "lib"))

TARGETS = {
    "qwen2.5-0.5b": {"describe_s": 1.0, "stats_s": 60, "spectra_s": 180, "peak_rss_mb": 1536},
    "qwen2.5-7b": {"describe_s": 2.0, "stats_s": 600, "spectra_s": 5400, "peak_rss_mb": 6144},
}
EXPECTED = {
    "qwen2.5-0.5b": {"rows": 290, "parameters": 494_032_768},
    "qwen2.5-7b": {"rows": 339, "parameters": 7_615_616_512},
}


def gb(n_bytes: float) -> float:
    """Bytes in GB of 2**30 bytes (the unit every size printed or recorded here uses)."""
    return n_bytes / 2**30


def sizes_gb(name: str) -> dict[str, float]:
    """The stand-in checkpoint in bf16 (2 bytes per parameter) and the baseline's float32 copy (4 bytes)."""
    n = EXPECTED[name]["parameters"]
    return {"bf16": gb(2 * n), "float32": gb(4 * n)}


def layout_config(name: str):
    from qwen_anatomy.config import QWEN2_5_0_5B

    if name == "qwen2.5-0.5b":
        return QWEN2_5_0_5B
    return QWEN2_5_0_5B.replace(
        vocab_size=152064,
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        head_dim=128,
        tie_word_embeddings=False,
    )


def cache_dir() -> Path:
    env = os.environ.get("QWEN_ANATOMY_CACHE")
    return (Path(env) if env else Path.home() / ".cache" / "qwen-anatomy") / "bench"


def build(name: str) -> tuple[Path, float]:
    from qwen_anatomy.weights.synthetic import write_random_checkpoint

    target = cache_dir() / f"{name}-random-bf16"
    if (target / "config.json").is_file():
        return target, 0.0
    t = time.perf_counter()
    cache_dir().mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=cache_dir(), prefix=f".{name}-"))
    write_random_checkpoint(
        tmp, layout_config(name), dtype="BF16", seed=0, shards=4 if name == "qwen2.5-7b" else 1
    )
    os.replace(tmp, target)
    return target, time.perf_counter() - t


CPU_SECONDS: dict[str, float] = {}


def timed(cmd: list[str]) -> tuple[float, subprocess.CompletedProcess]:
    """Wall time of a child process; its CPU time (user + sys) goes to CPU_SECONDS[' '.join(cmd)]."""
    import resource

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    CPU_SECONDS[" ".join(cmd)] = round(
        (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), 2
    )
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    return wall, proc


def ours(ckpt: Path, spectra: str, work: Path) -> dict:
    out = work / f"params-{spectra}.csv"
    exe = str(Path(sys.executable).with_name("qwen-anatomy"))
    cmd = [
        exe,
        "params",
        str(ckpt),
        "--out",
        str(out),
        "--spectra",
        spectra,
        "--threads",
        "1",
        "--no-progress",
    ]
    wall, _ = timed(cmd)
    record = json.loads(out.with_name(out.name + ".run.json").read_text())
    import pandas as pd

    df = pd.read_csv(out)
    layers = df["layer"].dropna().astype(int)
    return {
        "wall_s": round(wall, 2),
        "cpu_s": CPU_SECONDS[" ".join(cmd)],
        "stages_s": record["stages"],
        "peak_rss_mb": record["peak_rss_mb"],
        "rows": len(df),
        "parameters": int(df["numel"].sum()),
        "layers": [int(layers.min()), int(layers.max())] if len(layers) else None,
        "rows_per_layer": sorted(set(layers.value_counts().tolist())),
        "dtypes": sorted(set(df["dtype"])),
        "lm_head_rows": int((df["block_type"] == "lm_head").sum()),
        "bias_rows_typed_bias": bool((df.loc[df["name"].str.endswith(".bias"), "kind"] == "bias").all()),
        "mlp_types": sorted(set(df.loc[df["name"].str.contains(".mlp."), "block_type"])),
    }


def baseline_worker(ckpt: str) -> None:
    """The seed tool's approach: every tensor as float32 in memory first, then stats and full SVD."""
    import resource

    import torch
    from safetensors.torch import load_file

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    state = {}
    for f in sorted(Path(ckpt).glob("*.safetensors")):
        state.update({k: v.float() for k, v in load_file(str(f)).items()})
    load_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    rows = []
    for name, w in state.items():
        row = {"name": name, "mean": w.mean().item(), "std": w.std().item()}
        if w.ndim == 2:
            s = torch.linalg.svdvals(w)
            row["rank"] = int((s > s[0] * 1e-6).sum())
        rows.append(row)
    print(json.dumps({
        "load_s": round(load_s, 2),
        "analysis_s": round(time.perf_counter() - t1, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "rows": len(rows),
    }))  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--7b",
        dest="seven",
        action="store_true",
        help=f"the Qwen2.5-7B layout ({sizes_gb('qwen2.5-7b')['bf16']:.1f} GB of bf16 in 4 shards; long)",
    )
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--out", type=Path, help="result JSON (default bench/results/weights_<layout>.json)")
    parser.add_argument("--baseline-worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.baseline_worker:
        baseline_worker(args.baseline_worker)
        return 0
    from qwen_anatomy.runrecord import atomic_write_json, environment, utc_now

    name = "qwen2.5-7b" if args.seven else "qwen2.5-0.5b"
    out = args.out or ROOT / "bench" / "results" / f"weights_{name}.json"
    load_start = os.getloadavg()
    started = utc_now()
    env = environment()  # at the start: the record names the code this run starts from
    ckpt, build_s = build(name)
    print(
        f"stand-in: {ckpt}, {sizes_gb(name)['bf16']:.1f} GB of bf16 "
        + (f"(built in {build_s:.0f} s)" if build_s else "(cached)"),
        flush=True,
    )
    result = {"layout": name, "checkpoint": str(ckpt), "build_s": round(build_s, 1), "started": started}
    exe = str(Path(sys.executable).with_name("qwen-anatomy"))
    walls = [timed([exe, "params", str(ckpt), "--describe"])[0] for _ in range(3)]
    result["describe_s"] = round(min(walls), 3)
    result["describe_s_all"] = [round(w, 3) for w in walls]
    print(f"describe: {result['describe_s']:.2f} s (best of 3, including interpreter start)", flush=True)
    with tempfile.TemporaryDirectory() as work:
        result["stats"] = ours(ckpt, "none", Path(work))
        print(
            f"statistics: {result['stats']['wall_s']:.1f} s, peak {result['stats']['peak_rss_mb']:.0f} MB",
            flush=True,
        )
        result["stats_spectra"] = ours(ckpt, "gram", Path(work))
        print(
            f"statistics + spectra (gram): {result['stats_spectra']['wall_s']:.1f} s, "
            f"peak {result['stats_spectra']['peak_rss_mb']:.0f} MB",
            flush=True,
        )
    # The baseline holds every tensor as float32 at once (sizes_gb(name)["float32"]): refuse it up front
    # when that cannot fit in RAM, and record why, rather than let the kernel kill it mid-run.
    need_gb = sizes_gb(name)["float32"]
    ram_gb = gb(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    if not args.skip_baseline and need_gb > 0.9 * ram_gb:
        result["baseline"] = {
            "skipped": f"needs {need_gb:.1f} GB of float32 tensors in memory; this machine has "
            f"{ram_gb:.1f} GB RAM (the seed-style approach cannot run this layout here)"
        }
        print(f"baseline skipped: {result['baseline']['skipped']}", flush=True)
    elif not args.skip_baseline:
        wall, proc = timed([sys.executable, __file__, "--baseline-worker", str(ckpt)])
        base = json.loads(proc.stdout.strip().splitlines()[-1])
        base["wall_s"] = round(wall, 2)
        base["cpu_s"] = CPU_SECONDS[" ".join([sys.executable, __file__, "--baseline-worker", str(ckpt)])]
        base["method"] = (
            "seed-style: all tensors float32 in memory (safetensors.torch), mean/std, torch.linalg.svdvals, 1 thread"
        )
        result["baseline"] = base
        result["ratio_baseline_over_ours_wall"] = round(wall / result["stats_spectra"]["wall_s"], 2)
        result["ratio_baseline_over_ours_rss"] = round(
            base["peak_rss_mb"] / result["stats_spectra"]["peak_rss_mb"], 2
        )
        print(
            f"baseline: {wall:.1f} s, peak {base['peak_rss_mb']:.0f} MB; ratio (wall) {result['ratio_baseline_over_ours_wall']}x"
        )
    t = TARGETS[name]
    checks = {
        "describe_s": result["describe_s"] <= t["describe_s"],
        "stats_s": result["stats"]["wall_s"] <= t["stats_s"],
        "spectra_s": result["stats_spectra"]["wall_s"] <= t["spectra_s"],
        "peak_rss_mb": max(result["stats"]["peak_rss_mb"], result["stats_spectra"]["peak_rss_mb"])
        <= t["peak_rss_mb"],
        "rows": result["stats"]["rows"] == EXPECTED[name]["rows"],
        "parameters": result["stats"]["parameters"] == EXPECTED[name]["parameters"],
    }
    result["targets"] = t
    result["expected"] = EXPECTED[name]
    result["met"] = checks
    result["finished"] = utc_now()
    result["loadavg_start_end"] = [list(load_start), list(os.getloadavg())]
    result["machine_note"] = (
        f"{os.cpu_count()} vCPUs, {ram_gb:.0f} GB RAM; other jobs may share the machine (see "
        "loadavg_start_end and cpu_s against wall_s); single BLAS thread for ours and the baseline; wall "
        "times include interpreter start and imports"
    )
    result["environment"] = env
    atomic_write_json(out, result)
    print(json.dumps(checks))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
