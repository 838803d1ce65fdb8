"""pass@k: the unbiased estimator of Chen et al. (2021) with bootstrap intervals over problems.

With n samples of a problem of which c pass, pass@k = 1 - C(n-c, k) / C(n, k): the chance that k
samples drawn without replacement from the n include a passing one. The benchmark's pass@k is the
mean over problems. Intervals resample problems (the samples of a problem stay together), which
is the variation a different draw of problems would give; a paired resample gives the interval of
the edited model's change.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

KS = (1, 10, 100)
CONFIDENCE = 0.95
RESAMPLES = 2000


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


def bootstrap_means(values: Sequence[Sequence[float]], *, resamples: int = RESAMPLES, seed: int = 0):
    """[resamples, len(values)] means of each row of `values` over the same resampled problems."""
    import numpy as np

    table = np.asarray(values, dtype=np.float64)  # [rows, problems]
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, table.shape[1], size=(resamples, table.shape[1]))
    return table[:, picks].mean(axis=2).T


def interval(draws, confidence: float = CONFIDENCE) -> list[float]:
    import numpy as np

    tail = (1 - confidence) / 2 * 100
    lo, hi = np.percentile(draws, [tail, 100 - tail])
    return [float(lo), float(hi)]


def summarise(n: int, before: Sequence[int], after: Sequence[int] | None = None, *,
              resamples: int = RESAMPLES, seed: int = 0) -> dict:
    """pass@k per side with intervals, and the change after - before with a paired interval.

    before/after: passing samples per problem (same problems, n samples each)."""
    sides = {"before": before} if after is None else {"before": before, "after": after}
    out: dict = {side: {"intervals": {}} for side in sides}
    if after is not None:
        out["delta"] = {"intervals": {}}
    for k in ks_for(n):
        key = f"pass@{k}"
        rows = [per_problem(n, counts, k) for counts in sides.values()]
        draws = bootstrap_means(rows, resamples=resamples, seed=seed)
        for i, side in enumerate(sides):
            out[side][key] = math.fsum(rows[i]) / len(rows[i])
            out[side]["intervals"][key] = interval(draws[:, i])
        if after is not None:
            out["delta"][key] = out["after"][key] - out["before"][key]
            out["delta"]["intervals"][key] = interval(draws[:, 1] - draws[:, 0])
    out["confidence"] = CONFIDENCE
    out["resamples"] = resamples
    return out
