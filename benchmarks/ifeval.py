"""Suite ``ifeval``: verifiable instructions, with the checkers' pass rate as refinement's reward.

IFEval prompts carry instructions a program can check ("answer in lowercase", "no commas",
"end with 'Is there anything else I can help with?'"). Refinement gets the share of the prompt's
instructions that an output follows as a ``reward`` term, on top of the library's default
objective; best-of-N is reranked by that same objective. Prompts are those whose every
instruction has a checker (:mod:`benchmarks.instructions`) and whose demands fit the output cap
(:func:`benchmarks.data.ifeval_checkable`).

Metrics: **strict accuracy** (every instruction of the prompt followed; IFEval's prompt-level
strict score), instruction-level accuracy, the good-output rate (strictly correct, finished, no
repeated word trigram), the judge's mean log P per token, cost and time.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from refine.config import RefineConfig
from refine.degeneration import repeated_ngrams
from refine.forbid import forbidden_ids

from . import data, report
from .bootstrap import versus
from .common import method_rows
from .context import Context
from .instructions import follows, phrases, token_rule, wraps

DATA_FILES = (data.IFEVAL,)
TITLE = "IFEval: verifiable instructions, refined with the checkers as a reward"
METHODS = ["greedy", "greedy_forbid", "beam8", "bestof16", "bestof16_forbid", "refine"]
BASELINES = METHODS[:-1]
LABELS = {"greedy": "greedy", "greedy_forbid": "greedy without the forbidden tokens", "beam8": "beam-8",
          "bestof16": "best-of-16 (reranked)",
          "bestof16_forbid": "best-of-16 (reranked), sampled without the forbidden tokens",
          "refine": "greedy without the forbidden tokens + refine (defaults + reward + phrases + wraps, "
                    "best-of-16's time)"}
TEMPERATURE = 0.8
NUMBERS = ["strict", "loose_share", "good", "ended", "repeats", "mean_logp", "judge_logp", "length",
           "forward_tokens", "seconds"]
COMPARED = ["strict", "good", "judge_logp"]
SUMMARY_PREFIXES = ("ifeval.",)
#: the least time refinement gets when best-of-16 took less than greedy (its limit must be positive)
MIN_SECONDS = 0.01


@dataclass(frozen=True)
class Settings:
    items: int
    max_new_tokens: int
    max_sweeps: int
    reward_weight: float = 2.0
    bootstrap_resamples: int = 10_000
    #: refinement may take as long as best-of-16 took on the same prompt (its greedy start included)
    match_time: bool = True
    #: refinement never writes the tokens the prompt's instructions rule out (``RefineConfig.forbid`` with
    #: :func:`benchmarks.instructions.token_rule`) and starts from greedy decoded without them
    #: (``greedy_forbid``); ``bestof16_forbid`` samples without them
    forbid: bool = True
    #: refinement may write the text the instructions name whole (``RefineConfig.phrases`` with
    #: :func:`benchmarks.instructions.phrases`: a required ending, a postscript marker, keywords, separators)
    phrases: bool = True
    #: refinement may put the text the instructions ask around the whole answer in one edit (``RefineConfig.wrap``
    #: with :func:`benchmarks.instructions.wraps`: quotation marks, the request restated before the answer)
    wraps: bool = True


FULL = Settings(items=60, max_new_tokens=128, max_sweeps=3)
QUICK = Settings(items=2, max_new_tokens=12, max_sweeps=1, bootstrap_resamples=200)


class InstructionReward:
    """The share of an item's instructions that a text follows (a picklable, named reward function)."""

    def __init__(self, instructions: tuple[tuple[str, dict], ...]) -> None:
        self.ids = [i for i, _ in instructions]
        self.kwargs = [k for _, k in instructions]
        self.__name__ = "ifeval_instruction_share"

    def __call__(self, text: str) -> float:
        passed = follows(text, self.ids, self.kwargs)
        return sum(passed) / len(passed)


def recipe(s: Settings, item: data.Item, seed: int) -> RefineConfig:
    """Refinement and reranking objective: the library's default terms plus the instruction reward; the tokens
    the instructions rule out are forbidden (when ``s.forbid``), the text they name may be written whole (when
    ``s.phrases``) or put around the answer (when ``s.wraps``)."""
    ids, kwargs = [i for i, _ in item.instructions], [k for _, k in item.instructions]
    rule = token_rule(ids, kwargs) if s.forbid else None
    return RefineConfig(reward=InstructionReward(item.instructions), reward_weight=s.reward_weight,
                        max_new_tokens=s.max_new_tokens, budget={"max_sweeps": s.max_sweeps}, seed=seed,
                        forbid=rule or (), phrases=phrases(ids, kwargs) if s.phrases else (),
                        wrap=wraps(ids, kwargs) if s.wraps else ())


def run_item(ctx: Context, judge, item: data.Item, s: Settings, max_new_tokens: int) -> dict | None:
    r = ctx.runner
    prompt = r.encode(item.prompt)
    if not ctx.fits(prompt, max_new_tokens):
        return None
    cfg = recipe(s, item, ctx.seed)
    greedy = r.greedy(prompt, max_new_tokens)
    outs = {"greedy": greedy, "beam8": r.beam(prompt, max_new_tokens, 8),
            "bestof16": r.best_of(prompt, max_new_tokens, 16, TEMPERATURE, ctx.seed, cfg)}
    banned = forbidden_ids(r.backend.tokenizer, cfg.forbid)
    # nothing forbidden: the same decodes, the same method
    outs["greedy_forbid"] = r.greedy(prompt, max_new_tokens, suppress=banned) if banned else greedy
    outs["bestof16_forbid"] = (r.best_of(prompt, max_new_tokens, 16, TEMPERATURE, ctx.seed, cfg, suppress=banned)
                               if banned else outs["bestof16"])
    start = outs["greedy_forbid"]  # what refine.refine(prompt, forbid=...) starts from: greedy, masked
    refine_cfg = cfg
    if s.match_time:  # the budget best-of-16 used on this prompt, less the greedy start refinement begins from
        left = max(outs["bestof16"].seconds - start.seconds, MIN_SECONDS)
        refine_cfg = replace(cfg, budget=replace(cfg.budget, max_seconds=left))
    outs["refine"], _ = r.refine(prompt, start, refine_cfg)
    scores = r.score_outputs(prompt, [outs[m].tokens for m in METHODS])
    methods = {m: r.describe(outs[m], sc) for m, sc in zip(METHODS, scores)}
    judged = judge.mean_logp(item.prompt, [methods[m]["text"] for m in METHODS])
    ids, kwargs = [i for i, _ in item.instructions], [k for _, k in item.instructions]
    for m, jl in zip(METHODS, judged):
        rec = methods[m]
        passed = follows(rec["text"], ids, kwargs)
        strict = float(all(passed))
        repeats = float(repeated_ngrams(rec["text"], 3) > 0)
        rec.update(passed=passed, strict=strict, loose_share=sum(passed) / len(passed), repeats=repeats,
                   good=float(strict == 1.0 and rec["ended"] and not repeats), judge_logp=jl)
    return {"id": item.id, "task": "ifeval", "prompt": item.prompt, "instructions": ids,
            "prompt_tokens": len(prompt), "forbidden_tokens": len(banned), "methods": methods}


def summarise(items: list[dict], s: Settings) -> dict:
    methods = method_rows(items, METHODS, NUMBERS)
    for m, row in methods.items():
        passed = [p for it in items for p in it["methods"][m]["passed"]]
        row["instruction_acc"] = sum(passed) / len(passed)
    intervals = versus(items, "refine", BASELINES, COMPARED, s.bootstrap_resamples)
    per_instruction: dict[str, dict[str, list[int]]] = {}
    for it in items:
        for j, iid in enumerate(it["instructions"]):
            row = per_instruction.setdefault(iid, {m: [0, 0] for m in METHODS})
            for m in METHODS:
                row[m][0] += it["methods"][m]["passed"][j]
                row[m][1] += 1
    stops = Counter(it["methods"]["refine"].get("stop_reason", "?") for it in items)
    return {"items": len(items), "methods": methods, "refine_vs": intervals, "per_instruction": per_instruction,
            "refine_stops": dict(stops)}


def targets(summary: dict) -> list[dict]:
    ms, vs = summary["methods"], summary["refine_vs"]["bestof16"]["strict"]
    r, b = ms["refine"], ms["bestof16"]
    return [
        {"name": "ifeval: strict accuracy of refine above best-of-16 (95% paired bootstrap excludes 0)",
         "target": "> best-of-16", "value": f"{r['strict']:.3f} vs {b['strict']:.3f} "
                                            f"(diff {vs['diff']:+.3f} [{vs['lo']:+.3f}, {vs['hi']:+.3f}])",
         "met": vs["excludes_zero"] and vs["diff"] > 0},
        {"name": "ifeval: wall time of refine at most best-of-16's", "target": "<= best-of-16",
         "value": f"{r['seconds']:.2f} s vs {b['seconds']:.2f} s per item", "met": r["seconds"] <= b["seconds"]},
    ]


def headline(results: dict) -> dict[str, float]:
    keys = {"strict": "strict_acc", "instruction_acc": "instruction_acc", "good": "good_rate",
            "judge_logp": "judge_logp", "ended": "ended", "seconds": "seconds"}
    ms = results["summary"]["methods"]
    return {f"ifeval.{name}.{m}": row[k] for m, row in ms.items() for k, name in keys.items()}


def run(ctx: Context) -> dict:
    from .judge import load_judge

    s = ctx.pick(FULL, QUICK)
    if ctx.limit is not None:
        s = replace(s, items=ctx.limit)
    judge = load_judge(ctx.judge_model)
    loaders = {"ifeval": (data.ifeval_checkable, s.items, s.max_new_tokens)}
    # every record depends only on its prompt, the settings, the seed, the model and the judge: checkpointed
    fp = asdict(s) if ctx.judge_model is None else {**asdict(s), "judge_model": ctx.judge_model}
    done, skipped = ctx.run_groups("ifeval", loaders, lambda _, item, max_new: run_item(ctx, judge, item, s, max_new),
                                   settings=fp)
    items = done["ifeval"]
    summary = summarise(items, s)
    summary["targets"] = targets(summary)
    return {"suite": "ifeval", "title": TITLE, "settings": asdict(s), "temperature": TEMPERATURE,
            "judge": {"name": judge.name, "forward_tokens": judge.forward_tokens, "seconds": judge.seconds},
            "items": items, "skipped": skipped, "summary": summary}


def plot(results: dict, folder: Path) -> list[str]:
    ms = results["summary"]["methods"]
    fig, (ax, ax2) = report.new_figure(2)
    parts = ["strict", "instruction_acc", "good", "ended"]
    width = 0.8 / len(METHODS)
    for j, m in enumerate(METHODS):
        ax.bar([i + j * width for i in range(len(parts))], [ms[m][k] for k in parts], width, label=LABELS[m])
        ax2.errorbar(ms[m]["seconds"], ms[m]["strict"], yerr=ms[m]["strict_se"], fmt="o", capsize=3,
                     color=f"C{j}", label=LABELS[m])
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(parts))],
                  ["strict\naccuracy", "instruction\naccuracy", "good\noutput", "finished"], fontsize=8)
    ax.set_ylim(0, 1.3)
    ax.set_title(f"IFEval ({results['summary']['items']} prompts)")
    ax.legend(fontsize=7, ncol=2, loc="upper center")
    ax2.legend(fontsize=7)
    ax2.set_xlabel("seconds per prompt")
    ax2.set_ylabel("strict accuracy")
    ax2.set_title("accuracy against time")
    return [report.save_figure(fig, folder / "ifeval.png")]


def render(results: dict, plots: list[str]) -> str:
    s, summ = results["settings"], results["summary"]
    ms = summ["methods"]
    head = ["method", "strict accuracy", "instruction accuracy", "good output", "finished", "repeats a trigram",
            "scorer log P", "judge log P", "length", "forward tokens", "seconds", "time / greedy"]
    rows = [(LABELS[m], report.pm(ms[m]["strict"], ms[m]["strict_se"]), ms[m]["instruction_acc"], ms[m]["good"],
             ms[m]["ended"], ms[m]["repeats"], report.pm(ms[m]["mean_logp"], ms[m]["mean_logp_se"]),
             report.pm(ms[m]["judge_logp"], ms[m]["judge_logp_se"]), f"{ms[m]['length']:.1f}",
             round(ms[m]["forward_tokens"]), f"{ms[m]['seconds']:.2f}", f"{ms[m]['time_vs_greedy']:.2f}")
            for m in METHODS]
    ivs = [(LABELS[b], *[f"{v[k]['diff']:+.3f} [{v[k]['lo']:+.3f}, {v[k]['hi']:+.3f}]"
                         + (" *" if v[k]["excludes_zero"] else "") for k in COMPARED])
           for b, v in summ["refine_vs"].items()]
    per = [(iid, *[f"{row[m][0]}/{row[m][1]}" for m in METHODS]) for iid, row in sorted(summ["per_instruction"].items())]
    items = results["items"]
    forbidding = sum(1 for it in items if it.get("forbidden_tokens"))
    parts = [report.header(TITLE, results), "## What was measured", "",
             f"- {summ['items']} IFEval prompts (file order) whose every instruction has a checker and asks for no "
             f"more than a {s['max_new_tokens']}-token answer can give; outputs <= {s['max_new_tokens']} tokens.",
             "- Checkers: `benchmarks/instructions.py` (written from the instruction definitions; lm-eval's module "
             "downloads NLTK data at import, which this project does not do). Strict accuracy: every instruction "
             "of the prompt followed.",
             f"- Methods: greedy, beam-8, best-of-16 (temperature {results['temperature']}, reranked by the same "
             f"objective as refinement), and refinement of greedy with the library's default objective plus the "
             f"share of instructions followed as a reward (weight {s['reward_weight']}), at most {s['max_sweeps']} sweep(s)"
             + (" and at most the wall time best-of-16 took on the same prompt (greedy's included; the limit "
                "binds between decoding steps)." if s.get("match_time", False) else "."),
             *([f"- Forbidden tokens (`RefineConfig.forbid`): on the {forbidding} prompts with an instruction that a "
                "single token breaks (no commas, all lowercase, all capitals, forbidden words: "
                "`benchmarks.instructions.token_rule`), refinement never writes such a token (it starts from greedy "
                "decoded without them, `greedy without the forbidden tokens`, as `refine.refine` decodes its own "
                "start, and its re-decodings are drawn without them), and `best-of-16, sampled without the forbidden tokens` draws its 16 samples with them "
                "suppressed, as a control for what the constraint alone buys. On the other prompts it is "
                "best-of-16 itself, and the masked greedy is greedy itself."] if s.get("forbid") else []),
             *(["- Phrases (`RefineConfig.phrases`): on prompts whose instructions name text to write (a required "
                "ending, a postscript marker, keywords, the separators of two responses or of paragraphs: "
                "`benchmarks.instructions.phrases`), refinement may write that text whole at the start, after a "
                "sentence or line, or at the end (the `phrase` move); the echo guard (on by default) refuses "
                "edits that quote more of the prompt's other wording."] if s.get("phrases") else []),
             *(["- Wraps (`RefineConfig.wrap`): on prompts that ask for the whole answer in quotation marks, or for the "
                "request restated word for word before the answer (`benchmarks.instructions.wraps`), refinement may "
                "put that text around the whole output in one edit; a wrapped output keeps at least half of the "
                "initial answer's characters inside the wrap."] if s.get("wraps") else []),
             f"- Judge: {results['judge']['name']} (mean log P per token of the answer after the instruction).",
             f"- Intervals: 95% paired bootstrap over prompts ({s['bootstrap_resamples']} resamples).", "",
             "## Targets", "", report.targets_table(summ["targets"]), "",
             "## Results", "", report.table(head, rows), "",
             "Refinement stopped by: " + ", ".join(f"{k} {v}" for k, v in sorted(summ.get("refine_stops", {}).items()))
             + " (prompts).", "",
             "refine − baseline on the same prompts (* the interval excludes zero):", "",
             report.table(["baseline", "strict accuracy", "good output", "judge log P"], ivs), "",
             "Per instruction (followed / prompts with it):", "", report.table(["instruction", *METHODS], per), "",
             "Degeneration against greedy (items shorter / longer, more / less repetitive, lost / gained EOS):", "",
             report.degeneration_table(ms, METHODS[1:], LABELS), "",
             "### Examples", "", report.examples(items, METHODS, LABELS), "",
             "## Plots", ""] + [f"![{p}]({p})" for p in plots] + [""]
    return "\n".join(parts)
