"""CPU latency of exported networks at 224 px: training form against deploy form, and ONNX Runtime.

    python benchmarks/bench_export.py                          # reference architectures, exported on the fly
    python benchmarks/bench_export.py --run runs/NAME          # a search's recommended trial too
    python benchmarks/bench_export.py --refs repvgg_a2 --threads 2

Each network goes through ``nas.export.export`` (the real export, self-checks included) into a temporary
folder; the timings load its ``model.py`` and ``deploy/model.onnx``. Median wall time of repeated forward
passes after warm-up, in eval mode, under ``torch.inference_mode``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from nas.arch import Arch
from nas.export import _import_file, export
from nas.pareto import analyze, objectives_of
from nas.rundir import load_run
from nas.flops import measure_arch
from nas.space import load_reference


def median_ms(fn, runs: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def bench(name: str, record: dict, folder: Path, threads: int, batches: list[int]) -> None:
    out = folder / name
    export(folder, record, out, log=lambda _: None)
    module = _import_file(out / "model.py")
    train = module.build().eval()
    deploy = module.reparameterize_model(train)
    n_train, n_deploy = sum(1 for _ in train.modules()), sum(1 for _ in deploy.modules())
    session = None
    if (out / "deploy" / "model.onnx").exists():
        import onnxruntime

        opts = onnxruntime.SessionOptions()
        opts.intra_op_num_threads = threads
        session = onnxruntime.InferenceSession(str(out / "deploy" / "model.onnx"), opts,
                                               providers=["CPUExecutionProvider"])
    for batch in batches:
        runs = 20 if batch == 1 else 3
        x = torch.randn(batch, 3, 224, 224)
        with torch.inference_mode():
            t_train = median_ms(lambda: train(x), runs)
            t_deploy = median_ms(lambda: deploy(x), runs)
        t_onnx = float("nan")
        if session is not None:
            feed = {session.get_inputs()[0].name: x.numpy()}
            t_onnx = median_ms(lambda: session.run(None, feed), runs)
        print(f"{name:28s} {batch:5d} {record['flops'] / 1e9:7.2f} {n_train:4d}->{n_deploy:<4d} {t_train:9.1f} "
              f"{t_deploy:9.1f} {t_train / t_deploy:6.2f} {t_onnx:9.1f}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--refs", nargs="*", default=["repvgg_a2", "resnet50", "convnext_t"])
    p.add_argument("--run", default=None, help="also a search run's recommended trial")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    jobs = []
    for ref in args.refs:
        arch: Arch = load_reference(ref)
        flops, params = measure_arch(arch)
        jobs.append((ref, {"trial_id": f"ref-{ref}", "reference": ref, "status": "completed", "flops": flops,
                           "params": params, "accuracy": float("nan"), "arch": arch.to_dict()}))
    if args.run:
        run, config, records = load_run(args.run)
        best = analyze(records, config["budget"], *objectives_of(config))["best"]
        if best is None:
            sys.exit(f"{args.run}: no completed trial within the budget")
        jobs.append((f"{run.path.name}/{best['trial_id']}", best))
    print(f"torch {torch.__version__}, {args.threads} thread(s); median ms per forward pass at 224 px")
    print(f"{'network':28s} {'batch':>5s} {'GFLOPs':>7s} {'modules':>9s} {'train ms':>9s} {'deploy ms':>9s} "
          f"{'ratio':>6s} {'onnx ms':>9s}")
    with tempfile.TemporaryDirectory() as tmp:
        for name, record in jobs:
            bench(name.replace("/", "_"), record, Path(tmp), args.threads, args.batches)


if __name__ == "__main__":
    main()
