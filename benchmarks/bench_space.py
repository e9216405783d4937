"""Sampling, building and counting candidates of a space, and the FLOPs distribution of its samples.

    python benchmarks/bench_space.py [--space hybrid] [--samples 200] [--seed 0]

Prints the mean time of each step per candidate (sample an Arch, build the full-size network without
initializing it, count its deploy-form FLOPs at the target input; and, for comparison, a build with
random init), then quantiles of the FLOPs over the samples, and where a 4.5 GFLOPs budget falls.
"""

from __future__ import annotations

import argparse
import bisect
import random
import time

from nas.flops import count_flops, format_flops
from nas.network import build, build_uninitialized
from nas.space import load_space


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--space", default="hybrid")
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--budget", type=float, default=4.5e9)
    args = parser.parse_args()

    t0 = time.perf_counter()
    space = load_space(args.space)
    print(f"space {space.name}: loaded and validated in {time.perf_counter() - t0:.2f} s; "
          f"{space.size():,} architectures")
    rng = random.Random(args.seed)
    t_sample = t_build = t_count = 0.0
    flops = []
    for _ in range(args.samples):
        t0 = time.perf_counter()
        arch = space.random(rng)
        t1 = time.perf_counter()
        net = build_uninitialized(arch)
        t2 = time.perf_counter()
        flops.append(count_flops(net))
        t3 = time.perf_counter()
        t_sample, t_build, t_count = t_sample + t1 - t0, t_build + t2 - t1, t_count + t3 - t2
    n = args.samples
    t0 = time.perf_counter()
    for _ in range(5):
        build(space.random(rng))
    t_init = (time.perf_counter() - t0) / 5
    print(f"per candidate: sample {1e3 * t_sample / n:.1f} ms, build {1e3 * t_build / n:.0f} ms "
          f"(with random init {1e3 * t_init:.0f} ms), count_flops {1e3 * t_count / n:.0f} ms, "
          f"total {1e3 * (t_sample + t_build + t_count) / n:.0f} ms")
    flops.sort()
    qs = (0.0, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 1.0)
    print(f"FLOPs of {n} random samples (deploy form, 224 px):")
    print("  " + "  ".join(f"q{int(100 * q):02d} {format_flops(flops[round(q * (n - 1))]):>8s}" for q in qs))
    below = bisect.bisect_right(flops, args.budget)
    print(f"  a {format_flops(args.budget)} budget admits {below}/{n} ({100 * below / n:.0f} %) of them")


if __name__ == "__main__":
    main()
