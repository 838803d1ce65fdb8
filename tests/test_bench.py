"""Smoke test of `make bench` at tiny sizes, in process (the full run is `make bench`, not a test).

It also checks that the einsum baseline computes the same logits as our model, masked and not
(forward_figures asserts it before timing), so the bench compares like with like.
"""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import run as bench  # noqa: E402


@pytest.fixture(autouse=True)
def _torch_kernels(monkeypatch):
    monkeypatch.setenv("MONET_EDIT_KERNELS", "torch")


def test_bench_figures_at_tiny_sizes(capsys):
    out: list = []
    bench.forward_figures(out, bench.QUICK, batch=1, seq=16, repeats=1)
    bench.profile_figures(out, bench.QUICK, batch=1, seq=16, repeats=1)
    bench.naive_figure(out, experts=12, heads=2, topk=2, tokens=4, repeats=1)
    bench.generate_figures(out, {"tiny": bench.QUICK}, prompt=4, new=2, repeats=1)
    names = [f["name"] for f in out]
    assert len(names) == 10 + 2 + 1 + 1
    assert all(f["ratio"] > 0 for f in out)
    assert {f["target"] for f in out if f["ok"] is not None} == {"<= 1.05", "<= 1.15", ">= 20"}
    bench.print_table(dict(figures=out, gpu="skipped", seconds=1.0, machine=dict(load_average=(0.0,))))
    table = capsys.readouterr().out
    assert "HD masked 2% vs unmasked" in table and "VD forward: ours vs einsum baseline" in table


def test_build_calibrates_routing_to_about_topk():
    model = bench.build(bench.QUICK, "horizontal")
    import torch

    ids = torch.randint(0, model.config.vocab_size, (2, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        g1, _ = model(ids, output_routing=True).routing[0]
    active = (g1 > 0).sum(-1).float().mean().item()
    assert 1 <= active <= 2 * model.config.moe_topk


def test_flops_count_matches_parameters():
    """The MFU numerator counts each weight twice per token (plus attention), embeddings excluded."""
    from monet_edit.model.config import MonetConfig
    from monet_edit.model.monet import MonetForCausalLM

    cfg = MonetConfig(**bench.QUICK, moe_decompose="horizontal").validate()
    model = MonetForCausalLM(cfg)
    skip = ("embed_tokens", "norm", "layernorm", ".bias", ".b", ".b1", ".b2", "running", "num_batches")
    weights = sum(p.numel() for n, p in model.state_dict().items() if not any(s in n for s in skip))
    attention = cfg.num_hidden_layers * 2 * 16 * cfg.hidden_size
    assert bench.model_flops_per_token(cfg, seq=16) == 2 * weights + attention


def test_bench_ranks_figure_runs_both_launches():
    out: list = []
    bench.ranks_figures(out, tokens=1024, seq=32, sources=("en",))
    (fig,) = out
    assert fig["ratio"] > 0 and set(fig["wall_seconds"]) == {"1", "2"}
