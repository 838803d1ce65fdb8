"""pass@k: the unbiased estimator of Chen et al. (2021), with bootstrap intervals over problems.

With n samples of a problem of which c pass, pass@k = 1 - C(n-c, k) / C(n, k): the chance that k
samples drawn without replacement from the n include a passing one. The benchmark's pass@k is the
mean over problems. Intervals resample problems (a problem's samples stay together) with the
evaluation's shared bootstrap (evaluation.bootstrap); before and after resample the same problems,
so the change has a paired interval.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from .. import bootstrap

KS = (1, 10, 100)


def ks_for(samples: int) -> list[int]:
    """The k of KS that `samples` per problem allow (k <= n)."""
    return [k for k in KS if k <= samples]


def pass_at_k(n: int, c: int, k: int) -> float:
    """1 - C(n-c, k) / C(n, k), as a product that neither overflows nor cancels."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n (n={n}, c={c}, k={k})")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def per_problem(n: int, correct: Sequence[int], k: int) -> list[float]:
    return [pass_at_k(n, c, k) for c in correct]


def summarise(n: int, before: Sequence[int], after: Sequence[int], *, seed: int = 0) -> dict:
    """pass@k of each side with its interval, and the change after - before with a paired one.

    before/after: passing samples per problem (the same problems, n samples each)."""
    import numpy as np

    if len(before) != len(after) or not before:
        raise ValueError(f"pass@k needs the same problems on both sides ({len(before)} vs {len(after)})")
    idx = bootstrap.Draws(seed).indices("humaneval", len(before))
    out: dict = {side: {"intervals": {}} for side in ("before", "after", "delta")}
    for k in ks_for(n):
        key = f"pass@{k}"
        b, a = np.asarray(per_problem(n, before, k)), np.asarray(per_problem(n, after, k))
        points = {"before": math.fsum(b) / b.size, "after": math.fsum(a) / a.size}
        points["delta"] = points["after"] - points["before"]
        draws = {"before": bootstrap.mean(b, idx), "after": bootstrap.mean(a, idx)}
        draws["delta"] = draws["after"] - draws["before"]
        for side, entry in out.items():
            entry[key] = points[side]
            entry["intervals"][key] = list(bootstrap.interval(draws[side]))
    return {**out, "confidence": bootstrap.LEVEL, "resamples": bootstrap.REPLICATES}
