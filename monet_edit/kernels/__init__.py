"""Compute kernels of the Monet expert layer (routing, mixing, masking).

`reference` holds the pure-torch definitions; accelerated versions are checked against them.
"""

from .reference import MaskedPairs, VDMix, hd_mix, masked_pairs, route, routing_threshold, vd_mix

__all__ = ["MaskedPairs", "VDMix", "hd_mix", "masked_pairs", "route", "routing_threshold", "vd_mix"]
