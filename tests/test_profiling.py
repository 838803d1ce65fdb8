"""Profiles: GEMM statistics against a brute-force per-token E*E computation, additivity, files,
the cache, and the `profile` command."""

from __future__ import annotations

import json

import pytest
import torch
from clirun import assert_clean_error, cli
from helpers import random_model, tiny_config

from monet_edit import checkpoint, profiling
from monet_edit.errors import UsageError
from monet_edit.loading import load_model, load_tokenizer


@pytest.fixture(scope="module")
def model():
    return random_model(tiny_config(), seed=3)


def brute_force(model, rows: torch.Tensor, y: torch.Tensor) -> dict:
    """Per token, expand G [E, E] explicitly and sum: the definition the GEMMs must reproduce."""
    out = model(rows, output_routing=True)
    S, S2, SY = [], [], []
    for g1, g2 in out.routing:
        G = torch.einsum("bthi,bthj->btij", g1.double(), g2.double())  # [B, T, E, E]
        S.append(G.sum((0, 1)))
        S2.append((G * G).sum((0, 1)))
        SY.append((G * y.double()[..., None, None]).sum((0, 1)))
    S, S2, SY = torch.stack(S), torch.stack(S2), torch.stack(SY)
    yy = y.double().reshape(-1)
    n = yy.numel()
    Gflat = torch.stack(
        [torch.einsum("bthi,bthj->btij", a.double(), b.double()).reshape(n, -1) for a, b in out.routing]
    )  # [groups, n, E*E]
    r = torch.zeros(S.shape[0], Gflat.shape[-1], dtype=torch.float64)
    for g in range(S.shape[0]):
        for e in range(Gflat.shape[-1]):
            x = Gflat[g, :, e]
            if x.std() > 0:
                r[g, e] = torch.corrcoef(torch.stack([x, yy]))[0, 1]
    return {
        "S": S,
        "S2": S2,
        "SY": SY,
        "n": n,
        "sum_y": float(yy.sum()),
        "sum_y2": float((yy * yy).sum()),
        "r": r.view_as(S),
    }


def test_gemm_statistics_match_brute_force(model):
    gen = torch.Generator().manual_seed(0)
    rows = torch.randint(0, model.config.vocab_size, (3, 11), generator=gen)
    y = (torch.rand(3, 11, generator=gen) > 0.6).double() * torch.rand(3, 11, generator=gen).double()
    prof = profiling.profile_rows(model, rows, y, batch_size=2)
    ref = brute_force(model, rows, y)
    assert prof.n == ref["n"] == 33
    for key in ("S", "S2", "SY"):
        torch.testing.assert_close(getattr(prof, key), ref[key], rtol=1e-5, atol=1e-7)
    assert prof.sum_y == pytest.approx(ref["sum_y"]) and prof.sum_y2 == pytest.approx(ref["sum_y2"])
    torch.testing.assert_close(prof.pearson(), ref["r"], rtol=1e-4, atol=1e-5)
    # each token's G sums to H over all experts (rows of g1, g2 sum to 1)
    torch.testing.assert_close(prof.mean().sum((1, 2)), torch.full((2,), 2.0, dtype=torch.float64))
    assert (ref["r"] != 0).any() and (prof.S == 0).any()  # both branches of pearson exercised


def test_profiles_add_to_the_profile_of_the_union(model):
    gen = torch.Generator().manual_seed(1)
    rows = torch.randint(0, model.config.vocab_size, (5, 9), generator=gen)
    y = torch.rand(5, 9, generator=gen).double()
    meta = {"model_fingerprint": "m", "corpus_fingerprint": "c"}
    a = profiling.profile_rows(model, rows[:2], y[:2], meta=meta)
    b = profiling.profile_rows(model, rows[2:], y[2:], meta=meta)
    whole = profiling.profile_rows(model, rows, y, batch_size=3, meta=meta)
    total = a + b
    assert total.n == whole.n == 45 and total.meta["tokens"] == 45
    for key in ("S", "S2", "SY"):
        torch.testing.assert_close(getattr(total, key), getattr(whole, key), rtol=1e-6, atol=1e-9)
    assert total.sum_y == pytest.approx(whole.sum_y)
    torch.testing.assert_close(total.pearson(), whole.pearson(), rtol=1e-5, atol=1e-7)
    other = profiling.profile_rows(
        model, rows[:2], meta={"model_fingerprint": "x", "corpus_fingerprint": "c"}
    )
    with pytest.raises(UsageError, match="model fingerprint"):
        profiling.profile_rows(model, rows[:2], meta=meta) + other
    with pytest.raises(UsageError, match="labels"):
        a + profiling.profile_rows(model, rows[:2], meta=meta)


def test_unlabelled_profile_has_no_pearson(model):
    prof = profiling.profile_rows(model, torch.zeros(1, 4, dtype=torch.long), meta={"corpus": "law"})
    assert not prof.labelled
    with pytest.raises(UsageError, match="law has no token labels"):
        prof.pearson()


def test_labelled_stream_matches_token_stream(tiny_ckpt):
    from monet_edit import scoring

    tok = load_tokenizer(tiny_ckpt)
    docs = [{"text": "You idiot, the law is clear."}, {"text": "def main(): return 0"}]
    ids, ys = profiling.labelled_stream(tok, docs)
    assert ids == scoring.token_stream(tok, docs)
    assert len(ys) == len(ids) and max(ys) > 0.5 and min(ys) == 0.0
    assert profiling.labelled_stream(tok, docs, max_tokens=5)[0] == ids[:5]


def test_file_round_trip_is_deterministic_and_validated(model, tmp_path):
    rows = torch.randint(0, model.config.vocab_size, (2, 8), generator=torch.Generator().manual_seed(2))
    y = torch.rand(2, 8, generator=torch.Generator().manual_seed(3)).double()
    prof = profiling.profile_rows(model, rows, y, meta={"model_fingerprint": "abc", "corpus": "toxicity"})
    a, b = profiling.save(prof, tmp_path / "a.safetensors"), profiling.save(prof, tmp_path / "b.safetensors")
    assert a.read_bytes() == b.read_bytes()
    back = profiling.load(a, model_fingerprint="abc", config=model.config)
    assert back.n == prof.n and back.meta == prof.meta and torch.equal(back.SY, prof.SY)
    with pytest.raises(UsageError, match="another model"):
        profiling.load(a, model_fingerprint="def")
    with pytest.raises(UsageError, match="shape"):
        profiling.load(a, config=tiny_config(moe_experts=16))

    bad = profiling.Profile(prof.n, prof.S.clone(), meta=prof.meta)
    bad.S[0, 0, 0] = float("nan")
    with pytest.raises(UsageError, match="NaN"):
        profiling.load(profiling.save(bad, tmp_path / "nan.safetensors"))
    empty = profiling.Profile(0, prof.S, meta=prof.meta)
    with pytest.raises(UsageError, match="empty"):
        profiling.load(profiling.save(empty, tmp_path / "empty.safetensors"))
    (tmp_path / "junk.safetensors").write_bytes(b"not a profile at all")
    with pytest.raises(UsageError, match="not a monet-edit profile"):
        profiling.load(tmp_path / "junk.safetensors")
    with pytest.raises(UsageError, match="not found"):
        profiling.load(tmp_path / "missing.safetensors")


def test_split_profile_docs_is_disjoint_and_stable():
    docs = [{"id": f"law/{i}", "text": "x"} for i in range(200)]
    fit, hold = profiling.split_profile_docs(docs)
    assert len(fit) + len(hold) == 200 and 20 < len(hold) < 60
    assert not {d["id"] for d in fit} & {d["id"] for d in hold}
    assert profiling.split_profile_docs(list(reversed(docs)))[1] == list(reversed(hold))


def test_ensure_profiles_computes_once_then_reuses(tiny_ckpt, tmp_path):
    out = tmp_path / "profiles"
    paths = profiling.ensure_profiles(tiny_ckpt, ["law", "math"], tokens=600, seq_len=32, out_dir=out)
    assert set(paths) == {"law", "math"}
    fp = checkpoint.model_fingerprint(tiny_ckpt)
    law = profiling.load(paths["law"], model_fingerprint=fp)
    assert law.n == 576 and law.meta["corpus"] == "law" and law.meta["split"] == "profile"
    assert not law.labelled and law.meta["provenance"]["tool"] == "monet-edit"
    stamp = paths["law"].stat().st_mtime_ns
    again = profiling.ensure_profiles(tiny_ckpt, ["law"], tokens=600, seq_len=32, out_dir=out)
    assert again["law"] == paths["law"] and paths["law"].stat().st_mtime_ns == stamp
    # the profile is the statistics of the fit part of the profile split, recomputed directly
    from monet_edit import corpora

    fit, _ = profiling.split_profile_docs(corpora.load_split("law", "profile"))
    direct = profiling.profile_corpus(
        load_model(tiny_ckpt), load_tokenizer(tiny_ckpt), fit, tokens=600, seq_len=32, meta={}
    )
    torch.testing.assert_close(direct.S, law.S)


def test_profile_command_end_to_end(tiny_ckpt, tmp_path):
    out = tmp_path / "p"
    res = cli(
        "profile",
        "--toxicity",
        "--model",
        tiny_ckpt,
        "--tokens",
        "1000",
        "--seq-len",
        "50",
        "--out",
        out,
        "--json",
    )
    assert res.code == 0, res.stderr
    data = json.loads(res.stdout)
    prof = profiling.load(
        data["profiles"]["toxicity"]["path"], model_fingerprint=checkpoint.model_fingerprint(tiny_ckpt)
    )
    assert prof.labelled and prof.n == 1000 and data["target"] == "toxicity"
    assert len(data["groups"]) == 2 and data["groups"][0]["active"] > 0
    assert 0 < prof.sum_y < prof.n


def test_profile_command_bad_input(tiny_ckpt, tmp_path):
    assert_clean_error(
        cli("profile", "--domain", "lawz", "--model", tiny_ckpt, "--out", tmp_path / "x"),
        2,
        "unknown corpus 'lawz'",
        "did you mean law",
    )
    assert not (tmp_path / "x").exists()
