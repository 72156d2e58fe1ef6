"""One frozen configuration for every Qwen2-family model (chapter 02_qwen2_from_scratch).

Built from a Hugging Face ``config.json``. Llama-family checkpoints (SmolLM2, TinyLlama) are the same
architecture without q/k/v biases, so they map onto this class with ``attention_bias=False``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from .validate import ConfigError, config_float, config_int, read_config_json
from .validate import check_config_fields as _check_fields

# Architectures whose tensors and maths this implementation reproduces exactly.
SUPPORTED_ARCHITECTURES = {
    "Qwen2ForCausalLM": "qwen2",
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "llama",
}


@dataclass(frozen=True)
class Qwen2Config:
    """Hyper-parameters of a Qwen2 decoder-only model.

    ``head_dim`` defaults to ``hidden_size // num_attention_heads``; ``attention_bias`` is True for
    Qwen2 (biases on q/k/v) and False for Llama-family checkpoints.
    """

    vocab_size: int = 151936
    hidden_size: int = 896
    intermediate_size: int = 4864
    num_hidden_layers: int = 24
    num_attention_heads: int = 14
    num_key_value_heads: int = 2
    head_dim: int | None = None
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1_000_000.0
    max_position_embeddings: int = 32768
    tie_word_embeddings: bool = True
    attention_bias: bool = True
    model_type: str = "qwen2"
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None

    def __post_init__(self) -> None:
        if self.head_dim is None:
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_attention_heads)
        for name in (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "head_dim",
        ):
            config_int(getattr(self, name), name, "config")  # positive, below validate.INT_LIMITS
        config_int(self.max_position_embeddings, "max_position_embeddings", "config")
        config_float(self.rope_theta, "rope_theta", "config")
        config_float(self.rms_norm_eps, "rms_norm_eps", "config")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(
                f"num_attention_heads={self.num_attention_heads} is not a multiple of "
                f"num_key_value_heads={self.num_key_value_heads}: grouped-query attention needs it"
            )
        if self.head_dim % 2:
            raise ConfigError(f"head_dim={self.head_dim} must be even for rotary embeddings")
        if isinstance(self.eos_token_id, list):
            object.__setattr__(self, "eos_token_id", tuple(self.eos_token_id))

    @property
    def group_size(self) -> int:
        """Query heads served by one key/value head."""
        return self.num_attention_heads // self.num_key_value_heads

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        if self.eos_token_id is None:
            return ()
        if isinstance(self.eos_token_id, int):
            return (self.eos_token_id,)
        return tuple(self.eos_token_id)

    def replace(self, **changes: Any) -> Qwen2Config:
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_hf_dict(cls, hf: dict[str, Any], where: str = "config.json") -> Qwen2Config:
        """Build from the parsed contents of a Hugging Face ``config.json``.

        Rope theta is read from ``rope_parameters["rope_theta"]`` (transformers 5) or a top-level
        ``rope_theta`` (older files). Scaled rope variants are refused: they change the maths. Types
        and ranges are checked by :func:`qwen_anatomy.validate.check_config_fields`; ``where`` (the
        file) starts every error message.
        """
        if not isinstance(hf, dict):
            raise ConfigError(f"{where} must hold a JSON object of configuration fields")
        _check_fields(hf, where)
        archs = hf.get("architectures") or []
        model_type = hf.get("model_type", "qwen2")
        if archs and not any(a in SUPPORTED_ARCHITECTURES for a in archs):
            raise ConfigError(
                f"{where}: architecture {archs} is not supported; supported: "
                f"{sorted(SUPPORTED_ARCHITECTURES)}"
            )
        if not archs and model_type not in ("qwen2", "llama", "mistral"):
            raise ConfigError(f"{where}: model_type {model_type!r} is not a Qwen2/Llama-family model")
        rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
        theta = rope.get("rope_theta", hf.get("rope_theta", 10000.0))
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type not in (None, "default"):
            raise ConfigError(f"{where}: rope type {rope_type!r} is not implemented (only 'default')")
        bias = hf.get("attention_bias", model_type == "qwen2")
        if hf.get("mlp_bias"):
            raise ConfigError(
                f"{where}: mlp_bias=true is not part of the Qwen2/Llama design implemented here"
            )
        missing = [k for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                               "num_attention_heads") if k not in hf]  # fmt: skip
        if missing:
            raise ConfigError(f"{where} lacks the required field {missing[0]!r}")
        heads = config_int(hf["num_attention_heads"], "num_attention_heads", where)
        head_dim = hf.get("head_dim")
        try:
            return cls(
                vocab_size=config_int(hf["vocab_size"], "vocab_size", where),
                hidden_size=config_int(hf["hidden_size"], "hidden_size", where),
                intermediate_size=config_int(hf["intermediate_size"], "intermediate_size", where),
                num_hidden_layers=config_int(hf["num_hidden_layers"], "num_hidden_layers", where),
                num_attention_heads=heads,
                num_key_value_heads=config_int(
                    hf.get("num_key_value_heads") or heads, "num_key_value_heads", where
                ),
                head_dim=None if head_dim is None else config_int(head_dim, "head_dim", where),
                rms_norm_eps=config_float(hf.get("rms_norm_eps", 1e-6), "rms_norm_eps", where),
                rope_theta=config_float(theta, "rope_theta", where),
                max_position_embeddings=config_int(
                    hf.get("max_position_embeddings", 32768), "max_position_embeddings", where
                ),
                tie_word_embeddings=hf.get("tie_word_embeddings", False),
                attention_bias=bias,
                model_type=model_type,
                bos_token_id=hf.get("bos_token_id"),
                eos_token_id=hf.get("eos_token_id"),
                pad_token_id=hf.get("pad_token_id"),
            )
        except ConfigError as err:  # a combination of fields (heads, head_dim) that does not fit
            raise ConfigError(f"{where}: {err}") from None

    @classmethod
    def from_json(cls, path: str | Path) -> Qwen2Config:
        """From a ``config.json`` file (read and checked by :func:`qwen_anatomy.validate.read_config_json`)."""
        return cls.from_hf_dict(read_config_json(path), where=str(path))

    def to_hf_dict(self) -> dict[str, Any]:
        """A ``config.json`` transformers reads back into the matching class."""
        is_qwen = self.model_type == "qwen2"
        out: dict[str, Any] = {
            "architectures": ["Qwen2ForCausalLM" if is_qwen else "LlamaForCausalLM"],
            "model_type": "qwen2" if is_qwen else "llama",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_parameters": {"rope_type": "default", "rope_theta": self.rope_theta},
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "hidden_act": "silu",
            "torch_dtype": "float32",
            "bos_token_id": self.bos_token_id,
            "eos_token_id": list(self.eos_token_ids)
            if len(self.eos_token_ids) > 1
            else (self.eos_token_ids[0] if self.eos_token_ids else None),
            "pad_token_id": self.pad_token_id,
        }
        if not is_qwen:
            out["attention_bias"] = self.attention_bias
            out["mlp_bias"] = False
        elif not self.attention_bias:
            raise ConfigError("a qwen2 config.json always has q/k/v biases; use model_type='llama'")
        return out


# Reference shapes quoted in the book; benchmarks build random stand-ins of exactly these.
QWEN2_5_0_5B = Qwen2Config(
    vocab_size=151936,
    hidden_size=896,
    intermediate_size=4864,
    num_hidden_layers=24,
    num_attention_heads=14,
    num_key_value_heads=2,
    head_dim=64,
    rms_norm_eps=1e-6,
    rope_theta=1_000_000.0,
    max_position_embeddings=32768,
    tie_word_embeddings=True,
    attention_bias=True,
)

SMOLLM2_135M = Qwen2Config(
    vocab_size=49152,
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    head_dim=64,
    rms_norm_eps=1e-5,
    rope_theta=100_000.0,
    max_position_embeddings=8192,
    tie_word_embeddings=True,
    attention_bias=False,
    model_type="llama",
)


def tiny_config(**overrides: Any) -> Qwen2Config:
    """A few-thousand-parameter config for tests and CI-scale notebooks."""
    base = dict(
        vocab_size=101,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        rms_norm_eps=1e-6,
        rope_theta=10000.0,
        max_position_embeddings=128,
        tie_word_embeddings=False,
        attention_bias=True,
    )
    base.update(overrides)
    return Qwen2Config(**base)
