"""What a search costs and how well it does. Four measurements, one subcommand each:

    python benchmarks/bench_search.py trial-cost [--archs 5]        # (a) proxy epoch cost vs plain torch.mm
    python benchmarks/bench_search.py overhead runs/NAME             # (b) driver wall time vs trial time
    python benchmarks/bench_search.py quality [--trials 12]          # (c) hypervolume, TPE vs random, 3 seeds
    python benchmarks/bench_search.py tpe-variants [--trials 12]     # (c') hypervolume of TPE's settings, 3 seeds
    python benchmarks/bench_search.py fidelity [--archs 10]          # (d) Kendall tau, proxy vs 5x training
    python benchmarks/bench_search.py strategies [--schedule]        # (e) samplers against random, 8 paired seeds

(a) and (d) train in this process; (c) runs real searches through the command line into a temporary
runs folder; (c') and (e) run ``nas._loop.search`` in this process (one Ray for all runs). FLOPs are
multiply-adds; a training step is counted as 3x the forward pass.

(e) ``strategies``: for each sampler (random, tpe, nsga2, evolution), trained-candidate count (20: the bare
command's, and 60) and seed (0..7), one search of the default space under 4.5 GFLOPs with ``--confirm 1``: the pick
(the proxy's most accurate candidate) retrained at ``more_data`` fidelity (the confirmation rung: twice the proxy's
images per epoch) from 2 seeds. Seed s is the data split, the proxies' seed and the sampler's seed, the same for
every sampler: the runs are paired. The proxy fidelity is ``STRATEGY_FIDELITY`` ("quarter-data"): the default proxy
(width x0.25, 32 px, batch 64, lr 3e-3, 4 epochs, ASHA from epoch 2) on 512 images per epoch instead of 1536.
Measured on 2 cores, a 20-trial run takes a median 4 min (3-8) when nothing else runs and a 60-trial run 7-16 min
(up to 21 beside other work), so the 64 runs need about 9 h: more than the few hours the issue asked for, run across
sessions (``--trials 20`` first, so the 20-candidate comparison completed early). The space is the default space
frozen when the comparison began (``STRATEGY_SPACE``), and each row names the commit that trained it. Why it should
transfer to the default: the samplers see the same space, budget, epochs and early-stopping schedule, and the
confirmation rung is the default's, relative to the proxy; only the proxy's noise grows with fewer images, which
hides differences rather than inventing them, so a difference found here is no artefact of the cheaper proxy, while
"none beats random" holds for a proxy this noisy (docs/benchmarks.md measures how noisy). Each finished run is one
line of ``--results`` (JSONL); a rerun skips the (sampler, trials, seed, schedule) runs it holds, so the comparison
resumes after an interruption (the run cut off starts again). The report: per sampler and budget, hypervolume, best
proxy accuracy within the budget and the pick's confirmed accuracy, each as the median over seeds with a bootstrap
90 % interval, and the median paired difference from random with its interval; then each sampler's 60-candidate runs
against its 20-candidate ones, paired by seed (what tripling the candidates buys). ``--schedule`` compares the
schedules instead: for each (sampler, seed), one run with ASHA as today (``asha-timed``) and one Hyperband-style run
(Ray's ASHA with ``HYPERBAND_BRACKETS`` brackets and a first rung after 1 epoch: more candidates at a cheaper first
rung), each with ``--schedule-seconds`` of wall time (its confirmation's share included) and up to 3x the
candidates, so both train what they can in the same time; the report adds Hyperband's paired difference from ASHA.
(Matching Hyperband to a count-bound ASHA run's wall would not be fair: that wall includes its own confirmation and
whatever else ran on the machine.) While ``RESULTS.pause`` exists, the next run waits, so that tests or timings can
take the machine between runs. The CIFAR-10 JPEGs (``../shared/data/cifar-10-jpeg.tar.gz``) are extracted once to
``--cifar-dir`` (outside the project) and read as ``imagefolder:DIR/train``; their accuracies are slightly below
those on CIFAR-10's binary distribution (quality-75 JPEG re-encodings).
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from nas.data import load_dataset
from nas.network import build
from nas.space import load_space
from nas.stats import kendall_tau_b, permutation_p
from nas.train import TrainConfig, train_proxy


def matmul_gflops(repeats: int = 10) -> tuple[float, str]:
    """The multiply-add rate of a plain matrix product where proxies train: fp32 on the CPU, bf16 on CUDA."""
    cuda = torch.cuda.is_available()
    n, kw = (8192, {"device": "cuda", "dtype": torch.bfloat16}) if cuda else (2048, {})
    a, b = torch.randn(n, n, **kw), torch.randn(n, n, **kw)
    torch.mm(a, b)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    sync()
    t0 = time.perf_counter()
    for _ in range(repeats):
        torch.mm(a, b)
    sync()
    return repeats * n ** 3 / (time.perf_counter() - t0) / 1e9, f"torch.mm {n}^3 {'bf16 cuda' if cuda else 'fp32'}"


def proxy_of(arch, data, width_mult=0.25):
    return build(arch, width_mult=width_mult, in_chans=data.in_chans, num_classes=data.num_classes,
                 input_size=data.image_size)


def trial_cost(args) -> None:
    torch.set_num_threads(args.threads)
    data = load_dataset("fashion-mnist", args.data_dir)
    space = load_space(args.space)
    rng = random.Random(args.seed)
    from nas.flops import count_flops

    peak, what = matmul_gflops()
    print(f"torch {torch.__version__}, {args.threads} thread(s); {what}: {peak:.1f} G multiply-adds/s")
    print(f"{'architecture':70s} {'s/epoch':>8s} {'img/s':>7s} {'proxy MFLOPs':>12s} {'GFLOP/s':>8s} {'% of mm':>7s}")
    cfg = TrainConfig(epochs=1, threads=args.threads)
    for _ in range(args.archs):
        arch = space.random(rng)
        model = proxy_of(arch, data)
        fwd = count_flops(model, (1, data.in_chans, data.image_size, data.image_size), deploy=False)
        result = train_proxy(model, data, cfg)
        rate = 3 * fwd * result.images_per_second / 1e9
        ops = " ".join(f"{s.op}x{s.depth}" for s in arch.stages)
        print(f"{ops:70s} {result.train_seconds:8.1f} {result.images_per_second:7.0f} {fwd / 1e6:12.1f} "
              f"{rate:8.2f} {100 * rate / peak:6.1f}%", flush=True)


def overhead(args) -> None:
    run = Path(args.run)
    from nas.rundir import RunDir

    records = RunDir(run).read_trials()
    trained = [r for r in records if r["status"] not in ("infeasible", "interrupted")]  # proxies, confirmations
    train = sum(r["timings"].get("train_s", 0.0) for r in trained)
    wall_trials = sum(r["timings"].get("wall_s", 0.0) for r in trained)
    flops_s = sum(r["timings"].get("flops_s", 0.0) for r in records)
    wall = float(args.wall) if args.wall else _wall_from_log(run / "search.log")
    confirmations = sum(r["status"] == "confirmed" for r in trained)
    print(f"{run}: {len(trained) - confirmations} proxies and {confirmations} confirmation trainings, "
          f"{len(records) - len(trained)} rejected for the budget")
    print(f"  sum of proxy training time   {train:8.1f} s")
    print(f"  sum of trial wall time       {wall_trials:8.1f} s  (build, data, training, evaluation)")
    print(f"  FLOP counting in the driver  {flops_s:8.1f} s  ({len(records)} candidates)")
    if wall:
        slots = args.slots
        print(f"  search wall time             {wall:8.1f} s; with {slots} trials at a time, "
              f"{100 * train / (slots * wall):.0f} % of the slot time trained proxies")
    else:
        print("  (pass --wall SECONDS, the time the search command took, for the ratio)")


def _wall_from_log(path: Path) -> float | None:
    """The last [mm:ss] stamp of the run's search.log (single-session runs)."""
    if not path.exists():
        return None
    stamps = [line[1:6] for line in path.read_text().splitlines() if line.startswith("[")]
    return 60 * int(stamps[-1][:2]) + int(stamps[-1][3:]) if stamps else None


def quality(args) -> None:
    from nas.pareto import hypervolume
    from nas.rundir import RunDir

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for sampler in ("tpe", "random"):
            for seed in range(args.seeds):
                name = f"{sampler}-{seed}"
                cmd = [sys.executable, "-m", "nas.search", "--budget", args.budget, "--trials", str(args.trials),
                       "--epochs", str(args.epochs), "--sampler", sampler, "--seed", str(seed), "--name", name,
                       "--runs-dir", tmp, "--max-train", str(args.max_train), "--confirm", "0"]
                t0 = time.perf_counter()
                subprocess.run(cmd, check=True, capture_output=True, text=True)
                recs = RunDir(Path(tmp) / name).read_trials()
                done = [r for r in recs if r["status"] == "completed"]
                from nas.flops import parse_budget

                hv = hypervolume([r["accuracy"] for r in done], [r["flops"] for r in done], parse_budget(args.budget))
                rows.append((sampler, seed, hv, len(done), sum(r["status"] == "infeasible" for r in recs),
                             time.perf_counter() - t0))
                print(f"{sampler:7s} seed {seed}: hypervolume {hv:.4f}, {rows[-1][3]} completed, "
                      f"{rows[-1][4]} infeasible, {rows[-1][5]:.0f} s", flush=True)
    for sampler in ("tpe", "random"):
        hvs = [r[2] for r in rows if r[0] == sampler]
        print(f"{sampler:7s} mean hypervolume {sum(hvs) / len(hvs):.4f} over {len(hvs)} seeds")


def _fidelity_job(arch: dict, config: TrainConfig, data_dir: str | None, width_mult: float) -> list[float]:
    """One training (in a worker process): the accuracies after each epoch."""
    from nas.arch import Arch

    data = load_dataset("fashion-mnist", data_dir)
    return train_proxy(proxy_of(Arch.from_dict(arch), data, width_mult), data, config).accuracies


def fidelity(args) -> None:
    import concurrent.futures
    import multiprocessing

    from nas.search import SearchConfig

    d = SearchConfig(budget=0)  # the search defaults: the proxy that ranks candidates
    threads = args.threads
    proxy = TrainConfig(epochs=d.epochs, batch_size=d.batch_size, max_train=d.max_train, threads=threads)
    longer = TrainConfig(epochs=5 * d.epochs, batch_size=args.long_batch, lr=args.long_lr, max_train=None, max_val=None,
                         threads=threads)
    data = load_dataset("fashion-mnist", args.data_dir)
    print(f"{data.source}: {len(data.train_x)} training, {len(data.val_x)} validation images; "
          f"{'cuda' if torch.cuda.is_available() else 'cpu'}, {args.jobs} job(s) of {threads} thread(s)")
    print(f"proxy: {proxy.epochs} epochs on {proxy.max_train} images, batch {proxy.batch_size}, lr {proxy.lr}, "
          f"validated on {proxy.max_val}; reference: {longer.epochs} epochs on all, batch {longer.batch_size}, "
          f"lr {longer.lr}, validated on all", flush=True)
    space = load_space(args.space)
    rng = random.Random(args.seed)
    archs = [space.random(rng).to_dict() for _ in range(args.archs)]
    setup = {"train_images": len(data.train_x), "val_images": len(data.val_x),
             **{k: {f: v for f, v in vars(c).items() if f not in ("threads", "device")}
                for k, c in (("proxy", proxy), ("reference", longer))}}
    results: dict[tuple[str, int], list[float]] = {}
    if args.out and Path(args.out).exists():  # go on from an earlier, cut-short run of the same measurement
        saved = json.loads(Path(args.out).read_text())
        if saved["archs"] != archs or saved["setup"] != setup:
            raise SystemExit(f"{args.out} holds another measurement (other architectures, data or training "
                             "settings); pass another --out")
        results = {(k.rsplit("-", 1)[0], int(k.rsplit("-", 1)[1])): v for k, v in saved["results"].items()}
        print(f"{args.out}: {len(results)} trainings done before, kept")
    t0 = time.perf_counter()
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(args.jobs, mp_context=ctx) as pool:
        chosen = range(args.archs) if args.only is None else [int(i) for i in args.only.split(",")]
        # The proxies first: they take seconds, and a cut-short run still has all of them.
        futures = {pool.submit(_fidelity_job, archs[i], cfg, args.data_dir, d.width_mult): (kind, i)
                   for kind, cfg in (("proxy", proxy), ("reference", longer)) for i in chosen
                   if (kind, i) not in results}
        for fut in concurrent.futures.as_completed(futures):
            kind, i = futures[fut]
            results[kind, i] = fut.result()
            print(f"[{time.perf_counter() - t0:6.0f} s] arch {i} {kind}: "
                  + " ".join(f"{a:.3f}" for a in results[kind, i]), flush=True)
            if args.out:
                Path(args.out).write_text(json.dumps({"archs": archs, "setup": setup, "results": {
                    f"{k}-{j}": v for (k, j), v in results.items()}}, indent=1))
    measured = [i for i in range(args.archs) if ("reference", i) in results]
    short = [results["proxy", i][-1] for i in measured]
    long = [results["reference", i][-1] for i in measured]
    print(f"\n{'#':>2s}  {'stage ops':60s} {'proxy':>6s} {'5x, all':>8s}")
    for i, acc, ref in zip(measured, short, long):
        ops = " ".join(f"{s['op']}x{s['depth']}" for s in archs[i]["stages"])
        print(f"{i:2d}  {ops:60s} {acc:6.3f} {ref:8.3f}")
    tau = kendall_tau_b(short, long)
    p = permutation_p(short, long, kendall_tau_b, resamples=2000, seed=args.seed)
    print(f"Kendall tau-b {tau:.3f} (one-sided permutation p = {p:.3f}) over {len(measured)} of {args.archs} "
          f"architectures; {time.perf_counter() - t0:.0f} s")


TPE_VARIANTS = {  # what the search used before (multivariate), then each setting added in turn
    "multivariate": {"multivariate": True},
    "+group": {"multivariate": True, "group": True},
    "+group+liar": {"multivariate": True, "group": True, "constant_liar": True},
}


def tpe_variants(args) -> None:
    """Hypervolume at an equal number of trained candidates for each TPE setting, the same seeds, in this
    process (one Ray for all runs); every run also counts the proposals the searcher caught as duplicates."""
    import warnings

    import optuna
    import ray

    from nas import _loop
    from nas.data import load_dataset
    from nas.flops import parse_budget
    from nas.pareto import hypervolume
    from nas.rundir import RunDir

    budget = parse_budget(args.budget)
    data = load_dataset("fashion-mnist", args.data_dir)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for variant, knobs in TPE_VARIANTS.items():
            for seed in range(args.seeds):
                def sampler(name, s, trials, knobs=knobs, **_):  # space, objectives: unused by TPE
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                        return optuna.samplers.TPESampler(seed=s, n_startup_trials=max(4, min(10, trials // 2)),
                                                          **knobs)
                _loop.make_sampler = sampler
                config = _loop.SearchConfig(budget=budget, trials=args.trials, epochs=args.epochs, seed=seed,
                                            max_train=args.max_train, confirm=0, data_dir=args.data_dir)
                run = RunDir(Path(tmp) / f"{variant}-{seed}")
                run.write_config({})
                t0 = time.perf_counter()
                _loop.search(config, run=run, log=lambda m: None, data=data)
                recs = run.read_trials()
                done = [r for r in recs if r["status"] == "completed"]
                hv = hypervolume([r["accuracy"] for r in done], [r["flops"] for r in done], budget)
                study = optuna.load_study(study_name="opmix", storage=f"sqlite:///{run.study}")
                dups = sum("duplicate_of" in t.user_attrs for t in study.trials)
                rows.append((variant, seed, hv))
                print(f"{variant:14s} seed {seed}: hypervolume {hv:.4f}, {len(done)} completed, "
                      f"{sum(r['status'] == 'infeasible' for r in recs)} infeasible, {dups} duplicate proposals, "
                      f"{time.perf_counter() - t0:.0f} s", flush=True)
    ray.shutdown()
    for variant in TPE_VARIANTS:
        hvs = [r[2] for r in rows if r[0] == variant]
        mean = sum(hvs) / len(hvs)
        sd = (sum((h - mean) ** 2 for h in hvs) / (len(hvs) - 1)) ** 0.5 if len(hvs) > 1 else float("nan")
        print(f"{variant:14s} hypervolume {mean:.4f} ± {sd:.4f} (sd over {len(hvs)} seeds)")


STRATEGY_SAMPLERS = ("random", "tpe", "nsga2", "evolution")
STRATEGY_FIDELITY = {"name": "quarter-data", "epochs": 4, "max_train": 512}  # the rest: SearchConfig's defaults
HYPERBAND_BRACKETS = 3
# The schedule comparison (--schedule): ASHA as today against Hyperband, each given the same wall time (the
# confirmation's share included, as a user's --time-budget would) and up to 3x the candidates, so that each
# schedule trains as many as it can in that time. About the median wall of a 20-candidate ASHA run here.
SCHEDULE_WALL_S = 240.0
SCHEDULES = ("asha-timed", "hyperband")
# The space the comparison runs on: the default space as it stood when the comparison began (issue 20), frozen,
# so that a run resumed in a later session, after the default space gained operators, is paired with the
# earlier ones. Rows name the space's digest; rows without one predate it and ran on this same file.
STRATEGY_SPACE = Path(__file__).resolve().parent / "results" / "strategies-space.yaml"
CIFAR_TARBALL = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar-10-jpeg.tar.gz"


def _cifar_folder(cifar_dir: Path, tarball: Path) -> Path:
    """The CIFAR-10 JPEG training folder, extracted from ``tarball`` into ``cifar_dir`` the first time."""
    import tarfile

    train = cifar_dir / "train"
    if not train.is_dir():
        if not tarball.is_file():
            raise SystemExit(f"{train} is missing and so is {tarball}: pass --cifar-dir with an extracted copy "
                             f"(train/<class>/*.jpg) or --tarball")
        print(f"extracting {tarball} into {cifar_dir} (60,000 small files, once)", flush=True)
        cifar_dir.mkdir(parents=True, exist_ok=True)
        with tarfile.open(tarball) as tar:
            tar.extractall(cifar_dir, filter="data")
    return train


class _Hyperband:
    """While active, the search's scheduler (``nas._searcher.CandidateASHA``, looked up when a search starts)
    is Ray's asynchronous Hyperband: ``HYPERBAND_BRACKETS`` brackets, the first rung after one epoch."""

    def __enter__(self):
        from nas import _searcher

        self.original = _searcher.CandidateASHA

        class HyperbandASHA(self.original):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, **{**kwargs, "grace_period": 1, "brackets": HYPERBAND_BRACKETS})

        _searcher.CandidateASHA = HyperbandASHA
        return self

    def __exit__(self, *exc):
        from nas import _searcher

        _searcher.CandidateASHA = self.original


def _commit() -> str | None:
    """The checkout's commit (operators change between sessions of a comparison that spans several: a row
    names the code that trained it), or None outside a git checkout."""
    import subprocess

    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent, text=True,
                              capture_output=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def _space_digest(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def _strategy_run(sampler: str, trials: int, seed: int, schedule: str, *, data, dataset: str, budget: int,
                  fidelity: dict, space: Path = STRATEGY_SPACE, time_budget_s: float | None = None,
                  log=lambda m: None) -> dict:
    """One search into a temporary run folder; its row of the results file."""
    import contextlib

    from nas import _loop
    from nas.pareto import analyze
    from nas.rundir import RunDir

    config = _loop.SearchConfig(budget=budget, dataset=dataset, trials=trials, sampler=sampler, seed=seed,
                                epochs=fidelity["epochs"], max_train=fidelity["max_train"], confirm=1,
                                space=str(space))
    with tempfile.TemporaryDirectory() as tmp:
        run = RunDir(Path(tmp) / "run")
        run.write_config({})
        t0 = time.perf_counter()
        with _Hyperband() if schedule == "hyperband" else contextlib.nullcontext():
            _loop.search(config, run=run, log=log, data=data, time_budget_s=time_budget_s)
        wall = time.perf_counter() - t0
        records = run.read_trials()
    a = analyze(records, budget)
    pick = a["pick"]
    return {"sampler": sampler, "trials": trials, "seed": seed, "schedule": schedule,
            "fidelity": fidelity, "dataset": data.source, "budget": budget, "space": _space_digest(space),
            "commit": _commit(),
            "hypervolume": a["hypervolume"],
            "best_proxy": a["proxy_best"]["accuracy"] if a["proxy_best"] else None,
            "pick": pick["record"]["trial_id"] if pick else None,
            "pick_confirmed": pick["mean"] if pick else None, "pick_complete": bool(pick and pick["complete"]),
            "by_status": a["by_status"], "time_budget_s": time_budget_s, "wall_s": round(wall, 1)}


def _wait_while_paused(pause: Path) -> None:
    """Hold the next run while ``pause`` exists: timings (and the schedule comparison's wall-time budgets) need
    the machine to themselves, so other heavy work creates the file, waits for the run under way to end, and
    removes it when done."""
    if pause.exists():
        print(f"paused before the next run while {pause} exists", flush=True)
        while pause.exists():
            time.sleep(5)


def strategies(args) -> None:
    import ray

    from nas.flops import parse_budget

    budget = parse_budget(args.budget)
    dataset = args.dataset or f"imagefolder:{_cifar_folder(Path(args.cifar_dir).expanduser(), Path(args.tarball))}"
    fidelity = dict(STRATEGY_FIDELITY)
    if args.epochs or args.max_train:  # a smoke test's cheaper proxy, named as such in every row
        fidelity = {"name": "custom", "epochs": args.epochs or fidelity["epochs"],
                    "max_train": args.max_train or fidelity["max_train"]}
    results = Path(args.results)
    results.parent.mkdir(parents=True, exist_ok=True)
    rows = [json.loads(line) for line in results.read_text().splitlines() if line] if results.exists() else []
    if any(r["fidelity"] != fidelity for r in rows):
        raise SystemExit(f"{results} holds runs at another fidelity than {fidelity}; pass another --results")
    space = Path(args.space)
    digest = _space_digest(space)
    if any(r.get("space", digest) != digest for r in rows):
        raise SystemExit(f"{results} holds runs on another space than {space} ({digest}); pass that space with "
                         f"--space or another --results")
    done = {(r["sampler"], r["trials"], r["seed"], r["schedule"]) for r in rows}
    print(f"{results}: {len(rows)} run(s) done before, kept; fidelity {fidelity}", flush=True)
    samplers, budgets = args.samplers.split(","), [int(t) for t in args.trials.split(",")]
    for seed in range(args.seeds):  # seed-major: each seed's data split is loaded once
        data = None
        for trials in budgets:
            for sampler in samplers:
                for schedule in SCHEDULES if args.schedule else ("asha",):
                    if (sampler, trials, seed, schedule) in done:
                        continue
                    _wait_while_paused(results.with_suffix(".pause"))
                    data = data or load_dataset(dataset, args.data_dir, seed=seed)
                    timed = schedule in SCHEDULES  # equal wall time, up to 3x the candidates
                    row = _strategy_run(sampler, 3 * trials if timed else trials, seed, schedule,
                                        data=data, dataset=dataset, budget=budget, fidelity=fidelity,
                                        space=space, log=print if args.verbose else (lambda m: None),
                                        time_budget_s=args.schedule_seconds if timed else None)
                    row["trials"] = trials  # the comparison's label (a timed run trains what its time allows)
                    rows.append(row)
                    with results.open("a") as f:
                        f.write(json.dumps(row) + "\n")
                    print(f"{schedule:9s} {sampler:9s} {trials:3d} trials seed {seed}: hypervolume "
                          f"{row['hypervolume']:.4f}, best proxy {row['best_proxy']}, pick confirmed "
                          f"{row['pick_confirmed']}, {row['wall_s']:.0f} s", flush=True)
    ray.shutdown()
    for line in strategies_report(rows):
        print(line)


def _trained(row: dict) -> int:
    """The proxies a run trained (completed or stopped by the schedule)."""
    return row["by_status"].get("completed", 0) + row["by_status"].get("stopped", 0)


def median_line(label: str, own: dict, base: dict | None, versus: str, unit: str = "seeds") -> str | None:
    """``own`` (seed -> value) as its median with a bootstrap 90 % interval, then the median of its paired
    differences from ``base`` (seed -> value) over their common seeds (``unit`` names them), with its interval;
    None when empty."""
    import numpy as np

    from nas.stats import bootstrap_interval

    x = np.array(list(own.values()), dtype=float)
    if not len(x):
        return None
    lo, hi = bootstrap_interval(lambda a, b: float(np.median(a)), x, x)
    text = f"    {label:10s} n {len(x):2d}  {np.median(x):.4f} [{lo:.4f}, {hi:.4f}]"
    common = sorted(set(own) & set(base or {}))
    if common:
        a = np.array([own[s] for s in common], dtype=float)
        b = np.array([base[s] for s in common], dtype=float)
        dlo, dhi = bootstrap_interval(lambda a, b: float(np.median(a - b)), a, b)
        text += f"   vs {versus} ({len(common)} {unit}) {np.median(a - b):+.4f} [{dlo:+.4f}, {dhi:+.4f}]"
    return text


def strategies_report(rows: list[dict]) -> list[str]:
    """Per schedule, budget and sampler: each quantity's median over seeds with a bootstrap 90 % interval of
    the median, and the median of the paired differences from random (same seed) with its interval; where
    a schedule ran at several budgets of candidates, each sampler's most against its fewest, paired by seed.
    Where both timed schedules ran, Hyperband's paired difference from ASHA, per sampler."""
    def values(group: list[dict], key: str, **match) -> dict:
        get = _trained if key == "trained" else (lambda r: r[key])
        return {r["seed"]: get(r) for r in group if all(r[k] == v for k, v in match.items())
                and get(r) is not None}

    def samplers_in(group: list[dict]) -> list[str]:
        return [s for s in STRATEGY_SAMPLERS if any(r["sampler"] == s for r in group)]

    def block(header: str, keys: tuple[str, ...], lines_of) -> list[str]:
        """A report block: its header, then per quantity its name and ``lines_of(key)``'s lines (None: no
        value to report)."""
        return [f"\n{header}"] + [line for key in keys for line in [f"  {key}", *lines_of(key)] if line]

    keys = ("hypervolume", "best_proxy", "pick_confirmed")
    out = []
    counted = [r for r in rows if r["schedule"] not in SCHEDULES]  # the sampler comparison (count-bound runs)
    for schedule in sorted({r["schedule"] for r in counted}):
        at = [r for r in counted if r["schedule"] == schedule]
        samplers = samplers_in(at)
        counts = sorted({r["trials"] for r in at})
        for trials in counts:
            group = [r for r in at if r["trials"] == trials]
            out += block(f"{schedule}, {trials} trained candidates (median over seeds [90 % interval]; paired "
                         f"difference from random [90 % interval])", keys,
                         lambda key: [median_line(sampler, values(group, key, sampler=sampler),
                                                  None if sampler == "random" else values(group, key, sampler="random"),
                                                  "random") for sampler in samplers_in(group)])
        if len(counts) > 1:  # what more candidates buy, per sampler: the most trained against the fewest
            few, many = counts[0], counts[-1]

            def against_few(key: str) -> list[str | None]:
                by = {(s, t): values(at, key, sampler=s, trials=t) for s in samplers for t in (few, many)}
                lines = [median_line(s, by[s, many], by[s, few], str(few)) for s in samplers]
                if len(samplers) > 1:  # every (sampler, seed) pair at once
                    pooled = [{(s, seed): v for s in samplers for seed, v in by[s, t].items()} for t in (many, few)]
                    lines.append(median_line("pooled", *pooled, str(few), "sampler-seed pairs"))
                return lines

            out += block(f"{schedule}, {many} against {few} trained candidates, per sampler (median over seeds "
                         f"[90 % interval]; paired difference from {few} [90 % interval])", keys, against_few)
    timed = [r for r in rows if r["schedule"] in SCHEDULES]  # the schedule comparison (time-bound runs)
    for trials in sorted({r["trials"] for r in timed}):
        group = [r for r in timed if r["trials"] == trials]
        walls = ", ".join(f"{t:g}" for t in sorted({r["time_budget_s"] for r in group}))
        for sampler in samplers_in(group):
            out += block(f"hyperband against asha at equal wall time ({walls} s each, up to {3 * trials} "
                         f"candidates), sampler {sampler} (paired difference from asha-timed [90 % interval])",
                         keys + ("trained",),
                         lambda key: [median_line(schedule, values(group, key, sampler=sampler, schedule=schedule),
                                                  values(group, key, sampler=sampler, schedule="asha-timed")
                                                  if schedule == "hyperband" else None, "asha-timed")
                                      for schedule in SCHEDULES])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    for name in ("trial-cost", "fidelity"):
        p = sub.add_parser(name)
        p.add_argument("--archs", type=int, default=5 if name == "trial-cost" else 10)
        p.add_argument("--space", default="hybrid")
        p.add_argument("--data-dir", default=None)
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--threads", type=int, default=torch.get_num_threads() if name == "trial-cost" else 1)
        if name == "fidelity":
            p.add_argument("--jobs", type=int, default=1, help="trainings at a time (worker processes)")
            p.add_argument("--long-batch", type=int, default=64, help="batch size of the 5x longer reference training")
            p.add_argument("--long-lr", type=float, default=3e-3, help="its learning rate")
            p.add_argument("--only", default=None, help="train only these architectures (comma-separated indices)")
            p.add_argument("--out", default=None, help="a JSON file to write the accuracies to as they come; "
                           "when it exists, the trainings it holds are not run again")
    p = sub.add_parser("overhead")
    p.add_argument("run")
    p.add_argument("--wall", default=None, help="the search's wall time in seconds")
    p.add_argument("--slots", type=int, default=2, help="trials that ran at a time")
    p = sub.add_parser("quality")
    p.add_argument("--budget", default="4.5GFLOPs")
    p.add_argument("--trials", type=int, default=12)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--max-train", type=int, default=1536)
    p.add_argument("--seeds", type=int, default=3)
    p = sub.add_parser("tpe-variants")
    p.add_argument("--budget", default="4.5GFLOPs")
    p.add_argument("--trials", type=int, default=12)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--max-train", type=int, default=512)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--data-dir", default=None)
    p = sub.add_parser("strategies")
    p.add_argument("--samplers", default=",".join(STRATEGY_SAMPLERS), help="comma-separated Optuna samplers")
    p.add_argument("--trials", default="20,60", help="trained-candidate counts, comma-separated")
    p.add_argument("--seeds", type=int, default=8, help="seeds 0..N-1, paired across samplers")
    p.add_argument("--budget", default="4.5GFLOPs")
    p.add_argument("--space", default=str(STRATEGY_SPACE),
                   help="the space file (default: the default space frozen when the comparison began)")
    p.add_argument("--dataset", default=None, help="a dataset for nas.data.load_dataset (default: the CIFAR-10 "
                   "JPEGs as imagefolder:CIFAR_DIR/train); e.g. fashion-mnist for a smoke test")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--cifar-dir", default="~/.cache/opmix/cifar-10-jpeg", help="where the JPEGs are extracted")
    p.add_argument("--tarball", default=str(CIFAR_TARBALL))
    p.add_argument("--results", default="benchmarks/results/strategies.jsonl",
                   help="one JSON line per finished run; the runs it holds are skipped (while RESULTS.pause, e.g. "
                   "strategies.pause, exists, the next run waits)")
    p.add_argument("--epochs", type=int, default=None, help="override the fidelity's epochs (smoke tests)")
    p.add_argument("--max-train", type=int, default=None, help="override its images per epoch (smoke tests)")
    p.add_argument("--verbose", action="store_true", help="print each search's progress")
    p.add_argument("--schedule", action="store_true",
                   help="instead, compare the schedules: each search with ASHA and with Hyperband, both given "
                   "--schedule-seconds of wall time and up to 3x the candidates")
    p.add_argument("--schedule-seconds", type=float, default=SCHEDULE_WALL_S,
                   help=f"the wall time of each run of the schedule comparison (default {SCHEDULE_WALL_S:g})")
    args = parser.parse_args()
    {"trial-cost": trial_cost, "overhead": overhead, "quality": quality, "fidelity": fidelity,
     "tpe-variants": tpe_variants, "strategies": strategies}[args.what](args)


if __name__ == "__main__":
    main()
