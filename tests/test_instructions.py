"""IFEval instruction checkers (benchmarks.instructions): exact cases for each rule."""

import json

import pytest

from benchmarks.data import DEFAULT_DATA_DIR, IFEVAL
from benchmarks.instructions import CHECKERS, count_sentences, count_words, follows, supported

CASES = [
    ("punctuation:no_comma", {}, "No commas here.", "One, two."),
    ("length_constraints:number_words", {"relation": "less than", "num_words": 4}, "Three short words",
     "Four words are here"),
    ("length_constraints:number_words", {"relation": "at least", "num_words": 4}, "Four words are here", "Too few"),
    ("length_constraints:number_sentences", {"relation": "less than", "num_sentences": 2}, "Only one. ",
     "One. Two! Three?"),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 2}, "First part.\n***\nSecond part.",
     "First.\n***\n\n***\nSecond."),
    ("length_constraints:nth_paragraph_first_word", {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "then"},
     "Start here.\n\nThen finish.", "Start here.\n\nAnd finish."),
    ("keywords:forbidden_words", {"forbidden_words": ["cat"]}, "A catalogue of dogs.", "The Cat sat."),
    ("keywords:existence", {"keywords": ["sea", "salt"]}, "Salt in the SEA.", "Only the sea."),
    ("keywords:frequency", {"keyword": "yes", "frequency": 2, "relation": "at least"}, "Yes, yes.", "yes no"),
    ("keywords:letter_frequency", {"letter": "z", "let_frequency": 2, "let_relation": "less than"}, "zoo", "Zizz"),
    ("detectable_format:number_highlighted_sections", {"num_highlights": 2}, "*one* and **two**", "*one* and ** **"),
    ("detectable_format:title", {}, "<<A Title>>\nText.", "<< >> no title"),
    ("detectable_format:number_bullet_lists", {"num_bullets": 2}, "* a\n* b", "* a\n* b\n- c"),
    ("detectable_format:json_format", {}, '```json\n{"a": 1}\n```', "{'a': 1}"),
    ("detectable_format:multiple_sections", {"section_spliter": "Section", "num_sections": 2},
     "Section 1\nx\nSection 2\ny", "Section 1 only"),
    ("detectable_format:constrained_response", {}, "My answer is no.", "No."),
    ("detectable_content:number_placeholders", {"num_placeholders": 2}, "At [address] on [date].", "At [address]."),
    ("detectable_content:postscript", {"postscript_marker": "P.S."}, "Hi.\nP.S. Bye.", "Hi. Bye."),
    ("combination:repeat_prompt", {"prompt_to_repeat": "Say hi."}, "say hi. Hi!", "Hi!"),
    ("combination:two_responses", {}, "One answer.\n******\nAnother one.", "Same.\n******\nSame."),
    ("startend:quotation", {}, '"All quoted."', '"Half quoted.'),
    ("startend:end_checker", {"end_phrase": "Any other questions?"}, "Done. Any other questions?", "Done."),
    ("change_case:english_lowercase", {}, "all lower case.", "Not all lower."),
    ("change_case:english_capital", {}, "ALL CAPS.", "Not caps."),
    ("change_case:capital_word_frequency", {"capital_frequency": 2, "capital_relation": "at least"},
     "THIS IS loud", "This Is not"),
]


@pytest.mark.parametrize("iid, kwargs, good, bad", CASES, ids=[c[0] for c in CASES])
def test_checker_accepts_and_rejects(iid, kwargs, good, bad):
    assert CHECKERS[iid](good, **kwargs) is True
    assert CHECKERS[iid](bad, **kwargs) is False


def test_every_checker_has_a_case():
    assert {c[0] for c in CASES} == set(CHECKERS)


def test_counts():
    assert count_words("It's a dog-friendly place.") == 6  # it, s, a, dog, friendly, place
    assert count_sentences("Dr. Who? Yes! Fine") == 4  # no abbreviation list: "Dr." ends a sentence
    assert count_sentences("") == 0


def test_follows_and_unused_arguments():
    assert follows("no commas", ["punctuation:no_comma", "change_case:english_lowercase"], [{}, {"x": None}]) == \
        [True, True]
    assert not supported(["language:response_language"])


@pytest.mark.skipif(not (DEFAULT_DATA_DIR / IFEVAL).is_file(), reason="IFEval data not beside the repository")
def test_every_supported_row_of_the_data_runs():
    """Each argument name used by the data set matches a checker's signature."""
    with open(DEFAULT_DATA_DIR / IFEVAL, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    used = [r for r in rows if supported(r["instruction_id_list"])]
    assert len(used) > 400
    for r in used:
        assert len(follows("A plain answer.", r["instruction_id_list"], r["kwargs"])) == len(r["kwargs"])


def test_wraps_are_what_the_checkers_accept():
    from benchmarks.instructions import wraps

    request = "Write a story about a cat, in two sentences."
    (q,) = wraps(["startend:quotation"], [{}])
    assert follows(q[0] + "A cat sat." + q[1], ["startend:quotation"], [{}]) == [True]
    (r,) = wraps(["combination:repeat_prompt"], [{"prompt_to_repeat": request}])
    ids, kwargs = ["combination:repeat_prompt"], [{"prompt_to_repeat": request}]
    assert follows(r[0] + "A cat sat." + r[1], ids, kwargs) == [True]
    # lowercase demanded: the request restated in lowercase (the checker compares without case)
    low = wraps([*ids, "change_case:english_lowercase"], [*kwargs, {}])
    assert low == ((request.lower() + "\n\n", ""),)
    assert follows(low[0][0] + "a cat sat.", [*ids, "change_case:english_lowercase"], [*kwargs, {}]) == [True, True]
    # no commas: a request with one cannot be restated word for word, so no wrap is offered
    assert wraps([*ids, "punctuation:no_comma"], [*kwargs, {}]) == ()
    assert wraps(["startend:quotation", "startend:quotation"], [{}, {}]) == (('"', '"'),)
