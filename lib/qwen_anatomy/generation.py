"""KV-cache generation, batched with left padding (chapter 02_qwen2_from_scratch).

The prompt is run once through the model, filling a pre-allocated cache; every later step feeds one
token per row. Rows are left-padded so that all rows end at the same column; each row's positions
count only its real tokens (cumulative sum of the mask), so a padded row computes exactly what it
would compute alone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from .model import Qwen2ForCausalLM
from .sampling import check_sampling_args, next_token


def left_pad(prompts: Sequence[Sequence[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token lists -> ids [B, T] and mask [B, T] (1 = token), padded on the left."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, p in enumerate(prompts):
        ids[row, width - len(p) :] = torch.as_tensor(list(p), dtype=torch.long)
        mask[row, width - len(p) :] = 1
    return ids, mask


@torch.no_grad()
def generate(
    model: Qwen2ForCausalLM,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int = 32,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    eos_token_id: int | Sequence[int] | None = None,
    pad_token_id: int | None = None,
    on_token: Callable[[torch.Tensor], None] | None = None,
    use_cache: bool = True,
) -> list[list[int]]:
    """New tokens for each prompt (an end-of-sequence token, when produced, is kept and ends the row).

    ``temperature=0`` is greedy; otherwise tokens are sampled after top-k and top-p filtering, from
    a generator seeded with ``seed``. ``on_token`` receives each step's tokens [B] (for streaming).
    ``use_cache=False`` recomputes the whole prefix at every step (the reference the cache must match).
    """
    if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens={max_new_tokens} must be an integer >= 0")
    check_sampling_args(temperature, top_k, top_p)
    eos = set([eos_token_id] if isinstance(eos_token_id, int) else (eos_token_id or ()))
    pad = pad_token_id if pad_token_id is not None else (min(eos) if eos else 0)
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    ids, mask = left_pad(prompts, pad)
    ids, mask = ids.to(model.device), mask.to(model.device)
    b, t0 = ids.shape
    out: list[list[int]] = [[] for _ in range(b)]
    if max_new_tokens == 0:
        return out
    finished = torch.zeros(b, dtype=torch.bool, device=ids.device)
    eos_t = torch.tensor(sorted(eos), dtype=torch.long, device=ids.device)

    full_mask = torch.ones((b, t0 + max_new_tokens), dtype=torch.long, device=ids.device)
    full_mask[:, :t0] = mask
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    cache = model.new_cache(b, t0 + max_new_tokens) if use_cache else None
    logits = model(ids, attention_mask=mask, position_ids=positions, cache=cache, logits_to_keep=1).logits
    next_pos = positions[:, -1:] + 1
    seq = ids
    for step in range(max_new_tokens):
        tok = next_token(logits[:, -1], temperature, top_k, top_p, generator)
        tok = torch.where(finished, torch.full_like(tok, pad), tok)
        for row in (~finished).nonzero().flatten().tolist():
            out[row].append(int(tok[row]))
        if on_token is not None:
            on_token(tok)
        if len(eos_t):
            finished |= torch.isin(tok, eos_t)
        if bool(finished.all()) or step == max_new_tokens - 1:
            break
        s = t0 + step + 1
        if use_cache:
            logits = model(
                tok[:, None], attention_mask=full_mask[:, :s], position_ids=next_pos, cache=cache
            ).logits
        else:
            seq = torch.cat([seq, tok[:, None]], dim=1)
            pos = (full_mask[:, :s].cumsum(-1) - 1).clamp(min=0)
            logits = model(seq, attention_mask=full_mask[:, :s], position_ids=pos).logits[:, -1:]
        next_pos = next_pos + 1
    return out
