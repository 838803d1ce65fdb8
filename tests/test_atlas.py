"""`atlas build`: the active-pair arithmetic and top-k merges against brute force, the written
atlas against the model's full E x E expansion, resumption after kill -9, two ranks against one
process, the size estimate, and bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from clirun import cli

from monet_edit.analysis import experts
from monet_edit.analysis.atlas import pairs, store
from monet_edit.cli import main
from monet_edit.infra import journal
from monet_edit.model.loading import load_model, load_tokenizer

DATA = ("experts.safetensors", "index.safetensors", "text.safetensors")


def write_corpora(directory: Path) -> list[Path]:
    """Two small user corpora that differ (code-like, prose-like)."""
    directory.mkdir(parents=True, exist_ok=True)
    code, prose = directory / "code.txt", directory / "prose.txt"
    code.write_text("\n\n".join(f"def f{i}(x):\n    return x * {i} + main()\n" * 4 for i in range(120)))
    prose.write_text("\n\n".join(f"The law of the land, clause {i}. Der Hund ist gross und das Gesetz gilt.\n" * 4
                                 for i in range(120)))
    return [code, prose]


def build_args(ckpt: Path, corpora: list[Path], out: Path, *extra: str) -> list[str]:
    return ["atlas", "build", str(ckpt), *[a for c in corpora for a in ("--corpus", str(c))], "--tokens", "1500",
            "--seq-len", "32", "--batch-size", "4", "--top", "6", "--shard-tokens", "256", "--out", str(out),
            *extra]


@pytest.fixture(scope="module")
def corpora(tmp_path_factory) -> list[Path]:
    return write_corpora(tmp_path_factory.mktemp("corpora"))


@pytest.fixture(scope="module")
def built(tiny_ckpt, corpora, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("atlas") / "atlas"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MONET_EDIT_HOME", str(tmp_path_factory.mktemp("home")))
        assert main(build_args(tiny_ckpt, corpora, out)) == 0
    return out


def _sparse_routing(n: int, heads: int, e: int, density: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(2):
        g = torch.rand(n, heads, e, generator=gen) * (torch.rand(n, heads, e, generator=gen) < density)
        out.append(g / g.sum(-1, keepdim=True).clamp_min(1e-9))  # softmax-like: each head sums to 1
    return out[0], out[1]


@pytest.mark.parametrize("heads,e,density", [(1, 5, 0.5), (3, 8, 0.3), (4, 16, 0.1), (2, 6, 0.0)])
def test_active_pairs_are_the_nonzeros_of_the_expansion(heads, e, density):
    g1, g2 = _sparse_routing(40, heads, e, density, seed=heads * 100 + e)
    token, expert, weight = pairs.active_pairs(g1, g2)
    dense = torch.einsum("nhi,nhj->nij", g1, g2).reshape(40, e * e)
    want_t, want_e = dense.nonzero(as_tuple=True)
    assert torch.equal(token, want_t) and torch.equal(expert, want_e)
    torch.testing.assert_close(weight, dense[want_t, want_e])
    raw = int(((g1 > 0).sum(-1) * (g2 > 0).sum(-1)).sum())
    assert token.numel() <= raw <= 40 * heads * e * e  # only active pairs, never all E*E


def _brute_top(weights: list[float], positions: list[int], k: int) -> list[int]:
    order = sorted((-w, p) for w, p in zip(weights, positions, strict=True) if w > 0)
    return [p for _, p in order[:k]]


def test_top_lists_equal_a_full_sort_whatever_the_merge_order():
    """Weights drawn from 5 values force ties: the earlier position must win each tie, whether the
    candidates come batch by batch (add_candidates) or as interleaved lists (merge_lists)."""
    gen = torch.Generator().manual_seed(7)
    rows, k, n = 11, 4, 300
    expert = torch.randint(0, rows, (n,), generator=gen)
    weight = torch.randint(0, 5, (n,), generator=gen).float() / 4  # includes 0: never a hit
    position = torch.arange(n)
    top_w, top_p = pairs.empty_lists(rows, k)
    for lo in range(0, n, 37):
        pairs.add_candidates(top_w, top_p, expert[lo:lo + 37], weight[lo:lo + 37], position[lo:lo + 37])
    for r in range(rows):
        sel = expert == r
        want = _brute_top(weight[sel].tolist(), position[sel].tolist(), k)
        assert [p for p in top_p[r].tolist() if p >= 0] == want
        assert all(w == 0 for w, p in zip(top_w[r].tolist(), top_p[r].tolist(), strict=True) if p < 0)
    # two "ranks" holding alternate batches, merged without the ordering promise
    lists = []
    for rank in range(2):
        w, p = pairs.empty_lists(rows, k)
        for lo in range(rank * 37, n, 74):
            pairs.add_candidates(w, p, expert[lo:lo + 37], weight[lo:lo + 37], position[lo:lo + 37])
        lists.append((w, p))
    for a, b in (lists, lists[::-1]):
        _, merged = pairs.merge_lists(*a, *b, k)
        assert torch.equal(merged, top_p)


def _expansion(model, rows: torch.Tensor, group: int) -> torch.Tensor:
    """G[n*T + t, i*E + j] for every token and expert: the naive E*E expansion."""
    with torch.inference_mode():
        g1, g2 = model(rows, output_routing=True).routing[group]
    G = torch.einsum("nthi,nthj->ntij", g1.float(), g2.float())
    return G.reshape(rows.numel(), -1)


def test_atlas_equals_the_full_expansion(built, tiny_ckpt):
    atlas = store.open_atlas(built)
    model = load_model(tiny_ckpt)
    rows = torch.tensor(np.asarray(atlas.ids), dtype=torch.long)
    meta = json.loads((built / "atlas.json").read_text())
    assert [c["name"] for c in meta["corpora"]] == ["user-code", "user-prose"]
    assert sum(c["tokens"] for c in meta["corpora"]) == rows.numel() == meta["tokens"]
    corpus_of_token = torch.tensor(np.asarray(atlas.row_corpus), dtype=torch.long).repeat_interleave(rows.shape[1])
    K = atlas.top
    for g in range(atlas.groups):
        G = _expansion(model, rows, g)
        tol = 1e-6 * float(G.max())
        for c in range(2):
            here = G[corpus_of_token == c]
            assert np.array_equal(atlas.active[g, :, c], (here > 0).sum(0).numpy())  # density: exact
            np.testing.assert_allclose(atlas.usage[g, :, c], here.sum(0).numpy(), rtol=1e-5, atol=tol)
        for e in range(G.shape[1]):
            col = G[:, e]
            w, p = np.array(atlas.top_weight[g, e]), np.array(atlas.top_position[g, e], dtype=np.int64)
            filled = int((p >= 0).sum())
            assert filled == min(K, int((col > 0).sum()))
            assert np.all(p[filled:] == -1) and np.all(w[filled:] == 0)
            np.testing.assert_allclose(w[:filled], col[p[:filled]].numpy(), rtol=1e-5, atol=tol)
            assert np.all(np.diff(w[:filled]) <= 0)
            if filled == K:  # nothing left out weighs more than the last kept (up to rounding)
                rest = col.clone()
                rest[torch.tensor(p)] = 0
                assert float(rest.max()) <= float(w[-1]) + tol
    # the single-expert finder of `monet-edit experts` agrees on the busiest expert of group 1 (its
    # topk orders exact ties, repeated contexts, arbitrarily: compare weights, and the tokens)
    busiest = int(np.asarray(atlas.active[1]).sum(-1).argmax())
    (found,) = experts.top_tokens(model, load_tokenizer(tiny_ckpt), rows, [(1, *divmod(busiest, 8))], top=K)
    np.testing.assert_allclose([h.weight for h in found.hits], atlas.top_weight[1, busiest], rtol=1e-5)
    ids = np.asarray(atlas.ids).reshape(-1)
    assert sorted(h.token_id for h in found.hits) == sorted(ids[atlas.top_position[1, busiest]].tolist())


def test_atlas_records_what_made_it_and_fits_its_estimate(built, tiny_ckpt):
    from monet_edit.model import checkpoint

    meta = json.loads((built / "atlas.json").read_text())
    assert meta["model"]["fingerprint"] == checkpoint.model_fingerprint(tiny_ckpt)
    prov = meta["provenance"]
    assert prov["tool"] == "monet-edit" and prov["git_revision"] and prov["command"].startswith("monet-edit atlas")
    assert set(prov["corpus_fingerprints"]) == {"user-code", "user-prose"}
    assert all(len(c["fingerprint"]) == 64 for c in meta["corpora"])
    assert meta["parameters"]["top"] == 6 and meta["ranks"] == 1
    for name, info in meta["files"].items():
        assert (built / name).stat().st_size == info["bytes"]
    atlas = store.open_atlas(built)
    need = store.footprint(groups=2, experts=8, top=6, corpora=2, tokens=meta["tokens"], seq_len=32,
                           vocab=atlas.offsets.shape[0] - 1)
    data = sum(meta["files"][n]["bytes"] for n in DATA)
    unfilled = int((np.asarray(atlas.top_position) < 0).sum())
    headers = 3 * 1024  # safetensors headers and alignment
    assert data <= need["disk"] + headers
    assert need["disk"] - unfilled * 4 <= data  # the estimate counts every slot as filled
    assert not journal.location(built).exists()  # the journal went once the atlas was published


def test_interrupted_build_resumes_to_the_same_atlas(tiny_ckpt, corpora, built, tmp_path):
    out = tmp_path / "atlas"
    args = build_args(tiny_ckpt, corpora, out)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "monet_edit", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=env)
    part = journal.location(out)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None and not list(part.glob("state-0000[1-9]*")):
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists() and list(part.glob("state-*.safetensors")), "killed too late or too early"
    res = cli(*args, "--resume", env={"OMP_NUM_THREADS": "1"})
    assert res.code == 0, res.stderr
    assert "resuming: " in res.stderr and not part.exists()
    for name in DATA:  # byte for byte the atlas of the uninterrupted build
        assert (out / name).read_bytes() == (built / name).read_bytes(), name


def test_two_ranks_build_the_same_atlas(tiny_ckpt, corpora, built, tmp_path):
    out = tmp_path / "two"
    res = cli(*build_args(tiny_ckpt, corpora, out, "--nproc", "2", "--json"))
    assert res.code == 0, res.stderr
    assert json.loads(res.stdout)["ranks"] == 2
    assert json.loads((out / "atlas.json").read_text())["ranks"] == 2
    one, two = store.open_atlas(built), store.open_atlas(out)
    assert np.array_equal(one.active, two.active) and np.array_equal(one.ids, two.ids)
    np.testing.assert_allclose(one.usage, two.usage, rtol=1e-6)
    np.testing.assert_allclose(one.top_weight, two.top_weight, rtol=1e-6, atol=1e-7)
    assert np.array_equal(one.top_position, two.top_position)


def _one_line(capsys, args: list[str], code: int, *needles: str) -> None:
    assert main(args) == code
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and all(n in lines[0] for n in needles), lines


def test_bad_input_is_one_line(tiny_ckpt, corpora, built, tmp_path, capsys):
    _one_line(capsys, build_args(tiny_ckpt, [tmp_path / "missing.txt"], tmp_path / "x"), 2, "missing.txt")
    _one_line(capsys, build_args(tiny_ckpt, corpora, built), 2, "exists", "--force")
    _one_line(capsys, build_args(tiny_ckpt, [corpora[0], corpora[0]], tmp_path / "y"), 2, "twice")
    _one_line(capsys, build_args(tiny_ckpt, corpora, tmp_path / "z", "--seq-len", "4096"), 2, "positions")
    _one_line(capsys, build_args(tiny_ckpt, corpora, tmp_path / "z", "--split", "nope"), 2, "--split")
    _one_line(capsys, ["atlas", "serve", str(tmp_path / "nothing")], 2, "no such atlas")
    assert not any((tmp_path / n).exists() for n in "xyz")
    res = cli(*build_args(tiny_ckpt, corpora, tmp_path / "w", "--top", "0"))  # typer's own usage error
    assert res.code == 2 and "Traceback" not in res.stderr and not (tmp_path / "w").exists()
