"""Language-model basics (chapter 01_language_models).

A language model assigns p(x_1..x_L) = Π_i p(x_i | x_<i). Everything here is measured in nats
unless a function says otherwise; divide by ln 2 for bits.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import torch

LN2 = math.log(2.0)


def _to_base(x: torch.Tensor | float, base: float):
    return x / math.log(base) if base != math.e else x


def entropy(p: torch.Tensor, base: float = math.e) -> torch.Tensor:
    """H(p) = -Σ p log p over the last dimension (0 log 0 = 0)."""
    p = p.double()
    return _to_base(-(torch.where(p > 0, p * p.log(), torch.zeros_like(p))).sum(-1), base)


def cross_entropy(p: torch.Tensor, q: torch.Tensor, base: float = math.e) -> torch.Tensor:
    """H(p, q) = -Σ p log q: the cost of coding samples of p with a code built for q (>= H(p))."""
    p, q = p.double(), q.double()
    terms = torch.where(p > 0, p * q.clamp_min(1e-300).log(), torch.zeros_like(p))
    return _to_base(-terms.sum(-1), base)


def kl_divergence(p: torch.Tensor, q: torch.Tensor, base: float = math.e) -> torch.Tensor:
    """KL(p || q) = H(p, q) - H(p) >= 0."""
    return cross_entropy(p, q, base) - entropy(p, base)


def perplexity(mean_nll_nats: float) -> float:
    """exp(mean negative log-likelihood per token): the effective number of equally likely choices."""
    return math.exp(mean_nll_nats)


@torch.no_grad()
def token_logprobs(model, ids: Sequence[int] | torch.Tensor) -> torch.Tensor:
    """log p(x_i | x_<i) in nats for i = 1..T-1 of one sequence (the first token has no prediction)."""
    ids = torch.as_tensor(ids, dtype=torch.long).view(1, -1)
    logits = model(ids).logits[0, :-1].float()
    return torch.log_softmax(logits, -1).gather(-1, ids[0, 1:, None]).squeeze(-1)


def score_text(model, tokenizer, text: str) -> dict:
    """Chain-rule score of a text: total log-probability (nats and bits) and per-token terms.

    The tokenizer's BOS token (when it has one) is prepended so that every text token is predicted.
    """
    ids = tokenizer.encode(text)
    bos = tokenizer.bos_token_id
    prefix = [bos] if bos is not None else []
    lp = token_logprobs(model, prefix + ids) if prefix else token_logprobs(model, ids)
    tokens = [tokenizer.decode([i]) for i in ids[-len(lp) :]]
    total = float(lp.sum())
    return {
        "text": text,
        "tokens": tokens,
        "logprobs": lp.tolist(),
        "total_nats": total,
        "total_bits": total / LN2,
        "mean_nll_nats": -total / len(lp),
    }


@torch.no_grad()
def corpus_nll(model, ids: Sequence[int], window: int = 512, bos: int | None = None) -> tuple[float, int]:
    """Summed NLL (nats) and count of predicted tokens over a long id list, in disjoint windows.

    Each window restarts the context (with ``bos`` when given) so every token is predicted once from
    at most ``window`` tokens of context; the same tokens are scored by :class:`NGramModel`.
    """
    total, count = 0.0, 0
    ids = list(ids)
    for start in range(0, len(ids), window):
        chunk = ids[start : start + window]
        seq = ([bos] if bos is not None else []) + chunk
        if len(seq) < 2:
            continue
        lp = token_logprobs(model, seq)
        total -= float(lp.sum())
        count += len(lp)
    return total, count


def predicted_bytes(tokenizer, ids: Sequence[int], window: int = 512) -> int:
    """UTF-8 bytes of the text whose tokens :func:`corpus_nll` predicts (no BOS): all but each window's first.

    Dividing a summed NLL by this count gives a loss per byte of text, which compares models whose
    tokenizers cut the same text into different numbers of tokens. (A first token that splits a
    multi-byte character decodes to a replacement character: the count is then off by a byte or two.)
    """
    ids = list(ids)
    total = len(tokenizer.decode(ids).encode("utf-8"))
    firsts = [ids[start] for start in range(0, len(ids), window)]
    return total - sum(len(tokenizer.decode([i]).encode("utf-8")) for i in firsts)


def bits_per_byte(total_nll_nats: float, n_bytes: int) -> float:
    """Summed NLL in nats over a text -> bits per UTF-8 byte of that text."""
    if n_bytes <= 0:
        raise ValueError(f"n_bytes={n_bytes} must be positive")
    return total_nll_nats / LN2 / n_bytes


class NGramModel:
    """An n-gram model with add-k smoothing that backs off to the (n-1)-gram distribution.

    P_n(w | h) = (c(h, w) + k·V·P_{n-1}(w | h')) / (c(h) + k·V), where h' drops the oldest token and
    P_1(w) = (c(w) + k) / (N + k·V). Every level is a proper distribution over the V token ids, so
    perplexities are comparable with a transformer's on the same tokens. (A Dirichlet prior centred
    on the lower order: with k -> 0 it tends to maximum likelihood, with large k to the lower order.)
    """

    def __init__(self, order: int, vocab_size: int, add_k: float = 0.05) -> None:
        if order < 1:
            raise ValueError(f"order={order} must be >= 1")
        if add_k <= 0:
            raise ValueError(f"add_k={add_k} must be > 0 (it keeps unseen tokens possible)")
        self.order, self.vocab_size, self.k = order, vocab_size, add_k
        self.counts: list[Counter] = [Counter() for _ in range(order)]  # level j: (j+1)-grams
        self.context_counts: list[Counter] = [Counter() for _ in range(order)]
        self.total = 0

    def fit(self, sequences: Sequence[Sequence[int]]) -> NGramModel:
        for seq in sequences:
            seq = list(seq)
            self.total += len(seq)
            for j in range(self.order):  # level j counts (j+1)-grams
                for i in range(j, len(seq)):
                    gram = tuple(seq[i - j : i + 1])
                    self.counts[j][gram] += 1
                    if j:
                        self.context_counts[j][gram[:-1]] += 1
        return self

    def prob(self, context: Sequence[int], token: int) -> float:
        kv = self.k * self.vocab_size
        p = (self.counts[0][(token,)] + self.k) / (self.total + kv)
        context = list(context)[-(self.order - 1) :] if self.order > 1 else []
        for j in range(1, self.order):
            if len(context) < j:
                break
            h = tuple(context[-j:])
            p = (self.counts[j][(*h, token)] + kv * p) / (self.context_counts[j][h] + kv)
        return p

    def nll(self, ids: Sequence[int], window: int | None = None) -> tuple[float, int]:
        """Summed NLL (nats) of ids[1:] (or, with ``window``, of the tokens a windowed transformer predicts).

        With ``window`` the context restarts at every window boundary, exactly like :func:`corpus_nll`
        without BOS: the first token of each window is not predicted.
        """
        ids = list(ids)
        total, count = 0.0, 0
        step = window or len(ids)
        for start in range(0, len(ids), step):
            chunk = ids[start : start + step]
            for i in range(1, len(chunk)):
                total -= math.log(self.prob(chunk[max(0, i - self.order + 1) : i], chunk[i]))
                count += 1
        return total, count
