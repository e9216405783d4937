"""Ray for opmix: start it on this machine or join a cluster, check that one trial fits, count the trials
that run at once, and pack proxy trials onto GPUs (``--gpus-per-trial auto``). Shared by the search
(``nas._loop``), its confirmation rung, ``nas.calibrate`` and the benchmarks."""

from __future__ import annotations

import math
import os
import re
from typing import Callable

from .errors import OpmixError

__all__ = ["start_ray", "check_resources", "slots", "parse_gpus_per_trial", "trials_per_gpu",
           "resolve_gpus_per_trial", "ray_cpus", "AUTO"]

AUTO = "auto"
# Packing. A proxy is launch-bound on a GPU (an H200 ran one at 0.0 % of its bf16 matrix peak): its Python loop,
# one CPU thread, cannot keep the GPU busy, so several trials share a GPU, each with its own CPU to launch from.
# MAX_TRIALS_PER_GPU is the largest packing that benchmarks/gpu_session.py measures (1, 2, 4, 8, 16 trials per
# GPU); it is provisional until that sweep has run on a GPU, whose knee then sets it. TRIAL_GPU_MEMORY is what a
# trial may hold on the GPU: its CUDA context (about 0.5 GiB), the training split as uint8 (CIFAR-10: 0.14 GB)
# and a proxy's activations at batch 64, with room to spare.
MAX_TRIALS_PER_GPU = 16
TRIAL_GPU_MEMORY = 2 * 2**30


# How long a reused trial actor waits for the stopped trial's thread (start_ray): a proxy epoch, 17-25 s at the
# default proxy on 2 cores and up to 50 s under load (docs/benchmarks.md), with room. Not longer: Tune waits
# for that reset before it ends a session, and a thread that does not end held a 240 s time-budgeted search
# for 600 s more (its confirmation then had no time left) when this was 600.
REUSE_WAIT_S = 60


def start_ray(address: str | None, imports: tuple[str, ...] = (), num_cpus: int | None = None) -> None:
    """Start Ray on this machine (all its CPUs, or ``num_cpus``), or join the cluster at ``address``; the workers find the
    plug-in modules ``imports`` (imported here already) through their ``PYTHONPATH``."""
    import ray

    from .plugins import module_paths

    # Ray Tune's newer console output prints its own tables whatever ``verbose`` says; ours are the progress lines
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # One Ctrl-C stops the run: Tune would catch the first SIGINT and return from fit() as if the experiment had
    # ended (the search would go on to its confirmation). Without Tune's handler, KeyboardInterrupt reaches the
    # loop, which records the running trials ``interrupted`` and says how to continue.
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    if ray.is_initialized():
        return
    paths = module_paths(imports)
    # A trial stopped early (ASHA, the time budget) goes on training in its thread until its next report, up to an
    # epoch away; before Tune hands the trial's actor to the next trial (reuse_actors), it gives that thread
    # TUNE_FUNCTION_THREAD_TIMEOUT_S to end, 2 s by default, and aborts the *next* trial when it has not ("Could
    # not re-use actor ... reset_config()"): on a busy machine a trial was lost that way. Wait out the epoch.
    env_vars = {"TUNE_FUNCTION_THREAD_TIMEOUT_S": str(REUSE_WAIT_S)}
    if paths:
        env_vars["PYTHONPATH"] = os.pathsep.join(paths + [os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH")
                                                 else paths)
    runtime_env = {"env_vars": env_vars}
    ray.init(address=address, include_dashboard=False, logging_level="ERROR", log_to_driver=False,
             configure_logging=True, runtime_env=runtime_env, **({} if address else {"num_cpus": num_cpus or os.cpu_count()}))



def slots(cpus: float, gpus: float) -> int:
    """How many trials of ``cpus`` CPUs (and ``gpus`` GPUs) the Ray cluster runs at once (at least 1)."""
    import ray

    res = ray.cluster_resources()
    n = int(res.get("CPU", 1) // cpus)
    if gpus:
        n = min(n, int(res.get("GPU", 0) // gpus))
    return max(1, n)


def check_resources(cpus_per_trial: float, gpus_per_trial: float) -> None:
    """One trial must fit the Ray cluster (started or joined already): an ``OpmixError`` otherwise."""
    import ray

    have = ray.cluster_resources()
    cpus, gpus = have.get("CPU", 0.0), have.get("GPU", 0.0)
    if cpus_per_trial > cpus:
        raise OpmixError(f"--cpus-per-trial {cpus_per_trial:g}: one trial would need more CPUs than the Ray cluster "
                         f"has ({cpus:g}); ask for at most {cpus:g}, or join a bigger cluster with --address")
    if gpus_per_trial > gpus:
        fix = f"ask for at most {gpus:g}" if gpus else "leave --gpus-per-trial out to train on the CPU"
        raise OpmixError(f"--gpus-per-trial {gpus_per_trial:g}: one trial would need more GPUs than the Ray cluster "
                         f"has ({gpus:g}); {fix}, or join a cluster with GPUs with --address")


def parse_gpus_per_trial(text: str | float | None) -> float | str | None:
    """``--gpus-per-trial`` as given: None (no flag), ``AUTO``, or a number of GPUs per trial (0, a fraction
    below 1, or a whole number, as Ray allots them). An ``OpmixError`` in one line otherwise."""
    if text is None or text == AUTO:
        return text
    if isinstance(text, str) and not re.fullmatch(r"\s*[0-9]*\.?[0-9]+\s*", text):
        raise OpmixError(f"--gpus-per-trial {text!r} is not understood; give a number of GPUs per trial (0, 0.25, "
                         f"1) or auto to pack trials onto the GPUs by the rule in docs/search.md")
    value = float(text)
    if value > 1 and not value.is_integer():
        raise OpmixError(f"--gpus-per-trial {value:g}: Ray allots a fraction of one GPU or whole GPUs; give a "
                         f"number below 1 or a whole number")
    return value


def trials_per_gpu(gpus: int, gpu_memory: int, cpus: float, cpus_per_trial: float) -> tuple[int, str]:
    """How many proxy trials to pack on each of ``gpus`` GPUs of ``gpu_memory`` bytes each (the smallest) when
    ``cpus`` CPUs run trials of ``cpus_per_trial`` CPUs each, and the bound that set it: never more trials
    than the CPUs can feed (each trial's loop needs its own), than fit the memory at ``TRIAL_GPU_MEMORY``
    each, or than ``MAX_TRIALS_PER_GPU``; at least 1."""
    bounds = {"the CPU cores": int(cpus // cpus_per_trial) // max(1, gpus),
              "the GPU memory": int(gpu_memory // TRIAL_GPU_MEMORY),
              f"the packing cap ({MAX_TRIALS_PER_GPU})": MAX_TRIALS_PER_GPU}
    bound = min(bounds, key=bounds.get)
    return max(1, bounds[bound]), bound


def ray_cpus() -> float:
    """The CPUs trials may use: the Ray cluster's when Ray is running here, else this machine's."""
    import ray

    if ray.is_initialized():
        return float(ray.cluster_resources().get("CPU", 1.0))
    return float(os.cpu_count() or 1)


def resolve_gpus_per_trial(value: float | str | None, cpus_per_trial: float, cpus: float,
                           log: Callable[[str], None] = print) -> float:
    """GPUs per trial from ``--gpus-per-trial``'s parsed value (``parse_gpus_per_trial``). A number is kept. With
    ``AUTO``, or no flag on a machine with CUDA, trials are packed ``trials_per_gpu`` to a GPU (this machine's
    GPUs, ``cpus`` CPUs) and one line says what was chosen and why; ``AUTO`` without CUDA is 0 GPUs, said in a
    line too; no flag without CUDA is 0, silently (the CPU search as it always was)."""
    import torch

    if value not in (None, AUTO):
        return float(value)
    if not torch.cuda.is_available() or torch.cuda.device_count() == 0:
        if value == AUTO:
            log(f"--gpus-per-trial auto: no CUDA device here, so 0 GPUs: trials train on the CPU, "
                f"{cpus_per_trial:g} CPU each")
        return 0.0
    gpus = torch.cuda.device_count()
    props = [torch.cuda.get_device_properties(i) for i in range(gpus)]
    memory = min(p.total_memory for p in props)
    k, bound = trials_per_gpu(gpus, memory, cpus, cpus_per_trial)
    share = math.floor(10_000 / k) / 10_000  # Ray counts resources to 1e-4: k shares must fit in one GPU
    log(f"--gpus-per-trial auto: {k} trial{'s' if k > 1 else ''} per GPU ({share:g} GPU and {cpus_per_trial:g} "
        f"CPU each) on {gpus} x {props[0].name} ({memory / 2**30:.0f} GiB), {k * gpus} at a time, bound by "
        f"{bound} ({cpus:g} CPUs){'' if value == AUTO else '; give --gpus-per-trial to choose'}")
    return share
