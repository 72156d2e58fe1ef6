"""Training loop, metrics, inference modes and generation for CausalQwen (chapter 50_causal_heads).

A plain loop rather than the Hugging Face Trainer: the loss needs the numeric values and the gate
beside the ids, the health metrics (median scale of U, median sum_k P_k, <NUM> accuracy) come from
the same forward pass, and importing transformers would cost 15-19 s for nothing else. Everything
the Trainer would add (AdamW, gradient clipping, logging every k steps) is here in a few lines.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable

import torch

from ..errors import UserInputError
from . import cauchy
from .model import BaselineQwen, CausalOutput, CausalQwen, gated_loss, next_token_targets
from .numtok import NumberTokenizer, format_number

MODES = ("standard", "causal", "shared", "compatible")


def on_device(batch: dict, model) -> dict:
    """A batch of tensors moved to the device of the model's backbone (the tokenizer builds them
    on the CPU)."""
    device = model.backbone.device
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def check_dataset(texts, name: str = "training set") -> list[str]:
    if texts is None or len(texts) == 0:
        raise UserInputError(f"the {name} is empty: give at least one text")
    return list(texts)


def batches(numtok: NumberTokenizer, texts: list[str], batch_size: int, max_length: int, seed: int):
    """An endless stream of shuffled, right-padded batches (dicts of tensors)."""
    rng = random.Random(seed)
    order = list(range(len(texts)))
    while True:
        rng.shuffle(order)
        for i in range(0, len(order), batch_size):
            chunk = [texts[j] for j in order[i : i + batch_size]]
            yield numtok.batch(chunk, max_length=max_length)


@torch.no_grad()
def health(out: CausalOutput, batch: dict, num_token_id: int) -> dict[str, float]:
    """Median scale of U, median sum_k P_k, and <NUM> accuracy at positions whose label is <NUM>."""
    labels, valid, is_num, _ = next_token_targets(
        batch["input_ids"], batch["numerical_values"], batch["attention_mask"], num_token_id
    )
    pred = out.choice()
    stats = {
        "median_sum_p": float(out.probs.sum(-1)[valid].median()) if valid.any() else float("nan"),
        "num_accuracy": float((pred[is_num] == num_token_id).float().mean())
        if is_num.any()
        else float("nan"),
        "token_accuracy": float((pred[valid] == labels[valid]).float().mean())
        if valid.any()
        else float("nan"),
    }
    stats["median_scale_u"] = float(out.scale_U[valid].median()) if out.scale_U is not None else float("nan")
    return stats


def clip_gradients(params, mode: str = "per_parameter", max_norm: float = 1.0) -> None:
    """Clip gradient norms at ``max_norm``: each parameter on its own, or all together ("global")."""
    if mode == "global":
        torch.nn.utils.clip_grad_norm_(params, max_norm)
        return
    for p in params:
        if p.grad is not None:
            torch.nn.utils.clip_grad_norm_([p], max_norm)


def train(
    model: CausalQwen | BaselineQwen,
    numtok: NumberTokenizer,
    texts: list[str],
    steps: int,
    batch_size: int = 8,
    max_length: int = 48,
    lr: float = 1e-3,
    seed: int = 0,
    log_every: int = 10,
    on_log: Callable[[dict], None] | None = None,
    lr_pretrained: float | None = None,
    clip: str = "per_parameter",
) -> list[dict]:
    """Train the trainable parameters (heads, phi direction, new rows; the backbone when not frozen)
    with AdamW and gradient clipping at 1. Returns the health log, one row per ``log_every`` steps.

    ``lr_pretrained`` (default: ``lr``) is the learning rate of the head matrices copied from the base
    model (``model.pretrained_parameters()``: the identity abduction and the LM-head copy). Adam moves
    every entry by about the learning rate per step, so on a large head a rate that suits the new
    parameters rewrites the base model's ranking within a few steps (chapter 50 measures it).

    ``clip``: "per_parameter" (default) clips each parameter's gradient norm at 1 on its own; "global"
    clips the norm of all gradients together. With OvR on a large vocabulary the scale of U collapses
    towards 0 and its gradient grows like 1/scale: a global clip then shrinks every other gradient
    below Adam's epsilon, and the regression head and the new rows stop learning (chapter 50)."""
    texts = check_dataset(texts)
    if clip not in ("per_parameter", "global"):
        raise UserInputError(f"clip={clip!r}: use 'per_parameter' or 'global'")
    if not isinstance(steps, int) or steps < 0:
        raise UserInputError(f"steps={steps!r} must be an integer >= 0")
    for name, value in (("lr", lr), ("lr_pretrained", lr if lr_pretrained is None else lr_pretrained)):
        if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
            raise UserInputError(f"{name}={value!r} must be a finite number > 0")
    cfg = model.config
    torch.manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    slow = {id(p) for p in model.pretrained_parameters() if p.requires_grad}
    groups = [{"params": [p for p in params if id(p) not in slow], "lr": lr}]
    if slow:
        groups.append(
            {
                "params": [p for p in params if id(p) in slow],
                "lr": lr if lr_pretrained is None else lr_pretrained,
            }
        )
    opt = torch.optim.AdamW(groups, lr=lr, weight_decay=0.0)
    stream = batches(numtok, texts, batch_size, max_length, seed)
    log: list[dict] = []
    model.train()
    t0 = time.perf_counter()
    for step in range(steps + 1):
        batch = on_device(next(stream), model)
        out = model(batch["input_ids"], batch["numerical_values"], batch["attention_mask"])
        parts = gated_loss(
            out,
            batch["input_ids"],
            batch["numerical_values"],
            batch["attention_mask"],
            model.num_token_id,
            alpha=cfg.alpha,
            lam=cfg.lam,
            classifier=cfg.classifier,
        )
        if step % log_every == 0 or step == steps:
            row = {
                "step": step,
                **{k: float(v.detach()) for k, v in parts.items()},
                **health(out, batch, model.num_token_id),
            }
            row["seconds"] = round(time.perf_counter() - t0, 2)
            log.append(row)
            if on_log:
                on_log(row)
        if step == steps:
            break  # the last row logs the model after `steps` updates
        opt.zero_grad(set_to_none=True)
        parts["loss"].backward()
        clip_gradients(params, clip)
        opt.step()
    model.eval()
    return log


# -- prediction --------------------------------------------------------------------------------------
@torch.no_grad()
def predict(
    model,
    batch: dict,
    mode: str = "standard",
    temperature: float = 0.0,
    generator: torch.Generator | None = None,
    eps: torch.Tensor | None = None,
):
    """Token choice [B, T], value [B, T] and value scale [B, T] at every position, in one mode.

    standard: argmax_k P_k, value loc_Y. causal: draw u = loc_U + scale_U tan(pi(eps - 1/2)), then
    OvR argmax on Cauchy(W u + b, |W||b_noise|), value W_r u + b_r. shared: the same with one eps [C]
    for every position and row. compatible: softmax(loc_S / T) (argmax when T = 0), value loc_Y.
    """
    if mode not in MODES:
        raise UserInputError(f"mode={mode!r}: use one of {MODES}")
    batch = on_device(batch, model)
    out = model(batch["input_ids"], batch.get("numerical_values"), batch.get("attention_mask"))
    if mode in ("causal", "shared"):
        if not isinstance(model, CausalQwen):
            raise UserInputError(f"mode {mode!r} needs a CausalQwen model (the baseline has no U)")
        if mode == "shared" and eps is None:
            eps = torch.rand(model.causal_dim, generator=generator)
        if eps is not None:
            eps = eps.expand_as(out.loc_U)
        u = cauchy.sample(
            out.loc_U, out.scale_U, generator=generator, dist=model.config.distribution, eps=eps
        )
        scores, value = model.actions_from_u(u)
        return scores.argmax(-1), value, torch.zeros_like(value)
    if mode == "compatible":
        if temperature == 0:
            token = out.loc_S.argmax(-1)
        else:
            p = torch.softmax(out.loc_S / temperature, -1)
            # drawn on the CPU, where the seeded generator lives
            token = torch.multinomial(p.reshape(-1, p.shape[-1]).cpu(), 1, generator=generator)
            token = token.reshape(p.shape[:-1]).to(p.device)
        return token, out.loc_Y, out.scale_Y
    return out.choice(), out.loc_Y, out.scale_Y


@torch.no_grad()
def generate(
    model,
    numtok: NumberTokenizer,
    prompt: str,
    max_new_tokens: int = 20,
    mode: str = "standard",
    temperature: float = 0.0,
    seed: int = 0,
) -> dict:
    """Generate text; a predicted ``<NUM>`` appends the <NUM> id with the predicted value, which the
    decoded text prints. Recomputes the (short) prefix at every step: values enter through phi(v) at
    the input, so a cache would need the same fusion, and these prompts are tens of tokens long.
    Shared mode draws one eps for the whole generation (one consistent individual)."""
    if mode not in MODES:
        raise UserInputError(f"mode={mode!r}: use one of {MODES}")
    enc = numtok.encode(prompt)
    if not enc.input_ids:
        raise UserInputError("the prompt is empty: give some text")
    ids, vals = list(enc.input_ids), list(enc.numerical_values)
    g = torch.Generator().manual_seed(seed)
    eps = torch.rand(model.causal_dim, generator=g) if mode == "shared" else None
    new_ids, new_vals = [], []
    for _ in range(max_new_tokens):
        batch = {"input_ids": torch.tensor([ids]), "numerical_values": torch.tensor([vals])}
        token, value, _ = predict(model, batch, mode, temperature, g, eps)
        tok, val = int(token[0, -1]), float(value[0, -1])
        if tok != model.num_token_id:
            val = 0.0
        else:
            val = float(format_number(round(val, 2)))
        ids.append(tok)
        vals.append(val)
        new_ids.append(tok)
        new_vals.append(val)
        if numtok.eos_token_id is not None and tok == numtok.eos_token_id:
            break
    return {
        "prompt": prompt,
        "text": numtok.decode(new_ids, new_vals),
        "token_ids": new_ids,
        "values": new_vals,
        "numbers": [v for i, v in zip(new_ids, new_vals, strict=True) if i == model.num_token_id],
    }


# -- evaluation --------------------------------------------------------------------------------------
@torch.no_grad()
def evaluate(
    model,
    numtok: NumberTokenizer,
    texts: list[str],
    batch_size: int = 16,
    max_length: int = 64,
    n_bins: int = 10,
) -> dict[str, float]:
    """Metrics on one evaluation set (chapter 50 defines each).

    accuracy (OvR argmax, or softmax argmax for softmax heads) and compat_accuracy (argmax loc_S);
    <NUM> precision/recall/F1 (is the next token a number); MAE, median AE and RMSE on correctly
    predicted numbers; 95% interval coverage on every <NUM> position (Cauchy half-width 12.706 scale,
    1.96 sigma for Normal); ECE of the normalised probabilities (10 equal-width bins).
    """
    texts = check_dataset(texts, "evaluation set")
    num = model.num_token_id
    dist = model.config.distribution if isinstance(model, CausalQwen) else "normal"
    correct = compat_correct = n_valid = 0
    tp = fp = fn = 0
    errors, covered, n_num = [], 0, 0
    conf_all, hit_all = [], []
    model.eval()
    for i in range(0, len(texts), batch_size):
        batch = on_device(numtok.batch(texts[i : i + batch_size], max_length=max_length), model)
        out = model(batch["input_ids"], batch["numerical_values"], batch["attention_mask"])
        labels, valid, is_num, values = next_token_targets(
            batch["input_ids"], batch["numerical_values"], batch["attention_mask"], num
        )
        pred = out.choice()
        compat = out.loc_S.argmax(-1)
        correct += int((pred == labels)[valid].sum())
        compat_correct += int((compat == labels)[valid].sum())
        n_valid += int(valid.sum())
        pred_num = (pred == num) & valid
        tp += int((pred_num & is_num).sum())
        fp += int((pred_num & ~is_num).sum())
        fn += int((~pred_num & is_num).sum())
        hit = pred_num & is_num
        errors += (out.loc_Y[hit] - values[hit]).abs().tolist()
        half = cauchy.interval_half_width(out.scale_Y[is_num], dist)
        covered += int(((out.loc_Y[is_num] - values[is_num]).abs() <= half).sum())
        n_num += int(is_num.sum())
        p = out.probs[valid]
        p = p / p.sum(-1, keepdim=True).clamp_min(1e-30)
        conf, arg = p.max(-1)
        conf_all.append(conf.cpu())
        hit_all.append((arg == labels[valid]).float().cpu())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    err = torch.tensor(errors, dtype=torch.float64)
    conf, hit = torch.cat(conf_all).double(), torch.cat(hit_all).double()
    ece = 0.0
    edges = torch.linspace(0, 1, n_bins + 1, dtype=torch.float64)
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        inside = (conf > lo) & (conf <= hi) if lo > 0 else (conf >= lo) & (conf <= hi)
        if inside.any():
            ece += float(inside.double().mean() * (conf[inside].mean() - hit[inside].mean()).abs())
    nan = float("nan")
    return {
        "accuracy": correct / max(n_valid, 1),
        "compat_accuracy": compat_correct / max(n_valid, 1),
        "num_precision": precision,
        "num_recall": recall,
        "num_f1": f1,
        "mae": float(err.mean()) if len(err) else nan,
        "median_ae": float(err.median()) if len(err) else nan,
        "rmse": float(err.square().mean().sqrt()) if len(err) else nan,
        "coverage95": covered / n_num if n_num else nan,
        "ece": ece,
        "n_positions": n_valid,
        "n_numbers": n_num,
        "n_numbers_predicted": len(errors),
    }


def step0_agreement(
    model: CausalQwen, numtok: NumberTokenizer, texts: list[str], max_length: int = 64
) -> float:
    """Fraction of valid positions where the OvR argmax equals the compatible (base) argmax."""
    batch = on_device(numtok.batch(texts, max_length=max_length), model)
    with torch.no_grad():
        out = model(batch["input_ids"], batch["numerical_values"], batch["attention_mask"])
    _, valid, _, _ = next_token_targets(batch["input_ids"], None, batch["attention_mask"], model.num_token_id)
    same = out.choice() == out.loc_S.argmax(-1)
    return float(same[valid].float().mean())


def is_finite(x: float) -> bool:
    return isinstance(x, int | float) and math.isfinite(x)
