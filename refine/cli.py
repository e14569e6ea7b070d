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

from .about import DISTRIBUTION, __version__
from .api import DEFAULT_MAX_NEW_TOKENS
from .degeneration import DEFAULT_N, ECHO_N
from .strategy import STRATEGIES
from .errors import ConfigError, InputError


SCORER_HELP = ("a second model (local folder or .gguf file) that judges the edits --model proposes; "
               "both models' forward tokens count in the budget (default: --model scores itself)")


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
    start = p.add_mutually_exclusive_group()
    start.add_argument("--output", help="refine this answer instead of decoding one greedily")
    start.add_argument("--from-nothing", action="store_true",
                       help="no start: the sampler (--strategy power or power_smc) draws every output itself, "
                            "no greedy decode first")
    p.add_argument("--model", default=None, help="local model folder or .gguf file (default: SmolLM2-135M-Instruct)")
    p.add_argument("--scorer", default=None, help=SCORER_HELP)
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
    p.add_argument("--strategy", default="coordinate",
                   help=f"a registered strategy ({' | '.join(STRATEGIES.names())}) or module:Class")
    p.add_argument("--strategy-options", type=json.loads, default={},
                   help='JSON options of the strategy, e.g. \'{"pool": 4}\' for best_first, '
                        '\'{"alpha": 4, "blocks": 4, "steps": 10}\' for power')
    p.add_argument("--positions", default="margin", choices=["margin", "entropy", "left_to_right"])
    p.add_argument("--top-k", type=int, default=3)
    p.add_argument("--max-positions", type=int, default=8, help="positions per sweep (0: all)")
    p.add_argument("--length", default="free", choices=["free", "keep_eos", "fixed"])
    p.add_argument("--max-new-tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS,
                   help=f"cap on the answer's length (default {DEFAULT_MAX_NEW_TOKENS}); an answer that runs into "
                        "it is unfinished")
    p.add_argument("--forbid", action="append", metavar="TEXT",
                   help="never write a token whose text contains TEXT (repeatable; e.g. --forbid , keeps commas "
                        "out of re-decoded text); the output's own such tokens go only if an edit pays")
    p.add_argument("--phrase", action="append", metavar="TEXT",
                   help="text an edit may write whole, at the start, after a sentence or line, or at the end "
                        "(repeatable; pair it with a term that values it)")
    p.add_argument("--wrap", nargs=2, action="append", metavar=("BEFORE", "AFTER"),
                   help="text to put around the whole output in one edit, e.g. --wrap '\"' '\"' for quotation "
                        "marks (repeatable; pair it with a term that values it)")
    p.add_argument("--repeat-guard", type=int, default=DEFAULT_N,
                   help=f"refuse edits that add repeated word n-grams of this size or repeated line patterns "
                        f"(default {DEFAULT_N}; 0: off)")
    p.add_argument("--echo-guard", type=int, default=ECHO_N,
                   help=f"refuse edits that quote more spans of this many words of the prompt "
                        f"(default {ECHO_N}; 0: off)")
    p.add_argument("--max-sweeps", type=int, default=3)
    p.add_argument("--max-forward-tokens", type=int, default=None)
    p.add_argument("--max-seconds", type=float, default=None)
    p.add_argument("--patience", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_run)


def _add_batch(sub) -> None:
    from .batch import __doc__ as doc

    p = sub.add_parser("batch", help="refine every prompt of a JSONL file (resumable)", description=doc,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", required=True, help="JSONL file: {\"prompt\": ..., \"id\": ..., \"refine\": {...}}")
    p.add_argument("--output", required=True, help="JSONL file the results are appended to (a rerun resumes)")
    p.add_argument("--engine", default="hf", choices=["hf", "vllm"], help="hf (default) or vllm (needs vLLM)")
    p.add_argument("--model", default=None, help="local model folder or .gguf file (default: SmolLM2-135M-Instruct)")
    p.add_argument("--refine", type=json.loads, default={}, help="JSON refine options for every prompt")
    p.add_argument("--max-new-tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS,
                   help=f"output cap for every prompt (default {DEFAULT_MAX_NEW_TOKENS})")
    p.add_argument("--chunk", type=int, default=8,
                   help="prompts whose initial answers are decoded together (--engine vllm; hf decodes one by one)")
    p.add_argument("--scorer", default=None, help=SCORER_HELP)
    p.add_argument("--no-chat", action="store_true", help="do not apply the chat template")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_batch)


def cmd_batch(args) -> int:
    from .batch import read_items, run_batch
    from .batch_engines import hf_refiner, item_config, vllm_refiner
    from .config import RefineConfig

    if not isinstance(args.refine, dict):
        raise ConfigError("--refine must be a JSON object of refine options")
    if "max_new_tokens" in args.refine:
        raise ConfigError("--refine sets \"max_new_tokens\", which `refine batch` takes from --max-new-tokens "
                          f"(now {args.max_new_tokens}): pass it there")
    base = dict(args.refine) if args.scorer is None else {**args.refine, "scorer": args.scorer}
    RefineConfig.from_dict({**base, "max_new_tokens": args.max_new_tokens})  # bad options fail first
    items = read_items(args.input)
    for item in items:  # and every prompt's own options, before any work
        item_config(base, item, args.max_new_tokens)
    chat = False if args.no_chat else None
    if args.engine == "vllm":
        from .backends.vllm import VLLMBackend, make_llm

        llm = make_llm(args.model)
        refiner = vllm_refiner(llm, VLLMBackend(llm), base, args.max_new_tokens, chat)
    else:
        from .api import resolve_backend

        refiner = hf_refiner(resolve_backend(args.model), base, args.max_new_tokens, chat)
    written, skipped = run_batch(items, args.output, refiner, args.chunk, not args.no_progress)
    print(f"refine batch: {written} refined, {skipped} already in {args.output}, {len(items)} in all",
          file=sys.stderr)
    return 0


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


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def cmd_run(args) -> int:
    import time

    from .api import check_prompt, generate_greedy, refine_tokens, resolve_backend, resolve_scorer
    from .config import Budget, RefineConfig
    from .diff import token_diff

    check_prompt(args.prompt)
    if args.output is not None and not args.output.strip():
        raise InputError("--output is empty; give an answer to refine, or leave --output out to refine the model's "
                         "own answer")
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
        repeat_guard=args.repeat_guard or None,
        echo_guard=args.echo_guard or None,
        phrases=tuple(args.phrase or ()),
        wrap=tuple(tuple(w) for w in args.wrap or ()),
        forbid=tuple(args.forbid or ()),
        seed=args.seed,
        scorer=args.scorer,
        budget=Budget(max_sweeps=args.max_sweeps, max_forward_tokens=args.max_forward_tokens,
                      max_seconds=args.max_seconds, patience=args.patience),
    )
    t0 = time.perf_counter()
    backend = resolve_backend(args.model)
    config = resolve_scorer(config)
    load_s = time.perf_counter() - t0
    prompt_ids = backend.encode_prompt(args.prompt, chat=False if args.no_chat else None)
    t1 = time.perf_counter()
    if args.from_nothing:
        output_ids = []
    elif args.output is None:
        output_ids = generate_greedy(backend, prompt_ids, args.max_new_tokens, config.topk_store, forbid=config.forbid)
    else:
        output_ids = backend.tokenizer.encode(args.output) + [backend.tokenizer.eos]
    gen_s = time.perf_counter() - t1
    callback, close = _progress_bar(args.max_forward_tokens, not args.no_progress and not args.json)
    try:
        result = refine_tokens(backend, prompt_ids, output_ids, config, callback, scorer_prompt=args.prompt,
                               chat=False if args.no_chat else None)
    finally:
        close()
    if args.json:
        d = result.to_dict()
        d["config"] = config.to_dict()
        if args.scorer is not None:
            d["config"]["scorer"] = args.scorer
        d["timing"] = {"load_s": load_s, "greedy_s": gen_s, "refine_s": result.stats.seconds}
        print(json.dumps(d, indent=2))
        return 0
    tv = backend.tokenizer
    color = sys.stdout.isatty()
    print(f"objective : {config.objective_fn.describe()}"
          + ("" if args.scorer is None else f" (scored by {args.scorer})"))
    if not result.initial_tokens:  # a sampler from nothing: no start to compare with
        print(f"output    : {result.text!r}")
        print(f"score     : {result.score:.4f}")
        for name in result.terms:
            print(f"  {name:<8}: {result.terms[name]:.4f}")
        print(f"length    : {len(result.tokens)} tokens")
        print(f"finished  : {_yes(result.ended)}")
        _print_compute(result, args, None)
        return 0
    print(f"initial   : {result.initial_text!r}")
    print(f"refined   : {result.text!r}")
    print(f"diff      : {token_diff(result.initial_tokens, result.tokens, tv.token_str, color)}")
    print(f"score     : {result.initial_score:.4f} -> {result.score:.4f} ({result.gain:+.4f})")
    for name in result.terms:
        print(f"  {name:<8}: {result.initial_terms[name]:.4f} -> {result.terms[name]:.4f}")
    print(f"length    : {len(result.initial_tokens)} -> {len(result.tokens)} tokens")
    print(f"finished  : {_yes(result.initial_ended)} -> {_yes(result.ended)}"
          + ("" if result.initial_ended else f" (the answer ran into --max-new-tokens {args.max_new_tokens})"))
    for k, e in enumerate(result.edits, 1):
        old = "".join(tv.token_str(t) for t in e.old)
        new = "".join(tv.token_str(t) for t in e.new)
        print(f"edit {k:<4} : {e.move} @{e.position}: {old!r} -> {new!r} ({e.gain:+.4f})")
    if not result.edits:
        print("edits     : none (no candidate beat the initial output)")
    _print_compute(result, args, gen_s)
    return 0


def _print_compute(result, args, gen_s: float | None) -> None:
    """The compute line (``gen_s``: seconds of the greedy decode refinement started from; None: none)."""
    st = result.stats
    greedy = "" if gen_s is None else f" (greedy decode {gen_s:.1f} s)"
    print(f"compute   : {st.forward_tokens} forward tokens in {st.forward_calls} calls, {st.candidates} candidates, "
          f"{st.refused} refused, {st.steps} steps, {st.sweeps} sweeps, {st.seconds:.1f} s{greedy}; "
          f"stopped: {st.stop_reason}")
    if args.scorer is not None:
        print(f"scorer    : {st.scorer_forward_tokens} of those forward tokens in {st.scorer_forward_calls} calls")


def _add_optional(sub) -> None:
    """``serve`` and ``bench``, each listed when its module imports here.

    The benchmarks live in the source tree (the ``benchmarks/`` package of a checkout or of the
    sdist), not in the wheel: without them ``refine bench`` says where to get them.
    """
    import importlib.util

    if importlib.util.find_spec("refine.serve"):
        importlib.import_module("refine.serve").add_parser(sub)
    bench = importlib.util.find_spec("benchmarks") and importlib.util.find_spec("benchmarks.cli")
    module = importlib.import_module("benchmarks.cli") if bench else None
    if module is not None and hasattr(module, "add_parser"):
        module.add_parser(sub)
        return
    p = sub.add_parser("bench", help="benchmark suites (need a source checkout)",
                       description="The benchmark suites are not installed with the package.")
    p.set_defaults(func=_no_benchmarks)


def _no_benchmarks(args: argparse.Namespace) -> int:
    from .errors import RefineError

    raise RefineError(
        "the benchmark suites are not installed with the package: they are the `benchmarks/` folder "
        f"of the {DISTRIBUTION} source tree (a git checkout or the sdist). From the root of that tree, "
        "run `python -m benchmarks --help`."
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="refine", description="Decoding-time output refinement for LLMs.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__} ({DISTRIBUTION})")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_run(sub)
    _add_batch(sub)
    _add_optional(sub)
    args = parser.parse_args(argv)
    from .errors import RefineError

    try:
        return int(args.func(args) or 0)
    except RefineError as exc:
        print(f"refine: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
