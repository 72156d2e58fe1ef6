"""Book-scale CausalQwen training on a CPU: run the frozen part of the backbone once, train on the cache
(chapter 50_causal_heads, issue 14).

A step of CausalQwen on Qwen2.5-0.5B spends most of its time in the 24 backbone layers, which do not
change when the backbone is frozen. :func:`build_cache` runs the frozen bottom of the model once over
the training texts and keeps the residual stream entering layer ``start_layer`` for every position;
training then reruns only layers ``start_layer .. L-1`` (none when ``start_layer == L``: the cache is
the final features z) and the heads, on cached rows (:func:`cached_forward`).

``start_layer = L`` trains the heads alone on the frozen features. ``start_layer = L - k`` also
fine-tunes the last ``k`` layers and the final norm (:func:`unfreeze_top`): the bounded part of the
backbone that a task needing the model to carry a value (copying, arithmetic) can use. What is cached
must not change during training, so the numeric fusion (the phi direction and any new embedding rows)
is frozen first (:func:`freeze_fusion`); the test suite checks that the cached path equals the
uncached one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import UserInputError


@dataclass
class FeatureCache:
    """The residual stream entering layer ``start_layer`` for ``N`` right-padded texts, with what the
    loss needs. ``hidden`` is [N, T, H] in ``dtype`` (float32 by default); the rest [N, T]."""

    hidden: torch.Tensor
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    numerical_values: torch.Tensor
    start_layer: int
    n_layers: int

    def __len__(self) -> int:
        return self.hidden.shape[0]

    @property
    def final(self) -> bool:
        """True when the cache holds the final features z (heads-only training)."""
        return self.start_layer == self.n_layers

    def batch(self, index, width: int | None = None) -> dict[str, torch.Tensor]:
        """The rows ``index`` (their first ``width`` positions when given)."""
        cols = slice(None) if width is None else slice(0, width)
        return {
            "input_ids": self.input_ids[index][:, cols],
            "attention_mask": self.attention_mask[index][:, cols],
            "numerical_values": self.numerical_values[index][:, cols],
        }

    def width(self, index) -> int:
        """The longest real length among the rows ``index``: the texts are right-padded to the longest
        text of the whole cache, and the positions past a batch's longest text are padding on every
        row, which no loss or metric reads (and, under the causal mask, no real position attends to)."""
        return max(int(self.attention_mask[index].sum(1).max()), 1)

    def nbytes(self) -> int:
        return sum(t.element_size() * t.numel() for t in (self.hidden, self.input_ids, self.attention_mask))


def freeze_fusion(model) -> None:
    """Stop training what feeds the cached layers: the phi direction and any new embedding rows."""
    model.num_direction.requires_grad_(False)
    if model.extra_rows is not None:
        model.extra_rows.requires_grad_(False)


def unfreeze_top(model, start_layer: int) -> list[torch.nn.Parameter]:
    """Make layers ``start_layer ..`` and the final norm trainable (the rest of the backbone frozen);
    returns the parameters made trainable. The backbone must be float32 (AdamW on bfloat16 loses
    its updates)."""
    backbone = model.backbone
    n = len(backbone.model.layers)
    if not 0 <= start_layer <= n:
        raise UserInputError(f"--train-layers: the backbone has {n} layers; train between 0 and {n} of them")
    params = [p for layer in backbone.model.layers[start_layer:] for p in layer.parameters()]
    if start_layer < n:
        params += list(backbone.model.norm.parameters())
    if params and any(p.dtype != torch.float32 for p in params):
        raise UserInputError(
            "--train-layers > 0 trains backbone layers, which needs float32 weights: load the backbone in float32"
        )
    for p in backbone.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    return params


@torch.no_grad()
def build_cache(
    model,
    numtok,
    texts: list[str],
    max_length: int,
    start_layer: int | None = None,
    batch_size: int = 16,
    dtype: torch.dtype = torch.float32,
    progress: bool = True,
) -> FeatureCache:
    """Run the frozen bottom of ``model`` (embedding, phi fusion, layers ``< start_layer``) over
    ``texts`` once. ``start_layer`` defaults to the number of layers (cache the final features z).
    Texts are padded to the longest one (at most ``max_length`` tokens)."""
    from ..progress import progress_bar

    if not texts:
        raise UserInputError("the training set is empty: give at least one text")
    backbone = model.backbone
    n_layers = len(backbone.model.layers)
    start = n_layers if start_layer is None else int(start_layer)
    if not 0 <= start <= n_layers:
        raise UserInputError(
            f"start_layer={start}: the backbone has layers 0..{n_layers - 1} (or {n_layers}: z)"
        )
    freeze_fusion(model)
    enc = numtok.batch(list(texts), max_length=max_length)
    device = backbone.device
    was_training = model.training
    model.eval()
    parts = []
    for i in progress_bar(range(0, len(texts), batch_size), desc="feature cache", enabled=progress):
        sl = slice(i, i + batch_size)
        ids = enc["input_ids"][sl].to(device)
        mask = enc["attention_mask"][sl].to(device)
        vals = enc["numerical_values"][sl].to(device)
        if start == n_layers:
            h = model.features(ids, vals, mask)
        else:
            out = backbone(
                inputs_embeds=model.embed(ids, vals),
                attention_mask=mask,
                output_hidden_states=True,
                logits_to_keep=1,
            )
            h = out.hidden_states[start]
        parts.append(h.to("cpu", dtype))
    model.train(was_training)
    return FeatureCache(
        torch.cat(parts), enc["input_ids"], enc["attention_mask"], enc["numerical_values"], start, n_layers
    )


def cached_features(model, cache: FeatureCache, index, width: int | None = None) -> torch.Tensor:
    """z for the cached rows ``index`` (their first ``width`` positions when given): the cache itself, or
    the top layers rerun on it."""
    device = model.backbone.device
    cols = slice(None) if width is None else slice(0, width)
    h = cache.hidden[index][:, cols].to(device, torch.float32)
    if cache.final:
        return h
    mask = cache.attention_mask[index][:, cols].to(device)
    out = model.backbone(
        inputs_embeds=h.to(model.backbone.dtype),
        attention_mask=mask,
        start_layer=cache.start_layer,
        logits_to_keep=1,
    )
    return out.last_hidden_state.float()


def cached_forward(model, cache: FeatureCache, index, width: int | None = None):
    """The model's output on the cached rows ``index`` (equal to ``model(...)`` on their texts), on their
    first ``width`` positions when given (:meth:`FeatureCache.width`: the rest is padding)."""
    return model.heads(cached_features(model, cache, index, width))


def cached_batches(cache: FeatureCache, batch_size: int, seed: int):
    """An endless stream of shuffled row indices (a reshuffle each epoch), seeded."""
    g = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(len(cache), generator=g)
        for i in range(0, len(order), batch_size):
            yield order[i : i + batch_size]
