"""A ``vllm serve`` deployment as refine finds it at start-up (:func:`connect`): the model it serves, the local
tokenizer and configuration that belong to it, the largest ``logprobs`` it accepts, and whether refine's forcing
processor is registered there. :class:`~refine.backends.vllm.http.HTTPTransport` connects through it; that module's
docstring says what is checked and why."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Any

from ...errors import UpstreamError, require
from .processor import PROCESSOR_FQCN, flat_force_spec
from .wire import error_text, request_output

httpx = require("httpx", "httpx")

#: the largest ``max_logprobs`` :func:`connect` looks for when it is not given
MAX_LOGPROBS_SEARCH = 256
#: the text whose tokenization is compared with the upstream's
TOKENIZER_PROBE = "Refine checks: naïve café, 12345 + 0.5 = ?\n\tdone."


@dataclass
class UpstreamModelConfig:
    """What a :class:`~refine.backends.vllm.VLLMBackend` reads from an engine's ``ModelConfig``, for a model served
    upstream (``HTTPTransport.vllm_config.model_config``).

    Attributes:
        model: the model's name on the upstream (the ``model`` of every request).
        max_model_len: its context length (``/v1/models``).
        max_logprobs: the largest ``logprobs``/``prompt_logprobs`` the upstream accepts.
        vocab_size: the model's output rows (``config.json``; the tokenizer's length when there is none).
        generation_config: ``generation_config.json`` of the local folder (its ``eos_token_id`` counts as EOS).
        logits_processors: ``[PROCESSOR_FQCN]`` when the probe found the forcing processor, else empty.
        logprobs_mode: always ``"raw_logprobs"`` (checked by the probe).
    """

    model: str
    max_model_len: int
    max_logprobs: int
    vocab_size: int
    generation_config: dict[str, Any] = field(default_factory=dict)
    logits_processors: list[str] = field(default_factory=list)
    logprobs_mode: str = "raw_logprobs"

    def get_vocab_size(self) -> int:
        return self.vocab_size

    def try_get_generation_config(self) -> dict[str, Any]:
        return self.generation_config


@dataclass(frozen=True)
class Upstream:
    """Where a deployment answers: its base URL (no ``/v1``), the headers every request carries (the API key) and
    how long one request may take."""

    url: str
    headers: dict[str, str]
    timeout_s: float

    def request(self, method: str, path: str, **kw: Any) -> tuple[int, Any]:
        """One blocking request from the calling thread (start-up only): ``(200, parsed JSON)`` or
        ``(status, error text)``. Unreachable or refusing the key: :class:`UpstreamError`."""
        try:
            with httpx.Client(base_url=self.url, headers=self.headers, timeout=self.timeout_s) as client:
                r = client.request(method, path, **kw)
        except httpx.HTTPError as exc:
            raise UpstreamError(f"cannot reach the upstream vLLM server at {self.url}: {exc!r}") from exc
        if r.status_code == 401:
            raise UpstreamError(f"the upstream at {self.url} refused the API key ({error_text(401, r.text)}): "
                                "pass the key it was started with (--upstream-api-key / api_key=)")
        if r.status_code != 200:
            return r.status_code, error_text(r.status_code, r.text)
        try:
            return 200, r.json()
        except ValueError as exc:
            raise UpstreamError(f"the upstream at {self.url} answered {method} {path} with something that is not "
                                f"JSON: {r.text[:200]!r}") from exc


@dataclass(frozen=True)
class Connection:
    """What :func:`connect` found: the model's configuration, its tokenizer, and whether the upstream forces tokens
    (``forcing_problem``: why not; None when it does)."""

    model_config: UpstreamModelConfig
    tokenizer: Any
    forcing: bool
    forcing_problem: str | None


def connect(up: Upstream, *, model: str | None = None, max_logprobs: int | None = None,
            tokenizer: Any = None) -> Connection:
    """Ask the upstream what it serves (``model``: the one to use; None: the only one), load and check the local
    tokenizer (a folder, a loaded tokenizer, or None: the folder the upstream reports when it is on this machine),
    find ``max_logprobs`` (given: checked) and probe for the forcing processor. Raises :class:`UpstreamError`."""
    status, models = up.request("GET", "/v1/models")
    if status != 200 or not isinstance(models, dict):
        raise UpstreamError(f"the upstream at {up.url} does not answer GET /v1/models like a vLLM server: "
                            f"{models}")
    cards = [c for c in (models.get("data") or []) if isinstance(c, dict) and c.get("id")]
    if model is not None:
        cards = [c for c in cards if c["id"] == model]
        if not cards:
            raise UpstreamError(f"the upstream at {up.url} does not serve the model {model!r}")
    if len(cards) != 1:
        raise UpstreamError(f"the upstream at {up.url} serves {[c['id'] for c in cards]}: name the model")
    card = cards[0]
    name = str(card["id"])
    if not card.get("max_model_len"):
        raise UpstreamError(f"the upstream at {up.url} does not report its model's max_model_len")
    tok, folder = _load_tokenizer(tokenizer, card.get("root"))
    _check_tokenizer(up, tok, name)
    vocab, generation = folder_config(folder, tok)
    prompt = _probe_prompt(tok)
    k = _find_max_logprobs(up, name, prompt, max_logprobs)
    forcing, problem = _probe(up, name, prompt, k)
    config = UpstreamModelConfig(model=name, max_model_len=int(card["max_model_len"]), max_logprobs=k,
                                 vocab_size=vocab, generation_config=generation,
                                 logits_processors=[PROCESSOR_FQCN] if forcing else [])
    return Connection(config, tok, forcing, problem)


def _load_tokenizer(given: Any, root: Any) -> tuple[Any, str | None]:
    if given is not None and not isinstance(given, (str, os.PathLike)):
        return given, getattr(given, "name_or_path", None)
    folder = str(given) if given is not None else (str(root) if root and os.path.isdir(str(root)) else None)
    if folder is None:
        raise UpstreamError(f"the upstream serves a model from {root!r}, which is not a folder on this machine: "
                            "give the model's local folder for its tokenizer (--model / tokenizer=)")
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(folder), folder
    except Exception as exc:  # noqa: BLE001 - any failure: name the folder
        raise UpstreamError(f"cannot load a tokenizer from {folder!r}: {exc}") from exc


def _check_tokenizer(up: Upstream, tokenizer: Any, model: str) -> None:
    status, got = up.request("POST", "/tokenize", json={"model": model, "prompt": TOKENIZER_PROBE,
                                                         "add_special_tokens": False})
    if status == 404:
        return  # an upstream without /tokenize: nothing to compare with
    if status != 200:
        raise UpstreamError(f"the upstream at {up.url} failed POST /tokenize: {got}")
    theirs = [int(t) for t in got.get("tokens") or []]
    ours = list(tokenizer.encode(TOKENIZER_PROBE, add_special_tokens=False))
    if theirs != ours:
        raise UpstreamError(f"the local tokenizer ({getattr(tokenizer, 'name_or_path', '?')}) does not "
                            f"tokenize like the upstream's model {model!r} ({ours[:8]}... vs {theirs[:8]}...): "
                            "give the folder of the model the upstream serves")


def _probe_prompt(tokenizer: Any) -> list[int]:
    ids = list(tokenizer.encode("The capital of France is", add_special_tokens=True))
    return ids or [int(tokenizer.eos_token_id or 0)]


def _find_max_logprobs(up: Upstream, model: str, prompt: list[int], want: int | None) -> int:
    """``want`` (checked), else the largest accepted value up to :data:`MAX_LOGPROBS_SEARCH` (bisection with
    one-token requests; only HTTP 400 counts as a refusal)."""

    def accepted(k: int) -> bool:
        status, got = up.request("POST", "/v1/completions", json={
            "model": model, "prompt": prompt, "max_tokens": 1, "temperature": 0, "logprobs": k})
        if status not in (200, 400):
            raise UpstreamError(f"the upstream at {up.url} failed a completion: {got}")
        return status == 200

    if want is not None:
        if not accepted(want):
            raise UpstreamError(f"the upstream at {up.url} refuses logprobs={want}: start it with "
                                f"--max-logprobs {want} or more, or ask for fewer")
        return want
    lo, hi = 0, MAX_LOGPROBS_SEARCH  # accepted(lo) (0: vacuously), the answer is in [lo, hi]
    if accepted(hi):
        return hi
    hi -= 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if accepted(mid):
            lo = mid
        else:
            hi = mid - 1
    if lo < 1:
        raise UpstreamError(f"the upstream at {up.url} returns no log-probabilities (logprobs=1 refused)")
    return lo


def _probe(up: Upstream, model: str, prompt: list[int], k: int) -> tuple[bool, str | None]:
    """Force a token the model would not choose; (forcing works, why not). Raises when the upstream's
    log-probabilities are not the model's raw ones."""
    base = {"model": model, "prompt": prompt, "max_tokens": 2, "temperature": 0, "ignore_eos": True,
            "logprobs": k, "return_token_ids": True, "return_tokens_as_token_ids": True}
    status, plain = up.request("POST", "/v1/completions", json=base)
    if status != 200:
        raise UpstreamError(f"the upstream at {up.url} failed a probe completion: {plain}")
    free = request_output(prompt, plain, k).outputs[0]
    top = free.logprobs[0]
    if math.log(sum(math.exp(v.logprob) for v in top.values())) > 1e-2:  # probabilities sum to at most 1
        raise UpstreamError(f"the upstream at {up.url} returns logits, not log-probabilities: start it with "
                            "--logprobs-mode raw_logprobs (vLLM's default)")
    target = max(top, key=lambda t: (top[t].rank, t))  # the least likely of the top K
    if target == free.token_ids[0]:
        return False, "the probe found no token to force (a top-K of one token)"
    forcing = {**base, "vllm_xargs": flat_force_spec({"force": [target, target]})}
    status, forced = up.request("POST", "/v1/completions", json=forcing)
    if status != 200:
        raise UpstreamError(f"the upstream at {up.url} refused a forcing request: {forced}")
    got = request_output(prompt, forced, k).outputs[0]
    if got.token_ids != [target, target]:
        return False, (f"the upstream at {up.url} does not force tokens (asked for {[target, target]}, got "
                       f"{got.token_ids}): start vllm serve with --logits-processors {PROCESSOR_FQCN}, refine "
                       "installed in its environment")
    # the same prompt in another batch: equal up to the kernels' numerics (~1e-2 in bf16 on GPUs); after the
    # processors the forced token, the only one left, would have log-probability 0, the model gives it < -0.69
    if abs(got.logprobs[0][target].logprob - top[target].logprob) > 0.1:
        raise UpstreamError(f"the upstream at {up.url} reports the forced token's log-probability after the "
                            f"logits processors ({got.logprobs[0][target].logprob:.4f}, the model gives "
                            f"{top[target].logprob:.4f}): start it with --logprobs-mode raw_logprobs")
    return True, None


def folder_config(folder: str | None, tokenizer: Any) -> tuple[int, dict[str, Any]]:
    """(vocabulary size, generation config) of a local model folder; the tokenizer's length and ``{}`` for what
    it lacks."""
    vocab = len(tokenizer)
    generation: dict[str, Any] = {}
    if folder and os.path.isdir(folder):
        path = os.path.join(folder, "config.json")
        if os.path.exists(path):
            with open(path) as f:
                cfg = json.load(f)
            cfg = cfg.get("text_config", cfg) if isinstance(cfg.get("text_config"), dict) else cfg
            if isinstance(cfg.get("vocab_size"), int):
                vocab = int(cfg["vocab_size"])
        path = os.path.join(folder, "generation_config.json")
        if os.path.exists(path):
            with open(path) as f:
                generation = json.load(f)
    return vocab, generation
