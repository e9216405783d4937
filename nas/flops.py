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
"""

from __future__ import annotations

import copy
import math
import re
import warnings
from collections import Counter
from typing import Any

import torch
from torch import nn

__all__ = ["count_flops", "count_params", "flop_analysis", "unsupported_ops", "parse_budget", "format_flops"]


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


_UNITS = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}
_BUDGET = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([kmgt]?)\s*(?:flops?)?\s*$", re.IGNORECASE)
_ACCEPTED = "a positive number with an optional unit K, M, G or T and optional 'FLOPs', e.g. 4.5GFLOPs, 4.5G, " \
            "4500MFLOPs, 600M or 4.5e9"


def parse_budget(text: str) -> int:
    """'4.5GFLOPs' -> 4_500_000_000 multiply-adds. Case and spaces do not matter."""
    match = _BUDGET.match(str(text))
    if not match:
        raise ValueError(f"budget {text!r} is not understood; write {_ACCEPTED}")
    value = float(match.group(1)) * _UNITS[match.group(2).lower()]
    if not math.isfinite(value) or value < 1:
        raise ValueError(f"budget {text!r} must be at least one FLOP; write {_ACCEPTED}")
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


if __name__ == "__main__":
    from ._flops_cli import main

    main()
