"""The ``refine serve`` command: its flags (server, front mode, vLLM engine arguments passed through, one
``--cap-*`` per :class:`~refine.limits.RequestLimits` field) and starting the server."""

from __future__ import annotations

import json
import os
from typing import Any

from ..about import VLLM_INSTALL, pip_extra
from ..errors import ConfigError
from ..limits import RequestLimits


def limits_from_args(args) -> RequestLimits:
    """:class:`RequestLimits` from the ``--cap-*`` flags."""
    import dataclasses

    caps = {}
    for f in dataclasses.fields(RequestLimits):
        value = getattr(args, "cap_" + f.name, None)
        if value is not None:
            caps[f.name] = value
    return RequestLimits(**caps)


#: vLLM engine arguments ``refine serve`` passes through (flag ``--tensor-parallel-size`` -> ``vllm.LLM(
#: tensor_parallel_size=...)``): how the engine scales is vLLM's business
ENGINE_ARGS: dict[str, tuple[type, str]] = {
    "tensor_parallel_size": (int, "GPUs one model replica is split across"),
    "pipeline_parallel_size": (int, "pipeline stages"),
    "data_parallel_size": (int, "model replicas"),
    "max_model_len": (int, "context length (refine's default 2048)"),
    "gpu_memory_utilization": (float, "share of accelerator memory (on CPU: of RAM) the engine claims"),
    "kv_cache_memory_bytes": (int, "KV cache size in bytes (instead of a memory share)"),
    "dtype": (str, "weights and activations dtype (refine's default float32: exact scores)"),
    "quantization": (str, "vLLM quantization method"),
}


def engine_kwargs(args) -> dict[str, Any]:
    """The engine arguments given on the command line; several processes when the model is split or
    replicated."""
    kw = {name: getattr(args, name) for name in ENGINE_ARGS if getattr(args, name, None) is not None}
    if any(kw.get(k, 1) > 1 for k in ("tensor_parallel_size", "pipeline_parallel_size", "data_parallel_size")):
        kw["multiprocessing"] = True
    return kw


def cmd_serve(args) -> int:
    from ..config import plugin_paths
    from ..errors import require

    require("vllm", VLLM_INSTALL)
    uvicorn = require("uvicorn", pip_extra("vllm"))
    from ..integrations.vllm import prepare_defaults
    from ..models import resolve
    from .app import build_app
    from .engine import Engine

    try:
        defaults = json.loads(args.refine) if args.refine else None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"`--refine` is not valid JSON: {exc}") from exc
    if defaults is not None and not isinstance(defaults, dict):
        raise ConfigError(f"`--refine` has to be a JSON object of refine options, but is {defaults!r}")
    limits = limits_from_args(args)
    for path in args.allow_plugin:
        module, _, attr = path.partition(":")
        if not (module and attr):
            raise ConfigError(f"`--allow-plugin` takes 'module:Class' import paths, but got {path!r}")
    plugins = set(args.allow_plugin) | plugin_paths(defaults)
    api_key = args.api_key or os.environ.get("REFINE_API_KEY") or None
    defaults = prepare_defaults(defaults, limits)  # fails before an engine starts
    if args.upstream:
        engine = upstream_engine(args)
        name = engine.model_name
    else:
        for flag in ("upstream_api_key", "upstream_model"):
            if getattr(args, flag, None):
                raise ConfigError(f"`--{flag.replace('_', '-')}` goes with `--upstream URL`")
        path = resolve(args.model)
        engine = Engine(str(path), engine_kwargs(args), args.max_concurrent_refinements)
        name = path.name
    app = build_app(engine, args.served_model_name or name, limits, api_key, defaults, plugins)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def upstream_engine(args) -> Any:
    """The connected :class:`~refine.serve.upstream.UpstreamEngine` for ``--upstream`` (engine arguments are
    refused: they configure the upstream, where they were given to ``vllm serve``)."""
    from ..models import resolve
    from .upstream import UpstreamEngine

    given = [name for name in ENGINE_ARGS if getattr(args, name, None) is not None]
    if given:
        raise ConfigError(f"`--{given[0].replace('_', '-')}` is an engine argument: with `--upstream` the engine is "
                          "the upstream's, so give it to `vllm serve` there")
    key = args.upstream_api_key or os.environ.get("REFINE_UPSTREAM_API_KEY") or None
    tokenizer = str(resolve(args.model)) if args.model else None
    engine = UpstreamEngine(args.upstream, tokenizer, key, args.upstream_model, args.max_concurrent_refinements)
    engine.connect()
    return engine


def _field_docs(cls: type) -> dict[str, str]:
    """``name -> description`` from the ``Attributes:`` section of a dataclass's docstring."""
    import inspect
    import re

    docs: dict[str, str] = {}
    name = None
    for line in inspect.getdoc(cls).split("Attributes:", 1)[-1].splitlines():
        m = re.match(r"    (\w+): (.*)", line)
        if m:
            name, docs[m.group(1)] = m.group(1), m.group(2)
        elif name and line.startswith("        "):
            docs[name] += " " + line.strip()
    return docs


def add_parser(sub) -> None:
    import dataclasses

    p = sub.add_parser("serve", help="OpenAI-compatible server with per-request refinement (needs vLLM)")
    p.add_argument("--model", default=None, help="local model folder or .gguf (default: SmolLM2-135M-Instruct)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--served-model-name", default=None)
    p.add_argument("--refine", default=None,
                   help="JSON refine options applied to every request (requests' own vllm_xargs override them); "
                        "import paths named here are trusted")
    p.add_argument("--allow-plugin", action="append", default=[], metavar="MODULE:CLASS",
                   help="an import path (strategy, move or objective term) that requests may name; repeatable. "
                        "Requests can otherwise name only registered pieces")
    p.add_argument("--max-concurrent-refinements", type=int, default=16, metavar="N",
                   help="refinements running at once, their engine requests batched together (more wait for a "
                        "free slot; unrefined requests never wait for one). Default: 16")
    p.add_argument("--api-key", default=None,
                   help="require `Authorization: Bearer KEY` on /v1 endpoints (default: $REFINE_API_KEY, else none)")
    front = p.add_argument_group(
        "front", "serve in front of a running `vllm serve` (started with --logits-processors "
                 "refine.backends.vllm:ForcedTokensProcessor) instead of starting an engine")
    front.add_argument("--upstream", default=None, metavar="URL",
                       help="base URL of the vLLM server, e.g. http://10.0.0.5:8000; --model is then only the "
                            "model's local folder for its tokenizer (default: the upstream's model path, when it is "
                            "a folder on this machine)")
    front.add_argument("--upstream-api-key", default=None, metavar="KEY",
                       help="the upstream's API key (default: $REFINE_UPSTREAM_API_KEY, else none)")
    front.add_argument("--upstream-model", default=None, metavar="NAME",
                       help="the upstream model to use when it serves several")
    engine = p.add_argument_group("engine", "vLLM engine arguments, passed through")
    for name, (kind, what) in ENGINE_ARGS.items():
        engine.add_argument("--" + name.replace("_", "-"), dest=name, type=kind, default=None, help=what)
    caps = p.add_argument_group("caps", "the most one request may ask for (a request over a cap gets HTTP 400)")
    docs = _field_docs(RequestLimits)
    for f in dataclasses.fields(RequestLimits):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        kind = json.loads if f.name == "strategy_options" else type(default)
        caps.add_argument("--cap-" + f.name.replace("_", "-"), dest="cap_" + f.name, type=kind, default=None,
                          metavar="JSON" if f.name == "strategy_options" else "N",
                          help=f"{docs.get(f.name, '').replace('``', '')} Default: "
                               f"{json.dumps(default) if isinstance(default, dict) else default}".strip())
    p.set_defaults(func=cmd_serve)
