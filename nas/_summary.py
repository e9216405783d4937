"""What a search prints when it ends: the trials by status, the front, the confirmed pick, what to run next."""

from __future__ import annotations

import time
from typing import Any

from .flops import format_flops
from .rundir import RunDir, trial_label

__all__ = ["summarize", "print_summary"]


def _failures(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The failed records, less a confirmation's failure that a later ``--retry-failed`` confirmed."""
    confirmed = {(r["confirms"], r["seed"]) for r in records if r["status"] == "confirmed"}
    return [r for r in records if r["status"] == "failed"
            and ("confirms" not in r or (r["confirms"], r["seed"]) not in confirmed)]


def summarize(run: RunDir, config, started: float | None = None) -> dict[str, Any]:
    from .pareto import analyze

    records = run.read_trials()
    return {**analyze(records, config.budget), "run": str(run.path),
            "failures": _failures(records),
            "seconds": (time.time() - started) if started else None}


def print_summary(summary: dict[str, Any], budget: int) -> None:
    from .pareto import confirmed_lines, front_table, missing_seeds

    s = summary["by_status"]
    print(f"\ntrials: {s['completed']} completed, {s['stopped']} stopped early, {s['failed']} failed, "
          f"{s['infeasible']} rejected for the budget ({format_flops(budget)}FLOPs) or the space's constraints"
          + (f", {s['interrupted']} interrupted (trained again by --resume)" if s["interrupted"] else "")
          + f"; {s['confirmed']} confirmation trainings")
    for r in summary["failures"]:
        print(f"  failed: {trial_label(r)}: {r['error']}")
    if summary["front"]:
        print("Pareto front (proxy accuracy up, FLOPs down):")
        print("\n".join(front_table(summary)))
        print(f"  hypervolume {summary['hypervolume']:.4f} (reference: accuracy 0, FLOPs = budget)")
    if summary["confirmed"]:
        print("\n".join(confirmed_lines(summary)))
    b, pick = summary["best"], summary["pick"]
    if pick:
        sd = "" if pick["sd"] is None else f" ± {pick['sd']:.4f}"
        lacks = "" if pick["complete"] else f", lacking {missing_seeds(pick)}"
        print(f"recommended pick (*): {trial_label(b)}, confirmed accuracy {pick['mean']:.4f}{sd} over "
              f"{len(pick['seeds'])} seed(s){lacks} (proxy {b['accuracy']:.4f}), {b['flops'] / 1e9:.2f} GFLOPs, "
              f"{b['params'] / 1e6:.2f} M params")
    elif b:
        print(f"best within the budget (*): {trial_label(b)}, accuracy {b['accuracy']:.4f}, "
              f"{b['flops'] / 1e9:.2f} GFLOPs, {b['params'] / 1e6:.2f} M params")
    if summary["seconds"] is not None:
        print(f"time: {summary['seconds'] / 60:.1f} min")
    run = summary["run"]
    print(f"\nthe run is in {run}\nnext:\n  python -m nas.pareto {run}\n  python -m nas.export {run}")
