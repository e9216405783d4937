"""``python -m nas.calibrate``: how well does a proxy rank architectures, measured on your own data and space.

The way EcoNAS and the NAS-Bench studies measure a reduced training setting: draw N architectures within the
budget, spread over FLOPs and operator families; train each at one or more proxy settings and at a reference
setting of much higher fidelity; score each at zero cost (FLOPs, parameters, training-free scores at
initialization, ``nas.zero_cost``); then ask how well each rung orders the architectures the way the reference
does: Kendall tau-b and Spearman rho with bootstrap 90 % intervals, top-3 and top-5 overlap, seed noise (the
cheapest setting is repeated with ``--seeds K``; the sd pooled over architectures) and cost per candidate.
Each row says n, the architectures it was scored on: a score of -inf ranks last, and only NaN (undefined)
leaves one out. ``--reference-seeds 2`` measures the reference against itself (the ceiling), and the report
replays a search's confirmation rung: the first setting's top 3 re-ranked by each other setting, and that
pick's standing by the reference. Whether the first setting ranks better than FLOPs and params is the paired
bootstrap interval of the difference of the taus (``nas.stats.bootstrap_difference``), reported with it.

Latency is a rung like FLOPs: each architecture's deploy form is timed end to end on ``--latency-target``
(``nas.latency``) once, in the driver, before any training starts, so that no training shares the machine
with a measurement. ``--latency-target none`` skips it.

The output folder is the calibration's memory: ``calibration.yaml`` (the setup: space, budget, dataset,
settings, reference, seeds), ``archs.jsonl`` (the sample with its FLOPs and params, and each latency with its
IQR and the target's fingerprint as it is measured), ``results.jsonl`` (one line per finished job, appended and
fsync'ed as it comes), then ``report.json`` and ``calibration.png``. Run the same command again and it
continues where it stopped, measuring no latency twice; a changed setup, or latencies stored from another
target fingerprint, is refused, never mixed in. A job that
failed (its ``error`` is in ``results.jsonl``) is recorded once and not run again, since it would most likely
fail again; ``--retry-failed`` runs the recorded failures again on purpose.

Trainings run as Ray tasks (``--address`` joins a cluster), one CPU each by default; each job is
``nas.proxy.train_arch`` with the calibration's seed, so a result is a function of (arch, seed, settings).
``calibrate(..., in_process=True)`` runs them one after another in the calling process instead.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import math
import random
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from . import _cli, plugins
from .rundir import append_jsonl, atomic_write, read_jsonl, save_figure
from .arch import Arch
from .flops import format_flops, parse_budget
from .proxy import ProxySettings
from .errors import OpmixError

if TYPE_CHECKING:
    from .latency import Target

__all__ = ["Setup", "load_settings", "reference_settings", "full_width_reference", "REFERENCES", "calibrate",
           "analyze", "print_report", "failed_jobs", "sample_archs",
           "latency_target", "check_latency_target", "measure_latencies", "main"]

PROG = "python -m nas.calibrate"
ZERO_COST = "zero_cost"
CONFIRM_TOP = 3  # the search's default --confirm: how many of the first setting's best a confirmation retrains
REFERENCE = "reference"
LATENCY = "latency"  # the rung of each architecture's latency on the calibration's target (archs.jsonl)
SIZE_RUNGS = ("flops", "params", LATENCY)  # known before any training, from the architecture alone
DEFAULT_REFERENCE = {"max_train": None, "epochs": 3 * ProxySettings().epochs}  # the whole split, 3x the epochs
# The full-width rung (issue 22): the network a user would train (width 1.0) at the dataset's resolution, its stem
# adapted as the proxy's (nas.network's small-image stem at <= 64 px, windows scaled to its maps), on the whole
# training split, for as many epochs as fit the time one has: a settings file names it with them,
# ``reference: {preset: full_width, epochs: 6}``, and benchmarks/gpu_session.py measures how many fit a GPU's
# time. Batch 256 rather than 64: a quarter of the steps, each fuller, for a GPU; AdamW at 2e-3 rather than the
# proxy's 3e-3, for networks 4x wider (16x the multiply-adds).
FULL_WIDTH_REFERENCE = {"width_mult": 1.0, "max_train": None, "image_size": None, "batch_size": 256, "lr": 2e-3}
REFERENCES = {"default": DEFAULT_REFERENCE, "full_width": FULL_WIDTH_REFERENCE}  # the named references


# ------------------------------------------------------------------------------------------------ the setup
@dataclasses.dataclass(frozen=True)
class Setup:
    """What a calibration measures; stored in ``calibration.yaml`` and compared on every rerun."""

    space: str  # as given (a built-in name or a path); its contents are pinned by the hash
    space_sha256: str
    budget: int
    archs: int
    seeds: int
    seed: int
    dataset: str
    data_dir: str | None
    settings: dict[str, dict[str, Any]]
    reference: dict[str, Any]
    reference_seeds: int = 1  # > 1: the reference is trained again from other seeds, to measure its own noise

    def proxies(self) -> dict[str, ProxySettings]:
        return {name: ProxySettings(**knobs) for name, knobs in self.settings.items()}

    def reference_settings(self) -> ProxySettings:
        return ProxySettings(**self.reference)

    def cheapest(self) -> str:
        """The setting with the fewest image-epochs x width^2 x pixels: it is the one repeated over seeds."""
        def cost(s: ProxySettings) -> float:
            return (s.max_train or 10**9) * s.epochs * s.width_mult ** 2 * (s.image_size or 28) ** 2
        return min(self.settings, key=lambda n: cost(self.proxies()[n]))


def load_settings(path: str | Path | None) -> tuple[dict[str, ProxySettings], ProxySettings]:
    """The named proxy settings and the reference of a ``--settings`` YAML file (the defaults without one)."""
    if path is None:
        return {"default": ProxySettings()}, reference_settings(DEFAULT_REFERENCE)
    from .arch import read_yaml

    data = read_yaml(Path(path), "a settings YAML file (--settings)", OpmixError)
    where = str(path)
    if not isinstance(data, dict) or set(data) - {"settings", "reference"} or "settings" not in data:
        raise OpmixError(f"{where}: write a mapping with 'settings' (named proxy settings) and optionally "
                         f"'reference', e.g. settings: {{default: {{}}}}")
    named = data["settings"]
    if not isinstance(named, dict) or not named:
        raise OpmixError(f"{where}: settings is {named!r}; write at least one named setting, e.g. default: {{}}")
    bad = [n for n in named if not isinstance(n, str) or n in (REFERENCE, ZERO_COST, *SIZE_RUNGS)]
    if bad:
        raise OpmixError(f"{where}: setting name(s) {bad} are reserved or not strings; rename them")
    settings = {n: ProxySettings.from_mapping(v, f"{where}: settings.{n}") for n, v in named.items()}
    return settings, reference_settings(data.get("reference", DEFAULT_REFERENCE), where)


def reference_settings(spec: Any, where: str = "settings") -> ProxySettings:
    """A settings file's ``reference``: a mapping of knobs, or one of ``REFERENCES`` by name,
    ``{preset: full_width, epochs: 6}``, its knobs overridden by the others given (the name alone where the
    preset sets its epochs)."""
    if isinstance(spec, str):
        spec = {"preset": spec}
    if isinstance(spec, dict) and "preset" in spec:
        knobs = dict(spec)
        name = knobs.pop("preset")
        if name not in REFERENCES:
            raise OpmixError(f"{where}: reference preset {name!r} is not known; use one of {', '.join(REFERENCES)}, "
                             f"or a mapping of knobs")
        spec = {**REFERENCES[name], **knobs}
        if "epochs" not in spec:
            raise OpmixError(f"{where}: reference preset {name} needs its epochs, e.g. {{preset: {name}, epochs: 6}}: "
                             f"as many as fit your time")
    return ProxySettings.from_mapping(spec, f"{where}: reference")


def full_width_reference(epochs: int, width_mult: float = 1.0) -> ProxySettings:
    """The full-width rung (``FULL_WIDTH_REFERENCE``) at ``epochs``; ``width_mult`` 0.5 where 1.0 does not fit
    the time (say so wherever its figures go)."""
    return reference_settings({"preset": "full_width", "epochs": epochs, "width_mult": width_mult}, "full_width")


class CalibrationDir:
    """The output folder: setup, sample and results; every write is atomic or an fsync'ed append."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.setup_file = self.path / "calibration.yaml"
        self.archs_file = self.path / "archs.jsonl"
        self.results_file = self.path / "results.jsonl"

    def read_setup(self) -> dict[str, Any] | None:
        import yaml

        if not self.setup_file.is_file():
            return None
        return yaml.safe_load(self.setup_file.read_text(encoding="utf-8"))

    def write_setup(self, setup: Setup) -> None:
        import yaml

        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write(self.setup_file, yaml.safe_dump(dataclasses.asdict(setup), sort_keys=False))

    def read_archs(self) -> list[dict[str, Any]]:
        return read_jsonl(self.archs_file)

    def write_archs(self, archs: list[dict[str, Any]]) -> None:
        atomic_write(self.archs_file, "".join(json.dumps(a) + "\n" for a in archs))

    def read_results(self) -> list[dict[str, Any]]:
        return read_jsonl(self.results_file)

    def append_result(self, result: dict[str, Any]) -> None:
        append_jsonl(self.results_file, result)


def check_same_setup(stored: dict[str, Any], setup: Setup, folder: Path) -> None:
    """Refuse a rerun whose setup differs from the stored one, naming the first difference."""
    mine = dataclasses.asdict(setup)
    defaults = {f.name: f.default for f in dataclasses.fields(Setup) if f.default is not dataclasses.MISSING}
    for key in mine:  # a field added since the folder was written reads as its default
        theirs = stored.get(key, defaults.get(key))
        if theirs != mine[key]:
            raise OpmixError(f"{folder} holds a calibration with {key} {theirs!r}, not {mine[key]!r}; "
                             f"rerun with its own setup to continue it, or pick another --out")


# ------------------------------------------------------------------------------------------- the sample
def _families(arch: Arch) -> tuple[str, ...]:
    import operators

    return tuple(sorted({operators.get_spec(s.op).family for s in arch.stages}))


def sample_archs(space, budget: int, n: int, seed: int, measure: Callable[[Arch], tuple[int, int]],
                 pool: int | None = None, log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """``n`` distinct architectures within ``budget``: drawn uniformly from ``space`` (``pool`` of them, 6n by
    default), then one per FLOPs bin (n equal-width bins over the feasible range), preferring in each bin the
    architecture whose operators are least represented so far (spread over families and operators)."""
    rng = random.Random(seed)
    pool = pool or 6 * n
    feasible: dict[Arch, tuple[int, int]] = {}
    for _ in range(pool * 4):
        if len(feasible) >= pool:
            break
        arch = space.random(rng)
        if arch in feasible:
            continue
        flops, params = measure(arch)
        if flops <= budget:
            feasible[arch] = (flops, params)
    if len(feasible) < n:
        raise OpmixError(f"only {len(feasible)} distinct architectures of the space fit {format_flops(budget)}FLOPs "
                         f"in {pool * 4} draws; lower --archs or raise --budget")
    items = sorted(feasible.items(), key=lambda kv: kv[1][0])
    lo, hi = items[0][1][0], items[-1][1][0]
    bins: list[list] = [[] for _ in range(n)]
    for arch, (flops, params) in items:
        b = min(n - 1, int((flops - lo) / max(1, hi - lo) * n))
        bins[b].append((arch, flops, params))
    chosen: list[tuple[Arch, int, int]] = []
    used_ops: dict[str, int] = {}

    def novelty(entry) -> tuple:
        ops = [s.op for s in entry[0].stages]
        return (sum(used_ops.get(o, 0) for o in ops), rng.random())

    leftovers = []
    for members in bins:  # one per bin, then fill from what is left where bins were empty
        if members:
            best = min(members, key=novelty)
            chosen.append(best)
            for s in best[0].stages:
                used_ops[s.op] = used_ops.get(s.op, 0) + 1
            leftovers += [m for m in members if m is not best]
    while len(chosen) < n:
        best = min(leftovers, key=novelty)
        leftovers.remove(best)
        chosen.append(best)
        for s in best[0].stages:
            used_ops[s.op] = used_ops.get(s.op, 0) + 1
    chosen.sort(key=lambda e: e[1])
    return [{"index": i, "arch": a.to_dict(), "flops": f, "params": p, "families": list(_families(a))}
            for i, (a, f, p) in enumerate(chosen)]


# ------------------------------------------------------------------------------------------------ latency
def latency_target(name: str | None, threads: int = 1, batch: int = 1) -> Target | None:
    """The ``--latency-target`` flags as a target this machine can measure, or None for ``none``; ``name``
    None: ``ort-cpu`` where ONNX Runtime is installed, else ``torch-cpu``. An ``OpmixError`` says how to fix
    a target that is unknown or cannot be measured here."""
    from .latency import Target

    if name == "none":
        return None
    if name is None:
        from .export import onnx_available

        name = "ort-cpu" if onnx_available() else "torch-cpu"
    target = Target(name, threads, batch)
    target.check()
    return target


def _describe(fingerprint: dict[str, Any]) -> str:
    """A stored target fingerprint in words: 'torch-cpu, 1 thread, batch 1, <CPU model>'."""
    threads = fingerprint.get("threads")
    return (f"{fingerprint.get('target')}, {threads} thread{'s' if threads != 1 else ''}, batch "
            f"{fingerprint.get('batch')}, {fingerprint.get('gpu') or fingerprint.get('cpu')}")


def check_latency_target(archs: list[dict[str, Any]], target: Target | None, folder: Path) -> None:
    """Refuse to continue a calibration whose stored latencies were measured under another fingerprint (runtime,
    threads, batch, machine or library versions): figures of two targets are never ranked together."""
    if target is None:
        return
    mine = target.fingerprint()
    theirs = next((a["latency"]["target"] for a in archs if "latency" in a and a["latency"]["target"] != mine), None)
    if theirs is None:
        return
    differ = ", ".join(f"{k} {theirs.get(k)!r} here {mine.get(k)!r}" for k in sorted({*theirs, *mine})
                       if theirs.get(k) != mine.get(k))
    raise OpmixError(f"{folder} holds latencies measured on another target ({differ}); continue it with "
                     f"--latency-target none (the stored figures are kept, none measured), or measure on "
                     f"{theirs.get('target')} with its threads and batch on that machine, or pick another --out")


def measure_latencies(archs: list[dict[str, Any]], target: Target, out: CalibrationDir, *,
                      log: Callable[[str], None] = print, retry_failed: bool = False) -> int:
    """Time each architecture of ``archs`` that has no latency stored yet (with ``retry_failed``, also those
    whose measurement failed) end to end on ``target`` (``nas.latency.measure_arch_latency``: the lowest round
    median, its IQR, the target's fingerprint), writing ``archs.jsonl`` after each, so that an interrupted
    measurement continues where it stopped; returns how many were timed. Run it while nothing else runs: the
    driver calls it before any training. A measurement that fails (an operator the ONNX export cannot
    write) is stored with its ``error`` and ranks as undefined."""
    from .latency import measure_arch_latency

    todo = [a for a in archs if "latency" not in a or (retry_failed and "error" in a["latency"])]
    if todo:
        log(f"timing {len(todo)} architecture(s) on {target.describe()} before any training ...")
    fingerprint = target.fingerprint()
    for k, a in enumerate(todo):
        t0 = time.perf_counter()
        try:
            figure = measure_arch_latency(Arch.from_dict(a["arch"]), target)["total"].to_dict()
        except Exception as exc:  # noqa: BLE001 -- as a failed job: recorded, and the calibration goes on
            lines = [x for x in str(exc).strip().splitlines() if x.strip()]
            figure = {"error": f"{type(exc).__name__}: {lines[-1] if lines else ''}"[:300]}
        a["latency"] = {**figure, "seconds": round(time.perf_counter() - t0, 3), "target": fingerprint}
        out.write_archs(archs)
        what = f"{figure['ms']:.2f} ms (IQR {figure['iqr_ms']:.2f})" if "ms" in figure else f"FAILED: {figure['error']}"
        log(f"  arch {a['index']:2d} latency {what}; {k + 1}/{len(todo)}")
    return len(todo)


# ------------------------------------------------------------------------------------------------ the jobs
def _jobs(setup: Setup, archs: list[dict[str, Any]]) -> list[tuple[int, str, int]]:
    """(arch index, setting, seed) of every job, cheapest kinds first: zero-cost, proxies, then the reference."""
    cheapest = setup.cheapest()
    jobs = [(a["index"], ZERO_COST, setup.seed) for a in archs]
    for name in setup.settings:
        seeds = range(setup.seeds) if name == cheapest else range(1)
        jobs += [(a["index"], name, setup.seed + s) for s in seeds for a in archs]
    jobs += [(a["index"], REFERENCE, setup.seed + s) for s in range(setup.reference_seeds) for a in archs]
    return jobs


def _key(result: dict[str, Any]) -> tuple[int, str, int]:
    return result["arch"], result["setting"], result["seed"]


def failed_jobs(results: list[dict[str, Any]]) -> set[tuple[int, str, int]]:
    """The jobs whose last line in ``results.jsonl`` is a failure (an ``error``)."""
    last = {_key(r): r for r in results}
    return {k for k, r in last.items() if "error" in r}


def _jobs_left(setup: Setup, archs: list[dict[str, Any]], results: list[dict[str, Any]],
               retry_failed: bool = False) -> list[tuple[int, str, int]]:
    """The jobs without a line in ``results``; with ``retry_failed`` also those whose last line is a failure.

    A failure (a NaN loss, an operator that cannot build) would happen again, so it is recorded once and
    kept: run on every continue, it would append a failure each time and keep the command exiting 1.
    ``--retry-failed`` runs them again on purpose (after a fix, or when the machine was at fault)."""
    recorded = {_key(r) for r in results}
    retry = failed_jobs(results) if retry_failed else set()
    return [j for j in _jobs(setup, archs) if j not in recorded or j in retry]


def _run_job(arch_dict: dict[str, Any], setting: str, knobs: dict[str, Any] | None, seed: int, data,
             threads: int, imports: tuple[str, ...] = ()) -> dict[str, Any]:
    """One job, in a Ray worker or in this process: a training, or the zero-cost scores of one architecture.
    ``imports``: plug-in operator modules to import first (``nas.plugins``)."""
    import torch

    from .plugins import import_modules
    from .proxy import build_proxy, train_arch

    import_modules(imports)

    arch = Arch.from_dict(arch_dict)
    t0 = time.perf_counter()
    if setting == ZERO_COST:
        from .zero_cost import score_all

        torch.set_num_threads(threads)
        settings = ProxySettings()
        gen = torch.Generator().manual_seed(seed)
        idx = torch.randperm(len(data.train_x), generator=gen)[:64]
        mean = torch.tensor(data.mean).view(1, -1, 1, 1)
        std = torch.tensor(data.std).view(1, -1, 1, 1)
        x = (data.train_x[idx].float() / 255.0 - mean) / std
        scores = score_all(lambda: build_proxy(arch, data, settings, seed), (x, data.train_y[idx]), seed=seed)
        return {"scores": scores, "seconds": round(time.perf_counter() - t0, 3)}
    settings = ProxySettings(**knobs)
    max_val = None if setting == REFERENCE else 1000
    result = train_arch(arch, data, settings, seed=seed, threads=threads, max_val=max_val)
    return {"accuracies": result.accuracies, "accuracy": result.accuracies[-1],
            "train_s": round(result.train_seconds, 3), "seconds": round(time.perf_counter() - t0, 3)}


def calibrate(setup: Setup, out: CalibrationDir, *, address: str | None = None, cpus_per_job: int = 1,
              log: Callable[[str], None] = print, data=None, imports: tuple[str, ...] = (),
              retry_failed: bool = False, in_process: bool = False,
              latency: Target | None = None) -> dict[str, Any]:
    """Run (or continue) the calibration into ``out``; returns ``analyze``'s report, also written to
    ``report.json`` with the plot ``calibration.png``. Jobs recorded as failed run again only with
    ``retry_failed``. ``in_process``: run the jobs one after another in this process instead of as Ray tasks
    (no cluster; for tests of the bookkeeping and machines without Ray). ``latency``: the target to time
    the architectures on before any training (``measure_latencies``); None measures none, and the latencies
    already stored are ranked either way."""
    from .data import load_dataset
    from .space import load_space

    started = time.time()
    space = load_space(setup.space)
    data = data or load_dataset(setup.dataset, setup.data_dir, seed=setup.seed)
    archs = out.read_archs()
    check_latency_target(archs, latency, out.path)
    if not archs:
        from .flops import measure_arch

        log(f"sampling {setup.archs} architectures within {format_flops(setup.budget)}FLOPs from {space.name} ...")
        archs = sample_archs(space, setup.budget, setup.archs, setup.seed, measure_arch, log=log)
        out.write_archs(archs)
    if latency is not None:  # here, before any training: a measurement never shares the machine with one
        measure_latencies(archs, latency, out, log=log, retry_failed=retry_failed)
    todo = _jobs_left(setup, archs, out.read_results(), retry_failed)
    failed = len(failed_jobs(out.read_results()))
    log(f"{len(archs)} architectures, {len(_jobs(setup, archs)) - len(todo)} jobs done, {len(todo)} to run"
        + (f" ({failed} of them failed before and run again: --retry-failed)" if retry_failed and failed else ""))
    if todo:
        _run_jobs(setup, archs, todo, out, data, address=address, cpus_per_job=cpus_per_job, log=log,
                  started=started, imports=tuple(imports), in_process=in_process)
    results = out.read_results()
    report = analyze(setup, archs, results)
    report["jobs_left"] = len(_jobs_left(setup, archs, results))
    report["jobs_failed"] = len(failed_jobs(results) & set(_jobs(setup, archs)))
    atomic_write(out.path / "report.json", json.dumps(report, indent=1) + "\n")
    plot_report(report, archs, results, setup, out.path / "calibration.png")
    return report


def _run_jobs(setup: Setup, archs, todo, out: CalibrationDir, data, *, address, cpus_per_job: int, log,
              started: float, imports: tuple[str, ...], in_process: bool) -> int:
    """Run ``todo`` (as Ray tasks, or here with ``in_process``), appending each result to ``out`` as it ends.
    A job that raises is recorded with its ``error``; one lost with a Ray worker is not. Returns the lost."""
    from .data import resize_data

    knobs = {**{n: dataclasses.asdict(s) for n, s in setup.proxies().items()},
             REFERENCE: dataclasses.asdict(setup.reference_settings())}
    by_index = {a["index"]: a for a in archs}
    sizes: dict[int | None, Any] = {}
    if in_process:
        def put(x):
            return x
    else:
        import ray

        from .cluster import start_ray

        start_ray(address, imports)
        put = ray.put

    def args(index: int, setting: str, seed: int) -> tuple:  # _run_job's arguments; data resized once per size
        size = None if setting == ZERO_COST else knobs[setting]["image_size"]
        if size not in sizes:
            sizes[size] = put(resize_data(data, size))
        return by_index[index]["arch"], setting, knobs.get(setting), seed, sizes[size], cpus_per_job, imports

    done = [0]

    def record(job: tuple[int, str, int], result: dict[str, Any], left: int) -> None:
        index, setting, seed = job
        out.append_result({"arch": index, "setting": setting, "seed": seed, **result})
        done[0] += 1
        elapsed = time.time() - started
        what = (f"accuracy {result['accuracy']:.4f}" if "accuracy" in result else
                "scored" if "scores" in result else f"FAILED: {result['error']}")
        log(f"[{int(elapsed) // 60:02d}:{int(elapsed) % 60:02d}] arch {index:2d} {setting:>10s} seed {seed}: {what} "
            f"({result.get('seconds', 0):.0f} s); {done[0]}/{done[0] + left}")

    if in_process:
        for k, job in enumerate(todo):
            try:
                result = _run_job(*args(*job))
            except Exception as exc:  # noqa: BLE001 -- as in a Ray task: the job's failure is its result
                lines = [x for x in str(exc).strip().splitlines() if x.strip()]
                result = {"error": f"{type(exc).__name__}: {lines[-1] if lines else ''}"[:300]}
            record(job, result, len(todo) - k - 1)
        return 0
    return _run_on_ray(todo, args, record, log, cpus_per_job)


def _run_on_ray(todo, args, record, log, cpus_per_job: int) -> int:
    """The jobs as Ray tasks (Ray running), one result recorded as each ends; returns how many were lost."""
    import ray

    remote = ray.remote(num_cpus=cpus_per_job, max_retries=2, retry_exceptions=False)(_run_job)
    pending = {remote.remote(*args(*job)): job for job in todo}
    lost = 0
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        job = pending.pop(ready[0])
        try:
            result = ray.get(ready[0])
        except ray.exceptions.RayTaskError as exc:  # the candidate failed (NaN loss, ...): recorded, and go on
            text = str(exc).strip().splitlines()
            result = {"error": (text[-1] if text else type(exc).__name__)[:300]}
        except ray.exceptions.RayError as exc:  # Ray itself failed (a node or the raylet died): not recorded
            lost += 1
            log(f"  arch {job[0]} {job[1]} seed {job[2]}: lost to Ray ({type(exc).__name__}); it runs again on "
                f"the next invocation")
            continue
        record(job, result, len(pending))
    return lost


# ------------------------------------------------------------------------------------------------ analysis
def _scores_by_rung(setup: Setup, archs, results) -> tuple[dict[int, float], dict[str, dict[int, list[float]]],
                                                            dict[str, list[float]], dict[int, list[float]]]:
    """The reference accuracy per arch (from the run's own seed); per rung (each setting, FLOPs, params, the
    latency where one was measured, each zero-cost score) the score(s) per arch (several for a setting repeated over seeds); per rung the seconds
    each job took; and per arch the reference accuracies of every seed, the run's own first."""
    reference: dict[int, float] = {}
    reference_seeds: dict[int, dict[int, float]] = collections.defaultdict(dict)
    rungs: dict[str, dict[int, list[float]]] = {n: {} for n in setup.settings}
    rungs["flops"] = {a["index"]: [float(a["flops"])] for a in archs}
    rungs["params"] = {a["index"]: [float(a["params"])] for a in archs}
    cost: dict[str, list[float]] = {n: [] for n in list(setup.settings) + [REFERENCE, ZERO_COST]}
    timed = [a for a in archs if "latency" in a]
    if timed:  # folders from before latency was measured have no such rung, and report as they did
        # Signed as FLOPs are: a size rung ranks the larger (here the slower) network higher, as the one expected
        # to be more accurate, so its tau says how well the cost follows capacity. Ranked the other way round
        # ("cheaper first") its tau would only change sign. A failed measurement is NaN: undefined, left out.
        rungs[LATENCY] = {a["index"]: [float(a["latency"].get("ms", math.nan))] for a in timed}
        cost[LATENCY] = [a["latency"].get("seconds", 0.0) for a in timed]
    seeds: dict[tuple[str, int], dict[int, float]] = collections.defaultdict(dict)
    for r in results:
        if "error" in r:
            continue
        if r["setting"] == REFERENCE:
            reference_seeds[r["arch"]][r["seed"]] = r["accuracy"]
            if r["seed"] == setup.seed:
                reference[r["arch"]] = r["accuracy"]
        elif r["setting"] == ZERO_COST:
            for name, value in r["scores"].items():
                rungs.setdefault(name, {})[r["arch"]] = [value]
        elif r["setting"] in rungs:
            seeds[(r["setting"], r["arch"])][r["seed"]] = r["accuracy"]
        if r["setting"] in cost:
            cost[r["setting"]].append(r.get("seconds", 0.0))
    for (name, arch), by_seed in seeds.items():  # in seed order: the first is the run's own seed
        rungs[name][arch] = [by_seed[s] for s in sorted(by_seed)]
    by_arch = {a: [by_seed[s] for s in sorted(by_seed)] for a, by_seed in reference_seeds.items() if a in reference}
    return reference, rungs, cost, by_arch


def analyze(setup: Setup, archs: list[dict[str, Any]], results: list[dict[str, Any]],
            resamples: int = 2000) -> dict[str, Any]:
    """Per rung: tau-b and rho against the reference with bootstrap 90 % intervals, top-3/top-5 overlap, seed
    noise and cost; over the architectures whose reference and rung are both done. A proxy setting is scored
    by its first seed's accuracy, as a search sees it (one seed per candidate); a setting repeated over seeds
    gets a second row, ``NAME xK``, scored by the mean over its seeds. With the reference trained from more
    than one seed, a row ``reference seed 2`` scores its second seed against its first: the ceiling of any
    rung's agreement with a reference of one seed, and the reference's own seed sd.

    A score of -inf (NASWOT's, for a network that maps two images to one code) ranks last, as ``nas.stats``
    orders it; only NaN (undefined) leaves an architecture out, and ``undefined`` counts those. Seed sds
    are pooled over the architectures (``nas.stats.pooled_sd``), as the search's noise rule pools them."""
    from .stats import pooled_sd

    reference, rungs, cost, reference_seeds = _scores_by_rung(setup, archs, results)
    rows, firsts = [], {}
    for name, per_arch in rungs.items():
        scored = [i for i in per_arch if i in reference]
        common = sorted(i for i in scored if not np.isnan(per_arch[i]).any())
        kind = "size" if name in SIZE_RUNGS else "proxy" if name in setup.settings else "zero-cost"
        job_cost = cost[ZERO_COST] if kind == "zero-cost" else cost.get(name, [])  # FLOPs, params: none kept
        seconds = float(np.mean(job_cost)) if job_cost else 0.0
        firsts[name] = {i: per_arch[i][0] for i in common}
        row = {**_row(name, kind, firsts[name], reference, resamples, seconds), "undefined": len(scored) - len(common)}
        repeats = min((len(per_arch[i]) for i in common), default=0)
        if repeats > 1:
            row["seed_sd"], row["seeds"] = pooled_sd(per_arch[i][:repeats] for i in common)[0], repeats
            row["tau_per_seed"] = [_row(name, kind, {i: per_arch[i][k] for i in common}, reference, 0,
                                        seconds)["tau"] for k in range(repeats)]
            mean = _row(f"{name} x{repeats}", "proxy-mean", {i: float(np.mean(per_arch[i][:repeats]))
                                                              for i in common}, reference, resamples,
                        seconds * repeats)
            rows += [row, {**mean, "seed_sd": row["seed_sd"], "seeds": repeats}]
        else:
            rows.append(row)
    repeated = sorted(i for i, accs in reference_seeds.items() if len(accs) > 1)
    if repeated:
        row = _row("reference seed 2", "reference", {i: reference_seeds[i][1] for i in repeated}, reference,
                   resamples, float(np.mean(cost[REFERENCE])) if cost[REFERENCE] else 0.0)
        k = min(len(reference_seeds[i]) for i in repeated)
        row["seed_sd"] = pooled_sd(reference_seeds[i][:k] for i in repeated)[0]
        row["seeds"] = k
        rows.append(row)
    ref_cost = cost[REFERENCE]
    report = {"setup": dataclasses.asdict(setup), "archs": len(archs), "reference_done": len(reference),
              "confirmed_picks": _confirmed_picks(setup, rungs, reference, rows),
              "reference_seconds_per_candidate": float(np.mean(ref_cost)) if ref_cost else None,
              "reference_accuracy": [min(reference.values()), max(reference.values())] if reference else None,
              "rows": rows, "targets": _targets(rows, setup, firsts, reference, resamples)}
    if LATENCY in rungs:
        report[LATENCY] = _latency_summary(archs)
    return report


def _latency_summary(archs: list[dict[str, Any]]) -> dict[str, Any]:
    """The stored latencies at a glance: their target, how many were timed and failed, the range of the
    figures (ms) and the widest IQR."""
    timed = [a["latency"] for a in archs if "latency" in a]
    ok = [t for t in timed if "ms" in t]
    return {"target": timed[0]["target"], "timed": len(ok), "failed": len(timed) - len(ok),
            "ms": [min(t["ms"] for t in ok), max(t["ms"] for t in ok)] if ok else None,
            "max_iqr_ms": max(t["iqr_ms"] for t in ok) if ok else None}


def _confirmed_picks(setup: Setup, rungs: dict[str, dict[int, list[float]]], reference: dict[int, float],
                     rows: list[dict[str, Any]], k: int = CONFIRM_TOP) -> list[dict[str, Any]]:
    """The pick of a search with a confirmation rung, played out on the calibration: the top ``k`` by the first
    setting (its first seed, as the search sees them), re-ranked by each other setting (its mean over seeds).
    Re-ranked scores within the first setting's seed sd of the pick's are its ties."""
    first = next(iter(setup.settings))
    noise = next((r["seed_sd"] for r in rows if r["rung"] == first), None)
    done = {i: v[0] for i, v in rungs[first].items() if i in reference and not np.isnan(v[0])}
    top = sorted(done, key=lambda i: -done[i])[:k]
    if len(top) < k or not reference:
        return []
    picks = []
    for name in list(setup.settings)[1:]:
        if not all(i in rungs[name] for i in top):
            continue
        confirmed = {i: float(np.mean(rungs[name][i])) for i in top}
        pick = max(top, key=lambda i: confirmed[i])
        ties = [i for i in top if i != pick and noise is not None and confirmed[pick] - confirmed[i] <= noise]
        picks.append({"setting": name, "top": top, "scores": [confirmed[i] for i in top], "pick": pick,
                      "ties": ties, "reference": reference[pick], "best_reference": max(reference.values()),
                      "rank": 1 + sum(r > reference[pick] for r in reference.values())})
    return picks


def _row(name: str, kind: str, scores: dict[int, float], reference: dict[int, float], resamples: int,
         seconds: float) -> dict[str, Any]:
    """One rung's agreement with the reference over the architectures in ``scores`` (no interval when
    ``resamples`` is 0)."""
    from .stats import bootstrap_interval, kendall_tau_b, spearman_rho, top_k_overlap

    common = sorted(scores)
    score = np.array([scores[i] for i in common])
    ref = np.array([reference[i] for i in common])
    def interval(stat):
        return bootstrap_interval(stat, score, ref, resamples=resamples) if resamples else None
    row = {"rung": name, "kind": kind, "n": len(common),
           "tau": kendall_tau_b(score, ref), "tau_90": interval(kendall_tau_b),
           "rho": spearman_rho(score, ref), "rho_90": interval(spearman_rho),
           "top3": top_k_overlap(score, ref, 3) if len(common) >= 3 else None,
           "top5": top_k_overlap(score, ref, 5) if len(common) >= 5 else None,
           "seed_sd": None, "seeds": 1, "seconds_per_candidate": seconds}
    if kind.startswith("proxy") and common:
        best = common[int(np.argmax(score))]
        row["pick"] = {"arch": best, "reference": reference[best], "best_reference": float(ref.max())}
    return row


def _targets(rows: list[dict[str, Any]], setup: Setup, firsts: dict[str, dict[int, float]],
             reference: dict[int, float], resamples: int) -> dict[str, Any]:
    """The issue's targets for the first setting (the one a search would use). Its tau-b stands above FLOPs'
    and params' when the paired bootstrap interval of the difference (``_margin``) lies above 0."""
    by = {r["rung"]: r for r in rows}
    main = by.get(next(iter(setup.settings)))
    if not main or main["n"] < 3:
        return {}
    noise = next((r["seed_sd"] for r in rows if r["seed_sd"] is not None and r["kind"] == "proxy"), None)
    margins = {size: _margin(firsts[main["rung"]], firsts[size], reference, resamples) for size in ("flops", "params")}
    pick = main.get("pick", {})
    return {
        "setting": main["rung"],
        "n": main["n"],
        "tau_at_least_0.6": main["tau"] >= 0.6,
        "tau_minus_flops": margins["flops"],
        "tau_minus_params": margins["params"],
        "tau_interval_above_flops_and_params": (None if not resamples else  # no resampling
                                                all(m["interval"][0] > 0 for m in margins.values())),
        "top3_holds_2": main["top3"] is not None and main["top3"] >= 2,
        "pick_within_one_seed_sd": (None if noise is None or not pick
                                    else pick["best_reference"] - pick["reference"] <= noise),
        "seed_sd": noise,
    }


def _margin(scores: dict[int, float], size: dict[int, float], reference: dict[int, float],
            resamples: int) -> dict[str, Any]:
    """tau-b(scores) - tau-b(size) against the reference over the architectures of ``scores``, and its paired
    bootstrap 90 % interval (both taus on the same resamples; None without resampling). Comparing the
    proxy's lower bound with the size's point value would ignore the size's own noise."""
    from .stats import bootstrap_difference, kendall_tau_b

    common = sorted(scores)
    x, z, y = ([d[i] for i in common] for d in (scores, size, reference))
    return {"difference": kendall_tau_b(x, y) - kendall_tau_b(z, y),
            "interval": list(bootstrap_difference(kendall_tau_b, x, z, y, resamples=resamples)) if resamples else None}


def _fmt_interval(iv) -> str:
    return "[  n/a ]" if iv is None or any(map(math.isnan, iv)) else f"[{iv[0]:+.2f}, {iv[1]:+.2f}]"


def print_report(report: dict[str, Any], out=print) -> None:
    """The report as text: the setup, one row per rung (n: the architectures it was scored on), the ceiling,
    the confirmation replay, the targets, and the failed jobs with how to retry them."""
    setup = report["setup"]
    out(f"\ncalibration: {report['reference_done']}/{report['archs']} architectures with a reference; "
        f"space {Path(setup['space']).name}, budget {format_flops(setup['budget'])}FLOPs, {setup['dataset']}")
    ref = setup["reference"]
    if report["reference_accuracy"]:
        lo, hi = report["reference_accuracy"]
        out(f"reference: max_train {ref['max_train'] or 'all'}, {ref['epochs']} epochs, accuracy {lo:.3f} to "
            f"{hi:.3f}, {report['reference_seconds_per_candidate']:.0f} s per candidate")
    lat = report.get(LATENCY)
    if lat:
        span = f"{lat['ms'][0]:.2f} to {lat['ms'][1]:.2f} ms (IQR at most {lat['max_iqr_ms']:.2f})" if lat["ms"] else "-"
        failed = f", {lat['failed']} failed (see archs.jsonl)" if lat["failed"] else ""
        out(f"latency: {_describe(lat['target'])}: {span}, {lat['timed']} of {report['archs']} architectures "
            f"timed{failed}")
    _print_rows(report["rows"], out)
    ceiling = next((r for r in report["rows"] if r["kind"] == "reference"), None)
    if ceiling:
        out(f"the reference from its second seed agrees with its first to tau-b {ceiling['tau']:+.2f} "
            f"{_fmt_interval(ceiling['tau_90'])} (n {ceiling['n']}), seed sd {ceiling['seed_sd']:.4f}: the ceiling "
            f"for every rung above; accuracy differences within that sd are noise")
    first = next(iter(setup["settings"]))
    for c in report.get("confirmed_picks", []):
        tie = (f"; within the '{first}' seed sd of arch {', '.join(map(str, c['ties']))}, so a tie" if c["ties"]
               else "")
        out(f"the top {len(c['top'])} of '{first}' (archs {', '.join(map(str, c['top']))}) re-ranked by "
            f"'{c['setting']}' pick arch {c['pick']}: reference {c['reference']:.3f}, rank {c['rank']} of "
            f"{report['reference_done']} (best {c['best_reference']:.3f}){tie}")
    for r in report["rows"]:
        if r.get("tau_per_seed"):
            out(f"tau-b of '{r['rung']}' seed by seed (n {r['n']}): "
                f"{', '.join(f'{t:+.2f}' for t in r['tau_per_seed'])}")
    _print_targets(report["targets"], out)
    if report.get("jobs_failed"):
        out(failed_line(report["jobs_failed"]))


def failed_line(count: int) -> str:
    """How a calibration says that jobs failed and how to run them again."""
    return f"{count} job(s) failed (see results.jsonl); run again with --retry-failed to retry them"


def _print_rows(rows: list[dict[str, Any]], out) -> None:
    out(f"{'rung':>14s} {'n':>3s} {'tau-b':>6s} {'90% interval':>16s} {'rho':>6s} {'90% interval':>16s} "
        f"{'top-3':>5s} {'top-5':>5s} {'seed sd':>8s} {'s/cand':>7s}")
    for r in rows:
        sd = f"{r['seed_sd']:.4f}" if r["seed_sd"] is not None else "-"
        t3 = f"{r['top3']}/3" if r["top3"] is not None else "-"
        t5 = f"{r['top5']}/5" if r["top5"] is not None else "-"
        out(f"{r['rung']:>14s} {r['n']:3d} {r['tau']:+6.2f} {_fmt_interval(r['tau_90']):>16s} {r['rho']:+6.2f} "
            f"{_fmt_interval(r['rho_90']):>16s} {t3:>5s} {t5:>5s} {sd:>8s} {r['seconds_per_candidate']:7.1f}")
    for r in rows:
        if r.get("undefined"):
            out(f"{r['rung']}: n {r['n']} of {r['n'] + r['undefined']}: {r['undefined']} architecture(s) scored NaN "
                f"(undefined) and are left out; -inf ranks last")


def _print_targets(t: dict[str, Any], out) -> None:
    if not t:
        return
    margin = {k: f"{t[f'tau_minus_{k}']['difference']:+.2f} {_fmt_interval(t[f'tau_minus_{k}']['interval'])}"
              for k in ("flops", "params")}
    out(f"targets for '{t['setting']}' (n {t['n']}): tau >= 0.6: {_yes(t['tau_at_least_0.6'])}; tau-b above "
        f"FLOPs' by {margin['flops']} and params' by {margin['params']} (paired bootstrap, 90 %), both intervals "
        f"above 0: {_yes(t['tau_interval_above_flops_and_params'])}; top-3 holds 2 of the reference's top 3: "
        f"{_yes(t['top3_holds_2'])}; pick within one seed sd of the best: {_yes(t['pick_within_one_seed_sd'])}")


def _yes(value) -> str:
    return "n/a" if value is None else "yes" if value else "NO"


def plot_report(report, archs, results, setup: Setup, path: Path) -> Path | None:
    """One panel per proxy setting: its accuracy (mean and seed range) against the reference accuracy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    reference, rungs, _, reference_seeds = _scores_by_rung(setup, archs, results)
    names = list(setup.settings)
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 4), squeeze=False)
    rows = {r["rung"]: r for r in report["rows"]}
    for ax, name in zip(axes[0], names):
        common = sorted(i for i in rungs[name] if i in reference)
        xs = [np.mean(rungs[name][i]) for i in common]
        lo = [np.mean(rungs[name][i]) - min(rungs[name][i]) for i in common]
        hi = [max(rungs[name][i]) - np.mean(rungs[name][i]) for i in common]
        ys = [reference[i] for i in common]
        ylo = [ys[k] - min(reference_seeds[i]) for k, i in enumerate(common)]  # the reference's own seeds
        yhi = [max(reference_seeds[i]) - ys[k] for k, i in enumerate(common)]
        ax.errorbar(xs, ys, xerr=[lo, hi], yerr=[ylo, yhi], fmt="o", ms=4, capsize=2)
        r = rows[name]
        ax.set_title(f"{name}: tau-b {r['tau']:+.2f} {_fmt_interval(r['tau_90'])} (first seed), n={r['n']}",
                     fontsize=9)
        ax.set_xlabel("proxy accuracy (mean over seeds; bars: their range)")
        ax.set_ylabel("reference accuracy" + (" (bars: its seeds)"
                                              if any(len(v) > 1 for v in reference_seeds.values()) else ""))
        ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------------------ the CLI
def _parser() -> _cli.Parser:
    p = _cli.Parser(prog=PROG, description="Measure how well proxy settings (and zero-cost scores) rank "
                    "architectures of a space against a higher-fidelity reference training, on your data. "
                    "Rerun the same command to continue an interrupted calibration.")
    p.add_argument("--out", required=True, help="the output folder (continued if it holds this calibration)")
    p.add_argument("--budget", required=True, help="sample architectures within this many FLOPs, e.g. 4.5G")
    p.add_argument("--space", default="hybrid", help="a space YAML file or a built-in name (default: hybrid)")
    p.add_argument("--archs", type=int, default=20, help="architectures to sample (default: 20)")
    p.add_argument("--seeds", type=int, default=3, help="seeds of the cheapest setting, for noise (default: 3)")
    p.add_argument("--reference-seeds", type=int, default=1, help="train the reference from this many seeds, "
                   "to measure its own noise: the ceiling of every rung's tau (default: 1)")
    p.add_argument("--settings", default=None, help="YAML with 'settings' (named proxy settings) and "
                   "'reference'; default: the search's proxy against the whole split at 3x its epochs")
    p.add_argument("--dataset", default="fashion-mnist", help="fashion-mnist, cifar10, cifar100 or "
                   "imagefolder:PATH (default: fashion-mnist)")
    p.add_argument("--data-dir", default=None, help="where the dataset lies")
    p.add_argument("--seed", type=int, default=0, help="seed of the sample and of the trainings (default: 0)")
    p.add_argument("--address", default=None, help="join a Ray cluster (default: start Ray on this machine)")
    p.add_argument("--cpus-per-job", type=int, default=1, help="CPUs (threads) per training (default: 1)")
    p.add_argument("--retry-failed", action="store_true", help="run the jobs recorded as failed again (a failure "
                   "is otherwise recorded once and kept: it would most likely fail again), and time again the "
                   "latencies that failed")
    p.add_argument("--latency-target", default=None, help="time each architecture's deploy form on this target "
                   "before any training and rank its latency as a rung: ort-cpu, torch-cpu, cuda, or none to skip "
                   "(default: ort-cpu where onnxruntime is installed, else torch-cpu)")
    p.add_argument("--latency-threads", type=int, default=1, help="the latency target's threads (default: 1)")
    p.add_argument("--latency-batch", type=int, default=1, help="the latency target's batch size (default: 1)")
    plugins.add_import_flag(p)
    return p


def _setup_from_args(args) -> Setup:
    from .space import load_space, resolve_space_path

    if args.archs < 3:
        raise OpmixError(f"--archs {args.archs}: rank statistics need at least 3 architectures (20 or more "
                         f"for intervals worth reading)")
    if args.seeds < 1:
        raise OpmixError(f"--seeds {args.seeds} must be at least 1 (2 or more to measure seed noise)")
    if args.reference_seeds < 1:
        raise OpmixError(f"--reference-seeds {args.reference_seeds} must be at least 1 (2 to measure the "
                         f"reference's own noise)")
    if args.cpus_per_job < 1:
        raise OpmixError(f"--cpus-per-job {args.cpus_per_job} must be at least 1")
    settings, reference = load_settings(args.settings)  # before the space, which takes seconds to check
    path = resolve_space_path(args.space)
    load_space(path)
    return Setup(space=args.space, space_sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
                 budget=parse_budget(args.budget), archs=args.archs, seeds=args.seeds, seed=args.seed,
                 dataset=args.dataset, data_dir=args.data_dir,
                 settings={n: dataclasses.asdict(s) for n, s in settings.items()},
                 reference=dataclasses.asdict(reference), reference_seeds=args.reference_seeds)


def _main(argv: list[str] | None) -> int:
    from .data import load_dataset

    args = _parser().parse_args(argv)
    plugins.import_modules(args.imports)
    target = latency_target(args.latency_target, args.latency_threads, args.latency_batch)
    setup = _setup_from_args(args)
    out = CalibrationDir(args.out)
    stored = out.read_setup()
    if stored is not None:
        check_same_setup(stored, setup, out.path)
        check_latency_target(out.read_archs(), target, out.path)
    elif out.path.exists() and any(out.path.iterdir()):
        raise OpmixError(f"--out {out.path} exists and is not a calibration folder; pick an empty or new folder")
    _cli.writable_dir(out.path, "--out")
    data = load_dataset(setup.dataset, setup.data_dir, seed=setup.seed)
    train_images = len(data.train_x)
    ratio = setup.reference_settings().image_epochs(train_images) / max(
        s.image_epochs(train_images) for s in setup.proxies().values())
    if stored is None:
        out.write_setup(setup)
    print(f"calibrating on {setup.dataset} ({data.source}: {train_images} train / {len(data.val_x)} val images); "
          f"the reference sees {ratio:.1f}x the training images x epochs of the costliest setting", flush=True)
    report = calibrate(setup, out, address=args.address, cpus_per_job=args.cpus_per_job,
                       log=lambda m: print(m, flush=True), data=data, imports=tuple(args.imports),
                       retry_failed=args.retry_failed, latency=target)
    print_report(report)
    print(f"wrote {out.path / 'report.json'} and {out.path / 'calibration.png'}")
    if report["jobs_left"]:  # failed jobs are recorded: only jobs without any record make it incomplete
        print(f"{report['jobs_left']} job(s) did not finish (lost with a Ray worker, or interrupted); the report "
              f"covers what did. Run the same command again to continue.")
        return 1
    return 0


def main(argv: list[str] | None = None) -> None:
    _cli.run(PROG, _main, argv)


if __name__ == "__main__":
    main()
