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
import time
from typing import Any, Callable

from .rundir import RunDir, trial_label, trial_record
from .arch import Arch
from .proxy import MAX_VAL, ProxySettings

__all__ = ["confirm_settings", "confirm_jobs", "confirm", "CONFIRM_DATA_FACTOR", "CONFIRM_SHARE", "SEEDS"]

# Twice the proxy's images per epoch: what fits the bare command's 15 minutes on 2 cores, where a proxy trial
# takes 15-80 s (benchmarks/bench_search.py trial-cost), so 3 candidates x 2 seeds at 2x take 3 waves of
# 30-160 s on 2 slots. nas.calibrate measures what a rung buys for its cost.
CONFIRM_DATA_FACTOR = 2
CONFIRM_SHARE = 0.35  # of a time budget, kept for the confirmation; the proxy phase gets the rest
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


def confirm_jobs(records: list[dict[str, Any]], budget: float | None, k: int, *, references: bool,
                 seed: int, retry_failed: bool = False, latency_budget_ms: float | None = None,
                 objectives: tuple[str, ...] = ("accuracy", "flops")) -> list[dict[str, Any]]:
    """The (candidate, seed) trainings still to do, best proxy accuracy first: the top ``k`` of the front
    within the budget (ties: fewer FLOPs), then with ``references`` every reference completed within it.
    A training recorded ``failed`` is done too (it would fail again), unless ``retry_failed``."""
    ended = ("confirmed",) if retry_failed else ("confirmed", "failed")
    done = {(r["confirms"], r["seed"]) for r in records if "confirms" in r and r["status"] in ended}
    return [{"confirms": r["trial_id"], "reference": r.get("reference"), "seed": s, "arch": r["arch"],
             "flops": r["flops"], "params": r["params"],
             **({"latency_ms": r["latency_ms"]} if r.get("latency_ms") is not None else {})}
            for r in _candidates(records, budget, k, references, latency_budget_ms, objectives)
            for s in range(seed, seed + SEEDS) if (r["trial_id"], s) not in done]


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
            log(f"  confirm {trial_label(job)}, seed {job['seed']}: " + (f"accuracy {accs[-1]:.4f}" if status == "confirmed"
                                                             else f"FAILED: {error}"))

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
    trainable = tune.with_resources(tune.with_parameters(_trainable, data=data, settings=settings, imports=imports), resources)
    tuner = tune.Tuner(
        trainable, param_space={"job": tune.grid_search(jobs)},
        tune_config=tune.TuneConfig(num_samples=1, max_concurrent_trials=slots, time_budget_s=time_budget_s,
                                    reuse_actors=True),
        run_config=tune.RunConfig(name=session, storage_path=str(run.ray.resolve()), verbose=0,
                                  callbacks=[recorder], failure_config=tune.FailureConfig(max_failures=1)))
    tuner.fit()
    return recorder.recorded
