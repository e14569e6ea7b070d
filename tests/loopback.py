"""Helpers for tests that run servers on loopback (``refine serve``, ``vllm serve``) or an in-process vLLM engine."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
import urllib.request
from typing import Any, Iterator

import pytest


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (now)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(proc: subprocess.Popen, url: str, log: Any, seconds: float, what: str) -> None:
    """Wait until ``url``/health answers; fail the test, with the end of ``log``, if ``proc`` exits first or
    ``seconds`` pass (then ``proc`` is killed)."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            pytest.fail(f"{what} exited: {log.read()[-3000:]}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2):
                return
        except OSError:
            time.sleep(1)
    proc.kill()
    log.seek(0)
    pytest.fail(f"{what} did not come up in {seconds:.0f} s: {log.read()[-3000:]}")


def stop(proc: subprocess.Popen) -> None:
    """Terminate ``proc``, killing it if it does not exit within 30 s."""
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


@contextlib.contextmanager
def running_llm(model_path: Any, **kw: Any) -> Iterator[Any]:
    """An in-process ``vllm.LLM`` from :func:`refine.backends.vllm.make_llm`, shut down afterwards; torch's thread
    count, which the engine changes, is restored."""
    import torch

    from refine.backends.vllm import make_llm

    threads = torch.get_num_threads()
    engine = make_llm(model_path, **kw)
    try:
        yield engine
    finally:
        try:
            engine.llm_engine.engine_core.shutdown()
        finally:
            torch.set_num_threads(threads)


def assert_threads_change_nothing(backend: Any, jobs: list[tuple[list[int], list[int]]], cfg: dict) -> None:
    """Refine each ``(prompt, output)`` of ``jobs`` alone, then all at once from a thread each: the same tokens,
    scores (1e-3) and edits."""
    from concurrent.futures import ThreadPoolExecutor

    from refine.api import refine_tokens

    alone = [refine_tokens(backend, p, y, cfg) for p, y in jobs]
    with ThreadPoolExecutor(len(jobs)) as pool:
        together = list(pool.map(lambda job: refine_tokens(backend, job[0], job[1], cfg), jobs))
    for a, b in zip(alone, together):
        assert a.tokens == b.tokens and abs(a.score - b.score) < 1e-3
        assert [(e.position, e.old, e.new) for e in a.edits] == [(e.position, e.old, e.new) for e in b.edits]
