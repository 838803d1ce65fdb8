"""Profiles: GEMM statistics against a brute-force per-token E*E computation, additivity, files,
the cache, and the `profile` command."""

from __future__ import annotations

import json
import math

import pytest
import torch
from clirun import assert_clean_error, cli
from helpers import random_model, tiny_config

from monet_edit import corpora, profiling
from monet_edit.errors import UsageError
from monet_edit.model import checkpoint
from monet_edit.model.loading import load_model, load_tokenizer
from monet_edit.profiling import stats


@pytest.fixture(scope="module")
def model():
    return random_model(tiny_config(), seed=3)


EPS = torch.finfo(torch.float64).eps


def reference(G: torch.Tensor, y: torch.Tensor) -> dict:
    """The slow way: per-token G [n, groups, E, E] in float64, two passes over all tokens."""
    n = G.shape[0]
    mean, mean_y = G.sum(0) / n, y.sum() / n
    D, dy = G - mean, y - mean_y
    M2, C, m2_y = (D * D).sum(0), (D * dy[:, None, None, None]).sum(0), float(dy @ dy)
    r = torch.zeros_like(mean)
    ok = M2 > 0
    r[ok] = C[ok] / torch.sqrt(M2[ok] * m2_y)
    return {"n": n, "S": G.sum(0), "M2": M2, "C": C, "sum_y": float(y.sum()), "m2_y": m2_y, "r": r}


def bound(n: int, scale: float) -> float:
    """What float64 rounding can move a sum of n terms of size `scale` (a generous 64 ulps a term)."""
    return 64 * EPS * n * scale


def assert_matches(prof: profiling.Profile, ref: dict) -> None:
    n = ref["n"]
    assert prof.n == n
    g = float(ref["S"].abs().max()) / n * 4 + 1e-300  # the largest routing weight, about
    torch.testing.assert_close(prof.S, ref["S"], rtol=0, atol=bound(n, g))
    if "M2" in ref and prof.labelled:
        torch.testing.assert_close(prof.M2, ref["M2"], rtol=0, atol=bound(n, g * g))
        ys = math.sqrt(ref["m2_y"] / n) + abs(ref["sum_y"]) / n
        torch.testing.assert_close(prof.C, ref["C"], rtol=0, atol=bound(n, g * ys))
        assert prof.sum_y == pytest.approx(ref["sum_y"], rel=0, abs=bound(n, ys))
        assert prof.m2_y == pytest.approx(ref["m2_y"], rel=0, abs=bound(n, ys * ys))


def random_routing(gen: torch.Generator, n: int, H: int, E: int, k: int) -> torch.Tensor:
    """[n, H, E] rows of a softmax over k random entries (as the router produces)."""
    z = torch.randn(n, H, E, generator=gen, dtype=torch.float64)
    keep = z >= z.topk(k, dim=-1).values[..., -1:]
    return torch.where(keep, z, float("-inf")).softmax(-1)


def test_group_statistics_match_the_slow_reference():
    gen = torch.Generator().manual_seed(0)
    n, H, E = 700, 3, 6
    g1, g2 = random_routing(gen, n, H, E, 2), random_routing(gen, n, H, E, 2)
    y = torch.rand(n, generator=gen, dtype=torch.float64) * (torch.rand(n, generator=gen) > 0.5)
    G = torch.einsum("nhi,nhj->nij", g1, g2)[:, None]
    ref = reference(G, y)
    for chunk in (1 << 22, 36 * 7, 36):  # whole batch, 7 tokens and 1 token per chunk: same answer
        stats.CHUNK_ELEMENTS, old = chunk, stats.CHUNK_ELEMENTS
        try:
            prof = profiling.group_stats(g1, g2, y)
        finally:
            stats.CHUNK_ELEMENTS = old
        assert_matches(prof, ref)
        ok = ref["M2"] > 0
        torch.testing.assert_close(prof.pearson()[ok], ref["r"][ok], rtol=0, atol=1e-9)
    unlabelled = profiling.group_stats(g1, g2, None)
    assert_matches(unlabelled, {k: ref[k] for k in ("n", "S")})
    # head activations: (token, head) pairs where both sub-experts carry weight, counted exactly
    A = torch.einsum("nhi,nhj->ij", (g1 > 0).double(), (g2 > 0).double())[None]
    assert torch.equal(prof.A, A) and torch.equal(unlabelled.A, A) and float(A.sum()) == n * H * 2 * 2
    # each token's G sums to H over all experts (rows of g1, g2 sum to 1)
    assert float(prof.mean().sum()) == pytest.approx(H, abs=bound(n, 1.0))
    assert (ref["r"] != 0).any() and (prof.S == 0).any() or (ref["M2"] > 0).all()


def test_profile_rows_are_the_statistics_of_the_models_routing(model):
    """profile_rows = group_stats of the routing the model computes for the same batches."""
    gen = torch.Generator().manual_seed(0)
    rows = torch.randint(0, model.config.vocab_size, (3, 11), generator=gen)
    y = (torch.rand(3, 11, generator=gen) > 0.6).double() * torch.rand(3, 11, generator=gen).double()
    prof = profiling.profile_rows(model, rows, y, batch_size=2)
    G, ys = [], []
    with torch.inference_mode():
        for lo in (0, 2):
            routing: list = []
            model.model(rows[lo : lo + 2], routing=routing)
            G.append(torch.stack([torch.einsum("bthi,bthj->btij", a.double(), b.double()).reshape(-1, *a.shape[-1:] * 2)
                                  for a, b in routing], 1))
            ys.append(y[lo : lo + 2].reshape(-1))
    ref = reference(torch.cat(G), torch.cat(ys))
    assert_matches(prof, ref)
    ok = ref["M2"] > 1e-12
    torch.testing.assert_close(prof.pearson()[ok], ref["r"][ok], rtol=0, atol=1e-9)
    # each token's G sums to H over all experts: the fp32 softmax rows sum to 1 up to E fp32 ulps
    H, E = model.config.moe_heads, model.config.moe_experts
    torch.testing.assert_close(prof.mean().sum((1, 2)), torch.full((2,), float(H), dtype=torch.float64),
                               rtol=0, atol=H * E * torch.finfo(torch.float32).eps)
    assert (ref["r"] != 0).any() and (prof.S == 0).any()  # both branches of pearson exercised


def test_profiles_add_to_the_profile_of_the_union(model):
    gen = torch.Generator().manual_seed(1)
    rows = torch.randint(0, model.config.vocab_size, (6, 9), generator=gen)
    y = torch.rand(6, 9, generator=gen).double()
    meta = {"model_fingerprint": "m", "corpus_fingerprint": "c"}
    # the same batches of 2 rows either way, so the model computes the same routing
    a = profiling.profile_rows(model, rows[:2], y[:2], batch_size=2, meta=meta)
    b = profiling.profile_rows(model, rows[2:], y[2:], batch_size=2, meta=meta)
    whole = profiling.profile_rows(model, rows, y, batch_size=2, meta=meta)
    total = a + b
    assert total.n == whole.n == 54 and total.meta["tokens"] == 54
    ref = {"n": whole.n, "S": whole.S, "M2": whole.M2, "C": whole.C, "sum_y": whole.sum_y, "m2_y": whole.m2_y}
    assert_matches(total, ref)
    torch.testing.assert_close(total.pearson(), whole.pearson(), rtol=0, atol=1e-9)
    other = profiling.profile_rows(
        model, rows[:2], meta={"model_fingerprint": "x", "corpus_fingerprint": "c"}
    )
    with pytest.raises(UsageError, match="model fingerprint"):
        profiling.profile_rows(model, rows[:2], meta=meta) + other
    with pytest.raises(UsageError, match="labels"):
        a + profiling.profile_rows(model, rows[:2], meta=meta)


def _exact_pearson(G: list[float], y: list[float], repeat: int) -> float:
    """r of the data repeated `repeat` times, in exact rational arithmetic on the float values."""
    from fractions import Fraction

    Gf, yf = [Fraction(v) for v in G], [Fraction(v) for v in y]
    n = len(Gf) * repeat
    s, sy = sum(Gf) * repeat, sum(yf) * repeat
    s2, syy = sum(v * v for v in Gf) * repeat, sum(v * v for v in yf) * repeat
    sgy = sum(a * b for a, b in zip(Gf, yf, strict=True)) * repeat
    cov, vg, vy = n * sgy - s * sy, n * s2 - s * s, n * syy - sy * sy
    return float(cov) / math.sqrt(float(vg) * float(vy))


def test_adversarial_tiny_variance_large_mean_ten_million_tokens():
    """G near 0.25 with relative spread 1e-8 and y near 1000 with spread 1e-5, 10^7 tokens from
    10 distinct shards each repeated 500 times: the one-pass formula loses every digit here."""
    gen = torch.Generator().manual_seed(5)
    shards, repeat, per = 10, 500, 2000
    parts, Gs, ys = [], [], []
    for _ in range(shards):
        u = torch.randn(per, generator=gen, dtype=torch.float64)
        w = torch.randn(per, generator=gen, dtype=torch.float64)
        p = 0.5 + 1e-8 * u
        g1 = torch.stack([p, 1 - p], -1)[:, None]  # [n, H=1, E=2]
        g2 = g1.clone()
        y = 1000.0 + 1e-5 * (u + 0.5 * w)
        parts.append(profiling.group_stats(g1, g2, y))
        Gs.extend((p * p).tolist())  # G[0, 0] = g1[0] * g2[0], exactly as computed
        ys.extend(y.tolist())
    total = None
    for _ in range(repeat):
        for part in parts:
            total = part if total is None else total + part
    assert total.n == 10**7
    exact = _exact_pearson(Gs, ys, repeat)
    assert 0.8 < exact < 0.95  # the data are strongly correlated
    # what the old file format (power sums in float64) gave on the same tokens
    n, S, S2 = float(total.n), float(total.S[0, 0, 0]), 0.0
    G = torch.tensor(Gs, dtype=torch.float64)
    Y = torch.tensor(ys, dtype=torch.float64)
    S2, SY = float((G * G).sum()) * repeat, float((G * Y).sum()) * repeat
    sum_y, sum_y2 = float(Y.sum()) * repeat, float((Y * Y).sum()) * repeat
    one_pass_var = n * S2 - S * S
    one_pass = (n * SY - S * sum_y) / math.sqrt(max(one_pass_var, 0.0) * max(n * sum_y2 - sum_y**2, 0.0) or 1.0)
    assert abs(one_pass - exact) > 0.5 or one_pass_var <= 0  # the textbook formula fails
    # the relative spread of G and y bounds what float64 can resolve: eps * mean / sd
    cond = max(0.25 / float(G.std()), 1000.0 / float(Y.std()))
    assert float(total.pearson()[0, 0, 0]) == pytest.approx(exact, rel=0, abs=64 * EPS * cond)


def test_unlabelled_profile_has_no_pearson(model):
    prof = profiling.profile_rows(model, torch.zeros(1, 4, dtype=torch.long), meta={"corpus": "law"})
    assert not prof.labelled
    with pytest.raises(UsageError, match="law has no token labels"):
        prof.pearson()


def test_labelled_stream_matches_token_stream(tiny_ckpt):
    from monet_edit.model import scoring

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
    assert back.n == prof.n and back.meta == prof.meta and torch.equal(back.C, prof.C)
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
    fit, hold = corpora.split_profile_docs(docs)
    assert len(fit) + len(hold) == 200 and 20 < len(hold) < 60
    assert not {d["id"] for d in fit} & {d["id"] for d in hold}
    assert corpora.split_profile_docs(list(reversed(docs)))[1] == list(reversed(hold))


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

    fit, _ = corpora.split_profile_docs(corpora.load_split("law", "profile"))
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


def test_format_1_profiles_are_refused_and_recomputed_by_the_cache(tiny_ckpt, tmp_path):
    from safetensors.torch import save_file

    out = tmp_path / "profiles"
    (path,) = profiling.ensure_profiles(tiny_ckpt, ["law"], tokens=600, seq_len=32, out_dir=out).values()
    fresh = profiling.load(path)
    head = {"format": 1, "n": fresh.n, "sum_y": None, "sum_y2": None, "meta": fresh.meta}
    save_file({"S": fresh.S}, str(path), metadata={profiling.META_KEY: json.dumps(head)})
    with pytest.raises(profiling.StaleProfile, match="re-profile it with `monet-edit profile`"):
        profiling.load(path)
    res = cli("mask", "--profile", path, "--model", tiny_ckpt, "--out", tmp_path / "m.safetensors")
    assert_clean_error(res, 2, "format 1", "re-profile")
    profiling.ensure_profiles(tiny_ckpt, ["law"], tokens=600, seq_len=32, out_dir=out)
    assert torch.equal(profiling.load(path).S, fresh.S)  # recomputed, same statistics
