"""The confirmation rung: the front's top K retrained at a higher fidelity with two seeds, as Ray Tune trials.

After the proxy phase, ``confirm_jobs`` takes the top ``K`` of the front (completed trials within the budget,
by proxy accuracy; with ``--seed-references`` also every reference that completed within the budget) and
makes one job per (candidate, seed) for the run's seed and the next one, best candidate first. ``confirm``
trains them through the same trial function as the proxies (``nas.proxy.train_arch``) under
``confirm_settings``, as a second Ray Tune experiment (``ray/session-K-confirm``: a grid over the fixed list,
no searcher, no scheduler, so no early stopping). Each job that finishes all its epochs is appended to
``trials.jsonl`` as it ends, ``status: confirmed``, with ``confirms`` (the proxy record's ``trial_id``),
``seed``, ``fidelity`` and the last epoch's per-image results (``correct``, ``val_images``). A job cut off
(time budget, interruption) is not recorded, and ``--resume`` runs exactly the (candidate, seed) pairs
without a record; one that raises is recorded ``failed`` once: it would fail again, so ``--resume`` leaves
it be unless asked to ``--retry-failed``. ``nas.pareto.analyze`` turns the records into the pick.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Any, Callable

from .rundir import RunDir, trial_label, trial_record
from .arch import Arch
from .proxy import MAX_VAL, ProxySettings

__all__ = ["confirm_settings", "confirm_jobs", "confirm", "confirmation_estimate_s", "ConfirmReserve",
           "CONFIRM_DATA_FACTOR", "CONFIRM_SHARE", "RESERVE_MAX", "SEEDS"]

# Twice the proxy's images per epoch: what fits the bare command's 15 minutes on 2 cores, where a proxy trial
# takes 15-80 s (benchmarks/bench_search.py trial-cost), so 3 candidates x 2 seeds at 2x take 3 waves of
# 30-160 s on 2 slots. nas.calibrate measures what a rung buys for its cost.
CONFIRM_DATA_FACTOR = 2
# Under a time budget the proxy phase ends early enough for the confirmation to fit (ConfirmReserve): while no
# candidate within the budget has completed, nothing says what the confirmation costs and CONFIRM_SHARE of the
# time budget is kept for it; from then on, the estimate (confirmation_estimate_s), at most RESERVE_MAX of it.
CONFIRM_SHARE = 0.35
RESERVE_MAX = 0.5
# starting the confirmation's Ray Tune experiment, with some margin: the README's demo run spent about 3 s of its
# 14-s confirmation (two waves of 5.3 and 6.1 s of training, its log counts whole seconds) outside the trainings
CONFIRM_START_S = 5.0
SEEDS = 2  # the run's seed and the next one


def confirm_settings(proxy: ProxySettings, max_train: int | None = None) -> ProxySettings:
    """The confirmation's training: ``max_train`` images per epoch (default: ``CONFIRM_DATA_FACTOR`` times the
    proxy's; a proxy on the whole training split stays there), the proxy's epochs and recipe otherwise."""
    if max_train is None and proxy.max_train is not None:
        max_train = CONFIRM_DATA_FACTOR * proxy.max_train
    return dataclasses.replace(proxy, max_train=max_train)


def fidelity_of(settings: ProxySettings, data) -> dict[str, Any]:
    """What a confirmation record says about its training: the settings (less ASHA's grace period, unused
    here) and the images it really trained and was scored on (the training split caps ``max_train``)."""
    train = len(data.train_x) if settings.max_train is None else min(settings.max_train, len(data.train_x))
    knobs = {k: v for k, v in settings.to_dict().items() if k != "grace_period"}
    return {**knobs, "train_images": train, "val_images": min(MAX_VAL, len(data.val_x))}


def _candidates(records: list[dict[str, Any]], budget: float | None, k: int, references: bool,
                latency_budget_ms: float | None = None, objectives: tuple[str, ...] = ("accuracy", "flops")
                ) -> list[dict[str, Any]]:
    from .pareto import analyze, within_budgets

    front = [r for r in analyze(records, budget, objectives, latency_budget_ms)["front"]
             if within_budgets(r, budget, latency_budget_ms)]
    top = sorted(front, key=lambda r: (-r["accuracy"], r["flops"]))[:k]
    refs = [r for r in records if references and r["status"] == "completed" and r.get("reference")
            and within_budgets(r, budget, latency_budget_ms)]
    return list({r["trial_id"]: r for r in top + refs}.values())  # a reference on the top of the front once


def _pending(candidates: list[dict[str, Any]], records: list[dict[str, Any]], seed: int,
             retry_failed: bool = False) -> list[tuple[dict[str, Any], int]]:
    """The (candidate, seed) trainings still to do, in ``candidates``' order, for the run's seed and the next
    ones: those without a record ``confirmed``, or ``failed`` (it would fail again) unless ``retry_failed``."""
    ended = ("confirmed",) if retry_failed else ("confirmed", "failed")
    done = {(r["confirms"], r["seed"]) for r in records if "confirms" in r and r["status"] in ended}
    return [(r, s) for r in candidates for s in range(seed, seed + SEEDS) if (r["trial_id"], s) not in done]


def confirm_jobs(records: list[dict[str, Any]], budget: float | None, k: int, *, references: bool,
                 seed: int, retry_failed: bool = False, latency_budget_ms: float | None = None,
                 objectives: tuple[str, ...] = ("accuracy", "flops")) -> list[dict[str, Any]]:
    """The (candidate, seed) trainings still to do, best proxy accuracy first: the top ``k`` of the front
    within the budget (ties: fewer FLOPs), then with ``references`` every reference completed within it.
    A training recorded ``failed`` is done too (it would fail again), unless ``retry_failed``."""
    top = _candidates(records, budget, k, references, latency_budget_ms, objectives)
    return [{"confirms": r["trial_id"], "reference": r.get("reference"), "seed": s, "arch": r["arch"],
             "flops": r["flops"], "params": r["params"],
             **({"latency_ms": r["latency_ms"]} if r.get("latency_ms") is not None else {})}
            for r, s in _pending(top, records, seed, retry_failed)]


def job_seconds(candidate: dict[str, Any], data_factor: float) -> float:
    """A confirmation training's expected seconds: its candidate's proxy trial time (``timings.train_s``: build,
    every epoch and its evaluation) times ``data_factor``, the confirmation's images per epoch over the proxy's,
    plus the rest of the proxy's wall time (waiting for a worker, shipping the data), which does not grow with
    the images. Scaling the evaluation and the build too errs on the long side."""
    timings = candidate.get("timings") or {}
    train = float(timings.get("train_s") or 0.0)
    return train * data_factor + max(0.0, float(timings.get("wall_s") or train) - train)


def makespan(costs: list[float], slots: int) -> float:
    """Wall seconds of jobs taken in order by ``slots`` workers, each job by the worker that frees first."""
    free = [0.0] * max(1, slots)
    for cost in costs:
        free[free.index(min(free))] += cost
    return max(free)


def confirmation_estimate_s(records: list[dict[str, Any]], budget: float | None, k: int, *, references: bool,
                            seed: int, slots: int, data_factor: float, latency_budget_ms: float | None = None,
                            objectives: tuple[str, ...] = ("accuracy", "flops")) -> float | None:
    """Seconds the confirmation of the run as it stands would take (None while no candidate within the budget
    has completed): the trainings ``confirm_jobs`` would make, each ``job_seconds`` long, best first on
    ``slots`` workers, after ``CONFIRM_START_S``. While the top of the front holds fewer than ``k`` sampled
    candidates, each missing one counts as its seeds' trainings at the median cost of those it holds."""
    top = _candidates(records, budget, k, references, latency_budget_ms, objectives)
    if not top:
        return None
    cost = {r["trial_id"]: job_seconds(r, data_factor) for r in top}
    missing = k - sum(1 for r in top if not r.get("reference"))
    costs = ([cost[r["trial_id"]] for r, _ in _pending(top, records, seed)]
             + [statistics.median(cost.values())] * (missing * SEEDS))
    return CONFIRM_START_S + makespan(costs, slots)


class ConfirmReserve:
    """When the proxy phase of a search under a time budget ends: ``total_s`` after ``started``, less the time
    the confirmation will need. ``records`` gives the run's records as they are now (re-read when their count
    changes); the other arguments are ``confirmation_estimate_s``'s. The reserve is ``CONFIRM_SHARE`` of the
    time budget until the estimate exists, then the estimate, never above ``RESERVE_MAX`` of the budget."""

    def __init__(self, records: Callable[[], list[dict[str, Any]]], *, started: float, total_s: float,
                 **estimate: Any):
        self.records, self.started, self.total_s, self.estimate = records, started, total_s, estimate
        self._seen: int | None = None
        self._reserve = CONFIRM_SHARE * total_s
        self.estimated: float | None = None  # the last estimate, None while there is none

    def reserve_s(self) -> float:
        records = self.records()
        if len(records) != self._seen:
            self._seen = len(records)
            self.estimated = confirmation_estimate_s(records, **self.estimate)
            self._reserve = (CONFIRM_SHARE * self.total_s if self.estimated is None
                             else min(self.estimated, RESERVE_MAX * self.total_s))
        return self._reserve

    def deadline(self) -> float:
        """The proxy phase's end (``time.time()``)."""
        return self.started + self.total_s - self.reserve_s()


def _trainable(config: dict[str, Any], data=None, settings: ProxySettings = ProxySettings(),
               imports: tuple[str, ...] = ()) -> None:
    """One confirmation: the proxies' trial function with the job's seed and the confirmation's settings."""
    from ._trial import trainable as train

    job = config["job"]
    train(job, data=data, proxy=settings, seed=job["seed"], imports=imports)


def _recorder(run: RunDir, settings: ProxySettings, fidelity: dict[str, Any], log: Callable[[str], None]):
    """A Tune callback that appends each confirmation to ``trials.jsonl`` as it ends (all epochs: ``confirmed``;
    an error: ``failed``; cut short: nothing, so that ``--resume`` runs it again)."""
    from ray.tune import Callback

    from ._trial import error_text

    class Recorder(Callback):
        def __init__(self):
            self.accuracies: dict[str, list[float]] = {}
            self.last: dict[str, dict[str, Any]] = {}
            self.started: dict[str, float] = {}
            self.recorded = 0

        def on_trial_start(self, iteration, trials, trial, **info):
            self.started[trial.trial_id] = time.time()

        def on_trial_result(self, iteration, trials, trial, result, **info):
            if "error" in result:
                self.last[trial.trial_id] = result
            elif "accuracy" in result and "epoch" in result:
                accs = self.accuracies.setdefault(trial.trial_id, [])
                del accs[int(result["epoch"]) - 1:]
                accs.append(float(result["accuracy"]))
                self.last[trial.trial_id] = result

        def on_trial_complete(self, iteration, trials, trial, **info):
            self.on_trial_result(iteration, trials, trial, trial.last_result or {})
            error = self.last.get(trial.trial_id, {}).get("error")
            if error is not None:  # the trial function caught its failure: it would happen again, not retried
                self._append(trial, "failed", str(error))
            elif len(self.accuracies.get(trial.trial_id, [])) >= settings.epochs:
                self._append(trial, "confirmed", None)

        def on_trial_error(self, iteration, trials, trial, **info):
            self._append(trial, "failed", error_text(trial) or f"the confirmation failed; see {run.ray}")

        def _append(self, trial, status: str, error: str | None) -> None:
            job, accs = trial.config["job"], self.accuracies.get(trial.trial_id, [])
            last = self.last.get(trial.trial_id, {})
            record = trial_record(f"{job['confirms']}-c{job['seed']}", Arch.from_dict(job["arch"]), status,
                                  job["flops"], job["params"], error=error, accuracies=accs,
                                  reference=job["reference"], ray_trial_id=trial.trial_id, node=last.get("node"),
                                  timings={"train_s": round(float(last.get("train_seconds", 0.0)), 3),
                                           "wall_s": round(time.time() - self.started.get(trial.trial_id,
                                                                                          time.time()), 3)},
                                  confirms=job["confirms"], seed=job["seed"], fidelity=fidelity,
                                  **({"latency_ms": job["latency_ms"]} if "latency_ms" in job else {}),
                                  **{k: last[k] for k in ("correct", "val_images") if k in last})
            run.append_trial(record)
            if status == "confirmed":
                self.recorded += 1
            outcome = f"accuracy {accs[-1]:.4f}" if status == "confirmed" else f"FAILED: {error}"
            log(f"  confirm {trial_label(job)}, seed {job['seed']}: {outcome}")

    return Recorder()


def confirm(jobs: list[dict[str, Any]], *, run: RunDir, data, settings: ProxySettings, session: str,
            resources: dict[str, float], slots: int, time_budget_s: float | None,
            log: Callable[[str], None], imports: tuple[str, ...] = ()) -> int:
    """Train ``jobs`` (``confirm_jobs``) as one Ray Tune experiment, ``slots`` at a time, within
    ``time_budget_s``; Ray must be running. Returns how many finished and were recorded ``confirmed``."""
    from ray import tune

    from .data import resize_data

    data = resize_data(data, settings.image_size)
    recorder = _recorder(run, settings, fidelity_of(settings, data), log)
    trainable = tune.with_resources(tune.with_parameters(_trainable, data=data, settings=settings, imports=imports),
                                    resources)
    tuner = tune.Tuner(
        trainable, param_space={"job": tune.grid_search(jobs)},
        tune_config=tune.TuneConfig(num_samples=1, max_concurrent_trials=slots, time_budget_s=time_budget_s,
                                    reuse_actors=True),
        run_config=tune.RunConfig(name=session, storage_path=str(run.ray.resolve()), verbose=0,
                                  callbacks=[recorder], failure_config=tune.FailureConfig(max_failures=1)))
    tuner.fit()
    return recorder.recorded
