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

vLLM column (``--vllm``; on by default in full runs when vLLM is installed): after all prompts, one vLLM engine
(:func:`refine.backends.vllm.make_llm`, in-process, fp32, same torch threads) refines the same greedy Y0 of every
prompt with the ``refine_mean`` config. Reported side by side with the HF refinement of the same Y0: refinement
seconds and forward tokens (each backend's own count: the HF session counts every fed token; vLLM counts the
prompt tokens its prefix cache did not serve plus the generated ones), and whether both accepted the same output.
"""

from __future__ import annotations

import itertools
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
#: the refinement methods (each refines the same greedy Y0)
REFINE = ["refine_mean", "refine_sum"]
LABELS = {
    "greedy": "greedy", "beam4": "beam-4", "beam8": "beam-8",
    "bon_mean": "best-of-N (rerank mean)", "bon_sum": "best-of-N (rerank sum)",
    "refine_mean": "greedy+refine (mean)",
    "refine_sum": "greedy+refine (sum)",
}

#: one marker per method, so methods with identical results stay visible when their points overlap
MARKERS = ["o", "s", "D", "^", "v", "P", "*", "X"]


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
    """The refinement configs: the library defaults with the output cap and sweep budget of the suite, under
    objective ``mean`` and ``sum``."""
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


def refine_vllm(ctx: Context, items: list[dict], cfg: RefineConfig) -> dict:
    """Refine every item's greedy output again through the vLLM backend; per-item records and a summary.

    The engine starts once (its start-up time is reported, not charged to any item); each item's record is
    compared with the HF refinement of the same Y0 under the same config.
    """
    import time

    import torch

    from refine.api import refine_tokens
    from refine.backends.vllm import VLLMBackend, make_llm

    threads = torch.get_num_threads()
    t0 = time.perf_counter()
    llm = make_llm(ctx.runner.model_path, threads=None)
    startup = time.perf_counter() - t0
    torch.set_num_threads(threads)
    try:
        import vllm

        backend = VLLMBackend(llm)
        # one warm-up refinement so first-call costs do not land on the first item
        warm = ctx.runner.encode("Hello.")
        refine_tokens(backend, warm, ctx.runner.greedy(warm, 4).tokens, cfg.replace(budget={"max_sweeps": 1}))
        records = []
        for it in ctx.bar(items, "search (vLLM)"):
            prompt = ctx.runner.encode(it["prompt"])
            greedy = it["methods"]["greedy"]["tokens"]
            t1 = time.perf_counter()
            result = refine_tokens(backend, prompt, greedy, cfg)
            seconds = time.perf_counter() - t1
            (sum_lp, mean_lp), = ctx.runner.score_outputs(prompt, [list(result.tokens)])
            hf = it["methods"]["refine_mean"]
            records.append({
                "id": it["id"], "seconds": seconds, "forward_tokens": result.stats.forward_tokens,
                "forward_calls": result.stats.forward_calls, "edits": len(result.edits),
                "engine_score": result.score, "initial_score": result.initial_score,
                "mean_logp": mean_lp, "sum_logp": sum_lp, "tokens": list(result.tokens),
                "same_output_as_hf": list(result.tokens) == hf["tokens"],
                "initial_score_diff": abs(result.initial_score - hf["initial_score"]),
                "hf_seconds": hf["refine_seconds"], "hf_forward_tokens": hf["refine_forward_tokens"],
            })
        version = vllm.__version__
    finally:
        llm.llm_engine.engine_core.shutdown()
        torch.set_num_threads(threads)
    n = len(records)
    tot = {k: sum(r[k] for r in records) for k in ("seconds", "forward_tokens", "hf_seconds", "hf_forward_tokens")}
    summary = {
        "items": n, "vllm_version": version, "engine_startup_seconds": startup, "torch_threads": threads,
        "method": backend.method,
        "vllm_seconds": tot["seconds"] / n, "hf_seconds": tot["hf_seconds"] / n,
        "vllm_forward_tokens": tot["forward_tokens"] / n, "hf_forward_tokens": tot["hf_forward_tokens"] / n,
        "time_vllm_vs_hf": tot["seconds"] / tot["hf_seconds"],
        "tokens_vllm_vs_hf": tot["forward_tokens"] / max(tot["hf_forward_tokens"], 1),
        "same_output": sum(r["same_output_as_hf"] for r in records),
        "max_initial_score_diff": max(r["initial_score_diff"] for r in records),
        "vllm_mean_logp": mean_se([r["mean_logp"] for r in records])[0],
        "hf_mean_logp": mean_se([it["methods"]["refine_mean"]["mean_logp"] for it in items])[0],
    }
    return {"items": records, "summary": summary}


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
    beam = summary["beam8"]
    out = []
    for m in ("refine_mean",):
        ref = summary[m]
        out += [
            {"name": f"{LABELS[m]} >= beam-8 on mean log P per token", "target": ">= 0",
             "value": f"{ref['mean_logp'] - beam['mean_logp']:+.4f} (refine {ref['mean_logp']:.4f}, "
                      f"beam-8 {beam['mean_logp']:.4f})", "met": ref["mean_logp"] >= beam["mean_logp"]},
            {"name": f"wall time {LABELS[m]} / beam-8", "target": "<= 1.0x",
             "value": f"{ref['time_vs_beam8']:.2f}x", "met": ref["time_vs_beam8"] <= 1.0},
        ]
    return out


def run(ctx: Context) -> dict:
    s = ctx.pick(FULL, QUICK)
    s = replace(s, prompts=ctx.count(s.prompts))
    cfgs = configs(s, ctx.seed)
    index = itertools.count()  # the prompt's place in the data, skipped ones included: seeds best-of-N
    loaders = {"instructions": (data.instruction_prompts, s.prompts, s.max_new_tokens)}
    done, skipped = ctx.run_groups("search", loaders, lambda _, item, __: run_item(ctx, item, s, cfgs, next(index)))
    items = done["instructions"]
    summary = summarise(items)
    out = {"suite": "search", "title": TITLE, "settings": asdict(s),
           "configs": {k: c.to_dict() for k, c in cfgs.items()}, "items": items, "skipped": skipped,
           "summary": {"methods": summary, "targets": targets(summary)}}
    if ctx.vllm:
        out["vllm"] = refine_vllm(ctx, items, cfgs["refine_mean"])
    return out


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
            report.log_x(ax)
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
             summary[m]["hook_mismatches"], summary[m]["max_score_check"]) for m in REFINE]
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
    if "vllm" in results:
        parts += vllm_section(results["vllm"]["summary"])
    parts += ["## Plots", ""] + [f"![{p}]({p})" for p in plots] + [""]
    parts += ["## Examples", "", report.examples(results["items"], METHODS, LABELS)]
    return "\n".join(parts)


def vllm_section(v: dict) -> list[str]:
    """The report's HF-vs-vLLM table (refinement alone, same Y0 and config)."""
    rows = [("HF (transformers)", v["hf_seconds"], 1.0, round(v["hf_forward_tokens"]), 1.0, v["hf_mean_logp"]),
            (f"vLLM {v['vllm_version']} ({v['method']})", v["vllm_seconds"], v["time_vllm_vs_hf"],
             round(v["vllm_forward_tokens"]), v["tokens_vllm_vs_hf"], v["vllm_mean_logp"])]
    return [
        "### Refinement through vLLM vs through HF", "",
        f"The same greedy Y0 of each of the {v['items']} prompts, refined with the greedy+refine (mean) config "
        f"through each backend, in the same process with {v['torch_threads']} torch thread(s); refinement alone "
        f"(no greedy decode). The vLLM engine started once in {v['engine_startup_seconds']:.0f} s (not charged).", "",
        report.table(["backend", "seconds / prompt", "time / HF", "forward tokens / prompt", "tokens / HF",
                      "mean log P after"], rows, 3), "",
        f"Same accepted output as HF on {v['same_output']} of {v['items']} prompts; largest difference in the "
        f"initial objective {v['max_initial_score_diff']:.1e}. Forward tokens are each engine's own count: HF "
        "counts every token fed (its drafts verify many re-decoded tokens per call); vLLM counts prompt tokens "
        "its prefix cache did not serve plus generated tokens, one step per token (no drafts).", ""]
