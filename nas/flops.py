"""FLOPs and parameters of a network, the way opmix states every cost.

Convention (fvcore's): one fused multiply-add is one FLOP, so "4.5 GFLOPs" means 4.5e9 multiply-adds, the
unit of the ResNet-50 (4.1 G), Swin-T (4.5 G) and ConvNeXt-T (4.5 G) papers. Counts are taken on the deploy
form (every ``reparameterize()`` applied, on a copy) at the target input, default 1x3x224x224.

fvcore counts convolutions, linear layers, matmuls, einsums and norms. Three tables below complete it:
- ``EXTRA_HANDLES``: ops that do multiply-adds and that fvcore misses (scaled-dot-product attention:
  q k^T and attention x V, 2 x batch x heads x N_q x N_k x head_dim);
- ``ZERO_OPS``: ops that do no multiply-adds by this convention (elementwise arithmetic, activations,
  softmax, pooling, reductions, data movement), ignored explicitly rather than silently;
- anything else is reported once per call as a warning that lists it, and ``unsupported_ops`` returns it
  so that tests can insist that the catalog meets none.

``count_arch(arch)`` gives the deploy-form FLOPs and parameters of ``build(arch)`` without building or
tracing the whole network: each layer (the stem, a downsampler, a block, the head) costs what its own
constructor arguments and input shape say, so it is counted alone and remembered (see ``count_arch``).
"""

from __future__ import annotations

import copy
import json
import math
import re
import threading
import warnings
from collections import Counter, OrderedDict
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import nn

from .arch import Arch
from .errors import OpmixError

__all__ = ["count_flops", "count_params", "count_arch", "arch_layers", "Layer", "measure_arch", "layer_cache_info", "clear_layer_cache", "flop_analysis",
           "unsupported_ops", "parse_budget", "format_flops"]


def _shape(value: Any) -> list[int]:
    return list(value.type().sizes())


def sdpa_flop_jit(inputs: list[Any], outputs: list[Any]) -> int:
    """aten::scaled_dot_product_attention(q, k, v, ...): q k^T then attention x V, in multiply-adds."""
    q, k, v = (_shape(x) for x in inputs[:3])
    batch = math.prod(q[:-2])
    n_q, d_qk = q[-2], q[-1]
    n_k, d_v = k[-2], v[-1]
    return batch * n_q * n_k * (d_qk + d_v)


EXTRA_HANDLES = {
    "aten::scaled_dot_product_attention": sdpa_flop_jit,
}

ZERO_OPS = (
    # elementwise arithmetic (a multiply without an accumulate is not a multiply-add)
    "aten::add", "aten::add_", "aten::sub", "aten::rsub", "aten::mul", "aten::mul_", "aten::div",
    "aten::div_", "aten::neg", "aten::sqrt", "aten::rsqrt", "aten::exp", "aten::pow",
    # activations and normalisers of probabilities
    "aten::gelu", "aten::sigmoid", "aten::silu", "aten::silu_", "aten::hardswish", "aten::tanh",
    "aten::softmax", "aten::relu6", "aten::hardtanh",
    # pooling and reductions
    "aten::avg_pool2d", "aten::max_pool2d", "aten::mean", "aten::sum", "aten::adaptive_max_pool2d",
    # data movement and indexing
    "aten::im2col", "aten::pad", "aten::linspace", "aten::meshgrid", "aten::ones_like", "aten::repeat",
    "aten::where", "aten::masked_fill_", "aten::fill_", "aten::clone", "aten::expand_as", "aten::lt",
    "aten::le", "aten::ne", "aten::logical_not", "aten::bitwise_or", "aten::eye",
    "aten::scalar_tensor", "aten::chunk", "aten::new_ones", "aten::__or__",
)


def flop_analysis(model: nn.Module, inputs: tuple[torch.Tensor, ...]):
    """An fvcore ``FlopCountAnalysis`` with opmix's handles and explicit zero ops, warnings silenced."""
    from fvcore.nn import FlopCountAnalysis

    analysis = FlopCountAnalysis(model, inputs)
    analysis.set_op_handle(**EXTRA_HANDLES, **{op: None for op in ZERO_OPS})
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    analysis.tracer_warnings("none")
    return analysis


def _deploy_copy(model: nn.Module, deploy: bool) -> nn.Module:
    from operators import reparameterize_model

    model = copy.deepcopy(model).eval()
    return reparameterize_model(model, inplace=True) if deploy else model


def _example(model: nn.Module, input_shape: tuple[int, ...]) -> torch.Tensor:
    ref = next(model.parameters(), None)
    device = ref.device if ref is not None else torch.device("cpu")
    dtype = ref.dtype if ref is not None and ref.is_floating_point() else torch.float32
    return torch.zeros(input_shape, device=device, dtype=dtype)


def count_flops(model: nn.Module, input_shape: tuple[int, ...] = (1, 3, 224, 224), deploy: bool = True) -> int:
    """Multiply-adds of one forward pass at ``input_shape``, on a (re-parameterized) copy of ``model``.

    The model passed in is never modified. Ops that fvcore cannot count and that are not known to be free
    are listed in a single warning.
    """
    net = _deploy_copy(model, deploy)
    with torch.no_grad():
        analysis = flop_analysis(net, (_example(net, input_shape),))
        total = int(analysis.total())
        missing = _missing(analysis)
    if missing:
        listed = ", ".join(f"{op} x{n}" for op, n in sorted(missing.items()))
        warnings.warn(f"count_flops: these ops were not counted (no handle registered): {listed}",
                      stacklevel=2)
    return total


def unsupported_ops(model: nn.Module, input_shape: tuple[int, ...] = (1, 3, 224, 224),
                    deploy: bool = True) -> Counter:
    """The ops of ``model``'s forward pass that neither fvcore, ``EXTRA_HANDLES`` nor ``ZERO_OPS`` cover."""
    net = _deploy_copy(model, deploy)
    with torch.no_grad():
        analysis = flop_analysis(net, (_example(net, input_shape),))
        analysis.total()
        return _missing(analysis)


def _missing(analysis) -> Counter:
    return Counter({op: n for op, n in analysis.unsupported_ops().items() if op not in ZERO_OPS})


def count_params(model: nn.Module, deploy: bool = True) -> int:
    """Number of parameters (of the deploy form by default; the model passed in is never modified)."""
    net = _deploy_copy(model, deploy) if deploy else model
    return sum(p.numel() for p in net.parameters())


class _LayerCount(NamedTuple):
    flops: int
    params: int
    out_shape: tuple[int, ...]
    missing: tuple[tuple[str, int], ...]  # ops neither fvcore, EXTRA_HANDLES nor ZERO_OPS cover, with counts


class LayerCacheInfo(NamedTuple):
    hits: int
    misses: int
    size: int
    maxsize: int


LAYER_CACHE_SIZE = 8192  # layers count_arch remembers (under 1 kB each), the least recently used dropped first
_layer_cache: OrderedDict[tuple, _LayerCount] = OrderedDict()
_layer_stats = {"hits": 0, "misses": 0}
_layer_lock = threading.Lock()


def layer_cache_info() -> LayerCacheInfo:
    """Hits, misses and size of ``count_arch``'s cache of layer counts (as ``functools.lru_cache`` reports)."""
    with _layer_lock:
        return LayerCacheInfo(_layer_stats["hits"], _layer_stats["misses"], len(_layer_cache), LAYER_CACHE_SIZE)


def clear_layer_cache() -> None:
    """Forget every layer count and reset the hit and miss counters."""
    with _layer_lock:
        _layer_cache.clear()
        _layer_stats.update(hits=0, misses=0)


def _recorder(factory: Callable[..., nn.Module]) -> Callable[..., tuple]:
    """A stand-in for ``factory`` that returns its call, ``(factory, args, kwargs)``, instead of a module."""
    return lambda *args, **kwargs: (factory, args, kwargs)


def _layer_calls(arch: Arch) -> list[tuple[str, Callable[..., nn.Module], tuple, dict[str, Any]]]:
    """``(part, constructor, args, kwargs)`` of every layer of ``build(arch)``, in forward order, none of them
    built; ``part`` is the module it lies in: ``stem``, ``stages.<i>`` or ``head``.

    The stages go through ``nas.network.stage_layers`` itself (with constructors that record their call), so
    the downsampling rule, the first block's stride and width change and the alternating keywords are the
    builder's own. Only the full-size network (``width_mult`` 1, the Arch's own input) is described."""
    import operators

    from .network import Head, downsampler, make_stem, stage_layers, stem_kind

    calls = [("stem", make_stem, (stem_kind(arch), arch.in_chans, arch.stem.width), {})]
    cin = arch.stem.width
    for i, stage in enumerate(arch.stages):
        spec = operators.get_spec(stage.op)
        down = downsampler(stage.downsample)
        calls += [(f"stages.{i}", *call) for call in
                  stage_layers(_recorder(spec.factory), cin, stage.width, stage.depth, stage.stride,
                               spec.alternate, down and _recorder(down), **stage.kwargs)]
        cin = stage.width
    calls.append(("head", Head, (arch.head.type, cin, arch.num_classes, arch.head.hidden), {}))
    return calls


def _count_layer(factory: Callable[..., nn.Module], args: tuple, kwargs: dict[str, Any],
                 input_shape: tuple[int, ...]) -> _LayerCount:
    """Build one layer without initializing it (as ``build_uninitialized``), re-parameterize it in place and
    trace it once on zeros of ``input_shape``; the trace also gives the output shape."""
    from operators import reparameterize_model

    with torch.device("meta"):
        layer = factory(*args, **kwargs)
    layer = reparameterize_model(layer.to_empty(device="cpu").eval(), inplace=True)
    outputs: list[torch.Tensor] = []
    hook = layer.register_forward_hook(lambda module, inputs, output: outputs.append(output))
    with torch.no_grad():
        analysis = flop_analysis(layer, (_example(layer, input_shape),))
        flops = int(analysis.total())
    hook.remove()
    missing = tuple(sorted(_missing(analysis).items()))
    return _LayerCount(flops, sum(p.numel() for p in layer.parameters()), tuple(outputs[-1].shape), missing)


class Layer(NamedTuple):
    """One layer of ``build(arch)`` as ``arch_layers`` describes it: where it lies (``stem``, ``stages.<i>``,
    ``head``), its constructor call, its input shape, and its deploy-form count."""
    part: str
    factory: Callable[..., nn.Module]
    args: tuple
    kwargs: dict[str, Any]
    input_shape: tuple[int, ...]
    count: _LayerCount

    def build(self) -> nn.Module:
        """The layer itself, initialized by its constructor."""
        return self.factory(*self.args, **self.kwargs)


def arch_layers(arch: Arch, input_shape: tuple[int, ...] | None = None) -> list[Layer]:
    """Every layer of ``build(arch)`` in forward order with its input shape and deploy-form count, each
    counted alone and remembered (see ``count_arch``, which sums them). Latency tables are keyed the same way
    (``nas.latency``)."""
    shape = tuple(input_shape or (1, arch.in_chans, arch.input_size, arch.input_size))
    layers = []
    for part, factory, args, kwargs in _layer_calls(arch):
        # values keep their type: True == 1 and 4 == 4.0 as keys, but not necessarily as arguments
        key = (factory, args, tuple((k, type(v), v) for k, v in sorted(kwargs.items())), shape)
        with _layer_lock:
            count = _layer_cache.get(key)
            if count is not None:
                _layer_cache.move_to_end(key)
                _layer_stats["hits"] += 1
        if count is None:
            count = _count_layer(factory, args, kwargs, shape)
            with _layer_lock:
                _layer_stats["misses"] += 1
                _layer_cache[key] = count
                while len(_layer_cache) > LAYER_CACHE_SIZE:
                    _layer_cache.popitem(last=False)
        layers.append(Layer(part, factory, args, kwargs, shape, count))
        shape = count.out_shape
    return layers


def count_arch(arch: Arch, input_shape: tuple[int, ...] | None = None) -> tuple[int, int]:
    """(FLOPs, parameters) of ``build(arch)``'s deploy form at ``input_shape``, default ``(1, in_chans, S, S)``
    with S the Arch's input size: exactly ``count_flops`` and ``count_params`` of the whole network, faster.

    A network is its stem, then each stage's downsampler (if any) and blocks, then the head, and each of these
    layers' counts depend only on its constructor call and its input shape. So every layer is counted alone
    (built uninitialized, re-parameterized, traced on zeros), and its (FLOPs, parameters, output shape) are kept
    in a module-level cache under that call and shape: blocks 2..depth of a stage differ at most by the
    alternating keywords (Swin's shift), so a stage's blocks cost at most three traces whatever its depth, and
    later candidates reuse every layer an earlier one counted. The cache holds the ``LAYER_CACHE_SIZE`` most recently
    used layers; ``layer_cache_info`` reports it. Ops that could not be counted are listed in one warning per
    call, as ``count_flops`` does. The stem is the Arch's own (``stem_kind`` at its input size) whatever
    ``input_shape`` says, as in ``count_flops(build_uninitialized(arch), input_shape)``.
    """
    layers = arch_layers(arch, input_shape)
    missing: Counter = Counter()
    for layer in layers:
        missing.update(dict(layer.count.missing))
    if missing:
        listed = ", ".join(f"{op} x{n}" for op, n in sorted(missing.items()))
        warnings.warn(f"count_arch: these ops were not counted (no handle registered): {listed}", stacklevel=2)
    return sum(layer.count.flops for layer in layers), sum(layer.count.params for layer in layers)


def measure_arch(arch: Arch) -> tuple[int, int]:
    """How the search, the calibration and the export measure a candidate: ``count_arch`` at the Arch's own
    input, on one torch thread (tracing many small layers, one thread is several times faster than two on
    a busy machine: ``benchmarks/bench_flops.py``); the process's thread count is restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return count_arch(arch)
    finally:
        torch.set_num_threads(threads)


_UNITS = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}
_BUDGET = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([kmgt]?)\s*(?:flops?)?\s*$", re.IGNORECASE)
_ACCEPTED = "a positive number with an optional unit K, M, G or T and optional 'FLOPs', e.g. 4.5GFLOPs, 4.5G, " \
            "4500MFLOPs, 600M or 4.5e9"


def parse_budget(text: str) -> int:
    """'4.5GFLOPs' -> 4_500_000_000 multiply-adds. Case and spaces do not matter."""
    match = _BUDGET.match(str(text))
    if not match:
        raise OpmixError(f"budget {text!r} is not understood; write {_ACCEPTED}")
    value = float(match.group(1)) * _UNITS[match.group(2).lower()]
    if not math.isfinite(value) or value < 1:
        raise OpmixError(f"budget {text!r} must be at least one FLOP; write {_ACCEPTED}")
    return int(round(value))


def format_flops(flops: float) -> str:
    """4_480_000_000 -> '4.48 G'."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(flops) >= scale:
            return f"{flops / scale:.3g} {unit}"
    return f"{flops:.0f}"


def stage_breakdown(model: nn.Module, input_shape: tuple[int, ...], deploy: bool = True) -> dict[str, int]:
    """FLOPs of each top-level part of an opmix network: ``stem``, ``stages.0`` ... , ``head``."""
    net = _deploy_copy(model, deploy)
    with torch.no_grad():
        analysis = flop_analysis(net, (_example(net, input_shape),))
        per_module = analysis.by_module()
    names = ["stem", *(f"stages.{i}" for i in range(len(getattr(net, "stages", [])))), "head"]
    return {name: int(per_module.get(name, 0)) for name in names}


def part_label(arch: Arch, name: str) -> str:
    """'stage 2 (swin x2, 192)' for ``stages.1``; ``stem`` and ``head`` as they are: how the commands that
    break a network down (``nas.flops``, ``nas.latency``) name its parts."""
    if not name.startswith("stages."):
        return name
    i = int(name.split(".")[1])
    s = arch.stages[i]
    return f"stage {i + 1} ({s.op} x{s.depth}, {s.width})"


PROG = "python -m nas.flops"


def _main(argv: list[str] | None) -> int:
    from . import _cli, plugins
    from .arch import load_arch

    parser = _cli.Parser(prog=PROG, description="FLOPs (multiply-adds, deploy form) and parameters of an "
                                                "architecture YAML at its target input.")
    parser.add_argument("arch", help="an arch YAML file (a reference, or arch.yaml of a run or export)")
    parser.add_argument("--input", default=None, metavar="CxHxW",
                        help="input shape, e.g. 3x224x224 (default: the arch's own input)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    plugins.add_import_flag(parser)
    args = parser.parse_args(argv)
    plugins.import_modules(args.imports)

    from .network import build

    arch = load_arch(args.arch)
    c, h, w = _cli.parse_input_shape(args.input) if args.input else (arch.in_chans,) + (arch.input_size,) * 2
    if c != arch.in_chans:
        raise OpmixError(f"--input has {c} channels but the arch takes {arch.in_chans}; "
                         f"give {arch.in_chans}x{h}x{w}")
    net = build(arch)
    shape = (1, c, h, w)
    flops, train_flops = count_flops(net, shape), count_flops(net, shape, deploy=False)
    params, train_params = count_params(net), count_params(net, deploy=False)
    stages = stage_breakdown(net, shape)
    if args.json:
        print(json.dumps({"arch": args.arch, "input": [c, h, w], "flops": flops, "params": params,
                          "train_flops": train_flops, "train_params": train_params, "stages": stages}))
        return 0
    print(f"{args.arch} at {c}x{h}x{w} (one multiply-add = one FLOP)")
    print(f"  FLOPs   {format_flops(flops):>9s}  deploy form" +
          (f"   ({format_flops(train_flops)} in training form)" if train_flops != flops else ""))
    print(f"  params  {params / 1e6:8.2f} M deploy form" +
          (f"   ({train_params / 1e6:.2f} M in training form)" if train_params != params else ""))
    for name, part in stages.items():
        print(f"    {part_label(arch, name):32s} {format_flops(part):>9s}  {100 * part / flops:5.1f} %")
    return 0


def main(argv: list[str] | None = None) -> None:
    """``python -m nas.flops ARCH.yaml [--input 3x224x224] [--json]``: FLOPs and parameters of an Arch."""
    from . import _cli

    _cli.run(PROG, _main, argv)


if __name__ == "__main__":
    main()
