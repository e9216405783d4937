"""The registries of the catalog: operators, stems and stage downsamplers, each a plain dict from name to spec.

Every factory has the signature ``factory(in_chs, out_chs, stride=1, **kwargs) -> nn.Module`` and returns a
whole residual unit. ``variants`` lists keyword sets that the test-suite builds besides the defaults (for
instance Swin's shifted block), so that registering an operator is enough to have it tested.

A stem ``factory(in_chs, width) -> nn.Module`` maps (N, in_chs, H, W) to (N, width, ceil(H/s), ceil(W/s)) for
its declared ``stride`` s; a downsampler ``factory(in_chs, out_chs, stride) -> nn.Module`` is a stage's separate
first layer (a space or an Arch names it in ``downsample:``). Plug-in modules (``nas.plugins``) register theirs
the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from torch import nn

from ._errors import OpmixError, UnknownNameError

OpFactory = Callable[..., nn.Module]


@dataclass(frozen=True)
class OpSpec:
    name: str
    factory: OpFactory
    paper: str
    family: str  # "conv", "local", "global" or "hybrid": where the op may sit in a space
    variants: tuple[dict[str, Any], ...] = field(default=({},))
    # boolean keywords that alternate block by block inside a stage (Swin's shift): False, True, False, ...
    alternate: tuple[str, ...] = ()
    # integer keywords that are spatial extents in pixels of the block's map (a window, a local kernel): a proxy
    # at a lower resolution scales them with the map, so that a local operator stays local (nas.proxy)
    extents: tuple[str, ...] = ()

    def keywords(self) -> tuple[str, ...]:
        """The keyword arguments the factory accepts besides in_chs, out_chs and stride."""
        import inspect

        params = inspect.signature(self.factory).parameters
        return tuple(n for n in params if n not in ("in_chs", "out_chs", "stride"))


_OPS: dict[str, OpSpec] = {}
_FAMILIES = ("conv", "local", "global", "hybrid")


def register_op(
    name: str,
    factory: OpFactory,
    *,
    paper: str,
    family: str,
    variants: tuple[dict[str, Any], ...] = ({},),
    alternate: tuple[str, ...] = (),
    extents: tuple[str, ...] = (),
) -> OpFactory:
    """Add an operator to the catalog. Re-registering a name is refused, so two files cannot collide."""
    if name in _OPS:
        raise OpmixError(f"operator {name!r} is already registered; pick another name")
    if family not in _FAMILIES:
        raise OpmixError(f"operator {name!r}: family {family!r} is not one of {', '.join(_FAMILIES)}")
    _OPS[name] = OpSpec(name, factory, paper, family, tuple(variants), tuple(alternate), tuple(extents))
    return factory


def get_spec(name: str) -> OpSpec:
    try:
        return _OPS[name]
    except KeyError:
        raise UnknownNameError(
            f"unknown operator {name!r}; known operators: {', '.join(sorted(_OPS))}"
        ) from None


def list_ops() -> list[str]:
    """Names of every registered operator, sorted."""
    return sorted(_OPS)


def create_op(name: str, in_chs: int, out_chs: int, stride: int = 1, **kwargs: Any) -> nn.Module:
    """Build operator ``name`` mapping (N, in_chs, H, W) to (N, out_chs, ceil(H/stride), ceil(W/stride))."""
    spec = get_spec(name)
    if stride not in (1, 2):
        raise OpmixError(f"operator {name!r}: stride {stride!r} is not allowed; use 1 or 2")
    for what, value in (("in_chs", in_chs), ("out_chs", out_chs)):
        if not isinstance(value, int) or value < 1:
            raise OpmixError(f"operator {name!r}: {what}={value!r} must be a positive integer")
    return spec.factory(in_chs, out_chs, stride=stride, **kwargs)


@dataclass(frozen=True)
class StemSpec:
    name: str
    factory: Callable[[int, int], nn.Module]
    stride: int  # the stem's output stride: H -> ceil(H / stride)
    paper: str


@dataclass(frozen=True)
class DownsamplerSpec:
    name: str
    factory: Callable[[int, int, int], nn.Module]
    paper: str


_STEMS: dict[str, StemSpec] = {}
_DOWNSAMPLERS: dict[str, DownsamplerSpec] = {}
RESERVED_DOWNSAMPLE = "op"  # ``downsample: op`` leaves the stride and width change to the stage's first block


def register_stem(name: str, factory: Callable[[int, int], nn.Module], *, stride: int, paper: str):
    """Add a stem; ``stride`` is its output stride (a power of two: 1, 2, 4, 8 or 16)."""
    if name in _STEMS:
        raise OpmixError(f"stem {name!r} is already registered; pick another name")
    if stride not in (1, 2, 4, 8, 16):
        raise OpmixError(f"stem {name!r}: stride {stride!r} is not one of 1, 2, 4, 8, 16")
    _STEMS[name] = StemSpec(name, factory, stride, paper)
    return factory


def get_stem(name: str) -> StemSpec:
    try:
        return _STEMS[name]
    except KeyError:
        raise UnknownNameError(f"unknown stem type {name!r}; known: {', '.join(sorted(_STEMS))}") from None


def list_stems() -> list[str]:
    """Names of every registered stem, sorted."""
    return sorted(_STEMS)


def register_downsampler(name: str, factory: Callable[[int, int, int], nn.Module], *, paper: str):
    """Add a stage downsampler ``factory(in_chs, out_chs, stride)``."""
    if name in _DOWNSAMPLERS or name == RESERVED_DOWNSAMPLE:
        raise OpmixError(f"downsampler {name!r} is already registered or reserved; pick another name")
    _DOWNSAMPLERS[name] = DownsamplerSpec(name, factory, paper)
    return factory


def get_downsampler(name: str) -> DownsamplerSpec:
    try:
        return _DOWNSAMPLERS[name]
    except KeyError:
        raise UnknownNameError(f"unknown downsampler {name!r}; known: {RESERVED_DOWNSAMPLE}, "
                               f"{', '.join(sorted(_DOWNSAMPLERS))}") from None


def list_downsamplers() -> list[str]:
    """Names of every registered downsampler, sorted (``op``, the stage's own first block, is not one)."""
    return sorted(_DOWNSAMPLERS)
