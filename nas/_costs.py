"""A run's costs: its objectives, its budgets (FLOPs, latency) and how a candidate is judged against them
before any training.

``Costs`` is what the searcher (``nas._searcher``) asks about a candidate: FLOPs and parameters
(``nas.flops.measure_arch``), then, when the run has a latency target, its latency predicted from the
per-layer table (``nas.latency.predict``; the layers the table lacks are measured now, on the core the search
keeps free of trials). A prediction within the predictor's own error of the latency budget is not trusted
to decide: that candidate is measured end to end, the measurement decides, and it joins the table's
correction. Objectives are ``accuracy`` (maximized) and any of ``flops`` and ``latency`` (minimized), in
that order; Optuna is told the values in the same order, and each budget as a constraint of its own
(``flops_over_budget``, ``latency_over_budget``: > 0 breaks it).
"""

from __future__ import annotations

from typing import Any, Callable

from .arch import Arch
from .errors import OpmixError

__all__ = ["OBJECTIVES", "Costs", "check_objectives"]

OBJECTIVES = (("accuracy", "flops"), ("accuracy", "latency"), ("accuracy", "flops", "latency"))
METRIC_NAMES = {"accuracy": "accuracy", "flops": "FLOPs", "latency": "latency (ms)"}


def check_objectives(text: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """'accuracy,latency' -> ('accuracy', 'latency'); one of ``OBJECTIVES`` or an ``OpmixError``."""
    names = tuple(p.strip() for p in text.split(",")) if isinstance(text, str) else tuple(text)
    if names not in OBJECTIVES:
        allowed = " | ".join(",".join(o) for o in OBJECTIVES)
        raise OpmixError(f"--objectives {','.join(names)!r} is not offered; use one of {allowed}")
    return names


class Costs:
    """The budgets and objectives of one run, and the latency table when it has a latency target.

    ``budget``: FLOPs (None: no FLOP budget); ``latency``: the config's ``latency`` mapping (target, threads,
    batch, dtype, budget_ms, table) or None."""

    def __init__(self, budget: int | None, objectives: tuple[str, ...], latency: dict[str, Any] | None,
                 measure_flops: Callable[[Arch], tuple[int, int]], log: Callable[[str], None] = print):
        self.budget, self.objectives, self.measure_flops, self.log = budget, tuple(objectives), measure_flops, log
        self.latency_budget = self.target = self.table = None
        self._latency: dict[Arch, dict[str, Any]] = {}
        if latency:
            from .latency import LatencyTable, Target

            self.target = Target(latency["target"], int(latency.get("threads", 1)), int(latency.get("batch", 1)),
                                 latency.get("dtype") or "float32")
            self.target.check()  # before the table, whose name needs the device's fingerprint
            self.table = LatencyTable(self.target, latency.get("table"))
            self.latency_budget = latency.get("budget_ms")

    @property
    def directions(self) -> list[str]:
        return ["maximize" if o == "accuracy" else "minimize" for o in self.objectives]

    @property
    def metric_names(self) -> list[str]:
        return [METRIC_NAMES[o] for o in self.objectives]

    def flops_over(self, flops: int) -> float:
        return -1.0 if self.budget is None else float(flops - self.budget)

    def latency_of(self, arch: Arch) -> dict[str, Any]:
        """``{"latency_ms": figure judged by, "latency": {predicted_ms, measured_ms, iqr_ms, target}}``: the
        table's prediction, and an end-to-end measurement when the prediction lies within its error of the
        latency budget (``{}`` without a latency target)."""
        if self.table is None:
            return {}
        if arch not in self._latency:  # a reference is judged before it is launched: once is enough
            self._latency[arch] = self._judge_latency(arch)
        return self._latency[arch]

    def _judge_latency(self, arch: Arch) -> dict[str, Any]:
        from .latency import measure_arch_latency, predict

        pred = predict(arch, self.table)
        if pred.measured:
            self.log(f"  latency table: {pred.measured} new layer(s) measured in {pred.seconds:.1f} s")
        detail = {"predicted_ms": round(pred.ms, 4), "measured_ms": None, "iqr_ms": None,
                  "target": self.target.describe()}
        ms = pred.ms
        if self.latency_budget is not None and pred.near(self.latency_budget):
            timing = measure_arch_latency(arch, self.target)["total"]
            self.table.add_network(arch, pred.sum_ms, timing)
            detail.update(measured_ms=round(timing.ms, 4), iqr_ms=round(timing.iqr_ms, 4))
            ms = timing.ms
        return {"latency_ms": round(ms, 4), "latency": detail}

    def latency_over(self, latency_ms: float | None) -> float | None:
        if self.latency_budget is None or latency_ms is None:
            return None
        return float(latency_ms - self.latency_budget)

    def constraints(self, flops: int | None, latency_ms: float | None) -> dict[str, float]:
        """Each budget's constraint value (> 0: broken); a network not measured (None) breaks them all."""
        out = {}
        if self.budget is not None:
            out["flops_over_budget"] = 1.0 if flops is None else float(flops - self.budget)
        if self.latency_budget is not None:
            out["latency_over_budget"] = 1.0 if latency_ms is None else float(latency_ms - self.latency_budget)
        return out

    def values(self, accuracy: float, flops: float | None, latency_ms: float | None) -> list[float]:
        """The objective values in the study's order; an unmeasured cost stands at twice its budget."""
        out = []
        for o in self.objectives:
            if o == "accuracy":
                out.append(float(accuracy))
            elif o == "flops":
                out.append(float(flops) if flops is not None else 2.0 * float(self.budget or 1))
            else:
                out.append(float(latency_ms) if latency_ms is not None else 2.0 * float(self.latency_budget or 1))
        return out

    def describe(self) -> str:
        from .flops import format_flops

        parts = []
        if self.budget is not None:
            parts.append(f"budget {format_flops(self.budget)}FLOPs")
        if self.target is not None:
            bound = f"latency budget {self.latency_budget:g} ms" if self.latency_budget is not None else "latency"
            parts.append(f"{bound} on {self.target.describe()}")
        parts.append(f"objectives {', '.join(self.objectives)}")
        return "; ".join(parts)

