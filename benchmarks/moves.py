"""Suite ``moves``: which move kind wins where -- substitute (suffix kept) against regenerate (suffix re-decoded).

The same greedy output Y0 of each item is refined three times, differing only in ``moves``:
``("substitute",)``, ``("regenerate",)`` and both. Two settings:

- **instructions**: real instruction prompts (IFEval, GSM8K) with the library's default objective
  (``{"mean": 1, "repetition": 1}``);
- **commongen**: CommonGen concept sets with ``{"mean": 1, "coverage": {"weight": 1, "words": concepts}}``,
  where a single inserted word can satisfy the objective without touching the rest of the sentence.

Reported per setting and move set: the objective gain over Y0 (the engine's own objective, checked against
an independent re-score of the output's log P), the share of items improved, accepted edits, forward tokens
and wall time of the refinement alone (the greedy decode is shared and not counted).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path

from refine.config import RefineConfig
from refine.objectives import coverage

from . import data, report
from .common import mean_se
from .context import Context

#: the data files the suite reads
DATA_FILES = (data.IFEVAL, data.GSM8K, data.COMMONGEN)
TITLE = "Moves: substitute (suffix kept) vs regenerate (suffix re-decoded) vs both"
VARIANTS = {"substitute": ("substitute",), "regenerate": ("regenerate",), "both": ("substitute", "regenerate")}
SETTINGS = ("instructions", "commongen")


@dataclass(frozen=True)
class Settings:
    """Sizes of the suite: items per setting, output caps and refinement sweeps."""

    instruction_items: int
    commongen_items: int
    instruction_tokens: int
    commongen_tokens: int
    max_sweeps: int


FULL = Settings(instruction_items=6, commongen_items=6, instruction_tokens=32, commongen_tokens=32, max_sweeps=3)
QUICK = Settings(instruction_items=1, commongen_items=1, instruction_tokens=12, commongen_tokens=12, max_sweeps=1)


def objective(setting: str, words: list[str]) -> dict | str:
    """The objective of a setting: the library default, or mean log P plus coverage of the item's words."""
    if setting == "instructions":
        return RefineConfig().objective
    return {"mean": 1.0, "coverage": {"weight": 1.0, "words": words}}


def run_item(ctx: Context, setting: str, item: data.Item, max_new_tokens: int, s: Settings) -> dict | None:
    """Greedy once, then one refinement per move set; ``None`` if the prompt does not fit the context window."""
    r = ctx.runner
    prompt = r.encode(item.prompt)
    if not ctx.fits(prompt, max_new_tokens):
        return None
    greedy = r.greedy(prompt, max_new_tokens)
    runs = {}
    for name, moves in VARIANTS.items():
        cfg = RefineConfig(objective=objective(setting, list(item.words)), moves=moves,
                           max_new_tokens=max_new_tokens, budget={"max_sweeps": s.max_sweeps}, seed=ctx.seed)
        runs[name] = r.refine(prompt, greedy, cfg)
    # one batched pass of the shared scorer for the greedy output and every refined one
    scores = r.score_outputs(prompt, [greedy.tokens] + [out.tokens for out, _ in runs.values()])

    def output(tokens: list[int], mean_lp: float) -> dict:
        rec = {"mean_logp": mean_lp, "length": len(tokens), "text": r.decode(tokens)}
        if setting == "commongen":
            rec["coverage"] = coverage(list(item.words), rec["text"])
        return rec

    base = output(greedy.tokens, scores[0][1])
    variants = {}
    for (name, (out, result)), (_, mean_lp) in zip(runs.items(), scores[1:]):
        e = out.extra
        variants[name] = {
            "gain": result.gain, "improved": result.gain > 0, "edits": e["edits"],
            "edit_kinds": sorted({ed.move for ed in result.edits}),
            "forward_tokens": e["refine_forward_tokens"], "seconds": e["refine_seconds"],
            **output(out.tokens, mean_lp), "tokens": list(out.tokens),
            "hook_mismatch": e["hook_forward_tokens"] != e["refine_forward_tokens"],
            # the engine's mean term against the independent scorer (the other terms are text functions)
            "score_check": abs(result.terms["mean"] - mean_lp),
        }
    return {"id": item.id, "setting": setting, "prompt": item.prompt, "words": list(item.words),
            "greedy": base, "variants": variants}


def summarise(items: list[dict]) -> dict:
    """Per move set: mean gain (± s.e.), items improved, edits, cost, and gain per second."""
    out = {}
    for name in VARIANTS:
        recs = [it["variants"][name] for it in items]
        row = {}
        for key in ("gain", "edits", "forward_tokens", "seconds", "mean_logp", "length"):
            row[key], row[key + "_se"] = mean_se([x[key] for x in recs])
        row["improved"] = sum(x["improved"] for x in recs) / len(recs)
        row["gain_per_second"] = sum(x["gain"] for x in recs) / sum(x["seconds"] for x in recs)
        row["max_score_check"] = max(x["score_check"] for x in recs)
        row["hook_mismatches"] = sum(x["hook_mismatch"] for x in recs)
        if "coverage" in recs[0]:
            row["coverage"] = mean_se([x["coverage"] for x in recs])[0]
        out[name] = row
    greedy = [it["greedy"] for it in items]
    out["greedy"] = {"mean_logp": mean_se([g["mean_logp"] for g in greedy])[0],
                     "length": mean_se([g["length"] for g in greedy])[0]}
    if "coverage" in greedy[0]:
        out["greedy"]["coverage"] = mean_se([g["coverage"] for g in greedy])[0]
    out["winner"] = {"by_gain": _best(out, "gain"), "by_gain_per_second": _best(out, "gain_per_second")}
    return out


def _best(summary: dict, key: str, tie: float = 1e-6) -> str:
    """The move set(s) with the largest ``key``; ties (within ``tie``) joined by " = "."""
    top = max(summary[n][key] for n in VARIANTS)
    return " = ".join(n for n in VARIANTS if summary[n][key] >= top - tie)


def run(ctx: Context) -> dict:
    s = ctx.pick(FULL, QUICK)
    if ctx.limit is not None:
        s = replace(s, instruction_items=ctx.limit, commongen_items=ctx.limit)
    loaders = {"instructions": (data.instruction_prompts, s.instruction_items, s.instruction_tokens),
               "commongen": (data.commongen, s.commongen_items, s.commongen_tokens)}
    done, skipped = ctx.run_groups("moves", loaders, lambda g, item, max_new: run_item(ctx, g, item, max_new, s))
    items = [rec for recs in done.values() for rec in recs]
    summary = {g: summarise(recs) for g, recs in done.items()}
    return {"suite": "moves", "title": TITLE, "settings": asdict(s),
            "variants": {k: list(v) for k, v in VARIANTS.items()},
            "objectives": {k: objective(k, ["<the item's concepts>"]) for k in SETTINGS},
            "items": items, "skipped": skipped, "summary": summary}


def plot(results: dict, folder: Path) -> list[str]:
    """Objective gain against refinement time per move set, one panel per setting (± s.e.)."""
    settings = [k for k in SETTINGS if k in results["summary"]]
    fig, axes = report.new_figure(len(settings))
    for ax, setting in zip(axes, settings):
        summ = results["summary"][setting]
        for j, name in enumerate(VARIANTS):
            row = summ[name]
            ax.errorbar(row["seconds"], row["gain"], xerr=row["seconds_se"], yerr=row["gain_se"], fmt="osD"[j],
                        color=f"C{j}", capsize=3, markersize=7, label=name)
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xlabel("refinement wall time per item (s)")
        ax.set_ylabel("objective gain over greedy")
        ax.set_title(setting)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return [report.save_figure(fig, folder / "gain_vs_time.png")]


def render(results: dict, plots: list[str]) -> str:
    s = results["settings"]
    parts = [report.header(TITLE, results), "## What was measured", "",
             "The same greedy output of each item, refined with `moves` = substitute (swap one token, keep the "
             "suffix), regenerate (swap one token, greedily re-decode the suffix) or both; everything else at the "
             f"library defaults, at most {s['max_sweeps']} sweep(s). Gain = the engine's objective after minus "
             "before; time and forward tokens are the refinement alone.", "",
             f"- **instructions**: {s['instruction_items']} IFEval/GSM8K prompts, outputs <= "
             f"{s['instruction_tokens']} tokens, objective `{results['objectives']['instructions']}` (the default).",
             f"- **commongen**: {s['commongen_items']} CommonGen concept sets, outputs <= {s['commongen_tokens']} "
             "tokens, objective `mean + 1.0 * coverage(concepts)`.", ""]
    for setting in SETTINGS:
        if setting not in results["summary"]:
            continue
        summ = results["summary"][setting]
        n = sum(it["setting"] == setting for it in results["items"])
        cov = "coverage" in summ["greedy"]
        head = ["moves", "objective gain", "items improved", "edits", "mean log P", "length"]
        head += ["coverage"] if cov else []
        head += ["forward tokens", "seconds", "gain / s", "max abs(mean term − scorer)", "hook ≠ engine tokens"]
        g = summ["greedy"]
        rows = [("(greedy)", "–", "–", "–", f"{g['mean_logp']:.3f}", f"{g['length']:.1f}",
                 *([g["coverage"]] if cov else []), "–", "–", "–", "–", "–")]
        for name in VARIANTS:
            r = summ[name]
            rows.append((name, report.pm(r["gain"], r["gain_se"]), r["improved"], r["edits"], f"{r['mean_logp']:.3f}",
                         f"{r['length']:.1f}", *([r["coverage"]] if cov else []), round(r["forward_tokens"]),
                         f"{r['seconds']:.2f}", f"{r['gain_per_second']:.4f}", r["max_score_check"],
                         r["hook_mismatches"]))
        w = summ["winner"]
        parts += [f"## {setting} ({n} items)", "", report.table(head, rows), "",
                  f"Largest mean gain: **{w['by_gain']}**; most gain per second: **{w['by_gain_per_second']}**.", ""]
    parts += ["## Plots", ""] + [f"![{p}]({p})" for p in plots] + [""]
    parts += ["## Examples", ""]
    for it in results["items"][:: max(1, len(results["items"]) // 4)][:4]:
        parts.append(f"**{it['id']}** ({it['setting']}): {' '.join(it['prompt'].split())[:200]}\n")
        parts.append(f"- *greedy*: {' '.join(it['greedy']['text'].split())[:240]!r}")
        for name, rec in it["variants"].items():
            parts.append(f"- *{name}* (gain {rec['gain']:+.3f}, {rec['edits']} edits): "
                         f"{' '.join(rec['text'].split())[:240]!r}")
        parts.append("")
    return "\n".join(parts)
