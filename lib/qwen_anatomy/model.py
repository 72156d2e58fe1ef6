"""Qwen2 from scratch, in one file (chapter 02_qwen2_from_scratch).

Module and parameter names equal the Hugging Face checkpoint keys (``model.layers.0.self_attn.q_proj
.weight`` ...), so loading a checkpoint is a checked copy. Shapes use one vocabulary:
B batch, T query positions, S key positions (cache included), D hidden, H query heads,
K key/value heads, d head_dim, I intermediate, V vocabulary, L layers.

Every intermediate activation passes through a :class:`HookPoint` with a stable name, so forward hooks
(or :func:`run_with_cache`) can read or replace it:

==========================================  ====================================================
name                                        shape
==========================================  ====================================================
``model.hook_embed``                        [B, T, D] token embeddings
``model.layers.{i}.hook_resid_pre``         [B, T, D] input of layer i
``model.layers.{i}.self_attn.hook_q``       [B, H, T, d] queries after RoPE
``model.layers.{i}.self_attn.hook_k``       [B, K, S, d] keys after RoPE (cache included)
``model.layers.{i}.self_attn.hook_v``       [B, K, S, d] values (cache included)
``model.layers.{i}.self_attn.hook_pattern`` [B, H, T, S] attention probabilities (eager only)
``model.layers.{i}.self_attn.hook_z``       [B, T, H, d] per-head outputs before the gate
``model.layers.{i}.hook_attn_out``          [B, T, D] attention block output (o_proj)
``model.layers.{i}.hook_resid_mid``         [B, T, D] residual after attention
``model.layers.{i}.mlp.hook_act``           [B, T, I] silu(gate) * up
``model.layers.{i}.hook_mlp_out``           [B, T, D] MLP block output
``model.layers.{i}.hook_resid_post``        [B, T, D] output of layer i
``model.hook_final``                        [B, T, D] after the final RMSNorm
==========================================  ====================================================

Per-head gates sit at the input of ``o_proj`` (which has no bias): ``head_gates`` of shape [L, H]
(a non-persistent buffer of ones by default) or a per-example [B, L, H] passed to ``forward``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config import Qwen2Config


class HookPoint(nn.Module):
    """Identity whose output forward hooks can read or replace (a named activation)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    @property
    def active(self) -> bool:
        return bool(self._forward_hooks)


class RMSNorm(nn.Module):
    """x · rsqrt(mean(x²) + eps) computed in float32, cast back, times a learned weight."""

    def __init__(self, hidden_size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [..., D]
        input_dtype = x.dtype
        x32 = x.to(torch.float32)
        variance = x32.pow(2).mean(-1, keepdim=True)
        x32 = x32 * torch.rsqrt(variance + self.variance_epsilon)
        return self.weight * x32.to(input_dtype)


def rope_inv_freq(head_dim: int, theta: float) -> torch.Tensor:
    """inv_freq_i = theta^(-2i/d) for i < d/2, float32 [d/2]."""
    return 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))


def rope_tables(
    position_ids: torch.Tensor, inv_freq: torch.Tensor, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables [B, T, d] for integer positions [B, T].

    Angles are position × inv_freq in float32; the half-size table is concatenated twice so that
    it lines up with :func:`rotate_half`.
    """
    freqs = position_ids[..., None].float() * inv_freq.to(position_ids.device, torch.float32)  # [B, T, d/2]
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1) on the last dimension's two halves."""
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x [B, heads, T, d] by the tables [B, T, d]."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return (x * cos) + (rotate_half(x) * sin)


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """[B, K, S, d] -> [B, K·n_rep, S, d]; expand is a view, reshape copies once."""
    if n_rep == 1:
        return x
    b, k, s, d = x.shape
    return x[:, :, None].expand(b, k, n_rep, s, d).reshape(b, k * n_rep, s, d)


class KVCache:
    """Pre-allocated key/value cache: one [B, K, S_max, d] buffer pair per layer."""

    def __init__(self, config: Qwen2Config, batch: int, max_len: int, dtype, device) -> None:
        shape = (batch, config.num_key_value_heads, max_len, config.head_dim)
        self.keys = [torch.empty(shape, dtype=dtype, device=device) for _ in range(config.num_hidden_layers)]
        self.values = [
            torch.empty(shape, dtype=dtype, device=device) for _ in range(config.num_hidden_layers)
        ]
        self.max_len = max_len
        self.length = 0  # positions filled, shared by all layers

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        start, t = self.length, k.shape[2]
        if start + t > self.max_len:
            raise ValueError(f"KV cache overflow: {start + t} positions > max_len={self.max_len}")
        self.keys[layer][:, :, start : start + t] = k
        self.values[layer][:, :, start : start + t] = v
        return self.keys[layer][:, :, : start + t], self.values[layer][:, :, : start + t]

    def advance(self, t: int) -> None:
        self.length += t


class Qwen2MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) ⊙ up(x)), no biases."""

    def __init__(self, config: Qwen2Config) -> None:
        super().__init__()
        d, i = config.hidden_size, config.intermediate_size
        self.gate_proj = nn.Linear(d, i, bias=False)
        self.up_proj = nn.Linear(d, i, bias=False)
        self.down_proj = nn.Linear(i, d, bias=False)
        self.hook_act = HookPoint()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.hook_act(F.silu(self.gate_proj(x)) * self.up_proj(x)))


class Qwen2Attention(nn.Module):
    """Grouped-query attention with RoPE, a causal + padding mask and per-head output gates."""

    def __init__(self, config: Qwen2Config, layer_idx: int) -> None:
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.scaling = self.head_dim**-0.5
        d, hd = config.hidden_size, config.head_dim
        bias = config.attention_bias
        self.q_proj = nn.Linear(d, self.num_heads * hd, bias=bias)
        self.k_proj = nn.Linear(d, self.num_kv_heads * hd, bias=bias)
        self.v_proj = nn.Linear(d, self.num_kv_heads * hd, bias=bias)
        self.o_proj = nn.Linear(self.num_heads * hd, d, bias=False)
        self.hook_q, self.hook_k, self.hook_v = HookPoint(), HookPoint(), HookPoint()
        self.hook_pattern, self.hook_z = HookPoint(), HookPoint()
        self.implementation = "sdpa"  # or "eager"; eager is used whenever hook_pattern is read

    def forward(
        self,
        x: torch.Tensor,  # [B, T, D]
        cos: torch.Tensor,  # [B, T, d]
        sin: torch.Tensor,
        allowed: torch.Tensor | None,  # [B, 1, T, S] bool, True = may attend; None = plain causal
        gate: torch.Tensor | None,  # [H] or [B, H]
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        b, t, _ = x.shape
        hd = self.head_dim
        q = self.q_proj(x).view(b, t, self.num_heads, hd).transpose(1, 2)  # [B, H, T, d]
        k = self.k_proj(x).view(b, t, self.num_kv_heads, hd).transpose(1, 2)  # [B, K, T, d]
        v = self.v_proj(x).view(b, t, self.num_kv_heads, hd).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.update(self.layer_idx, k, v)  # [B, K, S, d]
        q, k, v = self.hook_q(q), self.hook_k(k), self.hook_v(v)
        n_rep = self.num_heads // self.num_kv_heads

        if self.implementation == "eager" or self.hook_pattern.active:
            k_full, v_full = repeat_kv(k, n_rep), repeat_kv(v, n_rep)
            scores = torch.matmul(q, k_full.transpose(2, 3)) * self.scaling  # [B, H, T, S]
            if allowed is None:
                allowed = _causal(t, k.shape[2], x.device)
            scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
            probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
            probs = self.hook_pattern(probs)
            z = torch.matmul(probs, v_full)  # [B, H, T, d]
        else:
            if allowed is None and t in (1, k.shape[2]):
                # no padding: plain causal (one new query may see the whole cache)
                z = F.scaled_dot_product_attention(
                    q, k, v, is_causal=t > 1, scale=self.scaling, enable_gqa=n_rep > 1
                )
            else:
                if allowed is None:
                    allowed = _causal(t, k.shape[2], x.device)
                z = F.scaled_dot_product_attention(
                    q, k, v, attn_mask=allowed, scale=self.scaling, enable_gqa=n_rep > 1
                )
        z = self.hook_z(z.transpose(1, 2))  # [B, T, H, d]
        if gate is not None:
            g = gate if gate.dim() == 2 else gate.unsqueeze(0)  # [B or 1, H]
            z = z * g[:, None, :, None].to(z.dtype)
        return self.o_proj(z.reshape(b, t, self.num_heads * hd))


def _causal(t: int, s: int, device) -> torch.Tensor:
    """[1, 1, T, S] bool: query i (at absolute position s - t + i) sees keys 0..s-t+i."""
    q_pos = torch.arange(s - t, s, device=device)[:, None]
    k_pos = torch.arange(s, device=device)[None, :]
    return (k_pos <= q_pos)[None, None]


def build_allowed(attention_mask: torch.Tensor | None, t: int, s: int, device) -> torch.Tensor | None:
    """Combine causality with a key padding mask [B, S] (1 = real token) into [B, 1, T, S] bool.

    A query that may see nothing (a left-padding position) is allowed to see itself, so that no row
    of the softmax is empty; outputs at padding positions carry no meaning and are never scored.
    """
    if attention_mask is None or bool(attention_mask.all()):
        return None
    allowed = _causal(t, s, device) & attention_mask[:, None, None, :].bool()
    diag = torch.zeros(t, s, dtype=torch.bool, device=device)
    diag[torch.arange(t), torch.arange(s - t, s)] = True
    return allowed | diag[None, None]


class Qwen2DecoderLayer(nn.Module):
    """Pre-norm block: h = x + Attn(RMSNorm(x)); out = h + MLP(RMSNorm(h))."""

    def __init__(self, config: Qwen2Config, layer_idx: int) -> None:
        super().__init__()
        self.self_attn = Qwen2Attention(config, layer_idx)
        self.mlp = Qwen2MLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.hook_resid_pre, self.hook_attn_out = HookPoint(), HookPoint()
        self.hook_resid_mid, self.hook_mlp_out = HookPoint(), HookPoint()
        self.hook_resid_post = HookPoint()

    def forward(self, x, cos, sin, allowed, gate=None, cache=None) -> torch.Tensor:
        x = self.hook_resid_pre(x)
        attn = self.hook_attn_out(self.self_attn(self.input_layernorm(x), cos, sin, allowed, gate, cache))
        h = self.hook_resid_mid(x + attn)
        mlp = self.hook_mlp_out(self.mlp(self.post_attention_layernorm(h)))
        return self.hook_resid_post(h + mlp)


class Qwen2Model(nn.Module):
    """Embedding -> L decoder layers -> final RMSNorm."""

    def __init__(self, config: Qwen2Config) -> None:
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(Qwen2DecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        # A plain attribute, not a buffer: model.to(bfloat16) must not round the frequencies.
        self.inv_freq = rope_inv_freq(config.head_dim, config.rope_theta)
        self.hook_embed, self.hook_final = HookPoint(), HookPoint()


@dataclass
class ForwardOutput:
    logits: torch.Tensor  # [B, T, V]
    hidden_states: list[torch.Tensor] | None = None  # L + 1 residual streams, then final norm
    last_hidden_state: torch.Tensor | None = None  # [B, T, D] after the final norm


class Qwen2ForCausalLM(nn.Module):
    """The full model. ``lm_head.weight`` *is* ``model.embed_tokens.weight`` when tied."""

    def __init__(self, config: Qwen2Config) -> None:
        super().__init__()
        self.config = config
        self.model = Qwen2Model(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.register_buffer(
            "head_gates",
            torch.ones(config.num_hidden_layers, config.num_attention_heads),
            persistent=False,
        )

    # -- construction ---------------------------------------------------------------------------
    def init_weights(self, seed: int = 0, std: float = 0.02) -> Qwen2ForCausalLM:
        """Normal(0, std) matrices, zero biases, unit norms: transformers' own initialisation."""
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, p in self.named_parameters():
                if name.endswith("layernorm.weight") or name == "model.norm.weight":
                    p.fill_(1.0)
                elif name.endswith(".bias"):
                    p.zero_()
                else:
                    p.copy_(torch.randn(p.shape, generator=g) * std)
        return self

    def set_attn_implementation(self, name: str) -> None:
        if name not in ("sdpa", "eager"):
            raise ValueError(f"attention implementation {name!r}: use 'sdpa' or 'eager'")
        for layer in self.model.layers:
            layer.self_attn.implementation = name

    @property
    def device(self) -> torch.device:
        return self.model.embed_tokens.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.embed_tokens.weight.dtype

    # -- forward --------------------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.Tensor | None = None,  # [B, T]
        attention_mask: torch.Tensor | None = None,  # [B, S] 1 = token, 0 = padding
        position_ids: torch.Tensor | None = None,  # [B, T]
        head_gates: torch.Tensor | None = None,  # [L, H] or [B, L, H]
        cache: KVCache | None = None,
        inputs_embeds: torch.Tensor | None = None,  # [B, T, D] replaces the embedding lookup
        start_layer: int = 0,
        output_hidden_states: bool = False,
        logits_to_keep: int = 0,
    ) -> ForwardOutput:
        """Logits for every position (or the last ``logits_to_keep``).

        ``start_layer=l`` with ``inputs_embeds`` set to the residual stream entering layer l reruns
        only layers l..L-1 (prefix reuse for ablations: earlier layers are unchanged by a gate in l).
        Positions default to past length + arange(T), as in transformers' forward.
        """
        m = self.model
        if inputs_embeds is None:
            if input_ids is None:
                raise ValueError("give input_ids or inputs_embeds")
            if start_layer:
                raise ValueError("start_layer > 0 needs inputs_embeds (the residual entering it)")
            x = m.hook_embed(m.embed_tokens(input_ids))
        else:
            x = inputs_embeds
        b, t, _ = x.shape
        past = cache.length if cache is not None else 0
        s = past + t
        if position_ids is None:
            position_ids = torch.arange(past, s, device=x.device)[None].expand(b, t)
        cos, sin = rope_tables(position_ids, m.inv_freq, x.dtype)
        allowed = build_allowed(attention_mask, t, s, x.device)
        gates = self.head_gates if head_gates is None else head_gates
        per_example = gates.dim() == 3
        hidden = [x] if output_hidden_states else None
        for i in range(start_layer, len(m.layers)):
            gate = gates[:, i] if per_example else gates[i]
            x = m.layers[i](x, cos, sin, allowed, gate, cache)
            if hidden is not None:
                hidden.append(x)
        if cache is not None:
            cache.advance(t)
        x = m.hook_final(m.norm(x))
        if hidden is not None:
            hidden.append(x)
        logits = self.lm_head(x[:, -logits_to_keep:] if logits_to_keep else x)
        return ForwardOutput(logits=logits, hidden_states=hidden, last_hidden_state=x)

    def new_cache(self, batch: int, max_len: int) -> KVCache:
        return KVCache(self.config, batch, max_len, self.dtype, self.device)

    # -- introspection --------------------------------------------------------------------------
    def hook_points(self) -> dict[str, HookPoint]:
        return {n: mod for n, mod in self.named_modules() if isinstance(mod, HookPoint)}


@contextlib.contextmanager
def hooks(model: nn.Module, fns: dict[str, callable]) -> Iterator[None]:
    """Attach forward hooks by hook-point name for the duration of a ``with`` block.

    Each function receives the activation and may return a replacement (or None to keep it).
    """
    points = dict(model.named_modules())
    handles = []
    try:
        for name, fn in fns.items():
            if name not in points or not isinstance(points[name], HookPoint):
                raise KeyError(f"no hook point named {name!r}; see model.hook_points()")
            handles.append(points[name].register_forward_hook(lambda _m, _i, out, fn=fn: fn(out)))
        yield
    finally:
        for h in handles:
            h.remove()


def run_with_cache(
    model: Qwen2ForCausalLM, input_ids: torch.Tensor, names: Iterable[str] | None = None, **kwargs
) -> tuple[ForwardOutput, dict[str, torch.Tensor]]:
    """Forward pass that also returns the named activations (all hook points when names is None)."""
    wanted = list(names) if names is not None else list(model.hook_points())
    store: dict[str, torch.Tensor] = {}

    def saver(name):
        def fn(x):
            store[name] = x.detach()

        return fn

    with hooks(model, {n: saver(n) for n in wanted}):
        out = model(input_ids, **kwargs)
    return out, store


def count_parameters(model: nn.Module) -> int:
    """Unique parameters (a tied head counts once)."""
    return sum(p.numel() for p in model.parameters())
