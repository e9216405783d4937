"""X-volution (Chen, Wang and Ni, "X-volution: On the Unification of Convolution and Self-attention", arXiv
2106.02253, 2021).

What the paper describes (Sec. 3; no official code is public):
- PSSA, pixel shift self-attention, its O(n) stand-in for global self-attention: shift the map by L pixels in a
  direction, multiply the shifted map element-wise with the unshifted one (the "transformed features"), and
  take a weighted sum of the transformed features (a convolution). In stacked PSSA the paper leaves that
  weighting out: the stacking itself weights the neighbouring pixels.
- The training block: two branches summed, PSSA -> BN and a k x k conv -> BN.
- Deploy: the BNs fold (a BN is a per-channel 1x1 conv) and the branches merge "conditionally" into ONE
  convolution acting on the block's own input X (C_in channels): y_0 = sum over the k x k window of
  (W_i + w_A(x_0, x_i)) x_i + b, W the static kernel of the conv branch, w_A the content-dependent coefficients
  of the PSSA branch: a dynamic convolution, the static kernel plus a data-dependent part (what makes the
  merge conditional is not spelled out; we read it as the PSSA's neighbours having to lie in the k x k
  window). The paper gives no cost for it: the static kernel costs C_out x C_in x k^2 multiply-adds per output
  pixel, and with the unweighted PSSA the data-dependent part adds O(C) per pixel. It is not a conv on
  [X ; PSSA(X)], 2 C_in channels, which costs twice that.

Ours, the same block, a bottleneck's 3x3 replaced as in the paper's best ResNet-50 setting:
- conv branch: k x k conv (carrying the stride) + BN;
- PSSA branch: P(x) = x * (mean of x shifted by L = ``shift`` pixels towards its 8 neighbours, zero outside the
  map), taken at the conv's output positions, + BN; the weighting left out as in the paper's stacked form;
- sum, ReLU.
Deploy: both BNs fold, y = conv'(x) + g * x * (sum of the 8 shifted maps), g = BN scale / 8 per channel, its
shift in the conv's bias: the paper's dynamic convolution, the kernel W' plus diag(g * x_0) at the 8 taps at
distance L, evaluated as the static conv plus that diagonal term (building a kernel per pixel would cost
more). One block at C = 256, 56 x 56 counts 1.85 G multiply-adds in both forms (the k x k conv; element-wise
products are free by fvcore's convention).

Choices where the paper is silent: its shift set and how the directions combine are not published; we take the
8 neighbours at distance L (1 by default), zero padding at the borders, averaged with equal weights (the BN
scale is the one learned factor), and require L <= k // 2 (the shifted taps inside the kernel, our reading of
the merge's condition).

Init: no official code, so the ResNet scheme of the bottleneck it sits in (timm's ``resnet.py``): He normal
fan-out on the conv, BN weight 1 and bias 0 in both branches, the last BN of the bottleneck zeroed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._layers import ConvNormAct, check_int, conv_with
from ._registry import register_op
from .resnet import Bottleneck


def shifted_sum(x: torch.Tensor, shift: int = 1) -> torch.Tensor:
    """Sum of x shifted by ``shift`` pixels towards its 8 neighbours (zero outside the map)."""
    h, w = x.shape[-2:]
    padded = F.pad(x, (shift, shift, shift, shift))
    total = torch.zeros_like(x)
    for dy in (-shift, 0, shift):
        for dx in (-shift, 0, shift):
            if dy or dx:
                total = total + padded[..., shift + dy: shift + dy + h, shift + dx: shift + dx + w]
    return total


def pixel_shift_products(x: torch.Tensor, shift: int = 1, stride: int = 1) -> torch.Tensor:
    """PSSA's transformed features, averaged over the 8 directions: x * mean of its shifted copies, at the
    output positions of a stride-``stride`` conv with padding k // 2."""
    return (x * shifted_sum(x, shift))[..., ::stride, ::stride] / 8.0


class XVolution(nn.Module):
    def __init__(self, dim: int, stride: int = 1, kernel_size: int = 3, shift: int = 1):
        super().__init__()
        self.shift, self.stride = shift, stride
        self.conv = ConvNormAct(dim, dim, kernel_size, stride, act=None)
        self.attn_norm: nn.BatchNorm2d | None = nn.BatchNorm2d(dim)
        self.gain: nn.Parameter | None = None  # deploy: the folded PSSA BN scale / 8, per channel
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.attn_norm is None:
            pssa = (x * shifted_sum(x, self.shift))[..., ::self.stride, ::self.stride]
            return self.act(self.conv(x) + self.gain.view(1, -1, 1, 1) * pssa)
        return self.act(self.conv(x) + self.attn_norm(pixel_shift_products(x, self.shift, self.stride)))

    @torch.no_grad()
    def reparameterize(self) -> None:
        if self.attn_norm is None:
            return
        bn = self.attn_norm
        t = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        w, b = self.conv.fused_weight_bias()
        c = self.conv.conv
        self.conv = conv_with(w, b + bn.bias - bn.running_mean * t, c.stride, c.padding)
        self.gain = nn.Parameter(t / 8.0)
        self.attn_norm = None


def xvolution(in_chs: int, out_chs: int, stride: int = 1, kernel_size: int = 3, shift: int = 1,
              expansion: int = 4) -> nn.Module:
    check_int("xvolution", "kernel_size", kernel_size, 1, "the paper uses 3", odd=True)
    if not 1 <= shift <= kernel_size // 2:
        raise ValueError(f"xvolution: shift={shift} must be between 1 and kernel_size // 2 = {kernel_size // 2} "
                         f"so that the shifted taps lie inside the kernel (the deploy merge needs it); use "
                         f"shift=1, or kernel_size=5 for shift=2")
    return Bottleneck(in_chs, out_chs, stride, lambda mid, s: XVolution(mid, s, kernel_size, shift),
                      expansion=expansion)


register_op("xvolution", xvolution, family="hybrid", variants=({}, {"kernel_size": 5, "shift": 2}),
            paper="Chen et al., X-volution: On the Unification of Convolution and Self-attention, 2021")
