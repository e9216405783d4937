"""A Ray Tune ``Searcher`` around an Optuna study that never hands Tune a candidate over the FLOP budget.

Why not Ray's ``OptunaSearch`` as it is: Optuna's constraints are values set on the Optuna trial,
which a Ray trainable cannot reach, and ``OptunaSearch`` tells a trial that ASHA stopped early as COMPLETE
with its partial accuracy. Here the driver side does both: ``suggest`` asks the study for a point
(define-by-run, through ``Space.sample``), counts its full-size FLOPs, and if it breaks the budget (or a
constraint of the space) records it ``infeasible``, tells Optuna so (constraint value > 0, which TPE and
NSGA-II learn from, through ``Trial.set_constraint``) and asks again; only feasible candidates reach Ray.
When a trial ends it is told to Optuna as COMPLETE (all epochs), PRUNED (stopped early: kept off the
front) or FAIL, and appended to ``trials.jsonl``.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from ray.tune.schedulers import ASHAScheduler, TrialScheduler
from ray.tune.search import Searcher

from ._run import RunDir
from .arch import Arch
from .space import Space

MAX_REJECTIONS = 500  # consecutive infeasible candidates before the search gives up on the budget


class BudgetSearcher(Searcher):
    def __init__(self, *, study, space: Space, budget: int, epochs: int, run: RunDir,
                 measure: Callable[[Arch], tuple[int, int]], references: list[tuple[str, Arch]] = (),
                 seen: dict[Arch, tuple[float, int]] | None = None, log: Callable[[str], None] = print):
        super().__init__(metric="accuracy", mode="max")
        self.study, self.space, self.budget, self.epochs, self.run = study, space, budget, epochs, run
        self.measure, self.log = measure, log
        self.references = list(references)  # trained first, then the sampler takes over
        self.seen = dict(seen or {})  # arch -> (accuracy, flops) of completed candidates: never trained twice
        self.live: dict[str, dict[str, Any]] = {}  # ray trial id -> what we know of the running candidate
        self.errored: dict[str, Any] = {}  # ray trial id -> Tune trial, failed before Ray wrote its error
        self.rejected = 0

    # ----------------------------------------------------------------------------------------- suggest
    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        if self.references:
            name, arch = self.references.pop(0)
            return self._launch(trial_id, arch, None, reference=name)
        for _ in range(MAX_REJECTIONS):
            otrial = self.study.ask()
            arch = self.space.sample(otrial)
            violations = self.space.constraint_violations(arch)
            if arch in self.seen and not violations:  # the same network again: reuse its result
                acc, flops = self.seen[arch]
                otrial.set_constraint("flops_over_budget", flops - self.budget)
                otrial.set_user_attr("duplicate", True)
                self.study.tell(otrial, [acc, flops])
                continue
            t0 = time.perf_counter()
            flops, params = self.measure(arch)
            timing = time.perf_counter() - t0
            if flops <= self.budget and not violations:
                self.rejected = 0
                return self._launch(trial_id, arch, otrial, flops=flops, params=params, flops_seconds=timing)
            self.rejected += 1
            otrial.set_constraint("flops_over_budget", max(flops - self.budget, 1))
            otrial.set_user_attr("flops", flops)
            self.study.tell(otrial, [0.0, flops])
            reason = f"{flops / 1e9:.2f} GFLOPs > budget" if flops > self.budget else "; ".join(violations)
            self.run.append_trial(trial_record(otrial.number, arch, "infeasible", flops, params,
                                               timings={"flops_s": round(timing, 3)}, error=None, note=reason))
            self.log(f"  candidate {otrial.number}: infeasible ({reason}), not trained")
        self.log(f"  {MAX_REJECTIONS} candidates in a row broke the budget: stopping; raise --budget or "
                 f"narrow the space")
        return Searcher.FINISHED

    def _launch(self, trial_id: str, arch: Arch, otrial, *, reference: str | None = None, flops: int | None = None,
                params: int | None = None, flops_seconds: float = 0.0) -> dict[str, Any]:
        if flops is None:
            t0 = time.perf_counter()
            flops, params = self.measure(arch)
            flops_seconds = time.perf_counter() - t0
        if otrial is None and reference is not None and self.space.contains(arch):
            otrial = self._enqueue(arch)
        number = otrial.number if otrial is not None else None
        if otrial is not None:
            otrial.set_constraint("flops_over_budget", flops - self.budget)
            otrial.set_user_attr("flops", flops)
        self.live[trial_id] = {"otrial": otrial, "arch": arch, "flops": flops, "params": params,
                               "reference": reference, "accuracies": [], "flops_s": flops_seconds,
                               "started": time.time(), "number": number}
        return {"arch": arch.to_dict(), "flops": flops, "params": params, "candidate": number,
                "reference": reference}

    def _enqueue(self, arch: Arch):
        """Put a reference that lies in the space into the study, so the sampler learns from it."""
        self.study.enqueue_trial(self.space.params_of(arch))
        otrial = self.study.ask()
        self.space.sample(otrial)
        return otrial

    # ----------------------------------------------------------------------------------------- results
    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        live = self.live.get(trial_id)
        if live is not None and result and "accuracy" in result and "epoch" in result:
            accs = live["accuracies"]  # Tune passes a trial's last result to on_trial_complete only
            del accs[int(result["epoch"]) - 1:]
            accs.append(float(result["accuracy"]))
            live["train_s"] = float(result.get("train_seconds", 0.0))
            live["node"] = result.get("node")

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        self.on_trial_result(trial_id, result or {})
        if not error:  # a failed trial is finished by the progress callback, which can read its error
            self.finish(trial_id)

    def finish(self, trial_id: str, error: str | None = None) -> dict[str, Any] | None:
        """Record a trial once (later calls for the same trial do nothing) and tell Optuna."""
        live = self.live.pop(trial_id, None)
        if live is None:
            return None
        accs = live["accuracies"]
        if error is not None:
            status = "failed"
        elif len(accs) >= self.epochs:
            status = "completed"
        else:
            status = "stopped" if accs else "failed"
            error = None if accs else "the trial ended before its first epoch"
        otrial, flops = live["otrial"], live["flops"]
        if otrial is not None:
            import optuna

            if status == "completed":
                self.study.tell(otrial, [accs[-1], flops])
                self.seen[live["arch"]] = (accs[-1], flops)
            else:
                self.study.tell(otrial, state=(optuna.trial.TrialState.PRUNED if status == "stopped"
                                               else optuna.trial.TrialState.FAIL))
        record_id = live["number"] if live["number"] is not None else f"ref-{live['reference']}"
        record = trial_record(record_id, live["arch"], status, flops, live["params"], error=error,
                              accuracies=accs, reference=live["reference"], ray_trial_id=trial_id,
                              node=live.get("node"),
                              timings={"flops_s": round(live["flops_s"], 3),
                                       "train_s": round(live.get("train_s", 0.0), 3),
                                       "wall_s": round(time.time() - live["started"], 3)})
        self.run.append_trial(record)
        what = {"completed": f"accuracy {accs[-1]:.4f}" if accs else "",
                "stopped": f"stopped by ASHA after {len(accs)} epoch(s), accuracy {accs[-1]:.4f}" if accs else "",
                "failed": f"FAILED: {error}"}[status]
        self.log(f"  {'ref ' + live['reference'] if live['reference'] else 'trial ' + str(live['number'])}: "
                 f"{status}; {what}")
        return record

    # Tune saves and restores searchers with its experiment; this one keeps its state in the study and
    # trials.jsonl instead (see nas.search: a resumed run starts a new Tune session over the same study).
    def save(self, checkpoint_path: str) -> None:
        pass

    def restore(self, checkpoint_path: str) -> None:
        pass


def trial_record(trial_id: int | str, arch: Arch, status: str, flops: int, params: int, *, error: str | None,
                 accuracies: list[float] = (), reference: str | None = None, ray_trial_id: str | None = None,
                 timings: dict[str, float] | None = None, note: str | None = None, node: str | None = None,
                 **extra: Any) -> dict[str, Any]:
    """One line of ``trials.jsonl``: the shape every reader of a run expects; ``extra`` keys go at the end
    (a confirmation's ``confirms``, ``seed`` and ``fidelity``)."""
    return {
        "trial_id": trial_id,
        "status": status,
        "flops": flops,
        "params": params,
        "accuracy": accuracies[-1] if accuracies else None,
        "epochs": len(accuracies),
        "accuracies": list(accuracies),
        "arch": arch.to_dict(),
        "reference": reference,
        "error": error,
        "note": note,
        "ray_trial_id": ray_trial_id,
        "node": node,
        "timings": timings or {},
        "ended": time.strftime("%Y-%m-%dT%H:%M:%S"),
        **extra,
    }


class CandidateASHA(ASHAScheduler):
    """ASHA for the sampled candidates only: a reference (``--seed-references``) trains all its epochs, so it
    completes, enters the front and can be confirmed beside the search's pick. Its results still count in
    the rungs that judge the candidates."""

    def on_trial_result(self, tune_controller, trial, result: dict[str, Any]) -> str:
        action = super().on_trial_result(tune_controller, trial, result)
        if action == TrialScheduler.STOP and trial.config.get("reference") and result.get("epoch", 0) < self._max_t:
            return TrialScheduler.CONTINUE
        return action
