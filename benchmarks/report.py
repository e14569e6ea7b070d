"""Writing results: ``results.json``, ``report.md`` pieces, plots (matplotlib, Agg) and the results index."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

import numpy as np

REPORT = "report.md"
RESULTS = "results.json"


def _plain(obj: Any) -> Any:
    """JSON fallback for NumPy scalars and arrays, paths and other objects."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=1, default=_plain, ensure_ascii=False) + "\n", encoding="utf-8")


def fmt(x: Any, digits: int = 3) -> str:
    """A table cell: numbers rounded, NaN as an en dash, booleans as yes/no."""
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, (int, np.integer)):
        return f"{int(x):,}"
    if isinstance(x, (float, np.floating)):
        if math.isnan(x):
            return "–"
        return f"{x:,.{digits}f}"
    return str(x)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], digits: int = 3) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(fmt(c, digits) for c in row) + " |")
    return "\n".join(lines)


def pm(mean: float, se: float, digits: int = 3) -> str:
    """``mean ± standard error``."""
    return f"{mean:.{digits}f} ± {se:.{digits}f}"


def targets_table(targets: Sequence[dict]) -> str:
    """The targets section: each target, the measured value and whether it was met (``met`` None: reported only)."""
    verdict = {True: "**met**", False: "not met", None: "reported"}
    rows = [(t["name"], t["target"], t["value"], verdict[t["met"]]) for t in targets]
    return table(["target", "goal", "measured", "result"], rows)


def header(title: str, results: dict) -> str:
    """Title, the regenerate command and the environment of a run."""
    env = results["environment"]
    mode = "quick (smoke test: tiny subset, numbers are not meaningful)" if results["quick"] else "full"
    lines = [
        f"# {title}",
        "",
        f"Mode: {mode}. Generated {env['timestamp']} in {results['seconds']:.0f} s.",
        "",
        "Regenerate with:",
        "",
        "```bash",
        env["command"],
        "```",
        "",
        f"Model `{env['model']}` ({env['model_parameters']:,} parameters, fp32, CPU); "
        f"{env['platform']}, {env['cpu_count']} CPUs, torch {env['torch']} with {env['torch_threads']} threads, "
        f"transformers {env['transformers']}, Python {env['python']}; seed {env['seed']}; "
        f"code at {env.get('git') or 'an unknown revision'}. "
        f"Load average at start {env['load_average'][0]:.2f}, at end {env['load_average_end'][0]:.2f} "
        f"(wall times are only comparable within one run, and noisy on a busy machine).",
        "",
    ]
    items = results.get("items")
    commits = Counter(it.get("commit") for it in items if isinstance(it, dict)) if isinstance(items, list) else {}
    if any(c and c != env.get("git") for c in commits):
        lines += ["Records by the code revision that computed them (`--resume` took the others from earlier runs "
                  "with the same settings, seed and model): "
                  + ", ".join(f"{c or 'unknown'}: {n}" for c, n in commits.most_common()) + ".", ""]
    taken = {f: n for f, n in (results.get("resumed_from") or {}).items() if n}
    if taken:
        lines += ["Records taken from checkpoint files (a killed run, or shards run side by side with `--shard`, whose "
                  "per-prompt times were measured while the other shards ran): "
                  + ", ".join(f"`{f}`: {n}" for f, n in taken.items()) + ".", ""]
    if results.get("skipped"):
        lines += [f"Skipped (prompt + output longer than the context window): {', '.join(results['skipped'])}.", ""]
    return "\n".join(lines)


def degeneration_table(summary: dict, methods: Sequence[str], labels: dict[str, str]) -> str:
    """Counts of outputs that got shorter/longer, more/less repetitive, or lost/gained EOS against greedy."""
    keys = ["shorter", "longer", "more_repetition", "less_repetition", "lost_eos", "gained_eos"]
    rows = [(labels[m], *[f"{summary[m]['degeneration'][k]} / {summary[m]['degeneration']['items']}" for k in keys])
            for m in methods]
    return table(["method", "shorter", "longer", "more repetition", "less repetition", "lost EOS", "gained EOS"],
                 rows)


def examples(items: Sequence[dict], methods: Sequence[str], labels: dict[str, str], k: int = 3,
             width: int = 240) -> str:
    """Side-by-side outputs of the first ``k`` items, so the numbers can be checked against the text."""

    def short(text: str) -> str:
        text = " ".join(text.split())
        return text if len(text) <= width else text[: width - 1] + "…"

    parts = []
    for it in items[:k]:
        parts.append(f"**{it['id']}**: {short(it['prompt'])}\n")
        for m in methods:
            rec = it["methods"][m]
            parts.append(f"- *{labels[m]}* ({rec['length']} tok, mean log P {rec['mean_logp']:.3f}): "
                         f"{short(rec['text'])!r}")
        parts.append("")
    return "\n".join(parts)


def new_figure(ncols: int = 1, width: float = 5.5, height: float = 4.0):
    """A matplotlib figure on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, ncols, figsize=(width * ncols, height), squeeze=False)
    return fig, list(axes[0])


def log_x(ax) -> None:
    """A logarithmic x axis labelled with plain numbers at 1, 2 and 5 times each power of ten (not 10^k)."""
    from matplotlib.ticker import FormatStrFormatter, LogLocator

    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.xaxis.set_minor_locator(LogLocator(base=10, subs=(2.0, 5.0)))
    ax.xaxis.set_minor_formatter(FormatStrFormatter("%g"))


def save_figure(fig, path: Path) -> str:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


def write_index(root: Path) -> None:
    """``root/README.md``: one line per suite report found under ``root``."""
    reports = sorted(root.glob(f"*/{REPORT}"))
    lines = ["# Benchmark results", "",
             "Each suite writes `results.json` (raw per-item numbers, summary, environment, configs), "
             "`report.md` and PNG plots into its own folder; each report starts with the command that regenerates "
             "it (the default suites: `python -m benchmarks` from the repository root; `moves` by name).", ""]
    for rep in reports:
        data = json.loads((rep.parent / RESULTS).read_text(encoding="utf-8"))
        mode = "quick" if data["quick"] else "full"
        lines.append(f"- [{rep.parent.name}]({rep.parent.name}/{REPORT}) — {data['title']} "
                     f"({mode} run, {data['environment']['timestamp']})")
    (root / "README.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
