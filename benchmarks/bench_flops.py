"""Counting a candidate's FLOPs and parameters: the whole network against ``count_arch``'s cached layers.

    python benchmarks/bench_flops.py [--space hybrid] [--samples 48] [--seed 0] [--threads N]

Draws ``--samples`` architectures from the space as a random search draws them (``Space.random`` on one
seeded generator) and times, per candidate, at the space's input (224 px for ``hybrid``):
- old: ``count_flops`` and ``count_params`` of ``build_uninitialized(arch)`` (one trace of the whole network);
- warming: ``count_arch`` over the sequence with its layer cache kept, as a search calls it (also over the
  second half of the sequence alone), and the cache's hit rate;
- cold: ``count_arch(arch)`` on an empty cache (the first candidate of a search: what sharing blocks within a
  stage saves alone); the warming cache is set aside for it and put back.
The three are timed one after the other on each candidate, so that the machine's load falls on them alike.
Each line gives the median, 90th percentile, maximum and mean in seconds. Both counts are compared on every
candidate and any difference is printed. One untimed count first pays the one-time imports (torch._dynamo,
fvcore) that the first count of a process pays on either path. ``--threads`` sets torch's intra-op threads for
both paths (default: torch's own choice); on a machine whose cores other jobs keep busy, 1 is the faster.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
import warnings

import torch

import nas.flops
from nas.flops import (
    clear_layer_cache,
    count_arch,
    count_flops,
    count_params,
    layer_cache_info,
)
from nas.network import build_uninitialized
from nas.space import load_space


def _old(arch) -> tuple[int, int]:
    net = build_uninitialized(arch)
    return count_flops(net, (1, arch.in_chans, arch.input_size, arch.input_size)), count_params(net)


def _timed(fn, arch) -> tuple[float, tuple[int, int]]:
    t0 = time.perf_counter()
    result = fn(arch)
    return time.perf_counter() - t0, result


def _timed_cold(arch) -> float:
    """Seconds of ``count_arch(arch)`` on an empty cache; the cache (and its counters) are put back after."""
    saved, stats = nas.flops._layer_cache.copy(), dict(nas.flops._layer_stats)
    clear_layer_cache()
    try:
        return _timed(count_arch, arch)[0]
    finally:
        nas.flops._layer_cache.clear()
        nas.flops._layer_cache.update(saved)
        nas.flops._layer_stats.update(stats)


def _line(label: str, times: list[float]) -> str:
    ordered = sorted(times)
    p90 = ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]
    return (f"  {label:<9s} median {statistics.median(ordered):6.3f}  p90 {p90:6.3f}  max {ordered[-1]:6.3f}  "
            f"mean {statistics.fmean(ordered):6.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--space", default="hybrid")
    parser.add_argument("--samples", type=int, default=48)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")  # an uncounted op would warn on every candidate, on both paths alike

    space = load_space(args.space)
    rng = random.Random(args.seed)
    archs = [space.random(rng) for _ in range(args.samples)]
    _old(space.random(random.Random(args.seed + 1)))  # one-time imports, untimed

    # the three timings of a candidate are taken one after the other, so that a change in the machine's load
    # falls on all three alike
    clear_layer_cache()
    old, cold, warm, differ = [], [], [], []
    hits = lookups = 0
    for i, arch in enumerate(archs):
        seconds, expected = _timed(_old, arch)
        old.append(seconds)
        before = layer_cache_info()
        seconds, counts = _timed(count_arch, arch)
        after = layer_cache_info()
        warm.append(seconds)
        hits += after.hits - before.hits
        lookups += after.hits + after.misses - before.hits - before.misses
        if counts != expected:
            differ.append(f"candidate {i}: count_arch {counts} != whole network {expected}")
        cold.append(_timed_cold(arch))

    n = len(archs)
    print(f"space {space.name}, {n} candidates (seed {args.seed}) at {space.input_size} px, "
          f"{torch.get_num_threads()} torch thread(s); seconds per candidate:")
    print(_line("old", old))
    print(_line("cold", cold))
    print(_line("warming", warm))
    half = n // 2
    if half:
        print(_line("2nd half", warm[half:]))
    print(f"  warming cache after the sequence: {layer_cache_info().size} layers; {hits} hits / {lookups} lookups "
          f"({100 * hits / max(1, lookups):.0f} %)")
    print(f"  speed-up of the mean: cold {statistics.fmean(old) / statistics.fmean(cold):.1f}x, "
          f"warming {statistics.fmean(old) / statistics.fmean(warm):.1f}x")
    print(f"  counts equal on {n - len(differ)}/{n} candidates")
    for line in differ:
        print("  " + line)


if __name__ == "__main__":
    main()
