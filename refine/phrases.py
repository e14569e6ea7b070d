"""Phrases: text an edit may write whole, in one step.

The model's own top-k proposes one token at a time, so an edit can only write what the model already finds
likely at that position. Constraints often name text the model would not propose there: a closing phrase
("Is there anything else I can help with?"), a marker ("P.S."), a word to include. ``RefineConfig.phrases``
lists such text; the ``phrase`` move (:class:`refine.moves.PhraseMove`) proposes each phrase at the start of
the output, after each sentence or line (a token whose text ends with ``.``, ``!``, ``?``, ``:`` or a line
break) and at its end, in two forms:

- **inserted**: the phrase goes in and the rest of the output stays as it is (a closing phrase before EOS),
  where the text after it starts with a space or line break (or there is none);
- **continued**: the phrase replaces the rest, which is re-decoded after it (a postscript the model writes);
  the re-decoded rest is at least half as long as the text it replaces, so a phrase never stands in for the
  answer it was to be added to.

A phrase is tokenized twice, bare and after a space; the form that fits is used (bare at the start of the
output or of a line, spaced after other text). The objective decides whether a proposal is taken: pair
``phrases`` with a term that values them (a reward, ``coverage``).

``RefineConfig.wrap`` lists text to put around the whole output in one edit, as ``(before, after)`` pairs:
quotation marks (``('"', '"')``), a code fence, a restated request before the answer (``("Q: ...\n\n", "")``).
Two separate phrase edits could not do it when only the pair satisfies the objective. The same ``phrase`` move
proposes each pair once per output (at position 0): the output's text with ``before`` put in front and
``after`` behind, tokenized afresh (so a quote that merges with the first word is tokenized as the model
would), its final EOS kept. An output cut by the length cap has no room for the wrap: it is closed at its last
sentence end (or line break) that leaves room, among the last few, wrapped, and ended with EOS. A wrapped
candidate whose answer inside the wrap has fewer than half the characters of the initial answer is refused,
and the degeneration and echo guards read the answer inside the wrap (``Search``): the wrap goes around the
answer, it does not replace it, and a restated request that shares words with its answer is not a loop.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Sequence

from .backends.base import TokenizerView
from .errors import ConfigError

#: a phrase may follow a token whose text, trailing spaces removed, ends with one of these
SENTENCE_ENDS = (".", "!", "?", ":")


def normalise(phrases: Any) -> tuple[str, ...]:
    """``phrases`` as stored in a config: a tuple of distinct non-blank strings."""
    if phrases is None:
        return ()
    if isinstance(phrases, str):
        phrases = (phrases,)
    try:
        items = tuple(phrases)
    except TypeError:
        items = None
    if items is None or not all(isinstance(s, str) and s.strip() for s in items):
        raise ConfigError(f"`phrases` has to be a list of non-blank strings, but is {phrases!r}")
    if len(set(items)) != len(items):
        raise ConfigError(f"`phrases` lists a phrase twice: {list(items)}")
    return items


def normalise_wraps(wrap: Any) -> tuple[tuple[str, str], ...]:
    """``wrap`` as stored in a config: a tuple of distinct ``(before, after)`` string pairs, not both blank.

    >>> normalise_wraps([['"', '"']])
    (('"', '"'),)
    """
    if wrap is None:
        return ()
    try:  # each pair a list or tuple: a dict or set would give its keys, in no fixed order
        items = tuple(tuple(w) if isinstance(w, (list, tuple)) else None for w in wrap)
    except TypeError:
        items = None
    if items is None or isinstance(wrap, (str, dict)) or not all(
            w is not None and len(w) == 2 and all(isinstance(t, str) for t in w) and (w[0].strip() or w[1].strip())
            for w in items):
        raise ConfigError(f"`wrap` has to be a list of [before, after] string pairs (not both blank), "
                          f"but is {wrap!r}")
    if len(set(items)) != len(items):
        raise ConfigError(f"`wrap` lists a pair twice: {[list(w) for w in items]}")
    return items  # type: ignore[return-value]


def wrapped(text: str, before: str, after: str) -> bool:
    """Whether ``text`` already reads as wrapped in ``before`` and ``after`` (outer whitespace and case ignored:
    a restated request whose first word an edit capitalised is still the wrap)."""
    t, b, a = text.strip(), before.strip(), after.strip()
    return (len(t) >= len(b) + len(a) and t[:len(b)].casefold() == b.casefold()
            and t[len(t) - len(a):].casefold() == a.casefold())


def unwrap(text: str, wraps: Sequence[tuple[str, str]]) -> str | None:
    """``text`` with the first wrap it reads as wrapped in taken off (outer whitespace stripped); ``None`` when
    it is wrapped in none."""
    t = text.strip()
    for before, after in wraps:
        if wrapped(t, before, after):
            return t[len(before.strip()):len(t) - len(after.strip())].strip()
    return None


def unwrapped_length(text: str, wraps: Sequence[tuple[str, str]]) -> int | None:
    """Characters of :func:`unwrap`'s answer; ``None`` when ``text`` is wrapped in none of ``wraps``."""
    inner = unwrap(text, wraps)
    return None if inner is None else len(inner)


def sentence_cuts(text: str) -> list[int]:
    """Where ``text`` may be closed early, last first: after each sentence end or line break, trailing
    whitespace left out (so a run of line breaks is one cut); never at the start or at the end of the text.

    >>> sentence_cuts("One. Two! Three")
    [9, 4]
    >>> sentence_cuts("a.\\n\\nb.\\n\\nc")
    [6, 2]
    """
    end = len(text.rstrip())
    cuts = {len(text[:m.end()].rstrip()) for m in _SENTENCE_END.finditer(text)}
    return sorted((c for c in cuts if 0 < c < end), reverse=True)


_SENTENCE_END = re.compile(r"[.!?](?=\s|$)|\n")


@dataclass(frozen=True)
class PhraseIds:
    """One phrase's token ids: ``bare`` (at the start of a line) and ``spaced`` (after other text)."""

    text: str
    bare: tuple[int, ...]
    spaced: tuple[int, ...]


def encode_phrases(tokenizer: TokenizerView, phrases: Sequence[str], banned: frozenset[int] = frozenset()
                   ) -> tuple[PhraseIds, ...]:
    """Each phrase tokenized bare and after a space (the space-led text stripped of a leading space when the
    tokenizer keeps it as a token of its own).

    Raises:
        ConfigError: a phrase would write a token that is banned (``forbid``, special tokens or EOS).
    """
    out = []
    never = banned | set(tokenizer.eos_ids)
    for text in phrases:
        bare = tuple(tokenizer.encode(text.strip()))
        spaced = tuple(tokenizer.encode(" " + text.strip())) or bare
        if not bare:
            raise ConfigError(f"the phrase {text!r} encodes to no tokens")
        ok = [ids for ids in (bare, spaced) if not set(ids) & never]
        if not ok:
            bad = sorted((set(bare) | set(spaced)) & never)
            raise ConfigError(f"the phrase {text!r} holds token(s) {bad} that refinement may not write "
                              "(forbidden, special or EOS)")
        # one form ruled out (a leading-space token forbidden, say): the other serves everywhere
        out.append(PhraseIds(text, ok[0] if len(ok) == 1 else bare, ok[-1]))
    return tuple(out)


def boundary(prev_text: str) -> bool:
    """Whether a phrase may follow a token with this text: a sentence end or a line break."""
    if "\n" in prev_text:
        return True
    return prev_text.rstrip(" ").endswith(SENTENCE_ENDS)


def after_line_start(prev_text: str | None) -> bool:
    """Whether the bare form fits after ``prev_text`` (None: the start of the output)."""
    return prev_text is None or prev_text.endswith(("\n", " "))
