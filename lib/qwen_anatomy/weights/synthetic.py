"""Random-weight checkpoints of an exact layout, written without torch (chapter 10, bench/weights.py).

They serve as the null model beside a trained one (same shapes, i.i.d. Normal(0, std) matrices, unit
norms, zero biases: transformers' own initialisation) and as stand-ins of the exact Qwen2.5-0.5B /
7B layouts for the benchmark, so the timing targets can be checked without downloading anything.
"""

from __future__ import annotations

import json
from pathlib import Path

from .safetensors_io import float32_to_bf16_bits, write_safetensors

NUMPY_STORE = {"F32": "<f4", "F16": "<f2", "BF16": None}


def layout(cfg) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of every stored tensor of a Qwen2/Llama config, Hugging Face order and keys."""
    d, f, v = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    hd = cfg.head_dim
    q, kv = cfg.num_attention_heads * hd, cfg.num_key_value_heads * hd
    out = [("model.embed_tokens.weight", (v, d))]
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        out += [
            (p + "input_layernorm.weight", (d,)),
            (p + "self_attn.q_proj.weight", (q, d)),
            (p + "self_attn.k_proj.weight", (kv, d)),
            (p + "self_attn.v_proj.weight", (kv, d)),
        ]
        if cfg.attention_bias:
            out += [(p + "self_attn.q_proj.bias", (q,)), (p + "self_attn.k_proj.bias", (kv,)),
                    (p + "self_attn.v_proj.bias", (kv,))]  # fmt: skip
        out += [
            (p + "self_attn.o_proj.weight", (d, q)),
            (p + "post_attention_layernorm.weight", (d,)),
            (p + "mlp.gate_proj.weight", (f, d)),
            (p + "mlp.up_proj.weight", (f, d)),
            (p + "mlp.down_proj.weight", (d, f)),
        ]
    out.append(("model.norm.weight", (d,)))
    if not cfg.tie_word_embeddings:
        out.append(("lm_head.weight", (v, d)))
    return out


def _producer(name: str, shape: tuple[int, ...], dtype: str, rng, std: float, block_rows: int = 8192):
    import numpy as np

    def values(n_rows: int, cols: int):
        if name.endswith("norm.weight"):
            return np.ones((n_rows, cols), dtype=np.float32)
        if name.endswith(".bias"):
            return np.zeros((n_rows, cols), dtype=np.float32)
        return rng.standard_normal((n_rows, cols), dtype=np.float32) * np.float32(std)

    def encode(x):
        return float32_to_bf16_bits(x) if dtype == "BF16" else x.astype(NUMPY_STORE[dtype])

    def blocks():
        rows, cols = (1, shape[0]) if len(shape) == 1 else shape
        for start in range(0, rows, block_rows):
            yield encode(values(min(block_rows, rows - start), cols))

    return lambda: blocks()


def write_random_checkpoint(
    out_dir: str | Path, cfg, dtype: str = "BF16", seed: int = 0, std: float = 0.02, shards: int = 1
) -> Path:
    """A config.json + safetensors directory (``shards`` > 1 adds model.safetensors.index.json).

    Tensors are generated and written block by block, so even the 15 GB 7B layout needs little memory.
    """
    import numpy as np

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    items = layout(cfg)
    sizes = [int(np.prod(s)) for _, s in items]
    per_shard = sum(sizes) / shards
    groups: list[list[int]] = [[] for _ in range(shards)]
    acc = 0
    for i, n in enumerate(sizes):
        groups[min(shards - 1, int(acc // per_shard))].append(i)
        acc += n
    weight_map = {}
    for k, idx in enumerate(groups):
        fname = "model.safetensors" if shards == 1 else f"model-{k + 1:05d}-of-{shards:05d}.safetensors"
        tensors = [(items[i][0], dtype, items[i][1], _producer(items[i][0], items[i][1], dtype, rng, std))
                   for i in idx]  # fmt: skip
        write_safetensors(out_dir / fname, tensors)
        weight_map.update({items[i][0]: fname for i in idx})
    if shards > 1:
        total = sum(sizes) * (2 if dtype in ("BF16", "F16") else 4)
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    hf = cfg.to_hf_dict()
    hf["torch_dtype"] = {"BF16": "bfloat16", "F16": "float16", "F32": "float32"}[dtype]
    (out_dir / "config.json").write_text(json.dumps(hf, indent=2))
    return out_dir


def config_of(ck):
    """A Qwen2Config with the shapes of an opened checkpoint (safetensors config.json or GGUF metadata)."""
    from ..config import Qwen2Config

    cfg = ck.config or {}
    if ck.format == "gguf":
        hidden, heads = int(cfg["hidden_size"]), int(cfg["num_attention_heads"])
        emb = ck.find("embedding")
        return Qwen2Config(
            vocab_size=int(emb.shape[0]),
            hidden_size=hidden,
            intermediate_size=int(cfg["intermediate_size"]),
            num_hidden_layers=int(cfg["num_hidden_layers"]),
            num_attention_heads=heads,
            num_key_value_heads=int(cfg["num_key_value_heads"]),
            head_dim=hidden // heads,
            tie_word_embeddings=bool(cfg["tie_word_embeddings"]),
            attention_bias=any(e.name.endswith("q_proj.bias") for e in ck.entries),
            model_type="qwen2" if cfg.get("architecture") == "qwen2" else "llama",
        )
    return Qwen2Config.from_hf_dict(cfg)


def null_model_like(ck, out_dir: str | Path, seed: int = 0, layers: int | None = None, std: float = 0.02,
                    dtype: str = "BF16") -> Path:  # fmt: skip
    """A random checkpoint with the same shapes as ``ck`` (first ``layers`` layers only, if given):
    the null model chapter 10 puts beside the trained one."""
    cfg = config_of(ck)
    if layers is not None:
        cfg = cfg.replace(num_hidden_layers=min(layers, cfg.num_hidden_layers))
    return write_random_checkpoint(out_dir, cfg, dtype=dtype, seed=seed, std=std)
