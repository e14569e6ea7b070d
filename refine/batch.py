"""``refine batch``: refine many prompts from a JSONL file, appending each result as it finishes.

Input: one JSON object per line, ``{"prompt": "...", "id": "...", "refine": {...}}``; ``id``
(string or integer) defaults to the line number, ``refine`` holds options for that prompt on top
of ``--refine``. Output: one JSON object per line, in completion order: the ``id``, the prompt,
and the :class:`~refine.types.RefineResult` as JSON (``initial_text``, ``text``, scores, edits,
``ended``, stats).

Nothing is lost or written twice across a crash, ``kill -9`` included:

- each result line is written whole, flushed and ``fsync``-ed before the next prompt starts, so
  a line in the file is a finished record;
- on start, the ids already in the output file are skipped; a last line cut short by a kill
  (no final newline) is removed first and its prompt refined again;
- ids must be unique in the input, and an output line that is not a record of this input (an
  unknown id, or a known id with another prompt: the input changed) stops the run with an error
  rather than being overwritten or skipped.

Lines end at ``\n`` only: a prompt may hold any other line separator (U+2028, U+0085, ...).

Batching: with ``--engine vllm`` the initial answers of ``--chunk`` prompts are decoded
together in one ``vllm.LLM.generate`` call; with ``--engine hf`` each prompt's answer is
decoded on its own (``--chunk`` only sets how many prompts are read ahead). The searches run
one prompt after another, each batching its own candidates.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

from .errors import InputError


@dataclass(frozen=True)
class BatchItem:
    """One input line: its id, the prompt, and its own refine options."""

    id: str
    prompt: str
    options: Mapping[str, Any] = field(default_factory=dict)


def read_items(path: str | os.PathLike) -> list[BatchItem]:
    """Parse the input JSONL; raises :class:`InputError` naming the line of any malformed record."""
    try:
        with open(path, encoding="utf-8", newline="") as f:
            lines = f.read().split("\n")  # not splitlines(): JSON strings may hold U+2028 and its kin
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read the input {path}: {exc}") from exc
    items: list[BatchItem] = []
    where: dict[str, int] = {}
    for no, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}:{no}: not valid JSON ({exc.msg})") from exc
        if not isinstance(rec, dict) or not isinstance(rec.get("prompt"), str) or not rec["prompt"].strip():
            raise InputError(f"{path}:{no}: each line must be a JSON object with a non-empty string \"prompt\"")
        rid = rec.get("id", no)
        if isinstance(rid, bool) or not isinstance(rid, (str, int)):
            raise InputError(f"{path}:{no}: \"id\" must be a string or an integer, got {rid!r}")
        rid = str(rid)
        if rid in where:
            raise InputError(f"{path}:{no}: id {rid!r} already used on line {where[rid]}; ids must be unique")
        options = rec.get("refine", {})
        if not isinstance(options, dict):
            raise InputError(f"{path}:{no}: \"refine\" must be a JSON object of refine options")
        where[rid] = no
        items.append(BatchItem(rid, rec["prompt"], options))
    return items


def completed_ids(path: str | os.PathLike, known: Mapping[str, str]) -> set[str]:
    """Ids already written to the output file at ``path``, after cutting off a torn last line.

    ``known``: the input's prompts by id. Raises :class:`InputError` for a complete line that is not a record of
    this input (an id it lacks, or one whose prompt it changed): the output file belongs to another run or input,
    and appending to it would mix the two. Blank lines are skipped.
    """
    p = Path(path)
    if not p.exists():
        return set()
    cut_torn_line(p)  # a kill cut the last record short: it is refined again
    data = p.read_bytes()
    done: set[str] = set()
    for no, line in enumerate(data.decode("utf-8").split("\n"), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            rid, prompt = rec["id"], rec["prompt"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise InputError(f"{path}:{no}: not a result record of refine batch; use another --output") from exc
        if rid not in known:
            raise InputError(f"{path}:{no}: id {rid!r} is not in the input; use another --output")
        if prompt != known[rid]:
            raise InputError(f"{path}:{no}: id {rid!r} was refined for another prompt than the input's now (the "
                             "input changed since); use another --output")
        if rid in done:
            raise InputError(f"{path}:{no}: id {rid!r} written twice; the file was edited or shared")
        done.add(rid)
    return done


def cut_torn_line(path: Path) -> bool:
    """Remove a last line that has no final newline (a write a kill cut short) from the JSON-lines file at
    ``path``; returns whether one was removed."""
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end == len(data):
        return False
    with open(path, "r+b") as f:
        f.truncate(end)
        f.flush()
        os.fsync(f.fileno())
    return True


class Appender:
    """Appends whole JSON lines, each flushed and fsync-ed before :meth:`write` returns."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.file = open(path, "a", encoding="utf-8")

    def write(self, record: Mapping[str, Any]) -> None:
        self.file.write(json.dumps(record, ensure_ascii=False) + "\n")
        self.file.flush()
        os.fsync(self.file.fileno())

    def close(self) -> None:
        self.file.close()


def chunks(items: Sequence[BatchItem], size: int) -> Iterator[list[BatchItem]]:
    for i in range(0, len(items), size):
        yield list(items[i:i + size])


def run_batch(
    items: Sequence[BatchItem],
    output: str | os.PathLike,
    refine_chunk: Callable[[list[BatchItem]], Iterator[tuple[BatchItem, dict[str, Any]]]],
    chunk: int = 8,
    progress: bool = True,
) -> tuple[int, int]:
    """Refine the items not yet in ``output``, appending each result; returns ``(refined now, skipped)``.

    ``refine_chunk(items)`` yields ``(item, result dict)`` pairs as each item finishes.
    """
    if chunk < 1:
        raise InputError(f"`chunk` has to be a positive integer, but is {chunk}")
    if not Path(output).resolve().parent.is_dir():
        raise InputError(f"the folder of --output {output} does not exist")
    done = completed_ids(output, {it.id: it.prompt for it in items})
    todo = [it for it in items if it.id not in done]
    from tqdm.auto import tqdm

    bar = tqdm(total=len(items), initial=len(done), unit="prompt", desc="refine batch", file=sys.stderr,
               disable=not progress, dynamic_ncols=True)
    out = Appender(output)
    written = 0
    try:
        for part in chunks(todo, chunk):
            for item, result in refine_chunk(part):
                out.write({"id": item.id, "prompt": item.prompt, **result})
                written += 1
                bar.update(1)
    finally:
        out.close()
        bar.close()
    return written, len(done)
