"""The search loop: Optuna proposes, ``nas._searcher`` filters by the budget, Ray Tune trains the proxies.

``search(config, run=...)`` runs (or continues) one search into a run folder (``nas.rundir``); the command
line (``nas.search``) and the printed summary (``nas._summary``) sit around it.

Optuna's samplers (random by default: none beat it beyond noise, docs/benchmarks.md; TPE, NSGA-II, regularized
evolution: ``nas.evolution``) propose architectures through a Ray Tune searcher
(``nas._searcher.BudgetSearcher``); each one's full-size FLOPs are counted before any training and a candidate
over the budget is recorded ``infeasible`` and never trained.
Feasible candidates train as proxies (``nas.proxy.train_arch``) in Ray Tune trials, cut short by ASHA when they
trail. Then the confirmation rung (``nas._confirm``) retrains the front's top ``--confirm`` K at a higher
fidelity with two seeds each. With a time budget, the proxy phase ends early enough for the confirmation of the
front as it stands to fit (``nas._confirm.ConfirmReserve``: an estimate from the top candidates' training times).

The study is the run's own: its name (``study_name`` in ``config.yaml``) is unique to the run, so several
runs can share one ``--storage`` database without mixing.

Failures. A trial that raises (a build error, a NaN loss, out of memory) would raise again: the trial
function catches it and reports it as the trial's last result, so Ray does not retry it and the searcher
records it ``failed``. Only a trial whose worker is lost (a node that dies, a killed process) is retried,
once, by Ray (``FailureConfig(max_failures=1)``).

Interruptions. A trial cut off by the time budget, Ctrl-C or a crash of the driver is ``interrupted``: it
does not count as trained, and its candidate is put back into the study (``enqueue_trial``) so that
``--resume`` trains it first. ``--resume`` also fails in the study the trials a killed driver left RUNNING,
and puts them back the same way; it reseeds the sampler past the trials it has seen (a recreated seeded
sampler would otherwise repeat its first proposals) and starts a new Ray Tune session under ``ray/session-K``.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from pathlib import Path
from typing import Any

from ._confirm import RESERVE_MAX, ConfirmReserve, confirm_settings, fidelity_of
from ._trial import error_text, trainable
from .cluster import slots, start_ray
from .errors import OpmixError
from .flops import format_flops, measure_arch
from .proxy import ProxySettings
from .rundir import RunDir, append_line, trial_label
from .storage import open_storage

__all__ = ["SearchConfig", "search", "make_sampler"]

TRAINED = ("completed", "stopped", "failed")  # statuses of a candidate that has had its training


@dataclasses.dataclass(frozen=True)
class SearchConfig:
    """Everything that defines a run; written to ``config.yaml`` and fixed for the run's life."""

    budget: int | None  # FLOPs; None: latency alone is the budget
    space: str = "hybrid"
    trials: int = 20
    epochs: int = 4
    dataset: str = "fashion-mnist"
    data_dir: str | None = None
    sampler: str = "random"  # no sampler beat it beyond noise (docs/benchmarks.md#does-the-search-beat-random)
    seed: int = 0
    width_mult: float = 0.25
    max_train: int = 1536
    batch_size: int = 64
    image_size: int | None = None
    lr: float = 3e-3
    grace_period: int = 2
    scale_windows: bool = True
    early_stop: bool = True
    seed_references: bool = False
    confirm: int = 3  # candidates the confirmation rung retrains; 0: none
    confirm_max_train: int | None = None  # images per epoch of a confirmation; set when the run starts
    objectives: tuple[str, ...] = ("accuracy", "flops")  # nas._costs.OBJECTIVES
    # the latency target and budget: {target, threads, batch, dtype, budget_ms, table}, or None (nas.latency)
    latency: dict[str, Any] | None = None

    # what --resume may not change
    FIXED = ("budget", "space", "dataset", "data_dir", "sampler", "seed", "epochs", "width_mult", "max_train",
             "batch_size", "image_size", "lr", "grace_period", "scale_windows", "early_stop", "confirm_max_train",
             "objectives", "latency")

    def __post_init__(self):
        object.__setattr__(self, "objectives", tuple(self.objectives))

    def to_dict(self) -> dict[str, Any]:
        """The configuration as ``config.yaml`` holds it (plain lists and mappings)."""
        return {**dataclasses.asdict(self), "objectives": list(self.objectives)}

    @property
    def latency_budget_ms(self) -> float | None:
        return (self.latency or {}).get("budget_ms")

    def costs(self, log=print):
        """The run's budgets and objectives (``nas._costs.Costs``), with its latency table when it has a target."""
        from ._costs import Costs

        return Costs(self.budget, self.objectives, self.latency, measure_arch, log)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> SearchConfig:
        """The configuration in a run's ``config.yaml`` (its other keys, such as ``storage``, left out)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})

    @property
    def proxy(self) -> ProxySettings:
        return ProxySettings(max_train=self.max_train, epochs=self.epochs, width_mult=self.width_mult,
                             image_size=self.image_size, batch_size=self.batch_size, lr=self.lr,
                             grace_period=min(self.grace_period, self.epochs), scale_windows=self.scale_windows)

    @property
    def confirmation(self) -> ProxySettings:
        """The confirmation rung's training (``nas._confirm.confirm_settings``)."""
        return confirm_settings(self.proxy, self.confirm_max_train)

def make_sampler(name: str, seed: int, trials: int, *, space=None,
                 objectives: tuple[str, ...] = ("accuracy", "flops")):
    """The Optuna sampler ``name`` for a search of ``trials`` candidates; ``evolution`` needs the run's ``space``
    (it mutates architectures) and its ``objectives`` (which choose its selection)."""
    import optuna

    # Both read the budget constraint that the searcher sets on each trial (Trial.set_constraint).
    if name == "tpe":  # group=True: the space is conditional (each operator has its own parameters);
        # constant_liar: parallel slots do not propose the same point while their trials run
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, constant_liar=True,
                                              n_startup_trials=max(4, min(10, trials // 2)))
    if name == "nsga2":  # the default population of 50 would make a small search pure random sampling
        from .evolution import NSGAIISampler  # Optuna's, picklable as Ray needs

        return NSGAIISampler(seed=seed, population_size=max(4, min(50, trials // 3)))
    if name == "evolution":
        from ._costs import OBJECTIVES
        from .evolution import EvolutionSampler

        if space is None:
            raise ValueError("make_sampler('evolution', ...) needs the space it mutates: pass space=")
        # P: Real et al. kept 100 of 20,000 models; a search of tens must leave most of its budget to children
        # (P = a third of the trials: 6 of 20, 20 of 60), yet hold at least 4. S: the paper's S/P = 1/4, at
        # least 2, so a tournament still selects (S = 2 at P = 6, 5 at P = 20).
        population = max(4, min(20, trials // 3))
        # The default objectives' FLOPs are the budget the user set: select the most accurate under it. Asked
        # for a trade-off (--objectives with latency), rank by non-dominated sorting, then crowding (NSGA-II).
        return EvolutionSampler(space, population_size=population, tournament_size=max(2, population // 4),
                                selection="accuracy" if tuple(objectives) == OBJECTIVES[0] else "pareto",
                                seed=seed)
    return optuna.samplers.RandomSampler(seed=seed)


def _progress_callback(searcher, epochs: int, log):
    """Ray Tune's progress, trimmed to what a user needs: one line per epoch of a trial (trial, GFLOPs, stage
    ops, epoch, accuracy), and the error of a trial that fails, recorded with it."""
    from ray.tune import Callback

    class Progress(Callback):
        def on_trial_result(self, iteration, trials, trial, result, **info):
            if "error" in result:  # the searcher logs the failure
                return
            log(f"  {_label(trial.config)}  epoch {result.get('epoch')}/{epochs}  "
                f"accuracy {result.get('accuracy', float('nan')):.4f}")

        def on_trial_error(self, iteration, trials, trial, **info):
            text = error_text(trial)
            if text is not None:
                searcher.finish(trial.trial_id, error=text)
            else:  # Ray writes the error a moment later: the driver records it when the session ends
                searcher.errored[trial.trial_id] = trial

    return Progress()


def _label(config: dict[str, Any]) -> str:
    from .rundir import arch_line

    return f"{trial_label(config):>10s}  {config['flops'] / 1e9:5.2f} GFLOPs  {arch_line(config['arch'])}"


def _clock_log(started: float, path: Path):
    """Print progress lines with the time since the start, and keep them in the run's search.log."""
    def log(message: str) -> None:
        elapsed = int(time.time() - started)
        line = f"[{elapsed // 60:02d}:{elapsed % 60:02d}] {message}"
        print(line, flush=True)
        append_line(path, line)
    return log


def search(config: SearchConfig, *, run: RunDir, resume: bool = False, storage: str | None = None,
           study_name: str | None = None, address: str | None = None, cpus_per_trial: float = 1.0,
           gpus_per_trial: float = 0.0, time_budget_s: float | None = None, log=None, data=None,
           imports: tuple[str, ...] = (), retry_failed: bool = False) -> dict[str, Any]:
    """Run (or continue) a search into ``run``; returns the summary that ``nas._summary`` prints. The study is
    ``study_name`` (default: the run's ``config.yaml`` ``study_name``, else ``opmix``) in ``storage`` (default:
    the run's SQLite file). ``data`` is the loaded dataset when the caller has it already; ``imports`` are the
    plug-in operator modules (``nas.plugins``) the workers import. A confirmation recorded ``failed`` is
    trained again only with ``retry_failed``."""
    import optuna
    from ray import tune

    from ._searcher import BudgetSearcher, CandidateASHA
    from .data import load_dataset
    from .data import resize_data
    from .space import list_references, load_reference, load_space

    started = time.time()
    log = log or _clock_log(started, run.path / "search.log")
    space = load_space(run.space if run.space.is_file() else config.space)
    data = data or load_dataset(config.dataset, config.data_dir, seed=config.seed)
    costs = config.costs(log)
    log(f"opmix search '{run.path.name}': space {space.name}, {costs.describe()}, "
        f"{config.sampler} sampler, dataset {config.dataset} ({data.source}: {len(data.train_x)} train / "
        f"{len(data.val_x)} val images)")

    storage = storage or f"sqlite:///{run.study.resolve()}"
    study_name = study_name or (run.read_config().get("study_name") if run.exists() else None) or "opmix"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    records = run.read_trials()
    candidates = [r for r in records if "confirms" not in r]  # a confirmation is no candidate
    trained = [r for r in candidates if r["status"] in TRAINED]
    study = optuna.create_study(study_name=study_name, storage=open_storage(storage), directions=costs.directions,
                                load_if_exists=resume, sampler=make_sampler(config.sampler, config.seed, config.trials,
                                                                             space=space, objectives=costs.objectives))
    if not study.metric_names:  # the names optuna-dashboard draws on its axes
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(costs.metric_names)
    if resume:
        _close_interrupted(study, log)
        study.sampler = make_sampler(config.sampler, config.seed + len(study.trials), config.trials, space=space,
                                     objectives=costs.objectives)
    references = []
    done_refs = {r["reference"] for r in trained if r.get("reference")}
    if config.seed_references:
        for name in list_references():
            arch = load_reference(name)
            flops, _ = measure_arch(arch)
            if costs.flops_over(flops) <= 0 and name not in done_refs:
                if costs.latency_budget is not None and (costs.latency_over(
                        costs.latency_of(arch)["latency_ms"]) or 0) > 0:
                    continue
                references.append((name, arch))
        log(f"  references within the budget, trained first: {', '.join(n for n, _ in references) or 'none'}")
    remaining = config.trials - len([r for r in trained if not r.get("reference")])
    session, resources = run.next_session(), {"cpu": cpus_per_trial, "gpu": gpus_per_trial}
    if remaining <= 0 and not references:
        log(f"  all {config.trials} trials of this run are done; raise --trials to continue")
    else:
        start_ray(address, imports, num_cpus=keep_cores_for_latency(config.latency, address, log))
        n_slots = slots(cpus_per_trial, gpus_per_trial)
        searcher = BudgetSearcher(study=study, space=space, budget=config.budget, epochs=config.epochs, run=run,
                                  measure=measure_arch, references=references, history=candidates, log=log,
                                  costs=costs)
        reserve = None
        if time_budget_s is not None and config.confirm:
            confirmations = [r for r in records if "confirms" in r]
            reserve = ConfirmReserve(
                lambda: confirmations + [r for r in searcher.outcomes.values() if r["status"] == "completed"],
                started=started, total_s=time_budget_s, budget=config.budget, k=config.confirm,
                references=config.seed_references, seed=config.seed, slots=n_slots,
                data_factor=_data_factor(config, data), latency_budget_ms=config.latency_budget_ms,
                objectives=config.objectives)
            searcher.deadline = reserve.deadline
        elif time_budget_s is not None:
            searcher.deadline = lambda: started + time_budget_s
        proxy = config.proxy
        fn = tune.with_resources(
            tune.with_parameters(trainable, data=resize_data(data, proxy.image_size), proxy=proxy, seed=config.seed,
                                 imports=tuple(imports)),
            resources)
        scheduler = (CandidateASHA(time_attr="epoch", max_t=config.epochs, grace_period=proxy.grace_period,
                                   reduction_factor=2, stopped=searcher.asha_stopped)
                     if config.early_stop and proxy.grace_period < config.epochs else None)
        tuner = tune.Tuner(
            fn,
            tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, metric="accuracy", mode="max",
                                        num_samples=remaining + len(references), max_concurrent_trials=n_slots,
                                        reuse_actors=True),
            run_config=tune.RunConfig(name=session, storage_path=str(run.ray.resolve()), verbose=0,
                                      stop=None if searcher.deadline is None else _deadline_stopper(searcher.deadline),
                                      callbacks=[_progress_callback(searcher, config.epochs, log)],
                                      failure_config=tune.FailureConfig(max_failures=1)),
        )
        log(f"  training {remaining} candidates ({n_slots} at a time, {cpus_per_trial:g} CPU"
            f"{f', {gpus_per_trial:g} GPU' if gpus_per_trial else ''} each), {config.epochs} epochs, "
            f"ASHA {'on' if config.early_stop else 'off'}"
            + (f"; {reserve.reserve_s() / 60:.1f} min of the time budget kept for the confirmation until a "
               "candidate completes, then what it is estimated to need" if reserve else ""))
        try:
            tuner.fit()
            if reserve is not None and reserve.estimated is not None:
                over = reserve.estimated > RESERVE_MAX * time_budget_s
                log(f"  confirmation estimated at {reserve.estimated:.0f} s from the top candidates' training times"
                    + (f", more than the {RESERVE_MAX:.0%} of the time budget it may keep: it may not finish "
                       "(a longer --time-budget, or a lower --confirm, fits it)" if over else ""))
        finally:
            for trial_id in list(searcher.live):  # failed in Ray, or cut off (time budget, Ctrl-C, the run ends)
                trial = searcher.errored.get(trial_id)
                error = None if trial is None else (
                    error_text(trial) or f"the trial failed; its error is under {run.ray}")
                searcher.finish(trial_id, error=error)
        if searcher.gave_up and searcher.latency_blocked():  # nothing could train: the latency budget is too low
            raise OpmixError(searcher.gave_up.strip().removeprefix("stopping: "))
    if config.confirm:
        deadline = None if time_budget_s is None else started + time_budget_s
        _confirm_phase(config, run=run, data=data, session=f"{session}-confirm", address=address,
                       resources=resources, deadline=deadline, log=log, imports=tuple(imports),
                       retry_failed=retry_failed)
    from ._summary import summarize

    return summarize(run, config, started)


def _data_factor(config: SearchConfig, data) -> float:
    """The confirmation's training images per epoch over the proxy's (the training split caps both)."""
    return (fidelity_of(config.confirmation, data)["train_images"]
            / max(1, fidelity_of(config.proxy, data)["train_images"]))


def _deadline_stopper(deadline):
    """A Ray Tune stopper that ends the experiment (its running trials cut off) once ``time.time()`` reaches
    ``deadline()``, which may move while it runs (``nas._confirm.ConfirmReserve``); Tune's own
    ``time_budget_s`` is fixed when the experiment starts."""
    from ray.tune import Stopper

    class Deadline(Stopper):
        def __call__(self, trial_id, result):
            return False

        def stop_all(self):
            return time.time() >= deadline()

    return Deadline()


def keep_cores_for_latency(latency: dict[str, Any] | None, address: str | None, log) -> int | None:
    """With a CPU latency target (a run's ``latency`` configuration) and Ray not started yet here, keep the
    last ``threads`` cores free of trials: the table's layers and the end-to-end checks are measured there
    (``nas.latency.pinned``), never beside a training proxy. Returns the CPUs Ray may use (None: all). A Ray
    already running, or a cluster (``--address``), is left as it is."""
    import ray

    if not latency or latency["target"] == "cuda" or address or ray.is_initialized():
        return None
    from .latency import Target, reserve_cores

    target = Target(latency["target"], int(latency.get("threads", 1)), int(latency.get("batch", 1)))
    left = reserve_cores(target)
    if left:
        log(f"  {target.threads} core(s) kept for latency measurements, {left} for training")
    else:
        log("  no core can be kept for latency measurements on this machine: they run beside the training")
    return left or None


def _confirm_phase(config: SearchConfig, *, run: RunDir, data, session: str, address: str | None,
                   resources: dict[str, float], deadline: float | None, log, imports: tuple[str, ...] = (),
                   retry_failed: bool = False) -> None:
    """The confirmation rung (``nas._confirm``): the jobs without a record (and, with ``retry_failed``, those
    recorded ``failed``), until ``deadline``."""
    from ._confirm import confirm, confirm_jobs

    def todo(retry: bool) -> list[dict[str, Any]]:
        return confirm_jobs(run.read_trials(), config.budget, config.confirm, references=config.seed_references,
                            seed=config.seed, retry_failed=retry, latency_budget_ms=config.latency_budget_ms,
                            objectives=config.objectives)

    jobs = todo(retry_failed)
    left = None if deadline is None else deadline - time.time()
    resume = f"continue with --resume --name {run.path.name}"
    if not jobs:
        log("  confirmation: nothing left to confirm")
    elif left is not None and left < 10:
        log(f"  no time left for the {len(jobs)} confirmation training(s); {resume}")
    else:
        start_ray(address, imports)
        settings, n_slots = config.confirmation, slots(resources["cpu"], resources["gpu"])
        log(f"  confirming {len({j['confirms'] for j in jobs})} candidate(s): {len(jobs)} training(s) of "
            f"{settings.max_train or 'all'} images x {settings.epochs} epochs, seeds {config.seed} and "
            f"{config.seed + 1}, {n_slots} at a time" + (f", {left / 60:.1f} min left" if left is not None else ""))
        t0 = time.time()
        confirm(jobs, run=run, data=data, settings=settings, session=session, resources=resources, slots=n_slots,
                time_budget_s=left, log=log, imports=imports)
        cut = len(todo(False))
        if not cut:
            log(f"  confirmation done in {time.time() - t0:.0f} s")
        else:
            timed_out = deadline is not None and time.time() >= deadline - 1
            log(f"  {cut} of {len(jobs)} confirmation training(s) did not finish"
                f"{' within the time budget' if timed_out else ''}; {resume}")
    failed = len(todo(True)) - len(todo(False))
    if failed:  # recorded once: they would fail again, and are not retried unless asked
        log(f"  {failed} confirmation training(s) failed (see {run.trials.name}); to train them again: "
            f"--resume --retry-failed --name {run.path.name}")


def _close_interrupted(study, log) -> None:
    """Trials a killed driver left RUNNING: failed in the study, and their candidates put back into it so that
    the sampler proposes them first and they train in this session."""
    import optuna

    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study.tell(t.number, state=optuna.trial.TrialState.FAIL)
        if t.params:
            study.enqueue_trial(t.params, user_attrs={"retrains": t.number}, skip_if_exists=False)
            log(f"  candidate {t.number} was cut off by the interruption; it trains again")


