"""The model against a naive implementation of the model's math (README design notes) that materialises every expert."""

import pytest
import torch
from helpers import random_mask, random_model, tiny_config
from naive_monet import naive_logits

from monet_edit import kernels

DECOMPOSITIONS = ["horizontal", "vertical"]


def _ids(cfg, T=7, B=1, seed=3):
    return torch.randint(0, cfg.vocab_size, (B, T), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("decompose", DECOMPOSITIONS)
@pytest.mark.parametrize("experts,topk", [(8, 3), (12, 2), (16, 4)])
def test_matches_naive_unmasked(decompose, experts, topk):
    cfg = tiny_config(decompose, moe_experts=experts, moe_topk=topk)
    model = random_model(cfg, seed=experts)
    ids = _ids(cfg)
    with torch.no_grad():
        ours = model(ids).logits[0].double()
    ref = naive_logits(model.state_dict(), cfg.to_dict(), ids[0].tolist())
    assert (ours - ref).abs().max().item() < 1e-4


@pytest.mark.parametrize("decompose", DECOMPOSITIONS)
@pytest.mark.parametrize("fraction", [0.05, 0.3, 1.0])
def test_matches_naive_masked(decompose, fraction):
    cfg = tiny_config(decompose)
    model = random_model(cfg, seed=5)
    ids = _ids(cfg)
    masks = random_mask(cfg, fraction, seed=7)
    model.set_masks(masks)
    with torch.no_grad():
        ours = model(ids).logits[0].double()
    sd = model.state_dict()
    ref = naive_logits(sd, cfg.to_dict(), ids[0].tolist(), masks)
    unmasked = naive_logits(sd, cfg.to_dict(), ids[0].tolist())
    assert (ours - ref).abs().max().item() < 1e-4
    assert (ref - unmasked).abs().max().item() > 1e-3  # the mask really changed the output


def test_masking_only_one_group_changes_only_later_layers():
    cfg = tiny_config("horizontal")
    model = random_model(cfg, seed=2)
    ids = _ids(cfg)
    masks = {1: random_mask(cfg, 0.5, seed=1)[1]}
    model.set_masks(masks)
    with torch.no_grad():
        ours = model(ids, output_routing=True)
    ref = naive_logits(model.state_dict(), cfg.to_dict(), ids[0].tolist(), masks)
    assert (ours.logits[0].double() - ref).abs().max().item() < 1e-4
    assert model.masks().keys() == {1}


def test_routing_rows_sum_to_one_and_about_topk_active():
    cfg = tiny_config("vertical", moe_experts=16, moe_topk=4)
    model = random_model(cfg)
    with torch.no_grad():
        out = model(_ids(cfg, T=32, B=2), output_routing=True)
    assert len(out.routing) == cfg.num_groups
    for g1, g2 in out.routing:
        assert g1.shape == (2, 32, cfg.moe_heads, cfg.moe_experts)
        for g in (g1, g2):
            torch.testing.assert_close(g.sum(-1), torch.ones(g.shape[:-1]))
            active = (g > 0).sum(-1)
            assert active.min() >= 1
            assert 1 <= active.float().mean() <= cfg.moe_experts / 2


def test_masked_pairs_touch_only_active_pairs():
    """The mask correction works on [N, H, K1, K2] pairs, K the active count, never E*E."""
    E, H, N = 64, 3, 5
    gen = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(N, H, E, generator=gen), torch.randn(N, H, E, generator=gen)
    sigma = kernels.routing_threshold(4, E)
    ones, zeros = torch.ones(H), torch.zeros(H)
    g1, g2 = kernels.route(z1, zeros, ones, sigma), kernels.route(z2, zeros, ones, sigma)
    pairs = kernels.masked_pairs(g1, g2, torch.ones(E, E, dtype=torch.bool))
    k1, k2 = int((g1 > 0).sum(-1).max()), int((g2 > 0).sum(-1).max())
    assert pairs.weight.shape == (N, H, k1, k2)
    assert k1 * k2 < E * E / 20
    # all experts masked: the masked weights are all of G
    G = torch.einsum("nhi,nhj->nij", g1, g2)
    assert torch.allclose(pairs.weight.sum((1, 2, 3)), G.sum((1, 2)))
    assert kernels.masked_pairs(g1, g2, torch.zeros(E, E, dtype=torch.bool)) is None


@pytest.mark.parametrize("decompose", DECOMPOSITIONS)
def test_kv_cache_matches_full_forward(decompose):
    cfg = tiny_config(decompose)
    model = random_model(cfg)
    model.set_masks(random_mask(cfg, 0.2))
    ids = _ids(cfg, T=10, B=2)
    with torch.no_grad():
        full = model(ids).logits
        out = model(ids[:, :4], use_cache=True)
        chunk = model(ids[:, 4:7], past_key_values=out.past_key_values, use_cache=True)
        steps = [chunk.logits]
        cache = chunk.past_key_values
        for t in range(7, 10):
            step = model(ids[:, t:t + 1], past_key_values=cache, use_cache=True)
            cache = step.past_key_values
            steps.append(step.logits)
    torch.testing.assert_close(torch.cat([out.logits] + steps, 1), full, atol=1e-5, rtol=1e-4)


def test_bf16_close_to_fp32():
    cfg = tiny_config("horizontal")
    model = random_model(cfg)
    ids = _ids(cfg, T=16)
    with torch.no_grad():
        ref = model(ids).logits
        low = model.to(torch.bfloat16)(ids).logits.float()
    assert low.dtype == torch.float32
    assert (low - ref).abs().mean() < 0.05 * ref.abs().mean() + 1e-3


def test_training_mode_uses_batch_statistics_and_updates_running_stats():
    cfg = tiny_config("horizontal")
    model = random_model(cfg).train()
    router = model.model.routers()[0]
    before = router.norm1.running_mean.clone()
    model(_ids(cfg, T=16, B=2)).logits.sum().backward()
    assert not torch.equal(before, router.norm1.running_mean)
    assert router.w1.weight.grad is not None and router.w1.weight.grad.abs().sum() > 0
