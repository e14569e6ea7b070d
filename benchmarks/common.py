"""What every suite shares: the model, honest compute accounting, the decoding methods and one scorer.

Compute is counted the way the refine engine counts it: every model forward call adds
``input_ids.numel()`` (batch rows x fed length, padding included). For Hugging Face
``generate`` a forward pre-hook on the model does the counting; refinement reports its own
``stats.forward_tokens``, and the hook runs during refinement too, as a cross-check.

Every output, whatever method produced it, is re-scored by :func:`score_outputs` (one
teacher-forced pass of the refine HF session on the same prompt), so the log-probabilities
of all methods come from the same code path and are comparable.
"""

from __future__ import annotations

import math
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from refine.api import refine_tokens
from refine.backends.hf import HFBackend
from refine.config import RefineConfig
from refine.objectives import CandidateView
from refine.types import RefineResult

from .metrics import repetition_rate

#: top-k stored per position by the scoring session (only the per-token log-probabilities are used)
SCORER_TOPK = 1
#: token positions per scoring forward call (bounds the memory of the vocabulary-wide log-softmax)
SCORER_BATCH_TOKENS = 4096


class ForwardCounter:
    """Counts forward calls and ``input_ids.numel()`` of a model while active (a forward pre-hook).

    >>> with ForwardCounter(model) as fc:          # doctest: +SKIP
    ...     model.generate(ids, max_new_tokens=8)  # doctest: +SKIP
    >>> fc.tokens, fc.calls                        # doctest: +SKIP
    """

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.tokens = 0
        self.calls = 0
        self._handle = None

    def _hook(self, module, args, kwargs) -> None:
        ids = kwargs.get("input_ids")
        if ids is None and args:
            ids = args[0]
        if ids is None:  # called with embeddings: count their (batch, length)
            ids = kwargs["inputs_embeds"][..., 0]
        self.tokens += int(ids.numel())
        self.calls += 1

    def __enter__(self) -> "ForwardCounter":
        self._handle = self.model.register_forward_pre_hook(self._hook, with_kwargs=True)
        return self

    def __exit__(self, *exc) -> None:
        self._handle.remove()


@dataclass
class Output:
    """One method's answer to one prompt and what it cost.

    Attributes:
        tokens: output ids (a final EOS included when the output ended).
        forward_tokens: forward tokens spent producing it (for refinement: including the greedy decode of Y0).
        forward_calls: model forward calls.
        seconds: wall time (for refinement: including the greedy decode of Y0).
        extra: method-specific facts (samples drawn, edits accepted, stop reason, ...).
    """

    tokens: list[int]
    forward_tokens: int
    forward_calls: int
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)


class Runner:
    """The model, its refine backend and the decoding methods compared by the suites."""

    def __init__(self, model: Any, tokenizer: Any, model_path: str, seed: int) -> None:
        self.model = model
        self.hf_tokenizer = tokenizer
        self.backend = HFBackend(model, tokenizer)
        self.model_path = model_path
        self.seed = seed
        self.eos_ids = list(self.backend.tokenizer.eos_ids)
        pad = tokenizer.pad_token_id
        self.pad_id = self.eos_ids[0] if pad is None else int(pad)

    # ------------------------------------------------------------------ prompts and text

    def encode(self, text: str) -> list[int]:
        """Prompt ids with the chat template applied when the tokenizer has one."""
        return self.backend.encode_prompt(text, chat=None)

    def decode(self, tokens: Sequence[int]) -> str:
        return self.backend.tokenizer.decode(tokens)

    def ended(self, tokens: Sequence[int]) -> bool:
        return bool(tokens) and tokens[-1] in self.eos_ids

    def content(self, tokens: Sequence[int]) -> list[int]:
        """``tokens`` without a final EOS."""
        return list(tokens[:-1]) if self.ended(tokens) else list(tokens)

    def _cut(self, row: Sequence[int]) -> list[int]:
        """Generated ids up to and including the first EOS (drops the padding after it)."""
        out = []
        for t in row:
            out.append(int(t))
            if t in self.eos_ids:
                break
        return out

    # ------------------------------------------------------------------ Hugging Face generate

    def _generate(self, prompt: Sequence[int], max_new_tokens: int, **kw):
        ids = torch.tensor([list(prompt)])
        with ForwardCounter(self.model) as fc, torch.no_grad():
            t0 = time.perf_counter()
            out = self.model.generate(
                input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                eos_token_id=self.eos_ids, pad_token_id=self.pad_id, return_dict_in_generate=True, **kw)
            seconds = time.perf_counter() - t0
        rows = [self._cut(r) for r in out.sequences[:, len(prompt):].tolist()]
        return out, rows, fc, seconds

    def greedy(self, prompt: Sequence[int], max_new_tokens: int, suppress: Sequence[int] = ()) -> Output:
        """Greedy decoding with ``model.generate``; ``suppress``: ids never decoded (``suppress_tokens``)."""
        kw = {"suppress_tokens": sorted(suppress)} if suppress else {}
        _, rows, fc, seconds = self._generate(prompt, max_new_tokens, do_sample=False, num_beams=1, **kw)
        return Output(rows[0], fc.tokens, fc.calls, seconds)

    def beam(self, prompt: Sequence[int], max_new_tokens: int, beams: int) -> Output:
        """Beam search with ``model.generate(num_beams=beams)`` (transformers' default length penalty 1.0)."""
        _, rows, fc, seconds = self._generate(prompt, max_new_tokens, do_sample=False, num_beams=beams)
        return Output(rows[0], fc.tokens, fc.calls, seconds)

    def sample(self, prompt: Sequence[int], max_new_tokens: int, n: int, temperature: float,
               seed: int) -> tuple[list[list[int]], np.ndarray, ForwardCounter, float]:
        """``n`` samples in one batched ``generate`` call, with each sample's exact per-token log-probabilities.

        The log-probabilities come from the raw (untempered) logits ``generate`` already computed, so ranking
        the samples costs no forward pass. Returns ``(rows, logprob sums and means (n, 2), counter, seconds)``.
        """
        rows, token_lp, fc, seconds = self._sample(prompt, max_new_tokens, n, temperature, seed)
        stats = np.zeros((n, 2))
        for r, lp in enumerate(token_lp):
            stats[r] = (float(lp.sum()), float(lp.sum()) / max(len(lp), 1))
        return rows, stats, fc, seconds

    def _sample(self, prompt: Sequence[int], max_new_tokens: int, n: int, temperature: float,
                seed: int, suppress: Sequence[int] = ()) -> tuple[list[list[int]], list[np.ndarray], ForwardCounter, float]:
        """Sampled rows and each row's per-token log-probabilities under the untempered model; ``suppress``:
        ids never sampled (``generate``'s ``suppress_tokens``; the log-probabilities stay the model's own)."""
        torch.manual_seed(seed)
        kw = {"suppress_tokens": sorted(suppress)} if suppress else {}
        out, rows, fc, seconds = self._generate(
            prompt, max_new_tokens, do_sample=True, temperature=temperature, top_k=0, top_p=1.0,
            num_return_sequences=n, output_logits=True, **kw)
        token_lp = torch.zeros((n, len(out.logits)), dtype=torch.float64)
        for step, step_logits in enumerate(out.logits):  # (n, V) per step; rows that ended read padding
            chosen = torch.tensor([row[step] if step < len(row) else 0 for row in rows])[:, None]
            token_lp[:, step] = torch.log_softmax(step_logits.float(), dim=-1).gather(-1, chosen)[:, 0]
        return rows, [token_lp[r, : len(row)].numpy() for r, row in enumerate(rows)], fc, seconds

    def best_of(self, prompt: Sequence[int], max_new_tokens: int, n: int, temperature: float, seed: int,
                config: RefineConfig, suppress: Sequence[int] = ()) -> Output:
        """Best-of-``n``: ``n`` samples in one batch, reranked by ``config``'s objective (the one refinement
        maximises), from the log-probabilities sampling already computed: no extra forward pass. ``suppress``:
        ids never sampled."""
        rows, token_lp, fc, seconds = self._sample(prompt, max_new_tokens, n, temperature, seed, suppress)
        t0 = time.perf_counter()
        objective = config.build_objective()
        objective.bind(self.backend.tokenizer)
        views = [CandidateView(tuple(row), lp, self.decode(row) if objective.needs_text else None, self.ended(row))
                 for row, lp in zip(rows, token_lp)]
        values, _ = objective.evaluate(views)
        best = int(np.argmax(values))
        seconds += time.perf_counter() - t0
        return Output(rows[best], fc.tokens, fc.calls, seconds,
                      {"samples": n, "temperature": temperature, "engine_score": float(values[best])})

    # ------------------------------------------------------------------ refinement

    def refine(self, prompt: Sequence[int], start: Output | None, config: RefineConfig) -> tuple[Output, RefineResult]:
        """Refine ``start`` (normally the greedy output); cost and time include producing ``start``. ``None``:
        a sampler (``power``, ``power_smc``) starts from nothing and its own cost is all there is.

        ``extra["hook_forward_tokens"]`` is what the forward hook saw during refinement: it should equal the
        engine's own ``stats.forward_tokens``.
        """
        with ForwardCounter(self.model) as fc:
            t0 = time.perf_counter()
            result = refine_tokens(self.backend, prompt, [] if start is None else start.tokens, config)
            seconds = time.perf_counter() - t0
        st = result.stats
        extra = {
            "refine_forward_tokens": st.forward_tokens, "refine_seconds": seconds,
            "hook_forward_tokens": fc.tokens, "edits": len(result.edits), "steps": st.steps,
            "sweeps": st.sweeps, "candidates": st.candidates, "stop_reason": st.stop_reason,
            "engine_score": result.score, "initial_score": result.initial_score,
        }
        if start is None:
            start = Output([], 0, 0, 0.0, {})
        out = Output(list(result.tokens), start.forward_tokens + st.forward_tokens,
                     start.forward_calls + st.forward_calls, start.seconds + seconds, extra)
        return out, result

    def warmup(self) -> None:
        """Run every method once on a short prompt, so one-time costs do not land in the first timed item."""
        prompt = self.encode("Hello.")
        greedy = self.greedy(prompt, 4)
        self.beam(prompt, 4, 2)
        self.sample(prompt, 4, 2, 1.0, seed=0)
        self.refine(prompt, greedy, RefineConfig(budget={"max_sweeps": 1}))

    # ------------------------------------------------------------------ the one scorer

    def score_outputs(self, prompt: Sequence[int], outputs: Sequence[Sequence[int]]) -> list[tuple[float, float]]:
        """``(sum log P, mean log P per token)`` of each output, all in one batched teacher-forced pass.

        The mean divides by the number of tokens including a final EOS, as refine's ``"mean"`` term does.
        """
        session = self.backend.open(list(prompt), SCORER_TOPK, SCORER_BATCH_TOKENS)
        try:
            scored = session.score([list(o) for o in outputs])
        finally:
            session.close()
        res = []
        for o, (start, sc) in zip(outputs, scored):
            assert start == 0
            total = float(np.sum(sc.logprobs))
            res.append((total, total / len(o)))
        return res

    def describe(self, output: Output, scores: tuple[float, float]) -> dict[str, Any]:
        """The per-item record of one method: scores, text, length, repetition and cost."""
        content = self.content(output.tokens)
        return {
            "sum_logp": scores[0],
            "mean_logp": scores[1],
            "length": len(output.tokens),
            "ended": self.ended(output.tokens),
            "repetition": repetition_rate(content),
            "forward_tokens": output.forward_tokens,
            "forward_calls": output.forward_calls,
            "seconds": output.seconds,
            "text": self.decode(output.tokens),
            "tokens": list(output.tokens),
            **output.extra,
        }


def load_runner(model: str | None, seed: int) -> Runner:
    """Load ``model`` (default: the embedded SmolLM2-135M-Instruct) in fp32 on the CPU."""
    from transformers.utils import logging as hf_logging

    from refine.models import load_model, resolve

    hf_logging.set_verbosity_error()  # generate() warns about flags irrelevant here
    path = str(resolve(model))
    hf_model, tok = load_model(path)
    return Runner(hf_model, tok, path, seed)


def environment(runner: Runner, command: str) -> dict[str, Any]:
    """Where and how a run happened (machine, versions, threads, model, seed, command line, load)."""
    import transformers

    import refine

    return {
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "load_average": list(os.getloadavg()),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "refine": refine.__version__,
        "torch_threads": torch.get_num_threads(),
        "model": runner.model_path,
        "model_parameters": sum(p.numel() for p in runner.model.parameters()),
        "seed": runner.seed,
        "git": git_state(),
    }


def git_state() -> str | None:
    """``<commit> [+ uncommitted changes]`` of the repository the benchmarks run from, if it is a git checkout
    (changes under ``benchmarks/results`` and to markdown files do not count: they cannot change a result)."""
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        # results written by this very run (or an earlier one) are not code changes
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                ":(exclude)benchmarks/results", ":(exclude,glob)**/*.md"], cwd=root,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + (" + uncommitted changes" if dirty else "")


def degeneration(recs: Sequence[dict], greedy: Sequence[dict]) -> dict[str, int]:
    """How a method's outputs differ from greedy's on the same items: counts of shorter / longer outputs, more /
    less repetition, and outputs that stopped ending with EOS or started to."""
    pairs = list(zip(recs, greedy))
    return {
        "items": len(pairs),
        "shorter": sum(x["length"] < g["length"] for x, g in pairs),
        "longer": sum(x["length"] > g["length"] for x, g in pairs),
        "more_repetition": sum(x["repetition"] > g["repetition"] + 1e-9 for x, g in pairs),
        "less_repetition": sum(x["repetition"] < g["repetition"] - 1e-9 for x, g in pairs),
        "lost_eos": sum(g["ended"] and not x["ended"] for x, g in pairs),
        "gained_eos": sum(x["ended"] and not g["ended"] for x, g in pairs),
    }


def mean_se(values: Sequence[float]) -> tuple[float, float]:
    """Mean and standard error of the mean (0 for fewer than two values)."""
    if not values:
        return float("nan"), float("nan")
    arr = np.asarray(values, dtype=float)
    se = float(arr.std(ddof=1) / math.sqrt(len(arr))) if len(arr) > 1 else 0.0
    return float(arr.mean()), se


def method_rows(items: Sequence[dict], methods: Sequence[str], numbers: Sequence[str]) -> dict[str, dict]:
    """Per method over the items: mean and s.e. of each of ``numbers``, degeneration against greedy, and wall time
    relative to greedy's."""
    greedy = [it["methods"]["greedy"] for it in items]
    rows = {}
    for m in methods:
        recs = [it["methods"][m] for it in items]
        row: dict[str, Any] = {}
        for key in numbers:
            row[key], row[key + "_se"] = mean_se([float(x[key]) for x in recs])
        row["degeneration"] = degeneration(recs, greedy)
        row["time_vs_greedy"] = sum(x["seconds"] for x in recs) / sum(g["seconds"] for g in greedy)
        rows[m] = row
    return rows
