"""Arch -> ``nn.Module``: the full-size network the budget measures, and its proxy.

``build(arch)`` makes the network at the Arch's own input (3x224x224, 1000 classes by default): stem, then
per stage ``depth`` blocks of the stage's operator (the first takes the stage's stride and width change,
unless the stage downsamples with a separate layer), then the head. The same call makes the proxy:
``width_mult`` scales every width (to a multiple of 8 that the operator can still use, so heads keep
dividing it), and ``in_chans``, ``num_classes`` and ``input_size`` take the proxy dataset's values. Images of
at most 64 px get a small-image stem at half the stem's stride, whatever that stride is: 1 for the stride-2
stems, 2 for the stride-4 ones (one 3x3 conv, BN, ReLU), 8 for LeViT's stride-16 stem (three 3x3 stride-2
convs). So every stage of every proxy runs at half its target's output stride, and its map relates to the
target's by one rule: ``ceil(2 * size / R)`` against ``ceil(target size / R)`` for a stage at output
stride R, a quarter of the target's side at 28 px (stages at 14, 7, 4 and 2 px against 56, 28, 14 and 7;
LeViT's at 4, 2 and 1 against 14, 7 and 4). A stride-4 stem's own stride would leave a 28-px image 1 px
wide by the last stage; a stride-1 stem (CIFAR ResNets' choice) would cost four times as much, which a
2-core search cannot afford.

Module names are fixed (``stem``, ``stages.<i>.<j>``, ``head``), so state_dicts move between builds of the
same Arch and the exported code.

Stems and downsamplers come from their registries (``operators.register_stem``, ``register_downsampler``;
the catalog's own are in ``operators/stems.py`` and the families' files), so a plug-in can add its own. Each
is initialized in its constructor as its family's official code does; heads: see ``HEAD_INIT``.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

import operators
from operators._layers import Chain, LayerNorm2d, init_weights, takes_chain

from .arch import Arch, ArchError, StageArch
from .errors import OpmixError

__all__ = ["build", "build_uninitialized", "build_error", "OpmixNet", "Stage", "scale_width", "stage_blocks", "stage_layers", "make_stem",
           "stem_kind", "downsampler", "SMALL_IMAGE"]

SMALL_IMAGE = 64  # inputs of at most this many pixels a side get the small-image stem


def make_stem(kind: str, in_chs: int, width: int) -> nn.Module:
    """The registered stem ``kind`` (``operators.register_stem``) from in_chs to width channels."""
    return operators.get_stem(kind).factory(in_chs, width)


def stem_kind(arch: Arch, input_size: int | None = None) -> str:
    """The Arch's stem, or the small-image stem at half its stride for inputs of <= 64 px (module docstring)."""
    if (input_size or arch.input_size) <= SMALL_IMAGE:
        return f"small{max(1, operators.get_stem(arch.stem.type).stride // 2)}"
    return arch.stem.type


def downsampler(name: str) -> Callable[[int, int, int], nn.Module] | None:
    """The registered downsampler ``name``, or None for ``op`` (the stage's first block downsamples)."""
    return None if name == "op" else operators.get_downsampler(name).factory


def stage_layers(block: Callable[..., nn.Module], in_chs: int, width: int, depth: int, stride: int = 1,
                 alternate: tuple[str, ...] = (), downsample: Callable[[int, int, int], nn.Module] | None = None,
                 /, **kwargs) -> list[nn.Module]:
    """A stage: ``downsample(in_chs, width, stride)`` first when given and needed, then ``depth`` blocks
    ``block(in_chs, width, stride, **kwargs)``, the first taking the stride and width change; each keyword in
    ``alternate`` (Swin's shift) is False in even blocks and True in odd ones unless ``kwargs`` sets it. The
    builder's own arguments are positional-only, so that every name is free for an operator's keywords
    (``block``, ``depth``, ``downsample``, ...)."""
    layers: list[nn.Module] = []
    if downsample is not None and (stride > 1 or in_chs != width):
        layers.append(downsample(in_chs, width, stride))
        in_chs, stride = width, 1
    for j in range(depth):
        layers.append(block(in_chs, width, stride if j == 0 else 1,
                            **{**{name: bool(j % 2) for name in alternate}, **kwargs}))
        in_chs = width
    return layers


# The classifier's init per head type, as the family that uses it: torchvision's and timm's ResNet, timm's
# CoAtNet and the official RepVGG keep PyTorch's default Linear; the official Swin and ConvNeXt draw N(0, 0.02^2)
# truncated to [-2, 2], biases 0. A pre-logits Linear gets the same scheme as the classifier.
HEAD_INIT = {"pool_linear": "torch_default", "norm_pool_linear": "trunc_normal", "pool_norm_linear": "trunc_normal"}


class Head(nn.Module):
    def __init__(self, kind: str, in_chs: int, num_classes: int, hidden: int = 0):
        super().__init__()
        self.norm_map = LayerNorm2d(in_chs) if kind == "norm_pool_linear" else None  # Swin: LN, then pool
        self.norm = nn.LayerNorm(in_chs) if kind == "pool_norm_linear" else None  # ConvNeXt: pool, then LN
        self.pre_logits = nn.Sequential(nn.Linear(in_chs, hidden), nn.Tanh()) if hidden else None
        self.fc = nn.Linear(hidden or in_chs, num_classes)
        init_weights(self, HEAD_INIT[kind])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.norm_map is not None:
            x = self.norm_map(x)
        x = x.mean((2, 3))
        if self.norm is not None:
            x = self.norm(x)
        if self.pre_logits is not None:
            x = self.pre_logits(x)
        return self.fc(x)


class Stage(nn.Sequential):
    """A stage's layers, run in order. A layer that takes a ``Chain`` (``operators._layers.Chain``: evolving
    attention's logits) gets the one its network passes through every stage; any other layer ends the chain.
    Called without one (a stage on its own), its first chained layer starts a chain. Module names are those of
    ``nn.Sequential``, so state_dicts read ``stages.<i>.<j>`` as before."""

    def forward(self, x: torch.Tensor, chain: Chain | None = None) -> torch.Tensor:
        chain = Chain() if chain is None else chain
        for layer in self:
            if takes_chain(layer):
                x = layer(x, chain)
            else:
                x = layer(x)
                chain.value = None
        return x


class OpmixNet(nn.Module):
    def __init__(self, stem: nn.Module, stages: list[nn.Sequential], head: nn.Module):
        super().__init__()
        self.stem = stem
        self.stages = nn.Sequential(*(s if isinstance(s, Stage) else Stage(*s) for s in stages))
        self.head = head

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x, chain = self.stem(x), Chain()  # one chain through all stages: it crosses a stage boundary
        for stage in self.stages:
            x = stage(x, chain)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))


def build_error(op: str, width: int, params: dict) -> str | None:
    """Why operator ``op`` cannot be built at ``width`` with ``params`` (heads that do not divide the width,
    an unknown keyword, ...), or None when it can: the one check of buildability, on the meta device, that
    the space loader and the proxy's width rounding share."""
    # Remembered per (factory, width, parameters): a space of the whole catalog asks about 2,000 of them, at
    # seconds a load; a re-registered name has another factory, so it is asked anew.
    key = (operators.get_spec(op).factory, width, repr(sorted(params.items())))
    if key not in _BUILD_ERRORS:
        try:
            with torch.device("meta"):
                operators.create_op(op, width, width, 1, **params)
            _BUILD_ERRORS[key] = None
        except (ValueError, TypeError) as exc:
            _BUILD_ERRORS[key] = str(exc)
    return _BUILD_ERRORS[key]


_BUILD_ERRORS: dict[tuple, str | None] = {}


def scale_width(width: int, mult: float, op: str | None = None, params: dict | None = None) -> int:
    """``width * mult`` rounded to the nearest multiple of 8 (at least 8) that ``op`` can be built with."""
    if mult == 1.0:
        return width
    target = width * mult
    candidates = sorted(range(8, max(16, int(2 * target) + 16), 8), key=lambda c: (abs(c - target), c))
    for c in candidates:
        if op is None or build_error(op, c, params or {}) is None:
            return c
    raise OpmixError(f"no width near {target:.0f} suits {op} with {params}; pick another width_mult")


def stage_blocks(stage: StageArch, in_chs: int, width: int, depth: int | None = None) -> list[nn.Module]:
    """The layers of ``stage`` (with ``depth``, only the first ``depth`` blocks)."""
    spec = operators.get_spec(stage.op)
    return stage_layers(spec.factory, in_chs, width, stage.depth if depth is None else depth, stage.stride,
                        spec.alternate, downsampler(stage.downsample), **stage.kwargs)


def build(arch: Arch, *, width_mult: float = 1.0, in_chans: int | None = None, num_classes: int | None = None,
          input_size: int | None = None) -> OpmixNet:
    """The network of ``arch``; with the keyword arguments, its proxy (see the module docstring)."""
    if not width_mult > 0:
        raise OpmixError(f"width_mult={width_mult!r} must be > 0 (1.0 builds the full-size network)")
    in_chans = in_chans or arch.in_chans
    size = input_size or arch.input_size
    stem_width = scale_width(arch.stem.width, width_mult)
    stages, cin = [], stem_width
    for i, stage in enumerate(arch.stages):
        width = scale_width(stage.width, width_mult, stage.op, stage.kwargs)
        try:
            stages.append(Stage(*stage_blocks(stage, cin, width)))
        except (ValueError, TypeError) as exc:  # an operator refusing its arguments: the arch's fault
            if isinstance(exc, OpmixError):
                raise
            raise ArchError(f"stages[{i}] ({stage.op} x{stage.depth}, width {width}): cannot be built: "
                            f"{' '.join(str(exc).split())}; change the stage's width or parameters") from None
        cin = width
    head = Head(arch.head.type, cin, num_classes or arch.num_classes,
                scale_width(arch.head.hidden, width_mult) if arch.head.hidden else 0)
    return OpmixNet(make_stem(stem_kind(arch, size), in_chans, stem_width), stages, head)


def build_uninitialized(arch: Arch, **kwargs) -> OpmixNet:
    """``build`` without initializing weights (they hold arbitrary values): for counting FLOPs and
    parameters, which depend on shapes only, at a fraction of the time a random init takes."""
    with torch.device("meta"):
        net = build(arch, **kwargs)
    return net.to_empty(device="cpu")
