"""Suite ``search``: does greedy + refinement find more probable outputs than beam search or best-of-N?

On real instruction prompts (IFEval and GSM8K), per prompt:

- ``greedy``: ``model.generate`` greedy; its output is Y0 for refinement.
- ``beam4``, ``beam8``: ``model.generate(num_beams=k)``.
- ``refine_mean`` / ``refine_sum``: ``refine_tokens`` on Y0 with objective ``"mean"`` (log P / |y|) or ``"sum"``;
  cost and time include the greedy decode of Y0.
- ``bon_mean`` / ``bon_sum``: best of N samples (temperature 0.7, one batched ``generate`` call), reranked by
  mean or sum log P (taken from the logits ``generate`` returns: no extra forward). N is set per prompt so
  that N samples cost about the forward tokens of greedy + ``refine_mean``: N = round(F / (P + L0 - 1)),
  with F that cost, P the prompt length and L0 the greedy length, clipped to [1, N_max]. Both rerankings
  share the same samples.

Every output is re-scored by the same scorer; forward tokens are counted per model call as
``input_ids.numel()`` (padding included), the engine's own rule.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path

from refine.config import RefineConfig

from . import data, report
from .common import Output, degeneration, mean_se
from .context import Context

#: the data files the suite reads
DATA_FILES = (data.IFEVAL, data.GSM8K)
TITLE = "Search quality vs compute: greedy + refine against beam search and best-of-N"
METHODS = ["greedy", "beam4", "beam8", "bon_mean", "bon_sum", "refine_mean", "refine_sum"]
LABELS = {
    "greedy": "greedy", "beam4": "beam-4", "beam8": "beam-8",
    "bon_mean": "best-of-N (rerank mean)", "bon_sum": "best-of-N (rerank sum)",
    "refine_mean": "greedy+refine (mean)", "refine_sum": "greedy+refine (sum)",
}

#: one marker per method, so methods with identical results stay visible when their points overlap
MARKERS = ["o", "s", "D", "^", "v", "P", "X"]


@dataclass(frozen=True)
class Settings:
    """Sizes of the suite: prompts, output cap, refinement sweeps, best-of-N cap and sampling temperature."""

    prompts: int
    max_new_tokens: int
    max_sweeps: int
    max_samples: int
    temperature: float = 0.7


FULL = Settings(prompts=20, max_new_tokens=32, max_sweeps=3, max_samples=64)
QUICK = Settings(prompts=3, max_new_tokens=12, max_sweeps=1, max_samples=16)


def configs(s: Settings, seed: int) -> dict[str, RefineConfig]:
    """The two refinement configs: the library defaults, with the output cap and sweep budget of the suite."""
    common = dict(max_new_tokens=s.max_new_tokens, budget={"max_sweeps": s.max_sweeps}, seed=seed)
    return {"refine_mean": RefineConfig(objective="mean", **common),
            "refine_sum": RefineConfig(objective="sum", **common)}


def samples_for(budget_tokens: int, prompt_len: int, greedy_len: int, cap: int) -> int:
    """N such that N samples of about the greedy length cost about ``budget_tokens`` forward tokens."""
    per_sample = prompt_len + max(greedy_len, 1) - 1
    return max(1, min(cap, round(budget_tokens / per_sample)))


def _best_of_n(ctx: Context, prompt: list[int], s: Settings, n: int, seed: int) -> dict[str, Output]:
    rows, stats, fc, seconds = ctx.runner.sample(prompt, s.max_new_tokens, n, s.temperature, seed)
    out = {}
    for key, col in (("bon_mean", 1), ("bon_sum", 0)):
        best = int(stats[:, col].argmax())
        out[key] = Output(rows[best], fc.tokens, fc.calls, seconds,
                          {"samples": n, "ended_samples": sum(ctx.runner.ended(r) for r in rows)})
    return out


def run_item(ctx: Context, item: data.Item, s: Settings, cfgs: dict[str, RefineConfig], index: int) -> dict | None:
    """All methods on one prompt; ``None`` if the prompt does not fit the context window."""
    r = ctx.runner
    prompt = r.encode(item.prompt)
    if not ctx.fits(prompt, s.max_new_tokens):
        return None
    outs: dict[str, Output] = {"greedy": r.greedy(prompt, s.max_new_tokens)}
    for k in (4, 8):
        outs[f"beam{k}"] = r.beam(prompt, s.max_new_tokens, k)
    results = {}
    for key, cfg in cfgs.items():
        outs[key], results[key] = r.refine(prompt, outs["greedy"], cfg)
    n = samples_for(outs["refine_mean"].forward_tokens, len(prompt), len(outs["greedy"].tokens), s.max_samples)
    outs.update(_best_of_n(ctx, prompt, s, n, seed=ctx.seed * 100_003 + index))
    scores = r.score_outputs(prompt, [outs[m].tokens for m in METHODS])
    methods = {m: r.describe(outs[m], sc) for m, sc in zip(METHODS, scores)}
    for key, objective in (("refine_mean", "mean_logp"), ("refine_sum", "sum_logp")):
        methods[key]["score_check"] = abs(methods[key]["engine_score"] - methods[key][objective])
    return {"id": item.id, "source": item.source, "prompt": item.prompt, "prompt_tokens": len(prompt),
            "methods": methods}


def summarise(items: list[dict]) -> dict:
    """Per-method means (± s.e.), degeneration deltas against greedy, cost ratios and wins against beam-8."""
    summary = {}
    total = {m: {k: sum(it["methods"][m][k] for it in items) for k in ("seconds", "forward_tokens")} for m in METHODS}
    greedy = [it["methods"]["greedy"] for it in items]
    beam8 = [it["methods"]["beam8"] for it in items]
    for m in METHODS:
        recs = [it["methods"][m] for it in items]
        vs_greedy, vs_beam8 = list(zip(recs, greedy)), list(zip(recs, beam8))
        row = {}
        for key in ("mean_logp", "sum_logp", "length", "repetition", "forward_tokens", "seconds"):
            row[key], row[key + "_se"] = mean_se([x[key] for x in recs])
        row["ended"] = sum(x["ended"] for x in recs) / len(recs)
        row["d_length"] = mean_se([x["length"] - g["length"] for x, g in vs_greedy])[0]
        row["d_repetition"] = mean_se([x["repetition"] - g["repetition"] for x, g in vs_greedy])[0]
        row["degeneration"] = degeneration(recs, greedy)
        for obj in ("mean", "sum"):
            key = obj + "_logp"
            row["wins_vs_beam8_" + obj] = sum(x[key] >= b[key] - 1e-9 for x, b in vs_beam8) / len(recs)
        row["time_vs_beam8"] = total[m]["seconds"] / total["beam8"]["seconds"]
        row["tokens_vs_beam8"] = total[m]["forward_tokens"] / total["beam8"]["forward_tokens"]
        if m.startswith("refine"):
            row["changed"] = sum(x["tokens"] != g["tokens"] for x, g in vs_greedy) / len(recs)
            row["edits"] = mean_se([x["edits"] for x in recs])[0]
            row["hook_mismatches"] = sum(x["hook_forward_tokens"] != x["refine_forward_tokens"] for x in recs)
            row["max_score_check"] = max(x["score_check"] for x in recs)
        if m.startswith("bon"):
            row["samples"] = mean_se([x["samples"] for x in recs])[0]
            row["tokens_vs_refine_mean"] = total[m]["forward_tokens"] / total["refine_mean"]["forward_tokens"]
        summary[m] = row
    return summary


def targets(summary: dict) -> list[dict]:
    ref, beam = summary["refine_mean"], summary["beam8"]
    return [
        {"name": "greedy+refine (mean) >= beam-8 on mean log P per token", "target": ">= 0",
         "value": f"{ref['mean_logp'] - beam['mean_logp']:+.4f} (refine {ref['mean_logp']:.4f}, "
                  f"beam-8 {beam['mean_logp']:.4f})", "met": ref["mean_logp"] >= beam["mean_logp"]},
        {"name": "wall-time ratio greedy+refine (mean) / beam-8", "target": "(no goal)",
         "value": f"{ref['time_vs_beam8']:.2f}x", "met": None},
    ]


def run(ctx: Context) -> dict:
    s = ctx.pick(FULL, QUICK)
    s = replace(s, prompts=ctx.count(s.prompts))
    cfgs = configs(s, ctx.seed)
    items, skipped = [], []
    for i, item in enumerate(ctx.bar(data.instruction_prompts(ctx.data_dir, s.prompts), "search")):
        rec = run_item(ctx, item, s, cfgs, i)
        if rec is None:
            skipped.append(item.id)
        else:
            items.append(rec)
    if not items:
        raise data.DataError(f"search: no prompt fits the model's context window of "
                             f"{ctx.runner.backend.max_length} tokens; use a model with a longer one")
    summary = summarise(items)
    return {"suite": "search", "title": TITLE, "settings": asdict(s),
            "configs": {k: c.to_dict() for k, c in cfgs.items()}, "items": items, "skipped": skipped,
            "summary": {"methods": summary, "targets": targets(summary)}}


def plot(results: dict, folder: Path) -> list[str]:
    """Mean and sum log P against forward tokens and against wall time, one point per method (± s.e.)."""
    summary = results["summary"]["methods"]
    files = []
    for xkey, xlabel, name in (("forward_tokens", "forward tokens per prompt", "objective_vs_tokens.png"),
                               ("seconds", "wall time per prompt (s)", "objective_vs_time.png")):
        fig, axes = report.new_figure(2)
        for ax, ykey, ylabel in zip(axes, ("mean_logp", "sum_logp"), ("mean log P per token", "sum log P")):
            for j, m in enumerate(METHODS):
                row = summary[m]
                ax.errorbar(row[xkey], row[ykey], yerr=row[ykey + "_se"], fmt=MARKERS[j], color=f"C{j}",
                            capsize=3, markersize=7, mfc="none" if j % 2 else None, label=LABELS[m])
            ax.set_xscale("log")
            ax.set_xlabel(xlabel)
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=7)
        fig.suptitle(f"{len(results['items'])} prompts, outputs <= {results['settings']['max_new_tokens']} tokens")
        files.append(report.save_figure(fig, folder / name))
    return files


def render(results: dict, plots: list[str]) -> str:
    s, summary = results["settings"], results["summary"]["methods"]
    n = len(results["items"])
    src = sorted({it["source"] for it in results["items"]})
    parts = [report.header(TITLE, results), "## What was measured", "",
             f"{n} real instruction prompts ({', '.join(src)}; chat template applied), outputs capped at "
             f"{s['max_new_tokens']} tokens. Methods:", "",
             "- **greedy**: `model.generate` greedy; its output Y0 is the start of refinement.",
             "- **beam-k**: `model.generate(num_beams=k)`, transformers' defaults otherwise (length penalty 1.0).",
             "- **greedy+refine**: `refine.refine_tokens` on Y0 with the library's default config and objective "
             "`mean` (log P / |y|) or `sum` (log P); cost and time include the greedy decode.",
             f"- **best-of-N**: N samples at temperature {s['temperature']} (one batched `generate` call), the one "
             "with the best mean (or sum) log P kept. N is compute-matched per prompt to greedy+refine (mean): "
             f"N = round(F / (P + L0 - 1)) clipped to [1, {s['max_samples']}], F being greedy+refine (mean)'s forward "
             "tokens, P the prompt and L0 the greedy length (sampling re-prefills the prompt for every sample).",
             "",
             "Objectives: mean = log P per token including the final EOS (refine's `mean` term), sum = log P, both "
             "from one teacher-forced scorer for every method. Repetition = share of repeated token 3-grams; "
             "Δ columns are against greedy on the same prompt; 'ended' = share of outputs that emitted EOS "
             "before the cap. Wins = share of prompts where the method is at least as good as beam-8.", "",
             "## Targets", "", report.targets_table(results["summary"]["targets"]), "",
             "## Results", ""]
    rows = []
    for m in METHODS:
        r = summary[m]
        rows.append((
            LABELS[m], report.pm(r["mean_logp"], r["mean_logp_se"]), report.pm(r["sum_logp"], r["sum_logp_se"], 2),
            r["wins_vs_beam8_mean"], f"{r['length']:.1f}", f"{r['d_length']:+.1f}", r["ended"], r["repetition"],
            f"{r['d_repetition']:+.3f}", round(r["forward_tokens"]), r["seconds"], r["time_vs_beam8"]))
    parts += [report.table(["method", "mean log P", "sum log P", "wins vs beam-8 (mean)", "length", "Δlength",
                            "ended", "repetition", "Δrepetition", "forward tokens", "seconds", "time / beam-8"],
                           rows, 2), ""]
    parts += ["### Refinement details", ""]
    rows = [(LABELS[m], summary[m]["changed"], summary[m]["edits"], summary[m]["tokens_vs_beam8"],
             summary[m]["hook_mismatches"], summary[m]["max_score_check"]) for m in ("refine_mean", "refine_sum")]
    parts += [report.table(["method", "outputs changed", "edits / prompt", "forward tokens / beam-8",
                            "hook ≠ engine token count", "max abs(engine score − scorer)"], rows, 4), "",
              "The forward-hook count during refinement should equal the engine's own `stats.forward_tokens` "
              "(0 mismatches), and the engine's final objective should equal the independent re-score (≤ 1e-3).",
              ""]
    parts += ["### Degeneration against greedy", "",
              "Per method, on how many prompts the output is shorter / longer than greedy's, more / less repetitive "
              "(token 3-grams), or lost / gained the final EOS:", "",
              report.degeneration_table(summary, METHODS[1:], LABELS), ""]
    rows = [(LABELS[m], summary[m]["samples"], summary[m]["tokens_vs_refine_mean"]) for m in ("bon_mean", "bon_sum")]
    parts += ["### Best-of-N compute matching", "",
              report.table(["method", "mean N", "forward tokens / greedy+refine (mean)"], rows, 2), ""]
    parts += ["## Plots", ""] + [f"![{p}]({p})" for p in plots] + [""]
    parts += ["## Examples", "", report.examples(results["items"], METHODS, LABELS)]
    return "\n".join(parts)
