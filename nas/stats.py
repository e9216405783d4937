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
- ``bootstrap_difference``: the same bootstrap of the difference of one statistic for two scores against one
  reference, both computed on each resample: "does the proxy rank better than FLOPs" as one interval.
- ``permutation_p``: one-sided permutation test of "no positive association", with the +1 correction of
  Phipson & Smyth (2010) so that a p-value is never 0.

Noise of an accuracy difference (the pick of a search, ``nas.pareto``):

- ``pooled_sd``: the pooled standard deviation of several groups (candidates, each trained from a few
  seeds), sqrt(sum of squared deviations from each group's mean / sum of (n_i - 1)); with equal group sizes
  it is the root mean square of the groups' sds.
- ``paired_difference_se``: the standard error, over the sample of validation images, of the difference of
  two networks' accuracies on the *same* images, from their per-image disagreement (McNemar 1947).
- ``binomial_difference_se``: the same for two accuracies measured on independent images; the fallback
  when per-image results are not recorded, and larger than the paired one for networks that agree.
- ``pack_bits`` / ``unpack_bits``: per-image correctness as a hex string, the form a run record keeps.
- ``quantile``: the q-quantile of a list, linearly interpolated between order statistics (numpy's default),
  in plain Python for the latency timings and the space's FLOPs summary.

Higher is better in both the score and the reference. A statistic that is undefined (fewer than two
architectures, a constant input) is NaN, not an error: a calibration can then say "no ranking power".
NaN *inputs* are an error, because ranking them is meaningless; +-inf are ordered like any number
(NASWOT gives -inf to a network that maps two images to the same code).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from .errors import OpmixError

__all__ = ["kendall_tau_b", "spearman_rho", "top_k_overlap", "bootstrap_interval", "bootstrap_difference",
           "permutation_p", "pooled_sd", "paired_difference_se", "binomial_difference_se", "pack_bits",
           "unpack_bits"]

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


def _bootstrap(values_of: Callable[[np.ndarray], float], n: int, level: float, resamples: int,
               seed: int) -> tuple[float, float]:
    """Percentile interval of ``values_of(idx)`` over ``resamples`` draws of ``n`` indices with replacement;
    undefined (NaN) resamples are skipped, (nan, nan) if all of them are. The draws depend only on
    (n, resamples, seed), so two calls with the same seed resample the same architectures."""
    if not 0 < level < 1:
        raise OpmixError(f"level={level!r} must be in (0, 1), e.g. 0.90 for a 90 % interval")
    if resamples < 1:
        raise OpmixError(f"resamples={resamples!r} must be at least 1")
    if n == 0:
        return float("nan"), float("nan")
    idx = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    values = np.array([values_of(i) for i in idx], dtype=float)
    values = values[~np.isnan(values)]
    if len(values) == 0:
        return float("nan"), float("nan")
    tail = (1 - level) / 2
    lo, hi = np.quantile(values, [tail, 1 - tail])
    return float(lo), float(hi)


def bootstrap_interval(stat: Stat, x, y, *, level: float = 0.90, resamples: int = 2000,
                       seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of ``stat(x, y)``, resampling architectures (pairs) with replacement.

    With ten or twenty architectures a tau of 0.4 can be noise; the interval says how much. Resamples
    where the statistic is undefined (all drawn pairs tied) are skipped; (nan, nan) if all of them are.
    """
    a, b = _pair(x, y)
    return _bootstrap(lambda i: stat(a[i], b[i]), len(a), level, resamples, seed)


def bootstrap_difference(stat: Stat, x, z, y, *, level: float = 0.90, resamples: int = 2000,
                         seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of ``stat(x, y) - stat(z, y)``: two scores of the same architectures
    (a proxy ``x`` and FLOPs ``z``) against one reference ``y``, both statistics computed on each resample.

    Comparing one score's interval with the other's point value ignores the other's own noise; two separate
    intervals ignore that both rest on the same architectures and reference, which makes their errors move
    together. The paired difference counts both. Resamples where either statistic is undefined are skipped.
    """
    a, b = _pair(x, y)
    c, _ = _pair(z, y)
    return _bootstrap(lambda i: stat(a[i], b[i]) - stat(c[i], b[i]), len(a), level, resamples, seed)


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


def pooled_sd(groups) -> tuple[float, int]:
    """The pooled standard deviation of ``groups`` (sequences of numbers, e.g. one candidate's accuracies
    over seeds) and its degrees of freedom: sqrt(sum_i sum_j (x_ij - mean_i)^2 / sum_i (n_i - 1)).

    Two seeds per candidate give one degree of freedom each, too few to judge one pair of candidates by;
    the spread of retraining is much the same across candidates of one space at one fidelity, so pooling
    over all of them estimates it from many more. Groups of one value add nothing; (nan, 0) when no group
    has two.
    """
    squares, dof = 0.0, 0
    for g in groups:
        v = np.asarray(g, dtype=float)
        if np.isnan(v).any():
            raise OpmixError("a group holds NaN; drop the missing values before pooling")
        if len(v) > 1:
            squares += float(((v - v.mean()) ** 2).sum())
            dof += len(v) - 1
    return (float(np.sqrt(squares / dof)), dof) if dof else (float("nan"), 0)


def paired_difference_se(correct_a, correct_b) -> float:
    """Standard error, over the sample of validation images, of accuracy(a) - accuracy(b) for two networks
    scored on the same ``n`` images: ``correct_a`` and ``correct_b`` are per-image 0/1 results, one row
    per seed (k_a x n and k_b x n, or one row as a 1-D sequence).

    With d_i = mean over a's seeds of its result on image i, minus b's, the difference of the mean
    accuracies is mean(d), and its variance over images is (mean(d^2) - mean(d)^2) / n. With one seed
    each that is McNemar's: ((b + c)/n - ((b - c)/n)^2) / n, b and c the images that only one of the two
    gets right. Images both get right or both get wrong add no noise to the difference: two networks that
    agree on most images are compared more finely than two independent accuracies would allow.
    """
    a = np.atleast_2d(np.asarray(correct_a, dtype=float))
    b = np.atleast_2d(np.asarray(correct_b, dtype=float))
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or a.shape[1] == 0:
        raise OpmixError(f"per-image results of shapes {a.shape} and {b.shape} are not on the same images; "
                         f"both need one column per validation image")
    d = a.mean(axis=0) - b.mean(axis=0)
    return float(np.sqrt(max(0.0, float((d ** 2).mean() - d.mean() ** 2)) / len(d)))


def binomial_difference_se(p_a: float, p_b: float, n: int) -> float:
    """Standard error of p_a - p_b for two accuracies measured on ``n`` independent images each:
    sqrt((p_a (1 - p_a) + p_b (1 - p_b)) / n). On the same images it overstates the noise (the networks'
    errors are correlated); it is the fallback where per-image results are missing."""
    if n < 1:
        raise OpmixError(f"n={n!r} validation images; need at least 1")
    return float(np.sqrt((p_a * (1 - p_a) + p_b * (1 - p_b)) / n))


def pack_bits(bits) -> str:
    """Per-image 0/1 results as a hex string, 8 images a byte, the first image in the highest bit."""
    return np.packbits(np.asarray(bits, dtype=bool)).tobytes().hex()


def unpack_bits(text: str, n: int) -> np.ndarray:
    """The ``n`` per-image results (bool) of ``pack_bits``; an OpmixError if ``text`` does not hold ``n``."""
    try:
        raw = np.frombuffer(bytes.fromhex(text), dtype=np.uint8)
    except (TypeError, ValueError):
        raise OpmixError(f"per-image results {str(text)[:20]!r}... are not a hex string") from None
    if len(raw) != (n + 7) // 8:
        raise OpmixError(f"per-image results hold {len(raw) * 8} bits, not the {n} images they claim")
    return np.unpackbits(raw)[:n].astype(bool)


def quantile(values, q: float) -> float:
    """The ``q``-quantile (0 <= q <= 1) of ``values``, interpolated linearly between the order statistics around
    position q (n - 1), as ``np.quantile`` does by default."""
    s = sorted(values)
    pos = q * (len(s) - 1)
    lo = int(pos)
    return s[lo] + (s[min(lo + 1, len(s) - 1)] - s[lo]) * (pos - lo)
