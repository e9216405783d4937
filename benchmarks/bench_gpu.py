"""The proxy's training step, eager against CUDA graphs and ``torch.compile``, compile time counted (issue 22).

    python benchmarks/bench_gpu.py [--arch 16] [--variants eager,graphs,compile,compile-ro] [--steps 60]

One architecture of a calibration folder (``--archs``, default the whole-catalog CIFAR-10 one; ``--arch``: its
index) is built as the search builds its proxy (``nas.proxy.build_proxy``: width 0.25, 32 px, 10 classes) and
trained step by step as ``nas.train`` trains it: uint8 images on the device, normalized and augmented there
(``nas.train._batch``), bfloat16 autocast and channels-last memory on CUDA, label smoothing, AdamW with the
trainer's parameter groups. The images are uniform noise shaped like CIFAR-10 (the cost does not depend on the
pixels). The variants:

- ``eager``: the trainer as it is;
- ``graphs``: ``torch.cuda.make_graphed_callables`` over the network's forward and backward (one CUDA graph
  replay each; the batch preparation and the optimizer step stay eager); CUDA only;
- ``compile``: ``torch.compile`` of the network (``--backend``, default inductor);
- ``compile-ro``: ``torch.compile(mode="reduce-overhead")``: inductor's kernels replayed as CUDA graphs; CUDA only.

Per variant: ``setup_s``, the seconds of building, compiling or capturing and the ``--warmup`` steps;
``step_ms``, the median over ``--blocks`` blocks of the mean step time (synchronized at the ends of a block
only, as the trainer reads the loss every ``SYNC_EVERY`` steps); and ``proxy_s``, what a default proxy's
``PROXY_STEPS`` training steps cost with the setup counted in: ``setup_s + (PROXY_STEPS - warmup) *
step_ms``. A variant pays when its ``proxy_s`` is below eager's. (A compiled network is compiled again for the
trainer's evaluation in eval mode; that cost is not in ``proxy_s``.) With ``--macs`` (the proxy's forward
multiply-adds per image; counted with fvcore when left out and fvcore is there) each row also has the share of
the bf16 matrix peak that ``bench_search.matmul_gflops`` measures.

On a CPU (``--device cpu``), ``graphs`` and ``compile-ro`` are left out, and ``--backend aot_eager`` traces and
runs the compile path without inductor's C++ build (tens of seconds on 2 cores): that is what the test runs.
``--jsonl PATH`` appends one JSON line per variant as it finishes (``benchmarks/gpu_session.py`` reads them).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

VARIANTS = ("eager", "graphs", "compile", "compile-ro")
CUDA_ONLY = ("graphs", "compile-ro")
PROXY_STEPS = 96  # the default proxy: 1536 images / batch 64 x 4 epochs
CATALOG = ROOT / "benchmarks" / "results" / "calibration" / "cifar10-catalog"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def prepare(model: torch.nn.Module, variant: str, sample: torch.Tensor, backend: str = "inductor"
            ) -> Callable[[torch.Tensor], torch.Tensor]:
    """``model``'s forward as ``variant`` runs it (the module docstring), for batches shaped like ``sample``."""
    if variant == "eager":
        return model
    if variant == "compile":
        return torch.compile(model, backend=backend)
    if variant == "compile-ro":
        return torch.compile(model, mode="reduce-overhead")
    if variant == "graphs":
        # autocast's weight cast cache must be off while graphing (the graph would keep stale bf16 copies)
        with torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False):
            return torch.cuda.make_graphed_callables(model, (sample,), allow_unused_input=True)
    raise ValueError(f"variant {variant!r} is not known; use one of {', '.join(VARIANTS)}")


def step_speed(model: torch.nn.Module, data, variant: str, *, device: str | torch.device, steps: int = 60,
               warmup: int = 5, blocks: int = 3, batch_size: int = 64, lr: float = 3e-3, weight_decay: float = 0.05,
               backend: str = "inductor", seed: int = 0) -> dict[str, Any]:
    """Time ``variant`` of the proxy's training step of ``model`` on ``data`` (uint8 ``ImageData``): the
    module docstring's ``setup_s``, ``step_ms`` and ``proxy_s``. ``steps`` timed steps in ``blocks`` blocks,
    after ``warmup`` steps that are part of the setup."""
    from nas.train import _batch, _param_groups

    device = torch.device(device)
    cuda = device.type == "cuda"
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = model.to(device)
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    x, y = data.train_x.to(device), data.train_y.to(device)
    mean = torch.tensor(data.mean, device=device).view(1, -1, 1, 1)
    std = torch.tensor(data.std, device=device).view(1, -1, 1, 1)
    opt = torch.optim.AdamW(_param_groups(model, weight_decay), lr=lr)

    def batch() -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.randint(0, len(x), (batch_size,), generator=gen).to(device)
        return _batch(x, idx, mean, std, gen, channels_last=cuda), y[idx]

    forward = prepare(model, variant, batch()[0], backend)

    def step() -> None:
        xb, yb = batch()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda, cache_enabled=variant != "graphs"):
            loss = F.cross_entropy(forward(xb), yb, label_smoothing=0.1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(warmup):
        step()
    _sync(device)
    setup_s = time.perf_counter() - t0
    per_block = max(1, steps // blocks)
    means = []
    for _ in range(blocks):
        t1 = time.perf_counter()
        for _ in range(per_block):
            step()
        _sync(device)
        means.append((time.perf_counter() - t1) / per_block)
    step_s = statistics.median(means)
    return {"variant": variant, "setup_s": round(setup_s, 3), "step_ms": round(1000 * step_s, 3),
            "proxy_s": round(setup_s + max(0, PROXY_STEPS - warmup) * step_s, 3), "batch_size": batch_size,
            "steps": per_block * blocks, "warmup": warmup, "device": device_name(device)}


def device_name(device: torch.device | str) -> str:
    device = torch.device(device)
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def load_arch(archs: Path, index: int):
    from nas.arch import Arch

    rows = [json.loads(line) for line in archs.read_text().splitlines() if line.strip()]
    row = next((r for r in rows if r["index"] == index), None)
    if row is None:
        raise SystemExit(f"{archs}: no architecture with index {index} (0..{len(rows) - 1})")
    return Arch.from_dict(row["arch"])


def proxy_macs(model: torch.nn.Module, data) -> int | None:
    """The forward multiply-adds per image of ``model`` (training form), or None without fvcore."""
    try:
        from nas.flops import count_flops

        return int(count_flops(model, (1, data.in_chans, data.image_size, data.image_size), deploy=False))
    except ImportError:
        return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--archs", type=Path, default=CATALOG / "archs.jsonl", help="a calibration's archs.jsonl")
    p.add_argument("--arch", type=int, default=16, help="the architecture's index in it (default: 16)")
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated, of " + ", ".join(VARIANTS))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--width-mult", type=float, default=0.25)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--images", type=int, default=1536, help="training images on the device (default: 1536)")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--blocks", type=int, default=3)
    p.add_argument("--backend", default="inductor", help="torch.compile's backend for 'compile' (CPU test: aot_eager)")
    p.add_argument("--macs", type=int, default=None,
                   help="the proxy's forward multiply-adds per image (0: not known; default: counted with fvcore)")
    p.add_argument("--peak", type=float, default=None, help="the matrix peak in G multiply-adds/s (default: measured)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--jsonl", type=Path, default=None, help="append one JSON line per variant here")
    p.add_argument("--tag", default=None, help="a JSON object merged into every line written (--jsonl)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from bench_proxy_cost import random_cifar
    from nas.proxy import ProxySettings, build_proxy
    from nas.rundir import append_jsonl

    device = torch.device(args.device)
    variants = [v for v in args.variants.split(",") if v]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        raise SystemExit(f"--variants: {', '.join(sorted(unknown))} not known; use {', '.join(VARIANTS)}")
    data = random_cifar(args.images, 8)
    if args.image_size != 32:
        from nas.data import resize_data

        data = resize_data(data, args.image_size)
    arch = load_arch(args.archs, args.arch)
    settings = ProxySettings(width_mult=args.width_mult, batch_size=args.batch_size)
    macs = args.macs if args.macs is not None else proxy_macs(build_proxy(arch, data, settings, 0), data)
    macs = macs or None  # --macs 0: not known
    peak = args.peak
    if peak is None and device.type == "cuda":
        from bench_search import matmul_gflops

        peak = matmul_gflops()[0]
    tag = json.loads(args.tag) if args.tag else {}
    print(f"arch {args.arch} proxy (width {args.width_mult:g}, {args.image_size} px, batch {args.batch_size}) on "
          f"{device_name(device)}, torch {torch.__version__}; forward {macs / 1e6 if macs else math.nan:.1f} M "
          f"multiply-adds/image; peak {peak or math.nan:.0f} G multiply-adds/s", flush=True)
    print(f"{'variant':>11s} {'setup s':>8s} {'step ms':>8s} {'proxy s':>8s} {'% peak':>7s}", flush=True)
    for variant in variants:
        if variant in CUDA_ONLY and device.type != "cuda":
            print(f"{variant:>11s}  (CUDA only: left out)", flush=True)
            if args.jsonl:
                append_jsonl(args.jsonl, {"variant": variant, "skipped": "CUDA only", "device": "cpu", **tag})
            continue
        model = build_proxy(arch, data, settings, 0)
        try:
            row = step_speed(model, data, variant, device=device, steps=args.steps, warmup=args.warmup,
                             blocks=args.blocks, batch_size=args.batch_size, backend=args.backend)
        except Exception as exc:  # noqa: BLE001 -- a variant that cannot run is a result too
            row = {"variant": variant, "error": f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1:]}"[:300],
                   "device": device_name(device)}
        rate = 3 * macs * args.batch_size / (row["step_ms"] / 1000) / 1e9 if macs and "step_ms" in row else None
        row.update({"arch": args.arch, "width_mult": args.width_mult, "macs": macs, "peak_gmacs": peak,
                    "share_of_peak": rate / peak if rate and peak else None, **tag})
        if "error" in row:
            print(f"{variant:>11s}  FAILED: {row['error']}", flush=True)
        else:
            share = f"{100 * row['share_of_peak']:6.2f}%" if row["share_of_peak"] is not None else "     -"
            print(f"{variant:>11s} {row['setup_s']:8.2f} {row['step_ms']:8.2f} {row['proxy_s']:8.2f} {share}",
                  flush=True)
        if args.jsonl:
            append_jsonl(args.jsonl, row)
        del model
        torch._dynamo.reset()
    return 0


if __name__ == "__main__":
    sys.exit(main())
