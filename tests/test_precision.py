"""--device and --dtype: validation, bfloat16 parity with transformers, every command that runs a model.

Tolerance for bfloat16 (tests/tolerance.py, ``BF16_ROUNDING`` = 4 roundings of the largest value):
bfloat16 keeps 8 significant bits, so one rounding moves a value by up to 2^-8 = 3.9e-3 of itself.
With the same attention implementation on both sides the operations are the same in the same order,
and our bfloat16 logits equal transformers' bit for bit (sdpa and eager alike): the float32 islands
(RMSNorm, RoPE tables, softmax) are where transformers has them. Across implementations (our sdpa
against transformers' eager, which rounds the attention probabilities to bfloat16) short inputs
differ by a few roundings of the largest logit: measured 0.7-1.4 on the tiny model below
(transformers' initialisation, std 0.02; 4 seeds of 20 tokens), 4.1 on Qwen2.5-Coder-0.5B (13
tokens). A lost bias moves them by about 74 (test_bf16_tolerance_catches_a_lost_bias). Our bfloat16
logits are also as close to float32 as transformers' bfloat16 logits are.
"""

from __future__ import annotations

import json

import pytest
import torch

from qwen_anatomy.cli import main
from qwen_anatomy.errors import UserInputError
from test_model_forms import argv_for, causal_train_argv, write_tiny_qwen2
from tolerance import BF16_ROUNDING, assert_close_scaled

torch.set_num_threads(1)
NO_CUDA = "needs a CUDA device"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return write_tiny_qwen2(tmp_path_factory.mktemp("precision") / "tiny")


def _hf(tiny_dir, dtype):
    import transformers

    return transformers.Qwen2ForCausalLM.from_pretrained(
        str(tiny_dir), dtype=dtype, attn_implementation="eager"
    ).eval()


@pytest.fixture(scope="module")
def hf_bf16(tiny_dir):
    """transformers' Qwen2ForCausalLM of the same checkpoint, bfloat16, eager attention."""
    return _hf(tiny_dir, torch.bfloat16)


def _ids(vocab: int = 384, shape=(3, 20), seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, shape, generator=torch.Generator().manual_seed(seed))


# -- parity in bfloat16 --------------------------------------------------------------------------------
def test_bf16_logits_match_transformers_bf16(tiny_dir, hf_bf16):
    from qwen_anatomy.loading import load_model

    ours, _ = load_model(tiny_dir, dtype=torch.bfloat16)
    assert ours.dtype == torch.bfloat16 and ours.model.inv_freq.dtype == torch.float32
    ids = _ids()
    with torch.no_grad():
        ref = hf_bf16(ids).logits  # eager
        hf_bf16.config._attn_implementation = "sdpa"
        ref_sdpa = hf_bf16(ids).logits
        hf_bf16.config._attn_implementation = "eager"
        default = ours(ids).logits  # sdpa
        ours.set_attn_implementation("eager")
        eager = ours(ids).logits
    assert default.dtype == ref.dtype == torch.bfloat16
    assert torch.equal(default, ref_sdpa), "sdpa in bfloat16 must do transformers' operations in its order"
    assert torch.equal(eager, ref), "eager in bfloat16 must do transformers' operations in its order"
    assert_close_scaled(default.float(), ref.float(), rtol=BF16_ROUNDING, msg="sdpa vs transformers eager")
    with torch.no_grad():  # as close to float32 as transformers' own bfloat16
        truth = _hf(tiny_dir, torch.float32)(ids).logits.double()
    ours_error = (default.double() - truth).abs().max()
    theirs_error = (ref.double() - truth).abs().max()
    assert ours_error <= 2 * theirs_error + 2.0**-8 * truth.abs().max()


def test_bf16_greedy_tokens_agree_with_transformers(tiny_dir, hf_bf16):
    from qwen_anatomy.generation import generate
    from qwen_anatomy.loading import load_model

    ours, _ = load_model(tiny_dir, dtype="bfloat16")
    prompts = _ids(shape=(3, 8), seed=1).tolist()
    for prompt in prompts:
        ids = torch.tensor([prompt])
        with torch.no_grad():
            theirs = hf_bf16.generate(
                ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False, pad_token_id=0,
                eos_token_id=None,
            )[0, len(prompt) :].tolist()  # fmt: skip
        assert generate(ours, [prompt], max_new_tokens=6) == [theirs]


def test_bf16_tolerance_catches_a_lost_bias(tiny_dir, hf_bf16):
    """The bf16 bound is not blind: dropping one layer's q/k/v biases exceeds it."""
    from qwen_anatomy.loading import load_model

    ours, _ = load_model(tiny_dir, dtype=torch.bfloat16)
    with torch.no_grad():
        for proj in ("q_proj", "k_proj", "v_proj"):
            getattr(ours.model.layers[1].self_attn, proj).bias.zero_()
        ids = _ids()
        diff_ok = ours(ids).logits.float()
        ref = hf_bf16(ids).logits.float()
    with pytest.raises(AssertionError, match="exceeds"):
        assert_close_scaled(diff_ok, ref, rtol=BF16_ROUNDING)


def test_norm_and_softmax_stay_float32_in_bf16():
    """RMSNorm squares, averages and normalises in float32; attention probabilities are a float32
    softmax rounded once (as transformers does), so each row sums to 1 within one bf16 rounding per term."""
    from qwen_anatomy.config import tiny_config
    from qwen_anatomy.model import Qwen2ForCausalLM, RMSNorm, run_with_cache

    norm = RMSNorm(64, 1e-6).to(torch.bfloat16)
    x = (torch.randn(4, 64, generator=torch.Generator().manual_seed(0)) * 300).to(torch.bfloat16)
    x32 = x.float()
    expected = norm.weight * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + 1e-6)).to(torch.bfloat16)
    assert torch.equal(norm(x), expected)
    model = Qwen2ForCausalLM(tiny_config()).init_weights(0).to(torch.bfloat16).eval()
    _, cache = run_with_cache(model, _ids(101, (1, 12)), ["model.layers.0.self_attn.hook_pattern"])
    probs = cache["model.layers.0.self_attn.hook_pattern"]
    assert probs.dtype == torch.bfloat16
    assert (probs.float().sum(-1) - 1).abs().max() <= 12 * 2.0**-8


# -- the command line in bfloat16 ---------------------------------------------------------------------
def test_generate_and_verify_in_bf16_on_cpu(tiny_dir, capsys):
    assert main(["generate", "--model", str(tiny_dir), "--prompt", "a b", "--max-new-tokens", "4",
                 "--dtype", "bfloat16"]) == 0  # fmt: skip
    assert capsys.readouterr().out.strip()
    assert main(["verify", str(tiny_dir), "--max-new-tokens", "3", "--dtype", "bfloat16"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["dtype"] == "bfloat16" and report["device"] == "cpu"
    assert report["tolerance"]["scale"] == "max" and report["tolerance"]["rtol"] == 4 * 2.0**-8
    assert report["first_divergent_layer"] is None and report["greedy_tokens_equal"]
    assert report["max_abs_logit_diff"] == 0.0  # sdpa on both sides: the same operations


@pytest.fixture
def forms(tiny_dir, tmp_path) -> dict:
    data = tmp_path / "data.test"
    data.write_text("1 2 3 # 1 3 6\n4 5 6 # 4 9 15\n")
    return {"data": data}


@pytest.mark.parametrize(
    "command",
    ["generate", "verify", "heads", "evaluate", "train --init-from", "causal train", "causal suite"],
)
def test_every_model_running_command_takes_device_and_dtype(command, tiny_dir, forms, tmp_path, capsys):
    argv = argv_for(command, str(tiny_dir), forms, tmp_path) + ["--device", "cpu", "--dtype", "bfloat16"]
    code = main(argv)
    assert code == 0, capsys.readouterr().err


@pytest.mark.parametrize("action", ["eval", "generate"])
def test_causal_heads_run_with_a_bf16_backbone(action, tiny_dir, tmp_path, capsys):
    heads = tmp_path / "heads"
    assert main([*causal_train_argv(str(tiny_dir), heads), "--dtype", "bfloat16"]) == 0
    if action == "eval":
        argv = ["causal", "eval", "--heads", str(heads), "--sets", "basic", "--n-eval", "2"]
    else:
        argv = ["causal", "generate", "--heads", str(heads), "--prompt", "1 + 2 =", "--max-new-tokens", "2"]
    assert main([*argv, "--dtype", "bfloat16"]) == 0, capsys.readouterr().err


def test_float16_on_cpu_is_allowed_for_inference(tiny_dir, capsys):
    from qwen_anatomy.loading import load_model

    model, _ = load_model(tiny_dir, dtype="float16")
    assert model.dtype == torch.float16 and model.model.norm.weight.dtype == torch.float16
    assert main(["generate", "--model", str(tiny_dir), "--prompt", "a", "--max-new-tokens", "2",
                 "--dtype", "float16"]) == 0  # fmt: skip


def test_float16_training_on_cpu_is_refused_in_one_line(tiny_dir, tmp_path, capsys):
    argv = argv_for("train --init-from", str(tiny_dir), {"data": None}, tmp_path) + ["--dtype", "float16"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "float16" in err and "bfloat16" in err
    assert not (tmp_path / "ckpt").exists()


# -- device validation ----------------------------------------------------------------------------------
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
@pytest.mark.parametrize("command", ["generate", "verify", "heads", "evaluate", "causal train"])
def test_cuda_without_cuda_is_one_line_and_exit_2(command, tiny_dir, forms, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    argv = argv_for(command, str(tiny_dir), forms, out) + ["--device", "cuda"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--device cuda" in err and "cpu or auto" in err
    assert not any(out.iterdir())  # refused before anything was written


def test_auto_prefers_cuda_then_mps_then_cpu(monkeypatch):
    from qwen_anatomy import devices

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(devices, "_mps_available", lambda torch: True)
    assert devices.resolve_device("auto") == torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert devices.resolve_device("auto") == torch.device("mps")
    monkeypatch.setattr(devices, "_mps_available", lambda torch: False)
    assert devices.resolve_device("auto") == torch.device("cpu")


def test_loader_keywords_are_checked_before_reading(tiny_dir, tmp_path):
    from qwen_anatomy.loading import load_model

    with pytest.raises(UserInputError, match="dtype 'int8'"):
        load_model(tiny_dir, dtype="int8")
    with pytest.raises(UserInputError, match="device 'tpu'"):
        load_model(tmp_path / "does-not-matter", device="tpu")  # the device is checked first
    model, _ = load_model(tiny_dir, device="cpu", dtype=torch.bfloat16)
    assert model.device == torch.device("cpu") and model.dtype == torch.bfloat16


# -- on a CUDA machine ------------------------------------------------------------------------------------
@pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA)
def test_cuda_bf16_matches_cpu_bf16(tiny_dir):
    from qwen_anatomy.loading import load_model

    cpu, _ = load_model(tiny_dir, dtype=torch.bfloat16)
    gpu, _ = load_model(tiny_dir, dtype=torch.bfloat16, device="cuda")
    assert gpu.device.type == "cuda" and gpu.model.inv_freq.device.type == "cuda"
    ids = _ids()
    with torch.no_grad():
        a, b = gpu(ids.cuda()).logits.float().cpu(), cpu(ids).logits.float()
    assert_close_scaled(a, b, rtol=BF16_ROUNDING, msg="cuda vs cpu bf16")


@pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA)
@pytest.mark.parametrize("command", ["generate", "verify", "heads", "evaluate", "causal train"])
def test_commands_run_on_cuda(command, tiny_dir, forms, tmp_path, capsys):
    argv = argv_for(command, str(tiny_dir), forms, tmp_path) + ["--device", "cuda", "--dtype", "bfloat16"]
    assert main(argv) == 0, capsys.readouterr().err


# -- the real Qwen2 --------------------------------------------------------------------------------------
@pytest.mark.slow
def test_coder_verify_in_bf16(capsys):
    """Qwen2.5-Coder-0.5B in bfloat16 against transformers in bfloat16 (sdpa on both sides): every
    stage equal (measured: 0.0 at every stage, greedy 5/5; about 30 s here)."""
    assert main(["verify", "qwen2.5-coder-0.5b", "--dtype", "bfloat16", "--max-new-tokens", "5"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["dtype"] == "bfloat16" and report["first_divergent_layer"] is None
    assert report["greedy_tokens_equal"]
    logits = report["per_layer_max_abs_diff"]["logits"]
    assert logits <= BF16_ROUNDING * 30  # 4 roundings of logits of scale ~20-30 (0.0 measured)
