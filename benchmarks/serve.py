"""Suite ``serve``: ``refine serve`` under concurrent load, against the same load served one at a time.

The suite starts ``refine serve`` (the default model on a CPU vLLM engine) as a subprocess on loopback and
sends it one fixed list of chat requests, drawn with the run's seed from the IFEval instruction prompts:

- **plain** requests (no refinement; vLLM's own decoding),
- **refined** requests (``vllm_xargs`` turn refinement on with the library's defaults, one sweep),
- **disconnect**: a refined request whose client hangs up after :data:`DISCONNECT_AFTER` seconds,
- **bad**: malformed JSON, an option over a server cap, or a value of the wrong type (each must get a 400).

About 10% of requests disconnect and 10% are bad; the rest are half plain, half refined. The same list is
sent by 1, 4, 16 and 32 concurrent clients (each client sends its share in order). Concurrency 1 is the
one-at-a-time reference: its answers are the expected answers of every other level (decoding is greedy and
refinement deterministic, so a concurrent answer must be the same text), and its throughput the baseline.

Measured per level: requests and output tokens per second (disconnected requests excluded), p50/p95/p99
latency per kind, ``/health`` latency (polled every :data:`HEALTH_EVERY` seconds during the load), errors,
**lost** requests (a plain or refined request without a 200 answer) and **wrong** ones (a 200 whose text
differs from the one-at-a-time answer). Headline keys: ``serve.throughput_ratio_16`` (refined requests per
second at 16 clients over 1 client), ``serve.health_p99_ms`` (worst level's p99), ``serve.lost`` (lost plus
wrong over all levels).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import data, report
from .context import Context

#: the data files the suite reads
DATA_FILES = (data.IFEVAL,)
TITLE = "Serving: refine serve under concurrent load"
SUMMARY_PREFIXES = ("serve.",)
KINDS = ("plain", "refined", "disconnect", "bad")
#: a disconnecting client hangs up this many seconds after sending
DISCONNECT_AFTER = 0.5
#: /health is polled this often during a load level
HEALTH_EVERY = 0.05
#: server-side caps the suite starts the server with (a bad request goes over ``max-tokens``)
CAPS = {"max-tokens": 64, "max-sweeps": 2, "max-seconds": 120}


@dataclass(frozen=True)
class Settings:
    requests: int
    levels: tuple[int, ...]
    max_tokens: int
    prompts: int


FULL = Settings(requests=64, levels=(1, 4, 16, 32), max_tokens=32, prompts=16)
QUICK = Settings(requests=10, levels=(1, 4), max_tokens=12, prompts=4)


def plan(s: Settings, seed: int) -> list[tuple[str, int]]:
    """The request list: ``(kind, prompt index)``, 10% disconnect, 10% bad, the rest half plain, half refined.

    >>> kinds = [k for k, _ in plan(FULL, 0)]
    >>> len(kinds), kinds.count("disconnect"), kinds.count("bad"), kinds.count("plain") == kinds.count("refined")
    (64, 6, 6, True)
    """
    rng = np.random.default_rng(seed)
    n_odd = max(1, round(0.1 * s.requests))
    rest = s.requests - 2 * n_odd
    kinds = ["disconnect"] * n_odd + ["bad"] * n_odd + ["plain"] * (rest - rest // 2) + ["refined"] * (rest // 2)
    kinds = [kinds[i] for i in rng.permutation(len(kinds))]
    return [(k, int(rng.integers(s.prompts))) for k in kinds]


def body(kind: str, prompt: str, s: Settings, index: int) -> bytes:
    """The request body of one planned request (bad ones rotate through three kinds of mistake)."""
    req: dict[str, Any] = {"messages": [{"role": "user", "content": prompt}], "max_tokens": s.max_tokens,
                           "temperature": 0}
    if kind in ("refined", "disconnect"):
        req["vllm_xargs"] = {"refine_budget_max_sweeps": 1}
    if kind == "bad":
        mistake = index % 3
        if mistake == 0:
            return b'{"messages": [{"role": "user", "content": "unterminated'
        if mistake == 1:
            req["max_tokens"] = CAPS["max-tokens"] + 1
        else:
            req["temperature"] = "zero"
    return json.dumps(req).encode()


# ---------------------------------------------------------------------------- the server


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(model: str | None, log_path: Path, timeout: float = 600) -> tuple[subprocess.Popen, str]:
    """Start ``refine serve`` on a free loopback port; return the process and its base URL once /health answers."""
    import urllib.request

    port = free_port()
    caps = [a for k, v in CAPS.items() for a in (f"--cap-{k}", str(v))]
    cmd = [sys.executable, "-m", "refine.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
           "--max-model-len", "1024", *caps]
    if model:
        cmd += ["--model", model]
    log = open(log_path, "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"refine serve exited with {proc.returncode}; log: {log_path}")
        try:
            with urllib.request.urlopen(base + "/health", timeout=2):
                return proc, base
        except OSError:
            time.sleep(1)
    proc.kill()
    raise RuntimeError(f"refine serve did not answer /health within {timeout:.0f} s; log: {log_path}")


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# ---------------------------------------------------------------------------- the load


async def _one(client, base: str, kind: str, payload: bytes) -> dict[str, Any]:
    t0 = time.perf_counter()
    rec: dict[str, Any] = {"kind": kind, "status": None, "text": None, "tokens": 0}
    request = client.post(base + "/v1/chat/completions", content=payload,
                          headers={"Content-Type": "application/json"})
    try:
        if kind == "disconnect":
            try:
                await asyncio.wait_for(request, DISCONNECT_AFTER)
                rec["status"] = "finished before the hang-up"
            except asyncio.TimeoutError:
                rec["status"] = "hung up"
        else:
            r = await request
            rec["status"] = r.status_code
            if r.status_code == 200:
                d = r.json()
                rec["text"] = d["choices"][0]["message"]["content"]
                rec["tokens"] = int(d.get("usage", {}).get("completion_tokens", 0))
    except Exception as exc:  # noqa: BLE001 - a transport failure is a lost request, recorded with its reason
        rec["status"] = f"{type(exc).__name__}: {exc}"
    rec["seconds"] = time.perf_counter() - t0
    return rec


async def _health(client, base: str, stop: asyncio.Event, out: list[float]) -> None:
    while not stop.is_set():
        t0 = time.perf_counter()
        try:
            r = await client.get(base + "/health", timeout=10)
            out.append((time.perf_counter() - t0) * 1000 if r.status_code == 200 else float("inf"))
        except Exception:  # noqa: BLE001 - an unanswered health check counts as infinitely slow
            out.append(float("inf"))
        await asyncio.sleep(HEALTH_EVERY)


async def load(base: str, requests: list[tuple[str, bytes]], clients: int) -> dict[str, Any]:
    """Send ``requests`` from ``clients`` concurrent clients (client c sends requests c, c + clients, ...)."""
    import httpx

    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        records: list[dict | None] = [None] * len(requests)

        async def run_client(c: int) -> None:
            for i in range(c, len(requests), clients):
                kind, payload = requests[i]
                records[i] = await _one(client, base, kind, payload)

        stop = asyncio.Event()
        health: list[float] = []
        poller = asyncio.create_task(_health(client, base, stop, health))
        t0 = time.perf_counter()
        await asyncio.gather(*(run_client(c) for c in range(clients)))
        seconds = time.perf_counter() - t0
        stop.set()
        await poller
    return {"clients": clients, "seconds": seconds, "records": records, "health_ms": health}


def cpu_seconds(proc: subprocess.Popen) -> dict[str, float]:
    """CPU seconds (user + system) used so far by the server's processes, by role: ``server`` (the API process and
    its other children), ``engine core`` (vLLM's scheduler process) and ``worker`` (the process running the
    model). Empty without ``psutil`` (it comes with vLLM)."""
    try:
        import psutil
    except ImportError:
        return {}
    out: dict[str, float] = {}
    try:
        root = psutil.Process(proc.pid)
        tree = [root] + root.children(recursive=True)
    except psutil.Error:
        return {}
    for q in tree:
        try:
            name, t = q.name(), q.cpu_times()
        except psutil.Error:
            continue
        role = "engine core" if "EngineCore" in name else "worker" if "Worker" in name else "server"
        out[role] = out.get(role, 0.0) + t.user + t.system
    return out


def cpu_shares(before: dict[str, float], after: dict[str, float], seconds: float) -> dict[str, float]:
    """Per role, its CPU use over a level as a percentage of one core."""
    return {role: 100.0 * (after[role] - before.get(role, 0.0)) / seconds for role in after if seconds > 0}


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def summarise(level: dict[str, Any], expected: dict[int, str | None]) -> dict[str, Any]:
    """Throughput, latency percentiles, health latency, errors, lost and wrong answers of one level."""
    recs = level["records"]
    answered = [r for r in recs if r["kind"] in ("plain", "refined")]
    ok = [r for r in answered if r["status"] == 200]
    lost = [r for r in answered if r["status"] != 200]
    wrong = [i for i, r in enumerate(recs)
             if r["kind"] in ("plain", "refined") and r["status"] == 200 and expected.get(i) is not None
             and r["text"] != expected[i]]
    bad = [r for r in recs if r["kind"] == "bad"]
    out = {
        "clients": level["clients"], "seconds": level["seconds"],
        "requests_per_s": len(ok) / level["seconds"],
        "refined_per_s": sum(r["kind"] == "refined" for r in ok) / level["seconds"],
        "output_tokens_per_s": sum(r["tokens"] for r in ok) / level["seconds"],
        "lost": len(lost), "wrong": len(wrong),
        "bad_refused": sum(r["status"] == 400 for r in bad), "bad": len(bad),
        "disconnected": sum(r["kind"] == "disconnect" for r in recs),
        "health_p50_ms": pct(level["health_ms"], 50), "health_p99_ms": pct(level["health_ms"], 99),
        "health_max_ms": max(level["health_ms"], default=float("nan")), "health_checks": len(level["health_ms"]),
        "lost_reasons": sorted({str(r["status"]) for r in lost}),
    }
    for kind in ("plain", "refined"):
        lat = [r["seconds"] for r in ok if r["kind"] == kind]
        for q in (50, 95, 99):
            out[f"{kind}_p{q}_s"] = pct(lat, q)
    return out


def run(ctx: Context) -> dict:
    s = ctx.pick(FULL, QUICK)
    if ctx.limit is not None:
        s = Settings(requests=ctx.limit, levels=s.levels, max_tokens=s.max_tokens, prompts=s.prompts)
    rows = data.read_jsonl(ctx.data_dir, data.IFEVAL)
    prompts = [r["prompt"] for r in rows if len(r["prompt"]) <= data.MAX_PROMPT_CHARS][: s.prompts]
    s = Settings(s.requests, s.levels, s.max_tokens, len(prompts))
    planned = plan(s, ctx.seed)
    requests = [(kind, body(kind, prompts[p], s, i)) for i, (kind, p) in enumerate(planned)]
    folder = Path(tempfile.mkdtemp(prefix="refine-serve-bench-"))
    proc, base = start_server(getattr(ctx.runner, "model_path", None), folder / "server.log")
    levels = []
    try:
        asyncio.run(load(base, requests[:2], 1))  # warm-up: the first requests pay one-time costs
        expected: dict[int, str | None] = {}
        for clients in ctx.bar(s.levels, "serve: concurrency"):
            cpu0 = cpu_seconds(proc)
            level = asyncio.run(load(base, requests, clients))
            cpu = cpu_shares(cpu0, cpu_seconds(proc), level["seconds"])
            if clients == 1:
                expected = {i: r["text"] for i, r in enumerate(level["records"])}
            summ = summarise(level, expected)
            summ["examples"] = [r for r in level["records"] if r["kind"] in ("refined", "bad")][:3]
            summ["cpu_percent"] = cpu
            levels.append(summ)
    finally:
        stop_server(proc)
    base_level = levels[0]
    for lv in levels:
        lv["throughput_ratio"] = lv["requests_per_s"] / base_level["requests_per_s"]
        lv["refined_ratio"] = (lv["refined_per_s"] / base_level["refined_per_s"]
                               if base_level["refined_per_s"] else float("nan"))
    kinds = [k for k, _ in planned]
    return {"suite": "serve", "title": TITLE, "settings": asdict(s), "caps": CAPS,
            "plan": {k: kinds.count(k) for k in KINDS}, "levels": levels, "server_log": str(folder / "server.log")}


def headline(results: dict) -> dict[str, float]:
    by = {lv["clients"]: lv for lv in results["levels"]}
    out = {"serve.health_p99_ms": max(lv["health_p99_ms"] for lv in results["levels"]),
           "serve.lost": float(sum(lv["lost"] + lv["wrong"] for lv in results["levels"]))}
    if 16 in by:
        out["serve.throughput_ratio_16"] = by[16]["refined_ratio"]
    return out


def targets(results: dict) -> list[dict]:
    by = {lv["clients"]: lv for lv in results["levels"]}
    h = headline(results)
    rows = []
    if 16 in by:
        rows.append({"name": "refined requests/s at 16 clients vs one at a time", "target": ">= 4x",
                     "value": f"{by[16]['refined_ratio']:.2f}x", "met": by[16]["refined_ratio"] >= 4})
    rows.append({"name": "/health p99 under load (worst level)", "target": "< 100 ms",
                 "value": f"{h['serve.health_p99_ms']:.1f} ms", "met": h["serve.health_p99_ms"] < 100})
    rows.append({"name": "lost or wrong answers (all levels)", "target": "0", "value": f"{h['serve.lost']:.0f}",
                 "met": h["serve.lost"] == 0})
    return rows


def plot(results: dict, folder: Path) -> list[str]:
    """Latency (p50/p99 per kind) and throughput against the number of concurrent clients."""
    levels = results["levels"]
    xs = [lv["clients"] for lv in levels]
    fig, (ax, ax2) = report.new_figure(2)
    for j, kind in enumerate(("plain", "refined")):
        ax.plot(xs, [lv[f"{kind}_p50_s"] for lv in levels], "o-", color=f"C{j}", label=f"{kind} p50")
        ax.plot(xs, [lv[f"{kind}_p99_s"] for lv in levels], "s--", color=f"C{j}", label=f"{kind} p99")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("concurrent clients")
    ax.set_ylabel("latency (s)")
    ax.set_title("latency")
    ax.legend(fontsize=7)
    ax2.plot(xs, [lv["requests_per_s"] for lv in levels], "o-", label="all answered requests / s")
    ax2.plot(xs, [lv["refined_per_s"] for lv in levels], "s-", label="refined requests / s")
    ax2.set_xscale("log", base=2)
    ax2.set_xlabel("concurrent clients")
    ax2.set_title("throughput")
    ax2.legend(fontsize=7)
    return [report.save_figure(fig, folder / "serve.png")]


def cpu_cell(cpu: dict[str, float]) -> str:
    if not cpu:
        return "–"
    return " / ".join(f"{cpu[k]:.0f}" if k in cpu else "–" for k in ("server", "engine core", "worker"))


def render(results: dict, plots: list[str]) -> str:
    s = results["settings"]
    plan_ = results["plan"]
    head = ["clients", "seconds", "requests/s", "refined/s", "output tokens/s", "x one at a time (refined)",
            "plain p50/p95/p99 (s)", "refined p50/p95/p99 (s)", "/health p50/p99 (ms)", "lost", "wrong",
            "bad refused", "CPU, % of a core (server / engine core / worker)"]
    rows = []
    for lv in results["levels"]:
        rows.append((lv["clients"], f"{lv['seconds']:.1f}", f"{lv['requests_per_s']:.2f}",
                     f"{lv['refined_per_s']:.2f}", f"{lv['output_tokens_per_s']:.1f}", f"{lv['refined_ratio']:.2f}",
                     "/".join(f"{lv[f'plain_p{q}_s']:.2f}" for q in (50, 95, 99)),
                     "/".join(f"{lv[f'refined_p{q}_s']:.2f}" for q in (50, 95, 99)),
                     f"{lv['health_p50_ms']:.1f}/{lv['health_p99_ms']:.1f}", lv["lost"], lv["wrong"],
                     f"{lv['bad_refused']}/{lv['bad']}", cpu_cell(lv.get("cpu_percent") or {})))
    parts = [report.header(TITLE, results), "## What was measured", "",
             f"- `refine serve` with the default model on the CPU vLLM engine, started by the suite on loopback "
             f"with caps {results['caps']}.",
             f"- {s['requests']} chat requests per level ({plan_['plain']} plain, {plan_['refined']} refined with "
             f"one sweep, {plan_['disconnect']} whose client hangs up after {DISCONNECT_AFTER} s, {plan_['bad']} "
             f"bad bodies), at most {s['max_tokens']} new tokens, over {s['prompts']} IFEval prompts; the same "
             "list at every level, split over the clients.",
             "- Concurrency 1 is the one-at-a-time reference: its answers are the expected answers of the other "
             "levels (**wrong** = a different text), and its throughput the baseline. **Lost** = a plain or "
             "refined request without a 200.",
             f"- `/health` polled every {HEALTH_EVERY * 1000:.0f} ms during each level.",
             "- CPU: each server process's CPU time over the level, as a share of one core (the API server with "
             "its refinement threads; vLLM's engine core, which schedules; the worker, which runs the model). On "
             "a CPU vLLM pins the worker to its own cores and leaves one for the rest: a worker near 100% "
             "(of its one core here) means the model's compute is what bounds throughput.", "",
             "## Targets", "", report.targets_table(targets(results)), "",
             "## Per level", "", report.table(head, rows), ""]
    parts += [f"![{p}]({p})" for p in plots]
    return "\n".join(parts) + "\n"
