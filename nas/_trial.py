"""The trial function that Ray Tune runs for a proxy and for a confirmation, and how a failed trial's error
reads in one line. Its own module so that the search loop (``nas._loop``) and the confirmation rung
(``nas._confirm``) both use it without importing each other."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from .arch import Arch
from .proxy import ProxySettings

__all__ = ["trainable", "error_line", "error_text"]


def trainable(config: dict[str, Any], data=None, proxy: ProxySettings = ProxySettings(), seed: int = 0,
              imports: tuple[str, ...] = ()) -> None:
    """One Ray Tune trial: train the candidate's proxy from ``seed`` under ``proxy`` (the search's settings, or the
    confirmation's), reporting accuracy after each epoch. Its result depends on (architecture, seed, settings)
    and the trial's thread count only. An exception (it would happen again: a build error, a NaN loss, out of
    memory) ends the trial with a last result that carries its ``error`` instead of failing the Ray trial, so
    Ray retries only trials whose worker was lost. ``imports``: the run's plug-in operator modules. The last
    epoch's result also carries which validation images the network got right (``correct``, packed by
    ``nas.stats.pack_bits``, and ``val_images``): ``nas.pareto`` compares confirmed candidates by them."""
    import ray
    from ray import tune

    from .plugins import import_modules
    from .proxy import train_arch
    from .stats import pack_bits

    threads = max(1, int(os.environ.get("OMP_NUM_THREADS", "1")))
    node = ray.get_runtime_context().get_node_id()
    t0 = time.perf_counter()

    def report(epoch: int, accuracy: float, loss: float, correct) -> None:
        last = {"correct": pack_bits(correct.numpy()), "val_images": len(correct)} if epoch == proxy.epochs else {}
        tune.report({"accuracy": accuracy, "loss": loss, "epoch": epoch, "node": node,
                     "train_seconds": time.perf_counter() - t0, "gflops": config["flops"] / 1e9, **last})

    try:
        import_modules(imports)
        train_arch(Arch.from_dict(config["arch"]), data, proxy, seed=seed, threads=threads, report=report,
                   per_image=True)
    except Exception as exc:  # noqa: BLE001 -- every failure of the training itself is the trial's result
        tune.report({"error": error_line(exc), "node": node, "train_seconds": time.perf_counter() - t0,
                     "epoch": 0, "accuracy": 0.0})


def error_line(exc: BaseException) -> str:
    """An exception as one line: its type and the last line of its message, at most 500 characters."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[-1] if lines else ''}"[:500]


def error_text(trial) -> str | None:
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
