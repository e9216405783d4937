"""The Pareto front of accuracy against FLOPs, as small pure functions over arrays."""

from __future__ import annotations

import numpy as np

__all__ = ["pareto_mask", "hypervolume"]


def pareto_mask(points: np.ndarray, maximize: tuple[bool, ...] = (True, False)) -> np.ndarray:
    """Boolean mask of the non-dominated rows of an (n, k) array.

    A row dominates another when it is at least as good in every objective and better in one. Rows with a
    NaN are never on the front; identical rows do not dominate each other, so duplicates stay together.
    """
    pts = np.asarray(points, dtype=float)
    if pts.ndim != 2 or pts.shape[1] != len(maximize):
        raise ValueError(f"points of shape {pts.shape} do not match {len(maximize)} objectives")
    signs = np.where(np.asarray(maximize), -1.0, 1.0)  # turn every objective into 'smaller is better'
    costs = pts * signs
    valid = ~np.isnan(costs).any(axis=1)
    mask = valid.copy()
    for i in np.flatnonzero(valid):
        others = costs[valid]
        dominated = np.all(others <= costs[i], axis=1) & np.any(others < costs[i], axis=1)
        mask[i] = not dominated.any()
    return mask


def hypervolume(accuracy: np.ndarray, flops: np.ndarray, budget: float) -> float:
    """Area dominated by the points, against the reference point (accuracy 0, FLOPs = budget), with FLOPs in
    units of the budget: 1.0 would be 100 % accuracy at zero FLOPs. Points over the budget add nothing."""
    acc = np.asarray(accuracy, dtype=float)
    fl = np.asarray(flops, dtype=float) / budget
    keep = ~np.isnan(acc) & ~np.isnan(fl) & (fl <= 1.0) & (acc > 0)
    acc, fl = acc[keep], fl[keep]
    if acc.size == 0:
        return 0.0
    front = pareto_mask(np.stack([acc, fl], axis=1))
    order = np.argsort(fl[front])
    acc_f, fl_f = acc[front][order], fl[front][order]
    volume, level = 0.0, 0.0
    for a, f in zip(acc_f, fl_f):  # cheapest first; along the front accuracy rises with FLOPs
        if a > level:
            volume += (a - level) * (1.0 - f)
            level = a
    return volume
