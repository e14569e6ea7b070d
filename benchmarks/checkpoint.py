"""Per-item checkpoints of a suite: an hour-long run loses nothing when it is killed, and can be extended.

A suite whose items are independent (each record depends only on its item, the suite's settings, the seed and
the model) passes a *fingerprint* of those to :meth:`benchmarks.context.Context.run_groups`. Every finished
record is then appended to ``OUT/<suite>/checkpoint.jsonl`` at once (one JSON line, flushed and fsync-ed,
with :class:`refine.batch.Appender`; a line a kill cut short is removed on resume, as ``refine batch`` does). With
``--resume``, records whose fingerprint matches are taken from that file and from the folder's finished
``results.json`` instead of being computed again: a killed run goes on where it stopped, and a finished run of
60 items grows to 120 by computing the 60 new ones. The item count is not part of the fingerprint (it does
not change any record). A record keeps the code revision that computed it (``commit``), so a report can say
which of its items came from an earlier run.

Without ``--resume`` the checkpoint of an earlier run is discarded and everything is computed.

**Shards.** ``--shard K/N`` computes every N-th item from the K-th (``K`` from 0) and appends them to a file of its
own, ``checkpoint.K-of-N.jsonl``, so N processes share a machine's cores on one suite. A shard writes no
results: once every shard has finished, a run with ``--resume`` and no ``--shard`` takes all their records (every
``checkpoint*.jsonl`` of the folder), computes whatever is still missing, writes the results and removes the
files it took every record of (a file holding records under other settings stays). A run without ``--resume``
discards only its own file, never a shard's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from refine.batch import Appender, cut_torn_line

from .report import RESULTS

CHECKPOINT = "checkpoint.jsonl"


def shard_file(shard: tuple[int, int] | None) -> str:
    """The checkpoint file of a shard ``(K, N)`` (``None``: the whole run's).

    >>> shard_file((1, 2)), shard_file(None)
    ('checkpoint.1-of-2.jsonl', 'checkpoint.jsonl')
    """
    return CHECKPOINT if shard is None else f"checkpoint.{shard[0]}-of-{shard[1]}.jsonl"


def parse_shard(text: str) -> tuple[int, int]:
    """``"K/N"`` as ``(K, N)``, with ``0 <= K < N``.

    >>> parse_shard("1/2")
    (1, 2)
    """
    try:
        k, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard takes K/N (e.g. 0/2), not {text!r}") from None
    if not 0 <= k < n:
        raise ValueError(f"--shard {text}: K has to be in 0..N-1")
    return k, n


def fingerprint(settings: dict[str, Any], seed: int, model: str, quick: bool) -> dict[str, Any]:
    """What a record depends on besides its item: the suite settings (their item count left out), the seed,
    the model and the quick flag."""
    return {"settings": {k: v for k, v in settings.items() if k != "items"}, "seed": seed, "model": model,
            "quick": bool(quick)}


def finished_fingerprint(results: dict[str, Any]) -> dict[str, Any] | None:
    """The fingerprint of a finished run's ``results.json``: the one it stored, else one made from its settings
    and environment (runs written before fingerprints were stored); ``None`` when it lacks what one needs."""
    if "fingerprint" in results:
        return results["fingerprint"]
    try:
        env = results["environment"]
        return fingerprint(results["settings"], env["seed"], env["model"], results.get("quick", False))
    except (KeyError, TypeError):
        return None


class Checkpoint:
    """The records of one suite already computed under one fingerprint, and the file new ones go to.

    Args:
        folder: the suite's results folder (``OUT/<suite>``).
        fingerprint: see :func:`fingerprint`.
        resume: reuse matching records of an earlier run; ``False`` discards the earlier checkpoint.
        commit: the code revision of this run (stored with every record it computes).
        shard: ``(K, N)``: this run computes one shard, into its own file, and reads only that file (the others
            may be in the middle of a write). ``None``: the whole run, which also reads every shard's file.
    """

    def __init__(self, folder: Path, fingerprint: dict[str, Any], resume: bool, commit: str | None,
                 shard: tuple[int, int] | None = None) -> None:
        self.folder = folder
        self.shard = shard
        self.path = folder / shard_file(shard)
        self.fingerprint = json.loads(json.dumps(fingerprint))  # as it reads back from JSON (tuples -> lists)
        self.commit = commit
        self.ignored = 0  # records found under another fingerprint, or torn lines
        #: the checkpoint files read, each with the number of records taken from it
        self.sources: dict[str, int] = {}
        self._done: dict[tuple[str, str], dict] = {}
        self._appender: Appender | None = None
        self._spent: list[Path] = []  # files every record of which was taken: removed by :meth:`discard`
        if resume:
            self._load_finished(folder / RESULTS)
            for path in self._files():
                self._load_checkpoint(path)
        else:
            self.path.unlink(missing_ok=True)

    def _load_finished(self, path: Path) -> None:
        if not path.exists():
            return
        results = json.loads(path.read_text(encoding="utf-8"))
        if finished_fingerprint(results) != self.fingerprint:
            self.ignored += len(results.get("items", []))
            return
        commit = results["environment"].get("git")
        for rec in results.get("items", []):
            # a finished run lists its records flat; each names its group in ``task``
            self._done[(rec.get("task", ""), rec["id"])] = {"commit": commit, **rec}

    def _files(self) -> list[Path]:
        """The checkpoint files this run owns: its shard's, or (a whole run) its own and every shard's."""
        if self.shard is not None:
            return [self.path] if self.path.exists() else []
        return sorted(p for p in self.folder.glob("checkpoint*.jsonl") if p.is_file())

    def _load_checkpoint(self, path: Path) -> None:
        if cut_torn_line(path):  # the record a kill cut short: computed again
            self.ignored += 1
        taken = foreign = 0
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:  # not a line this class wrote
                foreign += 1
                continue
            if entry.get("fingerprint") != self.fingerprint:
                foreign += 1
                continue
            self._done[(entry["group"], entry["record"]["id"])] = entry["record"]
            taken += 1
        self.ignored += foreign
        self.sources[path.name] = taken
        if not foreign:
            self._spent.append(path)

    def __len__(self) -> int:
        return len(self._done)

    def get(self, group: str, item_id: str) -> dict | None:
        """The stored record of ``item_id`` in ``group``, or ``None``."""
        return self._done.get((group, item_id))

    def add(self, group: str, record: dict) -> dict:
        """Store a newly computed record (returned with its ``commit``) and append it to the file."""
        record = {"commit": self.commit, **record}
        self._done[(group, record["id"])] = record
        if self._appender is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._appender = Appender(self.path)
        self._appender.write({"fingerprint": self.fingerprint, "group": group, "record": record})
        return record

    def close(self) -> None:
        if self._appender is not None:
            self._appender.close()
            self._appender = None

    def discard(self) -> None:
        """Once ``results.json`` holds every record: remove this run's own file and the files it took every record
        of (a shard's file with records under other settings, or one that appeared since, stays)."""
        self.close()
        for path in {self.path, *self._spent}:
            path.unlink(missing_ok=True)
