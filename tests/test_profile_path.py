"""Profiling runs only what routing depends on: no lm_head, nothing after the last router."""

import torch
from helpers import random_mask, random_model, tiny_config

from monet_edit import profiling


def _moe_calls(model):
    calls = []
    for i, layer in enumerate(model.model.layers):
        layer.moe.register_forward_hook(lambda *a, i=i: calls.append(i))
    return calls


def test_routing_only_stops_after_the_last_router_with_the_same_routing():
    cfg = tiny_config("vertical", num_hidden_layers=6, moe_groups=2)  # routers on layers 0, 2, 4
    model = random_model(cfg, seed=3)
    model.set_masks(random_mask(cfg, 0.3, seed=1))  # masks of groups 0, 1 change the routing of 1, 2
    calls = _moe_calls(model)
    ids = torch.randint(0, cfg.vocab_size, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = model(ids, output_routing=True).routing
        assert calls == list(range(6))
        calls.clear()
        routing: list = []
        assert model.model(ids, routing=routing, routing_only=True) == (None, None)
    assert calls == [0, 1, 2, 3]  # layer 4's experts and layer 5 are skipped
    assert len(routing) == len(full) == 3
    for ours, ref in zip(routing, full, strict=True):
        for a, b in zip(ours, ref, strict=True):
            assert torch.equal(a, b)


def test_profile_rows_skips_the_lm_head_and_later_layers():
    cfg = tiny_config("horizontal")  # 4 layers, routers on 0 and 2
    model = random_model(cfg, seed=1)
    calls = _moe_calls(model)
    model.lm_head.register_forward_hook(lambda *a: calls.append("lm_head"))
    rows = torch.randint(0, cfg.vocab_size, (3, 8), generator=torch.Generator().manual_seed(1))
    profile = profiling.profile_rows(model, rows, batch_size=2)
    assert calls == [0, 1, 0, 1]  # two batches, layers 0 and 1 only
    with torch.no_grad():
        routing = model(rows, output_routing=True).routing
    for g, (g1, g2) in enumerate(routing):
        S = torch.einsum("bthi,bthj->ij", g1.double(), g2.double())
        torch.testing.assert_close(profile.S[g], S, rtol=1e-12, atol=1e-12)
