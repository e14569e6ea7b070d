"""Suite ``arith``: exact-match accuracy on questions with one right answer, and what each method pays for it.

Tasks (groups):

- ``arith2`` / ``arith3``: additions of two two-digit (three-digit) numbers, generated from the run's seed (the
  same seed gives the same questions), asked through the chat template as "Calculate 47 plus 38. Reply with the
  number only." (:data:`PHRASING`). Answer: :func:`benchmarks.answers.first_number` (the first integer, after
  the first ``=`` when there is one: the model tends to restate the sum).
- ``gsm8k``: the first GSM8K test questions (``shared/data``, read in place), the question as the user message.
  Answer: :func:`benchmarks.answers.final_number` (the last number of the output).

Methods per question, all under the task's cap on new tokens:

- ``greedy`` and ``beam8`` (``model.generate``);
- ``majority``: :data:`SAMPLES` samples at temperature :data:`TEMPERATURE` in one batched ``generate`` call; the
  answer given by most samples wins (ties: the larger summed log P of its samples), reported with its likeliest
  sample (:func:`benchmarks.answers.majority`);
- ``refine``: greedy + coordinate refinement with the library defaults (``RefineConfig()``: default objective,
  3 sweeps), ``max_new_tokens`` set to the cap;
- ``power``: greedy + the ``power`` strategy (Metropolis–Hastings on p^alpha, ``target="logp"``), best output by
  the default objective kept; its block and step settings are the task's (:class:`Settings`).

Every output is re-scored by the one teacher-forced scorer (mean log P per token). Time and forward tokens of
refine and power include the greedy decode they start from. Accuracies come with their standard error and, for
each method against greedy, a 95% paired bootstrap interval on the same questions.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, replace
from fractions import Fraction
from pathlib import Path
from typing import Callable

from refine.config import RefineConfig

from . import data, report
from .answers import final_number, first_number, gsm8k_reference, majority
from .bootstrap import versus
from .common import Output, mean_se
from .context import Context

#: the data files the suite reads (the additions are generated)
DATA_FILES = (data.GSM8K,)
TITLE = "Exact answers: additions and GSM8K, accuracy against cost per method"
METHODS = ["greedy", "beam8", "majority", "refine", "power"]
LABELS = {"greedy": "greedy", "beam8": "beam-8", "majority": "majority vote", "refine": "greedy+refine (defaults)",
          "power": "greedy+power sampling"}
GROUPS = ("arith2", "arith3", "gsm8k")
GROUP_LABELS = {"arith2": "two-digit additions", "arith3": "three-digit additions", "gsm8k": "GSM8K",
                "arith": "all additions"}
#: the question's wording. Measured on 20 two-digit additions (seed 0, greedy, 12 new tokens, answer read after
#: "="): "What is A + B? Reply with the number only." 3/20 right; "What is A + B?" 0/20; "A + B = ? Give only the
#: number." 0/20; this one 9/20, always in the form "A + B = N".
PHRASING = "Calculate {a} plus {b}. Reply with the number only."
#: samples of the majority vote and their temperature
SAMPLES = 8
TEMPERATURE = 0.7
#: summary.json keys this suite owns
SUMMARY_PREFIXES = ("arith.", "gsm8k.")


@dataclass(frozen=True)
class Settings:
    """Sizes of the suite: questions per group, caps on new tokens, and the power strategy's schedule per task.

    Power: ``alpha`` 4 and ``target="logp"`` throughout. An addition's answer is a handful of tokens, so it is
    drawn whole (one block) and then gets ``arith_power_steps`` MH steps; a worked GSM8K solution grows in
    ``gsm8k_power_blocks`` blocks of ``gsm8k_power_steps`` steps each.
    """

    arith2_items: int
    arith3_items: int
    gsm8k_items: int
    arith_tokens: int
    gsm8k_tokens: int
    arith_power_blocks: int = 1
    arith_power_steps: int = 4
    gsm8k_power_blocks: int = 2
    gsm8k_power_steps: int = 2
    alpha: float = 4.0
    bootstrap_resamples: int = 10_000


#: GSM8K: 16 questions at 256 tokens. The default model's worked solutions run 100-220 tokens (3 of its first 12
#: greedy answers loop to any cap), so a shorter cap cuts the final number off; at 256 tokens one question costs
#: about three minutes across the five methods on a shared 2-core CPU, which bounds the count
#: additions get 20 tokens: the model restates the sum, and "938 + 711 = 1649." is 17 tokens (one per digit), so a
#: 12-token cap cut every three-digit answer before its last digits
FULL = Settings(arith2_items=100, arith3_items=100, gsm8k_items=16, arith_tokens=20, gsm8k_tokens=256)
QUICK = Settings(arith2_items=2, arith3_items=2, gsm8k_items=1, arith_tokens=12, gsm8k_tokens=16,
                 arith_power_steps=2, gsm8k_power_blocks=2, gsm8k_power_steps=1, bootstrap_resamples=200)


# ----------------------------------------------------------------------------- questions


def addition_items(seed: int, digits: int, n: int) -> list[data.Item]:
    """``n`` additions of two ``digits``-digit numbers, drawn from the seed alone (the same for the same seed and
    digit count); the right sum is the item's one reference."""
    rng = random.Random(f"arith-{seed}-{digits}")
    low, high = 10 ** (digits - 1), 10**digits - 1
    items = []
    for k in range(n):
        a, b = rng.randint(low, high), rng.randint(low, high)
        items.append(data.Item(f"add{digits}-{k}", f"arith{digits}", PHRASING.format(a=a, b=b), references=(str(a + b),)))
    return items


def gsm8k_items(folder: Path, n: int) -> list[data.Item]:
    """The first ``n`` GSM8K test questions with their reference number (after ``####``)."""
    items = []
    for k, row in enumerate(data.read_jsonl(folder, data.GSM8K)[:n]):
        try:
            ref = gsm8k_reference(row["answer"])
        except ValueError as exc:
            raise data.DataError(f"{folder / data.GSM8K}, line {k + 1}: {exc}") from exc
        items.append(data.Item(f"gsm8k-{k}", "gsm8k", row["question"], references=(str(ref),)))
    return items


# ----------------------------------------------------------------------------- methods


def configs(s: Settings, group: str, max_new_tokens: int, seed: int) -> dict[str, RefineConfig]:
    """The refine and power configs of one task: library defaults but for the cap (and power's schedule)."""
    blocks, steps = ((s.gsm8k_power_blocks, s.gsm8k_power_steps) if group == "gsm8k"
                     else (s.arith_power_blocks, s.arith_power_steps))
    return {
        "refine": RefineConfig(max_new_tokens=max_new_tokens, seed=seed),
        "power": RefineConfig(strategy="power", max_new_tokens=max_new_tokens, seed=seed,
                              strategy_options={"alpha": s.alpha, "blocks": blocks, "steps": steps,
                                                "target": "logp"}),
    }


def vote(ctx: Context, prompt: list[int], max_new_tokens: int, seed: int,
         extract: Callable[[str], Fraction | None]) -> Output:
    """:data:`SAMPLES` samples in one batch; the majority answer, represented by its likeliest sample."""
    r = ctx.runner
    rows, stats, fc, seconds = r.sample(prompt, max_new_tokens, SAMPLES, TEMPERATURE, seed)
    answers = [extract(r.decode(r.content(row))) for row in rows]
    winner, index, votes = majority(answers, [float(x) for x in stats[:, 0]])
    return Output(rows[index], fc.tokens, fc.calls, seconds,
                  {"samples": SAMPLES, "temperature": TEMPERATURE,
                   "votes": {str(a): c for a, c in votes.items()},
                   "sample_answers": [None if a is None else str(a) for a in answers]})


def run_item(ctx: Context, s: Settings, group: str, item: data.Item, max_new_tokens: int, index: int) -> dict | None:
    """Every method on one question; ``None`` if the prompt does not fit the context window."""
    r = ctx.runner
    prompt = r.encode(item.prompt)
    if not ctx.fits(prompt, max_new_tokens):
        return None
    extract = final_number if group == "gsm8k" else first_number
    cfgs = configs(s, group, max_new_tokens, ctx.seed)
    greedy = r.greedy(prompt, max_new_tokens)
    outs = {"greedy": greedy, "beam8": r.beam(prompt, max_new_tokens, 8),
            "majority": vote(ctx, prompt, max_new_tokens, ctx.seed + index, extract)}
    for name, cfg in cfgs.items():
        outs[name], _ = r.refine(prompt, greedy, cfg)
    scores = r.score_outputs(prompt, [outs[m].tokens for m in METHODS])
    reference = Fraction(item.references[0])
    methods = {}
    for m, sc in zip(METHODS, scores):
        rec = r.describe(outs[m], sc)
        answer = extract(r.decode(r.content(outs[m].tokens)))
        rec.update(answer=None if answer is None else str(answer), answered=float(answer is not None),
                   correct=float(answer == reference))
        methods[m] = rec
    return {"id": item.id, "group": group, "prompt": item.prompt, "reference": item.references[0],
            "prompt_tokens": len(prompt), "methods": methods}


# ----------------------------------------------------------------------------- summary


def flips(items: list[dict], method: str) -> dict[str, list[str]]:
    """Ids of the questions where ``method``'s answer differs from greedy's, by kind of change."""
    out: dict[str, list[str]] = {"wrong_to_right": [], "right_to_wrong": [], "wrong_to_wrong": []}
    for it in items:
        g, x = it["methods"]["greedy"], it["methods"][method]
        if x["answer"] == g["answer"]:
            continue
        kind = ("wrong_to_right" if x["correct"] else "wrong_to_wrong") if not g["correct"] else "right_to_wrong"
        out[kind].append(it["id"])
    return out


def summarise(items: list[dict], s: Settings) -> dict:
    """Per method: accuracy, share answered, mean log P, length, seconds and forward tokens (mean ± s.e.); answer
    changes against greedy; and the paired bootstrap interval of its accuracy minus greedy's."""
    methods = {}
    for m in METHODS:
        recs = [it["methods"][m] for it in items]
        row: dict = {}
        for key in ("correct", "answered", "mean_logp", "length", "seconds", "forward_tokens"):
            row[key], row[key + "_se"] = mean_se([float(x[key]) for x in recs])
        f = flips(items, m)
        row.update({k: len(v) for k, v in f.items()})
        row["changed"] = sum(len(v) for v in f.values()) / len(items)
        row["logp_raised"] = sum(it["methods"][m]["mean_logp"] > it["methods"]["greedy"]["mean_logp"] + 1e-6
                                 for it in items)
        methods[m] = row
    vs = {m: versus(items, m, ["greedy"], ["correct"], s.bootstrap_resamples)["greedy"]["correct"]
          for m in METHODS[1:]}
    return {"items": len(items), "methods": methods, "vs_greedy": vs}


def run(ctx: Context) -> dict:
    s = ctx.pick(FULL, QUICK)
    if ctx.limit is not None:
        # N questions per addition group; GSM8K never more than its default (a question costs ~10 additions)
        s = replace(s, arith2_items=ctx.limit, arith3_items=ctx.limit, gsm8k_items=min(ctx.limit, s.gsm8k_items))
    loaders = {"arith2": (lambda _, n: addition_items(ctx.seed, 2, n), s.arith2_items, s.arith_tokens),
               "arith3": (lambda _, n: addition_items(ctx.seed, 3, n), s.arith3_items, s.arith_tokens),
               "gsm8k": (gsm8k_items, s.gsm8k_items, s.gsm8k_tokens)}
    index = iter(range(1 << 30))  # the question's index seeds its majority-vote samples
    done, skipped = ctx.run_groups("arith", loaders,
                                   lambda g, item, max_new: run_item(ctx, s, g, item, max_new, next(index)))
    items = [rec for recs in done.values() for rec in recs]
    summary = {g: summarise(recs, s) for g, recs in done.items()}
    additions = done.get("arith2", []) + done.get("arith3", [])
    if additions:
        summary["arith"] = summarise(additions, s)
    return {"suite": "arith", "title": TITLE, "settings": asdict(s), "phrasing": PHRASING, "samples": SAMPLES,
            "temperature": TEMPERATURE,
            "configs": {g: {k: c.to_dict() for k, c in configs(s, g, loaders[g][2], ctx.seed).items()}
                        for g in GROUPS},
            "items": items, "skipped": skipped, "summary": summary}


def headline(results: dict) -> dict[str, float]:
    """Flat ``summary.json`` keys: ``arith.acc.<method>`` over all additions, ``arith.acc2.<method>`` and
    ``arith.acc3.<method>`` per digit count, ``gsm8k.acc.<method>``."""
    keys = {"arith": "arith.acc", "arith2": "arith.acc2", "arith3": "arith.acc3", "gsm8k": "gsm8k.acc"}
    out = {}
    for group, prefix in keys.items():
        for m, row in results["summary"].get(group, {}).get("methods", {}).items():
            out[f"{prefix}.{m}"] = row["correct"]
    return out


# ----------------------------------------------------------------------------- plot and report


def plot(results: dict, folder: Path) -> list[str]:
    """Accuracy (± s.e.) against wall seconds per question: one point per method and task."""
    fig, (ax,) = report.new_figure(1, width=7.0, height=4.5)
    markers = {"arith2": "o", "arith3": "s", "gsm8k": "^"}
    for group in GROUPS:
        ms = results["summary"].get(group, {}).get("methods")
        if not ms:
            continue
        for j, m in enumerate(METHODS):
            row = ms[m]
            ax.errorbar(row["seconds"], row["correct"], yerr=row["correct_se"], fmt=markers[group], color=f"C{j}",
                        capsize=3, markersize=7, label=f"{GROUP_LABELS[group]}: {LABELS[m]}")
    report.log_x(ax)
    ax.set_xlabel("wall seconds per question")
    ax.set_ylabel("exact-match accuracy")
    ax.set_ylim(-0.03, 1.03)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, ncol=1, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.set_title("accuracy against time (o two-digit, s three-digit, ^ GSM8K)")
    return [report.save_figure(fig, folder / "accuracy_vs_seconds.png")]


def _interval(iv: dict) -> str:
    return f"{iv['diff']:+.3f} [{iv['lo']:+.3f}, {iv['hi']:+.3f}]" + (" *" if iv["excludes_zero"] else "")


def _group_section(results: dict, group: str) -> list[str]:
    summ = results["summary"][group]
    ms, n = summ["methods"], summ["items"]
    rows = []
    for m in METHODS:
        r = ms[m]
        rows.append((LABELS[m], report.pm(r["correct"], r["correct_se"]),
                     _interval(summ["vs_greedy"][m]) if m in summ["vs_greedy"] else "–", r["answered"],
                     report.pm(r["mean_logp"], r["mean_logp_se"]), f"{r['changed']:.3f}",
                     f"{r['right_to_wrong']} / {r['wrong_to_right']}", f"{r['length']:.1f}", f"{r['seconds']:.2f}",
                     round(r["forward_tokens"])))
    head = ["method", "accuracy", "minus greedy (95% CI)", "answered", "mean log P", "answer changed",
            "right→wrong / wrong→right", "length", "seconds", "forward tokens"]
    return [f"## {GROUP_LABELS[group]} ({n} questions)", "", report.table(head, rows), ""]


def _sharpening(results: dict) -> list[str]:
    """Where raising the likelihood changes answers, from the measured flips and intervals."""
    parts = ["## Where sharpening the likelihood helps and where it hurts", "",
             "beam-8, refine and power push towards outputs the model finds likelier; majority vote pools "
             "samples instead. Per task, against greedy: how many questions each method turned from wrong to "
             "right and from right to wrong, on how many it raised the mean log P per token, and the accuracy "
             "difference with its 95% paired bootstrap interval (* it excludes zero).", ""]
    items = results["items"]
    for group in ("arith2", "arith3", "gsm8k"):
        if group not in results["summary"]:
            continue
        summ = results["summary"][group]
        ms = summ["methods"]
        recs = [it for it in items if it["group"] == group]
        rows, lines = [], []
        for m in METHODS[1:]:
            r, iv = ms[m], summ["vs_greedy"][m]
            net = r["wrong_to_right"] - r["right_to_wrong"]
            rows.append((LABELS[m], r["wrong_to_right"], r["right_to_wrong"], r["wrong_to_wrong"], f"{net:+d}",
                         f"{r['logp_raised']} / {summ['items']}",
                         f"{r['mean_logp'] - ms['greedy']['mean_logp']:+.3f}", _interval(iv)))
            verdict = ("helps" if iv["excludes_zero"] and iv["diff"] > 0 else
                       "hurts" if iv["excludes_zero"] else "no difference the interval can resolve")
            lines.append(f"- {LABELS[m]}: {verdict} (net {net:+d} questions of {summ['items']}).")
        parts += [f"### {GROUP_LABELS[group]}", "",
                  report.table(["method", "wrong→right", "right→wrong", "wrong→other wrong", "net",
                                "mean log P raised", "Δ mean log P", "Δ accuracy (95% CI)"], rows), "", *lines, ""]
        parts += _flip_examples(recs)
    return parts


def _flip_examples(recs: list[dict], k: int = 2) -> list[str]:
    """Up to ``k`` questions per method and kind of flip, with greedy's and the method's output."""
    def short(text: str) -> str:
        text = " ".join(text.split())
        return text if len(text) <= 120 else text[:119] + "…"

    lines = []
    for m in ("refine", "power"):
        f = flips(recs, m)
        for kind in ("wrong_to_right", "right_to_wrong"):
            for qid in f[kind][:k]:
                it = next(x for x in recs if x["id"] == qid)
                g, x = it["methods"]["greedy"], it["methods"][m]
                lines.append(f"- {LABELS[m]}, {kind.replace('_', ' ')} on {qid} (answer {it['reference']}): "
                             f"greedy {short(g['text'])!r} (log P {g['mean_logp']:.3f}) → {short(x['text'])!r} "
                             f"(log P {x['mean_logp']:.3f})")
    return (["Examples of flips:", "", *lines, ""]) if lines else []


def render(results: dict, plots: list[str]) -> str:
    s = results["settings"]
    summ = results["summary"]
    count = {g: summ[g]["items"] if g in summ else 0 for g in GROUPS}
    parts = [report.header(TITLE, results), "## What was measured", "",
             f"- **Additions**: {count['arith2']} two-digit and {count['arith3']} three-digit sums, generated from "
             f"seed {results['environment']['seed']}, asked as \"{results['phrasing']}\" through the chat template, "
             f"outputs <= {s['arith_tokens']} new tokens. Answer: the first integer of the output, read after its "
             "first `=` when it has one (the model restates the sum as \"A + B = N\").",
             f"- **GSM8K** test, first {count['gsm8k']} questions as they are, outputs <= {s['gsm8k_tokens']} new "
             "tokens. Answer: the last number of the output (thousands separators dropped).",
             "- Right = the extracted number equals the reference exactly; no number is wrong.",
             f"- Methods: greedy, beam-8 (`model.generate`); majority vote over {results['samples']} samples at "
             f"temperature {results['temperature']} (one batch; a tie goes to the answer with the larger summed "
             "log P; its likeliest sample is the output reported); greedy + refine with `RefineConfig()` defaults "
             "(objective mean log P + repetition penalty, coordinate search, 3 sweeps) and the cap; greedy + power "
             f"sampling (alpha {s['alpha']}, target log P, the best output by the default objective kept): "
             f"{s['arith_power_blocks']} block(s) x {s['arith_power_steps']} MH steps on additions, "
             f"{s['gsm8k_power_blocks']} blocks x {s['gsm8k_power_steps']} steps on GSM8K.",
             "- Per method: accuracy ± s.e., share of outputs with a number, mean log P per token from the one "
             "teacher-forced scorer, share of answers that differ from greedy's, seconds and forward tokens per "
             "question (refine and power include the greedy decode they start from), and accuracy minus greedy's "
             f"with a 95% paired bootstrap interval ({s['bootstrap_resamples']} resamples; * it excludes zero).", ""]
    for group in ("arith", *GROUPS):
        if group in summ:
            parts += _group_section(results, group)
    parts += _sharpening(results)
    parts += ["## Plots", ""] + [f"![{p}]({p})" for p in plots] + [""]
    return "\n".join(parts)
