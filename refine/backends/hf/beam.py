"""Beam search over a chunk of decode requests, every beam of every request in one batch per step."""

from __future__ import annotations

from ...errors import require
from ..base import Decoded

torch = require("torch", "torch==2.13.0")


class BeamDecoding:
    """Mixin of :class:`~refine.backends.hf.session.HFSession` (uses its cache, batch layout, forward, token
    choice and ``prune_every``)."""

    def _beam_chunk(self, reqs, starts, lens, feds, prune) -> list[Decoded]:
        """Beam search for one chunk of requests, all beams of all requests in one batch per step.

        Each request keeps at most ``beam`` unfinished beams, ranked by sum log P of the generated tokens; a beam
        that ends (EOS, or ``max_new`` tokens) joins the request's finished list if it ranks among the ``beam``
        best candidates of its step. A request stops when no beam is left or its best finished beam scores at
        least its best unfinished one (log-probabilities only fall, so none could pass it). The result is the
        best finished beam. ``prune`` is asked every :attr:`prune_every` tokens about each request's best
        unfinished beam; a request it rejects stops (``pruned``).
        """
        dev = self.backend.device
        eos_ids = set(self.backend.tokenizer.eos_ids)
        B = len(reqs)
        inp, mask, pos, cols = self._batch(lens, feds, left_pad=True)
        W = inp.shape[1]
        res = self._forward(inp, self._fork(B, max(lens)), attention_mask=mask, position_ids=pos)
        cache, logits = res.past_key_values, res.logits  # (B, W, V)

        forced: list[list[tuple]] = [[] for _ in range(B)]  # records of each request's forced tokens
        for r, req in enumerate(reqs):
            toks = list(req.tokens[starts[r]:])
            if toks:
                _, lp, tid, tlp, ent = self._summaries(logits[r, cols[r] : W - 1], torch.tensor(toks, device=dev))
                lp, tid, tlp, ent = lp.double().tolist(), tid.cpu().numpy(), tlp.double().cpu().numpy(), ent.tolist()
                forced[r] = [(lp[j], tid[j], tlp[j], ent[j]) for j in range(len(toks))]

        # a beam: (score, generated tokens, their records); `alive[r]` pairs each with its row in the cache
        done: list[list[tuple]] = [[] for _ in range(B)]
        alive: list[list[tuple]] = [[((0.0, [], []), r)] if req.max_new > 0 else [] for r, req in enumerate(reqs)]
        pruned: set[int] = set()
        step_logits = logits[:, -1]  # (rows, V): the next-token distribution of each cached row
        cur = pos[:, -1] + 1  # position of each row's next fed token
        n = 0  # tokens generated so far by every unfinished beam
        while any(alive):
            self._check_deadline()
            logp_all, _, top_id, top_lp, ent = self._summaries(step_logits)
            new_alive: list[list[tuple]] = [[] for _ in range(B)]
            for r, req in enumerate(reqs):
                if not alive[r]:
                    continue
                w = req.beam
                cands = []  # (score, beam, row, token)
                for beam, row in alive[r]:
                    allowed = self._allowed(logp_all[row], n, req)
                    if allowed is None:
                        picks = [self.backend.tokenizer.eos_ids[0]]
                    else:
                        picks = torch.topk(allowed, w).indices.tolist()
                    for t in picks:
                        if allowed is None or allowed[t] > -float("inf"):
                            cands.append((beam[0] + float(logp_all[row, t]), beam, row, t))
                cands.sort(key=lambda c: -c[0])
                for rank, (score, beam, row, t) in enumerate(cands[: 2 * w]):
                    new = (score, beam[1] + [t], beam[2] + [(float(logp_all[row, t]), top_id[row].cpu().numpy(),
                                                             top_lp[row].double().cpu().numpy(), float(ent[row]))])
                    if t in eos_ids or n + 1 >= req.max_new:
                        if rank < w:
                            done[r].append(new)
                    elif len(new_alive[r]) < w:
                        new_alive[r].append((new, row))
                best_done = max((d[0] for d in done[r]), default=-float("inf"))
                if new_alive[r] and best_done >= new_alive[r][0][0][0]:
                    new_alive[r] = []
                if not done[r] and not new_alive[r]:  # every candidate was -inf: end the best beam as it is
                    done[r].append(alive[r][0][0])
            n += 1
            for r in range(B):  # the lookahead test on each request's best unfinished beam
                if prune is not None and new_alive[r] and n % self.prune_every == 0:
                    beam = new_alive[r][0][0]
                    if prune(r, tuple(reqs[r].tokens) + tuple(beam[1]), self._scores(forced[r] + beam[2])):
                        pruned.add(r)
                        new_alive[r] = []
            alive = new_alive
            flat = [(beam, row, r) for r in range(B) for beam, row in alive[r]]
            if not flat:
                break
            keep = torch.tensor([row for _, row, _ in flat], device=dev, dtype=torch.long)
            cache.batch_select_indices(keep)
            mask, cur = mask[keep], cur[keep]
            inp = torch.tensor([[beam[1][-1]] for beam, _, _ in flat], device=dev)
            mask = torch.cat([mask, torch.ones((len(flat), 1), dtype=mask.dtype, device=dev)], dim=1)
            res = self._forward(inp, cache, attention_mask=mask, position_ids=cur[:, None])
            cache, step_logits = res.past_key_values, res.logits[:, -1]
            cur = cur + 1
            j = 0
            for r in range(B):  # renumber: each beam now sits in its own row of the new batch
                alive[r] = [(beam, j + k) for k, (beam, _) in enumerate(alive[r])]
                j += len(alive[r])

        out = []
        for r, req in enumerate(reqs):
            if r in pruned or not done[r]:
                out.append(Decoded(tuple(req.tokens), self._scores(forced[r]), pruned=r in pruned))
                continue
            score, gen, recs = max(done[r], key=lambda d: d[0])
            out.append(Decoded(tuple(req.tokens) + tuple(gen), self._scores(forced[r] + recs)))
        return out
