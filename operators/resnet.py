"""ResNet residual units (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016).

``resnet_basic``: 3x3 -> 3x3, BN after each conv. ``resnet_bottleneck``: 1x1 reduce (out / 4) -> 3x3 -> 1x1
expand, with the stride on the 3x3 as in torchvision's "v1.5" ResNet-50. The shortcut is a 1x1 conv + BN
projection whenever the stride or width changes (option B of the paper).

``Bottleneck`` takes the spatial mixer as a factory, so the attention variants of ResNet-50 (BoTNet,
ACmix-ResNet, X-volution, attention-augmented ResNet) replace the 3x3 conv and keep everything else.
Departures: none beyond torchvision's stride placement.

``attn`` ("se", "eca", "cbam", "gc"; ``attention_modules``) adds an attention module on the residual branch
after its last BN, before the addition, on the out_chs channels: where the official SE-ResNet, CBAM-ResNet and
GCNet code put it. With the last BN at zero the branch still starts at 0.
SE and CBAM take the block's fan-out init; ECA and GC keep their own (see ``attention_modules``).

Init as timm's ``resnet.py`` (``init_weights``): He normal, fan-out, on every conv ("fan_out"), BN weight 1 and
bias 0, and the last BN of the residual branch zero-initialized (timm's default ``zero_init_last``; torchvision
has it too, as ``zero_init_residual``, but off by default), so each residual branch starts at zero.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ._layers import ConvNormAct, init_weights
from ._registry import register_op
from .attention_modules import attention_factory

# mixer(mid_chs, stride) -> module mapping (N, mid, H, W) to (N, mid, ceil(H/s), ceil(W/s)), BN + ReLU included
MixerFactory = Callable[[int, int], nn.Module]
# attn(chs) -> an attention add-on keeping (N, chs, H, W) (attention_modules.attention_factory)
AttnFactory = Callable[[int], nn.Module]


def projection(in_chs: int, out_chs: int, stride: int) -> nn.Module:
    """Identity when shapes match, else a strided 1x1 conv + BN (ResNet option B)."""
    if stride == 1 and in_chs == out_chs:
        return nn.Identity()
    return ConvNormAct(in_chs, out_chs, 1, stride, act=None)


class BasicBlock(nn.Module):
    def __init__(self, in_chs: int, out_chs: int, stride: int = 1, attn: AttnFactory | None = None):
        super().__init__()
        self.conv1 = ConvNormAct(in_chs, out_chs, 3, stride)
        self.conv2 = ConvNormAct(out_chs, out_chs, 3, act=None)
        self.shortcut = projection(in_chs, out_chs, stride)
        self.attn = attn(out_chs) if attn is not None else None
        self.act = nn.ReLU()
        init_weights(self, "fan_out")
        nn.init.zeros_(self.conv2.bn.weight)  # timm's zero_init_last

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(self.conv1(x))
        if self.attn is not None:
            y = self.attn(y)
        return self.act(y + self.shortcut(x))


class Bottleneck(nn.Module):
    """1x1 reduce -> mixer (carries the stride) -> 1x1 expand, BN after each, plus the shortcut.

    Parts of the mixer that initialize themselves keep their scheme; every other conv gets ``init`` ("fan_out",
    timm's; the TensorFlow ResNet that evolving attention builds on draws "lecun_normal"), and
    ``zero_init_last`` zeroes the expand BN's weight (timm's default; ACmix's official code leaves it off).
    ``attn`` builds an attention add-on for the out_chs channels after the expand BN (SE-ResNet, CBAM, GCNet).
    """

    def __init__(self, in_chs: int, out_chs: int, stride: int = 1, mixer: MixerFactory | None = None,
                 expansion: int = 4, mid_chs: int | None = None, zero_init_last: bool = True,
                 attn: AttnFactory | None = None, init: str = "fan_out"):
        super().__init__()
        mid = mid_chs or max(1, out_chs // expansion)
        mixer = mixer or (lambda c, s: ConvNormAct(c, c, 3, s))
        self.reduce = ConvNormAct(in_chs, mid, 1)
        self.mixer = mixer(mid, stride)
        self.expand = ConvNormAct(mid, out_chs, 1, act=None)
        self.shortcut = projection(in_chs, out_chs, stride)
        self.attn = attn(out_chs) if attn is not None else None
        self.act = nn.ReLU()
        init_weights(self, init)
        if zero_init_last:
            nn.init.zeros_(self.expand.bn.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.expand(self.mixer(self.reduce(x)))
        if self.attn is not None:
            y = self.attn(y)
        return self.act(y + self.shortcut(x))


def resnet_basic(in_chs: int, out_chs: int, stride: int = 1, attn: str | None = None) -> nn.Module:
    return BasicBlock(in_chs, out_chs, stride, attention_factory("resnet_basic", attn))


def resnet_bottleneck(in_chs: int, out_chs: int, stride: int = 1, expansion: int = 4,
                      attn: str | None = None) -> nn.Module:
    return Bottleneck(in_chs, out_chs, stride, expansion=expansion,
                      attn=attention_factory("resnet_bottleneck", attn))


PAPER = "He et al., Deep Residual Learning for Image Recognition, CVPR 2016"
register_op("resnet_basic", resnet_basic, paper=PAPER, family="conv", variants=({}, {"attn": "se"}))
register_op("resnet_bottleneck", resnet_bottleneck, paper=PAPER, family="conv", variants=({}, {"attn": "cbam"}))
