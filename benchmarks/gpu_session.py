"""One GPU session for issue 22, resumable and time-limited: the step-speed and packing figures, the full-width
calibration rung, and the CUDA tests, in one command.

    python benchmarks/gpu_session.py run --out DIR --time-limit 540 [--resume FILE] [--tarball PATH]
    python benchmarks/gpu_session.py report FILE    # the tables, the full-width rung against the calibration
    python benchmarks/gpu_session.py macs           # here, once: the multiply-adds file that `run` reads

The phases, in order. Each unit's result is one JSON line of DIR/results.jsonl, appended the moment it is done;
a unit already there (in it, or in the --resume FILE it starts from) is not run again, so the same command
continues where an earlier call stopped:

1. Throughput. (a) The proxy's training step eager, with CUDA graphs, with torch.compile and with compile's
   reduce-overhead mode (``benchmarks/bench_gpu.py``, one process per variant, compile time counted over a
   proxy's 96 steps; --step-budget seconds for all). (b) Proxies per hour on one GPU at --levels trials per GPU
   (1, 2, 4, 8, 16, never more than the CPUs): that many worker processes, one CPU thread each, train the
   search's default proxy (``nas.proxy.train_arch`` with ``ProxySettings()``) on the calibration's architectures
   in turn, all at once, for --window seconds (longer, up to 2x, until each has finished 2 epochs). A worker's
   rate is the epochs it finished over the time to its last one; a proxy is 4 epochs. Each level's line has the
   share of the bf16 matrix peak that its training arithmetic reached (``bench_search.matmul_gflops``) and the
   most GPU memory a worker reserved.
2. Full width. The calibration's architectures (--calibration: the whole-catalog CIFAR-10 one) trained as its
   reference jobs are (``nas.calibrate._run_job``), at the full-width rung (``full_width_reference``), from its
   seed and then, time allowing, the next (--seeds 2). A probe first times each architecture's full-width step
   with --fw-workers workers busy at once; the epochs are then as many as fit the time left (less
   --tests-reserve with --tests-after), the same for every architecture, and a ``plan`` line keeps them for the
   calls after. Where not one
   epoch fits, width --fallback-width (0.5) is planned instead and the plan says so; --width-mult 0.5 asks for it
   outright. A job starts only when its estimate ends before the deadline; one cut off runs again next call.
3. Tests: ``python -m pytest tests/test_cuda.py`` to its end (--test-workers processes where pytest-xdist is
   installed, one thread each), its log in DIR/tests.log. They start once the probe is done and run beside the
   full-width jobs, whose results do not depend on the time they take (only their seconds do); --tests-after
   runs them after the jobs instead, in the last --tests-reserve seconds.

Every call adds an ``env`` line: the card, torch, the CPUs, the matrix peak and the data's fingerprint (the
split's hash, as ``benchmarks/calibration/gpu_jobs.py`` computes it; ``CIFAR_FINGERPRINT`` is the one seen here).
The call stops before --time-limit seconds from its start.

The device call (issue 22: 15 minutes of H100/H200 time, start-up included). Once, here, in the repository:

    mkdir -p .devdata && cp ../shared/data/cifar-10-jpeg.tar.gz .devdata/     # .devdata/ is git-ignored

then the tool's ``run`` with ``command="bash benchmarks/gpu_check.sh $OUT 540"``, ``carry=[".devdata"]`` and
``timeout_s=600``; the script runs

    PYTHONUNBUFFERED=1 python3 benchmarks/gpu_session.py run --out $OUT --time-limit 540 \
      --tarball .devdata/cifar-10-jpeg.tar.gz --resume benchmarks/results/gpu-session/results.jsonl

and keeps its output in $OUT/session.log. The 19.6 MB tarball is the data: the device decodes the
JPEGs as ``nas.data`` reads an image folder (CIFAR-10 as uint8 is 150 MB, over the 64 MiB a call carries). Copy
the returned results.jsonl over benchmarks/results/gpu-session/results.jsonl; a second call with the same
command, its 540 cut to the seconds left less a minute, continues. The machine has torch but not Ray, Optuna or fvcore: the
workers are plain processes, and the multiply-adds come from benchmarks/results/gpu-session/macs.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import math
import multiprocessing as mp
import os
import queue
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks"), str(ROOT / "benchmarks" / "calibration")]

CATALOG = ROOT / "benchmarks" / "results" / "calibration" / "cifar10-catalog"
SESSION = ROOT / "benchmarks" / "results" / "gpu-session"
CIFAR_FINGERPRINT = "3a760b457cb3a058"  # gpu_jobs.fingerprint of the JPEG tarball's split (seed 0), read here
LEVELS = (1, 2, 4, 8, 16)
CUDA_ONLY = ("graphs", "compile-ro")  # bench_gpu.CUDA_ONLY, without importing torch here
PROXY_EPOCHS = 4  # ProxySettings().epochs
OLD_REFERENCE = "reference_10x"  # the calibration's own reference, as a rung beside the full-width one
FULL_WIDTH = "full_width"
SAFETY = 0.8  # of the time left that the full-width plan fills (the probe's estimate is rough)


# ---------------------------------------------------------------------------------------------- results
class Results:
    """DIR/results.jsonl: one line per finished unit, each with its ``phase`` and the unit's key fields."""

    def __init__(self, path: Path, resume: Path | None = None):
        from nas.rundir import append_jsonl, read_jsonl

        self.path, self._append = path, append_jsonl
        if not path.is_file() and resume is not None and resume.is_file():
            for row in read_jsonl(resume):
                append_jsonl(path, row)
        self.rows = read_jsonl(path)

    def add(self, row: dict[str, Any]) -> dict[str, Any]:
        self._append(self.path, row)
        self.rows.append(row)
        return row

    def reread(self) -> None:
        from nas.rundir import read_jsonl

        self.rows = read_jsonl(self.path)

    def of(self, phase: str) -> list[dict[str, Any]]:
        return [r for r in self.rows if r.get("phase") == phase]


# ------------------------------------------------------------------------------------------------- data
def load_data(args):
    """The calibration's dataset and split: the tarball's JPEGs read as an image folder, or --dataset."""
    from nas.data import load_dataset

    if args.tarball:
        from bench_search import _cifar_folder

        folder = _cifar_folder(args.scratch / "cifar", args.tarball)
        return load_dataset(f"imagefolder:{folder}", seed=args.seed)
    return load_dataset(args.dataset, args.data_dir, seed=args.seed)


def save_data(data, folder: Path) -> None:
    """The split as .npy files (no pickle) that the workers map, and its name, classes and statistics."""
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    for name in ("train_x", "train_y", "val_x", "val_y"):
        np.save(folder / f"{name}.npy", getattr(data, name).numpy(), allow_pickle=False)
    meta = {"name": data.name, "num_classes": data.num_classes, "mean": data.mean, "std": data.std,
            "source": data.source}
    (folder / "meta.json").write_text(json.dumps(meta))


def read_data(folder: Path):
    import numpy as np
    import torch

    from nas.data import ImageData

    meta = json.loads((folder / "meta.json").read_text())
    arrays = {n: torch.from_numpy(np.load(folder / f"{n}.npy")) for n in ("train_x", "train_y", "val_x", "val_y")}
    return ImageData(name=meta["name"], num_classes=meta["num_classes"], mean=tuple(meta["mean"]),
                     std=tuple(meta["std"]), source=meta["source"], **arrays)


# ---------------------------------------------------------------------------------------------- workers
class _Stopped(Exception):
    pass


def _worker(wid: int, data_dir: str, threads: int, warm_arch: dict, cmds, results, stop) -> None:
    """A worker process: load the split, train one tiny proxy epoch (CUDA, cuDNN and cuBLAS start here, not in
    a measurement), say it is ready, then run commands until None."""
    import torch

    from nas.arch import Arch
    from nas.proxy import ProxySettings, train_arch

    torch.set_num_threads(threads)
    data = read_data(Path(data_dir))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    train_arch(Arch.from_dict(warm_arch), data, ProxySettings(max_train=64, epochs=1), threads=threads,
               device=device, max_val=64)
    results.put(("ready", wid, None))
    while (cmd := cmds.get()) is not None:
        kind, payload = cmd
        try:
            if kind == "proxies":
                _train_proxies(wid, payload, data, device, threads, results, stop)
            elif kind == "probe":
                results.put(("probe", wid, _probe(payload, data, device)))
            elif kind == "job":
                from nas.calibrate import REFERENCE, _run_job

                result = _run_job(payload["arch"], REFERENCE, payload["knobs"], payload["seed"], data, threads)
                results.put(("job", wid, {**payload, "result": result}))
        except Exception as exc:  # noqa: BLE001 -- the unit's failure is its result
            text = [line for line in str(exc).strip().splitlines() if line.strip()]
            results.put((kind, wid, {**payload, "error": f"{type(exc).__name__}: {text[-1] if text else ''}"[:300]}))


def _train_proxies(wid, payload, data, device, threads, results, stop) -> None:
    """Train default proxies of ``payload['archs']`` in turn until ``stop`` is set (looked at after each epoch)."""
    import torch

    from nas.arch import Arch
    from nas.proxy import ProxySettings, train_arch

    settings = ProxySettings()
    images = min(settings.max_train or len(data.train_x), len(data.train_x))
    for k in range(10**6):
        index, arch, macs = payload["archs"][k % len(payload["archs"])]

        def report(epoch, accuracy, loss, index=index, macs=macs):
            memory = torch.cuda.max_memory_reserved() if device == "cuda" else 0
            results.put(("epoch", wid, {"t": time.time(), "arch": index, "memory": memory,
                                        "macs": 3 * macs * images if macs else None}))
            if stop.is_set():
                raise _Stopped

        try:
            train_arch(Arch.from_dict(arch), data, settings, seed=payload["seed"], threads=threads, device=device,
                       report=report)
        except _Stopped:
            break
        except Exception:  # noqa: BLE001 -- a proxy that fails (a NaN loss) costs its time; the next one trains
            if stop.is_set():
                break
    results.put(("stopped", wid, None))


def _probe(payload, data, device) -> dict[str, Any]:
    """Seconds per full-width training step of one architecture (``bench_gpu.step_speed``, eager)."""
    from bench_gpu import step_speed

    from nas.arch import Arch
    from nas.proxy import ProxySettings, build_proxy

    settings = ProxySettings(**payload["knobs"])
    model = build_proxy(Arch.from_dict(payload["arch"]), data, settings, 0)
    row = step_speed(model, data, "eager", device=device, steps=payload["steps"], warmup=2, blocks=1,
                     batch_size=settings.batch_size, lr=settings.lr)
    return {**payload, "step_s": row["step_ms"] / 1000}


class Pool:
    """Worker processes (spawned: each its own CUDA context), a command queue each and one queue of results."""

    def __init__(self, n: int, data_dir: Path, threads: int, warm_arch: dict):
        ctx = mp.get_context("spawn")
        self.results, self.stop = ctx.Queue(), ctx.Event()
        self.cmds = [ctx.Queue() for _ in range(n)]
        self.procs = [ctx.Process(target=_worker, daemon=True,
                                  args=(w, str(data_dir), threads, warm_arch, self.cmds[w], self.results, self.stop))
                      for w in range(n)]
        for p in self.procs:
            p.start()
        self.ready: set[int] = set()

    def wait_ready(self, deadline: float) -> int:
        while len(self.ready) < len(self.procs) and time.time() < deadline:
            self.get(min(1.0, max(0.01, deadline - time.time())))
        return len(self.ready)

    def send(self, wid: int, kind: str, payload: dict[str, Any]) -> None:
        self.cmds[wid].put((kind, payload))

    def get(self, timeout: float):
        """The next message (kind, worker, payload), or None after ``timeout`` seconds; a worker that says it is
        ready (late ones too) joins ``ready``."""
        try:
            msg = self.results.get(timeout=max(0.01, timeout))
        except queue.Empty:
            return None
        if msg[0] == "ready":
            self.ready.add(msg[1])
            return None
        return msg

    def close(self) -> None:
        """End every worker now (a unit cut off is run again by the next call)."""
        for p in self.procs:
            if p.is_alive():
                p.terminate()
        for p in self.procs:
            p.join(5)


# ---------------------------------------------------------------------------------------------- phase 1
def step_phase(args, res: Results, clock, macs: dict, env: dict) -> None:
    """The proxy's step per variant, each in its own ``bench_gpu.py`` process, for at most --variant-cap
    seconds each and --step-budget in all. A variant over its cap is recorded so (it cannot pay for a proxy
    of seconds); one cut off by the budget or the deadline is measured by the next call."""
    import torch

    done = {r["variant"] for r in res.of("step")}
    budget_end = min(clock.deadline, time.time() + args.step_budget)
    for variant in [v for v in args.variants if v not in done]:
        if variant in CUDA_ONLY and not torch.cuda.is_available():
            res.add({"phase": "step", "variant": variant, "skipped": "CUDA only", "device": env["device"]})
            continue
        cap = min(args.variant_cap, budget_end - time.time())
        if cap < 5:
            clock.log(f"step speed: no time left for {variant}; the next call measures it")
            break
        cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_gpu.py"), "--variants", variant,
               "--archs", str(args.calibration / "archs.jsonl"), "--arch", str(args.step_arch),
               "--backend", args.compile_backend, "--steps", str(args.step_steps), "--jsonl", str(res.path),
               "--tag", json.dumps({"phase": "step"}), "--threads", "1",
               "--macs", str(macs["proxy"].get(str(args.step_arch), 0))]  # 0: not known, not counted there
        cmd += ["--peak", str(env["peak_gmacs"])] if env.get("peak_gmacs") else []
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=cap, env=_env())
            err = out.stderr.strip().splitlines()
            clock.log(f"step speed {variant}: " + (out.stdout.strip().splitlines() or ["(no output)"])[-1].strip()
                      + (f"; exit {out.returncode}: {err[-1]}" if out.returncode and err else ""))
        except subprocess.TimeoutExpired:
            clock.log(f"step speed {variant}: cut off after {cap:.0f} s")
            if cap >= args.variant_cap - 1:  # its own cap, not the budget's end: that is its result
                res.add({"phase": "step", "variant": variant, "timed_out_s": round(cap, 1), "device": env["device"]})
    res.reread()  # bench_gpu.py appended its lines to the file


def packing_phase(args, res: Results, clock, pool: Pool, archs, macs: dict, env: dict) -> None:
    """Proxies per hour at each level of packing (module docstring, 1b)."""
    done = {r["trials_per_gpu"] for r in res.of("packing")}
    entries = [(a["index"], a["arch"], macs["proxy"].get(str(a["index"]))) for a in archs]
    for k in args.levels:
        if k in done:
            continue
        if k > len(pool.ready):
            clock.log(f"packing {k}: only {len(pool.ready)} workers are ready (CPUs {os.cpu_count()}); left out")
            continue
        if clock.left() < 3 * args.window + 5:  # the window, then each worker ends the epoch it is in
            clock.log(f"packing {k}: no time left; the next call measures it")
            return
        pool.stop.clear()
        workers = sorted(pool.ready)[:k]
        for j, w in enumerate(workers):  # each starts elsewhere in the list, so the level trains a mix at once
            shift = j * len(entries) // k
            pool.send(w, "proxies", {"archs": entries[shift:] + entries[:shift], "seed": args.seed})
        # the window: --window seconds, longer (up to 2x) until every worker has finished 2 epochs
        t_go, events, stopped = time.time(), {w: [] for w in workers}, set()
        while time.time() < t_go + 2 * args.window and not (
                time.time() >= t_go + args.window and all(len(e) >= 2 for e in events.values())):
            msg = pool.get(min(1.0, t_go + 2 * args.window - time.time()))
            if msg and msg[0] == "epoch":
                events[msg[1]].append(msg[2])
        window = time.time() - t_go
        pool.stop.set()
        end = time.time() + 120  # each finishes the epoch it is in
        while len(stopped) < k and time.time() < end:
            msg = pool.get(end - time.time())
            if msg and msg[0] == "stopped":
                stopped.add(msg[1])
        res.add(packing_row(k, events, t_go, window, env))
        row = res.rows[-1]
        clock.log(f"packing {k} trials per GPU: {row['proxies_per_hour']:.0f} proxies/hour, "
                  f"{_pct(row['share_of_peak'])} of the bf16 peak, {row['max_reserved_gib']:.2f} GiB per worker")
        for w in set(workers) - stopped:  # still training: no use for a measurement or a job any more
            pool.ready.discard(w)
            clock.log(f"packing {k}: worker {w} did not stop within 120 s; left out from here")


def packing_row(k: int, events: dict[int, list[dict]], t_go: float, window: float, env: dict) -> dict[str, Any]:
    """One level's figures from its workers' epoch events (times since ``t_go``): each worker's epochs over the
    time to its last epoch, summed; multiply-adds likewise; a worker with no epoch in the window counts 0."""
    rate = macs_rate = 0.0
    counted = 0
    for evs in events.values():
        if not evs:
            continue
        span = evs[-1]["t"] - t_go
        rate += len(evs) / span
        counted += len(evs)
        if all(e["macs"] for e in evs):
            macs_rate += sum(e["macs"] for e in evs) / span
    peak = env.get("peak_gmacs")
    memory = max((e["memory"] for evs in events.values() for e in evs), default=0)
    return {"phase": "packing", "trials_per_gpu": k, "window_s": window, "epochs": counted,
            "idle_workers": sum(not evs for evs in events.values()),
            "proxies_per_hour": rate / PROXY_EPOCHS * 3600, "gmacs_per_s": macs_rate / 1e9,
            "share_of_peak": macs_rate / 1e9 / peak if peak and macs_rate else None,
            "max_reserved_gib": memory / 2**30, "cpus_per_trial": 1, "device": env["device"]}


# ---------------------------------------------------------------------------------------------- phase 2
def full_width_plan(args, res: Results, clock, pool: Pool, archs, env: dict, deadline: float,
                    n_train: int) -> dict[str, Any] | None:
    """The plan of the full-width jobs: an earlier call's, else made now (a probe at --width-mult, then at
    --fallback-width where not one epoch fits) and recorded. None when the probe could not finish."""
    plans = res.of("plan")
    if plans:
        return plans[-1]
    plan = None
    for width in [args.width_mult] + ([args.fallback_width] if args.fallback_width < args.width_mult else []):
        plan = make_plan(args, clock, pool, archs, env, deadline, width, n_train)
        if plan is None or plan["epochs"] >= 1:
            break
    if plan is not None:
        res.add(plan)
        if plan["epochs"] < 1:
            clock.log(f"full width: not one epoch fits even at width {plan['width_mult']:g}; nothing trained")
    return plan


def full_width_jobs(args, res: Results, clock, pool: Pool, archs, env: dict, deadline: float, plan: dict) -> None:
    """The planned jobs without a line, seed by seed, longest first; each started only when its estimate ends
    before ``deadline``, and those still running then cut off (run again by the next call)."""
    from nas.calibrate import full_width_reference

    knobs = dataclasses.asdict(full_width_reference(plan["epochs"], plan["width_mult"]))
    by_index = {a["index"]: a for a in archs}
    finished = {(r["arch"], r["seed"]) for r in res.of(FULL_WIDTH)}
    estimate = {int(i): s * plan["epochs"] for i, s in plan["epoch_s"].items()}
    jobs = [(i, args.seed + s) for s in range(args.seeds)
            for i in sorted(by_index, key=lambda i: -estimate.get(i, 0)) if (i, args.seed + s) not in finished]
    running: dict[int, tuple[int, int]] = {}
    idle = sorted(pool.ready)[:args.fw_workers]
    clock.log(f"full width: {len(jobs)} job(s) to run, width {plan['width_mult']:g}, {plan['epochs']} epoch(s), "
              f"{len(idle)} workers, {deadline - time.time():.0f} s left for them")
    while jobs or running:
        for w in list(idle):
            fits = [j for j in jobs if time.time() + 1.15 * estimate.get(j[0], 0) < deadline]
            if not fits:
                break
            jobs.remove(fits[0])
            idle.remove(w)
            running[w] = fits[0]
            pool.send(w, "job", {"arch": by_index[fits[0][0]]["arch"], "index": fits[0][0], "seed": fits[0][1],
                                 "knobs": knobs})
        if not running:
            break
        msg = pool.get(min(5.0, deadline - time.time()))
        if time.time() >= deadline:
            clock.log(f"full width: {len(running)} job(s) cut off at the deadline; the next call runs them")
            break
        for w in [w for w in running if not pool.procs[w].is_alive()]:  # a worker that died (killed for memory)
            index, seed = running.pop(w)
            res.add({"phase": FULL_WIDTH, "arch": index, "seed": seed, "width_mult": plan["width_mult"],
                     "epochs": plan["epochs"], "error": f"the worker died (exit {pool.procs[w].exitcode})",
                     "device": env["device"]})
            clock.log(f"full width arch {index:2d} seed {seed}: its worker died")
        if not msg or msg[0] != "job" or msg[1] not in running:
            continue
        w, payload = msg[1], msg[2]
        running.pop(w)
        idle.append(w)
        result = payload.get("result") or {"error": payload.get("error")}
        res.add({"phase": FULL_WIDTH, "arch": payload["index"], "seed": payload["seed"],
                 "width_mult": plan["width_mult"], "epochs": plan["epochs"], **result, "device": env["device"]})
        what = f"accuracy {result['accuracy']:.4f}" if "accuracy" in result else f"FAILED: {result['error']}"
        clock.log(f"full width arch {payload['index']:2d} seed {payload['seed']}: {what} "
                  f"({result.get('seconds', 0):.0f} s, estimate {estimate.get(payload['index'], 0):.0f} s)")
    if jobs:
        clock.log(f"full width: {len(jobs)} job(s) left for the next call")


def make_plan(args, clock, pool: Pool, archs, env: dict, deadline: float, width: float, n_train: int):
    """Probe every architecture's full-width step with the workers busy together; the epochs that fit."""
    from nas.calibrate import full_width_reference

    settings = full_width_reference(1, width)
    knobs = dataclasses.asdict(settings)
    workers = sorted(pool.ready)[:args.fw_workers]
    if not workers:
        clock.log("full width: no worker is ready; the next call plans again")
        return None
    todo = list(archs)
    step_s: dict[int, float] = {}
    busy: set[int] = set()
    t0 = time.time()
    while (todo or busy) and time.time() < deadline:
        for w in [w for w in workers if w not in busy][:len(todo)]:
            a = todo.pop()
            busy.add(w)
            pool.send(w, "probe", {"arch": a["arch"], "index": a["index"], "knobs": knobs, "steps": args.probe_steps})
        msg = pool.get(min(5.0, deadline - time.time()))
        if msg and msg[0] == "probe":
            busy.discard(msg[1])
            if "step_s" in msg[2]:
                step_s[msg[2]["index"]] = msg[2]["step_s"]
            else:
                clock.log(f"full-width probe of arch {msg[2]['index']} failed: {msg[2]['error']}")
    if busy or todo:
        clock.log("full width: the probe did not finish before the deadline; the next call plans again")
        return None
    steps = math.ceil(n_train / settings.batch_size)
    epoch_s = {i: steps * s * 1.1 for i, s in step_s.items()}  # +10 %: the evaluation and the model's build
    left = deadline - time.time()
    total = sum(epoch_s.values())
    epochs = min(args.max_epochs, int(SAFETY * left * len(workers) / total) if total else 0,
                 int(SAFETY * left / max(epoch_s.values())) if epoch_s else 0)
    plan = {"phase": "plan", "width_mult": width, "epochs": epochs, "batch_size": settings.batch_size,
            "lr": settings.lr, "workers": len(workers), "probe_s": round(time.time() - t0, 1),
            "available_s": round(left, 1), "epoch_s": {str(i): round(s, 2) for i, s in epoch_s.items()},
            "fallback": width != args.width_mult, "device": env["device"]}
    clock.log(f"full width {width:g}: {len(step_s)} probed in {plan['probe_s']:.0f} s; an epoch of all is about "
              f"{total / max(1, len(workers)):.0f} s with {len(workers)} workers; {left:.0f} s left: {epochs} epoch(s)")
    return plan


# ---------------------------------------------------------------------------------------------- phase 3
def start_tests(args, res: Results, clock):
    """``pytest`` on --tests in the background (--test-workers processes with pytest-xdist, one thread each),
    its output in DIR/tests.log; None when their line is there already."""
    if "tests" in args.skip or res.of("tests"):
        return None
    if clock.left() < 15:
        clock.log("tests: no time left; the next call runs them")
        return None
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args.tests]
    if args.test_workers > 1 and importlib.util.find_spec("xdist") is not None:
        cmd += ["-n", str(args.test_workers)]
    clock.log(f"tests: {' '.join(cmd[1:])}")
    log = (args.out / "tests.log").open("w")
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env={**_env(), "OMP_NUM_THREADS": "1"})
    return proc, time.time(), log


def finish_tests(started, args, res: Results, clock, env: dict) -> None:
    """Wait for the tests until shortly before the deadline; record their outcome, or cut them off unrecorded."""
    if started is None:
        return
    proc, t0, log = started
    try:
        code = proc.wait(timeout=max(1.0, clock.left() - 5))
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        clock.log(f"tests: cut off after {time.time() - t0:.0f} s (see tests.log); the next call runs them again")
        return
    finally:
        log.close()
    lines = [line for line in (args.out / "tests.log").read_text().splitlines() if line.strip()]
    res.add({"phase": "tests", "returncode": code, "summary": lines[-1] if lines else "",
             "failures": [line for line in lines if line.startswith(("FAILED", "ERROR"))][:50],
             "seconds": round(time.time() - t0, 1), "device": env["device"]})
    clock.log(f"tests: exit {code}: {lines[-1] if lines else ''}")


class Clock:
    def __init__(self, limit: float):
        self.start = time.time()
        self.deadline = self.start + limit

    def left(self) -> float:
        return self.deadline - time.time()

    def log(self, message: str) -> None:
        elapsed = int(time.time() - self.start)
        print(f"[{elapsed // 60:02d}:{elapsed % 60:02d}] {message}", flush=True)


def _env() -> dict[str, str]:
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1"}


def _pct(share: float | None) -> str:
    return "-" if share is None else f"{100 * share:.2f} %"


def read_macs(path: Path) -> dict[str, dict[str, int]]:
    stored = json.loads(path.read_text()) if path.is_file() else {}
    return {k: stored.get(k, {}) for k in ("proxy", "full_width", "half_width")}


def environment(args, res: Results, data) -> dict[str, Any]:
    import torch

    from gpu_jobs import fingerprint

    cuda = torch.cuda.is_available()
    peak = None
    if cuda:
        from bench_search import matmul_gflops

        peak = matmul_gflops()[0]
    found = fingerprint(data)
    return res.add({"phase": "env", "call": len(res.of("env")) + 1, "device": torch.cuda.get_device_name() if cuda
                    else "cpu", "torch": torch.__version__, "cuda": torch.version.cuda, "cpus": os.cpu_count(),
                    "peak_gmacs": peak, "fingerprint": found,
                    "fingerprint_ok": found == CIFAR_FINGERPRINT if args.tarball else None,
                    "data": f"{data.name}: {len(data.train_y)} train / {len(data.val_y)} val",
                    "time_limit_s": args.time_limit, "date": time.strftime("%Y-%m-%d %H:%M:%S")})


def run(args) -> int:
    clock = Clock(args.time_limit)
    args.out.mkdir(parents=True, exist_ok=True)
    res = Results(args.out / "results.jsonl", args.resume)
    clock.log(f"{len(res.rows)} line(s) from earlier calls; results in {res.path}")
    data = load_data(args)
    save_data(data, args.scratch / "data")
    env = environment(args, res, data)
    clock.log(f"{env['device']}, torch {env['torch']}, {env['cpus']} CPUs, peak "
              f"{env['peak_gmacs'] or math.nan:.0f} G multiply-adds/s; {env['data']}, fingerprint {env['fingerprint']}"
              + ("" if env["fingerprint_ok"] in (None, True) else f" (NOT the calibration's {CIFAR_FINGERPRINT})"))
    archs = [json.loads(x) for x in (args.calibration / "archs.jsonl").read_text().splitlines() if x.strip()]
    archs = archs[:args.archs] if args.archs else archs
    macs = read_macs(args.macs)
    if "step" not in args.skip:
        step_phase(args, res, clock, macs, env)
    args.levels = [k for k in args.levels if k <= (os.cpu_count() or 1)]
    need_packing = "packing" not in args.skip and set(args.levels) - {r["trials_per_gpu"] for r in res.of("packing")}
    need_fw = "full_width" not in args.skip and _full_width_left(args, res, archs)
    tests, tried = None, False
    if (need_packing or need_fw) and clock.left() > 10:
        size = max([*(args.levels if need_packing else []), args.fw_workers if need_fw else 0])
        pool = Pool(size, args.scratch / "data", args.threads, archs[0]["arch"])
        try:
            ready = pool.wait_ready(min(clock.deadline, time.time() + args.start_timeout))
            clock.log(f"{ready} of {size} workers ready")
            if need_packing:
                packing_phase(args, res, clock, pool, archs, macs, env)
            reserve = 0 if args.tests_alongside or not start_tests_needed(args, res) else args.tests_reserve
            deadline = clock.deadline - reserve - 5
            plan = full_width_plan(args, res, clock, pool, archs, env, deadline, len(data.train_y)) if need_fw \
                else None
            if args.tests_alongside:  # the probe is done: the tests share the machine with the jobs from here
                tests, tried = start_tests(args, res, clock), True
            if plan and plan["epochs"] >= 1:
                full_width_jobs(args, res, clock, pool, archs, env, deadline, plan)
        finally:
            pool.close()
    if not tried:
        tests = start_tests(args, res, clock)
    finish_tests(tests, args, res, clock, env)
    print_summary(res.rows, archs=len(archs), seeds=args.seeds)
    clock.log(f"done; {clock.left():.0f} s of the time limit left")
    return 0


def start_tests_needed(args, res: Results) -> bool:
    return "tests" not in args.skip and not res.of("tests")


def _full_width_left(args, res: Results, archs) -> bool:
    plans = res.of("plan")
    if plans and plans[-1]["epochs"] < 1:
        return False
    done = {(r["arch"], r["seed"]) for r in res.of(FULL_WIDTH)}
    return any((a["index"], args.seed + s) not in done for s in range(args.seeds) for a in archs)


# ---------------------------------------------------------------------------------------------- report
def print_summary(rows: list[dict[str, Any]], out=print, archs: int | None = None, seeds: int = 1) -> None:
    """The figures of a results file as short tables, the card named on each."""
    for r in (r for r in rows if r.get("phase") == "env"):
        out(f"call {r['call']}: {r['device']}, torch {r['torch']}, {r['cpus']} CPUs, bf16 matmul peak "
            f"{(r['peak_gmacs'] or math.nan) / 1e3:.0f} T multiply-adds/s, data {r['data']}, fingerprint "
            f"{r['fingerprint']}{'' if r['fingerprint_ok'] in (None, True) else ' (NOT the calibration split)'}")
    steps = [r for r in rows if r.get("phase") == "step"]
    if steps:
        out(f"{'variant':>11s} {'setup s':>8s} {'step ms':>8s} {'proxy s':>8s} {'% peak':>8s}  device")
        for r in steps:
            if "step_ms" in r:
                out(f"{r['variant']:>11s} {r['setup_s']:8.2f} {r['step_ms']:8.2f} {r['proxy_s']:8.2f} "
                    f"{_pct(r.get('share_of_peak')):>8s}  {r['device']}")
            else:
                what = (f"left out ({r['skipped']})" if "skipped" in r else f"FAILED: {r['error']}" if "error" in r
                        else f"over its budget of {r.get('timed_out_s')} s")
                out(f"{r['variant']:>11s}  {what}  {r['device']}")
    packing = sorted((r for r in rows if r.get("phase") == "packing"), key=lambda r: r["trials_per_gpu"])
    if packing:
        out(f"{'trials/GPU':>10s} {'proxies/h':>10s} {'% peak':>8s} {'GiB/trial':>9s}  device")
        for r in packing:
            out(f"{r['trials_per_gpu']:10d} {r['proxies_per_hour']:10.0f} {_pct(r['share_of_peak']):>8s} "
                f"{r['max_reserved_gib']:9.2f}  {r['device']}")
    for r in (r for r in rows if r.get("phase") == "plan"):
        out(f"full-width plan: width {r['width_mult']:g}{' (the fallback)' if r.get('fallback') else ''}, "
            f"{r['epochs']} epoch(s) of the whole split, batch {r.get('batch_size')}, lr {r.get('lr')}, "
            f"{r.get('workers')} workers, planned on {r.get('device')}")
    fw = [r for r in rows if r.get("phase") == FULL_WIDTH]
    if fw:
        ok = [r for r in fw if "accuracy" in r]
        accs = [r["accuracy"] for r in ok]
        out(f"full width: {len(ok)} trained" + (f" of {archs * seeds}" if archs else "")
            + (f", accuracy {min(accs):.3f} to {max(accs):.3f}" if accs else "") + f", {len(fw) - len(ok)} failed")
    for r in (r for r in rows if r.get("phase") == "tests"):
        out(f"tests/test_cuda.py: exit {r['returncode']}, {r['summary']} ({r['seconds']:.0f} s, {r['device']})")


def full_width_calibration(folder: Path, rows: list[dict[str, Any]]):
    """The calibration ``folder`` with its reference replaced by the full-width rung of ``rows``: its own
    reference becomes the rung ``reference_10x`` (both seeds), so that ``nas.calibrate.analyze`` ranks the
    default proxy, the other settings, the 10x reference, FLOPs, params and the zero-cost scores against full
    width. Returns (setup, archs, results)."""
    from nas.calibrate import REFERENCE, CalibrationDir, Setup, full_width_reference

    out = CalibrationDir(folder)
    stored = out.read_setup()
    names = {f.name for f in dataclasses.fields(Setup)}
    setup = Setup(**{k: v for k, v in stored.items() if k in names})
    plan = [r for r in rows if r.get("phase") == "plan"][-1]
    reference = full_width_reference(plan["epochs"], plan["width_mult"])
    fw = [r for r in rows if r.get("phase") == FULL_WIDTH]
    setup = dataclasses.replace(setup, settings={**setup.settings, OLD_REFERENCE: setup.reference},
                                reference=dataclasses.asdict(reference),
                                reference_seeds=len({r["seed"] for r in fw}) or 1)
    results = [{**r, "setting": OLD_REFERENCE} if r["setting"] == REFERENCE else r for r in out.read_results()]
    results += [{"arch": r["arch"], "setting": REFERENCE, "seed": r["seed"],
                 **({"accuracy": r["accuracy"], "seconds": r.get("seconds", 0.0)} if "accuracy" in r
                    else {"error": r.get("error", "failed")})} for r in fw]
    return setup, out.read_archs(), results


def report(args) -> int:
    from nas.calibrate import analyze, print_report
    from nas.rundir import read_jsonl

    rows = read_jsonl(args.results)
    print_summary(rows)
    if any(r.get("phase") == FULL_WIDTH and "accuracy" in r for r in rows):
        setup, archs, results = full_width_calibration(args.calibration, rows)
        print_report(analyze(setup, archs, results))
    return 0


def count_macs(args) -> int:
    """Multiply-adds per image (training form, fvcore) of each architecture's proxy, full-width and
    half-width network at the dataset's shape, for the session's share of the peak (the device has no fvcore)."""
    from bench_proxy_cost import random_cifar

    from nas.arch import Arch
    from nas.flops import count_flops
    from nas.proxy import ProxySettings, build_proxy

    data = random_cifar(8, 8)
    archs = [json.loads(x) for x in (args.calibration / "archs.jsonl").read_text().splitlines() if x.strip()]
    stored = read_macs(args.out)
    for key, width in (("proxy", 0.25), ("full_width", 1.0), ("half_width", 0.5)):
        for a in archs:
            if str(a["index"]) not in stored[key]:
                model = build_proxy(Arch.from_dict(a["arch"]), data, ProxySettings(width_mult=width), 0)
                stored[key][str(a["index"])] = int(count_flops(model, (1, 3, 32, 32), deploy=False))
                print(f"{key} arch {a['index']}: {stored[key][str(a['index'])] / 1e6:.1f} M", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(stored, indent=1) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="the session (module docstring)")
    r.add_argument("--out", type=Path, required=True, help="where results.jsonl and tests.log go")
    r.add_argument("--time-limit", type=float, required=True, help="seconds from the start; the call stops before")
    r.add_argument("--resume", type=Path, default=None, help="an earlier call's results.jsonl to continue from")
    r.add_argument("--tarball", type=Path, default=None, help="the CIFAR-10 JPEG tarball (../shared/data)")
    r.add_argument("--dataset", default="cifar10", help="without --tarball: a dataset nas.data reads")
    r.add_argument("--data-dir", default=None)
    r.add_argument("--scratch", type=Path, default=Path("/tmp/opmix-gpu-session"), help="extracted data, .npy")
    r.add_argument("--calibration", type=Path, default=CATALOG, help="its archs.jsonl and seed")
    r.add_argument("--archs", type=int, default=None, help="only the first N architectures (a tiny test)")
    r.add_argument("--macs", type=Path, default=SESSION / "macs.json", help="multiply-adds per image (`macs`)")
    r.add_argument("--seed", type=int, default=0, help="the calibration's seed (its split and first seed)")
    r.add_argument("--skip", default="", help="phases to leave out: step, packing, full_width, tests")
    r.add_argument("--variants", default="eager,graphs,compile,compile-ro", help="step-speed variants")
    r.add_argument("--compile-backend", default="inductor", help="torch.compile's backend (a CPU test: aot_eager)")
    r.add_argument("--step-arch", type=int, default=16, help="the architecture whose step is timed")
    r.add_argument("--step-steps", type=int, default=60)
    r.add_argument("--step-budget", type=float, default=120.0, help="seconds for all step variants")
    r.add_argument("--variant-cap", type=float, default=50.0, help="seconds for one step variant")
    r.add_argument("--levels", default=",".join(map(str, LEVELS)), help="trials per GPU to measure")
    r.add_argument("--window", type=float, default=15.0, help="seconds each packing level trains")
    r.add_argument("--threads", type=int, default=1, help="CPU threads per worker")
    r.add_argument("--start-timeout", type=float, default=90.0, help="seconds the workers have to start")
    r.add_argument("--width-mult", type=float, default=1.0, help="the full-width rung's width (0.5: the fallback)")
    r.add_argument("--fallback-width", type=float, default=0.5, help="planned where not one epoch fits at 1.0")
    r.add_argument("--fw-workers", type=int, default=8, help="full-width jobs at once")
    r.add_argument("--seeds", type=int, default=2, help="seeds of the full-width jobs, the second as time allows")
    r.add_argument("--max-epochs", type=int, default=30)
    r.add_argument("--probe-steps", type=int, default=8)
    r.add_argument("--tests", nargs="+", default=["tests/test_cuda.py"])
    r.add_argument("--test-workers", type=int, default=6, help="pytest-xdist processes, where it is installed")
    r.add_argument("--tests-reserve", type=float, default=120.0, help="seconds kept for the tests after the jobs")
    r.add_argument("--tests-after", dest="tests_alongside", action="store_false",
                   help="run the tests after the full-width jobs, in --tests-reserve seconds, not beside them")
    q = sub.add_parser("report", help="the tables of a results file, the full-width rung's calibration among them")
    q.add_argument("results", type=Path)
    q.add_argument("--calibration", type=Path, default=CATALOG)
    m = sub.add_parser("macs", help="count the multiply-adds file here (fvcore)")
    m.add_argument("--calibration", type=Path, default=CATALOG)
    m.add_argument("--out", type=Path, default=SESSION / "macs.json")
    args = p.parse_args(argv)
    if args.command == "run":
        args.levels = [int(k) for k in args.levels.split(",") if k]
        args.variants = [v for v in args.variants.split(",") if v]
        args.skip = {s for s in args.skip.split(",") if s}
        return run(args)
    return report(args) if args.command == "report" else count_macs(args)


if __name__ == "__main__":
    sys.exit(main())
