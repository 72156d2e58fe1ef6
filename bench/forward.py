"""Forward and cached-generation speed: our Qwen2 against transformers (eager and sdpa), one process.

Models: a random-weight model of the exact Qwen2.5-0.5B shape (built locally, never downloaded) and
the real SmolLM2-135M. Workloads: forward over 1x512 and 4x128 tokens; greedy generation of 128 new
tokens with a KV cache from a 16-token prompt. Implementations are timed in interleaved order
(ours, eager, sdpa, ours, ...) so that background load hits all of them alike; the median of the
repetitions is reported, with ratios ours / transformers-sdpa.

    .venv/bin/python bench/forward.py [--reps 5] [--gen-reps 3] [--models qwen2.5-0.5b-shape,smollm2-135m]
                                      [--out bench/results/forward.json]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def build_models(name: str):
    """(ours, transformers eager, transformers sdpa) sharing the same weights."""
    import transformers

    from qwen_anatomy.config import QWEN2_5_0_5B
    from qwen_anatomy.loading import load_model
    from qwen_anatomy.model import Qwen2ForCausalLM

    if name == "qwen2.5-0.5b-shape":
        ours = Qwen2ForCausalLM(QWEN2_5_0_5B).init_weights(seed=0).eval()
        cls, cfg_cls = transformers.Qwen2ForCausalLM, transformers.Qwen2Config
    elif name == "smollm2-135m":
        ours, _ = load_model(name)
        cls, cfg_cls = transformers.LlamaForCausalLM, transformers.LlamaConfig
    else:
        raise SystemExit(f"unknown benchmark model {name!r}: use qwen2.5-0.5b-shape or smollm2-135m")
    refs = {}
    for impl in ("eager", "sdpa"):
        ref = cls(cfg_cls(**ours.config.to_hf_dict()))
        ref.config._attn_implementation = impl
        ref.load_state_dict(ours.state_dict(), strict=False)
        if ours.config.tie_word_embeddings:
            ref.tie_weights()
        refs[impl] = ref.eval()
    return ours, refs["eager"], refs["sdpa"]


def forward(model, ids: torch.Tensor) -> torch.Tensor:
    """Logits for every position: our model takes ids positionally, transformers by keyword."""
    if hasattr(model, "hook_points"):
        return model(ids).logits
    return model(input_ids=ids).logits


def greedy(kind: str, model, prompt: torch.Tensor, new_tokens: int) -> list[int]:
    """Exactly ``new_tokens`` greedy tokens with a KV cache (no end-of-sequence stop)."""
    from qwen_anatomy.generation import generate

    if kind == "ours":
        return generate(model, [prompt[0].tolist()], max_new_tokens=new_tokens)[0]
    out = model.generate(
        prompt,
        attention_mask=torch.ones_like(prompt),
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        pad_token_id=0,
        eos_token_id=None,
    )
    return out[0, prompt.shape[1] :].tolist()


def run(models: list[str], reps: int, gen_reps: int, gen_tokens: int = 128) -> dict:
    from qwen_anatomy.runrecord import environment

    torch.manual_seed(0)
    results = {"environment": environment(), "torch_threads": torch.get_num_threads(), "models": {}}
    for name in models:
        ours, eager, sdpa = build_models(name)
        vocab = ours.config.vocab_size
        impls = {"ours": ours, "transformers_eager": eager, "transformers_sdpa": sdpa}
        entry: dict = {"parameters": sum(p.numel() for p in ours.parameters()), "workloads": {}}
        with torch.no_grad():
            for batch, length in [(1, 512), (4, 128)]:
                ids = torch.randint(0, vocab, (batch, length))
                logits = {k: forward(m, ids) for k, m in impls.items()}  # warm-up, and a parity check
                max_diff = max((logits[k] - logits["ours"]).abs().max().item() for k in impls)
                times = {k: [] for k in impls}
                for _ in range(reps):
                    for k, m in impls.items():
                        start = time.perf_counter()
                        forward(m, ids)
                        times[k].append(time.perf_counter() - start)
                key = f"forward_{batch}x{length}"
                entry["workloads"][key] = summarise(times, extra={"max_abs_logit_diff": max_diff})
                print(f"{name} forward {batch}x{length}: {fmt(entry['workloads'][key])}", flush=True)

            prompt = torch.randint(0, vocab, (1, 16))
            outputs, times = {}, {k: [] for k in impls}
            for rep in range(gen_reps + 1):  # the first round is a warm-up
                for k, m in impls.items():
                    start = time.perf_counter()
                    outputs[k] = greedy(k, m, prompt, gen_tokens)
                    if rep:
                        times[k].append(time.perf_counter() - start)
            same = {k: outputs[k] == outputs["ours"] for k in impls}
            key = f"generate_{gen_tokens}"
            entry["workloads"][key] = summarise(times, extra={"same_tokens_as_ours": same})
            print(
                f"{name} greedy generation of {gen_tokens} tokens: {fmt(entry['workloads'][key])}", flush=True
            )
        results["models"][name] = entry
        del ours, eager, sdpa, impls
    return results


def summarise(times: dict[str, list[float]], extra: dict) -> dict:
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "median_seconds": med,
        "all_seconds": times,
        "ratio_ours_over_sdpa": med["ours"] / med["transformers_sdpa"],
        "ratio_ours_over_eager": med["ours"] / med["transformers_eager"],
        **extra,
    }


def fmt(w: dict) -> str:
    med = w["median_seconds"]
    return (
        f"ours {med['ours']:.3f}s, eager {med['transformers_eager']:.3f}s, sdpa {med['transformers_sdpa']:.3f}s; "
        f"ours/sdpa = {w['ratio_ours_over_sdpa']:.2f}x"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--gen-reps", type=int, default=3)
    parser.add_argument("--gen-tokens", type=int, default=128)
    parser.add_argument("--models", default="qwen2.5-0.5b-shape,smollm2-135m")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "forward.json")
    parser.add_argument("--note", default="", help="free text stored with the results (e.g. machine load)")
    args = parser.parse_args(argv)
    if args.reps < 1 or args.gen_reps < 1 or args.gen_tokens < 1:
        parser.error("--reps, --gen-reps and --gen-tokens must be positive")
    from qwen_anatomy.runrecord import atomic_write_json, utc_now

    start = utc_now()
    results = run(args.models.split(","), args.reps, args.gen_reps, args.gen_tokens)
    results.update(
        {
            "start_time": start,
            "end_time": utc_now(),
            "reps": args.reps,
            "gen_reps": args.gen_reps,
            "note": args.note,
        }
    )
    atomic_write_json(args.out, results)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
