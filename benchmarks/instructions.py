"""Checkers for IFEval's verifiable instructions, written from the instruction definitions.

Each IFEval prompt lists instruction ids (``"punctuation:no_comma"``) with their arguments; a
response follows an instruction when its checker returns True. :data:`CHECKERS` maps every
supported id to its checker, ``check(text, **kwargs) -> bool``.

Why not lm-eval's implementation: importing its IFEval module downloads NLTK's ``punkt_tab``
from the network (``download_nltk_resources()`` runs at import), and its sentence counter needs
that model; this project reaches no data hub at run time. The rules below follow the published
instruction definitions; two differ in method, not intent: sentences are split on ``.``, ``!``
and ``?`` followed by white space or the end (not punkt), and ``change_case:english_*`` checks
the case only (no language identification). ``language:response_language`` needs a language
identifier and is not supported: prompts that use it are left out (:func:`supported`).
"""

from __future__ import annotations

import json
import re
import string
from typing import Any, Callable, Mapping, Sequence

_WORD = re.compile(r"\w+")
_SENTENCE_END = re.compile(r"[.!?]+(?:\s+|$)")


def _compare(value: int, relation: str, threshold: int) -> bool:
    """IFEval's two relations: ``"less than"`` (strict) and ``"at least"``."""
    if relation == "less than":
        return value < threshold
    if relation == "at least":
        return value >= threshold
    raise ValueError(f"unknown relation {relation!r}; IFEval uses 'less than' and 'at least'")


def count_words(text: str) -> int:
    """Runs of word characters."""
    return len(_WORD.findall(text))


def count_sentences(text: str) -> int:
    """Non-empty pieces between sentence-ending punctuation (``.``, ``!``, ``?`` then a space or the end)."""
    return sum(1 for piece in _SENTENCE_END.split(text) if piece.strip())


def _paragraphs(text: str, separator: str) -> list[str]:
    return [p for p in re.split(separator, text)]


def _whole_word(word: str) -> re.Pattern:
    return re.compile(rf"\b{re.escape(word)}\b", re.IGNORECASE)


def no_comma(text: str) -> bool:
    return "," not in text


def number_words(text: str, num_words: int, relation: str) -> bool:
    return _compare(count_words(text), relation, num_words)


def number_sentences(text: str, num_sentences: int, relation: str) -> bool:
    return _compare(count_sentences(text), relation, num_sentences)


def forbidden_words(text: str, forbidden_words: Sequence[str]) -> bool:
    return not any(_whole_word(w).search(text) for w in forbidden_words)


def keyword_existence(text: str, keywords: Sequence[str]) -> bool:
    return all(re.search(re.escape(k), text, re.IGNORECASE) for k in keywords)


def keyword_frequency(text: str, keyword: str, frequency: int, relation: str) -> bool:
    return _compare(len(re.findall(re.escape(keyword), text, re.IGNORECASE)), relation, frequency)


def letter_frequency(text: str, letter: str, let_frequency: int, let_relation: str) -> bool:
    return _compare(text.lower().count(letter.lower()), let_relation, let_frequency)


def highlighted_sections(text: str, num_highlights: int) -> bool:
    """``*highlighted*`` or ``**highlighted**`` spans with some non-space content."""
    single = [m for m in re.findall(r"\*[^\n\*]*\*", text) if m.strip("*").strip()]
    double = [m for m in re.findall(r"\*\*[^\n\*]*\*\*", text) if m.strip("*").strip()]
    return len(single) + len(double) >= num_highlights


def repeat_prompt(text: str, prompt_to_repeat: str) -> bool:
    return text.strip().lower().startswith(prompt_to_repeat.strip().lower())


def quotation(text: str) -> bool:
    t = text.strip()
    return len(t) > 1 and t[0] == '"' and t[-1] == '"'


def english_lowercase(text: str) -> bool:
    return text == text.lower()


def english_capital(text: str) -> bool:
    return text == text.upper()


def capital_word_frequency(text: str, capital_frequency: int, capital_relation: str) -> bool:
    capitals = [w for w in re.findall(r"\b[A-Za-z]+\b", text) if w.isupper()]
    return _compare(len(capitals), capital_relation, capital_frequency)


def title(text: str) -> bool:
    """A title in double angular brackets, ``<<like this>>``."""
    return any(t.strip() for t in re.findall(r"<<([^\n]+?)>>", text))


def bullet_lists(text: str, num_bullets: int) -> bool:
    """Exactly ``num_bullets`` markdown bullet lines (``* `` or ``- ``)."""
    bullets = re.findall(r"^\s*[\*\-]\s+\S", text, flags=re.MULTILINE)
    return len(bullets) == num_bullets


def placeholders(text: str, num_placeholders: int) -> bool:
    """At least ``num_placeholders`` square-bracket placeholders such as ``[address]``."""
    return len(re.findall(r"\[[^\]\n]+\]", text)) >= num_placeholders


def number_paragraphs(text: str, num_paragraphs: int) -> bool:
    """Exactly ``num_paragraphs`` non-empty paragraphs separated by the markdown divider ``***``."""
    parts = _paragraphs(text, r"\s?\*\*\*\s?")
    if any(not p.strip() for p in parts[1:-1]):  # an empty paragraph inside
        return False
    return len([p for p in parts if p.strip()]) == num_paragraphs


def end_checker(text: str, end_phrase: str) -> bool:
    return text.strip().strip('"').lower().endswith(end_phrase.strip().lower())


def postscript(text: str, postscript_marker: str) -> bool:
    """A line starting with the marker (``P.S.``, ``P.P.S``), case-insensitive."""
    marker = re.escape(postscript_marker.strip()).replace(r"\.", r"\.?\s?")
    return re.search(rf"^\s*{marker}", text, flags=re.IGNORECASE | re.MULTILINE) is not None


def two_responses(text: str) -> bool:
    """Two different, non-empty responses separated by six asterisks."""
    parts = [p.strip() for p in text.split("******")]
    return len(parts) == 2 and all(parts) and parts[0] != parts[1]


def json_format(text: str) -> bool:
    body = text.strip()
    body = re.sub(r"^```(?:json|JSON|Json)?\s*", "", body)
    body = re.sub(r"\s*```$", "", body)
    try:
        json.loads(body)
    except ValueError:
        return False
    return True


def multiple_sections(text: str, section_spliter: str, num_sections: int) -> bool:
    """At least ``num_sections`` sections headed ``<spliter> <number>``."""
    heads = re.findall(rf"\s?{re.escape(section_spliter)}\s?\d+\s?", text)
    return len(heads) >= num_sections


def nth_paragraph_first_word(text: str, num_paragraphs: int, nth_paragraph: int, first_word: str) -> bool:
    """``num_paragraphs`` paragraphs separated by blank lines, paragraph ``nth_paragraph`` (1-based) starting with
    ``first_word``."""
    paragraphs = [p for p in re.split(r"\n\s*\n", text) if p.strip()]
    if len(paragraphs) != num_paragraphs or not 1 <= nth_paragraph <= len(paragraphs):
        return False
    words = re.findall(r"[\w']+", paragraphs[nth_paragraph - 1].lower())
    return bool(words) and words[0] == first_word.lower()


def constrained_response(text: str) -> bool:
    return any(option in text for option in ("My answer is yes.", "My answer is no.", "My answer is maybe."))


CHECKERS: dict[str, Callable[..., bool]] = {
    "punctuation:no_comma": no_comma,
    "length_constraints:number_words": number_words,
    "length_constraints:number_sentences": number_sentences,
    "length_constraints:number_paragraphs": number_paragraphs,
    "length_constraints:nth_paragraph_first_word": nth_paragraph_first_word,
    "keywords:forbidden_words": forbidden_words,
    "keywords:existence": keyword_existence,
    "keywords:frequency": keyword_frequency,
    "keywords:letter_frequency": letter_frequency,
    "detectable_format:number_highlighted_sections": highlighted_sections,
    "detectable_format:title": title,
    "detectable_format:number_bullet_lists": bullet_lists,
    "detectable_format:json_format": json_format,
    "detectable_format:multiple_sections": multiple_sections,
    "detectable_format:constrained_response": constrained_response,
    "detectable_content:number_placeholders": placeholders,
    "detectable_content:postscript": postscript,
    "combination:repeat_prompt": repeat_prompt,
    "combination:two_responses": two_responses,
    "startend:quotation": quotation,
    "startend:end_checker": end_checker,
    "change_case:english_lowercase": english_lowercase,
    "change_case:english_capital": english_capital,
    "change_case:capital_word_frequency": capital_word_frequency,
}


def _arguments(kwargs: Mapping[str, Any] | None) -> dict[str, Any]:
    """IFEval rows carry unused arguments as None."""
    return {k: v for k, v in (kwargs or {}).items() if v is not None}


def supported(instruction_ids: Sequence[str]) -> bool:
    return all(i in CHECKERS for i in instruction_ids)


def follows(text: str, instruction_ids: Sequence[str], kwargs: Sequence[Mapping[str, Any]]) -> list[bool]:
    """Per instruction: does ``text`` follow it?"""
    return [bool(CHECKERS[i](text, **_arguments(k))) for i, k in zip(instruction_ids, kwargs)]


class TokenRule:
    """Which token texts no output that follows the instructions can contain, read from the instructions whose
    violation a single token decides: no commas, all lowercase, all capitals, forbidden words (a token that is
    the whole word, with or without a leading space or punctuation). A picklable predicate for
    ``RefineConfig.forbid``; :func:`token_rule` returns None when no instruction gives one."""

    def __init__(self, no_comma: bool, no_upper: bool, no_lower: bool, words: frozenset[str]) -> None:
        self.no_comma, self.no_upper, self.no_lower, self.words = no_comma, no_upper, no_lower, words
        self.__name__ = "ifeval_token_rule"

    def __call__(self, token: str) -> bool:
        return ((self.no_comma and "," in token) or (self.no_upper and token != token.lower())
                or (self.no_lower and token != token.upper())
                or (bool(self.words) and token.strip().strip(string.punctuation).lower() in self.words))


def token_rule(ids: Sequence[str], kwargs: Sequence[dict]) -> TokenRule | None:
    """The :class:`TokenRule` of a prompt's instructions, or None when none of them rules out a token.

    >>> rule = token_rule(["punctuation:no_comma", "keywords:forbidden_words"], [{}, {"forbidden_words": ["Sea"]}])
    >>> [rule(t) for t in [",", " sea", "Sea.", " seas", " boat"]]
    [True, True, True, False, False]
    """
    words = frozenset(w.lower() for i, k in zip(ids, kwargs) if i == "keywords:forbidden_words"
                      for w in k.get("forbidden_words") or ())
    rule = TokenRule("punctuation:no_comma" in ids, "change_case:english_lowercase" in ids,
                     "change_case:english_capital" in ids, words)
    return rule if rule.no_comma or rule.no_upper or rule.no_lower or rule.words else None


def phrases(ids: Sequence[str], kwargs: Sequence[dict]) -> tuple[str, ...]:
    """Text a prompt's instructions ask to be written (``RefineConfig.phrases``): the required ending, the
    postscript marker, keywords to include, the separators of two responses or of paragraphs.

    >>> phrases(["startend:end_checker", "keywords:existence"], [{"end_phrase": "Any other questions?"},
    ...                                                           {"keywords": ["tea", "milk"]}])
    ('Any other questions?', 'tea', 'milk')
    >>> phrases(["keywords:existence", "change_case:english_capital"], [{"keywords": ["tea"]}, {}])
    ('TEA',)
    """
    out: list[str] = []
    for i, k in zip(ids, kwargs):
        if i == "startend:end_checker":
            out.append(k["end_phrase"])
        elif i == "detectable_content:postscript":
            out.append(k["postscript_marker"])
        elif i == "keywords:existence":
            out.extend(k.get("keywords") or ())
        elif i == "keywords:frequency":
            out.append(k["keyword"])
        elif i == "combination:two_responses":
            out.append("******")
        elif i == "length_constraints:number_paragraphs":
            out.append("***")
    # the checkers of these compare case-insensitively: write them in the case the prompt demands, and leave
    # out any that a token rule of the same prompt would forbid (:func:`token_rule`)
    rule = token_rule(ids, kwargs)
    seen: dict[str, None] = {}
    for p in out:
        p = _as_ruled(p.strip(), rule)
        if p:
            seen.setdefault(p, None)
    return tuple(seen)


def wraps(ids: Sequence[str], kwargs: Sequence[dict]) -> tuple[tuple[str, str], ...]:
    """Text a prompt's instructions ask to be put around the whole answer (``RefineConfig.wrap``): quotation
    marks, or the request restated word for word before the answer.

    >>> wraps(["startend:quotation"], [{}])
    (('"', '"'),)
    >>> wraps(["combination:repeat_prompt", "change_case:english_lowercase"],
    ...       [{"prompt_to_repeat": "Write a poem."}, {}])
    (('write a poem.\\n\\n', ''),)
    """
    rule = token_rule(ids, kwargs)
    out: list[tuple[str, str]] = []
    for i, k in zip(ids, kwargs):
        if i == "startend:quotation":
            out.append(('"', '"'))
        elif i == "combination:repeat_prompt":
            # the checker compares case-insensitively, but word for word: a request the token rule would change
            # otherwise (a comma under "no commas") cannot be restated
            request = _as_ruled(k["prompt_to_repeat"].strip(), rule)
            if request:
                out.append((request + "\n\n", ""))
    return tuple(dict.fromkeys(out))


def _as_ruled(text: str, rule: "TokenRule | None") -> str:
    """``text`` in the case ``rule`` demands; empty when the rule forbids a comma or a word of it."""
    if rule is None:
        return text
    text = text.upper() if rule.no_lower else text.lower() if rule.no_upper else text
    if (rule.no_comma and "," in text) or any(w in rule.words for w in text.lower().split()):
        return ""
    return text
