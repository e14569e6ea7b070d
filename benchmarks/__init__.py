"""Benchmarks for refine: is refinement worth its cost?

Run from the repository root::

    python -m benchmarks                    # the default suites: search, downstream, scaling (full sizes)
    python -m benchmarks moves              # substitute vs regenerate vs both
    python -m benchmarks search --quick     # the smoke test: a tiny subset in a few minutes
    refine bench scaling --threads 2        # the same through the refine CLI

Suites (one module each): :mod:`benchmarks.search` (objective vs compute against beam search and
best-of-N), :mod:`benchmarks.downstream` (CommonGen and E2E task quality),
:mod:`benchmarks.scaling` (cost vs output length and candidates; scoring throughput),
:mod:`benchmarks.moves` (which move kind wins where).
Results go to ``benchmarks/results/<suite>/`` (``--quick``: ``benchmarks/results/quick/<suite>/``).
"""
