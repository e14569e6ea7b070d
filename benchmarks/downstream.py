"""Suite ``downstream``: does refinement give answers a reader would choose?

Two constrained-generation tasks where the default model scores clearly above zero:

- **CommonGen** (dev): "Write one short sentence using all of these words: ...". The constraint: every
  concept appears (:func:`refine.objectives.coverage`, the function the objective's term uses).
- **E2E** (test): a restaurant meaning representation turned into one or two sentences. The constraint:
  every slot value is realised (:func:`benchmarks.metrics.slot_coverage`, exact words).

Methods per item, all capped at the same number of new tokens:

- ``greedy`` and ``beam8`` (``model.generate``);
- ``bestof8`` and ``bestof16``: that many samples (temperature :data:`TEMPERATURE`) in one batch,
  reranked by the *same objective* the refinement maximises;
- ``refine``: greedy + refinement with the recipe a user is told to use for constrained generation:
  the library's default objective terms plus the task's coverage term, library defaults otherwise.

Headline metric: the **good-output rate**: the constraint is met, the output is finished (ended
with EOS within the cap), it repeats no word trigram and it reads as prose, not a list
(:func:`benchmarks.metrics.reads_as_list`: "Dance, kid, room." or ``key: value`` lines are lists). Beside it: coverage, the share finished,
ROUGE-1/2/L (``rouge-score``), the scorer's mean log P per token, and an **independent judge**'s
(:mod:`benchmarks.judge`: a model that took no part in the search). Paired bootstrap intervals
(:mod:`benchmarks.bootstrap`) compare refine with each baseline on the same items.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path

from refine.config import RefineConfig
from refine.degeneration import repeated_ngrams
from refine.objectives import coverage

from . import data, report
from .bootstrap import versus
from .common import method_rows
from .context import Context
from .metrics import reads_as_list, slot_coverage
from .rouge import KINDS as ROUGE_KINDS
from .rouge import rouge

#: the data files the suite reads
DATA_FILES = (data.COMMONGEN, data.E2E)
TITLE = "Downstream quality: CommonGen and E2E, judged by task constraints and a second model"
METHODS = ["greedy", "beam8", "bestof8", "bestof16", "refine"]
BASELINES = METHODS[:-1]
LABELS = {"greedy": "greedy", "beam8": "beam-8", "bestof8": "best-of-8 (reranked)",
          "bestof16": "best-of-16 (reranked)", "refine": "greedy+refine (defaults + coverage)"}
TASKS = ("commongen", "e2e")
#: sampling temperature of best-of-N: samples close enough to the model's mode to be fluent, varied enough to
#: differ in which concepts they use
TEMPERATURE = 0.8
#: per-item numbers summarised for every method
NUMBERS = ["good", "constraint", "coverage", "ended", "repeats", "prose", *ROUGE_KINDS, "mean_logp", "judge_logp",
           "length", "forward_tokens", "seconds"]
#: the numbers compared by paired bootstrap (refine − baseline)
COMPARED = ["good", "coverage", "judge_logp"]
#: summary.json keys this suite owns (prefixes)
SUMMARY_PREFIXES = tuple(f"{t}." for t in TASKS)


@dataclass(frozen=True)
class Settings:
    """Sizes of the suite per task (items, output cap), refinement sweeps and the coverage term's weight W."""

    commongen_items: int
    e2e_items: int
    commongen_tokens: int
    e2e_tokens: int
    max_sweeps: int
    coverage_weight: float = 1.0
    bootstrap_resamples: int = 10_000


FULL = Settings(commongen_items=60, e2e_items=30, commongen_tokens=40, e2e_tokens=64, max_sweeps=3)
QUICK = Settings(commongen_items=1, e2e_items=1, commongen_tokens=12, e2e_tokens=16, max_sweeps=1,
                 bootstrap_resamples=200)


def recipe(s: Settings, max_new_tokens: int, words: list[str], seed: int) -> RefineConfig:
    """The objective of refinement and of best-of-N reranking: the default terms plus the task's coverage."""
    objective = {**RefineConfig().objective, "coverage": {"weight": s.coverage_weight, "words": words}}
    return RefineConfig(objective=objective, max_new_tokens=max_new_tokens, budget={"max_sweeps": s.max_sweeps},
                        seed=seed)


def task_metrics(task: str, item: data.Item, text: str, ended: bool) -> dict[str, float]:
    """What a reader checks of one output: the constraint, finished, repetition; and ROUGE."""
    cov = coverage(list(item.words), text) if task == "commongen" else slot_coverage(item.slots, text)
    repeats = repeated_ngrams(text, 3)
    constraint = float(cov == 1.0)
    prose = not reads_as_list(text, list(item.words) if task == "commongen" else ())
    return {"coverage": cov, "constraint": constraint, "repeats": float(repeats > 0), "prose": float(prose),
            "good": float(constraint == 1.0 and ended and repeats == 0 and prose), **rouge(text, item.references)}


def run_item(ctx: Context, judge, task: str, item: data.Item, s: Settings, max_new_tokens: int) -> dict | None:
    """All methods on one item; ``None`` if the prompt does not fit the context window."""
    r = ctx.runner
    prompt = r.encode(item.prompt)
    if not ctx.fits(prompt, max_new_tokens):
        return None
    cfg = recipe(s, max_new_tokens, list(item.words), ctx.seed)
    greedy = r.greedy(prompt, max_new_tokens)
    outs = {"greedy": greedy, "beam8": r.beam(prompt, max_new_tokens, 8),
            "bestof8": r.best_of(prompt, max_new_tokens, 8, TEMPERATURE, ctx.seed, cfg),
            "bestof16": r.best_of(prompt, max_new_tokens, 16, TEMPERATURE, ctx.seed + 1, cfg)}
    outs["refine"], result = r.refine(prompt, greedy, cfg)
    scores = r.score_outputs(prompt, [outs[m].tokens for m in METHODS])
    methods = {m: r.describe(outs[m], sc) for m, sc in zip(METHODS, scores)}
    judged = judge.mean_logp(item.prompt, [methods[m]["text"] for m in METHODS])
    for m, jl in zip(METHODS, judged):
        methods[m].update(task_metrics(task, item, methods[m]["text"], methods[m]["ended"]), judge_logp=jl)
    return {"id": item.id, "task": task, "prompt": item.prompt, "words": list(item.words),
            "references": list(item.references), "prompt_tokens": len(prompt), "methods": methods}


def summarise(items: list[dict], s: Settings) -> dict:
    """Per-method means (± s.e.), degeneration against greedy, and refine − baseline bootstrap intervals."""
    methods = method_rows(items, METHODS, NUMBERS)
    intervals = versus(items, "refine", BASELINES, COMPARED, s.bootstrap_resamples)
    changed = [it for it in items if it["methods"]["refine"]["tokens"] != it["methods"]["greedy"]["tokens"]]
    return {"items": len(items), "methods": methods, "refine_vs": intervals, "changed_by_refine": len(changed)}


def targets(summary: dict) -> list[dict]:
    """CommonGen targets: refine's good-output rate >= 0.75 and above every baseline (interval excluding zero),
    finished share >= greedy's, judge log P not below greedy's."""
    if "commongen" not in summary:
        return []
    ms, vs = summary["commongen"]["methods"], summary["commongen"]["refine_vs"]
    r, g = ms["refine"], ms["greedy"]
    above = all(vs[b]["good"]["excludes_zero"] and vs[b]["good"]["diff"] > 0 for b in BASELINES)
    worst = min(BASELINES, key=lambda b: vs[b]["good"]["lo"])
    judge = vs["greedy"]["judge_logp"]
    return [
        {"name": "commongen: good-output rate of refine", "target": ">= 0.75", "value": f"{r['good']:.3f}",
         "met": r["good"] >= 0.75},
        {"name": "commongen: refine's good-output rate above every baseline (95% paired bootstrap excludes 0)",
         "target": "all intervals > 0",
         "value": f"smallest lower end {vs[worst]['good']['lo']:+.3f} (vs {LABELS[worst]})", "met": above},
        {"name": "commongen: share of finished outputs, refine vs greedy", "target": ">= greedy",
         "value": f"{r['ended']:.3f} vs {g['ended']:.3f}", "met": r["ended"] >= g["ended"]},
        {"name": "commongen: judge log P of refine not below greedy's (interval's upper end >= 0)",
         "target": "hi >= 0", "value": f"{judge['diff']:+.3f} [{judge['lo']:+.3f}, {judge['hi']:+.3f}]",
         "met": judge["hi"] >= 0},
    ]


def headline(results: dict) -> dict[str, float]:
    """Flat ``summary.json`` keys: ``<task>.<metric>.<method>``."""
    keys = {"good": "good_rate", "coverage": "coverage", "judge_logp": "judge_logp", "ended": "ended",
            "seconds": "seconds", "mean_logp": "scorer_logp"}
    out = {}
    for task in TASKS:
        ms = results["summary"].get(task, {}).get("methods", {})
        for m, row in ms.items():
            for k, name in keys.items():
                out[f"{task}.{name}.{m}"] = row[k]
    return out


def run(ctx: Context) -> dict:
    from .judge import load_judge

    s = ctx.pick(FULL, QUICK)
    if ctx.limit is not None:
        s = replace(s, commongen_items=ctx.limit, e2e_items=ctx.limit)
    judge = load_judge(ctx.judge_model)
    loaders = {"commongen": (data.commongen, s.commongen_items, s.commongen_tokens),
               "e2e": (data.e2e, s.e2e_items, s.e2e_tokens)}
    done, skipped = ctx.run_groups("downstream", loaders,
                                   lambda t, item, max_new: run_item(ctx, judge, t, item, s, max_new))
    items = [rec for recs in done.values() for rec in recs]
    summary = {t: summarise(recs, s) for t, recs in done.items()}
    summary["targets"] = targets(summary)
    example = recipe(s, s.commongen_tokens, ["<the item's words>"], ctx.seed)
    return {"suite": "downstream", "title": TITLE, "settings": asdict(s), "temperature": TEMPERATURE,
            "judge": {"name": judge.name, "forward_tokens": judge.forward_tokens, "seconds": judge.seconds},
            "config": example.to_dict(), "items": items, "skipped": skipped, "summary": summary}


def plot(results: dict, folder: Path) -> list[str]:
    """Per task: good-output rate with its parts per method, and the judge's log P per method (± s.e.)."""
    files = []
    parts = ["good", "constraint", "ended", "repeats", "prose"]
    for task in TASKS:
        if task not in results["summary"]:
            continue
        ms = results["summary"][task]["methods"]
        fig, (ax, ax2) = report.new_figure(2)
        width = 0.8 / len(METHODS)
        for j, m in enumerate(METHODS):
            xs = [i + j * width for i in range(len(parts))]
            ax.bar(xs, [ms[m][k] for k in parts], width, yerr=[ms[m][k + "_se"] for k in parts], capsize=2,
                   label=LABELS[m])
            ax2.bar(j, ms[m]["judge_logp"], yerr=ms[m]["judge_logp_se"], capsize=3, color=f"C{j}")
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(parts))],
                      ["good", "constraint\nmet", "finished", "repeats a\ntrigram", "prose"], fontsize=8)
        ax.set_ylim(0, 1.3)
        ax.set_title(f"{task}: share of outputs ({results['summary'][task]['items']} items)")
        ax.legend(fontsize=7, ncol=2, loc="upper center")
        ax2.set_xticks(range(len(METHODS)), [LABELS[m] for m in METHODS], rotation=20, ha="right", fontsize=7)
        ax2.set_title(f"{task}: judge's mean log P per token")
        files.append(report.save_figure(fig, folder / f"{task}.png"))
    return files


def _task_section(results: dict, task: str) -> list[str]:
    summ = results["summary"][task]
    ms = summ["methods"]
    items = [it for it in results["items"] if it["task"] == task]
    head = ["method", "good output", "constraint met", "coverage", "finished", "repeats a trigram", "prose",
            *ROUGE_KINDS, "scorer log P", "judge log P", "length", "forward tokens", "seconds", "time / greedy"]
    rows = []
    for m in METHODS:
        r = ms[m]
        rows.append((LABELS[m], report.pm(r["good"], r["good_se"]), r["constraint"], r["coverage"], r["ended"],
                     r["repeats"], r["prose"], *[r[k] for k in ROUGE_KINDS], report.pm(r["mean_logp"], r["mean_logp_se"]),
                     report.pm(r["judge_logp"], r["judge_logp_se"]), f"{r['length']:.1f}",
                     round(r["forward_tokens"]), f"{r['seconds']:.2f}", f"{r['time_vs_greedy']:.2f}"))
    parts = [f"## {task} ({len(items)} items)", "", report.table(head, rows), ""]
    rows = []
    for b, ivs in summ["refine_vs"].items():
        rows.append((LABELS[b], *[f"{ivs[k]['diff']:+.3f} [{ivs[k]['lo']:+.3f}, {ivs[k]['hi']:+.3f}]"
                                  + (" *" if ivs[k]["excludes_zero"] else "") for k in COMPARED]))
    parts += ["refine − baseline on the same items, with 95% paired bootstrap intervals (* the interval excludes "
              "zero):", "", report.table(["baseline", "good output", "coverage", "judge log P"], rows), "",
              f"Refinement changed greedy's output on {summ['changed_by_refine']} of {len(items)} items.", "",
              "Degeneration against greedy (items shorter / longer, more / less repetitive, lost / gained EOS):", "",
              report.degeneration_table(ms, METHODS[1:], LABELS), "",
              "### Examples", "", report.examples(items, METHODS, LABELS)]
    return parts


def render(results: dict, plots: list[str]) -> str:
    s = results["settings"]
    cfg = results["config"]
    parts = [report.header(TITLE, results), "## What was measured", "",
             f"- **CommonGen** dev, first {s['commongen_items']} concept sets, prompt \"Write one short sentence "
             f"using all of these words: ...\", outputs <= {s['commongen_tokens']} tokens. Constraint: every "
             "concept present (`refine.objectives.coverage`: a concept counts when a word starts with it).",
             f"- **E2E** test, first {s['e2e_items']} meaning representations, prompt listing the slots, outputs <= "
             f"{s['e2e_tokens']} tokens. Constraint: every slot realised (each keyword of its value appears as a "
             "word; familyFriendly is keyed by \"family\", polarity unchecked).",
             "- **Good output** = constraint met, finished (ended with EOS within the cap), no repeated word "
             "trigram, and prose rather than a list (`benchmarks.metrics.reads_as_list`: three or more short "
             "comma-separated segments such as \"Dance, kid, room.\", `key: value` or bulleted lines, or for "
             "CommonGen the concepts alone without any other word). ROUGE-1/2/L F1 against the best reference, from `rouge-score` (Porter stemming).",
             f"- Methods: greedy, beam-8 (`model.generate`); best-of-8 and best-of-16 (samples at temperature "
             f"{results['temperature']}, one batch each, reranked by the refinement's own objective at no extra "
             f"forward pass); greedy+refine with objective `{cfg['objective']}` (the library's default terms plus "
             f"the task's coverage), at most {s['max_sweeps']} sweep(s), library defaults otherwise. Cost and time "
             "of refinement include the greedy decode.",
             f"- Scorer log P: mean log P per token under the generator. Judge log P: the same under "
             f"{results['judge']['name']}, a model that took no part in the search, given the instruction as "
             "plain text after BOS, with its own tokenizer.",
             f"- Intervals: 95% paired bootstrap over items ({s['bootstrap_resamples']} resamples).", "",
             "## Targets", "", report.targets_table(results["summary"]["targets"]), ""]
    for task in TASKS:
        if task in results["summary"]:
            parts += _task_section(results, task)
    parts += ["## Plots", ""] + [f"![{p}]({p})" for p in plots] + [""]
    return "\n".join(parts)
