"""lm-evaluation-harness: our LM wrapper against direct forward passes, and local tasks run offline."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from clirun import assert_clean_error, cli
from lm_eval.api.instance import Instance  # a dev dependency: missing means a broken install, not a skip
from test_eval import _shared_home, copies, masked_copy, shared_home  # noqa: F401  (fixtures)

from monet_edit.errors import UsageError
from monet_edit.evaluation import harness
from monet_edit.evaluation.harness_lm import MonetLM
from monet_edit.evaluation.suites import mcq
from monet_edit.model.generate import sample
from monet_edit.model.loading import load_model, load_tokenizer

ITEMS, LIMIT = 10, 8


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


def direct_loglik(model, ids: list[int], start: int) -> tuple[float, bool]:
    """log p(ids[start:] | what precedes) from one plain forward pass (no cache, no padding)."""
    with torch.inference_mode():
        logp = torch.log_softmax(model(torch.tensor([ids[:-1]])).logits.float(), -1)[0]
    rows, targets = logp[start - 1:], torch.tensor(ids[start:])
    return float(rows.gather(-1, targets[:, None]).sum()), bool((rows.argmax(-1) == targets).all())


def write_task(folder: Path, name: str, docs: list[dict]) -> Path:
    """A multiple-choice task over a local jsonl file, in lm-eval's YAML format."""
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / f"{name}.jsonl"
    with data.open("w", encoding="utf-8") as f:
        for doc in docs:
            prompt, choices = mcq.prompt_and_choices(doc)
            f.write(json.dumps({"prompt": prompt, "options": [c[1:] for c in choices], "answer": doc["answer"]}) + "\n")
    (folder / f"{name}.yaml").write_text(
        f"task: {name}\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\n  cache_dir: {folder / 'hf-cache'}\n"
        "test_split: test\noutput_type: multiple_choice\n"
        'doc_to_text: "{{prompt}}"\ndoc_to_choice: options\ndoc_to_target: answer\n'
        "metric_list:\n  - metric: acc\n  - metric: acc_norm\n", encoding="utf-8")
    return folder


def test_task_accuracy_matches_direct_scoring(tmp_path):
    """MMLU law items through lm-eval on the packaged model: acc and acc_norm as computed here."""
    from monet_edit.corpora import build

    model, tok = load_model("tiny"), load_tokenizer("tiny")
    limit = model.config.max_position_embeddings

    def fits(doc: dict) -> bool:  # no truncation, so one plain forward pass is the reference
        prompt, choices = mcq.prompt_and_choices(doc)
        return max(len(tok.encode(prompt + c)) for c in choices) <= limit

    docs = [d for d in build("law").load("eval") if fits(d)][:ITEMS]
    folder = write_task(tmp_path / "tasks", "monet_law_mc", docs)
    got = harness.run("tiny", ["monet_law_mc"], include=folder, limit=LIMIT)["monet_law_mc"]
    correct = correct_norm = 0
    for doc in docs[:LIMIT]:
        prompt, choices = mcq.prompt_and_choices(doc)
        ll = [direct_loglik(model, tok.encode(prompt + c), len(tok.encode(prompt)))[0] for c in choices]
        norm = [v / len(c[1:]) for v, c in zip(ll, choices, strict=True)]
        correct += max(range(4), key=ll.__getitem__) == doc["answer"]
        correct_norm += max(range(4), key=norm.__getitem__) == doc["answer"]
    assert got["n"] == LIMIT
    assert got["acc"] == pytest.approx(correct / LIMIT) and got["acc_norm"] == pytest.approx(correct_norm / LIMIT)
    assert got["acc"] == pytest.approx(mcq.score(model, tok, docs[:LIMIT])["accuracy"])


@pytest.fixture(scope="module")
def lm(tiny_ckpt) -> MonetLM:
    return MonetLM(load_model(tiny_ckpt), load_tokenizer(tiny_ckpt), batch_size=2)


def request(kind: str, *args) -> Instance:
    return Instance(request_type=kind, doc={}, arguments=args, idx=0)


def test_loglikelihood_matches_direct_forward(lm):
    model, tok, limit = lm.model, lm.tok, lm.max_length
    pairs = [("the law", " of the land"), ("the law", " says"), ("the law", " of"), ("", "abc"),
             ("word " * 100, "end")]  # shared context (batched, chunked by 2), empty context, truncation
    got = lm.loglikelihood([request("loglikelihood", c, x) for c, x in pairs])
    for (ctx, cont), (value, greedy) in zip(pairs, got, strict=True):
        whole = [tok.bos_id] + tok.encode(cont, add_bos=False) if not ctx else tok.encode(ctx + cont)
        start = 1 if not ctx else len(tok.encode(ctx.rstrip()))
        keep = min(len(whole), limit + 1)
        want = direct_loglik(model, whole[-keep:], start - (len(whole) - keep))
        assert value == pytest.approx(want[0], abs=1e-4) and greedy == want[1], (ctx[:20], cont)
    ctx = tok.encode("the law")
    with torch.inference_mode():
        best = int(model(torch.tensor([ctx])).logits[0, -1].argmax())
    flags = [g for _, g in lm._loglikelihood_tokens([(("", ""), ctx, [best]), (("", ""), ctx, [(best + 1) % 96])])]
    assert flags == [True, False]


def test_rolling_loglikelihood_uses_full_windows(lm):
    model, tok, limit = lm.model, lm.tok, lm.max_length
    short = "a short text"
    ids = tok.encode(short, add_bos=False)
    assert lm.loglikelihood_rolling([request("loglikelihood_rolling", short)])[0] == pytest.approx(
        direct_loglik(model, [tok.bos_id] + ids, 1)[0], abs=1e-4)
    text = " ".join(f"w{i}" for i in range(200))
    ids = tok.encode(text, add_bos=False)
    assert len(ids) > 2 * limit
    want, done = direct_loglik(model, [tok.bos_id] + ids[:limit], 1)[0], limit
    while done < len(ids):  # each later window: the `limit` tokens before its last one as input
        end = min(len(ids), done + limit)
        want += direct_loglik(model, ids[end - limit - 1:end], limit + 1 - (end - done))[0]
        done = end
    assert lm.loglikelihood_rolling([request("loglikelihood_rolling", text)])[0] == pytest.approx(want, abs=1e-3)


def test_generate_until_is_greedy_and_stops(lm):
    tok = lm.tok
    free = sample(lm.model, tok.encode("the"), max_new_tokens=12, temperature=0, eos_id=tok.eos_id)[0]
    text = tok.decode(free)
    stop = text.strip()[-2:]
    assert stop and text.strip()
    out = lm.generate_until([request("generate_until", "the", {"until": [stop], "max_gen_toks": 12}),
                             request("generate_until", "the", {"until": [], "max_gen_toks": 12})])
    assert out == [text.split(stop, 1)[0], text]


def test_missing_lm_eval_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)
    with pytest.raises(UsageError, match=r"pip install 'monet-edit\[lm-eval\]'"):
        harness.task_manager(["anything"])


def test_include_only_and_bad_include(tmp_path):
    folder = write_task(tmp_path / "tasks", "monet_one", [{"question": "q", "choices": list("abcd"), "answer": 0}])
    assert harness.task_manager(["monet_one"], folder).all_tasks == ["monet_one"]  # built-ins not indexed
    with pytest.raises(UsageError, match="not a directory"):
        harness.task_manager(["monet_one"], tmp_path / "missing")
    assert harness.parse_tasks(" a, b,,a ") == ("a", "b") and harness.parse_tasks(None) == ()


def write_rolling_task(folder: Path, name: str, texts: list[str]) -> None:
    """A perplexity task (loglikelihood_rolling) over a local jsonl file."""
    data = folder / f"{name}.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    (folder / f"{name}.yaml").write_text(
        f"task: {name}\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\n  cache_dir: {folder / 'hf-cache'}\n"
        "test_split: test\noutput_type: loglikelihood_rolling\n"
        'doc_to_text: ""\ndoc_to_target: "{{text}}"\n'
        "metric_list:\n  - metric: word_perplexity\n  - metric: bits_per_byte\n", encoding="utf-8")


def test_cli_eval_lm_eval_before_and_after(tiny_ckpt, copies, tmp_path):  # noqa: F811
    """`eval --lm-eval` on a masked copy: lm-eval numbers for both sides in results.json/.md, quiet stderr."""
    from monet_edit.corpora import build

    folder = write_task(tmp_path / "tasks", "monet_law_mc", build("law").load("eval")[:6])
    write_rolling_task(folder, "monet_law_ppl", [d["text"] for d in build("law").load("eval")[:6]])
    res = cli("eval", "--model", copies["masked"], "--base", tiny_ckpt, "--target", "law", "--reference", "math", "--suite", "loss",
              "--tokens", "300", "--seq-len", "32", "--lm-eval", "monet_law_mc,monet_law_ppl",
              "--lm-eval-include", folder, "--lm-eval-limit", "4", "--out", tmp_path / "out",
              env={"HF_DATASETS_OFFLINE": "1"})
    assert res.code == 0, res.stderr
    for noise in ("WARNING", "Tokenizing", "it/s", "Traceback"):
        assert noise not in res.stderr, res.stderr
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    lm = results["lm_eval"]
    assert set(lm) == {"monet_law_mc", "monet_law_ppl"} and results["parameters"]["lm_eval_limit"] == 4
    assert lm["monet_law_mc"]["before"]["n"] == 4 and 0 <= lm["monet_law_mc"]["after"]["acc"] <= 1
    ppl = lm["monet_law_ppl"]
    assert ppl["before"]["word_perplexity"] > 1 and ppl["before"]["bits_per_byte"] != ppl["after"]["bits_per_byte"]
    markdown = (tmp_path / "out" / "results.md").read_text()
    assert "| lm-eval acc (n=4) | monet_law_mc |" in markdown and "lm-eval bits_per_byte" in markdown
    assert "monet_law_ppl" in res.stderr  # the printed table


@pytest.mark.slow  # lm-eval indexes all its built-in tasks first (15 s)
def test_unknown_task_is_a_usage_error(tmp_path):
    folder = write_task(tmp_path / "tasks", "monet_one", [{"question": "q", "choices": list("abcd"), "answer": 0}])
    with pytest.raises(UsageError, match="unknown task 'no_such_task_xyz'"):  # after indexing the built-ins
        harness.task_manager(["monet_one", "no_such_task_xyz"], folder)


def test_cli_bad_lm_eval_options_are_one_line(tiny_ckpt, copies, tmp_path):  # noqa: F811
    common = ("eval", "--model", copies["masked"], "--base", tiny_ckpt, "--target", "law", "--suite", "loss",
              "--out", tmp_path / "out")
    assert_clean_error(cli(*common, "--lm-eval", "x", "--lm-eval-limit", "0"), 2, "--lm-eval-limit must be at least 1")
    assert_clean_error(cli(*common, "--lm-eval-include", tmp_path), 2, "need --lm-eval TASKS")
    assert not (tmp_path / "out").exists()


def test_eval_help_imports_neither_torch_nor_lm_eval():
    code = ("import sys; from monet_edit.cli import main; main(['eval', '--help']); "
            "print(sorted(m for m in ('torch', 'lm_eval') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "--lm-eval" in out and out.strip().endswith("[]")
