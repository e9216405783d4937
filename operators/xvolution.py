"""X-volution (Chen et al., "X-volution: On the Unification of Convolution and Self-attention", 2021).

Training form: two parallel branches, summed, then ReLU:
- a k x k conv + BN;
- PSSA (pixel-shift self-attention) + a k x k conv + BN. PSSA shifts the map by L pixels in 8 directions
  (the 8 neighbours at distance L), multiplies each shifted copy element-wise with the unshifted map, and
  averages the 8 products: a pixel's affinity with its surroundings, channel by channel.
Deploy form: the BNs fold and the two branches become ONE k x k convolution over the transformed features
[x ; PSSA(x)] (2C input channels), the single standard convolution the paper converts to.

As in the paper's best ResNet-50 setting, the X-volution replaces the 3x3 conv of the ResNet bottleneck.

Departures: the paper does not publish its shift set or how the products are combined; we chose the
8 neighbours at L = 1 (``shift``) with zero padding at the borders, averaged, so that the PSSA branch
costs the same as the conv branch and the merged deploy conv costs exactly what the two branches did.

Init: no official code is public, so the ResNet scheme of the bottleneck it sits in (timm's ``resnet.py``):
He normal fan-out on both branches' convs, BN weight 1 and bias 0, the last BN of the bottleneck zeroed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._layers import ConvNormAct, conv_with
from ._registry import register_op
from .resnet import Bottleneck


def pixel_shift_products(x: torch.Tensor, shift: int = 1) -> torch.Tensor:
    """Mean over the 8 directions of x * (x shifted by ``shift`` pixels), zero outside the map."""
    h, w = x.shape[-2:]
    padded = F.pad(x, (shift, shift, shift, shift))
    neighbours = torch.zeros_like(x)
    for dy in (-shift, 0, shift):
        for dx in (-shift, 0, shift):
            if dy or dx:
                neighbours = neighbours + padded[..., shift + dy: shift + dy + h, shift + dx: shift + dx + w]
    return x * neighbours / 8.0


class XVolution(nn.Module):
    def __init__(self, dim: int, stride: int = 1, kernel_size: int = 3, shift: int = 1):
        super().__init__()
        self.shift = shift
        self.conv = ConvNormAct(dim, dim, kernel_size, stride, act=None)
        self.attn_conv = ConvNormAct(dim, dim, kernel_size, stride, act=None)
        self.merged: nn.Conv2d | None = None
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = pixel_shift_products(x, self.shift)
        if self.merged is not None:
            return self.act(self.merged(torch.cat([x, p], dim=1)))
        return self.act(self.conv(x) + self.attn_conv(p))

    @torch.no_grad()
    def reparameterize(self) -> None:
        if self.merged is not None:
            return
        (w1, b1), (w2, b2) = self.conv.fused_weight_bias(), self.attn_conv.fused_weight_bias()
        c = self.conv.conv
        self.merged = conv_with(torch.cat([w1, w2], dim=1), b1 + b2, c.stride, c.padding)
        self.conv = self.attn_conv = None


def xvolution(in_chs: int, out_chs: int, stride: int = 1, kernel_size: int = 3, shift: int = 1,
              expansion: int = 4) -> nn.Module:
    if kernel_size % 2 == 0 or shift < 1:
        raise ValueError(f"xvolution: kernel_size={kernel_size} must be odd and shift={shift} >= 1")
    return Bottleneck(in_chs, out_chs, stride, lambda mid, s: XVolution(mid, s, kernel_size, shift),
                      expansion=expansion)


register_op("xvolution", xvolution, family="hybrid", variants=({}, {"shift": 2}),
            paper="Chen et al., X-volution: On the Unification of Convolution and Self-attention, 2021")
