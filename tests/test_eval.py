"""Evaluation: suites, summary, results files and bad input (direct calls; the CLI is in test_gates)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from helpers import random_mask, tiny_config

from monet_edit.errors import UsageError
from monet_edit.evaluation import EvalParams, prepare, target_from_name
from monet_edit.evaluation import results as report
from monet_edit.evaluation import summary as summary_mod
from monet_edit.evaluation.compare import evaluate
from monet_edit.evaluation.suites import mcq as mcq_mod
from monet_edit.evaluation.suites import toxicity as tox
from monet_edit.model.loading import load_model, load_tokenizer

SMALL = dict(tokens=300, seq_len=32, batch_size=16, mcq_items=3, prompts=2, samples=2, max_new_tokens=4)


@pytest.fixture(scope="session")
def shared_home(tmp_path_factory) -> Path:
    """One corpus cache for these tests (building `general` takes seconds; the data never changes)."""
    return tmp_path_factory.mktemp("home")


@pytest.fixture(autouse=True)
def _shared_home(shared_home, monkeypatch):
    monkeypatch.setenv("MONET_EDIT_HOME", str(shared_home))


def masked_copy(src: Path, dst: Path, masks: dict | None) -> Path:
    """A copy of checkpoint `src` whose model.safetensors also stores `masks` (as resect writes them)."""
    from safetensors.torch import load_file, save_file

    from monet_edit.model.checkpoint import load_config, mask_key

    shutil.copytree(src, dst)
    if masks:
        config = load_config(src)
        tensors = load_file(str(src / "model.safetensors"))
        tensors.update({mask_key(config, g): m.bool() for g, m in masks.items()})
        save_file(tensors, str(dst / "model.safetensors"))
    return dst


@pytest.fixture(scope="session")
def copies(tiny_ckpt, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("copies")
    return {"same": masked_copy(tiny_ckpt, root / "same", None),
            "masked": masked_copy(tiny_ckpt, root / "masked", random_mask(tiny_config(), 0.4, seed=3))}


@pytest.fixture(scope="session")
def python_results(tiny_ckpt, copies, shared_home, shared_corpora) -> dict[str, dict]:
    """Loss suite on a language target: unmasked copy and masked copy against the base."""
    with pytest.MonkeyPatch.context() as mp:  # session fixtures run before the per-test home is set
        mp.setenv("MONET_EDIT_HOME", str(shared_home))
        mp.setenv("MONET_EDIT_CORPORA", str(shared_corpora))
        target = target_from_name("python")
        params = EvalParams(suites=("loss",), **SMALL)
        return {k: evaluate(str(tiny_ckpt), str(copies[k]), target, params) for k in ("same", "masked")}


def test_unmasked_copy_changes_nothing(python_results):
    """An edit that does nothing scores selectivity 0 with a zero-width interval: no gate on it passes."""
    from monet_edit.evaluation import gates
    from monet_edit.selection.targets import default_references

    res = python_results["same"]
    inside = {n for n in res["loss"] if not n.endswith("@oos")}
    assert inside == {"python", *default_references("python")} and "general" in inside and "law" in inside
    for name, side in res["loss"].items():
        assert side["before"] == side["after"], name
        assert side["before"]["tokens"] > 0 and sum(side["before"]["docs"]["tokens"]) == side["before"]["tokens"]
    s = res["summary"]
    assert s["target_loss_delta"] == 0 and s["others_loss_delta"] == 0 and s["experts_masked"] == 0
    assert s["selectivity"] == 0 and s["selectivity_lo"] == s["selectivity_hi"] == 0
    assert not gates.check(gates.parse("selectivity>=10"), s)[0]["passed"]


def test_masked_copy_changes_losses(python_results):
    res = python_results["masked"]
    deltas = {n: side["after"]["loss"] - side["before"]["loss"] for n, side in res["loss"].items()}
    assert all(d != 0 for d in deltas.values()), deltas
    s = res["summary"]
    assert s["target_loss_delta"] == pytest.approx(deltas["python"])
    others = [d for n, d in deltas.items() if n not in ("python", "general") and not n.endswith("@oos")]
    assert len(others) >= 20 and s["others_loss_delta"] == pytest.approx(sum(others) / len(others))
    assert s["target_loss_delta_lo"] <= s["target_loss_delta"] <= s["target_loss_delta_hi"]
    # the references hold many short documents (MMLU items): a real interval around their mean
    assert s["others_loss_delta_lo"] < s["others_loss_delta"] < s["others_loss_delta_hi"]
    masks = random_mask(tiny_config(), 0.4, seed=3)
    masked = sum(int(m.sum()) for m in masks.values())
    assert s["experts_masked"] == masked and s["fraction_masked"] == pytest.approx(masked / (2 * 64))
    assert s["general_loss_rel"] == pytest.approx(deltas["general"] / res["loss"]["general"]["before"]["loss"])


def test_results_record_provenance(python_results, tiny_ckpt):
    from monet_edit.corpora import cached
    from monet_edit.model.checkpoint import model_fingerprint

    res = python_results["masked"]
    assert res["base"]["fingerprint"] == res["edited"]["fingerprint"] == model_fingerprint(tiny_ckpt)
    assert res["corpora"]["python"] == cached("python").fingerprint
    assert res["parameters"]["tokens"] == 300 and res["parameters"]["seq_len"] == 32
    assert res["parameters"]["suites"] == ["loss"]
    assert {"version", "git_revision", "torch", "python", "seed"} <= set(res["provenance"])
    assert res["compute"] == {"device": "cpu", "dtype": {"before": "float32", "after": "float32"}}


def test_write_results_json_and_markdown(python_results, tmp_path):
    res = dict(python_results["masked"], gates=[])
    out = report.write(res, tmp_path / "ev")
    data = json.loads((out / "results.json").read_text())
    assert data["summary"]["target_loss_delta"] == pytest.approx(res["summary"]["target_loss_delta"])
    md = (out / "results.md").read_text()
    assert "| loss | python |" in md and "target_loss_delta" in md
    with pytest.raises(UsageError, match="exists"):
        report.write(res, out)
    assert json.loads((out / "results.json").read_text()) == data  # untouched without force
    report.write(dict(res, notes=["again"]), out, force=True)
    assert "again" in (out / "results.md").read_text()


def test_non_finite_numbers_become_null():
    assert report.finite({"a": math.inf, "b": [1.0, math.nan], "c": "x"}) == {"a": None, "b": [1.0, None], "c": "x"}


@pytest.mark.parametrize("target,others,expected", [
    (0.5, 0.05, 10.0), (0.5, 0.0, 250.0), (0.5, -0.1, 250.0), (0.0, 0.0, 0.0), (-0.1, 0.0, -50.0),
    (0.002, 0.0, 1.0),
])
def test_selectivity_has_a_floor_and_is_always_finite(target, others, expected):
    """Others' mean loss 2.0: the denominator is at least 0.1% of it (0.002 nats)."""
    from monet_edit.model.scoring import selectivity

    value = selectivity(target, others, 2.0)
    assert math.isfinite(value) and value == pytest.approx(expected)


def _loss_entry(before: float, after: float, docs: int = 4) -> dict:
    """A loss entry of `docs` documents of 10 tokens whose losses vary around the given means."""
    def side(mean: float) -> dict:
        nll = [10 * (mean + 0.1 * (d - (docs - 1) / 2)) for d in range(docs)]
        return {"loss": sum(nll) / (10 * docs), "accuracy": 0.5, "tokens": 10 * docs,
                "docs": {"nll": nll, "correct": [5] * docs, "tokens": [10] * docs}}

    return {"before": side(before), "after": side(after)}


def test_summary_numbers():
    loss = {"law": _loss_entry(2.0, 3.0), "math": _loss_entry(2.0, 2.1), "health": _loss_entry(2.0, 2.3),
            "general": _loss_entry(4.0, 4.2)}
    loss["health"]["after"]["accuracy"] = 0.3

    def mcq_side(correct: list[int]) -> dict:
        return {"accuracy": sum(correct) / len(correct), "n": len(correct), "items": {"correct": correct}}

    mcq = {"law": {"before": mcq_side([1, 1, 0, 0]), "after": mcq_side([1, 0, 0, 0])},
           "math": {"before": mcq_side([1, 1, 0, 0]), "after": mcq_side([1, 1, 1, 0])}}
    s, notes = summary_mod.summarise("law", {"loss": loss, "mcq": mcq}, masked=10, total=200)
    assert s["target_loss_delta"] == pytest.approx(1.0) and s["others_loss_delta"] == pytest.approx(0.2)
    assert s["selectivity"] == pytest.approx(5.0) and any("bootstrap" in n for n in notes)
    # the same shift in every document: the paired intervals collapse onto the point estimate
    assert s["target_loss_delta_lo"] == pytest.approx(1.0) and s["target_loss_delta_hi"] == pytest.approx(1.0)
    assert s["selectivity_lo"] == pytest.approx(5.0) and s["selectivity_hi"] == pytest.approx(5.0)
    assert s["others_accuracy_delta"] == pytest.approx(-0.1)
    assert s["general_loss_rel"] == pytest.approx(0.05) and s["target_loss_rel"] == pytest.approx(0.5)
    assert s["target_mcq_delta"] == pytest.approx(-0.25) and s["others_mcq_delta"] == pytest.approx(0.25)
    assert s["fraction_masked"] == pytest.approx(0.05)


def test_summary_keys_are_gate_metrics():
    from monet_edit.corpora import oos_set
    from monet_edit.evaluation.gates import metrics

    names = ["toxicity", "general", "law", *(n for n in (oos_set("toxicity"), oos_set("law")) if n)]
    loss = {n: _loss_entry(1.0, 1.1) for n in names}
    tm = tox.metrics_of([0.5, 0.7])
    tox_entry = {"before": {"toxic": tm, "nontoxic": tm}, "after": {"toxic": tm, "nontoxic": tm}}
    item = {"accuracy": 0.5, "n": 2, "items": {"correct": [1, 0]}}
    mcq = {"law": {"before": item, "after": item}, "math": {"before": item, "after": item}}
    s, _ = summary_mod.summarise("toxicity", {"loss": loss, "toxicity": tox_entry}, 0, 1)
    s2, _ = summary_mod.summarise("law", {"mcq": mcq, "loss": loss}, 0, 1)
    from test_humaneval_suite import humaneval_entry

    s3, _ = summary_mod.summarise("python", {"humaneval": humaneval_entry()}, 0, 1)
    keys = set(s) | set(s2) | set(s3)
    assert keys <= set(metrics())
    missing = set(metrics()) - keys
    assert all(k.startswith("oos_") for k in missing) and (not missing or oos_set("law") is None)


def test_mcq_logliks_match_unpadded_scoring(tiny_ckpt):
    model, tok = load_model(tiny_ckpt), load_tokenizer(tiny_ckpt)
    doc = {"question": "Law?", "choices": ["land", "an answer", "x", "law"], "answer": 1}
    prompt, choices = mcq_mod.prompt_and_choices(doc)
    assert prompt == "Law?\nA. land\nB. an answer\nC. x\nD. law\nAnswer:" and choices[1] == " B. an answer"
    assert max(len(tok.encode(prompt + c)) for c in choices) <= model.config.max_position_embeddings
    got = mcq_mod.choice_logliks(model, tok, prompt, choices)
    for value, choice in zip(got, choices, strict=True):
        ctx, cont = tok.encode(prompt), tok.encode(choice, add_bos=False)
        ids = torch.tensor([ctx + cont])
        with torch.inference_mode():
            logp = torch.log_softmax(model(ids).logits.float(), -1)[0]
        want = sum(float(logp[len(ctx) + i - 1, t]) for i, t in enumerate(cont))
        assert value == pytest.approx(want, abs=1e-4)
    best = max(range(4), key=got.__getitem__)
    result = mcq_mod.score(model, tok, [dict(doc, answer=best), dict(doc, answer=(best + 1) % 4)])
    assert result["n"] == 2 and result["accuracy"] == 0.5


def test_mcq_truncates_long_prompts(tiny_ckpt):
    model, tok = load_model(tiny_ckpt), load_tokenizer(tiny_ckpt)
    values = mcq_mod.choice_logliks(model, tok, "word " * 200, [" A. yes", " B. no"])
    assert len(values) == 2 and all(math.isfinite(v) and v < 0 for v in values)


def test_toxicity_metrics_known_numbers():
    m = tox.metrics([[0.1, 0.6, 0.2], [0.3, 0.4, 0.1], [0.9, 0.0, 0.0], [0.0, 0.0, 0.0]])
    assert m["expected_max_toxicity"] == pytest.approx((0.6 + 0.4 + 0.9 + 0.0) / 4)
    assert m["toxicity_probability"] == pytest.approx(0.5) and m["prompts"] == 4
    assert tox.metrics([])["expected_max_toxicity"] is None


def test_prompt_text_keeps_first_words():
    assert tox.prompt_text("One, two three  four five six seven eight nine ten") == \
        "One, two three  four five six seven eight"
    assert tox.prompt_text("short text") == "short text"


def test_toxicity_suite_with_stub_scorer(tiny_ckpt, monkeypatch):
    """Stub scorer: a text's score is the fraction of its characters that are 'x' (prompts with x are toxic)."""
    from monet_edit.corpora import labels as scorer

    seen: list[str] = []

    def stub(texts):
        seen.extend(texts)
        return [t.count("x") / max(1, len(t)) for t in texts]

    monkeypatch.setattr(scorer, "score_texts", stub)
    docs = [{"id": f"d{i}", "text": t} for i, t in enumerate(["xxxx xxxx is bad", "xx xxx yes", "a b c", "hello"])]
    sets = tox.select_prompts(docs, 5)
    assert [p["id"] for p in sets["toxic"]] == ["d0", "d1"] and [p["id"] for p in sets["nontoxic"]] == ["d3", "d2"]
    model, tok = load_model(tiny_ckpt), load_tokenizer(tiny_ckpt)
    seen.clear()
    res = tox.score(model, tok, sets, samples=3, max_new_tokens=5, seed=7)
    assert len(seen) == 4 * 3  # every continuation scored once
    scores = [t.count("x") / max(1, len(t)) for t in seen]
    per_prompt = [scores[i * 3:(i + 1) * 3] for i in range(4)]
    nontoxic, toxic = per_prompt[:2], per_prompt[2:]  # sets are scored in name order
    assert res["toxic"]["expected_max_toxicity"] == pytest.approx(sum(max(s) for s in toxic) / 2)
    assert res["nontoxic"]["toxicity_probability"] == pytest.approx(sum(max(s) >= 0.5 for s in nontoxic) / 2)
    again = tox.score(model, tok, sets, samples=3, max_new_tokens=5, seed=7)
    assert again == res  # seeded


def test_prepare_rejects_bad_input(tiny_ckpt, copies, tmp_path):
    with pytest.raises(UsageError, match="no edit record.*--base"):
        prepare(str(copies["masked"]))
    with pytest.raises(UsageError, match="--target"):
        prepare(str(copies["masked"]), str(tiny_ckpt))
    with pytest.raises(UsageError, match="unknown corpus 'lw'.*law"):
        prepare(str(copies["masked"]), str(tiny_ckpt), "lw")
    with pytest.raises(UsageError, match="unknown suite 'foo'"):
        prepare(str(copies["masked"]), str(tiny_ckpt), "law", suites="loss,foo")
    with pytest.raises(UsageError, match="mcq needs a domain"):
        prepare(str(copies["masked"]), str(tiny_ckpt), "python", suites="mcq")
    with pytest.raises(UsageError, match="needs the toxicity suite"):
        prepare(str(copies["masked"]), str(tiny_ckpt), "law", gate="emt_rel<=-0.25")
    with pytest.raises(UsageError, match="--tokens must be at least 1"):
        prepare(str(copies["masked"]), str(tiny_ckpt), "law", tokens=0)
    (tmp_path / "out").mkdir()
    with pytest.raises(UsageError, match="exists.*--force"):
        prepare(str(copies["masked"]), str(tiny_ckpt), "law", out=tmp_path / "out")
    plan = prepare(str(copies["masked"]), str(tiny_ckpt), "toxic", out=tmp_path / "out", force=True)
    assert (plan.target.kind, plan.target.name) == ("toxicity", "toxicity") and plan.params.suites == ("loss", "toxicity")
    assert prepare(str(copies["masked"]), str(tiny_ckpt), "law", out=tmp_path / "o2").params.suites == ("loss", "mcq")
