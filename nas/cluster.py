"""Ray for opmix: start it on this machine or join a cluster, check that one trial fits, and count the trials
that run at once. Shared by the search (``nas._loop``), its confirmation rung, ``nas.calibrate`` and the
benchmarks."""

from __future__ import annotations

import os

from .errors import OpmixError

__all__ = ["start_ray", "check_resources", "slots"]


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
    runtime_env = None
    if paths:
        path = os.pathsep.join(paths + [os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else paths)
        runtime_env = {"env_vars": {"PYTHONPATH": path}}
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
