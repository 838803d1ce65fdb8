"""`experts`: the listed tokens really are the ones routed most to the expert (recomputed here from
the model's routing with the full E x E expansion), CLI JSON and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from monet_edit.analysis import experts
from monet_edit.cli import main
from monet_edit.model.loading import load_model, load_tokenizer

WORDS = "def return class import law court judge Hund Katze river mountain value index print".split()


@pytest.fixture()
def corpus(tmp_path) -> Path:
    """A user corpus of 80 distinct documents (about 8 land in the profile split)."""
    docs = [" ".join(WORDS[(k * 7 + n) % len(WORDS)] for n in range(12 + k % 9)) + f" {k}." for k in range(80)]
    path = tmp_path / "words.jsonl"
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    return path


def _expansion(model, batch_rows: torch.Tensor, group: int) -> torch.Tensor:
    """G[n, t, i, j] = sum_h g1[h,i] g2[h,j] for every expert: the naive E*E expansion."""
    with torch.inference_mode():
        g1, g2 = model(batch_rows, output_routing=True).routing[group]
    return torch.einsum("nthi,nthj->ntij", g1.float(), g2.float())


def test_top_tokens_are_the_tokens_routed_most(tiny_ckpt, corpus):
    model, tok = load_model(tiny_ckpt), load_tokenizer(tiny_ckpt)
    batch_rows, _ = experts.corpus_rows(tok, str(corpus), tokens=600, seq_len=24, split="train")
    G = _expansion(model, batch_rows, group=1)
    total = G.sum((0, 1))
    busiest = divmod(int(total.argmax()), total.shape[1])
    idle = divmod(int(total.argmin()), total.shape[1])
    found = experts.top_tokens(model, tok, batch_rows, [(1, *busiest), (1, *idle)], top=7, batch_size=3)
    assert [(f.group, f.i, f.j) for f in found] == [(1, *busiest), (1, *idle)]
    weights = G[..., busiest[0], busiest[1]].reshape(-1)
    expected = weights.sort(descending=True).values[:7]
    hits = found[0].hits
    assert len(hits) == 7 and found[0].scanned == batch_rows.numel()
    assert torch.allclose(torch.tensor([h.weight for h in hits]), expected, atol=1e-5)
    for h in hits:  # each hit is the token at its position, with that position's weight
        assert int(batch_rows[h.row, h.position]) == h.token_id
        assert abs(float(G[h.row, h.position, busiest[0], busiest[1]]) - h.weight) < 1e-5
        assert h.token and (h.left or h.position < experts.LEFT)
    assert sum(t["hits"] for t in found[0].tokens()) == 7
    n_idle = int((G[..., idle[0], idle[1]] > 0).sum())
    assert len(found[1].hits) == min(7, n_idle)  # zero-weight occurrences are never hits


def test_experts_cli_json(tiny_ckpt, corpus, capsys):
    code = main(["experts", str(tiny_ckpt), "--group", "0", "--expert", "1,2", "--expert", "3, 4",
                 "--corpus", str(corpus), "--split", "train", "--tokens", "400", "--seq-len", "20", "--top", "5",
                 "--json"])
    out = capsys.readouterr()
    assert code == 0, out.err
    data = json.loads(out.out)
    assert data["corpus"] == str(corpus) and data["split"] == "train"
    assert [(e["group"], e["i"], e["j"]) for e in data["experts"]] == [(0, 1, 2), (0, 3, 4)]
    for e in data["experts"]:
        weights = [h["weight"] for h in e["hits"]]
        assert weights == sorted(weights, reverse=True) and len(weights) <= 5
        assert all(w > 0 for w in weights)


def test_experts_table_on_stderr(tiny_ckpt, corpus, capsys):
    code = main(["experts", str(tiny_ckpt), "-g", "1", "-e", "0,0", "--corpus", str(corpus), "--split", "train",
                 "--tokens", "300", "--seq-len", "20"])
    out = capsys.readouterr()
    assert code == 0 and out.out == ""
    assert "expert (0,0) of group 1" in out.err


@pytest.mark.parametrize("args, needle", [
    (["--expert", "3"], "expected I,J"),
    (["--expert", "1,x"], "expected I,J"),
    (["--expert", "8,0"], "out of range"),
    (["--group", "2"], "--group 2: out of range"),
    (["--split", "test"], "--split 'test'"),
    (["--seq-len", "1000"], "exceeds"),
    (["--corpus", "/nonexistent/words"], "/nonexistent/words"),
])
def test_experts_bad_input(tiny_ckpt, args, needle, capsys):
    base = {"--group": "0", "--expert": "1,1"}
    given = dict(zip(args[::2], args[1::2], strict=True))
    argv = ["experts", str(tiny_ckpt)] + [x for k, v in {**base, **given}.items() for x in (k, v)]
    code = main(argv + ["--tokens", "200", "--seq-len" if "--seq-len" not in given else "--top", "16"])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0], err


def test_specialisation_counts_match_a_direct_computation(tiny_ckpt):
    """Experts 2x more used by one corpus than by the other, their routing mass, dead experts and
    distinct experts per token, against the per-token E*E expansion."""
    from monet_edit.analysis import specialisation

    model = load_model(tiny_ckpt)
    gen = torch.Generator().manual_seed(0)
    rows = {"a": torch.randint(0, 40, (3, 12), generator=gen), "b": torch.randint(40, 90, (3, 12), generator=gen)}
    got = specialisation.measure(model, rows, batch_size=2)
    G = {}
    with torch.inference_mode():
        for name, r in rows.items():
            routing: list = []
            model.model(r, routing=routing)
            G[name] = torch.stack([torch.einsum("bthi,bthj->btij", a.double(), b.double()).reshape(-1, 8, 8)
                                   for a, b in routing], 1)  # [tokens, groups, E, E]
    mean = {n: g.mean(0) for n, g in G.items()}
    for name, other in (("a", "b"), ("b", "a")):
        special = (mean[name] >= 2 * mean[other]) & (mean[name] > 0)
        assert got["per_corpus"][name]["experts"] == special.sum((1, 2)).tolist()
        mass = (mean[name] * special).sum((1, 2)) / mean[name].sum((1, 2))
        assert got["per_corpus"][name]["routing_mass"] == pytest.approx(mass.tolist(), abs=1e-4)
    every = torch.cat(list(G.values()))
    assert got["routing"]["dead_experts"] == ((every > 0).sum(0) == 0).sum((1, 2)).tolist()
    distinct = (every > 0).sum((2, 3)).double().mean(0)
    assert got["routing"]["distinct_experts_per_token"] == pytest.approx(distinct.tolist(), abs=0.01)
