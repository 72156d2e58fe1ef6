"""Synthetic texts with numbers, the four evaluation sets, and the small project backbone
(chapter 50_causal_heads).

Training texts mix five templates (price, temperature, measurement, plain "value: x", and a
question/answer whose answer repeats a number stated earlier, so it can be predicted from context).
Values lie in (0, 100) with 0-2 decimals. Evaluation sets: ``basic`` (the same templates),
``qa`` (question/answer only), ``extreme`` (values 1e-5 ... 1e5, log-uniform) and ``boundary``
(values in [0, 1]). Every generator takes a seed; the same seed gives the same texts.
"""

from __future__ import annotations

import random

from ..errors import UserInputError
from .templates import stated_value

ITEMS = ["apple", "book", "lamp", "chair", "coffee", "ticket", "shirt", "phone", "bread", "pencil"]
CITIES = ["Paris", "Tokyo", "Cairo", "Lima", "Oslo", "Delhi", "Rome", "Quito"]
OBJECTS = ["table", "rope", "board", "pipe", "cable", "wall", "track", "bridge"]
UNITS = ["cm", "m", "kg", "g", "litres"]
NAMES = ["Ana", "Ben", "Chen", "Dara", "Eli", "Femi", "Gia", "Hugo"]
EVAL_SETS = ("basic", "qa", "extreme", "boundary")


def _value(rng: random.Random, kind: str) -> str:
    return stated_value(rng, kind)  # one definition of the value ranges (templates.py)


def _template(rng: random.Random, kind: str, template: str) -> str:
    v = _value(rng, kind)
    if template == "price":
        return f"The price of the {rng.choice(ITEMS)} is {v} dollars."
    if template == "temperature":
        return f"Today the temperature in {rng.choice(CITIES)} is {v} degrees."
    if template == "measurement":
        return f"The {rng.choice(OBJECTS)} measures {v} {rng.choice(UNITS)}."
    if template == "value":
        return f"value: {v}"
    # question/answer: the answer repeats the number stated in the first sentence
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    return f"{name} paid {v} dollars for the {item}. Question: how much did {name} pay? Answer: {v}"


TEMPLATES = ("price", "temperature", "measurement", "value", "qa")


def make_texts(kind: str, n: int, seed: int) -> list[str]:
    """``n`` texts of one kind: "train" (all templates, values in (0, 100)) or an evaluation set."""
    if kind not in ("train", *EVAL_SETS):
        raise UserInputError(f"text kind {kind!r}: use 'train' or one of {EVAL_SETS}")
    if not isinstance(n, int) or n <= 0:
        raise UserInputError(f"n={n!r}: a dataset needs at least one text")
    rng = random.Random(f"causal-{kind}-{seed}")
    texts = []
    for _ in range(n):
        if kind == "qa":
            template = "qa"
        else:
            template = rng.choice(TEMPLATES)
        value_kind = kind if kind in ("extreme", "boundary") else "normal"
        texts.append(_template(rng, value_kind, template))
    return texts


def evaluation_sets(n: int, seed: int = 1234) -> dict[str, list[str]]:
    """The four fixed evaluation sets (seeded independently of the training texts)."""
    return {name: make_texts(name, n, seed) for name in EVAL_SETS}


# -- the small project backbone (CI scale) -------------------------------------------------------------
def train_project_tokenizer(texts: list[str], vocab_size: int = 384):
    """A byte-level BPE tokenizer trained on ``texts``; ``<NUM>`` is reserved as a spare special row
    (like Qwen2.5's unused reserved ids), ``<|endoftext|>`` is end of text and padding."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>", "<NUM>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return tok


def pretrain_project_lm(out_dir, steps: int = 600, seed: int = 0, n_texts: int = 4000, log=print):
    """Train the small project Qwen2 (2 layers, hidden 64) on synthetic number texts written in
    digits, and save it as a standard checkpoint directory with its tokenizer. About a minute on one
    core. The shipped copy is data/models/causal-tiny-lm (regenerate: ``qwen-anatomy causal pretrain``)."""
    import json
    import tempfile
    from pathlib import Path

    import torch

    from ..config import tiny_config
    from ..loading import save_checkpoint
    from ..model import Qwen2ForCausalLM

    if Path(out_dir).exists() and any(Path(out_dir).iterdir()):  # fail before training, not after
        raise FileExistsError(f"{out_dir} exists and is not empty; choose a new directory")
    torch.manual_seed(seed)
    texts = make_texts("train", n_texts, seed + 100)
    tok = train_project_tokenizer(texts)
    eos = tok.token_to_id("<|endoftext|>")
    cfg = tiny_config(
        vocab_size=tok.get_vocab_size(),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        attention_bias=True,
        eos_token_id=eos,
        pad_token_id=eos,
        bos_token_id=eos,
    )
    model = Qwen2ForCausalLM(cfg).init_weights(seed)
    encoded = [tok.encode(t).ids + [eos] for t in texts]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    rng = random.Random(seed)
    model.train()
    for step in range(steps):
        rows = rng.sample(encoded, 32)
        width = max(map(len, rows))
        ids = torch.full((len(rows), width), eos)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = 1
        logits = model(ids, attention_mask=mask).logits[:, :-1]
        target = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
        loss = torch.nn.functional.cross_entropy(logits.transpose(1, 2), target, ignore_index=-100)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == steps - 1:
            log(f"pretrain step {step}: loss {loss.item():.3f}")
    model.eval()
    with tempfile.TemporaryDirectory() as tmp:
        tok.save(str(Path(tmp) / "tokenizer.json"))
        (Path(tmp) / "tokenizer_config.json").write_text(
            json.dumps({"eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "add_bos_token": False})
        )
        out = save_checkpoint(model, out_dir, tokenizer_dir=Path(tmp))
    from ..runrecord import atomic_write_json, environment

    atomic_write_json(
        Path(out) / "provenance.json",
        {
            "made_by": "qwen_anatomy.causal.data.pretrain_project_lm",
            "command": f"qwen-anatomy causal pretrain --out {out_dir} --steps {steps} --seed {seed}",
            "steps": steps,
            "seed": seed,
            "n_texts": n_texts,
            "final_loss": round(loss.item(), 4),
            **environment(),
        },
    )
    return out
