"""Suite ``downstream``: do objective gains turn into task quality?

Two constrained-generation tasks where the default model scores clearly above zero:

- **CommonGen** (dev): "Write one short sentence using all of these words: ...". Metrics: concept coverage
  (:func:`refine.objectives.coverage`, the function the objective's term uses), a stricter whole-word
  coverage (:func:`benchmarks.metrics.concept_coverage`) and ROUGE-L against the human sentences.
- **E2E** (test): a restaurant meaning representation turned into one or two sentences. Metrics: slot
  coverage (:func:`benchmarks.metrics.slot_coverage`, exact words), unigram F1 and ROUGE-L against the
  references.

Methods per item: greedy, beam-8, greedy+refine with objective ``mean`` alone, and greedy+refine with
``{"mean": 1, "coverage": {"weight": W, "words": ...}}`` (concepts, or the E2E slot keywords). Fluency is
the mean log P per token of the final output under the same scorer for every method.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path

from refine.config import RefineConfig
from refine.objectives import coverage

from . import data, report
from .common import degeneration, mean_se
from .context import Context
from .metrics import concept_coverage, overlap_f1, rouge_l, slot_coverage

#: the data files the suite reads
DATA_FILES = (data.COMMONGEN, data.E2E)
TITLE = "Downstream quality: CommonGen concept coverage and E2E data-to-text"
METHODS = ["greedy", "beam8", "refine_mean", "refine_cov"]
LABELS = {"greedy": "greedy", "beam8": "beam-8", "refine_mean": "greedy+refine (mean)",
          "refine_cov": "greedy+refine (mean + W·coverage)"}
#: per task: the quality metrics, in table order
METRICS = {"commongen": ["coverage", "strict_coverage", "all_covered", "rouge_l"],
           "e2e": ["slot_coverage", "term_coverage", "rouge_l", "overlap_f1"]}
#: per task: the metric a coverage term should raise
PRIMARY = {"commongen": "coverage", "e2e": "slot_coverage"}
#: per task: the metric equal to the objective's coverage term (refine.objectives.coverage of the words)
TERM = {"commongen": "coverage", "e2e": "term_coverage"}
TASKS = ("commongen", "e2e")


@dataclass(frozen=True)
class Settings:
    """Sizes of the suite per task (items, output cap), refinement sweeps and the coverage term's weight W."""

    commongen_items: int
    e2e_items: int
    commongen_tokens: int
    e2e_tokens: int
    max_sweeps: int
    coverage_weight: float = 1.0


FULL = Settings(commongen_items=10, e2e_items=6, commongen_tokens=32, e2e_tokens=48, max_sweeps=3)
QUICK = Settings(commongen_items=1, e2e_items=1, commongen_tokens=12, e2e_tokens=16, max_sweeps=1)


def configs(s: Settings, max_new_tokens: int, words: list[str], seed: int) -> dict[str, RefineConfig]:
    """The two refinement configs for one item (library defaults otherwise)."""
    common = dict(max_new_tokens=max_new_tokens, budget={"max_sweeps": s.max_sweeps}, seed=seed)
    cov = {"mean": 1.0, "coverage": {"weight": s.coverage_weight, "words": words}}
    return {"refine_mean": RefineConfig(objective="mean", **common),
            "refine_cov": RefineConfig(objective=cov, **common)}


def task_metrics(task: str, item: data.Item, text: str) -> dict[str, float]:
    """The task's quality metrics of one output."""
    if task == "commongen":
        cov = coverage(list(item.words), text)
        return {"coverage": cov, "strict_coverage": concept_coverage(item.words, text),
                "all_covered": float(cov == 1.0), "rouge_l": rouge_l(text, item.references)}
    return {"slot_coverage": slot_coverage(item.slots, text), "term_coverage": coverage(list(item.words), text),
            "rouge_l": rouge_l(text, item.references), "overlap_f1": overlap_f1(text, item.references)}


def run_item(ctx: Context, task: str, item: data.Item, s: Settings, max_new_tokens: int) -> dict | None:
    """All methods on one item; ``None`` if the prompt does not fit the context window."""
    r = ctx.runner
    prompt = r.encode(item.prompt)
    if not ctx.fits(prompt, max_new_tokens):
        return None
    greedy = r.greedy(prompt, max_new_tokens)
    outs = {"greedy": greedy, "beam8": r.beam(prompt, max_new_tokens, 8)}
    for key, cfg in configs(s, max_new_tokens, list(item.words), ctx.seed).items():
        outs[key], _ = r.refine(prompt, greedy, cfg)
    scores = r.score_outputs(prompt, [outs[m].tokens for m in METHODS])
    methods = {}
    for m, sc in zip(METHODS, scores):
        rec = r.describe(outs[m], sc)
        rec.update(task_metrics(task, item, rec["text"]))
        methods[m] = rec
    # the engine's objective against the same formula recomputed from the scorer and the decoded text
    cov, mean = methods["refine_cov"], methods["refine_mean"]
    cov["score_check"] = abs(cov["engine_score"] - (cov["mean_logp"] + s.coverage_weight * cov[TERM[task]]))
    mean["score_check"] = abs(mean["engine_score"] - mean["mean_logp"])
    return {"id": item.id, "task": task, "prompt": item.prompt, "words": list(item.words),
            "references": list(item.references), "prompt_tokens": len(prompt), "methods": methods}


def summarise(items: list[dict], task: str) -> dict:
    """Per-method means for one task, and for each refinement: how its changes moved the task metrics."""
    greedy = [it["methods"]["greedy"] for it in items]
    methods = {}
    for m in METHODS:
        recs = [it["methods"][m] for it in items]
        vs_greedy = list(zip(recs, greedy))
        row = {}
        for key in METRICS[task] + ["mean_logp", "sum_logp", "length", "repetition", "forward_tokens", "seconds"]:
            row[key], row[key + "_se"] = mean_se([x[key] for x in recs])
        row["ended"] = sum(x["ended"] for x in recs) / len(recs)
        row["d_length"] = mean_se([x["length"] - g["length"] for x, g in vs_greedy])[0]
        row["d_repetition"] = mean_se([x["repetition"] - g["repetition"] for x, g in vs_greedy])[0]
        row["degeneration"] = degeneration(recs, greedy)
        row["time_vs_greedy"] = sum(x["seconds"] for x in recs) / sum(g["seconds"] for g in greedy)
        if m.startswith("refine"):
            row["changed"] = sum(x["tokens"] != g["tokens"] for x, g in vs_greedy) / len(recs)
            row["max_score_check"] = max(x["score_check"] for x in recs)
            row["hook_mismatches"] = sum(x["hook_forward_tokens"] != x["refine_forward_tokens"] for x in recs)
        methods[m] = row
    return {"methods": methods, "translation": {m: translation(items, m, task) for m in METHODS[2:]}}


def translation(items: list[dict], method: str, task: str) -> dict:
    """Over the items whose output the refinement changed: objective gain, and task metrics up/same/down
    against greedy."""
    changed = [it for it in items if it["methods"][method]["tokens"] != it["methods"]["greedy"]["tokens"]]
    out = {"changed": len(changed), "items": len(items)}
    gains = [it["methods"][method]["engine_score"] - it["methods"][method]["initial_score"] for it in changed]
    out["objective_gain"] = mean_se(gains)[0]
    for key in METRICS[task] + ["mean_logp"]:
        deltas = [it["methods"][method][key] - it["methods"]["greedy"][key] for it in changed]
        out[key] = {"up": sum(d > 1e-9 for d in deltas), "same": sum(abs(d) <= 1e-9 for d in deltas),
                    "down": sum(d < -1e-9 for d in deltas)}
    return out


def targets(summary: dict) -> list[dict]:
    out = []
    for task in TASKS:
        if task not in summary:
            continue
        ms = summary[task]["methods"]
        g, c = ms["greedy"], ms["refine_cov"]
        rel = (c["mean_logp"] - g["mean_logp"]) / abs(g["mean_logp"])
        key = PRIMARY[task]
        out += [
            {"name": f"{task}: fluency (mean log P) of greedy+refine (mean + W·coverage) within 10% of greedy",
             "target": ">= -10%", "value": f"{c['mean_logp']:.3f} vs {g['mean_logp']:.3f} ({rel:+.1%})",
             "met": rel >= -0.10},
            {"name": f"{task}: {key} of greedy+refine (mean + W·coverage) above greedy", "target": "> greedy",
             "value": f"{c[key]:.3f} vs {g[key]:.3f}", "met": c[key] > g[key]},
            {"name": f"{task}: ROUGE-L of greedy+refine (mean + W·coverage) not below greedy", "target": ">= greedy",
             "value": f"{c['rouge_l']:.3f} vs {g['rouge_l']:.3f}", "met": c["rouge_l"] >= g["rouge_l"]},
        ]
    return out


def run(ctx: Context) -> dict:
    s = ctx.pick(FULL, QUICK)
    if ctx.limit is not None:
        s = replace(s, commongen_items=ctx.limit, e2e_items=ctx.limit)
    loaders = {"commongen": (data.commongen, s.commongen_items, s.commongen_tokens),
               "e2e": (data.e2e, s.e2e_items, s.e2e_tokens)}
    done, skipped = ctx.run_groups("downstream", loaders, lambda t, item, max_new: run_item(ctx, t, item, s, max_new))
    items = [rec for recs in done.values() for rec in recs]
    summary = {t: summarise(recs, t) for t, recs in done.items()}
    example = configs(s, s.commongen_tokens, ["<the item's words>"], ctx.seed)
    summary["targets"] = targets(summary)
    return {"suite": "downstream", "title": TITLE, "settings": asdict(s),
            "configs": {k: c.to_dict() for k, c in example.items()}, "items": items, "skipped": skipped,
            "summary": summary}


def plot(results: dict, folder: Path) -> list[str]:
    """Per task: quality metrics per method (bars) and fluency per method (± s.e.)."""
    files = []
    for task in TASKS:
        if task not in results["summary"]:
            continue
        ms = results["summary"][task]["methods"]
        fig, (ax, ax2) = report.new_figure(2)
        width = 0.8 / len(METHODS)
        for j, m in enumerate(METHODS):
            xs = [i + j * width for i in range(len(METRICS[task]))]
            ax.bar(xs, [ms[m][k] for k in METRICS[task]], width, label=LABELS[m])
            ax2.bar(j, ms[m]["mean_logp"], yerr=ms[m]["mean_logp_se"], capsize=3, color=f"C{j}")
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(METRICS[task]))], METRICS[task])
        ax.set_ylim(0, 1.05)
        ax.set_title(f"{task}: task metrics")
        ax.legend(fontsize=7)
        ax2.set_xticks(range(len(METHODS)), [LABELS[m] for m in METHODS], rotation=20, ha="right", fontsize=7)
        ax2.set_title(f"{task}: fluency (mean log P per token)")
        files.append(report.save_figure(fig, folder / f"{task}.png"))
    return files


def _task_section(results: dict, task: str) -> list[str]:
    summ = results["summary"][task]
    ms = summ["methods"]
    items = [it for it in results["items"] if it["task"] == task]
    head = ["method", *METRICS[task], "fluency", "Δfluency", "length", "Δlength", "repetition", "Δrepetition",
            "forward tokens", "seconds", "time / greedy"]
    rows = []
    for m in METHODS:
        r = ms[m]
        d_flu = (r["mean_logp"] - ms["greedy"]["mean_logp"]) / abs(ms["greedy"]["mean_logp"])
        rows.append((LABELS[m], *[r[k] for k in METRICS[task]], report.pm(r["mean_logp"], r["mean_logp_se"]),
                     f"{d_flu:+.1%}", f"{r['length']:.1f}", f"{r['d_length']:+.1f}", r["repetition"],
                     f"{r['d_repetition']:+.3f}", round(r["forward_tokens"]), f"{r['seconds']:.2f}",
                     f"{r['time_vs_greedy']:.2f}"))
    parts = [f"## {task} ({len(items)} items)", "", report.table(head, rows), ""]
    rows = []
    for m, tr in summ["translation"].items():
        cells = [f"{tr[k]['up']} / {tr[k]['same']} / {tr[k]['down']}" for k in METRICS[task] + ["mean_logp"]]
        rows.append((LABELS[m], f"{tr['changed']} of {tr['items']}", tr["objective_gain"], *cells,
                     ms[m]["max_score_check"], ms[m]["hook_mismatches"]))
    parts += ["Did the objective gains carry over? Over the items whose output refinement changed, against "
              "greedy (up / same / down):", "",
              report.table(["method", "changed", "mean objective gain", *METRICS[task], "fluency",
                            "max abs(engine − scorer)", "hook ≠ engine tokens"], rows, 4), "",
              "Degeneration against greedy (items shorter / longer, more / less repetitive, lost / gained EOS):", "",
              report.degeneration_table(ms, METHODS[1:], LABELS), "",
              "### Examples", "", report.examples(items, METHODS, LABELS)]
    return parts


def render(results: dict, plots: list[str]) -> str:
    s = results["settings"]
    parts = [report.header(TITLE, results), "## What was measured", "",
             f"- **CommonGen** dev, first {s['commongen_items']} concept sets, prompt \"Write one short sentence "
             f"using all of these words: ...\", outputs <= {s['commongen_tokens']} tokens. Metrics: concept "
             "coverage (`refine.objectives.coverage`: a concept counts when any word starts with it, so \"car\" is "
             "found in \"careful\"), strict coverage (whole words, regular inflections only: "
             "`benchmarks.metrics.concept_coverage`), all-covered rate (by the first), ROUGE-L (F1, best human "
             "sentence).",
             f"- **E2E** test, first {s['e2e_items']} meaning representations, prompt listing the slots, outputs <= "
             f"{s['e2e_tokens']} tokens. Metrics: slot coverage (a slot counts when every keyword of its value "
             "appears as a word; familyFriendly is keyed by \"family\", polarity unchecked), term coverage (what "
             "the objective's coverage term sees: `refine.objectives.coverage` of the keywords), ROUGE-L and "
             "unigram F1 against the best reference.",
             f"- Methods: greedy, beam-8 (`model.generate`), greedy+refine with objective `mean`, and greedy+refine "
             f"with `{{\"mean\": 1, \"coverage\": {{\"weight\": {s['coverage_weight']}, \"words\": ...}}}}` "
             f"(CommonGen concepts, E2E slot keywords); library defaults otherwise, at most {s['max_sweeps']} "
             "sweep(s).",
             "- Fluency = mean log P per token of the final output (same scorer for every method); Δ columns are "
             "against greedy on the same items. Cost and time of refinement include the greedy decode.", "",
             "## Targets", "", report.targets_table(results["summary"]["targets"]), ""]
    for task in TASKS:
        if task in results["summary"]:
            parts += _task_section(results, task)
    parts += ["## Plots", ""] + [f"![{p}]({p})" for p in plots] + [""]
    return "\n".join(parts)
