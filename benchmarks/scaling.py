"""Suite ``scaling``: how refinement's cost grows, and how fast the engine scores.

1. **Output length**: for prompts that ask for long answers (IFEval, >= 300 words), greedy decoding with
   ``max_new_tokens`` L in (32, 64, 128, 256), then one refinement sweep (objective ``mean``, library defaults
   otherwise). Cost relative to greedy = refinement alone (seconds, forward tokens) / the greedy decode.
2. **Candidates per position**: the same at one length with ``top_k`` in (1, 2, 4, 8).
3. **Scoring throughput**: ``session.score`` on a large batch of candidates (single-token substitutions at
   random positions of a greedy output, scored against it as refinement does) in forward tokens per second,
   against one plain batched forward pass of the same token count (full sequences, no cache): the practical
   ceiling. Best of a few repetitions after a warm-up.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from refine.config import RefineConfig

from . import data, report
from .common import Output, mean_se
from .context import Context

#: the data files the suite reads
DATA_FILES = (data.IFEVAL,)
TITLE = "Scaling: refinement cost vs output length and candidates; scoring throughput"


@dataclass(frozen=True)
class Settings:
    """Sizes of the suite: prompts, output lengths, ``top_k`` values, sweeps and the throughput batch."""

    prompts: int
    lengths: tuple[int, ...]
    topk_length: int
    top_ks: tuple[int, ...]
    max_sweeps: int
    throughput_rows: int
    throughput_length: int
    repeats: int


FULL = Settings(prompts=2, lengths=(32, 64, 128, 256), topk_length=64, top_ks=(1, 2, 4, 8), max_sweeps=1,
                throughput_rows=64, throughput_length=64, repeats=3)
QUICK = Settings(prompts=1, lengths=(12, 24), topk_length=12, top_ks=(1, 2), max_sweeps=1,
                 throughput_rows=16, throughput_length=12, repeats=1)
#: the throughput target: engine scoring at >= this share of a plain forward pass's tokens/s
THROUGHPUT_TARGET = 0.8


def config(s: Settings, max_new_tokens: int, top_k: int, seed: int) -> RefineConfig:
    return RefineConfig(objective="mean", top_k=top_k, max_new_tokens=max_new_tokens,
                        budget={"max_sweeps": s.max_sweeps}, seed=seed)


def _point(ctx: Context, prompt: list[int], greedy: Output, cfg: RefineConfig) -> dict:
    """One refinement of ``greedy`` and its cost relative to the greedy decode."""
    out, result = ctx.runner.refine(prompt, greedy, cfg)
    e = out.extra
    return {
        "target_length": cfg.max_new_tokens, "top_k": cfg.top_k, "reached_length": len(greedy.tokens),
        "ended": ctx.runner.ended(greedy.tokens), "refined_length": len(out.tokens),
        "refined_ended": ctx.runner.ended(out.tokens), "greedy_seconds": greedy.seconds,
        "greedy_forward_tokens": greedy.forward_tokens, "refine_seconds": e["refine_seconds"],
        "refine_forward_tokens": e["refine_forward_tokens"], "refine_forward_calls": result.stats.forward_calls,
        "candidates": e["candidates"], "edits": e["edits"], "gain": result.gain,
        "time_ratio": e["refine_seconds"] / greedy.seconds,
        "token_ratio": e["refine_forward_tokens"] / greedy.forward_tokens,
        "greedy_text": result.initial_text, "refined_text": result.text,
    }


def _aggregate(points: list[dict], key: str) -> list[dict]:
    """Means over prompts of each setting of ``key`` (``target_length`` or ``top_k``)."""
    rows = []
    for value in sorted({p[key] for p in points}):
        group = [p for p in points if p[key] == value]
        row = {key: value, "prompts": len(group)}
        for k in ("reached_length", "refined_length", "greedy_seconds", "refine_seconds", "greedy_forward_tokens",
                  "refine_forward_tokens", "candidates", "gain", "time_ratio", "token_ratio"):
            row[k] = mean_se([p[k] for p in group])[0]
        row["min_reached"] = min(p["reached_length"] for p in group)
        row["max_reached"] = max(p["reached_length"] for p in group)
        rows.append(row)
    return rows


def throughput(ctx: Context, prompt: list[int], base: list[int], s: Settings) -> dict:
    """Forward tokens/s of ``session.score`` on substitution candidates vs a plain forward of as many tokens."""
    r = ctx.runner
    defaults = RefineConfig()
    rng = np.random.default_rng(ctx.seed)
    vocab = r.backend.tokenizer.vocab_size
    cands = []
    for _ in range(s.throughput_rows):
        row = list(base)
        row[int(rng.integers(0, max(len(base) - 1, 1)))] = int(rng.integers(0, vocab))
        cands.append(row)
    session = r.backend.open(prompt, defaults.topk_store, defaults.max_batch_tokens)
    try:
        session.score([base])  # what refinement does first: caches prompt + base
        session.score(cands, base)  # warm-up
        times, tokens, scored = [], 0, 0
        for _ in range(s.repeats):
            before = session.forward_tokens
            t0 = time.perf_counter()
            res = session.score(cands, base)
            times.append(time.perf_counter() - t0)
            tokens = session.forward_tokens - before
            scored = sum(len(sc) for _, sc in res)
    finally:
        session.close()
    width = len(prompt) + len(base)
    rows = max(1, round(tokens / width))
    plain = torch.tensor([list(prompt) + list(base)] * rows)
    plain_times = []
    with torch.no_grad():
        r.model(input_ids=plain[:1], use_cache=False)  # warm-up
        for _ in range(s.repeats):
            t0 = time.perf_counter()
            r.model(input_ids=plain, use_cache=False)
            plain_times.append(time.perf_counter() - t0)
    engine_rate, plain_rate = tokens / min(times), plain.numel() / min(plain_times)
    return {
        "candidates": len(cands), "base_length": len(base), "prompt_length": len(prompt),
        "engine_forward_tokens": tokens, "engine_scored_positions": scored, "engine_seconds": times,
        "engine_tokens_per_s": engine_rate, "plain_shape": list(plain.shape), "plain_seconds": plain_times,
        "plain_tokens_per_s": plain_rate, "ratio": engine_rate / plain_rate,
        "useful_ratio": scored / min(times) / plain_rate,
        "max_batch_tokens": defaults.max_batch_tokens,
    }


def run(ctx: Context) -> dict:
    s = ctx.pick(FULL, QUICK)
    s = replace(s, prompts=ctx.count(s.prompts))
    r = ctx.runner
    prompts, skipped = [], []
    for item in data.long_answer_prompts(ctx.data_dir, s.prompts):
        ids = r.encode(item.prompt)
        if ctx.fits(ids, max(s.lengths)):
            prompts.append((item, ids))
        else:
            skipped.append(item.id)
    if not prompts:
        raise data.DataError(f"scaling: no long-answer prompt fits the model's context window of "
                             f"{ctx.runner.backend.max_length} tokens; use a model with a longer one")
    greedy: dict[tuple[str, int], Output] = {}
    lengths, topk = [], []
    bar = ctx.bar(None, "scaling", total=len(prompts) * (len(s.lengths) + len(s.top_ks)))
    default_k = RefineConfig().top_k
    for item, ids in prompts:
        for L in sorted(set(s.lengths) | {s.topk_length, s.throughput_length}):
            greedy[item.id, L] = r.greedy(ids, L)
        for L in s.lengths:
            lengths.append({"id": item.id, **_point(ctx, ids, greedy[item.id, L], config(s, L, default_k, ctx.seed))})
            bar.update()
        for k in s.top_ks:
            g = greedy[item.id, s.topk_length]
            topk.append({"id": item.id, **_point(ctx, ids, g, config(s, s.topk_length, k, ctx.seed))})
            bar.update()
    bar.close()
    item, ids = prompts[0]
    tp = throughput(ctx, ids, greedy[item.id, s.throughput_length].tokens, s)
    summary = {"lengths": _aggregate(lengths, "target_length"), "top_k": _aggregate(topk, "top_k"),
               "throughput": tp,
               "targets": [{"name": "engine scoring: forward tokens/s relative to a plain batched forward pass",
                            "target": f">= {THROUGHPUT_TARGET}", "value": f"{tp['ratio']:.2f}",
                            "met": tp["ratio"] >= THROUGHPUT_TARGET},
                           {"name": "the same counting only scored positions (padding excluded)",
                            "target": "(no goal)", "value": f"{tp['useful_ratio']:.2f}", "met": None}]}
    return {"suite": "scaling", "title": TITLE, "settings": asdict(s),
            "configs": {"refine": config(s, s.topk_length, default_k, ctx.seed).to_dict()},
            "prompts": [{"id": it.id, "prompt": it.prompt, "prompt_tokens": len(ids)} for it, ids in prompts],
            "skipped": skipped, "items": {"lengths": lengths, "top_k": topk},
            "summary": summary}


def plot(results: dict, folder: Path) -> list[str]:
    summ = results["summary"]
    files = []
    for key, xlabel, name in (("lengths", "output length reached (tokens)", "cost_vs_length.png"),
                              ("top_k", "candidates per position (top_k)", "cost_vs_topk.png")):
        rows = summ[key]
        xs = [row["reached_length"] for row in rows] if key == "lengths" else [row["top_k"] for row in rows]
        fig, (ax,) = report.new_figure(1)
        ax.plot(xs, [row["time_ratio"] for row in rows], "o-", label="wall time / greedy decode")
        ax.plot(xs, [row["token_ratio"] for row in rows], "s--", label="forward tokens / greedy decode")
        ax.set_xscale("log", base=2)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("refinement cost relative to greedy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        files.append(report.save_figure(fig, folder / name))
    tp = summ["throughput"]
    fig, (ax,) = report.new_figure(1, width=4.5)
    ax.bar(["session.score", "plain forward"], [tp["engine_tokens_per_s"], tp["plain_tokens_per_s"]])
    ax.set_ylabel("forward tokens / s")
    ax.set_title(f"scoring throughput (ratio {tp['ratio']:.2f})")
    files.append(report.save_figure(fig, folder / "throughput.png"))
    return files


def render(results: dict, plots: list[str]) -> str:
    s, summ, cfg = results["settings"], results["summary"], results["configs"]["refine"]
    tp = summ["throughput"]
    prompts = ", ".join(p["id"] for p in results["prompts"])
    parts = [report.header(TITLE, results), "## What was measured", "",
             f"Prompts asking for long answers ({prompts}; chat template applied). Refinement: objective `mean`, "
             f"at most {s['max_sweeps']} sweep(s), library defaults otherwise ({cfg['max_positions']} positions per "
             f"sweep, blocks of {cfg['block_size']}, moves {' + '.join(cfg['moves'])}). 'Cost relative to greedy' "
             "divides refinement alone (not counting the greedy decode it starts from) by the greedy decode of the "
             "same output; add 1 for greedy + refine. 'gain' is the rise of the objective (mean log P per token); "
             "'after refinement' is the mean output length once refined (a large gain with a much shorter output "
             "is truncation, not a better answer).",
             "", "## Targets", "", report.targets_table(summ["targets"]), "",
             f"## Cost vs output length (top_k {results['configs']['refine']['top_k']})", ""]
    head = ["max_new_tokens", "reached (mean, min–max)", "after refinement", "greedy s", "refine s",
            "time / greedy", "greedy fwd tokens", "refine fwd tokens", "tokens / greedy", "candidates", "gain"]

    def rows_of(rows, key):
        return [(row[key], f"{row['reached_length']:.0f} ({row['min_reached']}–{row['max_reached']})",
                 f"{row['refined_length']:.0f}", row["greedy_seconds"], row["refine_seconds"], row["time_ratio"],
                 round(row["greedy_forward_tokens"]), round(row["refine_forward_tokens"]), row["token_ratio"],
                 row["candidates"], row["gain"])
                for row in rows]

    parts += [report.table(head, rows_of(summ["lengths"], "target_length"), 2), "",
              f"## Cost vs candidates per position (max_new_tokens {s['topk_length']})", "",
              report.table(["top_k"] + head[1:], rows_of(summ["top_k"], "top_k"), 2), "",
              "## Scoring throughput", "",
              f"{tp['candidates']} candidates (one random substitution each in a {tp['base_length']}-token greedy "
              f"output, prompt {tp['prompt_length']} tokens) scored by `session.score(candidates, base)` "
              f"(max_batch_tokens {tp['max_batch_tokens']}): {tp['engine_forward_tokens']:,} forward tokens "
              f"({tp['engine_scored_positions']:,} scored positions, the rest is padding to each chunk's widest row). "
              f"Plain pass: one `model(input_ids)` of shape {tp['plain_shape']} (full sequences, no cache). Best of "
              f"{s['repeats']} after a warm-up.", "",
              report.table(["path", "forward tokens / s", "seconds (best)"],
                           [("session.score", tp["engine_tokens_per_s"], min(tp["engine_seconds"])),
                            ("plain forward", tp["plain_tokens_per_s"], min(tp["plain_seconds"])),
                            ("ratio", tp["ratio"], float("nan")),
                            ("ratio, scored positions only", tp["useful_ratio"], float("nan"))], 2), "",
              "## Plots", ""] + [f"![{p}]({p})" for p in plots] + [""]
    return "\n".join(parts)
