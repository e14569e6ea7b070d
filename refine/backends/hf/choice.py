"""How a decoding row chooses its next token from one step's log-probabilities: the request's length rules, the
banned ids, greedy argmax or a seeded draw at a temperature. Shared by the walk along the base, drafted decoding and
beam search, so all three choose alike."""

from __future__ import annotations

from ...errors import require
from ..base import DecodeRequest
from ..sampling import inverse_cdf

torch = require("torch", "torch==2.13.0")


class TokenChoice:
    """Mixin of :class:`~refine.backends.hf.session.HFSession`: a step's allowed log-probs and the choice made
    from them (uses the session's ``backend`` and ``banned``)."""

    _banned_for: frozenset[int] | None = None  # the `banned` set `_banned_idx` was built from
    _banned_idx = None

    def _allowed(self, logp, n_new: int, req: DecodeRequest):
        """One step's log-probs ``(V,)`` under the request's length rules (EOS masked before ``min_new``), or
        None where the rules force EOS."""
        eos_ids = self.backend.tokenizer.eos_ids
        if req.force_eos and n_new == req.max_new - 1:
            return None
        idx = self._banned_index()
        if idx is not None:
            logp = logp.index_fill(-1, idx, -float("inf"))
        if n_new < req.min_new:
            logp = logp.clone() if idx is None else logp
            logp[list(eos_ids)] = -float("inf")
        return logp

    def _banned_index(self):
        """:attr:`banned` as an index tensor (built once per set), or None when nothing is banned."""
        if not self.banned:
            return None
        if self._banned_for is not self.banned:
            self._banned_idx = torch.tensor(sorted(self.banned), dtype=torch.long, device=self.backend.device)
            self._banned_for = self.banned
        return self._banned_idx

    def _greedy(self, logp, n_new: int, req: DecodeRequest) -> int:
        """The greedy choice from one step's log-probs under the request's length rules."""
        allowed = self._allowed(logp, n_new, req)
        return self.backend.tokenizer.eos_ids[0] if allowed is None else int(allowed.argmax())

    def _sample(self, logp, n_new: int, req: DecodeRequest, gen) -> tuple[int, float]:
        """A token drawn from ``softmax(logp / temperature)`` under the length rules, and its log-probability
        under that distribution (a forced EOS: 0)."""
        allowed = self._allowed(logp, n_new, req)
        if allowed is None:
            return self.backend.tokenizer.eos_ids[0], 0.0
        q = torch.log_softmax(allowed.double() / req.temperature, -1)  # (V,)
        t = inverse_cdf(q.exp(), gen)
        return t, float(q[t])
