"""What one proxy epoch of a reference costs, LeViT's against the others (issue 18).

    OMP_NUM_THREADS=1 python benchmarks/bench_proxy_cost.py [--archs levit_384 resnet50 swin_t] [--repeats 3]

Each repeat trains every named reference's proxy for one epoch under the search's default proxy settings
(``ProxySettings()`` but ``epochs=1``: 1536 training images, width 0.25, batch 64, then the 1000 validation
images) on a CIFAR-shaped random set (3x32x32, 10 classes: the cost does not depend on the pixels), one
after the other, so that a shared machine's load falls on all of them alike. Printed per reference: the
proxy's stage maps against the target's, its forward multiply-adds per image, and the median seconds per
epoch with the range over repeats; then the median over repeats of each ratio to the first reference.
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import statistics
import time

import torch

from nas.data import ImageData
from nas.flops import count_flops
from nas.proxy import ProxySettings, build_proxy, stage_maps, train_arch
from nas.space import load_reference


def random_cifar(n_train: int, n_val: int, seed: int = 0) -> ImageData:
    """Uniform uint8 noise shaped like CIFAR-10's training split, labels uniform over 10 classes."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n_train + n_val, 3, 32, 32), generator=gen, dtype=torch.uint8)
    y = torch.randint(0, 10, (n_train + n_val,), generator=gen)
    return ImageData(name="random-cifar", train_x=x[:n_train], train_y=y[:n_train], val_x=x[n_train:],
                     val_y=y[n_train:], num_classes=10, mean=(0.5,) * 3, std=(0.29,) * 3, source="synthetic")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--archs", nargs="+", default=["levit_384", "resnet50", "swin_t"], help="references to time")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    if args.repeats < 1:
        p.error(f"--repeats {args.repeats}: give at least 1")
    torch.set_num_threads(args.threads)
    settings = dataclasses.replace(ProxySettings(), epochs=1)
    data = random_cifar(settings.max_train, 1000)
    archs = {name: load_reference(name) for name in args.archs}
    print(f"torch {torch.__version__}, {args.threads} thread(s), {platform.processor() or platform.machine()}; "
          f"proxy: {settings.max_train} images, width {settings.width_mult}, batch {settings.batch_size}, "
          f"{data.image_size} px; one epoch + {len(data.val_y)} validation images; {args.repeats} repeats")
    seconds: dict[str, list[float]] = {name: [] for name in archs}
    for _ in range(args.repeats):
        for name, arch in archs.items():
            t0 = time.perf_counter()
            train_arch(arch, data, settings, seed=0, threads=args.threads)
            seconds[name].append(time.perf_counter() - t0)
    first = args.archs[0]
    print(f"{'reference':14s} {'target maps':18s} {'proxy maps':14s} {'proxy MFLOPs':>12s} "
          f"{'s/epoch (median)':>16s} {'range':>13s} {'ratio ' + first:>18s}")
    for name, arch in archs.items():
        model = build_proxy(arch, data, settings, seed=0)
        flops = count_flops(model, (1, data.in_chans, data.image_size, data.image_size), deploy=False)
        ratio = statistics.median(a / b for a, b in zip(seconds[first], seconds[name]))
        print(f"{name:14s} {str(stage_maps(arch, arch.input_size)):18s} {str(stage_maps(arch, data.image_size)):14s} "
              f"{flops / 1e6:12.1f} {statistics.median(seconds[name]):16.1f} "
              f"{min(seconds[name]):6.1f}-{max(seconds[name]):<6.1f} {ratio:18.2f}")


if __name__ == "__main__":
    main()
