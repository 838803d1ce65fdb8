"""A model skeleton whose parameters are on the meta device, for loading weights into or reading
names and shapes from.

Built like accelerate's empty-weights context: each parameter moves to 'meta' as its layer
registers it, and the layers' weight initialisers do not run. Building under
`torch.device("meta")` instead sends the initialisers and the rotary table through torch's
reference decompositions, whose first use imports torch._dynamo: about 2.5 s of every command's
start-up, for values that are replaced anyway. Buffers (rotary table, BatchNorm statistics) are
small and built on the CPU.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn

INITIALISERS = ("normal_", "uniform_", "kaiming_uniform_", "kaiming_normal_", "trunc_normal_", "xavier_uniform_",
                "xavier_normal_", "zeros_", "ones_", "constant_")


@contextlib.contextmanager
def _empty_parameters() -> Iterator[None]:
    saved_init = {name: getattr(nn.init, name) for name in INITIALISERS}
    register = nn.Module.register_parameter

    def on_meta(module: nn.Module, name: str, param) -> None:
        register(module, name, param)
        if param is not None:
            kept = module._parameters[name]
            module._parameters[name] = nn.Parameter(kept.to("meta"), requires_grad=kept.requires_grad)

    try:
        for name in INITIALISERS:
            setattr(nn.init, name, lambda tensor, *_a, **_k: tensor)
        nn.Module.register_parameter = on_meta
        yield
    finally:
        nn.Module.register_parameter = register
        for name, fn in saved_init.items():
            setattr(nn.init, name, fn)


def skeleton(config):
    """MonetForCausalLM(config) with every parameter on 'meta' (no memory, no values)."""
    from .monet import MonetForCausalLM

    with _empty_parameters():
        return MonetForCausalLM(config)
