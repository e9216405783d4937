"""A Ray Tune ``Searcher`` around an Optuna study that never hands Tune a candidate over its budgets.

Why not Ray's ``OptunaSearch`` as it is: Optuna's constraints are values set on the Optuna trial,
which a Ray trainable cannot reach, and ``OptunaSearch`` tells a trial that ASHA stopped early as COMPLETE
with its partial accuracy. Here the driver side does both: ``suggest`` asks the study for a point
(define-by-run, through ``Space.sample``), counts its full-size FLOPs, and if it breaks the budget (or a
constraint of the space) records it ``infeasible``, tells Optuna so (constraint value > 0, which TPE and
NSGA-II learn from, through ``Trial.set_constraint``) and asks again; only feasible candidates reach Ray.
With a latency target (``nas._costs.Costs``) a candidate within the FLOP budget has its latency predicted
(and, near the latency budget, measured) and is judged against the latency budget the same way.
A candidate that breaks a cheap constraint of the space (widths that decrease, the total depth) is refused
before its FLOPs are counted, and a network proposed again is never trained twice in one run: not when it
trained before (its result is told to Optuna again), nor while the same network trains in another slot.
Neither kind of duplicate uses up the give-up counter, which counts consecutive infeasible candidates only.

When a trial ends it is told to Optuna as COMPLETE (all epochs), PRUNED (stopped early by ASHA: kept off the
front) or FAIL (an error, or ``interrupted``: cut off by the time budget or the end of the run, and put
back into the study to be trained first by ``--resume``), and appended to ``trials.jsonl``. A reference
(``--seed-references``) trains outside the study and is recorded ``ref-NAME``; one that lies in the space is
added to the study as a finished trial of its own when it ends (``study.add_trial``), never queued.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import optuna
from ray.tune.schedulers import ASHAScheduler, TrialScheduler
from ray.tune.search import Searcher

from ._costs import Costs
from .rundir import RunDir, trial_label, trial_record
from .arch import Arch
from .space import Space

MAX_REJECTIONS = 500  # consecutive infeasible candidates before the search gives up on the budget
MAX_DUPLICATES = 200  # consecutive proposals of networks already trained or training: the space is used up
# consecutive candidates over the latency budget, none feasible yet in the run: the budget lies below what the
# space builds (each costs a latency prediction, seconds while the table is cold, so fewer than MAX_REJECTIONS)
MAX_LATENCY_REJECTIONS = 50


class BudgetSearcher(Searcher):
    def __init__(self, *, study, space: Space, budget: int | None, epochs: int, run: RunDir,
                 measure: Callable[[Arch], tuple[int, int]], references: list[tuple[str, Arch]] = (),
                 history: list[dict[str, Any]] = (), log: Callable[[str], None] = print, costs: Costs | None = None,
                 deadline: Callable[[], float] | None = None):
        super().__init__(metric="accuracy", mode="max")
        self.study, self.space, self.budget, self.epochs, self.run = study, space, budget, epochs, run
        self.measure, self.log = measure, log
        self.costs = costs or Costs(budget, ("accuracy", "flops"), None, measure, log)
        # when the proxy phase ends (time.time(), asked anew each time: nas._confirm.ConfirmReserve moves it):
        # proposing stops there, as the stopper that ends Tune's experiment cannot interrupt a suggest() that
        # rejects candidate after candidate (each latency prediction can take seconds)
        self.deadline = deadline
        self.references = list(references)  # trained first, then the sampler takes over
        # arch -> the record of its training (or of its rejection) in this run: never trained or counted twice
        self.outcomes: dict[Arch, dict[str, Any]] = {
            Arch.from_dict(r["arch"]): r for r in history
            if r["status"] in ("completed", "stopped", "failed", "infeasible")}
        self.live: dict[str, dict[str, Any]] = {}  # ray trial id -> what we know of the running candidate
        self.errored: dict[str, Any] = {}  # ray trial id -> Tune trial, failed before Ray wrote its error
        self.asha_stopped: set[str] = set()  # ray trial ids that ASHA stopped (CandidateASHA adds them)
        self.rejected = self.duplicates = 0  # consecutive, since the last candidate launched
        self.reasons: dict[str, int] = {}  # why the rejected ones were rejected (since the last launch)
        self.least_over: int | None = None  # the cheapest over-budget FLOPs among them
        self.fastest_over: float | None = None  # the fastest over-budget latency among them
        self.fastest_seen: float | None = None  # the fastest latency of any candidate of this session
        self.launched = any(r["status"] in ("completed", "stopped", "failed") for r in self.outcomes.values())
        self.gave_up: str | None = None  # the give-up message, when the searcher stopped the search

    # ----------------------------------------------------------------------------------------- suggest
    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        if self.references:
            name, arch = self.references.pop(0)
            return self._launch(trial_id, arch, None, reference=name)
        while self.rejected < MAX_REJECTIONS and self.duplicates < MAX_DUPLICATES and not self._latency_hopeless():
            if self.deadline is not None and time.time() >= self.deadline():
                return None  # nothing now: the deadline's stopper ends the session
            otrial = self.study.ask()
            arch = self.space.sample(otrial)
            if self._duplicate(otrial, arch):
                self.duplicates += 1
                continue
            violations = self.space.constraint_violations(arch)
            flops = params = None
            timing, latency = 0.0, {}
            if not violations:  # cheap checks first: FLOPs are counted only for networks the space allows
                t0 = time.perf_counter()
                flops, params = self.measure(arch)
                timing = time.perf_counter() - t0
                if self.costs.flops_over(flops) <= 0:  # then latency, for networks within the FLOP budget
                    t0 = time.perf_counter()
                    latency = self.costs.latency_of(arch)
                    timing_latency = time.perf_counter() - t0
                    if (self.costs.latency_over(latency.get("latency_ms")) or 0) <= 0:
                        self.rejected = self.duplicates = 0
                        self.reasons, self.least_over, self.fastest_over = {}, None, None
                        return self._launch(trial_id, arch, otrial, flops=flops, params=params,
                                            flops_seconds=timing, latency=latency, latency_seconds=timing_latency)
            self._reject(otrial, arch, violations, flops, params, timing, latency)
        self.gave_up = self._give_up_message()
        self.log(self.gave_up)
        return Searcher.FINISHED

    def _latency_hopeless(self) -> bool:
        return not self.launched and self.reasons.get("over the latency budget", 0) >= MAX_LATENCY_REJECTIONS

    def latency_blocked(self) -> bool:
        """Whether nothing could be trained because every candidate within the FLOP budget broke the latency
        budget: the user's to fix (``nas._loop`` stops with the give-up message as the error)."""
        return not self.launched and self.fastest_over is not None

    def _duplicate(self, otrial, arch: Arch) -> bool:
        """A network trained (or rejected) before in this run, or training now: its known outcome is told to
        Optuna for this trial too, nothing is trained or counted. True if ``arch`` was such a duplicate."""
        import optuna

        state = optuna.trial.TrialState
        before = self.outcomes.get(arch)
        running = next((live for live in self.live.values() if live["arch"] == arch), None)
        if before is None and running is None:
            return False
        otrial.set_user_attr("duplicate_of", before["trial_id"] if before is not None else
                             running["number"] if running["number"] is not None else f"ref-{running['reference']}")
        if before is not None and before["status"] in ("completed", "infeasible"):
            self._tell_known(otrial, before)
        else:  # stopped early, failed, or training now: nothing to tell but that this proposal is not new
            self.study.tell(otrial, state=state.PRUNED if before is not None and before["status"] == "stopped"
                            else state.FAIL)
        return True

    def _tell_known(self, otrial, record: dict[str, Any]) -> None:
        """Tell ``otrial`` the outcome of an earlier record of the same network (completed or infeasible)."""
        completed = record["status"] == "completed"
        self._constrain(otrial, record["flops"], record.get("latency_ms"), feasible=completed)
        self.study.tell(otrial, self.costs.values(record["accuracy"] if completed else 0.0, record["flops"],
                                                  record.get("latency_ms")))

    def _constrain(self, otrial, flops: int | None, latency_ms: float | None, *, feasible: bool) -> None:
        """Set each budget's constraint on ``otrial``; an infeasible one breaks at least one (value >= 1)."""
        values = self.costs.constraints(flops, latency_ms)
        if not feasible:
            broken = {k: v for k, v in values.items() if v > 0}
            if not broken:  # a constraint of the space: every budget counts as broken
                values = {k: max(v, 1.0) for k, v in values.items()} or {"space_constraints": 1.0}
        for name, value in values.items():
            otrial.set_constraint(name, value)
        # optuna-dashboard (0.21) reads feasibility only from a list under "constraints" (the format of the
        # deprecated constraints_func), not from set_constraint's "constraints:NAME" keys: both are written
        otrial.storage.set_trial_system_attr(otrial._trial_id, "constraints", list(values.values()))

    def _reject(self, otrial, arch: Arch, violations: list[str], flops: int | None, params: int | None,
                timing: float, latency: dict[str, Any] | None = None) -> None:
        """Record an infeasible candidate and tell Optuna (a constraint value > 0, which TPE and NSGA-II learn
        from). A constraint of the space is checked before FLOPs are counted: then ``flops`` is None; latency
        is predicted only within the FLOP budget."""
        self.rejected += 1
        latency = latency or {}
        latency_ms = latency.get("latency_ms")
        if violations:
            reason = "; ".join(violations)
            self.reasons["broke the space's constraints"] = self.reasons.get("broke the space's constraints", 0) + 1
        elif self.costs.flops_over(flops) > 0:
            reason = f"{flops / 1e9:.2f} GFLOPs > budget"
            self.reasons["over the budget"] = self.reasons.get("over the budget", 0) + 1
            self.least_over = flops if self.least_over is None else min(self.least_over, flops)
        else:
            how = "measured" if latency["latency"]["measured_ms"] is not None else "predicted"
            reason = f"{latency_ms:.2f} ms ({how}) > latency budget"
            self.reasons["over the latency budget"] = self.reasons.get("over the latency budget", 0) + 1
            self.fastest_over = latency_ms if self.fastest_over is None else min(self.fastest_over, latency_ms)
        if latency_ms is not None:
            self.fastest_seen = latency_ms if self.fastest_seen is None else min(self.fastest_seen, latency_ms)
        if flops is not None:
            otrial.set_user_attr("flops", flops)
        self._constrain(otrial, flops, latency_ms, feasible=False)
        self.study.tell(otrial, self.costs.values(0.0, flops, latency_ms))
        record = trial_record(otrial.number, arch, "infeasible", flops, params,
                              timings={"flops_s": round(timing, 3)}, error=None, note=reason, **latency)
        self.run.append_trial(record)
        self.outcomes[arch] = record
        self.log(f"  candidate {otrial.number}: infeasible ({reason}), not trained")

    def _give_up_message(self) -> str:
        if self.latency_blocked():
            n = self.reasons.get("over the latency budget", 0)
            return (f"  stopping: all {n} candidates within the FLOP budget were over the latency budget of "
                    f"{self.costs.latency_budget:g} ms on {self.costs.target.describe()}, and none was trained; the "
                    f"fastest network seen took {self.fastest_over:.2f} ms: raise --latency-budget above it, or "
                    f"narrow the space to faster operators and smaller widths")
        trained = sum(r["status"] in ("completed", "stopped", "failed") for r in self.outcomes.values())
        if self.duplicates >= MAX_DUPLICATES:
            return (f"  stopping: the sampler proposed {MAX_DUPLICATES} networks in a row that this run had trained, "
                    f"rejected or was training ({trained} trained so far): the space has few more to offer; widen "
                    f"the space, or ask for fewer --trials")
        why = ", ".join(f"{n} {reason}" for reason, n in self.reasons.items())
        least = (f"; the cheapest of them needed {self.least_over / 1e9:.3g} GFLOPs against the budget's "
                 f"{self.budget / 1e9:.3g} G" if self.least_over is not None else "")
        if self.fastest_over is not None:
            least += (f"; the fastest network seen took {self.fastest_over:.2f} ms against the latency budget's "
                      f"{self.costs.latency_budget:g} ms")
        raise_what = "raise --latency-budget" if "over the latency budget" in self.reasons else "raise --budget"
        fixes = [raise_what, "narrow the space to cheaper widths, depths and operators"]
        if isinstance(self.study.sampler, optuna.samplers.RandomSampler):  # the default never learns the budget
            fixes.append("let a sampler learn where the budget lies (--sampler tpe or evolution)")
        return (f"  stopping: the last {MAX_REJECTIONS} candidates the sampler proposed were all infeasible ({why}"
                f"{least}), and {trained} {'was' if trained == 1 else 'were'} trained; {', '.join(fixes[:-1])} "
                f"or {fixes[-1]}")

    def _launch(self, trial_id: str, arch: Arch, otrial, *, reference: str | None = None, flops: int | None = None,
                params: int | None = None, flops_seconds: float = 0.0, latency: dict[str, Any] | None = None,
                latency_seconds: float = 0.0) -> dict[str, Any]:
        if flops is None:
            t0 = time.perf_counter()
            flops, params = self.measure(arch)
            flops_seconds = time.perf_counter() - t0
        if latency is None:
            t0 = time.perf_counter()
            latency = self.costs.latency_of(arch)
            latency_seconds = time.perf_counter() - t0
        number = otrial.number if otrial is not None else None
        self.launched = True
        if otrial is not None:
            self._constrain(otrial, flops, latency.get("latency_ms"), feasible=True)
            otrial.set_user_attr("flops", flops)
        self.live[trial_id] = {"otrial": otrial, "arch": arch, "flops": flops, "params": params,
                               "reference": reference, "accuracies": [], "flops_s": flops_seconds,
                               "latency": latency, "latency_s": latency_seconds,
                               "started": time.time(), "number": number}
        return {"arch": arch.to_dict(), "flops": flops, "params": params, "candidate": number,
                "reference": reference}

    def _tell_reference(self, live: dict[str, Any], status: str) -> None:
        """Add a reference that lies in the space to the study as a finished trial of its own, so the sampler
        learns from it. It is added when it ends, never queued: a queue hands out its oldest waiting trial
        (a candidate cut off and put back, on ``--resume``), which would then hold the reference's result."""
        import optuna

        arch, flops = live["arch"], live["flops"]
        if not self.space.contains(arch):
            return
        scratch = optuna.create_study(directions=self.costs.directions)  # only to learn the distributions
        scratch.enqueue_trial(self.space.params_of(arch))
        probe = scratch.ask()
        self.space.sample(probe)
        constraints = self.costs.constraints(flops, live["latency"].get("latency_ms"))
        state = {"completed": optuna.trial.TrialState.COMPLETE, "stopped": optuna.trial.TrialState.PRUNED}.get(
            status, optuna.trial.TrialState.FAIL)
        self.study.add_trial(optuna.trial.create_trial(
            state=state, values=(self.costs.values(live["accuracies"][-1], flops, live["latency"].get("latency_ms"))
                                 if status == "completed" else None),
            params=probe.params, distributions=probe.distributions,
            user_attrs={"reference": live["reference"], "flops": flops},
            constraints=constraints or None, system_attrs={"constraints": list(constraints.values())}))

    # ----------------------------------------------------------------------------------------- results
    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        live = self.live.get(trial_id)
        if live is not None and result and "error" in result:  # the trial function caught its failure
            live["error"] = str(result["error"])
            live["train_s"] = float(result.get("train_seconds", 0.0))
            live["node"] = result.get("node")
        elif live is not None and result and "accuracy" in result and "epoch" in result:
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
        error = error or live.get("error")
        if error is not None:
            status = "failed"
        elif len(accs) >= self.epochs:
            status = "completed"
        elif trial_id in self.asha_stopped:
            status = "stopped"
        else:  # cut off by the time budget, Ctrl-C or the end of the run: not a result, trained again on resume
            status = "interrupted"
        otrial, flops = live["otrial"], live["flops"]
        if otrial is not None:
            import optuna

            if status == "completed":
                self.study.tell(otrial, self.costs.values(accs[-1], flops, live["latency"].get("latency_ms")))
            else:
                self.study.tell(otrial, state=(optuna.trial.TrialState.PRUNED if status == "stopped"
                                               else optuna.trial.TrialState.FAIL))
            if status == "interrupted":
                self.study.enqueue_trial(otrial.params, user_attrs={"retrains": otrial.number},
                                         skip_if_exists=False)
        if live["reference"] is not None and status != "interrupted":
            self._tell_reference(live, status)
        record_id = live["number"] if live["number"] is not None else f"ref-{live['reference']}"
        record = trial_record(record_id, live["arch"], status, flops, live["params"], error=error,
                              accuracies=accs, reference=live["reference"], ray_trial_id=trial_id,
                              node=live.get("node"),
                              timings={"flops_s": round(live["flops_s"], 3),
                                       **({"latency_s": round(live["latency_s"], 3)} if live["latency"] else {}),
                                       "train_s": round(live.get("train_s", 0.0), 3),
                                       "wall_s": round(time.time() - live["started"], 3)}, **live["latency"])
        self.run.append_trial(record)
        if status != "interrupted":
            self.outcomes[live["arch"]] = record
        what = {"completed": f"accuracy {accs[-1]:.4f}" if accs else "",
                "stopped": f"stopped by ASHA after {len(accs)} epoch(s), accuracy {accs[-1]:.4f}" if accs else "",
                "failed": f"FAILED: {error}",
                "interrupted": f"cut off after {len(accs)} epoch(s); --resume trains it again"}[status]
        self.log(f"  {trial_label(record)}: {status}; {what}")
        return record

    # Tune saves and restores searchers with its experiment; this one keeps its state in the study and
    # trials.jsonl instead (see nas.search: a resumed run starts a new Tune session over the same study).
    def save(self, checkpoint_path: str) -> None:
        pass

    def restore(self, checkpoint_path: str) -> None:
        pass


class CandidateASHA(ASHAScheduler):
    """ASHA for the sampled candidates only: a reference (``--seed-references``) trains all its epochs, so it
    completes, enters the front and can be confirmed beside the search's pick. Its results still count in
    the rungs that judge the candidates. The ids of the trials it stops go into ``stopped`` (the searcher's
    ``asha_stopped``), so that a trial cut off otherwise is not mistaken for one that ASHA stopped."""

    def __init__(self, *args, stopped: set[str] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.stopped = stopped if stopped is not None else set()

    def on_trial_result(self, tune_controller, trial, result: dict[str, Any]) -> str:
        if "error" in result:  # the trial's failure, reported as its last result
            return TrialScheduler.STOP
        action = super().on_trial_result(tune_controller, trial, result)
        if action == TrialScheduler.STOP and trial.config.get("reference") and result.get("epoch", 0) < self._max_t:
            return TrialScheduler.CONTINUE
        if action == TrialScheduler.STOP:
            self.stopped.add(trial.trial_id)
        return action
