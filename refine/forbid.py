"""Forbidden tokens: text a refinement must never write.

``RefineConfig.forbid`` names what no proposal may introduce, as strings (a token whose text contains one of
them is forbidden: ``[","]`` keeps commas out) or as a predicate on a token's text (``str.isupper``-style rules:
``lambda t: any(c.isupper() for c in t)`` keeps an answer lowercase). The ids it forbids are worked out once per
search from the tokenizer's vocabulary (:func:`forbidden_ids`) and then:

- edits never put them in (substitutions, insertions, the tokens a re-decoding is forced to start with);
- every re-decoded or sampled continuation is drawn with them masked out (greedy takes the best allowed token;
  sampling renormalises over the allowed ones, so samplers' proposal densities stay exact);
- the model's top-k alternatives at each position are taken among the allowed tokens;
- positions that hold a forbidden token are visited first, since only an edit there (or earlier) removes it.

Forbidding works on tokens, not on the text: a string that spans tokens ("New York") is not kept out by
forbidding it, and the output being refined keeps its forbidden tokens until an edit replaces them. The
objective decides whether such an edit is taken: pair ``forbid`` with a reward or term that values the
constraint (the checker of an instruction, say). EOS and special tokens are never forbidden.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Callable, Sequence

from .backends.base import Session, TokenizerView
from .errors import ConfigError, InputError

def normalise(forbid: Any) -> tuple[str, ...] | Callable[[str], bool]:
    """``forbid`` as stored in a config: a tuple of non-empty strings, or the predicate itself."""
    if forbid is None:
        return ()
    if callable(forbid):
        return forbid
    if isinstance(forbid, str):
        forbid = (forbid,)
    try:
        items = tuple(forbid)
    except TypeError:
        items = None
    if items is None or not all(isinstance(s, str) and s for s in items):
        raise ConfigError(f"`forbid` has to be a list of non-empty strings or a function of a token's text, "
                          f"but is {forbid!r}")
    return items


def describe(forbid: tuple[str, ...] | Callable[[str], bool]) -> list[str] | str:
    """A JSON-friendly form: the strings, or the predicate's name."""
    if callable(forbid):
        return getattr(forbid, "__name__", repr(forbid))
    return list(forbid)


@lru_cache(maxsize=8)
def token_texts(tokenizer: TokenizerView) -> tuple[str, ...]:
    """Each id's text as the tokenizer decodes it alone (ids it cannot decode: empty)."""
    out = []
    for i in range(tokenizer.vocab_size):
        try:
            out.append(tokenizer.decode([i]))
        except Exception:  # rows of the output layer past the tokenizer's vocabulary
            out.append("")
    return tuple(out)


def _matcher(forbid: tuple[str, ...] | Callable[[str], bool]) -> Callable[[str], bool]:
    if callable(forbid):
        return forbid
    return lambda text: any(s in text for s in forbid)


def forbidden_ids(tokenizer: TokenizerView, forbid: tuple[str, ...] | Callable[[str], bool]) -> frozenset[int]:
    """The ids whose text ``forbid`` rules out (never EOS or a special token).

    Raises:
        ConfigError: the predicate raised, or nothing but EOS and special tokens would be left to write.
    """
    if not callable(forbid) and not forbid:
        return frozenset()
    match = _matcher(forbid)
    keep = set(tokenizer.eos_ids) | set(tokenizer.special_ids)
    out = set()
    writable = 0  # tokens with text that the rule leaves (rows past the tokenizer's vocabulary have none)
    for i, text in enumerate(token_texts(tokenizer)):
        if i in keep or not text:
            continue
        try:
            hit = match(text)
        except Exception as exc:
            raise ConfigError(f"the `forbid` function {forbid!r} raised {type(exc).__name__} on the token "
                              f"{text!r}: {exc}") from exc
        if hit:
            out.add(i)
        else:
            writable += 1
    if not writable:
        raise ConfigError(f"`forbid` ({describe(forbid)}) rules out every token but EOS and special tokens")
    return frozenset(out)


def positions_first(tokens: Sequence[int], order: Sequence[int], forbidden: frozenset[int]) -> list[int]:
    """``order`` with the positions of ``tokens`` that hold a forbidden id moved to the front (earliest first).

    >>> positions_first([5, 7, 5, 9], [3, 2, 1, 0], frozenset({5}))
    [0, 2, 3, 1]
    """
    if not forbidden:
        return list(order)
    first = [i for i, t in enumerate(tokens) if t in forbidden]
    seen = set(first)
    return first + [i for i in order if i not in seen]


def mask_in(session: Session, banned: frozenset[int]) -> None:
    """Have ``session`` decode without ``banned`` (nothing to do when it is empty).

    Raises:
        InputError: the session's backend cannot mask tokens while decoding.
    """
    if not banned:
        return
    if not session.supports_banned:
        raise InputError(f"`forbid` needs a backend that masks tokens while decoding, which "
                         f"{type(session).__name__} does not (the Hugging Face and vLLM backends do)")
    session.banned = banned
