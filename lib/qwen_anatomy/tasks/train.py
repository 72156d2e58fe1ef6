"""Training small models on the synthetic tasks with the Hugging Face Trainer (chapter 30_synthetic_tasks).

Entry points:

* :func:`train` ``(config, out_dir, init_from=None) -> dict`` trains one model and writes a standard
  Hugging Face checkpoint directory (config.json + model.safetensors), the shared tokenizer, the
  resolved config, training curves, the final evaluation and a run record. ``init_from`` starts from
  an existing checkpoint (fine-tuning, e.g. the shipped ``relu-n10-forward``), keeping its
  architecture.
* :func:`load_config` reads a YAML file (``configs/*.yaml``) over :data:`DEFAULTS`, with
  ``--set key=value`` overrides (dotted keys, YAML values).

CPU-friendly by construction: no division of the batch by a GPU count, no experiment tracking
unless ``training.report_to`` asks for it, generation capped at n + 1 tokens, a wall-clock budget
(``training.max_train_seconds``) that stops training cleanly.
"""

from __future__ import annotations

import copy
import math
import time
from pathlib import Path
from typing import Any

from ..errors import UserInputError

DEFAULTS: dict[str, Any] = {
    "task": {
        "name": "relu",  # relu | square | index
        "n": 10,
        "order": "forward",  # forward | inverse | permutation
        "m": None,  # index only
        "modulus": 19,  # square only
        "value_min": -9,
        "value_max": 9,
        "permutation": None,  # "p0,p1,..." when order is permutation
        "data_root": None,  # default: <cache>/tasks (files are generated there when missing)
        "train_samples": 100_000,  # the first K lines of the training file
        "test_samples": 1_000,
    },
    "model": {
        "type": "qwen2",  # qwen2 (decoder-only, the book's default) | bart (the original's)
        "hidden_size": 128,
        "intermediate_size": 512,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "rope_theta": 10000.0,
        "max_position_embeddings": 256,
        # bart only
        "encoder_layers": 1,
        "decoder_layers": 1,
        "encoder_ffn_dim": 2048,
        "decoder_ffn_dim": 2048,
        "d_model": 512,
        "attention_heads": 1,
    },
    "training": {
        "seed": 0,
        "learning_rate": 1e-3,
        "weight_decay": 0.01,
        "warmup_ratio": 0.1,
        "lr_scheduler_type": "linear",
        "max_grad_norm": 1.0,
        "batch_size": 128,
        "epochs": None,  # either epochs or max_steps
        "max_steps": 2000,
        "max_train_seconds": None,  # wall-clock budget; training stops cleanly when reached
        # stop at this step without changing the schedule planned for max_steps: replays a run
        # that the wall-clock budget stopped, step for step (the budget itself depends on the machine)
        "stop_after_steps": None,
        "logging_steps": 50,
        "eval_every": 250,  # steps between exact-match checks on eval_subset test samples
        "eval_subset": 200,
        "report_to": "none",
        "threads": 1,
    },
    "evaluation": {"max_examples": None, "show": 8},
}

MODEL_TYPES = ("qwen2", "bart")
# the model section's keys that set its shape, per model type
SHAPE_KEYS = {
    "qwen2": (
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
    ),
    "bart": (
        "d_model",
        "encoder_layers",
        "decoder_layers",
        "encoder_ffn_dim",
        "decoder_ffn_dim",
        "attention_heads",
    ),
}
# transformers' schedulers that need no extra arguments
SCHEDULERS = (
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
    "inverse_sqrt",
)
ORDERS = ("forward", "inverse", "permutation")


# -- configuration ----------------------------------------------------------------------------------
def _merge(base: dict, update: dict, where: str) -> dict:
    out = copy.deepcopy(base)
    for key, value in (update or {}).items():
        if key not in out:
            raise UserInputError(f"unknown config key {where}{key!r}: known keys are {sorted(out)}")
        if isinstance(out[key], dict):
            if not isinstance(value, dict):
                raise UserInputError(f"config key {where}{key} must be a mapping, got {value!r}")
            out[key] = _merge(out[key], value, f"{where}{key}.")
        else:
            out[key] = value
    return out


def apply_overrides(config: dict, overrides: list[str] | None) -> dict:
    """``["training.seed=3", "task.order=inverse"]`` -> a new config (values parsed as YAML)."""
    import yaml

    config = copy.deepcopy(config)
    for item in overrides or []:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise UserInputError(f"--set {item!r} must look like section.key=value, e.g. training.seed=1")
        parts = key.split(".")
        node = config
        for i, part in enumerate(parts):
            if not isinstance(node, dict) or part not in node:
                known = sorted(node) if isinstance(node, dict) else []
                raise UserInputError(
                    f"--set {item!r}: unknown key {'.'.join(parts[: i + 1])!r} (known: {known})"
                )
            if i == len(parts) - 1:
                if isinstance(node[part], dict):
                    raise UserInputError(f"--set {item!r}: {key} is a section; set one of its keys")
                value = yaml.safe_load(text)
                if isinstance(value, str):  # YAML 1.1 reads 1e-3 as a string
                    try:
                        value = float(value)
                    except ValueError:
                        pass
                node[part] = value
            else:
                node = node[part]
    return config


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> dict:
    """DEFAULTS, then the YAML file, then the ``--set`` overrides; validated."""
    import yaml

    from ..iochecks import read_text

    config = copy.deepcopy(DEFAULTS)
    if path is not None:
        path = Path(path)
        text = read_text(path, "config file", "see configs/ for examples")
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise UserInputError(
                f"config file {path} is not valid YAML: {str(err).splitlines()[0]}"
            ) from None
        if loaded is None:
            raise UserInputError(
                f"config file {path} is empty: give a mapping of sections (task, model, training), "
                "e.g. configs/relu.yaml"
            )
        if not isinstance(loaded, dict):
            raise UserInputError(f"config file {path} must hold a mapping of sections")
        config = _merge(config, loaded, "")
    config = apply_overrides(config, overrides)
    validate_config(config)
    return config


def validate_config(config: dict) -> None:
    """Raise UserInputError before any heavy work when a value is out of range."""
    from .generators import parse_permutation

    task, model, training = config["task"], config["model"], config["training"]
    spec = task_spec(config)  # validates name, n, m, range, modulus
    if task["order"] not in ORDERS:
        raise UserInputError(f"task.order {task['order']!r} must be one of {', '.join(ORDERS)}")
    if task["order"] == "permutation":
        if task["permutation"] is None:
            raise UserInputError("task.order permutation needs task.permutation, e.g. '9,8,7,6,5,4,3,2,1,0'")
        parse_permutation(str(task["permutation"]), spec.n)
    for key in ("train_samples", "test_samples"):
        _positive_int(task[key], f"task.{key}")
    if model["type"] not in MODEL_TYPES:
        raise UserInputError(f"model.type {model['type']!r} must be one of {', '.join(MODEL_TYPES)}")
    for key in SHAPE_KEYS[model["type"]]:
        _positive_int(model[key], f"model.{key}")
    _positive_int(model["max_position_embeddings"], "model.max_position_embeddings")
    if model["type"] == "qwen2":
        if model["hidden_size"] % model["num_attention_heads"]:
            raise UserInputError("model.hidden_size must be a multiple of model.num_attention_heads")
        if model["num_attention_heads"] % model["num_key_value_heads"]:
            raise UserInputError("model.num_attention_heads must be a multiple of model.num_key_value_heads")
    longest = longest_sequence(model["type"], spec.n)
    if longest > model["max_position_embeddings"]:
        raise UserInputError(
            f"task.n {spec.n} gives sequences of {longest} tokens, more than model.max_position_embeddings "
            f"{model['max_position_embeddings']}: raise it (--set model.max_position_embeddings={longest}) "
            "or use a shorter n"
        )
    for key in ("batch_size", "logging_steps", "eval_every", "eval_subset", "threads"):
        _positive_int(training[key], f"training.{key}")
    if training["epochs"] is None and training["max_steps"] is None:
        raise UserInputError("set training.epochs or training.max_steps")
    if training["max_steps"] is not None:
        _positive_int(training["max_steps"], "training.max_steps")
    if training["stop_after_steps"] is not None:
        _positive_int(training["stop_after_steps"], "training.stop_after_steps")
    if training["epochs"] is not None and not (
        isinstance(training["epochs"], int | float) and training["epochs"] > 0
    ):
        raise UserInputError(f"training.epochs {training['epochs']!r} must be a positive number")
    lr = training["learning_rate"]
    if not _is_number(lr) or not 0 < lr < math.inf:
        raise UserInputError(f"training.learning_rate {lr!r} must be a positive number")
    warmup = training["warmup_ratio"]
    if not _is_number(warmup) or not 0 <= warmup < 1:
        raise UserInputError(f"training.warmup_ratio {warmup!r} must be a number in [0, 1)")
    decay = training["weight_decay"]
    if not _is_number(decay) or not 0 <= decay < math.inf:
        raise UserInputError(f"training.weight_decay {decay!r} must be a finite number >= 0")
    clip = training["max_grad_norm"]
    if not _is_number(clip) or not 0 < clip < math.inf:
        raise UserInputError(f"training.max_grad_norm {clip!r} must be a positive number")
    seed = training["seed"]
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise UserInputError(f"training.seed {seed!r} must be an integer >= 0")
    if training["lr_scheduler_type"] not in SCHEDULERS:
        raise UserInputError(
            f"training.lr_scheduler_type {training['lr_scheduler_type']!r} must be one of {', '.join(SCHEDULERS)}"
        )
    report = training["report_to"]
    if report is not None and not isinstance(report, str):
        if not (isinstance(report, list) and all(isinstance(r, str) for r in report)):
            raise UserInputError(f"training.report_to {report!r} must be 'none', a name or a list of names")
    budget = training["max_train_seconds"]
    if budget is not None and not (_is_number(budget) and budget > 0):
        raise UserInputError(f"training.max_train_seconds {budget!r} must be a positive number of seconds")
    if not _is_number(model["rope_theta"]) or not 0 < model["rope_theta"] < math.inf:
        raise UserInputError(f"model.rope_theta {model['rope_theta']!r} must be a positive number")
    ev = config["evaluation"]
    if ev["max_examples"] is not None:
        _positive_int(ev["max_examples"], "evaluation.max_examples")
    if not isinstance(ev["show"], int) or isinstance(ev["show"], bool) or ev["show"] < 0:
        raise UserInputError(f"evaluation.show {ev['show']!r} must be an integer >= 0")
    if task["data_root"] is not None and not isinstance(task["data_root"], str):
        raise UserInputError(f"task.data_root {task['data_root']!r} must be a folder path (a string)")


def longest_sequence(model_type: str, n: int) -> int:
    """Positions a model needs for length ``n``: ``<bos> x # y <eos>`` (2n + 3) for the decoder-only
    Qwen2; for BART the longer of the encoder input ``<bos> x <eos>`` and the decoder's ``<bos> y
    <eos>`` (n + 2)."""
    return n + 2 if model_type == "bart" else 2 * n + 3


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value == value


def _positive_int(value, name: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise UserInputError(f"{name} {value!r} must be a positive integer")


def task_spec(config: dict):
    from .generators import TaskSpec

    t = config["task"]
    return TaskSpec(
        task=t["name"],
        n=t["n"],
        m=t["m"] if t["name"] == "index" else None,
        modulus=t["modulus"],
        value_min=t["value_min"],
        value_max=t["value_max"],
    )


def data_root(config: dict) -> Path:
    from ..loading import cache_root

    root = config["task"]["data_root"]
    return Path(root) if root else cache_root() / "tasks"


def data_files(config: dict, generate_missing: bool = True) -> tuple[Path, Path]:
    """(train, test) files of the configured task; generated with the default seeds when missing."""
    import os
    import tempfile

    from ..iochecks import check_output_root
    from .generators import file_names, generate_task, parse_permutation

    spec = task_spec(config)
    order = config["task"]["order"]
    perm = parse_permutation(str(config["task"]["permutation"]), spec.n) if order == "permutation" else None
    root = data_root(config)
    folder = root / spec.dirname
    train_name, test_name = file_names(order, perm)
    train_file, test_file = folder / train_name, folder / test_name
    missing = [f for f in (train_file, test_file) if not f.is_file()]
    for f in missing:
        if f.is_dir():
            raise UserInputError(
                f"{f} is a directory where a task data file goes: remove it or set task.data_root"
            )
    if generate_missing and missing:
        # only the missing files are added: a file already there (perhaps the user's own) stays
        check_output_root(folder, "task.data_root")
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=folder, prefix=".generate-") as tmp:
            generate_task(spec, tmp, inverse=order == "inverse", permutation=perm, progress=False)
            for f in missing:
                os.replace(Path(tmp) / spec.dirname / f.name, f)
    return train_file, test_file


# -- models -----------------------------------------------------------------------------------------
def build_model(config: dict):
    """A freshly initialised transformers model for ``config['model']`` over the shared vocabulary."""
    from .vocab import BOS_ID, EOS_ID, PAD_ID, VOCAB_SIZE

    m = config["model"]
    if m["type"] == "bart":
        from transformers import BartConfig, BartForConditionalGeneration

        cfg = BartConfig(
            vocab_size=VOCAB_SIZE,
            d_model=m["d_model"],
            encoder_layers=m["encoder_layers"],
            decoder_layers=m["decoder_layers"],
            encoder_ffn_dim=m["encoder_ffn_dim"],
            decoder_ffn_dim=m["decoder_ffn_dim"],
            encoder_attention_heads=m["attention_heads"],
            decoder_attention_heads=m["attention_heads"],
            max_position_embeddings=m["max_position_embeddings"],
            pad_token_id=PAD_ID,
            bos_token_id=BOS_ID,
            eos_token_id=EOS_ID,
            decoder_start_token_id=BOS_ID,
            forced_eos_token_id=None,  # the original's trap: forced a wrong last token when capped
            forced_bos_token_id=None,
        )
        return BartForConditionalGeneration(cfg)
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(
        vocab_size=VOCAB_SIZE,
        hidden_size=m["hidden_size"],
        intermediate_size=m["intermediate_size"],
        num_hidden_layers=m["num_hidden_layers"],
        num_attention_heads=m["num_attention_heads"],
        num_key_value_heads=m["num_key_value_heads"],
        max_position_embeddings=m["max_position_embeddings"],
        rope_parameters={"rope_type": "default", "rope_theta": float(m["rope_theta"])},
        tie_word_embeddings=True,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=PAD_ID,
        use_cache=True,
    )
    return Qwen2ForCausalLM(cfg)


def check_init_checkpoint(init_from: str | Path, allow_pickle: bool = False) -> tuple[Path, str, bool]:
    """(path, model_type, reads_pickles) of an ``init_from`` checkpoint, validated before anything is
    written: config and weights (:func:`qwen_anatomy.validate.check_transformers_checkpoint`; pickle
    weights refused unless ``allow_pickle``), a model type this strand trains, and an embedding row
    for every id of the shared task vocabulary."""
    from ..loading import resolve_model
    from ..validate import check_transformers_checkpoint, read_config_json
    from .vocab import VOCAB_SIZE

    path = resolve_model(init_from)
    pickled = check_transformers_checkpoint(path, allow_pickle)
    hf = read_config_json(path / "config.json")
    model_type = hf.get("model_type")
    if model_type not in MODEL_TYPES:
        raise UserInputError(
            f"--init-from {init_from}: model_type {model_type!r} is not one this strand trains "
            f"({', '.join(MODEL_TYPES)})"
        )
    vocab = hf.get("vocab_size")
    if not isinstance(vocab, int) or vocab < VOCAB_SIZE:
        raise UserInputError(
            f"--init-from {init_from} has {vocab} token ids but the shared task vocabulary needs "
            f"{VOCAB_SIZE}: start from a checkpoint trained on the tasks"
        )
    return path, model_type, pickled


def _load_init(init_from: str | Path, allow_pickle: bool = False):
    path, model_type, pickled = check_init_checkpoint(init_from, allow_pickle)
    if model_type == "bart":
        from transformers import BartForConditionalGeneration

        return BartForConditionalGeneration.from_pretrained(path, use_safetensors=not pickled), path
    from transformers import Qwen2ForCausalLM

    return Qwen2ForCausalLM.from_pretrained(path, use_safetensors=not pickled), path


def model_section_of(model) -> dict:
    """The ``model`` config section describing an existing transformers model (for init_from)."""
    c = model.config
    if c.model_type == "bart":
        return {
            "type": "bart",
            "d_model": c.d_model,
            "encoder_layers": c.encoder_layers,
            "decoder_layers": c.decoder_layers,
            "encoder_ffn_dim": c.encoder_ffn_dim,
            "decoder_ffn_dim": c.decoder_ffn_dim,
            "attention_heads": c.encoder_attention_heads,
            "max_position_embeddings": c.max_position_embeddings,
        }
    return {
        "type": "qwen2",
        "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size,
        "num_hidden_layers": c.num_hidden_layers,
        "num_attention_heads": c.num_attention_heads,
        "num_key_value_heads": c.num_key_value_heads,
        "max_position_embeddings": c.max_position_embeddings,
    }


# -- training ---------------------------------------------------------------------------------------
def _callbacks(config: dict, test_xs, test_ys, curves: list, t_start: list):
    from transformers import TrainerCallback

    from .evaluate import greedy_outputs, score

    training = config["training"]

    class TaskCallback(TrainerCallback):
        """Exact match on a test subset every ``eval_every`` steps, and the wall-clock budget."""

        def on_train_begin(self, args, state, control, **kw):
            t_start[0] = time.perf_counter()

        def _check(self, state, model):
            import torch

            was_training = model.training
            model.eval()
            with torch.no_grad():
                preds = greedy_outputs(model, test_xs)
            model.train(was_training)
            s = score(preds, test_xs, test_ys, show=0)
            curves.append(
                {
                    "step": state.global_step,
                    "seconds": round(time.perf_counter() - t_start[0], 2),
                    "exact_match": s["exact_match"],
                    "token_accuracy": s["token_accuracy"],
                }
            )

        def on_step_end(self, args, state, control, model=None, **kw):
            if state.global_step % training["eval_every"] == 0:
                self._check(state, model)
            budget = training["max_train_seconds"]
            if budget is not None and time.perf_counter() - t_start[0] > budget:
                state.stopped_by_budget = True
                control.should_training_stop = True
            stop = training["stop_after_steps"]
            if stop is not None and state.global_step >= stop:
                control.should_training_stop = True

        def on_train_end(self, args, state, control, model=None, **kw):
            if not curves or curves[-1]["step"] != state.global_step:
                self._check(state, model)

    return [TaskCallback()]


def train(
    config: dict,
    out_dir: str | Path,
    init_from: str | Path | None = None,
    dryrun: bool = False,
    verbose: bool = True,
    allow_pickle: bool = False,
    device="cpu",
    dtype="float32",
    callbacks: list | None = None,
) -> dict:
    """Train one model on one task and order; returns the final evaluation (also written to disk).

    ``config``: as returned by :func:`load_config` (validated again here). ``out_dir``: a new (or
    empty) directory; it becomes a Hugging Face checkpoint directory that transformers'
    ``Qwen2ForCausalLM`` (or ``BartForConditionalGeneration``) and ``qwen_anatomy.loading.load_model``
    both read, holding also ``tokenizer.json``, ``train_config.yaml``, ``curves.json`` (loss, learning
    rate, exact match against steps and seconds), ``evaluation.json``, ``generations.jsonl.gz`` (every
    test generation with its per-position correctness, :mod:`qwen_anatomy.tasks.evaluate`) and
    ``run_record.json``.
    ``init_from``: a checkpoint to fine-tune (its architecture replaces ``config['model']``); with
    ``allow_pickle`` a checkpoint of pickle weights is read with ``weights_only=True`` (else refused).
    ``dryrun``: 1 epoch on 1,000 training samples, evaluation on 100 test samples.
    ``verbose``: print the Trainer's loss lines (False in notebooks: the curves are plotted instead).
    ``device``: where the Trainer runs (cpu, cuda, mps, auto; checked first). ``dtype``: the compute
    precision: float32, or bfloat16 / float16 as the Trainer's mixed precision (autocast; the weights,
    optimizer state and saved checkpoint stay float32). float16 needs a GPU (its loss scaler is
    CUDA's); the final evaluation runs in float32. ``callbacks``: extra ``TrainerCallback`` objects
    (e.g. the step timer of :mod:`qwen_anatomy.tasks.cost`).
    """
    import yaml

    from ..devices import dtype_name, resolve
    from ..iochecks import check_output_dir, make_output_dir
    from ..runrecord import RunRecord, atomic_write_json, atomic_write_text
    from .generators import read_task_file
    from .vocab import check_range

    device, dtype = resolve(device, dtype)
    if dtype_name(dtype) == "float16" and device.type == "cpu":
        raise UserInputError(
            "--dtype float16 trains with a loss scaler that needs a GPU: use bfloat16 (or float32) on the CPU"
        )
    config = copy.deepcopy(config)
    if dryrun:
        config["task"]["train_samples"] = min(config["task"]["train_samples"], 1000)
        config["task"]["test_samples"] = min(config["task"]["test_samples"], 100)
        config["training"].update(epochs=1, max_steps=None)
        config["training"]["eval_subset"] = min(config["training"]["eval_subset"], 100)
    validate_config(config)
    out_dir = Path(out_dir)
    check_output_dir(out_dir, "output directory")
    if init_from is not None:  # config, weights, pickles and vocabulary, before anything is written
        check_init_checkpoint(init_from, allow_pickle)
    # the data are read and checked (every line's shape, the vocabulary) before anything is written
    t_data = time.perf_counter()
    train_file, test_file = data_files(config)
    train_xs, train_ys = read_task_file(train_file, config["task"]["train_samples"])
    test_xs, test_ys = read_task_file(test_file, config["task"]["test_samples"], one_length=True)
    for rows, where in (
        (train_xs, train_file),
        (train_ys, train_file),
        (test_xs, test_file),
        (test_ys, test_file),
    ):
        check_range(rows, str(where))
    overlap = len({tuple(x) for x in train_xs} & {tuple(x) for x in test_xs})
    data_seconds = time.perf_counter() - t_data
    make_output_dir(out_dir, "output directory")
    record = RunRecord(
        out_dir / "run_record.json",
        command="qwen_anatomy.tasks.train.train",
        parameters={
            "config": config,
            "init_from": None if init_from is None else str(init_from),
            "dryrun": dryrun,
            "device": str(device),
            "dtype": dtype_name(dtype),
        },
        seed=config["training"]["seed"],
    )
    with record:
        import torch

        torch.set_num_threads(config["training"]["threads"])
        record.data["stages"]["data"] = round(data_seconds, 4)
        with record.stage("import"):
            from transformers import Trainer, TrainingArguments, set_seed

            from .data import TaskDataset, collate_bart, collate_decoder
            from .vocab import save_tokenizer

        set_seed(config["training"]["seed"])
        if init_from is not None:
            model, init_path = _load_init(init_from, allow_pickle)
            config["model"] = {**config["model"], **model_section_of(model)}
            record.data["parameters"]["init_from_resolved"] = str(init_path)
        else:
            model = build_model(config)
        model_type = config["model"]["type"]
        train_set = TaskDataset(train_xs, train_ys, model_type, str(train_file))
        TaskDataset(test_xs, test_ys, model_type, str(test_file))  # range check before training
        tr = config["training"]
        steps_per_epoch = math.ceil(len(train_set) / tr["batch_size"])
        total_steps = (
            tr["max_steps"] if tr["max_steps"] is not None else math.ceil(tr["epochs"] * steps_per_epoch)
        )
        args = TrainingArguments(
            output_dir=str(out_dir / ".trainer"),
            per_device_train_batch_size=tr["batch_size"],  # the whole batch on CPU: no GPU-count division
            learning_rate=float(tr["learning_rate"]),
            weight_decay=float(tr["weight_decay"]),
            warmup_steps=int(round(float(tr["warmup_ratio"]) * total_steps)),
            lr_scheduler_type=tr["lr_scheduler_type"],
            max_grad_norm=float(tr["max_grad_norm"]),
            max_steps=total_steps,
            logging_steps=tr["logging_steps"],
            save_strategy="no",
            eval_strategy="no",
            report_to=[] if tr["report_to"] in (None, "none") else tr["report_to"],
            seed=tr["seed"],
            data_seed=tr["seed"],
            use_cpu=device.type == "cpu",
            bf16=dtype_name(dtype) == "bfloat16",  # mixed precision: float32 weights, autocast compute
            fp16=dtype_name(dtype) == "float16",
            dataloader_num_workers=0,
            remove_unused_columns=False,
            disable_tqdm=True,
        )
        sub = min(tr["eval_subset"], len(test_xs))
        curves: list[dict] = []
        t_start = [time.perf_counter()]
        trainer = Trainer(
            model=model,
            args=args,
            train_dataset=train_set,
            data_collator=collate_bart if model_type == "bart" else collate_decoder,
            callbacks=_callbacks(config, test_xs[:sub], test_ys[:sub], curves, t_start)
            + list(callbacks or []),
        )
        if not verbose:
            from transformers.trainer_callback import PrinterCallback

            trainer.remove_callback(PrinterCallback)
        with record.stage("train"):
            output = trainer.train()
        train_seconds = time.perf_counter() - t_start[0]
        stopped_by_budget = bool(getattr(trainer.state, "stopped_by_budget", False))
        with record.stage("save"):
            model.eval()
            model.save_pretrained(out_dir, safe_serialization=True)
            save_tokenizer(out_dir)
            atomic_write_text(out_dir / "train_config.yaml", yaml.safe_dump(config, sort_keys=False))
            import shutil

            shutil.rmtree(out_dir / ".trainer", ignore_errors=True)
        with record.stage("evaluate"):
            from .evaluate import GENERATIONS_FILE, evaluate

            ev = config["evaluation"]
            result = evaluate(
                out_dir,
                test_file,
                ev["max_examples"] or config["task"]["test_samples"],
                show=ev["show"],
                device=device,
                generations_file=out_dir / GENERATIONS_FILE,
            )
        log = [
            {k: v for k, v in row.items() if k in ("step", "loss", "learning_rate", "grad_norm", "epoch")}
            for row in trainer.state.log_history
            if "loss" in row
        ]
        params = sum(p.numel() for p in model.parameters())
        summary = {
            "task": config["task"]["name"],
            "n": config["task"]["n"],
            "order": config["task"]["order"],
            "model_type": model_type,
            "parameters": params,
            "seed": tr["seed"],
            "steps": trainer.state.global_step,
            "planned_steps": total_steps,
            "train_seconds": round(train_seconds, 1),
            "samples_per_second": round(
                trainer.state.global_step * tr["batch_size"] / max(train_seconds, 1e-9), 1
            ),
            "stopped_by_time_budget": stopped_by_budget,
            "final_train_loss": log[-1]["loss"] if log else float(output.training_loss),
            "train_test_overlap": overlap,
            "train_file": str(train_file),
            "test_file": str(test_file),
            "dryrun": dryrun,
            "init_from": None if init_from is None else str(init_from),
        }
        result = {**summary, **{k: v for k, v in result.items() if k not in ("checkpoint",)}}
        atomic_write_json(out_dir / "curves.json", {"loss": log, "exact_match": curves})
        atomic_write_json(out_dir / "evaluation.json", result)
        record.data["result"] = {
            k: result[k] for k in ("exact_match", "token_accuracy", "steps", "train_seconds")
        }
    return result
