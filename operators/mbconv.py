"""MBConv with squeeze-excitation, in the pre-norm form of CoAtNet's C stages.

Papers: Sandler et al., "MobileNetV2", CVPR 2018 (inverted residual); Tan & Le, "EfficientNet", ICML 2019
(SE); Dai et al., "CoAtNet: Marrying Convolution and Attention for All Data Sizes", NeurIPS 2021 (pre-norm,
GELU, expansion 4, downsampling shortcut ``Proj(Pool(x))``).

Residual branch: BN -> 1x1 expand (4 x out; carries the stride, as in CoAtNet's
``Conv(DepthConv(Conv(Norm(x), stride=2)))``) + BN + GELU -> depthwise 3x3 + BN + GELU -> SE (reduction to
0.25 x in_chs, EfficientNet's convention) -> 1x1 project. Shortcut: identity, or 2x2 average pooling
(stride 2, ceil for odd sizes) and a 1x1 conv when the shape changes. MobileNetV2 and EfficientNet put the
stride on the depthwise conv instead; CoAtNet's placement costs a quarter of the expand conv's FLOPs.

``attn`` (``attention_modules``) chooses the module of the SE slot, after the depthwise conv, on the expanded
channels: None and "se" keep the paper's SE (``se_ratio`` sizes it, GELU); "eca", "cbam" and "gc" REPLACE it
(``se_ratio`` is then unused), as timm's EfficientNet builder swaps its ``se_layer`` and ECA-Net puts ECA in
MobileNetV2: stacking a second channel gate on the SE would be a block no paper trained.

Re-parameterization: every BN that follows a conv folds into it, and the pre-norm BN folds into the 1x1
expand conv that follows it (exact, because that conv is 1x1 and unpadded, at any stride).

Init as timm's CoAtNet conv blocks (``maxxvit._init_conv``, the "efficientnet like" default) and EfficientNet
(``_init_weight_goog``, after the official TF code): every conv, the SE's and the shortcut's included, He
normal with fan-out = kernel area x out channels / groups, biases 0, BN weight 1 and bias 0 ("fan_out"); in
the SE slot CBAM takes it too, ECA and GC keep their own (see ``attention_modules``).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ._layers import (
    ConvNormAct,
    SqueezeExcite,
    check_int,
    fold_bn_into_next_conv,
    init_weights,
    pool_ceil,
)
from ._registry import register_op
from .attention_modules import attention_factory


class MBConv(nn.Module):
    def __init__(self, in_chs: int, out_chs: int, stride: int = 1, expansion: float = 4.0,
                 se_ratio: float = 0.25, kernel_size: int = 3, attn: Callable[[int], nn.Module] | None = None):
        super().__init__()
        mid = max(1, round(out_chs * expansion))
        self.pre_norm = nn.BatchNorm2d(in_chs)
        self.expand = ConvNormAct(in_chs, mid, 1, stride, act=nn.GELU)
        self.dw = ConvNormAct(mid, mid, kernel_size, 1, groups=mid, act=nn.GELU)
        if attn is not None:  # another add-on in the SE slot
            self.se = attn(mid)
        elif se_ratio > 0:
            self.se = SqueezeExcite(mid, max(1, round(in_chs * se_ratio)), act=nn.GELU)
        else:
            self.se = nn.Identity()
        self.project = nn.Conv2d(mid, out_chs, 1)
        if stride == 1 and in_chs == out_chs:
            self.shortcut: nn.Module = nn.Identity()
        else:
            self.shortcut = nn.Sequential(pool_ceil(stride), nn.Conv2d(in_chs, out_chs, 1))
        init_weights(self, "fan_out")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.pre_norm(x) if self.pre_norm is not None else x
        y = self.project(self.se(self.dw(self.expand(y))))
        return self.shortcut(x) + y

    @torch.no_grad()
    def reparameterize(self) -> None:
        if self.pre_norm is None:
            return
        self.expand.reparameterize()  # the expand conv must carry its own BN already
        fold_bn_into_next_conv(self.pre_norm, self.expand.conv)
        self.pre_norm = None


def mbconv(in_chs: int, out_chs: int, stride: int = 1, expansion: float = 4.0, se_ratio: float = 0.25,
           kernel_size: int = 3, attn: str | None = None) -> nn.Module:
    check_int("mbconv", "kernel_size", kernel_size, 1, "EfficientNet uses 3 and 5", odd=True)
    factory = attention_factory("mbconv", attn)  # validates attn
    return MBConv(in_chs, out_chs, stride, expansion, se_ratio, kernel_size, None if attn == "se" else factory)


register_op("mbconv", mbconv, family="conv", variants=({}, {"kernel_size": 5, "expansion": 6, "attn": "eca"}),
            paper="Dai et al., CoAtNet: Marrying Convolution and Attention for All Data Sizes, NeurIPS 2021; "
                  "Sandler et al., MobileNetV2, CVPR 2018")
