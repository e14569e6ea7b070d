"""Command line: ``refine run "prompt"`` (refine a generation), ``refine bench`` and ``refine serve``.

``refine run`` decodes an answer greedily with the model (default: the embedded
SmolLM2-135M-Instruct), refines it, and prints the initial and refined text, a
token-level diff, the objective before and after, each accepted edit, and the compute spent.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence


def _objective_arg(text: str):
    """``mean`` | ``sum,length=0.3`` | a JSON object."""
    text = text.strip()
    if text.startswith("{"):
        return json.loads(text)
    spec = {}
    for part in text.split(","):
        name, _, weight = part.partition("=")
        spec[name.strip()] = float(weight) if weight else 1.0
    return spec


def _add_run(sub) -> None:
    p = sub.add_parser("run", help="refine the model's answer to a prompt", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("prompt", help="the prompt (a chat template is applied if the model has one)")
    p.add_argument("--output", help="refine this answer instead of decoding one greedily")
    p.add_argument("--model", default=None, help="local model folder or .gguf file (default: SmolLM2-135M-Instruct)")
    p.add_argument("--no-chat", action="store_true", help="do not apply the chat template")
    p.add_argument("--objective", type=_objective_arg, default="mean,repetition=1",
                   help="term name, 'name=weight,...', or JSON (default: mean,repetition=1)")
    p.add_argument("--moves", default="regenerate",
                   help="comma-separated moves (regenerate,regenerate_beam,substitute,delete,insert)")
    p.add_argument("--regen-beam", type=int, default=4, help="beam width of the regenerate_beam move (default 4)")
    p.add_argument("--prune-margin", type=float, default=0.0,
                   help="stop re-decoding a suffix that falls this far behind (default 0; negative: never)")
    p.add_argument("--prune-keep", type=int, default=None,
                   help="spare the N best-ranked suffixes of a batch from --prune-margin (default: margin only)")
    p.add_argument("--strategy", default="coordinate", help="coordinate | best_first | power | module:Class")
    p.add_argument("--strategy-options", type=json.loads, default={},
                   help='JSON options of the strategy, e.g. \'{"pool": 4}\' for best_first, '
                        '\'{"alpha": 4, "blocks": 4, "steps": 10}\' for power')
    p.add_argument("--positions", default="margin", choices=["margin", "entropy", "left_to_right"])
    p.add_argument("--top-k", type=int, default=3)
    p.add_argument("--max-positions", type=int, default=8, help="positions per sweep (0: all)")
    p.add_argument("--length", default="free", choices=["free", "keep_eos", "fixed"])
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--max-sweeps", type=int, default=3)
    p.add_argument("--max-forward-tokens", type=int, default=None)
    p.add_argument("--max-seconds", type=float, default=None)
    p.add_argument("--patience", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_run)


def _progress_bar(total: int | None, enabled: bool):
    """A tqdm bar over forward tokens; returns (callback, close)."""
    if not enabled:
        return None, lambda: None
    from tqdm.auto import tqdm

    bar = tqdm(total=total, unit="tok", desc="refining", file=sys.stderr, leave=False, dynamic_ncols=True)
    state = {"n": 0}

    def update(search) -> None:
        spent = search.spent
        bar.update(spent - state["n"])
        state["n"] = spent
        bar.set_postfix(score=f"{search.current.value:.4f}", edits=search.stats.accepted, refresh=False)

    return update, bar.close


def cmd_run(args) -> int:
    import time

    from .api import generate_greedy, refine_tokens, resolve_backend
    from .config import Budget, RefineConfig
    from .diff import token_diff

    config = RefineConfig(
        objective=args.objective,
        strategy=args.strategy,
        strategy_options=args.strategy_options,
        moves=args.moves,
        top_k=args.top_k,
        regen_beam=args.regen_beam,
        positions=args.positions,
        max_positions=args.max_positions or None,
        length=args.length,
        prune_margin=None if args.prune_margin < 0 else args.prune_margin,
        prune_keep=args.prune_keep,
        max_new_tokens=args.max_new_tokens,
        seed=args.seed,
        budget=Budget(max_sweeps=args.max_sweeps, max_forward_tokens=args.max_forward_tokens,
                      max_seconds=args.max_seconds, patience=args.patience),
    )
    t0 = time.perf_counter()
    backend = resolve_backend(args.model)
    load_s = time.perf_counter() - t0
    prompt_ids = backend.encode_prompt(args.prompt, chat=False if args.no_chat else None)
    t1 = time.perf_counter()
    if args.output is None:
        output_ids = generate_greedy(backend, prompt_ids, args.max_new_tokens, config.topk_store)
    else:
        output_ids = backend.tokenizer.encode(args.output) + [backend.tokenizer.eos]
    gen_s = time.perf_counter() - t1
    callback, close = _progress_bar(args.max_forward_tokens, not args.no_progress and not args.json)
    try:
        result = refine_tokens(backend, prompt_ids, output_ids, config, callback)
    finally:
        close()
    if args.json:
        d = result.to_dict()
        d["config"] = config.to_dict()
        d["timing"] = {"load_s": load_s, "greedy_s": gen_s, "refine_s": result.stats.seconds}
        print(json.dumps(d, indent=2))
        return 0
    tv = backend.tokenizer
    color = sys.stdout.isatty()
    st = result.stats
    print(f"objective : {config.objective_fn.describe()}")
    print(f"initial   : {result.initial_text!r}")
    print(f"refined   : {result.text!r}")
    print(f"diff      : {token_diff(result.initial_tokens, result.tokens, tv.token_str, color)}")
    print(f"score     : {result.initial_score:.4f} -> {result.score:.4f} ({result.gain:+.4f})")
    for name in result.terms:
        print(f"  {name:<8}: {result.initial_terms[name]:.4f} -> {result.terms[name]:.4f}")
    print(f"length    : {len(result.initial_tokens)} -> {len(result.tokens)} tokens")
    for k, e in enumerate(result.edits, 1):
        old = "".join(tv.token_str(t) for t in e.old)
        new = "".join(tv.token_str(t) for t in e.new)
        print(f"edit {k:<4} : {e.move} @{e.position}: {old!r} -> {new!r} ({e.gain:+.4f})")
    if not result.edits:
        print("edits     : none (no candidate beat the initial output)")
    print(f"compute   : {st.forward_tokens} forward tokens in {st.forward_calls} calls, {st.candidates} candidates, "
          f"{st.steps} steps, {st.sweeps} sweeps, {st.seconds:.1f} s (greedy decode {gen_s:.1f} s); "
          f"stopped: {st.stop_reason}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="refine", description="Decoding-time output refinement for LLMs.")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_run(sub)
    import importlib
    import importlib.util

    for module in ("refine.serve", "benchmarks.cli"):  # optional sub-commands, present when installed
        if importlib.util.find_spec(module.split(".")[0]) and importlib.util.find_spec(module):
            importlib.import_module(module).add_parser(sub)
    args = parser.parse_args(argv)
    from .errors import RefineError

    try:
        return int(args.func(args) or 0)
    except RefineError as exc:
        print(f"refine: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
