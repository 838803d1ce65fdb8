"""Choose, per call, between the Triton kernels and the pure-torch reference.

`MONET_EDIT_KERNELS` = auto (default: Triton for CUDA tensors, torch elsewhere), triton (always
Triton; on CPU that needs `TRITON_INTERPRET=1`, which is how the parity tests run the kernels) or
torch (always the reference). The kernels are forward-only, so a call that autograd must see
(training) always takes the reference. Triton is imported only when a Triton path is taken.

`MONET_EDIT_SPARSE_TOKENS` (default 4): expert layers called with at most this many tokens (batch-1
generation) take the sparse path that reads only the active sub-experts' weights; 0 turns it off.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from types import ModuleType

import torch

from ..errors import UsageError
from . import reference

MODES = ("auto", "triton", "torch")
DEFAULT_SPARSE_TOKENS = 4


def mode() -> str:
    """The requested backend, validated (a bad value is a usage error naming the variable)."""
    value = os.environ.get("MONET_EDIT_KERNELS", "auto").strip().lower() or "auto"
    if value not in MODES:
        raise UsageError(f"MONET_EDIT_KERNELS={value!r} is not one of {', '.join(MODES)}")
    return value


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def use_triton(*tensors: torch.Tensor) -> bool:
    """True when this call should run the Triton kernels."""
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return False
    chosen = mode()
    if chosen == "torch":
        return False
    on_cuda = tensors[0].is_cuda
    if chosen == "auto":
        return on_cuda and triton_available()
    if not triton_available():
        raise UsageError("MONET_EDIT_KERNELS=triton but the triton package is not installed")
    if not on_cuda and not _interpreting():
        raise UsageError("MONET_EDIT_KERNELS=triton on CPU tensors needs TRITON_INTERPRET=1")
    return True


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


# ---- dispatched kernels (same signatures as reference) --------------------------------------

def route(z: torch.Tensor, running_mean: torch.Tensor, running_var: torch.Tensor, sigma: float,
          normed: torch.Tensor | None = None) -> torch.Tensor:
    """reference.route, fused in Triton for eval-mode routing (`normed` is the training path)."""
    if normed is None and use_triton(z):
        return triton_module("triton_route").route(z, running_mean, running_var, sigma)
    return reference.route(z, running_mean, running_var, sigma, normed)


def hd_mix(a: torch.Tensor, g1: torch.Tensor, g2: torch.Tensor, pairs: reference.MaskedPairs | None = None
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """reference.hd_mix, fused in Triton with the masked pairs folded in."""
    if use_triton(a, g1, g2):
        return triton_module("triton_mix").hd_mix(a, g1, g2, pairs)
    return reference.hd_mix(a, g1, g2, pairs)


def vd_mix(a1: torch.Tensor, a2: torch.Tensor, g1: torch.Tensor, g2: torch.Tensor,
           pairs: reference.MaskedPairs | None = None) -> reference.VDMix:
    """reference.vd_mix, fused in Triton with the masked pairs folded in."""
    if use_triton(a1, a2, g1, g2):
        return triton_module("triton_mix").vd_mix(a1, a2, g1, g2, pairs)
    return reference.vd_mix(a1, a2, g1, g2, pairs)
