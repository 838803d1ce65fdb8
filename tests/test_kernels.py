"""Parity of every Triton kernel with its torch reference, the dispatcher, and the sparse path.

On CPU the Triton kernels run in the interpreter (TRITON_INTERPRET=1, set by `make test` and
here when no CUDA device exists), so shapes are tiny; gpu-marked tests repeat the parity at the
real 1.4B widths on a CUDA device.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():  # must precede the first import of a triton_* module
    os.environ.setdefault("TRITON_INTERPRET", "1")

from helpers import random_mask, random_model, tiny_config  # noqa: E402

from monet_edit import kernels
from monet_edit.errors import UsageError
from monet_edit.kernels import dispatch, reference

pytest.importorskip("triton")

# (N tokens, H heads, E sub-experts, width): N = 1 and odd N, E not a power of two.
SHAPES = [(1, 2, 8, 4), (7, 3, 12, 6), (5, 4, 20, 8)]
DTYPES = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.bfloat16: dict(atol=3e-2, rtol=2e-2)}


def _routing(N, H, E, topk=3, seed=0, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(N, H, E, generator=gen) * 3
    g = reference.route(z, torch.zeros(H), torch.full((H,), 9.0), reference.routing_threshold(topk, E))
    return g.to(device)


def _inputs(shape, dtype, masked, device="cpu", seed=0):
    N, H, E, M = shape
    gen = torch.Generator().manual_seed(seed)
    g1, g2 = _routing(N, H, E, seed=seed, device=device), _routing(N, H, E, seed=seed + 1, device=device)
    a1, a2 = (torch.randn(N, E, M, generator=gen).square().to(device, dtype) for _ in range(2))
    pairs = None
    if masked:
        pairs = reference.masked_pairs(g1, g2, torch.rand(E, E, generator=gen).to(device) < 0.3)
        assert pairs is not None  # the mask must hit active pairs, or the test proves nothing
    return a1, a2, g1, g2, pairs


def _close(ours, ref, dtype):
    """Kernel output (in `dtype`) against the reference evaluated in fp32 on the same inputs."""
    assert ours.dtype == dtype
    torch.testing.assert_close(ours.float(), ref.float(), **DTYPES[dtype])


@pytest.fixture
def triton_mode(monkeypatch):
    monkeypatch.setenv("MONET_EDIT_KERNELS", "triton")


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_route_parity(shape, dtype):
    from monet_edit.kernels import triton_route

    N, H, E, _ = shape
    gen = torch.Generator().manual_seed(E)
    z = (torch.randn(N, H, E, generator=gen) * 3).to(dtype)
    mean, var = torch.randn(H, generator=gen) * 0.3, torch.rand(H, generator=gen) + 0.5
    sigma = reference.routing_threshold(3, E)
    ours = triton_route.route(z, mean, var, sigma)
    ref = reference.route(z, mean, var, sigma)
    assert ours.dtype == torch.float32
    assert torch.equal(ours > 0, ref > 0)  # the same kept entries, bit for bit
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=1e-5)


def test_route_row_of_ties_keeps_the_max():
    """A head whose scores never reach sigma keeps its maximum (several when tied)."""
    from monet_edit.kernels import triton_route

    z = torch.tensor([[[0.5, 0.5, -1.0, 0.1, 0.2]]])
    ours = triton_route.route(z, torch.zeros(1), torch.ones(1), sigma=3.0)
    torch.testing.assert_close(ours, reference.route(z, torch.zeros(1), torch.ones(1), 3.0))
    assert ours[0, 0].tolist()[:3] == [0.5, 0.5, 0.0]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("masked", [False, True])
def test_hd_mix_parity(shape, dtype, masked):
    from monet_edit.kernels import triton_mix

    a, _, g1, g2, pairs = _inputs(shape, dtype, masked)
    ours = triton_mix.hd_mix(a, g1, g2, pairs)
    ref = reference.hd_mix(a.float(), g1, g2, pairs)
    for o, r in zip(ours, ref, strict=True):
        _close(o, r, dtype)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("masked", [False, True])
def test_vd_mix_parity(shape, dtype, masked):
    from monet_edit.kernels import triton_mix

    a1, a2, g1, g2, pairs = _inputs(shape, dtype, masked)
    ours = triton_mix.vd_mix(a1, a2, g1, g2, pairs)
    ref = reference.vd_mix(a1.float(), a2.float(), g1, g2, pairs)
    for o, r in zip(ours, ref, strict=True):
        _close(o, r, dtype)


def test_masking_changes_the_mix():
    """The masked parity cases really differ from the unmasked mix (the fold is not a no-op)."""
    from monet_edit.kernels import triton_mix

    a, _, g1, g2, pairs = _inputs(SHAPES[1], torch.float32, masked=True)
    masked, _ = triton_mix.hd_mix(a, g1, g2, pairs)
    plain, _ = triton_mix.hd_mix(a, g1, g2, None)
    assert (masked - plain).abs().max() > 1e-3


@pytest.mark.parametrize("decompose", ["horizontal", "vertical"])
@pytest.mark.parametrize("masked", [False, True])
def test_model_with_triton_matches_torch(decompose, masked, monkeypatch):
    """The whole model, every kernel dispatched to Triton, against the torch path (dense and sparse)."""
    cfg = tiny_config(decompose, moe_experts=12, moe_topk=3)
    model = random_model(cfg, seed=4)
    if masked:
        model.set_masks(random_mask(cfg, 0.2, seed=2))
    ids = torch.randint(0, cfg.vocab_size, (1, 5), generator=torch.Generator().manual_seed(0))
    outs = {}
    with torch.no_grad():
        for mode in ("torch", "triton"):
            monkeypatch.setenv("MONET_EDIT_KERNELS", mode)
            prompt = model(ids, use_cache=True)  # 5 tokens: dense path
            step = model(ids[:, :1], past_key_values=prompt.past_key_values)  # 1 token: sparse path
            outs[mode] = (prompt.logits, step.logits)
    for ours, ref in zip(outs["triton"], outs["torch"], strict=True):
        torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-4)


# ---- sparse path ------------------------------------------------------------------------

@pytest.mark.parametrize("decompose", ["horizontal", "vertical"])
@pytest.mark.parametrize("tokens", [1, 3])
@pytest.mark.parametrize("masked", [False, True])
def test_sparse_expert_path_matches_dense(decompose, tokens, masked, monkeypatch):
    cfg = tiny_config(decompose, moe_experts=32, moe_topk=2)
    experts = random_model(cfg, seed=tokens).model.layers[0].moe
    x = torch.randn(tokens, cfg.hidden_size, generator=torch.Generator().manual_seed(1))
    g1, g2 = (_routing(tokens, cfg.moe_heads, cfg.moe_experts, topk=2, seed=s) for s in (tokens, 9))
    with torch.no_grad():
        pairs = None
        if masked:
            pairs = kernels.masked_pairs(g1, g2, random_mask(cfg, 0.3, seed=tokens)[0])
            assert pairs is not None
        sparse = (kernels.hd_sparse if decompose == "horizontal" else kernels.vd_sparse)(experts, x, g1, g2, pairs)
        monkeypatch.setenv("MONET_EDIT_SPARSE_TOKENS", "0")
        dense = experts(x, g1, g2, pairs)
    assert len(kernels.sparse.active(g1)) < cfg.moe_experts  # it really skipped sub-experts
    torch.testing.assert_close(sparse, dense, atol=1e-6, rtol=1e-5)


def test_model_takes_the_sparse_path_for_few_tokens(monkeypatch):
    cfg = tiny_config("horizontal")
    model = random_model(cfg)
    calls = []
    real = kernels.hd_sparse
    monkeypatch.setattr(kernels, "hd_sparse", lambda *a: calls.append(1) or real(*a))
    ids = torch.zeros(1, 3, dtype=torch.long)
    with torch.no_grad():
        model(ids)
        assert calls == [1] * cfg.num_hidden_layers
        monkeypatch.setenv("MONET_EDIT_SPARSE_TOKENS", "2")
        model(ids)
    assert calls == [1] * cfg.num_hidden_layers


# ---- dispatcher -------------------------------------------------------------------------

def test_dispatch_modes(monkeypatch):
    z = torch.zeros(2, 1, 4)
    monkeypatch.setenv("MONET_EDIT_KERNELS", "auto")
    assert dispatch.use_triton(z) == (z.is_cuda and dispatch.triton_available())
    monkeypatch.setenv("MONET_EDIT_KERNELS", "torch")
    assert not dispatch.use_triton(z)
    monkeypatch.setenv("MONET_EDIT_KERNELS", "triton")
    assert dispatch.use_triton(z)
    w = torch.zeros(2, 1, 4, requires_grad=True)
    assert not dispatch.use_triton(w)  # autograd needs the reference (kernels are forward-only)
    with torch.no_grad():
        assert dispatch.use_triton(w)


def test_dispatch_refuses_bad_settings(monkeypatch):
    z = torch.zeros(1, 1, 4)
    monkeypatch.setenv("MONET_EDIT_KERNELS", "cuda")
    with pytest.raises(UsageError, match="MONET_EDIT_KERNELS='cuda'"):
        dispatch.use_triton(z)
    monkeypatch.setenv("MONET_EDIT_KERNELS", "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(UsageError, match="TRITON_INTERPRET=1"):
        dispatch.use_triton(z)
    monkeypatch.setenv("MONET_EDIT_SPARSE_TOKENS", "few")
    with pytest.raises(UsageError, match="MONET_EDIT_SPARSE_TOKENS"):
        dispatch.sparse_tokens()


def test_importing_kernels_does_not_import_triton():
    import subprocess
    import sys

    code = ("import sys, torch, monet_edit.kernels as k; "
            "k.route(torch.randn(3, 2, 8), torch.zeros(2), torch.ones(2), 1.0); "
            "print('triton' in sys.modules)")
    env = dict(os.environ, MONET_EDIT_KERNELS="auto")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "False"


# ---- GPU --------------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("decompose", ["horizontal", "vertical"])
@pytest.mark.parametrize("masked", [False, True])
def test_gpu_parity_at_real_width(decompose, masked):
    """1.4B widths (E=512, H=8, m=16) in bf16 on CUDA."""
    from monet_edit.kernels import triton_mix, triton_route

    N, H, E, M = 257, 8, 512, 16 if decompose == "horizontal" else 8
    z = torch.randn(N, H, E, device="cuda") * 3
    mean, var = torch.zeros(H, device="cuda"), torch.full((H,), 9.0, device="cuda")
    sigma = reference.routing_threshold(8, E)
    g = triton_route.route(z, mean, var, sigma)
    assert torch.equal(g > 0, reference.route(z, mean, var, sigma) > 0)
    a1, a2, g1, g2, pairs = _inputs((N, H, E, M), torch.bfloat16, masked, device="cuda")
    if decompose == "horizontal":
        ours, ref = triton_mix.hd_mix(a1, g1, g2, pairs), reference.hd_mix(a1.float(), g1, g2, pairs)
    else:
        ours, ref = (triton_mix.vd_mix(a1, a2, g1, g2, pairs),
                     reference.vd_mix(a1.float(), a2.float(), g1, g2, pairs))
    for o, r in zip(ours, ref, strict=True):
        _close(o, r, torch.bfloat16)


def test_kernels_compile_for_hopper():
    """Without a GPU, compile every kernel ahead of time to an sm_90 cubin (bf16 with masked pairs or
    two terms, the variants with the most code): catches code the interpreter accepts but the
    compiler rejects."""
    import subprocess
    import sys

    code = """
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from monet_edit.kernels import triton_mix, triton_route, triton_routed

def compile_(fn, types, consts):
    names = fn.arg_names
    sig = dict(zip(names, types + ["constexpr"] * len(consts)))
    assert triton.compile(ASTSource(fn=fn, signature=sig, constexprs=consts),
                          target=GPUTarget("cuda", 90, 32)).asm["cubin"]

compile_(triton_route._route_kernel, ["*fp32"] * 4 + ["i32"] * 3 + ["fp32"] * 2, {"BLOCK_R": 8, "BLOCK_E": 512})
ints = ["i32"] * 6
blocks = {"HAS_PAIRS": True, "BLOCK_H": 8, "BLOCK_E": 64, "BLOCK_M": 16, "BLOCK_P": 256}
compile_(triton_mix._hd_kernel, ["*bf16", "*fp32", "*fp32", "*bf16", "*bf16", "*fp32", "*i64", "*i64"] + ints, blocks)
compile_(triton_mix._vd_kernel, ["*bf16"] * 2 + ["*fp32"] * 2 + ["*bf16"] * 6 + ["*fp32", "*i64", "*i64"] + ints,
         dict(blocks, BLOCK_M=8))
tiles = ["*i64", "*i32", "*i32", "*i32"]
compile_(triton_routed._up_kernel, ["*bf16"] * 4 + tiles + ["i32"] * 2,
         {"BLOCK_P": 32, "BLOCK_W": 16, "BLOCK_K": 64, "UPCAST": False})
compile_(triton_routed._down_kernel, ["*bf16"] * 6 + ["*fp32"] + tiles + ["i32"] * 3,
         {"TWO": True, "BLOCK_P": 32, "BLOCK_W": 16, "BLOCK_D": 64, "UPCAST": False})
print("compiled")
"""
    env = dict(os.environ, TRITON_INTERPRET="0", TRITON_DEFAULT_FP_FUSION="1")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "compiled", out.stderr[-2000:]


@pytest.mark.gpu
@pytest.mark.parametrize("decompose", ["horizontal", "vertical"])
def test_gpu_sparse_path_matches_dense(decompose, monkeypatch):
    """On CUDA the sparse path also gathers V's active columns (on CPU it keeps V dense)."""
    cfg = tiny_config(decompose, moe_experts=32, moe_topk=2)
    experts = random_model(cfg, seed=1).model.layers[0].moe.cuda()
    x = torch.randn(2, cfg.hidden_size, device="cuda")
    g1, g2 = (_routing(2, cfg.moe_heads, cfg.moe_experts, topk=2, seed=s, device="cuda") for s in (3, 4))
    pairs = kernels.masked_pairs(g1, g2, random_mask(cfg, 0.3, seed=1)[0].cuda())
    with torch.no_grad():
        sparse = (kernels.hd_sparse if decompose == "horizontal" else kernels.vd_sparse)(experts, x, g1, g2, pairs)
        monkeypatch.setenv("MONET_EDIT_SPARSE_TOKENS", "0")
        dense = experts(x, g1, g2, pairs)
    torch.testing.assert_close(sparse, dense, atol=1e-5, rtol=1e-4)
