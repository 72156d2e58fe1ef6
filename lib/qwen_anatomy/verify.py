"""Our model against transformers' own class for the same checkpoint (chapter 02_qwen2_from_scratch).

:func:`layer_divergence` compares the embedding output, every decoder layer's output, the final norm
and the logits, and names the first one that disagrees; :func:`verify_checkpoint` adds greedy
generation on several prompts, in the dtype asked for (float32 by default, or bfloat16 / float16:
both sides then run in that dtype, on the same device). In float32 transformers runs its eager
attention against our default (sdpa); in a half dtype both sides run sdpa (see below).

A checkpoint without ``tokenizer.json`` is compared on seeded random token ids instead of text
(:data:`RANDOM_INPUTS`; the report's ``inputs`` says so): parity of the two implementations does not
depend on what the ids mean.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from .model import Qwen2ForCausalLM, run_with_cache

DEFAULT_PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Water boils at a temperature of",
    "Once upon a time, in a small village,",
    "The three primary colors are",
]

# Inputs when the checkpoint has no tokenizer: as many sequences as there are default prompts.
RANDOM_INPUTS = {"sequences": len(DEFAULT_PROMPTS), "length": 16, "seed": 0}

# float32: a stage "disagrees" when its largest absolute difference exceeds ATOL + RTOL * rms(reference):
# float32 rounding grows with the activations' scale, so a purely absolute threshold would flag deep
# layers for rounding alone. The scale is the root mean square, not the largest value: residual
# streams carry a few huge "massive activation" dimensions (SmolLM2: values in the thousands) that
# would make a max-based tolerance blind. Rounding gives differences near 1e-6 of the rms; a wrong
# computation gives differences of the order of the rms itself, so 1e-3 separates them both ways.
ATOL = 1e-6  # a floor for stages whose values are all near zero
RTOL = 1e-3

# bfloat16 / float16: one rounding moves a value by up to its unit roundoff u (bfloat16 keeps 8
# significant bits: u = 2^-8 = 3.9e-3; float16 keeps 11: u = 2^-11 = 4.9e-4), and one rounding of a
# massive activation (Qwen2.5-Coder-0.5B: 804 in a residual stream of rms 7.8) is already 0.4 of
# the rms, so an rms-relative rule cannot work. Nor can two attention implementations be compared:
# eager rounds the attention probabilities to bfloat16 before multiplying by V, sdpa keeps them in
# float32, and over 512 tokens of Qwen2.5-Coder-0.5B the two differ by 4.0 on logits of scale 20.7
# (eager is 5.1 from float32, sdpa 2.0). So both sides run sdpa, the default of each library: the
# same operations in the same order (measured: bit for bit equal at every stage of Qwen2.5-Coder-0.5B
# in bfloat16 on CPU, over 13 and 512 tokens; eager on both sides is equal too), and a stage
# disagrees when it differs by more than HALF_ROUNDINGS roundings of its largest value: room for a
# kernel that sums in another order elsewhere, far below what a wrong formula does to the logits.
UNIT_ROUNDOFF = {torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}
HALF_ROUNDINGS = 4


def tolerance_for(dtype: torch.dtype = torch.float32) -> dict:
    """How :func:`layer_divergence` bounds each stage's largest difference in this dtype:
    ``atol + rtol * <scale>(reference)`` with scale "rms" (float32) or "max" (half dtypes)."""
    if dtype in UNIT_ROUNDOFF:
        u = UNIT_ROUNDOFF[dtype]
        return {
            "dtype": str(dtype).removeprefix("torch."),
            "atol": ATOL,
            "rtol": HALF_ROUNDINGS * u,
            "scale": "max",
            "attention": "sdpa on both sides",
            "reason": f"{HALF_ROUNDINGS} roundings (unit roundoff {u:.3g}) of the stage's largest value; "
            "same operations in the same order on both sides",
        }
    return {
        "dtype": str(dtype).removeprefix("torch."),
        "atol": ATOL,
        "rtol": RTOL,
        "scale": "rms",
        "attention": "ours: default (sdpa); transformers: eager",
        "reason": "float32 rounding is ~1e-6 of the rms, a wrong computation ~1 rms",
    }


def load_transformers_model(
    path: str | Path,
    use_safetensors: bool = True,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    attn_implementation: str = "eager",
):
    """transformers' class for the checkpoint (from config.json's architectures), with eager
    attention (or ``attn_implementation``), in ``dtype`` (float32 by default) on ``device``.

    Loaded with ``from_pretrained(dtype=...)``, as transformers users do: its RoPE frequencies stay
    float32 (a ``model.to(torch.bfloat16)`` would round them too, and differ from ours for that
    reason alone). ``use_safetensors=False`` only for a directory of pickles the user allowed
    (transformers reads them with ``weights_only=True``).
    """
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        str(path), dtype=dtype, attn_implementation=attn_implementation, use_safetensors=use_safetensors
    )
    return model.to(device).eval()


@torch.no_grad()
def _transformers_stages(hf_model, input_ids, attention_mask) -> tuple[list[torch.Tensor], torch.Tensor]:
    base = hf_model.model
    captured: list[torch.Tensor] = []

    def keep(_module, _inputs, output):
        captured.append((output[0] if isinstance(output, tuple) else output).detach())

    handles = [base.embed_tokens.register_forward_hook(keep)]
    handles += [layer.register_forward_hook(keep) for layer in base.layers]
    handles.append(base.norm.register_forward_hook(keep))
    try:
        logits = hf_model(input_ids=input_ids, attention_mask=attention_mask).logits
    finally:
        for h in handles:
            h.remove()
    return captured, logits


@torch.no_grad()
def layer_divergence(
    ours: Qwen2ForCausalLM,
    hf_model,
    input_ids: torch.Tensor,  # [B, T]
    attention_mask: torch.Tensor | None = None,  # [B, T]
) -> list[dict]:
    """One row per stage (embed, layer.0 .. layer.{L-1}, norm, logits): max and mean |difference|,
    and the stage's tolerance in our model's dtype (:func:`tolerance_for`).

    Only real (non-padding) positions are compared.
    """
    tol = tolerance_for(ours.dtype)
    n = ours.config.num_hidden_layers
    names = (
        ["model.hook_embed"] + [f"model.layers.{i}.hook_resid_post" for i in range(n)] + ["model.hook_final"]
    )
    out, cache = run_with_cache(ours, input_ids, names, attention_mask=attention_mask)
    ref_stages, ref_logits = _transformers_stages(hf_model, input_ids, attention_mask)
    ours_stages = [cache[k] for k in names] + [out.logits]
    ref_stages = ref_stages + [ref_logits]
    labels = ["embed"] + [f"layer.{i}" for i in range(n)] + ["norm", "logits"]
    keep = (
        attention_mask.bool()
        if attention_mask is not None
        else torch.ones(input_ids.shape, dtype=torch.bool, device=input_ids.device)
    )
    rows = []
    for label, a, b in zip(labels, ours_stages, ref_stages, strict=True):
        diff = (a - b)[keep].abs().double()
        ref = b[keep].double()
        rms = ref.pow(2).mean().sqrt().item()
        rows.append(
            {
                "stage": label,
                "max_abs_diff": diff.max().item(),
                "mean_abs_diff": diff.mean().item(),
                "max_abs_value": ref.abs().max().item(),
                "rms_value": rms,
                "tolerance": tol["atol"]
                + tol["rtol"] * (rms if tol["scale"] == "rms" else ref.abs().max().item()),
            }
        )
    return rows


def first_divergent(rows: list[dict]) -> str | None:
    for row in rows:
        if row["max_abs_diff"] > row["tolerance"]:
            return row["stage"]
    return None


def verify_checkpoint(
    spec: str | Path,
    prompts: Sequence[str] | None = None,
    max_new_tokens: int = 20,
    weights_only_pickle: bool = False,
    device: torch.device | str | None = "cpu",
    dtype: torch.dtype | str | None = torch.float32,
) -> dict:
    """Logit and greedy-token agreement between our model and transformers on the same inputs.

    Both models run in ``dtype`` on ``device`` (checked first); in bfloat16 or float16 transformers
    runs sdpa like ours and the tolerance follows :func:`tolerance_for`. Without
    ``tokenizer.json`` the inputs are :data:`RANDOM_INPUTS` (``prompts`` must then be None).
    Config, tokenizer, prompt lengths and weights are checked before transformers is imported.
    """
    from .devices import resolve_device, resolve_dtype
    from .errors import UserInputError
    from .generation import generate
    from .loading import load_config, load_model, resolve_model
    from .validate import check_prompt_fits, open_tokenizer

    device, dtype = resolve_device(device, "device"), resolve_dtype(dtype, "dtype")
    path = resolve_model(spec)
    config = load_config(path)
    tok = open_tokenizer(path)
    if tok is None and prompts is not None:
        raise UserInputError(
            f"--prompts needs a tokenizer, but {path} has no tokenizer.json: drop --prompts to compare "
            "on seeded random token ids"
        )
    if tok is not None:
        texts = list(prompts or DEFAULT_PROMPTS)
        inputs = [tok.encode(t, add_special_tokens=True) for t in texts]
        eos = tok.eos_token_id
        input_kind = "text"
    else:
        r = RANDOM_INPUTS
        g = torch.Generator().manual_seed(r["seed"])
        length = min(r["length"], max(1, config.max_position_embeddings - max_new_tokens))
        inputs = torch.randint(0, config.vocab_size, (r["sequences"], length), generator=g).tolist()
        texts = None
        eos = list(config.eos_token_ids) or None
        input_kind = (
            f"random token ids (no tokenizer.json): {r['sequences']} sequences of {length} ids in "
            f"0..{config.vocab_size - 1}, seed {r['seed']}"
        )
    for i, ids in enumerate(inputs):
        what = f"prompt {i + 1} ({texts[i][:30]!r})" if texts else f"random sequence {i + 1}"
        check_prompt_fits(ids, config, max_new_tokens, what)
    ours, _ = load_model(
        path, with_tokenizer=False, weights_only_pickle=weights_only_pickle, device=device, dtype=dtype
    )
    tolerance = tolerance_for(dtype)
    hf_model = load_transformers_model(
        path,
        use_safetensors=not (weights_only_pickle and _pickle_only(path)),
        dtype=dtype,
        device=device,
        # a half dtype: our operations, in our order (eager would round the attention probabilities)
        attn_implementation="sdpa" if tolerance["scale"] == "max" else "eager",
    )
    per_prompt, all_rows = [], []
    greedy_equal = True
    pad = eos if isinstance(eos, int) else (eos[0] if eos else 0)
    for i, ids in enumerate(inputs):
        input_ids = torch.tensor([ids], device=device)
        rows = layer_divergence(ours, hf_model, input_ids)
        all_rows.append(rows)
        ours_new = generate(ours, [ids], max_new_tokens=max_new_tokens, eos_token_id=eos)[0]
        with torch.no_grad():
            hf_out = hf_model.generate(
                input_ids,
                attention_mask=torch.ones_like(input_ids),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=eos,
                pad_token_id=pad,
            )
        hf_new = hf_out[0, len(ids) :].tolist()
        equal = ours_new == hf_new
        greedy_equal &= equal
        entry = {"prompt": texts[i]} if texts else {"input_ids": ids}
        entry.update(
            {
                "greedy_tokens_equal": equal,
                "max_abs_logit_diff": rows[-1]["max_abs_diff"],
                "ours": tok.decode(ours_new) if tok else ours_new,
                "transformers": tok.decode(hf_new) if tok else hf_new,
            }
        )
        per_prompt.append(entry)
    stages = [r["stage"] for r in all_rows[0]]
    per_layer = {stage: max(rows[i]["max_abs_diff"] for rows in all_rows) for i, stage in enumerate(stages)}
    worst_rows = [
        max((rows[i] for rows in all_rows), key=lambda r: r["max_abs_diff"]) for i in range(len(stages))
    ]
    return {
        "model": str(spec),
        "path": str(path),
        "transformers_class": type(hf_model).__name__,
        "device": str(device),
        "dtype": tolerance["dtype"],
        "inputs": input_kind,
        "prompts": len(inputs),
        "max_abs_logit_diff": max(p["max_abs_logit_diff"] for p in per_prompt),
        "mean_abs_logit_diff": sum(rows[-1]["mean_abs_diff"] for rows in all_rows) / len(all_rows),
        "greedy_tokens_equal": bool(greedy_equal),
        "first_divergent_layer": first_divergent(worst_rows),
        "tolerance": tolerance,
        "per_layer_max_abs_diff": per_layer,
        "per_prompt": per_prompt,
    }


def _pickle_only(path: Path) -> bool:
    from .loading import weight_files

    return not weight_files(path)
