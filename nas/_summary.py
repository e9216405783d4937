"""What a search prints when it ends: the trials by status, the front, the confirmed pick, what to run next."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from .rundir import RunDir, trial_label

__all__ = ["summarize", "print_summary"]


def _failures(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The failed records, less a confirmation's failure that a later ``--retry-failed`` confirmed."""
    confirmed = {(r["confirms"], r["seed"]) for r in records if r["status"] == "confirmed"}
    return [r for r in records if r["status"] == "failed"
            and ("confirms" not in r or (r["confirms"], r["seed"]) not in confirmed)]


def summarize(run: RunDir, config, started: float | None = None) -> dict[str, Any]:
    """``nas.pareto.analyze`` of the run's records over the objectives and budgets of ``config`` (a
    ``SearchConfig`` or the dict of ``config.yaml``), with the failures and the time taken."""
    from .pareto import analyze, objectives_of

    settings = (config if isinstance(config, dict)
                else dataclasses.asdict(config) if dataclasses.is_dataclass(config) else vars(config))
    objectives, latency_budget_ms = objectives_of(settings)
    records = run.read_trials()
    return {**analyze(records, settings["budget"], objectives, latency_budget_ms), "run": str(run.path),
            "failures": _failures(records),
            "seconds": (time.time() - started) if started else None}


def print_summary(summary: dict[str, Any], budget: int | None = None) -> None:
    """Print ``summarize``'s summary; the budgets are the summary's own (``budget`` is kept for old callers)."""
    from .pareto import (budget_text, confirmed_lines, front_heading, front_table, hypervolume_line, latency_text,
                         missing_seeds, unplaced_line)

    s = summary["by_status"]
    print(f"\ntrials: {s['completed']} completed, {s['stopped']} stopped early, {s['failed']} failed, "
          f"{s['infeasible']} rejected for the {budget_text(summary)} or the space's constraints"
          + (f", {s['interrupted']} interrupted (trained again by --resume)" if s["interrupted"] else "")
          + f"; {s['confirmed']} confirmation trainings")
    for r in summary["failures"]:
        print(f"  failed: {trial_label(r)}: {r['error']}")
    if summary["front"]:
        print(front_heading(summary))
        print("\n".join(front_table(summary)))
        print(hypervolume_line(summary, name_objectives=True))
    if unplaced_line(summary):
        print(unplaced_line(summary))
    if summary["confirmed"]:
        print("\n".join(confirmed_lines(summary)))
    b, pick = summary["best"], summary["pick"]
    latency = "" if b is None or latency_text(b) is None else f", {latency_text(b)}"
    if pick:
        sd = "" if pick["sd"] is None else f" ± {pick['sd']:.4f}"
        lacks = "" if pick["complete"] else f", lacking {missing_seeds(pick)}"
        print(f"recommended pick (*): {trial_label(b)}, confirmed accuracy {pick['mean']:.4f}{sd} over "
              f"{len(pick['seeds'])} seed(s){lacks} (proxy {b['accuracy']:.4f}), {b['flops'] / 1e9:.2f} GFLOPs"
              f"{latency}, {b['params'] / 1e6:.2f} M params")
    elif b:
        within = "the budgets" if summary.get("latency_budget_ms") is not None else "the budget"
        print(f"best within {within} (*): {trial_label(b)}, accuracy {b['accuracy']:.4f}, "
              f"{b['flops'] / 1e9:.2f} GFLOPs{latency}, {b['params'] / 1e6:.2f} M params")
    if summary["seconds"] is not None:
        print(f"time: {summary['seconds'] / 60:.1f} min")
    run = summary["run"]
    print(f"\nthe run is in {run}\nnext:\n  python -m nas.pareto {run}\n  python -m nas.export {run}")
