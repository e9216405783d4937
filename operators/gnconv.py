"""HorNet block with recursive gated convolution (Rao, Zhao, Tang, Zhou, Lim and Lu, "HorNet: Efficient
High-Order Spatial Interactions with Recursive Gated Convolutions", NeurIPS 2022).

gnConv of order n on C channels, widths d_k = C / 2^(n-1-k) for k = 0..n-1 (so d_0 = C / 2^(n-1), d_{n-1} = C):
a 1x1 conv maps x to d_0 + (d_0 + ... + d_{n-1}) = 2C channels, split into p_0 (d_0 channels) and the rest;
ONE depthwise 7x7 conv runs on the rest, its output is multiplied by s = 1/3 (the official models' ``s``) and
split into q_0..q_{n-1} of widths d_0..d_{n-1}; then p_1 = p_0 * q_0 and p_{k+1} = pw_k(p_k) * q_k for
k = 1..n-1, pw_k a 1x1 conv from d_{k-1} to d_k channels, and a last 1x1 conv maps p_n (C channels) to the output.
The block is ConvNeXt's frame around it: x <- x + gamma_1 * gnConv(LN(x)); x <- x + gamma_2 * MLP(LN(x))
(MLP 4x with GELU, layer scales initialized to 1e-6, LayerNorm eps 1e-6). HorNet-T 7x7: width 64, depths
2/3/18/2, orders 2/3/4/5 over the stages (``order`` is set per stage; the default 3 is that of stage 2).

When the stride or width changes the block starts with ConvNeXt's downsampling layer (``convnext.PatchDown``:
LayerNorm + 2x2 stride-2 conv, odd maps zero-padded on the bottom/right; 1x1 conv at stride 1), which is the
layer HorNet puts between its stages.

Re-parameterization: the layer scales fold into the gnConv's output conv and the MLP's last linear, and the
scale s into the depthwise conv's weight and bias; no BatchNorm is involved. The deploy form is the same
function with three fewer elementwise multiplies.

Departures: widths that 2^(n-1) does not divide (the official code then fails at its split) use
d_k = max(1, C // 2^(n-1-k)), the official formula kept at least 1, and the input conv maps to d_0 + sum(d_k)
channels instead of 2C; both are equal to the official wherever it runs. Drop-path is left to the trainer.
HorNet's global-filter variant (HorNet-GF, an FFT branch in place of the 7x7 conv) is not implemented.

Init as the official HorNet (``HorNet._init_weights`` with ``uniform_init=False``, the default of every
ImageNet-1k model): every Conv2d and Linear N(0, 0.02^2) truncated to [-2, 2] (timm's ``trunc_normal_``),
biases 0, LayerNorm weight 1 and bias 0, layer scales 1e-6 ("trunc_normal").
"""

from __future__ import annotations

import torch
from torch import nn

from ._layers import LayerNorm2d, Mlp, check_int, check_positive, init_weights
from ._registry import register_op
from .convnext import PatchDown

HORNET_PAPER = ("Rao et al., HorNet: Efficient High-Order Spatial Interactions with Recursive Gated "
                "Convolutions, NeurIPS 2022")
GNCONV_SCALE = 1.0 / 3.0  # the official models' ``s``: the depthwise output is scaled before the gating
GNCONV_ORDERS = (1, 2, 3, 4, 5)


def gnconv_widths(dim: int, order: int) -> list[int]:
    """The widths d_0..d_{n-1} of the gating steps: C / 2^(n-1), ..., C / 2, C (at least 1 each)."""
    return [max(1, dim // 2 ** (order - 1 - k)) for k in range(order)]


class GnConv(nn.Module):
    """Recursive gated convolution of order ``order`` on (N, dim, H, W)."""

    def __init__(self, dim: int, order: int = 3, kernel_size: int = 7, scale: float = GNCONV_SCALE):
        super().__init__()
        self.widths = gnconv_widths(dim, order)
        self.proj_in = nn.Conv2d(dim, self.widths[0] + sum(self.widths), 1)
        q_chs = sum(self.widths)
        self.dw = nn.Conv2d(q_chs, q_chs, kernel_size, padding=kernel_size // 2, groups=q_chs)
        self.pws = nn.ModuleList(nn.Conv2d(self.widths[k], self.widths[k + 1], 1) for k in range(order - 1))
        self.proj_out = nn.Conv2d(dim, dim, 1)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p, q = self.proj_in(x).split([self.widths[0], sum(self.widths)], dim=1)
        q = self.dw(q)
        if self.scale != 1.0:
            q = q * self.scale
        qs = q.split(self.widths, dim=1)
        p = p * qs[0]
        for pw, q_k in zip(self.pws, qs[1:]):
            p = pw(p) * q_k
        return self.proj_out(p)


class HorNetBlock(nn.Module):
    def __init__(self, in_chs: int, out_chs: int, stride: int = 1, order: int = 3, kernel_size: int = 7,
                 mlp_ratio: float = 4.0, layer_scale: float = 1e-6):
        super().__init__()
        self.down = PatchDown(in_chs, out_chs, stride) if stride > 1 or in_chs != out_chs else nn.Identity()
        self.norm1 = LayerNorm2d(out_chs, eps=1e-6)
        self.gnconv = GnConv(out_chs, order, kernel_size)
        self.norm2 = nn.LayerNorm(out_chs, eps=1e-6)
        self.mlp = Mlp(out_chs, max(1, round(out_chs * mlp_ratio)))
        self.gamma1 = self.gamma2 = None
        if layer_scale > 0:
            self.gamma1 = nn.Parameter(torch.full((out_chs,), float(layer_scale)))
            self.gamma2 = nn.Parameter(torch.full((out_chs,), float(layer_scale)))
        init_weights(self, "trunc_normal")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.down(x)
        y = self.gnconv(self.norm1(x))
        x = x + (y * self.gamma1[:, None, None] if self.gamma1 is not None else y)
        y = self.mlp(self.norm2(x.permute(0, 2, 3, 1)))
        y = y * self.gamma2 if self.gamma2 is not None else y
        return x + y.permute(0, 3, 1, 2)

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fold s into the depthwise conv and the layer scales into the gnConv's output conv and the MLP's fc2."""
        g = self.gnconv
        if g.scale != 1.0:
            g.dw.weight.mul_(g.scale)
            g.dw.bias.mul_(g.scale)
            g.scale = 1.0
        for gamma, layer in ((self.gamma1, g.proj_out), (self.gamma2, self.mlp.fc2)):
            if gamma is not None:
                layer.weight.mul_(gamma.reshape((-1,) + (1,) * (layer.weight.dim() - 1)))
                layer.bias.mul_(gamma)
        self.gamma1 = self.gamma2 = None


def gnconv(in_chs: int, out_chs: int, stride: int = 1, order: int = 3, kernel_size: int = 7,
           mlp_ratio: float = 4.0, layer_scale: float = 1e-6) -> nn.Module:
    if not isinstance(order, int) or isinstance(order, bool) or order not in GNCONV_ORDERS:
        raise ValueError(f"gnconv: order={order!r} must be an integer in 1..5 (HorNet uses 2, 3, 4, 5 over "
                         f"the stages); pass e.g. order=3")
    check_int("gnconv", "kernel_size", kernel_size, 1, "HorNet uses 7", odd=True)
    check_positive("gnconv", "mlp_ratio", mlp_ratio, "HorNet uses 4")
    check_positive("gnconv", "layer_scale", layer_scale, "0 turns it off; HorNet uses 1e-6", zero_ok=True)
    return HorNetBlock(in_chs, out_chs, stride, order, kernel_size, mlp_ratio, layer_scale)


register_op("gnconv", gnconv, family="conv", variants=({}, {"order": 5}), paper=HORNET_PAPER)
