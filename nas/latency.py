"""Latency of an architecture's deploy form on a named target: measured end to end, and predicted from a
per-layer table in milliseconds.

A latency belongs to a *target*, not to a network (``docs/latency.md`` shows the runtimes ranking the same
networks differently):

- ``ort-cpu``: ONNX Runtime's CPU provider running the program ``nas.export`` writes (the dynamo exporter),
  ``threads`` intra-op threads, one inter-op thread, spinning off;
- ``torch-cpu``: eager PyTorch under ``inference_mode`` with ``threads`` threads;
- ``cuda``: eager PyTorch on the CUDA device in float16 or bfloat16, timed with CUDA events.

**Measuring** (``time_runs``), after ``torch.utils.benchmark``'s practice: warm-up runs, then ``rounds``
rounds of repeats; each round gives a median. The figure is the *lowest* round median (a burst of other
work on a shared machine lengthens a round, never shortens one), and the median and interquartile range of
every run are kept beside it. When the round medians spread by more than ``SPREAD`` the measurement runs as
many rounds again, once. While it runs, the measuring thread is pinned to the last ``threads`` cores
(``pinned``), which a search keeps free of trials (``reserve_cores``).

**Predicting** (``LatencyTable``, ``predict``): a network is its stem, its stages' downsamplers and blocks,
and its head (``nas.flops.arch_layers``), and a layer's latency depends on its constructor call, its input
shape (batch included) and the target. Each layer is measured once, alone, and kept on disk in one JSON
table per target fingerprint (CPU or GPU model, cores, threads, batch, precision, torch and onnxruntime
versions): ``~/.cache/opmix/latency/`` by default (``$OPMIX_CACHE`` moves it), or a file given by
``--latency-table``. A table measured on another fingerprint is refused, never reused. The prediction is
``a + b * sum(layers)``, where (a, b) are fitted on whole networks measured end to end on the same target
(``Correction``): the plain sum misses what happens between layers (fusion, cache, the runtime's per-call
overhead), and the fit says how much, per target. Each end-to-end measurement a search makes joins the fit.

``python -m nas.latency ARCH.yaml|runs/NAME [--trial K] --target ort-cpu`` prints the measured total and
per-stage milliseconds (``--predict`` adds the table's prediction).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn

from .arch import Arch
from .errors import OpmixError
from .stats import quantile

__all__ = ["TARGETS", "Target", "Timing", "time_runs", "measure_module", "measure_arch_latency", "LatencyTable",
           "Correction", "Prediction", "predict", "parse_latency", "pinned", "reserve_cores", "main"]

TARGETS = ("ort-cpu", "torch-cpu", "cuda")
CUDA_DTYPES = ("float16", "bfloat16")
SPREAD = 0.10  # round medians further apart than this (relative) earn a second set of rounds
DEFAULT_ERROR = 0.30  # the predictor's relative error assumed before enough networks were measured to know it
MIN_FIT = 4  # whole networks needed before the correction is fitted (fewer: the plain sum)


# ------------------------------------------------------------------------------------------------ targets
@dataclasses.dataclass(frozen=True)
class Target:
    """Where a latency is measured: runtime ``name``, intra-op ``threads``, ``batch`` images per call, and
    (``cuda`` only) the precision."""

    name: str = "ort-cpu"
    threads: int = 1
    batch: int = 1
    dtype: str = "float32"

    def __post_init__(self):
        if self.name not in TARGETS:
            raise OpmixError(f"latency target {self.name!r} is not known; use one of {', '.join(TARGETS)}")
        if not (isinstance(self.threads, int) and self.threads >= 1):
            raise OpmixError(f"latency threads {self.threads!r} must be an integer >= 1")
        if not (isinstance(self.batch, int) and self.batch >= 1):
            raise OpmixError(f"latency batch {self.batch!r} must be an integer >= 1")
        if self.name == "cuda" and self.dtype == "float32":
            object.__setattr__(self, "dtype", "float16")
        allowed = CUDA_DTYPES if self.name == "cuda" else ("float32",)
        if self.dtype not in allowed:
            raise OpmixError(f"latency precision {self.dtype!r} does not suit target {self.name}; use one of "
                             f"{', '.join(allowed)}")

    def check(self) -> None:
        """An ``OpmixError`` saying how to fix it when this machine cannot measure the target."""
        if self.name == "ort-cpu":
            from .export import ONNX_PACKAGES, onnx_available

            if not onnx_available():
                raise OpmixError(f"latency target ort-cpu needs {', '.join(ONNX_PACKAGES)}: pip install "
                                 f"'opmix[export]', or use --latency-target torch-cpu")
        elif self.name == "cuda" and not torch.cuda.is_available():
            raise OpmixError(f"latency target cuda: torch {torch.__version__} sees no CUDA device here; use "
                             f"ort-cpu or torch-cpu, or run on a machine with a GPU")

    def fingerprint(self) -> dict[str, Any]:
        """What a latency figure depends on besides the network: a figure is only comparable, and a table
        only reusable, under an equal fingerprint."""
        fp: dict[str, Any] = {"target": self.name, "threads": self.threads, "batch": self.batch,
                              "dtype": self.dtype, "cores": os.cpu_count(), "cpu": cpu_model(),
                              "torch": torch.__version__.split("+")[0]}
        if self.name == "ort-cpu":
            import onnxruntime

            fp["onnxruntime"] = onnxruntime.__version__
        if self.name == "cuda":
            fp["gpu"] = torch.cuda.get_device_name()
            fp["cuda"] = torch.version.cuda
        return fp

    def key(self) -> str:
        """A short name for the fingerprint: the table's file name."""
        digest = hashlib.sha1(json.dumps(self.fingerprint(), sort_keys=True).encode()).hexdigest()[:10]
        return f"{self.name}-t{self.threads}-b{self.batch}-{digest}"

    def describe(self) -> str:
        extra = f", {self.dtype}" if self.name == "cuda" else ""
        return f"{self.name}, {self.threads} thread{'s' if self.threads > 1 else ''}, batch {self.batch}{extra}"


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), or what the platform says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


_LATENCY = (("us", 1e-3), ("ms", 1.0), ("s", 1e3))


def parse_latency(text: str) -> float:
    """'12ms' -> 12.0 milliseconds ('800us', '0.5s' and a bare number of milliseconds too)."""
    import re

    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*(us|ms|s)?\s*", str(text).lower())
    if not m or not float(m.group(1)) > 0:
        raise OpmixError(f"latency {text!r} is not understood; write a positive duration such as 12ms, 800us or "
                         f"0.5s (a bare number is milliseconds)")
    return float(m.group(1)) * dict(_LATENCY)[m.group(2) or "ms"]


# ------------------------------------------------------------------------------------------------ timing
@dataclasses.dataclass(frozen=True)
class Timing:
    """One latency figure: ``ms`` (the lowest round median, the figure used), the median and quartiles of
    every run, and the rounds' medians."""

    ms: float
    median_ms: float
    q25_ms: float
    q75_ms: float
    round_ms: tuple[float, ...]
    runs: int

    @property
    def iqr_ms(self) -> float:
        return self.q75_ms - self.q25_ms

    @property
    def spread(self) -> float:
        """How far apart the round medians lie, relative to the lowest."""
        return (max(self.round_ms) - min(self.round_ms)) / min(self.round_ms)

    def to_dict(self) -> dict[str, Any]:
        return {"ms": round(self.ms, 4), "median_ms": round(self.median_ms, 4), "iqr_ms": round(self.iqr_ms, 4),
                "spread": round(self.spread, 4), "runs": self.runs}

    def text(self) -> str:
        return f"{self.ms:.2f} ms (median {self.median_ms:.2f}, IQR {self.iqr_ms:.2f}, {self.runs} runs)"


def time_runs(run: Callable[[], float], *, rounds: int = 5, repeats: int = 0, warmup_s: float = 0.1,
              round_s: float = 0.1) -> Timing:
    """Time ``run`` (which does one call and returns its seconds): warm up for at least ``warmup_s`` (and 2
    calls), then ``rounds`` rounds of ``repeats`` calls each (0: as many as fill ``round_s``, at least 3);
    when the round medians spread by more than ``SPREAD``, as many rounds again (once)."""
    t0, first = time.perf_counter(), []
    while len(first) < 2 or time.perf_counter() - t0 < warmup_s:
        first.append(run())
    per_round = repeats or max(3, min(200, int(round_s / max(min(first), 1e-6))))
    samples: list[list[float]] = []
    for extra in (False, True):
        if extra and not _spread([statistics.median(r) for r in samples]) > SPREAD:
            break
        for _ in range(rounds):
            samples.append([run() for _ in range(per_round)])
    medians = [1e3 * statistics.median(r) for r in samples]
    flat = [1e3 * t for r in samples for t in r]
    return Timing(min(medians), statistics.median(flat), quantile(flat, 0.25), quantile(flat, 0.75),
                  tuple(medians), len(flat))


def _spread(medians: list[float]) -> float:
    return (max(medians) - min(medians)) / min(medians)


@contextlib.contextmanager
def pinned(target: Target) -> Iterator[None]:
    """Run the calling thread (and the threads it starts: ONNX Runtime's and torch's pools) on the last
    ``threads`` cores, and torch with ``threads`` threads; both restored after. Where the platform cannot
    pin (not Linux), only the thread count is set."""
    threads = torch.get_num_threads()
    before = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    try:
        if before is not None and target.name != "cuda":
            cores = sorted(before)
            os.sched_setaffinity(0, cores[-target.threads:] if len(cores) > target.threads else cores)
        torch.set_num_threads(target.threads)
        yield
    finally:
        torch.set_num_threads(threads)
        if before is not None:
            os.sched_setaffinity(0, before)


def reserve_cores(target: Target) -> int:
    """Keep this process (and the processes it starts from now on: Ray's workers) off the last ``threads``
    cores, which ``pinned`` measures on; returns the cores left for training (0: nothing could be kept free,
    on a machine with no more cores than threads, or where the platform cannot pin)."""
    if not hasattr(os, "sched_getaffinity") or target.name == "cuda":
        return 0
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) <= target.threads:
        return 0
    os.sched_setaffinity(0, cores[:-target.threads])
    return len(cores) - target.threads


# ------------------------------------------------------------------------------------------------ runners
def _deploy(module: nn.Module) -> nn.Module:
    from operators import reparameterize_model

    return reparameterize_model(module.eval(), inplace=True)


def _example(input_shape: tuple[int, ...]) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    return torch.randn(input_shape, generator=gen)


@contextlib.contextmanager
def _runner(module: nn.Module, input_shape: tuple[int, ...], target: Target,
            onnx_path: Path | None = None) -> Iterator[Callable[[], float]]:
    """A callable that runs ``module`` (in its deploy form already) once on ``target`` and returns seconds;
    for ``ort-cpu`` the module is exported to ONNX first unless ``onnx_path`` holds its program."""
    x = _example(input_shape)
    if target.name == "torch-cpu":
        module = module.cpu()

        def run() -> float:
            with torch.inference_mode():
                t0 = time.perf_counter()
                module(x)
                return time.perf_counter() - t0

        yield run
    elif target.name == "cuda":
        dtype = getattr(torch, target.dtype)
        module = module.to("cuda", dtype)
        xc = x.to("cuda", dtype)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

        def run() -> float:
            with torch.inference_mode():
                start.record()
                module(xc)
                end.record()
                torch.cuda.synchronize()
            return start.elapsed_time(end) / 1e3

        yield run
    else:
        import onnxruntime

        with tempfile.TemporaryDirectory(prefix="opmix-latency-") as tmp:
            if onnx_path is None:
                from .export import _onnx_export

                onnx_path = Path(tmp) / "layer.onnx"
                _onnx_export(module, x, onnx_path, dynamic=False)
            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = target.threads
            options.inter_op_num_threads = 1
            options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            options.log_severity_level = 3
            session = onnxruntime.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
            feed = {session.get_inputs()[0].name: x.numpy()}

            def run() -> float:
                t0 = time.perf_counter()
                session.run(None, feed)
                return time.perf_counter() - t0

            yield run


def measure_module(module: nn.Module, input_shape: tuple[int, ...], target: Target, *,
                   onnx_path: Path | None = None, **timing) -> Timing:
    """The latency of ``module`` (used as it is: re-parameterize it first) at ``input_shape`` on ``target``,
    pinned (``pinned``); ``timing``: ``time_runs``'s options."""
    with pinned(target), _runner(module, input_shape, target, onnx_path) as run:
        return time_runs(run, **timing)


def _parts(net: nn.Module) -> list[tuple[str, nn.Module]]:
    return [("stem", net.stem), *((f"stages.{i}", s) for i, s in enumerate(net.stages)), ("head", net.head)]


def measure_arch_latency(arch: Arch, target: Target, *, parts: bool = False, onnx_path: Path | None = None,
                         **timing) -> dict[str, Any]:
    """``{"total": Timing, "parts": {"stem": Timing, "stages.0": ..., "head": ...}}`` of ``build(arch)``'s
    deploy form at the Arch's input and the target's batch; ``parts`` only when asked (each part measured
    alone, so they need not add up to the total). ``onnx_path``: an ONNX program of the whole deploy network
    to time instead of exporting one (``ort-cpu``)."""
    from .network import build

    torch.manual_seed(0)
    net = _deploy(build(arch))
    shape = (target.batch, arch.in_chans, arch.input_size, arch.input_size)
    out: dict[str, Any] = {"total": measure_module(net, shape, target, onnx_path=onnx_path, **timing), "parts": {}}
    if parts:
        x = _example(shape)
        with torch.inference_mode():
            for name, part in _parts(net):
                out["parts"][name] = measure_module(part, tuple(x.shape), target, **timing)
                x = part(x)
    return out


# ------------------------------------------------------------------------------------------------ the table
def cache_dir() -> Path:
    """Where tables live by default: ``$OPMIX_CACHE/latency``, else ``~/.cache/opmix/latency``."""
    root = os.environ.get("OPMIX_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "opmix") / "latency"


# modules whose code every layer runs besides its own module's: a change to them changes every key
SHARED_CODE = ("operators._layers", "operators._attention", "operators.stems")


def code_digest(module_name: str) -> str:
    """Eight hex digits of the source of ``module_name`` and of ``SHARED_CODE``: a layer's figure belongs to
    the code that ran, so a table entry measured before that code changed is not found (and is measured
    again) after it. Modules without a source file (built in) digest as their name."""
    if module_name not in _DIGESTS:
        import importlib
        import inspect

        h = hashlib.sha1()
        for name in (module_name, *SHARED_CODE):
            try:
                h.update(inspect.getsource(importlib.import_module(name)).encode())
            except (ImportError, OSError, TypeError):
                h.update(name.encode())
        _DIGESTS[module_name] = h.hexdigest()[:8]
    return _DIGESTS[module_name]


_DIGESTS: dict[str, str] = {}


def layer_key(layer) -> str:
    """A table's key for one ``nas.flops.Layer``: its constructor (module and name) with the digest of its
    code (``code_digest``), arguments, keywords (with their types) and input shape, batch included."""
    module = layer.factory.__module__
    factory = f"{module}.{layer.factory.__qualname__}#{code_digest(module)}"
    kwargs = ",".join(f"{k}={type(v).__name__}:{v!r}" for k, v in sorted(layer.kwargs.items()))
    return f"{factory}{layer.args!r}{{{kwargs}}}@{'x'.join(map(str, layer.input_shape))}"


def arch_key(arch: Arch) -> str:
    return hashlib.sha1(json.dumps(arch.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class Correction:
    """``ms = a + b * sum``, chosen on ``n`` whole networks measured end to end. Three forms are tried: the
    plain sum (a = 0, b = 1), a scale (b = the median of measured / sum) and a line (weighted least squares,
    weights 1/measured^2, so that relative errors count); the one with the smallest median leave-one-out
    relative error is kept (``form``): the measurements decide whether the sum is biased, and how. ``error``
    is the 90th percentile of the kept form's leave-one-out relative errors (``DEFAULT_ERROR`` before
    ``MIN_FIT`` networks, when the plain sum is used)."""

    a: float = 0.0
    b: float = 1.0
    n: int = 0
    error: float = DEFAULT_ERROR
    form: str = "sum"

    def __call__(self, total: float) -> float:
        return self.a + self.b * total

    @classmethod
    def fit(cls, networks: list[dict[str, Any]]) -> Correction:
        pts = [(float(n["sum_ms"]), float(n["ms"])) for n in networks if n.get("sum_ms") and n.get("ms")]
        if len(pts) < MIN_FIT:
            return cls(n=len(pts))
        best = None
        for form, fit in _FORMS.items():
            loo = []
            for i, (s, m) in enumerate(pts):
                ai, bi = fit(pts[:i] + pts[i + 1:])
                loo.append(abs(ai + bi * s - m) / m)
            score = statistics.median(loo)
            if best is None or score < best[0] - 1e-12:
                best = (score, form, loo)
        _, form, loo = best
        a, b = _FORMS[form](pts)
        return cls(a, b, len(pts), quantile(loo, 0.9), form)


def _wls(pts: list[tuple[float, float]]) -> tuple[float, float]:
    """Least squares of m = a + b s with weights 1/m^2; b alone (a = 0) when the sums are all alike."""
    w = [1.0 / m ** 2 for _, m in pts]
    sw = sum(w)
    sx = sum(wi * s for wi, (s, _) in zip(w, pts))
    sy = sum(wi * m for wi, (_, m) in zip(w, pts))
    sxx = sum(wi * s * s for wi, (s, _) in zip(w, pts))
    sxy = sum(wi * s * m for wi, (s, m) in zip(w, pts))
    det = sw * sxx - sx * sx
    if det <= 1e-12 * sw * sxx:
        return 0.0, sxy / sxx
    b = (sw * sxy - sx * sy) / det
    return (sy - b * sx) / sw, b


_FORMS: dict[str, Callable[[list[tuple[float, float]]], tuple[float, float]]] = {
    "sum": lambda pts: (0.0, 1.0),
    "scale": lambda pts: (0.0, statistics.median(m / s for s, m in pts)),
    "line": _wls,
}


class LatencyTable:
    """Per-layer latencies on one target, on disk as JSON: ``{"fingerprint", "entries": {layer_key: {ms,
    median_ms, iqr_ms, spread, runs, seconds}}, "networks": [{arch, sum_ms, ms, iqr_ms}]}``. ``path``: a file
    to use (one from another fingerprint is refused); default ``cache_dir()/<target.key()>.json``."""

    def __init__(self, target: Target, path: str | Path | None = None):
        self.target = target
        self.fingerprint = target.fingerprint()
        self.path = Path(path) if path is not None else cache_dir() / f"{target.key()}.json"
        self.entries: dict[str, dict[str, Any]] = {}
        self.networks: list[dict[str, Any]] = []
        self.measured = 0  # entries this process measured
        self.measure_seconds = 0.0  # and what they cost
        self._load(strict=True)
        self.correction = Correction.fit(self.networks)

    def _load(self, strict: bool) -> None:
        if not self.path.is_file():
            return
        try:
            data = json.loads(self.path.read_text())
            found = data["fingerprint"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise OpmixError(f"latency table {self.path} cannot be read ({exc}); give another --latency-table "
                             f"path, or remove the file to measure anew") from None
        if found != self.fingerprint:
            if not strict:
                return
            differ = ", ".join(f"{k} {found.get(k)!r} here {v!r}" for k, v in self.fingerprint.items()
                               if found.get(k) != v) or "its keys"
            raise OpmixError(f"latency table {self.path} was measured on another target ({differ}); a table is "
                             f"never reused across targets: give a table of {self.target.describe()} on this "
                             f"machine, or a new path")
        for key, entry in data.get("entries", {}).items():
            self.entries.setdefault(key, entry)
        seen = {n["arch"] for n in self.networks}
        self.networks += [n for n in data.get("networks", []) if n.get("arch") not in seen]

    def save(self) -> None:
        """Write the table, merged with what another process may have added to the file meanwhile."""
        from .rundir import atomic_write

        self._load(strict=False)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path, json.dumps({"fingerprint": self.fingerprint, "entries": self.entries,
                                            "networks": self.networks}, indent=1, sort_keys=True) + "\n")

    def layer_ms(self, layer, *, measure: bool = True, save: bool = True) -> float | None:
        """The table's latency of one ``nas.flops.Layer``, measured now if missing (unless not ``measure``)."""
        key = layer_key(layer)
        entry = self.entries.get(key)
        if entry is None:
            if not measure:
                return None
            t0 = time.perf_counter()
            torch.manual_seed(0)
            timing = measure_module(_deploy(layer.build()), layer.input_shape, self.target)
            entry = {**timing.to_dict(), "seconds": round(time.perf_counter() - t0, 3)}
            self.entries[key] = entry
            self.measured += 1
            self.measure_seconds += entry["seconds"]
            if save:
                self.save()
        return float(entry["ms"])

    def add_network(self, arch: Arch, sum_ms: float, timing: Timing) -> None:
        """Keep a whole network's end-to-end measurement for the correction, and refit it."""
        key = arch_key(arch)
        self.networks = [n for n in self.networks if n["arch"] != key]
        self.networks.append({"arch": key, "sum_ms": round(sum_ms, 4), **timing.to_dict()})
        self.correction = Correction.fit(self.networks)
        self.save()


@dataclasses.dataclass(frozen=True)
class Prediction:
    ms: float  # the corrected prediction
    sum_ms: float  # the plain sum over layers
    parts: dict[str, float]  # the sum per part (stem, stages.i, head)
    error: float  # the predictor's relative error (Correction.error)
    measured: int  # layers this prediction had to measure
    seconds: float  # what the prediction took, measurements included

    def near(self, bound_ms: float) -> bool:
        """Whether ``bound_ms`` lies within the predictor's error of the prediction."""
        return abs(self.ms - bound_ms) <= self.error * self.ms


def predict(arch: Arch, table: LatencyTable, *, measure: bool = True) -> Prediction:
    """The table's prediction of ``build(arch)``'s latency on its target; missing layers are measured and
    saved (``measure``), else a ``KeyError`` names the first one missing."""
    from .flops import arch_layers

    t0, before = time.perf_counter(), table.measured
    batch = table.target.batch
    parts: dict[str, float] = {}
    # the layers as the FLOP count traced them (batch 1, remembered), at the target's batch: a layer's shapes
    # scale with the batch, so nothing is traced again for another one
    for layer in arch_layers(arch):
        layer = layer._replace(input_shape=(batch, *layer.input_shape[1:]))
        ms = table.layer_ms(layer, measure=measure)
        if ms is None:
            raise KeyError(f"layer {layer_key(layer)} is not in the table {table.path}")
        parts[layer.part] = parts.get(layer.part, 0.0) + ms
    total = sum(parts.values())
    return Prediction(table.correction(total), total, parts, table.correction.error, table.measured - before,
                      time.perf_counter() - t0)


# ------------------------------------------------------------------------------------------------ CLI
PROG = "python -m nas.latency"


def _main(argv: list[str] | None) -> int:
    from . import _cli, plugins
    from .flops import part_label

    parser = _cli.Parser(prog=PROG, description="Latency of an architecture's deploy form on a target: the total "
                         "and per-stage milliseconds, measured (median of rounds after warm-up, with the IQR).")
    parser.add_argument("source", help="an arch YAML file, or a run folder (its pick, or --trial K)")
    parser.add_argument("--trial", default=None, help="with a run folder: the trial to time (a number or a "
                        "reference's name); default: the run's pick")
    parser.add_argument("--target", default="ort-cpu", help=f"one of {', '.join(TARGETS)} (default: ort-cpu)")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads (default: 1)")
    parser.add_argument("--batch", type=int, default=1, help="images per call (default: 1)")
    parser.add_argument("--dtype", default=None, help="cuda only: float16 (default) or bfloat16")
    parser.add_argument("--predict", action="store_true", help="also predict from the per-layer table "
                        "(measuring the layers it lacks) and show the prediction's error")
    parser.add_argument("--latency-table", default=None, metavar="PATH",
                        help="the table file to use (default: one per target fingerprint in ~/.cache/opmix/latency)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    plugins.add_import_flag(parser)
    args = parser.parse_args(argv)
    plugins.import_modules(args.imports)
    target = Target(args.target, args.threads, args.batch, args.dtype or "float32")
    target.check()
    table = LatencyTable(target, args.latency_table) if args.predict else None
    arch, label = _source_arch(args.source, args.trial)
    result = measure_arch_latency(arch, target, parts=True)
    pred = predict(arch, table) if table is not None else None
    if pred is not None:
        table.add_network(arch, pred.sum_ms, result["total"])
    if args.json:
        out = {"source": args.source, "arch": label, "target": target.fingerprint(),
               "total": result["total"].to_dict(), "parts": {k: v.to_dict() for k, v in result["parts"].items()}}
        if pred is not None:
            out["predicted_ms"], out["predicted_sum_ms"] = round(pred.ms, 4), round(pred.sum_ms, 4)
        print(json.dumps(out))
        return 0
    print(f"{label} on {target.describe()} ({target.fingerprint()['cpu'] if target.name != 'cuda' else target.fingerprint()['gpu']})")
    print(f"  total   {result['total'].text()}")
    for name, timing in result["parts"].items():
        print(f"    {part_label(arch, name):34s} {timing.ms:8.2f} ms  IQR {timing.iqr_ms:.2f}")
    print("  (each part timed alone; the parts need not add up to the total)")
    if pred is not None:
        err = (pred.ms - result["total"].ms) / result["total"].ms
        print(f"  predicted {pred.ms:.2f} ms from the table ({pred.sum_ms:.2f} ms summed over layers, correction "
              f"fitted on {table.correction.n} networks), {100 * err:+.1f} % of the measured; {pred.measured} "
              f"layer(s) measured now; table {table.path}")
    return 0


def _source_arch(source: str, trial: str | None) -> tuple[Arch, str]:
    from .arch import load_arch

    path = Path(source)
    if path.is_dir():
        from .export import pick_trial
        from .pareto import objectives_of
        from .rundir import RunDir, trial_label

        run = RunDir(path)
        if not run.exists():
            raise OpmixError(f"{source} is a folder but not a run (no config.yaml); give a run folder or an arch "
                             f"YAML file")
        config = run.read_config()
        record = pick_trial(run.read_trials(), config.get("budget"), trial, *objectives_of(config))
        return Arch.from_dict(record["arch"]), f"{source} {trial_label(record)}"
    if trial is not None:
        raise OpmixError(f"--trial goes with a run folder, and {source} is not one")
    return load_arch(source), source


def main(argv: list[str] | None = None) -> None:
    from . import _cli

    _cli.run(PROG, _main, argv)


if __name__ == "__main__":
    main()
