"""Under-trained tokens, as in "Fishing for Magikarp" (Land & Bartolo, 2024) (chapter 12).

A tokenizer is trained before (and on other data than) the model, so some of its tokens hardly occur in
the model's training text. Their rows barely move from where the optimiser left the rows of tokens
that never occur at all, and prompts containing them derail the model. The paper finds them in three
steps, all here:

1. **Categorise every token by its round trip through the tokenizer** (:func:`categorise`): ``unused``
   (a row known never to be trained: no tokenizer entry, or the ``[PAD<id>]`` placeholders a GGUF
   converter writes for those ids), ``special`` (the tokenizer's added tokens), ``partial_utf8``
   (its bytes are not valid UTF-8 alone: it decodes to U+FFFD), ``unreachable`` (encoding its own
   decoded text does not give it back) and ``reachable`` (encode(decode(id)) == [id]). Only reachable
   tokens are candidates: the others cannot be prompted as themselves and are reported apart.
2. **An indicator from the weights** (:func:`unused_distance`). For an untied model the paper uses the
   output (unembedding) matrix U: remove its first principal component (a direction shared by all rows
   that would otherwise dominate every cosine), average the rows known to be unused, and take each
   token's cosine *distance* to that mean. Low distance = the row points where never-trained rows
   point = likely under-trained. A tied model has one matrix, used the same way. The L2 norm of the
   input embedding is the paper's alternative indicator; it is computed beside, as is the same
   cosine indicator on the embedding matrix, so the choice can be checked.
3. **Verification by prompting** (:func:`verify`). Each candidate is inserted, by id, into prompts that
   ask the model to repeat it; the model continues greedily for a few tokens and the largest
   probability it gives the candidate's id at any of those positions is kept, maximised over the
   templates. The paper calls a token under-trained when that maximum stays below 1 %
   (:data:`PAPER_THRESHOLD`). A random sample of reachable tokens goes through the same prompts as a
   control: the base rate a candidate list must beat.

The templates follow the ones in the paper's code (``magikarp/fishing.py`` in cohere-ai/magikarp:
"This device repeats its input exactly ...", "... just giving the same phrase repeated
indefinitely"), with fewer repetitions so that a CPU verifies thousands of tokens in minutes (one
input/output demonstration instead of 20, eight copies instead of 51), plus one prompt through the
checkpoint's own chat template (the built-in Qwen2.5-Coder is an Instruct model). Measured on
Qwen2.5-Coder-0.5B: with three demonstrations instead of one, 195 of 200 random reachable tokens passed
(max probability >= 1 %), the same 195 passed on the two other templates alone, and one demonstration
gave the same verdict as three on all 1,695 tokens both runs verified; the two extra demonstrations
cost 40 % of the time. The defaults (the paper's 2 % of reachable tokens, 2,970 candidates, and 200
control tokens) take 10-13 minutes on two cores.

On the built-in Qwen2.5-Coder-0.5B GGUF the output matrix (Q8_0) is stored apart from the embedding
(Q5_0) although the released model ties them: one matrix at two precisions. The indicator uses the
output matrix: it is U, the paper's choice for untied models, and it is also the tied model's single
matrix, at the finer of the two precisions. That matters for the reference rows: the never-trained
rows are near-copies of one vector whose spread is mostly rounding, 0.28 % of their norm in the Q5_0
embedding against 0.11 % in the Q8_0 output matrix (data/README.md). :func:`token_table` computes the
same indicator on the embedding, and the embedding norm, so chapter 12 can compare them.

The command ``qwen-anatomy tokens MODEL --out DIR`` runs everything and writes the report
(:func:`write_report`); chapter 12 computes steps 1-2 live and reads step 3 from the committed report
(:func:`load_report`).
"""

from __future__ import annotations

import csv
import math
import os
import re
import time
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import UserInputError

PAPER_THRESHOLD = 0.01  # max probability below which the paper calls a candidate under-trained
CATEGORIES = ("reachable", "unreachable", "partial_utf8", "special", "unused")
INDICATOR_NAME = "cosine distance to the mean unused row, first principal component removed"
REGENERATE = "qwen-anatomy tokens {model} --out data/results/tokens/{name}"
PAPER_CANDIDATES = 0.02  # the paper's default: the lowest 2 % of the indicator among reachable tokens
_PLACEHOLDER = re.compile(r"^\[PAD(\d+)\]$")
_SLOT = -1  # marks where the token under test goes in a prompt's ids
_CODE_CHARS = set("_$@#{}[]()<>=;:/\\|*&^%~`.")
_TWO_WORD_SCRIPTS = {"OLD", "TAI", "NEW", "INSCRIPTIONAL", "CANADIAN", "MODIFIER", "PSALTER", "CAUCASIAN"}


# -- parsing options ---------------------------------------------------------------------------------
def parse_candidates(text) -> int | float:
    """``--candidates``: an integer N >= 1 (the N lowest-indicator reachable tokens) or a fraction in
    (0, 1) (that share of the reachable tokens, e.g. 0.02, the paper's 2 %)."""
    s = str(text).strip()
    try:
        value = float(s)
    except ValueError:
        raise UserInputError(
            f"--candidates {text!r}: give a count (e.g. 1500) or a fraction of the reachable tokens (e.g. 0.02)"
        ) from None
    if not math.isfinite(value) or value <= 0:
        raise UserInputError(f"--candidates {text!r}: must be a count >= 1 or a fraction in (0, 1)")
    if value < 1:
        return value
    if value != int(value):
        raise UserInputError(
            f"--candidates {text!r}: a count must be a whole number (or give a fraction < 1)"
        )
    return int(value)


def parse_id_ranges(text: str, n_rows: int, flag: str = "--unused") -> list[int]:
    """``"151665-151935,7"`` -> the ids, each checked against ``0..n_rows-1``."""
    ids: set[int] = set()
    for part in str(text).split(","):
        part = part.strip()
        m = re.fullmatch(r"(\d+)(?:\s*-\s*(\d+))?", part)
        if not m:
            raise UserInputError(f"{flag} {text!r}: {part!r} is not an id or a range like 151665-151935")
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) is not None else lo
        if hi < lo:
            raise UserInputError(f"{flag} {text!r}: range {part!r} runs backwards; write low-high")
        if hi >= n_rows:
            raise UserInputError(f"{flag} {text!r}: id {hi} is outside the model's rows 0..{n_rows - 1}")
        ids.update(range(lo, hi + 1))
    return sorted(ids)


def format_ranges(ids) -> str:
    """[1, 2, 3, 7] -> "1-3, 7" (for summaries)."""
    ids = sorted(int(i) for i in ids)
    out, start, prev = [], None, None
    for i in ids:
        if start is None:
            start = prev = i
        elif i == prev + 1:
            prev = i
        else:
            out.append(f"{start}-{prev}" if prev > start else f"{start}")
            start = prev = i
    if start is not None:
        out.append(f"{start}-{prev}" if prev > start else f"{start}")
    return ", ".join(out)


# -- step 1: categories and kinds -------------------------------------------------------------------
def token_kind(text: str | None) -> str:
    """What a decoded token looks like: ``byte piece`` (not valid UTF-8 alone), ``whitespace``,
    ``digits``, ``symbols`` (no letter), ``code`` (letters with programming punctuation such as
    ``_ . $ < / (``, or camelCase), else the Unicode script of its first letter (``Latin``, ``CJK``,
    ``Cyrillic``, ``Hangul``, ``kana``, ``Arabic``, ...). ``none`` for an id without a token."""
    if text is None:
        return "none"
    if text == "" or "\ufffd" in text:
        return "byte piece"
    core = text.strip()
    if not core:
        return "whitespace"
    if core.isdigit():
        return "digits"
    letters = [c for c in core if c.isalpha()]
    if not letters:
        return "symbols"
    if any(c in _CODE_CHARS for c in core) or re.search(r"[a-z][A-Z]", core):
        return "code"
    name = unicodedata.name(letters[0], "UNKNOWN")
    words = name.split(" ")
    script = words[0]
    if script in ("HIRAGANA", "KATAKANA"):
        return "kana"
    if script == "CJK":
        return "CJK"
    if script == "UNKNOWN":
        return "other"
    if name.endswith(" SIGN"):  # letter-like signs: KELVIN SIGN, OHM SIGN, ANGSTROM SIGN
        return "symbols"
    if script in _TWO_WORD_SCRIPTS and len(words) > 1:
        return f"{script.capitalize()} {words[1].capitalize()}"  # Tai Tham, Old Italic, Canadian Syllabics
    return script.capitalize()


def known_unused(tok, n_rows: int) -> tuple[list[int], str]:
    """Rows known never to be trained: ids with no tokenizer entry, and entries that are a GGUF
    converter's ``[PAD<id>]`` placeholder for its own id. Returns (ids, how they were found)."""
    size = tok.vocab_size
    beyond = list(range(min(size, n_rows), n_rows))
    raw = tok._tok
    added = set(raw.get_added_tokens_decoder())
    placeholders = []
    for t, i in raw.get_vocab(with_added_tokens=False).items():
        m = _PLACEHOLDER.match(t) if t.startswith("[PAD") else None
        if m and int(m.group(1)) == i and i < n_rows and i not in added:
            placeholders.append(i)
    reasons = []
    if placeholders:
        reasons.append(f"{len(placeholders)} [PAD<id>] placeholder entries")
    if beyond:
        reasons.append(f"{len(beyond)} rows beyond the tokenizer's {size} entries")
    return sorted(placeholders) + beyond, " and ".join(reasons) or "none found"


def categorise(tok, n_rows: int, unused_ids=None):
    """One row per matrix row (token id): ``id``, ``token`` (the vocabulary entry), ``decoded`` (its
    text), ``category`` (:data:`CATEGORIES`, first match in the order unused, special, partial_utf8,
    unreachable/reachable) and ``kind`` (:func:`token_kind`). ``unused_ids`` defaults to
    :func:`known_unused`."""
    import pandas as pd

    raw = tok._tok
    size = min(tok.vocab_size, n_rows)
    if unused_ids is None:
        unused_ids, _ = known_unused(tok, n_rows)
    ids = list(range(size))
    decoded = raw.decode_batch([[i] for i in ids], skip_special_tokens=False)
    encoded = raw.encode_batch(decoded, add_special_tokens=False)
    added = set(raw.get_added_tokens_decoder())
    unused = set(int(i) for i in unused_ids)
    category, tokens, texts = [], [], []
    for i in range(n_rows):
        if i >= size:
            tokens.append(None)
            texts.append(None)
            category.append("unused")
            continue
        tokens.append(raw.id_to_token(i))
        text = decoded[i]
        texts.append(text)
        if i in unused:
            category.append("unused")
        elif i in added:
            category.append("special")
        elif "\ufffd" in text:
            category.append("partial_utf8")
        elif encoded[i].ids == [i]:
            category.append("reachable")
        else:
            category.append("unreachable")
    return pd.DataFrame(
        {
            "id": np.arange(n_rows),
            "token": tokens,
            "decoded": texts,
            "category": category,
            "kind": [token_kind(t) for t in texts],
        }
    )


# -- step 2: the indicator ---------------------------------------------------------------------------
def first_principal_component(matrix: np.ndarray, chunk: int = 16384) -> tuple[np.ndarray, float]:
    """(unit vector [D], share of variance) of the first principal component of the rows of
    ``matrix`` [N, D] (rows centred, as PCA does), accumulated in float64 in row chunks. The sign is
    fixed so that the largest-magnitude entry is positive (deterministic output)."""
    n, d = matrix.shape
    mu = np.zeros(d)
    for a in range(0, n, chunk):
        mu += matrix[a : a + chunk].sum(axis=0, dtype=np.float64)
    mu /= n
    cov = np.zeros((d, d))
    for a in range(0, n, chunk):
        c = matrix[a : a + chunk].astype(np.float64) - mu
        cov += c.T @ c
    w, v = np.linalg.eigh(cov)
    pc = v[:, -1]
    if pc[np.argmax(np.abs(pc))] < 0:
        pc = -pc
    return pc, float(w[-1] / max(w.sum(), 1e-300))


def unused_distance(
    matrix: np.ndarray, unused_ids, remove_first_pc: bool = True, chunk: int = 16384
) -> tuple[np.ndarray, dict]:
    """The paper's indicator: cosine distance [N] of each row to the mean of the ``unused_ids`` rows,
    after removing the first principal component from every row (``x - (x·p) p``, p from the centred
    rows). 0 = pointing exactly like the never-trained rows. Returns (distances, details)."""
    unused_ids = np.asarray(unused_ids, dtype=np.int64)
    if unused_ids.size == 0:
        raise ValueError("unused_distance needs at least one known-unused row")
    n, d = matrix.shape
    details: dict = {}
    pc = None
    if remove_first_pc:
        pc, share = first_principal_component(matrix, chunk)
        details["first_pc_variance_share"] = share
    ref = matrix[unused_ids].astype(np.float64)
    if pc is not None:
        details["unused_mean_cosine_to_first_pc"] = float(
            abs(ref.mean(0) @ pc) / max(np.linalg.norm(ref.mean(0)), 1e-300)
        )
        ref = ref - np.outer(ref @ pc, pc)
    u = ref.mean(axis=0)
    u /= max(np.linalg.norm(u), 1e-300)
    out = np.empty(n)
    for a in range(0, n, chunk):
        x = matrix[a : a + chunk].astype(np.float64)
        if pc is not None:
            x -= np.outer(x @ pc, pc)
        out[a : a + chunk] = 1.0 - (x @ u) / np.maximum(np.linalg.norm(x, axis=1), 1e-300)
    return out, details


def row_norms(matrix: np.ndarray, chunk: int = 16384) -> np.ndarray:
    """L2 norm of each row, in float64."""
    return np.concatenate(
        [
            np.linalg.norm(matrix[a : a + chunk].astype(np.float64), axis=1)
            for a in range(0, len(matrix), chunk)
        ]
    )


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


@dataclass
class TokenTable:
    """Steps 1-2 for every token: ``table`` (one row per id) and ``summary`` (what was used, counts)."""

    table: object  # DataFrame: id, token, decoded, category, kind, indicator, rank, alternatives
    summary: dict
    tokenizer: object = None
    timings: dict = field(default_factory=dict)


def token_table(
    spec: str | os.PathLike,
    unused: str | None = None,
    alternatives: bool = True,
    threads: int | None = 1,
) -> TokenTable:
    """Categories and the indicator for every token of a checkpoint (seconds; no model is built).

    ``unused``: ids known never to be trained, as ``"151665-151935"``; default :func:`known_unused`.
    The indicator uses the output matrix (``lm_head``), or the embedding when the model ties them.
    When no row is known to be unused the indicator falls back to the embedding's L2 norm (the paper's
    alternative) and the summary says so. ``alternatives`` adds the embedding-based cosine indicator,
    the embedding norm and the output indicator without first-PC removal, for comparison.
    ``threads``: BLAS threads for the principal components (None: the library's default).
    """
    import scipy.linalg  # noqa: F401  (threadpoolctl limits only BLAS libraries already loaded)
    from threadpoolctl import threadpool_limits

    from ..modelnames import model_label
    from ..tokenizer import Tokenizer
    from .checkpoint import open_checkpoint, tokenizer_dir_for

    timings = {}
    t = time.perf_counter()
    ck = open_checkpoint(spec)
    emb_entry = ck.embedding()
    head_entry = None if ck.tied else ck.find("lm_head")
    if not ck.tied and head_entry is None:
        raise UserInputError(
            f"{ck.path} is untied but holds no lm_head.weight: the indicator needs the output matrix"
        )
    n_rows = emb_entry.shape[0]
    unused_ids = parse_id_ranges(unused, n_rows) if unused is not None else None
    tdir = tokenizer_dir_for(spec, ck)
    if tdir is None:
        raise UserInputError(f"{ck.path} has no tokenizer.json: categorising tokens needs the tokenizer")
    tok = Tokenizer(tdir)
    if tok.vocab_size > n_rows:
        raise UserInputError(
            f"the tokenizer of {spec} has {tok.vocab_size} entries but the embedding only {n_rows} rows: "
            "the tokenizer.json does not belong to these weights"
        )
    timings["open"] = time.perf_counter() - t

    t = time.perf_counter()
    if unused_ids is None:
        unused_ids, unused_source = known_unused(tok, n_rows)
    else:
        unused_source = f"given by --unused ({len(unused_ids)} ids)"
    table = categorise(tok, n_rows, unused_ids)
    timings["categorise"] = time.perf_counter() - t

    t = time.perf_counter()
    main_entry = head_entry if head_entry is not None else emb_entry
    with threadpool_limits(limits=threads):
        main = ck.read_rows(main_entry, 0, n_rows).astype(np.float32, copy=False)
        details: dict = {}
        if unused_ids:
            indicator, details = unused_distance(main, unused_ids)
            indicator_name = INDICATOR_NAME
            matrix_used = main_entry.name
        else:
            indicator = None
        emb = None
        if indicator is None or alternatives:
            emb = (
                main
                if head_entry is None
                else ck.read_rows(emb_entry, 0, n_rows).astype(np.float32, copy=False)
            )
        if indicator is None:
            indicator = row_norms(emb)
            indicator_name = "L2 norm of the input embedding (no row known to be unused)"
            matrix_used = emb_entry.name
        table["indicator"] = indicator
        if alternatives:
            table["embedding_norm"] = row_norms(emb)
            if unused_ids:
                table["indicator_no_pc"] = unused_distance(main, unused_ids, remove_first_pc=False)[0]
                if head_entry is not None:
                    table["indicator_embedding"] = unused_distance(emb, unused_ids)[0]
    timings["indicator"] = time.perf_counter() - t
    reach = table["category"] == "reachable"
    rank = np.full(n_rows, -1)
    order = table.loc[reach].sort_values(["indicator", "id"]).index.to_numpy()
    rank[order] = np.arange(1, len(order) + 1)
    table["rank"] = rank  # 1 = most like the unused rows, among reachable tokens; -1 = not a candidate

    counts = table["category"].value_counts()
    ind_reach = table.loc[reach, "indicator"].to_numpy()
    ind_unused = (
        table.loc[table["id"].isin(unused_ids), "indicator"].to_numpy() if unused_ids else np.array([])
    )
    summary = {
        "model": str(spec),
        "model_label": model_label(spec),
        "model_path": str(ck.path),
        "format": ck.format,
        "tied": ck.tied,
        "rows": int(n_rows),
        "tokenizer_size": tok.vocab_size,
        "tokenizer_dir": str(tdir),
        "categories": {c: int(counts.get(c, 0)) for c in CATEGORIES},
        "unused_ids": format_ranges(unused_ids),
        "unused_count": len(unused_ids),
        "unused_source": unused_source,
        "indicator": indicator_name,
        "indicator_matrix": matrix_used,
        "indicator_matrix_dtype": main_entry.dtype if matrix_used == main_entry.name else emb_entry.dtype,
        "embedding_dtype": emb_entry.dtype,
        "output_dtype": head_entry.dtype if head_entry is not None else emb_entry.dtype,
        "indicator_reachable_quantiles": {
            str(q): float(np.quantile(ind_reach, q)) for q in (0.01, 0.02, 0.05, 0.5)
        }
        if ind_reach.size
        else {},
        **details,
    }
    if ind_unused.size:
        summary["indicator_unused_max"] = float(ind_unused.max())
        summary["indicator_unused_median"] = float(np.median(ind_unused))
        summary["reachable_below_unused_max"] = int((ind_reach <= ind_unused.max()).sum())
    if alternatives and ind_reach.size > 2:
        comp = {}
        for col in ("indicator_embedding", "embedding_norm", "indicator_no_pc"):
            if col in table:
                comp[col] = {"spearman_reachable": _spearman(ind_reach, table.loc[reach, col].to_numpy())}
        summary["alternatives"] = comp
    return TokenTable(table=table, summary=summary, tokenizer=tok, timings=timings)


def top_overlap(table, column: str, n: int) -> float:
    """Share of the ``n`` lowest-``indicator`` reachable tokens that are also among the ``n`` lowest
    of ``column`` (the embedding norm and distances are all "low = under-trained-like")."""
    reach = table[table["category"] == "reachable"]
    a = set(reach.nsmallest(n, "indicator")["id"])
    b = set(reach.nsmallest(n, column)["id"])
    return len(a & b) / max(n, 1)


def select_candidates(table, candidates: int | float) -> list[int]:
    """The reachable ids with the lowest indicator: the first N, or that fraction of the reachable."""
    reach = table[table["rank"] > 0].sort_values("rank")
    n = candidates if isinstance(candidates, int) else int(round(candidates * len(reach)))
    return reach["id"].head(max(n, 0)).astype(int).tolist()


def control_sample(table, n: int, seed: int = 0) -> list[int]:
    """``n`` reachable ids drawn uniformly (without replacement) with ``seed``: the base rate."""
    ids = table.loc[table["category"] == "reachable", "id"].to_numpy()
    rng = np.random.default_rng(seed)
    return sorted(int(i) for i in rng.choice(ids, size=min(n, len(ids)), replace=False))


# -- step 3: verification -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Template:
    """A verification prompt: text pieces with the token's slots (``None``) between them; the prompt
    ends where the token should come next. ``chat``: the pieces are a user message and an assistant
    prefix rendered through the checkpoint's chat template."""

    name: str
    pieces: tuple
    chat: bool = False

    def text(self, token: str = "TOKEN") -> str:
        """The template as text (a chat template as ``user: ... / assistant: ...``)."""
        body = "".join(token if p is None else p for p in self.pieces)
        if self.chat:
            user, reply = body.split("\x00")
            return f"[chat template] user: {user} / assistant: {reply}"
        return body


def _repeat(n: int):
    return (
        "Below is the output, as you can see it's just giving the same phrase repeated indefinitely:\n",
    ) + (None,) * n


def _input_output(shots: int):
    one = ("\nInput: «", None, "»\nOutput: «", None, "»")
    return (
        ("This device repeats its input exactly, as shown in these 100 identical trials.",)
        + one * shots
        + (
            "\nInput: «",
            None,
            "»\nOutput: «",
        )
    )


TEMPLATES = (
    Template("repeat", _repeat(8)),
    Template("input_output", _input_output(1)),
    # user message, then the assistant's reply opened with the same quote mark
    Template("chat", ("Please repeat the string: «", None, "»", "\x00", "«"), chat=True),
)


@dataclass
class PromptIds:
    """A template's token ids: ``prefix`` (shared by every token, before the first slot) and
    ``suffix`` with :data:`_SLOT` where the token under test goes."""

    name: str
    prefix: list
    suffix: list

    @property
    def length(self) -> int:
        return len(self.prefix) + len(self.suffix)


def prompt_ids(tok, template: Template) -> PromptIds | None:
    """The ids of ``template`` for ``tok``; None for a chat template when the tokenizer has none.

    Text pieces are encoded one by one and the token goes in by id, never through its text: the
    prompt then holds exactly that token even when its text would merge with its neighbours."""
    marker = "\ue000SLOT\ue000"
    if template.chat:
        if not tok.chat_template:
            return None
        split = template.pieces.index("\x00")
        user = "".join(marker if p is None else p for p in template.pieces[:split])
        reply = "".join(marker if p is None else p for p in template.pieces[split + 1 :])
        text = (
            tok.apply_chat_template([{"role": "user", "content": user}], add_generation_prompt=True) + reply
        )
    else:
        text = "".join(marker if p is None else p for p in template.pieces)
    parts = text.split(marker)
    ids: list[int] = []
    if tok.add_bos and tok.bos_token_id is not None:
        ids.append(tok.bos_token_id)
    for i, part in enumerate(parts):
        if part:
            ids += tok.encode(part)
        if i < len(parts) - 1:
            ids.append(_SLOT)
    first = ids.index(_SLOT)
    return PromptIds(template.name, ids[:first], ids[first:])


def verify(
    model,
    tok,
    token_ids,
    templates=TEMPLATES,
    batch_size: int = 32,
    new_tokens: int = 3,
    progress: bool = True,
):
    """Prompt the model to repeat each token; returns a DataFrame with one row per id: ``p_<template>``
    (the largest probability of the id over ``new_tokens`` greedy steps after the prompt),
    ``out_<template>`` (the greedy continuation, decoded) and ``max_prob`` (over templates).

    Every token's prompt of one template has the same length (the token goes in by id), so a batch
    needs no padding; the shared prefix is computed once per template and its keys and values are
    copied into each batch's cache.
    """
    import pandas as pd
    import torch

    from ..progress import progress_bar

    token_ids = [int(i) for i in token_ids]
    prompts = [p for p in (prompt_ids(tok, t) for t in templates) if p is not None]
    device = model.device
    result = {"id": token_ids}
    total = len(token_ids) * len(prompts)
    bar = progress_bar(total=total, desc="verifying tokens", unit="prompt", enabled=progress)
    with torch.no_grad():
        for prompt in prompts:
            probs = np.zeros((len(token_ids), new_tokens))
            outs: list[str] = []
            prefix_cache = None
            if prompt.prefix:
                prefix_cache = model.new_cache(1, len(prompt.prefix))
                model(torch.tensor([prompt.prefix], device=device), cache=prefix_cache, logits_to_keep=1)
            suffix = torch.tensor(prompt.suffix, device=device)
            slots = suffix == _SLOT
            for a in range(0, len(token_ids), batch_size):
                batch = torch.tensor(token_ids[a : a + batch_size], device=device)
                b = len(batch)
                ids = suffix[None].repeat(b, 1)
                ids[:, slots] = batch[:, None]
                cache = model.new_cache(b, prompt.length + new_tokens)
                if prefix_cache is not None:
                    p = len(prompt.prefix)
                    for layer in range(len(cache.keys)):
                        cache.keys[layer][:, :, :p] = prefix_cache.keys[layer][:, :, :p]
                        cache.values[layer][:, :, :p] = prefix_cache.values[layer][:, :, :p]
                    cache.length = p
                out = model(ids, cache=cache, logits_to_keep=1)
                greedy = []
                for step in range(new_tokens):
                    logp = torch.log_softmax(out.logits[:, -1].float(), dim=-1)  # [B, V]
                    probs[a : a + b, step] = logp.gather(1, batch[:, None])[:, 0].exp().double().cpu().numpy()
                    nxt = logp.argmax(dim=-1)
                    greedy.append(nxt)
                    if step + 1 < new_tokens:
                        out = model(nxt[:, None], cache=cache, logits_to_keep=1)
                gen = torch.stack(greedy, dim=1).cpu().tolist()
                outs += [tok.decode(g, skip_special_tokens=False) for g in gen]
                bar.update(b)
            result[f"p_{prompt.name}"] = probs.max(axis=1)
            result[f"out_{prompt.name}"] = outs
    bar.close()
    df = pd.DataFrame(result)
    df["max_prob"] = df[[f"p_{p.name}" for p in prompts]].max(axis=1)
    return df


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion k/n ((0, 1) when n = 0)."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, centre - half), min(1.0, centre + half)


# -- the whole run ------------------------------------------------------------------------------------
@dataclass
class TokensReport:
    """Everything ``qwen-anatomy tokens`` writes: the per-token table, the verified tokens, a summary."""

    table: object  # DataFrame, one row per id (see token_table)
    verified: object  # DataFrame, one row per verified id: group, indicator, rank, p_*, out_*, max_prob
    summary: dict
    timings: dict = field(default_factory=dict)


def run(
    spec: str | os.PathLike,
    candidates: int | float = PAPER_CANDIDATES,
    control: int = 200,
    unused: str | None = None,
    batch_size: int = 32,
    new_tokens: int = 3,
    max_tokens: int | None = None,
    seed: int = 0,
    device="cpu",
    dtype="float32",
    threads: int | None = None,
    progress: bool = True,
    table: TokenTable | None = None,
) -> TokensReport:
    """Steps 1-3 on a checkpoint. ``max_tokens`` caps the candidates and the control sample each
    (quick looks); categorisation and the indicator always cover every token. ``threads``: torch and
    BLAS threads, None for torch's own default (every core unless ``OMP_NUM_THREADS`` says otherwise)."""
    import torch

    from ..devices import dtype_name, resolve
    from ..loading import load_model

    device, dtype = resolve(device, dtype)
    if threads is not None:
        torch.set_num_threads(threads)
    tt = table if table is not None else token_table(spec, unused=unused, threads=threads)
    tab, summary, timings = tt.table, dict(tt.summary), dict(tt.timings)
    cand = select_candidates(tab, candidates)
    ctrl = control_sample(tab, control, seed)
    if max_tokens is not None:
        cand, ctrl = cand[:max_tokens], ctrl[:max_tokens]
    t = time.perf_counter()
    model, tok = load_model(spec, device=device, dtype=dtype)
    timings["load_model"] = time.perf_counter() - t
    if tok is None:
        tok = tt.tokenizer
    if model.config.vocab_size != len(tab):
        raise UserInputError(
            f"{spec}: the model has {model.config.vocab_size} output rows but the checkpoint's tensors {len(tab)}"
        )
    ids = sorted(set(cand) | set(ctrl))
    t = time.perf_counter()
    ver = verify(model, tt.tokenizer, ids, batch_size=batch_size, new_tokens=new_tokens, progress=progress)
    timings["verify"] = time.perf_counter() - t
    cand_set, ctrl_set = set(cand), set(ctrl)
    ver["candidate"] = ver["id"].isin(cand_set)
    ver["control"] = ver["id"].isin(ctrl_set)
    ver["under_trained"] = ver["max_prob"] < PAPER_THRESHOLD
    cols = ["id", "token", "decoded", "category", "kind", "indicator", "rank"]
    cols += [c for c in ("indicator_embedding", "embedding_norm", "indicator_no_pc") if c in tab]
    ver = tab[cols].merge(ver, on="id")
    ver = ver.sort_values(["candidate", "max_prob", "rank"], ascending=[False, True, True]).reset_index(
        drop=True
    )

    templates = [p for p in TEMPLATES if prompt_ids(tt.tokenizer, p) is not None]
    c = ver[ver["candidate"]]
    k = ver[ver["control"]]
    nc, vc = len(c), int(c["under_trained"].sum())
    nk, vk = len(k), int(k["under_trained"].sum())
    summary.update(
        {
            "candidates_rule": (
                f"the {candidates} reachable tokens with the lowest indicator"
                if isinstance(candidates, int)
                else f"the lowest {candidates:.1%} of the indicator among reachable tokens"
            )
            + (f", capped at {max_tokens} by --max-tokens" if max_tokens is not None else ""),
            "candidates_requested": candidates,
            "max_tokens": max_tokens,
            "candidates": nc,
            "candidate_indicator_cutoff": float(c["indicator"].max()) if nc else None,
            "candidates_under_trained": vc,
            "candidate_rate": vc / nc if nc else None,
            "candidate_rate_interval": list(wilson_interval(vc, nc)),
            "control": nk,
            "control_seed": seed,
            "control_under_trained": vk,
            "control_rate": vk / nk if nk else None,
            "control_rate_interval": list(wilson_interval(vk, nk)),
            "control_median_max_prob": float(k["max_prob"].median()) if nk else None,
            "control_under_trained_in_list": int((k["under_trained"] & k["candidate"]).sum()),
            "threshold": PAPER_THRESHOLD,
            "new_tokens": new_tokens,
            "templates": {t.name: t.text() for t in templates},
            "template_prompt_tokens": {
                p.name: p.length for p in (prompt_ids(tt.tokenizer, t) for t in templates) if p is not None
            },
            "under_trained_kinds": {
                str(kk): int(v) for kk, v in c.loc[c["under_trained"], "kind"].value_counts().items()
            },
            "device": str(device),
            "dtype": dtype_name(dtype),
            "batch_size": batch_size,
            "threads": torch.get_num_threads(),
        }
    )
    if "alternatives" in summary and nc:
        for col, comp in summary["alternatives"].items():
            comp["top_overlap"] = top_overlap(tab, col, nc)
    return TokensReport(table=tab, verified=ver, summary=summary, timings=timings)


# -- report files ----------------------------------------------------------------------------------
def indicator_histogram(table, bins: int = 120):
    """Counts of the indicator per category on shared bins: columns category, left, right, count."""
    import pandas as pd

    x = table["indicator"].to_numpy()
    edges = np.linspace(float(np.nanmin(x)), float(np.nanmax(x)), bins + 1)
    rows = []
    for cat in CATEGORIES:
        v = x[(table["category"] == cat).to_numpy()]
        if v.size == 0:
            continue
        counts, _ = np.histogram(v, bins=edges)
        rows += [
            {"category": cat, "left": float(edges[i]), "right": float(edges[i + 1]), "count": int(counts[i])}
            for i in range(bins)
        ]
    return pd.DataFrame(rows)


def shown(text) -> str:
    """A token's text made visible in a table: ``repr`` without the quotes (spaces stay, ``\\n`` shows),
    a leading/trailing space marked by ``␣``, pipes escaped for Markdown."""
    if text is None or (isinstance(text, float) and math.isnan(text)):
        return ""
    s = repr(str(text))[1:-1]
    if s.startswith(" "):
        s = "␣" + s[1:]
    if s.endswith(" "):
        s = s[:-1] + "␣"
    return s.replace("|", "\\|")


def markdown_report(report: TokensReport, limit: int | None = None) -> str:
    """The ranked Markdown report: summary lines, then every verified under-trained candidate by
    max probability (lowest first), decoded."""
    s = report.summary
    v = report.verified
    lines = [f"# Under-trained tokens of {s['model_label']}", ""]
    lines += [f"- {sentence}" for sentence in summary_sentences(s)]
    lines += [
        "",
        f"Templates (the token goes in by id where TOKEN stands; {s['new_tokens']} greedy steps):",
        "",
    ]
    lines += [f"- `{name}`: {text!r}" for name, text in s["templates"].items()]
    ut = v[v["candidate"] & v["under_trained"]].sort_values(["max_prob", "rank"])
    if limit is not None:
        ut = ut.head(limit)
    pcols = [c for c in v.columns if c.startswith("p_")]
    lines += ["", f"## Verified under-trained candidates ({len(ut)})", ""]
    lines.append(
        "| rank | id | token | kind | indicator | max prob | " + " | ".join(c[2:] for c in pcols) + " |"
    )
    lines.append("|---:|---:|---|---|---:|---:|" + "---:|" * len(pcols))
    for r in ut.itertuples(index=False):
        d = r._asdict()
        probs = " | ".join(f"{d[c]:.1e}" for c in pcols)
        lines.append(
            f"| {d['rank']} | {d['id']} | `{shown(d['decoded'])}` | {d['kind']} | {d['indicator']:.4f} | "
            f"{d['max_prob']:.1e} | {probs} |"
        )
    return "\n".join(lines) + "\n"


REPORT_FILES = ("summary.json", "verified.csv", "indicator_histogram.csv", "report.md")


def write_report(report: TokensReport, out_dir: str | os.PathLike, all_tokens: bool = False) -> list[Path]:
    """``summary.json``, ``verified.csv`` (every verified token: candidates and control),
    ``indicator_histogram.csv``, ``report.md`` and, with ``all_tokens``, ``tokens.csv.gz`` (every id)."""
    from ..runrecord import atomic_write_json, atomic_write_text

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = [atomic_write_json(out / "summary.json", report.summary)]
    # every text quoted: a bare "\r" (a real Qwen2 token) would otherwise end a CSV row for readers
    written.append(
        atomic_write_text(
            out / "verified.csv", report.verified.to_csv(index=False, quoting=csv.QUOTE_NONNUMERIC)
        )
    )
    written.append(
        atomic_write_text(
            out / "indicator_histogram.csv", indicator_histogram(report.table).to_csv(index=False)
        )
    )
    written.append(atomic_write_text(out / "report.md", markdown_report(report)))
    if all_tokens:
        path = out / "tokens.csv.gz"
        report.table.to_csv(path, index=False, compression="gzip", quoting=csv.QUOTE_NONNUMERIC)
        written.append(path)
    return written


def report_name(spec) -> str:
    """The folder name of a model's committed report under ``data/results/tokens/``: the built-in
    name, or the checkpoint folder / GGUF file name."""
    text = str(spec).rstrip("/\\")
    p = Path(text)
    return p.stem if p.suffix == ".gguf" else p.name


def load_report(out_dir: str | os.PathLike) -> dict:
    """``{"summary", "verified", "histogram", "run"}`` from a report folder; FileNotFoundError naming
    the missing file and the command that writes it, or a run record that does not say success."""
    import json

    import pandas as pd

    out = Path(out_dir)
    for name in (*REPORT_FILES, "run.json"):
        if not (out / name).is_file():
            raise FileNotFoundError(
                f"{out / name} is missing: {out} holds no complete tokens report; write one with "
                f"`qwen-anatomy tokens MODEL --out {out}`"
            )
    run_record = json.loads((out / "run.json").read_text())
    if run_record.get("status") != "success":
        raise FileNotFoundError(
            f"{out / 'run.json'} says status {run_record.get('status')!r}: the run did not finish; run "
            f"`qwen-anatomy tokens MODEL --out <new dir>` again"
        )
    return {
        "summary": json.loads((out / "summary.json").read_text()),
        "verified": pd.read_csv(out / "verified.csv", keep_default_na=False, na_values=[""]),
        "histogram": pd.read_csv(out / "indicator_histogram.csv"),
        "run": run_record,
    }


def report_matches(report: dict, table, atol: float = 1e-6) -> tuple[bool, str]:
    """Whether a saved report belongs to the checkpoint of a live :func:`token_table`: same rows, same
    indicator rule, and the saved indicator of every verified token equal to the live one. Returns
    (match, reason)."""
    s = report["summary"]
    if int(s["rows"]) != len(table):
        return False, f"the report has {s['rows']} rows, the live checkpoint {len(table)}"
    v = report["verified"]
    live = table.set_index("id").loc[v["id"], "indicator"].to_numpy()
    diff = float(np.max(np.abs(live - v["indicator"].to_numpy()))) if len(v) else 0.0
    if not diff <= atol:
        return (
            False,
            f"the saved indicators differ from the live ones by up to {diff:.2e} (another checkpoint)",
        )
    return True, f"the {len(v)} saved indicators equal the live ones (max difference {diff:.1e})"


def committed_report(root: str | os.PathLike, spec, table) -> tuple[dict | None, str]:
    """The saved report for ``spec`` under ``root`` (``root/<report_name(spec)>``), checked against the
    live ``table`` of the same checkpoint. Returns (None, why) when there is none; raises ValueError
    when one is there but belongs to another checkpoint (a stale or misplaced report must not be shown
    as this model's)."""
    folder = Path(root) / report_name(spec)
    if not (folder / "summary.json").is_file():
        return None, (
            f"No saved verification for `{spec}` in {folder}: write one with "
            f"`qwen-anatomy tokens {spec} --out {folder}` (10-13 minutes for Qwen2.5-Coder-0.5B on two cores)."
        )
    report = load_report(folder)
    ok, why = report_matches(report, table)
    if not ok:
        raise ValueError(
            f"{folder} does not belong to `{spec}`: {why}; regenerate it with `qwen-anatomy tokens {spec} "
            f"--out <new dir>` and replace the folder"
        )
    return report, f"Verification read from {folder} ({why})."


# -- tables the chapter shows ---------------------------------------------------------------------------
def category_examples(table, n: int = 6, seed: int = 0):
    """Per category: count and ``n`` decoded examples (a seeded sample, shown with :func:`shown`)."""
    import pandas as pd

    rows = []
    for cat in CATEGORIES:
        part = table[table["category"] == cat]
        if part.empty:
            continue
        pick = part.sample(min(n, len(part)), random_state=seed).sort_values("id")
        shown_tokens = [
            shown(t) if t is not None else f"(id {i}, no entry)"
            for t, i in zip(pick["decoded"], pick["id"], strict=True)
        ]
        rows.append({"category": cat, "tokens": len(part), "examples": " · ".join(shown_tokens)})
    return pd.DataFrame(rows)


def kind_table(verified, table):
    """Kinds of the verified under-trained candidates against the kinds of all reachable tokens:
    count, share, and how over-represented each kind is (share / share among reachable)."""
    import pandas as pd

    ids = verified.loc[verified["candidate"] & verified["under_trained"], "id"]
    ut_kinds = table.set_index("id").loc[ids, "kind"].value_counts()  # the live kinds, one definition
    all_kinds = table.loc[table["category"] == "reachable", "kind"].value_counts(normalize=True)
    total = max(int(ut_kinds.sum()), 1)
    df = pd.DataFrame({"under-trained": ut_kinds, "share": ut_kinds / total})
    df["share among reachable"] = all_kinds.reindex(df.index).fillna(0.0)
    df["over-representation"] = df["share"] / df["share among reachable"].where(
        df["share among reachable"] > 0
    )
    return df.rename_axis("kind").reset_index()


def rate_by_rank(verified, bins: int = 5):
    """Share of candidates verified under-trained in ``bins`` equal slices of their indicator rank:
    how precision falls as the list goes on."""
    import pandas as pd

    c = verified[verified["candidate"]].sort_values("rank")
    if c.empty:
        return pd.DataFrame(columns=["ranks", "candidates", "under-trained", "rate"])
    slices = np.array_split(np.arange(len(c)), min(bins, len(c)))
    rows = []
    for s in slices:
        part = c.iloc[s]
        rows.append(
            {
                "ranks": f"{int(part['rank'].min())}-{int(part['rank'].max())}",
                "candidates": len(part),
                "under-trained": int(part["under_trained"].sum()),
                "rate": float(part["under_trained"].mean()),
            }
        )
    return pd.DataFrame(rows)


INDICATOR_LABELS = {
    "indicator": "output matrix, first PC removed (used)",
    "indicator_no_pc": "output matrix, first PC kept",
    "indicator_embedding": "embedding matrix, first PC removed",
    "embedding_norm": "embedding L2 norm",
}


def indicator_auc(verified):
    """For each indicator in ``verified``: the probability that a verified under-trained token has a
    lower value than a token that was repeated (ROC AUC, 0.5 = no better than chance), over every
    verified token (candidates and control)."""
    import pandas as pd
    from scipy.stats import mannwhitneyu

    y = verified["under_trained"].to_numpy(bool)
    rows = []
    for col, name in INDICATOR_LABELS.items():
        if col not in verified or y.all() or not y.any():
            continue
        x = verified[col].to_numpy(float)
        u = mannwhitneyu(x[~y], x[y]).statistic  # pairs where the repeated token's value is higher
        rows.append({"indicator": name, "column": col, "auc": float(u / (y.sum() * (~y).sum()))})
    return pd.DataFrame(rows)


def alternatives_table(table, summary: dict, n: int):
    """Each indicator against the one used, over reachable tokens: Spearman correlation and the share
    of the ``n`` lowest (the candidate list) it would also pick. Columns: indicator, column, spearman,
    top_overlap."""
    import pandas as pd

    rows = [
        {
            "indicator": INDICATOR_LABELS["indicator"],
            "column": "indicator",
            "spearman": 1.0,
            "top_overlap": 1.0,
        }
    ]
    for col, comp in summary.get("alternatives", {}).items():
        rows.append(
            {
                "indicator": INDICATOR_LABELS[col],
                "column": col,
                "spearman": comp["spearman_reachable"],
                "top_overlap": top_overlap(table, col, n),
            }
        )
    return pd.DataFrame(rows)


def alternatives_sentence(comp) -> str:
    """What the embedding norm (the paper's alternative, and its code's current default for untied
    models) and the embedding copy say, against the indicator used."""
    c = comp.set_index("column")
    out = []
    if "embedding_norm" in c.index:
        r = c.loc["embedding_norm"]
        agree = "agrees with" if r["spearman"] > 0.8 else "ranks the whole vocabulary differently from"
        out.append(
            f"The embedding norm {agree} the indicator used (Spearman {r['spearman']:.2f}) and would pick "
            f"{r['top_overlap']:.0%} of the same candidates."
        )
    if "indicator_embedding" in c.index:
        r = c.loc["indicator_embedding"]
        out.append(
            f"The same indicator on the embedding copy correlates at {r['spearman']:.3f} and shares "
            f"{r['top_overlap']:.0%} of the candidates: the choice of matrix hardly matters here."
            if r["top_overlap"] > 0.95
            else f"The same indicator on the embedding copy correlates at {r['spearman']:.3f} and shares "
            f"only {r['top_overlap']:.0%} of the candidates: the choice of matrix matters."
        )
    return " ".join(out)


def kind_sentence(kinds, min_share: float = 0.02) -> str:
    """The commonest kinds among verified under-trained tokens, the most over-represented kind among
    those making at least ``min_share`` of them, and what the vocabulary's largest kind amounts to."""
    if kinds.empty:
        return "No candidate was verified under-trained."
    top = kinds.sort_values("under-trained", ascending=False).head(3)
    parts = [f"{r['kind']} ({r['share']:.0%})" for _, r in top.iterrows()]
    s = "Most verified under-trained tokens are " + ", ".join(parts) + "."
    common = kinds[kinds["share"] >= min_share].dropna(subset=["over-representation"])
    if not common.empty:
        r = common.loc[common["over-representation"].idxmax()]
        s += (
            f" Against the make-up of the reachable vocabulary, {r['kind']} is the most over-represented "
            f"of these: {r['share']:.0%} of the under-trained tokens against {r['share among reachable']:.1%} "
            f"of the vocabulary ({r['over-representation']:.1f}x)."
        )
    big = kinds.loc[kinds["share among reachable"].idxmax()]
    s += (
        f" {big['kind']}, {big['share among reachable']:.0%} of the reachable vocabulary, makes "
        f"{big['share']:.0%} of them."
    )
    return s


def extent_sentence(summary: dict, rates) -> str:
    """How many under-trained tokens there are: the control's rate scaled to the reachable vocabulary
    (with its interval), against what the candidate list found, and whether the list's tail is done."""
    nk, vk = summary["control"], summary["control_under_trained"]
    if not nk:
        return ""
    n = summary["categories"]["reachable"]
    lo, hi = summary["control_rate_interval"]
    s = (
        f"Scaled to all {n:,} reachable tokens, the control's rate puts the number of under-trained tokens "
        f"at about {round(vk / nk * n, -2):,.0f} (95 % interval {round(lo * n, -2):,.0f}–"
        f"{round(hi * n, -2):,.0f}); the candidate list "
        f"verified {summary['candidates_under_trained']:,}."
    )
    if "control_under_trained_in_list" in summary and vk:
        s += (
            f" {summary['control_under_trained_in_list']} of the {vk} under-trained control tokens lie inside "
            "the candidate list."
        )
    if len(rates):
        last = rates.iloc[-1]
        s += (
            f" The list's last slice is still {last['rate']:.0%} under-trained: the tail goes on past the "
            "cut-off."
            if last["rate"] >= 0.5
            else f" The list's last slice is down to {last['rate']:.0%}: the cut-off reaches the end of the tail."
        )
    return s


def rank_sentence(rates) -> str:
    """How the verified rate changes from the first to the last slice of the candidate list."""
    if len(rates) < 2:
        return ""
    first, last = rates.iloc[0], rates.iloc[-1]
    trend = "falls" if last["rate"] < first["rate"] else "does not fall"
    return (
        f"The verified rate {trend} along the list: {first['rate']:.0%} for ranks {first['ranks']}, "
        f"{last['rate']:.0%} for ranks {last['ranks']}."
    )


def auc_sentence(aucs) -> str:
    """Which indicator separates verified under-trained tokens from repeated ones best."""
    if aucs.empty:
        return "No indicator comparison: the verified tokens are all of one verdict."
    best = aucs.loc[aucs["auc"].idxmax()]
    used = aucs.loc[aucs["column"] == "indicator", "auc"]
    s = f"Best separation: {best['indicator']} (AUC {best['auc']:.3f})."
    if len(used) and best["column"] != "indicator":
        s += f" The indicator used scores {float(used.iloc[0]):.3f}."
    s += (
        " AUCs are over the verified tokens, chosen by the indicator used, so they flatter it; the random "
        "control is the unbiased part."
    )
    return s


# -- sentences (the chapter and report.md) ---------------------------------------------------------------
def _pct(x) -> str:
    return f"{100 * x:.1f} %"


def category_sentence(summary: dict) -> str:
    c = summary["categories"]
    total = sum(c.values())
    return (
        f"Of {total:,} rows, {c['reachable']:,} tokens round-trip through the tokenizer (reachable), "
        f"{c['unreachable']:,} do not, {c['partial_utf8']:,} are partial UTF-8 byte sequences, "
        f"{c['special']:,} are special (added) tokens and {c['unused']:,} rows are known unused "
        f"({summary['unused_source']})."
    )


def indicator_sentence(summary: dict) -> str:
    s = f"Indicator: {summary['indicator']}, on `{summary['indicator_matrix']}` ({summary['indicator_matrix_dtype']})."
    if "first_pc_variance_share" in summary:
        s += (
            f" The first principal component carries {_pct(summary['first_pc_variance_share'])} of the "
            f"variance; the mean unused row has |cosine| {summary['unused_mean_cosine_to_first_pc']:.2f} with it."
        )
    if "indicator_unused_max" in summary:
        s += (
            f" The unused rows sit at distance ≤ {summary['indicator_unused_max']:.2g}; "
            f"{summary['reachable_below_unused_max']:,} reachable tokens are as close."
        )
    return s


_CATEGORY_WORDS = {"unreachable": "unreachable tokens", "partial_utf8": "partial UTF-8 tokens",
                   "special": "special tokens"}  # fmt: skip


def category_indicator_sentence(table, cutoff: float) -> str:
    """How many tokens of each non-reachable category lie at or below ``cutoff`` (the candidate
    cut-off), against the reachable share: where the tokens prompting cannot test sit."""
    parts = []
    unreachable_share = None
    for cat, words in _CATEGORY_WORDS.items():
        part = table[table["category"] == cat]
        if len(part):
            k = int((part["indicator"] <= cutoff).sum())
            parts.append(f"{k:,} of the {len(part):,} {words} ({k / len(part):.0%})")
            if cat == "unreachable":
                unreachable_share = k / len(part)
    reach = table[table["category"] == "reachable"]
    share = float((reach["indicator"] <= cutoff).mean()) if len(reach) else 0.0
    if not parts:
        return ""
    s = (
        f"At or below the cut-off ({cutoff:.3g}) lie {', '.join(parts)}, against {share:.1%} of the "
        "reachable tokens."
    )
    if unreachable_share is not None and unreachable_share > 0.5:
        s += " Most tokens that text never produces sit with the never-trained rows: nothing trained them either."
    return s


def verification_sentence(summary: dict) -> str:
    nc, vc, nk, vk = (
        summary[k] for k in ("candidates", "candidates_under_trained", "control", "control_under_trained")
    )
    lo, hi = summary["candidate_rate_interval"]
    klo, khi = summary["control_rate_interval"]
    s = (
        f"{vc:,} of {nc:,} candidates ({summary['candidates_rule']}) are verified under-trained "
        f"(max probability < {summary['threshold']:.0%}): {_pct(vc / nc) if nc else 'n/a'} "
        f"(95 % interval {_pct(lo)}–{_pct(hi)})."
    )
    if nk:
        s += (
            f" In the control, {vk} of {nk} random reachable tokens are ({_pct(vk / nk)}, "
            f"{_pct(klo)}–{_pct(khi)}); their median max probability is {summary['control_median_max_prob']:.2f}."
        )
    if nc and nk:
        s += (
            " The indicator beats the base rate: the intervals do not overlap."
            if lo > khi
            else " The indicator does not clearly beat the base rate: the intervals overlap."
        )
    return s


def summary_sentences(summary: dict) -> list[str]:
    out = [category_sentence(summary), indicator_sentence(summary)]
    if "candidates" in summary:
        out.append(verification_sentence(summary))
    return out


# -- figures ------------------------------------------------------------------------------------------
def plot_indicator(
    table=None,
    histogram=None,
    candidate_cutoff: float | None = None,
    xlabel: str = "indicator: cosine distance to the mean unused row",
):
    """Histogram (log counts) of the indicator per category, from a live table or a saved histogram;
    a dashed line at the candidates' cut-off."""
    from ..plotting import figure, label

    h = histogram if histogram is not None else indicator_histogram(table)
    fig, ax = figure(width=7.0, height=3.6)
    for cat in CATEGORIES:
        part = h[h["category"] == cat]
        if part.empty or part["count"].sum() == 0:
            continue
        centres = (part["left"] + part["right"]) / 2
        ax.step(
            centres, part["count"].clip(lower=0.8), where="mid", label=f"{cat} ({int(part['count'].sum()):,})"
        )
    if candidate_cutoff is not None:
        ax.axvline(candidate_cutoff, color="k", ls="--", lw=1, label="candidate cut-off")
    ax.set_yscale("log")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    label(
        ax,
        xlabel,
        "tokens (log scale)",
        "The indicator by category",
    )
    return fig


def plot_verification(verified, threshold: float = PAPER_THRESHOLD):
    """Max probability (log) against indicator for every verified token: candidates and control."""
    from ..plotting import figure, label

    fig, ax = figure(width=7.0, height=3.8)
    floor = 1e-12
    for name, mask, style in (
        ("candidates", verified["candidate"], dict(marker="o", color="C0", alpha=0.4, s=8)),
        ("control: random reachable", verified["control"], dict(marker="x", color="C2", s=16, zorder=3)),
    ):  # the control on top: a control token may also be a candidate
        part = verified[mask]
        ax.scatter(
            part["indicator"], part["max_prob"].clip(lower=floor), label=f"{name} ({len(part)})", **style
        )
    ax.axhline(threshold, color="C3", ls="--", lw=1, label=f"threshold {threshold:.0%}")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    label(ax, "indicator: cosine distance to the mean unused row", "max probability of repeating the token",
          "Verification")  # fmt: skip
    return fig
