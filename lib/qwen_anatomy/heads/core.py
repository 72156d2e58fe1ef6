"""Evaluation batches, per-example losses and head gates for any Qwen2/Llama-family model (Part IV).

Chapter 40_heads_importance_vs_plasticity explains the gate: a multiplier on each head's output at
the input of ``o_proj`` (which has no bias). Our own model takes gates natively
(``head_gates`` [L, H] or per-example [B, L, H]); a transformers model gets the same multiplication
from a forward pre-hook on each ``o_proj`` (transformers 5 dropped ``head_mask``).

Batches are right-padded: with causal attention a real token never sees a padding token that comes
after it, so no attention mask is needed and every real position is computed exactly as unpadded.
Shapes: E examples, B batch, T positions, D hidden, L layers, H query heads, K key/value heads,
d head_dim, V vocabulary.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserInputError
from ..model import Qwen2ForCausalLM

IGNORE = -100


@dataclass
class EvalBatch:
    """Right-padded token ids [E, T] and next-token targets [E, T] (``IGNORE`` = not scored).

    ``targets[i, t]`` is the token that position t should predict (already shifted). ``source[i]``,
    when known, is example i's index in the data it came from (among the file's non-blank lines).
    """

    input_ids: torch.Tensor
    targets: torch.Tensor
    lengths: torch.Tensor  # [E] real tokens per example
    source: torch.Tensor | None = None  # [E] index of each example in its data file

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def subset(self, idx) -> EvalBatch:
        idx = torch.as_tensor(idx, dtype=torch.long, device=self.input_ids.device)
        t = int(self.lengths[idx].max())
        source = None if self.source is None else self.source[idx.cpu()]
        return EvalBatch(self.input_ids[idx, :t], self.targets[idx, :t], self.lengths[idx], source)

    def to(self, device) -> EvalBatch:
        """The same batch on another device (the model's)."""
        return EvalBatch(
            self.input_ids.to(device), self.targets.to(device), self.lengths.to(device), self.source
        )

    def real_mask(self) -> torch.Tensor:
        """[E, T] bool, True at real (non-padding) positions."""
        pos = torch.arange(self.input_ids.shape[1], device=self.input_ids.device)
        return pos[None, :] < self.lengths[:, None]


def make_batch(sequences: Sequence[Sequence[int]], score_from: Sequence[int], pad_id: int = 0) -> EvalBatch:
    """Batch token sequences; example i is scored on predicting tokens ``score_from[i]`` onwards.

    ``score_from[i] = 1`` scores every next-token prediction (plain text); for a synthetic task it
    is the position of the first output token, so the loss covers the answer only.
    """
    if not sequences:
        raise UserInputError("no evaluation examples: the data file gave no usable lines")
    lengths = [len(s) for s in sequences]
    if min(lengths) < 2:
        raise UserInputError("an evaluation example has fewer than 2 tokens: nothing to predict")
    t = max(lengths)
    ids = torch.full((len(sequences), t), pad_id, dtype=torch.long)
    targets = torch.full((len(sequences), t), IGNORE, dtype=torch.long)
    for i, (seq, start) in enumerate(zip(sequences, score_from, strict=True)):
        seq_t = torch.as_tensor(list(seq), dtype=torch.long)
        ids[i, : len(seq)] = seq_t
        start = max(1, int(start))
        if start >= len(seq):
            raise UserInputError(f"example {i}: scoring starts at token {start} but it has {len(seq)} tokens")
        # position p predicts token p + 1; score tokens start .. len-1
        targets[i, start - 1 : len(seq) - 1] = seq_t[start:]
    return EvalBatch(ids, targets, torch.as_tensor(lengths))


def per_example_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy per example [B] (nats), over scored positions only."""
    b, t, v = logits.shape
    ce = F.cross_entropy(
        logits.reshape(b * t, v).float(), targets.reshape(b * t), ignore_index=IGNORE, reduction="none"
    ).view(b, t)
    count = (targets != IGNORE).sum(1).clamp(min=1)
    return ce.sum(1) / count


# -- model geometry -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class HeadLayout:
    """L layers, H query heads and K key/value heads of head_dim d; group g serves H/K query heads."""

    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int

    @property
    def group_size(self) -> int:
        return self.num_heads // self.num_kv_heads

    @property
    def n_heads_total(self) -> int:
        return self.num_layers * self.num_heads

    @property
    def n_groups_total(self) -> int:
        return self.num_layers * self.num_kv_heads

    def group_of(self, head: int) -> int:
        """Query head h uses key/value group h // (H / K)."""
        return head // self.group_size


def model_device(model: nn.Module) -> torch.device:
    """The device of a model's parameters (where its inputs must go)."""
    return next(model.parameters()).device


def head_layout(model: nn.Module) -> HeadLayout:
    return config_layout(model.config)


def config_layout(cfg) -> HeadLayout:
    """The head layout from a model config (before loading any weights)."""
    heads = cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    return HeadLayout(cfg.num_hidden_layers, heads, cfg.num_key_value_heads, head_dim)


def is_native(model: nn.Module) -> bool:
    return isinstance(model, Qwen2ForCausalLM)


def _attn_modules(model: nn.Module) -> list[nn.Module]:
    try:
        return [layer.self_attn for layer in model.model.layers]
    except AttributeError:
        raise UserInputError(
            f"{type(model).__name__} is not a Qwen2/Llama-family causal LM (no model.layers[i].self_attn)"
        ) from None


# -- gated forward ------------------------------------------------------------------------------------
def _mix(z: torch.Tensor, gate: torch.Tensor, mean: torch.Tensor | None) -> torch.Tensor:
    """z [B, T, H, d] -> g·z + (1 - g)·mean for gate [B, H] (or [H]) and mean [H, d] (None = zero)."""
    g = gate if gate.dim() == 2 else gate.unsqueeze(0)
    g = g[:, None, :, None].to(z.dtype)
    out = z * g
    if mean is not None:
        out = out + (1 - g) * mean[None, None].to(device=z.device, dtype=z.dtype)
    return out


@contextlib.contextmanager
def o_proj_gate_hooks(
    model: nn.Module, gates: torch.Tensor, mean_z: torch.Tensor | None = None, start_layer: int = 0
) -> Iterator[None]:
    """Gate heads of any Qwen2/Llama model through forward pre-hooks on each layer's ``o_proj``.

    ``gates`` [L, H] or [B, L, H]; ``mean_z`` [L, H, d] replaces an ablated head's output by its mean
    instead of zero (mean ablation). Used for transformers models, and for ours when asked.
    """
    lay = head_layout(model)
    handles = []

    def make(layer: int):
        def pre_hook(_module, args):
            (x,) = args  # [B, T, H·d]
            b, t, _ = x.shape
            gate = gates[:, layer] if gates.dim() == 3 else gates[layer]
            mean = None if mean_z is None else mean_z[layer]
            z = _mix(x.view(b, t, lay.num_heads, lay.head_dim), gate, mean)
            return (z.reshape(b, t, lay.num_heads * lay.head_dim),)

        return pre_hook

    try:
        for i, attn in enumerate(_attn_modules(model)):
            if i >= start_layer:
                handles.append(attn.o_proj.register_forward_pre_hook(make(i)))
        yield
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def _mean_z_hooks(model: Qwen2ForCausalLM, gates: torch.Tensor, mean_z: torch.Tensor, start_layer: int):
    handles = []
    for i, attn in enumerate(_attn_modules(model)):
        if i < start_layer:
            continue
        gate = gates[:, i] if gates.dim() == 3 else gates[i]
        handles.append(
            attn.hook_z.register_forward_hook(lambda _m, _i, z, g=gate, m=mean_z[i]: _mix(z, g, m))
        )
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def final_hidden(
    model: nn.Module,
    input_ids: torch.Tensor | None = None,
    gates: torch.Tensor | None = None,
    mean_z: torch.Tensor | None = None,
    inputs_embeds: torch.Tensor | None = None,
    start_layer: int = 0,
    use_hooks: bool = False,
) -> torch.Tensor:
    """Final-norm hidden states [B, T, D] with head gates (1 keeps a head, 0 ablates it).

    ``inputs_embeds`` + ``start_layer`` (our model only) rerun layers start_layer..L-1 from the
    residual stream entering start_layer (prefix reuse). ``use_hooks`` forces the o_proj pre-hook
    path on our model (it must agree with the native gates; a test checks it).
    """
    if is_native(model) and not use_hooks:
        if mean_z is None:
            out = model(
                input_ids,
                head_gates=gates,
                inputs_embeds=inputs_embeds,
                start_layer=start_layer,
                logits_to_keep=1,
            )
        else:
            with _mean_z_hooks(model, gates, mean_z, start_layer):
                out = model(input_ids, inputs_embeds=inputs_embeds, start_layer=start_layer, logits_to_keep=1)
        return out.last_hidden_state
    if start_layer:
        if not is_native(model):
            raise ValueError("prefix reuse (start_layer > 0) needs the project's own model")
    ctx = (
        o_proj_gate_hooks(model, gates, mean_z, start_layer)
        if gates is not None
        else contextlib.nullcontext()
    )
    with ctx:
        if is_native(model):
            return model(
                input_ids, inputs_embeds=inputs_embeds, start_layer=start_layer, logits_to_keep=1
            ).last_hidden_state
        return model.model(input_ids=input_ids, inputs_embeds=inputs_embeds).last_hidden_state


def loss_from_hidden(model: nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-example loss [B] applying the LM head only at scored positions (saves B·T·V memory)."""
    mask = targets != IGNORE  # [B, T]
    logits = model.lm_head(hidden[mask])  # [N, V]
    ce = F.cross_entropy(logits.float(), targets[mask], reduction="none")
    rows = mask.nonzero()[:, 0]
    total = torch.zeros(hidden.shape[0], dtype=ce.dtype, device=ce.device).index_add_(0, rows, ce)
    return total / mask.sum(1).clamp(min=1)


def gated_loss(
    model: nn.Module,
    batch: EvalBatch,
    gates: torch.Tensor | None = None,
    mean_z: torch.Tensor | None = None,
    use_hooks: bool = False,
) -> torch.Tensor:
    """Per-example loss [B] with the given head gates ([L, H] or [B, L, H])."""
    hidden = final_hidden(model, batch.input_ids, gates=gates, mean_z=mean_z, use_hooks=use_hooks)
    return loss_from_hidden(model, hidden, batch.targets)


def capture_head_outputs(model: nn.Module, input_ids: torch.Tensor, fn, use_hooks: bool = False):
    """Run a forward pass calling ``fn(layer, z)`` on each layer's per-head outputs z [B, T, H, d]."""
    lay = head_layout(model)
    handles = []
    for i, attn in enumerate(_attn_modules(model)):
        if is_native(model) and not use_hooks:
            handles.append(attn.hook_z.register_forward_hook(lambda _m, _i, z, i=i: fn(i, z)))
        else:

            def pre(_m, args, i=i):
                x = args[0]
                fn(i, x.view(x.shape[0], x.shape[1], lay.num_heads, lay.head_dim))

            handles.append(attn.o_proj.register_forward_pre_hook(pre))
    try:
        return final_hidden(model, input_ids, use_hooks=use_hooks)
    finally:
        for h in handles:
            h.remove()


def batches(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))
