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
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from refine.batch import Appender, cut_torn_line

from .report import RESULTS

CHECKPOINT = "checkpoint.jsonl"


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
    """

    def __init__(self, folder: Path, fingerprint: dict[str, Any], resume: bool, commit: str | None) -> None:
        self.path = folder / CHECKPOINT
        self.fingerprint = json.loads(json.dumps(fingerprint))  # as it reads back from JSON (tuples -> lists)
        self.commit = commit
        self.ignored = 0  # records found under another fingerprint, or torn lines
        self._done: dict[tuple[str, str], dict] = {}
        self._appender: Appender | None = None
        if resume:
            self._load_finished(folder / RESULTS)
            self._load_checkpoint()
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

    def _load_checkpoint(self) -> None:
        if not self.path.exists():
            return
        if cut_torn_line(self.path):  # the record a kill cut short: computed again
            self.ignored += 1
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:  # not a line this class wrote
                self.ignored += 1
                continue
            if entry.get("fingerprint") != self.fingerprint:
                self.ignored += 1
                continue
            self._done[(entry["group"], entry["record"]["id"])] = entry["record"]

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

    def discard(self) -> None:
        """Remove the file once the run's ``results.json`` holds every record."""
        if self._appender is not None:
            self._appender.close()
            self._appender = None
        self.path.unlink(missing_ok=True)
