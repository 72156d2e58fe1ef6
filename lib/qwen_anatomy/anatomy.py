"""Anatomy of a real Qwen2: q/k/v biases, massive activations, attention sinks (chapter 02_qwen2_from_scratch).

Three measurements a Qwen2 reader comes for, on real text (docstrings of Python's standard library,
:mod:`qwen_anatomy.corpus`; nothing downloaded):

- **q/k/v biases.** The norm of each head's bias against the typical norm of the projected activation
  ``W_h x`` on real text, and the loss with biases zeroed (:func:`bias_ablation`).
- **Massive activations** (Sun et al., 2024). Per layer, the largest ``|h|`` of the residual stream, where
  it sits (sequence, position, dimension) and its ratio to the median ``|h|`` (:func:`extremes_table`).
- **Attention sinks** (Xiao et al., 2023). Per layer and head, the mean attention on the first position
  (:func:`first_position_share`), and the loss when a key is hidden from later queries
  (:func:`sink_masking`).

Hiding a key masks its score before the softmax in every layer and head (:func:`attention_blocked`), as
the causal mask hides the future; the rest of the forward is the model's own.

Shapes: N sequences, T positions, L layers, H query heads, K key/value heads, d head_dim, D hidden.
Losses are in nats per token: ``[N, T-1]``, column j is the prediction of token j+1 made at position j.
"""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from . import model as qm

PROJECTIONS = ("q", "k", "v")

# Arms of the bias ablation: name -> projections whose biases are zeroed in every layer.
BIAS_VARIANTS: dict[str, tuple[str, ...]] = {
    "q and k biases zeroed": ("q", "k"),
    "q bias zeroed": ("q",),
    "k bias zeroed": ("k",),
    "v bias zeroed": ("v",),
}


# -- text ------------------------------------------------------------------------------------------
def text_sequences(tokenizer, n_sequences: int, seq_len: int, seed: int = 0) -> torch.Tensor:
    """[N, T] token ids: standard-library docstrings, shuffled with ``seed``, cut into equal chunks.

    The documents are tokenised one by one, each followed by a blank line, and concatenated; the
    stream is cut into ``n_sequences`` consecutive chunks of ``seq_len`` tokens. A chunk usually starts
    mid-sentence: its first token is whatever token comes first, which is the point for sinks.
    """
    from .corpus import stdlib_docstrings

    if n_sequences < 1 or seq_len < 2:
        raise ValueError(f"need n_sequences >= 1 and seq_len >= 2 (got {n_sequences}, {seq_len})")
    docs = stdlib_docstrings()
    order = list(range(len(docs)))
    random.Random(seed).shuffle(order)
    need = n_sequences * seq_len
    stream: list[int] = []
    for i in order:
        stream += tokenizer.encode(docs[i][1] + "\n\n")
        if len(stream) >= need:
            break
    if len(stream) < need:
        raise ValueError(
            f"the corpus holds {len(stream):,} tokens; {n_sequences} x {seq_len} = {need:,} asked for"
        )
    return torch.tensor(stream[:need], dtype=torch.long).view(n_sequences, seq_len)


def delimiter_mask(tokenizer, ids: torch.Tensor) -> torch.Tensor:
    """[N, T] bool: True where the token has no letter or digit (punctuation, spaces, newlines)."""
    cache: dict[int, bool] = {}
    flat = []
    for i in ids.flatten().tolist():
        if i not in cache:
            cache[i] = not any(ch.isalnum() for ch in tokenizer.decode([i], skip_special_tokens=False))
        flat.append(cache[i])
    return torch.tensor(flat, dtype=torch.bool).view(ids.shape)


# -- losses, with attention to some keys blocked -----------------------------------------------------
def block_keys(
    n: int, t: int, key_positions: Sequence[int] | torch.Tensor, from_query: int = 1
) -> torch.Tensor:
    """[N, T, T] bool, True = query q may not attend to key s.

    Sequence b's key ``key_positions[b]`` (p) is hidden from every query at a position >= max(p + 1,
    from_query): a query always sees itself, so no row of the softmax is left empty.
    """
    keys = torch.as_tensor(key_positions, dtype=torch.long).view(-1)
    if keys.numel() == 1 and n > 1:
        keys = keys.expand(n)
    if keys.numel() != n:
        raise ValueError(f"{keys.numel()} key positions for {n} sequences")
    if bool(((keys < 0) | (keys >= t)).any()):
        raise ValueError(f"key positions must lie in 0..{t - 1}, got {keys.tolist()}")
    if from_query < 1:
        raise ValueError(f"from_query={from_query} must be >= 1 (query 0 sees only position 0)")
    q = torch.arange(t)
    blocked = torch.zeros(n, t, t, dtype=torch.bool)
    rows = q[None, :] >= torch.maximum(keys[:, None] + 1, torch.tensor(from_query))  # [N, T]
    blocked[torch.arange(n)[:, None].expand(n, t), q[None].expand(n, t), keys[:, None].expand(n, t)] = rows
    return blocked


@contextlib.contextmanager
def attention_blocked(model: qm.Qwen2ForCausalLM, blocked: torch.Tensor | None) -> Iterator[None]:
    """Hide keys from queries in every layer while the block runs: ``blocked`` is [B, T, T], True = hidden.

    The hooks read each layer's rotated queries and keys (``hook_q``, ``hook_k``) and replace its attention
    pattern (``hook_pattern``, so the eager path runs) by the softmax of the scores with the hidden keys
    masked, as the model masks the future. Masking the scores, not renormalising the pattern: a head
    that put all its mass on a hidden key (a sink) would leave a row of zeros to divide.
    """
    if blocked is None:
        yield
        return
    if bool(blocked.diagonal(dim1=1, dim2=2).any()):
        raise ValueError("a query may not be blocked from itself: the softmax row would be empty")
    seen: dict[str, torch.Tensor] = {}

    def keep(kind: str):
        def fn(x: torch.Tensor) -> None:
            seen[kind] = x

        return fn

    def masked_pattern(attn: qm.Qwen2Attention):
        def fn(p: torch.Tensor) -> torch.Tensor:  # [B, H, T, S]
            q, k = seen.pop("q"), seen.pop("k")  # [B, H, T, d], [B, K, S, d]
            k = qm.repeat_kv(k, attn.num_heads // attn.num_kv_heads)
            scores = torch.matmul(q, k.transpose(2, 3)) * attn.scaling
            t, s = scores.shape[-2:]
            allowed = qm._causal(t, s, scores.device) & ~blocked[:, None].to(scores.device)
            scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
            return torch.softmax(scores, dim=-1, dtype=torch.float32).to(p.dtype)

        return fn

    fns = {}
    for i, layer in enumerate(model.model.layers):
        prefix = f"model.layers.{i}.self_attn"
        fns |= {f"{prefix}.hook_q": keep("q"), f"{prefix}.hook_k": keep("k")}
        fns[f"{prefix}.hook_pattern"] = masked_pattern(layer.self_attn)
    with qm.hooks(model, fns):
        yield


def _batches(n: int, batch_size: int) -> Iterator[slice]:
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    for start in range(0, n, batch_size):
        yield slice(start, min(n, start + batch_size))


def _check_ids(ids: torch.Tensor) -> torch.Tensor:
    if ids.dim() != 2 or ids.shape[1] < 2:
        raise ValueError(f"ids must be [N, T] with T >= 2, got shape {tuple(ids.shape)}")
    return ids.long()


@torch.no_grad()
def token_losses(
    model: qm.Qwen2ForCausalLM,
    ids: torch.Tensor,
    batch_size: int = 4,
    blocked: torch.Tensor | None = None,
) -> torch.Tensor:
    """Next-token cross-entropy [N, T-1] in nats; ``blocked`` [N, T, T] hides keys (:func:`attention_blocked`)."""
    ids = _check_ids(ids)
    out = []
    for sl in _batches(len(ids), batch_size):
        with attention_blocked(model, None if blocked is None else blocked[sl]):
            logits = model(ids[sl].to(model.device)).logits[:, :-1].float()  # [B, T-1, V]
        out.append(
            F.cross_entropy(logits.transpose(1, 2), ids[sl, 1:].to(logits.device), reduction="none").cpu()
        )
    return torch.cat(out)


def paired_difference(
    base: torch.Tensor, other: torch.Tensor, n_boot: int = 2000, level: float = 0.95, seed: int = 0
) -> dict:
    """Mean loss of ``other`` minus ``base`` (same tokens, [N, T']) with a bootstrap interval over sequences.

    Sequences are resampled with replacement (tokens of one sequence are not independent, so they move
    together); the interval is the percentile interval of the resampled mean difference.
    """
    if base.shape != other.shape or base.dim() != 2:
        raise ValueError(
            f"need two [N, T'] loss tensors of one shape, got {tuple(base.shape)}, {tuple(other.shape)}"
        )
    if not 0 < level < 1:
        raise ValueError(f"level={level} must lie in (0, 1)")
    per_seq = (other - base).double().mean(1).numpy()  # equal lengths: the mean of means is the mean
    rng = np.random.default_rng(seed)
    boots = per_seq[rng.integers(0, len(per_seq), size=(n_boot, len(per_seq)))].mean(1)
    lo, hi = np.quantile(boots, [(1 - level) / 2, (1 + level) / 2])
    return {
        "baseline": float(base.double().mean()),
        "loss": float(other.double().mean()),
        "difference": float(per_seq.mean()),
        "low": float(lo),
        "high": float(hi),
        "sequences": int(base.shape[0]),
        "tokens": int(base.numel()),
    }


def difference_table(
    losses: Mapping[str, torch.Tensor],
    baseline: str = "baseline",
    from_position: int = 0,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """One row per arm of ``losses`` (except the baseline): losses and paired difference with interval.

    Only predictions made at positions >= ``from_position`` are compared (columns from it on).
    """
    base = losses[baseline][:, from_position:]
    rows = []
    for name, arm in losses.items():
        if name == baseline:
            continue
        row = paired_difference(base, arm[:, from_position:], n_boot, level, seed)
        rows.append({"arm": name, **row})
    return pd.DataFrame(rows)


# -- q/k/v biases ------------------------------------------------------------------------------------
def _check_bias(model: qm.Qwen2ForCausalLM) -> None:
    if not model.config.attention_bias:
        raise ValueError("this model has no q/k/v biases (attention_bias=False): a Llama-family checkpoint?")


def bias_norms(model: qm.Qwen2ForCausalLM) -> pd.DataFrame:
    """Norm of each head's q, k and v bias: columns layer, projection, head, bias_norm."""
    _check_bias(model)
    cfg = model.config
    rows = []
    for i, layer in enumerate(model.model.layers):
        attn = layer.self_attn
        for proj, heads in (
            ("q", cfg.num_attention_heads),
            ("k", cfg.num_key_value_heads),
            ("v", cfg.num_key_value_heads),
        ):
            bias = getattr(attn, f"{proj}_proj").bias.detach().float().view(heads, cfg.head_dim)
            for h, norm in enumerate(bias.norm(dim=-1).tolist()):
                rows.append({"layer": i, "projection": proj, "head": h, "bias_norm": norm})
    return pd.DataFrame(rows)


@torch.no_grad()
def residual_stream(
    model: qm.Qwen2ForCausalLM, ids: torch.Tensor, batch_size: int = 4, blocked=None
) -> torch.Tensor:
    """[L + 1, N, T, D] float32: the embedding (0) and the output of each layer (i + 1) on ``ids``."""
    ids = _check_ids(ids)
    parts = []
    for sl in _batches(len(ids), batch_size):
        with attention_blocked(model, None if blocked is None else blocked[sl]):
            out = model(ids[sl].to(model.device), output_hidden_states=True, logits_to_keep=1)
        parts.append(torch.stack(out.hidden_states[:-1]).float().cpu())  # drop the final norm
    return torch.cat(parts, dim=1)


@torch.no_grad()
def bias_table(model: qm.Qwen2ForCausalLM, residual: torch.Tensor) -> pd.DataFrame:
    """Bias norms next to the typical size of the projected activation, per layer, projection and head.

    ``residual`` is :func:`residual_stream`'s output. For layer i the attention input is
    x = input_layernorm(residual[i]); ``activation_norm`` is the median over tokens of ||W_h x|| (the
    head's slice of the projection, without its bias) and ``ratio`` = bias_norm / activation_norm.
    """
    _check_bias(model)
    cfg = model.config
    table = bias_norms(model)
    medians = []
    for i, layer in enumerate(model.model.layers):
        attn = layer.self_attn
        x = layer.input_layernorm(residual[i].to(model.device, model.dtype)).float()  # [N, T, D]
        for proj, heads in (
            ("q", cfg.num_attention_heads),
            ("k", cfg.num_key_value_heads),
            ("v", cfg.num_key_value_heads),
        ):
            w = getattr(attn, f"{proj}_proj").weight.float()  # [heads·d, D]
            wx = (x @ w.T).view(-1, heads, cfg.head_dim).norm(dim=-1)  # [N·T, heads]
            medians += wx.median(0).values.cpu().tolist()
    table["activation_norm"] = medians
    table["ratio"] = table["bias_norm"] / table["activation_norm"]
    return table


@contextlib.contextmanager
def zeroed_biases(model: qm.Qwen2ForCausalLM, projections: Sequence[str] = ("q", "k")) -> Iterator[None]:
    """Zero the named biases (a subset of q, k, v) in every layer while the block runs; restore after."""
    _check_bias(model)
    unknown = set(projections) - set(PROJECTIONS)
    if unknown or not projections:
        raise ValueError(f"projections must be a non-empty subset of {PROJECTIONS}, got {list(projections)}")
    saved = []
    try:
        with torch.no_grad():
            for layer in model.model.layers:
                for proj in projections:
                    bias = getattr(layer.self_attn, f"{proj}_proj").bias
                    saved.append((bias, bias.detach().clone()))
                    bias.zero_()
        yield
    finally:
        with torch.no_grad():
            for bias, value in saved:
                bias.copy_(value)


def bias_ablation(
    model: qm.Qwen2ForCausalLM,
    ids: torch.Tensor,
    variants: Mapping[str, Sequence[str]] = BIAS_VARIANTS,
    batch_size: int = 4,
    baseline: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Per-token losses {"baseline": [N, T-1], variant: [N, T-1]} with each variant's biases zeroed."""
    out = {"baseline": token_losses(model, ids, batch_size) if baseline is None else baseline}
    for name, projections in variants.items():
        with zeroed_biases(model, projections):
            out[name] = token_losses(model, ids, batch_size)
    return out


@torch.no_grad()
def v_bias_offsets(model: qm.Qwen2ForCausalLM) -> torch.Tensor:
    """[L, D]: the constant each layer's v bias adds to its attention output, o_proj(b_v per query head).

    Attention weights sum to one, so Σ_j p_ij (W_v x_j + b_v) = Σ_j p_ij W_v x_j + b_v: the v bias
    leaves every head's output shifted by b_v, whatever the input, and o_proj maps it to one vector.
    """
    _check_bias(model)
    cfg = model.config
    group = cfg.num_attention_heads // cfg.num_key_value_heads
    rows = []
    for layer in model.model.layers:
        attn = layer.self_attn
        b_v = attn.v_proj.bias.view(cfg.num_key_value_heads, cfg.head_dim)
        per_query_head = b_v.repeat_interleave(group, dim=0).reshape(-1)  # head h reads kv head h // group
        rows.append(attn.o_proj(per_query_head))
    return torch.stack(rows)


def bias_sentence(biases: pd.DataFrame, ablation: pd.DataFrame, level: float = 0.95) -> str:
    """The largest bias relative to its projected activation, and what zeroing q and k (and v) does."""
    top = biases.loc[biases["ratio"].idxmax()]
    by_proj = biases.groupby("projection")["ratio"].median()
    text = (
        f"The largest bias relative to its activation is the {top['projection']} bias of layer "
        f"{int(top['layer'])}, head {int(top['head'])}: norm {top['bias_norm']:.1f}, {top['ratio']:.0f}× the "
        f"median norm of W x ({top['activation_norm']:.2f}). Across all heads the median ratio is "
        + ", ".join(f"{by_proj[p]:.2f} for {p}" for p in PROJECTIONS if p in by_proj.index)
        + ". "
    )
    for _, row in ablation.iterrows():
        text += f"With the {row['arm']}, {_loss_change(row, level)}. "
    return text.strip()


def _loss_change(row, level: float = 0.95) -> str:
    """'the loss rises from a to b nats (+d, 95% interval lo to hi)' or 'does not change measurably'."""
    interval = f"{level:.0%} interval {row['low']:+.3f} to {row['high']:+.3f}"
    if row["low"] > 0:
        verb = "rises"
    elif row["high"] < 0:
        verb = "falls"
    else:
        return (
            f"the loss does not change measurably ({row['baseline']:.3f} → {row['loss']:.3f} nats per token, "
            f"{row['difference']:+.3f}, {interval})"
        )
    return (
        f"the loss {verb} from {row['baseline']:.3f} to {row['loss']:.3f} nats per token "
        f"({row['difference']:+.3f}, {interval})"
    )


# -- massive activations -----------------------------------------------------------------------------
def extremes_table(
    residual: torch.Tensor,
    delimiters: torch.Tensor | None = None,
    top: int = 3,
    layers: Sequence[int] | None = None,
) -> pd.DataFrame:
    """Per layer: the largest |h| of the residual stream, where it sits, and the median |h|.

    ``residual`` is [L', N, T, D] with T >= 3 (e.g. :func:`residual_stream`'s output without the
    embedding, so row i is the output of layer i; ``layers`` names the rows). Columns:
    ``top1..top{top}`` (the largest entries), ``median``, ``ratio`` = top1 / median, ``sequence``,
    ``position``, ``dim`` of the top entry; ``first_max`` (largest |h| at position 0);
    ``second_max``, ``second_dim`` (at position 1); ``rest_max``, ``rest_position``, ``rest_dim``
    (at positions >= 2) and, given ``delimiters`` [N, T] bool, ``delimiter_max`` (at delimiter tokens
    at positions >= 2, NaN when there are none).
    """
    if residual.dim() != 4 or residual.shape[2] < 3:
        raise ValueError(f"residual must be [L, N, T, D] with T >= 3, got shape {tuple(residual.shape)}")
    n_layers, n, t, d = residual.shape
    layers = list(range(n_layers)) if layers is None else list(layers)
    rows = []
    for row_idx, layer in enumerate(layers):
        mag = residual[row_idx].abs().float()  # [N, T, D]
        values, flat = mag.flatten().topk(top)
        seq, pos, dim = _unravel(int(flat[0]), (n, t, d))
        median = float(mag.median())
        second = mag[:, 1]  # [N, D]
        _, second_dim = _unravel(int(second.argmax()), (n, d))
        rest = mag[:, 2:]
        _, rest_pos, rest_dim = _unravel(int(rest.argmax()), (n, t - 2, d))
        row = {"layer": layer}
        row |= {f"top{k + 1}": float(v) for k, v in enumerate(values)}
        row |= {
            "median": median,
            "ratio": float(values[0]) / median if median > 0 else math.inf,
            "sequence": seq,
            "position": pos,
            "dim": dim,
            "first_max": float(mag[:, 0].max()),
            "second_max": float(second.max()),
            "second_dim": second_dim,
            "rest_max": float(rest.max()),
            "rest_position": rest_pos + 2,
            "rest_dim": rest_dim,
        }
        if delimiters is not None:
            sel = delimiters[:, 2:].to(mag.device)
            row["delimiter_max"] = float(rest[sel].max()) if bool(sel.any()) else math.nan
        rows.append(row)
    return pd.DataFrame(rows)


def _unravel(index: int, shape: Sequence[int]) -> tuple[int, ...]:
    out = []
    for size in reversed(shape):
        index, r = divmod(index, size)
        out.append(r)
    return tuple(reversed(out))


def massive_dimensions(
    residual: torch.Tensor,
    factor: float = 1000.0,
    min_abs: float = 100.0,
    layers: Sequence[int] | None = None,
) -> pd.DataFrame:
    """Every (layer, dim) holding a massive activation: some |h| > max(min_abs, factor × median |h|).

    The defaults are Sun et al.'s (2024) working definition: larger than 100 and about 1,000 times the
    median magnitude of the layer. Columns: layer, dim, max_abs, ratio (max_abs / median), position
    (of that maximum), share_first (the fraction of the entries above the threshold in that dim that
    sit at position 0).
    """
    n_layers, n, t, d = residual.shape
    layers = list(range(n_layers)) if layers is None else list(layers)
    rows = []
    for row_idx, layer in enumerate(layers):
        mag = residual[row_idx].abs().float()  # [N, T, D]
        median = float(mag.median())
        threshold = max(min_abs, factor * median)
        per_dim, where = mag.reshape(n * t, d).max(0)  # [D]
        for dim in torch.nonzero(per_dim > threshold).flatten().tolist():
            above = mag[:, :, dim] > threshold  # [N, T]
            rows.append(
                {
                    "layer": layer,
                    "dim": dim,
                    "max_abs": float(per_dim[dim]),
                    "ratio": float(per_dim[dim]) / median if median > 0 else math.inf,
                    "position": int(where[dim]) % t,
                    "share_first": float(above[:, 0].sum() / above.sum()),
                }
            )
    return pd.DataFrame(rows, columns=["layer", "dim", "max_abs", "ratio", "position", "share_first"])


def recurring_dimensions(dims: pd.DataFrame) -> pd.DataFrame:
    """From :func:`massive_dimensions`: per dim, the number of layers, the first and last, the largest |h|."""
    if dims.empty:
        return pd.DataFrame(columns=["dim", "layers", "first_layer", "last_layer", "max_abs"])
    out = dims.groupby("dim").agg(
        layers=("layer", "nunique"),
        first_layer=("layer", "min"),
        last_layer=("layer", "max"),
        max_abs=("max_abs", "max"),
    )
    return out.reset_index().sort_values(["layers", "max_abs"], ascending=False, ignore_index=True)


def massive_sentence(extremes: pd.DataFrame, tokens: Sequence[str] | None = None) -> str:
    """'Layer L holds the largest activation, V in dimension d at position p, N× the median ...'.

    ``tokens`` optionally names the token at each (sequence, position): tokens[sequence][position].
    """
    row = extremes.loc[extremes["top1"].idxmax()]
    at_first = extremes[extremes["position"] == 0]
    token = ""
    if tokens is not None:
        token = f" (the token {tokens[int(row['sequence'])][int(row['position'])]!r})"
    text = (
        f"Layer {int(row['layer'])} holds the largest activation, {row['top1']:,.0f} in dimension "
        f"{int(row['dim'])} at position {int(row['position'])}{token}, {row['ratio']:,.0f}× the median "
        f"|h| of that layer ({row['median']:.3f}). "
    )
    if len(at_first):
        runs = _runs(at_first["layer"].astype(int).tolist())
        text += f"The largest entry sits at the first position in layers {runs}"
        text += f" ({len(at_first)} of {len(extremes)}). "
    # relative to the median of their layer: the median grows with depth (0.08 to 1.2 in Qwen2.5-0.5B)
    second = extremes.loc[(extremes["second_max"] / extremes["median"]).idxmax()]
    rest = extremes.loc[(extremes["rest_max"] / extremes["median"]).idxmax()]
    text += (
        f"The second position reaches {second['second_max']:,.1f} (layer {int(second['layer'])}, dimension "
        f"{int(second['second_dim'])}, {second['second_max'] / second['median']:,.0f}× the median); from the third "
        f"position on the largest entry relative to its layer's median is {rest['rest_max']:,.1f} (layer "
        f"{int(rest['layer'])}, dimension {int(rest['rest_dim'])}, {rest['rest_max'] / rest['median']:,.0f}× the median)"
    )
    if "delimiter_max" in extremes and extremes["delimiter_max"].notna().any():
        delim = extremes.loc[extremes["delimiter_max"].idxmax()]
        text += (
            f"; on delimiter tokens (punctuation, spaces, newlines) at most {delim['delimiter_max']:,.1f} "
            f"(layer {int(delim['layer'])})"
        )
    return text + "."


def _runs(values: Sequence[int]) -> str:
    """[2, 3, 4, 7] -> '2–4 and 7'."""
    values = sorted(set(values))
    parts, start = [], values[0]
    for prev, cur in zip(values, [*values[1:], None], strict=True):
        if cur != prev + 1:
            parts.append(f"{start}" if start == prev else f"{start}–{prev}")
            start = cur
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


# -- attention sinks ---------------------------------------------------------------------------------
@torch.no_grad()
def first_position_share(
    model: qm.Qwen2ForCausalLM, ids: torch.Tensor, min_query: int = 4, batch_size: int = 4
) -> torch.Tensor:
    """[L, H]: mean attention probability on key 0, over sequences and queries at positions >= min_query."""
    ids = _check_ids(ids)
    if not 1 <= min_query < ids.shape[1]:
        raise ValueError(f"min_query={min_query} must lie in 1..{ids.shape[1] - 1}")
    n_layers = model.config.num_hidden_layers
    total = torch.zeros(n_layers, model.config.num_attention_heads, dtype=torch.float64)

    def reader(i):
        def fn(p):  # [B, H, T, S]
            total[i] += p[:, :, min_query:, 0].double().sum((0, 2)).cpu()

        return fn

    names = {f"model.layers.{i}.self_attn.hook_pattern": reader(i) for i in range(n_layers)}
    for sl in _batches(len(ids), batch_size):
        with qm.hooks(model, names):
            model(ids[sl].to(model.device), logits_to_keep=1)
    return (total / (len(ids) * (ids.shape[1] - min_query))).float()


def control_positions(n: int, t: int, seed: int = 0) -> torch.Tensor:
    """[N] random 'middle' key positions, uniform in [T/4, 3T/4), one per sequence (seeded)."""
    lo, hi = t // 4, max(t // 4 + 1, (3 * t) // 4)
    return torch.randint(max(1, lo), max(2, hi), (n,), generator=torch.Generator().manual_seed(seed))


def sink_masking(
    model: qm.Qwen2ForCausalLM,
    ids: torch.Tensor,
    from_query: int = 1,
    seed: int = 0,
    batch_size: int = 4,
    baseline: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Per-token losses with the first position hidden, and with a random middle position hidden.

    Each hidden key p is removed from the attention of every query at a position >= max(p + 1,
    ``from_query``), in every layer and head. ``from_query=1``: the first token is hidden from all
    later queries. A larger ``from_query``: tokens before it were computed with the first token in view
    and later queries lose it (StreamingLLM's eviction of the initial tokens from the KV cache).
    Returns {"baseline", "first position hidden", "random middle position hidden"}: [N, T-1] each; the
    random positions are :func:`control_positions` (n, t, seed).
    """
    ids = _check_ids(ids)
    n, t = ids.shape
    if not 1 <= from_query < t:
        raise ValueError(f"from_query={from_query} must lie in 1..{t - 1}")
    control = control_positions(n, t, seed)
    return {
        "baseline": token_losses(model, ids, batch_size) if baseline is None else baseline,
        "first position hidden": token_losses(model, ids, batch_size, block_keys(n, t, 0, from_query)),
        "random middle position hidden": token_losses(
            model, ids, batch_size, block_keys(n, t, control, from_query)
        ),
    }


def sink_sentence(shares: torch.Tensor, masking: Mapping[int, pd.DataFrame], level: float = 0.95) -> str:
    """Sink shares per layer and the masking results ({from_query: :func:`difference_table`})."""
    per_layer = shares.mean(1)
    above = [i for i, s in enumerate(per_layer.tolist()) if s > 0.5]
    best_layer = int(per_layer.argmax())
    flat = int(shares.argmax())
    layer, head = divmod(flat, shares.shape[1])
    text = (
        f"Averaged over heads, the first position receives {per_layer.min():.2f} to {per_layer.max():.2f} "
        f"of the attention per layer (most in layer {best_layer}: {per_layer[best_layer]:.2f}); "
        f"{len(above)} of {len(per_layer)} layers give it more than half. The strongest single sink is "
        f"layer {layer}, head {head}, with {shares[layer, head]:.2f}. "
    )
    for from_query, table in masking.items():
        rows = table.set_index("arm")
        first = rows.loc["first position hidden"]
        control = rows.loc["random middle position hidden"]
        who = "every later query" if from_query <= 1 else f"the queries from position {from_query} on"
        text += (
            f"Hiding the first position from {who}: {_loss_change(first, level)}; hiding a random "
            f"middle position instead: {_loss_change(control, level)}. "
        )
    return text.strip()


def onset_sentence(
    extremes: pd.DataFrame, shares: torch.Tensor, ratio: float = 1000.0, share: float = 0.2
) -> str:
    """Where massive activations and sinks begin: layers whose top-1 exceeds ``ratio`` × the median, and
    layers whose heads give the first position more than ``share`` of their attention on average."""
    massive = extremes.loc[extremes["ratio"] > ratio, "layer"].astype(int).tolist()
    per_layer = shares.mean(1).tolist()
    sinks = [i for i, s in enumerate(per_layer) if s > share]
    text = (
        f"The top entry exceeds {ratio:,.0f}× the median in the outputs of "
        + (f"layers {_runs(massive)}" if massive else "no layer")
        + f"; the heads give the first position more than {share:.0%} of their attention on average in "
        + (f"layers {_runs(sinks)}" if sinks else "no layer")
        + "."
    )
    if massive and sinks:
        first_massive, first_sink = massive[0], sinks[0]
        if first_sink == first_massive + 1:
            text += (
                f" The first sink layer, {first_sink}, is the first layer whose input already holds the "
                f"massive activation (the output of layer {first_massive})."
            )
        else:
            text += (
                f" The first sink layer is {first_sink}; the massive activation first appears in the output "
                f"of layer {first_massive}."
            )
    return text


# -- figures -----------------------------------------------------------------------------------------
def plot_biases(biases: pd.DataFrame, ablation: pd.DataFrame, level: float = 0.95):
    """Left: bias norm / median ||W x|| per head against layer (log). Right: loss change per arm with intervals."""
    from . import plotting

    fig, axes = plotting.figure(ncols=2, width=5.2, height=3.6)
    ax = axes[0, 0]
    markers = {"q": ("o", "C0"), "k": ("s", "C3"), "v": ("^", "C2")}
    for proj, (marker, colour) in markers.items():
        sel = biases[biases["projection"] == proj]
        jitter = {"q": -0.2, "k": 0.0, "v": 0.2}[proj]
        ax.scatter(
            sel["layer"] + jitter,
            sel["ratio"],
            marker=marker,
            s=14,
            color=colour,
            alpha=0.7,
            label=f"{proj} heads",
        )
    ax.set_yscale("log")
    ax.axhline(1.0, color="grey", ls="--", lw=1)
    plotting.label(ax, "layer", "‖bias‖ / median ‖W x‖", "bias size against the projected activation")
    ax.legend(fontsize=8)
    ax = axes[0, 1]
    y = np.arange(len(ablation))
    err = np.vstack([ablation["difference"] - ablation["low"], ablation["high"] - ablation["difference"]])
    ax.barh(y, ablation["difference"], xerr=err, color="C1", capsize=3)
    ax.set_yticks(y, ablation["arm"])
    ax.invert_yaxis()
    ax.axvline(0, color="grey", lw=1)
    plotting.label(ax, "loss change (nats per token)", "", f"biases zeroed, {level:.0%} bootstrap interval")
    return fig


def plot_massive(extremes: pd.DataFrame, residual_layer: torch.Tensor, layer: int):
    """Left: top-1/2/3 and median |h| per layer (log). Right: per dim, the largest |h| at position 0 and elsewhere.

    ``residual_layer`` is [N, T, D], the residual stream after ``layer``.
    """
    from . import plotting

    fig, axes = plotting.figure(ncols=2, width=5.2, height=3.6)
    ax = axes[0, 0]
    tops = [c for c in extremes.columns if c.startswith("top")]
    for k, col in enumerate(tops):
        ax.plot(extremes["layer"], extremes[col], marker="o", ms=3, color=f"C{k}", label=f"top {k + 1}")
    ax.plot(extremes["layer"], extremes["median"], marker=".", color="grey", label="median")
    ax.set_yscale("log")
    plotting.label(ax, "layer (output)", "|h| (log scale)", "largest entries of the residual stream")
    ax.legend(fontsize=8)
    ax = axes[0, 1]
    mag = residual_layer.abs().float()
    ax.plot(mag[:, 0].max(0).values.numpy(), color="C3", lw=1, label="position 0")
    ax.plot(mag[:, 1:].amax((0, 1)).numpy(), color="C0", lw=1, alpha=0.8, label="positions ≥ 1")
    ax.set_yscale("log")
    plotting.label(ax, "hidden dimension", "largest |h| (log scale)", f"after layer {layer}, per dimension")
    ax.legend(fontsize=8)
    return fig


def plot_sinks(shares: torch.Tensor, masking: Mapping[int, pd.DataFrame], level: float = 0.95):
    """Left: first-position attention share per layer and head. Right: loss change per masking arm."""
    from . import plotting

    fig, axes = plotting.figure(ncols=2, width=5.2, height=3.8)
    plotting.heatmap(
        axes[0, 0], shares.T.numpy(), "layer", "head", "attention on the first position",
        "mean share of attention", vmin=0.0, vmax=1.0,
    )  # fmt: skip
    ax = axes[0, 1]
    labels, diffs, lows, highs, colours = [], [], [], [], []
    for from_query, table in masking.items():
        who = "all later queries" if from_query <= 1 else f"queries ≥ {from_query}"
        for _, row in table.iterrows():
            what = "first" if row["arm"].startswith("first") else "random middle"
            labels.append(f"{what} from\n{who}")
            diffs.append(row["difference"])
            lows.append(row["low"])
            highs.append(row["high"])
            colours.append("C3" if what == "first" else "C7")
    y = np.arange(len(labels))
    diffs, lows, highs = map(np.asarray, (diffs, lows, highs))
    ax.barh(y, diffs, xerr=np.vstack([diffs - lows, highs - diffs]), color=colours, capsize=3)
    ax.set_yticks(y, labels, fontsize=8)
    ax.invert_yaxis()
    ax.axvline(0, color="grey", lw=1)
    plotting.label(
        ax,
        "loss change (nats per token)",
        "",
        f"a position hidden: loss change, {level:.0%} bootstrap interval",
    )
    return fig
