"""The token moves: ``substitute``, ``regenerate``, ``regenerate_beam``, ``delete`` and ``insert``, each with
candidates from the model's own top-k at the position."""

from __future__ import annotations

from collections.abc import Callable

from .move import MOVES, Move, MoveContext, Proposal


def _truncation(name: str, y: tuple[int, ...], i: int, eos: int, prior: float) -> Proposal:
    return Proposal(name, i, y[:i] + (eos,), prior=prior)


def _per_alternative(name: str, hyp, i: int, ctx: MoveContext,
                     build: Callable[[int, float], Proposal | None]) -> list[Proposal]:
    """One proposal per top-k alternative to ``y[i]``, in the candidates' order: an EOS alternative ends the output
    there; any other token ``v`` gets ``build(v, prior)`` (``None``: no proposal). ``prior`` is the alternative's
    log-probability minus that of ``y[i]``."""
    y = hyp.tokens
    old_lp = float(hyp.scores.logprobs[i])
    out = []
    for v, lp in ctx.candidates(hyp, i, exclude=(y[i],)):
        if v in ctx.eos_set:
            out.append(_truncation(name, y, i, v, lp - old_lp))
            continue
        proposal = build(v, lp - old_lp)
        if proposal is not None:
            out.append(proposal)
    return out


@MOVES.register("substitute")
class Substitute(Move):
    """Replace ``y[i]`` by a top-k alternative, keeping the rest of the output as it is."""

    def propose(self, hyp, i, ctx):
        y = hyp.tokens
        if i >= len(y) or (ctx.ended(y) and i == len(y) - 1):
            return []  # a final EOS is never substituted (the output would stop being terminated)

        def build(v, prior):
            cand = y[:i] + (v,) + y[i + 1 :]
            return Proposal(self.name, i, cand, prior=prior) if ctx.roundtrip_ok(cand) else None

        return _per_alternative(self.name, hyp, i, ctx, build)


@MOVES.register("regenerate")
class Regenerate(Move):
    """Replace ``y[i]`` by a top-k alternative and re-decode everything after it greedily.

    The new suffix may be up to ``regen_extra_tokens`` longer than the old one (``length="fixed"``: exactly
    as long, with EOS kept last). At a final EOS this continues the answer instead of ending it.
    """

    def beam(self, ctx: MoveContext) -> int:
        """Beam width of the re-decoding (1: greedy)."""
        return 1

    def propose(self, hyp, i, ctx):
        y = hyp.tokens
        if i >= len(y):
            return []
        ended = ctx.ended(y)
        old_suffix = len(y) - i - 1  # tokens after position i
        if ctx.length == "fixed":
            if ended and i == len(y) - 1:
                return []
            max_new = old_suffix
            min_new = old_suffix - (1 if ended else 0)
            force_eos = ended
        else:
            max_new = min(old_suffix + ctx.regen_extra_tokens, ctx.max_output_tokens - (i + 1))
            min_new = 0
            force_eos = ended and ctx.length == "keep_eos"
        if max_new < 0:
            return []
        beam = self.beam(ctx)

        def build(v, prior):
            prefix = y[:i] + (v,)
            if not ctx.roundtrip_ok(prefix):
                return None
            if max_new == 0:
                return Proposal(self.name, i, prefix, prior=prior)
            return Proposal(self.name, i, prefix, decode=True, max_new=max_new, min_new=min_new,
                            force_eos=force_eos, prior=prior, beam=beam)

        return _per_alternative(self.name, hyp, i, ctx, build)


@MOVES.register("regenerate_beam")
class RegenerateBeam(Regenerate):
    """``regenerate`` whose suffix is re-decoded by a beam search of width ``regen_beam`` instead of greedily.

    A greedy suffix commits to each token; a beam keeps ``regen_beam`` partial suffixes, so one that pays for an
    unlikely token early and recovers later survives. The beams of every proposal of a block decode together in
    one batch per step; the best complete beam (by sum log P) is the candidate. With ``prune_margin`` set, the
    lookahead test is asked about each proposal's best partial beam.
    """

    def beam(self, ctx: MoveContext) -> int:
        return ctx.regen_beam


@MOVES.register("delete")
class Delete(Move):
    """Drop ``y[i]`` (never a final EOS)."""

    def propose(self, hyp, i, ctx):
        y = hyp.tokens
        content = len(y) - (1 if ctx.ended(y) else 0)
        if i >= content or ctx.length == "fixed":
            return []
        cand = y[:i] + y[i + 1 :]
        if not cand or not ctx.roundtrip_ok(cand):
            return []
        return [Proposal(self.name, i, cand, prior=-float(hyp.scores.logprobs[i]) - 1.0)]


@MOVES.register("insert")
class Insert(Move):
    """Insert a top-k token before ``y[i]`` (before the final EOS at most)."""

    def propose(self, hyp, i, ctx):
        y = hyp.tokens
        content = len(y) - (1 if ctx.ended(y) else 0)
        if i > content or i >= len(y) or ctx.length == "fixed" or len(y) + 1 > ctx.max_output_tokens:
            return []
        out = []
        for v, lp in ctx.candidates(hyp, i, exclude=(y[i],) + tuple(ctx.eos_set)):
            cand = y[:i] + (v,) + y[i:]
            if ctx.roundtrip_ok(cand):
                out.append(Proposal(self.name, i, cand, prior=lp))
        return out
