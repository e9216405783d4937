"""ConvNeXt block (Liu et al., "A ConvNet for the 2020s", CVPR 2022).

depthwise 7x7 -> LayerNorm -> 1x1 (4x) -> GELU -> 1x1 -> layer scale (init 1e-6) -> + x. When the stride or
width changes, the block starts with ConvNeXt's own downsampling layer, LayerNorm + 2x2 stride-2 conv (odd
maps are zero-padded on the bottom/right so the output is ceil(H/2); ``PatchDown`` at stride s pads to a
multiple of s, so ceil(H/s)); at stride 1 with a width change the conv is 1x1. Drop-path is left to the
trainer (off by default here, as for a proxy).

``attn`` (``attention_modules``) adds an attention module at the end of the residual branch, after the second
1x1 conv and before the layer scale (no official ConvNeXt code has one; this is where SE-ResNet puts it, on the
branch before the addition). Before the layer scale, not after: the add-on then sees the branch at its own
scale, where after it it would see a map scaled by 1e-6 at init and its weights would get gradients 1e6 times
smaller.

Re-parameterization: the layer scale folds into the last 1x1 conv. There is no BatchNorm to fold. With an
add-on the layer scale stays a per-channel multiply in the deploy form (the add-on's gate depends on the
scale of its input, so the scale cannot move into the conv before it); CBAM's BN folds into its own conv.

Init as the official ConvNeXt (``_init_weights``): every Conv2d and Linear N(0, 0.02^2) truncated to [-2, 2]
(timm's ``trunc_normal_``), biases 0, LayerNorm weight 1 and bias 0, layer scale 1e-6 ("trunc_normal"); SE and
CBAM take it too, ECA and GC keep their own (see ``attention_modules``).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ._layers import LayerNorm2d, init_weights
from ._registry import register_op
from .attention_modules import attention_factory


class PatchDown(nn.Module):
    """LayerNorm then a stride x stride conv with stride ``stride`` (ConvNeXt's downsampling layer): (N, in, H, W)
    -> (N, out, ceil(H/stride), ceil(W/stride)), the normalized map zero-padded on the bottom/right to a
    multiple of the stride first (as ``nas.network.PatchEmbed``)."""

    def __init__(self, in_chs: int, out_chs: int, stride: int):
        super().__init__()
        self.norm = LayerNorm2d(in_chs, eps=1e-6)
        self.conv = nn.Conv2d(in_chs, out_chs, stride, stride)
        self.stride = stride
        init_weights(self, "trunc_normal")  # also when a stage of another operator uses it to downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x)
        if self.stride > 1:
            h, w = x.shape[-2:]
            x = F.pad(x, (0, (-w) % self.stride, 0, (-h) % self.stride))
        return self.conv(x)


class ConvNeXtBlock(nn.Module):
    def __init__(self, in_chs: int, out_chs: int, stride: int = 1, kernel_size: int = 7, mlp_ratio: float = 4.0,
                 layer_scale: float = 1e-6, attn: Callable[[int], nn.Module] | None = None):
        super().__init__()
        self.down = PatchDown(in_chs, out_chs, stride) if stride > 1 or in_chs != out_chs else nn.Identity()
        self.dw = nn.Conv2d(out_chs, out_chs, kernel_size, padding=kernel_size // 2, groups=out_chs)
        self.norm = nn.LayerNorm(out_chs, eps=1e-6)
        hidden = max(1, round(out_chs * mlp_ratio))
        self.pw1 = nn.Linear(out_chs, hidden)
        self.act = nn.GELU()
        self.pw2 = nn.Linear(hidden, out_chs)
        self.gamma = nn.Parameter(torch.full((out_chs,), layer_scale)) if layer_scale > 0 else None
        self.attn = attn(out_chs) if attn is not None else None
        init_weights(self, "trunc_normal")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.down(x)
        y = self.dw(x).permute(0, 2, 3, 1)
        y = self.pw2(self.act(self.pw1(self.norm(y))))
        if self.attn is not None:
            y = self.attn(y.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        if self.gamma is not None:
            y = y * self.gamma
        return x + y.permute(0, 3, 1, 2)

    @torch.no_grad()
    def reparameterize(self) -> None:
        if self.gamma is None or self.attn is not None:
            return
        self.pw2.weight.mul_(self.gamma[:, None])
        self.pw2.bias.mul_(self.gamma)
        self.gamma = None


def convnext(in_chs: int, out_chs: int, stride: int = 1, kernel_size: int = 7, mlp_ratio: float = 4.0,
             layer_scale: float = 1e-6, attn: str | None = None) -> nn.Module:
    return ConvNeXtBlock(in_chs, out_chs, stride, kernel_size, mlp_ratio, layer_scale,
                         attention_factory("convnext", attn))


register_op("convnext", convnext, family="conv", variants=({}, {"attn": "gc"}),
            paper="Liu et al., A ConvNet for the 2020s, CVPR 2022")
