"""refine batch: the input format, resuming after a kill (kill -9 included), nothing lost or duplicated."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from refine.batch import BatchItem, completed_ids, read_items, run_batch
from refine.cli import main
from refine.errors import InputError


def write_prompts(path, n):
    words = ["the cat", "a dog", "red sun", "big sea", "old man", "hot tea", "blue sky", "wet fog"]
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"id": f"p{i}", "prompt": f"{words[i % len(words)]} {i}"}) + "\n")
    return path


def read_records(path):
    return [json.loads(line) for line in open(path)]


@pytest.mark.parametrize("lines, message", [
    (['{"prompt": "a"}', "not json"], r":2: not valid JSON"),
    (['{"text": "a"}'], r":1: each line must be a JSON object with a non-empty string \"prompt\""),
    (['{"prompt": "a", "id": 1}', '{"prompt": "b", "id": "1"}'], r":2: id '1' already used on line 1"),
    (['{"prompt": "a", "id": true}'], r"\"id\" must be a string or an integer"),
    (['{"prompt": "a", "refine": [1]}'], r"\"refine\" must be a JSON object"),
])
def test_bad_input_names_the_line(tmp_path, lines, message):
    path = tmp_path / "in.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match=message):
        read_items(path)


def test_ids_default_to_line_numbers(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text('{"prompt": "a"}\n\n{"prompt": "b", "refine": {"top_k": 2}}\n')
    assert read_items(path) == [BatchItem("1", "a", {}), BatchItem("3", "b", {"top_k": 2})]


def test_torn_last_line_is_dropped_and_foreign_files_refused(tmp_path):
    out = tmp_path / "out.jsonl"
    out.write_text('{"id": "a", "prompt": "pa", "text": "x"}\n{"id": "b", "te')
    assert completed_ids(out, {"a": "pa", "b": "pb"}) == {"a"}
    assert out.read_text() == '{"id": "a", "prompt": "pa", "text": "x"}\n'
    with pytest.raises(InputError, match="id 'a' is not in the input"):
        completed_ids(out, {"b": "pb"})
    with pytest.raises(InputError, match="id 'a' was refined for another prompt"):
        completed_ids(out, {"a": "changed"})
    out.write_text('{"id": "a", "prompt": "pa"}\n{"id": "a", "prompt": "pa"}\n')
    with pytest.raises(InputError, match="written twice"):
        completed_ids(out, {"a": "pa"})


def test_blank_lines_in_the_output_are_skipped(tmp_path):
    out = tmp_path / "out.jsonl"
    out.write_text('{"id": "a", "prompt": "pa"}\n\n  \n{"id": "b", "prompt": "pb"}\n\n')
    assert completed_ids(out, {"a": "pa", "b": "pb", "c": "pc"}) == {"a", "b"}


def test_line_separators_inside_prompts_survive_a_resume(tmp_path):
    """Records are written with ensure_ascii=False: U+2028, U+2029 and U+0085 inside a prompt reach the file
    raw, and lines are split at \\n only, so the rerun reads back what the first run wrote."""
    prompts = ["line one\u2028line two", "para\u2029graph", "next\x85line", "plain"]
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"prompt": p}, ensure_ascii=i % 2 == 0) + "\n"
                           for i, p in enumerate(prompts)), encoding="utf-8")
    items = read_items(src)
    assert [it.prompt for it in items] == prompts

    def refine_chunk(part):
        for it in part:
            yield it, {"text": it.prompt}

    out = tmp_path / "out.jsonl"
    assert run_batch(items[:2], out, refine_chunk, progress=False) == (2, 0)
    assert run_batch(items, out, refine_chunk, progress=False) == (2, 2)
    assert run_batch(items, out, refine_chunk, progress=False) == (0, 4)
    assert [json.loads(line)["text"] for line in out.read_bytes().decode().split("\n") if line] == prompts


def test_a_changed_input_is_refused_not_resumed(tmp_path):
    """Ids default to line numbers: a prompt put in front shifts them, and the rerun must not skip or repeat."""
    src = tmp_path / "in.jsonl"
    src.write_text('{"prompt": "P1"}\n{"prompt": "P2"}\n')

    def refine_chunk(part):
        for it in part:
            yield it, {"text": it.prompt}

    out = tmp_path / "out.jsonl"
    run_batch(read_items(src)[:1], out, refine_chunk, progress=False)
    src.write_text('{"prompt": "P0"}\n{"prompt": "P1"}\n{"prompt": "P2"}\n')
    with pytest.raises(InputError, match="id '1' was refined for another prompt"):
        run_batch(read_items(src), out, refine_chunk, progress=False)
    assert len(read_records(out)) == 1


def test_run_batch_appends_and_skips_done(tmp_path):
    items = [BatchItem(str(i), f"p{i}") for i in range(5)]
    calls = []

    def refine_chunk(part):
        calls.append([it.id for it in part])
        for it in part:
            yield it, {"text": it.prompt.upper()}

    out = tmp_path / "out.jsonl"
    out.write_text('{"id": "1", "prompt": "p1", "text": "P1"}\n')
    assert run_batch(items, out, refine_chunk, chunk=2, progress=False) == (4, 1)
    assert calls == [["0", "2"], ["3", "4"]]
    assert sorted(r["id"] for r in read_records(out)) == ["0", "1", "2", "3", "4"]
    assert run_batch(items, out, refine_chunk, chunk=2, progress=False) == (0, 5)


def test_cli_batch_refines_every_prompt(model_dir, tmp_path, capsys):
    src = write_prompts(tmp_path / "in.jsonl", 4)
    out = tmp_path / "out.jsonl"
    args = ["batch", "--input", str(src), "--output", str(out), "--model", str(model_dir), "--no-chat",
            "--max-new-tokens", "10", "--refine", '{"objective": "sum", "budget": {"max_sweeps": 1}}', "--no-progress"]
    assert main(args) == 0
    recs = read_records(out)
    assert [r["id"] for r in recs] == ["p0", "p1", "p2", "p3"]
    for r in recs:
        assert r["score"] >= r["initial_score"] and len(r["tokens"]) <= 10 and r["stats"]["forward_tokens"] > 0
    # the same prompt through `refine run` gives the same record
    assert main(["run", "the cat 0", "--model", str(model_dir), "--no-chat", "--max-new-tokens", "10",
                 "--objective", "sum", "--max-sweeps", "1", "--json"]) == 0
    single = json.loads(capsys.readouterr().out)
    assert single["tokens"] == recs[0]["tokens"] and single["score"] == pytest.approx(recs[0]["score"])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x", "refine": {"max_new_tokens": 3}}\n')
    assert main(["batch", "--input", str(bad), "--output", str(tmp_path / "o2.jsonl"), "--model", str(model_dir),
                 "--no-progress"]) == 2
    assert "set for the whole batch" in capsys.readouterr().err


def test_cli_batch_checks_every_option_before_any_work(model_dir, tmp_path, capsys):
    src = tmp_path / "in.jsonl"
    src.write_text('{"prompt": "a", "id": "ok"}\n{"prompt": "b", "id": "late", "refine": {"top_k": 0}}\n')
    out = tmp_path / "out.jsonl"
    common = ["--output", str(out), "--model", str(model_dir), "--no-progress"]
    assert main(["batch", "--input", str(src), *common]) == 2
    assert "id 'late': `top_k` has to be a strictly positive integer" in capsys.readouterr().err
    assert not out.exists() or out.read_text() == ""  # refused before the first prompt was refined
    ok = tmp_path / "ok.jsonl"
    ok.write_text('{"prompt": "a"}\n')
    assert main(["batch", "--input", str(ok), "--refine", '{"max_new_tokens": 16}', *common]) == 2
    err = capsys.readouterr().err
    assert "--refine sets \"max_new_tokens\"" in err and "pass it there" in err


def test_batch_with_a_scorer_loads_it_once_and_matches_refine_run(model_dir, scorer_dir, tmp_path, capsys,
                                                                   monkeypatch):
    import refine.api

    loads = []
    real = refine.api.resolve_backend

    def counting(model=None, tokenizer=None):
        loads.append(model)
        return real(model, tokenizer)

    monkeypatch.setattr(refine.api, "resolve_backend", counting)
    src = write_prompts(tmp_path / "in.jsonl", 3)
    out = tmp_path / "out.jsonl"
    opts = json.dumps({"objective": "sum", "scorer": str(scorer_dir), "budget": {"max_sweeps": 1}})
    assert main(["batch", "--input", str(src), "--output", str(out), "--model", str(model_dir), "--no-chat",
                 "--max-new-tokens", "10", "--refine", opts, "--no-progress"]) == 0
    assert loads.count(str(scorer_dir)) == 1
    recs = read_records(out)
    assert len(recs) == 3 and all(r["stats"]["scorer_forward_tokens"] > 0 for r in recs)
    assert main(["run", "the cat 0", "--model", str(model_dir), "--scorer", str(scorer_dir), "--no-chat",
                 "--max-new-tokens", "10", "--objective", "sum", "--max-sweeps", "1", "--json"]) == 0
    single = json.loads(capsys.readouterr().out)
    assert single["tokens"] == recs[0]["tokens"] and single["score"] == pytest.approx(recs[0]["score"])
    # the --scorer flag is the same as the option
    flagged = tmp_path / "flagged.jsonl"
    assert main(["batch", "--input", str(src), "--output", str(flagged), "--model", str(model_dir), "--no-chat",
                 "--max-new-tokens", "10", "--refine", '{"objective": "sum", "budget": {"max_sweeps": 1}}',
                 "--scorer", str(scorer_dir), "--no-progress"]) == 0
    assert [r["tokens"] for r in read_records(flagged)] == [r["tokens"] for r in recs]
    assert all(r["stats"]["scorer_forward_tokens"] > 0 for r in read_records(flagged))


def test_kill_9_then_resume_loses_and_duplicates_nothing(model_dir, tmp_path):
    n = 24
    src = write_prompts(tmp_path / "in.jsonl", n)
    args = ["batch", "--input", str(src), "--model", str(model_dir), "--no-chat", "--max-new-tokens", "16",
            "--refine", '{"objective": "mean", "budget": {"max_sweeps": 1}}', "--chunk", "4", "--no-progress"]
    cmd = [sys.executable, "-m", "refine.cli", *args]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    clean = tmp_path / "clean.jsonl"
    assert main([*args, "--output", str(clean)]) == 0  # the uninterrupted run, in this process

    out = tmp_path / "out.jsonl"
    proc = subprocess.Popen([*cmd, "--output", str(out)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if out.exists() and out.read_text().count("\n") >= 2:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    at_kill = out.read_text().count("\n")
    assert 2 <= at_kill < n, f"the kill should land mid-run, {at_kill} of {n} records were written"
    with open(out, "a") as f:  # and a record cut short, as a kill during a write leaves it
        f.write('{"id": "p23", "prompt": "wet fo')
    subprocess.run([*cmd, "--output", str(out)], check=True, env=env, capture_output=True, timeout=600)

    got, want = read_records(out), {r["id"]: r for r in read_records(clean)}
    assert sorted(r["id"] for r in got) == sorted(want)  # every prompt exactly once
    for r in got:
        assert r["tokens"] == want[r["id"]]["tokens"] and r["score"] == pytest.approx(want[r["id"]]["score"])
