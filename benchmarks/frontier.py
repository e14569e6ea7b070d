"""Suite ``frontier``: what refinement's knobs buy on length-normalised log P, and what they cost.

On the search suite's instruction prompts (IFEval, GSM8K), the greedy output Y0 of each prompt is refined under
objective ``mean`` with the library defaults and with wider neighbourhoods, one knob at a time and together:

- ``default``: the library defaults (top-3 candidates at the 8 least confident positions per sweep,
  ``prune_margin=0``);
- ``all_positions``: every position in each sweep (``max_positions=None``), all in one batched block;
- ``loose_prune``: re-decoded suffixes may fall 0.2 nats per token behind before being stopped;
- ``rank_prune``: every position, and a suffix that falls behind is still decoded while it ranks among the 8
  best of its batch (``prune_keep=8``), as a beam would keep it;
- ``no_prune``: every position, every suffix decoded to its end (``prune_margin=None``);
- ``wide``: top-8 candidates at every position;
- ``best_first``: the ``best_first`` strategy (pool of 4 outputs; it expands runners-up where coordinate descent
  stops), up to 6 expansions of 8 positions each;
- ``beam_regen``: the defaults with the ``regenerate_beam`` move (suffixes re-decoded by a beam of 4);
- ``beam_regen_all``: the same at every position, in one batched block;
- ``beam_regen_few``: the ``regenerate_beam`` move with a wide beam (8) at few places: the least confident
  position per sweep, its top-2 alternatives (the cheap end of beam re-decoding);
- ``power``: the ``power`` strategy at the settings of Karan & Du (2025): alpha 4, the output grown in 4 blocks,
  10 MH steps per block, one chain (32 tokens in the full run), a block's extension and MH steps decoded in one
  batch; the best complete output by the objective is kept. As in the paper, no repetition guard
  (``repeat_guard=None``): the reference has none, and the guard would turn away outputs the chain reaches
  (the comparison is of the sampler, not of the library's quality rules);
- ``power_decode``: the same sampler used as a decoder, as the paper uses it: it starts from nothing
  (``refine_tokens(..., [])``), no greedy output is decoded first, and its time and tokens are its own; the
  power target is checked on this row (the reference samples from nothing too);
- ``power_decode3``: the same decoder at alpha 3, the alpha with the best mean log P among 3, 4, 8 and 16 in a
  6-prompt sweep (a flatter target accepts more proposals that later pay off);
- ``power_guarded``: the same with the library's default repetition guard, as a user gets it;
- ``power_smc``: the same target by sequential Monte Carlo (:data:`PARTICLES` particles grown in 4 blocks, one
  batched decode per block, resampled when the effective sample size halves), no repetition guard;
- ``gradient``: gradient-guided substitutions (one backward pass ranks every position and token), each with its
  suffix re-decoded; ``relaxed``: a continuous relaxation over the top tokens, projected back and scored
  exactly; ``hybrid``: relaxed rounds alternating with coordinate sweeps; ``population``: a genetic search
  (8 members, 3 generations).

Greedy, beam-4, beam-8, beam-16 (``model.generate``) and best-of-N (``N`` samples at temperature 1 in one batched
``generate`` call, the best by mean log P) are the reference points. ``power_ref`` runs the same power sampling
(alpha, blocks, steps from the ``power`` setting) the way the paper's reference code does
(:mod:`benchmarks.power_reference`: batch 1, prompt + prefix re-prefilled for every proposal) and keeps the chain's
final state; the report checks the target that ``power`` reaches at least its mean log P in at most a quarter of
its wall time. Every output is re-scored by the same
teacher-forced scorer; time and forward tokens of a refinement include the greedy decode of Y0, as in ``search``.
The point of the suite is the curve: how close each setting gets to beam-8 and at what multiple of its time.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from refine.config import RefineConfig

from . import data, report
from .bootstrap import paired_bootstrap
from .common import Output, mean_se
from .context import Context
from .power_reference import power_reference

#: the data files the suite reads
DATA_FILES = (data.IFEVAL, data.GSM8K)
TITLE = "Frontier: length-normalised log P against compute for refinement settings"
BASELINES = ("greedy", "beam4", "beam8", "beam16", "bestofN")
#: baselines every run needs (the summary's ratios are taken against them), whatever ``--methods`` selects
REQUIRED = ("greedy", "beam8")
#: other implementations of a setting's algorithm, run outside refine
REFERENCES = ("power_ref",)
#: ``power`` against ``power_ref``: at least its mean log P at no more than this share of its wall time
POWER_TIME_TARGET = 0.25
#: settings run as decoders: the sampler starts from nothing (``refine_tokens(..., [])``), no greedy output is
#: decoded first, and neither its time nor its tokens count
FROM_NOTHING = ("power_decode", "power_decode3")
#: strategies whose backward passes the engine counts and the forward hook cannot see
GRADIENT_STRATEGIES = ("gradient", "relaxed", "hybrid")
#: samples of the best-of-N baseline
BEST_OF = 16
#: power sampling at the settings of Karan & Du (2025)
PAPER_POWER = {"alpha": 4.0, "blocks": 4, "steps": 10}
#: particles of the ``power_smc`` setting
PARTICLES = 16
#: per setting: the fields that differ from the library defaults (a ``budget`` entry updates the suite's budget)
SETTINGS = {
    "default": {},
    "all_positions": {"max_positions": None, "block_size": 32},
    "loose_prune": {"prune_margin": 0.2},
    "rank_prune": {"max_positions": None, "block_size": 32, "prune_keep": 8},
    "no_prune": {"max_positions": None, "block_size": 32, "prune_margin": None},
    "wide": {"top_k": 8, "max_positions": None, "block_size": 32},
    "best_first": {"strategy": "best_first", "strategy_options": {"pool": 4}, "budget": {"max_sweeps": 6}},
    "beam_regen": {"moves": ["regenerate_beam"], "regen_beam": 4},
    "beam_regen_all": {"moves": ["regenerate_beam"], "regen_beam": 4, "max_positions": None, "block_size": 32},
    "beam_regen_few": {"moves": ["regenerate_beam"], "regen_beam": 8, "max_positions": 1, "top_k": 2},
    "power": {"strategy": "power", "strategy_options": PAPER_POWER, "repeat_guard": None},
    "power_decode": {"strategy": "power", "strategy_options": PAPER_POWER, "repeat_guard": None},
    "power_decode3": {"strategy": "power", "strategy_options": {**PAPER_POWER, "alpha": 3.0}, "repeat_guard": None},
    "power_guarded": {"strategy": "power", "strategy_options": PAPER_POWER},
    "power_smc": {"strategy": "power_smc", "strategy_options": {"alpha": 4.0, "blocks": 4, "particles": PARTICLES},
                  "repeat_guard": None},
    "gradient": {"strategy": "gradient", "strategy_options": {"regenerate": True}},
    "relaxed": {"strategy": "relaxed"},
    "hybrid": {"strategy": "hybrid"},
    "population": {"strategy": "population"},
}
LABELS = {"greedy": "greedy", "beam4": "beam-4", "beam8": "beam-8", "beam16": "beam-16",
          "bestofN": f"best of {BEST_OF} samples", "default": "refine: defaults",
          "all_positions": "refine: all positions", "loose_prune": "refine: prune margin 0.2",
          "rank_prune": "refine: all positions, prune keeps best 8",
          "no_prune": "refine: all positions, no pruning",
          "wide": "refine: top-8, all positions", "best_first": "refine: best-first, pool 4",
          "beam_regen": "refine: beam-4 re-decoding", "beam_regen_all": "refine: beam-4 re-decoding, all positions",
          "beam_regen_few": "refine: beam-8 re-decoding, 1 position x top-2",
          "power": "power sampling (alpha 4, 4 blocks x 10 steps, a block in one batch, no repetition guard)",
          "power_decode": "power sampling as a decoder (from nothing: no greedy start, the paper's use)",
          "power_decode3": "power sampling as a decoder, alpha 3 (best mean log P of alphas 3, 4, 8, 16 on 6 prompts)",
          "power_guarded": "power sampling, library's repetition guard on",
          "power_smc": f"power sampling by SMC ({PARTICLES} particles, 4 blocks, no repetition guard)",
          "power_ref": "power sampling, reference implementation (batch 1, re-prefill)",
          "gradient": "refine: gradient-guided (re-decoding)", "relaxed": "refine: continuous relaxation",
          "hybrid": "refine: hybrid (relaxed + coordinate)", "population": "refine: population (8, 3 generations)"}
#: every method of the suite, in the order they run
METHODS = (*BASELINES, *SETTINGS, *REFERENCES)


@dataclass(frozen=True)
class Sizes:
    """Sizes of the suite: prompts, output cap and refinement sweeps."""

    prompts: int
    max_new_tokens: int
    max_sweeps: int


FULL = Sizes(prompts=20, max_new_tokens=32, max_sweeps=3)
QUICK = Sizes(prompts=2, max_new_tokens=12, max_sweeps=1)


def selected(ctx: Context) -> tuple[str, ...]:
    """The methods this run measures: all of :data:`METHODS`, or those of them ``--methods`` names plus
    :data:`REQUIRED` (in suite order; the command line rejects names no suite knows)."""
    if ctx.methods is None:
        return METHODS
    return tuple(m for m in METHODS if m in ctx.methods or m in REQUIRED)


def configs(s: Sizes, seed: int, names: tuple[str, ...] = tuple(SETTINGS)) -> dict[str, RefineConfig]:
    """One config per setting in ``names``: objective ``mean``, the suite's output cap and sweeps, the setting's
    changes."""
    common = dict(objective="mean", max_new_tokens=s.max_new_tokens, seed=seed)
    budget = {"max_sweeps": s.max_sweeps}
    out = {}
    for name, changes in SETTINGS.items():
        if name not in names:
            continue
        changes = dict(changes)
        own = changes.pop("budget", {})
        out[name] = RefineConfig(**common, **changes, budget={**budget, **own})
    return out


def best_of_n(ctx: Context, prompt: list[int], max_new_tokens: int, seed: int) -> Output:
    """:data:`BEST_OF` samples at temperature 1 in one batched call; the best by mean log P."""
    rows, stats, fc, seconds = ctx.runner.sample(prompt, max_new_tokens, BEST_OF, 1.0, seed)
    best = int(stats[:, 1].argmax())
    return Output(rows[best], fc.tokens, fc.calls, seconds, {"samples": BEST_OF})


def power_ref(ctx: Context, prompt: list[int], max_new_tokens: int, seed: int) -> Output:
    """The reference implementation of power sampling at the ``power`` setting's alpha, blocks and steps."""
    opts = SETTINGS["power"]["strategy_options"]
    return power_reference(ctx.runner, prompt, max_new_tokens, alpha=opts["alpha"], blocks=opts["blocks"],
                           steps=opts["steps"], seed=seed)


def run_item(ctx: Context, item: data.Item, s: Sizes, cfgs: dict[str, RefineConfig], index: int,
             names: tuple[str, ...] = METHODS) -> dict | None:
    """The methods in ``names`` on one prompt (``cfgs`` holds the settings among them); ``None`` if the prompt
    does not fit the context window."""
    r = ctx.runner
    prompt = r.encode(item.prompt)
    if not ctx.fits(prompt, s.max_new_tokens):
        return None
    outs = {"greedy": r.greedy(prompt, s.max_new_tokens)}
    for k in (4, 8, 16):
        if f"beam{k}" in names:
            outs[f"beam{k}"] = r.beam(prompt, s.max_new_tokens, k)
    if "bestofN" in names:
        outs["bestofN"] = best_of_n(ctx, prompt, s.max_new_tokens, ctx.seed + index)
    finals = {}  # power settings: the chain's final state (a draw from the target, the paper's output)
    for name, cfg in cfgs.items():
        outs[name], result = r.refine(prompt, None if name in FROM_NOTHING else outs["greedy"], cfg)
        samples = result.extras.get("samples") if cfg.strategy == "power" else None
        if samples and samples[0] is not None:
            finals[name] = samples[0]["tokens"]
    if "power_ref" in names:
        outs["power_ref"] = power_ref(ctx, prompt, s.max_new_tokens, ctx.seed + index)
    names = list(outs)
    scores = r.score_outputs(prompt, [outs[m].tokens for m in names] + list(finals.values()))
    methods = {m: r.describe(outs[m], sc) for m, sc in zip(names, scores)}
    for m, sc in zip(finals, scores[len(names):]):
        methods[m]["final_mean_logp"] = sc[1]
        methods[m]["final_text"] = r.decode(finals[m])
    if "power_ref" in methods:
        methods["power_ref"]["final_mean_logp"] = methods["power_ref"]["mean_logp"]
    for m in cfgs:
        rec = methods[m]
        rec["score_check"] = abs(rec["engine_score"] - rec["mean_logp"])
        if cfgs[m].strategy in GRADIENT_STRATEGIES:
            # the engine also counts backward passes (as many tokens as their forward pass), the hook sees forwards
            rec["hook_mismatch"] = rec["hook_forward_tokens"] > rec["refine_forward_tokens"]
        else:
            rec["hook_mismatch"] = rec["hook_forward_tokens"] != rec["refine_forward_tokens"]
    return {"id": item.id, "source": item.source, "prompt": item.prompt, "methods": methods}


def summarise(items: list[dict]) -> dict:
    """Per method: mean log P (± s.e.), time and tokens per prompt and against beam-8, prompts at least as good
    as beam-8; per setting also the stop reasons and the largest engine-vs-scorer difference."""
    names = list(items[0]["methods"])
    total = {m: {k: sum(it["methods"][m][k] for it in items) for k in ("seconds", "forward_tokens")} for m in names}
    beam8 = [it["methods"]["beam8"]["mean_logp"] for it in items]
    out = {}
    for m in names:
        recs = [it["methods"][m] for it in items]
        row = {}
        for key in ("mean_logp", "sum_logp", "length", "seconds", "forward_tokens"):
            row[key], row[key + "_se"] = mean_se([x[key] for x in recs])
        row["time_vs_beam8"] = total[m]["seconds"] / total["beam8"]["seconds"]
        row["tokens_vs_beam8"] = total[m]["forward_tokens"] / total["beam8"]["forward_tokens"]
        row["vs_beam8"] = row["mean_logp"] - mean_se(beam8)[0]
        row["wins_vs_beam8"] = sum(x["mean_logp"] >= b - 1e-9 for x, b in zip(recs, beam8)) / len(recs)
        if m in SETTINGS:
            row["stop_reasons"] = dict(Counter(x["stop_reason"] for x in recs))
            row["max_score_check"] = max(x["score_check"] for x in recs)
            row["hook_mismatches"] = sum(x["hook_mismatch"] for x in recs)
        if all("final_mean_logp" in x for x in recs):
            row["final_mean_logp"], row["final_mean_logp_se"] = mean_se([x["final_mean_logp"] for x in recs])
        if m == "power_ref":
            row["acceptance"] = sum(x["accepted"] for x in recs) / max(sum(x["proposals"] for x in recs), 1)
        out[m] = row
    return out


def power_target(summary: dict) -> dict | None:
    """Whether power sampling reaches at least ``power_ref``'s mean log P in at most :data:`POWER_TIME_TARGET` of
    its wall time (both summed over the same prompts); ``None`` unless both ran.

    The power row compared is ``power_decode`` when it ran: like the reference, it samples from nothing (the
    paper's use), where ``power`` first pays for a greedy output it then only keeps as a floor. Otherwise
    ``power``.
    """
    name = next((m for m in ("power_decode", "power") if m in summary), None)
    if name is None or "power_ref" not in summary:
        return None
    p, ref = summary[name], summary["power_ref"]
    time_ratio = p["time_vs_beam8"] / ref["time_vs_beam8"]  # both against the same beam-8 total
    logp_ok = p["mean_logp"] >= ref["mean_logp"]
    time_ok = time_ratio <= POWER_TIME_TARGET
    return {"method": name, "power_mean_logp": p["mean_logp"], "ref_mean_logp": ref["mean_logp"],
            "time_vs_ref": time_ratio,
            "power_final_mean_logp": p.get("final_mean_logp"),
            "logp_met": logp_ok, "time_met": time_ok, "met": logp_ok and time_ok}


def run(ctx: Context) -> dict:
    s = ctx.pick(FULL, QUICK)
    s = replace(s, prompts=ctx.count(s.prompts))
    names = selected(ctx)
    cfgs = configs(s, ctx.seed, names)
    loaders = {"instructions": (data.instruction_prompts, s.prompts, s.max_new_tokens)}
    index = iter(range(1 << 30))  # the prompt's index seeds its best-of-N samples and the reference power chain
    done, skipped = ctx.run_groups("frontier", loaders,
                                   lambda _, item, __: run_item(ctx, item, s, cfgs, next(index), names))
    items = done["instructions"]
    summary = summarise(items)
    return {"suite": "frontier", "title": TITLE, "settings": asdict(s), "methods": list(names),
            "changes": {k: v for k, v in SETTINGS.items() if k in names},
            "configs": {k: c.to_dict() for k, c in cfgs.items()}, "items": items, "skipped": skipped,
            "summary": summary, "power_target": power_target(summary)}


#: summary.json keys this suite owns
SUMMARY_PREFIXES = ("frontier.",)


def headline(results: dict) -> dict[str, float]:
    """The headline numbers under flat keys (``benchmarks/results/summary.json``): ``frontier.<quantity>.<method>`` for mean log P,
    time and forward tokens against beam-8, per method; ``frontier.power_time_vs_ref`` is ``power``'s wall time
    over ``power_ref``'s when both ran."""
    out = {}
    for key in ("mean_logp", "time_vs_beam8", "tokens_vs_beam8"):
        for m, row in results["summary"].items():
            out[f"frontier.{key}.{m}"] = row[key]
    target = results.get("power_target")
    if target is not None:
        out["frontier.power_time_vs_ref"] = target["time_vs_ref"]
    for m, row in results["summary"].items():
        if "final_mean_logp" in row:
            out[f"frontier.final_mean_logp.{m}"] = row["final_mean_logp"]
    return out


def plot(results: dict, folder: Path) -> list[str]:
    """Mean log P per token against wall time (and forward tokens) per prompt; beam-8 as a horizontal line."""
    import matplotlib.pyplot as plt

    summary = results["summary"]
    fig, axes = report.new_figure(3, width=5.0)
    for ax, xkey, xlabel in zip(axes, ("seconds", "forward_tokens"),
                                ("wall time per prompt (s)", "forward tokens per prompt")):
        for j, m in enumerate(summary):
            row = summary[m]
            base = m in BASELINES
            fmt = "s" if base else "D" if m in REFERENCES else "o"
            ax.errorbar(row[xkey], row["mean_logp"], yerr=row["mean_logp_se"], fmt=fmt,
                        color=plt.cm.tab20(j % 20), capsize=3, markersize=7, mfc="none" if base else None, label=LABELS[m])
        ax.axhline(summary["beam8"]["mean_logp"], color="grey", lw=0.8, ls="--")
        report.log_x(ax)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("mean log P per token")
        ax.grid(alpha=0.3)
    # in a panel of its own (inside a plot, it hid points)
    axes[2].axis("off")
    axes[2].legend(*axes[0].get_legend_handles_labels(), loc="center left", fontsize=7, frameon=False)
    fig.suptitle(f"{len(results['items'])} prompts, outputs <= {results['settings']['max_new_tokens']} tokens "
                 "(dashed: beam-8)")
    return [report.save_figure(fig, folder / "frontier.png")]


def render(results: dict, plots: list[str]) -> str:
    s, summary = results["settings"], results["summary"]
    n = len(results["items"])
    parts = [report.header(TITLE, results), "## What was measured", "",
             f"{n} instruction prompts (the search suite's), outputs capped at {s['max_new_tokens']} tokens, at most "
             f"{s['max_sweeps']} sweep(s), objective `mean` (log P per token, final EOS included). The greedy "
             "output of each prompt is refined once per setting; a setting changes these fields of the library "
             "defaults:", ""]
    for name, changes in results["changes"].items():
        parts.append(f"- **{LABELS[name]}**: `{changes or 'nothing'}`")
    if "power_ref" in summary:
        opts = SETTINGS["power"]["strategy_options"]
        parts.append(f"- **{LABELS['power_ref']}**: not refine; alpha {opts['alpha']:g}, {opts['blocks']} blocks x "
                     f"{opts['steps']} MH steps, each proposal a batch-1 `model.generate` on prompt + prefix "
                     "(re-prefilled), the chain's final state kept (`benchmarks/power_reference.py`)")
    decoders = [LABELS[m] for m in FROM_NOTHING if m in summary]
    parts += ["", "Time and forward tokens of a refinement include the greedy decode"
              + (f" (not for {', '.join(decoders)}: it decodes no greedy output)" if decoders else "")
              + ". Wins = share of prompts at least as good as beam-8.", "", "## Results", ""]
    rows = []
    for m, r in summary.items():
        rows.append((LABELS[m], report.pm(r["mean_logp"], r["mean_logp_se"]), f"{r['vs_beam8']:+.3f}",
                     r["wins_vs_beam8"], f"{r['length']:.1f}", f"{r['seconds']:.2f}", f"{r['time_vs_beam8']:.2f}x",
                     round(r["forward_tokens"]), f"{r['tokens_vs_beam8']:.2f}x",
                     ", ".join(f"{k} {v}" for k, v in r.get("stop_reasons", {}).items()) or "–",
                     r.get("max_score_check", "–")))
    parts += [report.table(["method", "mean log P", "vs beam-8", "wins vs beam-8", "length", "seconds",
                            "time / beam-8", "forward tokens", "tokens / beam-8", "stop reasons",
                            "max abs(engine − scorer)"], rows), ""]
    ran = [m for m in SETTINGS if m in summary]
    if ran:
        best = max(ran, key=lambda m: summary[m]["mean_logp"])
        b = summary[best]
        verdict = "reaches" if b["vs_beam8"] >= 0 else "stays below"
        parts += [f"Best setting: **{LABELS[best]}**, which {verdict} beam-8 ({b['vs_beam8']:+.3f} per token) at "
                  f"{b['time_vs_beam8']:.2f}x its wall time.", ""]
    target = results.get("power_target")
    if target is not None:
        acc = summary["power_ref"]["acceptance"]
        parts += [f"Target (row: {LABELS[target['method']]}): power's mean log P >= power_ref's and power's time "
                  f"<= {POWER_TIME_TARGET} x power_ref's: "
                  f"**{'met' if target['met'] else 'not met'}** (mean log P {target['power_mean_logp']:.3f} vs "
                  f"{target['ref_mean_logp']:.3f}: {'met' if target['logp_met'] else 'not met'}; time "
                  f"{target['time_vs_ref']:.3f}x power_ref's: {'met' if target['time_met'] else 'not met'}). "
                  f"power_ref returns its chain's final state (the paper's output) and accepted {acc:.0%} of its "
                  "MH proposals; power returns the best complete output it visited (ended or at the length cap, "
                  "within the library's rules: finished stays finished; no repetition guard in this setting).", ""]
        a = [it["methods"][target["method"]]["mean_logp"] for it in results["items"]]
        b = [it["methods"]["power_ref"]["mean_logp"] for it in results["items"]]
        ci = paired_bootstrap(a, b)
        wins = sum(x > y + 1e-9 for x, y in zip(a, b)), sum(abs(x - y) <= 1e-9 for x, y in zip(a, b))
        parts += [f"Per prompt, {target['method']} − power_ref: {ci.diff:+.4f} mean log P (95% paired bootstrap "
                  f"interval [{ci.lo:+.3f}, {ci.hi:+.3f}]; better on {wins[0]}, equal on {wins[1]}, worse on "
                  f"{ci.items - wins[0] - wins[1]} of {ci.items} prompts). The mean log P half of the target compares "
                  "point estimates; " + ("the interval excludes zero." if ci.excludes_zero else
                                         "the interval holds zero: the two are at parity within this run's noise."),
                  ""]
        if target.get("power_final_mean_logp") is not None:
            parts += [f"Chain against chain: the final state of power's chain has mean log P "
                      f"{target['power_final_mean_logp']:.3f}, the reference's {target['ref_mean_logp']:.3f} (the same "
                      "target and proposals; power takes a block's MH steps latest cut first, the reference in the "
                      "order drawn, and the two chains use different random draws).", ""]
    parts += ["## Plots", ""]
    parts += [f"![{p}]({p})" for p in plots] + [""]
    return "\n".join(parts)
