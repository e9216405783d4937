"""The proxy: how a candidate is trained cheaply, and the one function that trains it.

A ``ProxySettings`` holds the proxy's knobs: training images per epoch (``max_train``), ``epochs``,
``width_mult``, the input resolution (``image_size``; ``None`` keeps the dataset's own), ``batch_size``,
``lr``, ASHA's ``grace_period`` (in epochs) and ``scale_windows``. The search, ``nas.calibrate`` and the
confirmation rung all train through ``train_arch``, so a result is a function of (architecture, seed,
settings) alone: the seed is set before the network is built, and the trainer draws its data order and
augmentation from its own generator seeded the same way.

Windows at the proxy's resolution. At 28 px the proxy's stages run at 14, 7, 4 and 2 px, a quarter of their
size at 224 px, so a 7x7 window would cover the whole map from the second stage on and local attention
would look global. With ``scale_windows`` (the default) each spatial extent an operator declares
(``OpSpec.extents``: Swin's window, ACmix's window and local kernel) is scaled by the ratio of the stage's
map at the proxy to its map at the target, kept at least 2 (odd extents: 3) and below the map wherever the
target's window is below the target's map. A window that covers the whole map at the target covers it at the
proxy too.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from dataclasses import dataclass, fields
from typing import Any, Callable

import torch

from .arch import Arch, stem_stride
from .errors import OpmixError

__all__ = ["ProxySettings", "train_arch", "build_proxy", "proxy_arch", "stage_maps", "WARMUP_EPOCHS"]

WARMUP_EPOCHS = 1  # nas.train warms the learning rate up over the first epoch: no early stop may judge there
MAX_VAL = 1000  # validation images a proxy is scored on (a fixed part of the held-out split)


@dataclass(frozen=True)
class ProxySettings:
    """The proxy's knobs (see the module docstring); every one has the search's default."""

    max_train: int | None = 1536
    epochs: int = 4
    width_mult: float = 0.25
    image_size: int | None = None
    batch_size: int = 64
    lr: float = 3e-3
    grace_period: int = 2
    scale_windows: bool = True

    def __post_init__(self) -> None:
        problems = []
        if self.max_train is not None and self.max_train < 1:
            problems.append(f"max_train={self.max_train} must be >= 1, or null for the whole training split")
        if self.epochs < 1:
            problems.append(f"epochs={self.epochs} must be >= 1")
        if not 0 < self.width_mult <= 4:
            problems.append(f"width_mult={self.width_mult} must be in (0, 4]")
        if self.image_size is not None and not 8 <= self.image_size <= 512:
            problems.append(f"image_size={self.image_size} must be in [8, 512], or null for the dataset's own")
        if self.batch_size < 1:
            problems.append(f"batch_size={self.batch_size} must be >= 1")
        if not 0 < self.lr < 1:
            problems.append(f"lr={self.lr} must be in (0, 1)")
        if self.grace_period <= WARMUP_EPOCHS and self.grace_period < self.epochs:
            problems.append(f"grace_period={self.grace_period} falls inside the {WARMUP_EPOCHS}-epoch warm-up; "
                            f"use at least {WARMUP_EPOCHS + 1}")
        if problems:
            raise OpmixError("proxy settings: " + "; ".join(problems))

    @classmethod
    def from_mapping(cls, data: Any, where: str = "proxy settings", base: ProxySettings | None = None
                     ) -> ProxySettings:
        """Settings from a YAML mapping of knobs; a knob left out takes ``base``'s value (the defaults)."""
        base = base or cls()
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise OpmixError(f"{where}: is {data!r}; write a mapping of knobs such as {{max_train: 512, epochs: 2}}")
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise OpmixError(f"{where}: unknown knob(s) {', '.join(map(str, unknown))}; known: {', '.join(known)}")
        values = {}
        for name, value in data.items():
            kind = {"max_train": int, "image_size": int, "epochs": int, "batch_size": int, "grace_period": int,
                    "width_mult": float, "lr": float, "scale_windows": bool}[name]
            nullable = name in ("max_train", "image_size")
            ok = (value is None and nullable) or (isinstance(value, kind) and not (kind is int and
                                                                                   isinstance(value, bool)))
            if kind is float and isinstance(value, int) and not isinstance(value, bool):
                value, ok = float(value), True
            if not ok:
                raise OpmixError(f"{where}.{name}: is {value!r}; write {'null or ' if nullable else ''}"
                                 f"{'true/false' if kind is bool else 'a number' if kind is float else 'an integer'}")
            values[name] = value
        try:
            return dataclasses.replace(base, **values)
        except ValueError as exc:
            raise OpmixError(f"{where}: {str(exc).removeprefix('proxy settings: ')}") from None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def image_epochs(self, train_images: int) -> int:
        """Training images seen in all: what a reference's fidelity is compared by."""
        per_epoch = train_images if self.max_train is None else min(self.max_train, train_images)
        return per_epoch * self.epochs


def stage_maps(arch: Arch, input_size: int) -> list[int]:
    """Each stage's output map side at ``input_size`` (strided layers round up), with the stem the builder
    uses at that size (the small-image stem at <= 64 px)."""
    from .network import stem_kind

    side = math.ceil(input_size / stem_stride(stem_kind(arch, input_size)))
    maps = []
    for stage in arch.stages:
        side = math.ceil(side / stage.stride)
        maps.append(side)
    return maps


def _scaled_extent(extent: int, target_map: int, proxy_map: int) -> int:
    odd = extent % 2 == 1
    low = 3 if odd else 2
    scaled = max(low, round(extent * proxy_map / target_map))
    if odd and scaled % 2 == 0:
        scaled += 1
    if extent < target_map:  # local at the target: keep it local at the proxy where the map allows
        while scaled >= proxy_map and scaled - (2 if odd else 1) >= low:
            scaled -= 2 if odd else 1
    return min(scaled, extent)


def proxy_arch(arch: Arch, input_size: int) -> Arch:
    """``arch`` with every declared spatial extent scaled to the proxy's stage maps (module docstring)."""
    import operators

    target, proxy = stage_maps(arch, arch.input_size), stage_maps(arch, input_size)
    stages = []
    for stage, t_map, p_map in zip(arch.stages, target, proxy):
        spec = operators.get_spec(stage.op)
        if not spec.extents:
            stages.append(stage)
            continue
        defaults = {n: p.default for n, p in inspect.signature(spec.factory).parameters.items()}
        params = stage.kwargs
        for name in spec.extents:
            extent = params.get(name, defaults.get(name))
            if isinstance(extent, int) and not isinstance(extent, bool):
                params[name] = _scaled_extent(extent, t_map, p_map)
        stages.append(dataclasses.replace(stage, params=tuple(sorted(params.items()))))
    return dataclasses.replace(arch, stages=tuple(stages))


def build_proxy(arch: Arch, data, settings: ProxySettings, seed: int):
    """The proxy network of ``arch`` for ``data``, its weights drawn from ``seed``."""
    from .network import build

    size = settings.image_size or data.image_size
    net_arch = proxy_arch(arch, size) if settings.scale_windows else arch
    torch.manual_seed(seed)
    return build(net_arch, width_mult=settings.width_mult, in_chans=data.in_chans, num_classes=data.num_classes,
                 input_size=size)


def train_arch(arch: Arch, data, settings: ProxySettings = ProxySettings(), *, seed: int = 0,
               threads: int | None = None, device: str = "auto", max_val: int | None = MAX_VAL,
               report: Callable[..., None] | None = None, per_image: bool = False):
    """Train the proxy of ``arch`` on ``data`` under ``settings`` from ``seed``; returns ``nas.train``'s
    ``TrainResult``. ``data`` must already be at ``settings.image_size`` (``nas.data.resize_data``) when it is set:
    resizing once per dataset, not per trial. ``report`` and ``per_image``: as ``nas.train.train_proxy``'s."""
    from .train import TrainConfig, train_proxy

    if settings.image_size is not None and settings.image_size != data.image_size:
        raise OpmixError(f"the data is {data.image_size} px but the proxy wants {settings.image_size} px; "
                         f"pass resize_data(data, {settings.image_size})")
    if threads:
        torch.set_num_threads(threads)
    model = build_proxy(arch, data, settings, seed)
    config = TrainConfig(epochs=settings.epochs, batch_size=settings.batch_size, lr=settings.lr,
                         max_train=settings.max_train, max_val=max_val, seed=seed, threads=threads, device=device)
    return train_proxy(model, data, config, report, per_image=per_image)
