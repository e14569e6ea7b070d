"""Readers for the public evaluation data in ``shared/data`` (read in place, never copied).

Items are taken in file order, so a run is the same whatever the seed: the seed only drives sampling.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from .instructions import supported
from .metrics import parse_mr, slot_keywords

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIR = REPO_ROOT.parent / "shared" / "data"

IFEVAL = "ifeval_input_data.jsonl"
GSM8K = "gsm8k_test.jsonl"
COMMONGEN = "commongen.dev.jsonl"
E2E = "e2e_testset_w_refs.csv"

#: IFEval prompts longer than this are skipped (they only add prefill time)
MAX_PROMPT_CHARS = 300
_WORD_COUNT = re.compile(r"(?<!less than )(?<!fewer than )\b(\d{3,})\+?\s+(?:or more\s+)?words")


class DataError(Exception):
    """The evaluation data is missing or malformed."""


@dataclass(frozen=True)
class Item:
    """One benchmark input.

    Attributes:
        id: a stable identifier (source and index or key).
        source: the data set.
        prompt: the user message (a chat template is applied later by the backend).
        words: words the output should contain (CommonGen concepts, E2E slot keywords); empty if none.
        references: reference outputs, if the data set has them.
        slots: E2E ``(slot, value)`` pairs.
        instructions: IFEval ``(instruction id, arguments)`` pairs the output must follow.
    """

    id: str
    source: str
    prompt: str
    words: tuple[str, ...] = ()
    references: tuple[str, ...] = ()
    slots: tuple[tuple[str, str], ...] = field(default=())
    instructions: tuple[tuple[str, dict], ...] = field(default=())


def resolve_data_dir(path: str | Path | None) -> Path:
    """The data folder: ``path`` or the default ``shared/data`` beside the repository; a clear error if absent."""
    folder = Path(path).expanduser() if path else DEFAULT_DATA_DIR
    if not folder.is_dir():
        raise DataError(
            f"evaluation data folder {folder} does not exist; pass the folder holding {IFEVAL}, {GSM8K}, "
            f"{COMMONGEN} and {E2E} with --data-dir DIR"
        )
    return folder


def _file(folder: Path, name: str) -> Path:
    path = folder / name
    if not path.is_file():
        raise DataError(f"{path} is missing; pass the folder that holds {name} with --data-dir DIR")
    return path


def require_files(folder: Path, names: list[str]) -> None:
    """Raise :class:`DataError` naming the first of ``names`` missing from ``folder``."""
    for name in names:
        _file(folder, name)


def _jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def read_jsonl(folder: Path, name: str) -> list[dict]:
    """The rows of the JSON-lines file ``name`` in ``folder`` (read in place)."""
    return _jsonl(_file(folder, name))


def instruction_prompts(folder: Path, n: int) -> list[Item]:
    """``n`` real instruction prompts: IFEval and GSM8K interleaved two to one, each in file order.

    IFEval prompts longer than :data:`MAX_PROMPT_CHARS` characters are skipped.
    """
    ifeval = [r for r in _jsonl(_file(folder, IFEVAL)) if len(r["prompt"]) <= MAX_PROMPT_CHARS]
    gsm8k = _jsonl(_file(folder, GSM8K))
    items: list[Item] = []
    used = {"ifeval": 0, "gsm8k": 0}
    for i in range(n):
        if i % 3 == 2 and used["gsm8k"] < len(gsm8k):
            k = used["gsm8k"]
            items.append(Item(f"gsm8k-{k}", "gsm8k", gsm8k[k]["question"]))
            used["gsm8k"] += 1
        elif used["ifeval"] < len(ifeval):
            row = ifeval[used["ifeval"]]
            items.append(Item(f"ifeval-{row['key']}", "ifeval", row["prompt"]))
            used["ifeval"] += 1
    return items


def long_answer_prompts(folder: Path, n: int) -> list[Item]:
    """The first ``n`` IFEval prompts that ask for at least 300 words (answers longer than any cap used here)."""
    items = []
    for row in _jsonl(_file(folder, IFEVAL)):
        asked = [int(x) for x in _WORD_COUNT.findall(row["prompt"])]
        if asked and max(asked) >= 300 and len(row["prompt"]) <= MAX_PROMPT_CHARS:
            items.append(Item(f"ifeval-{row['key']}", "ifeval", row["prompt"]))
        if len(items) == n:
            break
    return items


def commongen_prompt(concepts: list[str]) -> str:
    return "Write one short sentence using all of these words: " + ", ".join(concepts) + "."


def commongen(folder: Path, n: int) -> list[Item]:
    """The first ``n`` CommonGen dev concept sets (``"field_N#look_V"`` -> ``["field", "look"]``)."""
    items = []
    for k, row in enumerate(_jsonl(_file(folder, COMMONGEN))[:n]):
        concepts = [c.rsplit("_", 1)[0] for c in row["concept_set"].split("#")]
        items.append(Item(f"commongen-{k}", "commongen", commongen_prompt(concepts), tuple(concepts),
                          tuple(row.get("scene", ()))))
    return items


#: E2E slot names as a reader would write them
SLOT_NAMES = {"eatType": "eat type", "priceRange": "price range", "customer rating": "customer rating",
              "familyFriendly": "family friendly", "area": "area", "food": "food", "name": "name", "near": "near"}


def e2e_prompt(slots: list[tuple[str, str]]) -> str:
    facts = "; ".join(f"{SLOT_NAMES.get(slot, slot)}: {value}" for slot, value in slots)
    return f"Write one or two sentences describing this restaurant, using all of these facts: {facts}."


def e2e(folder: Path, n: int) -> list[Item]:
    """The first ``n`` distinct E2E test meaning representations with all their references."""
    refs: dict[str, list[str]] = {}
    with open(_file(folder, E2E), encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            refs.setdefault(row["mr"], []).append(row["ref"])
    items = []
    for k, (mr, mr_refs) in enumerate(list(refs.items())[:n]):
        try:
            slots = parse_mr(mr)
        except ValueError as exc:
            raise DataError(f"{folder / E2E}: {exc}") from exc
        keys = tuple(dict.fromkeys(w for s, v in slots for w in slot_keywords(s, v)))
        items.append(Item(f"e2e-{k}", "e2e", e2e_prompt(slots), keys, tuple(mr_refs), tuple(slots)))
    return items


#: the longest output an IFEval instruction may demand for the prompt to be used (argument name, largest value):
#: a capped answer cannot meet "at least 300 words", whatever the method, so such prompts measure nothing
IFEVAL_REACH = {
    "length_constraints:number_words": ("num_words", 60),
    "length_constraints:number_sentences": ("num_sentences", 4),
    "length_constraints:number_paragraphs": ("num_paragraphs", 2),
    "length_constraints:nth_paragraph_first_word": ("num_paragraphs", 2),
    "detectable_format:multiple_sections": ("num_sections", 2),
    "detectable_format:number_bullet_lists": ("num_bullets", 4),
    "detectable_format:number_highlighted_sections": ("num_highlights", 3),
}


def _within_reach(ids: list[str], kwargs: list[dict]) -> bool:
    for i, k in zip(ids, kwargs):
        if i in IFEVAL_REACH:
            name, most = IFEVAL_REACH[i]
            if (k or {}).get("relation", "at least") == "at least" and ((k or {}).get(name) or 0) > most:
                return False
    return True


def ifeval_checkable(folder: Path, n: int) -> list[Item]:
    """The first ``n`` IFEval prompts (file order) with instructions, whose every instruction has a checker in
    :mod:`benchmarks.instructions`, that ask for no more than :data:`IFEVAL_REACH` allows, and are at most
    :data:`MAX_PROMPT_CHARS` long."""
    items = []
    for row in _jsonl(_file(folder, IFEVAL)):
        ids, kwargs = row["instruction_id_list"], row["kwargs"]
        if ids and supported(ids) and _within_reach(ids, kwargs) and len(row["prompt"]) <= MAX_PROMPT_CHARS:
            pairs = tuple((i, {k: v for k, v in (kw or {}).items() if v is not None}) for i, kw in zip(ids, kwargs))
            items.append(Item(f"ifeval-{row['key']}", "ifeval", row["prompt"], instructions=pairs))
        if len(items) == n:
            break
    return items
