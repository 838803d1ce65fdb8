"""The routed path's grouped GEMMs in C (gathered.c), for fp32 on CPU.

`up` and `down` have the signatures of routed.up and routed.down, their pure-torch references
(tests/test_gathered.py holds them to those). The torch versions copy every pair's hidden row
before a small GEMM and scatter every output row after one; these read and update the rows in
place, which at the 1.4B layer shape is what the routed layer's time went to.

The C file is compiled on first use with the system C compiler ($CC, else cc, gcc or clang) into
<monet-edit home>/kernels, named by a hash of the source, the compiler and its flags, so a changed
source or another machine's compiler never loads a stale build; several processes may compile at
once (each writes a temporary and renames it over the same name). Without a compiler, or when the
build fails, `available()` is False with the reason in `unavailable()`, and the dispatcher uses
the torch kernels. The work of one call is cut into torch.get_num_threads() disjoint shares
(sub-experts for `up`, output columns for `down`). Built with OpenMP (-fopenmp), the shares run
on torch's own OpenMP threads: the runtime is loaded once per process by its soname, so no second
pool competes with torch's spinning workers for the cores (on 2 cores, a Python thread pool for
the shares lost a third of the routed layer's time to them). A compiler without OpenMP gives a
build whose shares run on Python threads (ctypes releases the GIL).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import itertools
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from ..infra.paths import home
from . import routed

SOURCE = Path(__file__).with_name("gathered.c")
# Build with OpenMP where the compiler has it. (The tests also build without, the other path.)
TRY_OPENMP = True
_P, _I = ctypes.c_void_p, ctypes.c_int64


class Unavailable(RuntimeError):
    """The C kernels cannot be built or loaded here (one line saying why)."""


def compiler() -> str | None:
    """The C compiler to build with: $CC, else the first of cc, gcc, clang on PATH."""
    chosen = os.environ.get("CC")
    if chosen:
        return shutil.which(chosen) or chosen
    return next((path for name in ("cc", "gcc", "clang") if (path := shutil.which(name))), None)


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    line = next((line for line in text.splitlines() if line.startswith("flags")), "")
    return set(line.partition(":")[2].split())


def flags(openmp: bool = True) -> list[str]:
    """Optimised for this CPU. -march=native alone can miss AVX-512 where the compiler predates the
    CPU (GCC 12 takes a Zen 4 for a Zen 3), so the AVX-512 units the CPU reports are named too.
    -fopenmp links the OpenMP runtime by soname (libgomp.so.1), the one torch has loaded already."""
    out = ["-O3", "-march=native", "-shared", "-fPIC", "-fno-math-errno", *(["-fopenmp"] if openmp else [])]
    if platform.machine() in ("x86_64", "AMD64") and {"avx512f", "avx512vl", "avx512bw", "avx512dq"} <= _cpu_flags():
        out += ["-mavx512f", "-mavx512vl", "-mavx512bw", "-mavx512dq", "-mprefer-vector-width=512"]
    return out


def _version(cc: str) -> str:
    try:
        return subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise Unavailable(f"C compiler {cc} does not run ({exc})") from None


def _build(cc: str, target: Path, openmp: bool) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        done = subprocess.run([cc, *flags(openmp), "-o", tmp, str(SOURCE)], capture_output=True, text=True,
                              timeout=300)
        if done.returncode != 0:
            first = next((line for line in done.stderr.splitlines() if "error" in line), done.stderr.strip()[:200])
            raise Unavailable(f"{cc} could not build {SOURCE.name}: {first}")
        os.replace(tmp, target)  # atomic: a concurrent build of the same key writes the same bytes
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _writable_dir() -> Path:
    """<home>/kernels, else a private directory under the system's temporary one (never a shared
    one that another user could have planted a library in)."""
    base = home() / "kernels"
    try:
        base.mkdir(parents=True, exist_ok=True)
        if os.access(base, os.W_OK):
            return base
    except OSError:
        pass
    uid = os.getuid() if hasattr(os, "getuid") else 0
    private = Path(tempfile.gettempdir()) / f"monet-edit-kernels-{uid}"
    try:
        private.mkdir(mode=0o700, exist_ok=True)
        st = private.stat()
        if st.st_uid == uid and not st.st_mode & 0o022:
            return private
    except OSError:
        pass
    return Path(tempfile.mkdtemp(prefix="monet-edit-kernels-"))


def _load(cc: str, version: str, openmp: bool) -> ctypes.CDLL:
    key = hashlib.sha256(SOURCE.read_bytes() + version.encode() + " ".join(flags(openmp)).encode()
                         + platform.machine().encode()).hexdigest()[:16]
    target = _writable_dir() / f"gathered-{key}.so"
    if not target.exists():
        _build(cc, target, openmp)
    try:
        return ctypes.CDLL(str(target))
    except OSError as exc:
        raise Unavailable(f"cannot load {target}: {exc}") from None


@functools.cache
def library() -> ctypes.CDLL:
    """The compiled kernels (built now if this source, compiler and flags have no build yet): with
    OpenMP where the compiler has it, else without (the shares then run on Python threads)."""
    cc = compiler()
    if cc is None:
        raise Unavailable("no C compiler (set CC, or install cc, gcc or clang)")
    version = _version(cc)
    lib = None
    if TRY_OPENMP:
        try:
            lib = _load(cc, version, openmp=True)
        except Unavailable:  # e.g. Apple's clang, which has no -fopenmp
            pass
    if lib is None:
        lib = _load(cc, version, openmp=False)
    lib.monet_up.argtypes = [_P, _I, _I, _P, _P, _I, _P, _P, _P, _P, _I, _P, _P]
    lib.monet_up.restype = None
    lib.monet_down.argtypes = [ctypes.c_int, _P, _P, _P, _I, _P, _P, _I, _I, _P, _P, _I, _P]
    lib.monet_down.restype = None
    for name in ("monet_up_chunk", "monet_lanes", "monet_down_block", "monet_openmp"):
        getattr(lib, name).restype = _I
    return lib


def unavailable() -> str | None:
    """Why the C kernels cannot run here, or None when they can."""
    try:
        library()
    except (Unavailable, OSError) as exc:
        return str(exc)
    return None


def available() -> bool:
    return unavailable() is None


def supports(*tensors: torch.Tensor) -> bool:
    """The kernels are fp32 and CPU-only."""
    return all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors)


# ---- threads -----------------------------------------------------------------------------

_pool: tuple[int, int, ThreadPoolExecutor] | None = None  # (pid, workers, pool)
_pool_lock = threading.Lock()


def _pool_for(workers: int) -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:  # a pool made before a fork has no threads in the child: make a new one there
        if _pool is None or _pool[0] != os.getpid() or _pool[1] < workers:
            _pool = (os.getpid(), workers, ThreadPoolExecutor(workers, thread_name_prefix="monet-gathered"))
        return _pool[2]


def _run(kernel: Callable[..., None], args: tuple, bounds: list[int], buffers: list[list[torch.Tensor]]) -> None:
    """kernel(*args, bounds, shares, *per-share buffer pointers): every share in one call on the
    OpenMP threads, or without OpenMP one call per share on Python threads (ctypes releases the GIL)."""
    def call(first: int, last: int) -> None:
        cuts = (_I * (last - first + 1))(*bounds[first:last + 1])
        per = [(_P * (last - first))(*(b.data_ptr() for b in kind[first:last])) for kind in buffers]
        kernel(*args, cuts, last - first, *per)

    shares = len(bounds) - 1
    if shares == 1 or library().monet_openmp():
        call(0, shares)
        return
    pool = _pool_for(shares - 1)
    futures = [pool.submit(call, i, i + 1) for i in range(1, shares)]
    call(0, 1)
    for future in futures:
        future.result()


def _workers(work: int) -> int:
    return max(1, min(torch.get_num_threads(), work))


def _offsets(s: routed.Side) -> torch.Tensor:
    return torch.tensor([0, *s.counts], dtype=torch.int64).cumsum(0)


def _expert_shares(start: list[int], shares: int) -> list[int]:
    """Cuts of contiguous sub-expert ranges with about equal pairs each (none empty)."""
    experts, total = len(start) - 1, start[-1]
    cuts, e = [0], 0
    for i in range(1, shares):
        while e < experts and start[e] < total * i / shares:
            e += 1
        cuts.append(e)
    cuts.append(experts)
    return [cuts[0], *(b for a, b in itertools.pairwise(cuts) if b > a)]


# ---- the kernels -------------------------------------------------------------------------

def up(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, s: routed.Side) -> torch.Tensor:
    """routed.up: relu2(U_e x_n + c_e) for every pair (n, e) of `s`: [P, width]."""
    lib = library()
    experts = len(s.counts)
    width = weight.shape[0] // experts
    x, weight, bias = x.contiguous(), weight.contiguous(), bias.contiguous()
    tok = s.tok.contiguous()
    start = _offsets(s)
    out = x.new_empty(tok.numel(), width)
    if out.numel() == 0:
        return out
    lanes, chunk = lib.monet_lanes(), lib.monet_up_chunk()
    counts = start.tolist()
    bounds = _expert_shares(counts, _workers(experts))
    widest = [max(b - a for a, b in itertools.pairwise(counts[e0:e1 + 1])) for e0, e1 in itertools.pairwise(bounds)]
    scratch = [x.new_empty(max(w, 1) * width * lanes) for w in widest]
    pack = [x.new_empty(width * chunk) for _ in widest]
    _run(lib.monet_up, (x.data_ptr(), x.shape[1], x.stride(0), weight.data_ptr(), bias.data_ptr(), width,
                        tok.data_ptr(), start.data_ptr(), out.data_ptr()), bounds, [scratch, pack])
    return out


def down(terms: list[tuple[torch.Tensor, torch.Tensor]], brow: torch.Tensor, bweight: torch.Tensor,
         s: routed.Side, tokens: int) -> torch.Tensor:
    """routed.down: y[n] = sum over the pairs (n, e) of `s` of sum_t W_t[:, e] slots_t[p] + bweight[p] brow[e]."""
    lib = library()
    experts = len(s.counts)
    dout = brow.shape[1]
    parts = [(slots.contiguous(), routed.expert_major(w, experts)) for slots, w in terms]
    parts.append((bweight.to(torch.float32).contiguous(), brow.to(torch.float32).contiguous()))
    slots = (_P * len(parts))(*(p.data_ptr() for p, _ in parts))
    weights = (_P * len(parts))(*(w.data_ptr() for _, w in parts))
    widths = (_I * len(parts))(*(p.shape[1] if p.dim() > 1 else 1 for p, _ in parts))
    tok = s.tok.contiguous()
    start = _offsets(s)
    y = brow.new_empty(tokens, dout, dtype=torch.float32)
    lanes = lib.monet_lanes()
    shares = _workers(max(1, dout // lanes))
    cols = sorted({min(dout, round(dout * i / shares / lanes) * lanes) for i in range(shares)} | {dout})
    packs = [y.new_empty(sum(widths) * lib.monet_down_block()) for _ in cols[1:]]
    _run(lib.monet_down, (len(parts), slots, widths, weights, dout, tok.data_ptr(), start.data_ptr(), experts,
                          tokens, y.data_ptr()), cols, [packs])
    return y
