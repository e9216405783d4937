"""``python -m nas.pareto runs/NAME``: the Pareto front of accuracy against FLOPs (or latency, or both) of a search.

The front is the set of completed trials that no other completed trial beats in every objective of the run
(``objectives`` in ``config.yaml``: proxy accuracy up, full-size deploy FLOPs and/or ``latency_ms`` on the
run's latency target down; accuracy and FLOPs for runs without the key). Trials stopped early by ASHA
(partial training), infeasible ones (over a budget, never trained), failed ones and confirmation trainings
never enter it, nor does a completed trial without a latency figure on a latency front (it is counted and
named). Hypervolume: the area (volume, with three objectives) the front dominates against the reference
point (accuracy 0, each cost at its budget, or at the largest among the completed trials where it has none),
with each cost in units of its reference, so 1.0 would be 100 % accuracy at no cost.

The recommended pick comes from the highest rung reached. When the run has confirmations (``nas._confirm``:
the front's top K retrained at a higher fidelity with two seeds), it is the confirmed candidate within the
budgets (FLOPs and, where the run has one, latency) with the best mean confirmed accuracy (the cheaper one on
a tie) among those with all their seeds; a candidate whose second seed was cut off or failed is shown, not
picked (and where none has all its seeds, the pick says it lacks them). Otherwise it is the most accurate
completed trial within the budgets (the cheaper one on a tie). Another confirmed candidate is *within noise*
of the pick when the difference of their means is at most one standard error of it (``noise_level``):
retraining noise from the seed sd pooled over every candidate confirmed at that fidelity, and the validation
images' noise, paired from the two networks' per-image results on the same images (McNemar) where the records
hold them (``correct``), else binomial. A screen at one standard error, not a significance test.

The command reads only ``config.yaml`` and ``trials.jsonl``, so it works on a finished run, on one that is
still running and on an interrupted one. It prints the front as a table (or, with ``--json``, as one JSON
object) and writes ``pareto.csv``, ``pareto.json`` and ``pareto.png`` into the run directory. Given several
runs it does that for each, prints a one-line-per-run comparison, and plots the fronts together
(``pareto-compare.png`` beside the first run, or ``--plot``). The run's Optuna study is ``study_name`` in
``config.yaml``, in its ``storage`` (``study.db`` when that is empty: ``optuna-dashboard
sqlite:///runs/NAME/study.db`` browses it; ``optuna.load_study(study_name=..., storage=...)`` loads it).
"""

from __future__ import annotations

import csv
import io
import json
import math
import sys
import textwrap
from pathlib import Path
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from . import _cli
from ._costs import OBJECTIVES
from .rundir import STATUSES, RunDir, arch_line, atomic_write, load_run, save_figure, trial_label
from .errors import OpmixError

__all__ = ["OBJECTIVES", "pareto_mask", "hypervolume", "objectives_of", "within_budgets", "Noise", "noise_level",
           "analyze", "front_table", "front_heading", "confirmed_lines", "noise_statement", "budget_text",
           "objectives_text", "reference_text", "hypervolume_line", "unplaced_line", "latency_text",
           "write_outputs", "plot_front", "plot_compare"]

PROG = "python -m nas.pareto"

# OBJECTIVES (nas._costs): accuracy up, then each cost down. Runs written before latency existed have no
# ``objectives`` in config.yaml and are the first.
COST_KEYS = {"flops": "flops", "latency": "latency_ms"}  # objective -> the record's field
COST_NAMES = {"flops": "FLOPs", "latency": "latency"}


def pareto_mask(points: np.ndarray, maximize: tuple[bool, ...] = (True, False)) -> np.ndarray:
    """Boolean mask of the non-dominated rows of an (n, k) array.

    A row dominates another when it is at least as good in every objective and better in one. Rows with a
    NaN are never on the front; identical rows do not dominate each other, so duplicates stay together.
    """
    pts = np.asarray(points, dtype=float)
    if pts.ndim != 2 or pts.shape[1] != len(maximize):
        raise OpmixError(f"points of shape {pts.shape} do not match {len(maximize)} objectives")
    signs = np.where(np.asarray(maximize), -1.0, 1.0)  # turn every objective into 'smaller is better'
    costs = pts * signs
    valid = ~np.isnan(costs).any(axis=1)
    mask = valid.copy()
    for i in np.flatnonzero(valid):
        others = costs[valid]
        dominated = np.all(others <= costs[i], axis=1) & np.any(others < costs[i], axis=1)
        mask[i] = not dominated.any()
    return mask


def hypervolume(accuracy: np.ndarray, costs: np.ndarray, reference: float | Sequence[float]) -> float:
    """Volume dominated by the points against the reference point (accuracy 0, each cost at its ``reference``),
    each cost in units of its reference, so 1.0 would be 100 % accuracy at no cost. ``costs`` is one column
    (FLOPs, say: the area under the front's staircase) or an (n, k) array with ``reference`` a sequence of k;
    two costs make it the volume of a union of boxes. Points beyond a reference, at accuracy 0 or with a NaN
    add nothing. Exact: sliced along accuracy, then along each cost in turn."""
    acc = np.asarray(accuracy, dtype=float)
    cost = np.asarray(costs, dtype=float)
    cost = cost[:, None] if cost.ndim == 1 else cost
    ref = np.atleast_1d(np.asarray(reference, dtype=float))
    if cost.shape != (acc.size, ref.size):
        raise OpmixError(f"costs of shape {cost.shape} do not match {acc.size} accuracies and {ref.size} "
                         f"reference values; pass one cost column per reference value")
    cost = cost / ref
    keep = ~np.isnan(acc) & ~np.isnan(cost).any(axis=1) & (cost <= 1.0).all(axis=1) & (acc > 0)
    acc, cost = acc[keep], cost[keep]
    if acc.size == 0:
        return 0.0
    front = pareto_mask(np.column_stack([acc, cost]), (True,) + (False,) * ref.size)
    acc, cost = acc[front], cost[front]
    volume, level = 0.0, 0.0
    for a in np.unique(acc):  # ascending: the slab (level, a] of accuracy is what the points at a or above cover
        volume += (a - level) * _cost_volume(cost[acc >= a])
        level = a
    return volume


def _cost_volume(cost: np.ndarray) -> float:
    """The volume of the union of the boxes [c, 1] x ... (costs in units of their references) of the rows of
    ``cost``: with one cost a length, else the sum over slices along the first cost of each slice's width
    times the volume the rows that reach the slice cover in the other costs."""
    if cost.shape[1] == 1:
        return 1.0 - float(cost[:, 0].min())
    cuts = np.unique(cost[:, 0])
    edges = np.append(cuts[1:], 1.0)
    return sum(float(hi - lo) * _cost_volume(cost[cost[:, 0] <= lo, 1:]) for lo, hi in zip(cuts, edges))


def objectives_of(config: dict[str, Any]) -> tuple[tuple[str, ...], float | None]:
    """The objectives and the latency budget in ms (or None) of a run's ``config.yaml`` (a dict): a run
    written before latency existed has neither key, and is (accuracy, FLOPs) without a latency budget."""
    given = config.get("objectives") or OBJECTIVES[0]
    objectives = tuple(given.split(",") if isinstance(given, str) else given)
    if objectives not in OBJECTIVES:
        raise OpmixError(f"config.yaml: objectives {','.join(map(str, objectives))!r} are not one of "
                         f"{', '.join(','.join(o) for o in OBJECTIVES)}; write one of these lists, or drop the key "
                         f"for accuracy,flops")
    latency = config.get("latency")
    budget_ms = latency.get("budget_ms") if isinstance(latency, dict) else getattr(latency, "budget_ms", None)
    if "latency" in objectives and latency is None:
        raise OpmixError("config.yaml: objectives include latency but 'latency' (the target) is null; give the "
                         "run a latency target, or write objectives: [accuracy, flops]")
    if budget_ms is not None and (isinstance(budget_ms, bool) or not isinstance(budget_ms, (int, float))
                                  or not budget_ms > 0):
        raise OpmixError(f"config.yaml: latency budget_ms {budget_ms!r} is not a positive number of milliseconds; "
                         f"write it as 12.0, or null for no latency budget")
    return objectives, None if budget_ms is None else float(budget_ms)


def within_budgets(record: dict[str, Any], budget: float | None, latency_budget_ms: float | None = None) -> bool:
    """Whether a record lies within both budgets where given: FLOPs <= ``budget`` and ``latency_ms`` <=
    ``latency_budget_ms``; a record without a latency figure is not within a latency budget."""
    if budget is not None and record["flops"] > budget:
        return False
    if latency_budget_ms is None:
        return True
    return record.get("latency_ms") is not None and record["latency_ms"] <= latency_budget_ms


class Noise(NamedTuple):
    """The noise of the difference of two confirmed candidates' mean accuracies (``noise_level``)."""

    total: float  # sqrt(seed_se^2 + image_se^2): the two sources are independent, so their variances add
    seed_se: float | None  # None where no candidate at a fidelity has two seeds: retraining noise unmeasured
    image_se: float
    paired: bool  # image_se from the per-image disagreement (True) or the binomial formula (False)


def noise_level(a: dict[str, Any], b: dict[str, Any]) -> Noise:
    """The noise of ``a["mean"] - b["mean"]`` for two confirmed candidates (``_confirmed``'s entries), as the
    root sum of squares of two independent parts:

    - retraining: ``sqrt(s_a^2 / n_a + s_b^2 / n_b)``, ``n`` the seeds each mean rests on and ``s`` the seed
      sd pooled over every candidate confirmed at the same fidelity (``nas.stats.pooled_sd``): two seeds give
      each candidate one degree of freedom, and one seed none, while the pool has one per candidate;
    - the validation images, which more seeds do not average away (every seed is scored on the same ones):
      paired from the two candidates' per-image results on those images where both records hold them
      (``nas.stats.paired_difference_se``), else the binomial formula, which treats the two accuracies as
      measured on independent images and so overstates it (records written before ``correct`` existed).
    """
    from .stats import binomial_difference_se, paired_difference_se

    sds = (a["pooled_sd"], b["pooled_sd"])
    seed_se = (None if any(math.isnan(s) for s in sds)
               else math.sqrt(sds[0] ** 2 / len(a["seeds"]) + sds[1] ** 2 / len(b["seeds"])))
    paired = a["correct"] is not None and b["correct"] is not None and a["correct"].shape[1] == b["correct"].shape[1]
    image_se = (paired_difference_se(a["correct"], b["correct"]) if paired
                else binomial_difference_se(a["mean"], b["mean"], min(a["val_images"], b["val_images"])))
    return Noise(math.hypot(seed_se or 0.0, image_se), seed_se, image_se, paired)


def _per_image(by_seed: dict[int, dict[str, Any]]) -> np.ndarray | None:
    """The candidate's per-image results, one row per seed (seeds x images), or None unless every seed's
    record holds them for the same number of images."""
    from .stats import unpack_bits

    sizes = {r.get("val_images") for r in by_seed.values()}
    if any(r.get("correct") is None for r in by_seed.values()) or len(sizes) != 1 or None in sizes:
        return None
    return np.stack([unpack_bits(by_seed[s]["correct"], by_seed[s]["val_images"]) for s in sorted(by_seed)])


def _candidates(records: list[dict[str, Any]], done: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per confirmed candidate (with a completed proxy record): its seeds, accuracies, mean, sd
    (ddof 1; None for one seed), fidelity, per-image results and validation images."""
    proxy = {r["trial_id"]: r for r in done}
    by_candidate: dict[Any, dict[int, dict[str, Any]]] = {}
    for r in records:  # a confirmation counts with its candidate's completed proxy record
        if r["status"] == "confirmed" and r.get("confirms") in proxy:
            by_candidate.setdefault(r["confirms"], {})[r["seed"]] = r
    failed = {(r.get("confirms"), r.get("seed")) for r in records if r["status"] == "failed"}
    entries = []
    for key, by_seed in by_candidate.items():
        seeds = sorted(by_seed)
        accs = [by_seed[s]["accuracy"] for s in seeds]
        fidelity = by_seed[seeds[0]].get("fidelity") or {}
        val_images = by_seed[seeds[0]].get("val_images") or fidelity.get("val_images", 1000)  # nas.proxy.MAX_VAL
        entries.append({"trial_id": key, "reference": proxy[key].get("reference"), "record": proxy[key],
                        "seeds": seeds, "accuracies": accs, "mean": float(np.mean(accs)),
                        "sd": float(np.std(accs, ddof=1)) if len(accs) > 1 else None, "fidelity": fidelity,
                        "correct": _per_image(by_seed), "val_images": val_images,
                        "failed_seeds": sorted(s for k, s in failed if k == key)})
    return entries


def _pool_by_fidelity(entries: list[dict[str, Any]]) -> None:
    """Give each entry the seed sd pooled over every candidate at its fidelity (``pooled_sd``, ``pooled_dof``,
    ``pooled_over``), the seeds missing from it (``missing``: seeds other candidates there have) and whether
    its seeds are ``complete`` (all of them, and at least two: one seed cannot show its own noise)."""
    from .stats import pooled_sd

    groups: dict[str, list[dict[str, Any]]] = {}
    for e in entries:
        groups.setdefault(json.dumps(e["fidelity"], sort_keys=True, default=str), []).append(e)
    for group in groups.values():
        sd, dof = pooled_sd(e["accuracies"] for e in group)
        seeds = set().union(*(e["seeds"] for e in group))
        for e in group:
            e.update(pooled_sd=sd, pooled_dof=dof, pooled_over=sum(len(x["seeds"]) > 1 for x in group),
                     missing=sorted(seeds - set(e["seeds"])))
            e["complete"] = not e["missing"] and len(e["seeds"]) > 1


def _confirmed(records: list[dict[str, Any]], done: list[dict[str, Any]], budget: float | None,
               latency_budget_ms: float | None = None) -> list[dict[str, Any]]:
    """The confirmed candidates within the budgets (``within_budgets``), the pick first, then by mean
    (``_candidates``' entries, with ``_pool_by_fidelity``'s fields, ``recommended``, ``noise`` (a ``Noise``;
    None for the pick) and ``within_noise`` (of the pick; None for the pick itself)).

    The pick is the best mean (then fewer FLOPs) among the candidates with complete seeds. A candidate
    that lacks one (cut off, or failed) is shown but not picked: its mean rests on fewer seeds, and the
    most likely way for a mean of one seed to top means of two is a lucky seed. Only where no candidate is
    complete is the pick made among all, and ``complete`` False marks it.
    """
    entries = _candidates(records, done)
    _pool_by_fidelity(entries)  # every candidate at the fidelity, over the budget or not, shows seed noise
    entries = [e for e in entries if within_budgets(e["record"], budget, latency_budget_ms)]
    order = sorted(entries, key=lambda e: (-e["mean"], e["record"]["flops"]))
    pick = next((e for e in order if e["complete"]), order[0] if order else None)
    order = [pick] + [e for e in order if e is not pick] if pick else []
    for e in order:
        e["recommended"] = e is pick
        e["noise"] = None if e is pick else noise_level(pick, e)
        e["within_noise"] = None if e is pick else bool(abs(pick["mean"] - e["mean"]) <= e["noise"].total)
    return order


def analyze(records: list[dict[str, Any]], budget: float | None, objectives: Sequence[str] = ("accuracy", "flops"),
            latency_budget_ms: float | None = None) -> dict[str, Any]:
    """The front of a run's records: counts by status, the front over ``objectives`` (one of ``OBJECTIVES``;
    cheapest first; ``completed`` records only), the hypervolume, the confirmed candidates (``_confirmed``)
    and the recommended pick ``best`` (a proxy record): with confirmations, the confirmed candidate with the
    best mean among those with all their seeds (``pick``, its entry); else the most accurate completed trial
    within the budgets (``proxy_best``). ``budget`` (FLOPs) and ``latency_budget_ms`` are None where the run
    has none. A completed record without a figure for an objective (no ``latency_ms``) cannot be placed on
    the front: it is left off and listed in ``unplaced``."""
    objectives = tuple(objectives)
    if objectives not in OBJECTIVES:
        raise OpmixError(f"objectives {','.join(map(str, objectives))!r} are not one of "
                         f"{', '.join(','.join(o) for o in OBJECTIVES)}; pass one of these")
    keys = [COST_KEYS[o] for o in objectives[1:]]
    done = [r for r in records if r["status"] == "completed"]
    placed = [r for r in done if all(r.get(k) is not None for k in keys)]
    pts = np.array([[r["accuracy"]] + [r[k] for k in keys] for r in placed], dtype=float).reshape(-1, 1 + len(keys))
    mask = pareto_mask(pts, (True,) + (False,) * len(keys))
    front = sorted((r for r, m in zip(placed, mask) if m), key=lambda r: (*(r[k] for k in keys), -r["accuracy"]))
    within = [r for r in done if within_budgets(r, budget, latency_budget_ms)]
    proxy_best = max(within, key=lambda r: (r["accuracy"], -r["flops"])) if within else None
    confirmed = _confirmed(records, done, budget, latency_budget_ms)
    pick = confirmed[0] if confirmed else None
    reference = _reference(placed, objectives, budget, latency_budget_ms)
    has_latency = ("latency" in objectives or latency_budget_ms is not None
                   or any(r.get("latency_ms") is not None or r.get("latency") for r in records))
    return {"by_status": {s: sum(r["status"] == s for r in records) for s in STATUSES},
            "completed": done, "front": front, "best": pick["record"] if pick else proxy_best,
            "proxy_best": proxy_best, "confirmed": confirmed, "pick": pick,
            "stopped": [r for r in records if r["status"] == "stopped" and r.get("accuracy") is not None],
            "hypervolume": (0.0 if None in reference.values()
                            else hypervolume(pts[:, 0], pts[:, 1:], [reference[k] for k in keys])),
            "objectives": objectives, "budget": budget, "latency_budget_ms": latency_budget_ms,
            "reference": reference, "unplaced": [r for r in done if not any(r is p for p in placed)],
            "latency": has_latency, "latency_target": _latency_target(records)}


def _reference(placed: list[dict[str, Any]], objectives: tuple[str, ...], budget: float | None,
               latency_budget_ms: float | None) -> dict[str, float | None]:
    """The hypervolume's reference for each cost (a record field -> value): its budget, or where it has none
    the largest value among the completed trials on the front's footing (None when there is none)."""
    budgets = {"flops": budget, "latency_ms": latency_budget_ms}
    out = {}
    for key in (COST_KEYS[o] for o in objectives[1:]):
        out[key] = budgets[key] if budgets[key] is not None else max((r[key] for r in placed), default=None)
    return out


def _latency_target(records: list[dict[str, Any]]) -> str | None:
    """The target the records' latencies were taken on ('ort-cpu, 1 thread, batch 1'), or None."""
    return next((r["latency"]["target"] for r in records if isinstance(r.get("latency"), dict)
                 and r["latency"].get("target")), None)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _latency_columns(record: dict[str, Any]) -> str:
    """' 12.30 12.10 12.30': the figure judged by, the predicted and the measured latency (ms; '-' for none)."""
    lat = record.get("latency") or {}
    return (f" {_ms(record.get('latency_ms')):>7s} {_ms(lat.get('predicted_ms')):>7s} "
            f"{_ms(lat.get('measured_ms')):>7s}")


def front_table(analysis: dict[str, Any]) -> list[str]:
    """The front as text lines: '*' marks the recommended pick, references are named; in a run with a
    latency target, the latency judged by (ms), predicted and measured."""
    ms = f" {'lat ms':>7s} {'pred ms':>7s} {'meas ms':>7s}" if analysis.get("latency") else ""
    lines = [f"  {'trial':>18s} {'accuracy':>9s} {'GFLOPs':>7s}{ms} {'params':>8s}  architecture (op xdepth width)"]
    for r in analysis["front"]:
        mark = "*" if r is analysis["best"] else " "
        lat = _latency_columns(r) if ms else ""
        lines.append(f"{mark} {trial_label(r):>18s} {r['accuracy']:9.4f} {r['flops'] / 1e9:7.3f}{lat} "
                     f"{r['params'] / 1e6:7.2f}M  {arch_line(r['arch'])}")
    return lines


def latency_text(record: dict[str, Any]) -> str | None:
    """A record's latency in words, '12.30 ms measured (IQR 0.40 ms; ort-cpu, 1 thread, batch 1)' or
    '... predicted ...', or None where it has none."""
    if record.get("latency_ms") is None:
        return None
    lat = record.get("latency") or {}
    how = "measured" if lat.get("measured_ms") is not None else "predicted" if lat else ""
    details = [f"IQR {lat['iqr_ms']:.2f} ms"] if lat.get("iqr_ms") is not None and how == "measured" else []
    details += [lat["target"]] if lat.get("target") else []
    return (f"{record['latency_ms']:.2f} ms" + (f" {how}" if how else "")
            + (f" ({'; '.join(details)})" if details else ""))


def objectives_text(analysis: dict[str, Any]) -> str:
    """'accuracy x FLOPs x latency'."""
    return " x ".join(COST_NAMES.get(o, o) for o in analysis["objectives"])


def reference_text(analysis: dict[str, Any]) -> str:
    """The hypervolume's reference point in words: 'accuracy 0, FLOPs = budget' for a run of old; a cost
    without a budget stands at the largest value among the completed trials, and says so."""
    parts = ["accuracy 0"]
    for objective in analysis["objectives"][1:]:
        key = COST_KEYS[objective]
        value = analysis["reference"][key]
        budget = analysis["budget"] if key == "flops" else analysis["latency_budget_ms"]
        unit = (lambda v: f"{v / 1e9:.3g} G") if key == "flops" else (lambda v: f"{v:.3g} ms")
        if budget is not None:
            parts.append(f"{COST_NAMES[objective]} = budget" + ("" if key == "flops" else f" {unit(budget)}"))
        elif value is None:
            parts.append(f"{COST_NAMES[objective]}: no budget and no completed trial yet")
        else:
            parts.append(f"{COST_NAMES[objective]} = {unit(value)}, the largest among the completed trials "
                         f"(no {COST_NAMES[objective]} budget)")
    return ", ".join(parts)


def _mean_sd(entry: dict[str, Any]) -> str:
    sd = "" if entry["sd"] is None else f" ± {entry['sd']:.4f}"
    return f"{entry['mean']:.4f}{sd or ' (1 seed)':>9s}"


def _seeds(entry: dict[str, Any]) -> str:
    """'2', or '1/2' for a candidate that lacks seeds others at its fidelity have."""
    have = len(entry["seeds"])
    return f"{have}/{have + len(entry['missing'])}" if entry["missing"] else str(have)


def confirmed_lines(analysis: dict[str, Any]) -> list[str]:
    """The confirmed candidates as text: a heading with the fidelity, one row each ('*' the pick, '~' within
    noise of it; seeds '1/2' where one is missing) and ``noise_statement``; no lines when nothing was
    confirmed."""
    entries = analysis["confirmed"]
    if not entries:
        return []
    fid = entries[0]["fidelity"]
    at = f"{fid['train_images']} images x {fid['epochs']} epochs" if "train_images" in fid else "a higher fidelity"
    budgets = "the budgets" if analysis.get("latency_budget_ms") is not None else "the budget"
    lines = [f"Confirmed ({at} per training; * the pick, the best mean with all its seeds within {budgets}; "
             f"~ within noise of it):",
             f"  {'trial':>18s} {'mean ± sd':>16s} {'seeds':>5s} {'proxy':>7s} {'GFLOPs':>7s}"
             + (f" {'lat ms':>7s} {'pred ms':>7s} {'meas ms':>7s}" if analysis.get("latency") else "")
             + "  architecture"]
    for e in entries:
        mark = "*" if e["recommended"] else "~" if e["within_noise"] else " "
        r = e["record"]
        lines.append(f"{mark} {trial_label(r):>18s} {_mean_sd(e):>16s} {_seeds(e):>5s} {r['accuracy']:7.4f} "
                     f"{r['flops'] / 1e9:7.3f}{_latency_columns(r) if analysis.get('latency') else ''}  "
                     f"{arch_line(r['arch'])}")
    return lines + textwrap.wrap(noise_statement(analysis), 118, initial_indent="  ", subsequent_indent="  ")


def _names(entries: list[dict[str, Any]]) -> str:
    names = [trial_label(e) for e in entries]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def missing_seeds(entry: dict[str, Any]) -> str:
    """What a candidate without complete seeds lacks, in words: 'seed 1 (failed)', 'seed 1 (cut off)', or
    'a second seed' where no candidate at its fidelity has one."""
    if not entry["missing"]:
        return "a second seed"
    return " and ".join(f"seed {s} ({'failed' if s in entry['failed_seeds'] else 'cut off'})"
                        for s in entry["missing"])


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _noise_basis(analysis: dict[str, Any]) -> str:
    """What the 'within noise' judgements rest on: the seeds, the pooled seed sd and the kind of image noise."""
    pick, others = analysis["pick"], analysis["confirmed"][1:]
    seeds = {len(e["seeds"]) for e in analysis["confirmed"]}
    text = (f"{_plural(max(seeds), 'seed')} per candidate" if len(seeds) == 1
            else f"{min(seeds)} to {max(seeds)} seeds per candidate")
    if math.isnan(pick["pooled_sd"]):
        text += "; retraining noise unmeasured: no candidate has two seeds"
    else:
        text += (f"; seed sd {pick['pooled_sd']:.4f} pooled over {_plural(pick['pooled_over'], 'candidate')}, "
                 f"{_plural(pick['pooled_dof'], 'degree')} of freedom")
    paired = {e["noise"].paired for e in others}
    if paired == {True}:
        text += f"; image noise paired on the same {pick['val_images']} validation images"
    elif paired == {False}:
        text += (f"; image noise binomial on {pick['val_images']} images, which overstates it for networks scored "
                 f"on the same images: these records hold no per-image results")
    elif paired:
        text += "; image noise paired where both records hold per-image results, else binomial"
    return text


def noise_statement(analysis: dict[str, Any]) -> str | None:
    """One sentence on how far the pick stands from the other confirmed candidates, whether its seeds are
    complete, and what the noise rests on (None without any confirmed candidate). A candidate that lacks
    seeds and has a higher mean than the pick is named as such, never as beaten."""
    pick, others = analysis["pick"], analysis["confirmed"][1:]
    if pick is None:
        return None
    above = [e for e in others if e["mean"] > pick["mean"]]  # only candidates without all their seeds
    below = [e for e in others if e not in above]
    close = [e for e in below if e["within_noise"]]
    if close:
        text = f"the pick cannot be told apart from {_names(close)} at this fidelity"
    elif below:
        text = f"the pick beats every other confirmed candidate{' with all its seeds' if above else ''} beyond noise"
    else:
        text = "the pick is the only confirmed candidate" + (" with all its seeds" if above else "")
    beaten = [e for e in below if e.get("reference") and not e["within_noise"]]
    if pick.get("reference") and any(not e.get("reference") for e in others):
        text += f"; the reference {pick['reference']} is the pick: the search did not beat it"
    elif beaten:
        text += f"; the search beat {_names(beaten)} beyond noise"
    if not pick["complete"]:
        text += f"; the pick lacks {missing_seeds(pick)}, as every candidate does: it rests on fewer seeds"
    for e in above:
        text += (f"; {trial_label(e)} has a higher mean but lacks {missing_seeds(e)}, so it is not the pick "
                 f"(a mean of fewer seeds tops the others by luck more often)")
    return text + f" ({_noise_basis(analysis)})"


def _latency_fields(record: dict[str, Any]) -> dict[str, Any]:
    lat = record.get("latency") or {}
    return {"latency_ms": record.get("latency_ms"), "predicted_ms": lat.get("predicted_ms"),
            "measured_ms": lat.get("measured_ms"), "iqr_ms": lat.get("iqr_ms")}


def _front_entry(record: dict[str, Any], best: dict[str, Any] | None, latency: bool = False) -> dict[str, Any]:
    entry = {"trial_id": record["trial_id"], "reference": record.get("reference"), "accuracy": record["accuracy"],
             "flops": record["flops"], "params": record["params"], "epochs": record.get("epochs"),
             "recommended": record is best, "arch": record["arch"]}
    if latency:  # before arch, which stays last as in a run of old
        entry = {**{k: v for k, v in entry.items() if k != "arch"}, **_latency_fields(record), "arch": record["arch"]}
    return entry


def as_json(run: RunDir, analysis: dict[str, Any], budget: float | None) -> dict[str, Any]:
    """The analysis as one JSON object; a run with a latency target adds its objectives, latency budget,
    target and hypervolume reference, and latency fields to each front and confirmed entry."""
    best, latency = analysis["best"], analysis.get("latency")
    confirmed = [{"trial_id": e["trial_id"], "reference": e["reference"], "mean": e["mean"], "sd": e["sd"],
                  "seeds": e["seeds"], "accuracies": e["accuracies"], "proxy_accuracy": e["record"]["accuracy"],
                  "flops": e["record"]["flops"], "recommended": e["recommended"], "within_noise": e["within_noise"],
                  "complete": e["complete"], "missing_seeds": e["missing"],
                  "noise_se": None if e["noise"] is None else e["noise"]._asdict(),
                  "pooled_seed_sd": None if math.isnan(e["pooled_sd"]) else e["pooled_sd"],
                  "fidelity": e["fidelity"], "arch": e["record"]["arch"]} for e in analysis["confirmed"]]
    if latency:
        for entry, e in zip(confirmed, analysis["confirmed"]):
            entry.update(_latency_fields(e["record"]))
    data = {"run": str(run.path), "budget": budget, "hypervolume": analysis["hypervolume"],
            "trials": analysis["by_status"],
            "recommended": None if best is None else best["trial_id"],
            "front": [_front_entry(r, best, latency) for r in analysis["front"]],
            "confirmed": confirmed, "noise": noise_statement(analysis)}
    if latency:
        data.update(objectives=list(analysis["objectives"]), latency_budget_ms=analysis["latency_budget_ms"],
                    latency_target=analysis["latency_target"], hypervolume_reference=analysis["reference"],
                    unplaced=[r["trial_id"] for r in analysis["unplaced"]])
    return data


def write_outputs(run: RunDir, analysis: dict[str, Any], budget: float | None,
                  plot_path: Path | None = None) -> list[Path]:
    """``pareto.csv``, ``pareto.json`` and the plot; each written to a temporary name first, then renamed.
    With a latency target the csv gains ``latency_ms``, ``predicted_ms``, ``measured_ms`` and ``iqr_ms``."""
    written = []
    data = as_json(run, analysis, budget)
    path = run.path / "pareto.json"
    atomic_write(path, json.dumps(data, indent=1) + "\n")
    written.append(path)
    path = run.path / "pareto.csv"
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    ms_keys = ["latency_ms", "predicted_ms", "measured_ms", "iqr_ms"] if analysis.get("latency") else []
    writer.writerow(["trial_id", "reference", "accuracy", "flops", "gflops", *ms_keys, "params", "recommended",
                     "arch"])
    for e in data["front"]:
        ms = ["" if e[k] is None else f"{e[k]:.4f}" for k in ms_keys]
        writer.writerow([e["trial_id"], e["reference"] or "", f"{e['accuracy']:.6f}", e["flops"],
                         f"{e['flops'] / 1e9:.4f}", *ms, e["params"], int(e["recommended"]), arch_line(e["arch"])])
    atomic_write(path, text.getvalue())
    written.append(path)
    written.append(plot_front(run, analysis, budget, plot_path or run.path / "pareto.png"))
    return written


def plot_front(run: RunDir, analysis: dict[str, Any], budget: float | None, path: Path) -> Path:
    """Every evaluated trial in grey, the front joined as a staircase, the budget as a line, references named.
    With a latency target, a second panel: accuracy against latency (ms), the latency budget dashed. A front
    over both costs is drawn as points on each panel, not as a staircase (it is not one in either plane)."""
    latency = analysis.get("latency")
    fig, axes = _figure(2 if latency else 1)
    panels = [(axes[0], "flops", 1e9, budget, f"budget {budget / 1e9:g} GFLOPs" if budget is not None else None)]
    if latency:
        ms = analysis["latency_budget_ms"]
        panels.append((axes[1], "latency_ms", 1.0, ms, None if ms is None else f"latency budget {ms:g} ms"))
    counts = analysis["by_status"]
    title = (f"{run.path.name}: {counts['completed']} completed, {counts['stopped']} stopped, "
             f"{counts['infeasible']} over budget, {counts['failed']} failed; "
             f"hypervolume {analysis['hypervolume']:.3f}")
    if latency:
        fig.suptitle(title + f" over {objectives_text(analysis)}", fontsize=9)
    else:
        axes[0].set_title(title, fontsize=9)
    for ax, key, scale, limit, label in panels:
        widest = _panel(ax, analysis, key, scale, limit, label)
        _style(ax, key, widest)
    return _save(fig, path)


def _panel(ax, analysis: dict[str, Any], key: str, scale: float, limit: float | None, label: str | None) -> float:
    """One panel: accuracy against the record field ``key`` (divided by ``scale``); the records without it
    are left out. Returns the widest x drawn (the limit's too)."""
    def x(records):
        return [r[key] / scale for r in records]

    def having(records):
        return [r for r in records if r.get(key) is not None]

    done, front, best, stopped = (having(analysis["completed"]), having(analysis["front"]), analysis["best"],
                                  having(analysis["stopped"]))
    sole = analysis["objectives"][1:] == (next(o for o, k in COST_KEYS.items() if k == key),)
    if stopped:
        ax.scatter(x(stopped), [r["accuracy"] for r in stopped], marker="x", s=22,
                   color="0.75", label=f"stopped early ({len(stopped)}, partial training)")
    if done:
        ax.scatter(x(done), [r["accuracy"] for r in done], s=22, color="0.55",
                   label=f"completed ({len(done)})")
    if front:
        xs, ys = x(front), [r["accuracy"] for r in front]
        if sole:
            ax.step(xs, ys, where="post", color="tab:blue", lw=1.5, zorder=3)
        over = "" if sole else f"; over {objectives_text(analysis)}"
        ax.scatter(xs, ys, s=40, color="tab:blue", zorder=4, label=f"Pareto front ({len(front)}{over})")
    conf = [e for e in analysis["confirmed"] if e["record"].get(key) is not None]
    if conf:  # at their own, higher fidelity: not comparable point for point with the proxies
        ax.errorbar(x([e["record"] for e in conf]), [e["mean"] for e in conf],
                    yerr=[e["sd"] or 0.0 for e in conf], fmt="D", ms=5, color="tab:green", capsize=3, zorder=4,
                    label=f"confirmed ({len(conf)}): mean ± sd over seeds")
    if best is not None and best.get(key) is not None:
        y = analysis["pick"]["mean"] if analysis["pick"] else best["accuracy"]
        ax.scatter([best[key] / scale], [y], s=220, marker="*", color="tab:orange", zorder=5,
                   edgecolor="black", linewidth=0.6, label=f"recommended: {trial_label(best)}")
    for r in done:
        if r.get("reference"):
            ax.annotate(r["reference"], (r[key] / scale, r["accuracy"]), textcoords="offset points",
                        xytext=(5, -11), fontsize=8, color="tab:red")
            ax.scatter([r[key] / scale], [r["accuracy"]], s=60, facecolors="none", edgecolors="tab:red",
                       zorder=4)
    if limit is not None:
        ax.axvline(limit / scale, color="tab:red", ls="--", lw=1, label=label)
    if not done and not stopped:
        ax.text(0.5, 0.5, "no trained trial yet", transform=ax.transAxes, ha="center", color="0.4")
    return max([0.0 if limit is None else limit / scale] + x(done + stopped))


def _figure(panels: int = 1):
    """The figure and a list of its axes, one per panel side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, panels, figsize=(8 * panels, 5.5), dpi=120, squeeze=False)
    return fig, list(axes[0])


XLABELS = {"flops": "GFLOPs (full-size network, deploy form, multiply-adds)",
           "latency_ms": "latency, ms (deploy form, the run's latency target; measured where it was, else predicted)"}


def _style(ax, key: str, widest: float) -> None:
    """Axes labels, limits and legend; ``widest`` in the panel's units (GFLOPs or ms)."""
    ax.set_xlabel(XLABELS[key])
    ax.set_ylabel("validation accuracy (proxy; confirmed: mean over seeds)")
    ax.set_xlim(0, (widest or 1.0) * 1.12)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)


def _save(fig, path: Path) -> Path:
    """The figure saved through a temporary name, then closed."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_figure(fig, path)
    plt.close(fig)
    return path


def plot_compare(runs: list[tuple[RunDir, dict[str, Any], float | None]], path: Path) -> Path:
    """The fronts of several runs on one plot against FLOPs: each run's completed trials faint, its front as a
    staircase (as points where the front is over latency too), its recommended pick as a star, and each
    distinct budget as a dashed line."""
    fig, (ax,) = _figure()
    colors = ["tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan"]
    widest = 0.0
    for i, (run, analysis, budget) in enumerate(runs):
        color = colors[i % len(colors)]
        done, front, best = analysis["completed"], analysis["front"], analysis["best"]
        widest = max([widest] + ([] if budget is None else [budget]) + [r["flops"] for r in done])
        ax.scatter([r["flops"] / 1e9 for r in done], [r["accuracy"] for r in done], s=14, color=color, alpha=0.3)
        if front:
            flops_only = analysis["objectives"] == OBJECTIVES[0]
            over = "" if flops_only else f" over {objectives_text(analysis)}"
            ax.plot([r["flops"] / 1e9 for r in front], [r["accuracy"] for r in front],
                    drawstyle="steps-post" if flops_only else "default", ls="-" if flops_only else "none",
                    color=color, lw=1.5, marker="o", ms=4,
                    label=f"{run.path.name} (hypervolume {analysis['hypervolume']:.3f}{over})")
        if best is not None:
            ax.scatter([best["flops"] / 1e9], [best["accuracy"]], s=160, marker="*", color=color, zorder=5,
                       edgecolor="black", linewidth=0.6)
    for budget in sorted({b for _, _, b in runs if b is not None}):
        ax.axvline(budget / 1e9, color="tab:red", ls="--", lw=1, label=f"budget {budget / 1e9:g} GFLOPs")
    ax.set_title(f"{len(runs)} runs: Pareto fronts (stars: each run's recommended pick)", fontsize=9)
    _style(ax, "flops", widest / 1e9)
    return _save(fig, path)


def _parser() -> _cli.Parser:
    p = _cli.Parser(prog=PROG, description="Print and plot the Pareto front (accuracy up, FLOPs down) of a search "
                    "run; writes pareto.csv, pareto.json and pareto.png into the run folder. Given several runs, "
                    "it does so for each and also plots their fronts together.")
    p.add_argument("runs", nargs="+", metavar="run", help="the run folder, e.g. runs/NAME (several to compare)")
    p.add_argument("--json", action="store_true", help="print one JSON object (with a 'front' list) instead of "
                   "the table; for several runs, one object with a 'runs' list of them")
    p.add_argument("--plot", default=None, help="where to write the plot (default: RUN/pareto.png; for several "
                   "runs, the comparison plot, default: pareto-compare.png beside the first run)")
    return p


def budget_text(analysis: dict[str, Any]) -> str:
    """'budget 4 GFLOPs', 'budget 4 GFLOPs and 12 ms (ort-cpu, 1 thread, batch 1)' or 'budget 12 ms (...)'."""
    parts = [] if analysis["budget"] is None else [f"{analysis['budget'] / 1e9:g} GFLOPs"]
    if analysis.get("latency_budget_ms") is not None:
        target = analysis.get("latency_target")
        parts.append(f"{analysis['latency_budget_ms']:g} ms" + (f" ({target})" if target else ""))
    return "budget " + " and ".join(parts) if parts else "no budget"


def front_heading(analysis: dict[str, Any]) -> str:
    """'Pareto front (proxy accuracy up, FLOPs down; * the recommended pick):'."""
    costs = " and ".join(COST_NAMES[o] for o in analysis["objectives"][1:])
    return f"Pareto front (proxy accuracy up, {costs} down; * the recommended pick):"


def unplaced_line(analysis: dict[str, Any]) -> str | None:
    """The completed trials left off the front for want of a latency figure, counted and named; None if none."""
    off = analysis.get("unplaced") or []
    if not off:
        return None
    names = ", ".join(trial_label(r) for r in off[:5]) + (", ..." if len(off) > 5 else "")
    return (f"  {_plural(len(off), 'completed trial')} without a latency figure (latency_ms) left off the front: "
            f"{names}")


def hypervolume_line(analysis: dict[str, Any], name_objectives: bool = False) -> str:
    """'  hypervolume 0.6250 (reference: accuracy 0, FLOPs = budget)' for a run of old; with a latency target
    (or ``name_objectives``) it names the objectives it is over."""
    over = f" over {objectives_text(analysis)}" if name_objectives or analysis.get("latency") else ""
    return f"  hypervolume {analysis['hypervolume']:.4f}{over} (reference: {reference_text(analysis)})"


def _print_run(run: RunDir, analysis: dict[str, Any], budget: float | None) -> None:
    s = analysis["by_status"]
    print(f"{run.path}: {budget_text(analysis)}; {s['completed']} completed, {s['stopped']} stopped early, "
          f"{s['infeasible']} rejected for the budget or the space's constraints, {s['failed']} failed"
          + (f", {s['confirmed']} confirmation trainings" if s["confirmed"] else ""))
    if not analysis["front"]:
        print("no completed trial yet: the front is empty")
    else:
        print(front_heading(analysis))
        print("\n".join(front_table(analysis)))
        print(hypervolume_line(analysis))
    if unplaced_line(analysis):
        print(unplaced_line(analysis))
    if analysis["confirmed"]:
        print("\n".join(confirmed_lines(analysis)))


def _main(argv: list[str] | None) -> int:
    args = _parser().parse_args(argv)
    loaded = [load_run(path) for path in args.runs]  # every run is checked before anything is written
    several = len(loaded) > 1
    results, written = [], []
    for run, config, records in loaded:
        budget = config["budget"]
        objectives, latency_budget_ms = objectives_of(config)
        analysis = analyze(records, budget, objectives, latency_budget_ms)
        written += write_outputs(run, analysis, budget, Path(args.plot) if args.plot and not several else None)
        results.append((run, analysis, budget))
    if several:
        compare = Path(args.plot) if args.plot else loaded[0][0].path.parent / "pareto-compare.png"
        written.append(plot_compare(results, compare))
    if args.json:
        objects = [as_json(run, analysis, budget) for run, analysis, budget in results]
        json.dump({"runs": objects} if several else objects[0], sys.stdout, indent=1)
        print()
        return 0
    for i, (run, analysis, budget) in enumerate(results):
        if i:
            print()
        _print_run(run, analysis, budget)
    if several:
        print(f"\n{'run':30s} {'budget':>7s} {'completed':>9s} {'front':>5s} {'best accuracy':>13s} {'GFLOPs':>7s} "
              f"{'hypervolume':>11s}")
        for run, analysis, budget in results:
            best = analysis["best"]
            acc, gf = (f"{best['accuracy']:.4f}", f"{best['flops'] / 1e9:.3f}") if best else ("-", "-")
            budget = "-" if budget is None else f"{budget / 1e9:.3g}G"
            print(f"{run.path.name:30s} {budget:>7s} {analysis['by_status']['completed']:9d} "
                  f"{len(analysis['front']):5d} {acc:>13s} {gf:>7s} {analysis['hypervolume']:11.4f}")
        print("(hypervolumes are against each run's own budget" + (
            ", over its own objectives)" if any(a["latency"] for _, a, _ in results) else ")"))
    print("wrote " + ", ".join(str(p) for p in written))
    for run, analysis, _ in results:
        if analysis["best"] is not None:
            print(f"next: python -m nas.export {run.path}")
    return 0


def main(argv: list[str] | None = None) -> None:
    _cli.run(PROG, _main, argv)


if __name__ == "__main__":
    main()
