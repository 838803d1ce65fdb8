"""The routing-sparse expert path (kernels/routed.py), its Triton GEMMs, the cost model, scales and
the first-use check of unproven Triton kernels.

Every routed result is compared with the dense layer on the same inputs (and the whole model with
the naive E*E implementation); tolerances come from the data: fp32 allows a few units of rounding
of the output's magnitude, bf16 allows at most twice the dense bf16 layer's own error against fp32.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():  # must precede the first import of a triton_* module
    os.environ.setdefault("TRITON_INTERPRET", "1")

from helpers import random_mask, random_model, tiny_config  # noqa: E402
from naive_monet import naive_logits  # noqa: E402

from monet_edit.errors import UsageError  # noqa: E402
from monet_edit.kernels import dispatch, gathered, reference, routed  # noqa: E402

DECOMPOSITIONS = ["horizontal", "vertical"]
FP32_ROUNDING = 2e-6  # relative to the largest output: sums of a few hundred fp32 products


def _routing(N, H, E, topk=3, seed=0):
    z = torch.randn(N, H, E, generator=torch.Generator().manual_seed(seed)) * 3
    return reference.route(z, torch.zeros(H), torch.full((H,), 9.0), reference.routing_threshold(topk, E))


def _layer(decompose, E, seed=0):
    cfg = tiny_config(decompose, moe_experts=E, moe_topk=3)
    return cfg, random_model(cfg, seed=seed).model.layers[0].moe


def _changes(kind, E, g1, g2, seed=3):
    """None, a mask, a scale (attenuating, amplifying and zeroing), or both, as MaskedPairs."""
    gen = torch.Generator().manual_seed(seed)
    mask = torch.rand(E, E, generator=gen) < 0.25 if kind in ("mask", "both") else None
    scale = None
    if kind in ("scale", "both"):
        scale = torch.where(torch.rand(E, E, generator=gen) < 0.3, torch.rand(E, E, generator=gen) * 2, 1.0)
    pairs = reference.masked_pairs(g1, g2, mask, scale) if kind != "none" else None
    assert (pairs is None) == (kind == "none")  # the change must hit active pairs, or it proves nothing
    return pairs


def _dense(moe, x, g1, g2, pairs, monkeypatch):
    monkeypatch.setenv("MONET_EDIT_SPARSE_TOKENS", "0")
    with torch.no_grad():
        return moe(x, g1, g2, pairs)


@pytest.mark.parametrize("decompose", DECOMPOSITIONS)
@pytest.mark.parametrize("E", [12, 20])  # not powers of two
@pytest.mark.parametrize("N", [1, 37])  # odd token counts
@pytest.mark.parametrize("kind", ["none", "mask", "scale", "both"])
def test_routed_layer_matches_dense_fp32(decompose, E, N, kind, monkeypatch):
    cfg, moe = _layer(decompose, E, seed=N)
    x = torch.randn(N, cfg.hidden_size, generator=torch.Generator().manual_seed(1))
    g1, g2 = _routing(N, cfg.moe_heads, E, seed=1), _routing(N, cfg.moe_heads, E, seed=2)
    pairs = _changes(kind, E, g1, g2)
    dense = _dense(moe, x, g1, g2, pairs, monkeypatch)
    with torch.no_grad():
        ours = (routed.hd_routed if decompose == "horizontal" else routed.vd_routed)(moe, x, routed.plan(g1, g2, pairs))
    assert routed.active_counts(g1, g2)[0] < N * E  # it really skipped pairs
    torch.testing.assert_close(ours, dense, rtol=0, atol=FP32_ROUNDING * float(dense.abs().max()))


@pytest.mark.parametrize("decompose", DECOMPOSITIONS)
@pytest.mark.parametrize("masked", [False, True])
def test_routed_layer_bf16_as_close_as_dense_bf16(decompose, masked, monkeypatch):
    cfg, moe = _layer(decompose, 20, seed=5)
    N = 29
    x = torch.randn(N, cfg.hidden_size, generator=torch.Generator().manual_seed(2))
    g1, g2 = _routing(N, cfg.moe_heads, 20, seed=3), _routing(N, cfg.moe_heads, 20, seed=4)
    pairs = _changes("both" if masked else "none", 20, g1, g2)
    low = moe.to(torch.bfloat16)
    x16 = x.bfloat16()
    dense16 = _dense(low, x16, g1, g2, pairs, monkeypatch).float()
    with torch.no_grad():
        fn = routed.hd_routed if decompose == "horizontal" else routed.vd_routed
        ours16 = fn(low, x16, routed.plan(g1, g2, pairs))
        exact = _dense(low.float(), x16.float(), g1, g2, pairs, monkeypatch)  # same rounded weights, fp32 math
    assert ours16.dtype == torch.bfloat16
    err_dense = float((dense16 - exact).abs().max())
    assert err_dense > 0
    assert float((ours16.float() - exact).abs().max()) <= 2 * err_dense


@pytest.mark.parametrize("decompose", DECOMPOSITIONS)
@pytest.mark.parametrize("changes", ["none", "mask", "scale"])
def test_model_on_the_routed_path_matches_naive(decompose, changes, monkeypatch):
    """Whole model, routed path forced, against the naive E*E expansion (masks, scales incl. > 1)."""
    cfg = tiny_config(decompose, moe_experts=12, moe_topk=3)
    model = random_model(cfg, seed=6)
    masks = random_mask(cfg, 0.2, seed=1) if changes == "mask" else None
    scales = None
    if changes == "scale":
        gen = torch.Generator().manual_seed(2)
        scales = {g: torch.where(torch.rand(12, 12, generator=gen) < 0.3, torch.rand(12, 12, generator=gen) * 2, 1.0)
                  for g in range(cfg.num_groups)}
    model.set_masks(masks)
    model.set_scales(scales)
    ids = torch.randint(0, cfg.vocab_size, (1, 7), generator=torch.Generator().manual_seed(0))
    monkeypatch.setenv("MONET_EDIT_KERNELS", "torch,routed")
    calls = []
    real = routed.plan
    monkeypatch.setattr(routed, "plan", lambda *a: calls.append(1) or real(*a))
    with torch.no_grad():
        ours = model(ids).logits[0].double()
    assert len(calls) == cfg.num_groups  # one plan per routing group, shared by its layers
    sd = model.state_dict()
    ref = naive_logits(sd, cfg.to_dict(), ids[0].tolist(), masks, scales)
    assert (ours - ref).abs().max().item() < 1e-4
    if changes != "none":
        assert (ref - naive_logits(sd, cfg.to_dict(), ids[0].tolist())).abs().max().item() > 1e-3


@pytest.mark.parametrize("decompose", DECOMPOSITIONS)
def test_expert_major_storage_keeps_every_value_and_is_read_in_place(decompose, monkeypatch):
    """expert_major_ (what load_model does on CPU) changes the output projections' memory layout
    only: same state_dict, same logits on both paths, and the routed path reads the weight as a view."""
    cfg = tiny_config(decompose, moe_experts=12, moe_topk=3)
    model = random_model(cfg, seed=7)
    ids = torch.randint(0, cfg.vocab_size, (2, 9), generator=torch.Generator().manual_seed(1))

    def logits():
        out = {}
        for path in ("routed", "dense"):
            monkeypatch.setenv("MONET_EDIT_KERNELS", f"torch,{path}")
            with torch.no_grad():
                out[path] = model(ids).logits
        return out

    before, state = logits(), {k: v.clone() for k, v in model.state_dict().items()}
    moe = model.model.layers[0].moe
    weight = lambda: moe.v.weight if decompose == "horizontal" else moe.v21.weight  # noqa: E731
    assert routed.expert_major(weight(), 12).data_ptr() != weight().data_ptr()  # published layout: a copy
    model.expert_major_()
    assert not weight().is_contiguous() and weight().t().is_contiguous()
    assert routed.expert_major(weight(), 12).data_ptr() == weight().data_ptr()
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    after = logits()
    for path in before:
        scale = float(before[path].abs().max())
        torch.testing.assert_close(after[path], before[path], rtol=0, atol=FP32_ROUNDING * scale)


# ---- scales --------------------------------------------------------------------------------

def test_a_mask_is_the_scale_zero():
    E, H, N = 16, 3, 11
    g1, g2 = _routing(N, H, E, seed=1), _routing(N, H, E, seed=2)
    mask = torch.rand(E, E, generator=torch.Generator().manual_seed(0)) < 0.3
    by_mask = reference.masked_pairs(g1, g2, mask)
    by_scale = reference.masked_pairs(g1, g2, scale=torch.where(mask, 0.0, 1.0))
    for a, b in zip((*by_mask.changes, *by_mask.padded), (*by_scale.changes, *by_scale.padded), strict=True):
        assert torch.equal(a, b)
    assert reference.masked_pairs(g1, g2, scale=torch.ones(E, E)) is None
    assert reference.masked_pairs(g1, g2) is None
    # a mask wins over a scale on the same expert
    both = reference.masked_pairs(g1, g2, mask, torch.full((E, E), 0.5))
    G = torch.einsum("nhi,nhj->nij", g1, g2)
    one1, one2 = (torch.nn.functional.one_hot(i, E).float() for i in (both.idx1, both.idx2))
    removed = torch.einsum("nhab,nhai,nhbj->nij", both.weight, one1, one2)
    torch.testing.assert_close(removed, G * torch.where(mask, 1.0, 0.5))
    # the compact list (what the torch paths correct) removes the same, pair by pair
    n, i, j, w = both.changes
    listed = torch.zeros(N, E, E).index_put_((n, i, j), w, accumulate=True)
    torch.testing.assert_close(listed, removed)
    assert bool((w != 0).all()) and n.numel() < both.weight.numel()  # only the changed pairs, no padding
    # both forms give the same corrections to a restricted layer and to a prefix of the tokens
    pos = torch.randperm(E, generator=torch.Generator().manual_seed(4))
    padded = reference.MaskedPairs.from_padded(*both.padded)
    for a, b in ((both.remap(pos, pos.flip(0)), padded.remap(pos, pos.flip(0))), (both.head(5), padded.head(5))):
        rows = [torch.zeros(N * E * E).index_add_(0, (r1 // E) * E * E + (r1 % E) * E + r2 % E, wt)
                for r1, r2, wt in (reference.hits(a, E, E), reference.hits(b, E, E))]
        torch.testing.assert_close(rows[0], rows[1])


def test_scales_on_the_dense_path_match_naive_and_validate():
    cfg = tiny_config("vertical")
    model = random_model(cfg, seed=3)
    E = cfg.moe_experts
    scales = {0: torch.full((E, E), 1.5), 1: torch.eye(E)}  # amplify every expert; keep only i == j
    model.set_scales(scales)
    assert model.scales().keys() == {0, 1}
    ids = torch.randint(0, cfg.vocab_size, (1, 7), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = model(ids).logits[0].double()
    ref = naive_logits(model.state_dict(), cfg.to_dict(), ids[0].tolist(), scales=scales)
    assert (ours - ref).abs().max().item() < 1e-4
    model.set_scales({0: torch.ones(E, E)})
    assert model.scales() == {}  # all-ones is no change
    with pytest.raises(ValueError, match="shape"):
        model.set_scales({0: torch.ones(E, E + 1)})
    with pytest.raises(ValueError, match="finite"):
        model.set_scales({0: torch.full((E, E), float("nan"))})


# ---- Triton grouped GEMMs ------------------------------------------------------------------

pytest.importorskip("triton")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(1, 2, 8, 4, 24), (37, 3, 12, 6, 40), (9, 2, 20, 16, 18)])  # N, H, E, width, d
def test_triton_grouped_gemms_match_torch(dtype, shape):
    from monet_edit.kernels import triton_routed

    N, H, E, W, d = shape
    s = routed.side(_routing(N, H, E, seed=E))
    gen = torch.Generator().manual_seed(N)
    x, w, b = (torch.randn(*sh, generator=gen).to(dtype) for sh in ((N, d), (E * W, d), (E * W,)))
    ours, ref = triton_routed.up(x, w, b, s), routed.up(x.float(), w.float(), b.float(), s)
    assert ours.dtype == dtype
    _close_to(ours, ref, dtype)
    P = s.tok.numel()
    slots = [torch.randn(P, W, generator=gen).to(dtype) for _ in range(2)]
    weights = [torch.randn(d, E * W, generator=gen).to(dtype) for _ in range(2)]
    brow, bweight = torch.randn(E, d, generator=gen).to(dtype), torch.randn(P, generator=gen).to(dtype)
    for terms in (1, 2):
        pairs = list(zip(slots[:terms], weights[:terms], strict=True))
        ours = triton_routed.down(pairs, brow, bweight, s, N)
        ref = routed.down([(t.float(), v.float()) for t, v in pairs], brow.float(), bweight.float(), s, N)
        _close_to(ours, ref, dtype)


def _close_to(ours, ref, dtype):
    """fp32: rounding of the magnitude; 16-bit: the output's own rounding (8 bits) plus fp32 sums."""
    rel = FP32_ROUNDING if dtype == torch.float32 else 2.0 ** -7
    torch.testing.assert_close(ours.float(), ref, rtol=rel, atol=rel * float(ref.abs().max()))


@pytest.mark.parametrize("decompose", DECOMPOSITIONS)
def test_model_routed_with_triton_matches_torch(decompose, monkeypatch):
    cfg = tiny_config(decompose, moe_experts=12, moe_topk=3, num_hidden_layers=2)
    model = random_model(cfg, seed=2)
    model.set_masks(random_mask(cfg, 0.2, seed=2))
    ids = torch.randint(0, cfg.vocab_size, (1, 6), generator=torch.Generator().manual_seed(3))
    outs = {}
    with torch.no_grad():
        for backend in ("torch", "triton"):
            monkeypatch.setenv("MONET_EDIT_KERNELS", f"{backend},routed")
            outs[backend] = model(ids).logits
    torch.testing.assert_close(outs["triton"], outs["torch"], atol=1e-5, rtol=1e-4)


# ---- cost model and switches ---------------------------------------------------------------

def test_cost_model_picks_routed_only_where_it_pays():
    # 1.4B layer shape, ~8 of 512 sub-experts per head and 8 heads active: 12% of the pairs
    assert routed.choose(1024, 62_000, 62_000, experts=512, width=16, hidden=2048)
    # the same shape routed densely (an unsettled random router: ~240 of 512 per head)
    assert not routed.choose(1024, 1024 * 500, 1024 * 500, experts=512, width=16, hidden=2048)
    # tiny layers: the per-sub-expert overhead exceeds the whole dense GEMM
    assert not routed.choose(64, 64 * 3, 64 * 3, experts=8, width=4, hidden=32)
    # in bf16 on CPU the dense GEMMs are several times faster than the narrow routed ones: dense there
    assert routed.cpu_cost(torch.bfloat16) is routed.CPU_LOW and routed.cpu_cost(torch.float32) is routed.CPU
    assert not routed.choose(1024, 62_000, 62_000, experts=512, width=16, hidden=2048, cost=routed.CPU_LOW)


def test_the_model_plans_for_the_dtype_it_computes_in(monkeypatch):
    """Same routing, same shape: fp32 takes the routed path where it pays, bf16 the dense one."""
    calls = []
    real = routed.choose
    monkeypatch.setattr(routed, "choose", lambda *a, **k: calls.append(a[-1]) or real(*a, **k))
    cfg = tiny_config("horizontal", moe_experts=12, moe_topk=3)
    model = random_model(cfg, seed=8)
    ids = torch.randint(0, cfg.vocab_size, (2, 40), generator=torch.Generator().manual_seed(3))
    monkeypatch.setenv("MONET_EDIT_SPARSE_TOKENS", "0")
    with torch.no_grad():
        model(ids)
        monkeypatch.setenv("MONET_EDIT_KERNELS", "torch")
        model(ids)
        model.to(torch.bfloat16)(ids)
    groups = cfg.num_groups
    fp32 = routed.CPU_NATIVE if gathered.available() else routed.CPU  # the C grouped GEMMs where they build
    assert calls == [fp32] * groups + [routed.CPU] * groups + [routed.CPU_LOW] * groups


def test_switches_and_autograd(monkeypatch):
    g1, g2 = _routing(40, 2, 12, seed=1), _routing(40, 2, 12, seed=2)
    monkeypatch.setenv("MONET_EDIT_KERNELS", "routed")
    assert dispatch.expert_plan(g1, g2, None, 4, 32, grad=False) is not None
    assert dispatch.expert_plan(g1, g2, None, 4, 32, grad=True) is None  # training: dense, autograd sees it
    monkeypatch.setenv("MONET_EDIT_KERNELS", "torch,dense")
    assert dispatch.expert_plan(g1, g2, None, 4, 32, grad=False) is None
    assert (dispatch.mode(), dispatch.expert_mode()) == ("torch", "dense")
    monkeypatch.setenv("MONET_EDIT_KERNELS", "auto")
    assert (dispatch.mode(), dispatch.expert_mode()) == ("auto", "auto")
    for bad in ("dense,routed", "torch,triton", "fast"):
        monkeypatch.setenv("MONET_EDIT_KERNELS", bad)
        with pytest.raises(UsageError, match="MONET_EDIT_KERNELS"):
            dispatch.expert_mode()


def test_training_takes_the_dense_path_and_gets_gradients(monkeypatch):
    cfg = tiny_config("horizontal", moe_experts=12, moe_topk=3)
    model = random_model(cfg).train()
    monkeypatch.setenv("MONET_EDIT_KERNELS", "routed")
    monkeypatch.setattr(routed, "plan", lambda *a: pytest.fail("the routed path has no backward"))
    ids = torch.randint(0, cfg.vocab_size, (2, 8), generator=torch.Generator().manual_seed(0))
    model(ids).logits.sum().backward()
    assert model.model.layers[0].moe.u.weight.grad.abs().sum() > 0


# ---- first-use check of unproven Triton kernels ----------------------------------------------

@pytest.fixture
def pretend_gpu(monkeypatch):
    """`auto` as on a CUDA device: Triton kernels run (in the interpreter here) after their check."""
    monkeypatch.setenv("MONET_EDIT_KERNELS", "auto")
    monkeypatch.setattr(dispatch, "accelerated", lambda t: True)
    monkeypatch.setattr(dispatch, "VERDICTS", {})


def test_a_faulty_kernel_falls_back_to_torch_with_one_warning(pretend_gpu, monkeypatch, capsys):
    from monet_edit.kernels import triton_mix

    real = triton_mix.hd_mix
    monkeypatch.setattr(triton_mix, "hd_mix", lambda *a: tuple(t + 1.0 for t in real(*a)))  # wrong by 1
    cfg = tiny_config("horizontal", moe_experts=12, moe_topk=3)
    model = random_model(cfg, seed=1)
    ids = torch.randint(0, cfg.vocab_size, (1, 7), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        first, second = model(ids).logits, model(ids).logits
        monkeypatch.setenv("MONET_EDIT_KERNELS", "torch,dense")
        ref = model(ids).logits
    torch.testing.assert_close(first, ref, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(second, ref, atol=1e-5, rtol=1e-4)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(lines) == 1 and "hd_mix" in lines[0] and "max error" in lines[0]
    assert [k for k, ok in dispatch.VERDICTS.items() if not ok] == [k for k in dispatch.VERDICTS if k[0] == "hd_mix"]
    assert any(k[0] == "route" and ok for k, ok in dispatch.VERDICTS.items())  # the sound kernel kept running


def test_a_kernel_that_fails_to_compile_falls_back(pretend_gpu, monkeypatch, capsys):
    from monet_edit.kernels import triton_routed

    def broken(*args):
        raise RuntimeError("PTX assembly failed\nmore detail")

    monkeypatch.setattr(triton_routed, "up", broken)
    cfg, moe = _layer("vertical", 12)
    x = torch.randn(30, cfg.hidden_size, generator=torch.Generator().manual_seed(0))
    g1, g2 = _routing(30, cfg.moe_heads, 12, seed=1), _routing(30, cfg.moe_heads, 12, seed=2)
    plan = routed.plan(g1, g2)
    with torch.no_grad():
        ours = dispatch.vd_routed(moe, x, plan)
        ref = routed.vd_routed(moe, x, plan)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-4)
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert "routed.up" in line and "RuntimeError: PTX assembly failed" in line


def test_a_failed_routed_kernel_sends_auto_back_to_the_dense_path(pretend_gpu, monkeypatch):
    monkeypatch.setattr(routed, "choose", lambda *a: True)  # the cost model would pick routed
    g1, g2 = _routing(30, 2, 12, seed=1), _routing(30, 2, 12, seed=2)
    assert dispatch.expert_plan(g1, g2, None, 4, 32, grad=False) is not None
    dispatch.VERDICTS[("routed.up", 2, 32, torch.float32)] = False
    assert dispatch.expert_plan(g1, g2, None, 4, 32, grad=False) is None
