"""The ``phrase`` move: ``RefineConfig.phrases`` written whole at a sentence or line boundary, and
``RefineConfig.wrap`` put around the whole output (:mod:`refine.phrases`)."""

from __future__ import annotations

from ..phrases import after_line_start, boundary, sentence_cuts, wrapped
from .move import MOVES, Move, MoveContext, Proposal


@MOVES.register("phrase")
class PhraseMove(Move):
    """Write a phrase of ``RefineConfig.phrases`` whole before ``y[i]``, where ``i`` is the start, follows a
    sentence end or line break, or is the end of the output (before a final EOS): once inserted (the rest kept)
    and once continued (the rest re-decoded after it, as ``regenerate`` bounds it). At ``i = 0`` it also puts
    each pair of ``RefineConfig.wrap`` around the whole output. See :mod:`refine.phrases`."""

    def propose(self, hyp, i, ctx):
        y = hyp.tokens
        ended = ctx.ended(y)
        content = len(y) - (1 if ended else 0)
        if ctx.length == "fixed" or i > content:  # i == len(y): the end of an output without EOS
            return []
        out = self.wrap(y, content, ctx) if i == 0 else []
        if not ctx.phrases:
            return out
        prev = ctx.tokenizer.decode([y[i - 1]]) if i > 0 else None
        if 0 < i < content and not boundary(prev):
            return out
        # inserted whole only where the text after it starts apart from it (else the phrase's last word and the
        # next one would run together); the continued form always fits
        apart = i >= content or ctx.tokenizer.decode([y[i]])[:1] in ("", " ", "\n", "\t")
        for phrase in ctx.phrases:
            ids = phrase.bare if after_line_start(prev) else phrase.spaced
            if y[i : i + len(ids)] == ids:
                continue  # already written here
            inserted = y[:i] + ids + y[i:]
            if apart and len(inserted) <= ctx.max_output_tokens and ctx.roundtrip_ok(inserted):
                out.append(Proposal(self.name, i, inserted))
            prefix = y[:i] + ids
            max_new = min(len(y) - i + ctx.regen_extra_tokens, ctx.max_output_tokens - len(prefix))
            # a phrase goes in beside the answer, not instead of it: the re-decoded rest is at least half as long
            # as the text it replaces (a closing phrase alone would otherwise stand for the whole answer)
            min_new = min((content - i) // 2, max_new)
            if max_new > 0 and ctx.roundtrip_ok(prefix):
                out.append(Proposal(self.name, i, prefix, decode=True, max_new=max_new, min_new=min_new,
                                    force_eos=ended and ctx.length == "keep_eos"))
        return out

    def wrap(self, y: tuple[int, ...], content: int, ctx: MoveContext) -> list[Proposal]:
        """Each pair of ``ctx.wraps`` put around the whole output, its text tokenized afresh (the final EOS kept);
        none where the output already reads as wrapped in it, or where the result would be too long or would
        write a banned token."""
        if not ctx.wraps or content == 0:
            return []
        text = ctx.tokenizer.decode(list(y[:content]))
        out = []
        for before, after in ctx.wraps:
            if wrapped(text, before, after):
                continue
            ids, tail = tuple(ctx.tokenizer.encode(before + text + after)), y[content:]  # tail: the final EOS, if any
            if len(ids) + len(tail) > ctx.max_output_tokens and not tail and ctx.allow_eos:
                # cut by the cap: closed early to make room, and ended
                ids, tail = self.closed(text, before, after, ctx), (ctx.tokenizer.eos_ids[0],)
            if ids and len(ids) + len(tail) <= ctx.max_output_tokens and not set(ids) & (ctx.banned | ctx.eos_set) \
                    and not set(tail) & ctx.banned:
                out.append(Proposal(self.name, 0, ids + tail))
        return out

    #: sentence ends tried, last first, when closing a cut output early for a wrap
    MAX_CUTS = 8

    def closed(self, text: str, before: str, after: str, ctx: MoveContext) -> tuple[int, ...]:
        """``text`` closed at its last sentence end that leaves room under the cap for itself and an EOS, wrapped
        (empty when none of the last few does)."""
        for cut in sentence_cuts(text)[: self.MAX_CUTS]:
            ids = tuple(ctx.tokenizer.encode(before + text[:cut].rstrip() + after))
            if len(ids) + 1 <= ctx.max_output_tokens:
                return ids
        return ()
