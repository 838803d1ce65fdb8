"""The C grouped GEMMs (kernels.gathered): parity with the torch ones, the build cache, fallbacks.

Tolerances come from the data: a float32 sum of K products can be off by about K * eps times the
sum of the products' magnitudes (the worst-case bound, so it holds for any summation order, vector
width and thread count), and relu^2 doubles the relative error of its input.
"""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from helpers import random_mask, random_model, tiny_config

from monet_edit.errors import UsageError
from monet_edit.kernels import dispatch, gathered, routed

EPS = torch.finfo(torch.float32).eps
needs_compiler = pytest.mark.skipif(gathered.compiler() is None, reason="no C compiler")  # make install puts gcc


def _routing(tokens: int, heads: int, experts: int, k: int, seed: int, empty: tuple[int, ...] = ()) -> torch.Tensor:
    """g [N, H, E]: k random sub-experts per token and head, never the ones in `empty`."""
    gen = torch.Generator().manual_seed(seed)
    score = torch.rand(tokens, heads, experts, generator=gen)
    score[..., list(empty)] = -1.0
    g = torch.zeros(tokens, heads, experts)
    top = score.topk(min(k, experts - len(empty)), dim=-1).indices
    return g.scatter_(-1, top, torch.rand(top.shape, generator=gen) + 0.01)


def _up_bound(x, weight, bias, s):
    """Per element: |relu2(u) - relu2(u')| <= 2|u| du + du^2, du <= (d+1) eps sum |x w| + |b|."""
    exact = routed.up(x.double(), weight.double(), bias.double(), s)  # relu2 of the pre-activation
    mag = routed.up(x.abs().double(), weight.abs().double(), bias.abs().double(), s).sqrt()
    du = (x.shape[1] + 1) * EPS * mag
    return exact, 2 * exact.sqrt() * du + du * du


# E not a power of two, d not a multiple of any vector width, VD's half-width sub-experts, empty ones
SHAPES = [
    dict(tokens=37, heads=3, experts=13, k=2, d=50, width=8, empty=(4,)),
    dict(tokens=64, heads=4, experts=24, k=3, d=96, width=16, empty=()),
    dict(tokens=5, heads=2, experts=7, k=3, d=17, width=3, empty=(0, 6)),
    dict(tokens=300, heads=8, experts=64, k=4, d=160, width=16, empty=(63,)),
]


@needs_compiler
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"N{s['tokens']}-E{s['experts']}-d{s['d']}-m{s['width']}")
def test_up_matches_torch(shape, threads):
    gen = torch.Generator().manual_seed(shape["tokens"])
    s = routed.side(_routing(shape["tokens"], shape["heads"], shape["experts"], shape["k"], 1, shape["empty"]))
    x = torch.randn(shape["tokens"], shape["d"], generator=gen)
    weight = torch.randn(shape["experts"] * shape["width"], shape["d"], generator=gen) / shape["d"] ** 0.5
    bias = torch.randn(shape["experts"] * shape["width"], generator=gen) * 0.1
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        ours = gathered.up(x, weight, bias, s)
    finally:
        torch.set_num_threads(before)
    exact, bound = _up_bound(x, weight, bias, s)
    assert ours.shape == exact.shape and ours.dtype == torch.float32
    assert exact.abs().max() > 0.1  # the case computes something
    assert ((ours.double() - exact).abs() <= bound + 1e-30).all()
    for e in shape["empty"]:
        assert s.counts[e] == 0


@needs_compiler
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("terms", [1, 2])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"N{s['tokens']}-E{s['experts']}-d{s['d']}-m{s['width']}")
def test_down_matches_torch(shape, terms, threads):
    gen = torch.Generator().manual_seed(shape["tokens"] + terms)
    N, E, m, d = shape["tokens"], shape["experts"], shape["width"], shape["d"]
    s = routed.side(_routing(N, shape["heads"], E, shape["k"], 2, shape["empty"]))
    P = s.tok.numel()
    # published layout ([d_out, E*m], copied expert-major) for the first term, expert-major views after
    weights = [torch.randn(d, E * m, generator=gen)] + [torch.randn(E * m, d, generator=gen).t() for _ in range(terms - 1)]
    parts = [(torch.randn(P, m, generator=gen), w) for w in weights]
    brow, bweight = torch.randn(E, d, generator=gen), torch.rand(P, generator=gen)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        ours = gathered.down(parts, brow, bweight, s, N)
    finally:
        torch.set_num_threads(before)
    exact = routed.down([(a.double(), w.double()) for a, w in parts], brow.double(), bweight.double(), s, N)
    mag = routed.down([(a.abs().double(), w.abs().double()) for a, w in parts], brow.abs().double(),
                      bweight.double(), s, N)
    summands = min(E, shape["heads"] * shape["k"]) * (terms * m + 1)  # pairs per token x products per pair
    assert ours.shape == (N, d)
    assert exact.abs().max() > 0.1
    assert ((ours.double() - exact).abs() <= summands * EPS * mag + 1e-30).all()


@needs_compiler
def test_no_pairs_gives_zeros_and_empty_rows():
    s = routed.side(torch.zeros(4, 2, 5))
    x, weight, bias = torch.randn(4, 9), torch.randn(5 * 3, 9), torch.randn(5 * 3)
    assert gathered.up(x, weight, bias, s).shape == (0, 3)
    y = gathered.down([(torch.empty(0, 3), torch.randn(9, 15))], torch.randn(5, 9), torch.empty(0), s, 4)
    assert torch.equal(y, torch.zeros(4, 9))


@needs_compiler
@pytest.mark.parametrize("decompose", ["horizontal", "vertical"])
def test_model_on_the_c_kernels_matches_torch(decompose, monkeypatch):
    """The whole routed layer, masks and scales included, on the C kernels vs the torch ones."""
    cfg = tiny_config(decompose, moe_experts=12, moe_topk=3, num_hidden_layers=2)
    model = random_model(cfg, seed=4)
    model.set_masks(random_mask(cfg, 0.2, seed=4))
    ids = torch.randint(0, cfg.vocab_size, (2, 9), generator=torch.Generator().manual_seed(5))
    monkeypatch.setenv("MONET_EDIT_SPARSE_TOKENS", "0")
    calls = []
    real = gathered.down
    monkeypatch.setattr(gathered, "down", lambda *a: calls.append(1) or real(*a))
    outs = {}
    with torch.no_grad():
        for backend in ("torch", "native"):
            monkeypatch.setenv("MONET_EDIT_KERNELS", f"{backend},routed")
            outs[backend] = model(ids).logits
    assert calls  # the C kernels ran
    scale = float(outs["torch"].abs().max())
    torch.testing.assert_close(outs["native"], outs["torch"], rtol=0, atol=1e-5 * scale)


# ---- dispatch: auto, forced, fallbacks ---------------------------------------------------------

@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """An empty kernel cache and no verdicts: the next call builds and checks again."""
    monkeypatch.setenv("MONET_EDIT_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(dispatch, "VERDICTS", {})
    monkeypatch.setattr(dispatch, "_WARNED", set())
    gathered.library.cache_clear()
    yield tmp_path / "home" / "kernels"
    gathered.library.cache_clear()


def _layer_inputs(seed: int = 0):
    cfg = tiny_config("horizontal", moe_experts=12, moe_topk=3)
    model = random_model(cfg, seed=seed)
    ids = torch.randint(0, cfg.vocab_size, (2, 20), generator=torch.Generator().manual_seed(seed))
    return model, ids


@needs_compiler
def test_auto_builds_once_and_uses_the_c_kernels(fresh, monkeypatch):
    model, ids = _layer_inputs()
    monkeypatch.setenv("MONET_EDIT_KERNELS", "auto,routed")
    monkeypatch.setenv("MONET_EDIT_SPARSE_TOKENS", "0")
    with torch.no_grad():
        model(ids)
    builds = list(fresh.glob("gathered-*.so"))
    assert len(builds) == 1 and not list(fresh.glob(".*.tmp"))
    assert {k[0] for k, ok in dispatch.VERDICTS.items() if ok} == {"native.up", "native.down"}


def test_without_a_compiler_auto_runs_torch_and_forced_native_is_a_usage_error(fresh, monkeypatch, capsys):
    model, ids = _layer_inputs()
    monkeypatch.setenv("PATH", "")
    monkeypatch.delenv("CC", raising=False)
    assert gathered.compiler() is None and "no C compiler" in gathered.unavailable()
    monkeypatch.setenv("MONET_EDIT_SPARSE_TOKENS", "0")
    monkeypatch.setenv("MONET_EDIT_KERNELS", "auto,routed")
    with torch.no_grad():
        auto = model(ids).logits
        monkeypatch.setenv("MONET_EDIT_KERNELS", "torch,routed")
        ref = model(ids).logits
        assert torch.equal(auto, ref)
        assert "warning" not in capsys.readouterr().err  # no compiler at all is a supported set-up
        monkeypatch.setenv("MONET_EDIT_KERNELS", "native,routed")
        with pytest.raises(UsageError, match="MONET_EDIT_KERNELS=native.*no C compiler"):
            model(ids)
    assert not fresh.exists() or not list(fresh.iterdir())


def test_a_broken_compiler_warns_once_and_runs_torch(fresh, monkeypatch, capsys):
    model, ids = _layer_inputs()
    monkeypatch.setenv("CC", "/nonexistent/cc")
    monkeypatch.setenv("MONET_EDIT_SPARSE_TOKENS", "0")
    monkeypatch.setenv("MONET_EDIT_KERNELS", "auto,routed")
    with torch.no_grad():
        model(ids), model(ids)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(lines) == 1 and "/nonexistent/cc" in lines[0] and "torch kernels" in lines[0]


@needs_compiler
def test_a_source_that_does_not_compile_is_unavailable_and_leaves_nothing(fresh, monkeypatch, tmp_path):
    bad = tmp_path / "gathered.c"
    bad.write_text(gathered.SOURCE.read_text() + "\nthis is not C;\n")
    monkeypatch.setattr(gathered, "SOURCE", bad)
    reason = gathered.unavailable()
    assert reason is not None and "could not build gathered.c" in reason and "\n" not in reason
    assert not list(fresh.iterdir())  # neither a build nor its temporary


@needs_compiler
def test_the_build_is_keyed_on_the_source(fresh, monkeypatch, tmp_path):
    gathered.library()
    first = {p.name for p in fresh.glob("gathered-*.so")}
    changed = tmp_path / "gathered.c"
    changed.write_text(gathered.SOURCE.read_text() + "\n/* changed */\n")
    monkeypatch.setattr(gathered, "SOURCE", changed)
    gathered.library.cache_clear()
    gathered.library()
    second = {p.name for p in fresh.glob("gathered-*.so")}
    assert len(first) == 1 and len(second) == 2 and first < second


@needs_compiler
def test_a_faulty_c_kernel_falls_back_with_one_warning(fresh, monkeypatch, capsys):
    model, ids = _layer_inputs(seed=3)
    real = gathered.up
    monkeypatch.setattr(gathered, "up", lambda *a: real(*a) + 1.0)  # wrong by 1
    monkeypatch.setenv("MONET_EDIT_SPARSE_TOKENS", "0")
    monkeypatch.setenv("MONET_EDIT_KERNELS", "auto,routed")
    with torch.no_grad():
        first, second = model(ids).logits, model(ids).logits
        monkeypatch.setenv("MONET_EDIT_KERNELS", "torch,routed")
        ref = model(ids).logits
    torch.testing.assert_close(first, ref, rtol=0, atol=1e-5 * float(ref.abs().max()))
    torch.testing.assert_close(second, ref, rtol=0, atol=1e-5 * float(ref.abs().max()))
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(lines) == 1 and lines[0].startswith("warning: C kernel routed.up") and "max error" in lines[0]
    assert [k[0] for k, ok in dispatch.VERDICTS.items() if not ok] == ["native.up"]


_BUILD = """
import sys
from monet_edit.kernels import gathered
sys.stdout.write(str(gathered.library()._name))
"""


@needs_compiler
def test_concurrent_first_builds_share_one_cache(tmp_path):
    env = {**os.environ, "MONET_EDIT_HOME": str(tmp_path / "home")}
    procs = [subprocess.Popen([sys.executable, "-c", _BUILD], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(4)]
    results = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _, err in results]
    names = {out for out, _ in results}
    kernels = tmp_path / "home" / "kernels"
    assert len(names) == 1 and Path(names.pop()).parent == kernels
    assert [p.name for p in kernels.iterdir() if not p.name.startswith("gathered-")] == []  # no temporaries


def _forked_up(args, queue):
    queue.put(gathered.up(*args).tolist())  # plain data: the child exits before the parent reads


@pytest.fixture
def python_threads(fresh, monkeypatch):
    """The build without OpenMP: its shares run on a Python thread pool."""
    monkeypatch.setattr(gathered, "TRY_OPENMP", False)
    assert gathered.library().monet_openmp() == 0


@needs_compiler
def test_the_build_without_openmp_matches_the_one_with(python_threads):
    shape = SHAPES[3]
    s = routed.side(_routing(shape["tokens"], shape["heads"], shape["experts"], shape["k"], 1))
    gen = torch.Generator().manual_seed(9)
    x = torch.randn(shape["tokens"], shape["d"], generator=gen)
    weight = torch.randn(shape["experts"] * 16, shape["d"], generator=gen)
    parts = [(torch.randn(s.tok.numel(), 16, generator=gen), torch.randn(shape["d"], shape["experts"] * 16))]
    brow, bweight = torch.randn(shape["experts"], shape["d"]), torch.rand(s.tok.numel())
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        plain = gathered.up(x, weight, torch.zeros(shape["experts"] * 16), s), gathered.down(parts, brow, bweight, s, 300)
        gathered.library.cache_clear()
        gathered.TRY_OPENMP = True  # restored by monkeypatch
        with_openmp = gathered.up(x, weight, torch.zeros(shape["experts"] * 16), s), gathered.down(parts, brow, bweight, s, 300)
    finally:
        torch.set_num_threads(before)
    assert gathered.library().monet_openmp() == 1  # gcc, as make install provides, has OpenMP
    for a, b in zip(plain, with_openmp, strict=True):
        assert torch.equal(a, b)  # same shares, same order of operations: bit for bit


@needs_compiler
def test_python_threads_work_after_a_fork(python_threads):
    """A thread pool made before a fork has no threads in the child; the child makes its own. (The
    OpenMP build, like torch's own OpenMP GEMMs, cannot run a parallel region in a forked child.)"""
    s = routed.side(_routing(40, 2, 9, 2, seed=6))
    gen = torch.Generator().manual_seed(6)
    args = (torch.randn(40, 33, generator=gen), torch.randn(9 * 4, 33, generator=gen), torch.zeros(9 * 4), s)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        parent = gathered.up(*args)  # the parent's pool exists now
        ctx = multiprocessing.get_context("fork")
        queue = ctx.Queue()
        child = ctx.Process(target=_forked_up, args=(args, queue))
        child.start()
        got = queue.get(timeout=120)
        child.join(timeout=120)
    finally:
        torch.set_num_threads(before)
    assert child.exitcode == 0
    assert torch.equal(torch.tensor(got), parent)


@needs_compiler
def test_an_unwritable_home_builds_in_a_private_temporary_directory(fresh, monkeypatch, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("MONET_EDIT_HOME", str(blocker / "home"))  # cannot be made: a file is in the way
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    private = tmp_path / "tmp" / f"monet-edit-kernels-{os.getuid()}"
    assert Path(gathered.library()._name).parent == private
    assert private.stat().st_mode & 0o777 == 0o700
    # a directory of that name that others may write to is never used
    gathered.library.cache_clear()
    private.chmod(0o777)
    chosen = Path(gathered.library()._name).parent
    assert chosen != private and chosen.parent == tmp_path / "tmp" and chosen.stat().st_mode & 0o777 == 0o700
