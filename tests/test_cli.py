"""`refine run` end to end on a tiny model saved to disk."""

import json
import subprocess
import sys

import pytest

from refine.cli import main


def test_run_json(model_dir, capsys):
    assert main(["run", "the cat", "--model", str(model_dir), "--no-chat", "--max-new-tokens", "12",
                 "--objective", "sum", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["score"] >= d["initial_score"]
    assert d["stats"]["forward_tokens"] > 0 and len(d["initial_tokens"]) <= 12
    assert d["config"]["objective"] == {"sum": {"weight": 1.0}}
    # finished-ness is reported, and a finished answer stays finished (1 is <eos>)
    assert d["initial_ended"] == (d["initial_tokens"][-1] == 1) and d["ended"] == (d["tokens"][-1] == 1)
    assert d["ended"] or not d["initial_ended"]
    assert d["config"]["repeat_guard"] == 3


def test_repeat_guard_flag(model_dir, capsys):
    assert main(["run", "the cat", "--model", str(model_dir), "--no-chat", "--max-new-tokens", "8",
                 "--repeat-guard", "0", "--max-sweeps", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["config"]["repeat_guard"] is None
    assert main(["run", "the cat", "--model", str(model_dir), "--no-chat", "--max-new-tokens", "8",
                 "--repeat-guard", "2", "--max-sweeps", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["config"]["repeat_guard"] == 2


def test_run_human_output_shows_diff_and_compute(model_dir, capsys):
    assert main(["run", "the cat", "--model", str(model_dir), "--no-chat", "--max-new-tokens", "12",
                 "--objective", "sum,length=0.5", "--moves", "regenerate,delete", "--no-progress"]) == 0
    out = capsys.readouterr().out
    for key in ("initial", "refined", "diff", "score", "finished", "compute", "forward tokens", "refused"):
        assert key in out


def test_run_best_first_with_rank_pruning(model_dir, capsys):
    assert main(["run", "the cat", "--model", str(model_dir), "--no-chat", "--max-new-tokens", "12",
                 "--objective", "mean", "--strategy", "best_first", "--strategy-options", '{"pool": 3}',
                 "--prune-keep", "2", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["score"] >= d["initial_score"]
    assert d["config"]["strategy"] == "best_first" and d["config"]["strategy_options"] == {"pool": 3}
    assert d["config"]["prune_keep"] == 2


def test_run_power_is_reproducible_and_beam_move_selectable(model_dir, capsys):
    args = ["run", "the cat", "--model", str(model_dir), "--no-chat", "--max-new-tokens", "8", "--objective", "mean",
            "--strategy", "power", "--strategy-options", '{"alpha": 2, "blocks": 2, "steps": 3}', "--json"]
    runs = []
    for seed in ("5", "5"):
        assert main([*args, "--seed", seed]) == 0
        runs.append(json.loads(capsys.readouterr().out))
    assert runs[0]["tokens"] == runs[1]["tokens"] and runs[0]["score"] >= runs[0]["initial_score"]
    assert runs[0]["config"]["strategy"] == "power" and runs[0]["config"]["seed"] == 5
    assert main(["run", "the cat", "--model", str(model_dir), "--no-chat", "--max-new-tokens", "8",
                 "--moves", "regenerate_beam", "--regen-beam", "3", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["config"]["moves"] == ["regenerate_beam"] and d["config"]["regen_beam"] == 3
    assert d["score"] >= d["initial_score"]


def test_bad_option_is_a_clean_error(model_dir, capsys):
    assert main(["run", "x", "--model", str(model_dir), "--moves", "teleport"]) == 2
    assert "moves" in capsys.readouterr().err


def test_console_script_installed():
    r = subprocess.run([sys.executable, "-m", "refine.cli", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "run" in r.stdout


def test_run_with_a_scorer(model_dir, scorer_dir, capsys):
    args = ["run", "the cat", "--model", str(model_dir), "--scorer", str(scorer_dir), "--no-chat",
            "--max-new-tokens", "8", "--max-sweeps", "1", "--max-positions", "2"]
    assert main(args + ["--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["config"]["scorer"] == str(scorer_dir)
    assert 0 < d["stats"]["scorer_forward_tokens"] < d["stats"]["forward_tokens"]
    assert main(args + ["--no-progress"]) == 0
    out = capsys.readouterr().out
    assert f"(scored by {scorer_dir})" in out and "scorer    :" in out


def test_run_from_nothing_samples_without_a_start(model_dir, capsys):
    """``--from-nothing``: a sampler draws every output itself; no start is decoded, none is shown; another
    strategy is refused, and the flag excludes ``--output``."""
    args = ["run", "the cat", "--model", str(model_dir), "--no-chat", "--max-new-tokens", "8", "--objective", "mean",
            "--strategy", "power", "--strategy-options", '{"alpha": 2, "blocks": 2, "steps": 3}', "--from-nothing"]
    assert main([*args, "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["initial_tokens"] == [] and d["initial_text"] == "" and d["initial_score"] is None
    assert 0 < len(d["tokens"]) <= 8 and d["timing"]["greedy_s"] < 0.5
    assert main([*args, "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "output" in out and "initial" not in out and "greedy decode" not in out
    assert main(["run", "the cat", "--model", str(model_dir), "--no-chat", "--from-nothing"]) == 2
    assert "start from nothing" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["run", "   "], "the prompt is empty"),
    (["run", "a question", "--output", "  "], "--output is empty"),
])
def test_empty_prompt_or_output_is_a_clean_error(model_dir, capsys, argv, message):
    assert main([*argv, "--model", str(model_dir), "--no-chat"]) == 2
    assert message in capsys.readouterr().err
