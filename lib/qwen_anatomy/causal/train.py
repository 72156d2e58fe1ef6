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
    """Median scale of U, median sum_k P_k, and <NUM> accuracy at positions whose label is <NUM>.
    ``batch["input_ids"]`` and ``num_token_id`` are class indices (token ids unless the model's classes
    are restricted: :meth:`qwen_anatomy.causal.model._NumericFusion.class_targets`)."""
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


def scale_drive(model, out: CausalOutput, parts: dict, lam: float) -> dict[str, float]:
    """Which loss term pulls the scales down, and how hard: for each term (classification ``cls`` and
    the weighted regression ``reg``, i.e. lam * reg), the derivative of the term with respect to the
    log of a common factor on the scale of U (``*_dlogscale`` = sum of scale_U * d term / d scale_U)
    and on the exogenous noise (``*_dlognoise`` = sum of b_noise * d term / d b_noise), at the current
    parameters. Positive: the term falls when that scale shrinks, so gradient descent on it shrinks the
    scale; negative: it widens it. Also the median |b_noise|. Empty for heads without a scale of U (the
    baseline, the softmax classifier) or without gradients."""
    scale_u = out.scale_U
    noise = getattr(model, "b_noise", None)
    if scale_u is None or not scale_u.requires_grad or noise is None or not noise.requires_grad:
        return {}
    row = {}
    for name, term in (("cls", parts["cls"]), ("reg", lam * parts["reg"])):
        if not isinstance(term, torch.Tensor) or not term.requires_grad:
            row[f"{name}_dlogscale"] = row[f"{name}_dlognoise"] = 0.0
            continue
        g_scale, g_noise = torch.autograd.grad(term, (scale_u, noise), retain_graph=True, allow_unused=True)
        row[f"{name}_dlogscale"] = 0.0 if g_scale is None else float((g_scale * scale_u.detach()).sum())
        row[f"{name}_dlognoise"] = 0.0 if g_noise is None else float((g_noise * noise.detach()).sum())
    row["median_noise"] = float(noise.detach().abs().median())
    return row


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

    A CausalQwen whose per-class thresholds are not yet measured (``threshold_mode`` "per_class" or
    "learnable") gets them from the first training batch (:meth:`CausalQwen.calibrate_threshold`).
    ``seed`` fixes the batch order (the heads' initialisation follows ``model.config.seed``).

    ``clip``: "per_parameter" (default) clips each parameter's gradient norm at 1 on its own; "global"
    clips the norm of all gradients together. With OvR on a large vocabulary the scale of U collapses
    towards 0 and its gradient grows like 1/scale: a global clip then shrinks every other gradient
    below Adam's epsilon, and the regression head and the new rows stop learning (chapter 50)."""
    texts = check_dataset(texts)
    _check_schedule(steps, lr, lr_pretrained, clip)
    stream = (on_device(b, model) for b in batches(numtok, texts, batch_size, max_length, seed))

    def calibrate(first):
        model.calibrate_threshold(first["input_ids"], first["numerical_values"], first["attention_mask"])

    def forward(batch):
        return model(batch["input_ids"], batch["numerical_values"], batch["attention_mask"])

    return _fit(model, stream, forward, calibrate, steps, lr, lr_pretrained, seed, log_every, on_log, clip)


def _check_schedule(steps, lr, lr_pretrained, clip) -> None:
    if clip not in ("per_parameter", "global"):
        raise UserInputError(f"clip={clip!r}: use 'per_parameter' or 'global'")
    if not isinstance(steps, int) or steps < 0:
        raise UserInputError(f"steps={steps!r} must be an integer >= 0")
    for name, value in (("lr", lr), ("lr_pretrained", lr if lr_pretrained is None else lr_pretrained)):
        if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
            raise UserInputError(f"{name}={value!r} must be a finite number > 0")


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite: the run stops there instead of training and scoring a broken
    model (its run record is marked failed)."""


def _fit(
    model, stream, forward, calibrate, steps, lr, lr_pretrained, seed, log_every, on_log, clip
) -> list[dict]:
    """The optimisation loop shared by :func:`train` (texts) and :func:`train_on_cache` (a feature cache):
    ``stream`` yields batches (dicts with input_ids, numerical_values, attention_mask), ``forward`` maps
    a batch to the model's output, ``calibrate`` measures per-class thresholds on the first batch."""
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
    log: list[dict] = []
    first = next(stream)
    if not getattr(model, "threshold_measured", True):
        calibrate(first)  # per-class thresholds are measured on the first training batch, before any update
    model.train()
    t0 = time.perf_counter()
    for step in range(steps + 1):
        batch = first if step == 0 else next(stream)
        out = forward(batch)
        # the loss and the health log read the next tokens as class indices (the ids themselves unless
        # the model's output classes are restricted)
        targets = {**batch, "input_ids": model.class_targets(batch["input_ids"], batch["attention_mask"])}
        parts = gated_loss(
            out,
            targets["input_ids"],
            batch["numerical_values"],
            batch["attention_mask"],
            model.num_class,
            alpha=cfg.alpha,
            lam=cfg.lam,
            classifier=cfg.classifier,
        )
        if not torch.isfinite(parts["loss"]):
            loss, cls, reg = (float(parts[k].detach()) for k in ("loss", "cls", "reg"))
            raise TrainingDiverged(
                f"training diverged at step {step}: loss {loss} (classification {cls}, regression {reg}); "
                "lower the learning rate (--lr) or gamma0, and report it if it persists"
            )
        if step % log_every == 0 or step == steps:
            row = {
                "step": step,
                **{k: float(v.detach()) for k, v in parts.items()},
                **health(out, targets, model.num_class),
                **scale_drive(model, out, parts, cfg.lam),
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


def train_on_cache(
    model: CausalQwen | BaselineQwen,
    cache,
    steps: int,
    batch_size: int = 8,
    lr: float = 1e-3,
    seed: int = 0,
    log_every: int = 10,
    on_log: Callable[[dict], None] | None = None,
    lr_pretrained: float | None = None,
    clip: str = "per_parameter",
) -> list[dict]:
    """:func:`train` on a :class:`qwen_anatomy.causal.cache.FeatureCache`: the same loss, optimiser and
    log, with the frozen bottom of the backbone read from the cache (the heads, and the top layers
    when the cache was built below them and :func:`cache.unfreeze_top` made them trainable)."""
    from .cache import cached_batches, cached_features, cached_forward

    if cache is None or len(cache) == 0:
        raise UserInputError("the feature cache is empty: build it from at least one text")
    _check_schedule(steps, lr, lr_pretrained, clip)
    device = model.backbone.device

    # Each batch is cut to its longest text: the cache pads every row to the longest text of all, and
    # the positions past a batch's longest text are padding that no loss term reads. On a large
    # vocabulary the heads cost in proportion to the positions, so this saves their share of the time.
    def stream():
        for rows in cached_batches(cache, batch_size, seed):
            width = cache.width(rows)
            batch = {k: v.to(device) for k, v in cache.batch(rows, width).items()}
            yield {**batch, "rows": rows, "width": width}

    def calibrate(first):
        z = cached_features(model, cache, first["rows"], first["width"])
        model.calibrate_threshold_on_features(z, first["attention_mask"].bool())

    def forward(batch):
        return cached_forward(model, cache, batch["rows"], batch["width"])

    return _fit(model, stream(), forward, calibrate, steps, lr, lr_pretrained, seed, log_every, on_log, clip)


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
        return model.class_tokens(scores.argmax(-1)), value, torch.zeros_like(value)
    if mode == "compatible":
        if temperature == 0:
            token = out.loc_S.argmax(-1)
        else:
            p = torch.softmax(out.loc_S / temperature, -1)
            # drawn on the CPU, where the seeded generator lives
            token = torch.multinomial(p.reshape(-1, p.shape[-1]).cpu(), 1, generator=generator)
            token = token.reshape(p.shape[:-1]).to(p.device)
        return model.class_tokens(token), out.loc_Y, out.scale_Y
    return model.class_tokens(out.choice()), out.loc_Y, out.scale_Y


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
def normalised_probabilities(out: CausalOutput) -> torch.Tensor:
    """The probabilities P_k / sum_j P_j [B, T, V] the calibration error is measured on. For OvR heads
    they come from log P_k (:func:`cauchy.ovr_log_probability` of the margin) through a softmax, so a
    position where every P_k rounds to 0 in float32 still has its ranking; softmax heads are unchanged."""
    if out.margin is not None:
        return torch.softmax(cauchy.ovr_log_probability(out.margin, out.distribution), -1)
    return out.probs / out.probs.sum(-1, keepdim=True).clamp_min(1e-30)


def position_metrics(
    labels: torch.Tensor,
    pred: torch.Tensor,
    compat: torch.Tensor,
    confidence: torch.Tensor,
    loc_y: torch.Tensor,
    scale_y: torch.Tensor,
    values: torch.Tensor,
    num_token_id: int,
    dist: str = "cauchy",
    n_bins: int = 10,
) -> dict[str, float]:
    """The metrics of :func:`evaluate` from per-position arrays, all [N] over the valid positions:
    the next token ``labels``, the decision ``pred``, the compatible-mode argmax ``compat``, the
    normalised probability of the decision ``confidence``, the value's location ``loc_y`` and scale
    ``scale_y`` and the target ``values`` (read where the label is <NUM>).

    Definitions (chapter 50) and the conventions where a ratio has nothing to divide by:

    - accuracy, compat_accuracy: fraction of positions where ``pred`` (``compat``) equals the label.
    - <NUM> precision = TP / (TP + FP), recall = TP / (TP + FN), F1 their harmonic mean, with
      "positive" = the next token is <NUM>. When the set has no <NUM> target and none is predicted
      (TP + FP + FN = 0) all three are 1 (nothing to find, nothing claimed wrongly); otherwise a ratio
      with an empty denominator is 0 (numbers exist but none predicted: precision 0; F1 is 0 anyway).
    - mae, median_ae (the middle value; the mean of the two middle ones for an even count), rmse: over
      the positions where the label is <NUM> and the decision is <NUM>. With no such position they are
      undefined: NaN, never 0, and ``n_numbers_predicted`` = 0 says why (reports print "undefined").
    - coverage95: fraction of <NUM> targets inside the central 95% interval of the value
      (half-width 12.706 scale for Cauchy, 1.96 sigma for Normal); NaN when the set has no <NUM> target
      (``n_numbers`` = 0).
    - ece: expected calibration error, sum over ``n_bins`` equal-width confidence bins ((lo, hi], the
      first closed) of (bin size / N) |mean confidence - accuracy of the decisions in the bin|.

    No position at all (N = 0) is a UserInputError: every metric would be undefined.
    """
    n = int(labels.numel())
    if n == 0:
        raise UserInputError(
            "the evaluation set has no position with a next token (every text is at most one token): "
            "give longer texts"
        )
    if not (isinstance(n_bins, int) and n_bins > 0):
        raise UserInputError(f"n_bins={n_bins!r} must be a positive integer")
    is_num = labels == num_token_id
    pred_num = pred == num_token_id
    tp = int((pred_num & is_num).sum())
    fp = int((pred_num & ~is_num).sum())
    fn = int((~pred_num & is_num).sum())
    if tp + fp + fn == 0:
        precision = recall = f1 = 1.0
    else:
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    hit = pred_num & is_num
    err = (loc_y[hit].double() - values[hit].double()).abs()
    n_num = int(is_num.sum())
    half = cauchy.interval_half_width(scale_y[is_num].double(), dist)
    covered = int(((loc_y[is_num].double() - values[is_num].double()).abs() <= half).sum())
    conf = confidence.double()
    correct = (pred == labels).double()
    ece = 0.0
    edges = torch.linspace(0, 1, n_bins + 1, dtype=torch.float64)
    for i, (lo, hi) in enumerate(zip(edges[:-1], edges[1:], strict=True)):
        inside = ((conf > lo) if i else (conf >= lo)) & (conf <= hi)
        if inside.any():
            ece += float(inside.double().mean() * (conf[inside].mean() - correct[inside].mean()).abs())
    nan = float("nan")
    return {
        "accuracy": float(correct.mean()),
        "compat_accuracy": float((compat == labels).double().mean()),
        "num_precision": precision,
        "num_recall": recall,
        "num_f1": f1,
        "mae": float(err.mean()) if len(err) else nan,
        "median_ae": float(err.quantile(0.5)) if len(err) else nan,
        "rmse": float(err.square().mean().sqrt()) if len(err) else nan,
        "coverage95": covered / n_num if n_num else nan,
        "ece": ece,
        "n_positions": n,
        "n_numbers": n_num,
        "n_numbers_predicted": len(err),
    }


@torch.no_grad()
def evaluate(
    model,
    numtok: NumberTokenizer,
    texts: list[str],
    batch_size: int = 16,
    max_length: int = 64,
    n_bins: int = 10,
) -> dict[str, float]:
    """Metrics on one evaluation set, at every valid next-token position (definitions and the
    conventions for empty ratios: :func:`position_metrics`).

    accuracy (OvR argmax, or softmax argmax for softmax heads) and compat_accuracy (argmax loc_S);
    <NUM> precision/recall/F1 (is the next token a number); MAE, median AE and RMSE on correctly
    predicted numbers; 95% interval coverage on every <NUM> position; ECE of the normalised
    probabilities of the model's decisions (10 equal-width bins).
    """
    texts = check_dataset(texts, "evaluation set")
    num = model.num_class  # labels and decisions are class indices (token ids unless restricted)
    keys = ("labels", "pred", "compat", "confidence", "loc_y", "scale_y", "values")
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in keys}
    dist = None
    model.eval()
    for i in range(0, len(texts), batch_size):
        batch = on_device(numtok.batch(texts[i : i + batch_size], max_length=max_length), model)
        out = model(batch["input_ids"], batch["numerical_values"], batch["attention_mask"])
        dist = out.distribution
        labels, valid, _, values = next_token_targets(
            model.class_targets(batch["input_ids"], batch["attention_mask"]),
            batch["numerical_values"],
            batch["attention_mask"],
            num,
        )
        pred = out.choice()
        conf = normalised_probabilities(out).gather(-1, pred[..., None])[..., 0]
        for key, x in zip(
            keys, (labels, pred, out.loc_S.argmax(-1), conf, out.loc_Y, out.scale_Y, values), strict=True
        ):
            parts[key].append(x[valid].cpu())
    flat = {k: torch.cat(v) for k, v in parts.items()}
    return position_metrics(**flat, num_token_id=num, dist=dist, n_bins=n_bins)


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
