"""Swin Transformer block (Liu et al., "Swin Transformer: Hierarchical Vision Transformer using Shifted
Windows", ICCV 2021).

x <- x + W-MSA(LN(x)); x <- x + MLP(LN(x)): multi-head attention inside non-overlapping M x M windows
(M = 7) with a relative position bias table of (2M - 1)^2 entries per head, MLP ratio 4, head dim 32
(Swin-T: 3/6/12/24 heads at 96/192/384/768). ``shift=True`` gives the SW-MSA block: the map is rolled by
M // 2 and a mask keeps attention inside each window's regions. A stage alternates ``shift=False`` and
``shift=True`` block by block; the network builder passes ``shift`` to every other block.

When the stride or width changes the block starts with Swin's patch merging: 2x2 neighbours concatenated
(4C), LayerNorm, linear to out_chs (odd maps are zero-padded to even first, as Swin does for detection);
at stride 1 a width change is LayerNorm + linear.

Departures, for maps that are not multiples of M (the proxy's): maps are padded to a multiple of the window
and the padded keys are masked, where Swin for detection lets them in; a window larger than the map shrinks
to the map and is then not shifted on that axis (Swin's own rule at low resolution, applied per axis).

Init as the official Swin (``_init_weights``): every Linear N(0, 0.02^2) truncated to [-2, 2] (timm's
``trunc_normal_``), biases 0, LayerNorm weight 1 and bias 0, the relative bias table likewise ("trunc_normal").
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ._attention import WindowAttentionBase, window_attention
from ._layers import Mlp, init_weights, resolve_heads
from ._registry import register_op


class PatchMerging(nn.Module):
    """(B, H, W, in) -> (B, ceil(H/s), ceil(W/s), out): Swin's patch merging at stride 2, a projection at 1."""

    def __init__(self, in_chs: int, out_chs: int, stride: int):
        super().__init__()
        self.stride = stride
        gathered = in_chs * stride * stride
        self.norm = nn.LayerNorm(gathered)
        self.reduction = nn.Linear(gathered, out_chs, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 2:
            _, h, w, _ = x.shape
            x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
            x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x))


class WindowAttention(WindowAttentionBase):
    """W-MSA / SW-MSA on (B, H, W, C): qkv projection, windowed attention with relative bias, projection."""

    def __init__(self, dim: int, heads: int, window: int = 7, shift: bool = False):
        super().__init__(dim, heads, window)
        self.window, self.shift = window, shift

    def windowed(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return window_attention(q, k, v, self.heads, self.window, self.shift, self.rel)


class SwinBlock(nn.Module):
    """Swin's block around any token mixer ``mixer(dim) -> module on (B, H, W, dim)`` (ACmix-Swin reuses it)."""

    def __init__(self, in_chs: int, out_chs: int, stride: int, mixer: Callable[[int], nn.Module],
                 mlp_ratio: float = 4.0):
        super().__init__()
        self.down = PatchMerging(in_chs, out_chs, stride) if stride > 1 or in_chs != out_chs else nn.Identity()
        self.norm1 = nn.LayerNorm(out_chs)
        self.mixer = mixer(out_chs)
        self.norm2 = nn.LayerNorm(out_chs)
        self.mlp = Mlp(out_chs, max(1, round(out_chs * mlp_ratio)))
        init_weights(self, "trunc_normal")  # a mixer's parts that initialized themselves keep their scheme

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.down(x.permute(0, 2, 3, 1))
        x = x + self.mixer(self.norm1(x))
        x = x + self.mlp(self.norm2(x))
        return x.permute(0, 3, 1, 2)


def swin(in_chs: int, out_chs: int, stride: int = 1, heads: int | None = None, head_dim: int = 32,
         window: int = 7, shift: bool = False, mlp_ratio: float = 4.0) -> nn.Module:
    heads = resolve_heads("swin", out_chs, heads, head_dim, "Swin uses 32")
    if window < 1:
        raise ValueError(f"swin: window={window} must be >= 1 (the paper uses 7)")
    return SwinBlock(in_chs, out_chs, stride, lambda d: WindowAttention(d, heads, window, shift), mlp_ratio)


register_op("swin", swin, family="local", alternate=("shift",), extents=("window",),
            variants=({}, {"shift": True}, {"shift": True, "window": 4}),
            paper="Liu et al., Swin Transformer: Hierarchical Vision Transformer using Shifted Windows, ICCV 2021")
