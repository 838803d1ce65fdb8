"""Choose, per call, between the Triton kernels and the pure-torch reference, and the expert path.

`MONET_EDIT_KERNELS` is a comma-separated list of at most one backend and one expert path:
- backend `triton` (always Triton; on CPU that needs `TRITON_INTERPRET=1`, which is how the parity
  tests run the kernels), `native` (the routed path's grouped GEMMs in C, kernels.gathered, for
  fp32 on CPU; torch for everything else) or `torch` (always the reference); unset (or `auto`):
  Triton for CUDA tensors, the C grouped GEMMs for fp32 CPU ones where a C compiler builds them,
  torch elsewhere;
- expert path `dense` (every sub-expert, as the published implementation computes it) or `routed`
  (only the active (token, sub-expert) pairs, kernels.routed); unset: the cost model
  (routed.choose) decides per routing group from the active pairs it measures.
E.g. `MONET_EDIT_KERNELS=torch,dense` is the reference path everywhere. The kernels are forward-only,
so a call that autograd must see (training) always takes the reference and the dense path.

The Triton kernels have not yet run on a real GPU, and the C ones are compiled on the user's
machine by whatever compiler it has, so under `auto` each one is checked against its torch
reference on a small slice of its first call's inputs, once per process, kernel, shape family and
dtype; a kernel that fails to compile or differs prints one warning line and that family runs on
torch from then on. A forced `triton` or `native` is never second-guessed.

`MONET_EDIT_SPARSE_TOKENS` (default 4): expert layers called with at most this many tokens (batch-1
generation) take the sparse path that reads only the active sub-experts' weights; 0 turns it off.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from collections.abc import Callable
from types import ModuleType

import torch

from ..errors import UsageError
from . import gathered, reference, routed

BACKENDS = ("triton", "native", "torch")
PATHS = ("dense", "routed")
DEFAULT_SPARSE_TOKENS = 4
PROBE_TOKENS = 16  # tokens (or pairs, for the grouped GEMMs) a first-use check runs on
PROBE_TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 3e-2, torch.float16: 3e-3}  # relative to max |ref|


def _choices() -> tuple[str, str]:
    """(backend, expert path) requested by MONET_EDIT_KERNELS, each 'auto' when not named."""
    raw = os.environ.get("MONET_EDIT_KERNELS", "auto")
    backend = path = "auto"
    for token in (t.strip().lower() for t in raw.split(",")):
        if token in ("", "auto"):
            continue
        if token in BACKENDS and backend == "auto":
            backend = token
        elif token in PATHS and path == "auto":
            path = token
        else:
            raise UsageError(f"MONET_EDIT_KERNELS={raw!r}: expected at most one of {', '.join(BACKENDS)} and "
                             f"one of {', '.join(PATHS)}, comma-separated (or auto)")
    return backend, path


def mode() -> str:
    """The requested backend: auto, triton or torch (a bad value is a usage error naming the variable)."""
    return _choices()[0]


def expert_mode() -> str:
    """The requested expert path: auto, dense or routed."""
    return _choices()[1]


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def accelerated(t: torch.Tensor) -> bool:
    """Whether `auto` runs Triton for this tensor (CUDA); the fallback tests pretend otherwise."""
    return t.is_cuda


def _autograd(*tensors: torch.Tensor) -> bool:
    """Whether autograd must see this call (the kernels are forward-only)."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def use_triton(*tensors: torch.Tensor) -> bool:
    """True when this call should run the Triton kernels."""
    if _autograd(*tensors):
        return False
    chosen = mode()
    if chosen in ("torch", "native"):
        return False
    if chosen == "auto":
        return accelerated(tensors[0]) and triton_available()
    if not triton_available():
        raise UsageError("MONET_EDIT_KERNELS=triton but the triton package is not installed")
    if not tensors[0].is_cuda and not _interpreting():
        raise UsageError("MONET_EDIT_KERNELS=triton on CPU tensors needs TRITON_INTERPRET=1")
    return True


def use_native(*tensors: torch.Tensor) -> bool:
    """True when the routed path's grouped GEMMs should run in C for these tensors (fp32 on CPU)."""
    if _autograd(*tensors):
        return False
    chosen = mode()
    if chosen in ("torch", "triton") or not gathered.supports(*tensors):
        return False
    reason = gathered.unavailable()
    if reason is not None and chosen == "native":
        raise UsageError(f"MONET_EDIT_KERNELS=native but the C kernels are unavailable: {reason}")
    if reason is not None and gathered.compiler() is not None:
        _warn_once(f"the C kernels are unavailable ({reason}); the routed path runs its torch kernels")
    return reason is None


def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def triton_module(name: str) -> ModuleType:
    """Import monet_edit.kernels.<name> (a triton_* module) on first use."""
    return importlib.import_module(f"{__package__}.{name}")


def sparse_tokens() -> int:
    """The largest token count that takes the sparse expert path (MONET_EDIT_SPARSE_TOKENS)."""
    value = os.environ.get("MONET_EDIT_SPARSE_TOKENS", str(DEFAULT_SPARSE_TOKENS))
    try:
        tokens = int(value)
    except ValueError:
        raise UsageError(f"MONET_EDIT_SPARSE_TOKENS={value!r} is not an integer") from None
    if tokens < 0:
        raise UsageError(f"MONET_EDIT_SPARSE_TOKENS={value!r} is negative")
    return tokens


# ---- first-use checks -------------------------------------------------------------------

VERDICTS: dict[tuple, bool] = {}  # (kernel, shape family..., dtype) -> the Triton kernel passed its check


def _tensors(out) -> list[torch.Tensor]:
    return [out] if isinstance(out, torch.Tensor) else [t for t in out if isinstance(t, torch.Tensor)]


def _differs(fast, ref, dtype: torch.dtype) -> str | None:
    """Why `fast` is not `ref` within the dtype's tolerance, or None when it is."""
    for got, want in zip(_tensors(fast), _tensors(ref), strict=True):
        if got.shape != want.shape:
            return f"shape {tuple(got.shape)} instead of {tuple(want.shape)}"
        got, want = got.float(), want.float()
        scale = float(want.abs().max()) if want.numel() else 0.0
        error = float((got - want).abs().max()) if want.numel() else 0.0
        if not error <= PROBE_TOLERANCE.get(dtype, 3e-2) * max(scale, 1e-6):  # also catches NaN
            return f"max error {error:.3g} on values up to {scale:.3g}"
    return None


def _warn(line: str) -> None:
    from ..infra.console import err

    err.print(f"warning: {line}", markup=False, soft_wrap=True)


_WARNED: set[str] = set()


def _warn_once(line: str) -> None:
    if line not in _WARNED:
        _WARNED.add(line)
        _warn(line)


def _verified(name: str, key: tuple, fast: Callable, ref: Callable, probe: Callable[[], tuple]) -> bool:
    """Run the first-use check of one kernel family (see the module docstring); True when it passed."""
    if key in VERDICTS:
        return VERDICTS[key]
    dtype = key[-1]
    try:
        args = probe()
        reason = _differs(fast(*args), ref(*args), dtype)
    except Exception as exc:  # a compile or launch failure of an unproven kernel: torch takes over
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'failed'}"
    VERDICTS[key] = reason is None
    if reason is not None:
        family = ", ".join(str(k).removeprefix("torch.") for k in key[1:])
        kind = "C" if key[0].startswith("native.") else "Triton"
        _warn(f"{kind} kernel {name} ({family}) failed its first-use check against torch ({reason}); "
              "using the torch kernel for it")
    return VERDICTS[key]


def _pick(name: str, key: tuple, fast: Callable, ref: Callable, probe: Callable[[], tuple]) -> Callable:
    """`fast` when forced or when it passed (or passes now) its first-use check, else `ref`."""
    if mode() in ("triton", "native") or _verified(name, key, fast, ref, probe):
        return fast
    return ref


def _head(pairs: reference.MaskedPairs | None, n: int) -> reference.MaskedPairs | None:
    return None if pairs is None else pairs.head(n)


def _prefix(s: routed.Side, n: int) -> routed.Side:
    """The first n pairs of a side (still grouped by sub-expert), for a first-use check."""
    counts, left = [], n
    for c in s.counts:
        counts.append(min(c, left))
        left -= counts[-1]
    return routed.Side(s.tok[:n], s.expert[:n], s.gate[:n], counts)


# ---- dispatched kernels (same signatures as reference / routed) ----------------------------

def route(z: torch.Tensor, running_mean: torch.Tensor, running_var: torch.Tensor, sigma: float,
          normed: torch.Tensor | None = None) -> torch.Tensor:
    """reference.route, fused in Triton for eval-mode routing (`normed` is the training path)."""
    if normed is None and use_triton(z):
        fast = _pick("route", ("route", *z.shape[1:], z.dtype), triton_module("triton_route").route,
                     reference.route, lambda: (z[:PROBE_TOKENS], running_mean, running_var, sigma))
        return fast(z, running_mean, running_var, sigma)
    return reference.route(z, running_mean, running_var, sigma, normed)


def hd_mix(a: torch.Tensor, g1: torch.Tensor, g2: torch.Tensor, pairs: reference.MaskedPairs | None = None
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """reference.hd_mix, fused in Triton with the masked pairs folded in."""
    if use_triton(a, g1, g2):
        key = ("hd_mix", *g1.shape[1:], *a.shape[2:], pairs is not None, a.dtype)
        n = PROBE_TOKENS
        fast = _pick("hd_mix", key, triton_module("triton_mix").hd_mix, reference.hd_mix,
                     lambda: (a[:n], g1[:n], g2[:n], _head(pairs, n)))
        return fast(a, g1, g2, pairs)
    return reference.hd_mix(a, g1, g2, pairs)


def vd_mix(a1: torch.Tensor, a2: torch.Tensor, g1: torch.Tensor, g2: torch.Tensor,
           pairs: reference.MaskedPairs | None = None) -> reference.VDMix:
    """reference.vd_mix, fused in Triton with the masked pairs folded in."""
    if use_triton(a1, a2, g1, g2):
        key = ("vd_mix", *g1.shape[1:], *a1.shape[2:], pairs is not None, a1.dtype)
        n = PROBE_TOKENS
        fast = _pick("vd_mix", key, triton_module("triton_mix").vd_mix, reference.vd_mix,
                     lambda: (a1[:n], a2[:n], g1[:n], g2[:n], _head(pairs, n)))
        return fast(a1, a2, g1, g2, pairs)
    return reference.vd_mix(a1, a2, g1, g2, pairs)


def _grouped(backend: str) -> tuple[Callable, Callable]:
    """The grouped GEMMs (up, down) of one backend ("triton" or "native"), each behind its
    first-use check (kernel key prefix: "routed." for Triton, "native." for C)."""
    kernels = triton_module("triton_routed") if backend == "triton" else gathered
    prefix = "routed." if backend == "triton" else "native."

    def up(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, s: routed.Side) -> torch.Tensor:
        key = (prefix + "up", weight.shape[0] // len(s.counts), x.shape[1], x.dtype)
        fast = _pick("routed.up", key, kernels.up, routed.up, lambda: (x, weight, bias, _prefix(s, PROBE_TOKENS)))
        return fast(x, weight, bias, s)

    def down(terms: list, brow: torch.Tensor, bweight: torch.Tensor, s: routed.Side, tokens: int) -> torch.Tensor:
        slots, weight = terms[0]
        key = (prefix + "down", slots.shape[1], weight.shape[0], len(terms), slots.dtype)
        n = PROBE_TOKENS
        fast = _pick("routed.down", key, kernels.down, routed.down,
                     lambda: ([(t[:n], w) for t, w in terms], brow, bweight[:n], _prefix(s, n), tokens))
        return fast(terms, brow, bweight, s, tokens)

    return up, down


def _routed_ops(x: torch.Tensor, weight: torch.Tensor) -> dict:
    for backend, chosen in (("triton", use_triton), ("native", use_native)):
        if chosen(x, weight):
            up, down = _grouped(backend)
            return dict(up=up, down=down)
    return {}


def hd_routed(experts: torch.nn.Module, x: torch.Tensor, plan: routed.Plan) -> torch.Tensor:
    """routed.hd_routed with its grouped GEMMs in Triton or C where those run."""
    return routed.hd_routed(experts, x, plan, **_routed_ops(x, experts.u.weight))


def vd_routed(experts: torch.nn.Module, x: torch.Tensor, plan: routed.Plan) -> torch.Tensor:
    """routed.vd_routed with its grouped GEMMs in Triton or C where those run."""
    return routed.vd_routed(experts, x, plan, **_routed_ops(x, experts.u1.weight))


def _failed(prefix: str) -> bool:
    """Whether a grouped GEMM of this backend failed its first-use check in this process."""
    return any(not ok for k, ok in VERDICTS.items() if k[0].startswith(prefix))


def expert_plan(g1: torch.Tensor, g2: torch.Tensor, pairs: reference.MaskedPairs | None, width: int,
                hidden: int, grad: bool, decompose: str = "horizontal", dtype: torch.dtype = torch.float32
                ) -> routed.Plan | None:
    """routed.expert_plan, with MONET_EDIT_KERNELS's path forced, the C kernels' cost model where they
    run and the Triton one on CUDA."""
    chosen = expert_mode()
    if grad or g1.shape[0] == 0 or chosen == "dense":
        return None
    if chosen == "routed":
        return routed.plan(g1, g2, pairs)
    if not accelerated(g1):
        if dtype == torch.float32 and mode() in ("auto", "native") and not _failed("native."):
            # the C kernels' cost first: where even they lose, nothing needs building
            plan = routed.expert_plan(g1, g2, pairs, width, hidden, grad, decompose, dtype, routed.CPU_NATIVE)
            if plan is None or use_native(g1):
                return plan
        return routed.expert_plan(g1, g2, pairs, width, hidden, grad, decompose, dtype)
    if not use_triton(g1) or _failed("routed."):
        return None  # the torch grouped GEMMs loop over sub-experts in Python: far slower than cuBLAS
    counts = routed.active_counts(g1, g2)
    if not routed.choose(g1.shape[0], *counts, g1.shape[-1], width, hidden, decompose, routed.CUDA_TRITON):
        return None
    return routed.plan(g1, g2, pairs)
