"""CPU forward latency of every operator in training form and deploy form, with FLOPs.

Prints one row per operator and shape: median latency of the training form (eval mode) and of the
re-parameterized deploy form, their ratio, the deploy-form FLOPs (multiply-adds) and milliseconds per GFLOP,
and with ``--ort`` the deploy form's latency in ONNX Runtime (exported as ``nas.export`` exports, intra-op
threads = ``--threads``, one inter-op thread, spinning off). Then the time
``count_flops`` takes on a four-stage network at 224 px, and neighbourhood attention (NAT) on its pure-torch
path against the ``natten`` package's kernels where that is installed (on CUDA: natten's 2D kernels with a
bias table are CUDA-only), else the pure path alone. Usage:

    python benchmarks/bench_operators.py [--batch 1] [--repeats 30] [--threads N] [--ops swin,acmix] [--ort]
                                         [--no-natten]

``--compare-old`` times only the operators rewritten for speed (issue 19) against their old gather / unfold
formulations (kept in ``benchmarks/old_formulations.py``), interleaved in one run, with the ratio new/old:

    taskset -c 0 python benchmarks/bench_operators.py --compare-old --ort --threads 1 --repeats 30
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

import operators
from nas.flops import count_flops, format_flops

SHAPES = [(64, 56), (256, 14)]  # (channels, side): stage 1 and stage 3 of a 224-px network


def median_ms(models: list[Callable], x: torch.Tensor, repeats: int) -> list[float]:
    """Median latency of each model; runs are interleaved so that drift and noise hit all models alike (on
    CUDA each run is synchronized before the clock stops)."""
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    times: list[list[float]] = [[] for _ in models]
    with torch.inference_mode():
        for model in models:
            model(x)
            model(x)
        for _ in range(repeats):
            for model, ts in zip(models, times):
                sync()
                t0 = time.perf_counter()
                model(x)
                sync()
                ts.append(time.perf_counter() - t0)
    return [1e3 * statistics.median(ts) for ts in times]


def ort_runner(model: nn.Module, x: torch.Tensor, threads: int) -> Callable[[torch.Tensor], object]:
    """``model`` exported to ONNX at ``x`` (fixed shapes, the export's own exporter) and run by ONNX Runtime's CPU
    provider with ``threads`` intra-op threads, one inter-op thread and spinning off (the ``ort-cpu`` target's
    settings); the returned callable ignores its argument and runs the session on ``x``."""
    import onnxruntime as ort

    from nas.export import _onnx_export

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "op.onnx"
        _onnx_export(model, x, path, dynamic=False)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: x.numpy()}
    return lambda _x: session.run(None, feed)


def ms_per_gflop(ms: float, flops: int) -> float:
    return ms / (flops / 1e9) if flops else float("nan")


def compare_old_rows(names: list[str], batch: int, repeats: int, threads: int, ort: bool) -> None:
    """The old (gather / unfold) formulation of each rewritten operator against the current one, the same
    weights and input, timed interleaved in one run, in eager PyTorch and (``ort``) ONNX Runtime."""
    from old_formulations import OLD_FORMS, old_form

    names = [n for n in names if n in OLD_FORMS]
    print(f"\nold formulation against the current one (interleaved, median of {repeats}); new/old < 1 is faster")
    header = (f"{'operator':22s} {'shape':>10s} {'GFLOPs':>7s} {'old ms':>8s} {'new ms':>8s} {'old ms/GF':>9s} "
              f"{'new ms/GF':>9s} {'new/old':>7s}" + (f" {'ort old':>8s} {'ort new':>8s} {'old ms/GF':>9s} "
                                                      f"{'new ms/GF':>9s} {'new/old':>7s}" if ort else ""))
    print(header)
    print("-" * len(header))
    for name in names:
        for kw in OLD_FORMS[name]:
            for chs, side in SHAPES:
                torch.manual_seed(0)
                new = operators.reparameterize_model(operators.create_op(name, chs, chs, **kw).eval())
                old = old_form(new)
                x = torch.randn(batch, chs, side, side)
                with torch.inference_mode():
                    diff = (old(x) - new(x)).abs().max().item()
                flops = count_flops(new, (batch, chs, side, side))
                t_old, t_new = median_ms([old, new], x, repeats)
                label = name + "".join(f",{k}={v}" for k, v in kw.items())
                row = (f"{label:22s} {f'{chs}x{side}':>10s} {flops / 1e9:7.3f} {t_old:8.2f} {t_new:8.2f} "
                       f"{ms_per_gflop(t_old, flops):9.1f} {ms_per_gflop(t_new, flops):9.1f} {t_new / t_old:7.2f}")
                if ort:
                    o_old, o_new = median_ms([ort_runner(old, x, threads), ort_runner(new, x, threads)], x, repeats)
                    row += (f" {o_old:8.2f} {o_new:8.2f} {ms_per_gflop(o_old, flops):9.1f} "
                            f"{ms_per_gflop(o_new, flops):9.1f} {o_new / o_old:7.2f}")
                print(row + f"   max|diff| {diff:.1e}", flush=True)


def four_stage_network() -> nn.Module:
    """A 224-px, four-stage hybrid (conv, conv, window attention, global attention) for timing count_flops."""
    layers: list[nn.Module] = [nn.Conv2d(3, 64, 4, 4)]
    plan = [("resnet_bottleneck", 64, 3), ("mbconv", 128, 3), ("swin", 256, 6), ("transformer", 512, 2)]
    cin = 64
    for i, (name, width, depth) in enumerate(plan):
        for j in range(depth):
            kw = {"shift": bool(j % 2)} if name == "swin" else {}
            layers.append(operators.create_op(name, cin, width, 2 if (i and not j) else 1, **kw))
            cin = width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, 1000)]
    return nn.Sequential(*layers)


def neighborhood_attention_rows(batch: int, repeats: int) -> None:
    """Pure-torch neighbourhood attention against natten's kernels (same inputs, outputs compared), per
    NAT-T stage shape at 224 px; natten needs CUDA, so without a GPU or without natten only the pure path runs."""
    from operators.nat import _natten_kernels, neighborhood_attention

    device = "cuda" if torch.cuda.is_available() else "cpu"
    natten = device == "cuda" and _natten_kernels() is not None
    print(f"\nneighbourhood attention, kernel 7, batch {batch}, {device}: pure torch"
          + (" against natten" if natten else " (natten: not installed or no CUDA device)"))
    print(f"{'heads x side':>14s} {'torch ms':>9s} {'natten ms':>9s} {'speed-up':>8s} {'max |diff|':>10s}")
    for heads, side in ((2, 56), (4, 28), (8, 14), (16, 7)):  # NAT-T's stages, head dim 32
        torch.manual_seed(0)
        q, k, v = (torch.randn(batch, heads, side * side, 32, device=device) for _ in range(3))
        rpb = torch.randn(heads, 13, 13, device=device) * 0.02

        def run(backend: str):
            return neighborhood_attention(q, k, v, rpb, side, side, 7, backend=backend)

        models = [lambda _x: run("torch")] + ([lambda _x: run("natten")] if natten else [])
        times = median_ms(models, q, repeats)
        if natten:
            diff = (run("torch") - run("natten")).abs().max().item()
            print(f"{f'{heads} x {side}':>14s} {times[0]:9.2f} {times[1]:9.2f} {times[0] / times[1]:8.2f} {diff:10.2e}")
        else:
            print(f"{f'{heads} x {side}':>14s} {times[0]:9.2f} {'-':>9s} {'-':>8s} {'-':>10s}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--ops", default="", help="comma-separated subset of operators (default: all)")
    parser.add_argument("--ort", action="store_true", help="also time the deploy form in ONNX Runtime")
    parser.add_argument("--compare-old", action="store_true",
                        help="only time the rewritten operators against their old formulations")
    parser.add_argument("--no-natten", action="store_true", help="skip the neighbourhood-attention comparison")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    names = [n for n in args.ops.split(",") if n] or operators.list_ops()

    print(f"torch {torch.__version__}, {args.threads} threads, batch {args.batch}, median of {args.repeats}")
    if args.compare_old:
        compare_old_rows(names, args.batch, args.repeats, args.threads, args.ort)
        return
    header = (f"{'operator':22s} {'shape':>12s} {'train ms':>9s} {'deploy ms':>9s} {'ratio':>6s} {'FLOPs':>9s} "
              f"{'train FLOPs':>11s} {'ms/GF':>7s}" + (f" {'ort ms':>8s} {'ort ms/GF':>9s}" if args.ort else ""))
    print(header)
    print("-" * len(header))
    for name in names:
        for chs, side in SHAPES:
            torch.manual_seed(0)
            op = operators.create_op(name, chs, chs).eval()
            deploy = operators.reparameterize_model(op)
            x = torch.randn(args.batch, chs, side, side)
            t_train, t_deploy = median_ms([op, deploy], x, args.repeats)
            shape = (args.batch, chs, side, side)
            flops = count_flops(op, shape)
            row = (f"{name:22s} {f'{chs}x{side}x{side}':>12s} {t_train:9.2f} {t_deploy:9.2f} "
                   f"{t_train / t_deploy:6.2f} {format_flops(flops):>9s} "
                   f"{format_flops(count_flops(op, shape, deploy=False)):>11s} {ms_per_gflop(t_deploy, flops):7.1f}")
            if args.ort:
                (t_ort,) = median_ms([ort_runner(deploy, x, args.threads)], x, args.repeats)
                row += f" {t_ort:8.2f} {ms_per_gflop(t_ort, flops):9.1f}"
            print(row, flush=True)

    net = four_stage_network()
    t0 = time.perf_counter()
    flops = count_flops(net)
    elapsed = time.perf_counter() - t0
    print(f"\ncount_flops on a four-stage network (bottleneck/mbconv/swin/transformer, 224 px): "
          f"{format_flops(flops)} in {elapsed:.2f} s")
    if not args.no_natten:
        neighborhood_attention_rows(args.batch, args.repeats)


if __name__ == "__main__":
    main()
