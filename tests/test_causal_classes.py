"""Output classes restricted to a set of token ids (the study's ``vocab="template"``,
qwen_anatomy.causal.model): with every id kept the restricted path is the full model bit for bit; with a
real subset the step-0 scores are the full model's columns at those ids; targets map to class indices and
an id outside the set is refused."""

from __future__ import annotations

import json

import pytest
import torch

from qwen_anatomy.causal.cache import build_cache, cached_forward, freeze_fusion
from qwen_anatomy.causal.model import BaselineQwen, CausalConfig, CausalQwen, gated_loss
from qwen_anatomy.causal.numtok import NumberTokenizer
from qwen_anatomy.causal.templates import make_texts
from qwen_anatomy.causal.train import train_on_cache
from qwen_anatomy.errors import UserInputError
from qwen_anatomy.loading import load_model
from tolerance import FP32_REORDER, assert_close_scaled

torch.set_num_threads(1)

CONFIGS = {
    "causal": (CausalQwen, CausalConfig()),
    "causal per_class": (CausalQwen, CausalConfig(threshold_mode="learnable")),
    "causal C != H": (CausalQwen, CausalConfig(causal_dim=8, abduction_init="random")),
    "baseline": (BaselineQwen, CausalConfig()),
}


@pytest.fixture(scope="module")
def tiny():
    base, tok = load_model("causal-tiny-lm")
    numtok = NumberTokenizer(tok)
    texts = make_texts("copy", 6, 0) + make_texts("qa", 6, 0)
    probe = CausalQwen(base, numtok.num_token_id)
    freeze_fusion(probe)
    cache = build_cache(probe, numtok, texts, 64, progress=False)
    return base, numtok, cache, probe.num_direction.detach().clone()


def _pair(tiny, name, classes):
    base, numtok, _, direction = tiny
    cls, config = CONFIGS[name]
    models = [cls(base, numtok.num_token_id, config), cls(base, numtok.num_token_id, config, classes)]
    for m in models:
        with torch.no_grad():
            m.num_direction.copy_(direction)
        freeze_fusion(m)
    return models


def _loss(model, out, batch):
    targets = model.class_targets(batch["input_ids"], batch["attention_mask"])
    c = model.config
    return gated_loss(
        out,
        targets,
        batch["numerical_values"],
        batch["attention_mask"],
        model.num_class,
        c.alpha,
        c.lam,
        c.classifier,
    )


@pytest.mark.parametrize("name", list(CONFIGS))
def test_every_id_kept_is_the_full_model_exactly(tiny, name):
    """Classes = every token id: the same outputs, loss and training, bit for bit (same shapes, same
    values, same operations)."""
    _, _, cache, _ = tiny
    full, restricted = _pair(tiny, name, torch.arange(tiny[0].model.embed_tokens.weight.shape[0]))
    assert restricted.classes is not None and restricted.n_classes == full.vocab_size
    logs = [train_on_cache(m, cache, 3, 4, 1e-2, seed=0, log_every=1) for m in (full, restricted)]
    # compared as JSON text, so NaN (the baseline has no scale of U) equals NaN; wall time aside
    same = [json.dumps({k: v for k, v in row.items() if k != "seconds"}) for log in logs for row in log]
    assert same[: len(logs[0])] == same[len(logs[0]) :]
    rows = torch.arange(len(cache))
    batch = cache.batch(rows)
    with torch.no_grad():
        a, b = cached_forward(full, cache, rows), cached_forward(restricted, cache, rows)
        for field in ("loc_S", "scale_S", "probs", "margin", "loc_Y", "scale_Y"):
            x, y = getattr(a, field), getattr(b, field)
            assert (x is None and y is None) or torch.equal(x, y), field
        la, lb = _loss(full, a, batch), _loss(restricted, b, batch)
    assert all(torch.equal(la[k], lb[k]) for k in la)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_a_subset_starts_as_the_full_models_columns(tiny, name):
    """Step 0 over a real subset: scores, scales, margins and (one-vs-rest) P_k equal the full model's at
    those ids; the softmax heads' probabilities are the full logits' softmax over the subset. Tolerance
    FP32_REORDER of each tensor's scale: the [N, C] and [V, C] products may be summed in another order
    by BLAS; a wrong row (an id mapped to a neighbour) differs at the scale of the scores."""
    _, numtok, cache, _ = tiny
    ids = sorted({int(i) for i in cache.input_ids[cache.attention_mask.bool()]} | {3, 100, 383})
    assert numtok.num_token_id in ids and len(ids) < 384
    classes = torch.tensor(ids)
    full, restricted = _pair(tiny, name, classes)
    rows = torch.arange(len(cache))
    if full.config.threshold_mode == "learnable":  # measured on the same positions over every id
        z = cache.hidden.float()
        full.calibrate_threshold_on_features(z, cache.attention_mask.bool())
        restricted.calibrate_threshold_on_features(z, cache.attention_mask.bool())
    with torch.no_grad():
        a, b = cached_forward(full, cache, rows), cached_forward(restricted, cache, rows)
    real = cache.attention_mask.bool()
    measured = full.config.threshold_mode != "scalar"
    for field in ("loc_S", "scale_S") if measured else ("loc_S", "scale_S", "margin"):
        x = getattr(a, field)
        if x is not None:
            assert_close_scaled(getattr(b, field)[real], x[..., classes][real], FP32_REORDER, msg=field)
    if measured:
        # measured C_k read the compatible-mode probability, a softmax renormalised over the classes: the
        # restricted model's C_k are its own (its P_k sum to about 1 over its classes), not the full ones
        assert not torch.allclose(restricted.threshold, full.threshold[classes])
        assert abs(float(b.probs.sum(-1)[real].median()) - 1) < 0.1  # measured: 0.9995
    elif a.margin is not None:
        assert_close_scaled(b.probs[real], a.probs[..., classes][real], FP32_REORDER)
    else:
        assert_close_scaled(b.probs[real], torch.softmax(a.loc_S[..., classes], -1)[real], FP32_REORDER)
    assert torch.equal(a.loc_Y, b.loc_Y) and torch.equal(a.scale_Y, b.scale_Y)  # the value head is untouched
    assert restricted.num_class == ids.index(numtok.num_token_id)


def test_targets_map_to_class_indices_and_back(tiny):
    base, numtok, _, _ = tiny
    classes = [0, 5, numtok.num_token_id, 40, 200]
    classes = sorted(set(classes))
    model = BaselineQwen(base, numtok.num_token_id, classes=classes)
    ids = torch.tensor([[200, 0, 40, 7], [5, numtok.num_token_id, 383, 383]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])  # the ids outside the set sit on padding
    mapped = model.class_targets(ids, mask)
    assert mapped.tolist() == [
        [classes.index(200), 0, classes.index(40), 0],
        [classes.index(5), model.num_class, 0, 0],
    ]
    assert model.class_tokens(mapped)[mask.bool()].tolist() == ids[mask.bool()].tolist()
    assert model.lm_head.weight.shape == (len(classes), base.config.hidden_size)


def test_an_id_outside_the_set_is_refused(tiny):
    base, numtok, _, _ = tiny
    model = CausalQwen(base, numtok.num_token_id, classes=[0, numtok.num_token_id, 9])
    with pytest.raises(
        UserInputError, match=r"token id\(s\) \[7\] are not among this model's 3 output classes"
    ):
        model.class_targets(torch.tensor([[0, 7, 9]]))


@pytest.mark.parametrize(
    "classes, words",
    [
        ([], "classes is empty"),
        ([5, 2, 1], "sorted token ids without repeats"),
        ([1, 1, 2], "sorted token ids without repeats"),
        ([0, 2, 9999], "the model has ids 0..383"),
        ([0, 2, 3], "lacks <NUM>"),
    ],
)
def test_bad_class_sets_are_refused(tiny, classes, words):
    base, numtok, _, _ = tiny
    if words == "lacks <NUM>":
        classes = [c for c in classes if c != numtok.num_token_id]
    with pytest.raises(UserInputError, match=words):
        CausalQwen(base, numtok.num_token_id, classes=classes)


def test_a_diverged_run_stops_with_a_clear_error(tiny):
    """A NaN loss stops training at the step it appears (naming it), instead of training on and
    scoring a broken model."""
    from qwen_anatomy.causal.train import TrainingDiverged

    base, numtok, cache, direction = tiny
    model = BaselineQwen(base, numtok.num_token_id, CausalConfig())
    with torch.no_grad():
        model.num_direction.copy_(direction)
        model.reg_head.bias.fill_(float("nan"))
    freeze_fusion(model)
    with pytest.raises(TrainingDiverged, match="diverged at step 0: loss nan"):
        train_on_cache(model, cache, 3, 4, 1e-2, seed=0, log_every=1)
