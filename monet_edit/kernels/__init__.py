"""Compute kernels of the Monet expert layer (routing, mixing, masking).

`reference` holds the pure-torch definitions; the Triton kernels (`triton_route`, `triton_mix`)
are checked against them, and `dispatch` picks one per call (Triton on CUDA, torch on CPU,
MONET_EDIT_KERNELS forces either). `sparse` is the few-token expert path. Triton is imported only
when a Triton kernel runs.
"""

from .dispatch import hd_mix, route, sparse_tokens, vd_mix
from .reference import MaskedPairs, VDMix, masked_pairs, routing_threshold
from .sparse import hd_sparse, vd_sparse

__all__ = ["MaskedPairs", "VDMix", "hd_mix", "hd_sparse", "masked_pairs", "route", "routing_threshold",
           "sparse_tokens", "vd_mix", "vd_sparse"]
