"""Part I commands: ``info``, ``generate``, ``verify``. Heavy imports happen inside the handlers."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..cli import non_negative_int, positive_int, probability, seed, temperature
from ..devices import add_device_flags
from ..errors import UserInputError
from ..registry import MODEL_HELP

PICKLE_HELP = (
    "load a checkpoint that holds only pickle weights (.bin/.pt) with torch.load(weights_only=True), "
    "which reads plain tensors and refuses anything else; pickles are refused without this flag"
)


def add_pickle_flag(parser) -> None:
    """``--allow-pickle-weights-only``, shared by every command that loads a checkpoint."""
    parser.add_argument("--allow-pickle-weights-only", action="store_true", help=PICKLE_HELP)


def register(sub) -> None:
    p = sub.add_parser("info", help="config summary and parameter counts of a model")
    p.add_argument("model", help=MODEL_HELP)
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    add_pickle_flag(p)
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("generate", help="generate text, streamed token by token")
    p.add_argument("--model", required=True, help=MODEL_HELP)
    p.add_argument("--prompt", required=True, help="the prompt text")
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    p.add_argument(
        "--max-new-tokens",
        type=non_negative_int,
        default=64,
        help="tokens to generate (>= 0; prompt + new tokens must fit the model's max_position_embeddings)",
    )
    p.add_argument(
        "--temperature", type=temperature, default=0.0, help="0 = greedy (default), else in [0.001, 1000]"
    )
    p.add_argument("--top-k", type=positive_int, default=None, help="sample only from the k most likely")
    p.add_argument("--top-p", type=probability, default=None, help="nucleus sampling mass in (0, 1]")
    p.add_argument("--seed", type=seed, default=0, help="random seed for sampling, 0..2**32-1 (default 0)")
    add_device_flags(p)
    add_pickle_flag(p)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser(
        "verify",
        help="compare our model with transformers' class for the checkpoint",
        description="Logits per layer and greedy tokens of our model against transformers' class, on "
        "text prompts; a checkpoint without tokenizer.json is compared on seeded random token ids "
        "(5 sequences of 16 ids, seed 0), as the JSON's 'inputs' field says. With --dtype bfloat16 or "
        "float16 both models run in that dtype with sdpa attention (the same operations on both "
        "sides) and the tolerance is a few roundings of each stage's largest value (the JSON's "
        "'tolerance' says which).",
    )
    p.add_argument("model", help=MODEL_HELP)
    p.add_argument(
        "--prompts",
        type=Path,
        default=None,
        help="UTF-8 text file, one prompt per line (needs the checkpoint's tokenizer.json)",
    )
    p.add_argument(
        "--max-new-tokens", type=positive_int, default=20, help="greedy tokens compared per prompt"
    )
    add_device_flags(p)
    add_pickle_flag(p)
    p.set_defaults(func=cmd_verify)


def parameter_counts(model) -> dict[str, int]:
    """Total, embedding, non-embedding and per block type (a tied head counts once)."""
    from ..model import count_parameters

    by_block: dict[str, int] = {}
    for name, p in model.named_parameters():  # deduplicated: a tied head is not listed twice
        if "embed_tokens" in name:
            block = "embedding"
        elif name.startswith("lm_head"):
            block = "lm_head"
        elif ".self_attn." in name:
            block = "attention"
        elif ".mlp." in name:
            block = "mlp"
        else:
            block = "norm"
        by_block[block] = by_block.get(block, 0) + p.numel()
    total = count_parameters(model)
    embedding = by_block.get("embedding", 0) + by_block.get("lm_head", 0)
    return {"total": total, "embedding": embedding, "non_embedding": total - embedding, "by_block": by_block}


def cmd_info(args) -> int:
    from ..loading import load_model, resolve_model

    path = resolve_model(args.model)
    model, tok = load_model(path, with_tokenizer=True, weights_only_pickle=args.allow_pickle_weights_only)
    cfg = model.config
    counts = parameter_counts(model)
    info = {
        "model": args.model,
        "path": str(path),
        "config": cfg.to_dict(),
        "tokenizer_vocab": tok.vocab_size if tok else None,
        "parameters": counts,
    }
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"model      {args.model}  ({path})")
    print(
        f"shape      {cfg.num_hidden_layers} layers, hidden {cfg.hidden_size}, intermediate "
        f"{cfg.intermediate_size}, {cfg.num_attention_heads} heads / {cfg.num_key_value_heads} KV heads "
        f"(group {cfg.group_size}), head_dim {cfg.head_dim}"
    )
    print(
        f"vocab      {cfg.vocab_size} rows (tokenizer {info['tokenizer_vocab']}), tied head: "
        f"{cfg.tie_word_embeddings}, q/k/v bias: {cfg.attention_bias}, rope theta {cfg.rope_theta:g}, "
        f"rms eps {cfg.rms_norm_eps:g}"
    )
    print(f"parameters {counts['total']:,} total")
    print(f"           {counts['embedding']:,} embedding (+ untied head)")
    print(f"           {counts['non_embedding']:,} non-embedding")
    for block, n in counts["by_block"].items():
        print(f"           {n:>14,} {block}")
    return 0


def cmd_generate(args) -> int:
    if not args.prompt:
        raise UserInputError("--prompt is empty: give some text to continue")
    try:
        args.prompt.encode("utf-8")
    except UnicodeEncodeError:  # bytes that are not UTF-8 reach Python as lone surrogates
        raise UserInputError(
            f"--prompt {args.prompt.encode('utf-8', 'replace').decode()!r} is not UTF-8 text; "
            "pass the prompt in UTF-8"
        ) from None
    from ..devices import resolve
    from ..generation import generate
    from ..loading import load_config, load_model, resolve_model
    from ..validate import check_prompt_fits, open_tokenizer

    # everything cheap first (device, dtype, config, tokenizer, prompt length): the weights last
    device, dtype = resolve(args.device, args.dtype)
    path = resolve_model(args.model)
    config = load_config(path)
    tok = open_tokenizer(path)
    if tok is None:
        raise UserInputError(f"{args.model} has no tokenizer.json next to its weights; generate needs one")
    if args.chat:
        ids = tok.encode(chat_text(tok, args.model, args.prompt))
    else:
        ids = tok.encode(args.prompt, add_special_tokens=True)
    check_prompt_fits(ids, config, args.max_new_tokens, f"--prompt of {args.model}")
    model, _ = load_model(
        path,
        with_tokenizer=False,
        weights_only_pickle=args.allow_pickle_weights_only,
        device=device,
        dtype=dtype,
    )
    eos = [i for i in {tok.eos_token_id, *model.config.eos_token_ids} if i is not None]
    produced: list[int] = []
    printed = ""

    def stream(step_tokens) -> None:
        nonlocal printed
        produced.append(int(step_tokens[0]))
        text = tok.decode(produced)
        if not text.endswith("\ufffd"):  # wait for the rest of a multi-byte character
            sys.stdout.write(text[len(printed) :])
            sys.stdout.flush()
            printed = text

    generate(
        model,
        [ids],
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
        eos_token_id=eos,
        on_token=stream,
    )
    sys.stdout.write("\n")
    return 0


def chat_text(tok, model_name: str, prompt: str) -> str:
    """The prompt wrapped in the checkpoint's chat template; UserInputError when it has none."""
    if not tok.chat_template:
        raise UserInputError(
            f"--chat: {model_name} has no chat template (no chat_template in tokenizer_config.json, "
            "no chat_template.jinja): drop --chat"
        )
    try:
        return tok.apply_chat_template([{"role": "user", "content": prompt}])
    except Exception as err:  # jinja2 syntax errors, raise_exception() inside the template
        first = (str(err).strip().splitlines() or [""])[0][:160]
        raise UserInputError(
            f"--chat: the chat template of {model_name} failed ({type(err).__name__}: {first}); drop --chat"
        ) from None


def cmd_verify(args) -> int:
    from ..devices import resolve

    device, dtype = resolve(args.device, args.dtype)
    prompts = None
    if args.prompts is not None:
        from ..iochecks import read_text

        text = read_text(args.prompts, "--prompts", "give a UTF-8 text file, one prompt a line")
        prompts = [line for line in text.splitlines() if line.strip()]
        if not prompts:
            raise UserInputError(f"--prompts {args.prompts} holds no non-empty line")
    from ..verify import verify_checkpoint

    # verify_checkpoint checks config, tokenizer, prompt lengths and weights before it imports
    # transformers (15-19 s)
    report = verify_checkpoint(
        args.model,
        prompts,
        max_new_tokens=args.max_new_tokens,
        weights_only_pickle=args.allow_pickle_weights_only,
        device=device,
        dtype=dtype,
    )
    print(json.dumps(report, indent=2))
    return 0
