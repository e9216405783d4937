"""What a search costs and how well it does. Four measurements, one subcommand each:

    python benchmarks/bench_search.py trial-cost [--archs 5]        # (a) proxy epoch cost vs plain torch.mm
    python benchmarks/bench_search.py overhead runs/NAME             # (b) driver wall time vs trial time
    python benchmarks/bench_search.py quality [--trials 12]          # (c) hypervolume, TPE vs random, 3 seeds
    python benchmarks/bench_search.py tpe-variants [--trials 12]     # (c') hypervolume of TPE's settings, 3 seeds
    python benchmarks/bench_search.py fidelity [--archs 10]          # (d) Kendall tau, proxy vs 5x training

(a) and (d) train in this process; (c) runs real searches through the command line into a temporary
runs folder. FLOPs are multiply-adds; a training step is counted as 3x the forward pass.
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
    args = parser.parse_args()
    {"trial-cost": trial_cost, "overhead": overhead, "quality": quality, "fidelity": fidelity,
     "tpe-variants": tpe_variants}[args.what](args)


if __name__ == "__main__":
    main()
