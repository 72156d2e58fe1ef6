"""The feature cache of book-scale CausalQwen training (qwen_anatomy.causal.cache): training on cached
rows is training on the texts, for heads-only (final z cached) and top-layer (residual cached) runs."""

from __future__ import annotations

import pytest
import torch

from qwen_anatomy.causal import cache as fc
from qwen_anatomy.causal.model import CausalQwen, gated_loss
from qwen_anatomy.causal.numtok import NumberTokenizer
from qwen_anatomy.causal.templates import make_texts
from qwen_anatomy.errors import UserInputError
from qwen_anatomy.loading import load_model
from qwen_anatomy.paths import REPO_ROOT
from tolerance import assert_close_scaled

torch.set_num_threads(1)
TINY = REPO_ROOT / "data" / "models" / "causal-tiny-lm"


def _setup(seed=0):
    base, tok = load_model(TINY)
    numtok = NumberTokenizer(tok)
    model = CausalQwen.from_base(base, numtok.num_token_id)
    return model, numtok, make_texts("train", 12, seed)


def _loss(model, out, batch):
    parts = gated_loss(
        out, batch["input_ids"], batch["numerical_values"], batch["attention_mask"], model.num_token_id
    )
    return parts["loss"]


@pytest.mark.parametrize("top", [0, 1])  # heads only; heads + the last layer
def test_cached_path_equals_the_texts(top):
    """Outputs, loss and every trainable gradient agree (float32; relative 1e-5 of the tensor's
    scale: the two paths pad to different widths, so BLAS may sum in another order)."""
    model, numtok, texts = _setup()
    n = len(model.backbone.model.layers)
    cache = fc.build_cache(model, numtok, texts, max_length=48, start_layer=n - top, progress=False)
    fc.unfreeze_top(model, n - top)
    assert cache.final == (top == 0) and len(cache) == len(texts)
    rows = torch.tensor([3, 0, 7, 5])
    sub = [texts[i] for i in rows]
    enc = numtok.batch(sub, max_length=48)
    width = enc["input_ids"].shape[1]  # the batch pads to its longest text, the cache to the longest of all
    batch = {k: v[:, :width] for k, v in cache.batch(rows).items()}
    assert torch.equal(batch["input_ids"], enc["input_ids"]) and torch.equal(
        batch["attention_mask"], enc["attention_mask"]
    )

    params = [p for p in model.parameters() if p.requires_grad]
    assert any(p is model.backbone.model.norm.weight for p in params) == (top > 0)
    assert not model.num_direction.requires_grad
    direct = model(enc["input_ids"], enc["numerical_values"], enc["attention_mask"])
    g_direct = torch.autograd.grad(_loss(model, direct, enc), params)
    cached = fc.cached_forward(model, cache, rows)
    g_cached = torch.autograd.grad(_loss(model, cached, cache.batch(rows)), params)
    real = enc["attention_mask"].bool()
    assert_close_scaled(cached.loc_Y[:, :width][real], direct.loc_Y[real], rtol=1e-5)
    assert_close_scaled(cached.loc_S[:, :width][real], direct.loc_S[real], rtol=1e-5)
    for a, b in zip(g_cached, g_direct, strict=True):
        assert_close_scaled(a, b, rtol=1e-4)  # gradients sum over positions: a looser bound


def test_frozen_bottom_is_untouched_by_top_training():
    model, numtok, texts = _setup()
    n = len(model.backbone.model.layers)
    fc.build_cache(model, numtok, texts, max_length=48, start_layer=n - 1, progress=False)
    trained = fc.unfreeze_top(model, n - 1)
    names = {id(p): k for k, p in model.backbone.named_parameters()}
    assert all(names[id(p)].startswith((f"model.layers.{n - 1}.", "model.norm")) for p in trained)
    assert not model.backbone.model.layers[0].self_attn.q_proj.weight.requires_grad


def test_batches_are_seeded_permutations():
    model, numtok, texts = _setup()
    cache = fc.build_cache(model, numtok, texts, max_length=48, progress=False)
    a, b, c = (fc.cached_batches(cache, 5, s) for s in (0, 0, 1))
    first = [next(a) for _ in range(3)]  # 12 rows: batches of 5, 5, 2
    assert sorted(torch.cat(first).tolist()) == list(range(12))
    assert all(torch.equal(x, next(b)) for x in first)
    assert not torch.equal(first[0], next(c))


def test_bad_layers():
    model, numtok, texts = _setup()
    n = len(model.backbone.model.layers)
    with pytest.raises(UserInputError, match="start_layer"):
        fc.build_cache(model, numtok, texts, max_length=48, start_layer=n + 1, progress=False)
    with pytest.raises(UserInputError, match="--train-layers"):
        fc.unfreeze_top(model, -1)
    with pytest.raises(UserInputError, match="empty"):
        fc.build_cache(model, numtok, [], max_length=48, progress=False)


@pytest.mark.parametrize("baseline", [False, True])
def test_training_on_the_cache_is_training_on_the_texts(baseline):
    """Full-batch training (every text in every batch, so both paths see the same data each step):
    the logged losses of 3 steps agree, for CausalQwen and the baseline (relative 1e-4: the two paths
    pad to different widths and AdamW amplifies rounding a little each step)."""
    from qwen_anatomy.causal.model import BaselineQwen
    from qwen_anatomy.causal.train import train, train_on_cache

    logs = []
    for cached in (False, True):
        base, tok = load_model(TINY)
        numtok = NumberTokenizer(tok)
        model = (BaselineQwen if baseline else CausalQwen)(base, numtok.num_token_id)
        fc.freeze_fusion(
            model
        )  # the cached path needs it; the text path gets it too, to train the same parameters
        texts = make_texts("train", 6, 0)
        if cached:
            cache = fc.build_cache(model, numtok, texts, max_length=48, progress=False)
            logs.append(train_on_cache(model, cache, steps=3, batch_size=6, log_every=1))
        else:
            logs.append(train(model, numtok, texts, steps=3, batch_size=6, log_every=1))
    for a, b in zip(*logs, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
    assert logs[1][-1]["loss"] < logs[1][0]["loss"]


def test_train_on_cache_measures_per_class_thresholds():
    from qwen_anatomy.causal.model import CausalConfig
    from qwen_anatomy.causal.train import train_on_cache

    base, tok = load_model(TINY)
    numtok = NumberTokenizer(tok)
    model = CausalQwen.from_base(base, numtok.num_token_id, CausalConfig(threshold_mode="per_class"))
    cache = fc.build_cache(model, numtok, make_texts("train", 8, 1), max_length=48, progress=False)
    assert not model.threshold_measured
    train_on_cache(model, cache, steps=1, batch_size=4)
    assert model.threshold_measured
    with pytest.raises(UserInputError, match="steps"):
        train_on_cache(model, cache, steps=-1)
