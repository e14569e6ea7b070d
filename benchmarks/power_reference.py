"""Power sampling the way the reference implementation of Karan & Du (2025) runs it: batch 1, a full re-prefill
of prompt + prefix for every proposal.

The target is pi(y) ∝ p(y|x)^alpha over outputs of at most ``max_new_tokens`` tokens. The output grows in
``blocks`` blocks of ``B = ceil(max_new_tokens / blocks)`` tokens; block k (k = 1..blocks) has the length limit
``L_k = min(k * B, max_new_tokens)``:

1. extend: the current state y (empty at first) is continued by a draw from the proposal up to ``L_k`` tokens
   (unless it already ended with EOS);
2. ``steps`` Metropolis–Hastings steps: a cut t uniform over 0..|y|-1, a proposal y' = y[:t] + s where the
   suffix s is sampled token by token from the tempered model q(.) ∝ p(.)^(1/temperature) (temperature 1/alpha)
   up to ``L_k`` tokens or EOS, and acceptance with probability min(1, R),

       log R = alpha * (log p(y'[t:] | y[:t]) - log p(y[t:] | y[:t]))
               + log q(y[t:] | y[:t]) - log q(y'[t:] | y[:t]),

   the prefix y[:t] being common to both. Every token of a state was drawn from q given its own prefix, so the
   reverse density log q(y[t:] | y[:t]) is the sum of the log q values stored when those tokens were drawn; no
   forward pass is needed for it. As in the reference, the cut ratio w(t|y')/w(t|y) = |y|/|y'| is left out (it
   is 1 whenever both outputs reach the block's limit);
3. if the state ended with EOS, the chain stops (later blocks are not run).

Each proposal is one ``model.generate`` call at batch 1 on prompt + prefix: the whole context is prefilled
again, with a fresh KV cache, for every proposal, as the reference code does. ``output_logits=True`` returns the
raw logits of every step, from which the proposal's log q (``log_softmax(logits / temperature)``, exactly the
distribution ``generate`` sampled from with no other warper) and the target's log p (``log_softmax(logits)``)
of each drawn token are read without another forward pass.

What it returns: the **final state of the chain**, the paper's output (a sample from the target, up to mixing).
refine's ``power`` strategy with ``output="best"`` (its default) returns instead the best complete output it
visited by the objective; with ``output="sample"`` it returns the final state too.

Seeded: the cut positions and the acceptance draws come from ``numpy.random.default_rng(seed)``, the tokens from
torch's CPU generator seeded with ``seed`` (its state before the call is restored after it).

Cost is counted by :class:`~benchmarks.common.ForwardCounter` (every forward call of the model adds its
``input_ids.numel()``), wall time by ``time.perf_counter`` around the whole chain.
"""

from __future__ import annotations

import math
import time
from typing import Sequence

import numpy as np
import torch

from .common import ForwardCounter, Output, Runner


def propose(runner: Runner, context: Sequence[int], max_new: int,
            temperature: float) -> tuple[list[int], np.ndarray, np.ndarray]:
    """One draw of at most ``max_new`` tokens after ``context`` (prompt + prefix) from the tempered model.

    Returns the drawn tokens (up to and including an EOS), their log q under the tempered distribution and their
    log p under the model, both float64 of shape ``(len(tokens),)``.
    """
    ids = torch.tensor([list(context)])
    with torch.no_grad():
        out = runner.model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new, do_sample=True,
            temperature=temperature, top_k=0, top_p=1.0, eos_token_id=runner.eos_ids, pad_token_id=runner.pad_id,
            return_dict_in_generate=True, output_logits=True)
    tokens = runner._cut(out.sequences[0, len(context):].tolist())
    logits = torch.stack(out.logits[: len(tokens)])[:, 0].double()  # (n, V)
    chosen = torch.tensor(tokens)[:, None]
    logq = torch.log_softmax(logits / temperature, -1).gather(-1, chosen)[:, 0].numpy()
    logp = torch.log_softmax(logits, -1).gather(-1, chosen)[:, 0].numpy()
    return tokens, logq, logp


def power_reference(runner: Runner, prompt: Sequence[int], max_new_tokens: int = 32, alpha: float = 4.0,
                    blocks: int = 4, steps: int = 10, seed: int = 0) -> Output:
    """Run one MH power-sampling chain for ``prompt``; see the module docstring for the algorithm.

    Returns the chain's final state with its cost; ``extra`` holds ``proposals`` and ``accepted`` (MH steps and
    accepted moves), ``block_lengths`` (the state's length after each block run) and ``final_logp`` (log p of the
    returned output, summed over its tokens, from the sampling logits).
    """
    if alpha <= 0 or blocks < 1 or steps < 0 or max_new_tokens < 1:
        raise ValueError("power_reference needs alpha > 0, blocks >= 1, steps >= 0 and max_new_tokens >= 1")
    temperature = 1.0 / alpha
    block = math.ceil(max_new_tokens / blocks)
    rng = np.random.default_rng(seed)
    prompt = list(prompt)
    tokens: list[int] = []
    logq = np.zeros(0)
    logp = np.zeros(0)
    proposals = accepted = 0
    lengths: list[int] = []
    with torch.random.fork_rng(devices=[]), ForwardCounter(runner.model) as fc:
        torch.manual_seed(seed)
        t0 = time.perf_counter()
        for k in range(1, blocks + 1):
            limit = min(k * block, max_new_tokens)
            if not runner.ended(tokens) and len(tokens) < limit:
                new, q, p = propose(runner, prompt + tokens, limit - len(tokens), temperature)
                tokens, logq, logp = tokens + new, np.concatenate([logq, q]), np.concatenate([logp, p])
            for _ in range(steps):
                t = int(rng.integers(len(tokens)))
                new, q, p = propose(runner, prompt + tokens[:t], limit - t, temperature)
                log_r = alpha * (p.sum() - logp[t:].sum()) + logq[t:].sum() - q.sum()
                proposals += 1
                if log_r >= 0 or rng.random() < math.exp(log_r):
                    accepted += 1
                    tokens = tokens[:t] + new
                    logq, logp = np.concatenate([logq[:t], q]), np.concatenate([logp[:t], p])
            lengths.append(len(tokens))
            if runner.ended(tokens):
                break
        seconds = time.perf_counter() - t0
    extra = {"proposals": proposals, "accepted": accepted, "block_lengths": lengths,
             "final_logp": float(logp.sum()), "alpha": alpha, "blocks": blocks, "steps": steps}
    return Output(tokens, fc.tokens, fc.calls, seconds, extra)
