"""Selection rules (skew, corr, budget), mask files, and the `mask` command."""

from __future__ import annotations

import json

import pytest
import torch
from clirun import Result, assert_clean_error, cli
from helpers import random_model, tiny_config

from monet_edit import profiling
from monet_edit.errors import UsageError
from monet_edit.model import checkpoint, masks
from monet_edit.model.loading import load_model, load_tokenizer
from monet_edit.profiling import Profile
from monet_edit.selection import select as selection
from monet_edit.selection import targets


def run(capsys, *args) -> Result:
    """The CLI in-process (no torch import per call): same exit codes and streams as a subprocess."""
    from monet_edit.cli import main

    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return Result(code, out.out, out.err)


def prof(mean, n=10, fp="m", corpus="t") -> Profile:
    S = torch.tensor(mean, dtype=torch.float64) * n
    return Profile(n, S, meta={"model_fingerprint": fp, "corpus": corpus, "corpus_fingerprint": corpus})


def test_skew_follows_the_rule_exactly():
    big = 10**12  # references so large that shrinking them toward the pooled mean changes nothing
    target = prof([[[0.4, 0.1], [0.0, 0.2]]])
    others = [
        prof([[[0.1, 0.05], [0.0, 0.15]]], n=big, corpus="a"),
        prof([[[0.3, 0.0], [0.1, 0.05]]], n=2 * big, corpus="b"),
    ]
    got = selection.skew(target, others, ratio=2.0)
    assert set(got) == {0} and got[0].dtype == torch.bool
    assert got[0].tolist() == [[False, True], [False, False]]
    # s(D) > 0 is required: an expert unused everywhere is not "specific"
    assert selection.skew(target, others, ratio=1.2)[0].tolist() == [[True, True], [False, True]]
    with pytest.raises(UsageError, match="reference profiles"):
        selection.skew(target, [])
    # a small reference is shrunk toward the pooled mean: one noisy document cannot veto an expert
    shrunk = selection.reference_max([prof([[[0.0, 0.0], [0.0, 0.0]]], n=4096, corpus="a"),
                                      prof([[[0.2, 0.0], [0.0, 0.0]]], n=4096, corpus="b")])
    assert shrunk[0, 0, 0].item() == pytest.approx((0.2 * 4096 + 4096 * 0.1) / (2 * 4096))
    with pytest.raises(UsageError, match="--ratio"):
        selection.skew(target, others, ratio=0.5)
    with pytest.raises(UsageError, match="different models"):
        selection.skew(target, [prof([[[0.1, 0.1], [0.1, 0.1]]], fp="other")])


def test_corr_selects_the_expert_that_tracks_the_label():
    model = random_model(tiny_config(), seed=5)
    rows = torch.randint(0, model.config.vocab_size, (4, 16), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        g1, g2 = model(rows, output_routing=True).routing[1]
    G = torch.einsum("bthi,bthj->btij", g1, g2)
    usage = (G > 0).float().mean((0, 1))
    i, j = divmod(int((usage - 0.5).abs().argmin()), 8)  # an expert active on some tokens, not all
    y = G[:, :, i, j].double()
    p = profiling.profile_rows(model, rows, y)
    r = p.pearson()
    assert r[1, i, j] == pytest.approx(1.0, abs=1e-6)
    got = selection.corr(p, threshold=0.999)
    assert got[1][i, j] and int(got[0].sum()) + int(got[1].sum()) == int((r >= 0.999).sum())
    assert int(selection.corr(p, 0.05)[1].sum()) >= int(got[1].sum())
    with pytest.raises(UsageError, match="--threshold"):
        selection.corr(p, 0.0)
    with pytest.raises(UsageError, match="no token labels"):
        selection.corr(prof([[[0.1]]]))


def test_budget_picks_the_most_damaging_count_within_the_retain_budget(tiny_ckpt):
    model = load_model(tiny_ckpt)
    tok = load_tokenizer(tiny_ckpt)
    code = [{"text": f"def f{i}(x):\n    return x + {i}\n"} for i in range(60)]
    prose = [{"text": f"Der Hund {i} ist gross. The law of the land {i}."} for i in range(60)]
    meta = {"model_fingerprint": "m", "corpus_fingerprint": "c"}
    target = profiling.profile_corpus(model, tok, code[:40], tokens=4000, seq_len=32, meta=meta)
    other = profiling.profile_corpus(model, tok, prose[:40], tokens=4000, seq_len=32, meta=meta)
    trace: list[dict] = []
    chosen = selection.budget(
        model,
        tok,
        code[40:],
        prose[40:],
        target,
        [other],
        retain_budget=0.05,
        seq_len=32,
        max_fraction=0.3,
        trace=trace,
    )
    assert model.masks() == {}  # the search leaves the model as it found it
    tried = [t["experts"] for t in trace]
    assert tried[0] == 0 and tried[1:4] == [1, 2, 4]
    feasible = [t for t in trace[1:] if t["retain_rise"] <= 0.05]
    best = max(feasible, key=lambda t: t["target_rise"], default=None)
    n = sum(int(m.sum()) for m in chosen.values())
    assert n == (best["experts"] if best and best["target_rise"] > 0 else 0)
    assert n > 0  # on this model masking code-specific experts does hurt code more than prose
    # the chosen masks are the top-n of the score, and reproduce the measured loss
    from monet_edit.model import scoring

    score = selection.budget_score(target, [other])
    stacked = torch.stack([chosen[g] for g in range(2)])
    assert score[stacked].min() >= score[~stacked].max()
    rows = scoring.rows(scoring.token_stream(tok, code[40:], 20_000), 32)
    masked = load_model(tiny_ckpt, mask=chosen)
    assert scoring.loss_sums(masked, rows).loss == pytest.approx(best["target_loss"], rel=1e-6)
    with pytest.raises(UsageError, match="--retain-budget"):
        selection.budget(model, tok, code, prose, target, [other], retain_budget=-1)


def test_mask_file_round_trip_and_fingerprint_check(tmp_path):
    cfg = tiny_config()
    m = {0: torch.eye(8, dtype=torch.bool), 1: torch.zeros(8, 8, dtype=torch.bool)}
    path = selection.write_mask(
        tmp_path / "m.safetensors",
        m,
        cfg,
        rule="skew",
        params={"ratio": 2.0},
        model_fingerprint="abc",
        sources={"law": {"tokens": 5}},
        target="law",
    )
    loaded, meta = selection.load_mask(path, cfg, model_fingerprint="abc")
    assert torch.equal(loaded[0], m[0]) and not loaded[1].any()
    assert meta["counts"] == [8, 0] and meta["masked"] == 8 and meta["fraction"] == 8 / 128
    assert meta["rule"] == "skew" and meta["params"] == {"ratio": 2.0} and meta["target"] == "law"
    assert meta["provenance"]["tool"] == "monet-edit"
    with pytest.raises(UsageError, match="another model"):
        selection.load_mask(path, cfg, model_fingerprint="xyz")
    with pytest.raises(UsageError, match=r"\[16, 16\]"):
        selection.load_mask(path, tiny_config(moe_experts=16))


def test_mask_command_writes_what_the_rule_selects(tiny_ckpt, tmp_path, capsys):
    out, pdir = tmp_path / "law.safetensors", tmp_path / "profiles"
    common = ["--model", tiny_ckpt, "--tokens", "1500", "--seq-len", "32", "--profiles-dir", pdir]
    dry = run(capsys, "mask", "--domain", "law", *common, "--dry-run", "--json", "--out", out)
    assert dry.code == 0, dry.stderr
    grid = json.loads(dry.stdout)["dry_run"]
    assert [(r["rule"], r["value"]) for r in grid] == [
        ("skew", 1.5),
        ("skew", 2.0),
        ("skew", 3.0),
        ("skew", 5.0),
        ("skew (chosen)", 2.0),
    ]
    assert [r["masked"] for r in grid[:4]] == sorted((r["masked"] for r in grid[:4]), reverse=True)
    assert not out.exists()
    res = run(capsys, "mask", "--domain", "law", *common, "--ratio", "1.5", "--out", out, "--json")
    assert res.code == 0, res.stderr
    data = json.loads(res.stdout)
    files = sorted(pdir.glob("*.profile.safetensors"))
    assert len(files) == 1 + len(targets.default_references("law"))  # law and every other corpus
    law_file = next(f for f in files if f.name.startswith("law-"))
    ref_files = [f for f in files if f != law_file]
    fp = checkpoint.model_fingerprint(tiny_ckpt)
    target = profiling.load(law_file, model_fingerprint=fp)
    expected = selection.skew(target, [profiling.load(f) for f in ref_files], 1.5)
    got, meta = masks.load(out)
    assert all(torch.equal(got[g], expected[g]) for g in expected)
    assert meta["counts"] == data["counts"] == [int(expected[g].sum()) for g in range(2)]
    assert meta["params"] == {"ratio": 1.5} and meta["model_fingerprint"] == fp
    assert len(meta["sources"]) == len(files) and meta["sources"]["law"]["tokens"] == target.n
    # from the profile files directly (target first): the same selection
    again = run(
        capsys,
        "mask",
        *[a for f in [law_file, *ref_files] for a in ("--profile", f)],
        "--model",
        tiny_ckpt,
        "--ratio",
        "1.5",
        "--out",
        tmp_path / "again.safetensors",
    )
    assert again.code == 0, again.stderr
    got2, _ = masks.load(tmp_path / "again.safetensors")
    assert all(torch.equal(got2[g], expected[g]) for g in expected)


def test_empty_selection_is_written_with_a_warning(tiny_ckpt, tmp_path, capsys):
    res = run(
        capsys,
        "mask",
        "--domain",
        "math",
        "--model",
        tiny_ckpt,
        "--tokens",
        "600",
        "--seq-len",
        "32",
        "--ratio",
        "1e9",
        "--out",
        tmp_path / "e.safetensors",
    )
    assert res.code == 0, res.stderr
    assert "EMPTY" in res.stderr
    _, meta = masks.load(tmp_path / "e.safetensors")
    assert meta["counts"] == [0, 0] and meta["masked"] == 0


def test_mask_bad_input(tiny_ckpt, tmp_path, capsys):
    m = ["--model", tiny_ckpt, "--tokens", "600", "--seq-len", "32"]
    out = tmp_path / "x.safetensors"
    assert_clean_error(
        run(capsys, "mask", "--language", "klingon", *m, "--out", out),
        2,
        "unknown corpus 'klingon'",
        "python",
    )
    assert_clean_error(run(capsys, "mask", "--language", "law", *m, "--out", out), 2, "not a language")
    assert_clean_error(
        run(capsys, "mask", "--domain", "law", "--rule", "magic", *m, "--out", out), 2, "unknown rule 'magic'"
    )
    assert_clean_error(
        run(capsys, "mask", "--domain", "law", "--rule", "corr", *m, "--out", out),
        2,
        "corr needs token labels",
    )
    assert not out.exists()
    foreign = profiling.save(
        prof([[[0.1] * 8] * 8] * 2, fp="0" * 64, corpus="law"), tmp_path / "f.safetensors"
    )
    assert_clean_error(
        run(capsys, "mask", "--profile", foreign, "--model", tiny_ckpt, "--out", out), 2, "another model"
    )
    nan = prof([[[float("nan")] * 8] * 8] * 2, fp=checkpoint.model_fingerprint(tiny_ckpt))
    nan_path = profiling.save(nan, tmp_path / "nan.safetensors")
    assert_clean_error(
        run(capsys, "mask", "--profile", nan_path, "--model", tiny_ckpt, "--out", out), 2, "NaN"
    )
    assert not out.exists()
    out.write_bytes(b"keep")
    assert_clean_error(run(capsys, "mask", "--domain", "law", *m, "--out", out), 2, "exists", "--force")
    assert out.read_bytes() == b"keep"


def test_mask_command_subprocess_toxicity_corr(tiny_ckpt, tmp_path):
    out = tmp_path / "tox.safetensors"
    res = cli(
        "mask",
        "--toxicity",
        "--model",
        tiny_ckpt,
        "--tokens",
        "2000",
        "--seq-len",
        "50",
        "--threshold",
        "0.05",
        "--out",
        out,
        "--json",
    )
    assert res.code == 0, res.stderr
    data = json.loads(res.stdout)
    got, meta = masks.load(out)
    assert meta["rule"] == "corr" and meta["params"] == {"threshold": 0.05}
    assert meta["counts"] == data["counts"] == [int(got[g].sum()) for g in range(2)]
    assert list(meta["sources"]) == ["toxicity"]


@pytest.mark.parametrize("decompose", ["horizontal", "vertical"])
def test_expert_gradients_match_autograd_through_the_naive_expansion(decompose):
    """dL/ds per expert, accumulated over active pairs only, equals autograd of the naive model
    that expands every expert with an explicit scale tensor."""
    from helpers import random_model, tiny_config
    from naive_monet import naive_logits

    from monet_edit.selection.attribution import expert_gradients

    model = random_model(tiny_config(decompose), seed=4)
    cfg = model.config
    ids = torch.randint(0, cfg.vocab_size, (1, 7), generator=torch.Generator().manual_seed(5))
    ours, tokens = expert_gradients(model, ids, batch_size=1)
    assert tokens == 6
    scales = {g: torch.ones(cfg.moe_experts, cfg.moe_experts, dtype=torch.float64, requires_grad=True)
              for g in range(cfg.num_groups)}
    sd = model.state_dict()
    logits = naive_logits(sd, json.loads(cfg.to_json()), ids[0, :-1].tolist(), scales=scales)
    loss = torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum")
    loss.backward()
    ref = torch.stack([scales[g].grad for g in range(cfg.num_groups)])
    assert (ref != 0).sum() > 10  # several active pairs
    # fp32 model vs float64 reference: the error scales with the gradient's own size
    tol = 1e-4 * float(ref.abs().max())
    torch.testing.assert_close(ours, ref, rtol=0, atol=tol)


def test_contrastive_masks_the_experts_the_target_activates_more_often():
    from monet_edit.selection.rules import Context
    from monet_edit.selection.rules.contrastive import RULE

    E = 4
    rate_t, rate_r = torch.zeros(1, E, E), torch.zeros(1, E, E)
    rate_t[0, 0, 1], rate_t[0, 2, 2], rate_t[0, 3, 3] = 3.0, 1.0, 0.5
    rate_r[0, 2, 2], rate_r[0, 3, 3] = 0.2, 0.9  # (3, 3): used more by the references
    target, ref = prof(rate_t.tolist()), prof(rate_r.tolist())
    target.activation_rate = lambda: rate_t  # heads per token, as profiles count them
    ref.activation_rate = lambda: rate_r
    chosen = RULE.select(Context(target, [ref], None), max_masked=2 / 16).masks
    assert chosen[0].nonzero().tolist() == [[0, 1], [2, 2]]  # the two largest positive differences
    assert RULE.select(Context(target, [ref], None), max_masked=1 / 16).masks[0].nonzero().tolist() == [[0, 1]]


def test_oracle_is_at_least_as_selective_as_every_candidate_and_reproducible():
    """The oracle measures attribution-ranked masks and the profile rules' masks on the sets it is
    given (here: held-out code vs prose) and keeps the most selective one that raises the target's
    loss enough; its recorded numbers are those of the mask it returns."""
    from monet_edit.model import scoring
    from monet_edit.selection.rules import Context, oracle

    model = load_model("tiny")  # the packaged model: its experts specialise, a random one's barely do
    tok = load_tokenizer("tiny")
    code = [{"text": f"def f{i}(x):\n    return x * {i} + len(str(x))\n"} for i in range(80)]
    prose = [{"text": f"Der Hund {i} ist gross. The law of the land {i} is old."} for i in range(80)]
    meta = {"model_fingerprint": "m", "corpus_fingerprint": "c"}
    target = profiling.profile_corpus(model, tok, code[:40], tokens=4000, seq_len=32, meta=meta)
    other = profiling.profile_corpus(model, tok, prose[:40], tokens=4000, seq_len=32, meta=meta)
    rows = lambda docs: scoring.rows(scoring.token_stream(tok, docs, 3000), 32)  # noqa: E731
    t_rows, r_rows = rows(code[40:]), rows(prose[40:])
    ctx = Context(target, [other], checkpoint.of("tiny"), seq_len=32, model=model,
                  memo={"oracle-sets": ("code", t_rows, r_rows)})
    choice = oracle.RULE.select(ctx, min_rise=0.01, max_masked=0.02)
    assert model.masks() == {}  # the search leaves the model as it found it
    trials = choice.params["trials"]
    labels = {t["candidate"] for t in trials}
    assert {"attribution ranking", "contrastive 0.5%"} <= labels
    offered = [label for label, _ in oracle._candidates(ctx, torch.arange(2 * 128 * 128), 4, (2, 128, 128))]
    assert [x for x in offered if x.startswith("skew")] == [f"skew ratio {r:g}" for r in oracle.SKEW_RATIOS]
    sizes = [t["experts"] for t in trials if t["candidate"] == "attribution ranking"]
    assert sizes[:5] == [1, 2, 3, 4, 6]  # steps of sqrt(2)
    budget = 0.02 * sum(int(m.numel()) for m in choice.masks.values())
    assert all(0 < t["experts"] <= budget for t in trials)
    reached = [t for t in trials if t["target_rise"] >= 0.01]
    assert reached  # masking code experts does raise code loss by 1% on this model
    best = max(t["selectivity"] for t in reached)
    picked = [t for t in reached if t["selectivity"] == best][0]
    assert choice.params["candidate"] == picked["candidate"]
    n = sum(int(m.sum()) for m in choice.masks.values())
    assert n == picked["experts"]
    base = scoring.loss_sums(model, t_rows).loss
    masked = load_model("tiny", mask=choice.masks)
    assert (scoring.loss_sums(masked, t_rows).loss - base) / base == pytest.approx(picked["target_rise"], rel=1e-6)
