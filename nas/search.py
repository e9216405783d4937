"""``python -m nas.search --budget 4.5GFLOPs``: search a space for the most accurate networks for their FLOPs.

Optuna's multi-objective samplers (TPE by default, NSGA-II, random) propose architectures through a Ray Tune
searcher (``nas._searcher``); each one's full-size FLOPs are counted before any training and a candidate over
the budget is recorded ``infeasible`` and never trained. Feasible candidates train as proxies (``nas.train``)
in Ray Tune trials, cut short by ASHA when they trail; the run directory (``nas._run``) keeps everything.
Then the confirmation rung (``nas._confirm``) retrains the front's top ``--confirm`` K at a higher fidelity
with two seeds each, and the recommended pick is the best mean confirmed accuracy (``nas.pareto.analyze``).
With a time budget, ``CONFIRM_SHARE`` of it is kept for the confirmation and the proxy phase gets the rest.

Resuming: the Optuna study (SQLite) and ``trials.jsonl`` are the run's memory. ``--resume`` reads them, marks
trials that were cut off mid-training as failed in the study, reseeds the sampler past the trials it has
seen (a recreated seeded sampler would otherwise repeat its first proposals), and starts a new Ray Tune
session under ``ray/session-K``: no finished trial is lost or trained again, also after a SIGKILL. It then
runs the confirmations that have no record yet (``ray/session-K-confirm``), also when the proxy phase is done.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

from . import _cli
from ._confirm import CONFIRM_SHARE, SEEDS, confirm_settings
from ._run import RunDir
from .arch import Arch
from .flops import format_flops, parse_budget
from .proxy import ProxySettings

__all__ = ["search", "SearchConfig", "main"]

PROG = "python -m nas.search"
SAMPLERS = ("tpe", "nsga2", "random")


@dataclasses.dataclass(frozen=True)
class SearchConfig:
    """Everything that defines a run; written to ``config.yaml`` and fixed for the run's life."""

    budget: int
    space: str = "hybrid"
    trials: int = 20
    epochs: int = 4
    dataset: str = "fashion-mnist"
    data_dir: str | None = None
    sampler: str = "tpe"
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

    # what --resume may not change
    FIXED = ("budget", "space", "dataset", "data_dir", "sampler", "seed", "epochs", "width_mult", "max_train",
             "batch_size", "image_size", "lr", "grace_period", "scale_windows", "early_stop", "confirm_max_train")

    @property
    def proxy(self) -> ProxySettings:
        return ProxySettings(max_train=self.max_train, epochs=self.epochs, width_mult=self.width_mult,
                             image_size=self.image_size, batch_size=self.batch_size, lr=self.lr,
                             grace_period=min(self.grace_period, self.epochs), scale_windows=self.scale_windows)

    @property
    def confirmation(self) -> ProxySettings:
        """The confirmation rung's training (``nas._confirm.confirm_settings``)."""
        return confirm_settings(self.proxy, self.confirm_max_train)


def _parse_duration(text: str) -> float:
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(s|m|h)?\s*", text.lower())
    if not m or float(m.group(1)) <= 0:
        raise ValueError(f"--time-budget {text!r} is not understood; write a positive duration such as 90s, "
                         f"30m or 2h")
    return float(m.group(1)) * {"s": 1, "m": 60, "h": 3600, None: 1}[m.group(2)]


def _parser() -> _cli.Parser:
    p = _cli.Parser(prog=PROG, description="Search a space of conv/attention backbones for the most accurate "
                    "networks for their FLOPs under a budget (FLOPs: multiply-adds, deploy form).")
    d = SearchConfig(budget=1)
    p.add_argument("--budget", required=True, help="the FLOP budget per image at the target input, e.g. "
                   "4.5GFLOPs, 600M or 4.5e9 (one multiply-add = one FLOP)")
    p.add_argument("--space", default=None, help=f"a space YAML file or a built-in name (default: {d.space})")
    p.add_argument("--trials", type=int, default=None,
                   help=f"candidates to train; ones rejected for the budget do not count (default: {d.trials})")
    p.add_argument("--epochs", type=int, default=None, help=f"proxy training epochs (default: {d.epochs})")
    p.add_argument("--dataset", default=None, help="fashion-mnist, cifar10, cifar100 or imagefolder:PATH "
                   f"(default: {d.dataset}; an embedded subset is used when none is installed)")
    p.add_argument("--data-dir", default=None, help="where the dataset lies (default: $OPMIX_DATA, then the "
                   "system's dataset-fashion-mnist package, then the embedded subset)")
    p.add_argument("--sampler", default=None, help=f"Optuna sampler: {', '.join(SAMPLERS)} (default: {d.sampler})")
    p.add_argument("--seed", type=int, default=None, help=f"seed of the sampler and the proxies (default: {d.seed})")
    p.add_argument("--name", default=None, help="the run's folder name under --runs-dir (default: the budget "
                   "and the time, e.g. 4.5G-20261125-231500)")
    p.add_argument("--runs-dir", default="runs", help="where run folders go (default: runs)")
    p.add_argument("--resume", action="store_true", help="continue the run --name after an interruption")
    p.add_argument("--storage", default=None, help="Optuna storage URL (default: sqlite:///RUN/study.db), "
                   "e.g. postgresql://user@host/db")
    p.add_argument("--address", default=None, help="join a Ray cluster (e.g. 10.0.0.1:6379 or 'auto'); "
                   "default: start Ray on this machine")
    p.add_argument("--cpus-per-trial", type=float, default=1.0, help="CPUs per trial (default: 1)")
    p.add_argument("--gpus-per-trial", type=float, default=0.0, help="GPUs per trial (default: 0)")
    p.add_argument("--time-budget", default=None, help="stop after this long, e.g. 30m (default: 14m for the "
                   "default settings, else none)")
    p.add_argument("--confirm", type=int, default=None, metavar="K",
                   help=f"retrain the front's top K at a higher fidelity with {SEEDS} seeds each after the search; the "
                   f"pick is the best mean confirmed accuracy; 0: no confirmation (default: {d.confirm})")
    p.add_argument("--seed-references", action="store_true",
                   help="train the reference architectures that fit the budget first (and confirm them)")
    p.add_argument("--no-early-stop", action="store_true", help="train every candidate for all epochs (no ASHA)")
    p.add_argument("--width-mult", type=float, default=None, help=f"proxy width multiplier (default: {d.width_mult})")
    p.add_argument("--max-train", type=int, default=None,
                   help=f"training images per proxy epoch (default: {d.max_train})")
    p.add_argument("--image-size", type=int, default=None,
                   help="proxy input resolution in pixels (default: the dataset's own)")
    p.add_argument("--grace-period", type=int, default=None,
                   help=f"epochs before ASHA may stop a trial, at least 2 (default: {d.grace_period})")
    return p


def _config_from_args(args, previous: dict[str, Any] | None) -> SearchConfig:
    given = {
        "budget": parse_budget(args.budget), "space": args.space, "trials": args.trials, "epochs": args.epochs,
        "dataset": args.dataset, "data_dir": args.data_dir, "sampler": args.sampler, "seed": args.seed,
        "width_mult": args.width_mult, "max_train": args.max_train, "image_size": args.image_size,
        "grace_period": args.grace_period, "confirm": args.confirm,
        "early_stop": False if args.no_early_stop else None,
        "seed_references": True if args.seed_references else None,
    }
    given = {k: v for k, v in given.items() if v is not None}
    if previous is not None:
        for key in SearchConfig.FIXED:
            if key in given and given[key] != previous.get(key):
                raise ValueError(f"--resume: {key} was {previous.get(key)!r} in this run, not {given[key]!r}; "
                                 f"drop the flag to continue with the run's own value")
        merged = {k: previous[k] for k in SearchConfig.FIXED + ("trials", "seed_references", "confirm")
                  if k in previous}
        merged.update({k: v for k, v in given.items() if k in ("trials", "confirm")})
        return SearchConfig(**merged)
    config = SearchConfig(**given)
    return dataclasses.replace(config, confirm_max_train=config.confirmation.max_train)  # fixed from now on


def _validate(config: SearchConfig, args) -> None:
    from .data import DATASETS

    if config.sampler not in SAMPLERS:
        raise ValueError(f"--sampler {config.sampler!r} is not known; use one of {', '.join(SAMPLERS)}")
    if not (config.dataset in DATASETS[:3] or config.dataset.startswith("imagefolder:")):
        raise ValueError(f"--dataset {config.dataset!r} is not known; use one of {', '.join(DATASETS)}")
    for flag, value in (("--trials", config.trials), ("--epochs", config.epochs), ("--max-train", config.max_train)):
        if value < 1:
            raise ValueError(f"{flag} {value} must be at least 1")
    if config.confirm < 0:
        raise ValueError(f"--confirm {config.confirm} must be 0 (no confirmation) or more")
    if not 0 < config.width_mult <= 4:
        raise ValueError(f"--width-mult {config.width_mult} must be in (0, 4]")
    config.proxy  # noqa: B018 -- the proxy settings' own checks (grace period, image size, ...)
    if args.cpus_per_trial <= 0 or args.gpus_per_trial < 0:
        raise ValueError("--cpus-per-trial must be > 0 and --gpus-per-trial >= 0")


def _run_name(args, budget: int) -> str:
    if args.name:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", args.name):
            raise ValueError(f"--name {args.name!r}: use letters, digits, '.', '_' and '-' only")
        return args.name
    if args.resume:
        raise ValueError("--resume needs --name NAME of the run to continue")
    return f"{format_flops(budget).replace(' ', '')}-{time.strftime('%Y%m%d-%H%M%S')}"


def _runs_dir_writable(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".opmix-write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise ValueError(f"--runs-dir {path}: cannot be written ({exc.strerror}); pick a folder you can write to")\
            from None


def _make_sampler(name: str, seed: int, trials: int):
    import optuna

    # Both read the budget constraint that the searcher sets on each trial (Trial.set_constraint).
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=max(4, min(10, trials // 2)))
    if name == "nsga2":  # the default population of 50 would make a small search pure random sampling
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(4, min(50, trials // 3)))
    return optuna.samplers.RandomSampler(seed=seed)


def _measure(arch: Arch) -> tuple[int, int]:
    from .flops import count_flops, count_params
    from .network import build_uninitialized

    net = build_uninitialized(arch)
    return count_flops(net), count_params(net)


def _trainable(config: dict[str, Any], data=None, proxy: ProxySettings = ProxySettings(), seed: int = 0) -> None:
    """One Ray Tune trial: train the candidate's proxy from ``seed`` under ``proxy`` (the search's settings, or the
    confirmation's), reporting accuracy after each epoch. Its result depends on (architecture, seed, settings)
    and the trial's thread count only."""
    import ray
    from ray import tune

    from .proxy import train_arch

    arch = Arch.from_dict(config["arch"])
    threads = max(1, int(os.environ.get("OMP_NUM_THREADS", "1")))
    node = ray.get_runtime_context().get_node_id()
    t0 = time.perf_counter()

    def report(epoch: int, accuracy: float, loss: float) -> None:
        tune.report({"accuracy": accuracy, "loss": loss, "epoch": epoch, "node": node,
                     "train_seconds": time.perf_counter() - t0, "gflops": config["flops"] / 1e9})

    train_arch(arch, data, proxy, seed=seed, threads=threads, report=report)


def _progress_callback(searcher, epochs: int, log):
    """Ray Tune's progress, trimmed to what a user needs: one line per epoch of a trial (trial, GFLOPs, stage
    ops, epoch, accuracy), and the error of a trial that fails, recorded with it."""
    from ray.tune import Callback

    class Progress(Callback):
        def on_trial_result(self, iteration, trials, trial, result, **info):
            log(f"  {_label(trial.config)}  epoch {result.get('epoch')}/{epochs}  "
                f"accuracy {result.get('accuracy', float('nan')):.4f}")

        def on_trial_error(self, iteration, trials, trial, **info):
            text = _error_text(trial)
            if text is not None:
                searcher.finish(trial.trial_id, error=text)
            else:  # Ray writes the error a moment later: the driver records it when the session ends
                searcher.errored[trial.trial_id] = trial

    return Progress()


def _label(config: dict[str, Any]) -> str:
    arch = config["arch"]
    ops = " ".join(f"{s['op']}x{s['depth']}/{s['width']}" for s in arch["stages"])
    who = f"ref {config['reference']}" if config.get("reference") else f"trial {config.get('candidate')}"
    return f"{who:>10s}  {config['flops'] / 1e9:5.2f} GFLOPs  {ops}"


def _error_text(trial) -> str | None:
    """The last line of a failed trial's error, or None while Ray has not written it yet."""
    sources = (lambda: trial.get_error(), lambda: Path(trial.error_file).read_text())
    for source in sources:
        try:
            err = source()
        except Exception:  # not written yet, or gone with a worker that died
            continue
        lines = [line for line in str(err or "").strip().splitlines() if line.strip()]
        if lines:
            return lines[-1].strip()[:500]
    return None


def _clock_log(started: float, path: Path):
    """Print progress lines with the time since the start, and keep them in the run's search.log."""
    def log(message: str) -> None:
        elapsed = int(time.time() - started)
        line = f"[{elapsed // 60:02d}:{elapsed % 60:02d}] {message}"
        print(line, flush=True)
        with open(path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
    return log


def search(config: SearchConfig, *, run: RunDir, resume: bool = False, storage: str | None = None,
           address: str | None = None, cpus_per_trial: float = 1.0, gpus_per_trial: float = 0.0,
           time_budget_s: float | None = None, log=None, data=None) -> dict[str, Any]:
    """Run (or continue) a search into ``run``; returns the summary that ``main`` prints. ``data`` is the
    loaded dataset when the caller has it already."""
    import optuna
    from ray import tune

    from .data import load_dataset
    from .proxy import resize_data
    from .space import list_references, load_reference, load_space

    started = time.time()
    log = log or _clock_log(started, run.path / "search.log")
    space = load_space(run.space if run.space.is_file() else config.space)
    data = data or load_dataset(config.dataset, config.data_dir, seed=config.seed)
    log(f"opmix search '{run.path.name}': space {space.name}, budget {format_flops(config.budget)}FLOPs, "
        f"{config.sampler} sampler, dataset {config.dataset} ({data.source}: {len(data.train_x)} train / "
        f"{len(data.val_x)} val images)")

    storage = storage or f"sqlite:///{run.study.resolve()}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    records = run.read_trials()
    trained = [r for r in records if r["status"] in ("completed", "stopped", "failed") and not r.get("interrupted")
               and "confirms" not in r]  # a failed confirmation is no candidate
    study = optuna.create_study(study_name="opmix", storage=storage, directions=["maximize", "minimize"],
                                load_if_exists=resume,
                                sampler=_make_sampler(config.sampler, config.seed, config.trials))
    if resume:
        _close_interrupted(study, run, records, log)
        study.sampler = _make_sampler(config.sampler, config.seed + len(study.trials), config.trials)
    seen = {Arch.from_dict(r["arch"]): (r["accuracy"], r["flops"]) for r in records
            if r["status"] == "completed" and r.get("trial_id") is not None}
    references = []
    done_refs = {r.get("reference") for r in records if r.get("reference")}
    if config.seed_references:
        for name in list_references():
            arch = load_reference(name)
            flops, _ = _measure(arch)
            if flops <= config.budget and name not in done_refs:
                references.append((name, arch))
        log(f"  references within the budget, trained first: {', '.join(n for n, _ in references) or 'none'}")
    remaining = config.trials - len([r for r in trained if not r.get("reference")])
    session, resources = run.next_session(), {"cpu": cpus_per_trial, "gpu": gpus_per_trial}
    proxy_budget = None if time_budget_s is None else time_budget_s * (1 - CONFIRM_SHARE if config.confirm else 1)
    if remaining <= 0 and not references:
        log(f"  all {config.trials} trials of this run are done; raise --trials to continue")
    else:
        from ._searcher import BudgetSearcher, CandidateASHA

        _start_ray(address)
        searcher = BudgetSearcher(study=study, space=space, budget=config.budget, epochs=config.epochs, run=run,
                                  measure=_measure, references=references, seen=seen, log=log)
        proxy = config.proxy
        trainable = tune.with_resources(
            tune.with_parameters(_trainable, data=resize_data(data, proxy.image_size), proxy=proxy,
                                 seed=config.seed),
            resources)
        scheduler = (CandidateASHA(time_attr="epoch", max_t=config.epochs, grace_period=proxy.grace_period,
                                   reduction_factor=2)
                     if config.early_stop and proxy.grace_period < config.epochs else None)
        slots = _slots(cpus_per_trial, gpus_per_trial)
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, metric="accuracy", mode="max",
                                        num_samples=remaining + len(references), max_concurrent_trials=slots,
                                        time_budget_s=proxy_budget),
            run_config=tune.RunConfig(name=session, storage_path=str(run.ray.resolve()), verbose=0,
                                      callbacks=[_progress_callback(searcher, config.epochs, log)],
                                      failure_config=tune.FailureConfig(max_failures=1)),
        )
        log(f"  training {remaining} candidates ({slots} at a time, {cpus_per_trial:g} CPU"
            f"{f', {gpus_per_trial:g} GPU' if gpus_per_trial else ''} each), {config.epochs} epochs, "
            f"ASHA {'on' if config.early_stop else 'off'}"
            + (f"; {proxy_budget / 60:.1f} min at most, the rest of the time budget kept for confirmation"
               if proxy_budget and config.confirm else ""))
        try:
            tuner.fit()
        finally:
            for trial_id in list(searcher.live):  # failed, cut off by the time budget, or the run is ending
                trial = searcher.errored.get(trial_id)
                error = None if trial is None else (
                    _error_text(trial) or f"the trial failed; its error is under {run.ray}")
                searcher.finish(trial_id, error=error)
    if config.confirm:
        deadline = None if time_budget_s is None else started + time_budget_s
        _confirm_phase(config, run=run, data=data, session=f"{session}-confirm", address=address,
                       resources=resources, deadline=deadline, log=log)
    return summarize(run, config, started)


def _start_ray(address: str | None) -> None:
    import ray

    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, logging_level="ERROR", log_to_driver=False,
                 configure_logging=True, **({} if address else {"num_cpus": os.cpu_count()}))


def _confirm_phase(config: SearchConfig, *, run: RunDir, data, session: str, address: str | None,
                   resources: dict[str, float], deadline: float | None, log) -> None:
    """The confirmation rung (``nas._confirm``): the jobs without a record, until ``deadline``."""
    from ._confirm import confirm, confirm_jobs

    jobs = confirm_jobs(run.read_trials(), config.budget, config.confirm, references=config.seed_references,
                        seed=config.seed)
    left = None if deadline is None else deadline - time.time()
    resume = f"continue with --resume --name {run.path.name}"
    if not jobs:
        log("  confirmation: nothing left to confirm")
        return
    if left is not None and left < 10:
        log(f"  no time left for the {len(jobs)} confirmation training(s); {resume}")
        return
    _start_ray(address)
    settings, slots = config.confirmation, _slots(resources["cpu"], resources["gpu"])
    log(f"  confirming {len({j['confirms'] for j in jobs})} candidate(s): {len(jobs)} training(s) of "
        f"{settings.max_train or 'all'} images x {settings.epochs} epochs, seeds {config.seed} and {config.seed + 1}, "
        f"{slots} at a time" + (f", {left / 60:.1f} min left" if left is not None else ""))
    done = confirm(jobs, run=run, data=data, settings=settings, session=session, resources=resources, slots=slots,
                   time_budget_s=left, log=log)
    if done < len(jobs):
        timed_out = deadline is not None and time.time() >= deadline - 1
        log(f"  {len(jobs) - done} of {len(jobs)} confirmation training(s) did not finish"
            f"{' within the time budget' if timed_out else ''}; {resume}")


def _slots(cpus: float, gpus: float) -> int:
    import ray

    res = ray.cluster_resources()
    slots = int(res.get("CPU", 1) // cpus)
    if gpus:
        slots = min(slots, int(res.get("GPU", 0) // gpus))
    return max(1, slots)


def _close_interrupted(study, run: RunDir, records, log) -> None:
    """Trials left RUNNING by a killed driver: failed in the study, and noted in trials.jsonl."""
    import optuna

    recorded = {r.get("trial_id") for r in records}
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study.tell(t.number, state=optuna.trial.TrialState.FAIL)
        if t.number not in recorded:
            log(f"  candidate {t.number} was cut off by the interruption; it will not count")


def summarize(run: RunDir, config: SearchConfig, started: float | None = None) -> dict[str, Any]:
    from .pareto import analyze

    records = run.read_trials()
    return {**analyze(records, config.budget), "run": str(run.path),
            "failures": [r for r in records if r["status"] == "failed"],
            "seconds": (time.time() - started) if started else None}


def _print_summary(summary: dict[str, Any], budget: int) -> None:
    from .pareto import confirmed_lines, front_table, trial_name

    s = summary["by_status"]
    print(f"\ntrials: {s['completed']} completed, {s['stopped']} stopped early, {s['failed']} failed, "
          f"{s['infeasible']} rejected for the budget ({format_flops(budget)}FLOPs); "
          f"{s['confirmed']} confirmation trainings")
    for r in summary["failures"]:
        print(f"  failed: trial {r['trial_id']}: {r['error']}")
    if summary["front"]:
        print("Pareto front (proxy accuracy up, FLOPs down):")
        print("\n".join(front_table(summary)))
        print(f"  hypervolume {summary['hypervolume']:.4f} (reference: accuracy 0, FLOPs = budget)")
    if summary["confirmed"]:
        print("\n".join(confirmed_lines(summary)))
    b, pick = summary["best"], summary["pick"]
    if pick:
        sd = "" if pick["sd"] is None else f" ± {pick['sd']:.4f}"
        print(f"recommended pick (*): trial {trial_name(b)}, confirmed accuracy {pick['mean']:.4f}{sd} over "
              f"{len(pick['seeds'])} seed(s) (proxy {b['accuracy']:.4f}), {b['flops'] / 1e9:.2f} GFLOPs, "
              f"{b['params'] / 1e6:.2f} M params")
    elif b:
        print(f"best within the budget (*): trial {trial_name(b)}, accuracy {b['accuracy']:.4f}, "
              f"{b['flops'] / 1e9:.2f} GFLOPs, {b['params'] / 1e6:.2f} M params")
    if summary["seconds"] is not None:
        print(f"time: {summary['seconds'] / 60:.1f} min")
    run = summary["run"]
    print(f"\nthe run is in {run}\nnext:\n  python -m nas.pareto {run}\n  python -m nas.export {run}")


def _main(argv: list[str] | None) -> int:
    args = _parser().parse_args(argv)
    budget = parse_budget(args.budget)
    time_budget = _parse_duration(args.time_budget) if args.time_budget else (
        14 * 60.0 if argv_is_default(args) else None)
    runs_dir = Path(args.runs_dir)
    name = _run_name(args, budget)
    run = RunDir(runs_dir / name)
    if args.resume:
        if not run.exists():
            raise ValueError(f"--resume: no run {name!r} in {runs_dir} (no {run.config}); check --name and "
                             f"--runs-dir")
        config = _config_from_args(args, run.read_config())
    else:
        if run.path.exists():
            raise ValueError(f"a run {name!r} exists in {runs_dir}; continue it with --resume --name {name}, "
                             f"or pick another --name")
        config = _config_from_args(args, None)
    _validate(config, args)
    from .data import load_dataset
    from .space import load_space

    load_space(config.space)  # fail on a bad space or dataset before anything is written
    data = load_dataset(config.dataset, config.data_dir, seed=config.seed)
    _runs_dir_writable(runs_dir)
    storage = args.storage
    if args.resume:
        storage = storage or run.read_config().get("storage")
    else:
        import shutil

        from .space import resolve_space_path

        run.write_config({**dataclasses.asdict(config), "storage": storage})
        shutil.copyfile(resolve_space_path(config.space), run.space)  # the run keeps the space it searched
    try:
        summary = search(config, run=run, resume=args.resume, storage=storage, address=args.address,
                         cpus_per_trial=args.cpus_per_trial, gpus_per_trial=args.gpus_per_trial,
                         time_budget_s=time_budget, data=data)
    except KeyboardInterrupt:
        print(f"\ninterrupted; finished trials are kept in {run.trials}. Continue with:\n"
              f"  {PROG} --budget {args.budget} --resume --name {name} --runs-dir {runs_dir}", file=sys.stderr)
        return 130
    _print_summary(summary, config.budget)
    return 0 if summary["by_status"]["completed"] else 1


def argv_is_default(args) -> bool:
    """The bare command (only --budget, maybe --name/--runs-dir) keeps to 15 minutes on a small machine."""
    return all(getattr(args, k) is None for k in ("space", "trials", "epochs", "dataset", "max_train", "width_mult",
                                                  "image_size", "grace_period"))


def main(argv: list[str] | None = None) -> None:
    _cli.run(PROG, _main, argv)


if __name__ == "__main__":
    main()
