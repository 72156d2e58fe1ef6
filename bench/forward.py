"""Forward and cached-generation speed: our Qwen2 against transformers (eager and sdpa), one process.

Models: a random-weight model of the exact Qwen2.5-0.5B shape (built locally, never downloaded) and
the real SmolLM2-135M, in float32; and the real Qwen2 ``qwen2.5-coder-0.5b`` (the built-in, its
GGUF dequantised once to float32) in float32 and bfloat16, each side loaded the way its users load
it (ours: ``load_model(..., dtype=)``; transformers: ``from_pretrained(..., dtype=)``, so its RoPE
frequencies stay float32). Workloads: forward over 1x512 and 4x128 tokens (the real Qwen2: 1x512);
greedy generation of 128 new tokens with a KV cache from a 16-token prompt. Implementations are
timed in interleaved order (ours, eager, sdpa, ours, ...) so that background load hits all of them
alike; the median of the repetitions is reported, with ratios ours / transformers-sdpa. For the
real Qwen2 one transformers model serves both attention implementations (switched between calls),
which keeps two copies of the weights in memory instead of three.

    .venv/bin/python bench/forward.py [--reps 5] [--gen-reps 3] [--gen-tokens 128]
                                      [--models qwen2.5-0.5b-shape,smollm2-135m,qwen2.5-coder-0.5b]
                                      [--dtypes float32,bfloat16] [--out bench/results/forward.json]

``--dtypes`` applies to the real Qwen2 (the other two rows are float32 only, as before).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
REAL_QWEN2 = "qwen2.5-coder-0.5b"
MODELS = ("qwen2.5-0.5b-shape", "smollm2-135m", REAL_QWEN2)
FORWARD_SHAPES = {REAL_QWEN2: [(1, 512)]}  # the others: 1x512 and 4x128
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


class AttentionSwitch:
    """One transformers model called under one attention implementation (weights shared)."""

    def __init__(self, model, implementation: str) -> None:
        self.model, self.implementation = model, implementation

    def _set(self):
        self.model.config._attn_implementation = self.implementation  # read at every forward
        return self.model

    def __call__(self, **kwargs):
        return self._set()(**kwargs)

    def generate(self, *args, **kwargs):
        return self._set().generate(*args, **kwargs)


def build_models(name: str, dtype: torch.dtype = torch.float32):
    """(ours, transformers eager, transformers sdpa) sharing the same weights."""
    import transformers

    from qwen_anatomy.config import QWEN2_5_0_5B

    transformers.utils.logging.disable_progress_bar()
    from qwen_anatomy.loading import load_model, resolve_model
    from qwen_anatomy.model import Qwen2ForCausalLM

    if name == REAL_QWEN2:
        ours, _ = load_model(name, dtype=dtype)
        ref = transformers.AutoModelForCausalLM.from_pretrained(
            str(resolve_model(name)), dtype=dtype, attn_implementation="sdpa"
        ).eval()
        return ours, AttentionSwitch(ref, "eager"), AttentionSwitch(ref, "sdpa")
    if dtype != torch.float32:
        raise SystemExit(f"{name} is benchmarked in float32 only; --dtypes applies to {REAL_QWEN2}")
    if name == "qwen2.5-0.5b-shape":
        ours = Qwen2ForCausalLM(QWEN2_5_0_5B).init_weights(seed=0).eval()
        cls, cfg_cls = transformers.Qwen2ForCausalLM, transformers.Qwen2Config
    elif name == "smollm2-135m":
        ours, _ = load_model(name)
        cls, cfg_cls = transformers.LlamaForCausalLM, transformers.LlamaConfig
    else:
        raise SystemExit(f"unknown benchmark model {name!r}: use {', '.join(MODELS)}")
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


def run(models: list[str], reps: int, gen_reps: int, gen_tokens: int = 128, dtypes=("float32",)) -> dict:
    from qwen_anatomy.runrecord import environment

    torch.manual_seed(0)
    results = {"environment": environment(), "torch_threads": torch.get_num_threads(), "models": {}}
    rows = [(name, "float32") for name in models if name != REAL_QWEN2]
    rows += [(REAL_QWEN2, dt) for dt in dtypes if REAL_QWEN2 in models]
    for name, dtype_name in rows:
        key_name = name if name != REAL_QWEN2 else f"{name}/{dtype_name}"
        ours, eager, sdpa = build_models(name, DTYPES[dtype_name])
        vocab = ours.config.vocab_size
        impls = {"ours": ours, "transformers_eager": eager, "transformers_sdpa": sdpa}
        entry: dict = {
            "parameters": sum(p.numel() for p in ours.parameters()),
            "dtype": dtype_name,
            "workloads": {},
        }
        with torch.no_grad():
            for batch, length in FORWARD_SHAPES.get(name, [(1, 512), (4, 128)]):
                ids = torch.randint(0, vocab, (batch, length))
                logits = {k: forward(m, ids) for k, m in impls.items()}  # warm-up, and a parity check
                diffs = {k: (logits[k] - logits["ours"]).abs().max().item() for k in impls if k != "ours"}
                scale = logits["transformers_eager"].abs().max().item()
                del logits
                times = {k: [] for k in impls}
                for _ in range(reps):
                    for k, m in impls.items():
                        start = time.perf_counter()
                        forward(m, ids)
                        times[k].append(time.perf_counter() - start)
                key = f"forward_{batch}x{length}"
                extra = {
                    "max_abs_logit_diff": max(diffs.values()),
                    "max_abs_logit_diff_by_implementation": diffs,  # bfloat16: 0 vs sdpa (same operations)
                    "max_abs_logit": scale,
                }
                entry["workloads"][key] = summarise(times, extra=extra)
                print(f"{key_name} forward {batch}x{length}: {fmt(entry['workloads'][key])}", flush=True)

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
                f"{key_name} greedy generation of {gen_tokens} tokens: {fmt(entry['workloads'][key])}",
                flush=True,
            )
        results["models"][key_name] = entry
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
    parser.add_argument("--reps", type=int, default=5, help="timed forward passes per implementation")
    parser.add_argument("--gen-reps", type=int, default=3, help="timed generations (after one warm-up)")
    parser.add_argument("--gen-tokens", type=int, default=128, help="new tokens per generation")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument(
        "--dtypes", default="float32,bfloat16", help=f"dtypes of the {REAL_QWEN2} rows (float32, bfloat16)"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "forward.json")
    parser.add_argument("--note", default="", help="free text stored with the results (e.g. machine load)")
    args = parser.parse_args(argv)
    if args.reps < 1 or args.gen_reps < 1 or args.gen_tokens < 1:
        parser.error("--reps, --gen-reps and --gen-tokens must be positive")
    models, dtypes = args.models.split(","), args.dtypes.split(",")
    for name in models:
        if name not in MODELS:
            parser.error(f"--models: unknown model {name!r}; use some of {', '.join(MODELS)}")
    for dt in dtypes:
        if dt not in DTYPES:
            parser.error(f"--dtypes: {dt!r}; use some of {', '.join(DTYPES)}")
    from qwen_anatomy.runrecord import atomic_write_json, utc_now

    start = utc_now()
    results = run(models, args.reps, args.gen_reps, args.gen_tokens, dtypes)
    results.update(
        {
            "start_time": start,
            "end_time": utc_now(),
            "reps": args.reps,
            "gen_reps": args.gen_reps,
            "gen_tokens": args.gen_tokens,
            "note": args.note,
        }
    )
    atomic_write_json(args.out, results)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
