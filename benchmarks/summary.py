"""``summary.json``: the project's headline figures as flat ``key -> number`` pairs.

Each suite owns the keys under its prefixes (``downstream`` owns ``commongen.*`` and ``e2e.*``, ...)
and rewrites exactly those after a run, leaving every other suite's keys as they were. Values are
measured numbers only; a key whose value is not a finite number is an error, not a placeholder.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Mapping, Sequence

SUMMARY = "summary.json"


def update_summary(path: Path, prefixes: Sequence[str], values: Mapping[str, float]) -> dict[str, float]:
    """Replace the keys under ``prefixes`` in the JSON file at ``path`` with ``values``; returns the new content.

    The file is written atomically (a temporary file renamed into place), keys sorted.
    """
    for key, value in values.items():
        if not key.startswith(tuple(prefixes)):
            raise ValueError(f"summary key {key!r} is outside this suite's prefixes {list(prefixes)}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"summary key {key!r} must be a finite number, got {value!r}")
    current = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    kept = {k: v for k, v in current.items() if not k.startswith(tuple(prefixes))}
    merged = dict(sorted({**kept, **{k: float(v) for k, v in values.items()}}.items()))
    tmp = path.with_name(path.name + ".tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp.write_text(json.dumps(merged, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return merged
