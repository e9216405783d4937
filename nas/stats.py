"""Rank statistics: how well one score (a proxy) orders architectures the way a reference does.

A fidelity rung is only worth its cost if it ranks candidates like the training it stands in for, so
``nas.calibrate`` and the benchmarks measure each rung with these. Pure numpy (no scipy): the project
keeps its dependencies short, and every statistic here is a few lines of its textbook definition.

- ``kendall_tau_b``: Kendall (1945) tau-b, (concordant - discordant) / sqrt(untied-in-x * untied-in-y pairs).
  O(n^2) pairs, fine up to n of about 1000 (the architectures one calibration trains).
- ``spearman_rho``: Pearson's correlation of the average ranks (ties share the mean of their ranks).
- ``top_k_overlap``: of the k best by the score, how many are among the k best by the reference.
- ``bootstrap_interval``: a percentile bootstrap over architectures (Efron & Tibshirani 1993, ch. 13):
  the spread of a statistic when the architectures themselves are a sample.
- ``permutation_p``: one-sided permutation test of "no positive association", with the +1 correction of
  Phipson & Smyth (2010) so that a p-value is never 0.

Higher is better in both the score and the reference. A statistic that is undefined (fewer than two
architectures, a constant input) is NaN, not an error: a calibration can then say "no ranking power".
NaN *inputs* are an error, because ranking them is meaningless; +-inf are ordered like any number
(NASWOT gives -inf to a network that maps two images to the same code).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from .errors import OpmixError

__all__ = ["kendall_tau_b", "spearman_rho", "top_k_overlap", "bootstrap_interval", "permutation_p"]

Stat = Callable[[np.ndarray, np.ndarray], float]


def _pair(x, y) -> tuple[np.ndarray, np.ndarray]:
    """Two equally long 1-D float arrays without NaN; a ValueError that says which rule was broken."""
    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if a.ndim != 1 or b.ndim != 1 or a.shape != b.shape:
        raise OpmixError(f"expected two 1-D sequences of equal length, got shapes {a.shape} and {b.shape}")
    if np.isnan(a).any() or np.isnan(b).any():
        raise OpmixError("the inputs hold NaN; drop those architectures (or give them -inf) before ranking")
    return a, b


def _pair_signs(a: np.ndarray) -> np.ndarray:
    """sign(a[i] - a[j]) for the pairs i < j, by comparison so that inf - inf ties instead of giving NaN."""
    i, j = np.triu_indices(len(a), k=1)
    return (a[i] > a[j]).astype(np.int8) - (a[i] < a[j]).astype(np.int8)


def kendall_tau_b(x, y) -> float:
    """Kendall's tau-b: sum over pairs of sign(dx) * sign(dy), over sqrt(#pairs untied in x * #untied in y).

    It is the tie-aware form (a pair tied in either list is neither concordant nor discordant, and the
    denominator counts only the untied pairs), so a proxy whose accuracies tie on a small validation set
    is not penalized for the ties themselves. NaN for n < 2 or a constant input.
    """
    a, b = _pair(x, y)
    sa, sb = _pair_signs(a), _pair_signs(b)
    untied_a, untied_b = int(np.count_nonzero(sa)), int(np.count_nonzero(sb))
    if untied_a == 0 or untied_b == 0:
        return float("nan")
    s = int(np.dot(sa.astype(np.int64), sb.astype(np.int64)))
    return s / float(np.sqrt(float(untied_a) * float(untied_b)))


def _average_ranks(x) -> np.ndarray:
    """Ranks 1..n of ``x`` (ascending), tied values sharing the mean of the ranks they span."""
    a = np.asarray(x, dtype=float)
    order = np.argsort(a, kind="stable")
    s = a[order]
    # start of each run of equal values, plus the end; `!=` keeps inf == inf in one run
    edges = np.flatnonzero(np.r_[True, s[1:] != s[:-1], True])
    counts = np.diff(edges)
    ranks = np.empty(len(a))
    ranks[order] = np.repeat(edges[:-1] + (counts + 1) / 2, counts)
    return ranks


def spearman_rho(x, y) -> float:
    """Spearman's rho: Pearson's correlation of the average ranks. NaN for n < 2 or a constant input."""
    a, b = _pair(x, y)
    if len(a) < 2:
        return float("nan")
    ra, rb = _average_ranks(a), _average_ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = float(np.sqrt(np.dot(ra, ra) * np.dot(rb, rb)))
    return float(np.dot(ra, rb)) / den if den > 0 else float("nan")


def top_k_overlap(score, reference, k: int) -> int:
    """How many of the ``k`` highest by ``score`` are also among the ``k`` highest by ``reference``.

    It asks what a search that keeps its top k would actually keep. Ties at the k-th place are broken by
    position (first listed wins), so list architectures in an order unrelated to either score.
    """
    a, b = _pair(score, reference)
    if not 1 <= k <= len(a):
        raise OpmixError(f"k={k!r} must be between 1 and the number of architectures ({len(a)})")
    top_a = np.argsort(-a, kind="stable")[:k]
    top_b = np.argsort(-b, kind="stable")[:k]
    return int(len(np.intersect1d(top_a, top_b)))


def bootstrap_interval(stat: Stat, x, y, *, level: float = 0.90, resamples: int = 2000,
                       seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of ``stat(x, y)``, resampling architectures (pairs) with replacement.

    With ten or twenty architectures a tau of 0.4 can be noise; the interval says how much. Resamples
    where the statistic is undefined (all drawn pairs tied) are skipped; (nan, nan) if all of them are.
    """
    a, b = _pair(x, y)
    if not 0 < level < 1:
        raise OpmixError(f"level={level!r} must be in (0, 1), e.g. 0.90 for a 90 % interval")
    if resamples < 1:
        raise OpmixError(f"resamples={resamples!r} must be at least 1")
    if len(a) == 0:
        return float("nan"), float("nan")
    idx = np.random.default_rng(seed).integers(0, len(a), size=(resamples, len(a)))
    values = np.array([stat(a[i], b[i]) for i in idx], dtype=float)
    values = values[~np.isnan(values)]
    if len(values) == 0:
        return float("nan"), float("nan")
    tail = (1 - level) / 2
    lo, hi = np.quantile(values, [tail, 1 - tail])
    return float(lo), float(hi)


def permutation_p(x, y, stat: Stat = kendall_tau_b, resamples: int = 2000, seed: int = 0) -> float:
    """One-sided p-value of ``stat(x, y)`` under "y is unrelated to x": (1 + #{stat(x, perm(y)) >= observed})
    / (1 + resamples). Small means the ranking is unlikely to be luck. NaN when the statistic is undefined.
    """
    a, b = _pair(x, y)
    observed = stat(a, b)
    if np.isnan(observed):
        return float("nan")
    rng = np.random.default_rng(seed)
    slack = 1e-12 * max(1.0, abs(observed))  # a permutation that ties the observed value counts as >=
    hits = sum(stat(a, rng.permutation(b)) >= observed - slack for _ in range(resamples))
    return (1 + hits) / (1 + resamples)
