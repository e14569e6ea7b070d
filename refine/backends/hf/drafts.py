"""Greedy or sampled decoding of a chunk of rows, each step verifying drafts copied from the call's ``base``
(exact: drafts change how many forward calls decoding takes, never what it chooses), with ``fork`` branches that
copy their parent's cache row."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ...errors import require
from ..base import Decoded

torch = require("torch", "torch==2.13.0")


class DraftedDecoding:
    """Mixin of :class:`~refine.backends.hf.session.HFSession` (uses its cache, batch layout, forward, token
    choice and ``call_overhead_tokens``)."""

    #: draft tokens fed for verification, and of those the ones decoding chose (written only here)
    drafted_tokens = 0
    accepted_draft_tokens = 0

    def _width(self, drafts: Sequence[Sequence[int]], rates: Sequence[float]) -> int:
        """The batch width (1 + draft columns) that maximises expected tokens gained per unit of call cost.

        A row with a draft of ``d`` tokens and acceptance rate ``q`` gains ``1 + q + q^2 + ... + q^min(d, w-1)``
        tokens at width ``w`` (a draft token counts only if all before it were accepted); a call costs
        ``call_overhead_tokens + rows * w``. Rows without drafts cost their padding columns too. A call holds at
        most ``max_batch_tokens`` token positions (``rows * w``), unless one column alone is more.
        """
        longest = max((len(d) for d in drafts), default=0)
        if longest == 0:
            return 1
        rows = len(drafts)
        widest = max(self.max_batch_tokens // rows, 1)
        best_w, best = 1, rows / (self.call_overhead_tokens + rows)
        for w in range(2, min(longest + 1, widest) + 1):
            gain = 0.0
            for d, q in zip(drafts, rates):
                n = min(len(d), w - 1)
                gain += 1.0 + (q * (1 - q**n) / (1 - q) if q < 1 else float(n))
            value = gain / (self.call_overhead_tokens + rows * w)
            if value > best:
                best_w, best = w, value
        return best_w

    @staticmethod
    def _draft(row: Sequence[int], base: Sequence[int], edit: int, size: int) -> list[int]:
        """Tokens of ``base`` the greedy continuation of ``row`` is likely to repeat (checked, never trusted).

        In step with ``base`` (same index, same token) the rest of ``base`` follows; otherwise the tokens after
        the last occurrence in ``base`` (past the edit) of the row's last two tokens.
        """
        k = len(row) - 1
        if edit < k < len(base) and row[k] == base[k]:
            return list(base[k + 1 : k + 1 + size])
        if len(row) >= 2:
            a, b = row[-2], row[-1]
            for j in range(len(base) - 1, max(edit, 0), -1):
                if base[j] == b and base[j - 1] == a:
                    return list(base[j + 1 : j + 1 + size])
        return []

    def _decode_chunk(self, reqs, starts, lens, feds, base, room, prune, forks=None, gens=None) -> list[Decoded]:
        """Greedy or sampled decoding of one chunk of rows, verifying drafts from ``base`` to take several tokens
        per step.

        Exact: at each column the row chooses its token as it would without drafts, given everything before it
        (greedy: the argmax; sampled: a draw from ``softmax(logp / temperature)`` with the row's generator), and
        a drafted token is kept only if it is that choice; the first choice that differs is the row's next token
        and ends the row's columns. A sampled row thus makes the same draws, in the same order, from the same
        distributions as without drafts (a draft token d survives with probability q(d)), and the output equals
        plain decoding; only the number of sequential forward calls changes. Drafting is skipped whenever it
        could push the chunk past ``room`` forward tokens. Rows that ``prune`` rejects stop.

        ``forks`` maps a branch row to ``(parent row, keep)`` (see ``DecodeRequest.fork``): the branch is not in
        the first forward; when its parent has generated ``keep`` tokens, it draws its own next token from the
        parent's distribution there (the column of the parent's call that predicts that token) and joins the
        batch with a copy of the parent's cache row, its mask hiding the parent's columns after that one (draft
        tokens the branch does not share). Rows of a fork family are never pruned.
        """
        dev = self.backend.device
        eos_ids = self.backend.tokenizer.eos_ids
        B = len(reqs)
        forks = forks or {}
        spent0 = self.forward_tokens
        roots = [r for r in range(B) if r not in forks]
        pending: dict[int, list[int]] = {}  # parent row -> its branches not yet spawned
        for ch, (par, _) in sorted(forks.items()):
            pending.setdefault(par, []).append(ch)
        family = set(forks) | set(pending)
        inp, mask, pos, root_cols = self._batch([lens[r] for r in roots], [feds[r] for r in roots], left_pad=True)
        W = inp.shape[1]
        res = self._forward(inp, self._fork(len(roots), max(lens[r] for r in roots)), attention_mask=mask,
                            position_ids=pos)
        cache, logits = res.past_key_values, res.logits  # (roots, W, V)

        rec: list[list[tuple]] = [[] for _ in range(B)]  # per row: (logprob, topk ids, topk logprobs, entropy)
        toks: list[list[int]] = [list(r.tokens) for r in reqs]

        def record(r: int, col_logits, targets: Sequence[int]) -> None:
            _, lp, tid, tlp, ent = self._summaries(col_logits, torch.tensor(targets, device=dev))
            lp, tid, tlp, ent = lp.double().tolist(), tid.cpu().numpy(), tlp.double().cpu().numpy(), ent.tolist()
            rec[r] += [(lp[j], tid[j], tlp[j], ent[j]) for j in range(len(targets))]

        # scores of the forced tokens (request tokens from `start` on): fed columns c0 .. W-2 (a branch copies
        # its parent's records when it spawns)
        for j, r in enumerate(roots):
            forced = list(reqs[r].tokens[starts[r]:])
            if forced:
                record(r, logits[j, root_cols[j] : W - 1], forced)

        # sampled rows: a generator per row (seeded by its request) and the log-density of each drawn token
        given = gens or {}  # row -> a generator already drawn from (a walked request's)
        gens = [given[j] if j in given else torch.Generator().manual_seed(int(r.seed)) if r.sampled else None
                for j, r in enumerate(reqs)]
        drawn: list[list[float]] = [[] for _ in range(B)]

        def choose(r: int, logp, n: int) -> int:
            if gens[r] is None:
                return self._greedy(logp, n, reqs[r])
            t, lq = self._sample(logp, n, reqs[r], gens[r])
            drawn[r].append(lq)
            return t

        n_new = [0] * B
        hits = [[1.0, 2.0] for _ in range(B)]  # per row: accepted + 1, drafted + 2 (Laplace estimate)
        pruned: set[int] = set()
        checked = [0] * B  # n_new at the last prune checkpoint
        edit = [len(r.tokens) - 1 for r in reqs]
        dsize = [8] * B
        alive, rows_kept = [], []
        for j, r in enumerate(roots):  # first generated token, from the last column
            req = reqs[r]
            if req.max_new > 0:
                t = choose(r, torch.log_softmax(logits[j, -1].float(), -1), 0)
                record(r, logits[j, -1:], [t])
                toks[r].append(t)
                n_new[r] = 1
                if t not in eos_ids and req.max_new > 1:
                    alive.append(r)
                    rows_kept.append(j)
        keep = torch.tensor(rows_kept, device=dev, dtype=torch.long)
        cache.batch_select_indices(keep)
        mask, cur = mask[keep], pos[keep, -1] + 1  # cur: position of each row's next fed token
        spawned: set[int] = set()

        def spawn(r: int, j: int, col: int, new: list[int], logp) -> list[tuple[int, int, int, int]]:
            """Branch off row ``r`` (batch row ``j``, at column ``col`` of this call, after this call's accepted
            tokens ``new``) the branches that keep its ``n_new[r]`` tokens; returns ``(branch, j, col, position of
            its next fed token)`` for those that go on decoding."""
            out = []
            for ch in [c for c in pending.get(r, []) if forks[c][1] == n_new[r]]:
                pending[r].remove(ch)
                spawned.add(ch)
                toks[ch], rec[ch] = list(toks[r]) + new, list(rec[r])
                if new:
                    record(ch, logits[j, :col], new)
                t = choose(ch, logp, n_new[r])
                record(ch, logits[j, col : col + 1], [t])
                toks[ch].append(t)
                n_new[ch] = n_new[r] + 1
                if t not in eos_ids and n_new[ch] < reqs[ch].max_new:
                    out.append((ch, j, col, int(cur[j]) + col + 1))
            return out

        while alive:
            self._check_deadline()
            # 1. drafts, if the worst case stays within `room`
            drafts = []
            for r in alive:
                left = reqs[r].max_new - n_new[r] - 1 - (1 if reqs[r].force_eos else 0)
                drafts.append(self._draft(toks[r], base, edit[r], min(dsize[r], max(left, 0))))
            width = self._width(drafts, [hits[r][0] / hits[r][1] for r in alive])
            drafts = [d[: width - 1] for d in drafts]
            if room is not None and width > 1:
                plain_rest = sum(reqs[r].max_new - n_new[r] - 1 for r in alive)
                plain_rest += sum(reqs[c].max_new - forks[c][1] - 1 for kids in pending.values() for c in kids)
                if (self.forward_tokens - spent0) + len(alive) * width + plain_rest > room:
                    drafts, width = [[] for _ in alive], 1
            # 2. one forward: each row feeds its last token and its draft; pads are masked
            A = len(alive)
            inp = torch.full((A, width), eos_ids[0], dtype=torch.long, device=dev)
            new_mask = torch.zeros((A, width), dtype=mask.dtype, device=dev)
            for j, (r, d) in enumerate(zip(alive, drafts)):
                inp[j, : 1 + len(d)] = torch.tensor([toks[r][-1], *d], device=dev)
                new_mask[j, : 1 + len(d)] = 1
            mask = torch.cat([mask, new_mask], dim=1)
            step_pos = cur[:, None] + torch.arange(width, device=dev)[None, :]
            res = self._forward(inp, cache, attention_mask=mask, position_ids=step_pos)
            cache, logits = res.past_key_values, res.logits  # (A, width, V)
            # 3. accept the drafted tokens decoding would have chosen, then the first choice that differs
            still, joining = [], []
            for j, (r, d) in enumerate(zip(alive, drafts)):
                logp = torch.log_softmax(logits[j].float(), -1)  # (width, V)
                new: list[int] = []
                for c in range(len(d) + 1):
                    if pending.get(r):
                        joining += spawn(r, j, c, list(new), logp[c])
                    t = choose(r, logp[c], n_new[r])
                    new.append(t)
                    n_new[r] += 1
                    if t in eos_ids or n_new[r] >= reqs[r].max_new or c == len(d) or t != d[c]:
                        break
                record(r, logits[j, : len(new)], new)
                toks[r] += new
                self.drafted_tokens += len(d)
                self.accepted_draft_tokens += len(new) - 1
                if d:
                    hits[r][0] += len(new) - 1
                    hits[r][1] += min(len(new), len(d))
                used = len(new)  # fed columns whose keys stay valid: the last token + accepted drafts
                mask[j, mask.shape[1] - width + used :] = 0
                cur[j] += used
                dsize[r] = min(dsize[r] * 2, 64) if d and used == len(d) + 1 else 8
                done = new[-1] in eos_ids or n_new[r] >= reqs[r].max_new
                # every checkpoint (each `prune_every` generated tokens) this call passed, in order, on the
                # output as it was there (a finished row's own end is not one): pruning decisions are the same
                # whether drafts took one token per call or many
                last = n_new[r] - 1 if done else n_new[r]
                while prune is not None and r not in family and checked[r] + self.prune_every <= last:
                    checked[r] += self.prune_every
                    ahead = n_new[r] - checked[r]  # tokens generated past the checkpoint
                    if prune(r, tuple(toks[r][: len(toks[r]) - ahead]), self._scores(rec[r][: len(rec[r]) - ahead])):
                        pruned.add(r)
                        break
                if not done and r not in pruned:
                    still.append(j)
            if len(still) < A or joining:
                keep = torch.tensor(still + [j for _, j, _, _ in joining], device=dev, dtype=torch.long)
                cache.batch_select_indices(keep)
                mask, cur = mask[keep], cur[keep]  # copies: a branch's row can change alone
                for k, (_, _, col, nxt) in enumerate(joining, start=len(still)):
                    mask[k, mask.shape[1] - width + col + 1 :] = 0
                    cur[k] = nxt
            alive = [alive[j] for j in still] + [ch for ch, _, _, _ in joining]

        out = []
        for r in range(B):
            if r in forks and r not in spawned:  # the parent stopped first: the branch never ran
                par = forks[r][0]
                out.append(Decoded(tuple(toks[par]), self._scores(rec[par]), forked=False,
                                   sample_logprobs=np.zeros(0) if reqs[r].sampled else None))
                continue
            out.append(Decoded(tuple(toks[r]), self._scores(rec[r]), pruned=r in pruned,
                               sample_logprobs=np.asarray(drawn[r], dtype=np.float64) if reqs[r].sampled else None,
                               forked=True if r in forks else None))
        return out
