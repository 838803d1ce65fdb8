"""The dtype a model computes in on CPU when none is asked for: bf16 where the CPU multiplies bf16
natively (AVX-512 BF16 or AMX), fp32 elsewhere.

bf16 against fp32 on the packaged tiny model (8,192 held-out eval tokens each of en, de, python
and law; bench/precision.py repeats it) changed the loss by at most 3.4e-4 nats per token (KL
2e-4) and flipped 0.02% of the active-expert decisions on tiny v2; on v1 it moved the profile
statistic S by 0.08% (relative L1) and gave a German skew mask of 368 experts against fp32's 370
(Jaccard 0.98): negligible for profiling and eval, while a native bf16 GEMM runs about 4x faster
than fp32 (the expert layers then take the dense path: kernels.routed.CPU_LOW).
Without native support bf16 is emulated and far slower than fp32 (on the AVX2-only CPU this was
measured on, a bf16 GEMM ran 5 to 200 times slower), so fp32 stays the default there. BatchNorm
routing statistics are kept in fp32 in every case (load_model). `MONET_EDIT_CPU_DTYPE` = auto
(default), fp32 or bf16 overrides the choice.
"""

from __future__ import annotations

import os

import torch

from ..errors import UsageError

ENV = "MONET_EDIT_CPU_DTYPE"
CHOICES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}


def native_bf16() -> bool:
    """Whether this CPU has bf16 multiply instructions (torch's own probes; False if absent)."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)


def cpu_dtype() -> torch.dtype:
    """The default compute dtype on CPU (see the module docstring)."""
    value = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if value == "auto":
        return torch.bfloat16 if native_bf16() else torch.float32
    if value not in CHOICES:
        raise UsageError(f"{ENV}={value!r} is not one of auto, fp32, bf16")
    return CHOICES[value]


def name(dtype: torch.dtype) -> str:
    """'float32', 'bfloat16', ... as results files record it."""
    return str(dtype).removeprefix("torch.")
