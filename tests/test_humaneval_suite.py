"""`monet-edit eval --suite humaneval` end to end: results.json entry, gates, bad input, no sandbox."""

from __future__ import annotations

import json

import pytest
from clirun import assert_clean_error, cli
from test_eval import _shared_home, copies, masked_copy, shared_home  # noqa: F401  (fixtures)

ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # tiny shapes: on a busy 2-core machine, torch's thread sync dominates
SMALL = ("--tokens", "300", "--seq-len", "32", "--batch-size", "4", "--samples", "2", "--max-new-tokens", "4",
         "--limit", "3")


def humaneval_entry(samples: int = 12) -> dict:
    """A humaneval results entry as the suite combines it, from made-up per-problem counts."""
    from monet_edit.evaluation.humaneval import Generation, load
    from monet_edit.evaluation.humaneval.score import from_counts
    from monet_edit.evaluation.suites import get

    problems = load(limit=4)
    setup = {"problems": problems.record(4), "generation": Generation(samples, 0.8, 64, 0, 4).record(),
             "scorer": {"version": "1", "sandbox": {"isolation": "bubblewrap 0.8.0"}}}

    def side(correct):
        rows = [[c, samples - c] + [0] * 15 for c in correct]  # passing, then AssertionError failures
        return {**from_counts(problems.problems, rows), "completions_at_limit": 0, "prompts_cut": 0,
                "example": None, "setup": setup}

    return get("humaneval").combine(side([12, 3, 0, 1]), side([6, 0, 0, 1]))


def test_the_entry_and_its_gate_metrics():
    from monet_edit.evaluation.humaneval.passk import pass_at_k
    from monet_edit.evaluation.suites import get

    entry = humaneval_entry()
    assert entry["ks"] == [1, 10] and entry["before"]["pass@1"] == pytest.approx(16 / 48)
    assert entry["before"]["pass@10"] == pytest.approx((1 + pass_at_k(12, 3, 10) + 0 + pass_at_k(12, 1, 10)) / 4)
    assert entry["after"]["failures"] == {"AssertionError": 41} and entry["delta"]["pass@1"] == pytest.approx(-9 / 48)
    summary, notes = get("humaneval").summarise("python", entry)
    assert summary["humaneval_pass1_delta"] == entry["delta"]["pass@1"] and summary["humaneval_pass100_after"] is None
    assert summary["humaneval_pass10_after"] == entry["after"]["pass@10"]
    assert set(summary) == set(get("humaneval").metrics) and any("k <= --samples 12" in n for n in notes)


def _eval(model, base, out, *extra, env=None):
    return cli("eval", "--model", model, "--base", base, "--target", "python", "--reference", "c", *SMALL, "--out", out, *extra,
               env={**ONE_THREAD, **(env or {})})


def test_pass_at_k_before_and_after_with_loss(tiny_ckpt, copies, tmp_path, shared_home):  # noqa: F811
    env = {"MONET_EDIT_HOME": str(shared_home)}
    res = _eval(copies["masked"], tiny_ckpt, tmp_path / "ev", "--suite", "loss,humaneval", "--gate",
                "humaneval_pass1_after>=0,humaneval_pass1_delta<=1", "--json", env=env)
    assert res.code == 0, res.stderr
    results = json.loads(res.stdout)
    assert results == json.loads((tmp_path / "ev" / "results.json").read_text())
    he = results["humaneval"]
    assert he["ks"] == [1] and he["samples"] == 2 and he["problems"]["problems"] == 3
    assert he["problems"]["task_ids"] == ["HumanEval/0", "HumanEval/1", "HumanEval/2"]
    assert he["scorer"]["version"] == "1" and he["scorer"]["sandbox"]["isolation"].startswith("bubblewrap")
    assert he["generation"]["temperature"] == 0.8 and he["generation"]["seed"] == 0
    for side in ("before", "after"):
        entry = he[side]
        lo, hi = entry["intervals"]["pass@1"]
        assert 0 <= lo <= entry["pass@1"] <= hi <= 1 and len(entry["correct"]) == 3
        assert entry["pass@1"] == sum(entry["correct"]) / 6
        assert sum(p["correct"] + sum(p["failures"].values()) for p in entry["per_problem"]) == 6
        assert entry["prompts_cut"] == 3  # the test checkpoint has 64 positions
    assert results["summary"]["humaneval_pass1_delta"] == he["delta"]["pass@1"]
    assert results["summary"]["humaneval_pass10_before"] is None  # 2 samples allow only pass@1
    assert results["loss"]["python"]["before"]["tokens"] > 0  # next to the loss numbers
    assert all(g["passed"] for g in results["gates"])
    assert any("pass@k only for k <= --samples 2" in n for n in results["notes"])
    assert "humaneval_pass1_before" in (tmp_path / "ev" / "results.md").read_text()


def test_a_gate_on_pass_at_k_fails_with_exit_3(tiny_ckpt, copies, tmp_path, shared_home):  # noqa: F811
    # a random 7k-parameter model writes no working program: pass@1 is 0, below any positive bar
    res = _eval(copies["masked"], tiny_ckpt, tmp_path / "ev", "--suite", "humaneval", "--gate",
                "humaneval_pass1_before>=0.5", env={"MONET_EDIT_HOME": str(shared_home)})
    assert res.code == 3 and "gate failed: humaneval_pass1_before>=0.5" in res.stderr.strip().splitlines()[-1]


@pytest.mark.slow  # 20 s; data-parallel eval is checked in the default run by test_distributed
def test_two_ranks_give_the_numbers_of_one_process(tiny_ckpt, copies, tmp_path, shared_home):  # noqa: F811
    env = {"MONET_EDIT_HOME": str(shared_home)}
    one = _eval(copies["masked"], tiny_ckpt, tmp_path / "one", "--suite", "humaneval", "--json", env=env)
    two = _eval(copies["masked"], tiny_ckpt, tmp_path / "two", "--suite", "humaneval", "--json", "--nproc", "2",
                env=env)
    assert one.code == 0 and two.code == 0, (one.stderr, two.stderr)
    a, b = json.loads(one.stdout), json.loads(two.stdout)
    assert b["ranks"] == 2 and a["humaneval"] == b["humaneval"] and a["summary"] == b["summary"]


@pytest.mark.parametrize("extra, needle", [
    (("--problems", "{missing}"), "no such file"),
    (("--problems", "{bad}"), ":2: entry_point 'os.system' is not a Python identifier"),
    (("--temperature", "-1"), "--temperature must be a number >= 0"),
    (("--limit", "0"), "--limit must be at least 1"),
    (("--gate", "humaneval_pass5_after>=0"), "did you mean humaneval_pass1_after"),
])
def test_bad_input_is_one_line_and_writes_nothing(tiny_ckpt, copies, tmp_path, shared_home, extra,  # noqa: F811
                                                  needle):
    good = json.dumps({"task_id": "a", "prompt": "def f():\n", "entry_point": "f", "test": "def check(c):\n  pass\n"})
    (tmp_path / "bad.jsonl").write_text(good + "\n" + good.replace('"f"', '"os.system"').replace('"a"', '"b"') + "\n")
    extra = [e.format(missing=tmp_path / "none.jsonl", bad=tmp_path / "bad.jsonl") for e in extra]
    res = _eval(copies["masked"], tiny_ckpt, tmp_path / "ev", "--suite", "humaneval", *extra,
                env={"MONET_EDIT_HOME": str(shared_home)})
    assert_clean_error(res, 2, needle)
    assert not (tmp_path / "ev").exists()


def test_a_gate_on_pass_at_k_needs_the_suite(tiny_ckpt, copies, tmp_path, shared_home):  # noqa: F811
    res = _eval(copies["masked"], tiny_ckpt, tmp_path / "ev", "--suite", "loss", "--gate",
                "humaneval_pass1_after>=0", env={"MONET_EDIT_HOME": str(shared_home)})
    assert_clean_error(res, 2, "humaneval_pass1_after needs the humaneval suite")


def test_without_bubblewrap_it_refuses_unless_unsafe_exec(tiny_ckpt, copies, tmp_path, shared_home):  # noqa: F811
    env = {"MONET_EDIT_HOME": str(shared_home), "PATH": str(tmp_path)}  # no bwrap on PATH
    res = _eval(copies["masked"], tiny_ckpt, tmp_path / "ev", "--suite", "humaneval", env=env)
    lines = res.stderr.strip().splitlines()  # the plan's line, then the refusal: before any model is loaded
    assert res.code == 2 and "Traceback" not in res.stderr and len(lines) == 2, res.stderr
    assert "bwrap (bubblewrap) is not installed" in lines[1] and "--unsafe-exec" in lines[1]
    assert not (tmp_path / "ev").exists() and "before:" not in res.stderr
    res = _eval(copies["masked"], tiny_ckpt, tmp_path / "ev", "--suite", "humaneval", "--unsafe-exec", "--json",
                env=env)
    assert res.code == 0, res.stderr
    results = json.loads(res.stdout)
    assert results["humaneval"]["scorer"]["sandbox"]["isolation"].startswith("NONE")
    assert any("WITHOUT a sandbox" in n for n in results["notes"])


@pytest.mark.slow
def test_python_edit_on_tiny_reports_pass_at_k(tmp_path, shared_home):  # noqa: F811
    """The packaged tiny, its Python experts resected, then loss and HumanEval before and after."""
    env = {"MONET_EDIT_HOME": str(shared_home)}
    res = cli("resect", "--language", "python", "--tokens", "5000", "--seq-len", "128", "--out", tmp_path / "py",
              env=env, timeout=1800)
    assert res.code == 0, res.stderr
    res = cli("eval", "--model", tmp_path / "py", "--suite", "loss,humaneval", "--tokens", "2000", "--seq-len",
              "128", "--samples", "2", "--max-new-tokens", "32", "--limit", "8", "--json", env=env, timeout=3600)
    assert res.code == 0, res.stderr
    results = json.loads(res.stdout)
    assert results["edited"]["experts_masked"] > 0 and results["target"]["name"] == "python"
    for side in ("before", "after"):
        assert 0 <= results["humaneval"][side]["pass@1"] <= 1 and len(results["humaneval"][side]["correct"]) == 8
    assert results["summary"]["target_loss_delta"] is not None
