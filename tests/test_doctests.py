"""The examples in the core's docstrings run as written (``doctest``): a changed default or message that an example
shows fails here instead of misleading a reader."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import refine
import refine.objectives
import refine.strategies

#: core modules (no transformers, no vLLM at import) whose docstrings hold examples
CORE = sorted({"refine", "refine.config", "refine.limits", "refine.errors", "refine.diff", "refine.scorer",
               "refine.search", "refine.phrases", "refine.degeneration",
               *(m.name for m in pkgutil.iter_modules(refine.objectives.__path__, "refine.objectives.")),
               "refine.objectives",
               *(m.name for m in pkgutil.iter_modules(refine.strategies.__path__, "refine.strategies."))})


@pytest.mark.parametrize("name", CORE)
def test_docstring_examples_run_as_written(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} docstring examples of {name} fail (run " \
                               f"`python -m pytest --doctest-modules {module.__file__}` to see them)"


def test_the_examples_are_found():
    finder = doctest.DocTestFinder()
    found = sum(len(t.examples) for n in CORE for t in finder.find(importlib.import_module(n)))
    assert found >= 10
