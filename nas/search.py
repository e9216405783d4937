"""``python -m nas.search --budget 4.5GFLOPs``: the command line of a search.

It reads and checks the flags (every bad value is one line and exit code 2, before anything is written),
makes or reopens the run folder (``nas.rundir``), and hands over to the search loop (``nas._loop``: Optuna
proposes, the FLOP budget filters, Ray Tune trains the proxies, the confirmation rung retrains the top of the
front); then it prints the summary (``nas._summary``).

A new run writes ``config.yaml`` (with its own ``study_name``) and a copy of its space, ``space.yaml``.
``--resume --name NAME`` continues it: the run's own configuration, study and ``space.yaml`` (validated; the
original space file may be gone or edited), and the trials a cut-off left ``interrupted`` train first.
"""

from __future__ import annotations

import dataclasses
import re
import secrets
import sys
import time
from pathlib import Path
from typing import Any

from . import _cli, plugins
from ._confirm import SEEDS
from ._loop import SearchConfig, search
from ._summary import print_summary
from .cluster import parse_gpus_per_trial
from .errors import OpmixError
from ._costs import check_objectives
from .flops import format_flops, parse_budget
from .latency import TARGETS, Target, parse_latency
from .rundir import RunDir, atomic_write
from .storage import storage_to_resume, storage_to_store

__all__ = ["search", "SearchConfig", "main"]

PROG = "python -m nas.search"
SAMPLERS = ("random", "tpe", "nsga2", "evolution")


def _parse_duration(text: str) -> float:
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(s|m|h)?\s*", text.lower())
    if not m or float(m.group(1)) <= 0:
        raise OpmixError(f"--time-budget {text!r} is not understood; write a positive duration such as 90s, "
                         f"30m or 2h")
    return float(m.group(1)) * {"s": 1, "m": 60, "h": 3600, None: 1}[m.group(2)]


def _parser() -> _cli.Parser:
    p = _cli.Parser(prog=PROG, description="Search a space of conv/attention backbones for the most accurate "
                    "networks for their FLOPs under a budget (FLOPs: multiply-adds, deploy form).")
    d = SearchConfig(budget=1)
    p.add_argument("--budget", default=None, help="the FLOP budget per image at the target input, e.g. "
                   "4.5GFLOPs, 600M or 4.5e9 (one multiply-add = one FLOP); optional with --latency-budget")
    p.add_argument("--latency-budget", default=None, metavar="MS",
                   help="a latency budget on --latency-target, e.g. 12ms (a hard constraint beside the FLOP budget)")
    p.add_argument("--latency-target", default=None,
                   help=f"where latency is measured: {', '.join(TARGETS)} (default: ort-cpu, when a latency budget "
                   f"or objective is asked for)")
    p.add_argument("--latency-threads", type=int, default=None, help="intra-op threads of the latency target (default: 1)")
    p.add_argument("--latency-batch", type=int, default=None, help="batch size of the latency target (default: 1)")
    p.add_argument("--latency-table", default=None, metavar="PATH",
                   help="the per-layer latency table to use and extend (default: one per target fingerprint in "
                   "~/.cache/opmix/latency)")
    p.add_argument("--objectives", default=None,
                   help="what the front trades: accuracy,flops (default), accuracy,latency or accuracy,flops,latency")
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
                   "e.g. postgresql://user@host/db; a password in it is not written to the run folder")
    p.add_argument("--address", default=None, help="join a Ray cluster (e.g. 10.0.0.1:6379 or 'auto'); "
                   "default: start Ray on this machine")
    p.add_argument("--cpus-per-trial", type=float, default=1.0, help="CPUs per trial (default: 1)")
    p.add_argument("--gpus-per-trial", default=None, metavar="N|auto",
                   help="GPUs per trial, e.g. 0.25, or auto: pack trials onto this machine's GPUs, as many per GPU "
                   "as its CPUs can feed (default: auto where CUDA is available, else 0)")
    p.add_argument("--time-budget", default=None, help="stop after this long, e.g. 30m (default: 14m for the "
                   "bare command on this machine, else none; --resume keeps the run's own)")
    p.add_argument("--confirm", type=int, default=None, metavar="K",
                   help=f"retrain the front's top K at a higher fidelity with {SEEDS} seeds each after the search; the "
                   f"pick is the best mean confirmed accuracy; 0: no confirmation (default: {d.confirm})")
    p.add_argument("--seed-references", action="store_true",
                   help="train the reference architectures that fit the budget first (and confirm them)")
    p.add_argument("--retry-failed", action="store_true",
                   help="with --resume: train again the confirmations recorded failed (a failure is otherwise "
                   "recorded once and left be: it would happen again)")
    p.add_argument("--no-early-stop", action="store_true", help="train every candidate for all epochs (no ASHA)")
    p.add_argument("--width-mult", type=float, default=None, help=f"proxy width multiplier (default: {d.width_mult})")
    p.add_argument("--max-train", type=int, default=None,
                   help=f"training images per proxy epoch (default: {d.max_train})")
    p.add_argument("--image-size", type=int, default=None,
                   help="proxy input resolution in pixels (default: the dataset's own)")
    p.add_argument("--grace-period", type=int, default=None,
                   help=f"epochs before ASHA may stop a trial, at least 2 (default: {d.grace_period})")
    plugins.add_import_flag(p)
    return p


def _config_from_args(args, previous: dict[str, Any] | None) -> SearchConfig:
    given = {
        "budget": parse_budget(args.budget) if args.budget is not None else None, "space": args.space, "trials": args.trials, "epochs": args.epochs,
        "dataset": args.dataset, "data_dir": args.data_dir, "sampler": args.sampler, "seed": args.seed,
        "width_mult": args.width_mult, "max_train": args.max_train, "image_size": args.image_size,
        "grace_period": args.grace_period, "confirm": args.confirm,
        "early_stop": False if args.no_early_stop else None,
        "seed_references": True if args.seed_references else None,
        "objectives": check_objectives(args.objectives) if args.objectives else None,
        "latency": _latency_from_args(args),
    }
    given = {k: v for k, v in given.items() if v is not None}
    if previous is not None:
        for key in SearchConfig.FIXED:
            if key in given and given[key] != previous.get(key):
                raise OpmixError(f"--resume: {key} was {previous.get(key)!r} in this run, not {given[key]!r}; "
                                 f"drop the flag to continue with the run's own value")
        merged = {k: previous[k] for k in SearchConfig.FIXED + ("trials", "seed_references", "confirm")
                  if k in previous}
        merged.update({k: v for k, v in given.items() if k in ("trials", "confirm", "seed_references")})
        return SearchConfig(**merged)
    if "budget" not in given and not (given.get("latency") or {}).get("budget_ms"):
        raise OpmixError("give a budget: --budget 4.5GFLOPs (FLOPs), --latency-budget 12ms (latency on "
                         "--latency-target), or both")
    given.setdefault("budget", None)
    if "latency" in given.get("objectives", ()) and "latency" not in given:
        given["latency"] = _latency_from_args(args, force=True)
    config = SearchConfig(**given)
    return dataclasses.replace(config, confirm_max_train=config.confirmation.max_train)  # fixed from now on


def _latency_from_args(args, force: bool = False) -> dict[str, Any] | None:
    """The ``latency`` entry of the configuration, when any latency flag (or ``force``) asks for one."""
    flags = (args.latency_budget, args.latency_target, args.latency_threads, args.latency_batch, args.latency_table)
    if not force and all(v is None for v in flags):
        return None
    target = Target(args.latency_target or "ort-cpu", args.latency_threads or 1, args.latency_batch or 1)
    return {"target": target.name, "threads": target.threads, "batch": target.batch, "dtype": target.dtype,
            "budget_ms": parse_latency(args.latency_budget) if args.latency_budget is not None else None,
            "table": str(Path(args.latency_table).resolve()) if args.latency_table else None}


def _validate(config: SearchConfig, args) -> None:
    from .data import DATASETS

    if config.latency:
        config.costs(log=lambda _: None)  # the target can be measured here, and the table is its own

    if config.sampler not in SAMPLERS:
        raise OpmixError(f"--sampler {config.sampler!r} is not known; use one of {', '.join(SAMPLERS)}")
    if not (config.dataset in DATASETS[:3] or config.dataset.startswith("imagefolder:")):
        raise OpmixError(f"--dataset {config.dataset!r} is not known; use one of {', '.join(DATASETS)}")
    for flag, value in (("--trials", config.trials), ("--epochs", config.epochs), ("--max-train", config.max_train)):
        if value < 1:
            raise OpmixError(f"{flag} {value} must be at least 1")
    if config.confirm < 0:
        raise OpmixError(f"--confirm {config.confirm} must be 0 (no confirmation) or more")
    if not 0 < config.width_mult <= 4:
        raise OpmixError(f"--width-mult {config.width_mult} must be in (0, 4]")
    config.proxy  # noqa: B018 -- the proxy settings' own checks (grace period, image size, ...)
    if args.cpus_per_trial <= 0:
        raise OpmixError(f"--cpus-per-trial {args.cpus_per_trial:g} must be > 0")


def _run_name(args, budget: int | None) -> str:
    if args.name:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", args.name):
            raise OpmixError(f"--name {args.name!r}: use letters, digits, '.', '_' and '-' only")
        return args.name
    if args.resume:
        raise OpmixError("--resume needs --name NAME of the run to continue")
    what = (format_flops(budget).replace(' ', '') if budget is not None
            else f"{parse_latency(args.latency_budget):g}ms" if args.latency_budget else "latency")
    return f"{what}-{time.strftime('%Y%m%d-%H%M%S')}"

def _main(argv: list[str] | None) -> int:
    args = _parser().parse_args(argv)
    gpus_asked = parse_gpus_per_trial(args.gpus_per_trial)
    if args.retry_failed and not args.resume:
        raise OpmixError("--retry-failed goes with --resume --name NAME: it trains again what a run recorded failed")
    budget = parse_budget(args.budget) if args.budget is not None else None
    runs_dir = Path(args.runs_dir)
    name = _run_name(args, budget)
    run = RunDir(runs_dir / name)
    if args.resume:
        if not run.exists():
            raise OpmixError(f"--resume: no run {name!r} in {runs_dir} (no {run.config}); check --name and "
                             f"--runs-dir")
        config = _config_from_args(args, run.read_config())
    else:
        if run.path.exists():
            raise OpmixError(f"a run {name!r} exists in {runs_dir}; continue it with --resume --name {name}, "
                             f"or pick another --name")
        config = _config_from_args(args, None)
    _validate(config, args)
    from .cluster import check_resources, ray_cpus, resolve_gpus_per_trial, start_ray
    from .data import load_dataset
    from .space import load_space

    previous = run.read_config() if args.resume else {}
    time_budget = _time_budget(args, previous)
    storage = storage_to_resume(previous.get("storage"), args.storage) if args.resume else args.storage
    imports = list(dict.fromkeys([*previous.get("imports", []), *args.imports]))  # the run's, then new ones
    plugins.import_modules(imports)
    if args.resume:  # the run's own copy of its space, whatever became of the original file
        if not run.space.is_file():
            raise OpmixError(f"--resume: {run.space} is missing, so the run's space is unknown; put the space file "
                             f"the run searched back there")
        load_space(run.space)
    else:
        load_space(config.space)  # fail on a bad space or dataset before anything is written
    data = load_dataset(config.dataset, config.data_dir, seed=config.seed)
    _cli.writable_dir(runs_dir, "--runs-dir")
    from ._loop import keep_cores_for_latency

    start_ray(args.address, imports, num_cpus=keep_cores_for_latency(config.latency, args.address, print))
    gpus_per_trial = resolve_gpus_per_trial(gpus_asked, args.cpus_per_trial, ray_cpus(), log=print)
    check_resources(args.cpus_per_trial, gpus_per_trial)
    if args.resume:
        study_name = previous.get("study_name", "opmix")
        kept = {**previous, "imports": imports, "seed_references": config.seed_references,
                "time_budget_s": time_budget}  # what this session changed stays the run's
        if kept != previous:
            run.write_config(kept)
    else:
        from .space import resolve_space_path

        study_name = f"opmix-{name}-{secrets.token_hex(4)}"
        run.write_config({**config.to_dict(), "storage": storage_to_store(storage),
                          "study_name": study_name, "imports": imports, "time_budget_s": time_budget})
        atomic_write(run.space, resolve_space_path(config.space).read_bytes())  # the run keeps the space it searched
    try:
        summary = search(config, run=run, resume=args.resume, storage=storage, study_name=study_name,
                         address=args.address, cpus_per_trial=args.cpus_per_trial,
                         gpus_per_trial=gpus_per_trial, time_budget_s=time_budget, data=data,
                         imports=tuple(imports), retry_failed=args.retry_failed)
    except KeyboardInterrupt:
        print(f"\ninterrupted; finished trials are kept in {run.trials}. Continue with:\n"
              f"  {PROG} --resume --name {name} --runs-dir {runs_dir}"
              + (" --storage URL  (the full URL: its password is not kept)"
                 if storage and storage_to_store(storage) != storage else ""), file=sys.stderr)
        return 130
    print_summary(summary, config.budget)
    return 0 if summary["by_status"]["completed"] else 1


BARE_TIME_BUDGET_S = 14 * 60.0  # the bare command's cap: with its confirmation, 15 minutes on 2 cores


def is_bare_command(args) -> bool:
    """The bare command: ``--budget``, maybe ``--name``, ``--runs-dir``, ``--data-dir``, ``--seed``,
    ``--sampler``, ``--storage``, run on this machine with the default resources (on a machine with CUDA,
    ``--gpus-per-trial auto``); nothing that sets its cost."""
    return (all(getattr(args, k) is None for k in ("space", "trials", "epochs", "dataset", "max_train", "width_mult",
                                                   "image_size", "grace_period", "confirm", "address",
                                                   "latency_budget", "latency_target", "latency_threads",
                                                   "latency_batch", "latency_table", "objectives"))
            and not (args.resume or args.seed_references or args.no_early_stop or args.retry_failed)
            and args.cpus_per_trial == 1.0 and args.gpus_per_trial is None)


def _time_budget(args, previous: dict[str, Any]) -> float | None:
    """This session's time budget in seconds (None: none): ``--time-budget`` when given; on ``--resume`` the
    run's own (``time_budget_s`` in its ``config.yaml``; a run written before the key had none); else
    ``BARE_TIME_BUDGET_S`` for the bare command, none for any other."""
    if args.time_budget:
        return _parse_duration(args.time_budget)
    if args.resume:
        return previous.get("time_budget_s")
    return BARE_TIME_BUDGET_S if is_bare_command(args) else None


def main(argv: list[str] | None = None) -> None:
    _cli.run(PROG, _main, argv)


if __name__ == "__main__":
    main()
