"""Structurally re-parameterized plain convolutions.

``repvgg`` (Ding et al., "RepVGG: Making VGG-style ConvNets Great Again", CVPR 2021): in training, a 3x3
conv+BN, a 1x1 conv+BN and, when in == out and stride 1, an identity BN, summed, then ReLU. At deploy the
branches fuse into one 3x3 conv with bias followed by ReLU. No departures.

``mobileone`` (Vasu et al., "MobileOne: An Improved One millisecond Mobile Backbone", CVPR 2023): a depthwise
3x3 unit (``k`` 3x3 conv+BN branches, a 1x1 "scale" conv+BN branch, an identity BN when shapes allow) ->
ReLU -> a pointwise unit (``k`` 1x1 conv+BN branches and an identity BN) -> ReLU. At deploy each unit is one
conv: a depthwise 3x3 then a 1x1, which is the paper's deploy form (the paper's "one conv" is per unit).
``k`` defaults to 1 (MobileOne-S1..S4); S0 uses 4. Neither block has a residual shortcut at deploy, which
is the point of both papers.

``attn`` (``attention_modules``) adds an attention module after the re-parameterizable conv's BN sum, before
its ReLU, where the official code applies its ``use_se`` SE (RepVGG's ``SEBlock``, MobileOne's ``SEBlock``;
MobileOne puts one in each of its two units, so ``mobileone`` does too). The deploy form keeps it after the
fused conv, so it stays exact.

Init as the official code of both (DingXiaoH/RepVGG ``repvgg.py``, apple/ml-mobileone ``mobileone.py``), which
sets none: PyTorch's defaults, BN weight 1 and bias 0 ("torch_default"), their SE blocks included (so SE, ECA
and CBAM here); GC keeps its own (see ``attention_modules``). timm's ``byobnet`` departs from them
(He fan-out convs, and random BN weights N(0.1, 0.1^2) in RepVGG blocks); we keep the authors'.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ._layers import RepConv, init_weights
from ._registry import register_op
from .attention_modules import attention_factory


class RepVGGBlock(nn.Module):
    def __init__(self, in_chs: int, out_chs: int, stride: int = 1, groups: int = 1,
                 attn: Callable[[int], nn.Module] | None = None):
        super().__init__()
        self.conv = RepConv(in_chs, out_chs, 3, stride, groups, num_branches=1, scale_branch=True)
        self.attn = attn(out_chs) if attn is not None else None
        self.act = nn.ReLU()
        init_weights(self, "torch_default")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.act(self.attn(y) if self.attn is not None else y)


class MobileOneBlock(nn.Module):
    def __init__(self, in_chs: int, out_chs: int, stride: int = 1, num_branches: int = 1,
                 attn: Callable[[int], nn.Module] | None = None):
        super().__init__()
        self.depthwise = RepConv(in_chs, in_chs, 3, stride, groups=in_chs, num_branches=num_branches)
        self.pointwise = RepConv(in_chs, out_chs, 1, 1, num_branches=num_branches)
        self.act = nn.ReLU()
        if attn is not None:  # after each unit's BN sum, before its ReLU (MobileOne's use_se)
            self.dw_attn, self.pw_attn = attn(in_chs), attn(out_chs)
        else:
            self.dw_attn = self.pw_attn = None
        init_weights(self, "torch_default")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dw_attn is None:
            return self.act(self.pointwise(self.act(self.depthwise(x))))
        y = self.act(self.dw_attn(self.depthwise(x)))
        return self.act(self.pw_attn(self.pointwise(y)))


def repvgg(in_chs: int, out_chs: int, stride: int = 1, groups: int = 1, attn: str | None = None) -> nn.Module:
    return RepVGGBlock(in_chs, out_chs, stride, groups, attention_factory("repvgg", attn))


def mobileone(in_chs: int, out_chs: int, stride: int = 1, num_branches: int = 1,
              attn: str | None = None) -> nn.Module:
    if num_branches < 1:
        raise ValueError(f"mobileone: num_branches={num_branches} must be >= 1 (the paper uses 1 to 4)")
    return MobileOneBlock(in_chs, out_chs, stride, num_branches, attention_factory("mobileone", attn))


register_op("repvgg", repvgg, family="conv", variants=({}, {"attn": "se"}),
            paper="Ding et al., RepVGG: Making VGG-style ConvNets Great Again, CVPR 2021")
register_op("mobileone", mobileone, family="conv", variants=({}, {"num_branches": 3, "attn": "cbam"}),
            paper="Vasu et al., MobileOne: An Improved One millisecond Mobile Backbone, CVPR 2023")
