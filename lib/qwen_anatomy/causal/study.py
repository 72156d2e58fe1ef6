"""The CausalQwen study: both arms, several seeds, one feature cache, against the trivial references
(chapter 50_causal_heads, issue 14).

The question: on texts whose numbers can be predicted from the context (:mod:`.templates`), do
CausalQwen and the honest baseline (softmax LM head + Normal regression head) predict the numbers
better than the trivial references (the training mean, copy-the-last-number), is CausalQwen's
uncertainty calibrated against the known truth of the noisy templates (the oracle), and do they tell
where a number comes (``<NUM>`` F1)?

One study = one backbone, one set of training texts (``data_seed``), one budget (steps x batch,
learning rates) and several seeds. Each seed seeds the heads' initialisation and the batch order; both
arms see the same batches (the same cache rows in the same order) for the same number of steps.

* The frozen bottom of the backbone runs once (:func:`qwen_anatomy.causal.cache.build_cache`) over the
  training texts and every evaluation set. The cache is saved under ``cache_dir`` (default
  ``scratch/causal-cache``, not committed), keyed by the backbone, the texts, the length, the layer it
  stops at and the numeric direction, and reused by every arm, seed and later call. The numeric fusion
  is frozen (the cache depends on it), so every run uses the cache's phi direction (drawn with
  ``fusion_seed``); the heads are seeded by the run's seed.
* ``train_layers`` > 0 also fine-tunes that many top layers on the cache (restored before the next
  run, so runs do not leak into each other).
* One folder per run, ``OUT/<arm>/seed<s>/``: ``run_record.json`` (its ``parameters.config`` is the
  run's configuration), ``log.json`` (the training health log) and ``evaluation.json`` (metrics per
  evaluation set and one row per number target: truth, role, references, the model's location,
  scale and decision). A finished run of the same configuration is reused; a finished run of another
  configuration is refused (choose another ``--out``); a failed or interrupted one is moved aside.

* ``vocab``: "full" (default, the spec's design) judges every token id of the backbone; "template"
  restricts the output classes of **both** arms to the token ids that occur in the study's training
  texts and evaluation sets after the number tokenizer (``<NUM>`` included; :func:`class_set`), so a
  step costs a fraction of the full one-vs-rest head over 151,936 ids. The heads keep those rows of
  the full initialisation (their step-0 scores are the full model's columns at those ids), and every
  metric (token accuracy, ``<NUM>`` F1, sum of P_k, ECE, the value metrics) is taken over those classes.
  Each run's ``evaluation.json`` records the class set (``classes``: vocab, count, ids).

:func:`estimate` times a few cached steps of each arm and projects a study's cost.
"""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import json
import math
import os
import time
from pathlib import Path
from typing import Any

from ..errors import UserInputError
from ..paths import REPO_ROOT
from .experiments import RESULTS_ROOT
from .templates import EVAL_SETS

STUDY_ROOT = RESULTS_ROOT / "study"
CACHE_ROOT = REPO_ROOT / "scratch" / "causal-cache"
ARMS = ("CausalQwen", "baseline")
ARM_KINDS = {"CausalQwen": "causal", "baseline": "baseline"}
VOCABS = ("full", "template")

DEFAULTS: dict[str, Any] = {
    "model": "causal-tiny-lm",
    "seeds": [0, 1, 2],
    "steps": 300,
    "batch_size": 16,
    "lr": 1e-2,
    "lr_pretrained": None,  # the copied head matrices' rate (None: lr); see causal.train.train
    "clip": "per_parameter",
    "n_train": 2000,
    "n_eval": 64,
    "data_seed": 0,  # the training texts
    "eval_seed": 1234,  # the evaluation sets
    "fusion_seed": 0,  # the frozen numeric direction phi, shared by every run (the cache depends on it)
    "max_length": 64,
    "train_layers": 0,  # top backbone layers fine-tuned on the cache (0: heads only)
    "log_every": 10,
    "eval_batch": 16,
    "eval_sets": list(EVAL_SETS),
    "arms": list(ARMS),
    "vocab": "full",  # output classes of both arms: every token id, or the ids of the study's texts
    "causal": {},  # CausalConfig settings of the CausalQwen arm (the baseline reads gamma0, lam, reg_gain)
}
# Settings that say where and how, not what: never part of a run's configuration.
OPERATIONAL = ("seeds", "arms", "cache_dir")


def _positive_int(cfg: dict, key: str, minimum: int = 1) -> None:
    v = cfg[key]
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise UserInputError(f"{key}={v!r} must be an integer >= {minimum}")


def check_config(config: dict) -> dict:
    """Merge with :data:`DEFAULTS` and validate every value (before any model is loaded)."""
    from .model import CausalConfig

    unknown = set(config) - set(DEFAULTS) - {"cache_dir"}
    if unknown:
        raise UserInputError(f"unknown study setting(s) {sorted(unknown)}; known: {sorted(DEFAULTS)}")
    cfg = {**copy.deepcopy(DEFAULTS), **copy.deepcopy(config)}
    if not isinstance(cfg["model"], str) or not cfg["model"]:
        raise UserInputError(f"model={cfg['model']!r}: name a backbone")
    for key in ("steps", "batch_size", "n_train", "n_eval", "max_length", "log_every", "eval_batch"):
        _positive_int(cfg, key)
    _positive_int(cfg, "train_layers", 0)
    for key in ("data_seed", "eval_seed", "fusion_seed"):
        _positive_int(cfg, key, 0)
    seeds = cfg["seeds"]
    if (
        not isinstance(seeds, list | tuple)
        or not seeds
        or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds)
    ):
        raise UserInputError(f"seeds={seeds!r} must be a non-empty list of integers >= 0")
    if len(set(seeds)) != len(seeds):
        raise UserInputError(f"seeds={list(seeds)} repeats a seed; give each seed once")
    cfg["seeds"] = list(seeds)
    for key in ("lr", "lr_pretrained"):
        v = cfg[key]
        if key == "lr_pretrained" and v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v <= 0:
            raise UserInputError(f"{key}={v!r} must be a finite number > 0")
    if cfg["vocab"] not in VOCABS:
        raise UserInputError(
            f"vocab={cfg['vocab']!r}: use 'full' (every token id is a class) or 'template' (the ids of "
            "the study's texts)"
        )
    if cfg["clip"] not in ("per_parameter", "global"):
        raise UserInputError(f"clip={cfg['clip']!r}: use 'per_parameter' or 'global'")
    sets = cfg["eval_sets"]
    if not isinstance(sets, list | tuple) or not sets or any(s not in EVAL_SETS for s in sets):
        raise UserInputError(f"eval_sets={sets!r}: use some of {', '.join(EVAL_SETS)}")
    cfg["eval_sets"] = list(dict.fromkeys(sets))
    arms = cfg["arms"]
    if not isinstance(arms, list | tuple) or not arms or any(a not in ARMS for a in arms):
        raise UserInputError(f"arms={arms!r}: use some of {', '.join(ARMS)}")
    cfg["arms"] = [a for a in ARMS if a in arms]
    causal = cfg["causal"]
    if not isinstance(causal, dict):
        raise UserInputError(f"causal={causal!r} must be a mapping of CausalConfig settings")
    bad = {"seed", "freeze_backbone"} & set(causal)
    if bad:
        raise UserInputError(
            f"causal sets {sorted(bad)}: the study seeds each run itself (--seeds) and trains the backbone "
            "only through train_layers; drop them"
        )
    try:
        CausalConfig(**causal).validate()
    except TypeError:
        known = sorted(set(CausalConfig.__dataclass_fields__) - {"seed", "freeze_backbone"})
        raise UserInputError(f"causal={causal!r}: the known CausalConfig settings are {known}") from None
    return cfg


def causal_config(cfg: dict, arm: str, seed: int):
    """The CausalConfig of one run: the study's ``causal`` settings for CausalQwen; for the baseline
    only the settings it reads (:func:`qwen_anatomy.causal.model.baseline_conflicts` drops the rest)."""
    from .model import CausalConfig, baseline_conflicts

    settings = dict(cfg["causal"])
    if arm == "baseline":
        drop = set(baseline_conflicts(settings)) | {"alpha", "classifier", "distribution"}
        settings = {k: v for k, v in settings.items() if k not in drop}
    return CausalConfig(**settings, seed=seed)


def run_config(cfg: dict, arm: str, seed: int) -> dict:
    """What a run folder's record stores and a later call is compared with: the study's settings
    (without the operational ones), the arm, the seed and the model settings it uses."""
    out = {k: v for k, v in cfg.items() if k not in OPERATIONAL}
    out.update(arm=arm, seed=seed, model_config=causal_config(cfg, arm, seed).to_dict())
    return json.loads(json.dumps(out))


def run_folder(out: Path, arm: str, seed: int) -> Path:
    return Path(out) / arm / f"seed{seed}"


def _differences(recorded: Any, wanted: dict) -> list[str]:
    from ..tasks.experiment import config_differences

    return config_differences(recorded, wanted)


def plan(cfg: dict, out: str | Path) -> list[dict]:
    """One entry per (arm, seed): ``arm``, ``seed``, ``folder``, ``config``, ``reuse`` (a finished run of
    exactly this configuration is there), ``status``. Raises UserInputError, before anything is loaded
    or written, for an output that cannot be written, a run in progress, or a finished run of another
    configuration."""
    from ..iochecks import check_output_root, read_json, read_run_record, record_status

    out = check_output_root(Path(out), "--out")
    entries = []
    for arm in cfg["arms"]:
        for seed in cfg["seeds"]:
            folder = run_folder(out, arm, seed)
            wanted = run_config(cfg, arm, seed)
            if os.path.lexists(folder) and not folder.is_dir():
                raise UserInputError(f"{folder} is a file where the run folder of {arm} seed {seed} goes")
            status = None
            record_path = folder / "run_record.json"
            if record_path.is_file():
                record = read_run_record(record_path)
                status = record_status(record)
                if status == "running":
                    raise UserInputError(
                        f"{folder} holds a run still in progress (pid {record.get('pid')}); wait for it or "
                        "choose another --out"
                    )
                if status == "success":
                    diff = _differences((record.get("parameters") or {}).get("config"), wanted)
                    if diff:
                        raise UserInputError(
                            f"{folder} holds a finished run of another configuration ({'; '.join(diff[:3])}"
                            f"{'; ...' if len(diff) > 3 else ''}); choose another --out or move it away"
                        )
                    if not (folder / "evaluation.json").is_file():
                        raise UserInputError(
                            f"{folder} says success but has no evaluation.json; move the folder away"
                        )
                    read_json(folder / "evaluation.json", "evaluation")
            elif folder.is_dir() and any(folder.iterdir()):
                status = "partial"
            entries.append(
                {
                    "arm": arm,
                    "seed": seed,
                    "folder": folder,
                    "config": wanted,
                    "reuse": status == "success",
                    "status": status,
                }
            )
    return entries


def check_model(name: str) -> Path:
    """The backbone's checkpoint directory; UserInputError unless it has a tokenizer."""
    from ..loading import resolve_model

    path = resolve_model(name)
    if not (path / "tokenizer.json").is_file():
        raise UserInputError(f"model {name!r} has no tokenizer.json; CausalQwen needs its tokenizer")
    return path


# -- data and the feature cache ---------------------------------------------------------------------
def datasets(cfg: dict):
    """(training examples, {evaluation set: examples}) of a study (deterministic in its seeds)."""
    from .templates import evaluation_sets, make_examples

    train = make_examples("train", cfg["n_train"], cfg["data_seed"])
    evals = evaluation_sets(cfg["n_eval"], cfg["eval_seed"])
    return train, {k: evals[k] for k in cfg["eval_sets"]}


def class_set(numtok, texts: dict[str, list[str]], max_length: int) -> list[int]:
    """The sorted token ids that occur in ``texts`` ({split: [text]}) after the number tokenizer, cut
    at ``max_length`` tokens like the cache, with ``<NUM>`` always among them: the output classes of a
    ``vocab="template"`` study."""
    ids = {int(numtok.num_token_id)}
    for split in texts.values():
        for text in split:
            ids.update(numtok.encode(text).input_ids[:max_length])
    return sorted(ids)


def classes_record(cfg: dict, model, classes: list[int] | None) -> dict:
    """What a run saves about its output classes: ``vocab``, ``count``, ``of`` (the backbone's token
    ids) and, when restricted, the ``ids``."""
    record = {"vocab": cfg["vocab"], "count": model.n_classes, "of": model.vocab_size}
    if classes is not None:
        record["ids"] = list(classes)
    return record


def _sha(texts: list[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode() + b"\0")
    return h.hexdigest()


def cache_key(cfg: dict, model_path: Path, start_layer: int, texts: dict[str, list[str]]) -> str:
    """The name of a study's feature cache: a hash of the backbone (its config and weight file sizes),
    the texts of every split, the length, the layer the cache stops at and the fusion seed."""
    h = hashlib.sha256()
    h.update((Path(model_path) / "config.json").read_bytes())
    for f in sorted(Path(model_path).glob("*.safetensors")):
        h.update(f"{f.name}:{f.stat().st_size}".encode())
    h.update(json.dumps([cfg["max_length"], start_layer, cfg["fusion_seed"]]).encode())
    for name in sorted(texts):
        h.update(name.encode() + _sha(texts[name]).encode())
    return f"{Path(str(cfg['model'])).name}-{h.hexdigest()[:16]}"


def load_or_build_cache(model, numtok, cfg, model_path, texts, cache_dir, progress=True, log=print):
    """{split: FeatureCache} for every split of ``texts`` ({"train": [...], set: [...]}), read from
    ``cache_dir/<key>.pt`` or built (and saved atomically) there. Sets the model's numeric fusion to
    the cache's (the cached features were computed with it)."""
    import torch

    from .cache import FeatureCache, build_cache, freeze_fusion

    n_layers = len(model.backbone.model.layers)
    start = n_layers - cfg["train_layers"]
    key = cache_key(cfg, model_path, start, texts)
    path = Path(cache_dir) / f"{key}.pt"
    if path.is_file():
        log(f"feature cache: reusing {path}")
        saved = torch.load(path, weights_only=True)
        caches = {name: FeatureCache(**fields) for name, fields in saved["caches"].items()}
        set_fusion(model, saved["num_direction"])
        freeze_fusion(model)
        return caches, key
    t0 = time.perf_counter()
    caches = {}
    for name, split in texts.items():
        caches[name] = build_cache(
            model, numtok, split, cfg["max_length"], start, cfg["eval_batch"], progress=progress
        )
    seconds = time.perf_counter() - t0
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(
        {
            "caches": {
                name: {
                    "hidden": c.hidden,
                    "input_ids": c.input_ids,
                    "attention_mask": c.attention_mask,
                    "numerical_values": c.numerical_values,
                    "start_layer": c.start_layer,
                    "n_layers": c.n_layers,
                }
                for name, c in caches.items()
            },
            "num_direction": model.num_direction.detach().cpu(),
            "seconds": seconds,
        },
        tmp,
    )
    os.replace(tmp, path)
    log(f"feature cache: built {path} in {seconds:.1f} s")
    return caches, key


def set_fusion(model, direction) -> None:
    """Give ``model`` the numeric direction phi of a cache (the cached features were computed with it)."""
    import torch

    with torch.no_grad():
        model.num_direction.copy_(direction.to(model.num_direction.device))


# -- evaluation on the cache ------------------------------------------------------------------------
def number_rows(examples, cache, train_mean: float, num_token_id: int) -> list[dict]:
    """One row per number target of an evaluation cache, in position order: the text index, the
    position predicting it, the number's index in its text, and the truth with its references
    (:func:`qwen_anatomy.causal.templates.reference_predictions`). Numbers cut off by ``max_length`` and
    a text's very first token (no position predicts it) are left out. Checks that the cached value is
    the example's number."""
    from .templates import reference_predictions

    rows = []
    ids, vals, mask = cache.input_ids, cache.numerical_values, cache.attention_mask
    if len(examples) != len(cache):
        raise ValueError(f"{len(examples)} examples for a cache of {len(cache)} texts")
    num = int(num_token_id)
    for i, example in enumerate(examples):
        refs = reference_predictions(example, train_mean)
        k = -1
        for p in range(int(mask[i].sum())):
            if int(ids[i, p]) != num:
                continue
            k += 1
            if p == 0:
                continue
            truth = refs[k]
            cached = float(vals[i, p])
            if abs(cached - truth["value"]) > 1e-6 * max(1.0, abs(truth["value"])):
                raise ValueError(
                    f"text {i} number {k}: the cache holds {cached}, the example {truth['value']}"
                )
            rows.append({"text": i, "position": p - 1, "k": k, **truth})
    return rows


def evaluate_cached(model, cache, examples, train_mean: float, batch_size: int = 16) -> tuple[dict, list]:
    """(metrics, number rows) of one evaluation set from its feature cache: the metrics of
    :func:`qwen_anatomy.causal.train.position_metrics` at every valid position, and for every number
    target (:func:`number_rows`) the model's location, scale, distribution and whether it decided
    ``<NUM>`` there. The value head is read at every number target, decided or not."""
    import torch

    from .cache import cached_forward
    from .model import next_token_targets
    from .train import normalised_probabilities, position_metrics

    keys = ("labels", "pred", "compat", "confidence", "loc_y", "scale_y", "values")
    parts: dict[str, list] = {k: [] for k in keys}
    full = {k: [] for k in ("pred", "loc", "scale")}
    dist = None
    model.eval()
    num = model.num_class  # labels and decisions are class indices (token ids unless restricted)
    with torch.no_grad():
        for start in range(0, len(cache), batch_size):
            rows = torch.arange(start, min(start + batch_size, len(cache)))
            width = cache.width(rows)
            batch = cache.batch(rows, width)
            out = cached_forward(model, cache, rows, width)
            dist = out.distribution
            labels, valid, _, values = next_token_targets(
                model.class_targets(batch["input_ids"], batch["attention_mask"]),
                batch["numerical_values"],
                batch["attention_mask"],
                num,
            )
            pred = out.choice().cpu()
            conf = normalised_probabilities(out).gather(-1, pred[..., None].to(out.loc_S.device))[..., 0]
            for key, x in zip(
                keys,
                (labels, pred, out.loc_S.argmax(-1), conf, out.loc_Y, out.scale_Y, values),
                strict=True,
            ):
                parts[key].append(x.cpu()[valid.cpu()])
            full["pred"].append(pred.cpu())
            full["loc"].append(out.loc_Y.cpu())
            full["scale"].append(out.scale_Y.cpu())
    flat = {k: torch.cat(v) for k, v in parts.items()}
    metrics = position_metrics(**flat, num_token_id=num, dist=dist)
    width = cache.input_ids.shape[1]
    pred = torch.cat([_pad(x, width) for x in full["pred"]])
    loc = torch.cat([_pad(x, width) for x in full["loc"]])
    scale = torch.cat([_pad(x, width) for x in full["scale"]])
    rows = number_rows(examples, cache, train_mean, model.num_token_id)
    for r in rows:
        i, p = r["text"], r["position"]
        r.update(
            loc=float(loc[i, p]),
            scale=float(scale[i, p]),
            dist=dist,
            detected=bool(int(pred[i, p]) == num),
        )
    return metrics, rows


def _pad(x, width: int):
    import torch

    if x.shape[1] == width:
        return x
    pad = torch.zeros((x.shape[0], width - x.shape[1]), dtype=x.dtype)
    return torch.cat([x, pad], 1)


# -- one run ----------------------------------------------------------------------------------------
def build_model(arm: str, base, numtok, cfg: dict, seed: int, classes: list[int] | None = None):
    """One arm's model; ``classes`` restricts its output classes (``vocab="template"``)."""
    from .model import BaselineQwen, CausalQwen

    cls = CausalQwen if arm == "CausalQwen" else BaselineQwen
    return cls(base, numtok.num_token_id, causal_config(cfg, arm, seed), classes)


def train_run(
    entry, cfg, base, numtok, caches, direction, examples, train_mean, log=print, classes=None
) -> dict:
    """Train and evaluate one (arm, seed) on the caches; writes the run folder. Returns the evaluation.
    ``classes``: the output classes of a ``vocab="template"`` study (None: every token id)."""
    import torch

    from ..runrecord import RunRecord, atomic_write_json
    from .cache import freeze_fusion, unfreeze_top
    from .train import train_on_cache

    folder = entry["folder"]
    arm, seed = entry["arm"], entry["seed"]
    if folder.exists():
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        folder.rename(folder.with_name(f"{folder.name}.{entry['status'] or 'partial'}-{stamp}"))
    folder.mkdir(parents=True)
    command = f"qwen-anatomy causal study ({arm}, seed {seed}; every setting in parameters.config)"
    n_layers = len(base.model.layers)
    start = n_layers - cfg["train_layers"]
    top = {k: p.detach().clone() for k, p in base.named_parameters() if _in_top(k, start, n_layers)}
    try:
        with RunRecord(folder / "run_record.json", command, {"config": entry["config"]}, seed=seed) as rec:
            torch.manual_seed(seed)
            model = build_model(arm, base, numtok, cfg, seed, classes)
            set_fusion(model, direction)
            freeze_fusion(model)
            if cfg["train_layers"]:
                unfreeze_top(model, start)
            with rec.stage("train"):
                t0 = time.perf_counter()
                train_log = train_on_cache(
                    model,
                    caches["train"],
                    cfg["steps"],
                    cfg["batch_size"],
                    cfg["lr"],
                    seed,
                    cfg["log_every"],
                    lr_pretrained=cfg["lr_pretrained"],
                    clip=cfg["clip"],
                )
                train_seconds = time.perf_counter() - t0
            with rec.stage("evaluate"):
                t0 = time.perf_counter()
                sets, numbers = {}, []
                for name in cfg["eval_sets"]:
                    metrics, rows = evaluate_cached(
                        model, caches[name], examples[name], train_mean, cfg["eval_batch"]
                    )
                    sets[name] = metrics
                    numbers += [{"set": name, **r} for r in rows]
                eval_seconds = time.perf_counter() - t0
            evaluation = {
                "arm": arm,
                "seed": seed,
                "model": cfg["model"],
                "steps": cfg["steps"],
                "batch_size": cfg["batch_size"],
                "train_mean": train_mean,
                "train_seconds": round(train_seconds, 2),
                "eval_seconds": round(eval_seconds, 2),
                "seconds_per_step": round(train_seconds / cfg["steps"], 4),
                "classes": classes_record(cfg, model, classes),
                "sets": sets,
                "numbers": _columns(numbers),
            }
            atomic_write_json(folder / "log.json", train_log)
            atomic_write_json(folder / "evaluation.json", evaluation)
            last = train_log[-1]
            log(
                f"{arm} seed {seed}: {cfg['steps']} steps in {train_seconds:.1f} s, final loss "
                f"{last['loss']:.4g}, median sum P {last['median_sum_p']:.3g}"
            )
    finally:
        if top:  # the fine-tuned top layers go back to the base model's weights for the next run
            with torch.no_grad():
                for k, p in base.named_parameters():
                    if k in top:
                        p.copy_(top[k])
                    p.requires_grad_(False)
    return evaluation


def _in_top(name: str, start: int, n_layers: int) -> bool:
    if name.startswith("model.norm.") and start < n_layers:
        return True
    parts = name.split(".")
    return name.startswith("model.layers.") and int(parts[2]) >= start


def _columns(rows: list[dict]) -> dict[str, list]:
    """Rows as columns (a compact JSON table); keys absent from a row are None there."""
    keys = list(dict.fromkeys(k for r in rows for k in r))
    return {k: [r.get(k) for r in rows] for k in keys}


def run(
    config: dict,
    out: str | Path = STUDY_ROOT,
    progress: bool = True,
    log=print,
    device="cpu",
    dtype="float32",
) -> dict:
    """Run a study (see the module docstring); returns ``{"out", "runs": [evaluation per run],
    "trained", "reused", "cache"}``. Everything is validated (:func:`plan`) before the backbone loads;
    finished runs of the same configuration are read, not retrained."""
    from ..devices import resolve
    from ..progress import progress_bar
    from .templates import training_mean

    cfg = check_config(config)
    device, dtype = resolve(device, dtype)
    if cfg["train_layers"]:
        import torch

        if dtype != torch.float32:
            raise UserInputError("train_layers > 0 trains backbone layers, which needs float32: drop --dtype")
    out = Path(out)
    entries = plan(cfg, out)
    model_path = check_model(cfg["model"])
    todo = [e for e in entries if not e["reuse"]]
    result = {"out": str(out), "trained": [], "reused": [], "cache": None, "runs": []}
    if todo:
        import torch

        from ..loading import load_config, load_model
        from .numtok import NumberTokenizer

        n_layers = load_config(model_path).num_hidden_layers
        if cfg["train_layers"] > n_layers:
            raise UserInputError(
                f"train_layers={cfg['train_layers']}: {cfg['model']} has {n_layers} layers; train at most that many"
            )
        train_examples, examples = datasets(cfg)
        train_mean = training_mean(train_examples)
        base, tok = load_model(model_path, device=device, dtype=dtype)
        numtok = NumberTokenizer(tok)
        texts = {"train": [e.text for e in train_examples]}
        texts.update({k: [e.text for e in v] for k, v in examples.items()})
        classes = class_set(numtok, texts, cfg["max_length"]) if cfg["vocab"] == "template" else None
        if classes is not None:
            log(f"output classes: the {len(classes)} token ids of the study's texts (vocab template)")
        probe = build_model(todo[0]["arm"], base, numtok, {**cfg}, cfg["fusion_seed"], classes)
        caches, key = load_or_build_cache(
            probe, numtok, cfg, model_path, texts, cfg.get("cache_dir") or CACHE_ROOT, progress, log
        )
        direction = probe.num_direction.detach().clone()
        del probe
        result["cache"] = key
        bar = progress_bar(todo, desc="study runs", unit="run", enabled=progress)
        for entry in bar:
            if hasattr(bar, "set_postfix_str"):
                bar.set_postfix_str(f"{entry['arm']} seed {entry['seed']}")
            train_run(entry, cfg, base, numtok, caches, direction, examples, train_mean, log, classes)
            result["trained"].append(f"{entry['arm']}/seed{entry['seed']}")
        del base
    for e in entries:
        if e["reuse"]:
            result["reused"].append(f"{e['arm']}/seed{e['seed']}")
        result["runs"].append(json.loads((e["folder"] / "evaluation.json").read_text()))
    return result


# -- the cost ---------------------------------------------------------------------------------------
def estimate(
    config: dict,
    steps: int = 3,
    n_texts: int | None = None,
    device="cpu",
    dtype="float32",
    log=print,
    out: str | Path | None = None,
) -> dict:
    """Time the study's own path on this machine: build a cache of ``n_texts`` training texts (default: one
    batch), train each arm ``steps`` cached steps (the first left out as warm-up) and evaluate it on the
    same cache; then project the whole study (:func:`project`). Writes nothing unless ``out`` is given:
    then ``out/estimate.json`` (``{"config", "measured"}``) beside ``out/run_record.json``, never over an
    earlier estimate (:func:`check_estimate_out`)."""
    if out is None:
        return _estimate(config, steps, n_texts, device, dtype, log)
    from ..runrecord import RunRecord, atomic_write_json

    out = check_estimate_out(out)
    cfg = check_config(config)
    out.mkdir(parents=True, exist_ok=True)
    command = (
        f"qwen-anatomy causal study --estimate --estimate-steps {steps} (every setting in parameters.config)"
    )
    with RunRecord(out / "run_record.json", command, {"config": cfg, "estimate_steps": steps}) as rec:
        with rec.stage("estimate"):
            measured = _estimate(cfg, steps, n_texts, device, dtype, log)
        atomic_write_json(out / ESTIMATE_FILE, {"config": cfg, "measured": measured})
    return measured


def _estimate(config, steps, n_texts, device, dtype, log) -> dict:
    import torch

    from ..devices import resolve
    from ..loading import load_model
    from .cache import build_cache, freeze_fusion, unfreeze_top
    from .numtok import NumberTokenizer
    from .templates import make_examples
    from .train import train_on_cache

    cfg = check_config(config)
    if not isinstance(steps, int) or steps < 2:
        raise UserInputError(f"--estimate-steps {steps!r} must be at least 2 (the first step is warm-up)")
    device, dtype = resolve(device, dtype)
    model_path = check_model(cfg["model"])
    t0 = time.perf_counter()
    base, tok = load_model(model_path, device=device, dtype=dtype)
    load_seconds = time.perf_counter() - t0
    numtok = NumberTokenizer(tok)
    examples = make_examples("train", max(n_texts or 0, cfg["batch_size"]), cfg["data_seed"])
    texts = [e.text for e in examples]
    n_layers = len(base.model.layers)
    start = n_layers - cfg["train_layers"]
    measured = {"load_seconds": round(load_seconds, 2), "steps_timed": steps - 1, "arms": {}}
    classes = None
    if cfg["vocab"] == "template":  # the whole study's class set (tokenising its texts takes seconds)
        train_examples, eval_examples = datasets(cfg)
        split_texts = {"train": [e.text for e in train_examples]}
        split_texts.update({k: [e.text for e in v] for k, v in eval_examples.items()})
        classes = class_set(numtok, split_texts, cfg["max_length"])
    for arm in cfg["arms"]:
        model = build_model(arm, base, numtok, cfg, cfg["seeds"][0], classes)
        freeze_fusion(model)
        t0 = time.perf_counter()
        cache = build_cache(model, numtok, texts, cfg["max_length"], start, cfg["eval_batch"], progress=False)
        cache_per_text = (time.perf_counter() - t0) / len(texts)
        top = {k: p.detach().clone() for k, p in base.named_parameters() if _in_top(k, start, n_layers)}
        if cfg["train_layers"]:
            unfreeze_top(model, start)
        stamps: list[float] = []  # the log's own seconds are rounded to 0.01 s: time each row here
        train_on_cache(
            model,
            cache,
            steps,
            cfg["batch_size"],
            cfg["lr"],
            0,
            log_every=1,
            on_log=lambda row, stamps=stamps: stamps.append(time.perf_counter()),
            lr_pretrained=cfg["lr_pretrained"],
        )
        per_step = (stamps[-1] - stamps[1]) / (steps - 1)  # row s is logged after forward s
        t0 = time.perf_counter()
        evaluate_cached(model, cache, examples, 50.0, cfg["eval_batch"])
        eval_per_text = (time.perf_counter() - t0) / len(texts)
        with torch.no_grad():
            for k, p in base.named_parameters():
                if k in top:
                    p.copy_(top[k])
                p.requires_grad_(False)
        measured["arms"][arm] = {
            "seconds_per_step": round(per_step, 6),
            "eval_seconds_per_text": round(eval_per_text, 6),
            "cache_seconds_per_text": round(cache_per_text, 6),
            "tokens_per_batch": int(cache.attention_mask[: cfg["batch_size"]].sum()),
            "classes": model.n_classes,
        }
        log(f"{arm}: {per_step:.2f} s per step of batch {cfg['batch_size']}")
        del model, cache
    measured["projection"] = project(cfg, measured)
    return measured


ESTIMATE_FILE = "estimate.json"
ESTIMATE_ROOT = RESULTS_ROOT / "estimates"


def check_estimate_out(out: str | Path) -> Path:
    """Refuses (one line) a folder that already holds a saved estimate: estimates are never overwritten."""
    out = Path(out)
    if (out / ESTIMATE_FILE).exists():
        raise UserInputError(
            f"--estimate-out {out}: it already holds {ESTIMATE_FILE}; choose a new folder or delete it first"
        )
    if out.exists() and not out.is_dir():
        raise UserInputError(f"--estimate-out {out}: it is a file; give a folder")
    return out


def read_estimate(path: str | Path) -> dict | None:
    """A saved estimate (``estimate.json`` in ``path``, written by ``causal study --estimate
    --estimate-out``): ``{"config", "measured"}``; None when the folder holds none or its run did not
    finish."""
    from ..iochecks import read_json, read_run_record, record_status

    folder = Path(path)
    record = folder / "run_record.json"
    if not (folder / ESTIMATE_FILE).is_file() or not record.is_file():
        return None
    if record_status(read_run_record(record)) != "success":
        return None
    return read_json(folder / ESTIMATE_FILE, "estimate")


def estimate_step_seconds(path: str | Path, arm: str = "CausalQwen") -> float | None:
    """Seconds per training step of ``arm`` in a saved estimate (None when there is none)."""
    saved = read_estimate(path)
    if saved is None or arm not in saved["measured"]["arms"]:
        return None
    return float(saved["measured"]["arms"][arm]["seconds_per_step"])


def project(cfg: dict, measured: dict) -> dict:
    """Projected seconds of a study from :func:`estimate`'s measurements: the cache (every training and
    evaluation text once), and per arm seeds x (steps x seconds per step + evaluation texts x seconds
    per text), plus loading the backbone once."""
    cfg = check_config(cfg)
    n_eval_texts = cfg["n_eval"] * len(cfg["eval_sets"])
    cache_per_text = max(m["cache_seconds_per_text"] for m in measured["arms"].values())
    cache = (cfg["n_train"] + n_eval_texts) * cache_per_text
    arms = {}
    for arm, m in measured["arms"].items():
        per_run = cfg["steps"] * m["seconds_per_step"] + n_eval_texts * m["eval_seconds_per_text"]
        arms[arm] = {"per_run_seconds": round(per_run, 1), "seconds": round(per_run * len(cfg["seeds"]), 1)}
    total = measured.get("load_seconds", 0.0) + cache + sum(a["seconds"] for a in arms.values())
    return {
        "cache_seconds": round(cache, 1),
        "arms": arms,
        "total_seconds": round(total, 1),
        "total_hours": round(total / 3600, 2),
    }


def project_sentence(cfg: dict, projection: dict, session_hours: float = 3.0) -> str:
    """The projected cost in words: hours in all, per arm, and the sessions of ``session_hours`` it needs."""
    parts = ", ".join(
        f"{arm} {a['seconds'] / 3600:.2f} h ({a['per_run_seconds'] / 60:.1f} min per seed)"
        for arm, a in projection["arms"].items()
    )
    sessions = math.ceil(projection["total_seconds"] / (session_hours * 3600))
    vocab = (
        "every token id a class" if cfg["vocab"] == "full" else "classes restricted to the texts' token ids"
    )
    return (
        f"{cfg['model']} ({vocab}), {len(cfg['seeds'])} seeds x {cfg['steps']} steps of batch {cfg['batch_size']}: "
        f"about {projection['total_hours']:.2f} h in all (cache {projection['cache_seconds'] / 60:.1f} min; "
        f"{parts}), {sessions} session(s) of {session_hours:g} h."
    )
