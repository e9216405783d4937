"""Run some jobs of a calibration (``nas.calibrate``) on one GPU machine, in parallel worker processes and
without Ray: the way the costliest jobs (the reference trainings) were moved off the 2-core machines.

The jobs are the calibration folder's own: its ``calibration.yaml`` gives the settings and its ``archs.jsonl``
the architectures, so a result written here is the same job the folder would run, trained on the GPU
(bfloat16 autocast, as ``nas.train`` does on CUDA). Each result is appended to ``--out`` as a JSON line the
moment it finishes, with the device named, so whatever a time-limited machine finishes is kept. Merge the
lines of the run's own seed into the folder's ``results.jsonl``; extra seeds of the reference stay in a file
of their own (``results.jsonl`` keeps one reference per architecture).

  python benchmarks/calibration/gpu_jobs.py benchmarks/results/calibration/cifar10-catalog \\
      --dataset imagefolder:/tmp/data/train --setting reference --seeds 0 1 --workers 8 --out gpu.jsonl

``--fingerprint`` prints a hash of the loaded split (labels and pixels) and exits: run it on both machines
to check that they see the same data.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import dataclasses
import hashlib
import json
import multiprocessing
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

_DATA = None


def _load(dataset: str, data_dir: str | None, seed: int):
    from nas.data import load_dataset

    return load_dataset(dataset, data_dir, seed=seed)


def _init(dataset: str, data_dir: str | None, seed: int) -> None:
    global _DATA
    _DATA = _load(dataset, data_dir, seed)


def _job(arch: dict, setting: str, knobs: dict, seed: int, threads: int) -> dict:
    from nas.calibrate import _run_job

    return _run_job(arch, setting, knobs, seed, _DATA, threads)


def fingerprint(data) -> str:
    digest = hashlib.sha256()
    for t in (data.train_y, data.val_y, data.train_x, data.val_x):
        digest.update(t.contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def main(argv: list[str] | None = None) -> int:
    import yaml

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="the calibration folder (calibration.yaml, archs.jsonl)")
    parser.add_argument("--dataset", help="the dataset where this machine has it (default: the folder's)")
    parser.add_argument("--setting", default="reference", help="'reference' or a proxy setting of the folder")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds, as offsets from the folder's")
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads per worker")
    parser.add_argument("--out", type=Path, default=Path("gpu_jobs.jsonl"))
    parser.add_argument("--fingerprint", action="store_true")
    args = parser.parse_args(argv)

    setup = yaml.safe_load((args.folder / "calibration.yaml").read_text())
    dataset = args.dataset or setup["dataset"]
    if args.fingerprint:
        data = _load(dataset, setup["data_dir"], setup["seed"])
        print(f"{dataset}: {len(data.train_y)} train / {len(data.val_y)} val, fingerprint {fingerprint(data)}")
        return 0
    from nas.calibrate import REFERENCE
    from nas.proxy import ProxySettings

    knobs = setup["reference"] if args.setting == REFERENCE else setup["settings"][args.setting]
    knobs = dataclasses.asdict(ProxySettings(**knobs))
    archs = [json.loads(line) for line in (args.folder / "archs.jsonl").read_text().splitlines() if line]
    done = set()
    if args.out.exists():
        done = {(r["arch"], r["seed"]) for r in map(json.loads, args.out.read_text().splitlines()) if "error" not in r}
    jobs = [(a, setup["seed"] + s) for s in args.seeds for a in archs if (a["index"], setup["seed"] + s) not in done]
    import torch

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    print(f"{len(jobs)} {args.setting} jobs on {device}, {args.workers} workers", flush=True)
    started = time.time()
    ctx = multiprocessing.get_context("spawn")
    with cf.ProcessPoolExecutor(args.workers, mp_context=ctx, initializer=_init,
                                initargs=(dataset, setup["data_dir"], setup["seed"])) as pool:
        futures = {pool.submit(_job, a["arch"], args.setting, knobs, seed, args.threads): (a["index"], seed)
                   for a, seed in jobs}
        for future in cf.as_completed(futures):
            index, seed = futures[future]
            try:
                result = future.result()
            except Exception as exc:  # the candidate failed: recorded, as nas.calibrate does
                result = {"error": f"{type(exc).__name__}: {exc}"[:300]}
            line = {"arch": index, "setting": args.setting, "seed": seed, **result, "device": device}
            with args.out.open("a") as f:
                f.write(json.dumps(line) + "\n")
            what = f"accuracy {result['accuracy']:.4f}" if "accuracy" in result else result["error"]
            print(f"[{time.time() - started:6.0f} s] arch {index:2d} seed {seed}: {what}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
