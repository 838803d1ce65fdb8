"""Confidence intervals by the bootstrap over units (documents, questions, prompts).

Units are resampled with replacement, the same draw for the base and the edited model (so a delta
is paired), independently per corpus; the interval is the 2.5th and 97.5th percentiles of the
statistic over REPLICATES draws. The draws are seeded, so results are reproducible.
"""

from __future__ import annotations

import numpy as np

REPLICATES = 2000
LEVEL = 0.95


class Draws:
    """Seeded resampling indices, one independent stream per named unit set (a corpus, a suite)."""

    def __init__(self, seed: int, replicates: int = REPLICATES) -> None:
        self.seed, self.replicates = seed, replicates

    def indices(self, name: str, n: int) -> np.ndarray:
        """[replicates, n] unit indices for `name` (the same for every call with this name and n)."""
        key = int.from_bytes(name.encode("utf-8")[:16].ljust(16, b"\0"), "little")
        rng = np.random.default_rng([self.seed, key % (1 << 63), n])
        return rng.integers(0, n, size=(self.replicates, n))


def ratio(num: np.ndarray, den: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Replicates of sum(num) / sum(den) over resampled units (nan where the sum of den is 0)."""
    top, bottom = num[idx].sum(1), den[idx].sum(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(bottom > 0, top / np.where(bottom > 0, bottom, 1), np.nan)


def mean(values: np.ndarray, idx: np.ndarray) -> np.ndarray:
    return values[idx].mean(1)


def interval(replicates: np.ndarray) -> tuple[float | None, float | None]:
    """(lo, hi) percentile interval; None when the statistic is undefined in most draws."""
    finite = replicates[np.isfinite(replicates)]
    if finite.size < 0.5 * replicates.size:
        return None, None
    tail = (1 - LEVEL) / 2 * 100
    lo, hi = np.percentile(finite, [tail, 100 - tail])
    return float(lo), float(hi)


def with_interval(out: dict, name: str, point: float | None, replicates: np.ndarray | None) -> None:
    """out[name] = point, out[name_lo], out[name_hi] = its interval."""
    out[name] = point
    lo, hi = (None, None) if replicates is None or point is None else interval(replicates)
    out[f"{name}_lo"], out[f"{name}_hi"] = lo, hi


def described(metrics: dict[str, str], with_ci: tuple[str, ...]) -> dict[str, str]:
    """Gate metric descriptions plus the _lo/_hi ends of the interval of each metric in `with_ci`."""
    out = dict(metrics)
    for name in with_ci:
        out[f"{name}_lo"] = f"lower end of the {LEVEL:.0%} bootstrap interval of {name}"
        out[f"{name}_hi"] = f"upper end of the {LEVEL:.0%} bootstrap interval of {name}"
    return out


