"""Compute kernels of the Monet expert layer (routing, mixing, masking, routing-sparse experts).

`reference` holds the pure-torch definitions and `routed` the pure-torch routing-sparse layer; the
Triton kernels (`triton_route`, `triton_mix`, `triton_routed`) and the C grouped GEMMs of the routed
layer (`gathered`: gathered.c, compiled on first use) are checked against them, and `dispatch`
picks one per call (Triton on CUDA, C for fp32 on CPU where a compiler builds it, else torch;
MONET_EDIT_KERNELS forces any) and the expert path (dense or routed, by a cost model). `sparse` is
the few-token expert path. Triton is imported only when a Triton kernel runs.
"""

from .dispatch import expert_plan, hd_mix, hd_routed, route, sparse_tokens, vd_mix, vd_routed
from .reference import MaskedPairs, VDMix, masked_pairs, routing_threshold
from .routed import Plan
from .sparse import hd_sparse, vd_sparse

__all__ = ["MaskedPairs", "Plan", "VDMix", "expert_plan", "hd_mix", "hd_routed", "hd_sparse", "masked_pairs",
           "route", "routing_threshold", "sparse_tokens", "vd_mix", "vd_routed", "vd_sparse"]
